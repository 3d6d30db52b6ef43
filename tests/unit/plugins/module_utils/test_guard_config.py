# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guard's configuration (module_utils/_guard_config): every key, its defaults and its errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import (
    ConfigError,
    load_config,
    parse_config,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._probe import ProbeSettings
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend
from guard_rig import (
    M1,
    M2,
    M3,
    M6,
    VIP4,
    VIP6,
    RigFactory,
    config_doc,
    rigs,
)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[RigFactory]:
    yield from rigs(tmp_path)


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


def test_config_full_example(tmp_path: Path) -> None:
    doc = config_doc(
        tmp_path,
        vip=[VIP4, "FD00::0001"],
        seeds=["10.0.0.12:6443", "[fd00::11]:6443", "10.0.0.11:6443"],
        prefer_local=True,
        client_cert_file="/var/lib/kubelet/pki/kubelet-client-current.pem",
        discovery={"enabled": True, "interval_s": 30},
        haproxy={"reload_command": ["systemctl", "reload", "x.service"]},
    )
    cfg = parse_config(doc, "guard.json")
    assert cfg.vips == (VIP4, VIP6)
    assert cfg.seeds == (M1, M2, M6)
    assert cfg.client_key_file == cfg.client_cert_file  # one PEM holding both
    assert cfg.discovery.enabled and cfg.discovery.interval_s == 30.0
    assert cfg.haproxy.reload_command == ("systemctl", "reload", "x.service")
    assert cfg.haproxy.config_path == "/etc/kubeha-apiserver/haproxy.cfg"
    assert cfg.probe_settings() == ProbeSettings(
        str(tmp_path / "ca.crt"), cfg.client_cert_file, cfg.client_cert_file, 1.0
    )
    assert cfg.haproxy_settings().client_pem_file == "/etc/kubeha-apiserver/haproxy-client.pem"


