"""cluster_endpoint against the lab's real apiservers and its real bootstrapsigner (kube-controller-manager).

The tests run in file order on one module-scoped snapshot of the three ConfigMaps: bad input and check
mode first (nothing may change), then present, a second run, and absent, which must give the objects back
byte for byte. The fixture's teardown runs absent once more and compares again, so kube-proxy's ConfigMap is
never left pointing at the VIP (kube-proxy reads it at its next start), whatever failed in between.
The signatures are checked here with a HS256 of the test's own, as kubeadm's discovery computes them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings

import lab as labmod
import pytest
import yaml
from conftest import run_module

MODULE = "kubeha.apiserver.cluster_endpoint"
ADMIN = "/etc/kubernetes/admin.conf"
SERVER = "https://169.254.100.1:6444"
SANS = ["169.254.100.1", "fd6b:6861::1"]
ANNOTATION = "kubeha.apiserver/original-server"
# target -> (namespace, name, the key the module edits)
OBJECTS = {
    "cluster_info": ("kube-public", "cluster-info", "kubeconfig"),
    "kubeadm_config": ("kube-system", "kubeadm-config", "ClusterConfiguration"),
    "kube_proxy": ("kube-system", "kube-proxy", "kubeconfig.conf"),
}
PRESENT = {"server": SERVER, "cert_sans": SANS, "kubeconfig": ADMIN}
ABSENT = {"cert_sans": SANS, "state": "absent", "kubeconfig": ADMIN, "wait_signed": True, "timeout": 90}


def configmap(target: str) -> dict:
    namespace, name, _key = OBJECTS[target]
    return json.loads(labmod.kubectl("get", "-n", namespace, "configmap", name, "-o", "json").stdout)


def snapshot() -> dict[str, dict]:
    return {target: configmap(target) for target in OBJECTS}


def versions(snap: dict[str, dict]) -> dict[str, str]:
    return {target: obj["metadata"]["resourceVersion"] for target, obj in snap.items()}


def server_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip().startswith("server:")]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jws(content: str, token_id: str, secret: str) -> str:
    """kubeadm's detached JWS of cluster-info: HS256, header {"alg":"HS256","kid":<id>}, payload left out."""
    header = b64url(json.dumps({"alg": "HS256", "kid": token_id}, separators=(",", ":")).encode())
    signing_input = f"{header}.{b64url(content.encode())}".encode()
    return f"{header}..{b64url(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())}"


def signing_tokens() -> dict[str, str]:
    """The lab's bootstrap tokens that sign cluster-info: {id: secret}."""
    secrets = json.loads(
        labmod.kubectl(
            "get", "-n", "kube-system", "secrets", "--field-selector=type=bootstrap.kubernetes.io/token", "-o", "json"
        ).stdout
    )["items"]
    tokens = {}
    for secret in secrets:
        data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        if data.get("usage-bootstrap-signing") == "true":
            tokens[data["token-id"]] = data["token-secret"]
    return tokens


def differences(before: dict[str, dict], after: dict[str, dict]) -> tuple[list[str], list[str]]:
    """What differs between two snapshots: (in what the module owns, in what it does not touch)."""
    own, foreign = [], []
    for target, (namespace, name, key) in OBJECTS.items():
        old, new = before[target], after[target]
        for data_key in sorted(set(old.get("data", {})) | set(new.get("data", {}))):
            if old.get("data", {}).get(data_key) != new.get("data", {}).get(data_key):
                mine = data_key == key or data_key.startswith("jws-kubeconfig-")
                (own if mine else foreign).append(f"{namespace}/{name} data[{data_key}]")
        for field in ("annotations", "labels"):
            if old["metadata"].get(field) != new["metadata"].get(field):
                own.append(f"{namespace}/{name} metadata.{field}")
    return own, foreign


