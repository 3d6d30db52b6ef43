# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The fleet simulator (tests/bench/fleet.py): its pure parts (the line through the measurements, the table, the
phases, the late-step accounting), the nodes' certificates, and short real runs of the guard's own probing code and
of the anchors against the HTTPS stand-in apiservers of tests/unit/tls_rig.py on 127.0.0.1 and 127.0.0.2.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import time
from pathlib import Path

import fleet
import pytest
import tls_rig
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import DiscoveryConfig, GuardConfig
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

NODES = 5


# ---- pure parts -----------------------------------------------------------------------------------


def test_extrapolate_on_an_exact_line() -> None:
    points = [(10, 0.07), (50, 0.15), (100, 0.25)]  # 0.05 + 0.002 * nodes
    assert fleet.extrapolate(points, 5000) == pytest.approx(10.05)
    assert fleet.extrapolate(points, 0) == pytest.approx(0.05)
    assert fleet.extrapolate(list(reversed(points)), 1000) == pytest.approx(2.05)


def test_extrapolate_through_noisy_points_is_the_least_squares_line() -> None:
    rng = random.Random(3)
    points = [(n, 0.1 + 0.003 * n + rng.uniform(-0.02, 0.02)) for n in (10, 20, 50, 100, 150, 200) for _i in range(3)]
    xs = [x for x, _y in points]
    ys = [y for _x, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    assert fleet.extrapolate(points, 5000) == pytest.approx(my + slope * (5000 - mx))
    assert fleet.extrapolate(points, 5000) == pytest.approx(15.1, rel=0.03)  # the true line, within the noise
    # Not the line through the first and the last point only.
    (x0, y0), (x1, y1) = points[0], points[-1]
    assert fleet.extrapolate(points, 5000) != pytest.approx(y0 + (y1 - y0) / (x1 - x0) * (5000 - x0), rel=1e-4)


def test_extrapolate_edges() -> None:
    assert fleet.extrapolate([(100, 0.5)], 5000) == pytest.approx(25.0)  # one node count: proportional
    assert fleet.extrapolate([(100, 0.4), (100, 0.6)], 1000) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        fleet.extrapolate([], 10)
    with pytest.raises(ValueError):
        fleet.extrapolate([(0, 1.0)], 10)


def test_per_node() -> None:
    assert fleet.per_node(2.0, 100) == pytest.approx(0.02)
    assert fleet.per_node(None, 100) is None
    with pytest.raises(ValueError):
        fleet.per_node(1.0, 0)


def test_table_prints_every_column_and_none_as_a_dash() -> None:
    rows = [
        {
            "pattern": "guard",
            "nodes": 100,
            "cpu_cores_per_apiserver": 0.0123,
            "requests_per_s": 100.4,
            "new_connections_per_s": 400.0,
            "established": 100,
            "rss_mb": 512.25,
            "log_lines_per_min": None,
        },
        {"pattern": "kubeprism", "nodes": 5000, "requests_per_s": 0.0},
    ]
    out = io.StringIO()
    text = fleet.table(rows, file=out)
    assert out.getvalue() == text
    lines = text.splitlines()
    assert lines[0].split() == ["pattern", "nodes", "cpu", "cores/apiserver", "requests/s", "new", "conns/s",
                                "accepted/s", "established", "RSS", "MB", "log", "lines/min", "kept", "up"]  # fmt: skip
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["guard", "100", "0.0123", "100", "400", "-", "100", "512", "-", "-"]
    assert lines[3].split() == ["kubeprism", "5000", "-", "0", "-", "-", "-", "-", "-", "-"]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule aligned


def test_phases_cover_the_interval_uniformly_and_follow_the_seed() -> None:
    first = fleet.phases(1000, 1.0, random.Random(7))
    assert all(0.0 <= p < 1.0 for p in first)
    assert sorted(int(p * 1000) for p in first) == list(range(1000))  # one in each of the 1000 slots
    assert [sum(1 for p in first if k / 10 <= p < (k + 1) / 10) for k in range(10)] == [100] * 10
    assert fleet.phases(1000, 1.0, random.Random(7)) == first
    assert fleet.phases(1000, 1.0, random.Random(8)) != first
    assert first != sorted(first)  # slots dealt in a random order, not node 0 first
    few = fleet.phases(5, 10.0, random.Random(1))
    assert sorted(int(p // 2) for p in few) == [0, 1, 2, 3, 4]


def test_schedule_spreads_each_kind_of_step_over_its_interval() -> None:
    servers = [fleet.Backend("127.0.0.1", 6443), fleet.Backend("127.0.0.2", 6443)]
    context = fleet.unverified_context()
    nodes = [fleet.AnchorNode(fleet.ANCHORS["lvscare"], servers, context, fleet.Stats()) for _node in range(NODES)]
    planned = fleet.schedule(nodes, seed=4)
    assert len(planned) == NODES * len(servers)
    assert sorted(int(phase // 0.5) for phase, _task in planned) == list(range(10))  # 10 checks over 5 s
    assert [p for p, _task in fleet.schedule(nodes, seed=4)] == [p for p, _task in planned]


def test_late_steps_are_those_more_than_half_an_interval_late() -> None:
    assert not fleet.is_late(10.0, 10.49, 1.0)
    assert fleet.is_late(10.0, 10.51, 1.0)
    assert fleet.is_late(10.0, 10.13, 0.25)
    lateness = fleet.Lateness()
    for started in (0.0, 0.1, 0.4, 0.6, 2.0):
        lateness.record("readyz", 1.0, 0.0, started)
    for _step in range(95):
        lateness.record("tcp", 0.25, 5.0, 5.1)
    summary = lateness.summary()
    assert summary["count"] == 2
    assert summary["total"] == 100
    assert summary["share"] == 0.02
    assert summary["worst_s"] == 2.0
    assert summary["by_kind"] == {"readyz": {"late": 2, "total": 5}, "tcp": {"late": 0, "total": 95}}
    assert not lateness.kept_up()  # 2% late: more than 1%
    for _step in range(100):
        lateness.record("tcp", 0.25, 5.0, 5.1)
    assert lateness.kept_up()  # 2 of 200: 1%


def _sleepers(count: int, interval_s: float, sleep_s: float, calls: list[float]) -> list[tuple[float, fleet.Task]]:
    def step() -> None:
        calls.append(time.monotonic())
        time.sleep(sleep_s)

    return list(
        zip(fleet.phases(count, interval_s, random.Random(1)), [fleet.Task("tcp", interval_s, step)] * count,
            strict=True)
    )  # fmt: skip


def test_a_scheduler_that_cannot_keep_up_counts_its_late_steps() -> None:
    calls: list[float] = []
    scheduler = fleet.Scheduler(workers=1)
    elapsed = scheduler.run(_sleepers(4, 0.25, 0.2, calls), 1.5)  # 16 steps due each second, one thread doing 5
    summary = scheduler.lateness.summary()
    assert len(calls) <= 9
    assert summary["count"] >= 3
    assert summary["skipped_after_end"] >= 1  # the backlog left at the end is counted, not worked off
    assert summary["total"] == len(calls) + summary["skipped_after_end"]
    assert elapsed < 1.5 + 0.2 + 0.2  # the run ends on time but for the one step running
    assert not scheduler.lateness.kept_up()


def test_a_scheduler_that_keeps_up_runs_every_step_on_time_and_survives_a_failing_step() -> None:
    calls: list[float] = []
    planned = _sleepers(4, 0.25, 0.01, calls)

    def broken() -> None:
        raise RuntimeError("boom")

    planned.append((0.0, fleet.Task("discovery", 0.5, broken)))
    scheduler = fleet.Scheduler(workers=8)
    elapsed = scheduler.run(planned, 1.5)
    assert elapsed < 2.0
    assert 22 <= len(calls) <= 24  # 4 tasks x 6 due times in 1.5 s
    assert scheduler.lateness.summary()["count"] == 0
    assert scheduler.lateness.kept_up()
    assert scheduler.stats.errors["internal"] == 3  # at 0, 0.5 and 1.0 s: counted, never raised
    assert scheduler.stats.samples["internal"] == ["discovery: RuntimeError: boom"]


# ---- certificates ------------------------------------------------------------------------------------


def _key_file(ca: tls_rig.CA, path: Path) -> Path:
    """The CA's private key as a PEM file (what --ca-key names)."""
    path.write_bytes(
        ca.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def _ca_key(pki: tls_rig.PKI, directory: Path) -> Path:
    return _key_file(pki.ca, directory / "ca.key")


def test_node_certificates_are_signed_named_and_reused(pki: tls_rig.PKI, tmp_path: Path) -> None:
    ca_key = _ca_key(pki, tmp_path)
    certs = fleet.node_certificates(pki.ca.path, ca_key, tmp_path / "certs", 3)
    assert [c.name for c, _key in certs] == ["fleet-sim-0.crt", "fleet-sim-1.crt", "fleet-sim-2.crt"]
    cert = x509.load_pem_x509_certificate(certs[2][0].read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:fleet-sim-2"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    cert.verify_directly_issued_by(pki.ca.cert)
    assert certs[0][1].stat().st_mode & 0o077 == 0
    stamps = {c: c.read_bytes() for c, _key in certs}

    again = fleet.node_certificates(pki.ca.path, ca_key, tmp_path / "certs", 5)  # two more, the three kept
    assert all(c.read_bytes() == stamps[c] for c, _key in again[:3])
    assert len({c.read_bytes() for c, _key in again}) == 5

    other_key = tmp_path / "other"
    other_key.mkdir()
    other_ca_key = _key_file(pki.other_ca, other_key / "other-ca.key")
    other = fleet.node_certificates(pki.other_ca.path, other_ca_key, tmp_path / "certs", 3)
    assert all(c.read_bytes() != stamps[c] for c, _key in other)  # another CA: made again
    x509.load_pem_x509_certificate(other[0][0].read_bytes()).verify_directly_issued_by(pki.other_ca.cert)


# ---- real runs -----------------------------------------------------------------------------------------


def _apiserver(https_server: tls_rig.HTTPSServers, host: str) -> fleet.Backend:
    """A stand-in apiserver as the guard needs it: kept-alive connections, client certificates required, /readyz
    and /healthz answering ok, and the kubernetes EndpointSlice naming itself."""
    backend = https_server(keep_alive=True, require_client=True, host=host)
    endpoint_slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [backend.address], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": backend.port, "protocol": "TCP"}],
    }
    https_server.route(backend, fleet.ENDPOINTSLICES_PATH, 200, json.dumps(endpoint_slice).encode())
    return backend


def _all_closed(https_server: tls_rig.HTTPSServers, backends: list[fleet.Backend]) -> bool:
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        if all(c.fileno() == -1 for b in backends for c in https_server.servers[b].connections):
            return True
        time.sleep(0.05)
    return False


def test_a_guard_fleet_runs_the_guards_own_probes(pki: tls_rig.PKI, https_server, tmp_path: Path) -> None:
    servers = [_apiserver(https_server, "127.0.0.1"), _apiserver(https_server, "127.0.0.2")]
    result = fleet.run(
        "guard",
        servers,
        NODES,
        3.0,
        ca_cert=pki.ca.path,
        ca_key=_ca_key(pki, tmp_path),
        cert_dir=tmp_path / "certs",
        seed=2,
        guard_overrides={"discovery": {"interval_s": 1.0}},  # through the guard's parser: 1 s is its lowest
    )
    # The guard's own defaults, except the discovery interval the test shortened.
    defaults = GuardConfig.__dataclass_fields__
    assert result["intervals_s"] == {
        "readyz": defaults["interval_s"].default,
        "tcp": defaults["fast_check_interval_s"].default,
        "discovery": 1.0,
    }
    assert DiscoveryConfig().interval_s == 10.0  # what a real run uses
    requests = result["requests"]
    pairs = NODES * len(servers)
    assert pairs * 2.5 <= requests["readyz"] <= pairs * 3  # 1/s per node and apiserver, a phase in [0, 1)
    assert pairs * 6 <= requests["tcp"] <= pairs * 12  # every 250 ms to each apiserver up (after the first round)
    assert NODES <= requests["discovery"] <= NODES * 3  # 1/s, once an apiserver is up
    assert requests["healthz"] == 0
    # Kept connections: one handshake per node and apiserver for all its rounds; discovery opens one per read.
    assert result["tls_handshakes"] == pairs + requests["discovery"]
    assert result["tls_handshakes"] < requests["readyz"] + requests["discovery"]
    assert result["established_at_end"] == pairs
    assert result["errors"] == {"readyz": 0, "healthz": 0, "tcp": 0, "discovery": 0, "internal": 0}
    assert result["tls_handshake_failures"] == 0
    assert result["late_rounds"]["share"] <= 0.05
    # What the apiservers saw is what the simulator counted.
    seen = [path for b in servers for path in https_server.paths(b)]
    assert seen.count("/readyz") == requests["readyz"]
    assert seen.count(fleet.ENDPOINTSLICES_PATH) == requests["discovery"]
    assert _all_closed(https_server, servers), "a kept connection was left open after the run"
    assert result["sim_cpu_s"] > 0
    assert result["sim_rss_mb"] > 0


def test_an_lvscare_fleet_opens_a_connection_per_check(https_server) -> None:
    servers = [https_server(host="127.0.0.1"), https_server(host="127.0.0.2")]
    result = fleet.run("lvscare", servers, NODES, 3.0, seed=5)
    assert result["intervals_s"] == {"healthz": 5.0}
    # 10 checks (5 nodes x 2 apiservers) stratified over 5 s: exactly those of the first 3 s run.
    assert result["requests"] == {"readyz": 0, "healthz": 6, "tcp": 0, "discovery": 0}
    assert result["tls_handshakes"] == 6
    assert result["established_at_end"] == 0
    assert sum(e for e in result["errors"].values()) == 0
    assert sum(https_server.paths(b).count("/healthz") for b in servers) == 6


def test_a_kubeprism_fleet_connects_and_counts_refusals(https_server) -> None:
    live = https_server(host="127.0.0.1")
    dead = tls_rig.closed_port("127.0.0.2")
    result = fleet.run("kubeprism", [live, dead], 10, 2.0, seed=1)
    # 20 checks stratified over 20 s: exactly 2 in the first 2 s, to whichever apiserver their phase gave.
    assert result["requests"] == {"readyz": 0, "healthz": 0, "tcp": 2, "discovery": 0}
    assert result["tls_handshakes"] == 0
    deadline = time.monotonic() + 2.0
    while https_server.connections(live) + result["errors"]["tcp"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert https_server.connections(live) + result["errors"]["tcp"] == 2
    assert all("refused" in s for s in result["error_samples"].get("tcp", []))


def test_a_guard_fleet_against_a_dead_apiserver_counts_errors(pki: tls_rig.PKI, tmp_path: Path) -> None:
    dead = tls_rig.closed_port("127.0.0.1")
    result = fleet.run(
        "guard", [dead], 2, 1.5, ca_cert=pki.ca.path, ca_key=_ca_key(pki, tmp_path), cert_dir=tmp_path / "c"
    )
    assert 2 <= result["errors"]["readyz"] <= 4  # every round refused, counted, never raised
    assert result["requests"] == {"readyz": 0, "healthz": 0, "tcp": 0, "discovery": 0}  # nothing reached it
    assert result["error_samples"]["readyz"] == [f"{dead}: connection refused"]
    assert result["errors"]["internal"] == 0


# ---- the command line --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--pattern", "lvscare", "--nodes", "5001", "--servers", "https://127.0.0.1:6443"],
        ["--pattern", "lvscare", "--seconds", "601", "--servers", "https://127.0.0.1:6443"],
        ["--pattern", "lvscare", "--nodes", "0", "--servers", "https://127.0.0.1:6443"],
        ["--pattern", "lvscare"],
        ["--pattern", "lvscare", "--servers", "http://127.0.0.1:6443"],
        ["--pattern", "guard", "--servers", "https://127.0.0.1:6443"],
        ["--pattern", "nginx", "--servers", "https://127.0.0.1:6443"],
    ],
)
def test_the_command_line_refuses_what_is_out_of_bounds(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()):
        fleet.main(args)
    assert exc.value.code == 2


def test_the_command_line_prints_one_json_object(https_server) -> None:
    server = https_server()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = fleet.main(
            ["--pattern", "lvscare", "--nodes", "5", "--seconds", "1", "--servers", f"https://{server}"]
        )
    assert status == 0
    result = json.loads(out.getvalue())
    assert (result["pattern"], result["nodes"], result["seconds"]) == ("lvscare", 5, 1.0)
    assert result["requests"]["healthz"] == result["tls_handshakes"] == 1  # 5 checks over 5 s: 1 in the first
    assert result["kept_up"] is True
