"""Ephemeral RSA keys made ahead of the requests that use them.

Generating an RSA-2048 key is the slowest step of a retrieval (about 70 ms
here, and anything from 25 to 250 ms: a random search for primes), and
`crate run` sits in front of every dev command. So a few keys are made ahead
by a background process and kept in memory-backed files that only the user
can reach; each retrieval takes one, and a key is used for one request only,
as the protocol asks: it is fresh, it was just made earlier.

Where the keys live: `$XDG_RUNTIME_DIR/crate-keys` (a per-user tmpfs on
systemd systems), else `/dev/shm/crate-keys-<uid>` on Linux. Both are memory,
never a disk. The folder must be the user's own with mode 0700, and each key
file the user's own with mode 0600, or it is not used. Elsewhere (macOS,
no tmpfs) there is no reserve and each retrieval searches its own key.

A key is taken by renaming its file (only one process can win that) and the
file is removed before the key is used. Keys older than `MAX_AGE` are
removed, not used. `CRATE_KEY_RESERVE=off` turns the reserve off.

The refill runs in a fresh crate process (`crate __refill-key-reserve`),
started in the background by a shell that crate starts with posix_spawn in
a session of its own, standard files on /dev/null, and no credentials in
its environment. The shell exits at once, so the refill is nobody's child
(`crate run` collects the shell before it execs). One refill runs at a time
(a lock file); it makes keys until the reserve holds `TARGET`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import time
from collections.abc import Callable
from typing import Any

# Enough for a burst of commands (a script, a benchmark round) while the
# refill, one search per core, catches up.
TARGET = 8
SEARCHES = max(1, min(2, os.cpu_count() or 1))
MAX_AGE = 3600.0  # seconds a key may wait for its request
CLOCK_SLACK = 5.0  # seconds a key file may seem to come from the future
OFF_VALUES = ("0", "off", "no", "false")
_PREFIX = "rsa"
_SUFFIX = ".key"
_READ_LIMIT = 16384


def reserve_dir(environ: Any = None) -> str | None:
    """The reserve's folder, or None where there is no reserve (it may not exist yet).

    Only a folder on a memory file system (tmpfs, ramfs) is used: a key must
    never reach a disk, whatever XDG_RUNTIME_DIR says."""
    env = os.environ if environ is None else environ
    if str(env.get("CRATE_KEY_RESERVE", "")).strip().lower() in OFF_VALUES:
        return None
    if not sys.platform.startswith("linux"):
        return None  # no folder known to be in memory (macOS: TMPDIR is on disk)
    runtime = env.get("XDG_RUNTIME_DIR")
    if (
        runtime
        and os.path.isabs(runtime)
        and _private_path(runtime, stat.S_ISDIR)
        and in_memory(runtime)
    ):
        return os.path.join(runtime, "crate-keys")
    if os.path.isdir("/dev/shm") and in_memory("/dev/shm"):  # noqa: S108
        return f"/dev/shm/crate-keys-{os.getuid()}"  # noqa: S108
    return None


# statfs(2) types of the file systems that live in memory only.
MEMORY_FILE_SYSTEMS = (b"tmpfs", b"ramfs")


def in_memory(path: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether `path` lies on tmpfs or ramfs: the file system of the mount that
    holds it, from /proc/self/mountinfo (Python's statvfs has no f_type, and
    ctypes costs 6 ms to import; this reads about 50 µs)."""
    target = os.path.realpath(path).encode()
    best, kind = b"", b""
    try:
        with open(mountinfo, "rb") as f:
            for line in f:
                fields, _, rest = line.partition(b" - ")
                parts = fields.split()
                if len(parts) < 5 or not rest:
                    continue
                point = _unescape(parts[4])
                inside = point in (b"/", target) or target.startswith(point + b"/")
                # The longest mount point that holds the path; a later line
                # for the same point is a mount stacked on top, which wins.
                if inside and len(point) >= len(best):
                    best, kind = point, rest.split()[0]
    except OSError:
        return False
    return kind in MEMORY_FILE_SYSTEMS


def _unescape(field: bytes) -> bytes:
    """A mountinfo path: spaces, tabs, newlines and backslashes come as octal escapes."""
    if b"\\" not in field:
        return field
    import re

    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)


