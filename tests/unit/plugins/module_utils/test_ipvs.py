# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Pure logic of module_utils/_ipvs_model and _ipvs: validation, planning, presentation and netlink parsing.

No pyroute2 and no kernel: netlink messages are replaced by tiny stand-ins with ``get_attr``.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs import (
    ensure,
    fwd_method_from_attrs,
    load_kernel_modules,
    netlink_error_message,
    real_server_from_attrs,
    service_from_attrs,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs_model import (
    Action,
    IPVSError,
    RealServer,
    Service,
    desired_from_params,
    diff,
    plan,
    simulate,
    to_dict,
)
from fake_ipvs import FakeIPVSAdapter

VIP = "169.254.100.1"


def params(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "address": VIP,
        "port": 6443,
        "protocol": "tcp",
        "scheduler": "rr",
        "persistence_timeout": None,
        "real_servers": [
            {"address": "10.0.0.1", "port": 6443, "weight": 1},
            {"address": "10.0.0.2", "port": 6443, "weight": 1},
        ],
        "purge_real_servers": True,
        "forwarding": "masquerade",
        "state": "present",
    }
    base.update(overrides)
    return base


def rs(address: str, weight: int = 1, port: int = 6443, forwarding: str = "masquerade", **stats: int) -> RealServer:
    return RealServer(address, port, weight, forwarding, **stats)


def svc(*real_servers: RealServer, **fields: Any) -> Service:
    return Service(
        address=fields.pop("address", VIP), port=fields.pop("port", 6443), real_servers=real_servers, **fields
    )


def kinds(actions: list[Action]) -> list[str]:
    return [a.kind for a in actions]


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def test_desired_from_params_builds_the_model() -> None:
    desired = desired_from_params(params(scheduler="wrr", persistence_timeout=300, forwarding="direct"))
    assert desired == Service(
        VIP,
        6443,
        "tcp",
        "wrr",
        300,
        (rs("10.0.0.1", forwarding="direct"), rs("10.0.0.2", forwarding="direct")),
    )


def test_defaults_when_optional_params_are_missing() -> None:
    desired = desired_from_params({"address": VIP, "port": 80, "real_servers": [{"address": "10.0.0.1", "port": 80}]})
    assert desired == Service(VIP, 80, "tcp", "rr", None, (RealServer("10.0.0.1", 80, 1, "masquerade"),))


def test_persistence_timeout_zero_means_not_persistent() -> None:
    assert desired_from_params(params(persistence_timeout=0)).persistence_timeout is None


def test_ipv6_addresses_are_normalised() -> None:
    desired = desired_from_params(
        params(address="FD00:0:0::0100", real_servers=[{"address": "fd00::0001", "port": 6443, "weight": 1}])
    )
    assert desired.address == "fd00::100"
    assert desired.real_servers == (RealServer("fd00::1", 6443),)
    assert RealServer("fd00::0001", 6443) == RealServer("fd00::1", 6443)
    assert desired.label == "TCP [fd00::100]:6443"


def test_ipv6_spelled_differently_is_a_no_op() -> None:
    current = Service("fd00::100", 6443, real_servers=(RealServer("fd00::1", 6443),))
    desired = desired_from_params(
        params(address="fd00:0::100", real_servers=[{"address": "fd00::0001", "port": 6443, "weight": 1}])
    )
    assert plan(current, desired, purge_real_servers=True) == []


def test_real_server_order_does_not_matter() -> None:
    a = desired_from_params(params())
    b = desired_from_params(params(real_servers=list(reversed(params()["real_servers"]))))
    assert a == b
    assert plan(a, b, purge_real_servers=True) == []


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"address": "169.254.100.300"}, ["'169.254.100.300'", "not a valid IPv4 or IPv6 address"]),
        ({"address": "fd00::zz"}, ["'fd00::zz'", "not a valid"]),
        ({"address": ""}, ["''", "not a valid"]),
        ({"address": None}, ["None", "not a valid"]),
        ({"port": 0}, ["port 0", "out of range 1..65535"]),
        ({"port": 65536}, ["port 65536", "out of range 1..65535"]),
        ({"port": "6443"}, ["port '6443'", "not an integer"]),
        ({"port": True}, ["port True", "not an integer"]),
        ({"protocol": "sctp"}, ["'sctp'", "tcp, udp"]),
        ({"scheduler": "roundrobin"}, ["scheduler 'roundrobin'", "unknown", "rr, wrr", "twos"]),
        ({"persistence_timeout": -1}, ["persistence_timeout -1", "negative"]),
        ({"persistence_timeout": 2**32}, [f"persistence_timeout {2**32}", "too large"]),
        ({"forwarding": "nat"}, ["forwarding 'nat'", "masquerade, tunnel, direct"]),
        (
            {"real_servers": [{"address": "10.0.0.256", "port": 6443}]},
            ["real server address '10.0.0.256'", "not a valid"],
        ),
        (
            {"real_servers": [{"address": "10.0.0.1", "port": 70000}]},
            ["port of real server 10.0.0.1 70000", "out of range 1..65535"],
        ),
        (
            {"real_servers": [{"address": "10.0.0.1", "port": 6443, "weight": 65536}]},
            ["weight of real server 10.0.0.1:6443 65536", "out of range 0..65535"],
        ),
        (
            {"real_servers": [{"address": "10.0.0.1", "port": 6443, "weight": -1}]},
            ["weight of real server 10.0.0.1:6443 -1", "out of range 0..65535"],
        ),
        (
            {"real_servers": [{"address": "fd00::1", "port": 6443}]},
            ["real server fd00::1 is IPv6", f"service address {VIP} is IPv4", "same address family"],
        ),
        (
            {
                "real_servers": [
                    {"address": "10.0.0.1", "port": 6443, "weight": 1},
                    {"address": "10.0.0.1", "port": 6443, "weight": 5},
                ]
            },
            ["real server 10.0.0.1:6443", "listed more than once"],
        ),
        ({"real_servers": ["10.0.0.1:6443"]}, ["real_servers[0]", "'10.0.0.1:6443'", "not a dict"]),
    ],
)
def test_bad_input_names_the_value_and_the_reason(overrides: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(IPVSError) as excinfo:
        desired_from_params(params(**overrides))
    message = str(excinfo.value)
    for fragment in fragments:
        assert fragment in message


def test_ipv6_duplicates_are_detected_after_normalisation() -> None:
    servers = [{"address": "fd00::1", "port": 6443}, {"address": "fd00::0001", "port": 6443}]
    with pytest.raises(IPVSError, match=r"real server \[fd00::1\]:6443 is listed more than once"):
        desired_from_params(params(address="fd00::100", real_servers=servers))


def test_ipv6_service_rejects_ipv4_real_server() -> None:
    with pytest.raises(IPVSError, match=r"real server 10\.0\.0\.1 is IPv4"):
        desired_from_params(params(address="fd00::100"))


def test_same_address_on_other_ports_is_not_a_duplicate() -> None:
    servers = [{"address": "10.0.0.1", "port": 6443}, {"address": "10.0.0.1", "port": 6444}]
    assert len(desired_from_params(params(real_servers=servers)).real_servers) == 2


@pytest.mark.parametrize(
    "scheduler", ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"]
)
def test_every_known_scheduler_is_accepted(scheduler: str) -> None:
    assert desired_from_params(params(scheduler=scheduler)).scheduler == scheduler


def test_weight_zero_is_allowed() -> None:
    servers = [{"address": "10.0.0.1", "port": 6443, "weight": 0}]
    assert desired_from_params(params(real_servers=servers)).real_servers[0].weight == 0


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------


def test_create_adds_the_service_then_each_real_server() -> None:
    desired = svc(rs("10.0.0.1"), rs("10.0.0.2"))
    actions = plan(None, desired, purge_real_servers=True)
    assert actions == [
        Action("add_service", desired.bare()),
        Action("add_dest", desired.bare(), rs("10.0.0.1")),
        Action("add_dest", desired.bare(), rs("10.0.0.2")),
    ]


def test_create_without_real_servers() -> None:
    assert kinds(plan(None, svc(), purge_real_servers=True)) == ["add_service"]


def test_rerun_is_a_no_op() -> None:
    desired = svc(rs("10.0.0.1"), rs("10.0.0.2"), scheduler="wrr", persistence_timeout=60)
    current = replace(desired, real_servers=(rs("10.0.0.2", active_connections=7), rs("10.0.0.1")))
    assert plan(current, desired, purge_real_servers=True) == []
    assert plan(current, desired, purge_real_servers=False) == []


def test_scheduler_change_edits_the_service_in_place() -> None:
    current = svc(rs("10.0.0.1"), scheduler="rr")
    desired = svc(rs("10.0.0.1"), scheduler="wlc")
    actions = plan(current, desired, purge_real_servers=True)
    assert actions == [Action("edit_service", desired.bare())]
    assert "delete_service" not in kinds(actions)
    assert "add_service" not in kinds(actions)


@pytest.mark.parametrize(("before", "after"), [(None, 300), (300, None), (300, 600)])
def test_persistence_change_edits_the_service(before: int | None, after: int | None) -> None:
    current = svc(rs("10.0.0.1"), persistence_timeout=before)
    desired = svc(rs("10.0.0.1"), persistence_timeout=after)
    assert plan(current, desired, purge_real_servers=True) == [Action("edit_service", desired.bare())]


def test_add_real_server() -> None:
    current = svc(rs("10.0.0.1"))
    desired = svc(rs("10.0.0.1"), rs("10.0.0.3"))
    assert plan(current, desired, purge_real_servers=True) == [Action("add_dest", desired.bare(), rs("10.0.0.3"))]


def test_remove_real_server_with_purge() -> None:
    current = svc(rs("10.0.0.1"), rs("10.0.0.2"))
    desired = svc(rs("10.0.0.1"))
    assert plan(current, desired, purge_real_servers=True) == [Action("del_dest", desired.bare(), rs("10.0.0.2"))]


def test_unlisted_real_servers_are_kept_without_purge() -> None:
    current = svc(rs("10.0.0.1"), rs("10.0.0.2"))
    desired = svc(rs("10.0.0.1"))
    assert plan(current, desired, purge_real_servers=False) == []


def test_without_purge_listed_servers_are_still_added_and_changed() -> None:
    current = svc(rs("10.0.0.1"), rs("10.0.0.2"))
    desired = svc(rs("10.0.0.1", weight=3), rs("10.0.0.4"))
    assert kinds(plan(current, desired, purge_real_servers=False)) == ["add_dest", "set_dest"]


def test_reweight_is_set_dest_in_place() -> None:
    current = svc(rs("10.0.0.1"), rs("10.0.0.2"))
    desired = svc(rs("10.0.0.1", weight=0), rs("10.0.0.2"))
    assert plan(current, desired, purge_real_servers=True) == [
        Action("set_dest", desired.bare(), rs("10.0.0.1", weight=0))
    ]


def test_negative_control_weight_change_never_deletes_a_destination() -> None:
    """A plan that deleted and re-added the destination would cut its live connections."""
    current = svc(rs("10.0.0.1", weight=1), rs("10.0.0.2"))
    desired = svc(rs("10.0.0.1", weight=9), rs("10.0.0.2"))
    for purge in (True, False):
        actions = plan(current, desired, purge_real_servers=purge)
        assert actions, "a weight change must produce an action"
        assert "del_dest" not in kinds(actions)
        assert "add_dest" not in kinds(actions)
        assert "delete_service" not in kinds(actions)


def test_forwarding_change_is_set_dest() -> None:
    current = svc(rs("10.0.0.1"), rs("10.0.0.2"))
    desired = svc(rs("10.0.0.1", forwarding="direct"), rs("10.0.0.2", forwarding="direct"))
    actions = plan(current, desired, purge_real_servers=True)
    assert kinds(actions) == ["set_dest", "set_dest"]
    assert {a.real_server.forwarding for a in actions if a.real_server} == {"direct"}


def test_local_forwarding_read_back_is_not_drift() -> None:
    current = svc(rs("10.0.0.1", forwarding="local"))
    assert plan(current, svc(rs("10.0.0.1")), purge_real_servers=True) == []
    assert kinds(plan(current, svc(rs("10.0.0.1", weight=2)), purge_real_servers=True)) == ["set_dest"]


def test_absent_deletes_an_existing_service() -> None:
    current = svc(rs("10.0.0.1"))
    assert plan(current, None, purge_real_servers=True) == [Action("delete_service", current.bare())]


def test_absent_and_missing_is_a_no_op() -> None:
    assert plan(None, None, purge_real_servers=True) == []


def test_additions_come_before_deletions_when_the_set_is_replaced() -> None:
    current = svc(rs("10.0.0.1"), rs("10.0.0.2"))
    desired = svc(rs("10.0.0.3"), rs("10.0.0.4"), scheduler="wrr")
    actions = plan(current, desired, purge_real_servers=True)
    assert kinds(actions) == ["edit_service", "add_dest", "add_dest", "del_dest", "del_dest"]
    # the service never runs empty: replaying the plan one step at a time keeps a real server
    state: Service | None = current
    for action in actions:
        state = simulate(state, [action])
        assert state is not None and state.real_servers


def test_plan_refuses_to_mix_services() -> None:
    with pytest.raises(IPVSError, match="another service"):
        plan(svc(port=443), svc(port=6443), purge_real_servers=True)


@pytest.mark.parametrize("purge", [True, False])
def test_simulating_the_plan_reaches_the_desired_state(purge: bool) -> None:
    current = svc(rs("10.0.0.1", weight=2), rs("10.0.0.9", active_connections=4), scheduler="lc")
    desired = svc(rs("10.0.0.1"), rs("10.0.0.2"), scheduler="rr", persistence_timeout=30)
    after = simulate(current, plan(current, desired, purge))
    assert after is not None
    assert plan(after, desired, purge) == []
    if purge:
        assert after == desired
    else:
        assert [r.address for r in after.real_servers] == ["10.0.0.1", "10.0.0.2", "10.0.0.9"]


def test_simulate_keeps_connection_counters_on_set_dest() -> None:
    current = svc(rs("10.0.0.1", active_connections=5, inactive_connections=2))
    after = simulate(current, plan(current, svc(rs("10.0.0.1", weight=4)), True))
    assert after is not None
    assert after.real_servers[0].weight == 4
    assert after.real_servers[0].active_connections == 5
    assert after.real_servers[0].inactive_connections == 2


def test_stats_are_out_of_equality() -> None:
    assert rs("10.0.0.1", active_connections=1) == rs("10.0.0.1", inactive_connections=9)


def test_action_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="update"):
        Action("update", svc())


