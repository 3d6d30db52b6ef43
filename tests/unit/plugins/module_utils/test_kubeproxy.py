# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Pure logic of module_utils/_kubeproxy: CIDR normalisation, planning and the in-place text edit."""

from __future__ import annotations

import difflib
import re
from typing import Any

import pytest
import yaml
from ansible_collections.kubeha.apiserver.plugins.module_utils import _kubeproxy
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeproxy import (
    KubeProxyConfigError,
    current_excludes,
    mode_warning,
    normalize_cidrs,
    parse_config,
    plan_exclude,
    proxy_mode,
    render_config,
)

# kube-system/kube-proxy's config.conf as `kubeadm init phase addon kube-proxy` (v1.36) writes it for a
# dual-stack cluster with `mode: ipvs`; the ConfigMap stores it as a `|-` block, so without a final newline.
KUBEADM_CONFIG = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ipvs
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: \"\""""

# The same configuration as kubeadm writes it when excludeCIDRs was given (go-yaml's block list style).
KUBEADM_LIST = KUBEADM_CONFIG.replace(
    "  excludeCIDRs: null\n", "  excludeCIDRs:\n  - 169.254.100.1/32\n  - fd00:100::1/128\n"
)

NULL_LINE = "  excludeCIDRs: null"
VIPS = ["169.254.100.1", "fd00:100::1"]


def edit(text: str, cidrs: list[str], state: str = "present") -> tuple[str, bool]:
    config = parse_config(text)
    new, changed = plan_exclude(config, cidrs, state)
    return (render_config(text, config, new) if changed else text), changed


def edited(text: str, cidrs: list[str], state: str = "present") -> str:
    return edit(text, cidrs, state)[0]


def changed_lines(before: str, after: str) -> list[str]:
    """The lines removed (-) and added (+) between two texts."""
    return [
        line
        for line in difflib.ndiff(before.splitlines(keepends=True), after.splitlines(keepends=True))
        if line[:1] in "+-"
    ]


def minimal(ipvs_block: str, tail: str = "kind: KubeProxyConfiguration\nmode: ipvs\n") -> str:
    return f"apiVersion: kubeproxy.config.k8s.io/v1alpha1\n{ipvs_block}{tail}"


# --------------------------------------------------------------------------------------------------
# normalize_cidrs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("169.254.100.1", "169.254.100.1/32"),
        ("fd00:100::1", "fd00:100::1/128"),
        ("FD00:0100:0:0::0001", "fd00:100::1/128"),
        ("10.96.0.0/12", "10.96.0.0/12"),
        ("FD00:10:96::/112", "fd00:10:96::/112"),
        ("10.0.0.0/255.255.255.0", "10.0.0.0/24"),
        (" 10.0.0.1 ", "10.0.0.1/32"),
        ("::1", "::1/128"),
        ("0.0.0.0/0", "0.0.0.0/0"),
    ],
)
def test_normalize_one(value: str, expected: str) -> None:
    assert normalize_cidrs([value]) == [expected]


def test_normalize_keeps_order_mixes_families_and_drops_duplicates() -> None:
    values = ["fd00:100::1", "169.254.100.1", "FD00:100:0::1/128", "169.254.100.1/32", "10.0.0.0/8"]
    assert normalize_cidrs(values) == ["fd00:100::1/128", "169.254.100.1/32", "10.0.0.0/8"]


def test_normalize_refuses_host_bits_naming_the_value() -> None:
    with pytest.raises(KubeProxyConfigError, match=r"^10\.0\.0\.1/24 has host bits set") as info:
        normalize_cidrs(["10.0.0.0/8", "10.0.0.1/24"])
    assert "10.0.0.0/24" in str(info.value)
    assert "10.0.0.1/32" in str(info.value)
    with pytest.raises(KubeProxyConfigError, match=r"fd00::1/64 has host bits set"):
        normalize_cidrs(["fd00::1/64"])


@pytest.mark.parametrize("value", ["10.0.0.256", "10.0.0.0/33", "fd00::/129", "not-an-ip", "10.0.0.1/", "010.0.0.1"])
def test_normalize_refuses_invalid_values_naming_them(value: str) -> None:
    with pytest.raises(KubeProxyConfigError, match="is not a valid IPv4 or IPv6 address or CIDR") as info:
        normalize_cidrs(["10.0.0.1", value])
    assert value in str(info.value)


