"""End to end: `crate run --mount` and `crate run --watch`, against the installed crate.

--mount gives the secrets to the command as a named pipe (or a 0600 file)
that never outlives the command, however it ends. --watch restarts the
command when its secrets change, and keeps the old process when a change
does not resolve. For both, crate stays the command's parent: these tests
also check what it relays (exit status, signals) and that nothing is left
behind, neither a file nor a process.

Background runs start crate in a process group of its own, which the
`background` fixture kills at teardown, command included. Every wait polls
for a condition with a generous deadline: nothing here asserts a timing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.crate_runner import CrateRunner, Result, assert_clean_error
from tests.support.processes import CRATE_TIMEOUT, TRAP_SIGTERM, Running, wait_for

pytestmark = pytest.mark.e2e

PYTHON = sys.executable

# personal/dev of the shared home; distinctive values, to search for them.
SECRETS = {
    "GREETING": "hello-mount-7c1e",
    "SPACED": "two words 4b2a",
    "QUOTED": 'say "hi" 9d0f',
    "UNICODE": "caf\u00e9-e83b",
}


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start crate in the background: background(runner, *args, env=None)."""
    started: list[Running] = []

    def start(runner: CrateRunner, *args: str, env: dict[str, str] | None = None) -> Running:
        running = Running(runner, list(args), tmp_path / f"crate-{len(started)}", env)
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> CrateRunner:
    """A home with SECRETS in personal/dev; tests must not change it."""
    runner = CrateRunner(tmp_path_factory.mktemp("mount") / "home")
    runner("secrets", "set", *(f"{k}={v}" for k, v in SECRETS.items()), check=True)
    return runner


@pytest.fixture(scope="module")
def fetched(home: CrateRunner) -> dict[str, str]:
    """What `crate secrets fetch --format F` prints, for each mount format."""
    return {
        fmt: home("secrets", "fetch", "--format", fmt, check=True).stdout
        for fmt in ("json", "env", "dotenv")
    }


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An empty folder for the mount."""
    path = tmp_path / "mnt"
    path.mkdir()
    return path


def run_crate(
    runner: CrateRunner,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    umask: int = -1,
) -> Result:
    """`crate ARGS` in a process group of its own: whatever the command leaves
    in it, or still runs at the timeout, is killed."""
    proc = subprocess.Popen(
        [*runner.argv0, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=runner.env(env),
        cwd=cwd,
        umask=umask,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=CRATE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"crate {args} still running after {CRATE_TIMEOUT:g} s") from None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return Result(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def run_json(runner: CrateRunner, *args: str, **kwargs: Any) -> dict[str, Any]:
    """`crate run ARGS`, whose command prints one JSON object."""
    done = run_crate(runner, "run", *args, **kwargs)
    assert done.returncode == 0, done
    return dict(json.loads(done.stdout))


# What the command sees of its mount, read once.
REPORT = """
import json, os, stat
path = os.environ["CRATE_SECRETS_PATH"]
st = os.lstat(path)
with open(path, "rb") as f:
    content = f.read().decode("utf-8")