def test_action_texts() -> None:
    service = svc(scheduler="wrr", persistence_timeout=300)
    assert Action("add_service", service).describe() == f"add service TCP {VIP}:6443 (scheduler wrr, persistence 300s)"
    assert Action("edit_service", svc()).describe() == f"edit service TCP {VIP}:6443 (scheduler rr, persistence off)"
    assert Action("delete_service", svc()).describe() == f"delete service TCP {VIP}:6443"
    dest = rs("10.0.0.1", weight=3, forwarding="tunnel")
    assert Action("add_dest", svc(), dest).describe() == (
        f"add real server 10.0.0.1:6443 to TCP {VIP}:6443 (weight 3, tunnel)"
    )
    assert Action("set_dest", svc(), dest).describe() == (
        f"set real server 10.0.0.1:6443 of TCP {VIP}:6443 (weight 3, tunnel)"
    )
    assert Action("del_dest", svc(), dest).describe() == f"delete real server 10.0.0.1:6443 from TCP {VIP}:6443"
    assert Action("add_dest", svc(), dest).operation() == f"adding real server 10.0.0.1:6443 to TCP {VIP}:6443"


# --------------------------------------------------------------------------------------------------
# Presentation
# --------------------------------------------------------------------------------------------------


def test_to_dict_and_diff() -> None:
    before = svc(rs("10.0.0.2", active_connections=3), rs("10.0.0.10"))
    after = svc(rs("10.0.0.2", weight=0), rs("10.0.0.10"), scheduler="wrr")
    returned = to_dict(before)
    assert returned == {
        "address": VIP,
        "port": 6443,
        "protocol": "tcp",
        "scheduler": "rr",
        "persistence_timeout": None,
        "real_servers": [
            {
                "address": "10.0.0.2",
                "port": 6443,
                "weight": 1,
                "forwarding": "masquerade",
                "active_connections": 3,
                "inactive_connections": 0,
            },
            {
                "address": "10.0.0.10",
                "port": 6443,
                "weight": 1,
                "forwarding": "masquerade",
                "active_connections": 0,
                "inactive_connections": 0,
            },
        ],
    }
    result = diff(before, after)
    assert result["before"]["scheduler"] == "rr"
    assert result["after"]["scheduler"] == "wrr"
    assert [r["address"] for r in result["after"]["real_servers"]] == ["10.0.0.2", "10.0.0.10"]  # numeric order
    assert "active_connections" not in result["before"]["real_servers"][0]
    assert diff(None, None) == {"before": {}, "after": {}}


