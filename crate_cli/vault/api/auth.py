"""Who calls the API and what they may do: principals, roles and their
grants, the token check, and the tally of refusals to strangers.

Local callers (the CLI in-process, the agent) come with their principal, an
admin; the HTTP server's callers show a bearer token, checked here against
the org named in the path (DESIGN §5). An org that does not exist, or is
not served, answers a token as a bad token does, after the same work.
"""

import time
from typing import Any, Literal

from crate_cli.errors import CrateError, Forbidden, NotFound, TokenExpired, Unauthorized
from crate_cli.records import Record
from crate_cli.vault.keys import Caller, OrgKeys, Role
from crate_cli.vault.service import VaultService

# How long an org found not to exist is taken as such (a new org is served
# after at most this long).
UNKNOWN_ORG_TTL = 5.0
MAX_UNKNOWN_ORGS = 4096
# What a route needs: read secrets, change them, or manage the org.
Permission = Literal["read", "write", "admin"]
# What each role may do.
GRANTS: dict[Role, frozenset[Permission]] = {
    "admin": frozenset({"read", "write", "admin"}),
    "writer": frozenset({"read", "write"}),
    "reader": frozenset({"read"}),
}
_NEEDS_TEXT: dict[Permission, str] = {
    "read": "read secrets",
    "write": "change secrets",
    "admin": "manage environments",
}


class Principal(Record):
    """Who is calling: the actor recorded in history, through which client, and
    what they may do (empty envs or tags: no limit)."""

    actor: str
    client: str = "cli"
    role: Role = "admin"
    envs: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    token: str | None = None  # the token's name, for a token principal
    org: str | None = None  # the org a token belongs to

    def caller(self, request_id: str) -> Caller:
        return Caller(self.actor, self.client, request_id)

    def allow_env(self, env: str) -> None:
        if self.envs and env not in self.envs:
            raise Forbidden(
                f"token {self.token!r} is limited to the environments "
                f"{', '.join(sorted(self.envs))}, not {env!r}"
            )

    def org_wide(self, what: str) -> None:
        """Refuse a call that spans the whole org to a token limited to
        environments or tags."""
        if self.envs or self.tags:
            raise Forbidden(
                f"token {self.token!r} is limited to environments or tags and cannot {what}"
            )


def authorize(
    principal: Principal, org: str | None, need: Permission | None, action: str | None
) -> None:
    """Check the caller against a route's permission and org."""
    if principal.org is not None and org is not None and principal.org != org:
        raise Forbidden(f"token {principal.token!r} belongs to organization {principal.org!r}")
    if need is not None and need not in GRANTS.get(principal.role, frozenset()):
        raise Forbidden(
            f"token {principal.token!r} has the role {principal.role}, which cannot "
            + (
                "read or manage the audit log"
                if action and action.startswith("audit")
                else _NEEDS_TEXT[need]
            )
        )


