"""The `tpm2` slot: a TPM 2.0 sealed data object holds the master key.

The master key is sealed as the data of a keyed-hash object under an ECC
P-256 storage primary that the TPM re-derives from its owner hierarchy on
every use: nothing is made persistent in the TPM, and only the sealed
object's public and private blobs are stored in the slot record. The private
blob is encrypted and integrity-protected by the primary, which exists only
in this TPM, so the blobs are useless anywhere else (and after the TPM is
cleared, which is why a recovery slot matters).

Every command that carries the key (create, unseal) runs in a session salted
to the primary and with AES-CFB parameter encryption, so the master key and
a PIN never cross the bus in clear. Options: a PIN (`--pin`, the object's
auth value; wrong guesses count toward the TPM's dictionary-attack lockout)
and a PCR policy (`--pcrs 7`: unseal only while those sha256 PCRs hold the
values they had when the slot was made). Every handle is flushed in
`finally`: swtpm and a TPM reached without a resource manager have only
three transient slots.

The TPM is reached through a TCTI: `--tcti`, else CRATE_TPM2_TCTI, else
TPM2TOOLS_TCTI, else the TCTI the slot was made with, else the kernel's
resource manager `device:/dev/tpmrm0`. tpm2-pytss (ESAPI) is imported only
here: it costs about 0.1 s to import and needs libtss2.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from crate_cli.errors import InvalidInput, KeystoreError
from crate_cli.vault.slots.base import OTHER_SLOT, SlotContext, SlotProvider, b64, unb64

T = TypeVar("T")
PIN_ENV = "CRATE_TPM2_PIN"
TCTI_VARIABLES = ("CRATE_TPM2_TCTI", "TPM2TOOLS_TCTI")
DEFAULT_TCTI = "device:/dev/tpmrm0"
# The TPM keeps an auth value of at most its name algorithm's digest size.
PIN_BYTES = (4, 32)
MAX_PCR = 23
PRIMARY = "ecc256:aes128cfb"

# TPM response codes (TPM 2.0 Part 2, table 16), compared with the code that
# tpm2-pytss reports once the handle, parameter or session number is removed.
RC_AUTH_FAIL = 0x08E
RC_BAD_AUTH = 0x0A2
RC_INTEGRITY = 0x09F
RC_POLICY_FAIL = 0x09D
RC_PCR_CHANGED = 0x128
RC_LOCKOUT = 0x921
RC_RETRY = 0x922
RC_OBJECT_MEMORY = 0x902
RC_SESSION_MEMORY = 0x903
# Waits between tries when the TPM is out of slots or busy (another program
# holds them for a moment): about 3 s in all, each stretched by a random
# half so that processes that met at the TPM do not meet again at each try.
BUSY_WAITS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


class _TpmBusy(KeystoreError):
    """The TPM has no free object or session slot, or asks to retry."""


def _retrying(attempt: Callable[[], T]) -> T:
    import random
    import time

    for wait in BUSY_WAITS:
        try:
            return attempt()
        except _TpmBusy:
            time.sleep(wait * (1 + random.random() / 2))  # noqa: S311 - jitter, not a secret
    try:
        return attempt()
    except _TpmBusy:
        raise KeystoreError(
            "the TPM has no free slot for crate's objects: other programs hold them (on a TPM "
            "reached without a resource manager, a crashed program's objects stay loaded)",
            f"try again, or free them with: tpm2_flushcontext -t; or {OTHER_SLOT}",
        ) from None


# The TCTI kinds a slot record may name. The TSS loads a TCTI by name, and
# `cmd:` runs a shell command, so a planted or swapped key registry must not
# choose one; the user's own --tcti and variables may name any.
RECORDED_TCTI_KINDS = ("device", "swtpm", "mssim", "tabrmd", "libtpms")


def resolve_tcti(ctx: SlotContext, recorded: str | None = None) -> str:
    """How to reach the TPM; the module docstring gives the order."""
    explicit = ctx.options.get("tpm2_tcti")
    if explicit:
        return str(explicit)
    for variable in TCTI_VARIABLES:
        if ctx.environ.get(variable):
            return ctx.environ[variable]
    if recorded:
        inner = recorded.removeprefix("pcap:")
        if inner.partition(":")[0] not in RECORDED_TCTI_KINDS:
            raise KeystoreError(
                f"tpm2 slot record is damaged (it names the TCTI {recorded!r}, which crate "
                f"only uses when given by --tcti or {TCTI_VARIABLES[0]})",
                f"set {TCTI_VARIABLES[0]} to reach the TPM, or unlock with another slot",
            )
        return recorded
    return DEFAULT_TCTI


def parse_pcrs(text: object) -> list[int]:
    """`--pcrs 0,7` (sha256 bank) as a sorted list; empty for no PCR policy."""
    if text is None:
        return []
    pcrs: set[int] = set()
    for raw in str(text).removeprefix("sha256:").split(","):
        part = raw.strip()
        if not (part.isascii() and part.isdigit()) or not 0 <= int(part) <= MAX_PCR:
            raise InvalidInput(
                f"--pcrs takes PCR numbers from 0 to {MAX_PCR} separated by commas, not {text!r}",
                "for example: --pcrs 7",
            )
        pcrs.add(int(part))
    return sorted(pcrs)


def _missing_device(tcti: str) -> str | None:
    """For a `device:` TCTI, why the device cannot be used (checked before any import)."""
    kind, _, conf = tcti.partition(":")
    if kind != "device":
        return None
    path = conf or DEFAULT_TCTI.partition(":")[2]
    if not os.path.exists(path):
        return f"there is no TPM device {path}"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"the TPM device {path} is not readable and writable by this user"
    return None


def _tss() -> Any:
    try:
        import tpm2_pytss
    except ImportError:
        raise KeystoreError(
            "the tpm2 slot needs tpm2-pytss, which is not installed",
            "install it with: pip install 'crate-cli[tpm2]' (it builds against libtss2-dev)",
        ) from None
    return tpm2_pytss


@contextlib.contextmanager
def _quiet_tss() -> Iterator[None]:
    """libtss2 logs every TPM error to stderr; crate reports them itself.

    TSS2_LOG is read by the library when it first logs, so it is set for the
    time of the TPM calls only and never reaches a child process.
    """
    set_here = "TSS2_LOG" not in os.environ
    if set_here:
        os.environ["TSS2_LOG"] = "all+NONE"
    try:
        yield
    finally:
        if set_here:
            os.environ.pop("TSS2_LOG", None)


class _Tpm:
    """One ESAPI connection; flushes every handle it made when it closes."""

    def __init__(self, tcti: str) -> None:
        self.tcti = tcti
        problem = _missing_device(tcti)
        if problem:
            raise KeystoreError(f"no TPM is reachable: {problem}", OTHER_SLOT)
        self.t = _tss()
        self._handles: list[Any] = []
        try:
            self.esapi = self.t.ESAPI(tcti)
        except Exception:  # a TCTI that cannot load or connect
            raise KeystoreError(
                f"no TPM answers at {tcti}",
                f"start it or set --tcti / CRATE_TPM2_TCTI; or {OTHER_SLOT}",
            ) from None

    def close(self) -> None:
        for handle in reversed(self._handles):
            with contextlib.suppress(Exception):
                self.esapi.flush_context(handle)
        self._handles.clear()
        with contextlib.suppress(Exception):
            self.esapi.close()

    def _track(self, handle: Any) -> Any:
        self._handles.append(handle)
        return handle

    def primary(self) -> Any:
        t = self.t
        template = t.TPM2B_PUBLIC.parse(
            PRIMARY,
            # NODA: the primary has no auth value to guess, so the TPM's
            # dictionary-attack lockout (after wrong PINs) must not block it.
            objectAttributes=t.TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS
            | t.TPMA_OBJECT.NODA,
            nameAlg="sha256",
        )
        try:
            handle = self.esapi.create_primary(
                t.TPM2B_SENSITIVE_CREATE(), template, t.ESYS_TR.OWNER
            )[0]
        except t.TSS2_Exception as e:
            if e.error in (RC_AUTH_FAIL, RC_BAD_AUTH):
                raise KeystoreError(
                    "the TPM's owner hierarchy has a password, and crate needs it empty "
                    "to derive its storage key",
                    OTHER_SLOT,
                ) from None
            raise self.failure("could not derive its storage key", e) from None
        return self._track(handle)

    def session(self, primary: Any, policy: bool, attributes: int) -> Any:
        """A session salted to `primary`, with AES-128-CFB parameter encryption."""
        t = self.t
        symmetric = t.TPMT_SYM_DEF(
            algorithm=t.TPM2_ALG.AES,
            keyBits=t.TPMU_SYM_KEY_BITS(aes=128),
            mode=t.TPMU_SYM_MODE(aes=t.TPM2_ALG.CFB),
        )
        kind = t.TPM2_SE.POLICY if policy else t.TPM2_SE.HMAC
        try:
            handle = self._track(
                self.esapi.start_auth_session(
                    primary, t.ESYS_TR.NONE, kind, symmetric, t.TPM2_ALG.SHA256
                )
            )
        except t.TSS2_Exception as e:
            raise self.failure("could not start a session", e) from None
        self.esapi.trsess_set_attributes(handle, attributes | t.TPMA_SESSION.CONTINUESESSION)
        return handle

    def flush(self, handle: Any) -> None:
        """Flush `handle` now rather than at close (it frees a TPM slot)."""
        self._handles.remove(handle)
        with contextlib.suppress(Exception):
            self.esapi.flush_context(handle)

    def apply_policy(self, session: Any, pcrs: list[int], pin: bool) -> None:
        t = self.t
        selection = t.TPML_PCR_SELECTION.parse("sha256:" + ",".join(map(str, pcrs)))
        self.esapi.policy_pcr(session, t.TPM2B_DIGEST(), selection)
        if pin:
            self.esapi.policy_auth_value(session)

    def policy_digest(self, pcrs: list[int], pin: bool) -> Any:
        """The policy of the PCRs' current values (and the PIN), from a trial session."""
        t = self.t
        trial = self._track(
            self.esapi.start_auth_session(
                t.ESYS_TR.NONE, t.ESYS_TR.NONE, t.TPM2_SE.TRIAL, None, t.TPM2_ALG.SHA256
            )
        )
        self.apply_policy(trial, pcrs, pin)
        return self.esapi.policy_get_digest(trial)

    def failure(self, doing: str, e: Any) -> KeystoreError:
        """A TPM error other than the ones each caller names itself."""
        if e.error == RC_LOCKOUT:
            return KeystoreError(
                "the TPM is in dictionary-attack lockout after too many wrong PINs "
                "(or unclean TPM shutdowns)",
                f"wait for the lockout to end; or {OTHER_SLOT}",
            )
        if e.error in (RC_RETRY, RC_OBJECT_MEMORY, RC_SESSION_MEMORY):
            return _TpmBusy(f"the TPM is busy ({e.rc:#x})")
        return KeystoreError(f"the TPM at {self.tcti} {doing} (TPM code {e.rc:#x})", OTHER_SLOT)


