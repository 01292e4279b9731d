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
from collections.abc import Iterable
from typing import Any, Literal

from crate_cli.errors import AuditChainBroken, AuditSeqTaken, IntegrityError, KeystoreError
from crate_cli.records import Record
from crate_cli.vault import crypto
from crate_cli.vault.keys import Caller, OrgKeys
from crate_cli.vault.storage.interface import (
    AnchorRow,
    AuditEntryRow,
    AuditFilter,
    OrgReader,
    OrgStore,
    OrgWriter,
    PendingFields,
    PendingRow,
)

# What an entry says was done: each API route's action, and what key
# management, token and org commands record (`crate audit log --action`).
Action = Literal[
    "public-key",
    "store",
    "list",
    "retrieve",
    "delete",
    "history",
    "rollback",
    "env-list",
    "env-create",
    "env-delete",
    "allowed-names",
    "name-allow",
    "name-disallow",
    "audit-log",
    "audit-verify",
    "audit-module",
    "audit-enable",
    "audit-disable",
    "org-create",
    "rotate-org",
    "rotate-master",
    "prune",
    "token-create",
    "token-revoke",
    "unauthenticated",
    "unlock",
    "slot-add",
    "slot-remove",
    "key-export",
]
# How it ended: done, refused (authentication, permission), or failed.
Outcome = Literal["ok", "denied", "failed"]

HINT = "see what changed with: crate audit verify; restore the vault from a backup"
# What `query` filters by (storage's record).


class Entry(Record):
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


class Anchor(Record):
    seq: int
    mac: bytes
    enabled: bool


class Verified(Record):
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
    HMAC, keyed once (verify runs it a million times)."""

    def __init__(self, chain_key: bytes, org: str) -> None:
        self._macs = crypto.RowMac(chain_key, crypto.AUDIT_ENTRY, org)

    def matches(self, row: tuple[Any, ...], prev: bytes) -> bool:
        """Whether a stored row (ten fields, then its MAC) chains from `prev`.
        A field holding NUL cannot be one crate wrote: no match."""
        return self._macs.matches((*row[:10], prev.hex()), row[10])

    def matches_text(self, text: object, tag: object, prev: bytes) -> bool:
        """`matches` for the ten fields already joined by NUL (SQLite joins
        them faster than Python unpacks them)."""
        if not isinstance(text, str) or text.count("\x00") != 9:
            return False
        return self._macs.matches_joined(f"{text}\x00{prev.hex()}", 11, tag)


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
    """Why a pending entry (its PendingFields) is not a failed
    unlock as crate records one, or None if it is. Such rows carry no MAC, so
    anyone who can write the file could add them: only this fixed shape is
    ever chained in, and it says no more than "an unlock failed then"."""
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


def _check_pending(db: OrgReader, keys: OrgKeys, rows: list[PendingRow]) -> None:
    """AuditChainBroken naming the first pending entry that crate did not
    write: not of a failed unlock's shape, or at a time it could not have been
    written (after now, or well before the newest entry)."""
    if not rows:
        return  # the usual case, on every append: nothing imported for it
    from datetime import timedelta

    from crate_cli import clock
    from crate_cli.display import safe_text

    if len(rows) > MAX_PENDING:
        raise AuditChainBroken(
            f"organization {keys.org!r} has {len(rows)} pending audit entries (failed unlocks "
            f"recorded without a key), more than crate ever leaves ({MAX_PENDING}): they were "
            "added outside crate and are not chained in",
            f"check who can write {keys.store.location}, then remove them or restore a backup",
        )
    newest = db.newest_entry_time()
    slack = timedelta(seconds=PENDING_SLACK)
    latest = clock.format_time(clock.now() + slack)
    earliest = ""
    if isinstance(newest, str):
        try:
            earliest = clock.format_time(clock.parse_time(newest) - slack)
        except ValueError:
            earliest = ""
    for entry_id, fields in rows:
        problem = pending_problem(fields)
        if problem is None and not earliest <= str(fields.time) <= latest:
            problem = "its time is not one at which crate could have written it"
        if problem is not None:
            raise AuditChainBroken(
                f"pending audit entry {entry_id} of organization {keys.org!r} (action "
                f"'{safe_text(str(fields.action), 40)}') was not written by crate: {problem}; "
                "it is not chained in",
                f"check who can write {keys.store.location}, then delete it "
                f"({keys.store.pending_removal_hint(entry_id)}) or restore a backup",
            )


def _anchor_message(org: str, seq: int, mac: bytes, enabled: int) -> bytes:
    """What the anchor's tag covers: the switch as the integer stored."""
    return crypto.mac_message(crypto.AUDIT_ANCHOR, org, seq, mac.hex(), int(enabled))