def test_config_defaults(tmp_path: Path) -> None:
    cfg = parse_config({"vip": [VIP4], "seeds": ["10.0.0.11:6443"], "ca_file": "/etc/kubernetes/pki/ca.crt"})
    assert (cfg.port, cfg.mode, cfg.interval_s, cfg.timeout_s, cfg.rise, cfg.fall) == (6443, "ipvs", 1.0, 1.0, 2, 2)
    assert cfg.fast_check_interval_s == 0.25
    assert cfg.state_file == "/var/lib/kubeha-apiserver/state.json"
    assert (cfg.metrics_address, cfg.metrics_port, cfg.interface) == ("127.0.0.1", 9445, "kha0")
    assert not cfg.discovery.enabled
    assert cfg.haproxy.reload_command == ("systemctl", "reload", "kubeha-apiserver-haproxy.service")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"port": 70000}, "guard.json: port 70000 is out of range 1..65535"),
        ({"port": "6443"}, 'guard.json: port "6443" is not an integer'),
        ({"vip": ["169.254.100"]}, "guard.json: vip\\[0\\] '169.254.100' is not an IPv4 or IPv6 address"),
        ({"vip": [VIP4, "169.254.100.2"]}, "must hold at most one IPv4 and one IPv6 address"),
        ({"vip": []}, "vip \\[\\] is not a list of one or two addresses"),
        ({"mode": "nginx"}, 'guard.json: mode "nginx" is not one of ipvs, nftables, haproxy'),
        ({"seeds": []}, "seeds \\[\\] is not a non-empty list"),
        ({"seeds": ["10.0.0.11"]}, "guard.json: seeds\\[0\\] '10.0.0.11' is not ADDRESS:PORT"),
        ({"seeds": ["fd00::11:6443"]}, "seeds\\[0\\] 'fd00::11:6443': write an IPv6 address in brackets"),
        ({"seeds": ["10.0.0.11:6443", "10.0.0.11:6443"]}, "seeds\\[1\\] 10.0.0.11:6443 is listed twice"),
        ({"seeds": ["[fd00::11]:6443"]}, "seed \\[fd00::11\\]:6443 is IPv6 but no vip is"),
        ({"vip": [VIP4, VIP6]}, "vip fd00::1 has no seed of its address family \\(IPv6\\) and discovery is off"),
        ({"prefer_local": "yes"}, 'guard.json: prefer_local "yes" is not true or false'),
        ({"rise": 0}, "guard.json: rise 0 is out of range 1..100"),
        ({"interval_s": 0}, "guard.json: interval_s 0 is out of range 0.1..3600"),
        ({"fast_check_interval_s": 0.01}, "fast_check_interval_s 0.01 is out of range 0.05..60 \\(or 0 to disable\\)"),
        ({"ca_file": None}, "guard.json: ca_file is required"),
        ({"ca_file": "ca.crt"}, 'ca_file "ca.crt" is not an absolute path'),
        ({"client_key_file": "/etc/k.key"}, "client_key_file /etc/k.key is set but client_cert_file is not"),
        ({"interface": "a-very-long-interface"}, 'interface "a-very-long-interface" is not an interface name'),
        ({"local_addresses": "10.0.0.21"}, 'local_addresses "10.0.0.21" is not a list of addresses'),
        ({"metrics_address": "localhost"}, "metrics_address 'localhost' is not an IPv4 or IPv6 address"),
        ({"intervall_s": 1}, "guard.json: unknown key 'intervall_s' \\(known keys: vip, port,"),
        ({"discovery": {"enabled": True}}, "discovery is enabled but has no credentials"),
        ({"discovery": {"enable": True}}, "guard.json: discovery: unknown key 'enable'"),
        ({"discovery": []}, "guard.json: discovery must be a JSON object, not \\[\\]"),
        ({"haproxy": {"reload_command": []}}, "haproxy: reload_command is empty"),
        ({"haproxy": {"reload_command": "systemctl reload"}}, 'reload_command "systemctl reload" is not a list'),
    ],
)
def test_config_errors_name_the_key_and_value(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(config_doc(tmp_path, **overrides), "guard.json")


def test_a_vip_without_seeds_of_its_family_is_fine_with_discovery(rig: RigFactory) -> None:
    r = rig(
        vip=[VIP4, VIP6],
        client_cert_file="/var/lib/kubelet/pki/kubelet-client-current.pem",
        discovery={"enabled": True, "networks": ["10.0.0.0/24", "fd00::/64"]},
    )
    r.round()
    r.discovered = frozenset({M6, Backend("fd00::12", 6443)})
    assert r.guard.discover_once()
    r.round()
    assert r.ipvs.weights(VIP6) == {"[fd00::11]:6443": 1, "[fd00::12]:6443": 1}
    assert r.ipvs.weights(VIP4) == {"10.0.0.11:6443": 1, "10.0.0.12:6443": 1, "10.0.0.13:6443": 1}


def test_ipvs_mode_ignores_discovered_backends_of_a_family_without_vip(rig: RigFactory) -> None:
    r = rig(client_cert_file="/var/lib/kubelet/pki/kubelet-client-current.pem", discovery={"enabled": True})
    r.round()
    r.discovered = frozenset({M1, M6})
    assert r.guard.discover_once()
    assert r.guard.backends == (M1, M2, M3)


def test_haproxy_mode_accepts_seeds_of_any_family(tmp_path: Path) -> None:
    cfg = parse_config(config_doc(tmp_path, mode="haproxy", seeds=["[fd00::11]:6443"]))
    assert cfg.seeds == (M6,)


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the configuration .*missing\.json: No such file"):
        load_config(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{vip: 1}")
    with pytest.raises(ConfigError, match=r"bad\.json is not valid JSON"):
        load_config(str(bad))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(config_doc(tmp_path)))
    assert load_config(str(good)).seeds == (M1, M2, M3)
