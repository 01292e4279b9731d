"""Where a command finds its home, settings, org, env and client.

Also runs crate's implicit first use: the first command that needs the vault
creates the master key (the `auto` keystore) and the `personal` org, and says
so on stderr. No click, no rich here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from crate_cli.client.secrets import SecretsClient
from crate_cli.config import CrateHome, Settings, check_home, resolve_home
from crate_cli.errors import Conflict, CrateError, InvalidInput, NotFound
from crate_cli.vault.masterkey import MasterKeys, MasterVersion
from crate_cli.vault.names import check_env, check_org
from crate_cli.vault.slots.base import SecretPrompt

if TYPE_CHECKING:
    from crate_cli.client.fallback import FallbackPolicy
    from crate_cli.client.remote import Remote
    from crate_cli.client.transport import Transport
    from crate_cli.vault.keys import Caller
    from crate_cli.vault.service import VaultService
    from crate_cli.vault.storage.interface import Storage

DEFAULT_ORG = "personal"
KEYSTORES = ("auto", "tpm2", "keyring", "pkcs11", "passphrase", "file")
# What `auto` tries, best first; `file` is the fallback of last resort.
AUTO_KEYSTORES = ("tpm2", "keyring")


STORE_VARIABLE = "CRATE_STORE"
LOCAL_STORES = ("", "sqlite")
POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_local_store(store: str) -> bool:
    """Whether `store` names the home's own SQLite files."""
    return store.lower() in LOCAL_STORES


def open_storage(home: CrateHome, store: str = "") -> Storage:
    """Where the orgs and the master-key registry are kept.

    `store` "" or "sqlite": the home's SQLite files (one per org, the
    registry in keys/master.json). A postgresql:// (or postgres://) URL: a
    PostgreSQL database, for the replicas of a team server; its backend and
    psycopg are imported only then, never on a local path. Anything else is
    InvalidInput, whose message shows the value without its password.
    """
    if is_local_store(store):
        from crate_cli.vault.storage.sqlite import SqliteStorage

        return SqliteStorage(home)
    scheme, sep, _ = store.partition("://")
    if sep and scheme.lower() in POSTGRES_SCHEMES:
        return _postgres_storage(store)
    from crate_cli.vault.storage.urls import redact_store_url

    raise InvalidInput(
        f"unknown store {redact_store_url(store)!r}: use sqlite (the home's files) "
        "or a postgresql:// URL",
        "check --store, CRATE_STORE and the store setting",
    )


def _postgres_storage(url: str) -> Storage:
    try:
        from crate_cli.vault.storage.postgres import PostgresStorage
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("psycopg"):
            raise
        import sys

        hint = "install crate with its postgres extra: pip install 'crate-cli[postgres]'"
        if getattr(sys, "frozen", False):
            hint = "use the one-folder build (crate-VERSION-OS-ARCH.tar.gz), which has it"
        raise CrateError(
            "a PostgreSQL store needs psycopg, which this crate does not have", hint
        ) from None
    storage: Storage = PostgresStorage(url)
    return storage


def stdin_is_terminal() -> bool:
    """Whether stdin is a terminal; False also when crate was started without one."""
    import sys

    return sys.stdin is not None and sys.stdin.isatty()


def read_stdin() -> bytes:
    """All of stdin as bytes; nothing when crate was started without stdin."""
    import sys

    return b"" if sys.stdin is None else sys.stdin.buffer.read()


def _to_stderr(text: str) -> None:
    import sys

    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def hidden_prompt(text: str) -> str:
    """Ask on the terminal without echo (click is imported only when asking)."""
    import click

    value: str = click.prompt(text, hide_input=True, err=True, prompt_suffix="")
    return value