def test_normalize_refuses_zone_index_empty_values_and_non_lists() -> None:
    with pytest.raises(KubeProxyConfigError, match="zone index"):
        normalize_cidrs(["fe80::1%eth0"])
    with pytest.raises(KubeProxyConfigError, match="is not an IPv4 or IPv6 address"):
        normalize_cidrs([""])
    with pytest.raises(KubeProxyConfigError, match="is not an IPv4 or IPv6 address"):
        normalize_cidrs([None])
    with pytest.raises(KubeProxyConfigError, match="cidrs is empty"):
        normalize_cidrs([])
    with pytest.raises(KubeProxyConfigError, match="must be a list"):
        normalize_cidrs("10.0.0.1")


# --------------------------------------------------------------------------------------------------
# parse_config and proxy_mode
# --------------------------------------------------------------------------------------------------


def test_parse_realistic_config() -> None:
    config = parse_config(KUBEADM_CONFIG)
    assert config["ipvs"]["excludeCIDRs"] is None
    assert current_excludes(config) == []
    assert proxy_mode(config) == "ipvs"
    assert current_excludes(parse_config(KUBEADM_LIST)) == ["169.254.100.1/32", "fd00:100::1/128"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mode: [ipvs\n", "not valid YAML"),
        ("", "the configuration is empty"),
        ("- a\n- b\n", "is a list, not a KubeProxyConfiguration mapping"),
        ("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n", "of kind 'KubeletConfiguration'"),
        ("apiVersion: v1\nkind: KubeProxyConfiguration\n", "apiVersion 'v1'"),
        (minimal("ipvs: strict\n"), "ipvs is 'strict', not a mapping"),
        (minimal("ipvs:\n  excludeCIDRs: 10.0.0.1/32\n"), "ipvs.excludeCIDRs is '10.0.0.1/32', not a list"),
        ("kind: KubeProxyConfiguration\n---\nkind: KubeProxyConfiguration\n", "not valid YAML"),
    ],
)
def test_parse_refuses_malformed_configs(text: str, message: str) -> None:
    with pytest.raises(KubeProxyConfigError, match=re.escape(message)):
        parse_config(text)


def test_parse_refuses_non_text() -> None:
    with pytest.raises(KubeProxyConfigError, match="not text"):
        parse_config(None)


def test_proxy_mode_default_is_empty() -> None:
    assert proxy_mode({"kind": "KubeProxyConfiguration"}) == ""
    assert proxy_mode({"mode": ""}) == ""
    assert proxy_mode({"mode": "nftables"}) == "nftables"
    assert mode_warning("ipvs", "x") is None
    assert "default mode (iptables on Linux)" in (mode_warning("", "ConfigMap a/b, key c") or "")
    assert "mode 'iptables'" in (mode_warning("iptables", "x") or "")


# --------------------------------------------------------------------------------------------------
# plan_exclude
# --------------------------------------------------------------------------------------------------


def config_with(excludes: Any) -> dict[str, Any]:
    return {"kind": "KubeProxyConfiguration", "ipvs": {"excludeCIDRs": excludes, "scheduler": ""}}


def test_plan_present_on_null_adds_in_order() -> None:
    assert plan_exclude(config_with(None), VIPS, "present") == (["169.254.100.1/32", "fd00:100::1/128"], True)


def test_plan_present_without_ipvs_block() -> None:
    assert plan_exclude({"kind": "KubeProxyConfiguration"}, ["10.0.0.1"], "present") == (["10.0.0.1/32"], True)


def test_plan_present_is_idempotent() -> None:
    new = plan_exclude(config_with(None), VIPS, "present")[0]
    assert plan_exclude(config_with(new), VIPS, "present") == (new, False)


def test_plan_present_keeps_existing_entries_their_order_and_spelling() -> None:
    existing = ["10.96.0.0/12", "FD00:0100:0:0::1/128", "not-a-cidr"]
    new, changed = plan_exclude(config_with(existing), ["fd00:100::1", "169.254.100.1"], "present")
    assert changed is True
    assert new == ["10.96.0.0/12", "FD00:0100:0:0::1/128", "not-a-cidr", "169.254.100.1/32"]


