"""A real HSM for the tests: a SoftHSM2 token in a temp folder (its own SOFTHSM2_CONF)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.tools import require_tool

PIN = "1234"
# Where distributions put SoftHSM2's module.
MODULE_PLACES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


class Token:
    def __init__(self, root: Path) -> None:
        require_tool("softhsm2-util")
        modules = [p for p in MODULE_PLACES if Path(p).exists()]
        if not modules:
            pytest.fail("softhsm2-util is installed but libsofthsm2.so was not found")
        self.module = modules[0]
        self.dir = root / "tokens"
        self.dir.mkdir(parents=True)
        self.conf = root / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {self.dir}\nobjectstore.backend = file\n")
        self.init()

    def init(self) -> None:
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                "crate",
                "--pin",
                PIN,
                "--so-pin",
                "5678",
            ],
            env={"SOFTHSM2_CONF": str(self.conf), "PATH": "/usr/bin:/bin"},
            check=True,
            capture_output=True,
        )

    def env(self, pin: str | None = PIN) -> dict[str, str]:
        env = {"SOFTHSM2_CONF": str(self.conf)}
        if pin is not None:
            env["CRATE_PKCS11_PIN"] = pin
        return env

    def options(self) -> list[str]:
        return ["--pkcs11-module", self.module, "--pkcs11-token", "crate"]
