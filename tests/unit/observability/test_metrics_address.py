# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The metrics listen address from the local_proxy role to the guard: the role's defaults and argument specs,
the guard.json template (rendered with Jinja2 and the role's defaults) read by the guard's own parser, and the
preflight check that refuses a bad value before any change."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kubeha.apiserver.plugins.module_utils import _preflight
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import ConfigError, parse_config
from ansible_collections.kubeha.apiserver.plugins.module_utils._preflight import NodeFacts, check
from ansible_collections.kubeha.apiserver.plugins.modules import proxy_preflight

ROLE = Path(__file__).resolve().parents[3] / "roles" / "local_proxy"
FACTS = NodeFacts(
    interfaces={"lo": ["127.0.0.1/8", "::1/128"], "eth0": ["10.0.0.21/24", "fd00::21/64", "fe80::1/64"]},
    ipvs_available=True,
    ipvs_reason="loaded",
)
GOOD = ("169.254.100.1", "", 6444, ["10.0.0.11:6443", "10.0.0.12:6443"], "auto", FACTS)


def defaults() -> dict[str, Any]:
    """The role's defaults as Ansible resolves them: kubeha_defaults' first, each "{{ name }}" replaced."""
    values = yaml.safe_load((ROLE.parent / "kubeha_defaults" / "defaults" / "main.yml").read_text(encoding="utf-8"))
    values.update(yaml.safe_load((ROLE / "defaults" / "main.yml").read_text(encoding="utf-8")))
    for key, value in values.items():
        if isinstance(value, str) and (name := re.fullmatch(r"\{\{ (\w+) \}\}", value)):
            values[key] = values[name.group(1)]
    return values


def render_guard_json(**overrides: Any) -> dict[str, Any]:
    """guard.json as the role writes it on an IPVS worker: the role's defaults, the facts present.yml sets."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    # Ansible's to_nice_json, minus its encoder for Ansible's own types (importing the controller's filter
    # plugins here would change how every later module test sees warnings).
    env.filters["to_nice_json"] = lambda value, indent=4: json.dumps(value, indent=indent, sort_keys=True)
    variables = defaults()
    variables.update(
        inventory_hostname="w1",
        groups={"kube_control_plane": ["cp1", "cp2"]},
        local_proxy_node_mode="ipvs",
        local_proxy_vips=[variables["local_proxy_vip4"]],
        local_proxy_preflight={"backends": ["10.0.0.11:6443", "10.0.0.12:6443"]},
        local_proxy_local_addresses=["10.0.0.21"],
        local_proxy_client={"cert_file": "/etc/kubeha-apiserver/client.pem", "key_file": None},
    )
    variables.update(overrides)
    template = env.from_string((ROLE / "templates" / "guard.json.j2").read_text(encoding="utf-8"))
    return json.loads(template.render(**variables))


def test_defaults_and_argument_specs_agree() -> None:
    values = defaults()
    assert values["local_proxy_metrics_address"] == "127.0.0.1"
    assert values["local_proxy_metrics_port"] == 9445
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))["argument_specs"]
    for entry in ("main", "preflight"):
        options = specs[entry]["options"]
        assert options["local_proxy_metrics_address"]["type"] == "str"
        assert options["local_proxy_metrics_address"]["default"] == values["local_proxy_metrics_address"]
        assert options["local_proxy_metrics_port"]["type"] == "int"
        assert options["local_proxy_metrics_port"]["default"] == values["local_proxy_metrics_port"]
    preflight = (ROLE / "tasks" / "preflight.yml").read_text(encoding="utf-8")
    assert 'metrics_address: "{{ local_proxy_metrics_address }}"' in preflight
    assert 'metrics_port: "{{ local_proxy_metrics_port }}"' in preflight


def test_the_template_renders_the_default_address_and_the_guard_accepts_it() -> None:
    doc = render_guard_json()
    assert (doc["metrics_address"], doc["metrics_port"]) == ("127.0.0.1", 9445)
    cfg = parse_config(doc, "guard.json")
    assert (cfg.metrics_address, cfg.metrics_port) == ("127.0.0.1", 9445)


@pytest.mark.parametrize(
    ("address", "port", "parsed"),
    [("10.0.0.21", 9445, "10.0.0.21"), ("0.0.0.0", 9100, "0.0.0.0"), ("::", 9445, "::"), ("fd00:0::21", 0, "fd00::21")],
)
def test_the_template_renders_an_address_set_in_the_inventory(address: str, port: int, parsed: str) -> None:
    doc = render_guard_json(local_proxy_metrics_address=address, local_proxy_metrics_port=port)
    assert (doc["metrics_address"], doc["metrics_port"]) == (address, port)
    cfg = parse_config(doc, "guard.json")
    assert (cfg.metrics_address, cfg.metrics_port) == (parsed, port)
    assert check(*GOOD, metrics_address=address, metrics_port=port).errors == []


def test_a_hostname_reaches_the_guard_only_as_an_error() -> None:
    doc = render_guard_json(local_proxy_metrics_address="w1.example")
    with pytest.raises(ConfigError, match=r"metrics_address 'w1.example' is not an IPv4 or IPv6 address"):
        parse_config(doc, "guard.json")


@pytest.mark.parametrize(
    ("address", "port", "message"),
    [
        ("w1.example", 9445, "metrics address 'w1.example' is not an IPv4 or IPv6 address"),
        ("", 9445, "metrics address '' is not an IPv4 or IPv6 address"),
        ("10.0.0.300", 9445, "metrics address '10.0.0.300' is not an IPv4 or IPv6 address"),
        ("fe80::1%eth0", 9445, "metrics address 'fe80::1%eth0' carries a zone index"),
        ("fe80::1", 9445, "metrics address fe80::1 is IPv6 link-local"),
        ("10.0.0.99", 9445, "metrics address 10.0.0.99 is not an address of this node"),
        ("10.0.0.21", 6444, "metrics port 6444 is the proxy's own port"),
        ("10.0.0.21", 70000, "metrics port 70000 is not 0-65535"),
        ("w1.example", 0, "metrics address 'w1.example' is not an IPv4 or IPv6 address"),
    ],
)
def test_preflight_refuses_a_bad_metrics_setting_naming_it(address: str, port: int, message: str) -> None:
    errors = check(*GOOD, metrics_address=address, metrics_port=port).errors
    assert len(errors) == 1
    assert errors[0].startswith(message)


def test_preflight_without_the_metrics_arguments_checks_the_guards_defaults() -> None:
    assert check(*GOOD).errors == []
    assert check(*GOOD[:2], 9445, *GOOD[3:]).errors == ["metrics port 9445 is the proxy's own port; choose another "
                                                        "(the default is 9445)"]  # fmt: skip


def run_preflight(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, **args: Any) -> dict[str, Any]:
    monkeypatch.setattr(proxy_preflight, "read_node_facts", lambda ip_command="ip": FACTS)
    full = {"vip4": "169.254.100.1", "port": 6444, "backends": ["10.0.0.11:6443"], **args}
    with patch_module_args(full), pytest.raises(SystemExit):
        proxy_preflight.main()
    return json.loads(capsys.readouterr().out)


def test_the_module_passes_the_metrics_settings_to_the_check(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert proxy_preflight.check is _preflight.check
    ok = run_preflight(capsys, monkeypatch, metrics_address="10.0.0.21", metrics_port=9445)
    assert ok.get("failed") is not True
    bad = run_preflight(capsys, monkeypatch, metrics_address="w1")
    assert bad["failed"] is True
    assert "metrics address 'w1' is not an IPv4 or IPv6 address" in bad["msg"]
    assert run_preflight(capsys, monkeypatch, metrics_port=6444)["msg"].startswith("metrics port 6444 is the proxy's")
