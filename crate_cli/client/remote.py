"""The remote client's state: the login, its credentials, pinned org keys.

- `login.json` in the crate home records the server URL, the org the token
  belongs to, an optional CA file, where the credentials live and the
  login's own random id.
- Credentials (the API token and the key of the offline copies) live in the
  OS keystore when a secure one exists, else in 0600 files under
  `credentials/`. The offline copies are only as safe as the token that
  fetched them, so they share its custody.
- `pins.json` keeps, per server and org, the org public key the user trusts
  (set by `crate login`, or on first use of `CRATE_SERVER`): values are
  sealed to it and every retrieval's answer must be signed by it, so a relay
  that swaps keys is caught (exit 5). It stays after logout, like ssh's
  known_hosts: a key that changes is never accepted silently.
- `CRATE_SERVER`, `CRATE_TOKEN` and `CRATE_CA_FILE` override the login.
- Logging out removes the server's offline copies (fallback.py) with the
  token they are bound to (copy_binding).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crate_cli.config import CrateHome, ensure_private_dir, write_private_file
from crate_cli.errors import (
    CrateError,
    IntegrityError,
    InvalidInput,
    UnsupportedVersion,
)
from crate_cli.records import Record
from crate_cli.vault.crypto import sha256_hex

if TYPE_CHECKING:
    from collections.abc import Callable

    from crate_cli.client.transport.http import HttpTransport

LOGIN_FILE = "login.json"
PINS_FILE = "pins.json"
TOKEN_LABEL = "api-token"
FALLBACK_KEY_LABEL = "fallback-key"  # where older crates kept the key of their copies


class Credentials:
    """Small secrets of the remote client, in the OS keystore or 0600 files."""

    def __init__(self, home: CrateHome, where: str) -> None:
        self.home = home
        self.where = where  # "keyring" or "file"

    @property
    def folder(self) -> Path:
        return self.home.data_dir / "credentials"

    def _username(self, label: str) -> str:
        digest = sha256_hex(str(self.home.data_dir).encode("utf-8"))[:12]
        return f"{label}:{digest}"

    def get(self, label: str) -> str | None:
        if self.where == "keyring":
            from crate_cli.vault.slots.keyring import get_credential

            return get_credential(self._username(label))
        try:
            return (self.folder / label).read_text("utf-8").strip() or None
        except FileNotFoundError:
            return None

    def set(self, label: str, value: str) -> None:
        if self.where == "keyring":
            from crate_cli.vault.slots.keyring import set_credential

            set_credential(self._username(label), value, f"crate {label} ({self.home.data_dir})")
            return
        ensure_private_dir(self.folder)
        write_private_file(self.folder / label, value.encode("utf-8"))

    def delete(self, label: str) -> None:
        if self.where == "keyring":
            from crate_cli.vault.slots.keyring import delete_credential

            delete_credential(self._username(label))
            return
        (self.folder / label).unlink(missing_ok=True)


class Login(Record):
    server: str
    org: str | None
    ca_file: str | None
    credentials: str  # where the token is: "keyring" or "file"
    id: str = ""  # random, made by `crate login`: what its offline copies are bound to


def read_login(home: CrateHome) -> Login | None:
    path = home.data_dir / LOGIN_FILE
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise CrateError(
            f"{path} is not readable JSON", "log in again: crate logout; crate login"
        ) from None
    if not isinstance(data, dict) or data.get("format") != 1:
        raise UnsupportedVersion(f"{path} was written by another version of crate")
    return Login(
        str(data["server"]),
        data.get("org"),
        data.get("ca_file"),
        str(data.get("credentials", "file")),
        str(data.get("id") or ""),
    )


def write_login(home: CrateHome, login: Login) -> None:
    ensure_private_dir(home.data_dir)
    data = {"format": 1, **login._asdict()}
    write_private_file(home.data_dir / LOGIN_FILE, (json.dumps(data, indent=2) + "\n").encode())


def remove_login(home: CrateHome) -> Login | None:
    """Forget the login: its token, and its server's offline copies with their key."""
    login = read_login(home)
    if login is not None:
        credentials = Credentials(home, login.credentials)
        credentials.delete(TOKEN_LABEL)
        credentials.delete(FALLBACK_KEY_LABEL)  # the key of unbound copies (older crates)
        from crate_cli.client.fallback import forget_server_copies

        forget_server_copies(home, _spelled(login.server) or login.server)
    (home.data_dir / LOGIN_FILE).unlink(missing_ok=True)
    return login


def copy_binding(login: Login | None, server: str, token: str) -> str:
    """What a server's offline copies are bound to: the login that made them
    and its token, or without a login the token alone (CRATE_SERVER and
    CRATE_TOKEN). Another login, or another token, finds none of them."""
    owner = login.id if login is not None and login.server == server and login.id else "env"
    return sha256_hex(f"{owner}|{server}|{token}".encode())[:32]


# -- pinned org keys ----------------------------------------------------------