print(json.dumps({
    "path": path,
    "fifo": stat.S_ISFIFO(st.st_mode),
    "regular": stat.S_ISREG(st.st_mode),
    "mode": stat.S_IMODE(st.st_mode),
    "content": content,
    "listing": sorted(os.listdir(os.path.dirname(path))),
    "env": dict(os.environ),
}))
"""


# -- --mount: what the command reads -------------------------------------------------


def test_a_fifo_of_json_by_default(
    home: CrateRunner, fetched: dict[str, str], folder: Path
) -> None:
    path = folder / "secrets"
    seen = run_json(home, "--mount", str(path), "--", PYTHON, "-c", REPORT)
    assert seen["fifo"] is True
    assert seen["mode"] == 0o600
    assert seen["content"] == fetched["json"]
    assert json.loads(seen["content"]) == SECRETS
    assert seen["path"] == str(path)
    assert seen["listing"] == ["secrets"]
    # The secrets are in the environment too, without --no-env.
    assert {k: seen["env"].get(k) for k in SECRETS} == SECRETS
    assert not os.path.lexists(path)
    assert os.listdir(folder) == []


@pytest.mark.parametrize("fmt", ["json", "env", "dotenv"])
@pytest.mark.parametrize("mode", ["fifo", "file"])
def test_each_format_reads_as_secrets_fetch_prints_it(
    home: CrateRunner, fetched: dict[str, str], folder: Path, fmt: str, mode: str
) -> None:
    path = folder / f"secrets.{fmt}"
    seen = run_json(
        home,
        *("--mount", str(path), "--mount-format", fmt, "--mount-mode", mode),
        *("--", PYTHON, "-c", REPORT),
    )
    assert seen["content"] == fetched[fmt]
    assert not os.path.lexists(path)


@pytest.mark.parametrize("mode", ["fifo", "file"])
def test_the_mount_is_0600_whatever_the_umask(
    home: CrateRunner, fetched: dict[str, str], folder: Path, mode: str
) -> None:
    path = folder / "secrets"
    for umask in (0o000, 0o077):
        seen = run_json(
            home,
            *("--mount", str(path), "--mount-mode", mode, "--", PYTHON, "-c", REPORT),
            umask=umask,
        )
        assert seen["mode"] == 0o600, oct(umask)
        assert seen["fifo"] is (mode == "fifo")
        assert seen["regular"] is (mode == "file")
        assert seen["content"] == fetched["json"]
        assert not os.path.lexists(path)


def test_a_relative_mount_path_is_given_as_an_absolute_one(
    home: CrateRunner, fetched: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "sub").mkdir()
    seen = run_json(home, "--mount", "sub/secrets", "--", PYTHON, "-c", REPORT, cwd=tmp_path)
    assert os.path.isabs(seen["path"])
    assert Path(seen["path"]).resolve() == (tmp_path / "sub" / "secrets").resolve()
    assert seen["content"] == fetched["json"]
    assert not os.path.lexists(tmp_path / "sub" / "secrets")


def test_each_open_of_the_fifo_reads_the_whole_content(
    home: CrateRunner, fetched: dict[str, str], folder: Path
) -> None:
    path = folder / "secrets"
    script = 'cat "$CRATE_SECRETS_PATH"; echo ---; cat "$CRATE_SECRETS_PATH"'
    done = run_crate(home, "run", "--mount", str(path), "--", "sh", "-c", script)
    assert done.returncode == 0, done
    assert done.stdout == fetched["json"] + "---\n" + fetched["json"]
    assert not os.path.lexists(path)


READ_ONE_OPEN = """
import json, os, time
with open(os.environ["CRATE_SECRETS_PATH"], "rb") as f:
    chunks = []
    while chunk := f.read(5):
        chunks.append(chunk)
    again = f.read()
    time.sleep(1)
    later = f.read()
print(json.dumps({"content": b"".join(chunks).decode(), "again": again.decode(),
                  "later": later.decode()}))
"""


def test_one_open_of_the_fifo_gets_the_content_once(
    home: CrateRunner, fetched: dict[str, str], folder: Path
) -> None:
    seen = run_json(home, "--mount", str(folder / "secrets"), "--", PYTHON, "-c", READ_ONE_OPEN)
    assert seen == {"content": fetched["json"], "again": "", "later": ""}


READ_N_TIMES = """
import json, os, sys, time
path, n = os.environ["CRATE_SECRETS_PATH"], int(sys.argv[1])
contents, present = [], []
for _ in range(n):
    with open(path, "rb") as f:
        contents.append(f.read().decode())
    present.append(os.path.lexists(path))
deadline = time.monotonic() + 20
while os.path.lexists(path) and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps({"contents": contents, "present": present,
                  "gone": not os.path.lexists(path),
                  "listing": os.listdir(os.path.dirname(path))}))