def test_plan_treats_equivalent_spellings_as_equal() -> None:
    assert plan_exclude(config_with(["FD00:0:0::1/128"]), ["fd00::1/128"], "present") == (["FD00:0:0::1/128"], False)
    assert plan_exclude(config_with(["fd00::1/128"]), ["FD00:0:0::1"], "present") == (["fd00::1/128"], False)
    # a bare address in the existing list is the /32 of that address
    assert plan_exclude(config_with(["10.0.0.5"]), ["10.0.0.5/32"], "present") == (["10.0.0.5"], False)
    assert plan_exclude(config_with(["FD00:0:0::1/128"]), ["fd00::1"], "absent") == ([], True)


def test_plan_is_not_containment() -> None:
    new, changed = plan_exclude(config_with(["169.254.0.0/16"]), ["169.254.100.1"], "present")
    assert (new, changed) == (["169.254.0.0/16", "169.254.100.1/32"], True)


def test_plan_dual_stack_adds_only_the_missing_family() -> None:
    new, changed = plan_exclude(config_with(["169.254.100.1/32"]), VIPS, "present")
    assert (new, changed) == (["169.254.100.1/32", "fd00:100::1/128"], True)


def test_plan_absent_removes_only_listed_entries() -> None:
    existing = ["10.96.0.0/12", "169.254.100.1/32", "fd00:100::1/128"]
    new, changed = plan_exclude(config_with(existing), ["fd00:100::1", "192.0.2.1"], "absent")
    assert (new, changed) == (["10.96.0.0/12", "169.254.100.1/32"], True)


def test_plan_absent_when_missing_is_unchanged() -> None:
    assert plan_exclude(config_with(None), VIPS, "absent") == ([], False)
    assert plan_exclude(config_with(["10.96.0.0/12"]), VIPS, "absent") == (["10.96.0.0/12"], False)


def test_plan_validates_cidrs_and_state() -> None:
    with pytest.raises(KubeProxyConfigError, match="has host bits set"):
        plan_exclude(config_with(None), ["10.0.0.1/24"], "present")
    with pytest.raises(KubeProxyConfigError, match="state 'gone'"):
        plan_exclude(config_with(None), VIPS, "gone")


# --------------------------------------------------------------------------------------------------
# render_config
# --------------------------------------------------------------------------------------------------


def test_render_replaces_only_the_null_line_of_a_kubeadm_config() -> None:
    after, changed = edit(KUBEADM_CONFIG, VIPS)
    assert changed is True
    before_lines = KUBEADM_CONFIG.split("\n")
    at = before_lines.index(NULL_LINE)
    expected = [*before_lines[:at], "  excludeCIDRs:", "  - 169.254.100.1/32", "  - fd00:100::1/128"]
    assert after.split("\n") == expected + before_lines[at + 1 :]
    assert after == KUBEADM_LIST  # exactly what kubeadm itself writes for that list
    assert not after.endswith("\n")  # the ConfigMap's `|-` text keeps having no final newline
    assert changed_lines(KUBEADM_CONFIG, after) == [
        "- " + NULL_LINE + "\n",
        "+   excludeCIDRs:\n",
        "+   - 169.254.100.1/32\n",
        "+   - fd00:100::1/128\n",
    ]


def test_render_every_other_line_is_byte_identical() -> None:
    after = edited(KUBEADM_CONFIG, ["10.0.0.0/8"])
    kept_before = [line for line in KUBEADM_CONFIG.split("\n") if line != NULL_LINE]
    kept_after = [
        line for line in after.split("\n") if not line.startswith("  excludeCIDRs") and line != "  - 10.0.0.0/8"
    ]
    assert kept_before == kept_after
    for line in ('  scheduler: ""', "  strictARP: false", "  tcpFinTimeout: 0s", '      infoBufferSize: "0"'):
        assert line in after.split("\n")


