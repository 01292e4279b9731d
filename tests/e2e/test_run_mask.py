"""End to end: `crate run --mask`, crate staying the command's parent.

With --mask crate starts the command, filters its output (pipes, or a
pseudo-terminal when crate's stdout is a terminal), relays signals and ends
with the command's status. These tests run the installed crate in real
processes, on pipes and under pexpect, and check what the command sees
(signals, terminal, stdin) and what the caller sees (output, status,
terminal settings). tests/e2e/test_cli_run.py covers the exec form, and
tests/e2e/test_run_modes.py what both forms must do alike; the tests here
that use `--no-mask` add only what neither does.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest

from tests.support.crate_runner import CrateRunner
from tests.support.terminal import Terminal

pytestmark = pytest.mark.e2e

PYTHON = sys.executable
TOKEN = "sk_live_4f9a8c2e1b7d"
PASSWORD = "correct-horse-battery"
PIN = "abc"  # 3 bytes: never masked
DB_HOST = "db-7f3a.internal.example"
DB_URL = "postgres://app@${DB_HOST}/main"
PEM = "-----BEGIN TEST KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END TEST KEY-----"
SECRETS = {
    "TOKEN": TOKEN,
    "PASSWORD": PASSWORD,
    "PIN": PIN,
    "DB_HOST": DB_HOST,
    "DB_URL": DB_URL,
    "PEM": PEM,
}
HIDDEN = (TOKEN, PASSWORD, DB_HOST, DB_URL, PEM, PEM.splitlines()[1])


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> CrateRunner:
    """A home with SECRETS in personal/dev; tests must not change it."""
    runner = CrateRunner(tmp_path_factory.mktemp("run-mask") / "home")
    runner("secrets", "set", *(f"{k}={v}" for k, v in SECRETS.items()), check=True)
    return runner


def py(code: str, *args: str) -> list[str]:
    return [PYTHON, "-c", code, *args]


def assert_no_secret(text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    for value in HIDDEN:
        assert value.encode() not in data, f"{value!r} was not masked: {data[:2000]!r}"


def wait_for(path: Path, alive: Callable[[], object], timeout: float = 60) -> None:
    """Until `path` exists; `alive()` must stay true meanwhile."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert alive(), "the command ended before it was ready"
        assert time.monotonic() < deadline, "the command never got ready"
        time.sleep(0.02)


def lines(output: str) -> list[str]:
    """A terminal transcript as lines, without the carriage returns."""
    return output.replace("\r", "").splitlines()


# -- signals sent to crate ------------------------------------------------------------

# Records each of the signals named in argv[3] in argv[1], writes its pid to
# argv[2] when ready; after the first signal, waits a second for a duplicate,
# then exits 42: its own choice, which must be crate's status.
TRAP = """
import os, signal, sys, time
marker, ready, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
got = []
def on_signal(signum, frame):
    got.append(signum)
    with open(marker, "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
for name in names:
    signal.signal(getattr(signal, name), on_signal)
with open(ready + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
print("ready", flush=True)
deadline = time.monotonic() + 120  # never outlive a failed test for long
while not got and time.monotonic() < deadline:
    time.sleep(0.02)
time.sleep(1.0)
print("handled", flush=True)
sys.exit(42)
"""


def trap(tmp_path: Path, *names: str) -> tuple[Path, Path, list[str]]:
    marker, ready = tmp_path / "marker", tmp_path / "ready"
    return marker, ready, py(TRAP, str(marker), str(ready), ",".join(names))


