"""One error tree for the whole program.

Every failure a user can meet is a `CrateError` subclass that carries the
message the user sees, the process exit code (DESIGN §7) and, for the API
core, a stable wire code and HTTP status. The CLI prints what `render` says,
one or two lines; the API core turns them into `{"error": {"code",
"message"}}`; the client turns such a response back into the same class.

Messages never contain a secret value: they are built from names only.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_FOUND = 3
    DENIED = 4
    INTEGRITY = 5
    KEYSTORE = 6
    CONFLICT = 7
    # `crate run` only, as a shell reports them.
    CANNOT_EXECUTE = 126
    COMMAND_NOT_FOUND = 127
    # Ctrl-C, or a prompt abandoned: 128 + SIGINT, as a shell reports it.
    INTERRUPTED = 130


class CrateError(Exception):
    """Base of every error a user can see."""

    exit_code: ClassVar[ExitCode] = ExitCode.ERROR
    api_code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def diagnostics(self) -> str:
        """The text shown to the user: the message, then the hint if any."""
        if self.hint:
            return f"{self.message}\n{self.hint}"
        return self.message

    def render(self) -> str:
        """The lines crate prints on stderr for this error, each ending in a newline:
        `crate: error: MESSAGE`, then `crate: HINT` when there is a hint."""
        text = f"crate: error: {self.message}\n"
        if self.hint:
            text += f"crate: {self.hint}\n"
        return text


class InvalidInput(CrateError):
    """A name, value or argument that breaks a rule; nothing was changed."""

    exit_code = ExitCode.USAGE
    api_code = "bad_request"
    http_status = 400


class PayloadTooLarge(InvalidInput):
    api_code = "payload_too_large"
    http_status = 413


class SealedTransportRequired(InvalidInput):
    """A store request that does not carry a sealed JWE."""

    api_code = "sealed_transport_required"


class InvalidSealedValue(InvalidInput):
    """A sealed value that is malformed, for another key, or for another target."""

    api_code = "invalid_sealed_value"


class NotFound(CrateError):
    exit_code = ExitCode.NOT_FOUND
    api_code = "not_found"
    http_status = 404


class Unauthorized(CrateError):
    exit_code = ExitCode.DENIED
    api_code = "unauthorized"
    http_status = 401


class TokenExpired(Unauthorized):
    pass


class Forbidden(CrateError):
    exit_code = ExitCode.DENIED
    api_code = "forbidden"
    http_status = 403


class IntegrityError(CrateError):
    """Decryption or authentication failed. Never says which part failed."""

    exit_code = ExitCode.INTEGRITY
    api_code = "integrity_error"
    http_status = 500

    def __init__(self, message: str | None = None, hint: str | None = None) -> None:
        super().__init__(
            message or "integrity check failed: the data was modified or belongs elsewhere",
            hint,
        )


class VaultCorrupted(IntegrityError):
    """The vault file is not a readable crate vault (truncated, not SQLite)."""


class AuditChainBroken(IntegrityError):
    """The audit log's chain does not hold; the message names the first entry
    that breaks it (what an auditor needs, and nothing a forger can use)."""

    api_code = "audit_chain_broken"


class KeystoreError(CrateError):
    """The master key could not be unlocked or a key slot is unavailable."""

    exit_code = ExitCode.KEYSTORE
    api_code = "keystore_unavailable"
    http_status = 503


class WrongPassphrase(KeystoreError):
    pass


class Conflict(CrateError):
    exit_code = ExitCode.CONFLICT
    api_code = "conflict"
    http_status = 409


class NotPrivate(CrateError):
    """A folder crate keeps keys or vaults in is open to other users, or theirs."""


class UnsupportedVersion(CrateError):
    """A file written by a newer crate, or in a format this one cannot read."""


class CommandNotFound(CrateError):
    exit_code = ExitCode.COMMAND_NOT_FOUND


class CommandNotExecutable(CrateError):
    exit_code = ExitCode.CANNOT_EXECUTE


class RateLimited(CrateError):
    """Too many failed authentications from the caller's address (429)."""

    exit_code = ExitCode.DENIED
    api_code = "rate_limited"
    http_status = 429


class MalformedJWE(IntegrityError):
    """Not a JWE of crate's form (wrong shape, algorithm or header)."""

    def __init__(self, message: str = "not a valid RSA-OAEP-256/A256GCM JWE") -> None:
        super().__init__(message)


class AuditSeqTaken(Conflict):
    """An audit entry with this sequence number is already stored (or storage
    refused to overwrite one)."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"the audit log already holds an entry {seq}")
        self.seq = seq


class UnresolvedReference(CrateError):
    """A reference that cannot be resolved: missing, or part of a cycle (exit 1)."""


class ServerUnreachable(CrateError):
    """No answer from the server: the case the offline fallback covers."""

    api_code = "server_unreachable"


class StoreUnavailable(CrateError):
    """The team store (PostgreSQL) could not be reached, or did not confirm a
    change in time: the request failed, and the message says whether the
    change may have been saved."""

    api_code = "store_unavailable"
    http_status = 503


class StoreRetry(StoreUnavailable):
    """A store transaction failed in a way that is safe to run again from the
    start (a lost connection, a deadlock, a serialization failure): it is
    known not to have been applied. The API core retries such a request."""


class TlsFailure(CrateError):
    """The server's certificate did not verify."""


class HardeningError(CrateError):
    """The kernel refused to make the process undumpable: crate does not go on
    to hold a key in a process that could be dumped."""


def _all_subclasses(cls: type[CrateError]) -> list[type[CrateError]]:
    out: list[type[CrateError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def error_from_api(code: str, message: str) -> CrateError:
    """Rebuild the error a server sent, so the client exits as the server decided.

    Several classes share a wire code; the most general one (the first defined)
    is used, which keeps the exit code right.
    """
    classes: list[type[CrateError]] = [CrateError, *_all_subclasses(CrateError)]
    for cls in classes:
        if cls.api_code == code:
            return cls(message)
    return CrateError(message)
