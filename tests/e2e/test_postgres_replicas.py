"""A team server on PostgreSQL: several real `crate server` replicas on one
real PostgreSQL, real HTTP clients storing and retrieving through all of
them at once (issue 19).

What must hold whatever happens (a replica SIGKILLed mid-write, PostgreSQL
stopped with `-m immediate` and started again): every acknowledged write is
there with its value, no version number was given to two writes, and every
org's audit chain verifies. Requests in flight when something dies may fail;
afterwards service resumes within a few seconds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crate_cli.client.secrets import SecretsClient
from crate_cli.client.transport.http import HttpTransport
from crate_cli.errors import CrateError
from tests.support.crate_runner import CrateRunner
from tests.support.crate_server import CrateServer

pytestmark = pytest.mark.e2e

PASSPHRASE = "replicas share this passphrase slot"
CLIENTS = 8
SPREAD_ORGS = ("team1", "team2", "team3", "team4")


@dataclass
class Ack:
    org: str
    name: str
    version: int
    value: str
    via: str  # the replica that acknowledged it


@dataclass
class Load:
    """What the clients did: every acknowledged write, every failure."""

    acks: list[Ack] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Team:
    """One PostgreSQL store, an admin's home, and replicas started on demand."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self.env = {
            "CRATE_STORE": url,
            "CRATE_KEYSTORE": "passphrase",
            "CRATE_PASSPHRASE": PASSPHRASE,
        }
        self.admin = CrateRunner(self.home("admin"))
        self.replicas: list[CrateServer] = []
        self.tokens: dict[str, str] = {}

    def home(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def crate(self, *args: str) -> str:
        result = self.admin(*args, env=self.env, check=True)
        return str(result.stdout)

    def create_orgs(self, orgs: tuple[str, ...]) -> None:
        for org in orgs:
            self.crate("org", "create", org)
            self.tokens[org] = self.crate(
                "token", "create", "load", "--role", "admin", "--org", org
            ).strip()

    def start_replica(self) -> CrateServer:
        n = len(self.replicas)
        server = CrateServer(self.home(f"replica{n}"), "--workers", "4", env=self.env)
        server.start()
        self.replicas.append(server)
        return server

    def client(self, org: str, url: str) -> SecretsClient:
        return SecretsClient(HttpTransport(url, self.tokens[org], timeout=30), org)

    def stop(self) -> None:
        for server in self.replicas:
            server.stop()


@pytest.fixture
def team(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Team]:
    url = request.getfixturevalue("pg_url")
    team = Team(tmp_path, url)
    try:
        yield team
    finally:
        team.stop()
        from crate_cli.vault.storage.postgres import close_pools

        close_pools()


def run_clients(
    team: Team,
    orgs: list[str],
    names: list[str],
    targets: Callable[[int], str],
    seconds: float,
) -> Load:
    """CLIENTS threads, client i writing names[i] of orgs[i] through the
    replica `targets(i)` names at each request, and reading its own name back."""
    load = Load()
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        org, name = orgs[i], names[i]
        n = 0
        mine: str | None = None
        while time.monotonic() < stop_at:
            n += 1
            value = f"{org}-{name}-{i}-{n}-{os.urandom(4).hex()}"
            try:
                via = targets(i)
                secrets = team.client(org, via)
                (result,) = secrets.store("dev", [(name, value)])
                with load.lock:
                    load.acks.append(Ack(org, name, int(result["version"]), value, via))
                    load.successes.append(time.monotonic())
                mine = value
                if n % 4 == 0 and name != "HOT":
                    (got,) = secrets.retrieve("dev", [name])
                    assert got.value == mine, "a read missed this client's acknowledged write"
            except (CrateError, OSError) as e:
                with load.lock:
                    load.failures.append((time.monotonic(), f"{type(e).__name__}: {e}"))
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return load


def check_invariants(team: Team, load: Load) -> None:
    """No acknowledged write lost, no version given twice, every chain verifies."""
    by_secret: dict[tuple[str, str], dict[int, str]] = {}
    for ack in load.acks:
        versions = by_secret.setdefault((ack.org, ack.name), {})
        assert ack.version not in versions, f"version {ack.version} of {ack.name} given twice"
        versions[ack.version] = ack.value
    url = team.replicas[-1].url
    for (org, name), acked in by_secret.items():
        client = team.client(org, url)
        stored = {int(v["version"]) for v in client.history("dev", name)}
        assert set(acked) <= stored, f"{org}/{name} lost {sorted(set(acked) - stored)}"
        sample = random.sample(sorted(acked), min(5, len(acked)))
        for version in sample:
            (got,) = client.retrieve("dev", [name], versions={name: version})
            assert got.value == acked[version]
    for org in {ack.org for ack in load.acks}:
        verified = json.loads(team.crate("audit", "verify", "--org", org, "--json"))
        assert verified["entries"] >= sum(1 for a in load.acks if a.org == org)


def round_robin(team: Team) -> Callable[[int], str]:
    return lambda i: team.replicas[i % len(team.replicas)].url


def test_two_replicas_serve_a_hot_org_and_spread_orgs_without_losing_a_write(
    team: Team,
) -> None:
    team.create_orgs(("hot", *SPREAD_ORGS))
    team.start_replica()
    team.start_replica()

    hot = run_clients(team, ["hot"] * CLIENTS, ["HOT"] * CLIENTS, round_robin(team), 3.0)
    assert hot.failures == []
    assert len(hot.acks) >= CLIENTS  # every client got writes through
    check_invariants(team, hot)
    versions = sorted(a.version for a in hot.acks)
    assert versions == list(range(1, len(versions) + 1))  # one chain of versions, no gap

    orgs = [SPREAD_ORGS[i % len(SPREAD_ORGS)] for i in range(CLIENTS)]
    spread = run_clients(team, orgs, [f"K{i}" for i in range(CLIENTS)], round_robin(team), 3.0)
    assert spread.failures == []
    check_invariants(team, spread)


def test_a_killed_replica_and_a_restarted_postgresql_lose_no_acknowledged_write(
    tmp_path: Path, make_postgres: Callable[..., object]
) -> None:
    from tests.support.postgres import DURABLE

    cluster = make_postgres(DURABLE)
    cluster.create_database("team")  # type: ignore[attr-defined]
    team = Team(tmp_path, cluster.dsn("team"))  # type: ignore[attr-defined]
    try:
        team.create_orgs(("hot", "team1"))
        doomed, survivor = team.start_replica(), team.start_replica()
        events: dict[str, float] = {}

        def targets(i: int) -> str:
            # A load balancer's view: the killed replica's clients move over.
            if i % 2 == 0 and "killed" not in events:
                return doomed.url
            return survivor.url

        def chaos() -> None:
            time.sleep(1.5)
            os.kill(doomed.pid, signal.SIGKILL)
            events["killed"] = time.monotonic()
            time.sleep(1.5)
            cluster.stop("immediate")  # type: ignore[attr-defined]
            events["db down"] = time.monotonic()
            time.sleep(1.0)
            cluster.start()  # type: ignore[attr-defined]
            events["db up"] = time.monotonic()

        chaos_thread = threading.Thread(target=chaos)
        chaos_thread.start()
        orgs = ["hot" if i < 4 else "team1" for i in range(CLIENTS)]
        names = ["HOT" if i < 4 else f"K{i}" for i in range(CLIENTS)]
        load = run_clients(team, orgs, names, targets, 9.0)
        chaos_thread.join()

        assert any(a.via == doomed.url for a in load.acks)  # it took writes before it died
        assert any(a.via == survivor.url and a.org == "hot" for a in load.acks)
        # Failures only around the two faults, none once the store is back for a few seconds.
        late = [f for f in load.failures if f[0] > events["db up"] + 5.0]
        assert late == [], late[:3]
        resumed = [t for t in load.successes if t > events["db up"]]
        assert resumed, "no write succeeded after PostgreSQL came back"
        assert resumed[0] - events["db up"] < 5.0
        check_invariants(team, load)
    finally:
        team.stop()
        from crate_cli.vault.storage.postgres import close_pools

        close_pools()


def test_a_master_key_rotation_reaches_every_replica(team: Team) -> None:
    """The registry is in the store: after `crate keys rotate master` on the
    store, running replicas unlock the new version themselves (the same
    passphrase slot) and keep serving; pruning the old one breaks nothing."""
    team.create_orgs(("hot",))
    replicas = [team.start_replica(), team.start_replica()]
    for n, replica in enumerate(replicas):
        team.client("hot", replica.url).store("dev", [("BEFORE", f"v{n}")])
    team.crate("keys", "rotate", "master")
    team.crate("keys", "prune")
    for n, replica in enumerate(replicas):
        client = team.client("hot", replica.url)
        client.store("dev", [("AFTER", f"w{n}")])
        (got,) = client.retrieve("dev", ["BEFORE"])
        assert got.value == "v1"
    status = team.crate("keys", "status")
    assert "master key v2" in status and "master key v1" not in status
    assert "crate store postgresql://" in status and team.url.split("@")[0] not in status
    verified = json.loads(team.crate("audit", "verify", "--org", "hot", "--json"))
    assert verified["entries"] >= 5


@pytest.mark.slow
def test_a_promoted_synchronous_standby_has_every_acknowledged_write(
    tmp_path: Path, make_postgres: Callable[..., object]
) -> None:
    """Failover as PostgreSQL's tooling does it: the primary dies under load,
    its synchronous standby is promoted, and the replicas, given both hosts
    with target_session_attrs=read-write, carry on against it."""
    from tests.support.postgres import DURABLE

    primary = make_postgres(DURABLE)
    primary.create_database("team")  # type: ignore[attr-defined]
    standby = primary.standby()  # type: ignore[attr-defined]
    try:
        one, two = primary.dsn("team"), standby.dsn("team")  # type: ignore[attr-defined]
        hosts = f"{one.rsplit('@', 1)[1].split('/')[0]},{two.rsplit('@', 1)[1].split('/')[0]}"
        url = f"{one.rsplit('@', 1)[0]}@{hosts}/team?target_session_attrs=read-write"
        team = Team(tmp_path, url)
        team.create_orgs(("hot", "team1"))
        team.start_replica()
        team.start_replica()
        events: dict[str, float] = {}

        def failover() -> None:
            time.sleep(2.0)
            primary.kill()  # type: ignore[attr-defined]
            events["primary killed"] = time.monotonic()
            standby.promote()
            events["promoted"] = time.monotonic()

        thread = threading.Thread(target=failover)
        thread.start()
        orgs = ["hot" if i < 4 else "team1" for i in range(CLIENTS)]
        names = ["HOT" if i < 4 else f"K{i}" for i in range(CLIENTS)]
        load = run_clients(team, orgs, names, round_robin(team), 8.0)
        thread.join()
        before = [a for a in load.successes if a < events["primary killed"]]
        assert before, "no write was acknowledged before the failover"
        after = [t for t in load.successes if t > events["promoted"]]
        assert after and after[0] - events["promoted"] < 5.0
        check_invariants(team, load)  # read back from the promoted standby
    finally:
        team.stop()
        standby.close()
        from crate_cli.vault.storage.postgres import close_pools

        close_pools()


def test_a_revoked_token_is_refused_by_every_replica_at_once(team: Team) -> None:
    from crate_cli.errors import Unauthorized

    team.create_orgs(("hot",))
    replicas = [team.start_replica(), team.start_replica()]
    victim = team.crate("token", "create", "victim", "--role", "reader", "--org", "hot").strip()
    team.client("hot", replicas[0].url).store("dev", [("K", "v")])
    for replica in replicas:
        reader = SecretsClient(HttpTransport(replica.url, victim), "hot")
        assert [s.value for s in reader.retrieve("dev", ["K"])] == ["v"]
    team.crate("token", "revoke", "victim", "--org", "hot")
    for replica in replicas:  # no cache anywhere: the next request is refused
        reader = SecretsClient(HttpTransport(replica.url, victim), "hot")
        with pytest.raises(Unauthorized):
            reader.retrieve("dev", ["K"])