@pytest.mark.parametrize(
    ("mode", "sig"),
    [
        ("--mask", "SIGTERM"),
        ("--mask", "SIGINT"),
        ("--mask", "SIGHUP"),
        ("--mask", "SIGQUIT"),
        ("--mask", "SIGUSR1"),
        ("--mask", "SIGUSR2"),
        # The exec form: test_cli_run.py has SIGTERM only.
        ("--no-mask", "SIGINT"),
        ("--no-mask", "SIGUSR1"),
    ],
)
def test_a_signal_sent_to_crate_reaches_the_command_once(
    home: CrateRunner, tmp_path: Path, mode: str, sig: str
) -> None:
    marker, ready, command = trap(tmp_path, sig)
    proc = subprocess.Popen(
        [*home.argv0, "run", mode, "--", *command],
        stdout=subprocess.PIPE,
        env=home.env(),
    )
    try:
        wait_for(ready, lambda: proc.poll() is None)
        child = int(ready.read_text())
        if mode == "--mask":
            assert child != proc.pid, "with --mask crate stays the parent"
        else:
            assert child == proc.pid, "without --mask crate is the command (exec)"
        proc.send_signal(getattr(signal, sig))
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 42
    assert marker.read_text() == f"{sig}\n"
    assert out == b"ready\nhandled\n"


def test_a_signal_the_command_survives_leaves_it_running(home: CrateRunner, tmp_path: Path) -> None:
    """SIGUSR1 first (recorded, not fatal), then SIGTERM ends the command."""
    marker, ready = tmp_path / "marker", tmp_path / "ready"
    code = TRAP.replace("while not got and", "while signal.SIGTERM not in got and")
    proc = subprocess.Popen(
        [*home.argv0, "run", "--mask", "--", *py(code, str(marker), str(ready), "SIGUSR1,SIGTERM")],
        stdout=subprocess.PIPE,
        env=home.env(),
    )
    try:
        wait_for(ready, lambda: proc.poll() is None)
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while not marker.exists() or not marker.read_text():
            assert time.monotonic() < deadline, "SIGUSR1 never reached the command"
            time.sleep(0.02)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 42
    assert marker.read_text() == "SIGUSR1\nSIGTERM\n"


