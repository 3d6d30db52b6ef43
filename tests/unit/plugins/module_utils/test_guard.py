# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The guard's loop (module_utils/_guard_daemon) without root or kernel IPVS: whole rounds, fast checks, start-up,
discovery's effect on the backends, reloads, failures of every contact, and the command line.

Longer than the other test files on purpose: each test drives the one loop through the rig (guard_rig.py: an
in-memory IPVS adapter, a runner recording the command lines, a scripted prober, /proc, /proc/sys and /sys trees
under ``tmp_path``); its parts have their own files (test_guard_config, test_guard_state, test_guard_discovery,
test_guard_metrics, test_datapath_ipvs, test_converge, and test_guard_nftables_kernel on the real kernel).
"""

from __future__ import annotations

import dataclasses
import errno
import http.server
import json
import logging
import os
import re
import shutil
import socket
import stat
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils import (
    _guard_daemon,
    _guard_discovery,
    _guard_metrics,
    _node_plumbing,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath import conntrack_commands, socket_kill_commands
from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath_ipvs import (
    NFT_TABLE,
    connections_to,
    parse_ip_vs_conn,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_cli import cleanup, main
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import (
    ConfigError,
    GuardError,
    parse_config,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_daemon import (
    Guard,
    next_due,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_discovery import (
    backend_set,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_hooks import Hooks
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_metrics import (
    MetricsServer,
    render_metrics,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_state import (
    GuardState,
    make_state,
    read_state,
    write_state,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs_model import (
    RealServer,
    Service,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._node_plumbing import (
    ensure_interface,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._probe import ProbeSettings
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import DOWN, UP, Backend, ProbeResult
from guard_rig import (
    CERT,
    IP_VS_CONN,
    KEY,
    M1,
    M2,
    M3,
    M4,
    M6,
    PORT,
    VIP4,
    VIP6,
    FakeIPVS,
    FakeRunner,
    Rig,
    RigFactory,
    config_doc,
    remove_plumbing,
    rigs,
)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[RigFactory]:
    yield from rigs(tmp_path)


# --------------------------------------------------------------------------------------------------
# Loop rounds with fakes
# --------------------------------------------------------------------------------------------------


def test_round_refused_backend_goes_to_weight_zero_at_once_and_its_connections_are_closed(rig: RigFactory) -> None:
    r = rig(ip_vs_conn=IP_VS_CONN)
    r.round()
    assert r.ipvs.weights() == {"10.0.0.11:6443": 1, "10.0.0.12:6443": 1, "10.0.0.13:6443": 1}
    assert r.ipvs.services[(VIP4, PORT, "tcp")].scheduler == "rr"
    assert r.runner.commands("ss") == []

    r.prober.set("refused", M2)
    r.round()
    assert r.ipvs.weights() == {"10.0.0.11:6443": 1, "10.0.0.12:6443": 0, "10.0.0.13:6443": 1}
    assert r.runner.commands("ss") == socket_kill_commands(
        connections_to(parse_ip_vs_conn(IP_VS_CONN), M2, [(VIP4, PORT)]), [VIP4, "10.0.0.21"]
    )
    assert len(r.runner.commands("ss")) == 2  # the node's own clients only: not the pod, not TIME_WAIT
    assert r.runner.commands("conntrack") == conntrack_commands(M2, [VIP4], PORT)
    assert r.guard.snapshot().transitions == {(M1, UP): 1, (M2, UP): 1, (M3, UP): 1, (M2, DOWN): 1}

    state = read_state(r.cfg.state_file)
    assert state is not None
    assert state.health == {M1: UP, M2: DOWN, M3: UP}


def test_round_recovered_backend_returns_after_rise_rounds(rig: RigFactory) -> None:
    r = rig()
    r.round()
    r.prober.set("fail", M3)
    r.round()
    assert r.ipvs.weights()["10.0.0.13:6443"] == 1  # one failure: fall is 2
    r.round()
    assert r.ipvs.weights()["10.0.0.13:6443"] == 0
    r.prober.set("ok", M3)
    r.round()
    assert r.ipvs.weights()["10.0.0.13:6443"] == 0  # one success: rise is 2
    r.round()
    assert r.ipvs.weights()["10.0.0.13:6443"] == 1


def test_round_all_down_fails_open_and_keeps_connections(rig: RigFactory, caplog: pytest.LogCaptureFixture) -> None:
    r = rig(ip_vs_conn=IP_VS_CONN)
    r.round()
    r.prober.set("refused", M1, M2, M3)
    with caplog.at_level(logging.INFO, logger="kubeha-apiserver-guard"):
        r.round()
    assert r.ipvs.weights() == {"10.0.0.11:6443": 1, "10.0.0.12:6443": 1, "10.0.0.13:6443": 1}
    assert r.guard.snapshot().fail_open
    assert r.runner.commands("ss") == []
    assert "no IPv4 apiserver is ready: failing open" in caplog.text
    assert "backend 10.0.0.12:6443 up -> down: connection refused" in caplog.text
    r.prober.set("ok", M1)
    r.round()
    assert r.runner.commands("ss") == []
    r.round()  # M1 is back (rise 2): failing open ends, and the connections to M2 and M3 are closed now
    assert r.ipvs.weights() == {"10.0.0.11:6443": 1, "10.0.0.12:6443": 0, "10.0.0.13:6443": 0}
    assert not r.guard.snapshot().fail_open
    assert len(r.runner.commands("ss")) == 2  # the node's own connections to M2 (none to M3)
    assert r.runner.commands("conntrack") == [
        *conntrack_commands(M2, [VIP4], PORT),
        *conntrack_commands(M3, [VIP4], PORT),
    ]


def test_round_master_prefers_its_own_apiserver_with_fo(rig: RigFactory) -> None:
    r = rig(local_addresses=["10.0.0.11"], prefer_local=True)
    r.round()
    service = r.ipvs.services[(VIP4, PORT, "tcp")]
    assert service.scheduler == "fo"
    assert r.ipvs.weights() == {"10.0.0.11:6443": 2, "10.0.0.12:6443": 1, "10.0.0.13:6443": 1}


def test_round_without_changes_applies_nothing_and_writes_nothing(rig: RigFactory) -> None:
    r = rig()
    r.round()
    applied = len(r.ipvs.applied)
    mtime = os.stat(r.cfg.state_file).st_mtime_ns
    r.round()
    assert len(r.ipvs.applied) == applied
    assert os.stat(r.cfg.state_file).st_mtime_ns == mtime
    assert r.runner.calls == []


def test_round_restores_a_service_deleted_behind_its_back(rig: RigFactory) -> None:
    r = rig()
    r.round()
    del r.ipvs.services[(VIP4, PORT, "tcp")]  # e.g. kube-proxy without excludeCIDRs
    r.round()
    assert r.ipvs.weights() == {"10.0.0.11:6443": 1, "10.0.0.12:6443": 1, "10.0.0.13:6443": 1}


def test_fast_check_takes_a_refused_backend_down_at_once(rig: RigFactory) -> None:
    r = rig(ip_vs_conn=IP_VS_CONN)
    r.round()
    r.runner.calls.clear()
    r.connects[M2] = "refused"
    [transition] = r.guard.fast_check_once()
    assert transition.describe() == "backend 10.0.0.12:6443 up -> down: connection refused"
    assert r.ipvs.weights()["10.0.0.12:6443"] == 0
    assert len(r.runner.commands("ss")) == 2
    assert r.guard.fast_check_once() == []  # only backends that are up are checked


def test_fast_check_takes_a_black_holed_backend_down_after_fall_unanswered_connects(rig: RigFactory) -> None:
    r = rig(ip_vs_conn=IP_VS_CONN)
    r.round()
    r.connects[M2] = "unanswered"
    assert r.guard.fast_check_once() == []  # one unanswered connect may be a lost SYN: fall is 2
    assert r.ipvs.weights()["10.0.0.12:6443"] == 1
    [transition] = r.guard.fast_check_once()
    assert transition.describe() == "backend 10.0.0.12:6443 up -> down: 2 connects in a row unanswered after 0.5s"
    assert r.ipvs.weights()["10.0.0.12:6443"] == 0
    assert f"connect:{M2}:0.5" in r.events  # connect_timeout_s, not the probe's timeout


def test_haproxy_mode_takes_a_failed_server_down_but_leaves_refused_ones_to_haproxy(
    rig: RigFactory, tmp_path: Path
) -> None:
    sent: list[tuple[str, str]] = []
    r = rig(mode="haproxy", haproxy={"config_path": str(tmp_path / "etc" / "haproxy.cfg")})
    (tmp_path / "etc").mkdir()
    r.hooks.haproxy_command = lambda path, command: sent.append((path, command)) or ""
    r.round()
    r.connects[M1] = "refused"  # its kernel resets its connections; haproxy redispatches the connecting ones
    r.guard.fast_check_once()
    assert sent == []
    r.connects[M2] = "unanswered"
    r.guard.fast_check_once()
    [transition] = r.guard.fast_check_once()
    assert transition.backend == M2
    socket_path = "/run/kubeha-apiserver/haproxy.sock"
    assert sent == [
        (socket_path, "set server kube_apiservers/10.0.0.12_6443 health down"),
        (socket_path, "shutdown sessions server kube_apiservers/10.0.0.12_6443"),
    ]
    sent.clear()
    r.prober.set("fail", M3)  # /readyz failing twice (a hung or unready apiserver)
    r.round()
    r.round()
    assert sent == [
        (socket_path, "set server kube_apiservers/10.0.0.13_6443 health down"),
        (socket_path, "shutdown sessions server kube_apiservers/10.0.0.13_6443"),
    ]


def test_fast_check_counts_only_unanswered_connects_in_a_row(rig: RigFactory) -> None:
    # Negative control of the test above: an answered connect between two unanswered ones resets the count.
    r = rig()
    r.round()
    for outcome in ("unanswered", "ok", "unanswered", "ok", "unanswered"):
        r.connects[M2] = outcome
        assert r.guard.fast_check_once() == []
    assert r.ipvs.weights()["10.0.0.12:6443"] == 1


def test_apply_error_is_logged_once_and_retried(rig: RigFactory, caplog: pytest.LogCaptureFixture) -> None:
    r = rig()
    r.ipvs.fail = "adding TCP 169.254.100.1:6443: EPERM"
    with caplog.at_level(logging.ERROR, logger="kubeha-apiserver-guard"):
        r.round()
        r.round()
    assert caplog.text.count("applying IPVS: adding TCP 169.254.100.1:6443: EPERM") == 1
    assert r.guard.snapshot().apply_errors == 2
    r.ipvs.fail = None
    r.round()
    assert r.ipvs.weights() == {"10.0.0.11:6443": 1, "10.0.0.12:6443": 1, "10.0.0.13:6443": 1}


def test_a_failed_apply_is_retried_at_once_on_a_new_socket(rig: RigFactory, caplog: pytest.LogCaptureFixture) -> None:
    # Seen on the lab: a dump of the real servers failed with ECONNRESET right when a master went down.
    r = rig(ip_vs_conn=IP_VS_CONN)
    r.round()
    r.ipvs.fail_once = "reading the real servers of TCP 169.254.100.1:6443: ECONNRESET"
    r.connects[M2] = "refused"
    with caplog.at_level(logging.WARNING, logger="kubeha-apiserver-guard"):
        r.guard.fast_check_once()
    assert r.ipvs.weights()["10.0.0.12:6443"] == 0  # in the same step, not a round later
    assert len(r.runner.commands("ss")) == 2
    assert "ECONNRESET; retrying on a new netlink socket" in caplog.text
    assert r.guard.snapshot().apply_errors == 0


class NetlinkDecodeError(Exception):
    """Stands for pyroute2's decode errors, which are not NetlinkError."""