"""


@pytest.mark.parametrize("reads", [1, 2])
def test_max_reads_removes_the_fifo_after_that_many_reads(
    home: CrateRunner, fetched: dict[str, str], folder: Path, reads: int
) -> None:
    seen = run_json(
        home,
        *("--mount", str(folder / "secrets"), "--mount-max-reads", str(reads)),
        *("--", PYTHON, "-c", READ_N_TIMES, str(reads)),
    )
    assert seen["contents"] == [fetched["json"]] * reads
    # Still there between reads; gone, without a trace, after the last.
    assert seen["present"][:-1] == [True] * (reads - 1)
    assert seen["gone"] is True
    assert seen["listing"] == []


def test_nothing_of_the_secrets_is_written_to_disk_in_fifo_mode(
    home: CrateRunner, fetched: dict[str, str], tmp_path: Path, folder: Path
) -> None:
    temp = tmp_path / "tmpdir"
    temp.mkdir()
    script = (
        'cat "$CRATE_SECRETS_PATH" >/dev/null; cat "$CRATE_SECRETS_PATH" >/dev/null; '
        'ls -A "$(dirname "$CRATE_SECRETS_PATH")"; ls -A "$TMPDIR"'
    )
    done = run_crate(
        home, "run", "--mount", str(folder / "secrets"), "--", "sh", "-c", script,
        env={"TMPDIR": str(temp)},
    )  # fmt: skip
    assert done.returncode == 0, done
    # During the run: the pipe alone (no spare pipe, no temporary file).
    assert done.stdout == "secrets\n"
    assert os.listdir(folder) == []
    values = [v.encode() for v in SECRETS.values()]
    for root, _, files in os.walk(tmp_path):
        for name in files:
            data = Path(root, name).read_bytes()
            assert not any(v in data for v in values), Path(root, name)


NO_ENV = """
import json, os
with open(os.environ["CRATE_SECRETS_PATH"], encoding="utf-8") as f:
    content = f.read()