def test_crate_ends_soon_after_the_command_is_killed(home: CrateRunner, tmp_path: Path) -> None:
    marker, ready, command = trap(tmp_path, "SIGUSR1")
    proc = subprocess.Popen(
        [*home.argv0, "run", "--mask", "--", *command], stdout=subprocess.PIPE, env=home.env()
    )
    try:
        wait_for(ready, lambda: proc.poll() is None)
        os.kill(int(ready.read_text()), signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 137
    assert not marker.exists()


# -- masking on pipes ---------------------------------------------------------------------


def test_stdout_and_stderr_are_masked(home: CrateRunner) -> None:
    done = home(
        "run",
        "--mask",
        "--",
        "sh",
        "-c",
        'echo "out $TOKEN."; echo "err $PASSWORD." >&2; echo "both $TOKEN$PASSWORD"',
        check=True,
    )
    assert done.stdout == "out ***.\nboth ******\n"
    assert done.stderr == "err ***.\n"


def test_a_value_of_several_lines_is_masked(home: CrateRunner) -> None:
    done = home("run", "--mask", "--", "sh", "-c", 'printf "<%s>\\n" "$PEM"', check=True)
    assert done.stdout == "<***>\n"


WRITE_SPLIT = """
import os, sys, time
value = os.environ[sys.argv[1]]
for stream in (sys.stdout, sys.stderr):
    stream.write("before " + value[:5])
    stream.flush()
    time.sleep(0.5)
    stream.write(value[5:] + " after\\n")
    stream.flush()
"""


def test_a_value_written_in_two_parts_is_masked(home: CrateRunner) -> None:
    done = home("run", "--mask", "--", *py(WRITE_SPLIT, "TOKEN"), check=True)
    assert done.stdout == "before *** after\n"
    assert done.stderr == "before *** after\n"


def test_a_value_of_three_characters_is_not_masked(home: CrateRunner) -> None:
    done = home("run", "--mask", "--", "sh", "-c", 'echo "pin=$PIN token=$TOKEN"', check=True)
    assert done.stdout == f"pin={PIN} token=***\n"


SHOW_URL = """
import os, sys
print("url", os.environ["DB_URL"])
print("has DB_HOST:", "DB_HOST" in os.environ)
for arg in sys.argv[1:]:
    print("arg", arg)
"""


def test_references_are_masked_resolved_and_referenced(home: CrateRunner) -> None:
    """Only DB_URL reaches the command, but the value of DB_HOST it refers to
    (fetched to resolve it) and its stored form are masked too."""
    resolved = DB_URL.replace("${DB_HOST}", DB_HOST)
    args = [f"host={DB_HOST}", f"stored={DB_URL}", f"resolved={resolved}"]
    done = home("run", "--mask", "DB_URL", "--", *py(SHOW_URL, *args), check=True)
    assert done.stdout.splitlines() == [
        "url ***",
        "has DB_HOST: False",
        "arg host=***",
        "arg stored=***",
        "arg resolved=***",
    ]
    unmasked = home("run", "DB_URL", "--", *py(SHOW_URL), check=True)
    assert unmasked.stdout.splitlines()[0] == f"url {resolved}"


def test_output_of_a_background_child_is_masked_too(home: CrateRunner) -> None:
    """The command exits while a child of its own still writes to stdout:
    crate passes on (masked) everything until that child is done."""
    done = home(
        "run",
        "--mask",
        "--",
        "sh",
        "-c",
        '(sleep 1; echo "late $TOKEN") & echo "early $TOKEN"; exit 3',
    )
    assert done.returncode == 3
    assert done.stdout == "early ***\nlate ***\n"


# Writes argv[1] MiB of random bytes with the secrets in them, in writes of
# random sizes (some cutting a secret in two).
BIG_OUTPUT = """
import os, random, sys

def stream(size, values):
    rng = random.Random(20240)
    parts, total = [], 0
    while total < size:
        part = rng.randbytes(rng.randint(0, 3000)) + rng.choice(values)
        parts.append(part)
        total += len(part)
    return b"".join(parts)[:size]

if __name__ == "__main__":
    values = [os.environ["TOKEN"].encode(), os.environ["PASSWORD"].encode()]
    data = stream(int(sys.argv[1]) << 20, values)
    rng = random.Random(1)
    view = memoryview(data)
    while view:
        n = os.write(1, view[: rng.randint(1, 200000)])
        view = view[n:]
"""


@pytest.mark.slow
def test_a_large_output_passes_unchanged_but_for_the_masks(home: CrateRunner) -> None:
    size = 20
    done = home.run_bytes("run", "--mask", "--", *py(BIG_OUTPUT, str(size)), timeout=300)
    assert done.returncode == 0, done.stderr
    namespace: dict[str, object] = {"__name__": "big_output"}
    exec(BIG_OUTPUT, namespace)  # the same stream, here
    data = namespace["stream"](size << 20, [TOKEN.encode(), PASSWORD.encode()])  # type: ignore[operator]
    expected = data.replace(TOKEN.encode(), b"***").replace(PASSWORD.encode(), b"***")
    assert expected.count(b"***") > 1000
    out = done.stdout
    if out != expected:
        at = next((i for i, (a, b) in enumerate(zip(out, expected, strict=False)) if a != b), None)
        at = min(len(out), len(expected)) if at is None else at
        pytest.fail(
            f"output differs at byte {at} (lengths {len(out)} and {len(expected)}): "
            f"{out[at - 40 : at + 40]!r} != {expected[at - 40 : at + 40]!r}"
        )
    assert hashlib.sha256(out).digest() == hashlib.sha256(expected).digest()


# -- the run.mask setting -------------------------------------------------------------


def set_run_mask(crate: CrateRunner, value: bool) -> None:
    import tomllib

    import tomli_w

    path = crate.home / "settings.toml"
    data = tomllib.loads(path.read_text()) if path.exists() else {}
    data.setdefault("run", {})["mask"] = value
    path.write_text(tomli_w.dumps(data))


SHOW_TOKEN_AND_PID = ["sh", "-c", 'echo "token=$TOKEN pid=$$"']


def token_and_pid(crate: CrateRunner, *run_args: str) -> tuple[str, bool]:
    """What the command printed for $TOKEN, and whether it ran as crate's pid (exec)."""
    proc = subprocess.Popen(
        [*crate.argv0, "run", *run_args, "--", *SHOW_TOKEN_AND_PID],
        stdout=subprocess.PIPE,
        env=crate.env(),
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    match = re.fullmatch(r"token=(.*) pid=(\d+)\n", out.decode())
    assert match, out
    return match.group(1), int(match.group(2)) == proc.pid


def test_the_run_mask_setting_turns_masking_on(crate: CrateRunner) -> None:
    crate("secrets", "set", f"TOKEN={TOKEN}", check=True)
    assert token_and_pid(crate) == (TOKEN, True), "off by default: exec"
    set_run_mask(crate, True)
    assert token_and_pid(crate) == ("***", False)
    assert token_and_pid(crate, "--no-mask") == (TOKEN, True)
    assert token_and_pid(crate, "--mask") == ("***", False)
    set_run_mask(crate, False)
    assert token_and_pid(crate) == (TOKEN, True)
    assert token_and_pid(crate, "--mask") == ("***", False)


# -- on a terminal (pexpect) ----------------------------------------------------------

PTY_CHILD = """
import os, sys
print("isatty", os.isatty(0), os.isatty(1), os.isatty(2), flush=True)
print("token", os.environ["TOKEN"], flush=True)
line = input("Password: ")
print("got", repr(line), flush=True)
"""


def test_on_a_terminal_the_command_gets_a_terminal_and_is_masked(home: CrateRunner) -> None:
    term = Terminal(home, "run", "--mask", "--", *py(PTY_CHILD))
    term.child.expect_exact("isatty True True True")
    term.child.expect_exact("token ***")
    # A prompt with nothing like a secret in it is not held back.
    term.child.expect_exact("Password: ")
    term.child.sendline("typed words")
    term.child.expect_exact("got 'typed words'")
    assert term.finish() == 0, term.output
    assert_no_secret(term.output)


def test_input_typed_before_the_command_starts_reaches_it(home: CrateRunner) -> None:
    """Typed at once, while crate is still starting: not lost when crate puts
    its terminal in raw mode."""
    argv = [*home.argv0, "run", "--mask", "--", "sh", "-c", 'read line; echo "got=$line"']
    script = 'sleep 1; exec "$@"'
    child = pexpect.spawn(
        "sh", ["-c", script, "sh", *argv], env=home.env(), encoding="utf-8", timeout=60
    )
    child.sendline("typed early")  # crate has not started yet
    child.expect_exact("got=typed early")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_d_ends_the_commands_input(home: CrateRunner) -> None:
    script = 'echo started; cat; echo "cat ended $TOKEN"'
    term = Terminal(home, "run", "--mask", "--", "sh", "-c", script)
    term.child.expect_exact("started")
    term.child.sendline("one line")
    term.child.expect_exact("one line")
    term.child.sendeof()
    term.child.expect_exact("cat ended ***")
    assert term.finish() == 0, term.output


def test_a_secret_typed_on_the_terminal_is_masked_in_the_echo(home: CrateRunner) -> None:
    term = Terminal(home, "run", "--mask", "--", *py(PTY_CHILD))
    term.child.expect_exact("Password: ")
    term.child.sendline(PASSWORD)
    term.child.expect_exact("got '***'")
    assert term.finish() == 0, term.output
    assert_no_secret(term.output)


def test_a_value_of_several_lines_is_masked_on_a_terminal(home: CrateRunner) -> None:
    """The terminal turns the value's newlines into \\r\\n (ONLCR): still masked."""
    term = Terminal(home, "run", "--mask", "--", "sh", "-c", 'printf "<%s>\\n" "$PEM"')
    assert term.finish() == 0, term.output
    assert lines(term.output) == ["<***>"]
    assert_no_secret(term.output)


def test_split_writes_are_masked_on_a_terminal(home: CrateRunner) -> None:
    term = Terminal(home, "run", "--mask", "--", *py(WRITE_SPLIT, "PASSWORD"))
    assert term.finish() == 0, term.output
    assert lines(term.output) == ["before *** after", "before *** after"]


@pytest.mark.parametrize("mode", ["--mask", "--no-mask"])
def test_ctrl_c_on_a_terminal_reaches_the_command_once(
    home: CrateRunner, tmp_path: Path, mode: str
) -> None:
    marker, _, command = trap(tmp_path, "SIGINT")
    term = Terminal(home, "run", mode, "--", *command)
    term.child.expect_exact("ready")
    term.child.sendintr()
    term.child.expect_exact("handled")
    assert term.finish() == 42, term.output
    assert marker.read_text() == "SIGINT\n"


def test_ctrl_c_reaches_the_command_once_when_only_stdin_is_a_terminal(
    home: CrateRunner, tmp_path: Path
) -> None:
    """stdout to a file: pipes, and the command is in the terminal's
    foreground group with crate. The terminal signals both; crate must not
    forward a second one."""
    marker, ready, command = trap(tmp_path, "SIGINT")
    out = tmp_path / "out"
    argv = [*home.argv0, "run", "--mask", "--", *command]
    child = pexpect.spawn(
        "sh",
        ["-c", 'exec "$@" > "$OUT"', "sh", *argv],
        env=home.env({"OUT": str(out)}),
        encoding="utf-8",
        timeout=60,
    )
    wait_for(ready, child.isalive)
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 42, (child.exitstatus, child.signalstatus)
    assert marker.read_text() == "SIGINT\n"
    assert out.read_text() == "ready\nhandled\n"


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGUSR1"])
def test_a_signal_sent_to_crate_on_a_terminal_reaches_the_command_once(
    home: CrateRunner, tmp_path: Path, sig: str
) -> None:
    marker, _, command = trap(tmp_path, sig)
    term = Terminal(home, "run", "--mask", "--", *command)
    term.child.expect_exact("ready")
    term.child.kill(getattr(signal, sig))
    term.child.expect_exact("handled")
    assert term.finish() == 42, term.output
    assert marker.read_text() == f"{sig}\n"


WINDOW = """
import os, signal, sys
def on_winch(signum, frame):
    columns, rows = os.get_terminal_size()
    print(f"resized {columns}x{rows}", flush=True)
signal.signal(signal.SIGWINCH, on_winch)
columns, rows = os.get_terminal_size()
print(f"start {columns}x{rows}", flush=True)
sys.stdin.readline()
print("done", flush=True)
"""


@pytest.mark.parametrize("mode", ["--mask", "--no-mask"])
def test_a_resize_reaches_the_command(home: CrateRunner, mode: str) -> None:
    term = Terminal(home, "run", mode, "--", *py(WINDOW))
    term.child.expect_exact("start 200x24")
    term.child.setwinsize(40, 100)
    term.child.expect_exact("resized 100x40")
    term.child.setwinsize(30, 120)
    term.child.expect_exact("resized 120x30")
    term.child.sendline("")
    term.child.expect_exact("done")
    assert term.finish() == 0, term.output


WINDOW_NO_STDIN = """
import os, signal, time
def on_winch(signum, frame):
    columns, rows = os.get_terminal_size()
    print(f"resized {columns}x{rows}", flush=True)
    os._exit(0)
signal.signal(signal.SIGWINCH, on_winch)
print("ready", flush=True)
time.sleep(60)
"""


def test_a_resize_reaches_the_command_when_stdin_is_not_the_terminal(
    home: CrateRunner,
) -> None:
    """stdout on a terminal, stdin from elsewhere: the command still has a pty,
    and crate keeps its master to pass resizes on."""
    argv = [*home.argv0, "run", "--mask", "--", *py(WINDOW_NO_STDIN)]
    child = pexpect.spawn(
        "sh",
        ["-c", '"$@" < /dev/null', "sh", *argv],
        env=home.env(),
        encoding="utf-8",
        timeout=60,
        dimensions=(24, 200),
    )
    child.expect_exact("ready")
    child.setwinsize(40, 100)
    child.expect_exact("resized 100x40")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


STTY_LINE = re.compile(r"[0-9a-f]+(:[0-9a-f]+){10,}")


def test_the_commands_terminal_starts_as_crates(home: CrateRunner) -> None:
    """The command's pty gets the settings crate's terminal had, not the raw
    mode crate puts its own terminal in (where Ctrl-C would be just a byte)."""
    script = 'stty -g; "$@"'
    argv = [*home.argv0, "run", "--mask", "--", "sh", "-c", "stty -g; stty -a"]
    transcript = io.StringIO()
    child = pexpect.spawn(
        "sh", ["-c", script, "sh", *argv], env=home.env(), encoding="utf-8", timeout=60
    )
    child.logfile_read = transcript
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, transcript.getvalue()
    settings = [line for line in lines(transcript.getvalue()) if STTY_LINE.fullmatch(line)]
    assert len(settings) == 2, transcript.getvalue()
    assert settings[0] == settings[1], transcript.getvalue()
    flags = transcript.getvalue().split()
    assert "isig" in flags, "Ctrl-C would not signal the command"
    assert "icanon" in flags


@pytest.mark.parametrize(
    ("command", "status"),
    [
        (["sh", "-c", 'echo "token=$TOKEN"'], 0),
        # The command changes its own terminal and leaves it so.
        (["sh", "-c", "stty raw -echo; exit 3"], 3),
        (["sh", "-c", "stty -icanon -isig; kill -TERM $$"], 143),
        (["no-such-command-for-crate"], 127),
    ],
    ids=["exit", "stty-raw", "killed", "not-found"],
)
def test_the_terminal_is_restored(home: CrateRunner, command: list[str], status: int) -> None:
    """`stty -g` is the same before and after crate in one terminal session,
    and what is typed afterwards is echoed again."""
    script = 'stty -g; "$@"; echo "status=$?"; stty -g; read line; echo "read=$line"'
    argv = [*home.argv0, "run", "--mask", "--", *command]
    transcript = io.StringIO()
    child = pexpect.spawn(
        "sh", ["-c", script, "sh", *argv], env=home.env(), encoding="utf-8", timeout=60
    )
    child.logfile_read = transcript
    child.expect_exact(f"status={status}")
    child.expect(STTY_LINE)  # crate has ended: now type
    child.sendline("typed after")
    child.expect_exact("read=typed after")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, transcript.getvalue()
    shown = lines(transcript.getvalue())
    settings = [line for line in shown if STTY_LINE.fullmatch(line)]
    assert len(settings) == 2, shown
    assert settings[0] == settings[1], "crate left its terminal changed"
    assert "typed after" in shown, "no echo after crate"
    assert_no_secret(transcript.getvalue())


def test_a_typed_key_that_starts_a_secret_echoes_with_the_next_key_on_a_terminal(
    home: CrateRunner,
) -> None:
    """The echo of `s` could begin TOKEN (sk_live_...): it is not shown, however
    long the next key takes, and shows with it once that key shows it is not
    TOKEN. The price of never showing the start of a value."""
    term = Terminal(home, "run", "--mask", "--", "cat")
    assert term.child.waitnoecho(timeout=30), "crate never put its terminal in raw mode"
    term.child.send("s")
    with pytest.raises(pexpect.TIMEOUT):
        term.child.expect_exact("s", timeout=0.5)
    term.child.send("x")
    term.child.expect_exact("sx", timeout=10)
    term.child.sendline("")
    term.child.send("s")  # and now TOKEN itself, the rest typed later
    time.sleep(0.3)
    term.child.sendline("k_live_4f9a8c2e1b7d")
    term.child.expect_exact("***")  # the echo, masked
    term.child.expect_exact("***")  # what cat prints back, masked
    term.child.sendcontrol("d")  # (sendeof reads crate's raw terminal settings)
    assert term.finish() == 0
    assert_no_secret(term.output)
    assert "sk" not in term.output


def test_on_a_pipe_a_held_prefix_waits_for_what_follows(home: CrateRunner) -> None:
    """Off a terminal nothing is released early: a value written slowly in
    pieces is still masked whole."""
    code = (
        "import sys, time\n"
        "for part in ('s', 'k_l', 'ive_4f9a8c2e1b7d', '\\n'):\n"
        "    sys.stdout.write(part); sys.stdout.flush(); time.sleep(0.3)\n"
    )
    out = home("run", "--mask", "--", *py(code), check=True).stdout
    assert out == "***\n"
