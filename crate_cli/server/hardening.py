"""What a long-running process that holds the master key does to itself (DESIGN §9).

The agent and `crate server` call `make_undumpable` before they unlock the
master key, and `drop_credentials` once it is unlocked:

- `make_undumpable`: RLIMIT_CORE 0 (soft and hard, so nothing in the process
  can raise it again) and, on Linux, `prctl(PR_SET_DUMPABLE, 0)`: no core
  file, even under `ulimit -c unlimited` or a core_pattern pipe, and no
  ptrace attach or /proc/PID/mem by other processes of the same user (only
  root or CAP_SYS_PTRACE can still look in).
- `drop_credentials`: the credential variables leave `os.environ` (which
  unsets them in the C environment too, so nothing the process starts
  inherits them), the Session's own copy, and the passphrase read from a
  file descriptor. On Linux, their text is also zeroed in the environment
  block the process started with, which /proc/PID/environ shows for the
  process's whole life: once unset, nothing refers to those bytes.

Python cannot overwrite its own `str` and `bytes` objects: the copies that
os.environ and the Session held are freed, not wiped. Being undumpable is
what keeps them, and the key, out of core files and other processes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

from crate_cli.config import CREDENTIAL_VARIABLES
from crate_cli.errors import HardeningError

PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def make_undumpable() -> None:
    """No core dumps and (Linux) no same-user ptrace; raises if the kernel refuses."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        zero = ctypes.c_ulong(0)
        if libc.prctl(PR_SET_DUMPABLE, zero, zero, zero, zero) != 0:
            errno = ctypes.get_errno()
            raise HardeningError(
                f"cannot make this process undumpable (prctl PR_SET_DUMPABLE: "
                f"{os.strerror(errno)}); the master key was not unlocked",
                "a seccomp profile or security module forbids prctl; allow PR_SET_DUMPABLE",
            )


def drop_credentials(*copies: MutableMapping[str, str]) -> list[str]:
    """Remove the credential variables from the process environment, from each
    of `copies` (changed in place: a Session's `environ`, shared with its
    MasterKeys), and on Linux from the initial environment block. Returns the
    names that were set."""
    found = [name for name in CREDENTIAL_VARIABLES if name in os.environ]
    for name in CREDENTIAL_VARIABLES:
        os.environ.pop(name, None)
        os.unsetenv(name)  # also what os.environ did not know about
        for copy in copies:
            if name in copy:
                copy.pop(name)
                if name not in found:
                    found.append(name)
    passphrase = sys.modules.get("crate_cli.vault.slots.passphrase")
    if passphrase is not None:
        passphrase.forget()
    if sys.platform.startswith("linux"):
        scrub_initial_environment(CREDENTIAL_VARIABLES)
    return found


def scrub_initial_environment(names: tuple[str, ...]) -> int:
    """Zero the entries `NAME=value` of `names` in the environment block the
    kernel set up at exec (what /proc/self/environ reads); returns how many.

    The block lies between env_start and env_end (fields 50 and 51 of
    /proc/self/stat, Linux 3.5+) in this process's own memory. Call it only
    after the names are unset: the C environment then no longer points at
    those entries, so nothing reads the bytes that are zeroed.
    """
    import ctypes

    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        env_start, env_end = int(fields[50 - 3]), int(fields[51 - 3])
        with open("/proc/self/environ", "rb") as f:
            block = f.read()
    except (OSError, ValueError, IndexError):
        return 0
    if not 0 < env_start < env_end or len(block) > env_end - env_start:
        return 0
    wanted = {name.encode() for name in names}
    live = set(_environ_pointers())  # never zero an entry the C environment still uses
    wiped = 0
    offset = 0
    for entry in block.split(b"\0"):
        name, equals, _ = entry.partition(b"=")
        address = env_start + offset
        if equals and name in wanted and address not in live:
            ctypes.memset(address, 0, len(entry))
            wiped += 1
        offset += len(entry) + 1
    return wiped


def _environ_pointers() -> list[int]:
    """The addresses of the C environment's entries (glibc's `environ`)."""
    import ctypes

    try:
        environ = ctypes.POINTER(ctypes.c_void_p).in_dll(ctypes.CDLL(None), "environ")
    except (ValueError, OSError):
        return []
    pointers: list[int] = []
    i = 0
    while True:
        entry = environ[i]
        if not entry:
            return pointers
        pointers.append(int(entry))
        i += 1