print(json.dumps({"env": dict(os.environ), "content": content}))
"""


@pytest.mark.parametrize("mode", ["fifo", "file"])
def test_no_env_keeps_the_secrets_out_of_the_environment(
    home: CrateRunner, folder: Path, mode: str
) -> None:
    path = folder / "secrets"
    seen = run_json(
        home,
        *("--mount", str(path), "--mount-mode", mode, "--no-env", "--", PYTHON, "-c", NO_ENV),
    )
    env = seen["env"]
    assert env["CRATE_SECRETS_PATH"] == str(path)
    assert not set(SECRETS) & set(env)
    dumped = json.dumps(env, ensure_ascii=False)
    assert not [v for v in SECRETS.values() if v in dumped]
    assert json.loads(seen["content"]) == SECRETS


def test_no_env_with_a_name_selection_mounts_only_those(home: CrateRunner, folder: Path) -> None:
    seen = run_json(
        home,
        *("--mount", str(folder / "s"), "--no-env", "GREETING", "--", PYTHON, "-c", NO_ENV),
    )
    assert json.loads(seen["content"]) == {"GREETING": SECRETS["GREETING"]}
    assert "GREETING" not in seen["env"]


# -- --mount: the path never outlives the command ------------------------------------


@pytest.mark.parametrize("mode", ["fifo", "file"])
@pytest.mark.parametrize(
    ("ending", "status"),
    [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 137), ("kill -TERM $$", 143)],
    ids=["exit-0", "exit-3", "sigkill", "sigterm"],
)
def test_the_mount_is_removed_however_the_command_ends(
    home: CrateRunner, folder: Path, mode: str, ending: str, status: int
) -> None:
    path = folder / "secrets"
    script = f'[ -e "$CRATE_SECRETS_PATH" ] || exit 99; {ending}'
    done = run_crate(
        home, "run", "--mount", str(path), "--mount-mode", mode, "--", "sh", "-c", script
    )
    assert done.returncode == status, done
    assert not os.path.lexists(path)
    assert os.listdir(folder) == []


# Writes its pid to `ready` once its handlers are set; on SIGTERM, notes it and exits 42.
TRAP = TRAP_SIGTERM


def start_trap(
    background: Callable[..., Running], home: CrateRunner, tmp_path: Path, *run_args: str
) -> tuple[Running, int, Path]:
    """crate running TRAP: (the run, the command's pid, its marker file)."""
    marker, ready = tmp_path / "marker", tmp_path / "ready"
    running = background(home, "run", *run_args, "--", PYTHON, "-c", TRAP, str(marker), str(ready))

    def is_ready() -> bool:
        running.check_running()
        return ready.exists()

    wait_for(is_ready, "the command to start")
    return running, int(ready.read_text()), marker


@pytest.mark.parametrize("mode", ["fifo", "file"])
def test_sigterm_to_crate_is_forwarded_and_the_mount_removed(
    home: CrateRunner,
    background: Callable[..., Running],
    tmp_path: Path,
    folder: Path,
    mode: str,
) -> None:
    path = folder / "secrets"
    running, pid, marker = start_trap(
        background, home, tmp_path, "--mount", str(path), "--mount-mode", mode
    )
    assert pid != running.proc.pid, "crate stays the parent"
    assert os.path.lexists(path)
    running.proc.send_signal(signal.SIGTERM)
    assert running.wait() == 42
    assert marker.read_text() == "TERM\n"
    assert not os.path.lexists(path)
    assert os.listdir(folder) == []
    assert process_gone(pid)


@pytest.mark.parametrize("mode", ["fifo", "file"])
def test_sigkill_of_the_command_from_outside_removes_the_mount(
    home: CrateRunner,
    background: Callable[..., Running],
    tmp_path: Path,
    folder: Path,
    mode: str,
) -> None:
    path = folder / "secrets"
    running, pid, marker = start_trap(
        background, home, tmp_path, "--mount", str(path), "--mount-mode", mode
    )
    os.kill(pid, signal.SIGKILL)
    assert running.wait() == 137
    assert not marker.exists()
    assert not os.path.lexists(path)
    assert os.listdir(folder) == []


@pytest.mark.parametrize("extra", [[], ["--mount-max-reads", "3"]], ids=["plain", "max-reads"])
def test_a_fifo_nobody_reads_does_not_hold_crate(
    home: CrateRunner, folder: Path, extra: list[str]
) -> None:
    path = folder / "secrets"
    done = run_crate(home, "run", "--mount", str(path), *extra, "--", "sh", "-c", "exit 4")
    assert done.returncode == 4, done
    assert done.stderr == ""
    assert not os.path.lexists(path)
    assert os.listdir(folder) == []


def test_a_fifo_read_by_a_process_the_command_leaves_behind_is_still_removed(
    home: CrateRunner, folder: Path, tmp_path: Path
) -> None:
    """A background reader that outlives the command: the path goes anyway."""
    path = folder / "secrets"
    out = tmp_path / "late-read"
    script = f'(sleep 1; cat "$CRATE_SECRETS_PATH" > {out}) & exit 0'
    done = run_crate(home, "run", "--mount", str(path), "--", "sh", "-c", script)
    assert done.returncode == 0
    # crate waited for the output pipes, so the reader has had its try: nothing.
    assert not os.path.lexists(path)
    assert os.listdir(folder) == []
    assert out.read_bytes() == b""


def test_readers_racing_the_end_of_the_command_leave_nothing_behind(
    home: CrateRunner, folder: Path
) -> None:
    """Readers open the pipe while crate removes it: neither the path nor a
    spare pipe may come back after the removal (a race, so a few rounds)."""
    path = folder / "secrets"
    readers = 'for i in 1 2 3 4 5 6 7 8; do (cat "$CRATE_SECRETS_PATH" >/dev/null 2>&1 &); done'
    for _ in range(15):
        done = run_crate(home, "run", "--mount", str(path), "--", "sh", "-c", readers)
        assert done.returncode == 0, done
        assert os.listdir(folder) == []


# Holds the first read open (the content is larger than a pipe's buffer, so
# crate is still writing it) while a second reader opens the path, then reads.
SECOND_READER = """
import json, os, subprocess, time
path = os.environ["CRATE_SECRETS_PATH"]
first = os.open(path, os.O_RDONLY)
deadline = time.monotonic() + 20
while os.stat(path).st_ino == os.fstat(first).st_ino and time.monotonic() < deadline:
    time.sleep(0.01)  # crate puts a fresh pipe at the path for the next reader
second = subprocess.Popen(["cat", path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
time.sleep(1)  # let it wait in open()
with os.fdopen(first, "rb") as f:
    content = f.read()
try:
    out, _ = second.communicate(timeout=20)
    result = {"first": len(content), "second": len(out), "hung": False}
except subprocess.TimeoutExpired:
    second.kill()
    second.wait()
    result = {"first": len(content), "second": None, "hung": True}
print(json.dumps(result))
"""


def test_a_reader_after_the_last_of_max_reads_gets_an_end_of_file(
    crate: CrateRunner, tmp_path: Path, folder: Path
) -> None:
    """It must not wait forever on a pipe nobody will ever write to."""
    big = tmp_path / "big.env"
    big.write_text("".join(f"BIG_{i}={'x' * 40000}\n" for i in range(4)))
    crate("secrets", "import", str(big), check=True)
    size = len(crate("secrets", "fetch", "--format", "json", check=True).stdout)
    assert size > 1 << 17
    seen = run_json(
        crate,
        *("--mount", str(folder / "secrets"), "--mount-max-reads", "1"),
        *("--", PYTHON, "-c", SECOND_READER),
    )
    assert seen == {"first": size, "second": 0, "hung": False}
    assert os.listdir(folder) == []


@pytest.mark.parametrize("watch", [[], ["--watch"]], ids=["plain", "watch"])
@pytest.mark.parametrize(
    ("command", "code"),
    [("no-such-command-for-crate", 127), ("/etc/passwd", 126)],
    ids=["not-found", "not-executable"],
)
def test_a_command_that_cannot_start_removes_the_mount(
    home: CrateRunner, folder: Path, watch: list[str], command: str, code: int
) -> None:
    done = run_crate(home, "run", "--mount", str(folder / "secrets"), *watch, "--", command)
    assert_clean_error(done, code, hidden=tuple(SECRETS.values()))
    assert command in done.stderr
    assert os.listdir(folder) == []


# -- --mount: refusals ---------------------------------------------------------------


def make_existing(kind: str, path: Path, tmp_path: Path) -> None:
    if kind == "file":
        path.write_text("keep me\n")
        path.chmod(0o644)
    elif kind == "fifo":
        os.mkfifo(path, 0o644)
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_text("keep me\n")
    else:  # a symlink to where nothing is yet
        path.symlink_to(tmp_path / "symlink-target")


@pytest.mark.parametrize("mode", ["fifo", "file"])
@pytest.mark.parametrize("kind", ["file", "fifo", "directory", "dangling-symlink"])
def test_an_existing_path_is_refused_and_left_alone(
    home: CrateRunner, tmp_path: Path, folder: Path, mode: str, kind: str
) -> None:
    path = folder / "secrets"
    make_existing(kind, path, tmp_path)
    before = os.lstat(path)
    marker = tmp_path / "ran"
    done = home("run", "--mount", str(path), "--mount-mode", mode, "--", "touch", str(marker))
    assert_clean_error(done, 7, hidden=tuple(SECRETS.values()))
    assert "already there" in done.stderr
    assert str(path) in done.stderr
    assert not marker.exists()
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino, after.st_mtime_ns) == (
        before.st_mode,
        before.st_ino,
        before.st_mtime_ns,
    )
    if kind == "file":
        assert path.read_text() == "keep me\n"
    if kind == "directory":
        assert (path / "inside").read_text() == "keep me\n"
    assert not (tmp_path / "symlink-target").exists()
    assert sorted(os.listdir(folder)) == ["secrets"]