ADAPTER_FAILURES = [
    OSError(errno.ENOBUFS, "No buffer space available"),
    OSError(errno.ECONNRESET, "Connection reset by peer"),
    NetlinkDecodeError("truncated message"),
    struct.error("unpack requires a buffer of 8 bytes"),
    KeyError("IPVS_CMD_ATTR_DEST"),
]


@pytest.mark.parametrize("failure", ADAPTER_FAILURES, ids=lambda e: type(e).__name__ + str(getattr(e, "errno", "")))
def test_any_adapter_failure_is_retried_on_a_new_adapter(rig: RigFactory, failure: BaseException) -> None:
    r = rig(ip_vs_conn=IP_VS_CONN)
    made: list[FakeIPVS] = []

    def factory() -> FakeIPVS:
        made.append(r.ipvs)
        return r.ipvs

    r.guard.hooks = dataclasses.replace(r.guard.hooks, ipvs_factory=factory)
    r.round()
    r.ipvs.raise_next = [failure]
    r.connects[M2] = "refused"
    r.guard.fast_check_once()
    assert r.ipvs.weights()["10.0.0.12:6443"] == 0  # the same step, on a new adapter
    assert len(made) == 2 and r.guard.snapshot().apply_errors == 0


@pytest.mark.parametrize("failure", ADAPTER_FAILURES, ids=lambda e: type(e).__name__ + str(getattr(e, "errno", "")))
def test_an_adapter_that_keeps_failing_is_counted_and_the_next_round_repairs(
    rig: RigFactory, failure: BaseException
) -> None:
    r = rig()
    r.round()
    r.ipvs.raise_next = [failure, failure]  # the first attempt and its retry
    r.prober.set("fail", M3)
    r.round()
    r.round()  # fall 2: M3 goes down in this round, whose apply fails twice
    assert r.guard.snapshot().apply_errors == 1
    assert r.ipvs.weights()["10.0.0.13:6443"] == 1  # the failed apply changed nothing
    r.round()
    assert r.ipvs.weights()["10.0.0.13:6443"] == 0  # repaired by the next round, no restart needed


