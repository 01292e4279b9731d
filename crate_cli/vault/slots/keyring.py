"""The `keyring` slot: a random key-encryption key kept in the OS keystore.

The key-encryption key (KEK) lives in the keystore that the `keyring` library
picks (Secret Service on Linux, the macOS Keychain, the Windows Credential
Locker), as a base64 string under service `crate` and a user name that names
the slot and the crate home. The slot record keeps the master key wrapped by
that KEK: neither the keystore item nor the registry alone gives the key.

The backend is chosen as keyring chooses it (PYTHON_KEYRING_BACKEND, then
keyringrc.cfg, then the best available), in the process environment, which is
also where D-Bus is found; an empty PYTHON_KEYRING_BACKEND counts as unset.
Backends that keep secrets in plain text or keep nothing (fail, null,
keyrings.alt) are refused unless the slot is created with
`allow_insecure_keyring`; the record remembers that, and unsealing accepts
only what sealing accepted.

Nothing here waits for a person. On Secret Service the slot talks to the
service itself, without keyring's item lookups: a locked collection is
reported, never unlocked, because unlocking shows a prompt that may never be
answered (an ssh session, a CI job). Other backends may prompt on their own,
so every keystore call runs under a deadline. keyring is imported only here
(it costs about 40 ms).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import sys
from collections.abc import Callable
from contextlib import closing
from typing import Any, TypeVar

from crate_cli.errors import IntegrityError, KeystoreError
from crate_cli.records import Record
from crate_cli.threads import start_thread
from crate_cli.vault import crypto
from crate_cli.vault.slots.base import OTHER_SLOT, SlotContext, SlotProvider, b64, slot_aad, unb64

SERVICE = "crate"
OTHER_KEYSTORE = "choose another keystore (file, passphrase, tpm2 or pkcs11)"
# Seconds a keystore may take. Sealing is interactive (crate init, crate keys
# slots add) and may meet a keystore's own unlock prompt; unsealing happens on
# every command and must fail over to the next slot quickly; the probe decides
# `auto` and must not slow `crate init` down.
SEAL_TIMEOUT = 60.0
UNSEAL_TIMEOUT = 10.0
PROBE_TIMEOUT = 3.0
# Where the Secret Service keeps the default collection (the login keyring).
DEFAULT_COLLECTION = "/org/freedesktop/secrets/aliases/default"

T = TypeVar("T")


class _Problem(Exception):
    """Why the keystore cannot do what was asked; turned into a KeystoreError
    worded for sealing, unsealing or probing."""

    def __init__(self, kind: str, reason: str, short: str | None = None) -> None:
        super().__init__(reason)
        self.kind = kind  # insecure | unreachable | locked | timeout | failed
        self.reason = reason
        self.short = short or reason  # for `auto`, which prefixes "keyring: "


class _Backend(Record):
    impl: Any  # a keyring.backend.KeyringBackend
    name: str
    insecure: bool
    secret_service: bool


def _keyring() -> Any:
    """keyring and the modules this slot uses, imported here rather than in the
    helper thread of `_bounded` (an import left hanging there would hold the
    import lock)."""
    try:
        import keyring
        import keyring.backends.chainer
        import keyring.backends.SecretService
        import keyring.errors
    except ImportError:
        raise KeystoreError(
            "the keyring slot needs the keyring package, which is not installed",
            "install it with: pip install keyring",
        ) from None
    with contextlib.suppress(ImportError):  # Linux and BSD only
        import secretstorage  # noqa: F401
    return keyring


def _name(backend: object) -> str:
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _kind(backend: object) -> str:
    """`none` (keeps nothing), `plain` (plain text) or `secure`."""
    from keyring.backends import fail, null

    if isinstance(backend, fail.Keyring | null.Keyring):
        return "none"
    if type(backend).__module__.split(".")[:2] == ["keyrings", "alt"]:
        return "plain"
    return "secure"


def _why_no_secret_service() -> str | None:
    """On systems that use the Secret Service, why it is not there."""
    if sys.platform in ("darwin", "win32"):
        return None
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return "no D-Bus session (DBUS_SESSION_BUS_ADDRESS is unset)"
    try:
        with closing(_connect()) as connection:
            import secretstorage

            if not secretstorage.check_service_availability(connection):
                return "no Secret Service daemon on the D-Bus session"
    except _Problem as e:
        return e.reason
    except Exception as e:
        return f"the D-Bus session failed ({_one_line(e)})"
    return None


def _detect_without_env() -> Any:
    """keyring's own choice when PYTHON_KEYRING_BACKEND is set but empty, which
    crate reads as unset (as it does its own variables); keyring would try to
    import a backend named ""."""
    from keyring import backend, core
    from keyring.backends import fail

    fallback: Any = fail.Keyring
    return core.load_config() or max(
        backend.get_all_keyring(), default=fallback(), key=backend.by_priority
    )


def _select(allow_insecure: bool) -> _Backend:
    """The backend keyring would use, or its most secure member if it chains several."""
    keyring = _keyring()
    named = os.environ.get("PYTHON_KEYRING_BACKEND")
    try:
        chosen = keyring.get_keyring() if named != "" else _detect_without_env()
    except Exception as e:  # PYTHON_KEYRING_BACKEND or keyringrc.cfg names an unusable one
        where = f"PYTHON_KEYRING_BACKEND={named}" if named else "the backend of keyringrc.cfg"
        raise _Problem("insecure", f"{where} fails: {_one_line(e)}") from None
    from keyring.backends.chainer import ChainerBackend
    from keyring.backends.SecretService import Keyring as SecretService

    members = list(chosen.backends) if isinstance(chosen, ChainerBackend) else [chosen]
    kinds = [_kind(m) for m in members]
    for wanted in ("secure", "plain") if allow_insecure else ("secure",):
        for member, kind in zip(members, kinds, strict=True):
            if kind == wanted:
                return _Backend(
                    member, _name(member), kind != "secure", isinstance(member, SecretService)
                )
    if "plain" in kinds:
        plain = _name(members[kinds.index("plain")])
        raise _Problem(
            "insecure", f"{plain} keeps secrets in plain text", f"only {plain} (plain text)"
        )
    why = _why_no_secret_service()
    name = _name(chosen)
    raise _Problem(
        "insecure", f"{name}: {why}" if why else name, why or f"keyring offers only {name}"
    )


def _bounded(fn: Callable[[], T], seconds: float) -> T:
    """Run `fn` in a helper thread and give up after `seconds`: a keystore that
    waits for an unlock prompt nobody answers must not hang crate. The thread
    is left behind (as a daemon) when it does not finish."""
    outcome: list[T] = []
    failure: list[_Problem] = []

    def run() -> None:
        try:
            outcome.append(fn())
        except _Problem as e:
            failure.append(e)
        except Exception as e:  # a backend or keyring itself; never a traceback
            failure.append(_Problem("failed", f"the OS keyring failed: {_one_line(e)}"))

    worker = start_thread(run, name="crate-keyring")
    worker.join(seconds)
    if worker.is_alive():
        raise _Problem(
            "timeout",
            f"the OS keyring did not answer within {seconds:g} s "
            "(is it waiting for an unlock prompt?)",
        )
    if failure:
        raise failure[0]
    return outcome[0]


# -- Secret Service, spoken directly so that nothing ever prompts ---------------------


def _connect() -> Any:
    try:
        import secretstorage
        from secretstorage.exceptions import SecretServiceNotAvailableException
    except ImportError:
        raise _Problem("unreachable", "SecretStorage is not installed") from None
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        raise _Problem("unreachable", "no D-Bus session (DBUS_SESSION_BUS_ADDRESS is unset)")
    try:
        return secretstorage.dbus_init()
    except (SecretServiceNotAvailableException, OSError, RuntimeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise _Problem("unreachable", f"cannot connect to the D-Bus session ({why})") from None


def _open_collection(backend: _Backend, connection: Any) -> Any:
    """The collection keyring would use, refusing a locked or missing one."""
    import secretstorage
    from secretstorage.exceptions import ItemNotFoundException

    if not secretstorage.check_service_availability(connection):
        raise _Problem("unreachable", "no Secret Service daemon on the D-Bus session")
    path = getattr(backend.impl, "preferred_collection", None) or DEFAULT_COLLECTION
    try:
        collection = secretstorage.Collection(connection, path)
    except ItemNotFoundException:
        # Creating it would prompt for a new keyring password: not here.
        what = "no default collection" if path == DEFAULT_COLLECTION else f"no collection {path}"
        raise _Problem("unreachable", f"the Secret Service has {what}") from None
    if collection.is_locked():
        raise _Problem("locked", f"the Secret Service collection {collection.get_label()!r}")
    return collection


def _attributes(backend: _Backend, username: str) -> dict[str, str]:
    query = getattr(backend.impl, "_query", None)  # keyring's scheme (KEYRING_PROPERTY_SCHEME)
    if callable(query):
        return {str(k): str(v) for k, v in query(SERVICE, username).items()}
    return {"service": SERVICE, "username": username}


def _ss_set(backend: _Backend, username: str, value: str, label: str) -> None:
    with closing(_connect()) as connection:
        collection = _open_collection(backend, connection)
        attributes = {**_attributes(backend, username), "application": "crate"}
        collection.create_item(label, attributes, value.encode("ascii"), replace=True)


def _ss_get(backend: _Backend, username: str) -> str | None:
    with closing(_connect()) as connection:
        collection = _open_collection(backend, connection)
        for item in collection.search_items(_attributes(backend, username)):
            if item.is_locked():
                raise _Problem("locked", f"the Secret Service item {item.get_label()!r}")
            secret: bytes = item.get_secret()
            return secret.decode("utf-8", "replace")
        return None


def _ss_delete(backend: _Backend, username: str) -> None:
    with closing(_connect()) as connection:
        collection = _open_collection(backend, connection)
        for item in list(collection.search_items(_attributes(backend, username))):
            item.delete()


# -- any backend ---------------------------------------------------------------------


def _guarded(backend: _Backend, fn: Callable[[], T]) -> T:
    """Call the backend, turning what it raises into a _Problem."""
    from keyring.errors import KeyringLocked, NoKeyringError

    try:
        return fn()
    except _Problem:
        raise
    except KeyringLocked:
        raise _Problem("locked", backend.name) from None
    except NoKeyringError:
        raise _Problem("insecure", backend.name) from None
    except Exception as e:
        if backend.secret_service:
            from secretstorage import exceptions

            if isinstance(e, exceptions.LockedException):
                raise _Problem("locked", backend.name) from None
            if isinstance(e, exceptions.SecretServiceNotAvailableException):
                raise _Problem(
                    "unreachable", f"the Secret Service went away ({_one_line(e)})"
                ) from None
        raise _Problem("failed", f"{backend.name} failed: {_one_line(e)}") from None


def _store(backend: _Backend, username: str, value: str, label: str) -> None:
    if backend.secret_service:
        _guarded(backend, lambda: _ss_set(backend, username, value, label))
    else:
        _guarded(backend, lambda: backend.impl.set_password(SERVICE, username, value))


def _fetch(backend: _Backend, username: str) -> str | None:
    if backend.secret_service:
        return _guarded(backend, lambda: _ss_get(backend, username))
    found = _guarded(backend, lambda: backend.impl.get_password(SERVICE, username))
    return found if isinstance(found, str) else None


def _delete(backend: _Backend, username: str) -> None:
    if backend.secret_service:
        _guarded(backend, lambda: _ss_delete(backend, username))
    else:
        _guarded(backend, lambda: backend.impl.delete_password(SERVICE, username))


def _home_id(ctx: SlotContext) -> str:
    """Tells apart the slots of different crate homes of one user."""
    return hashlib.sha256(str(ctx.home.data_dir).encode("utf-8")).hexdigest()[:12]


def _decode_kek(text: str) -> bytes | None:
    try:
        kek = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, binascii.Error):
        return None
    return kek if len(kek) == crypto.KEY_BYTES else None


class KeyringSlot(SlotProvider):
    type_name = "keyring"

    def seal(
        self, ctx: SlotContext, master_key: bytes, version: int, slot_id: str
    ) -> dict[str, Any]:
        allow_insecure = bool(ctx.options.get("allow_insecure_keyring"))
        _keyring()
        username = f"master-key-slot:{slot_id}:{_home_id(ctx)}"
        kek = crypto.new_key()
        label = f"crate master key slot {slot_id} ({ctx.home.data_dir})"

        def run() -> _Backend:
            backend = _select(allow_insecure)
            _store(backend, username, b64(kek), label)
            if _fetch(backend, username) != b64(kek):
                with contextlib.suppress(_Problem):
                    _delete(backend, username)
                raise _Problem("failed", f"{backend.name} did not keep the key it was given")
            return backend

        try:
            backend = _bounded(run, SEAL_TIMEOUT)
        except _Problem as e:
            raise _seal_error(e, allow_insecure) from None
        params: dict[str, Any] = {
            "service": SERVICE,
            "username": username,
            "backend": backend.name,
            "wrapped": b64(crypto.wrap_key(kek, master_key, slot_aad(version, slot_id))),
        }
        if backend.insecure:
            params["insecure"] = True
        return params

    def unseal(self, ctx: SlotContext, params: dict[str, Any], version: int, slot_id: str) -> bytes:
        username = params.get("username")
        if params.get("service") != SERVICE or not isinstance(username, str) or not username:
            raise KeystoreError("keyring slot record is damaged (service, username)")
        wrapped = unb64(params.get("wrapped"), "wrapped")
        allow_insecure = params.get("insecure") is True
        _keyring()

        def run() -> tuple[_Backend, str | None]:
            backend = _select(allow_insecure)
            return backend, _fetch(backend, username)

        try:
            backend, text = _bounded(run, UNSEAL_TIMEOUT)
        except _Problem as e:
            raise _unseal_error(e) from None
        if text is None:
            raise KeystoreError(
                f"the OS keyring ({backend.name}) no longer holds the key of keyring slot "
                f"{slot_id} ({SERVICE} / {username})",
                OTHER_SLOT,
            )
        kek = _decode_kek(text)
        try:
            if kek is None:
                raise IntegrityError("not a key")
            return crypto.unwrap_key(kek, wrapped, slot_aad(version, slot_id))
        except IntegrityError:
            raise KeystoreError(
                f"the keyring item of slot {slot_id} does not unlock master key v{version}",
                f"it was replaced or damaged; {OTHER_SLOT}",
            ) from None

    def destroy(self, ctx: SlotContext, params: dict[str, Any]) -> None:
        """Delete the keystore item when the keystore can be reached; one that is
        gone or locked keeps it (it unlocks nothing without the slot record)."""
        username = params.get("username")
        if params.get("service") != SERVICE or not isinstance(username, str):
            return
        allow_insecure = params.get("insecure") is True
        with contextlib.suppress(_Problem, KeystoreError):
            _keyring()
            _bounded(lambda: _delete(_select(allow_insecure), username), UNSEAL_TIMEOUT)

    def probe(self, ctx: SlotContext) -> str | None:
        try:
            _keyring()
        except KeystoreError:
            return "the keyring package is not installed"

        def run() -> None:
            backend = _select(allow_insecure=False)
            if backend.secret_service:
                # Reachable, with an unlocked default collection: what sealing needs.
                with closing(_connect()) as connection:
                    _guarded(backend, lambda: _open_collection(backend, connection))

        try:
            _bounded(run, PROBE_TIMEOUT)
        except _Problem as e:
            if e.kind == "locked":
                return f"the OS keyring is locked ({e.reason})"
            return e.short
        return None

    def describe(self) -> str:
        return f"keyring (the OS keystore: {_platform_keystore()})"

    def reseal_options(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"allow_insecure_keyring": params.get("insecure") is True}

    def details(self, ctx: SlotContext, params: dict[str, Any]) -> str:
        backend = str(params.get("backend")).removeprefix("keyring.backends.")
        text = f"{backend} item {params.get('service')}/{params.get('username')}"
        if params.get("insecure") is True:
            text += " (an insecure backend, accepted when the slot was made)"
        return text


def _platform_keystore() -> str:
    if sys.platform == "darwin":
        return "macOS Keychain"
    if sys.platform == "win32":
        return "Windows Credential Locker"
    return "Secret Service"


def _seal_error(problem: _Problem, allow_insecure: bool) -> KeystoreError:
    if problem.kind == "insecure":
        hint = OTHER_KEYSTORE
        if "plain text" in problem.reason and not allow_insecure:
            hint += ", or accept it with --allow-insecure-keyring"
        return KeystoreError(f"no secure OS keyring is available ({problem.reason})", hint)
    if problem.kind == "locked":
        return KeystoreError(
            f"the OS keyring is locked ({problem.reason}); nothing was created",
            f"unlock it (log in to the desktop session) and try again, or {OTHER_KEYSTORE}",
        )
    if problem.kind == "unreachable":
        return KeystoreError(f"the OS keyring is not reachable: {problem.reason}", OTHER_KEYSTORE)
    return KeystoreError(f"{problem.reason}; nothing was created", OTHER_KEYSTORE)


def _unseal_error(problem: _Problem) -> KeystoreError:
    if problem.kind == "insecure":
        return KeystoreError(f"no secure OS keyring is available ({problem.reason})", OTHER_SLOT)
    if problem.kind == "locked":
        return KeystoreError(
            f"the OS keyring is locked ({problem.reason})", f"unlock it, or {OTHER_SLOT}"
        )
    if problem.kind == "unreachable":
        return KeystoreError(f"the OS keyring is not reachable: {problem.reason}", OTHER_SLOT)
    return KeystoreError(problem.reason, OTHER_SLOT)


# -- small secrets of other parts (the remote client's token) ------------------


def _credential(fn: Callable[[_Backend], T]) -> T:
    _keyring()
    try:
        return _bounded(lambda: fn(_select(allow_insecure=False)), UNSEAL_TIMEOUT)
    except _Problem as e:
        raise KeystoreError(
            f"the OS keyring could not be used ({e.reason})",
            "log in again with CRATE_KEYSTORE=file to keep the token in a 0600 file",
        ) from None


def get_credential(username: str) -> str | None:
    """A value kept in the secure OS keystore under service `crate`."""
    return _credential(lambda backend: _fetch(backend, username))


def set_credential(username: str, value: str, label: str) -> None:
    _credential(lambda backend: _store(backend, username, value, label))


def delete_credential(username: str) -> None:
    with contextlib.suppress(_Problem, KeystoreError):
        _credential(lambda backend: _delete(backend, username))