def read_anchor(db: OrgReader, keys: OrgKeys) -> Anchor:
    """The newest sequence number and MAC, authenticated. A vault migrated from
    schema 2 that has no entry yet has an anchor with no tag."""
    row = db.anchor()
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
        crypto.verify_mac(keys.chain_key(), _anchor_message(keys.org, seq, mac, enabled), tag)
    except (IntegrityError, AttributeError):
        raise AuditChainBroken(
            f"the anchor of organization {keys.org!r}'s audit log (its newest entry) "
            "was changed outside crate",
            HINT,
        ) from None
    return anchor


def write_anchor(db: OrgWriter, keys: OrgKeys, anchor: Anchor) -> None:
    message = _anchor_message(keys.org, anchor.seq, anchor.mac, anchor.enabled)
    db.write_anchor(
        AnchorRow(
            anchor.seq, anchor.mac, int(anchor.enabled), crypto.mac(keys.chain_key(), message)
        )
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
    db: OrgWriter,
    keys: OrgKeys,
    caller: Caller,
    action: Action,
    *,
    env: str = "",
    names: Iterable[str] = (),
    outcome: Outcome = "ok",
    details: dict[str, Any] | None = None,
    enabled: bool | None = None,
) -> int:
    """Append one entry inside the caller's write transaction (`store.write()`);
    entries recorded while locked are chained in first. `enabled` switches the
    audit module. Returns the entry's sequence number."""
    from crate_cli.clock import utc_now

    anchor = read_anchor(db, keys)
    seq, prev = anchor.seq, anchor.mac
    chain_key = keys.chain_key()
    pending = db.pending_entries()
    _check_pending(db, keys, pending)
    rows: list[tuple[Any, ...]] = []
    for _, fields in pending:
        marked = {**json.loads(fields.details), "deferred": True}
        rows.append((*fields[:8], _json(marked)))
    rows.append(_fields(0, utc_now(), caller, action, env, names, outcome, details)[1:])
    for entry in rows:
        seq += 1
        full = (seq, *entry)
        mac = entry_mac(chain_key, keys.org, full, prev)
        try:
            db.insert_audit_entry(AuditEntryRow._make((*full, mac)))
        except AuditSeqTaken:
            raise AuditChainBroken(
                f"the audit log of organization {keys.org!r} holds an entry {seq} that its "
                "anchor does not cover: it was added outside crate",
                HINT,
            ) from None
        prev = mac
    if pending:
        db.clear_pending()
    if anchor.seq == 0:
        keys.mark_audit_log_begun(db)  # from now on, an empty log is a reset one
    write_anchor(db, keys, Anchor(seq, prev, anchor.enabled if enabled is None else enabled))
    return seq


def record(keys: OrgKeys, caller: Caller, action: Action, **kwargs: Any) -> int:
    """Append one entry in a transaction of its own (after a read)."""
    with keys.store.write() as db:
        return append(db, keys, caller, action, **kwargs)