# --------------------------------------------------------------------------------------------------
# Netlink parsing and errors (stand-ins for pyroute2 messages)
# --------------------------------------------------------------------------------------------------


class Attrs:
    """Stand-in for a decoded pyroute2 NLA: only ``get_attr`` is used."""

    def __init__(self, **attrs: Any) -> None:
        self.attrs = attrs

    def get_attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


def dest_attrs(fwd: int, **more: Any) -> Attrs:
    return Attrs(
        IPVS_DEST_ATTR_ADDR="10.0.0.1",
        IPVS_DEST_ATTR_PORT=6443,
        IPVS_DEST_ATTR_FWD_METHOD=fwd,
        IPVS_DEST_ATTR_WEIGHT=5,
        IPVS_DEST_ATTR_ACTIVE_CONNS=2,
        IPVS_DEST_ATTR_INACT_CONNS=1,
        **more,
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(0, "masquerade"), (2, "tunnel"), (3, "direct"), (1, "local"), (0x100 | 3, "direct"), (0x0200 | 0, "masquerade")],
)
def test_fwd_method_is_read_from_the_raw_attribute_masked(raw: int, expected: str) -> None:
    assert fwd_method_from_attrs(dest_attrs(raw)) == expected


def test_fwd_method_ignores_a_decoded_fwd_method_field() -> None:
    """pyroute2's from_message keeps the default fwd_method=3: only the raw attribute counts."""
    attrs = dest_attrs(0)
    attrs.attrs["fwd_method"] = 3
    assert fwd_method_from_attrs(attrs) == "masquerade"


