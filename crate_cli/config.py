"""Paths and settings.

`CRATE_HOME` overrides every path (tests always set it). Without it, vaults
and keys live in the platform's user data folder and settings in its config
folder, both from platformdirs (imported only then: it is not free).

Settings are TOML, read with tomllib and written with tomli-w, always
atomically (temporary file in the same folder, fsync, rename).
"""

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crate_cli.errors import CrateError, InvalidInput, NotPrivate
from crate_cli.records import Record

APP_NAME = "crate"
SETTINGS_FILE = "settings.toml"
SETTINGS_CACHE = ".settings.toml.json"

# Settings a user may change, with their defaults and the type they must have.
# A name without a dot is a top-level key of settings.toml.
DEFAULTS: dict[str, Any] = {
    # Where the orgs and the master-key registry are kept: "" (or "sqlite") is
    # the home's SQLite files, a postgresql:// URL a team server's database.
    "store": "",
    "session.org": "",
    "session.env": "dev",
    "secrets.max_value_bytes": 64 * 1024,
    "crypto.ephemeral_rsa_bits": 2048,
    "keys.unlock_order": ["env", "tpm2", "keyring", "pkcs11", "file", "passphrase"],
    "run.mask": False,
    # Rotate an org's data key on the first write after this long ("90d"); "" is never.
    "keys.rotate_org_every": "",
    # PKCS#11 modules a slot record may name (crate adds each one it seals with).
    "keys.pkcs11_modules": [],
}
# Bounds of the numeric settings, inclusive.
RANGES: dict[str, tuple[int, int]] = {
    "secrets.max_value_bytes": (1, 16 * 1024 * 1024),
    "crypto.ephemeral_rsa_bits": (2048, 8192),
}


# crate's own credentials: they never reach what crate starts (`crate run`'s
# command), and the agent and `crate server` drop them once unlocked.
CREDENTIAL_VARIABLES = (
    "CRATE_PASSPHRASE",
    "CRATE_PASSPHRASE_FD",
    "CRATE_MASTER_KEY",
    "CRATE_PKCS11_PIN",
    "CRATE_TPM2_PIN",
    "CRATE_TOKEN",
)
# What crate run's command never inherits: the credentials, and the store's
# address, which usually carries the database password.
NOT_INHERITED = (*CREDENTIAL_VARIABLES, "CRATE_STORE")


class CrateHome(Record):
    """Where crate keeps its files."""

    data_dir: Path
    config_dir: Path

    @property
    def orgs_dir(self) -> Path:
        return self.data_dir / "orgs"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def settings_path(self) -> Path:
        return self.config_dir / SETTINGS_FILE

    def vault_path(self, org: str) -> Path:
        return self.orgs_dir / f"{org}.vault"

    def describe(self) -> str:
        if self.data_dir == self.config_dir:
            return str(self.data_dir)
        return f"{self.data_dir} (settings in {self.config_dir})"


