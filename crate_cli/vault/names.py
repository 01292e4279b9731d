"""The naming rules of DESIGN §1, checked in one place.

Each check raises `InvalidInput` (exit 2) with the rule in the message. The
name itself is repeated only when it is shaped like a name, so a value
pasted into a name field by mistake is not echoed back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

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


# Names that steer how programs load, which shell or interpreter code runs,
# which programs others start, where programs read their configuration or
# whom they trust: a secret of such a name, put in the environment of every
# command `crate run` starts, would let whoever wrote it run code as whoever
# reads it, or read their traffic (DESIGN §9). A deny list is best effort;
# it is broad on purpose (an admin allows a name that is needed). Matched
# without regard to case (zsh ties `path` to PATH; transformers change case).
_RUNS = "it decides which programs run"
_CONFIG = "it decides which configuration or code files programs read"
_SHELL = "it changes what shells run"
_LOADS = "it loads code into an interpreter, runtime or build"
_STARTS = "it names a program that others start"
_TRUST = "it decides whom programs trust on the network"
STEERING_NAMES: dict[str, str] = {
    **dict.fromkeys(("PATH", "CDPATH", "SHELL", "BROWSER", "VISUAL", "FCEDIT"), _RUNS),
    **dict.fromkeys(("PAGER", "EDITOR"), _STARTS),
    "HOME": _CONFIG,
    **dict.fromkeys(
        ("CC", "CXX", "CPP", "LD", "AR", "AS", "FC", "MAKE", "MAKEFILES", "TMPDIR", "TEMP", "TMP"),
        _RUNS,
    ),
    **dict.fromkeys(
        (
            "ZDOTDIR",
            "LOCPATH",
            "HOSTALIASES",
            "KUBECONFIG",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
            "BOTO_CONFIG",
            "SOFTHSM2_CONF",
            "TERMINFO",
            "TERMINFO_DIRS",
            "HISTFILE",
            "DBUS_SESSION_BUS_ADDRESS",
            "SSH_AUTH_SOCK",
            "LESS",
            "LESSOPEN",
            "LESSCLOSE",
            "LESSKEY",
            "LESSKEYIN",
            "LESSSECURE",
        ),
        _CONFIG,
    ),
    **dict.fromkeys(
        (
            "ENV",
            "BASH_ENV",
            "IFS",
            "GLOBIGNORE",
            "PS0",
            "PS1",
            "PS2",
            "PS3",
            "PS4",
            "PROMPT",
            "RPROMPT",
            "RPS1",
            "PROMPT_COMMAND",
        ),
        _SHELL,
    ),
    **dict.fromkeys(
        (
            "NODE_OPTIONS",
            "NODE_REPL_EXTERNAL_MODULE",
            "RUBYLIB",
            "PERLLIB",
            "GLIBC_TUNABLES",
            "CLASSPATH",
            "GOROOT",
            "GOBIN",
            "GOENV",
            "GOTOOLCHAIN",
            "GOPRIVATE",
            "GONOSUMDB",
            "GONOSUMCHECK",
            "GOINSECURE",
            "GOSUMDB",
            "GOEXPERIMENT",
            "MAKELEVEL",
        ),
        _LOADS,
    ),
    **dict.fromkeys(
        ("SSLKEYLOGFILE", "NODE_TLS_REJECT_UNAUTHORIZED", "NODE_EXTRA_CA_CERTS"), _TRUST
    ),
}
STEERING_PREFIXES: dict[str, str] = {
    "LD_": "it steers the dynamic loader",
    "DYLD_": "it steers the dynamic loader",
    "PYTHON": "it steers the Python interpreter",
    "PERL": "it steers the Perl interpreter",
    "RUBY": "it steers the Ruby interpreter",
    "GEM_": _LOADS,
    "BUNDLE_": _LOADS,
    "JAVA": _LOADS,
    "_JAVA_": _LOADS,
    "JDK_": _LOADS,
    "MAVEN_": _LOADS,
    "GRADLE_": _LOADS,
    "DOTNET_": _LOADS,
    "CORECLR_": _LOADS,
    "COMPLUS_": _LOADS,
    "RUSTC": _LOADS,
    "CARGO_": _LOADS,
    "LUA_": _LOADS,
    "ERL_": _LOADS,
    "PHP": _LOADS,
    "R_": _LOADS,
    "QT_": _LOADS,
    "GTK_": _LOADS,
    "PIP_": "it decides where pip gets its packages",
    "UV_": "it decides where uv gets its packages",
    "POETRY_": "it decides where poetry gets its packages",
    "YARN_": "it configures yarn, which can run programs it names",
    "NPM_CONFIG_": "it configures npm, which can run programs it names",
    "GIT_": "it steers git, which can run programs it names",
    "DOCKER_": "it decides which docker daemon and configuration are used",
    "KUBE": "it decides which cluster and editor kubectl uses",
    "XDG_": _CONFIG,
    "SSL_": _TRUST,
    "OPENSSL_": _TRUST,
    "TPM2": "it decides how crate and tpm2-tools reach the TPM",
    "CRATE_": "it is crate's own",
}
# A name that ends so, after at least one character of its own (FLAGS alone
# steers nothing; MAKEFLAGS does).
STEERING_SUFFIXES: dict[str, str] = {
    "PATH": _RUNS,  # MANPATH, FPATH, GOPATH, QT_PLUGIN_PATH, LIBRARY_PATH ...
    "HOME": _CONFIG,  # HOME, GNUPGHOME, JAVA_HOME, CARGO_HOME ...
    "RC": _CONFIG,  # PHPRC, PSQLRC, INPUTRC ...
    "INIT": _LOADS,  # VIMINIT, EXINIT, LUA_INIT ...
    "FLAGS": _LOADS,  # MAKEFLAGS, CFLAGS, RUSTFLAGS, GOFLAGS ...
    "OPT": _LOADS,  # RUBYOPT, PERL5OPT ...
    "OPTS": _LOADS,  # MAVEN_OPTS, JAVA_OPTS, SHELLOPTS ...
    "OPTIONS": _LOADS,  # TAR_OPTIONS, NODE_OPTIONS ...
    "PAGER": _STARTS,  # PAGER, MANPAGER, GIT_PAGER, PSQL_PAGER ...
    "EDITOR": _STARTS,  # EDITOR, KUBE_EDITOR, SUDO_EDITOR ...
    "ASKPASS": _STARTS,  # SSH_ASKPASS, SUDO_ASKPASS ...
    "LAUNCHER": _STARTS,  # CMAKE_C_COMPILER_LAUNCHER ...
    "WRAPPER": _STARTS,  # RUSTC_WRAPPER ...
    "PROXY": _TRUST,  # HTTPS_PROXY, ALL_PROXY, GOPROXY ...
    "CA_BUNDLE": _TRUST,  # REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE ...
    "CERT_FILE": _TRUST,
    "CERT_DIR": _TRUST,
}


STEERING_HELP = (
    "PATH, HOME, LD_*, DYLD_*, PYTHON*, NODE_OPTIONS, GIT_*, CRATE_*, *PAGER, *EDITOR, "
    "*_OPTS, *FLAGS, *_PROXY and others that steer loaders, shells, interpreters and tools"
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
    for suffix, why in STEERING_SUFFIXES.items():
        if upper.endswith(suffix) and len(upper) > len(suffix):
            return why
    return None


# Up to this many names, substring searches find a steering name fastest;
# beyond, two expressions (tries of the prefixes and reversed suffixes), whose
# compiling (about 3 ms) the search then repays.
_FEW_NAMES = 2000
_EXACT = frozenset(STEERING_NAMES)
_PREFIX_NEEDLES = tuple(f"\n{p}" for p in STEERING_PREFIXES)
_SUFFIX_NEEDLES = tuple(f"{x}\n" for x in STEERING_SUFFIXES)
_steering_re: tuple[re.Pattern[str], re.Pattern[str]] | None = None


def steering_names(names: list[str]) -> list[str]:
    """The names among `names` that steer processes. `crate run` checks every
    name it passes on, so this is a fast filter (0.3 ms for 300 names, 4 ms
    for 10,000; no regular expression to compile for the usual few hundred),
    and `steering_reason` decides for the names it lets through."""
    body = "\n".join(names).upper()
    if not _EXACT.isdisjoint(body.split("\n")) or _affixes_in("\n" + body + "\n", len(names)):
        return [n for n in names if steering_reason(n) is not None]
    return []


def _affixes_in(text: str, count: int) -> bool:
    """Whether some line of `text` starts with a steering prefix or ends with a
    steering suffix (maybe the whole line: the caller decides)."""
    global _steering_re
    if count <= _FEW_NAMES:
        return any(n in text for n in _PREFIX_NEEDLES) or any(n in text for n in _SUFFIX_NEEDLES)
    if _steering_re is None:
        _steering_re = (
            re.compile("\n" + _trie(STEERING_PREFIXES)),
            re.compile("\n" + _trie([x[::-1] for x in STEERING_SUFFIXES])),
        )
    return (
        _steering_re[0].search(text) is not None or _steering_re[1].search(text[::-1]) is not None
    )


def _trie(words: Iterable[str]) -> str:
    """A regular expression matching any of `words`, as a trie (one branch per
    character), which Python's engine tries in steps rather than word by word."""
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        if set(node) == {""}:
            return ""
        branches = [re.escape(c) + build(child) for c, child in sorted(node.items()) if c]
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(root)
