"""crate on a pseudo-terminal, for the tests of its prompts (pexpect).

Hidden prompts are answered only once the terminal's echo is off
(`waitnoecho`), and the whole transcript is kept, so a typed secret that
shows up anywhere in it is caught.
"""

from __future__ import annotations

import io

import pexpect

from tests.support.crate_runner import CrateRunner


class Terminal:
    """crate running on a pseudo-terminal, with everything it printed."""

    def __init__(self, crate: CrateRunner, *args: str, env: dict[str, str] | None = None):
        argv = [*crate.argv0, *args]
        self.transcript = io.StringIO()
        self.child = pexpect.spawn(
            argv[0],
            argv[1:],
            env=crate.env(env),
            encoding="utf-8",
            timeout=30,
            dimensions=(24, 200),
        )
        self.child.logfile_read = self.transcript

    def answer_hidden(self, prompt: str, text: str) -> None:
        self.child.expect_exact(prompt)
        assert self.child.waitnoecho(timeout=10), "the prompt did not turn echo off"
        self.child.sendline(text)

    def answer(self, prompt: str, text: str) -> None:
        self.child.expect_exact(prompt)
        self.child.sendline(text)

    def finish(self) -> int:
        """Wait for crate to end; its exit status."""
        self.child.expect(pexpect.EOF)
        self.child.close()
        assert self.child.signalstatus is None, f"killed by signal {self.child.signalstatus}"
        return int(self.child.exitstatus)

    @property
    def output(self) -> str:
        return self.transcript.getvalue()
