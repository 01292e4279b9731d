"""Background threads that never take a signal meant for the process.

A signal sent to a process is delivered to any thread that does not block
it. crate's helper threads (the ephemeral key search, keyring calls, the
output pumps of `crate run --mask`) block them all, so every signal reaches
the main thread: where Python runs its handlers, and where `crate run
--mask` waits for signals to relay them to the command.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


def start_thread(
    target: Callable[..., Any], *args: Any, name: str, daemon: bool = True
) -> threading.Thread:
    """Start `target(*args)` in a thread with every signal blocked."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        thread = threading.Thread(target=target, args=args, name=name, daemon=daemon)
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread
