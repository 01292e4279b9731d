"""Offline copies of remote retrievals (`crate run` and `fetch` when the
server cannot be reached), and the policy that says when to use them.

After each successful remote retrieval the values are kept encrypted
(AES-256-GCM under a key derived from the token) per server, org, env and
selection, in a folder of the login (or of the token, without one). Logging
out removes the server's copies (remote.remove_login), and so does the
server's refusal of the token (a revocation) the next time it is asked.
"""

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crate_cli.client.secrets import RetrievedColumns, SecretsClient
from crate_cli.config import CrateHome, ensure_private_dir, write_private_file
from crate_cli.errors import CrateError, InvalidInput, NotFound, Unauthorized
from crate_cli.records import Record
from crate_cli.vault.crypto import sha256_hex

if TYPE_CHECKING:
    from crate_cli.client.transport.http import HttpTransport

FALLBACK_PURPOSE = "crate/fallback/v2"
DEFAULT_FALLBACK_MAX_AGE = 7 * 86400.0


class FallbackPolicy(Record):
    """When a remote client may use its offline copy."""

    mode: str = "auto"  # auto: when unreachable; only: never contact; never: no copy
    max_age: float = DEFAULT_FALLBACK_MAX_AGE


def fallback_policy(only: bool, never: bool, max_age: str | None) -> FallbackPolicy:
    """The offline-copy policy of `crate run` and `crate secrets fetch`."""
    if only and never:
        raise InvalidInput("--fallback-only and --no-fallback contradict each other")
    age = DEFAULT_FALLBACK_MAX_AGE
    if max_age is not None:
        from crate_cli.durations import parse_duration

        age = parse_duration(max_age, "--fallback-max-age")
    return FallbackPolicy("only" if only else "never" if never else "auto", age)


def _server_folder(home: CrateHome, server: str) -> Path:
    return home.data_dir / "fallback" / sha256_hex(server.encode("utf-8"))[:32]


def forget_copies(home: CrateHome, server: str, binding: str) -> None:
    """Remove the offline copies of one binding (their key is the token's)."""
    import shutil

    shutil.rmtree(_server_folder(home, server) / binding, ignore_errors=True)


def forget_server_copies(home: CrateHome, server: str) -> None:
    """Remove every offline copy of `server` (whatever token made it), and the
    copies of crate versions that kept them unbound (fallback/*.copy)."""
    import shutil

    shutil.rmtree(_server_folder(home, server), ignore_errors=True)
    for old in (home.data_dir / "fallback").glob("*.copy"):
        old.unlink(missing_ok=True)


def _age_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


class FallbackClient(SecretsClient):
    """A remote client whose retrievals are kept for when the server is down."""

    def __init__(
        self,
        transport: "HttpTransport",
        org: str,
        ephemeral_bits: int,
        home: CrateHome,
        binding: str,
        token: str,
        policy: FallbackPolicy,
        notify: Any,
        pinned: tuple[str, Any] | None = None,
    ) -> None:
        super().__init__(transport, org, ephemeral_bits, pinned)
        self.home = home
        self.server = transport.base_url
        self.policy = policy
        self.notify = notify
        # remote.copy_binding: the login (or token) the copies belong to.
        self.binding = binding
        # The copies' key comes from the token: nothing at rest opens them
        # that would not fetch them from the server too (and with the token
        # in the OS keyring or only in the environment, a copy of the home
        # folder opens none).
        self._token = token

    def _copy_path(self, env: str, selection: str) -> tuple[Path, bytes]:
        ident = "|".join([self.server, self.binding, self.org, env, selection])
        digest = sha256_hex(ident.encode("utf-8"))[:40]
        folder = _server_folder(self.home, self.server) / self.binding
        return folder / f"{digest}.copy", ident.encode("utf-8")

    def _key(self) -> bytes:
        from crate_cli.vault import crypto

        return crypto.derive_subkey(
            self._token.encode("utf-8"), f"{FALLBACK_PURPOSE}|key|{self.binding}"
        )

    def retrieve_columns(
        self,
        env: str,
        names: list[str] | None = None,
        tags: list[str] | None = None,
        versions: dict[str, int] | None = None,
        ephemeral: Any = None,
    ) -> RetrievedColumns:
        selection = json.dumps(
            [sorted(names or []), sorted(tags or []), sorted((versions or {}).items())]
        )
        path, aad = self._copy_path(env, selection)
        if self.policy.mode == "only":
            return self._from_copy(path, aad, env, None)
        from crate_cli.errors import ServerUnreachable

        try:
            found = super().retrieve_columns(env, names, tags, versions, ephemeral)
        except ServerUnreachable as e:
            if self.policy.mode == "never":
                raise
            return self._from_copy(path, aad, env, e)
        except Unauthorized:
            # The server no longer takes this token (revoked, expired):
            # neither does the offline copy it fetched.
            forget_copies(self.home, self.server, self.binding)
            raise
        if self.policy.mode != "never":
            self._save(path, aad, found)
        return found

    def _save(self, path: Path, aad: bytes, found: RetrievedColumns) -> None:
        from crate_cli.vault import crypto

        key = self._key()
        plaintext = json.dumps(
            {"saved_at": time.time(), "secrets": list(zip(*found, strict=True))},
            ensure_ascii=False,
        ).encode("utf-8")
        ensure_private_dir(path.parent)
        write_private_file(
            path, crypto.encrypt(key, plaintext, crypto.aad(FALLBACK_PURPOSE, aad.hex()))
        )

    def _from_copy(
        self, path: Path, aad: bytes, env: str, error: CrateError | None
    ) -> RetrievedColumns:
        from crate_cli.vault import crypto

        where = f"{self.org}/{env} from {self.server}"
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            if error is not None:
                error.hint = f"and no offline copy of {where} is kept here"
                raise error from None
            raise NotFound(
                f"no offline copy of {where} is kept here",
                "run the command once while the server is reachable",
            ) from None
        key = self._key()
        data = json.loads(crypto.decrypt(key, blob, crypto.aad(FALLBACK_PURPOSE, aad.hex())))
        age = max(0.0, time.time() - float(data["saved_at"]))
        if age > self.policy.max_age:
            raise CrateError(
                f"the offline copy of {where} is {_age_text(age)} old, older than "
                f"--fallback-max-age {_age_text(self.policy.max_age)}",
                "reach the server again, or allow an older copy with --fallback-max-age",
            )
        if error is not None:
            self.notify(
                f"crate: warning: {error.message}; using the offline copy of {where} "
                f"saved {_age_text(age)} ago"
            )
        saved = [(str(n), str(v), int(ver)) for n, v, ver in data["secrets"]]
        return RetrievedColumns([s[0] for s in saved], [s[1] for s in saved], [s[2] for s in saved])
