"""`crate run` when crate must stay the command's parent: --mask, --mount, --watch.

Without them, crate execs the command and is gone (launch.exec_command).
With them, crate starts the command with posix_spawn, filters its output
(--mask), serves and then removes the mount (--mount), restarts the command
when its secrets change (--watch), and ends with its status (128+N when it
dies of signal N). Signals:

- SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH are blocked
  in crate and taken one at a time with sigwaitinfo in the main thread (the
  output pumps are threads that inherit the mask).
- A signal another process sent to crate (kill, a supervisor) is forwarded
  to the command once.
- A signal the terminal sent (Ctrl-C, Ctrl-\\, a resize, a hangup: si_code is
  SI_KERNEL) is not forwarded: the command is in the terminal's foreground
  process group and got it from the kernel itself, so forwarding would
  deliver it twice.
- With a pseudo-terminal (see below) the command leads its own session on
  it; crate's terminal is in raw mode, so Ctrl-C reaches the command as a
  byte through the pty, and a resize of crate's terminal is copied to the
  pty, which signals the command.

When crate's stdout is a terminal, the command gets a pseudo-terminal for
stdout (and stdin, when that is a terminal too), so that it still sees a
TTY: colours, line editing and window size work. Otherwise its stdout is a
pipe, and stdin is crate's.

Where crate's stdout and stderr go to the same place (the same terminal,
`2>&1` into one pipe or file: see same_destination), the command's stderr
shares its stdout's pty or pipe, and so one filter: the bytes keep their
order, and a value written half to stdout and half to stderr, which would
show whole where the two are merged, is masked. Where they go to different
places, stderr has a pipe and a filter of its own: a value split across two
destinations is whole in neither.

A filter holds back the end of the output that could begin a value for as
long as nothing follows it, on a pipe and on a pty alike: a value written
one byte at a time, however slowly, never shows a byte. The price, on a
terminal: the echo of a typed key that could begin a secret shows only
with the next key (or the next output).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from crate_cli.records import Record
from crate_cli.run.launch import Launch, exit_status, resolve_command, start_failure
from crate_cli.run.mask import Masker
from crate_cli.run.mount import write_all
from crate_cli.threads import start_thread

if TYPE_CHECKING:
    from crate_cli.run.mount import Mount

FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
RELAYED = {*FORWARDED, signal.SIGCHLD}  # what the supervisor waits for
SI_KERNEL = 0x80  # si_code of a signal the kernel sent (a terminal's, for these)
CHUNK = 1 << 16


def same_destination(first: int, second: int) -> bool:
    """Whether descriptors `first` and `second` write to the same place, where
    what is written to each shows merged: the same file, pipe, socket or
    terminal (st_dev and st_ino; for character devices, the device number:
    one terminal reached through two device nodes). A closed descriptor is
    no destination."""
    import stat

    try:
        a, b = os.fstat(first), os.fstat(second)
    except OSError:
        return False
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
        return True
    return stat.S_ISCHR(a.st_mode) and stat.S_ISCHR(b.st_mode) and a.st_rdev == b.st_rdev


def _pump(source: int, target: int, masker: Masker) -> None:
    """Copy `source` to `target` through `masker` until the end of `source`.

    Whatever the masker holds back waits for the bytes that follow, for as
    long as they take: a held end that could begin a value is never shown
    because time passed (the module docstring says what that costs).

    If `target` cannot take more (EPIPE, or any write error), `source` is
    closed so that the command gets SIGPIPE on its next write, as it would
    writing there directly.
    """
    try:
        while True:
            try:
                data = os.read(source, CHUNK)
            except OSError:  # EIO: the pty's last slave closed
                data = b""
            if not data:
                write_all(target, masker.flush())
                return
            write_all(target, masker.feed(data))
    except OSError:
        return
    finally:
        with contextlib.suppress(OSError):
            os.close(source)


def _spawn(argv: list[str], env: dict[str, str], file_actions: list[Any], setsid: bool) -> int:
    try:
        # The caller's PATH finds the program, not a PATH in the command's environment.
        return os.posix_spawn(
            resolve_command(argv[0], os.environ),
            argv,
            env,
            file_actions=file_actions,
            setsid=setsid,
            setsigmask=(),
            # Python ignores these; without crate the command would not.
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    except OSError as e:
        raise start_failure(argv[0], e) from None


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[list[Any]]:
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)  # keep what was typed before: it is the command's
    try:
        yield saved
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)  # keeps what was typed ahead


def _copy_window_size(source: int, target: int) -> None:
    import fcntl
    import termios

    with contextlib.suppress(OSError):
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(target, termios.TIOCSWINSZ, size)


class Watch(Record):
    """`crate run --watch`: when `changed()` (cheap, polled), `reload()` gives
    the next Launch, or raises CrateError when the new values do not resolve."""

    changed: Callable[[], bool]
    reload: Callable[[], Launch]
    grace: float = 10.0
    interval: float = 0.5


# Signals that ask crate (and so the command) to end: once one arrives,
# --watch no longer restarts the command.
ENDING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Supervisor:
    """Starts the command, filters its output, relays signals, serves the
    mount and restarts the command on a change (--watch)."""

    def __init__(
        self,
        argv: list[str],
        launch: Launch,
        mount: Mount | None = None,
        watch: Watch | None = None,
    ) -> None:
        self.argv = argv
        self.launch = launch
        self.mount = mount
        self.watch = watch
        self.use_pty = launch.mask_values is not None and os.isatty(1)
        self.pty_master: int | None = None
        self.input_fd: int | None = None  # where the stdin pump writes (a pty)
        self.pumps: list[threading.Thread] = []
        self.terminal: list[Any] | None = None  # crate's terminal settings before raw mode
        self.raw = False  # crate's terminal is raw: a line ends with \r\n
        self.watched = RELAYED
        self.ending = False
        if mount is not None:
            mount.notice = self.notice  # a line that ends right on a raw terminal too

    def notice(self, text: str) -> None:
        """One line from crate on stderr, between the command's output."""
        write_all(2, f"crate: {text}{chr(13) if self.raw else ''}\n".encode())

    # -- starting the command -------------------------------------------------------

    def _start_pump(self, source: int, target: int) -> None:
        values = self.launch.mask_values or []
        # A pty writes a value's newlines as \r\n (ONLCR): mask that form too.
        masker = Masker([*values, *(v.replace("\n", "\r\n") for v in values if "\n" in v)])
        self.pumps.append(
            start_thread(_pump, source, target, masker, name="crate-pump", daemon=False)
        )

    def start(self) -> int:
        """Start the command with the current Launch; its pid."""
        if self.launch.mask_values is None:
            # Nothing to filter: the command has crate's stdio and process group.
            return _spawn(self.argv, self.launch.env, [], setsid=False)
        if self.use_pty:
            return self._start_on_pty()
        out_r, out_w = os.pipe()
        actions: list[Any] = [(os.POSIX_SPAWN_DUP2, out_w, 1)]
        err_r, err_w = self._stderr_pipe(actions)
        try:
            pid = _spawn(self.argv, self.launch.env, actions, setsid=False)
        except BaseException:
            for fd in (out_r, err_r):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            os.close(out_w)
            if err_w is not None:
                os.close(err_w)
        self._start_pump(out_r, 1)
        if err_r is not None:
            self._start_pump(err_r, 2)
        return pid

    def _stderr_pipe(self, actions: list[Any]) -> tuple[int | None, int | None]:
        """The command's stderr, added to `actions` (whose fd 1 is its stdout):
        the same pipe or pty as stdout where crate's stdout and stderr go to
        the same place, else a pipe of its own, whose (read, write) ends are
        returned."""
        if same_destination(1, 2):
            actions.append((os.POSIX_SPAWN_DUP2, 1, 2))
            return None, None
        err_r, err_w = os.pipe()
        actions.append((os.POSIX_SPAWN_DUP2, err_w, 2))
        return err_r, err_w

    def _start_on_pty(self) -> int:
        import termios

        master, slave = os.openpty()
        slave_path = os.ttyname(slave)
        for source in (0, 1):  # the command's terminal starts as crate's is
            if os.isatty(source):
                with contextlib.suppress(termios.error):
                    attrs = self.terminal or termios.tcgetattr(source)
                    termios.tcsetattr(slave, termios.TCSANOW, attrs)
                _copy_window_size(source, slave)
                break
        stdin_on_pty = os.isatty(0)
        # The command leads a new session; opening the pty there makes it the
        # session's controlling terminal (setsid comes before file actions).
        actions: list[Any] = [(os.POSIX_SPAWN_OPEN, 1, slave_path, os.O_RDWR, 0)]
        if stdin_on_pty:
            actions.append((os.POSIX_SPAWN_DUP2, 1, 0))
        err_r, err_w = self._stderr_pipe(actions)
        try:
            pid = _spawn(self.argv, self.launch.env, actions, setsid=True)
        except BaseException:
            os.close(master)
            if err_r is not None:
                os.close(err_r)
            raise
        finally:
            os.close(slave)
            if err_w is not None:
                os.close(err_w)
        # Kept for resizes (and typed input); a restart's new pty replaces it.
        previous, self.pty_master = self.pty_master, master
        self._start_pump(os.dup(master), 1)
        if err_r is not None:
            self._start_pump(err_r, 2)
        if stdin_on_pty:
            self.input_fd = master
            if previous is None:
                start_thread(self._stdin_pump, name="crate-stdin")
        if previous is not None:
            with contextlib.suppress(OSError):
                os.close(previous)
        return pid

    def _stdin_pump(self) -> None:
        """crate's terminal (raw) to the command's pty: keys, Ctrl-C included."""
        while True:
            try:
                data = os.read(0, CHUNK)
            except OSError:
                return
            if not data:
                return
            with contextlib.suppress(OSError):  # a pty closed by a restart
                if self.input_fd is not None:
                    write_all(self.input_fd, data)

    # -- signals --------------------------------------------------------------------

    def relay(self, pid: int, info: Any) -> None:
        """One signal crate received, passed on as the module docstring says."""
        sig = info.si_signo
        if sig in ENDING and not (info.si_code == SI_KERNEL and self.use_pty):
            self.ending = True
        if self.use_pty:
            if sig == signal.SIGWINCH:
                if self.pty_master is not None:
                    _copy_window_size(1, self.pty_master)
                return
        elif info.si_code == SI_KERNEL:
            return  # the terminal already signalled the command's process group
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def _wait(self, pid: int, timeout: float | None) -> int | None:
        """Relay signals until `pid` ends (its wait status) or `timeout` passes."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            info = (
                signal.sigwaitinfo(self.watched)
                if left is None
                else signal.sigtimedwait(self.watched, left)
            )
            if info is None:
                return None
            if info.si_signo == signal.SIGCHLD:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == pid:
                    return status
                continue
            self.relay(pid, info)

    # -- --watch --------------------------------------------------------------------

    def _restart_if_changed(self, pid: int) -> tuple[int, int | None]:
        """(pid, None), or the wait status of a command that ended by itself."""
        assert self.watch is not None
        if self.ending or not self.watch.changed():
            return pid, None
        from crate_cli.errors import CrateError

        try:
            launch = self.watch.reload()
        except CrateError as e:
            self.notice(f"the secrets changed, but {e.message}; the command keeps its old values")
            return pid, None
        if launch == self.launch:
            return pid, None
        changed = sorted(
            k
            for k in {*launch.secrets, *self.launch.secrets}
            if launch.secrets.get(k) != self.launch.secrets.get(k)
        )
        if self.mount is not None and launch.mount_content is not None:
            try:
                self.mount.update(launch.mount_content)
            except OSError as e:
                self.notice(
                    f"the secrets changed, but the mount could not be updated ({e.strerror}); "
                    "the command keeps its old values"
                )
                return pid, None
        self.notice(f"secrets changed ({', '.join(changed)}); restarting the command")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        status = self._wait(pid, self.watch.grace)
        if status is None:
            self.notice(
                f"the command did not end within {self.watch.grace:g} s of SIGTERM; killing it"
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            status = self._wait(pid, None)
        if self.ending:  # asked to end while restarting
            return pid, status
        self.launch = launch
        return self.start(), None

    # -- the whole run --------------------------------------------------------------

    def run(self) -> int:
        """Run the command to its end; its exit status as a shell reports it."""
        signal.pthread_sigmask(signal.SIG_BLOCK, self.watched)
        raw = self.use_pty and os.isatty(0)
        try:
            with _raw_terminal(0) if raw else contextlib.nullcontext() as saved:
                self.terminal = saved
                self.raw = raw
                pid = self.start()
                while True:
                    interval = self.watch.interval if self.watch else None
                    status = self._wait(pid, interval)
                    if status is not None:
                        break
                    pid, status = self._restart_if_changed(pid)
                    if status is not None:
                        break
                for pump in self.pumps:
                    pump.join()
        finally:
            self.raw = False
            if self.mount is not None:
                self.mount.close()
        return exit_status(status)


def supervise(
    argv: list[str], launch: Launch, mount: Mount | None = None, watch: Watch | None = None
) -> None:
    """Run `argv` under crate, then exit with its status."""
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(Supervisor(argv, launch, mount, watch).run())
