"""The naming rules of DESIGN §1, checked in one place.

Each check raises `InvalidInput` (exit 2) with the rule in the message. The
name itself is repeated only when it is shaped like a name, so a value
pasted into a name field by mistake is not echoed back.
"""

from __future__ import annotations

import re

from crate_cli.errors import InvalidInput, PayloadTooLarge

ORG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
ENV_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
SECRET_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
TAG_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
TOKEN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}")

ORG_RULE = "lowercase letters, digits and '-', starting with a letter or digit, at most 63"
ENV_RULE = "lowercase letters, digits, '_' and '-', starting with a letter or digit, at most 63"
SECRET_RULE = (
    "letters, digits and '_', not starting with a digit, at most 256 "
    "(it must be a valid environment variable name)"
)
TAG_RULE = (
    "lowercase letters, digits, '_', '.' and '-', starting with a letter or digit, at most 63"
)

TOKEN_RULE = "letters, digits, '_', '.', '@' and '-', starting with a letter or digit, at most 63"

# A rejected name is repeated only when it looks like a name: a URL, a
# password with punctuation or a long token pasted by mistake is not echoed.
_NAME_SHAPED = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _shown(name: str) -> str:
    if _NAME_SHAPED.fullmatch(name):
        return repr(name)
    return f"of {len(name)} characters"


def _check(kind: str, name: str, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(name, str) or not pattern.fullmatch(name):
        shown = _shown(name) if isinstance(name, str) else "(not text)"
        raise InvalidInput(f"invalid {kind} name {shown}: use {rule}")
    return name


def check_org(name: str) -> str:
    return _check("organization", name, ORG_RE, ORG_RULE)


def check_env(name: str) -> str:
    return _check("environment", name, ENV_RE, ENV_RULE)


def check_secret_name(name: str) -> str:
    return _check("secret", name, SECRET_RE, SECRET_RULE)


_SECRET_LINES = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]{0,255}\n)*")


def all_secret_names(names: list[str]) -> bool:
    """Whether every item is a valid secret name: one regex pass over them all
    (a retrieval checks thousands), with the names joined by newlines (and a
    name that holds one is refused first)."""
    try:
        joined = "\n".join(names)
    except TypeError:  # not all text
        return False
    if joined.count("\n") != max(len(names) - 1, 0):  # a name holding a newline
        return False
    return _SECRET_LINES.fullmatch(joined + "\n" if names else "") is not None


def check_tag(name: str) -> str:
    return _check("tag", name, TAG_RE, TAG_RULE)


def check_token_name(name: str) -> str:
    return _check("token", name, TOKEN_RE, TOKEN_RULE)


def check_tags(tags: list[str]) -> list[str]:
    """Validate tags and return them sorted without duplicates."""
    return sorted({check_tag(t) for t in tags})


def check_value(name: str, raw: bytes, max_bytes: int) -> str:
    """A secret value: UTF-8 text without NUL, at most `max_bytes` bytes."""
    if len(raw) > max_bytes:
        raise PayloadTooLarge(
            f"value of {name} is {len(raw)} bytes; the limit is {max_bytes}",
            "raise secrets.max_value_bytes in settings.toml if this is intended",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(
            f"value of {name} is not valid UTF-8 text",
            "store binary data base64-encoded (for example: base64 FILE | crate secrets set "
            f"{name} -)",
        ) from None
    if "\x00" in text:
        raise InvalidInput(
            f"value of {name} contains a NUL byte, which no environment variable can hold",
            "store binary data base64-encoded",
        )
    return text


# Names that steer how programs load, which shell or interpreter code runs, or
# where programs look for their configuration: a secret of such a name, put in
# the environment of every command `crate run` starts, would let whoever
# wrote it run code as whoever reads it (DESIGN §9). Matched without regard
# to case (zsh ties `path` to PATH; a transformer may change the case).
STEERING_NAMES: dict[str, str] = {
    **dict.fromkeys(("PATH", "CDPATH"), "it decides which programs run"),
    **dict.fromkeys(
        ("HOME", "ZDOTDIR", "XDG_CONFIG_HOME", "GCONV_PATH", "LOCPATH", "HOSTALIASES"),
        "it decides which configuration files programs read",
    ),
    **dict.fromkeys(
        (
            "ENV",
            "BASH_ENV",
            "IFS",
            "SHELLOPTS",
            "BASHOPTS",
            "PS4",
            "PROMPT_COMMAND",
            "GLOBIGNORE",
            "SHELL",
        ),
        "it changes what shells run",
    ),
    **dict.fromkeys(
        (
            "NODE_OPTIONS",
            "NODE_PATH",
            "RUBYOPT",
            "RUBYLIB",
            "PERLLIB",
            "JAVA_TOOL_OPTIONS",
            "_JAVA_OPTIONS",
            "JDK_JAVA_OPTIONS",
            "GLIBC_TUNABLES",
        ),
        "it loads code into an interpreter or runtime",
    ),
    **dict.fromkeys(
        (
            "EDITOR",
            "VISUAL",
            "PAGER",
            "LESSOPEN",
            "LESSCLOSE",
            "SSH_ASKPASS",
            "SUDO_ASKPASS",
            "BROWSER",
        ),
        "it names a program that others start",
    ),
}
STEERING_PREFIXES: dict[str, str] = {
    "LD_": "it steers the dynamic loader",
    "DYLD_": "it steers the dynamic loader",
    "PYTHON": "it steers the Python interpreter",
    "PERL5": "it steers the Perl interpreter",
    "GIT_": "it steers git, which can run programs it names",
    "NPM_CONFIG_": "it configures npm, which can run programs it names",
    "CRATE_": "it is crate's own",
}


STEERING_HELP = (
    "PATH, HOME, LD_*, DYLD_*, PYTHON*, NODE_OPTIONS, GIT_*, CRATE_* and others that "
    "steer loaders, shells and interpreters"
)


def steering_reason(name: str) -> str | None:
    """Why a variable of this name steers the processes that inherit it, or None."""
    upper = name.upper()
    reason = STEERING_NAMES.get(upper)
    if reason is not None:
        return reason
    for prefix, why in STEERING_PREFIXES.items():
        if upper.startswith(prefix):
            return why
    return None


_steering_re: re.Pattern[str] | None = None


def steering_names(names: list[str]) -> list[str]:
    """The names among `names` that steer processes. `crate run` checks up to
    10,000 on every start: one regular expression over them all, upper-cased
    and joined by newlines (about 1.3 ms for 10,000), and a look name by name
    only when it finds one."""
    global _steering_re
    if _steering_re is None:
        exact = "|".join(re.escape(n) for n in STEERING_NAMES)
        prefixes = "|".join(re.escape(p) for p in STEERING_PREFIXES)
        _steering_re = re.compile(rf"\n(?:(?:{exact})\n|{prefixes})")
    if _steering_re.search("\n" + "\n".join(names).upper() + "\n") is None:
        return []
    return [n for n in names if steering_reason(n) is not None]