@pytest.fixture(scope="module")
def originals(control_node):
    """The three ConfigMaps as the lab has them; restored (absent) and compared byte for byte at the end."""
    before = snapshot()
    for target, obj in before.items():
        assert ANNOTATION not in obj["metadata"].get("annotations", {}), f"{target} carries {ANNOTATION} already"
    assert server_lines(before["kube_proxy"]["data"]["kubeconfig.conf"]) != [f"    server: {SERVER}"]
    assert signing_tokens(), "the lab has no bootstrap token that signs cluster-info"
    yield before

    result = run_module(control_node, MODULE, ABSENT)
    after = snapshot()
    own, foreign = differences(before, after)
    if own:
        # Put back what the module owns, by hand, so that the lab is left as it was; then fail.
        for target, (namespace, name, key) in OBJECTS.items():
            patch = {"data": {key: before[target]["data"][key]}, "metadata": {"annotations": {ANNOTATION: None}}}
            labmod.kubectl("patch", "-n", namespace, "configmap", name, "--type=merge", "-p", json.dumps(patch))
        pytest.fail(f"state=absent did not restore {', '.join(own)} (restored by hand): {result}")
    if foreign:
        others = ", ".join(foreign)
        warnings.warn(f"changed by someone else during the test (not by the module): {others}", stacklevel=1)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ({"server": "http://169.254.100.1:6444"}, ["'http://169.254.100.1:6444'", "is not an https:// URL"]),
        ({"server": "https://fd6b:6861::1:6444"}, ["'https://fd6b:6861::1:6444'", "must be written in brackets"]),
        ({"server": "https://169.254.100.1:99999"}, ["'https://169.254.100.1:99999'", "invalid port '99999'"]),
        ({"server": "https://bad_host:6444"}, ["'bad_host'", "neither an IPv4 address nor a valid DNS name"]),
        ({"server": SERVER, "cert_sans": ["169.254.100.0/24"]}, ["'169.254.100.0/24'", "is a network"]),
        ({"server": SERVER, "cert_sans": ["no_such.name"]}, ["'no_such.name'", "neither a valid IP address"]),
        ({"server": SERVER, "targets": ["kubelet"]}, ["kubelet", "cluster_info, kubeadm_config, kube_proxy"]),
        ({"cert_sans": SANS}, ["server"]),
    ],
)
def test_bad_input_fails_clearly_and_changes_nothing(originals, control_node, args, needles):
    result = run_module(control_node, MODULE, args | {"kubeconfig": ADMIN})
    assert result.get("failed") is True, result
    for needle in needles:
        assert needle in result["msg"], result["msg"]
    assert "Traceback" not in json.dumps(result)
    assert versions(snapshot()) == versions(originals)


def test_check_mode_predicts_and_changes_nothing(originals, control_node):
    result = run_module(control_node, MODULE, PRESENT | {"wait_signed": True}, check=True, diff=True)
    assert not result.get("failed"), result
    assert result["changed"] is True
    assert sorted(result["changed_objects"]) == sorted(f"{ns}/{name}" for ns, name, _key in OBJECTS.values())
    assert result["objects"]["cluster_info"]["after"] == SERVER
    assert result["objects"]["kube_proxy"]["after"] == SERVER
    assert result["objects"]["kubeadm_config"]["added"] == SANS
    assert result["signed_tokens"] == []
    diffs = {d["before_header"].split(",")[0]: d for d in result["diff"]}
    assert len(diffs) == 3
    info = diffs["ConfigMap kube-public/cluster-info"]
    assert info["before"] == originals["cluster_info"]["data"]["kubeconfig"]
    assert f"server: {SERVER}" in info["after"] and f"server: {SERVER}" not in info["before"]
    now = snapshot()
    assert versions(now) == versions(originals)
    assert differences(originals, now) == ([], [])


