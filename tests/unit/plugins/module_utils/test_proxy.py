# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""module_utils/_proxy: probing, hysteresis, weights, the IPVS service and haproxy's configuration.

The probe tests use real sockets on 127.0.0.1: small HTTPS servers with a throwaway CA and certificates made with
``cryptography`` (the ``pki`` and ``https_server`` fixtures of tests/unit/conftest.py). No root, no kernel IPVS.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._haproxy_config import (
    HaproxySettings,
    haproxy_duration,
    render_haproxy,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs_model import RealServer
from ansible_collections.kubeha.apiserver.plugins.module_utils._probe import (
    Prober,
    ProbeSettings,
    probe,
    probe_all,
    ssl_context,
    tcp_check,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import (
    DOWN,
    UNKNOWN,
    UP,
    Backend,
    HealthTracker,
    ProbeResult,
    ProxyError,
    desired_service,
    desired_weights,
    parse_endpoint,
    scheduler_for,
    sort_backends,
)
from tls_rig import PKI, HTTPSServers

M1, M2, M3 = Backend("10.0.0.11", 6443), Backend("10.0.0.12", 6443), Backend("10.0.0.13", 6443)
M6 = Backend("fd00::11", 6443)
VIP4, VIP6 = "169.254.100.1", "fd00::1"


def ok(backend: Backend) -> ProbeResult:
    return ProbeResult(backend, True, 0.01)


def failed(backend: Backend, error: str = "timed out after 1s") -> ProbeResult:
    return ProbeResult(backend, False, 1.0, error)


def refused(backend: Backend) -> ProbeResult:
    return ProbeResult(backend, False, 0.001, "connection refused", refused=True)


# --------------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------------


def test_backend_is_canonical_and_prints_as_an_endpoint() -> None:
    assert Backend("fd00:0::0011", 6443) == M6
    assert str(M6) == "[fd00::11]:6443"
    assert str(M1) == "10.0.0.11:6443"
    assert {M6, Backend("FD00::11", 6443)} == {M6}


@pytest.mark.parametrize(
    ("address", "port", "message"),
    [("master1", 6443, "'master1' is not an IPv4 or IPv6 address"), ("10.0.0.1", 0, "not a port number")],
)
def test_backend_refuses_bad_values(address: str, port: int, message: str) -> None:
    with pytest.raises(ProxyError, match=message):
        Backend(address, port)


def test_parse_endpoint() -> None:
    assert parse_endpoint("10.0.0.11:6443") == M1
    assert parse_endpoint("[fd00::11]:6443") == M6
    for bad, message in [
        ("10.0.0.11", "is not ADDRESS:PORT"),
        ("fd00::11:6443", "write an IPv6 address in brackets"),
        ("[10.0.0.1]:6443", "only IPv6 addresses are written in brackets"),
        ("10.0.0.11:https", "is not ADDRESS:PORT"),
    ]:
        with pytest.raises(ProxyError, match=message):
            parse_endpoint(bad)


def test_backends_sort_numerically_ipv4_first() -> None:
    b100 = Backend("10.0.0.100", 6443)
    assert sort_backends([M6, b100, M2, M1, M1]) == [M1, M2, b100, M6]


# --------------------------------------------------------------------------------------------------
# HealthTracker
# --------------------------------------------------------------------------------------------------


def test_first_probe_decides_a_new_backend() -> None:
    tracker = HealthTracker(rise=2, fall=2)
    transitions = tracker.observe({M1: ok(M1), M2: failed(M2)})
    assert [(t.backend, t.old, t.new) for t in transitions] == [(M1, UNKNOWN, UP), (M2, UNKNOWN, DOWN)]
    assert tracker.health() == {M1: UP, M2: DOWN}
    assert tracker.state(M3) == UNKNOWN


def test_fall_consecutive_failures_take_a_backend_down() -> None:
    tracker = HealthTracker(rise=2, fall=3, initial={M1: UP})
    assert tracker.observe([failed(M1)]) == []
    assert tracker.observe([failed(M1)]) == []
    [transition] = tracker.observe([failed(M1)])
    assert transition.describe() == "backend 10.0.0.11:6443 up -> down: timed out after 1s (3 failed probes in a row)"


def test_a_success_resets_the_failure_count() -> None:
    tracker = HealthTracker(rise=2, fall=2, initial={M1: UP})
    for result in (failed(M1), ok(M1), failed(M1), ok(M1)):
        assert tracker.observe([result]) == []
    assert tracker.state(M1) == UP


def test_a_refused_connection_takes_a_backend_down_at_once() -> None:
    tracker = HealthTracker(rise=2, fall=5, initial={M1: UP})
    [transition] = tracker.observe([refused(M1)])
    assert transition.describe() == "backend 10.0.0.11:6443 up -> down: connection refused"


def test_rise_consecutive_successes_bring_a_backend_back() -> None:
    tracker = HealthTracker(rise=3, fall=2, initial={M1: DOWN})
    assert tracker.observe([ok(M1)]) == []
    assert tracker.observe([ok(M1)]) == []
    [transition] = tracker.observe([ok(M1)])
    assert (transition.old, transition.new) == (DOWN, UP)
    assert transition.reason == "ready (3 successful probes in a row)"


def test_a_failure_resets_the_success_count() -> None:
    tracker = HealthTracker(rise=2, fall=2, initial={M1: DOWN})
    for result in (ok(M1), failed(M1), ok(M1)):
        assert tracker.observe([result]) == []
    assert tracker.state(M1) == DOWN
    assert tracker.observe([ok(M1)])[0].new == UP


def test_seeded_unknown_states_are_ignored_and_retain_forgets() -> None:
    tracker = HealthTracker(rise=2, fall=2, initial={M1: UP, M2: "unknown"})
    assert tracker.health() == {M1: UP}
    tracker.retain([M2])
    assert tracker.health() == {}


@pytest.mark.parametrize(("rise", "fall"), [(0, 2), (2, 0), (True, 2), (2, "2")])
def test_tracker_refuses_bad_thresholds(rise: object, fall: object) -> None:
    with pytest.raises(ProxyError, match="is not a positive integer"):
        HealthTracker(rise=rise, fall=fall)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Weights, scheduler, IPVS service
# --------------------------------------------------------------------------------------------------


def test_weights_up_one_down_zero() -> None:
    weights, fail_open = desired_weights([M1, M2, M3], {M1: UP, M2: DOWN, M3: UP}, [], prefer_local=False)
    assert weights == {M1: 1, M2: 0, M3: 1}
    assert fail_open is False


def test_unknown_backends_get_no_traffic_while_another_is_up() -> None:
    weights, fail_open = desired_weights([M1, M2], {M1: UP}, [], prefer_local=False)
    assert weights == {M1: 1, M2: 0}
    assert not fail_open


def test_all_down_fails_open_with_every_backend_at_weight_one() -> None:
    weights, fail_open = desired_weights([M1, M2, M3], {M1: DOWN, M2: DOWN}, ["10.0.0.11"], prefer_local=True)
    assert weights == {M1: 1, M2: 1, M3: 1}
    assert fail_open is True
    assert desired_weights([], {}, [], False) == ({}, False)


def test_prefer_local_gives_the_local_apiserver_weight_two() -> None:
    health = {M1: UP, M2: UP, M3: DOWN}
    weights = desired_weights([M1, M2, M3], health, ["10.0.0.11", "192.168.1.5"], prefer_local=True)[0]
    assert weights == {M1: 2, M2: 1, M3: 0}
    weights = desired_weights([M1, M2, M3], health, ["10.0.0.11"], prefer_local=False)[0]
    assert weights == {M1: 1, M2: 1, M3: 0}


def test_local_apiserver_down_fails_over_to_the_others() -> None:
    weights, fail_open = desired_weights([M1, M2], {M1: DOWN, M2: UP}, ["10.0.0.11"], prefer_local=True)
    assert weights == {M1: 0, M2: 1}
    assert not fail_open


def test_scheduler_is_fo_only_on_a_master_preferring_itself() -> None:
    assert scheduler_for(prefer_local=True, has_local=True) == "fo"
    assert scheduler_for(prefer_local=True, has_local=False) == "rr"
    assert scheduler_for(prefer_local=False, has_local=True) == "rr"


def test_desired_service_keeps_the_vip_family_and_masquerades() -> None:
    weights = {M1: 2, M2: 0, M6: 1}
    service = desired_service(VIP4, 6443, weights, "fo")
    assert (service.address, service.port, service.protocol, service.scheduler) == (VIP4, 6443, "tcp", "fo")
    assert service.persistence_timeout is None
    assert service.real_servers == (RealServer("10.0.0.11", 6443, 2), RealServer("10.0.0.12", 6443, 0))
    assert all(rs.forwarding == "masquerade" for rs in service.real_servers)
    assert desired_service("FD00::0001", 6443, weights, "rr").real_servers == (RealServer("fd00::11", 6443, 1),)


# --------------------------------------------------------------------------------------------------
# haproxy
# --------------------------------------------------------------------------------------------------


def hap(**overrides: object) -> HaproxySettings:
    fields: dict[str, object] = {"vips": (VIP4, VIP6), "port": 6443, "ca_file": "/etc/kubernetes/pki/ca.crt"}
    fields.update(overrides)
    return HaproxySettings(**fields)  # type: ignore[arg-type]


def test_haproxy_worker_configuration() -> None:
    text = render_haproxy(hap(), [M2, M6, M1], [], prefer_local=False)
    lines = text.splitlines()
    assert "    bind ipv4@169.254.100.1:6443" in lines
    assert "    bind ipv6@fd00::1:6443" in lines
    assert [line for line in lines if line.startswith("    server ")] == [
        "    server 10.0.0.11_6443 ipv4@10.0.0.11:6443",
        "    server 10.0.0.12_6443 ipv4@10.0.0.12:6443",
        "    server fd00::11_6443 ipv6@fd00::11:6443",
    ]
    assert "    mode tcp" in lines
    assert "    timeout client 24h" in lines
    assert "    timeout server 24h" in lines
    assert "    timeout connect 500ms" in lines
    assert "    timeout check 1s" in lines
    assert "    option httpchk GET /readyz" in lines
    assert "    http-check expect rstring ^ok$" in lines
    assert "    balance roundrobin" in lines
    assert "    stats socket /run/kubeha-apiserver/haproxy.sock mode 600 level admin expose-fd listeners" in lines
    assert not any(line.strip() == "daemon" for line in lines)
    [default] = [line for line in lines if line.startswith("    default-server ")]
    assert default == (
        "    default-server inter 1s fastinter 500ms downinter 1s fall 2 rise 2 check check-ssl verify required "
        "ca-file /etc/kubernetes/pki/ca.crt verifyhost kubernetes on-marked-up shutdown-backup-sessions"
    )
    assert not any(line.endswith(" backup") for line in lines)
    assert "allbackups" not in text


def test_haproxy_master_prefers_its_own_apiserver() -> None:
    text = render_haproxy(hap(), [M1, M2, M3], ["10.0.0.12"], prefer_local=True)
    servers = [line for line in text.splitlines() if line.startswith("    server ")]
    assert servers == [
        "    server 10.0.0.11_6443 ipv4@10.0.0.11:6443 backup",
        "    server 10.0.0.12_6443 ipv4@10.0.0.12:6443",
        "    server 10.0.0.13_6443 ipv4@10.0.0.13:6443 backup",
    ]
    assert "    option allbackups" in text.splitlines()


def test_haproxy_client_certificate_only_when_configured() -> None:
    without = render_haproxy(hap(), [M1], [], False)
    with_pem = render_haproxy(hap(client_pem_file="/etc/kubeha-apiserver/haproxy-client.pem"), [M1], [], False)
    assert " crt " not in without
    assert " crt /etc/kubeha-apiserver/haproxy-client.pem " in with_pem


def test_haproxy_rendering_is_byte_identical_for_the_same_set() -> None:
    first = render_haproxy(hap(vips=(VIP6, VIP4)), [M3, M1, M6, M2], ["10.0.0.11"], True)
    second = render_haproxy(hap(vips=(VIP4, VIP6)), [M1, M2, M3, M6, M1], ["10.0.0.11"], True)
    assert first == second
    assert first.endswith("\n")
    assert first != render_haproxy(hap(), [M1, M2], ["10.0.0.11"], True)


def test_haproxy_timing_follows_the_settings() -> None:
    text = render_haproxy(hap(interval_s=2.0, timeout_s=0.75, connect_timeout_s=0.3, rise=3, fall=1), [M1], [], False)
    assert "inter 2s fastinter 1s downinter 2s fall 1 rise 3 check" in text
    assert "    timeout check 750ms" in text
    assert "    timeout connect 300ms" in text

    assert haproxy_duration(0.25) == "250ms"
    assert haproxy_duration(0.0001) == "1ms"


# --------------------------------------------------------------------------------------------------
# probe() against a real local HTTPS server
# --------------------------------------------------------------------------------------------------


# pki and https_server: tests/unit/conftest.py (stand-ins from tests/unit/tls_rig.py).


def settings(pki: PKI, **overrides: object) -> ProbeSettings:
    fields: dict[str, object] = {"ca_file": str(pki.ca.path), "timeout_s": 2.0}
    fields.update(overrides)
    return ProbeSettings(**fields)  # type: ignore[arg-type]


def test_probe_ok_with_the_cluster_ca(pki: PKI, https_server: HTTPSServers) -> None:
    backend = https_server()
    result = probe(backend, settings(pki))
    assert result.ok, result.error
    assert (result.error, result.refused) == ("", False)
    assert 0 < result.latency_s < 2


def test_probe_fails_with_another_ca(pki: PKI, https_server: HTTPSServers) -> None:
    backend = https_server()
    result = probe(backend, settings(pki, ca_file=str(pki.other_ca.path)))
    assert not result.ok
    assert not result.refused
    assert result.error.startswith("TLS certificate not trusted: ")


def test_probe_checks_the_ip_san(pki: PKI, https_server: HTTPSServers) -> None:
    backend = https_server(issued=pki.wrong_san)
    result = probe(backend, settings(pki))
    assert not result.ok
    assert "IP address mismatch" in result.error


def test_probe_not_ready_names_the_failing_check(pki: PKI, https_server: HTTPSServers) -> None:
    body = b"[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\nreadyz check failed\n"
    backend = https_server(status=500, body=body)
    result = probe(backend, settings(pki))
    assert not result.ok
    assert result.error == "HTTP 500: [-]etcd failed: reason withheld"


def test_probe_requires_the_body_ok(pki: PKI, https_server: HTTPSServers) -> None:
    result = probe(https_server(body=b"<html>hello</html>"), settings(pki))
    assert not result.ok
    assert result.error == "HTTP 200 with an unexpected body '<html>hello</html>'"


def test_probe_gets_the_configured_path(pki: PKI, https_server: HTTPSServers) -> None:
    backend = https_server()
    assert probe(backend, settings(pki)).ok
    assert probe(backend, settings(pki, path="/livez")).ok
    assert https_server.paths(backend) == ["/readyz", "/livez"]


def test_probe_with_a_client_certificate(pki: PKI, https_server: HTTPSServers) -> None:
    backend = https_server(require_client=True)
    with_cert = settings(pki, client_cert_file=str(pki.client.cert), client_key_file=str(pki.client.key))
    assert probe(backend, with_cert).ok
    assert not probe(backend, settings(pki)).ok


def test_probe_sets_refused_when_the_port_is_closed(pki: PKI) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = probe(Backend("127.0.0.1", port), settings(pki, timeout_s=1.0))
    assert (result.ok, result.refused, result.error) == (False, True, "connection refused")


@pytest.fixture
def silent_listener() -> Iterator[Callable[[], Backend]]:
    """Sockets that accept TCP connections (the kernel's backlog) and never answer."""
    sockets: list[socket.socket] = []

    def make() -> Backend:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sockets.append(sock)
        return Backend("127.0.0.1", sock.getsockname()[1])

    yield make
    for sock in sockets:
        sock.close()


def test_probe_timeout_is_bounded(pki: PKI, silent_listener: Callable[[], Backend]) -> None:
    backend = silent_listener()
    start = time.monotonic()
    result = probe(backend, settings(pki, timeout_s=0.5))
    elapsed = time.monotonic() - start
    assert elapsed < 0.5 + 0.5
    assert (result.ok, result.refused, result.error) == (False, False, "timed out after 0.5s")


def test_probe_all_runs_concurrently(
    pki: PKI, silent_listener: Callable[[], Backend], https_server: HTTPSServers
) -> None:
    silent = [silent_listener() for _index in range(4)]
    good = https_server()
    start = time.monotonic()
    results = probe_all([*silent, good], settings(pki, timeout_s=0.5))
    assert time.monotonic() - start < 0.5 + 0.5
    assert set(results) == {*silent, good}
    assert results[good].ok
    assert not any(results[b].ok for b in silent)


def test_probe_all_reports_a_bad_ca_file_for_every_backend(tmp_path: Path) -> None:
    results = probe_all([M1, M2], ProbeSettings(ca_file=str(tmp_path / "missing.crt")))
    missing = tmp_path / "missing.crt"
    assert {r.error for r in results.values()} == {f"cannot read the CA file {missing}: No such file or directory"}
    assert probe_all([], ProbeSettings(ca_file="/nonexistent")) == {}


def test_ssl_context_is_reused_until_a_file_changes(pki: PKI, tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(pki.ca.path.read_bytes())
    probe_settings = ProbeSettings(ca_file=str(ca))
    first = ssl_context(probe_settings)
    assert ssl_context(probe_settings) is first
    assert first.check_hostname and first.verify_mode == ssl.CERT_REQUIRED
    ca.write_bytes(pki.ca.path.read_bytes() + b"\n")
    assert ssl_context(probe_settings) is not first


def test_two_first_probes_at_once_share_one_context(pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two probes that both miss the cache and build a context (threads at start-up) end with the same one: the
    one stored first. The other probe's build is made to happen while the first is building (no timing)."""
    from ansible_collections.kubeha.apiserver.plugins.module_utils import _probe

    ca = tmp_path / "ca.crt"
    ca.write_bytes(pki.ca.path.read_bytes())
    settings = ProbeSettings(ca_file=str(ca))
    real_build, inner = _probe.build_ssl_context, []

    def build_while_another_builds(s: ProbeSettings) -> ssl.SSLContext:
        if not inner:
            inner.append(None)
            inner[0] = ssl_context(s)  # the other probe, done first
        return real_build(s)

    monkeypatch.setattr(_probe, "build_ssl_context", build_while_another_builds)
    first = ssl_context(settings)
    assert first is inner[0]
    assert ssl_context(settings) is first


def test_tcp_check(https_server: HTTPSServers) -> None:
    backend = https_server()
    assert tcp_check(backend, 1.0).ok
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = tcp_check(Backend("127.0.0.1", port), 1.0)
    assert (result.ok, result.refused) == (False, True)


# --------------------------------------------------------------------------------------------------
# Prober: one kept-alive connection per backend
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def prober() -> Iterator[Prober]:
    kept = Prober()
    yield kept
    kept.close()


def test_prober_keeps_one_connection_per_backend(pki: PKI, https_server: HTTPSServers, prober: Prober) -> None:
    backend = https_server(keep_alive=True)
    for _round in range(3):
        assert prober.probe_all([backend], settings(pki))[backend].ok
    assert https_server.connections(backend) == 1
    assert https_server.paths(backend) == ["/readyz"] * 3
    assert prober.kept() == [backend]


def test_prober_reconnects_when_the_server_closes(pki: PKI, https_server: HTTPSServers, prober: Prober) -> None:
    backend = https_server(keep_alive=False)  # HTTP/1.0: the server closes after each answer
    for _round in range(2):
        assert prober.probe(backend, settings(pki)).ok
    assert https_server.connections(backend) == 2
    assert prober.kept() == []


def test_prober_sees_a_killed_apiserver_as_refused(pki: PKI, https_server: HTTPSServers, prober: Prober) -> None:
    backend = https_server(keep_alive=True)
    assert prober.probe(backend, settings(pki)).ok
    https_server.kill(backend)
    start = time.monotonic()
    result = prober.probe(backend, settings(pki, timeout_s=1.0))
    assert time.monotonic() - start < 1.0
    assert (result.ok, result.refused, result.error) == (False, True, "connection refused")
    assert prober.kept() == []


def test_prober_keeps_a_not_ready_connection_and_drops_gone_backends(
    pki: PKI, https_server: HTTPSServers, prober: Prober
) -> None:
    not_ready = https_server(status=500, body=b"[-]etcd failed: reason withheld\n", keep_alive=True)
    ready = https_server(keep_alive=True)
    results = prober.probe_all([not_ready, ready], settings(pki))
    assert results[not_ready].error == "HTTP 500: [-]etcd failed: reason withheld"
    assert prober.kept() == sort_backends([not_ready, ready])
    prober.probe_all([ready], settings(pki))
    assert prober.kept() == [ready]


def test_prober_opens_a_new_connection_when_the_ca_file_changes(
    pki: PKI, https_server: HTTPSServers, prober: Prober, tmp_path: Path
) -> None:
    backend = https_server(keep_alive=True)
    ca = tmp_path / "ca.crt"
    ca.write_bytes(pki.ca.path.read_bytes())
    assert prober.probe(backend, settings(pki, ca_file=str(ca))).ok
    ca.write_bytes(pki.other_ca.path.read_bytes())  # a new cluster CA that does not sign this server
    result = prober.probe(backend, settings(pki, ca_file=str(ca)))
    assert result.error.startswith("TLS certificate not trusted")
    assert https_server.connections(backend) == 2


def test_prober_timeout_is_bounded(pki: PKI, silent_listener: Callable[[], Backend], prober: Prober) -> None:
    backend = silent_listener()
    start = time.monotonic()
    result = prober.probe(backend, settings(pki, timeout_s=0.5))
    assert time.monotonic() - start < 0.5 + 0.5
    assert result.error == "timed out after 0.5s"
