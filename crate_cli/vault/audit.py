"""The tamper-evident audit log of an org (DESIGN §5).

Every operation on an org appends one entry to its vault's `audit_log`
table: sequence number, UTC time, actor, action, environment, the secret
names concerned, outcome, request id, client (cli, server, agent) and a few
details (an error code, a key version). Never a value and never a token.

The entries form an HMAC-SHA256 chain under a subkey of the org audit key:
entry n's MAC covers its own fields and entry n-1's MAC. SQLite triggers
refuse UPDATE and DELETE on the table, and the newest sequence number and
MAC are kept in the `audit_anchor` row, MAC'd under the same key together
with the audit module's on/off switch. So `verify()` detects an entry that
was changed, removed, reordered or added, and newest entries cut off, even by
someone who dropped the triggers, as long as they do not hold the key.

Appends run inside the caller's write transaction: a change and its entry
commit together, or neither does. Reads append after their snapshot, before
their answer leaves. An unlock that fails has no key to MAC with, so it is
written to `audit_pending` and chained in (marked `deferred`) by the next
writer that holds the key. Only rows of the exact shape crate gives a failed
unlock are chained; anything else there was written by someone else, and
stops that writer and `verify()` with AuditChainBroken.
"""

import json
import re
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from crate_cli.errors import AuditChainBroken, IntegrityError
from crate_cli.vault import crypto

if TYPE_CHECKING:
    from crate_cli.vault.service import OrgKeys
    from crate_cli.vault.store import OrgStore

# The columns of an entry, in MAC order (the MAC itself last).
FIELDS = "seq, time, actor, action, env, names, outcome, request_id, client, details"
_PENDING_FIELDS = "time, actor, action, env, names, outcome, request_id, client, details"
OUTCOMES = ("ok", "denied", "failed")
HINT = "see what changed with: crate audit verify; restore the vault from a backup"


def local_actor() -> str:
    """`user@host` for local calls (as getpass.getuser, without its imports)."""
    import os

    user = os.environ.get("LOGNAME") or os.environ.get("USER")
    if not user:
        import pwd

        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = str(os.getuid())
    return f"{user}@{os.uname().nodename}"


class Caller(NamedTuple):
    """Who an entry is recorded for: the actor, through which client, and the
    id of the request (empty outside the API)."""

    actor: str
    client: str = "cli"
    request_id: str = ""


class Entry(NamedTuple):
    seq: int
    time: str
    actor: str
    action: str
    org: str
    env: str
    names: list[str]
    outcome: str
    request_id: str
    client: str
    details: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "organization": self.org,
            "environment": self.env or None,
            "names": self.names,
            "outcome": self.outcome,
            "request_id": self.request_id or None,
            "client": self.client,
            "details": self.details,
        }


class Anchor(NamedTuple):
    seq: int
    mac: bytes
    enabled: bool


class Filters(NamedTuple):
    since: str | None = None  # UTC time, as utc_now() writes it
    actor: str | None = None
    action: str | None = None
    env: str | None = None
    name: str | None = None


class Verified(NamedTuple):
    entries: int
    head_mac: bytes
    pending: int  # entries recorded while locked, not chained yet


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def entry_mac(chain_key: bytes, org: str, fields: tuple[Any, ...], prev: bytes) -> bytes:
    """The MAC of an entry whose fields are `fields` (seq first), after `prev`.
    A field holding NUL (which crate never writes) raises ValueError."""
    return crypto.mac(chain_key, crypto.mac_message(crypto.AUDIT_ENTRY, org, *fields, prev.hex()))


class Checker:
    """Checks stored entries against the chain: `entry_mac`'s message and
    HMAC, with the keyed HMAC set up once (verify runs it a million times)."""

    def __init__(self, chain_key: bytes, org: str) -> None:
        from cryptography.hazmat.primitives import hashes, hmac

        self._keyed = hmac.HMAC(chain_key, hashes.SHA256())
        self._prefix = f"{crypto.AUDIT_ENTRY}\x00{org}\x00"

    def matches(self, row: tuple[Any, ...], prev: bytes) -> bool:
        """Whether a stored row (ten fields, then its MAC) chains from `prev`.
        A field holding NUL cannot be one crate wrote: no match."""
        return self.matches_text("\x00".join(map(str, row[:10])), row[10], prev)

    def matches_text(self, text: object, tag: object, prev: bytes) -> bool:
        """`matches` for the ten fields already joined by NUL (SQLite joins
        them faster than Python unpacks them)."""
        from cryptography.exceptions import InvalidSignature

        if not isinstance(text, str) or text.count("\x00") != 9 or not isinstance(tag, bytes):
            return False
        h = self._keyed.copy()
        h.update(f"{self._prefix}{text}\x00{prev.hex()}".encode())
        try:
            h.verify(tag)
        except InvalidSignature:
            return False
        return True