def resolve_home(environ: dict[str, str] | None = None) -> CrateHome:
    env = os.environ if environ is None else environ
    override = env.get("CRATE_HOME")
    if override:
        root = Path(override).expanduser().absolute()
        return CrateHome(data_dir=root, config_dir=root)
    import platformdirs

    return CrateHome(
        data_dir=Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)),
        config_dir=Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)),
    )


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and missing parents) so that only the owner can enter it.

    A folder that already exists must be private already: crate refuses one
    that other users can enter, or that belongs to someone else, and never
    changes its mode (think CRATE_HOME=/tmp)."""
    if not path.parent.exists():
        # mkdir(parents=True) would give new ancestors the umask's mode: a
        # new CRATE_HOME must be 0700 too.
        ensure_private_dir(path.parent)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        check_private_dir(path)
        return
    path.chmod(0o700)  # a folder crate just made, whatever the umask


def check_private_dir(path: Path) -> None:
    """Raise NotPrivate unless `path` is a folder of this user that nobody
    else can enter (a symlink to one is fine, if it is this user's or root's)."""
    import stat

    link = path.lstat()
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (os.getuid(), 0):
        # Whoever owns the link can point it at a folder of theirs at any time.
        raise NotPrivate(
            f"{path} is a symbolic link that belongs to another user (uid {link.st_uid}); "
            "crate keeps keys and vaults there, so it was not used",
            "use a folder of your own, e.g. CRATE_HOME=~/.crate",
        )
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise NotPrivate(f"{path} is not a folder", "point CRATE_HOME at a folder")
    if st.st_uid != os.getuid():
        raise NotPrivate(
            f"{path} belongs to another user (uid {st.st_uid}); crate keeps keys and "
            "vaults there, so it was not used",
            "use a folder of your own, e.g. CRATE_HOME=~/.crate",
        )
    if st.st_mode & 0o077:
        raise NotPrivate(
            f"{path} is open to other users (mode {stat.S_IMODE(st.st_mode):o}); crate "
            "keeps keys and vaults there, so it was not used, nor changed",
            f"use a folder only you can enter, or if it is yours alone: chmod 700 {path}",
        )


def check_home(home: CrateHome) -> None:
    """Refuse a crate home (data or settings folder) that exists and is not private."""
    for folder in dict.fromkeys((home.data_dir, home.config_dir)):
        if folder.exists():
            check_private_dir(folder)


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, readable by the owner only.

    The temporary file is created 0600 in the same folder, so a crash leaves
    either the old file or the new one, and the data is never world-readable.
    """
    import tempfile

    ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held for the block (serialises crate processes)."""
    import fcntl

    ensure_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Settings:
    """The user's settings file: nested TOML tables addressed as `section.key`."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @classmethod
    def load(cls, home: CrateHome) -> "Settings":
        """Read settings.toml.

        Importing tomllib costs about 8 ms, on every `crate run`, so the parsed
        table is kept beside the file as JSON together with the exact text it
        came from; it is used only while the text is unchanged.
        """
        path = home.settings_path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path, {})
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CrateError(f"settings file {path} is not UTF-8 text") from None
        try:
            cached = json.loads(path.with_name(SETTINGS_CACHE).read_bytes())
            if isinstance(cached, dict) and cached.get("source") == text:
                return cls(path, cached["data"])
        except (OSError, ValueError, KeyError):
            pass
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise CrateError(
                f"settings file {path} is not valid TOML: {e}",
                "fix or remove the file; crate recreates it with defaults",
            ) from None
        _write_settings_cache(path, text, data)
        return cls(path, data)

    def get(self, key: str) -> Any:
        section, dot, name = key.partition(".")
        table = self.data.get(section) if dot else self.data
        name = name if dot else key
        if isinstance(table, dict) and name in table:
            value = table[name]
            default = DEFAULTS.get(key)
            # bool is an int to Python, not to a reader of settings.toml.
            if default is not None and (
                not isinstance(value, type(default))
                or isinstance(value, bool) != isinstance(default, bool)
            ):
                raise InvalidInput(
                    f"setting {key} in {self.path} must be a {type(default).__name__}"
                )
            if key in RANGES:
                low, high = RANGES[key]
                if not low <= value <= high:
                    raise InvalidInput(f"setting {key} in {self.path} must be from {low} to {high}")
            return value
        return DEFAULTS.get(key)

    def set(self, key: str, value: Any) -> None:
        section, dot, name = key.partition(".")
        if dot:
            self.data.setdefault(section, {})[name] = value
        else:
            self.data[key] = value

    @classmethod
    def update(cls, home: CrateHome, key: str, value: Any) -> "Settings":
        """Change one setting on disk, keeping changes other processes made
        meanwhile: read, change and write under a lock."""
        with file_lock(home.config_dir / ".settings.lock"):
            settings = cls.load(home)
            settings.set(key, value)
            settings.save()
        return settings

    def save(self) -> None:
        import tomli_w

        text = tomli_w.dumps(self.data)
        write_private_file(self.path, text.encode("utf-8"))
        _write_settings_cache(self.path, text, self.data)


def _write_settings_cache(path: Path, text: str, data: dict[str, Any]) -> None:
    # A TOML date (not JSON) or a read-only folder just means no cache.
    with contextlib.suppress(OSError, TypeError):
        write_private_file(
            path.with_name(SETTINGS_CACHE), json.dumps({"source": text, "data": data}).encode()
        )