def test_fwd_method_missing_is_an_error() -> None:
    with pytest.raises(IPVSError, match="forwarding method"):
        fwd_method_from_attrs(Attrs())


def test_real_server_from_attrs() -> None:
    parsed = real_server_from_attrs(dest_attrs(0))
    assert parsed == RealServer("10.0.0.1", 6443, 5, "masquerade")
    assert (parsed.active_connections, parsed.inactive_connections) == (2, 1)


def svc_attrs(**more: Any) -> Attrs:
    base = {
        "IPVS_SVC_ATTR_AF": 10,
        "IPVS_SVC_ATTR_PROTOCOL": 17,
        "IPVS_SVC_ATTR_ADDR": "fd00:0::0100",
        "IPVS_SVC_ATTR_PORT": 53,
        "IPVS_SVC_ATTR_SCHED_NAME": "wlc",
        "IPVS_SVC_ATTR_FLAGS": {"flags": 0x2, "mask": 0xFFFFFFFF},
        "IPVS_SVC_ATTR_TIMEOUT": 300,
    }
    base.update(more)
    return Attrs(**base)


def test_service_from_attrs_reads_persistence_only_with_the_flag() -> None:
    assert service_from_attrs(svc_attrs()) == Service("fd00::100", 53, "udp", "wlc", None)
    persistent = svc_attrs(IPVS_SVC_ATTR_FLAGS={"flags": 0x3, "mask": 0xFFFFFFFF})
    assert service_from_attrs(persistent) == Service("fd00::100", 53, "udp", "wlc", 300)