# The one entry crate writes without a key: a failed unlock, whose fields
# are fixed but for the time, the actor and the master key version.
_PENDING_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
# `user@host` as local_actor makes it, or the service's default.
_PENDING_ACTOR = re.compile(r"crate|[A-Za-z0-9._$\\-]{1,64}@[A-Za-z0-9._-]{1,253}")
# A failed unlock is recorded as it happens: never from the future, nor from
# long before the newest entry it follows (slack for a race between writers
# and for clock steps).
PENDING_SLACK = 3600.0
# More failed unlocks than this waiting at once were not all crate's.
MAX_PENDING = 1000
_PENDING_DETAILS = re.compile(r'\{"error":"([a-z_]{1,40})","master_version":([1-9]\d{0,8})\}')
PENDING_CLIENTS = ("cli", "server", "agent")


def pending_problem(row: tuple[Any, ...]) -> str | None:
    """Why a row of `audit_pending` (its `_PENDING_FIELDS`) is not a failed
    unlock as crate records one, or None if it is. Such rows carry no MAC, so
    anyone who can write the file could add them: only this fixed shape is
    ever chained in, and it says no more than "an unlock failed then"."""
    from crate_cli.errors import KeystoreError

    time, actor, action, env, names, outcome, request_id, client, details = row
    if (action, env, names, outcome, request_id) != ("unlock", "", "[]", "failed", ""):
        return "it is not a failed unlock"
    if client not in PENDING_CLIENTS:
        return "its client is not one of crate's"
    if not isinstance(time, str) or not _PENDING_TIME.fullmatch(time):
        return "its time is not one crate writes"
    if not isinstance(actor, str) or not _PENDING_ACTOR.fullmatch(actor):
        return "its actor is not one crate writes"
    match = _PENDING_DETAILS.fullmatch(details) if isinstance(details, str) else None
    codes = {KeystoreError.api_code, *(c.api_code for c in KeystoreError.__subclasses__())}
    if match is None or match.group(1) not in codes:
        return "its details are not those of a failed unlock"
    return None