@pytest.mark.parametrize("mode", ["fifo", "file"])
def test_a_missing_folder_is_a_clear_error(home: CrateRunner, tmp_path: Path, mode: str) -> None:
    path = tmp_path / "no-such-folder" / "secrets"
    marker = tmp_path / "ran"
    done = home("run", "--mount", str(path), "--mount-mode", mode, "--", "touch", str(marker))
    assert_clean_error(done, 2, hidden=tuple(SECRETS.values()))
    assert f"cannot mount the secrets at {path}: its folder does not exist" in done.stderr
    assert not marker.exists()
    assert not path.parent.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-env"], "--no-env needs --mount"),
        (["--mount", "{p}", "--mount-mode", "file", "--mount-max-reads", "1"], "--mount-max-reads"),
        (["--mount", "{p}", "--mount-format", "yaml"], "--mount-format"),
        (["--mount", "{p}", "--mount-mode", "socket"], "--mount-mode"),
        (["--mount", "{p}", "--mount-max-reads", "0"], "--mount-max-reads"),
        (["--mount", "{p}", "--mount-max-reads", "many"], "--mount-max-reads"),
        (["--watch", "--restart-grace", "soon"], "--restart-grace"),
    ],
    ids=[
        "no-env-without-mount",
        "max-reads-with-file",
        "bad-format",
        "bad-mode",
        "zero-reads",
        "reads-not-a-number",
        "grace-not-a-number",
    ],
)
def test_usage_errors_exit_2_before_anything_runs(
    home: CrateRunner, tmp_path: Path, folder: Path, args: list[str], message: str
) -> None:
    path = folder / "secrets"
    marker = tmp_path / "ran"
    argv = [a.replace("{p}", str(path)) for a in args]
    done = home("run", *argv, "--", "touch", str(marker))
    assert_clean_error(done, 2, hidden=tuple(SECRETS.values()))
    assert message in done.stderr
    assert not marker.exists()
    assert os.listdir(folder) == []