def test_service_from_attrs_skips_fwmark_and_other_protocols() -> None:
    assert service_from_attrs(svc_attrs(IPVS_SVC_ATTR_FWMARK=7)) is None
    assert service_from_attrs(svc_attrs(IPVS_SVC_ATTR_PROTOCOL=132)) is None


class FakeNetlinkError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code, "boom")
        self.code = code


def test_netlink_error_message_names_operation_object_and_errno() -> None:
    action = Action("add_dest", svc(), rs("10.0.0.1"))
    message = netlink_error_message(action.operation(), FakeNetlinkError(errno.EEXIST))
    assert message == f"adding real server 10.0.0.1:6443 to TCP {VIP}:6443: EEXIST"


def test_netlink_error_message_variants() -> None:
    assert netlink_error_message("deleting x", FakeNetlinkError(-errno.ENOENT)) == "deleting x: ENOENT"
    assert netlink_error_message("x", FakeNetlinkError(99999)) == "x: errno 99999"
    assert "CAP_NET_ADMIN" in netlink_error_message("x", FakeNetlinkError(errno.EPERM))
    assert netlink_error_message("x", RuntimeError("no code")) == "x: no code"


# --------------------------------------------------------------------------------------------------
# Kernel modules
# --------------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self, results: dict[str, tuple[int, str, str]] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.results = results or {}

    def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        return self.results.get(argv[-1], (0, "", ""))