def test_each_thread_programs_ipvs_on_its_own_socket(rig: RigFactory, tmp_path: Path) -> None:
    # pyroute2 0.9 sockets fail with ECONNRESET when two threads take turns on one (reproduced on the lab's
    # kernel with two threads dumping IPVS alternately): the probe round and the fast check each get theirs.
    r = rig()
    made: list[Closable] = []

    def factory() -> Closable:
        made.append(Closable())
        return made[-1]

    guard = Guard(r.cfg, str(tmp_path / "guard.json"), dataclasses.replace(r.hooks, ipvs_factory=factory))
    path = guard.datapath
    mine = path._adapter()
    assert path._adapter() is mine
    other: list[Any] = []
    worker = threading.Thread(target=lambda: other.append(path._adapter()))
    worker.start()
    worker.join()
    assert len(made) == 2 and other[0] is not mine
    path.reset()  # this thread's only
    assert [a.closed for a in made] == [True, False]
    assert path._adapter() is made[2]
    guard.close()
    assert all(a.closed for a in made)


class Closable:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_connections_are_closed_once_an_apply_succeeds(rig: RigFactory) -> None:
    r = rig(ip_vs_conn=IP_VS_CONN)
    r.round()
    r.ipvs.fail = "setting real server 10.0.0.12:6443: ENOMEM"
    r.prober.set("refused", M2)
    r.round()
    assert r.runner.commands("ss") == []  # new connections may still reach M2: closing would not help yet
    r.ipvs.fail = None
    r.round()
    assert r.ipvs.weights()["10.0.0.12:6443"] == 0
    assert len(r.runner.commands("ss")) == 2
    r.round()
    assert r.runner.commands("ss") == []  # once only


def test_dual_stack_rounds_program_one_service_per_family(rig: RigFactory) -> None:
    r = rig(vip=[VIP4, VIP6], seeds=["10.0.0.11:6443", "[fd00::11]:6443"])
    r.prober.set("refused", M6)
    r.round()
    assert r.ipvs.weights(VIP4) == {"10.0.0.11:6443": 1}
    assert r.ipvs.weights(VIP6) == {"[fd00::11]:6443": 1}  # the only IPv6 backend: fail open
    assert r.guard.snapshot().fail_open


def test_startup_restores_the_last_good_state_before_any_probe(rig: RigFactory) -> None:
    r = rig()
    write_state(r.cfg.state_file, make_state([VIP4], PORT, [M1, M2, M3], {M1: UP, M2: DOWN, M3: UP}))
    assert r.guard.startup() is True
    assert r.prober.rounds == 0
    assert r.ipvs.weights() == {"10.0.0.11:6443": 1, "10.0.0.12:6443": 0, "10.0.0.13:6443": 1}


def test_startup_removes_the_service_of_an_old_vip(rig: RigFactory) -> None:
    r = rig()
    old = Service("169.254.100.9", PORT, real_servers=(RealServer("10.0.0.11", 6443),))
    r.ipvs.services[old.key] = old
    write_state(r.cfg.state_file, make_state(["169.254.100.9"], PORT, [M1], {M1: UP}))
    r.guard.startup()
    assert old.key not in r.ipvs.services
    assert (VIP4, PORT, "tcp") in r.ipvs.services


@pytest.mark.parametrize("before", ["ipvs", ""])
def test_a_node_that_changed_mode_keeps_nothing_of_the_old_data_path(
    rig: RigFactory, tmp_path: Path, before: str
) -> None:
    # IPVS before, haproxy now: the VIP's IPVS service and the masquerade table go, so that only haproxy carries the
    # VIP. Negative control (a state file that does not say its mode, as before the mode was recorded): both stay.
    r = rig(mode="haproxy", haproxy={"config_path": str(tmp_path / "etc" / "haproxy.cfg")})
    service = Service(VIP4, PORT, real_servers=(RealServer("10.0.0.11", 6443),))
    r.ipvs.services[service.key] = service
    write_state(r.cfg.state_file, make_state([VIP4], PORT, [M1], {M1: UP}, mode=before))
    r.guard.startup()
    if before:
        assert r.ipvs.services == {}
        assert ["nft", "delete", "table", "inet", NFT_TABLE] in r.runner.calls
        assert f"removed nftables table inet {NFT_TABLE} (mode ipvs before)" in r.guard.plumbing_changes
    else:
        assert service.key in r.ipvs.services
        assert ["nft", "delete", "table", "inet", NFT_TABLE] not in r.runner.calls
    assert read_state(r.cfg.state_file).mode == "haproxy"  # the next start finds nothing to remove


@pytest.mark.parametrize("with_state", [True, False])
def test_serve_notifies_systemd_after_the_restore_or_after_the_first_round(rig: RigFactory, with_state: bool) -> None:
    r = rig()
    if with_state:
        write_state(r.cfg.state_file, make_state([VIP4], PORT, [M1, M2, M3], {M1: UP}))
    scripted = r.prober

    def stop_after_one_round(backends: Sequence[Backend], settings: ProbeSettings) -> dict[Backend, ProbeResult]:
        r.guard.request_stop()  # what SIGTERM does
        return scripted(backends, settings)

    r.guard.hooks.prober = stop_after_one_round
    assert r.guard.serve() == 0
    expected = ["notify:READY=1", "probe"] if with_state else ["probe", "notify:READY=1"]
    assert r.events == [*expected, "notify:WATCHDOG=1", "notify:STOPPING=1"]
    assert (VIP4, PORT, "tcp") in r.ipvs.services  # stopping leaves the data path in place


def test_the_watchdog_is_fed_only_after_a_completed_round(rig: RigFactory) -> None:
    """A guard whose rounds fail (wedged adapter, broken pool) stops feeding systemd's watchdog, which restarts it."""
    r = rig()
    scripted = r.prober
    rounds = [0]

    def failing_then_stop(backends: Sequence[Backend], settings: ProbeSettings) -> dict[Backend, ProbeResult]:
        rounds[0] += 1
        r.clock.now += 1.0  # the loop schedules its next round on this clock
        if rounds[0] == 3:
            r.guard.request_stop()
            return scripted(backends, settings)
        raise RuntimeError("probe pool broken")

    r.guard.hooks.prober = failing_then_stop
    assert r.guard.serve() == 0
    notified = [e for e in r.events if e.startswith("notify:")]
    # READY after the first round, failed or not (kubelet must not wait); WATCHDOG only for the third, completed one.
    assert notified == ["notify:READY=1", "notify:WATCHDOG=1", "notify:STOPPING=1"]


