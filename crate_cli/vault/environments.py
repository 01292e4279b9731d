"""An org's environments, and the names that steer processes which an
admin allowed for it (vault/names.py: PATH, LD_PRELOAD ...; DESIGN §9).

Each function takes the org's keys (vault/keys.py) and runs in a
transaction of its own, unless it takes the caller's rows (`db`).
"""

from crate_cli.clock import utc_now
from crate_cli.errors import Conflict, Forbidden, IntegrityError, InvalidInput, NotFound
from crate_cli.vault import audit
from crate_cli.vault.keys import Caller, OrgKeys
from crate_cli.vault.names import (
    STEERING_HELP,
    check_env,
    check_secret_name,
    steering_reason,
)
from crate_cli.vault.storage.interface import (
    AllowedNameRow,
    EndedAllowanceRow,
    OrgReader,
    OrgWriter,
)


def list_envs(keys: OrgKeys) -> list[str]:
    return keys.store.direct.environment_names()


def require_env(db: OrgReader, org: str, env: str) -> None:
    """NotFound unless `env` exists (in the caller's transaction)."""
    check_env(env)
    if not db.has_environment(env):
        raise NotFound(
            f"environment {env!r} does not exist in organization {org!r}",
            f"list them with: crate env list; create it with: crate env create {env}",
        )


def create_env(keys: OrgKeys, env: str, caller: Caller) -> None:
    with keys.store.write() as db:
        if db.has_environment(env):
            raise Conflict(f"environment {env!r} already exists in organization {keys.org!r}")
        db.add_environments([env], utc_now())
        audit.append(db, keys, caller, "env-create", env=env)


def delete_env(keys: OrgKeys, env: str, caller: Caller) -> int:
    """Delete an environment and all its secrets; returns how many secrets went."""
    with keys.store.write() as db:
        require_env(db, keys.org, env)
        count = db.count_secrets(env)
        db.delete_environment(env)
        audit.append(db, keys, caller, "env-delete", env=env, details={"secrets_deleted": count})
    return count


# -- names that steer processes --------------------------------------------------------------


def allowed(db: OrgReader, keys: OrgKeys) -> dict[str, dict[str, str]]:
    """The org's allowed steering names (upper case -> row), each row
    authenticated and not one whose allowance ended (an ended one copied
    back from a backup stays ended, whatever its MAC)."""
    import hmac

    ended = {(row.name, row.allowed_at) for row in db.ended_allowances()}
    found = {}
    for name, allowed_at, actor, tag in db.allowed_names():
        if not isinstance(tag, bytes) or not hmac.compare_digest(
            keys.allowed_name_mac(name, allowed_at, actor), tag
        ):
            raise IntegrityError()
        if (name, allowed_at) not in ended:
            found[name.upper()] = {"name": name, "allowed_at": allowed_at, "actor": actor}
    return found


def allowed_names(keys: OrgKeys) -> list[dict[str, str]]:
    """The steering names an admin allowed for the org, with who and when."""
    with keys.store.read() as db:
        return list(allowed(db, keys).values())


def steering_refusal(name: str) -> str:
    """Why `name` steers processes; InvalidInput when it does not (nothing to allow)."""
    check_secret_name(name)
    reason = steering_reason(name)
    if reason is None:
        raise InvalidInput(
            f"{name} is not a name crate refuses ({STEERING_HELP}); nothing to allow"
        )
    return reason


def allow_name(keys: OrgKeys, name: str, caller: Caller, allow: bool = True) -> bool:
    """Allow (or no longer allow) secrets of a steering name in the org;
    returns whether that changed anything. Audited either way it changes."""
    reason = steering_refusal(name)
    with keys.store.write() as db:
        present = allowed(db, keys).get(name.upper())
        if allow == (present is not None):
            return False
        now = utc_now()
        if allow:
            tag = keys.allowed_name_mac(name, now, caller.actor)
            db.allow_name(AllowedNameRow(name, now, caller.actor, tag))
            details = {"reason": reason}
        else:
            assert present is not None
            _end_allowance(db, keys, present["name"], present["allowed_at"], now, caller)
            # `ended`: `crate audit verify` checks that the record is still there.
            details = {"reason": reason, "ended": present["allowed_at"]}
        action: audit.Action = "name-allow" if allow else "name-disallow"
        audit.append(db, keys, caller, action, names=[name], details=details)
    return True


def _end_allowance(
    db: OrgWriter, keys: OrgKeys, name: str, allowed_at: str, now: str, caller: Caller
) -> None:
    tag = keys.allowance_end_mac(name, allowed_at, now, caller.actor)
    db.end_allowance(EndedAllowanceRow(name, allowed_at, now, caller.actor, tag))


def check_steering(db: OrgReader, keys: OrgKeys, names: list[str]) -> None:
    """Refuse to write secrets whose names steer the processes that inherit
    them, unless an admin allowed each name for the org (DESIGN §9)."""
    steering = [(n, r) for n in names if (r := steering_reason(n)) is not None]
    if not steering:
        return
    found = allowed(db, keys)
    for name, reason in steering:
        if name.upper() not in found:
            raise Forbidden(
                f"secret name {name} is refused: {reason}, so whoever runs crate run with "
                "it would run what its writer chose",
                f"an admin of {keys.org!r} can allow it: crate org allow-name {name}",
            )