# -- --watch -------------------------------------------------------------------------

# argv: LOG NAME SOURCE ON_TERM. Logs "PID value=V" every 0.1 s, V being secret
# NAME from the environment (SOURCE env) or from the mount read once at start
# (SOURCE mount). On SIGTERM/SIGINT it logs "PID SIGTERM"/"PID SIGINT", then per
# ON_TERM: exit (with 43), slow (sleep 3 s, then exit 43) or ignore.
CHILD = """
import json, os, signal, sys, time
log, name, source, on_term = sys.argv[1:5]

def line(text):
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {text}\\n")

def on_signal(signum, frame):
    line(signal.Signals(signum).name)
    if on_term == "slow":
        time.sleep(3)
    if on_term != "ignore":
        sys.exit(43)

signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
if source == "mount":
    with open(os.environ["CRATE_SECRETS_PATH"], encoding="utf-8") as f:
        value = json.load(f).get(name)
else:
    value = os.environ.get(name)
while True:
    line(f"value={value}")
    time.sleep(0.1)
"""


class ChildLog:
    """The log CHILD writes: (pid, text) for each complete line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[tuple[int, str]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines(keepends=True):
            if line.endswith("\n"):
                pid, _, rest = line[:-1].partition(" ")
                out.append((int(pid), rest))
        return out

    def pids(self) -> list[int]:
        return list(dict.fromkeys(pid for pid, _ in self.lines()))

    def count(self, pid: int, text: str | None = None) -> int:
        return sum(1 for p, t in self.lines() if p == pid and (text is None or t == text))


def wait_for_value(running: Running, log: ChildLog, value: str) -> int:
    """The pid of the first command that logs `value`."""

    def find() -> int | None:
        running.check_running()
        for pid, text in log.lines():
            if text == f"value={value}":
                return pid
        return None

    return wait_for(find, f"a command that sees {value!r}")


def wait_for_stderr(running: Running, text: str) -> str:
    """The first line of crate's stderr that contains `text`."""

    def find() -> str | None:
        return next((line for line in running.stderr_lines if text in line), None)

    return wait_for(find, f"{text!r} on crate's stderr")


def restarting(running: Running) -> list[str]:
    return [line for line in running.stderr_lines if "restarting the command" in line]