def test_render_appends_to_a_block_list() -> None:
    after, changed = edit(KUBEADM_LIST, ["10.0.0.0/8", "fd00:100::1"])
    assert changed is True
    assert after == KUBEADM_LIST.replace("  - fd00:100::1/128\n", "  - fd00:100::1/128\n  - 10.0.0.0/8\n")


def test_render_is_idempotent_on_a_block_list() -> None:
    assert edit(KUBEADM_LIST, VIPS) == (KUBEADM_LIST, False)
    assert edit(KUBEADM_LIST, ["FD00:100:0::1/128"]) == (KUBEADM_LIST, False)


def test_render_removes_back_to_kubeadm_null() -> None:
    after, changed = edit(KUBEADM_LIST, VIPS, "absent")
    assert changed is True
    assert after == KUBEADM_CONFIG
    partly = edited(KUBEADM_LIST, ["169.254.100.1"], "absent")
    assert partly == KUBEADM_LIST.replace("  - 169.254.100.1/32\n", "")


def test_render_round_trip_restores_the_original_text() -> None:
    added = edited(KUBEADM_CONFIG, ["169.254.100.1", "fd00:100::1", "10.0.0.0/8"])
    removed = edited(added, ["10.0.0.0/8", "169.254.100.1", "fd00:100::1"], "absent")
    assert removed == KUBEADM_CONFIG


def test_naive_yaml_dump_would_not_keep_the_text() -> None:
    """Negative control: a parse/dump round trip rewrites many lines that the line edit keeps."""
    config = parse_config(KUBEADM_CONFIG)
    config["ipvs"]["excludeCIDRs"] = ["169.254.100.1/32"]
    naive = yaml.safe_dump(config, default_flow_style=False)
    assert parse_config(naive) == config  # same data...
    naive_changes = changed_lines(KUBEADM_CONFIG, naive)
    ours_text = edited(KUBEADM_CONFIG, ["169.254.100.1"])
    ours = changed_lines(KUBEADM_CONFIG, ours_text)
    assert len(ours) == 3
    assert len(naive_changes) > 10  # ...but quoting ('' for ""), list indentation and the final newline differ
    assert '  scheduler: ""\n' not in naive.splitlines(keepends=True)
    assert '  scheduler: ""' in ours_text.split("\n")


def test_render_keeps_the_entries_it_keeps_byte_for_byte() -> None:
    text = minimal("ipvs:\n  excludeCIDRs:\n  - '10.96.0.0/12'  # services\n  # the VIP\n  - 169.254.100.1/32\n")
    assert edited(text, ["10.0.0.1"]) == minimal(
        "ipvs:\n  excludeCIDRs:\n  - '10.96.0.0/12'  # services\n  # the VIP\n  - 169.254.100.1/32\n  - 10.0.0.1/32\n"
    )
    assert edited(text, ["169.254.100.1"], "absent") == minimal(
        "ipvs:\n  excludeCIDRs:\n  - '10.96.0.0/12'  # services\n  # the VIP\n"
    )


def test_render_inline_empty_list_and_trailing_comment() -> None:
    text = minimal("ipvs:\n  excludeCIDRs: []  # set by ops\n  strictARP: true\n")
    after, changed = edit(text, ["10.0.0.1"])
    assert changed is True
    assert after == minimal("ipvs:\n  excludeCIDRs:  # set by ops\n  - 10.0.0.1/32\n  strictARP: true\n")
    back = edited(after, ["10.0.0.1"], "absent")
    assert back == minimal("ipvs:\n  excludeCIDRs: null  # set by ops\n  strictARP: true\n")


def test_render_inline_flow_list() -> None:
    text = minimal("ipvs:\n  excludeCIDRs: [10.96.0.0/12, 'fd00::/64']\n  scheduler: rr\n")
    after = edited(text, ["10.0.0.1"])
    assert after == minimal(
        "ipvs:\n  excludeCIDRs:\n  - 10.96.0.0/12\n  - fd00::/64\n  - 10.0.0.1/32\n  scheduler: rr\n"
    )


