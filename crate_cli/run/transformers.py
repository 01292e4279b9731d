"""Name transformers for `crate run --name-transformer`, as Doppler defines them.

Secret names are upper snake case by convention (`TWILIO_API_KEY`); some
frameworks read other shapes:

    camel        twilioApiKey
    upper-camel  TwilioApiKey
    lower-snake  twilio_api_key
    lower-kebab  twilio-api-key
    tf-var       TF_VAR_twilio_api_key      (Terraform input variables)
    dotnet-env   Twilio__ApiKey             (.NET: `__` separates sections,
                                             each section is upper camel case)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from crate_cli.errors import InvalidInput


def _words(name: str) -> list[str]:
    return [w for w in name.split("_") if w]


def _upper_camel(name: str) -> str:
    return "".join(w[:1].upper() + w[1:].lower() for w in _words(name))


def _camel(name: str) -> str:
    text = _upper_camel(name)
    return text[:1].lower() + text[1:]


TRANSFORMERS: dict[str, Callable[[str], str]] = {
    "camel": _camel,
    "upper-camel": _upper_camel,
    "lower-snake": lambda name: "_".join(_words(name)).lower(),
    "lower-kebab": lambda name: "-".join(_words(name)).lower(),
    "tf-var": lambda name: "TF_VAR_" + "_".join(_words(name)).lower(),
    "dotnet-env": lambda name: "__".join(_upper_camel(part) for part in name.split("__")),
}


def check_transformer(kind: str) -> str:
    if kind not in TRANSFORMERS:
        raise InvalidInput(
            f"unknown name transformer {kind!r}: use one of {', '.join(TRANSFORMERS)}"
        )
    return kind


def transform(pairs: Iterable[tuple[str, str]], kind: str) -> list[tuple[str, str]]:
    """The pairs with transformed names; two names that become one are an error."""
    fn = TRANSFORMERS[check_transformer(kind)]
    out: dict[str, tuple[str, str]] = {}
    for name, value in pairs:
        new = fn(name)
        if not new:
            raise InvalidInput(f"--name-transformer {kind} turns {name} into an empty name")
        if new in out:
            raise InvalidInput(
                f"--name-transformer {kind} turns both {out[new][0]} and {name} into {new}",
                "rename one of them, or run without the transformer",
            )
        out[new] = (name, value)
    return [(new, value) for new, (_, value) in out.items()]