class Session:
    """One command's view of crate: paths, settings, keys and the client."""

    # The root command's --store, for every Session of this process: it comes
    # before CRATE_STORE and the `store` setting (see `store`).
    store_option: ClassVar[str | None] = None

    def __init__(
        self,
        environ: dict[str, str] | None = None,
        prompt: SecretPrompt | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.environ = dict(os.environ) if environ is None else environ
        self.prompt = prompt
        # Notices of implicit first use go out at once, so that a command that
        # then fails still says what it created.
        self.notify = notify or _to_stderr

    @classmethod
    def for_terminal(cls) -> Session:
        """A Session that can ask for a passphrase when stdin is a terminal."""
        return cls(prompt=hidden_prompt if stdin_is_terminal() else None)

    @cached_property
    def home(self) -> CrateHome:
        home = resolve_home(self.environ)
        check_home(home)  # never work in a folder that others can enter
        return home

    @cached_property
    def store(self) -> str:
        """Where the vaults are kept: --store, else CRATE_STORE, else the
        `store` setting; "" (or "sqlite") is the home's SQLite files."""
        if self.store_option is not None:
            return self.store_option
        return self.environ.get(STORE_VARIABLE) or str(self.settings.get("store"))

    @property
    def local_store(self) -> bool:
        """Whether the vaults are the home's own files (not a shared database)."""
        return is_local_store(self.store)

    @cached_property
    def storage(self) -> Storage:
        return open_storage(self.home, self.store)

    @cached_property
    def settings(self) -> Settings:
        return Settings.load(self.home)

    @cached_property
    def master(self) -> MasterKeys:
        return MasterKeys(
            self.home,
            environ=self.environ,
            prompt=self.prompt,
            unlock_order=list(self.settings.get("keys.unlock_order")),
            registry=self.storage.master_registry(),
        )

    def init(
        self, keystore: str | None = None, options: dict[str, Any] | None = None
    ) -> tuple[bool, MasterVersion]:
        """Create master key v1 if there is none; returns (created, version).

        `keystore` defaults to CRATE_KEYSTORE, else `auto`.
        """
        keystore = keystore or self.environ.get("CRATE_KEYSTORE") or "auto"
        if keystore not in KEYSTORES:
            raise InvalidInput(
                f"unknown keystore {keystore!r}: use one of {', '.join(KEYSTORES)}",
                "check --keystore or CRATE_KEYSTORE",
            )
        if self.master.exists():
            return False, self.master.current()
        passed_over: list[str] = []
        slot_type = keystore
        if keystore == "auto":
            slot_type, passed_over = self._pick_keystore()
        created, version = self.master.create_first(
            slot_type, options, list_orgs=self.storage.list_orgs
        )
        if not created:
            return False, version
        if not self.home.settings_path.exists():
            self.settings.save()
        if slot_type == "file":
            why = ""
            if keystore == "auto":
                why = ": no TPM or secure OS keyring was found"
                why += f" ({'; '.join(passed_over)})" if passed_over else ""
            self.notify(
                f"crate: created master key v1 in {self.home.keys_dir}, protected by file "
                f"permissions only{why}"
            )
        else:
            self.notify(f"crate: created master key v1 sealed by a {slot_type} slot")
        return True, version

    def _pick_keystore(self) -> tuple[str, list[str]]:
        """The best slot type this machine offers, and why better ones were passed over."""
        from crate_cli.vault.slots import provider
        from crate_cli.vault.slots.base import SlotContext

        ctx = SlotContext(home=self.home, environ=self.environ, prompt=self.prompt)
        passed_over: list[str] = []
        for candidate in AUTO_KEYSTORES:
            problem = provider(candidate).probe(ctx)
            if problem is None:
                return candidate, passed_over
            passed_over.append(f"{candidate}: {problem}")
        return "file", passed_over

    @cached_property
    def remote(self) -> Remote | None:
        """The crate server this command talks to (login or CRATE_SERVER), if any."""
        if not (
            self.environ.get("CRATE_SERVER")
            or self.environ.get("CRATE_TOKEN")
            or (self.home.data_dir / "login.json").exists()
        ):
            return None  # local use: one stat, and crate_cli.client.remote stays unimported
        from crate_cli.client.remote import resolve_remote

        return resolve_remote(self.home, self.environ)

    @cached_property
    def agent(self) -> Transport | None:
        """This home's running agent, if its socket exists (local use only).

        The agent serves the home's own vaults: with another store, commands
        never use it (`crate agent start` refuses one)."""
        if not self.local_store:
            return None
        from crate_cli.client.agent import running_transport

        return running_transport(self.home)

    def org(self, explicit: str | None = None, local: bool = False) -> str:
        """The org to act on: --org/CRATE_ORG, else the session's, else `personal`.

        Against a server (`local` False and logged in), the org of the token.
        On first local use with no org at all, `personal` is created and selected.
        """
        if explicit:
            return check_org(explicit)
        remote = None if local else self.remote
        if remote is not None:
            if remote.org:
                return check_org(remote.org)
            from crate_cli.client.remote import token_org

            return check_org(token_org(self.home, remote))
        chosen = str(self.settings.get("session.org") or "")
        if chosen:
            return check_org(chosen)
        from crate_cli.vault.orgs import create_org

        self.init()
        orgs = self.storage.list_orgs()
        if not orgs:
            try:
                create_org(self.storage, self.master, DEFAULT_ORG, self.caller())
                self.notify(f"crate: created organization {DEFAULT_ORG!r} and selected it")
            except Conflict:
                pass  # another crate process created it first
        elif DEFAULT_ORG in orgs:
            self.notify(f"crate: selected organization {DEFAULT_ORG!r}")
        else:
            raise NotFound(
                "no organization is selected",
                "choose one with: crate session org set NAME (or --org / CRATE_ORG)",
            )
        self.settings = Settings.update(self.home, "session.org", DEFAULT_ORG)
        return DEFAULT_ORG

    def env(self, explicit: str | None = None) -> str:
        return check_env(explicit or str(self.settings.get("session.env") or "dev"))

    @cached_property
    def service(self) -> VaultService:
        return self.new_service()

    def credentials_place(self) -> str:
        """Where a login's token goes: the secure OS keystore when one answers,
        else a 0600 file (always with CRATE_KEYSTORE=file)."""
        if (self.environ.get("CRATE_KEYSTORE") or "auto") == "file":
            return "file"
        from crate_cli.vault.slots import provider
        from crate_cli.vault.slots.base import SlotContext

        ctx = SlotContext(home=self.home, environ=self.environ, prompt=None)
        return "keyring" if provider("keyring").probe(ctx) is None else "file"

    def caller(self, client: str = "cli") -> Caller:
        """This process as the audit log records it (no request behind it)."""
        from crate_cli.vault.keys import Caller, local_actor

        return Caller(local_actor(), client)

    def new_service(self, client: str = "cli") -> VaultService:
        """A VaultService with its own vault connections, configured by the
        settings (the server and the agent make one per worker thread);
        `client` is what its audit entries name (cli, server, agent)."""
        from crate_cli.vault.service import VaultService

        every = str(self.settings.get("keys.rotate_org_every") or "")
        rotate_every = None
        if every:
            from crate_cli.durations import parse_duration

            rotate_every = parse_duration(every, "setting keys.rotate_org_every")
        return VaultService(
            self.storage,
            self.master,
            int(self.settings.get("secrets.max_value_bytes")),
            rotate_org_every=rotate_every,
            caller=self.caller(client),
        )

    @property
    def mode(self) -> str:
        """Where the server role runs: `remote`, `agent` or `local` (in-process)."""
        if self.remote is not None:
            return "remote"
        return "agent" if self.agent is not None else "local"

    def client(self, org: str, fallback: FallbackPolicy | None = None) -> SecretsClient:
        """A client for `org`: to the server when logged in, else to the agent
        when one runs, else over the in-process transport (the loopback).

        `fallback` (remote only) keeps an offline copy of each retrieval and
        uses it when the server cannot be reached."""
        bits = int(self.settings.get("crypto.ephemeral_rsa_bits"))
        remote = self.remote
        if remote is not None:
            from crate_cli.client.fallback import FallbackClient
            from crate_cli.client.remote import (
                FINGERPRINT_ENV,
                copy_binding,
                expected_fingerprint,
                pinned_key,
                trusted_key,
            )

            http = remote.transport()
            if fallback is not None and fallback.mode == "only":
                if remote.login is None:
                    raise InvalidInput(
                        "--fallback-only reads the offline copy of a login, and there is none "
                        f"for {remote.server}",
                        "log in with: crate login --server URL (CRATE_TOKEN alone keeps no "
                        "copy to read without the server)",
                    )
                # Without the server: the key pinned at login, or none (nothing is sent).
                pin = pinned_key(self.home, remote.server, org)
                pinned = pin.key() if pin is not None else None
            else:
                expected = expected_fingerprint(self.environ.get(FINGERPRINT_ENV), FINGERPRINT_ENV)
                pinned = trusted_key(self.home, remote.server, org, http, self.notify, expected)
            if fallback is not None:
                binding = copy_binding(remote.login, remote.server, remote.token)
                return FallbackClient(
                    http, org, bits, self.home, binding, remote.token, fallback, self.notify, pinned
                )
            return SecretsClient(http, org, ephemeral_bits=bits, pinned=pinned)
        if self.agent is not None:
            from crate_cli.errors import ServerUnreachable

            try:
                self.agent.request("GET", "/agent")
                return SecretsClient(self.agent, org, ephemeral_bits=bits)
            except ServerUnreachable:
                self.agent = None  # a stale socket: serve in-process
        from crate_cli.client.transport.loopback import LoopbackTransport
        from crate_cli.vault.api import ApiCore, Principal
        from crate_cli.vault.keys import local_actor

        self.init()
        transport = LoopbackTransport(ApiCore(self.service), Principal(actor=local_actor()))
        return SecretsClient(transport, org, ephemeral_bits=bits)

    def warm(self, org: str, prefetch: bool = True) -> None:
        """Unlock what the in-process server role needs ahead of a request
        (`prefetch`: and read the values' pages, see VaultService.warm)."""
        if self.mode == "local":
            self.service.warm(org, prefetch)

    def close(self) -> None:
        """Close the in-process vault connections, if any were opened."""
        if "service" in self.__dict__:
            self.service.close()