class Pin(Record):
    """An org public key the user trusts for one server."""

    kid: str
    public_key_pem: str
    pinned_at: str

    def key(self) -> tuple[str, Any]:
        """(kid, RSA public key), checked against each other."""
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        from crate_cli.vault import jwe

        try:
            public = load_pem_public_key(self.public_key_pem.encode("ascii"))
        except (ValueError, UnicodeError):
            public = None
        if not isinstance(public, rsa.RSAPublicKey) or jwe.thumbprint(public) != self.kid:
            raise IntegrityError(
                "a pinned organization key in pins.json does not match its fingerprint",
                "remove the file's entry for this server and log in again with --fingerprint",
            )
        return self.kid, public


def fingerprint(kid: str) -> str:
    """How a key is shown and compared: SHA256: and its RFC 7638 thumbprint."""
    return f"SHA256:{kid}"


def _pin_name(server: str, org: str) -> str:
    return f"{server}|{org}"


def read_pins(home: CrateHome) -> dict[str, Pin]:
    path = home.data_dir / PINS_FILE
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        raise CrateError(f"{path} is not readable JSON", "remove it and log in again") from None
    if not isinstance(data, dict) or data.get("format") != 1:
        raise UnsupportedVersion(f"{path} was written by another version of crate")
    pins = {}
    for name, entry in dict(data.get("pins") or {}).items():
        try:
            pins[str(name)] = Pin(
                str(entry["kid"]), str(entry["public_key_pem"]), str(entry["pinned_at"])
            )
        except (KeyError, TypeError):
            continue
    return pins


def pinned_key(home: CrateHome, server: str, org: str) -> Pin | None:
    return read_pins(home).get(_pin_name(server, org))


def pinned_orgs(home: CrateHome, server: str) -> list[str]:
    """The orgs of `server` whose keys are pinned."""
    prefix = f"{server}|"
    return sorted(name[len(prefix) :] for name in read_pins(home) if name.startswith(prefix))


FINGERPRINT_ENV = "CRATE_FINGERPRINT"


def expected_fingerprint(text: str | None, where: str = "--fingerprint") -> str | None:
    """The key id in `SHA256:...` (the prefix may be left out), or None."""
    if not text:
        return None
    kid = text.strip().removeprefix("SHA256:")
    if len(kid) != 43 or not all(c.isascii() and (c.isalnum() or c in "-_") for c in kid):
        raise InvalidInput(
            f"{where} takes SHA256: and 43 letters, digits, '-' or '_' "
            "(as crate org fingerprint prints it)"
        )
    return kid


def check_new_pin(home: CrateHome, server: str, org: str, pin: Pin, expected: str | None) -> None:
    """Whether `pin`, offered by `server` for `org`, may be pinned: it must be
    the expected one when a fingerprint was given; without one, trust on
    first use holds only for a server with no pin at all. Else IntegrityError
    (exit 5), nothing saved."""
    if expected is not None:
        if pin.kid != expected:
            raise IntegrityError(
                f"{server} offers organization {org!r}'s key {fingerprint(pin.kid)}, not the "
                f"{fingerprint(expected)} you gave: a relay may be in the middle; nothing "
                "was saved",
                "check the fingerprint with: crate org fingerprint, where the server runs",
            )
        return
    before = pinned_key(home, server, org)
    if before is not None and before.kid != pin.kid:
        raise IntegrityError(
            f"{server} offers organization {org!r}'s key {fingerprint(pin.kid)}, but "
            f"{fingerprint(before.kid)} was pinned before: a relay may be in the middle, or "
            "the key was replaced; nothing was saved",
            f"if an admin replaced it, check the new one with them and log in with "
            f"--fingerprint {fingerprint(pin.kid)}",
        )
    others = [o for o in pinned_orgs(home, server) if o != org]
    if before is None and others:
        # A relay that names another org than the pinned ones (in /whoami,
        # which is not signed) would otherwise be trusted on first use.
        raise IntegrityError(
            f"{server} offers a key for organization {org!r}, which was never pinned there, "
            f"though {', '.join(repr(o) for o in others)} was: a relay may be in the middle; "
            "nothing was saved",
            f"check its fingerprint (crate org fingerprint, where the server runs) and give it "
            f"with --fingerprint or {FINGERPRINT_ENV}",
        )


def save_pin(home: CrateHome, server: str, org: str, pin: Pin) -> None:
    from crate_cli.config import file_lock

    with file_lock(home.data_dir / ".pins.lock"):
        pins = read_pins(home)
        pins[_pin_name(server, org)] = pin
        data = {"format": 1, "pins": {k: p._asdict() for k, p in sorted(pins.items())}}
        write_private_file(
            home.data_dir / PINS_FILE, (json.dumps(data, indent=2) + "\n").encode("utf-8")
        )


