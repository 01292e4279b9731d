"""The client role of the Crate protocol.

Stores are sealed here, before anything leaves the client: each value is
encrypted to the org public key as a JWE whose protected header names the
key (`kid`) and the target (org, env, name). Retrievals send a fresh RSA
public key and a nonce, and open the bundle with the matching private key,
which is then dropped.

The transport decides where the server role runs (in-process or remote);
this module does not care.
"""

import json
import os
from typing import TYPE_CHECKING, Any

from crate_cli.client.ephemeral import DEFAULT_EPHEMERAL_BITS, EphemeralKey, take
from crate_cli.client.transport import Transport
from crate_cli.errors import IntegrityError
from crate_cli.records import Record
from crate_cli.vault import jwe
from crate_cli.vault.names import (
    all_secret_names,
    check_env,
    check_org,
    check_secret_name,
    check_tags,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

# Audit entries asked for per request (the server's most).
AUDIT_PAGE = 10_000


class RetrievedSecret(Record):
    name: str
    value: str
    version: int


class RetrievedColumns(Record):
    """A retrieval as three lists of equal length (no object per secret)."""

    names: list[str]
    values: list[str]
    versions: list[int]


def _columns(bundle: dict[str, Any]) -> tuple[list[Any], list[Any], list[Any]]:
    """The names, values and versions of a retrieval bundle, in either layout:
    `columns` (three lists), which this client asks for, or `rows` (a list of
    {name, value, version}), which a server that predates columns answers
    with. Anything but equal-length lists of strings, strings and integers
    raises ValueError (a name's own check comes later)."""
    if "secrets" in bundle:
        rows = bundle["secrets"]
        names = [s["name"] for s in rows]
        values = [s["value"] for s in rows]
        versions = [s["version"] for s in rows]
    else:
        names, values, versions = bundle["names"], bundle["values"], bundle["versions"]
    if not (
        type(names) is list
        and type(values) is list
        and type(versions) is list
        and len(names) == len(values) == len(versions)
        # Types of 10,000 items at C speed; bool is not int here.
        and set(map(type, values)) <= {str}
        and set(map(type, versions)) <= {int}
    ):
        raise ValueError("malformed")
    return names, values, versions


def _other_versions(names: list[str], numbers: list[int], asked: dict[str, int]) -> bool:
    """Whether a secret came back at another version than the one asked for."""
    return any(v != asked[n] for n, v in zip(names, numbers, strict=True) if n in asked)


class SecretsClient:
    def __init__(
        self,
        transport: Transport,
        org: str,
        ephemeral_bits: int = DEFAULT_EPHEMERAL_BITS,
        pinned: "tuple[str, Any] | None" = None,
    ) -> None:
        """`pinned`: the org key (kid, RSA public key) the user trusts for this
        server (crate_cli/client/remote.py): values are sealed to it without asking
        the server for a key, and every retrieval's answer must carry its
        signature. Without one (the in-process server, the agent), the key
        is fetched and answers are not signed."""
        self.transport = transport
        self.org = check_org(org)
        self.ephemeral_bits = ephemeral_bits
        self.pinned = pinned
        self._public: tuple[str, Any] | None = pinned

    def _path(self, *parts: str) -> str:
        # Every part is a checked org, env or secret name, or a literal: none
        # needs URL quoting.
        return "/".join(["/organization", self.org, *parts])

    def public_key(self) -> tuple[str, Any]:
        if self._public is None:
            from cryptography.hazmat.primitives.asymmetric import rsa
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            body = self.transport.request("GET", self._path("secrets", "public-key"))
            if body.get("alg") != jwe.ALG:
                raise IntegrityError(f"the server offers {body.get('alg')!r}, not {jwe.ALG}")
            try:
                key = load_pem_public_key(str(body["public_key_pem"]).encode("ascii"))
                kid = str(body["key_id"])
                # The key id is the key's RFC 7638 thumbprint: a swapped key shows.
                if not isinstance(key, rsa.RSAPublicKey) or jwe.thumbprint(key) != kid:
                    raise ValueError
            except (KeyError, ValueError, TypeError, AttributeError):
                raise IntegrityError(
                    "the organization's public key does not match its key id"
                ) from None
            self._public = (kid, key)
        return self._public

    def store(
        self, env: str, values: list[tuple[str, str]], tags: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Seal and store values in one transaction; `tags=None` keeps existing tags."""
        check_env(env)
        for name, _ in values:
            check_secret_name(name)
        if tags is not None:
            tags = check_tags(tags)
        kid, key = self.public_key()
        if len(values) == 1:
            name, value = values[0]
            # The tags are sealed too (null: keep the secret's): a relay that
            # cannot open the value cannot re-tag it either.
            header = {"kid": kid, "org": self.org, "env": env, "name": name, "tags": tags}
            token = jwe.encrypt(key, value.encode("utf-8"), header)
            body: dict[str, Any] = {
                "name": name,
                "environment": env,
                "encrypted_value": token,
                "sealed": True,
            }
            if tags is not None:
                body["tags"] = tags
            return [self.transport.request("PUT", self._path("secrets"), body=body)]
        plaintext = json.dumps(dict(values), ensure_ascii=False).encode("utf-8")
        token = jwe.encrypt(key, plaintext, {"kid": kid, "org": self.org, "env": env, "tags": tags})
        entries: list[dict[str, Any]] = []
        for name, _ in values:
            entry: dict[str, Any] = {"name": name}
            if tags is not None:
                entry["tags"] = tags
            entries.append(entry)
        body = {"environment": env, "sealed": True, "secrets": entries, "encrypted_values": token}
        result = self.transport.request("PUT", self._path("secrets"), body=body)
        return list(result["secrets"])

    def list_secrets(self, env: str, tags: list[str] | None = None) -> list[dict[str, Any]]:
        query = {"env": check_env(env)}
        if tags:
            query["tags"] = ",".join(check_tags(tags))
        return list(self.transport.request("GET", self._path("secrets"), query=query)["secrets"])

    def retrieve(
        self,
        env: str,
        names: list[str] | None = None,
        tags: list[str] | None = None,
        versions: dict[str, int] | None = None,
        ephemeral: EphemeralKey | None = None,
    ) -> list[RetrievedSecret]:
        """`retrieve_columns`, one record per secret."""
        found = self.retrieve_columns(env, names, tags, versions, ephemeral)
        return list(map(RetrievedSecret._make, zip(*found, strict=True)))

    def retrieve_columns(
        self,
        env: str,
        names: list[str] | None = None,
        tags: list[str] | None = None,
        versions: dict[str, int] | None = None,
        ephemeral: EphemeralKey | None = None,
    ) -> RetrievedColumns:
        """The ephemeral exchange: values of the selected secrets, opened here only."""
        check_env(env)
        names = [check_secret_name(n) for n in names or []]
        tags = check_tags(tags or [])
        key = (ephemeral or take(self.ephemeral_bits)).get()
        nonce = jwe.b64u_encode(os.urandom(24))
        body: dict[str, Any] = {
            "environment": env,
            "names": names,
            "tags": tags,
            "public_key": jwe.public_jwk(key.public_key()),
            "nonce": nonce,
            "layout": "columns",
        }
        if versions:
            body["versions"] = versions
        if self.pinned is not None:
            body["signature"] = jwe.SIGNATURE_ALG
        reply = self.transport.request("POST", self._path("secrets", "retrieve"), body=body)
        if self.pinned is not None:
            self._check_signature(reply, key, nonce, body)
        try:
            bundle = json.loads(jwe.decrypt(key, str(reply["bundle"])).plaintext)
            returned, values, numbers = _columns(bundle)
            unique = set(returned)  # a name that cannot be hashed is malformed too
            answers = (
                bundle["nonce"] == nonce
                and bundle["org"] == self.org
                and bundle["environment"] == env
            )
        except (KeyError, TypeError, ValueError):
            raise IntegrityError("the retrieval bundle is malformed") from None
        if (
            not answers
            # Only what was asked for: no extra names (LD_PRELOAD …), no repeats.
            or len(unique) != len(returned)
            or (names and unique != set(names))
            or (versions and _other_versions(returned, numbers, versions))
        ):
            raise IntegrityError("the retrieval bundle does not answer this request")
        if not all_secret_names(returned):
            raise IntegrityError("the retrieval bundle holds an invalid name")
        return RetrievedColumns(returned, values, numbers)

    def _check_signature(
        self, reply: dict[str, Any], key: Any, nonce: str, body: dict[str, Any]
    ) -> None:
        """The answer must be signed by the pinned org key, for this org, this
        ephemeral key, this nonce and this selection (`body`, the request as
        sent): a relay that re-sealed the bundle to the client (having swapped
        the key in the request), or changed what was asked for, cannot sign it."""
        assert self.pinned is not None
        kid, public = self.pinned
        signature = reply.get("signature")
        try:
            if not isinstance(signature, dict) or signature.get("kid") != kid:
                raise IntegrityError()
            message = jwe.signed_message(
                self.org,
                kid,
                jwe.thumbprint(key.public_key()),
                nonce,
                jwe.selection_digest(
                    body["environment"],
                    body["names"],
                    body["tags"],
                    body.get("versions") or {},
                    body["layout"],
                ),
                str(reply.get("bundle")),
            )
            jwe.verify(public, message, signature.get("value"))
        except IntegrityError:
            raise IntegrityError(
                f"the answer to this retrieval is not signed by organization {self.org!r}'s "
                "pinned key for this request: a relay may have changed it, or the server's key "
                "was replaced; nothing was used",
                "if an admin replaced the key, check its fingerprint with them and run "
                "crate login --fingerprint SHA256:...",
            ) from None

    def delete(self, env: str, name: str) -> dict[str, Any]:
        return self.transport.request(
            "DELETE", self._path("secrets", check_secret_name(name)), query={"env": check_env(env)}
        )

    def history(self, env: str, name: str) -> list[dict[str, Any]]:
        reply = self.transport.request(
            "GET",
            self._path("secrets", check_secret_name(name), "versions"),
            query={"env": check_env(env)},
        )
        return list(reply["versions"])

    def rollback(self, env: str, name: str, to: int) -> dict[str, Any]:
        return self.transport.request(
            "POST",
            self._path("secrets", check_secret_name(name), "rollback"),
            body={"environment": check_env(env), "to": to},
        )

    def environments(self) -> list[str]:
        return list(self.transport.request("GET", self._path("environments"))["environments"])

    def create_environment(self, name: str) -> None:
        self.transport.request("POST", self._path("environments"), body={"name": check_env(name)})

    def delete_environment(self, name: str) -> int:
        reply = self.transport.request("DELETE", self._path("environments", check_env(name)))
        return int(reply["secrets_deleted"])

    # -- steering names an admin allowed -------------------------------------

    def allowed_names(self) -> list[dict[str, Any]]:
        """The steering names (PATH, LD_PRELOAD ...) allowed in the org."""
        return list(self.transport.request("GET", self._path("allowed-names"))["names"])

    def allow_name(self, name: str, allow: bool = True) -> bool:
        """Allow (or stop allowing) a steering name; returns whether that changed it."""
        reply = self.transport.request(
            "PUT" if allow else "DELETE", self._path("allowed-names", check_secret_name(name))
        )
        return bool(reply["changed"])

    # -- the audit module -----------------------------------------------------

    def audit_entries(self, query: dict[str, str]) -> tuple[list[dict[str, Any]], bool]:
        """One page of the org's audit log (see ApiCore._audit_log for `query`)."""
        reply = self.transport.request("GET", self._path("audit"), query=query)
        return list(reply["entries"]), bool(reply["more"])

    def audit_oldest_first(self, query: dict[str, str]) -> "Iterator[list[dict[str, Any]]]":
        """Every entry matching `query`, oldest first, a page at a time (each
        page can be shown before the next is asked for)."""
        after = 0
        while True:
            page, more = self.audit_entries(
                {**query, "after": str(after), "limit": str(AUDIT_PAGE)}
            )
            yield page
            if not more or not page:
                return
            after = page[-1]["seq"]

    def audit_newest(self, query: dict[str, str], limit: int) -> tuple[list[dict[str, Any]], bool]:
        """The newest `limit` entries matching `query`, oldest first, and
        whether there are older ones."""
        entries: list[dict[str, Any]] = []
        more = False
        before: int | None = None
        while len(entries) < limit:
            page_query = {**query, "limit": str(min(limit - len(entries), AUDIT_PAGE))}
            if before is not None:
                page_query["before"] = str(before)
            page, more = self.audit_entries(page_query)
            entries[:0] = page
            if not more or not page:
                break
            before = page[0]["seq"]
        return entries, more

    def audit_verify(self) -> dict[str, Any]:
        return dict(self.transport.request("GET", self._path("audit", "verify")))

    def audit_module(self, enabled: bool) -> bool:
        """Switch the org's audit module; returns whether that changed it."""
        reply = self.transport.request(
            "PUT", self._path("audit", "module"), body={"enabled": enabled}
        )
        return bool(reply["changed"])