@pytest.fixture
def roots(tmp_path: Any) -> dict[str, str]:
    for sub in ("proc/net", "sys/module", "modules"):
        (tmp_path / sub).mkdir(parents=True)
    return {
        "proc_root": str(tmp_path / "proc"),
        "sys_root": str(tmp_path / "sys"),
        "modules_root": str(tmp_path / "modules"),
    }


def test_load_kernel_modules_loads_both(roots: dict[str, str]) -> None:
    run = Recorder()
    assert load_kernel_modules("wrr", run, modprobe="/sbin/modprobe", **roots) == ["ip_vs", "ip_vs_wrr"]
    assert run.calls == [["/sbin/modprobe", "ip_vs"], ["/sbin/modprobe", "ip_vs_wrr"]]


def test_load_kernel_modules_skips_what_is_present(roots: dict[str, str], tmp_path: Any) -> None:
    (tmp_path / "proc/net/ip_vs").write_text("")
    (tmp_path / "sys/module/ip_vs_rr").mkdir()
    run = Recorder()
    assert load_kernel_modules("rr", run, **roots) == []
    assert run.calls == []


def test_load_kernel_modules_knows_built_in_schedulers(roots: dict[str, str], tmp_path: Any) -> None:
    (tmp_path / "proc/net/ip_vs").write_text("")
    release = tmp_path / "modules" / os.uname().release
    release.mkdir()
    (release / "modules.builtin").write_text("kernel/net/netfilter/ipvs/ip_vs_mh.ko\n")
    run = Recorder()
    assert load_kernel_modules("mh", run, **roots) == []
    assert load_kernel_modules("sh", run, **roots) == ["ip_vs_sh"]