class TokenCheck:
    """Bearer tokens checked against the orgs a server serves (`orgs`, None:
    every org of the storage)."""

    def __init__(self, service: VaultService, orgs: frozenset[str] | None) -> None:
        self.service = service
        self.orgs = orgs
        self._decoy: OrgKeys | None = None
        # Orgs found not to exist, until when (monotonic): see _known_unknown.
        self._unknown: dict[str, float] = {}

    def served(self, org: str) -> None:
        if self.orgs is not None and org not in self.orgs:
            raise NotFound(f"organization {org!r} is not served here")

    def served_orgs(self) -> list[str]:
        return sorted(self.orgs) if self.orgs is not None else self.service.list_orgs()

    def _known_unknown(self, org: str) -> bool:
        """Whether `org` was found not to exist in the last few seconds: a
        stranger's guesses then cost a dict lookup, as a known org does,
        rather than a failed open of its file (measurably slower)."""
        until = self._unknown.get(org)
        if until is None:
            return False
        if until < time.monotonic():
            del self._unknown[org]
            return False
        return True

    def _decoy_keys(self) -> OrgKeys | None:
        """A served org's keys, to look tokens up in for orgs that do not exist."""
        if self._decoy is not None:
            return self._decoy
        for org in self.served_orgs():
            try:
                self._decoy = self.service.org(org)
            except CrateError:
                continue
            return self._decoy
        return None

    def warm(self) -> None:
        """Open every served org's vault now, so that a stranger's first request
        to an org costs what later ones do (an open, cold vault is slower)."""
        for org in self.served_orgs():
            try:
                self.service.org(org).row_key()
            except CrateError:
                continue
        self._decoy_keys()

    def _open(self, org: str) -> OrgKeys | None:
        """The org's keys if it is served and exists (remembering for a few
        seconds an org that does not)."""
        if (self.orgs is not None and org not in self.orgs) or self._known_unknown(org):
            return None
        try:
            return self.service.org(org)
        except NotFound:
            if len(self._unknown) >= MAX_UNKNOWN_ORGS:
                self._unknown.clear()
            self._unknown[org] = time.monotonic() + UNKNOWN_ORG_TTL
            return None

    def authenticate(self, token: str | None, org: str | None) -> Principal:
        """The owner of `token` for `org` (None: the org the token names)."""
        from crate_cli.clock import utc_now
        from crate_cli.vault import tokens

        if not token:
            raise Unauthorized(
                "this server needs an API token (Authorization: Bearer crate_...)",
                "log in with: crate login --server URL",
            )
        invalid = Unauthorized(
            "the API token is not valid here (unknown, revoked or mistyped)",
            "ask an admin of the server for a token: crate token create NAME --role reader",
        )
        if org is None:
            return self._whose(token, invalid)
        # An org that does not exist or is not served answers as a bad token
        # does, after the same work: the token is looked up in a served org's
        # vault (a decoy) and the result thrown away, so that neither the
        # answer nor its time tells a stranger which orgs exist.
        keys = self._open(org)
        lookup = keys if keys is not None else self._decoy_keys()
        try:
            if lookup is None:
                raise invalid  # no org is served: there is nothing to tell apart
            info = tokens.authenticate(lookup, token, utc_now())
        except TokenExpired:
            if keys is None:
                raise invalid from None
            raise
        except Unauthorized:
            raise invalid from None  # the same answer whether or not the org exists
        if keys is None:
            raise invalid  # a token of the decoy org: not valid here
        return Principal(
            actor=f"token:{info.name}",
            client="server",
            role=info.role,
            envs=frozenset(info.envs),
            tags=frozenset(info.tags),
            token=info.name,
            org=org,
        )

    def _whose(self, token: str, invalid: Unauthorized) -> Principal:
        """/whoami: the token says which org it belongs to."""
        for candidate in self.service.list_orgs():
            try:
                return self.authenticate(token, candidate)
            except TokenExpired:
                raise
            except Unauthorized:
                pass
        raise invalid


class Denials:
    """Refusals of callers without a valid token (401, 429), counted in memory
    per org and written as one `unauthenticated` entry per org and interval
    (`ApiCore.write_denials`), instead of one locked write per refusal: a
    stranger's guesses neither amplify into audit writes nor time them.

    One object for every thread of a server (the counts are under a lock).
    At most `max_orgs` orgs are counted per interval, plus every org in
    `known` (the orgs that exist): names made up by a stranger cannot crowd
    out a real org's count.
    """

    MAX_ADDRESSES = 16  # per org and interval; further ones are only counted

    def __init__(self, max_orgs: int = 1024) -> None:
        import threading

        self._lock = threading.Lock()
        self._tallies: dict[str, dict[str, Any]] = {}
        self.max_orgs = max_orgs
        self.known: frozenset[str] = frozenset()
        self.dropped = 0  # refusals for orgs beyond max_orgs (they cannot exist)

    def count(self, org: str, address: str, code: str) -> None:
        from crate_cli.clock import utc_now

        now = utc_now()
        with self._lock:
            tally = self._tallies.get(org)
            if tally is None:
                if len(self._tallies) >= self.max_orgs and org not in self.known:
                    self.dropped += 1
                    return
                tally = self._tallies[org] = {
                    "count": 0,
                    "addresses": {},
                    "errors": {},
                    "first": now,
                    "last": now,
                }
            tally["count"] += 1
            addresses: dict[str, int] = tally["addresses"]
            if address in addresses or len(addresses) < self.MAX_ADDRESSES:
                addresses[address] = addresses.get(address, 0) + 1
            else:
                tally["other_addresses"] = tally.get("other_addresses", 0) + 1
            errors: dict[str, int] = tally["errors"]
            errors[code] = errors.get(code, 0) + 1
            tally["last"] = now

    def drain(self) -> dict[str, dict[str, Any]]:
        """The counts since the last drain, per org; counting starts afresh."""
        with self._lock:
            tallies, self._tallies = self._tallies, {}
            return tallies
