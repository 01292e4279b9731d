"""End to end: the remote client (`crate login`, CRATE_SERVER, the offline copy).

A real `crate server` (tests/support/crate_server.py) serves a home of its own
(`server-home`, seeded with secrets and a token); crate runs as a client in
another home (the `crate` fixture's). The read-only tests share one
module-scoped server; those that write, stop the server or need TLS start
their own.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crate_cli.errors import ExitCode
from tests.support.crate_runner import CrateRunner, Result, assert_clean_error
from tests.support.crate_server import CrateServer
from tests.support.keyring_service import SecretService
from tests.support.terminal import Terminal
from tests.support.tls_ca import make_tls

pytestmark = pytest.mark.e2e

ORG = "acme"  # the shared server's org: not the client's default `personal`
SERVER_SECRETS = {"API_KEY": "server-api-key-7f3a9c", "DB_URL": "postgres://server-db-41d2"}
LOCAL_SECRETS = {"LOCAL_ONLY": "local-value-9e8d"}
BAD_TOKEN = "crate_" + "A" * 43  # the shape of a token, unknown to the server
KEYRING = {"CRATE_KEYSTORE": "auto"}


def seeded_server(home: Path, org: str, secrets: dict[str, str], *args: str) -> CrateServer:
    """A server home with `org`, `secrets` in its dev env; not started."""
    server = CrateServer(home, *args)
    # `personal` comes of first use; another org is created and named.
    where = ["--org", org] if org != "personal" else []
    if where:
        server.crate("org", "create", org, check=True)
    if secrets:
        pairs = [f"{k}={v}" for k, v in secrets.items()]
        server.crate("secrets", "set", *where, *pairs, check=True)
    return server


def access_lines(server: CrateServer) -> list[str]:
    return [line for line in list(server.log) if "uvicorn.access" in line]


def retrievals(server: CrateServer) -> int:
    return sum("/secrets/retrieve HTTP/1.1" in line for line in access_lines(server))


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def login(
    crate: CrateRunner,
    server: CrateServer,
    token: str,
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = False,
) -> Result:
    """`crate login --server URL ARGS` with the token on stdin (not a terminal)."""
    return crate("login", "--server", server.url, *args, input=token + "\n", env=env, check=check)


def listed(result: Result) -> dict[str, int]:
    """name -> version from `secrets list --json`."""
    assert result.returncode == 0, result
    return {row["name"]: row["version"] for row in json.loads(result.stdout)}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CrateServer, str]]:
    """A running server on `acme` with SERVER_SECRETS, and an admin token; read-only."""
    home = tmp_path_factory.mktemp("remote") / "server-home"
    server = seeded_server(home, ORG, SERVER_SECRETS)
    token = server.token("ci", "admin", "--org", ORG)
    server.start()
    try:
        yield server, token
    finally:
        server.stop()


# -- login and logout -----------------------------------------------------------


def test_login_from_stdin_then_logout(crate: CrateRunner, shared: tuple[CrateServer, str]) -> None:
    server, token = shared
    crate("secrets", "set", *(f"{k}={v}" for k, v in LOCAL_SECRETS.items()), check=True)
    assert listed(crate("secrets", "list", "--json")) == {"LOCAL_ONLY": 1}

    done = login(crate, server, token)
    assert done.returncode == 0, done
    assert done.stdout == ""
    assert f"logged in to {server.url} as token:ci" in done.stderr
    assert f"admin of '{ORG}'" in done.stderr
    assert "token kept in a 0600 file" in done.stderr
    assert token not in done.stderr

    saved = json.loads((crate.home / "login.json").read_text())
    login_id = saved.pop("id")  # what the login's offline copies are bound to
    assert len(login_id) == 32
    assert saved == {
        "format": 1,
        "server": server.url,
        "org": ORG,  # from GET /whoami: the client never named it
        "ca_file": None,
        "credentials": "file",
    }
    assert mode(crate.home / "login.json") == 0o600
    token_file = crate.home / "credentials" / "api-token"
    assert token_file.read_text().strip() == token
    assert mode(token_file) == 0o600
    assert mode(token_file.parent) == 0o700

    # Logged in: the server's secrets, in the token's org, not the local vault's.
    assert listed(crate("secrets", "list", "--json")) == dict.fromkeys(SERVER_SECRETS, 1)
    got = crate("secrets", "get", "API_KEY", check=True)
    assert got.stdout == SERVER_SECRETS["API_KEY"]
    assert crate("secrets", "get", "LOCAL_ONLY").returncode == ExitCode.NOT_FOUND

    out = crate("logout", check=True)
    assert f"logged out of {server.url}" in out.stderr
    assert not (crate.home / "login.json").exists()
    assert not token_file.exists()
    assert listed(crate("secrets", "list", "--json")) == {"LOCAL_ONLY": 1}
    assert crate("secrets", "get", "LOCAL_ONLY", check=True).stdout == LOCAL_SECRETS["LOCAL_ONLY"]
    again = crate("logout", check=True)
    assert "not logged in" in again.stderr


def test_login_at_a_hidden_prompt(crate: CrateRunner, shared: tuple[CrateServer, str]) -> None:
    server, token = shared
    term = Terminal(crate, "login", "--server", server.url)
    term.answer_hidden("API token: ", token)
    assert term.finish() == 0, term.output
    assert token not in term.output
    assert "logged in to" in term.output
    assert json.loads((crate.home / "login.json").read_text())["org"] == ORG
    assert crate("secrets", "get", "DB_URL", check=True).stdout == SERVER_SECRETS["DB_URL"]


def test_a_token_on_the_command_line_is_refused(
    crate: CrateRunner, shared: tuple[CrateServer, str]
) -> None:
    server, token = shared
    refused = crate("login", "--server", server.url, "--token", token)
    assert_clean_error(refused, ExitCode.USAGE, hidden=(token,))
    assert "--token takes only '-'" in refused.stderr
    assert not (crate.home / "login.json").exists()
    assert not (crate.home / "credentials").exists()


def test_an_unknown_token_is_denied(crate: CrateRunner, shared: tuple[CrateServer, str]) -> None:
    server, _ = shared
    denied = login(crate, server, BAD_TOKEN, "--token", "-")
    assert_clean_error(denied, ExitCode.DENIED, hidden=(BAD_TOKEN,))
    assert not (crate.home / "login.json").exists()
    assert not (crate.home / "credentials" / "api-token").exists()


def test_something_that_is_not_a_token(crate: CrateRunner, shared: tuple[CrateServer, str]) -> None:
    server, _ = shared
    asked = sum("/whoami" in line for line in access_lines(server))
    for text in ("hunter2", "", "crate_short", BAD_TOKEN + "x"):
        bad = login(crate, server, text)
        assert_clean_error(bad, ExitCode.USAGE, hidden=(text,) if text else ())
        assert "not a crate API token" in bad.stderr
    assert not (crate.home / "login.json").exists()
    # Refused before anything is sent.
    assert sum("/whoami" in line for line in access_lines(server)) == asked


# -- the same commands, local and remote ------------------------------------------

COMMANDS: list[tuple[str, ...]] = [
    ("secrets", "set", "A=1", "B=2"),
    ("secrets", "get", "A"),
    ("secrets", "set", "A=one more"),
    ("secrets", "list", "--json"),
    ("secrets", "fetch", "--format", "env"),
    ("secrets", "fetch", "--format", "json"),
    ("secrets", "fetch", "A", "--format", "dotenv"),
    ("secrets", "history", "A", "--json"),
    ("secrets", "delete", "B", "--yes"),
    ("secrets", "list", "--json"),
    ("secrets", "history", "B", "--json"),
    ("secrets", "get", "B"),
    ("secrets", "get", "MISSING"),
    ("secrets", "set", "1-not-a-name=x"),
    ("secrets", "get", "A", "--env", "prod"),
    ("env", "create", "qa"),
    ("env", "list", "--json"),
    ("env", "create", "qa"),
    ("env", "delete", "qa", "--yes"),
    ("env", "list"),
    ("run", "--", "sh", "-c", "exit 7"),
    ("run", "--", "sh", "-c", 'echo "$A"'),
    ("run", "B", "--", "true"),
    ("run", "--", "/nonexistent/command"),
]
VOLATILE = {"actor", "updated_at", "created_at"}


def comparable(args: tuple[str, ...], result: Result) -> tuple[int, object, list[str]]:
    """Exit code, stdout (JSON without actor and times) and the stderr lines that
    are not first-use notices."""
    out: object = result.stdout
    if "--json" in args and result.returncode == 0:
        data = json.loads(result.stdout)
        if isinstance(data, list):
            data = [
                {k: v for k, v in row.items() if k not in VOLATILE}
                if isinstance(row, dict)
                else row
                for row in data
            ]
        out = data
    err = [
        line
        for line in result.stderr.splitlines()
        if not line.startswith(("crate: created ", "crate: selected "))
    ]
    return result.returncode, out, err


def test_same_results_against_the_local_vault_and_a_server(
    crate: CrateRunner, tmp_path: Path
) -> None:
    server = CrateServer(tmp_path / "server-home")
    token = server.token("ci", "admin")  # creates the org `personal`, as local first use
    local = CrateRunner(tmp_path / "local-home")
    with server:
        login(crate, server, token, check=True)
        for args in COMMANDS:
            here = local(*args)
            there = crate(*args)
            assert "Traceback" not in here.stderr + there.stderr
            assert comparable(args, here) == comparable(args, there), (args, here, there)
        # Spot checks that the comparison compared something.
        assert local("secrets", "get", "A", check=True).stdout == "one more"
        assert crate("secrets", "get", "A", check=True).stdout == "one more"
        assert crate("run", "--", "sh", "-c", "exit 7").returncode == 7
        assert crate("secrets", "get", "MISSING").returncode == ExitCode.NOT_FOUND
        assert crate("secrets", "set", "1-not-a-name=x").returncode == ExitCode.USAGE
        assert any("/secrets/retrieve" in line for line in access_lines(server))
    # Nothing of the remote session landed in the client's local vault.
    assert not (crate.home / "keys").exists()


# -- CRATE_SERVER and CRATE_TOKEN -------------------------------------------------------


def test_server_and_token_from_the_environment(
    crate: CrateRunner, shared: tuple[CrateServer, str]
) -> None:
    server, token = shared
    env = {"CRATE_SERVER": server.url, "CRATE_TOKEN": token}
    got = crate("secrets", "get", "API_KEY", env=env, check=True)
    assert got.stdout == SERVER_SECRETS["API_KEY"]
    assert listed(crate("secrets", "list", "--json", env=env)) == dict.fromkeys(SERVER_SECRETS, 1)
    assert not (crate.home / "login.json").exists()
    assert not (crate.home / "credentials" / "api-token").exists()

    child = crate("run", "--", "env", env=env, check=True)
    assert f"API_KEY={SERVER_SECRETS['API_KEY']}\n" in child.stdout
    assert "CRATE_TOKEN" not in child.stdout
    assert token not in child.stdout
    assert "CRATE_SERVER" in child.stdout  # only the credential is withheld

    # CRATE_TOKEN overrides the login's token.
    login(crate, server, token, check=True)
    logged = crate("run", "--", "env", check=True)
    assert token not in logged.stdout
    assert f"DB_URL={SERVER_SECRETS['DB_URL']}\n" in logged.stdout
    overridden = crate("secrets", "get", "API_KEY", env={"CRATE_TOKEN": BAD_TOKEN})
    assert_clean_error(overridden, ExitCode.DENIED, hidden=(BAD_TOKEN, token))


def test_a_token_without_a_server(crate: CrateRunner, shared: tuple[CrateServer, str]) -> None:
    _, token = shared
    for args in (("secrets", "list"), ("run", "--", "true"), ("secrets", "fetch")):
        alone = crate(*args, env={"CRATE_TOKEN": token})
        assert_clean_error(alone, ExitCode.USAGE, hidden=(token,))
        assert "CRATE_TOKEN is set but no server is" in alone.stderr


def test_a_server_without_a_token(crate: CrateRunner, shared: tuple[CrateServer, str]) -> None:
    server, _ = shared
    missing = crate("secrets", "list", env={"CRATE_SERVER": server.url})
    assert_clean_error(missing, ExitCode.USAGE)
    assert f"no API token for {server.url}" in missing.stderr


# -- plain HTTP to another machine ------------------------------------------------------


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.1", 9))  # UDP: no packet is sent
            address = str(probe.getsockname()[0])
    except OSError:
        return None
    return None if ipaddress.ip_address(address).is_loopback else address


def test_plain_http_to_another_host_is_refused_before_connecting(
    crate: CrateRunner, shared: tuple[CrateServer, str]
) -> None:
    _, token = shared
    url = "http://10.255.255.1:1"  # unroutable: a connection attempt would hang
    started = time.monotonic()
    refused = crate("login", "--server", url, input=token)
    assert_clean_error(refused, ExitCode.USAGE, hidden=(token,))
    assert "refusing to send a token over plain HTTP to 10.255.255.1" in refused.stderr
    env = {"CRATE_SERVER": url, "CRATE_TOKEN": token}
    for args in (("secrets", "list"), ("run", "--", "true"), ("secrets", "get", "API_KEY")):
        assert_clean_error(crate(*args, env=env), ExitCode.USAGE, hidden=(token,))
    assert time.monotonic() - started < 5.0
    assert not (crate.home / "login.json").exists()

    # A listener on this machine's own non-loopback address: never connected to.
    address = non_loopback_address()
    if address is None:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((address, 0))
        listener.listen(8)
        near = f"http://{address}:{listener.getsockname()[1]}"
        assert_clean_error(crate("login", "--server", near, input=token), ExitCode.USAGE)
        assert_clean_error(
            crate("secrets", "list", env={"CRATE_SERVER": near, "CRATE_TOKEN": token}),
            ExitCode.USAGE,
        )
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_a_login_file_pointing_at_plain_http_elsewhere(crate: CrateRunner) -> None:
    """A hand-edited login.json gets the same refusal as the command line."""
    creds = crate.home / "credentials"
    crate.home.mkdir(mode=0o700)  # a home others can enter is refused
    creds.mkdir(mode=0o700)
    (creds / "api-token").write_text(BAD_TOKEN)
    (crate.home / "login.json").write_text(
        json.dumps(
            {
                "format": 1,
                "server": "http://10.255.255.1:1",
                "org": "personal",
                "ca_file": None,
                "credentials": "file",
            }
        )
    )
    started = time.monotonic()
    refused = crate("secrets", "list")
    assert_clean_error(refused, ExitCode.USAGE, hidden=(BAD_TOKEN,))
    assert "refusing to send a token over plain HTTP" in refused.stderr
    assert time.monotonic() - started < 5.0


# -- HTTPS with a private CA ---------------------------------------------------------


def test_https_with_a_private_ca(crate: CrateRunner, tmp_path: Path) -> None:
    ca, cert, key = make_tls(tmp_path / "tls")
    server = seeded_server(
        tmp_path / "server-home",
        "personal",
        {"TLS_SECRET": "over-tls-5b1e"},
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    token = server.token("ci", "reader")
    with server:
        assert server.url.startswith("https://127.0.0.1:"), server.url

        untrusted = login(crate, server, token)
        assert_clean_error(untrusted, ExitCode.ERROR, hidden=(token,))
        assert "certificate" in untrusted.stderr
        assert "--ca-file" in untrusted.stderr
        assert not (crate.home / "login.json").exists()

        no_file = login(crate, server, token, "--ca-file", str(tmp_path / "missing.pem"))
        assert_clean_error(no_file, ExitCode.NOT_FOUND, hidden=(token,))

        login(crate, server, token, "--ca-file", str(ca), check=True)
        saved = json.loads((crate.home / "login.json").read_text())
        assert saved["ca_file"] == str(ca.absolute())
        assert saved["server"] == server.url
        assert crate("secrets", "get", "TLS_SECRET", check=True).stdout == "over-tls-5b1e"
        ran = crate("run", "--", "sh", "-c", 'printf %s "$TLS_SECRET"', check=True)
        assert ran.stdout == "over-tls-5b1e"
        crate("logout", check=True)

        # The same from the environment, in a home that never logged in.
        other = CrateRunner(tmp_path / "other-home")
        env = {"CRATE_SERVER": server.url, "CRATE_TOKEN": token}
        assert_clean_error(other("secrets", "list", env=env), ExitCode.ERROR, hidden=(token,))
        env["CRATE_CA_FILE"] = str(ca)
        assert other("secrets", "get", "TLS_SECRET", env=env, check=True).stdout == "over-tls-5b1e"


# -- the offline copy ----------------------------------------------------------------

ALPHA = "alpha-secret-0001-c0ffee"
ALPHA_NEW = "alpha-changed-0003-decade"
BRAVO = "bravo-secret-0002-facade"
PRINT_A = ("--", "sh", "-c", 'printf %s "$A"')


def assert_warned(result: Result, server: CrateServer) -> None:
    assert result.returncode == 0, result
    assert f"crate: warning: cannot reach {server.url}" in result.stderr
    assert "using the offline copy of personal/dev" in result.stderr


def test_offline_copy(crate: CrateRunner, tmp_path: Path) -> None:
    server = seeded_server(tmp_path / "server-home", "personal", {"A": ALPHA, "B": BRAVO})
    token = server.token("ci", "admin")
    server.start()
    try:
        login(crate, server, token, check=True)
        assert crate("run", *PRINT_A, check=True).stdout == ALPHA
        fetched = crate("secrets", "fetch", "--format", "json", check=True)
        assert json.loads(fetched.stdout) == {"A": ALPHA, "B": BRAVO}

        # fallback/<server>/<login and token>/*.copy, under a key derived from
        # the token: no key of their own at rest.
        copies = sorted((crate.home / "fallback").rglob("*.copy"))
        assert copies
        for folder in {copies[0].parent, copies[0].parent.parent, crate.home / "fallback"}:
            assert mode(folder) == 0o700
        assert not list((crate.home / "credentials").glob("fallback-key*"))
        for copy in copies:
            assert mode(copy) == 0o600
            blob = copy.read_bytes()
            for clear in (ALPHA, BRAVO, "alpha-secret", "bravo-secret", token):
                assert clear.encode() not in blob

        # --fallback-only while the server runs: the copy, not the server's new value.
        crate("secrets", "set", f"A={ALPHA_NEW}", check=True)
        seen = len(access_lines(server))
        before = retrievals(server)
        assert crate("run", "--fallback-only", *PRINT_A, check=True).stdout == ALPHA
        only = crate("secrets", "fetch", "--fallback-only", "--format", "json", check=True)
        assert json.loads(only.stdout) == {"A": ALPHA, "B": BRAVO}
        # A normal run then retrieves once: its line shows the log is caught up.
        assert crate("run", *PRINT_A, check=True).stdout == ALPHA_NEW
        saved_at = time.time()
        assert wait_for(lambda: retrievals(server) > before)
        new = access_lines(server)[seen:]
        assert len(new) == 1, new
        assert '"POST /organization/personal/secrets/retrieve HTTP/1.1" 200' in new[0]
    finally:
        assert server.stop() == 0

    # The server is down.
    assert_warned(ran := crate("run", *PRINT_A), server)
    assert ran.stdout == ALPHA_NEW
    assert_warned(env_fmt := crate("secrets", "fetch", "--format", "env"), server)
    assert env_fmt.stdout == f"A={ALPHA_NEW}\nB={BRAVO}\n"
    recent = crate("run", "--fallback-max-age", "24h", *PRINT_A)
    assert_warned(recent, server)
    assert recent.stdout == ALPHA_NEW
    offline = crate("run", "--fallback-only", *PRINT_A, check=True)
    assert offline.stdout == ALPHA_NEW

    forbidden = crate("run", "--no-fallback", *PRINT_A)
    assert_clean_error(forbidden, ExitCode.ERROR, hidden=(ALPHA, ALPHA_NEW))
    assert "cannot reach" in forbidden.stderr
    forbidden = crate("secrets", "fetch", "--no-fallback")
    assert_clean_error(forbidden, ExitCode.ERROR, hidden=(ALPHA, ALPHA_NEW, BRAVO))
    contradictory = crate("run", "--fallback-only", "--no-fallback", *PRINT_A)
    assert_clean_error(contradictory, ExitCode.USAGE)

    got = crate("secrets", "get", "A")  # never from the copy
    assert_clean_error(got, ExitCode.ERROR, hidden=(ALPHA, ALPHA_NEW))
    assert "cannot reach" in got.stderr

    never = crate("run", "--env", "prod", "--", "true")
    assert_clean_error(never, ExitCode.ERROR)
    assert "cannot reach" in never.stderr
    assert "no offline copy of personal/prod" in never.stderr
    other_selection = crate("secrets", "fetch", "B")  # copies are per selection
    assert_clean_error(other_selection, ExitCode.ERROR, hidden=(BRAVO,))
    assert "no offline copy" in other_selection.stderr

    time.sleep(max(0.0, saved_at + 2.0 - time.time()))
    for args in (
        ("run", "--fallback-max-age", "1s", *PRINT_A),
        ("secrets", "fetch", "--fallback-max-age", "1s"),
    ):
        stale = crate(*args)
        assert_clean_error(stale, ExitCode.ERROR, hidden=(ALPHA, ALPHA_NEW, BRAVO))
        assert "older than --fallback-max-age 1s" in stale.stderr
    stale = crate("run", "--fallback-only", "--fallback-max-age", "1s", *PRINT_A)
    assert_clean_error(stale, ExitCode.ERROR, hidden=(ALPHA, ALPHA_NEW))


def test_offline_copy_with_server_and_token_from_the_environment(
    crate: CrateRunner, tmp_path: Path
) -> None:
    server = seeded_server(tmp_path / "server-home", "personal", {"A": ALPHA})
    token = server.token("ci", "reader")
    with server:
        env = {"CRATE_SERVER": server.url, "CRATE_TOKEN": token}
        assert crate("run", *PRINT_A, env=env, check=True).stdout == ALPHA
    offline = crate("run", *PRINT_A, env=env)
    assert_warned(offline, server)
    assert offline.stdout == ALPHA


# -- custody in the OS keyring -------------------------------------------------------


def test_login_keeps_the_token_in_the_keyring(
    crate: CrateRunner, shared: tuple[CrateServer, str], keyring_service: SecretService
) -> None:
    server, token = shared
    env = KEYRING | keyring_service.env()
    done = login(crate, server, token, env=env, check=True)
    assert "token kept in the OS keyring" in done.stderr
    assert json.loads((crate.home / "login.json").read_text())["credentials"] == "keyring"
    assert not (crate.home / "credentials" / "api-token").exists()
    items = keyring_service.crate_items()
    assert [v for k, v in items.items() if k.startswith("api-token:")] == [token]

    assert (
        crate("secrets", "get", "API_KEY", env=env, check=True).stdout
        == (SERVER_SECRETS["API_KEY"])
    )
    ran = crate("run", "--", "sh", "-c", 'printf %s "$DB_URL"', env=env, check=True)
    assert ran.stdout == SERVER_SECRETS["DB_URL"]
    # The offline copy's key comes from the token, in the keyring: nothing on disk.
    assert (crate.home / "fallback").exists()
    assert not any(k.startswith("fallback-key") for k in keyring_service.crate_items())
    assert not (crate.home / "credentials").exists() or not any(
        (crate.home / "credentials").iterdir()
    )

    crate("logout", env=env, check=True)
    assert not (crate.home / "login.json").exists()
    assert not any(k.startswith("api-token:") for k in keyring_service.crate_items())


def test_login_with_keystore_file_ignores_the_keyring(
    crate: CrateRunner, shared: tuple[CrateServer, str], keyring_service: SecretService
) -> None:
    server, token = shared
    done = login(crate, server, token, env=keyring_service.env(), check=True)  # CRATE_KEYSTORE=file
    assert "token kept in a 0600 file" in done.stderr
    assert (crate.home / "credentials" / "api-token").read_text().strip() == token
    assert keyring_service.crate_items() == {}


def test_an_empty_keystore_variable_means_auto_for_the_token_too(
    crate: CrateRunner, shared: tuple[CrateServer, str], keyring_service: SecretService
) -> None:
    server, token = shared
    done = login(crate, server, token, env={"CRATE_KEYSTORE": ""} | keyring_service.env())
    assert done.returncode == 0, done
    assert "token kept in the OS keyring" in done.stderr