def _private(st: os.stat_result, kind: Callable[[int], bool]) -> bool:
    """Whether `st` is of `kind` (stat.S_ISDIR, stat.S_ISREG), this user's,
    and closed to everyone else."""
    return kind(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def _private_path(path: str, kind: Callable[[int], bool]) -> bool:
    """`_private` for a path itself (a symlink is not followed, and fails)."""
    try:
        return _private(os.lstat(path), kind)
    except OSError:
        return False


def _names(folder: str, bits: int | None = None) -> list[str]:
    """The key files of `bits` bits (None: of any size)."""
    prefix = _PREFIX if bits is None else f"{_PREFIX}{bits}-"
    try:
        return [n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(_SUFFIX)]
    except OSError:
        return []


def _bits_of(name: str) -> int:
    """The key size in a key file's name (`rsa2048-….key`); 0 if it has none."""
    size = name[len(_PREFIX) :].partition("-")[0]
    return int(size) if size.isdigit() and len(size) <= 5 else 0


def take(bits: int | None, environ: Any = None) -> Any:
    """A reserved private key of `bits` bits (None: any size), removed from the
    reserve; None if there is none."""
    folder = reserve_dir(environ)
    if folder is None or not _private_path(folder, stat.S_ISDIR):
        return None
    for name in _names(folder, bits):
        path = os.path.join(folder, name)
        claimed = f"{path}.{os.getpid()}.taken"
        try:
            os.rename(path, claimed)  # one process wins each key
        except OSError:
            continue
        data = _read_and_remove(claimed)
        if data is not None:
            key = parse_key(data, _bits_of(name))
            if key is not None:
                return key
    return None


def _read_and_remove(path: str) -> bytes | None:
    """The file's bytes if it is a fresh, private regular file of this user; removed either way."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        _remove(path)
        return None
    try:
        st = os.fstat(fd)
        ok = _private(st, stat.S_ISREG) and -CLOCK_SLACK <= time.time() - st.st_mtime <= MAX_AGE
        data = os.read(fd, _READ_LIMIT) if ok else None
    finally:
        os.close(fd)
        _remove(path)
    return data


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def parse_key(data: bytes, bits: int) -> Any:
    """The RSA private key in a reserve file (see `dump_key`); None if it is not one."""
    import json

    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        fields = json.loads(data)
        p, q, d, e = (int(fields[k], 16) for k in ("p", "q", "d", "e"))
        version = fields.get("v")
        if type(version) is not int or version != 1 or (p * q).bit_length() != bits or e != 65537:
            return None
        numbers = rsa.RSAPrivateNumbers(
            p,
            q,
            d,
            rsa.rsa_crt_dmp1(d, p),
            rsa.rsa_crt_dmq1(d, q),
            rsa.rsa_crt_iqmp(p, q),
            rsa.RSAPublicNumbers(e, p * q),
        )
        # Made by this user's own refill, in a folder only the user can enter:
        # OpenSSL's full check (a primality test of p and q) would cost more
        # than the reserve saves.
        return numbers.private_key(unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def dump_key(key: Any) -> bytes:
    """A reserve file's content: the key's primes and private exponent, in hex."""
    import json

    numbers = key.private_numbers()
    return json.dumps(
        {
            "v": 1,
            "p": f"{numbers.p:x}",
            "q": f"{numbers.q:x}",
            "d": f"{numbers.d:x}",
            "e": f"{numbers.public_numbers.e:x}",
        }
    ).encode("ascii")


def needs_refill(environ: Any = None) -> bool:
    """Fewer than TARGET keys in a usable reserve, and no refill at work (it
    would go on making them)."""
    folder = reserve_dir(environ)
    if folder is None or (os.path.lexists(folder) and not _private_path(folder, stat.S_ISDIR)):
        return False
    return len(_names(folder)) < TARGET and not _refill_running(folder)


def _refill_running(folder: str) -> bool:
    """Whether a refill holds the reserve's lock (a probe: taken and let go at once)."""
    import fcntl

    try:
        fd = os.open(os.path.join(folder, ".lock"), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False  # no lock file yet: no refill ever ran here
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing lets the probe's lock go
    return False


REFILL_ARG = "__refill-key-reserve"
# What the refill process gets of crate's environment: enough to find the
# home, its settings and the reserve, and nothing else: no credentials, and
# nothing that steers what Python loads (PYTHONPATH, PYTHONSTARTUP ...).
_REFILL_ENV = (
    "CRATE_HOME",
    "CRATE_KEY_RESERVE",
    "HOME",
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "USER",
    "LOGNAME",
)
_spawned: int | None = None  # the shell that starts the refill, until reaped


def refill_in_background() -> None:
    """Start a detached process that refills the reserve, when it needs it.

    `posix_spawn` (no copy of this process's memory) starts `/bin/sh` in a
    session of its own, its standard files on /dev/null and an environment
    without credentials; the shell starts the refill (a fresh crate) in the
    background and exits at once, so the refill is nobody's child. `reap`
    collects the shell: `crate run` does before it execs, so a command that
    calls `wait()` finds no child it did not start.

    The refill loads no code from the caller's folder or environment (DESIGN
    §9): it starts in `/`, and from a virtual environment as `python -I`
    (isolated: no current folder, script folder or user site-packages on
    sys.path, no PYTHON* variables), so a `crate_cli.py` or `sitecustomize.py`
    in a cloned repository never runs.
    """
    global _spawned
    if _spawned is not None or not needs_refill():
        return
    argv = ["/bin/sh", "-c", 'cd / && "$@" &', "crate-refill", *refill_argv()]
    env = {k: v for k, v in os.environ.items() if k in _REFILL_ENV or k.startswith("XDG_")}
    null = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    with contextlib.suppress(OSError):  # no refill then: retrievals search their keys
        _spawned = os.posix_spawn(argv[0], argv, env, file_actions=null, setsid=True)


def refill_argv() -> list[str]:
    """How crate starts itself for the refill: the frozen binary as it is, a
    Python install isolated (`-I`) and by module name."""
    if getattr(sys, "frozen", False):
        return [sys.executable, REFILL_ARG]
    return [sys.executable, "-I", "-m", "crate_cli", REFILL_ARG]


def reap() -> None:
    """Collect the shell that started the refill (it exits at once)."""
    global _spawned
    pid, _spawned = _spawned, None
    if pid is not None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _configured_bits() -> int:
    """The home's `crypto.ephemeral_rsa_bits`: what its next retrievals will ask for."""
    from crate_cli.config import DEFAULTS, Settings, resolve_home

    try:
        return int(Settings.load(resolve_home()).get("crypto.ephemeral_rsa_bits"))
    except Exception:  # a broken settings file is the foreground's to report
        return int(DEFAULTS["crypto.ephemeral_rsa_bits"])


def main() -> None:
    """The refill process (`crate __refill-key-reserve`, started by crate only).
    It runs niced: the command that crate started comes first."""
    os.closerange(3, max(os.sysconf("SC_OPEN_MAX"), 1 << 16))  # inherited files
    os.chdir("/")
    with contextlib.suppress(OSError):
        os.nice(10)

    refill(_configured_bits())


def refill(bits: int) -> int:
    """Make keys of `bits` bits until the reserve holds TARGET keys; returns how many were made.

    One refill at a time: another one running makes this one return at once.
    Stale files (expired keys, leftovers of a crash) are removed first.
    """
    import fcntl

    folder = reserve_dir()
    if folder is None:
        return 0
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return 0
    if not _private_path(folder, stat.S_ISDIR):
        return 0
    lock = os.open(os.path.join(folder, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0
        _remove_stale(folder)
        made = 0
        while (short := TARGET - len(_names(folder))) > 0:
            written = _write_keys(folder, bits, min(short, SEARCHES))
            if not written:
                break  # nothing could be written (a full disk?): the next refill tries again
            made += written
        return made
    finally:
        os.close(lock)


def _remove_stale(folder: str) -> None:
    now = time.time()
    for name in os.listdir(folder):
        if name == ".lock":
            continue
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        age = now - st.st_mtime
        if name.endswith(_SUFFIX) and -CLOCK_SLACK <= age <= MAX_AGE and _private(st, stat.S_ISREG):
            continue
        if age > 60 or name.endswith(_SUFFIX):  # a crashed taker's or writer's file
            _remove(path)


def _write_keys(folder: str, bits: int, count: int) -> int:
    """Make `count` keys at once, one search per thread (the searches release
    the GIL); returns how many were written."""
    import threading

    written: list[bool] = []

    def one() -> None:
        try:
            _write_key(folder, bits)
        except (OSError, ValueError):
            return
        written.append(True)

    threads = [threading.Thread(target=one, name="crate-key-refill") for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(written)


def _write_key(folder: str, bits: int) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    token = os.urandom(8).hex()
    partial = os.path.join(folder, f".partial-{token}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, dump_key(key))
    finally:
        os.close(fd)
    os.rename(partial, os.path.join(folder, f"{_PREFIX}{bits}-{token}{_SUFFIX}"))