def test_present_changes_the_three_objects_and_the_signer_resigns(originals, control_node):
    result = run_module(control_node, MODULE, PRESENT | {"wait_signed": True, "timeout": 90}, diff=True)
    assert not result.get("failed"), result
    assert result["changed"] is True
    now = snapshot()
    assert all(now[t]["metadata"]["resourceVersion"] != originals[t]["metadata"]["resourceVersion"] for t in OBJECTS)

    for target in ("cluster_info", "kube_proxy"):
        _ns, _name, key = OBJECTS[target]
        old_text, new_text = originals[target]["data"][key], now[target]["data"][key]
        (old_server_line,) = server_lines(old_text)
        old_server = old_server_line.split("server:", 1)[1].strip()
        assert server_lines(new_text) == [old_server_line.replace(old_server, SERVER)]
        assert new_text.replace(SERVER, old_server) == old_text  # only the server changed, byte for byte
        assert now[target]["metadata"]["annotations"][ANNOTATION] == old_server
        assert result["objects"][target]["before"] == old_server
        assert result["objects"][target]["original_server"] == old_server
    assert now["kube_proxy"]["data"]["config.conf"] == originals["kube_proxy"]["data"]["config.conf"]

    old_config = originals["kubeadm_config"]["data"]["ClusterConfiguration"]
    new_config = now["kubeadm_config"]["data"]["ClusterConfiguration"]
    old_lines, new_lines = old_config.splitlines(), new_config.splitlines()
    # Only lines of apiServer.certSANs: its new entries, and the key itself where there was none (kubeadm writes
    # an apiServer without keys inline, `apiServer: {}`, as the kubeadm flavour's cluster has it).
    had_sans = "certSANs" in (yaml.safe_load(old_config).get("apiServer") or {})
    empty = "apiServer: {}" in old_lines
    added = ["apiServer:"] * empty + ["  certSANs:"] * (not had_sans) + [f"  - {san}" for san in SANS]
    assert [line for line in new_lines if line not in old_lines] == added
    assert [line for line in old_lines if line not in new_lines] == ["apiServer: {}"] * empty
    endpoint = [line for line in old_lines if line.startswith("controlPlaneEndpoint:")]
    assert endpoint and endpoint[0] in new_lines
    assert result["objects"]["kubeadm_config"]["control_plane_endpoint"] == endpoint[0].split(": ", 1)[1]

    # The bootstrapsigner re-signed: each signing token's JWS validates against the new kubeconfig only.
    tokens = signing_tokens()
    assert sorted(result["signed_tokens"]) == sorted(tokens)
    content = now["cluster_info"]["data"]["kubeconfig"]
    for token_id, secret in tokens.items():
        signature = now["cluster_info"]["data"][f"jws-kubeconfig-{token_id}"]
        old_signature = originals["cluster_info"]["data"][f"jws-kubeconfig-{token_id}"]
        assert signature == jws(content, token_id, secret)
        assert old_signature == jws(originals["cluster_info"]["data"]["kubeconfig"], token_id, secret)
        assert signature != old_signature

    headers = [d["before_header"] for d in result["diff"]]
    assert any(h.startswith("ConfigMap kube-system/kube-proxy, key kubeconfig.conf") for h in headers)
    for d in result["diff"]:
        assert d["before"] != d["after"]


def test_second_run_is_unchanged(originals, control_node):
    before = versions(snapshot())
    result = run_module(control_node, MODULE, PRESENT)
    assert not result.get("failed"), result
    assert result["changed"] is False and result["changed_objects"] == []
    assert versions(snapshot()) == before


def test_absent_restores_the_objects_byte_for_byte(originals, control_node):
    result = run_module(control_node, MODULE, ABSENT, diff=True)
    assert not result.get("failed"), result
    assert result["changed"] is True
    now = snapshot()
    # The signatures too: HS256 of the same content with the same token is the same again.
    assert differences(originals, now)[0] == []
    assert server_lines(now["kube_proxy"]["data"]["kubeconfig.conf"]) != [f"    server: {SERVER}"]

    again = run_module(control_node, MODULE, ABSENT)
    assert again["changed"] is False, again