def test_startup_is_retried_with_back_off_then_the_rounds_take_over(
    rig: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_guard_daemon, "STARTUP_FIRST_RETRY_S", 0.01)
    r = rig()
    write_state(r.cfg.state_file, make_state([VIP4], PORT, [M1, M2, M3], {M1: UP}))
    real_reconcile = r.guard._reconcile
    failures = [2]

    def flaky(transitions: Any) -> None:
        if failures[0]:
            failures[0] -= 1
            raise OSError("netlink socket gone")  # not a GuardError: what pyroute2 may raise
        real_reconcile(transitions)

    monkeypatch.setattr(r.guard, "_reconcile", flaky)
    assert r.guard.startup_with_retry() is True  # the third attempt restored the rules
    assert failures == [0] and (VIP4, PORT, "tcp") in r.ipvs.services

    # Negative control: a start-up that keeps failing past STARTUP_RETRY_S gives up (the rounds take over).
    failures[0] = 10**6

    def later(transitions: Any) -> None:
        r.clock.now += 20  # each attempt costs 20 s of the (fake) monotonic clock
        flaky(transitions)

    monkeypatch.setattr(r.guard, "_reconcile", later)
    assert r.guard.startup_with_retry() is False
    assert failures[0] > 10**6 - 4  # a few attempts, not an endless loop


def test_discovery_adds_backends_and_never_drops_the_seeds(rig: RigFactory, caplog: pytest.LogCaptureFixture) -> None:
    r = rig(
        seeds=["10.0.0.11:6443", "10.0.0.12:6443"],
        local_addresses=["10.0.0.12"],
        client_cert_file="/var/lib/kubelet/pki/kubelet-client-current.pem",
        discovery={"enabled": True},
    )
    assert r.guard.discover_once() is False  # nothing is up yet: nobody to ask
    r.round()
    r.discovered = frozenset({M1, M4})
    assert r.guard.discover_once()
    assert r.events[-1] == "discover:10.0.0.12:6443,10.0.0.11:6443"  # the local apiserver first
    assert r.guard.backends == (M1, M2, M4)
    r.round()
    assert r.ipvs.weights() == {"10.0.0.11:6443": 1, "10.0.0.12:6443": 1, "10.0.0.14:6443": 1}
    r.discovered = frozenset({M1})
    for _answer in range(_guard_discovery.DISCOVERY_MISSES):
        r.guard.discover_once()
    assert r.guard.backends == (M1, M2)
    r.discovery_error = GuardError("discovery failed: 10.0.0.12:6443: forbidden")
    with caplog.at_level(logging.ERROR, logger="kubeha-apiserver-guard"):
        assert not r.guard.discover_once()
        assert not r.guard.discover_once()
    assert caplog.text.count("forbidden") == 1
    assert r.guard.backends == (M1, M2)
    r.round()
    assert r.ipvs.weights() == {"10.0.0.11:6443": 1, "10.0.0.12:6443": 1}
    assert r.guard.snapshot().discovered == 1


@pytest.mark.parametrize(
    "failure",
    [RuntimeError("boom"), KeyError("endpoints"), OSError(errno.ECONNRESET, "reset"), ValueError("bad JSON")],
    ids=lambda e: type(e).__name__,
)
def test_discovery_that_raises_anything_keeps_the_backends_and_the_next_call_repairs(
    rig: RigFactory, caplog: pytest.LogCaptureFixture, failure: BaseException
) -> None:
    r = rig(seeds=["10.0.0.11:6443"], client_cert_file="/c.pem", discovery={"enabled": True})
    r.round()
    r.discovered = frozenset({M1, M4})
    assert r.guard.discover_once()
    r.discovery_error = failure
    with caplog.at_level(logging.ERROR, logger="kubeha-apiserver-guard"):
        assert r.guard.discover_once() is False  # not raised: the discovery thread goes on
    assert f"discovery failed: {type(failure).__name__}" in caplog.text
    assert r.guard.backends == (M1, M4)
    r.discovery_error = None
    r.discovered = frozenset({M1, M4, M5})
    assert r.guard.discover_once() and r.guard.backends == (M1, M4, M5)


