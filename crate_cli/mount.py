"""`crate run --mount PATH`: the secrets as a file for the command to read.

Two modes:

- `fifo` (the default): a named pipe (0600). crate writes the rendered
  secrets each time a reader opens it, so nothing is ever written to disk;
  `--mount-max-reads N` removes it after N reads.
- `file`: a 0600 regular file, for programs that cannot read a pipe (they
  seek, or stat the size first).

Either way the path is created by crate (an existing path is refused, never
overwritten) and removed when the command ends, however it ends: crate stays
its parent to do that. Only a SIGKILL of crate itself can leave it behind,
and then a FIFO holds nothing.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from crate_cli.errors import Conflict, CrateError, InvalidInput
from crate_cli.threads import start_thread


class Mount:
    """A mounted secrets file at `path` (`mode` fifo or file); `close()` removes it.

    The options are checked by runner.check_run_args.
    """

    def __init__(self, path: str, content: bytes, mode: str, max_reads: int | None) -> None:
        self.path = Path(path).absolute()
        self.mode = mode
        self.max_reads = max_reads
        self.reads = 0
        self._content = content
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._create()

    def _create(self) -> None:
        if not self.path.parent.is_dir():
            raise InvalidInput(
                f"cannot mount the secrets at {self.path}: its folder does not exist"
            )
        try:
            if self.mode == "fifo":
                self._make_fifo(self.path)
            else:
                _create_private(self.path, self._content)
        except FileExistsError:
            raise Conflict(
                f"cannot mount the secrets at {self.path}: something is already there",
                "choose another path; crate never overwrites a file with secrets",
            ) from None
        except OSError as e:
            raise CrateError(f"cannot mount the secrets at {self.path}: {e.strerror}") from None
        if self.mode == "fifo":
            start_thread(self._serve, name="crate-mount")

    def _make_fifo(self, path: Path) -> None:
        os.mkfifo(path, 0o600)
        os.chmod(path, 0o600)  # whatever the umask

    def _serve(self) -> None:
        """Write the content to each reader of the FIFO, until closed or N reads.

        A reader holds the pipe open until it has read to the end, and while it
        does, opening the pipe again would succeed at once and feed it twice.
        So each reader gets its own pipe: as soon as one opens, a fresh FIFO is
        renamed over the path for the next, and the first reads its copy from
        the pipe it opened (rename keeps the path present at every instant).
        """
        spare = self.path.with_name(f".{self.path.name}.{os.urandom(8).hex()}.fifo")
        while not self._closed.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY)  # waits for a reader
            except OSError:
                return  # removed
            try:
                # Under the lock: close() must not remove the path between the
                # two steps, or the spare would come back in its place.
                with self._lock:
                    if self._closed.is_set():
                        return
                    try:
                        self._make_fifo(spare)
                    except OSError:
                        return
                    try:
                        os.replace(spare, self.path)
                    except OSError:
                        with contextlib.suppress(OSError):
                            spare.unlink()
                        return
                    content = self._content
                with contextlib.suppress(BrokenPipeError):  # the reader stopped early
                    write_all(fd, content)
            finally:
                os.close(fd)
            self.reads += 1
            if self.max_reads is not None and self.reads >= self.max_reads:
                self.close()
                return

    def update(self, content: bytes) -> None:
        """New content for the next read (crate run --watch)."""
        with self._lock:
            self._content = content
        if self.mode == "file" and not self._closed.is_set():
            temp = self.path.with_name(f".{self.path.name}.{os.urandom(8).hex()}.tmp")
            try:
                _create_private(temp, content)
                os.replace(temp, self.path)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise

    def close(self) -> None:
        """Remove the path; a FIFO writer waiting for a reader is released, and
        so is a reader waiting for a writer (it reads an empty file)."""
        with self._lock:  # not while _serve swaps in a fresh FIFO
            if self._closed.is_set():
                return
            self._closed.set()
            waiting = None
            if self.mode == "fifo":
                with contextlib.suppress(OSError):
                    # Opening the read end lets the writer's open() return.
                    waiting = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
                with contextlib.suppress(OSError):
                    # A reader that opened the pipe while _serve was busy with
                    # another (or after the last of --mount-max-reads) would
                    # wait forever: give it an end of file.
                    os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if waiting is not None:
            os.close(waiting)


def _create_private(path: Path, content: bytes) -> None:
    """A new 0600 file holding `content`; an existing path (or symlink) is an error.

    Not config.write_private_file: that one replaces what is there and makes
    the folder private, and this folder is the user's.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        write_all(fd, content)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