def test_modprobe_ip_vs_failure_says_ipvs_is_not_available(roots: dict[str, str]) -> None:
    run = Recorder({"ip_vs": (1, "", "modprobe: FATAL: Module ip_vs not found in directory /lib/modules/x\n")})
    with pytest.raises(IPVSError) as excinfo:
        load_kernel_modules("rr", run, **roots)
    assert str(excinfo.value) == (
        "IPVS is not available in this kernel: modprobe ip_vs failed: "
        "modprobe: FATAL: Module ip_vs not found in directory /lib/modules/x"
    )


def test_modprobe_scheduler_failure_names_the_scheduler(roots: dict[str, str], tmp_path: Any) -> None:
    (tmp_path / "proc/net/ip_vs").write_text("")
    run = Recorder({"ip_vs_twos": (1, "", "not found")})
    with pytest.raises(IPVSError, match=r"scheduler 'twos' is not available.*ip_vs_twos failed: not found"):
        load_kernel_modules("twos", run, **roots)


# --------------------------------------------------------------------------------------------------
# ensure(): the whole run with a fake adapter
# --------------------------------------------------------------------------------------------------


def test_ensure_applies_reads_back_and_is_idempotent(tmp_path: Any) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net/ip_vs").write_text("")
    adapter = FakeIPVSAdapter(None)
    run = Recorder()
    outcome = ensure(params(), lambda: adapter, run, check_mode=False, proc_root=str(tmp_path))
    assert outcome.changed
    assert kinds(adapter.applied) == ["add_service", "add_dest", "add_dest"]
    assert outcome.service["real_servers"][1]["address"] == "10.0.0.2"
    assert adapter.closed
    again = ensure(params(), lambda: adapter, run, check_mode=False, proc_root=str(tmp_path))
    assert not again.changed
    assert again.actions == []


def test_ensure_check_mode_without_ip_vs_loads_nothing(tmp_path: Any) -> None:
    adapter = FakeIPVSAdapter(svc(rs("10.0.0.7")))  # must not be read: ip_vs is not loaded
    run = Recorder()
    outcome = ensure(params(), lambda: adapter, run, check_mode=True, proc_root=str(tmp_path))
    assert run.calls == []
    assert adapter.applied == []
    assert outcome.changed
    assert outcome.diff["before"] == {}
    assert outcome.diff["after"]["address"] == VIP


def test_ensure_reports_non_convergence(tmp_path: Any) -> None:
    class Stubborn(FakeIPVSAdapter):
        def apply(self, actions: list[Action]) -> None:
            self.applied.extend(actions)  # the kernel ignores us

    (tmp_path / "net").mkdir()
    (tmp_path / "net/ip_vs").write_text("")
    adapter = Stubborn(svc(rs("10.0.0.1"), rs("10.0.0.2", weight=3)))
    with pytest.raises(IPVSError, match=r"did not converge.*set real server 10\.0\.0\.2:6443"):
        ensure(params(), lambda: adapter, Recorder(), check_mode=False, proc_root=str(tmp_path))
    assert adapter.closed


# What a fresh interpreter has loaded after taking pyroute2's IPVS classes one way or the other.
IMPORT_PROBE = """
import json, sys
{how}
print(json.dumps({{"ipvs": classes[0].__module__ + "." + classes[0].__name__,
                  "package": "pyroute2" in sys.modules, "ndb": "pyroute2.ndb.main" in sys.modules}}))
"""


def probe_imports(how: str) -> dict:
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}  # where this run finds ansible_collections
    argv = [sys.executable, "-c", IMPORT_PROBE.format(how=how)]
    return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout)


def test_the_adapter_loads_the_ipvs_classes_without_pyroute2s_package_init():
    lean = "from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs import _load_pyroute2_ipvs\n"
    lean += "classes = _load_pyroute2_ipvs()"
    assert probe_imports(lean) == {"ipvs": "pyroute2.ipvs.IPVS", "package": False, "ndb": False}
    # The negative control: the plain import runs the package's __init__, which loads NDB and the rest.
    assert probe_imports("from pyroute2 import IPVS\nclasses = [IPVS]")["ndb"] is True