@contextlib.contextmanager
def _connected(tcti: str) -> Iterator[_Tpm]:
    with _quiet_tss():
        tpm = _Tpm(tcti)
        try:
            yield tpm
        finally:
            tpm.close()


class Tpm2Slot(SlotProvider):
    type_name = "tpm2"

    def _pin(self, ctx: SlotContext, confirm: bool) -> bytes:
        value = ctx.environ.get(PIN_ENV)
        if not value:
            if ctx.prompt is None:
                raise KeystoreError(
                    "the TPM PIN is needed and there is no terminal to ask for it",
                    f"set {PIN_ENV} or run the command in a terminal",
                )
            value = ctx.prompt("TPM PIN for the crate master key: ")
            if confirm and ctx.prompt("Repeat the PIN: ") != value:
                raise KeystoreError("the two PINs differ; nothing was changed")
        pin = value.encode("utf-8")
        low, high = PIN_BYTES
        if confirm and not low <= len(pin) <= high:
            raise InvalidInput(
                f"a TPM PIN must have from {low} to {high} bytes; nothing was created"
            )
        return pin

    def seal(
        self, ctx: SlotContext, master_key: bytes, version: int, slot_id: str
    ) -> dict[str, Any]:
        pcrs = parse_pcrs(ctx.options.get("tpm2_pcrs"))
        pin = self._pin(ctx, confirm=True) if ctx.options.get("tpm2_pin") else b""
        # Sealing like an old slot (a master rotation): its TCTI is a record's.
        tcti = resolve_tcti(ctx, ctx.options.get("tpm2_tcti_recorded"))
        return _retrying(lambda: self._seal_once(tcti, master_key, pcrs, pin))

    def _seal_once(
        self, tcti: str, master_key: bytes, pcrs: list[int], pin: bytes
    ) -> dict[str, Any]:
        with _connected(tcti) as tpm:
            t = tpm.t
            primary = tpm.primary()
            attributes = t.TPMA_OBJECT.FIXEDTPM | t.TPMA_OBJECT.FIXEDPARENT
            if not pin:
                # Nothing to guess: a lockout caused by wrong PINs elsewhere
                # must not lock this slot out too. A PIN stays DA-protected.
                attributes |= t.TPMA_OBJECT.NODA
            policy = t.TPM2B_DIGEST()
            if pcrs:
                policy = tpm.policy_digest(pcrs, bool(pin))
            else:
                attributes |= t.TPMA_OBJECT.USERWITHAUTH
            template = t.TPM2B_PUBLIC(
                t.TPMT_PUBLIC(
                    type=t.TPM2_ALG.KEYEDHASH,
                    nameAlg=t.TPM2_ALG.SHA256,
                    objectAttributes=attributes,
                    authPolicy=policy,
                    parameters=t.TPMU_PUBLIC_PARMS(
                        keyedHashDetail=t.TPMS_KEYEDHASH_PARMS(
                            scheme=t.TPMT_KEYEDHASH_SCHEME(scheme=t.TPM2_ALG.NULL)
                        )
                    ),
                )
            )
            sensitive = t.TPM2B_SENSITIVE_CREATE(
                t.TPMS_SENSITIVE_CREATE(
                    userAuth=t.TPM2B_AUTH(pin), data=t.TPM2B_SENSITIVE_DATA(master_key)
                )
            )
            session = tpm.session(primary, policy=False, attributes=t.TPMA_SESSION.DECRYPT)
            try:
                private, public = tpm.esapi.create(primary, sensitive, template, session1=session)[
                    :2
                ]
            except t.TSS2_Exception as e:
                raise tpm.failure("refused to seal the key", e) from None
            return {
                "tcti": tcti,
                "primary": PRIMARY,
                "public": b64(public.marshal()),
                "private": b64(private.marshal()),
                "pin": bool(pin),
                "pcrs": pcrs,
            }

    def unseal(self, ctx: SlotContext, params: dict[str, Any], version: int, slot_id: str) -> bytes:
        public_blob = unb64(params.get("public"), "public")
        private_blob = unb64(params.get("private"), "private")
        pcrs = params.get("pcrs", [])
        recorded = params.get("tcti")
        if (
            params.get("primary") != PRIMARY
            or not isinstance(params.get("pin"), bool)
            or not isinstance(pcrs, list)
            or not all(
                isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= MAX_PCR for p in pcrs
            )
            or not (recorded is None or isinstance(recorded, str))
        ):
            raise KeystoreError("tpm2 slot record is damaged")
        tcti = resolve_tcti(ctx, recorded)
        # Asked before the TPM is opened: a TPM without a resource manager
        # should not be held while someone types.
        pin = self._pin(ctx, confirm=False) if params["pin"] else b""
        master = _retrying(lambda: self._unseal_once(tcti, public_blob, private_blob, pcrs, pin))
        if len(master) != 32:
            raise KeystoreError(f"the tpm2 slot {slot_id} does not hold master key v{version}")
        return master

    def _unseal_once(
        self, tcti: str, public_blob: bytes, private_blob: bytes, pcrs: list[int], pin: bytes
    ) -> bytes:
        with _connected(tcti) as tpm:
            t = tpm.t
            try:
                public = t.TPM2B_PUBLIC.unmarshal(public_blob)[0]
                private = t.TPM2B_PRIVATE.unmarshal(private_blob)[0]
            except Exception:
                raise KeystoreError("tpm2 slot record is damaged (blobs)") from None
            primary = tpm.primary()
            try:
                sealed = tpm._track(tpm.esapi.load(primary, private, public))
            except t.TSS2_Exception as e:
                if e.error == RC_INTEGRITY:
                    raise KeystoreError(
                        "this TPM can no longer unseal the master key (it was cleared or "
                        "replaced); unlock with a recovery slot (crate keys slots list)"
                    ) from None
                raise tpm.failure("could not load the sealed key", e) from None
            session = tpm.session(primary, policy=bool(pcrs), attributes=t.TPMA_SESSION.ENCRYPT)
            # The primary only salted the session: free its slot before the unseal.
            tpm.flush(primary)
            try:
                if pcrs:
                    tpm.apply_policy(session, pcrs, bool(pin))
                if pin:
                    tpm.esapi.tr_set_auth(sealed, pin)
                master = bytes(tpm.esapi.unseal(sealed, session1=session))
            except t.TSS2_Exception as e:
                if e.error in (RC_AUTH_FAIL, RC_BAD_AUTH):
                    raise KeystoreError(
                        "wrong TPM PIN for the crate master key; nothing was changed",
                        f"check {PIN_ENV} or type it again (repeated failures lock the TPM)",
                    ) from None
                if e.error in (RC_POLICY_FAIL, RC_PCR_CHANGED):
                    raise KeystoreError(
                        f"the TPM's PCR {','.join(map(str, pcrs))} changed since this slot "
                        "was made (firmware, boot or Secure Boot settings), so it will not "
                        "unseal the master key",
                        OTHER_SLOT,
                    ) from None
                raise tpm.failure("refused to unseal the key", e) from None
        return master

    def probe(self, ctx: SlotContext) -> str | None:
        tcti = resolve_tcti(ctx)
        problem = _missing_device(tcti)
        if problem:
            return problem
        try:
            with _connected(tcti) as tpm:
                tpm.esapi.get_random(8)
        except KeystoreError as e:
            return e.message
        except Exception as e:
            return f"the TPM at {tcti} failed ({type(e).__name__})"
        return None

    def describe(self) -> str:
        return "tpm2 (sealed by a TPM 2.0)"

    def reseal_options(self, params: dict[str, Any]) -> dict[str, Any]:
        pcrs = params.get("pcrs") or []
        return {
            "tpm2_tcti_recorded": params.get("tcti"),
            "tpm2_pin": bool(params.get("pin")),
            "tpm2_pcrs": ",".join(map(str, pcrs)) if pcrs else None,
        }

    def details(self, ctx: SlotContext, params: dict[str, Any]) -> str:
        try:
            parts = [f"TPM at {resolve_tcti(ctx, params.get('tcti'))}"]
        except KeystoreError:
            parts = [f"an untrusted TCTI {params.get('tcti')!r} in its record"]
        if params.get("pin"):
            parts.append("PIN")
        if params.get("pcrs"):
            parts.append("PCR policy sha256:" + ",".join(map(str, params["pcrs"])))
        return ", ".join(parts)
