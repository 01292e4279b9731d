"""The suite runs with default signal dispositions, whatever it inherited.

A shell starts a background job with SIGINT and SIGQUIT ignored (nohup adds
SIGHUP), and an ignored signal stays ignored across fork and exec, as does
a blocked one: every crate a test starts, and every command that crate
starts, would inherit them, and `crate run` passes them on as the command
would get them without crate. The tests that send a signal, or compare a
command's dispositions with its own, mean the defaults; tests/conftest.py
calls `restore_defaults` as the suite starts. Tests of inherited
dispositions start their children under `IGNORING`.
"""

from __future__ import annotations

import signal

# Python's own choices, which subprocess undoes in every child it starts.
PYTHONS_OWN = frozenset({signal.SIGPIPE, signal.SIGXFSZ})

# A prefix for a command line: the command starts with SIGINT and SIGQUIT
# ignored, as a shell's background job does.
IGNORING = ("sh", "-c", 'trap "" INT QUIT; exec "$@"', "sh")


def restore_defaults() -> None:
    """Unblock every signal, give SIGINT back to Python (KeyboardInterrupt, so
    the children get the default) and reset every other ignored one."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in signal.valid_signals():
        if sig in PYTHONS_OWN or sig in (signal.SIGINT, signal.SIGKILL, signal.SIGSTOP):
            continue
        if sig >= signal.SIGRTMIN:  # glibc keeps the first real-time signals for itself
            continue
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