def fetch_pin(transport: Any, org: str) -> Pin:
    """The org key a server offers now, checked against its key id."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from crate_cli.client.secrets import SecretsClient
    from crate_cli.clock import utc_now

    kid, public = SecretsClient(transport, org).public_key()
    pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode("ascii")
    return Pin(kid, pem, utc_now())


def trusted_key(
    home: CrateHome,
    server: str,
    org: str,
    transport: Any,
    notify: Any,
    expected: str | None = None,
) -> tuple[str, Any]:
    """The org key to trust for `server`: the pinned one; else the one the
    server offers if it has `expected` as fingerprint (CRATE_FINGERPRINT), or
    on first use (said on stderr), pinned now."""
    pin = pinned_key(home, server, org)
    if pin is not None:
        if expected is not None and pin.kid != expected:
            raise IntegrityError(
                f"organization {org!r}'s key pinned for {server} is {fingerprint(pin.kid)}, "
                f"not the {fingerprint(expected)} that {FINGERPRINT_ENV} gives",
                "if an admin replaced the key, log in again with --fingerprint",
            )
        return pin.key()
    pin = fetch_pin(transport, org)
    check_new_pin(home, server, org, pin, expected)
    save_pin(home, server, org, pin)
    if expected is None:
        notify(
            f"crate: trusting organization {org!r}'s key {fingerprint(pin.kid)} from {server} "
            f"on first use; compare it with `crate org fingerprint` where the server runs, or "
            f"set {FINGERPRINT_ENV}"
        )
    return pin.key()


class LoggedIn(Record):
    """A login that succeeded: who the token says the caller is, its org, the
    org key pinned, and whether that key was trusted on first use."""

    who: dict[str, Any]
    org: str
    pin: Pin
    first_use: bool
    place: str  # where the token is kept: keyring or file


def log_in(
    home: CrateHome,
    server: str,
    token: str,
    ca_file: str | None,
    expected: str | None,
    choose_place: Callable[[], str],
) -> LoggedIn:
    """Check `token` against `server` (whoami), pin its org's key (refusing
    one that differs from `expected` or from the key pinned before), then keep
    the token where `choose_place` says (keyring or file; asked only now,
    since it may probe the keyring) and the login in login.json, in place of
    any login before."""
    from crate_cli.client.transport.http import HttpTransport
    from crate_cli.vault.names import check_org

    transport = HttpTransport(server, token, ca_file)
    who = transport.request("GET", "/whoami")
    org = check_org(str(who.get("organization")))
    pin = fetch_pin(transport, org)
    before = pinned_key(home, server, org)
    check_new_pin(home, server, org, pin, expected)
    place = choose_place()
    remove_login(home)  # the previous token may be kept somewhere else
    Credentials(home, place).set(TOKEN_LABEL, token)
    save_pin(home, server, org, pin)
    write_login(home, Login(server, org, ca_file, place, os.urandom(16).hex()))
    return LoggedIn(who, org, pin, expected is None and before is None, place)


class Remote(Record):
    """The server this command talks to, and with what."""

    server: str
    token: str
    org: str | None
    ca_file: str | None
    credentials: Credentials
    login: Login | None  # the stored login for this server, if there is one

    def transport(self) -> HttpTransport:
        from crate_cli.client.transport.http import HttpTransport

        return HttpTransport(self.server, self.token, self.ca_file)


def resolve_remote(home: CrateHome, environ: dict[str, str]) -> Remote | None:
    """The remote from CRATE_SERVER/CRATE_TOKEN or the login; None for local use."""
    login = read_login(home)
    server = environ.get("CRATE_SERVER") or (login.server if login else None)
    if not server:
        if environ.get("CRATE_TOKEN"):
            raise InvalidInput(
                "CRATE_TOKEN is set but no server is: set CRATE_SERVER or run crate login"
            )
        return None
    from crate_cli.client.transport.http import check_server_url

    server = check_server_url(server)
    same = login is not None and _spelled(login.server) == server
    where = login.credentials if login is not None and same else "file"
    credentials = Credentials(home, where)
    token = environ.get("CRATE_TOKEN") or (credentials.get(TOKEN_LABEL) if same else None)
    if not token:
        raise InvalidInput(
            f"no API token for {server}",
            "log in with: crate login --server URL, or set CRATE_TOKEN",
        )
    ca_file = environ.get("CRATE_CA_FILE") or (login.ca_file if login and same else None)
    return Remote(
        server,
        token,
        login.org if login and same else None,
        ca_file,
        credentials,
        login if same else None,
    )


def _spelled(url: str) -> str | None:
    """A stored server URL in check_server_url's spelling (None if it is not one)."""
    from crate_cli.client.transport.http import check_server_url

    try:
        return check_server_url(url)
    except InvalidInput:
        return None


def token_org(home: CrateHome, remote: Remote) -> str:
    """The org of a token given without a login (CRATE_SERVER and CRATE_TOKEN).

    A token belongs to one org for its whole life, so the answer of
    `/whoami` is kept (by a hash of server and token): later commands, and
    the offline copy when the server is down, do not need to ask again.
    """
    digest = sha256_hex(f"{remote.server}|{remote.token}".encode())[:32]
    path = home.data_dir / "fallback" / "token-orgs.json"
    try:
        known = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    org = known.get(digest)
    if isinstance(org, str):
        return org
    who = remote.transport().request("GET", "/whoami")
    org = str(who.get("organization"))
    known[digest] = org
    ensure_private_dir(path.parent)
    write_private_file(path, json.dumps(known).encode("utf-8"))
    return org