@pytest.fixture
def watched(crate: CrateRunner) -> CrateRunner:
    """A fresh home (tests change it) with WATCHED and OTHER in personal/dev."""
    crate("secrets", "set", "WATCHED=value-one", "OTHER=other-one", check=True)
    return crate


def start_child(
    background: Callable[..., Running],
    runner: CrateRunner,
    log: ChildLog,
    *run_args: str,
    source: str = "env",
    on_term: str = "exit",
) -> tuple[Running, int]:
    """crate run --watch RUN_ARGS -- CHILD, once the command logs value-one."""
    running = background(
        runner,
        *("run", "--watch", *run_args),
        *("--", PYTHON, "-c", CHILD, str(log.path), "WATCHED", source, on_term),
    )
    return running, wait_for_value(running, log, "value-one")


def assert_no_value_in(text: str, *values: str) -> None:
    for value in values:
        assert value not in text, f"secret value {value!r} leaked on stderr: {text}"


def test_a_change_restarts_the_command_with_the_new_value(
    watched: CrateRunner, background: Callable[..., Running], tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "log")
    running, first = start_child(background, watched, log)
    assert first != running.proc.pid

    watched("secrets", "set", "WATCHED=value-two", check=True)
    second = wait_for_value(running, log, "value-two")
    assert second != first
    assert log.count(first, "SIGTERM") == 1, "the old command got one SIGTERM"
    assert process_gone(first)
    assert restarting(running) == ["crate: secrets changed (WATCHED); restarting the command"]

    # And again: the watch goes on after a restart.
    watched("secrets", "set", "WATCHED=value-three", check=True)
    third = wait_for_value(running, log, "value-three")
    assert third not in (first, second)
    assert process_gone(second)
    assert len(restarting(running)) == 2
    assert log.pids() == [first, second, third]

    running.proc.send_signal(signal.SIGTERM)
    assert running.wait() == 43
    assert_no_value_in(running.stderr, "value-one", "value-two", "value-three")


def test_a_change_outside_the_selection_does_not_restart(
    watched: CrateRunner, background: Callable[..., Running], tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "log")
    running, first = start_child(background, watched, log, "WATCHED")
    watched("secrets", "set", "OTHER=other-two", check=True)
    watched("secrets", "set", "WATCHED=prod-value", "--env", "prod", check=True)
    time.sleep(3)  # several polls; none may restart
    running.check_running()
    assert log.pids() == [first]
    assert restarting(running) == []

    # The watch was live all along: a change of WATCHED restarts, once.
    watched("secrets", "set", "WATCHED=value-two", check=True)
    second = wait_for_value(running, log, "value-two")
    assert second != first
    assert restarting(running) == ["crate: secrets changed (WATCHED); restarting the command"]
    assert "OTHER" not in running.stderr
    running.proc.send_signal(signal.SIGTERM)
    assert running.wait() == 43


def test_a_broken_change_keeps_the_old_process_until_fixed(
    watched: CrateRunner, background: Callable[..., Running], tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "log")
    running, first = start_child(background, watched, log)

    watched("secrets", "set", "WATCHED=${MISSING_REF}", check=True)
    notice = wait_for_stderr(running, "the command keeps its old values")
    assert notice.startswith("crate: the secrets changed, but ")
    assert notice.endswith("; the command keeps its old values")
    assert "MISSING_REF" in notice
    # The old command goes on, untouched.
    logged = log.count(first)
    wait_for(lambda: log.count(first) > logged + 5, "the old command to keep logging")
    running.check_running()
    assert log.pids() == [first]
    assert log.count(first, "SIGTERM") == 0
    assert {text for _, text in log.lines()} == {"value=value-one"}
    assert restarting(running) == []

    watched("secrets", "set", "WATCHED=value-fixed", check=True)
    second = wait_for_value(running, log, "value-fixed")
    assert second != first
    assert log.count(first, "SIGTERM") == 1
    assert restarting(running) == ["crate: secrets changed (WATCHED); restarting the command"]
    running.proc.send_signal(signal.SIGTERM)
    assert running.wait() == 43
    assert_no_value_in(running.stderr, "value-one", "value-fixed")


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(
    watched: CrateRunner, background: Callable[..., Running], tmp_path: Path
) -> None:
    log = ChildLog(tmp_path / "log")
    running, first = start_child(background, watched, log, "--restart-grace", "1", on_term="ignore")
    watched("secrets", "set", "WATCHED=value-two", check=True)
    second = wait_for_value(running, log, "value-two")
    assert second != first
    assert log.count(first, "SIGTERM") == 1, "SIGTERM came first"
    assert process_gone(first)
    lines = running.stderr_lines
    changed = lines.index("crate: secrets changed (WATCHED); restarting the command")
    killing = lines.index("crate: the command did not end within 1 s of SIGTERM; killing it")
    assert changed < killing
    assert_no_value_in(running.stderr, "value-one", "value-two")

    # It ignores SIGTERM: end it as the caller would have to.
    os.kill(second, signal.SIGKILL)
    assert running.wait() == 137
    assert log.pids() == [first, second]