def test_a_state_file_that_cannot_be_written_is_written_by_the_next_round(
    rig: RigFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig()
    real_write = _guard_daemon.write_state
    failures = [GuardError("cannot write /var/lib/kubeha-apiserver/state.json: No space left on device")]

    def write_once_failing(path: str, state: Any) -> None:
        if failures:
            raise failures.pop()
        real_write(path, state)

    monkeypatch.setattr(_guard_daemon, "write_state", write_once_failing)
    with caplog.at_level(logging.ERROR, logger="kubeha-apiserver-guard"):
        r.round()
    assert "No space left on device" in caplog.text
    assert not Path(r.cfg.state_file).exists()
    assert r.ipvs.weights()  # the data path was applied all the same
    r.prober.set("fail", M3)
    r.round()
    r.round()  # a change of health: the state is written again
    assert json.loads(Path(r.cfg.state_file).read_text())


def discovery_rig(rig: RigFactory) -> Rig:
    r = rig(seeds=["10.0.0.11:6443"], client_cert_file="/c.pem", discovery={"enabled": True})
    r.round()
    return r


M5 = Backend("10.0.0.15", 6443)


def test_an_empty_answer_removes_discovered_backends_only_after_it_repeats_one_at_a_time(
    rig: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    r = discovery_rig(rig)
    r.discovered = frozenset({M1, M4, M5})
    assert r.guard.discover_once()
    r.discovered = frozenset()  # an empty answer (say, a wrong RBAC change that still answers 200)
    for _answer in range(_guard_discovery.DISCOVERY_MISSES - 1):
        assert r.guard.discover_once()
        assert r.guard.backends == (M1, M4, M5)  # still in the data path
    with caplog.at_level(logging.INFO, logger="kubeha-apiserver-guard"):
        assert r.guard.discover_once()
    assert r.guard.backends == (M1, M5)  # one only: the first in address order of those missing longest
    assert "discovery: 10.0.0.14:6443 left the kubernetes EndpointSlice (3 answers in a row); removed" in caplog.text
    assert r.guard.discover_once()
    assert r.guard.backends == (M1,)  # the seed stays, whatever the answers say
    assert r.guard.discover_once() and r.guard.backends == (M1,)


def test_a_backend_back_in_the_answer_starts_its_count_again(rig: RigFactory) -> None:
    r = discovery_rig(rig)
    r.discovered = frozenset({M1, M4})
    assert r.guard.discover_once()
    for answer in [{M1}, {M1}, {M1, M4}, {M1}, {M1}]:  # a flapping answer: never three in a row without it
        r.discovered = frozenset(answer)
        assert r.guard.discover_once()
        assert r.guard.backends == (M1, M4)
    assert r.guard.discover_once()
    assert r.guard.backends == (M1,)


def test_negative_control_taking_each_answer_as_it_is_empties_the_set_at_once(
    rig: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What discovery did before: the answer replaced the discovered set, so the same empty answer takes every
    discovered backend away at the first discovery."""
    monkeypatch.setattr(Guard, "_after_answer", lambda self, admitted: admitted)
    r = discovery_rig(rig)
    r.discovered = frozenset({M1, M4, M5})
    assert r.guard.discover_once()
    r.discovered = frozenset()
    assert r.guard.discover_once()
    assert r.guard.backends == (M1,)


def test_a_master_the_inventory_and_the_answer_both_dropped_leaves_at_once(rig: RigFactory, tmp_path: Path) -> None:
    # remove_master.yml: cp3 left the EndpointSlice, then the inventory (guard.json's seeds) drops it: no wait.
    r = rig(seeds=["10.0.0.11:6443", "10.0.0.13:6443"], client_cert_file="/c.pem", discovery={"enabled": True})
    r.round()
    r.discovered = frozenset({M1, M3, M4})
    assert r.guard.discover_once()
    r.discovered = frozenset({M1, M4})
    assert r.guard.discover_once()
    config = tmp_path / "guard.json"
    config.write_text(json.dumps(config_doc(tmp_path, seeds=["10.0.0.11:6443"], client_cert_file="/c.pem",
                                            discovery={"enabled": True})))  # fmt: skip
    assert r.guard.reload_config()
    assert r.guard.backends == (M1, M4)
    # A master the inventory drops while discovery still finds it stays (discovery vouches for it).
    config.write_text(json.dumps(config_doc(tmp_path, seeds=["10.0.0.14:6443"], client_cert_file="/c.pem",
                                            discovery={"enabled": True})))  # fmt: skip
    assert r.guard.reload_config()
    assert r.guard.backends == (M1, M4)


def test_restart_remembers_discovered_backends(rig: RigFactory) -> None:
    r = rig(
        seeds=["10.0.0.11:6443"],
        client_cert_file="/var/lib/kubelet/pki/kubelet-client-current.pem",
        discovery={"enabled": True},
    )
    write_state(r.cfg.state_file, make_state([VIP4], PORT, [M1, M4], {M1: UP, M4: UP}))
    r.guard.startup()
    assert r.guard.backends == (M1, M4)
    # The seed's rules are back at once (kubelet finds them at boot); the discovered backend waits for its probe.
    assert r.ipvs.weights() == {"10.0.0.11:6443": 1, "10.0.0.14:6443": 0}
    r.round()
    assert r.ipvs.weights() == {"10.0.0.11:6443": 1, "10.0.0.14:6443": 1}  # one good probe


def test_a_restored_discovered_backend_that_fails_its_first_probe_never_gets_traffic(rig: RigFactory) -> None:
    r = rig(
        seeds=["10.0.0.11:6443"],
        client_cert_file="/var/lib/kubelet/pki/kubelet-client-current.pem",
        discovery={"enabled": True},
    )
    write_state(r.cfg.state_file, make_state([VIP4], PORT, [M1, M4], {M1: UP, M4: UP}))
    r.prober.set("fail", M4)
    r.guard.startup()
    r.round()
    assert r.ipvs.weights() == {"10.0.0.11:6443": 1, "10.0.0.14:6443": 0}


def test_discovery_admits_only_the_masters_networks_and_a_bounded_number(
    rig: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig(
        seeds=["10.0.0.11:6443"],
        client_cert_file="/var/lib/kubelet/pki/kubelet-client-current.pem",
        discovery={"enabled": True, "max_backends": 2},
    )
    assert r.cfg.discovery.networks == ("10.0.0.0/24",)  # the seed's /24 by default
    r.round()
    outside = Backend("192.0.2.50", 6443)  # what a forged or wrong EndpointSlice could name
    r.discovered = frozenset({M4, Backend("10.0.0.15", 6443), Backend("10.0.0.16", 6443), outside})
    with caplog.at_level(logging.WARNING, logger="kubeha-apiserver-guard"):
        assert r.guard.discover_once()
    assert r.guard.backends == (M1, M4, Backend("10.0.0.15", 6443))  # the first two in address order
    assert "ignoring 192.0.2.50:6443 is outside the masters' networks (10.0.0.0/24)" in caplog.text
    assert "ignoring 10.0.0.16:6443 is beyond the 2 discovered backends allowed" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kubeha-apiserver-guard"):
        assert r.guard.discover_once()
    assert caplog.text == ""  # said once, not at every discovery


def test_negative_control_networks_that_include_it_admit_the_address(rig: RigFactory) -> None:
    r = rig(
        seeds=["10.0.0.11:6443"],
        client_cert_file="/var/lib/kubelet/pki/kubelet-client-current.pem",
        discovery={"enabled": True, "networks": ["10.0.0.0/24", "192.0.2.0/24"]},
    )
    r.round()
    r.discovered = frozenset({Backend("192.0.2.50", 6443)})
    assert r.guard.discover_once()
    assert r.guard.backends == (M1, Backend("192.0.2.50", 6443))


@pytest.mark.parametrize(
    ("discovery", "message"),
    [
        ({"enabled": True, "networks": ["10.0.0.0/33"]}, "discovery: networks[0] '10.0.0.0/33' is not a CIDR"),
        ({"enabled": True, "max_backends": 0}, "discovery: max_backends 0 is out of range 1..1000"),
    ],
)
def test_bad_discovery_limits_are_refused(tmp_path: Path, discovery: dict[str, Any], message: str) -> None:
    doc = config_doc(tmp_path, client_cert_file="/c.pem", discovery=discovery)
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(doc, "guard.json")


@pytest.mark.parametrize("value", ["kube rnetes", "a;b", "-x", 5, "kubernetes..default"])
def test_a_haproxy_verify_name_that_is_not_a_dns_name_is_refused(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError, match=r"guard.json: haproxy: verify_name .* is not a DNS name"):
        parse_config(config_doc(tmp_path, haproxy={"verify_name": value}), "guard.json")


def test_the_haproxy_checks_verify_the_configured_name(tmp_path: Path) -> None:
    assert parse_config(config_doc(tmp_path)).haproxy_settings().verify_name == "kubernetes"
    cfg = parse_config(config_doc(tmp_path, haproxy={"verify_name": "kubernetes.default.svc"}))
    assert cfg.haproxy_settings().verify_name == "kubernetes.default.svc"
    assert parse_config(config_doc(tmp_path, haproxy={"verify_name": ""})).haproxy_settings().verify_name == ""


def test_a_vip_family_without_seeds_needs_networks_for_discovery(tmp_path: Path) -> None:
    doc = config_doc(tmp_path, vip=[VIP4, VIP6], client_cert_file="/c.pem", discovery={"enabled": True})
    with pytest.raises(ConfigError, match=r"vip fd00::1 has no seed .* set discovery.networks"):
        parse_config(doc, "guard.json")


def test_reload_keeps_the_old_configuration_when_the_new_one_is_bad(
    rig: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig()
    path = Path(r.guard.config_path or "")
    path.write_text(json.dumps(config_doc(r.tmp_path, port=0)))
    with caplog.at_level(logging.ERROR, logger="kubeha-apiserver-guard"):
        assert not r.guard.reload_config()
    assert "keeping the current configuration" in caplog.text
    assert "port 0 is out of range 1..65535" in caplog.text
    path.write_text(json.dumps(config_doc(r.tmp_path, mode="haproxy")))
    assert not r.guard.reload_config()
    assert r.guard.cfg.mode == "ipvs"


def test_reload_applies_a_new_seed_list_without_touching_the_others(rig: RigFactory) -> None:
    r = rig()
    r.round()
    applied = len(r.ipvs.applied)
    path = Path(r.guard.config_path or "")
    path.write_text(json.dumps(config_doc(r.tmp_path, seeds=["10.0.0.11:6443", "10.0.0.12:6443", "10.0.0.14:6443"])))
    assert r.guard.reload_config()
    new_actions = [a.describe() for a in r.ipvs.applied[applied:]]
    # the new backend is known to nobody yet (weight 0 until probed); the one removed goes; the others stay
    assert new_actions == [
        "add real server 10.0.0.14:6443 to TCP 169.254.100.1:6443 (weight 0, masquerade)",
        "delete real server 10.0.0.13:6443 from TCP 169.254.100.1:6443",
    ]
    r.round()
    assert r.ipvs.weights() == {"10.0.0.11:6443": 1, "10.0.0.12:6443": 1, "10.0.0.14:6443": 1}


def test_haproxy_mode_writes_the_configuration_and_reloads_only_on_change(rig: RigFactory, tmp_path: Path) -> None:
    (tmp_path / "client.crt").write_text(CERT)
    (tmp_path / "client.key").write_text(KEY)
    r = rig(
        mode="haproxy",
        client_cert_file=str(tmp_path / "client.crt"),
        client_key_file=str(tmp_path / "client.key"),
        haproxy={
            "config_path": str(tmp_path / "etc" / "haproxy.cfg"),
            "pem_path": str(tmp_path / "etc" / "client.pem"),
        },
    )
    r.round()
    cfg_text = (tmp_path / "etc" / "haproxy.cfg").read_text()
    assert "    server 10.0.0.13_6443 ipv4@10.0.0.13:6443" in cfg_text
    assert f" crt {tmp_path / 'etc' / 'client.pem'} " in cfg_text
    pem = tmp_path / "etc" / "client.pem"
    assert pem.read_text() == CERT + KEY
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    reload = ["systemctl", "reload", "kubeha-apiserver-haproxy.service"]
    assert r.runner.commands("systemctl") == [reload]
    assert r.ipvs.applied == []

    r.round()
    assert r.runner.commands("systemctl") == []  # same set: byte-identical text, no reload

    r.prober.set("refused", M2)  # haproxy checks for itself: health changes do not rewrite the file
    r.round()
    assert r.runner.commands("systemctl") == []

    r.guard._set_backends(backend_set(r.cfg.seeds, [M4]))
    r.round()
    assert r.runner.commands("systemctl") == [reload]
    assert "10.0.0.14_6443" in (tmp_path / "etc" / "haproxy.cfg").read_text()


def test_an_idle_client_does_not_block_the_metrics_server(rig: RigFactory) -> None:
    """A client that connects and sends nothing (a port scan, a stuck scraper) must not hold up /healthz."""
    r = rig()
    r.round()
    r.round()
    server = MetricsServer(r.guard, "127.0.0.1", 0)
    server.start()
    address = server.server_address[:2]
    idle = [socket.create_connection(address, timeout=5) for _client in range(3)]
    try:
        started = time.monotonic()
        with socket.create_connection(address, timeout=5) as client:
            client.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            answer = client.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"ok\n")
        assert time.monotonic() - started < 2  # not after the idle clients' timeout
        # An idle client is dropped after the handler's timeout: its connection ends (recv returns b"").
        idle[0].settimeout(_guard_metrics._MetricsHandler.timeout + 5)
        assert idle[0].recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_negative_control_a_single_threaded_server_is_blocked_by_an_idle_client(
    rig: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same check against the server class the guard had before (http.server.HTTPServer): /healthz waits."""

    class OldServer(http.server.HTTPServer):
        def __init__(self, guard: Any) -> None:
            self.guard = guard
            super().__init__(("127.0.0.1", 0), _guard_metrics._MetricsHandler)

    r = rig()
    server = OldServer(r.guard)
    server.timeout = None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    monkeypatch.setattr(_guard_metrics._MetricsHandler, "timeout", None)  # as before: no per-connection timeout
    thread.start()
    idle = socket.create_connection(server.server_address[:2], timeout=5)
    try:
        with socket.create_connection(server.server_address[:2], timeout=1) as client:
            client.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            with pytest.raises(TimeoutError):
                client.recv(1)
    finally:
        idle.close()  # frees the server; then it answers the second client and stops
        server.shutdown()
        server.server_close()


def test_connections_beyond_the_bound_are_closed_at_once(rig: RigFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MetricsServer, "MAX_CONNECTIONS", 2)
    r = rig()
    server = MetricsServer(r.guard, "127.0.0.1", 0)
    server.start()
    address = server.server_address[:2]
    idle = [socket.create_connection(address, timeout=5) for _client in range(2)]
    try:
        time.sleep(0.2)  # both are being served (idle, each in its thread)
        with socket.create_connection(address, timeout=2) as extra:
            extra.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert extra.recv(1) == b""  # closed without an answer, not queued
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_haproxy_reload_failure_is_retried_later(rig: RigFactory, tmp_path: Path) -> None:
    r = rig(mode="haproxy", haproxy={"config_path": str(tmp_path / "haproxy.cfg")})
    r.runner.respond(["systemctl"], (1, "", "Job for kubeha-apiserver-haproxy.service failed."))
    r.round()
    assert len(r.runner.commands("systemctl")) == 1
    assert r.guard.snapshot().apply_errors == 1
    assert "kubeha_apiserver_haproxy_refused_total 1" in render_metrics(r.guard.snapshot())
    assert "failed (exit 1): Job for kubeha-apiserver-haproxy.service failed." in r.guard.apply_error()
    r.round()
    assert r.runner.commands("systemctl") == []  # not every round
    r.runner.respond(["systemctl"], (0, "", ""))
    r.clock.now += 30
    r.round()
    assert len(r.runner.commands("systemctl")) == 1


def test_metrics_server_and_healthz(rig: RigFactory) -> None:
    r = rig()
    server = MetricsServer(r.guard, "127.0.0.1", 0)
    server.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with pytest.raises(urllib.error.HTTPError) as caught:
            opener.open(base + "/healthz", timeout=5)
        assert caught.value.code == 503
        r.round()
        with opener.open(base + "/healthz", timeout=5) as answer:
            assert answer.read() == b"ok\n"
        with opener.open(base + "/metrics", timeout=5) as answer:
            assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert 'kubeha_apiserver_backend_up{backend="10.0.0.12:6443"} 1' in answer.read().decode()
        r.clock.now += 10
        with pytest.raises(urllib.error.HTTPError) as caught:
            opener.open(base + "/healthz", timeout=5)
        assert caught.value.code == 503
        with pytest.raises(urllib.error.HTTPError) as caught:
            opener.open(base + "/", timeout=5)
        assert caught.value.code == 404
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def test_main_with_a_bad_configuration_exits_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "guard.json"
    path.write_text(json.dumps({"vip": [VIP4]}))
    assert main(["--config", str(path), "--once"]) == 2
    assert "seeds is required" in caplog.text


def test_main_once(rig: RigFactory) -> None:
    r = rig()
    path = Path(r.guard.config_path or "")
    path.write_text(json.dumps(config_doc(r.tmp_path)))
    assert main(["--config", str(path), "--once"], r.hooks) == 0
    assert r.ipvs.weights() == {"10.0.0.11:6443": 1, "10.0.0.12:6443": 1, "10.0.0.13:6443": 1}
    r.prober.set("fail", M1, M2, M3)
    os.unlink(r.cfg.state_file)
    assert main(["--config", str(path), "--once"], r.hooks) == 1


def test_main_cleanup_removes_everything(rig: RigFactory) -> None:
    r = rig()
    r.round()
    write_state(r.cfg.state_file, make_state([VIP4, "169.254.100.9"], PORT, [M1], {M1: UP}))
    other = Service("10.96.0.1", 443, real_servers=(RealServer("10.0.0.11", 6443),))  # kube-proxy's
    r.ipvs.services[other.key] = other
    path = Path(r.guard.config_path or "")
    path.write_text(json.dumps(config_doc(r.tmp_path)))
    r.runner.calls.clear()
    assert main(["--config", str(path), "--cleanup"], r.hooks) == 0
    assert list(r.ipvs.services) == [other.key]
    assert not os.path.exists(r.cfg.state_file)
    assert ["nft", "delete", "table", "inet", NFT_TABLE] in r.runner.calls
    assert ["ip", "link", "del", "dev", "kha0"] in r.runner.calls


def test_cleanup_reports_failures(rig: RigFactory) -> None:
    r = rig()
    r.runner.respond(["nft", "delete"], (1, "", "Error: Operation not permitted"))
    assert cleanup(r.cfg, r.hooks) == 1


def test_guard_state_health_property() -> None:
    state = GuardState((VIP4,), PORT, ((M1, UP),))
    assert state.health == {M1: UP}


def test_loopback_holds_the_vips_without_touching_its_own_addresses(tmp_path: Path) -> None:
    # Where the kernel has no dummy interfaces (nspawn nodes sharing a host kernel), haproxy mode puts the VIP
    # on lo: only the VIP is added, 127.0.0.1 and any other address stay, and cleanup removes only the VIP.
    runner = FakeRunner()
    lo = {"ifname": "lo", "flags": ["LOOPBACK", "UP"], "addr_info": [
        {"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"},
        {"family": "inet", "local": "10.99.0.1", "prefixlen": 32, "scope": "global"}]}  # fmt: skip
    runner.respond(["ip", "-d", "-j", "addr", "show"], (0, json.dumps([lo]), ""))
    changes = ensure_interface("lo", [VIP4], runner)
    assert changes == [f"ip addr add {VIP4}/32 dev lo"]
    assert not [c for c in runner.calls if c[:3] in (["ip", "addr", "del"], ["ip", "link", "add"])]
    cfg = parse_config(config_doc(tmp_path, mode="haproxy", interface="lo"))
    cleanup = FakeRunner()
    cleanup.respond(["nft", "list"], (1, "", "no such table"))
    removed = remove_plumbing(cfg, cleanup)
    assert removed == [f"address {VIP4}/32 on lo"]
    assert ["ip", "link", "del", "dev", "lo"] not in cleanup.calls


@pytest.fixture
def black_holes() -> Iterator[list[Backend]]:
    """20 listening sockets on loopback that never answer the TLS handshake (accepted by the kernel, never read)."""
    socks = []
    for _port in range(20):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        socks.append(sock)
    try:
        yield [Backend("127.0.0.1", s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def timed_round(tmp_path: Path, backends: list[Backend]) -> float:
    doc = config_doc(tmp_path, mode="haproxy", seeds=[b.endpoint for b in backends], timeout_s=0.3)
    doc["ca_file"] = str(small_ca(tmp_path))  # the probes build a real TLS context
    guard = Guard(parse_config(doc), None, Hooks())
    try:
        started = time.monotonic()
        results = guard._probe_all(backends, guard.cfg.probe_settings())
        took = time.monotonic() - started
    finally:
        guard.close()
    assert len(results) == 20 and not any(r.ok for r in results.values())
    return took


def small_ca(tmp_path: Path) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "ca")])
    now = __import__("datetime").datetime.now(__import__("datetime").UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + __import__("datetime").timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256())
    )  # fmt: skip
    path = tmp_path / "ca.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_many_unanswering_backends_take_one_timeout_not_several(
    tmp_path: Path, black_holes: list[Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real sockets, the guard's real prober and pool: 20 probes (timeout 0.3 s) time out together. Negative
    # control, in the same test for the same load: the pool of 8 the guard had before takes three timeouts in a row.
    sized = timed_round(tmp_path, black_holes)
    monkeypatch.setattr(_guard_daemon, "probe_pool_size", lambda cfg: 8)
    capped = timed_round(tmp_path, black_holes)
    assert capped >= 0.85, (sized, capped)
    print(f"\n20 unanswering backends: {sized:.2f} s with the sized pool, {capped:.2f} s with 8 threads")
    assert sized < 0.6 * capped, (sized, capped)


HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def haproxy_rig(rig: RigFactory, tmp_path: Path, check_command: list[str]) -> Rig:
    """Haproxy mode whose configuration check is run for real (Debian's haproxy, installed by make setup); the
    reload stays a recorded command."""
    r = rig(
        mode="haproxy", haproxy={"config_path": str(tmp_path / "etc" / "haproxy.cfg"), "check_command": check_command}
    )
    fake = r.runner

    def runner(argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        fake(argv, stdin)
        return _node_plumbing.run_command(argv, stdin) if argv[0] in (HAPROXY, "true") else fake.responses_for(argv)

    r.guard.hooks = dataclasses.replace(r.guard.hooks, runner=runner)
    return r


def test_a_configuration_haproxy_refuses_never_replaces_the_one_in_use(rig: RigFactory, tmp_path: Path) -> None:
    # The CA file the checks name goes missing: haproxy -c refuses the next configuration (a fourth master), so the
    # file keeps the one in use, nothing is reloaded, the refusal is counted and logged once, and it is checked
    # again only at the retry pace. Once the CA is back, the next check passes and haproxy is reloaded.
    small_ca(tmp_path)
    r = haproxy_rig(rig, tmp_path, [HAPROXY, "-c", "-f"])
    config = tmp_path / "etc" / "haproxy.cfg"
    r.round()
    assert len(r.runner.commands("systemctl")) == 1 and r.guard.apply_error() is None
    in_use = config.read_text()
    (tmp_path / "ca.crt").unlink()
    r.guard._set_backends(backend_set(r.cfg.seeds, [M4]))
    r.round()
    assert config.read_text() == in_use
    assert r.runner.commands("systemctl") == []
    assert sorted(p.name for p in config.parent.iterdir()) == ["haproxy.cfg"]  # no candidate left behind
    snap = r.guard.snapshot()
    assert snap.haproxy_refused == 1 and snap.apply_errors == 1
    assert "haproxy refuses the new configuration" in r.guard.apply_error()
    assert str(tmp_path / "ca.crt") in r.guard.apply_error()  # haproxy's own words name the missing file
    r.round()
    assert r.runner.commands(HAPROXY) == [] and r.guard.snapshot().haproxy_refused == 1  # not every round
    small_ca(tmp_path)
    r.clock.now += 30
    r.round()
    assert "10.0.0.14_6443" in config.read_text()
    assert len(r.runner.commands("systemctl")) == 1 and r.guard.apply_error() is None


def test_negative_control_without_the_check_the_refused_configuration_lands_in_the_file(
    rig: RigFactory, tmp_path: Path
) -> None:
    """As before the check: the same change is written in place, and haproxy's check of that file (the unit's
    ExecStartPre and ExecReload) fails: the next start of haproxy would fail."""
    small_ca(tmp_path)
    r = haproxy_rig(rig, tmp_path, ["true"])
    config = tmp_path / "etc" / "haproxy.cfg"
    r.round()
    (tmp_path / "ca.crt").unlink()
    r.guard._set_backends(backend_set(r.cfg.seeds, [M4]))
    r.round()
    assert "10.0.0.14_6443" in config.read_text()
    assert _node_plumbing.run_command([HAPROXY, "-c", "-q", "-f", str(config)])[0] != 0


def test_periodic_steps_keep_a_fixed_rate_and_a_slow_one_is_followed_at_once() -> None:
    # The fast check every 0.25 s: a quick step keeps the pace; a connect that waited out its 0.5 s timeout is
    # followed by the next check at once (not 0.25 s later), and a slow step causes no burst to catch up.
    assert next_due(10.0, 0.25, now=10.01) == 10.25
    assert next_due(10.0, 0.25, now=10.5) == 10.5
    assert next_due(10.0, 0.25, now=11.7) == 11.7


def test_a_black_hole_is_taken_down_after_two_timeouts_not_two_timeouts_and_two_intervals(rig: RigFactory) -> None:
    """The real loop of the fast check (a thread and its Event), with a connector that waits out a 0.3 s timeout
    every time, as connects to a black-holed master do, and an interval of 0.3 s: with fall 2 the master is down
    after two timeouts (0.6 s; bounded here at 0.85 s). Negative control: with the pace the loop had before (the
    interval waited after each step) it takes 0.3 + 0.3 + 0.3 = 0.9 s at the least, and this test fails."""
    r = rig()
    r.round()
    r.guard.cfg = dataclasses.replace(r.guard.cfg, fast_check_interval_s=0.3, connect_timeout_s=0.3)

    def connector(backend: Backend, timeout: float) -> ProbeResult:
        if backend == M3:
            time.sleep(timeout)
            return ProbeResult(backend, False, timeout, f"connect unanswered after {timeout:g}s", unanswered=True)
        return ProbeResult(backend, True, 0.001)

    r.guard.hooks = dataclasses.replace(r.guard.hooks, connector=connector)
    started = time.monotonic()
    r.guard._every("fast-check", lambda: r.guard.cfg.fast_check_interval_s, r.guard.fast_check_once)
    try:
        deadline = started + 2.0  # bounded
        while r.ipvs.weights()["10.0.0.13:6443"] != 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        took = time.monotonic() - started
    finally:
        r.guard.request_stop()
    assert r.ipvs.weights()["10.0.0.13:6443"] == 0
    assert took < 0.85, took


def churn(r: Rig, rounds: int) -> None:
    """Discovery finds a different extra master every time (a cluster whose masters are replaced over and over)."""
    for n in range(rounds):
        r.discovered = frozenset({Backend(f"10.0.{1 + n // 250}.{1 + n % 250}", 6443)})
        for _answer in range(_guard_discovery.DISCOVERY_MISSES):  # the one before leaves after this many answers
            assert r.guard.discover_once()
        r.round()
        r.round()  # rise 2: it comes up, so it has a latency and a transition


def test_backend_churn_keeps_memory_bounded(rig: RigFactory) -> None:
    r = rig(client_cert_file="/c.pem", discovery={"enabled": True, "networks": ["10.0.0.0/16"]})
    r.round()
    churn(r, 200)
    current = set(r.guard.backends)
    assert set(r.guard.latency) <= current
    departed = {backend for backend, _to in r.guard.transitions} - current
    assert len(departed) == _guard_daemon.DEPARTED_KEPT  # the newest ones keep their counters, for rates over them
    assert Backend("10.0.1.199", 6443) in departed  # the last to leave (n = 198; n = 199 is the current one)
    assert Backend("10.0.1.168", 6443) in departed and Backend("10.0.1.167", 6443) not in departed  # 32 newest
    assert len(r.guard.tracker.health()) == len(current)


def test_negative_control_without_the_bound_churn_grows_memory(
    rig: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_guard_daemon, "DEPARTED_KEPT", 10**9)
    r = rig(client_cert_file="/c.pem", discovery={"enabled": True, "networks": ["10.0.0.0/16"]})
    r.round()
    churn(r, 200)
    assert len({backend for backend, _to in r.guard.transitions} - set(r.guard.backends)) == 199
