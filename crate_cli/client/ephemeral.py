"""The client's ephemeral RSA key, started before anything else.

Its own small module, so that `crate run`, `secrets get` and `secrets fetch`
can start generating the key (`prestart`) after importing only this and
`cryptography`'s RSA: every other import then overlaps the key search, which
releases the GIL.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

from crate_cli.threads import start_thread

DEFAULT_EPHEMERAL_BITS = 2048
MAX_SEARCHES = 3
# Searches still running. A daemon thread inside cryptography's (Rust) key
# generation when the interpreter finalizes is unwound by pthread_exit, which
# Rust turns into "FATAL: exception not rethrown" and an abort (exit 134): so
# the process waits for them at exit. Only an early exit (a usage error) or a
# lost race leaves one running; `crate run` execs and never gets here.
_running: set[threading.Thread] = set()
_running_lock = threading.Lock()


def _wait_for_searches() -> None:
    with _running_lock:
        running = list(_running)
    for thread in running:
        thread.join(timeout=5)


atexit.register(_wait_for_searches)


class EphemeralKey:
    """A fresh RSA key pair for one retrieval, generated in background threads.

    Key generation is the costliest step of a retrieval and releases the GIL,
    so `crate run` starts it first and overlaps it with its imports and the
    vault's work. Its time varies widely (a random search for primes: 30 to
    250 ms for 2048 bits), so searches race and the first key found is used:
    one starts at once (two where four or more cores are free), and when the
    caller needs the key before it is ready, its own core is idle and another
    search joins. The losers' results are dropped.
    """

    def __init__(self, bits: int = DEFAULT_EPHEMERAL_BITS, key: Any = None) -> None:
        """`key`: one made ahead (crate_cli.client.keyreserve); no search starts."""
        self.bits = bits
        self._key: Any = key
        self._errors: list[BaseException] = []
        self._started = 0
        self._lock = threading.Lock()
        self._done = threading.Event()
        if key is not None:
            self._done.set()
            return
        for _ in range(2 if (os.cpu_count() or 1) >= 4 else 1):
            self._start_search()

    def _start_search(self) -> None:
        with self._lock:
            self._started += 1
        with _running_lock:  # registered before it runs, removed by itself
            thread = start_thread(self._search, name="crate-ephemeral-key")
            _running.add(thread)

    def _search(self) -> None:
        try:
            self._generate()
        finally:
            with _running_lock:
                _running.discard(threading.current_thread())

    def _generate(self) -> None:
        try:
            from cryptography.hazmat.primitives.asymmetric import rsa

            key = rsa.generate_private_key(public_exponent=65537, key_size=self.bits)
        except BaseException as e:  # re-raised in the caller's thread by get()
            with self._lock:
                self._errors.append(e)
                if len(self._errors) == self._started:
                    self._done.set()
            return
        with self._lock:
            if self._key is None:
                self._key = key
            self._done.set()

    def ready(self) -> bool:
        """Whether a key is there (or every search failed): `get` will not wait."""
        return self._done.is_set()

    def get(self) -> Any:
        """The key; waits for the first search to finish."""
        if not self._done.is_set() and self._started < MAX_SEARCHES:
            self._start_search()
        self._done.wait()
        with self._lock:
            if self._key is None:
                raise self._errors[0]
            return self._key


# A key generation started by `cli.main` before anything else, for the
# commands that retrieve secrets; the first retrieval of the process takes it.
_prestarted: EphemeralKey | None = None


def prestart(bits: int = DEFAULT_EPHEMERAL_BITS) -> None:
    """Take a key made ahead (and start a refill of the reserve), or start
    searching one."""
    global _prestarted
    from crate_cli.client import keyreserve

    # Any size: the home's setting (crypto.ephemeral_rsa_bits) is not read
    # yet, and the refill makes keys of that size. `take` checks the size.
    reserved = keyreserve.take(None)
    keyreserve.refill_in_background()
    _prestarted = EphemeralKey(reserved.key_size if reserved else bits, reserved)


def searching() -> bool:
    """Whether the prestarted key is still being searched (time to do other work)."""
    key = _prestarted
    return key is not None and not key.ready()


def take(bits: int) -> EphemeralKey:
    """The prestarted key if it has the wanted size and is unused, else one
    from the reserve, else a new search."""
    global _prestarted
    key, _prestarted = _prestarted, None
    if key is not None and key.bits == bits:
        return key
    from crate_cli.client import keyreserve

    return EphemeralKey(bits, keyreserve.take(bits))