def test_render_keeps_an_indented_list_style_and_comments_after_it() -> None:
    text = minimal("ipvs:\n    excludeCIDRs:\n      - 10.96.0.0/12\n\n    # kept\n    scheduler: rr\n")
    after = edited(text, ["10.0.0.1"])
    assert after == minimal(
        "ipvs:\n    excludeCIDRs:\n      - 10.96.0.0/12\n      - 10.0.0.1/32\n\n    # kept\n    scheduler: rr\n"
    )


def test_render_excludecidrs_last_in_ipvs_block() -> None:
    text = minimal("ipvs:\n  scheduler: rr\n  excludeCIDRs:\n  - 10.96.0.0/12\n")
    after = edited(text, ["10.96.0.0/12"], "absent")
    assert after == minimal("ipvs:\n  scheduler: rr\n  excludeCIDRs: null\n")


def test_render_inserts_a_missing_key_first_in_the_ipvs_block() -> None:
    text = minimal("ipvs:\n  scheduler: rr\n  strictARP: true\n")
    after = edited(text, ["10.0.0.1"])
    assert after == minimal("ipvs:\n  excludeCIDRs:\n  - 10.0.0.1/32\n  scheduler: rr\n  strictARP: true\n")


@pytest.mark.parametrize("ipvs", ["ipvs:\n", "ipvs: null\n", "ipvs: {}\n", "ipvs: ~\n"])
def test_render_fills_an_empty_ipvs(ipvs: str) -> None:
    after = edited(minimal(ipvs), ["10.0.0.1"])
    assert after == minimal("ipvs:\n  excludeCIDRs:\n  - 10.0.0.1/32\n")


def test_render_adds_a_missing_ipvs_block_at_the_end() -> None:
    text = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs"
    after = edited(text, ["10.0.0.1"])
    assert after == text + "\nipvs:\n  excludeCIDRs:\n  - 10.0.0.1/32"
    with_newline = edited(text + "\n", ["10.0.0.1"])
    assert with_newline == text + "\nipvs:\n  excludeCIDRs:\n  - 10.0.0.1/32\n"


def test_render_keeps_crlf_line_breaks() -> None:
    text = KUBEADM_CONFIG.replace("\n", "\r\n")
    after = edited(text, VIPS)
    assert after == KUBEADM_LIST.replace("\n", "\r\n")


def test_render_quotes_only_when_needed() -> None:
    text = minimal("ipvs:\n  excludeCIDRs: null\n")
    after = edited(text, ["::/0", "::1"])
    assert "  - ::/0\n  - ::1/128\n" in after
    assert _kubeproxy._scalar("a: b") == '"a: b"'


def test_render_refuses_an_inline_ipvs_mapping() -> None:
    text = minimal("ipvs: {scheduler: rr}\n")
    with pytest.raises(KubeProxyConfigError, match="ipvs is written inline"):
        edit(text, ["10.0.0.1"])


def test_render_verifies_the_result_by_parsing_it_again() -> None:
    text = minimal("ipvs:\n  excludeCIDRs: [10.96.0.0/12,\n    10.97.0.0/16]\n  scheduler: rr\n")
    with pytest.raises(KubeProxyConfigError, match=r"editing ipvs\.excludeCIDRs in place"):
        edit(text, ["10.0.0.1"])


def test_render_refuses_when_the_edit_does_not_match(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_kubeproxy, "_edit", lambda text, new: text.replace("scheduler: rr", "scheduler: wrr"))
    text = minimal("ipvs:\n  excludeCIDRs: null\n  scheduler: rr\n")
    with pytest.raises(KubeProxyConfigError, match="did not give the intended configuration"):
        render_config(text, parse_config(text), ["10.0.0.1/32"])


def test_render_refuses_two_ipvs_keys() -> None:
    text = minimal("ipvs:\n  scheduler: rr\nipvs:\n  scheduler: wrr\n")
    with pytest.raises(KubeProxyConfigError, match="more than one top-level ipvs"):
        render_config(text, {"kind": "KubeProxyConfiguration"}, ["10.0.0.1/32"])


def test_render_with_nothing_to_write_returns_the_text() -> None:
    text = minimal("ipvs:\n  scheduler: rr\n")
    assert render_config(text, parse_config(text), []) == text
    assert render_config(minimal(""), parse_config(minimal("")), []) == minimal("")