def _check_pending(db: sqlite3.Connection, keys: "OrgKeys", rows: list[tuple[Any, ...]]) -> None:
    """AuditChainBroken naming the first pending row (id first) that crate did not
    write: not of a failed unlock's shape, or at a time it could not have been
    written (after now, or well before the newest entry)."""
    if not rows:
        return  # the usual case, on every append: nothing imported for it
    from datetime import UTC, datetime, timedelta

    from crate_cli.display import safe_text

    if len(rows) > MAX_PENDING:
        raise AuditChainBroken(
            f"organization {keys.org!r} has {len(rows)} pending audit entries (failed unlocks "
            f"recorded without a key), more than crate ever leaves ({MAX_PENDING}): they were "
            "added outside crate and are not chained in",
            f"check who can write {keys.store.path}, then remove them or restore a backup",
        )
    newest = db.execute("SELECT time FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    now = datetime.now(UTC).replace(tzinfo=None)
    latest = (now + timedelta(seconds=PENDING_SLACK)).strftime(fmt)
    earliest = ""
    if newest is not None and isinstance(newest[0], str):
        try:
            floor = datetime.strptime(newest[0], fmt) - timedelta(seconds=PENDING_SLACK)
            earliest = floor.strftime(fmt)
        except ValueError:
            earliest = ""
    for row in rows:
        problem = pending_problem(row[1:])
        if problem is None and not earliest <= str(row[1]) <= latest:
            problem = "its time is not one at which crate could have written it"
        if problem is not None:
            path = keys.store.path
            delete = f"DELETE FROM audit_pending WHERE id = {int(row[0])}"  # noqa: S608
            raise AuditChainBroken(
                f"pending audit entry {row[0]} of organization {keys.org!r} (action "
                f"'{safe_text(str(row[3]), 40)}') was not written by crate: {problem}; "
                "it is not chained in",
                f"check who can write {path}, then delete it (sqlite3 {path} '{delete}') "
                "or restore a backup",
            )


def _anchor_tag(chain_key: bytes, org: str, anchor: Anchor) -> bytes:
    return crypto.mac(
        chain_key,
        crypto.mac_message(
            crypto.AUDIT_ANCHOR, org, anchor.seq, anchor.mac.hex(), int(anchor.enabled)
        ),
    )


def read_anchor(db: sqlite3.Connection, keys: "OrgKeys") -> Anchor:
    """The newest sequence number and MAC, authenticated. A vault migrated from
    schema 2 that has no entry yet has an anchor with no tag."""
    row = db.execute("SELECT seq, mac, enabled, tag FROM audit_anchor WHERE id = 1").fetchone()
    if row is None:
        raise AuditChainBroken(
            f"the audit log of organization {keys.org!r} has lost its anchor "
            "(the record of its newest entry)",
            HINT,
        )
    seq, mac, enabled, tag = row
    anchor = Anchor(seq, mac, bool(enabled))
    if anchor == Anchor(0, b"", False) and tag == b"":
        # Migrated from schema 2 with nothing recorded yet, unless the audit
        # key says the log had begun: then the log was reset outside crate.
        if keys.audit_log_begun(db):
            raise AuditChainBroken(
                f"the audit log of organization {keys.org!r} was emptied and its anchor "
                "reset outside crate",
                HINT,
            )
        return anchor
    try:
        crypto.verify_mac(
            keys.chain_key(),
            crypto.mac_message(crypto.AUDIT_ANCHOR, keys.org, seq, mac.hex(), int(enabled)),
            tag,
        )
    except (IntegrityError, AttributeError):
        raise AuditChainBroken(
            f"the anchor of organization {keys.org!r}'s audit log (its newest entry) "
            "was changed outside crate",
            HINT,
        ) from None
    return anchor


def write_anchor(db: sqlite3.Connection, keys: "OrgKeys", anchor: Anchor) -> None:
    db.execute(
        "INSERT OR REPLACE INTO audit_anchor (id, seq, mac, enabled, tag) VALUES (1, ?, ?, ?, ?)",
        (
            anchor.seq,
            anchor.mac,
            int(anchor.enabled),
            _anchor_tag(keys.chain_key(), keys.org, anchor),
        ),
    )


def _fields(
    seq: int,
    time: str,
    caller: Caller,
    action: str,
    env: str,
    names: Iterable[str],
    outcome: str,
    details: dict[str, Any] | None,
) -> tuple[Any, ...]:
    return (
        seq,
        time,
        caller.actor,
        action,
        env,
        _json(list(names)),
        outcome,
        caller.request_id,
        caller.client,
        _json(details or {}),
    )


def append(
    db: sqlite3.Connection,
    keys: "OrgKeys",
    caller: Caller,
    action: str,
    *,
    env: str = "",
    names: Iterable[str] = (),
    outcome: str = "ok",
    details: dict[str, Any] | None = None,
    enabled: bool | None = None,
) -> int:
    """Append one entry inside the caller's write transaction (`store.write()`);
    entries recorded while locked are chained in first. `enabled` switches the
    audit module. Returns the entry's sequence number."""
    from crate_cli.vault.masterkey import utc_now

    anchor = read_anchor(db, keys)
    seq, prev = anchor.seq, anchor.mac
    chain_key = keys.chain_key()
    pending = db.execute(
        f"SELECT id, {_PENDING_FIELDS} FROM audit_pending ORDER BY id"  # noqa: S608
    ).fetchall()
    _check_pending(db, keys, pending)
    rows = []
    for row in pending:
        marked = {**json.loads(row[9]), "deferred": True}
        rows.append((*row[1:9], _json(marked)))
    rows.append(_fields(0, utc_now(), caller, action, env, names, outcome, details)[1:])
    for fields in rows:
        seq += 1
        full = (seq, *fields)
        mac = entry_mac(chain_key, keys.org, full, prev)
        try:
            db.execute(
                f"INSERT INTO audit_log ({FIELDS}, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (*full, mac),
            )
        except sqlite3.IntegrityError:
            raise AuditChainBroken(
                f"the audit log of organization {keys.org!r} holds an entry {seq} that its "
                "anchor does not cover: it was added outside crate",
                HINT,
            ) from None
        prev = mac
    if pending:
        db.execute("DELETE FROM audit_pending")
    if anchor.seq == 0:
        keys.audit_log_begun(db, mark=True)  # from now on, an empty log is a reset one
    write_anchor(db, keys, Anchor(seq, prev, anchor.enabled if enabled is None else enabled))
    return seq


def record(keys: "OrgKeys", caller: Caller, action: str, **kwargs: Any) -> int:
    """Append one entry in a transaction of its own (after a read)."""
    with keys.store.write() as db:
        return append(db, keys, caller, action, **kwargs)


def record_pending(
    store: "OrgStore",
    caller: Caller,
    action: str,
    *,
    env: str = "",
    outcome: str = "failed",
    details: dict[str, Any] | None = None,
) -> None:
    """Record an entry without the audit key (a failed unlock): the next
    writer that holds the key chains it in. Met inside a transaction (which
    the failure will end), it is written once that transaction is over."""
    from crate_cli.vault.masterkey import utc_now

    fields = _fields(0, utc_now(), caller, action, env, (), outcome, details)[1:]

    def write() -> None:
        with store.write() as db:
            db.execute(
                f"INSERT INTO audit_pending ({_PENDING_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                fields,
            )

    store.after_transaction(write)


def is_enabled(keys: "OrgKeys") -> bool:
    with keys.store.read() as db:
        return read_anchor(db, keys).enabled


def set_enabled(keys: "OrgKeys", caller: Caller, enabled: bool) -> bool:
    """Switch the audit module, recording the switch; returns whether it changed."""
    with keys.store.write() as db:
        if read_anchor(db, keys).enabled == enabled:
            return False
        action = "audit-enable" if enabled else "audit-disable"
        append(db, keys, caller, action, enabled=enabled)
    return True


def _entry(org: str, row: tuple[Any, ...]) -> Entry:
    seq, time, actor, action, env, names, outcome, request_id, client, details = row[:10]
    return Entry(
        seq,
        time,
        actor,
        action,
        org,
        env,
        json.loads(names),
        outcome,
        request_id,
        client,
        json.loads(details),
    )


def query(
    keys: "OrgKeys",
    filters: Filters,
    *,
    limit: int,
    before: int | None = None,
    after: int | None = None,
) -> tuple[list[Entry], bool]:
    """Entries matching `filters`: the newest `limit` below `before`, or with
    `after`, the oldest `limit` above it; always in ascending order. Each one
    is authenticated against the MAC before it. Returns (entries, more)."""
    conditions: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("a.actor", filters.actor),
        ("a.action", filters.action),
        ("a.env", filters.env),
    ):
        if value is not None:
            conditions.append(f"{column} = ?")
            params.append(value)
    if filters.since is not None:
        conditions.append("a.time >= ?")
        params.append(filters.since)
    if filters.name is not None:
        conditions.append("EXISTS (SELECT 1 FROM json_each(a.names) j WHERE j.value = ?)")
        params.append(filters.name)
    if after is not None:
        conditions.append("a.seq > ?")
        params.append(after)
        order = "ASC"
    else:
        if before is not None:
            conditions.append("a.seq < ?")
            params.append(before)
        order = "DESC"
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    columns = ", ".join(f"a.{c.strip()}" for c in FIELDS.split(","))
    sql = (
        f"SELECT {columns}, a.mac, p.mac FROM audit_log a "  # noqa: S608
        f"LEFT JOIN audit_log p ON p.seq = a.seq - 1 {where} ORDER BY a.seq {order} LIMIT ?"
    )
    with keys.store.read() as db:
        rows = db.execute(sql, (*params, limit + 1)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    checker = Checker(keys.chain_key(), keys.org)
    for row in rows:
        prev = row[11] if row[0] > 1 else b""
        if prev is None or not checker.matches(row, prev):
            raise AuditChainBroken(
                f"entry {row[0]} of organization {keys.org!r}'s audit log does not match its "
                "chain: it or the entry before it was changed outside crate",
                HINT,
            )
    if order == "DESC":
        rows.reverse()
    return [_entry(keys.org, row) for row in rows], more


def _note_versions(
    latest: dict[tuple[str, str], tuple[int, int]], seq: int, fields: list[str]
) -> None:
    """Track, from an authenticated entry (its ten fields as text), the version
    each secret should be at."""
    action, env = fields[3], fields[4]
    try:
        names, details = json.loads(fields[5]), json.loads(fields[9])
    except ValueError:
        return
    if not isinstance(names, list) or not isinstance(details, dict):
        return
    if action == "env-delete":
        for key in [k for k in latest if k[0] == env]:
            del latest[key]
    elif action == "store":
        versions = details.get("versions")
        if isinstance(versions, list):
            for name, version in zip(names, versions, strict=False):
                latest[(env, str(name))] = (version, seq)
    elif names and isinstance(details.get("version"), int):  # delete, rollback
        latest[(env, str(names[0]))] = (details["version"], seq)


def _check_heads(
    db: sqlite3.Connection, org: str, latest: dict[tuple[str, str], tuple[int, int]]
) -> None:
    """Each secret the log saw written must be at the version its newest entry
    recorded: an older (authentic) head restored, with the later versions
    deleted, is caught here."""
    heads = {(r[0], r[1]): r[2] for r in db.execute("SELECT env, name, version FROM secrets")}
    for (env, name), (version, seq) in sorted(latest.items(), key=lambda item: item[1][1]):
        head = heads.get((env, name))
        if head != version:
            now = "is gone" if head is None else f"is at version {head}"
            raise AuditChainBroken(
                f"secret {name} in {org}/{env} {now}, but entry {seq} of the audit log "
                f"recorded version {version}: the secret was rolled back or removed outside "
                "crate",
                HINT,
            )


def verify(keys: "OrgKeys") -> Verified:
    """Walk the whole chain against the anchor; AuditChainBroken names the first
    entry that was changed, removed, reordered, added or cut off. Then check
    that every secret is at the version the log last recorded for it."""
    org = keys.org
    latest: dict[tuple[str, str], tuple[int, int]] = {}
    # (action, name, time) -> seq: the permanent records entries say they wrote.
    records: dict[tuple[str, str, str], int] = {}
    with keys.store.read() as db:
        anchor = read_anchor(db, keys)
        pending_rows = db.execute(
            f"SELECT id, {_PENDING_FIELDS} FROM audit_pending ORDER BY id"  # noqa: S608
        ).fetchall()
        _check_pending(db, keys, pending_rows)
        pending = len(pending_rows)
        expected = 1
        prev = b""
        checker = Checker(keys.chain_key(), org)
        joined = " || char(0) || ".join(c.strip() for c in FIELDS.split(","))
        query = f"SELECT seq, action, outcome, {joined}, mac FROM audit_log ORDER BY seq"  # noqa: S608
        for seq, action, outcome, text, tag in db.execute(query):
            if seq > anchor.seq:
                raise AuditChainBroken(
                    f"entry {seq} of organization {org!r}'s audit log comes after the newest "
                    f"authenticated entry ({anchor.seq}): it was added outside crate",
                    HINT,
                )
            if seq < expected:
                raise AuditChainBroken(
                    f"entry {seq} of organization {org!r}'s audit log comes before its first "
                    "entry: it was added outside crate",
                    HINT,
                )
            if seq != expected:
                gone = (
                    f"entry {expected}"
                    if seq == expected + 1
                    else (f"entries {expected} to {seq - 1}")
                )
                raise AuditChainBroken(
                    f"{gone} of organization {org!r}'s audit log "
                    f"{'was' if seq == expected + 1 else 'were'} removed",
                    HINT,
                )
            if not checker.matches_text(text, tag, prev):
                raise AuditChainBroken(
                    f"entry {seq} of organization {org!r}'s audit log was changed or "
                    "moved outside crate",
                    HINT,
                )
            if action in _VERSIONED and outcome == "ok":
                _note_versions(latest, seq, text.split("\x00"))
            elif action in _PERMANENT and outcome == "ok":
                _note_record(records, action, seq, text.split("\x00"))
            prev = tag
            expected += 1
        _check_anchor_reached(org, anchor, expected - 1, prev)
        _check_heads(db, org, latest)
        _check_records(db, keys, records)
    return Verified(expected - 1, prev, pending)


# Actions whose entries name a permanent record they wrote in the same
# transaction (details key -> the record's time): a token's revocation, the
# end of a steering name's allowance. Without it, a row copied back from a
# backup (the token, the allowance) would count again.
_PERMANENT = {"token-revoke": "recorded", "name-disallow": "ended"}


def _note_record(
    records: dict[tuple[str, str, str], int], action: str, seq: int, fields: list[str]
) -> None:
    """Track, from an authenticated entry, the permanent record it wrote
    (entries from before schema 5 name none)."""
    try:
        names, details = json.loads(fields[5]), json.loads(fields[9])
    except ValueError:
        return
    if not isinstance(details, dict) or not isinstance(details.get(_PERMANENT[action]), str):
        return
    if action == "token-revoke":
        subject = str(details.get("token"))
    elif isinstance(names, list) and names:
        subject = str(names[0])
    else:
        return
    records[(action, subject, details[_PERMANENT[action]])] = seq


def _check_records(
    db: sqlite3.Connection, keys: "OrgKeys", records: dict[tuple[str, str, str], int]
) -> None:
    """Every permanent record the log says was written must still be there,
    authentic: else a revoked token, or an allowance that ended, could be
    brought back by copying its row from a backup."""
    found = set()
    for digest, name, revoked_at, actor, tag in db.execute(
        "SELECT hash, name, revoked_at, actor, mac FROM token_revocations"
    ):
        if _authentic(keys.revocation_mac, (bytes(digest), name, revoked_at, actor), tag):
            found.add(("token-revoke", name, revoked_at))
    for name, allowed_at, ended_at, actor, tag in db.execute(
        "SELECT name, allowed_at, ended_at, actor, mac FROM allowed_names_ended"
    ):
        if _authentic(keys.allowance_end_mac, (name, allowed_at, ended_at, actor), tag):
            found.add(("name-disallow", name.upper(), allowed_at))
    for (action, subject, when), seq in sorted(records.items(), key=lambda item: item[1]):
        key = (action, subject.upper() if action == "name-disallow" else subject, when)
        if key in found:
            continue
        what = (
            f"revoked token {subject!r}"
            if action == "token-revoke"
            else f"ended the allowance of the name {subject}"
        )
        raise AuditChainBroken(
            f"entry {seq} of organization {keys.org!r}'s audit log {what}, but the record of "
            "that is gone or was changed: it may count again",
            HINT,
        )


def _authentic(mac: Any, fields: tuple[Any, ...], tag: object) -> bool:
    """Whether `tag` is the MAC `mac(*fields)` computes (False for a field
    crate would never write, such as one holding NUL)."""
    import hmac  # not at the top: it loads OpenSSL's hashlib, 3 ms on crate run's path

    try:
        expected = mac(*fields)
    except (TypeError, ValueError):
        return False
    return isinstance(tag, bytes) and hmac.compare_digest(expected, tag)


# The actions whose entries say which version a secret is at.
_VERSIONED = frozenset({"store", "delete", "rollback", "env-delete"})


def _check_anchor_reached(org: str, anchor: Anchor, last: int, prev: bytes) -> None:
    """The walk must end at the anchor: no newest entry cut off or replaced."""
    if last < anchor.seq:
        gone = (
            f"entry {anchor.seq}"
            if last + 1 == anchor.seq
            else (f"entries {last + 1} to {anchor.seq}")
        )
        raise AuditChainBroken(
            f"the newest entries of organization {org!r}'s audit log were cut off: "
            f"{gone} {'is' if last + 1 == anchor.seq else 'are'} missing",
            HINT,
        )
    if prev != anchor.mac:
        raise AuditChainBroken(
            f"entry {last} of organization {org!r}'s audit log is not the one its anchor "
            "recorded: it was replaced outside crate",
            HINT,
        )