def record_pending(
    store: OrgStore,
    caller: Caller,
    action: Action,
    *,
    env: str = "",
    outcome: Outcome = "failed",
    details: dict[str, Any] | None = None,
) -> None:
    """Record an entry without the audit key (a failed unlock): the next
    writer that holds the key chains it in. Met inside a transaction (which
    the failure will end), it is written once that transaction is over."""
    from crate_cli.clock import utc_now

    fields = PendingFields(*_fields(0, utc_now(), caller, action, env, (), outcome, details)[1:])

    def write() -> None:
        with store.write() as db:
            db.add_pending(fields)

    store.after_transaction(write)


def record_unlock_failure(keys: OrgKeys, error: KeystoreError, version: int) -> None:
    """A failed unlock of master key `version` (OrgKeys' on_unlock_failure):
    pending, since the key is what is missing."""
    record_pending(
        keys.store,
        keys.caller,
        "unlock",
        details={"error": error.api_code, "master_version": version},
    )


def is_enabled(keys: OrgKeys) -> bool:
    with keys.store.read() as db:
        return read_anchor(db, keys).enabled


def set_enabled(keys: OrgKeys, caller: Caller, enabled: bool) -> bool:
    """Switch the audit module, recording the switch; returns whether it changed."""
    with keys.store.write() as db:
        if read_anchor(db, keys).enabled == enabled:
            return False
        action: Action = "audit-enable" if enabled else "audit-disable"
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
    keys: OrgKeys,
    filters: AuditFilter,
    *,
    limit: int,
    before: int | None = None,
    after: int | None = None,
) -> tuple[list[Entry], bool]:
    """Entries matching `filters`: the newest `limit` below `before`, or with
    `after`, the oldest `limit` above it; always in ascending order. Each one
    is authenticated against the MAC before it. Returns (entries, more)."""
    with keys.store.read() as db:
        rows = db.audit_page(filters, limit + 1, before, after)
    more = len(rows) > limit
    rows = rows[:limit]
    checker = Checker(keys.chain_key(), keys.org)
    for entry, before_mac in rows:
        prev = before_mac if entry.seq > 1 else b""
        if prev is None or not checker.matches(entry, prev):
            raise AuditChainBroken(
                f"entry {entry.seq} of organization {keys.org!r}'s audit log does not match its "
                "chain: it or the entry before it was changed outside crate",
                HINT,
            )
    if after is None:  # newest first
        rows.reverse()
    return [_entry(keys.org, entry) for entry, _ in rows], more


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


def _check_heads(db: OrgReader, org: str, latest: dict[tuple[str, str], tuple[int, int]]) -> None:
    """Each secret the log saw written must be at the version its newest entry
    recorded: an older (authentic) head restored, with the later versions
    deleted, is caught here."""
    heads = db.head_versions()
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


def verify(keys: OrgKeys) -> Verified:
    """Walk the whole chain against the anchor; AuditChainBroken names the first
    entry that was changed, removed, reordered, added or cut off. Then check
    that every secret is at the version the log last recorded for it."""
    org = keys.org
    latest: dict[tuple[str, str], tuple[int, int]] = {}
    # (action, name, time) -> seq: the permanent records entries say they wrote.
    records: dict[tuple[str, str, str], int] = {}
    with keys.store.read() as db:
        anchor = read_anchor(db, keys)
        pending_rows = db.pending_entries()
        _check_pending(db, keys, pending_rows)
        pending = len(pending_rows)
        expected = 1
        prev = b""
        checker = Checker(keys.chain_key(), org)
        for seq, action, outcome, text, tag in db.audit_chain():
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


def _check_records(db: OrgReader, keys: OrgKeys, records: dict[tuple[str, str, str], int]) -> None:
    """Every permanent record the log says was written must still be there,
    authentic: else a revoked token, or an allowance that ended, could be
    brought back by copying its row from a backup."""
    found = set()
    for digest, name, revoked_at, actor, tag in db.revocations():
        if _authentic(keys.revocation_mac, (bytes(digest), name, revoked_at, actor), tag):
            found.add(("token-revoke", name, revoked_at))
    for name, allowed_at, ended_at, actor, tag in db.ended_allowances():
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