@pytest.mark.parametrize(
    ("ending", "status"),
    [("exit 0", 0), ("exit 5", 5), ("kill -9 $$", 137)],
    ids=["exit-0", "exit-5", "sigkill"],
)
def test_a_command_ending_by_itself_ends_crate_with_its_status(
    watched: CrateRunner, tmp_path: Path, ending: str, status: int
) -> None:
    starts = tmp_path / "starts"
    script = f"echo started >> {starts}; sleep 1; {ending}"
    done = run_crate(watched, "run", "--watch", "--", "sh", "-c", script)
    assert done.returncode == status, done
    assert starts.read_text() == "started\n", "never restarted"
    assert done.stderr == ""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_crate_is_forwarded_once_and_ends_the_watch(
    watched: CrateRunner, background: Callable[..., Running], tmp_path: Path, sig: int
) -> None:
    """The command takes its time to end; a change meanwhile restarts nothing."""
    log = ChildLog(tmp_path / "log")
    running, first = start_child(background, watched, log, on_term="slow")
    running.proc.send_signal(sig)
    wait_for(lambda: log.count(first, signal.Signals(sig).name), "the command to get the signal")
    watched("secrets", "set", "WATCHED=value-two", check=True)
    assert running.wait() == 43
    assert log.pids() == [first]
    assert log.count(first, signal.Signals(sig).name) == 1
    assert [t for _, t in log.lines() if t.startswith("SIG")] == [signal.Signals(sig).name]
    assert restarting(running) == []
    assert process_gone(first)


@pytest.mark.parametrize(
    ("mode", "no_env"),
    [("fifo", False), ("fifo", True), ("file", False), ("file", True)],
    ids=["fifo", "fifo-no-env", "file", "file-no-env"],
)
def test_watch_with_mount_gives_the_restarted_command_the_new_content(
    watched: CrateRunner,
    background: Callable[..., Running],
    tmp_path: Path,
    folder: Path,
    mode: str,
    no_env: bool,
) -> None:
    path = folder / "secrets"
    log = ChildLog(tmp_path / "log")
    run_args = ["--mount", str(path), "--mount-mode", mode, *(["--no-env"] if no_env else [])]
    running, first = start_child(background, watched, log, *run_args, source="mount")

    watched("secrets", "set", "WATCHED=value-two", check=True)
    second = wait_for_value(running, log, "value-two")
    assert second != first
    assert len(restarting(running)) == 1
    assert_no_value_in(running.stderr, "value-one", "value-two")
    # The mount is still crate's: same kind, 0600, nothing else beside it.
    st = os.lstat(path)
    assert stat.S_ISFIFO(st.st_mode) if mode == "fifo" else stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert os.listdir(folder) == ["secrets"]
    if mode == "file":
        assert json.loads(path.read_text())["WATCHED"] == "value-two"

    running.proc.send_signal(signal.SIGTERM)
    assert running.wait() == 43
    assert not os.path.lexists(path)
    assert os.listdir(folder) == []
