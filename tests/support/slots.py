"""What the tests call a key-slot provider with: a SlotContext on a temp
home, a prompt that types given answers, and (for tpm2) a TCTI that leads
nowhere and a well-formed slot record whose blobs no TPM made."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crate_cli.config import CrateHome
from crate_cli.vault.slots import tpm2
from crate_cli.vault.slots.base import SlotContext

TPM2_NOWHERE = "device:/nonexistent/tpmrm0"
TPM2_RECORD = {
    "tcti": TPM2_NOWHERE,
    "primary": tpm2.PRIMARY,
    "public": base64.b64encode(b"public-blob").decode(),
    "private": base64.b64encode(b"private-blob").decode(),
    "pin": False,
    "pcrs": [7],
}


def slot_context(
    tmp_path: Path,
    environ: dict[str, str] | None = None,
    prompt: Any = None,
    **options: Any,
) -> SlotContext:
    return SlotContext(
        home=CrateHome(tmp_path, tmp_path), environ=environ or {}, prompt=prompt, options=options
    )


def answers(*typed: str) -> Any:
    """A prompt that types `typed` in turn and records what it was asked."""
    queue: Iterator[str] = iter(typed)
    asked: list[str] = []

    def prompt(question: str) -> str:
        asked.append(question)
        return next(queue)

    prompt.asked = asked  # type: ignore[attr-defined]
    return prompt
