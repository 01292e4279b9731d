"""What this crate is: `crate --version` and `crate version [--json]`.

The version number has one source, `crate_cli.__version__` (pyproject.toml
reads it too). The commit and build date come from `build.json` beside this
module, which scripts/build-binary writes into the frozen binary; a source
checkout reads the commit from its `.git` instead, and a plain `pip install`
knows neither (they are null).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from crate_cli import __version__

BUILD_FILE = Path(__file__).with_name("build.json")


def frozen() -> bool:
    """True in the PyInstaller binary."""
    return bool(getattr(sys, "frozen", False))


def _git_commit(checkout: Path) -> str | None:
    """HEAD's commit in a source checkout, read from the files (no git process).

    In a worktree `.git` is a file naming the worktree's own git folder (its
    HEAD), whose `commondir` names the repository's (its refs)."""
    git = common = checkout / ".git"
    try:
        if git.is_file():
            text = git.read_text().strip()
            if not text.startswith("gitdir: "):
                return None
            git = common = checkout / text[len("gitdir: ") :]
            if (git / "commondir").is_file():
                common = git / (git / "commondir").read_text().strip()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head or None
        ref = head[len("ref: ") :]
        loose = common / ref
        if loose.is_file():
            return loose.read_text().strip() or None
        for line in (common / "packed-refs").read_text().splitlines():
            commit, _, name = line.partition(" ")
            if name == ref:
                return commit
    except OSError:
        return None
    return None


def build() -> dict[str, str | None]:
    """The commit and build date, where known."""
    try:
        data = json.loads(BUILD_FILE.read_text())
        return {"commit": data.get("commit"), "build_date": data.get("build_date")}
    except (OSError, ValueError, AttributeError):
        pass
    commit = None if frozen() else _git_commit(Path(__file__).resolve().parent.parent)
    return {"commit": commit, "build_date": None}


def version_line() -> str:
    """One line for `crate --version`: cheap, no imports beyond json."""
    info = build()
    extra = [v for v in ((info["commit"] or "")[:12], info["build_date"]) if v]
    if frozen():
        extra.append("binary")
    return f"crate {__version__}" + (f" ({', '.join(extra)})" if extra else "")


def _distribution(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def report(sqlite_version: str) -> dict[str, Any]:
    """Everything `crate version --json` prints: what to paste into a bug report
    (`sqlite_version`: the library the vaults are read with)."""
    import platform

    import cryptography
    from cryptography.hazmat.backends.openssl import backend

    return {
        "version": __version__,
        **build(),
        "frozen": frozen(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": f"{platform.system().lower()}-{platform.machine()}",
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
        "sqlite": sqlite_version,
        # The optional parts a key slot or the server needs: null when absent.
        "components": {
            name: _distribution(name)
            for name in ("click", "rich", "keyring", "python-pkcs11", "tpm2-pytss", "uvicorn")
        },
    }
