# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""module_utils/_kubeconfig_server: inspection, the line-exact edit, plans, the review, and run() on real files."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils import _kubeconfig_server as ks
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import KubeAPIError, error_for_status
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeconfig_server import KubeconfigServerError

OLD, VIP = "https://10.88.0.11:6443", "https://169.254.100.1:6444"

# As kubeadm writes kubelet.conf (the data shortened).
KUBELET = f"""\
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tQ0EtLS0=
    server: {OLD}
  name: kubeha-lab
contexts:
- context:
    cluster: kubeha-lab
    user: system:node:w1
  name: system:node:w1@kubeha-lab
current-context: system:node:w1@kubeha-lab
kind: Config
preferences: {{}}
users:
- name: system:node:w1
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
"""

# Several clusters, the current context's one in the middle, odd spacing and a quoted server, CRLF.
SEVERAL = (
    "apiVersion: v1\r\n"
    "kind: Config\r\n"
    "clusters:\r\n"
    "- name: a\r\n"
    "  cluster: {server: 'https://10.0.0.1:6443'}\r\n"
    "- name: b\r\n"
    "  cluster:\r\n"
    '    server:   "https://10.0.0.2:6443"   # the one in use\r\n'
    "    insecure-skip-tls-verify: true\r\n"
    "- name: c\r\n"
    "  cluster:\r\n"
    "    server: https://10.0.0.3:6443\r\n"
    "contexts:\r\n"
    "- {name: one, context: {cluster: a, user: u}}\r\n"
    "- {name: two, context: {cluster: b, user: u}}\r\n"
    "current-context: two\r\n"
    "users:\r\n"
    "- name: u\r\n"
    "  user: {token: sekrit}\r\n"
)


class FakeClient:
    """A SelfSubjectReview answer per call, or an error; records what was sent."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.closed = False

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.posts.append((path, body))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        self.closed = True


def reviewed(username: str = "system:node:w1") -> dict[str, Any]:
    return {
        "kind": "SelfSubjectReview",
        "status": {"userInfo": {"username": username, "groups": ["system:nodes", "system:authenticated"]}},
    }


class Factory:
    """client_factory for run(): hands out FakeClients and notes (path, server) of each."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, str]] = []
        self.clients: list[FakeClient] = []

    def __call__(self, path: str, server: str) -> FakeClient:
        self.calls.append((path, server))
        client = FakeClient(self.answers.pop(0) if self.answers else reviewed())
        self.clients.append(client)
        return client


# --------------------------------------------------------------------------------------------------
# inspect / edit / redact
# --------------------------------------------------------------------------------------------------


def test_inspect_names_the_current_contexts_cluster_user_and_server() -> None:
    layout = ks.inspect(KUBELET, "kubelet.conf")
    assert layout == ks.Layout("system:node:w1@kubeha-lab", "kubeha-lab", "system:node:w1", OLD)
    assert ks.inspect(SEVERAL, "several").server == "https://10.0.0.2:6443"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a: [b", "kubelet.conf is not a kubeconfig: it is not valid YAML"),
        ("just a string\n", "kubelet.conf is not a kubeconfig: a YAML mapping"),
        ("apiVersion: v1\nkind: Pod\n", "kubelet.conf is not a kubeconfig"),
        (KUBELET.replace("current-context: system:node:w1@kubeha-lab\n", ""), "kubelet.conf has no current-context"),
        (KUBELET.replace("current-context: system:node:w1@", "current-context: x@"), "'x@kubeha-lab' is not defined"),
        (KUBELET.replace("    cluster: kubeha-lab\n", "    cluster: other\n"), "cluster 'other' is not defined"),
        (KUBELET.replace(f"    server: {OLD}\n", ""), "cluster 'kubeha-lab' has no server"),
        ("clusters: 3\ncontexts:\n- {name: c, context: {cluster: x}}\ncurrent-context: c\n", "clusters is not a list"),
        (
            KUBELET.replace("  name: kubeha-lab\n", "  name: kubeha-lab\n- cluster: {server: x}\n  name: kubeha-lab\n"),
            "2 entries named 'kubeha-lab'",
        ),
    ],
)
def test_inspect_refuses_what_is_not_a_usable_kubeconfig(text: str, needle: str) -> None:
    with pytest.raises(KubeconfigServerError, match=r"kubelet\.conf") as info:
        ks.inspect(text, "kubelet.conf")
    assert needle in str(info.value)


def test_edit_changes_only_the_server_characters() -> None:
    assert ks.edit(KUBELET, VIP, "kubelet.conf") == KUBELET.replace(OLD, VIP)


def test_edit_changes_only_the_current_contexts_cluster_and_keeps_the_layout() -> None:
    new = ks.edit(SEVERAL, VIP, "several")
    assert new == SEVERAL.replace('"https://10.0.0.2:6443"', f'"{VIP}"')
    changed = [(a, b) for a, b in zip(SEVERAL.split("\r\n"), new.split("\r\n"), strict=True) if a != b]
    assert changed == [
        ('    server:   "https://10.0.0.2:6443"   # the one in use', f'    server:   "{VIP}"   # the one in use')
    ]


def test_edit_ipv6_endpoint() -> None:
    assert ks.edit(KUBELET, "https://[fd6b:6861::1]:6444", "k") == KUBELET.replace(OLD, "https://[fd6b:6861::1]:6444")


def test_edit_refuses_a_server_it_cannot_edit_in_place() -> None:
    folded = KUBELET.replace(f"    server: {OLD}\n", "    server: >-\n      https://10.88.0.11:6443\n")
    with pytest.raises(KubeconfigServerError, match="not a one-line string"):
        ks.edit(folded, VIP, "kubelet.conf")


def test_redact_hides_keys_and_tokens_only() -> None:
    shown = ks.redact(KUBELET) + ks.redact(SEVERAL)
    assert "S0VZ" not in shown and "sekrit" not in shown
    assert "client-key-data: " + ks.REDACTED in shown
    assert "Q0VSVA==" in shown and "LS0tQ0EtLS0=" in shown  # the certificates are public
    assert ks.redact(KUBELET).count("\n") == KUBELET.count("\n")
    assert ks.redact("a: [b\n  token: x\n") == f"a: [b\n  token: {ks.REDACTED}\n"  # not YAML: line by line


PLUGINS = """\
users:
- name: oidc
  user:
    auth-provider:
      name: oidc
      config:
        client-id: kubernetes
        client-secret: oidc-client-secret
        id-token: eyJhbGciOiJSUzI1NiJ9.id
        refresh-token: "refresh-secret"
        extra-scopes: [groups, "scope-secret"]
- name: cloud
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: aws-iam-authenticator
      args: ["token", "-i", "cluster-secret-arg"]
      env:
      - {name: AWS_SECRET_ACCESS_KEY, value: env-secret-value}
      interactiveMode: Never
"""
PLUGIN_SECRETS = (
    "oidc-client-secret",
    "eyJhbGciOiJSUzI1NiJ9",
    "refresh-secret",
    "scope-secret",
    "cluster-secret-arg",
    "env-secret-value",
)


def test_redact_hides_the_settings_of_credential_plugins() -> None:
    shown = ks.redact(PLUGINS)
    assert [secret for secret in PLUGIN_SECRETS if secret in shown] == []
    # What identifies the plugin stays readable: its name, command and API version.
    for public in (
        "name: oidc",
        "command: aws-iam-authenticator",
        "apiVersion: client.authentication.k8s.io/v1",
        "interactiveMode: Never",
        "config:",
        "args:",
    ):
        assert public in shown
    assert shown.count("\n") == PLUGINS.count("\n")
    # Negative control: the same secrets outside a plugin's settings are not secret keys, and stay.
    elsewhere = "clusters:\n- name: oidc-client-secret\n  cluster: {server: https://10.0.0.1:6443}\n"
    assert ks.redact(elsewhere) == elsewhere
    # Not YAML: the auth-provider names line by line.
    assert ks.redact("a: [b\n    id-token: x\n") == f"a: [b\n    id-token: {ks.REDACTED}\n"


def test_same_server_compares_canonical_forms() -> None:
    assert ks.same_server("HTTPS://169.254.100.1:6444/", VIP)
    assert not ks.same_server(OLD, VIP)
    assert not ks.same_server("not a url", VIP)


# --------------------------------------------------------------------------------------------------
# plans
# --------------------------------------------------------------------------------------------------


def test_plan_present() -> None:
    plan = ks.plan_present(KUBELET, VIP, "k", original_exists=False)
    assert (plan.before, plan.after, plan.write, plan.keep_original, plan.verify_server) == (OLD, VIP, True, True, VIP)
    assert ks.plan_present(KUBELET, VIP, "k", original_exists=True).keep_original is False
    done = ks.plan_present(KUBELET.replace(OLD, VIP), VIP, "k", original_exists=True)
    assert (done.changed, done.verify_server) == (False, None)


def test_plan_absent_restores_only_a_server_only_difference() -> None:
    switched = KUBELET.replace(OLD, VIP)
    plan = ks.plan_absent(switched, KUBELET, "k", None)
    assert (plan.text_after, plan.after, plan.remove_original, plan.verify_server) == (KUBELET, OLD, True, OLD)
    same = ks.plan_absent(KUBELET, KUBELET, "k", VIP)
    assert (same.write, same.remove_original, same.changed) == (False, True, True)
    renewed = switched.replace("Q0VSVA==", "TkVX")
    left = ks.plan_absent(renewed, KUBELET, "k", None)
    assert left.changed is False and "differs from k.kubeha-orig in more than the server line" in left.warning


def test_plan_absent_without_an_original() -> None:
    assert ks.plan_absent(KUBELET, None, "k", None).changed is False
    plan = ks.plan_absent(KUBELET.replace(OLD, VIP), None, "k", VIP)
    assert plan.changed is False
    assert plan.warning == f"k points at {VIP}, but k.kubeha-orig does not exist, so the server it had before is not " \
        "known: left as it is"  # fmt: skip
    assert ks.plan_absent(KUBELET, None, "k", VIP).warning == ""


# --------------------------------------------------------------------------------------------------
# review / verify
# --------------------------------------------------------------------------------------------------


def test_review_posts_a_self_subject_review() -> None:
    client = FakeClient(reviewed())
    assert ks.review(client) == ks.Identity("system:node:w1", ["system:nodes", "system:authenticated"])
    assert client.posts == [
        (
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
    ]


def test_review_falls_back_to_v1beta1_on_older_apiservers() -> None:
    missing = error_for_status("POST", ks.REVIEW_PATHS[0][0], 404, b"404 page not found")
    client = FakeClient(missing, reviewed("kubernetes-admin"))
    assert ks.review(client).username == "kubernetes-admin"
    assert [p for p, _b in client.posts] == [p for p, _v in ks.REVIEW_PATHS]


def test_review_errors() -> None:
    with pytest.raises(KubeAPIError, match="without a user name"):
        ks.review(FakeClient({"status": {}}))
    refused = error_for_status("POST", ks.REVIEW_PATHS[0][0], 401, b'{"message": "Unauthorized"}')
    with pytest.raises(KubeAPIError, match="unauthorized"):
        ks.review(FakeClient(refused))


def test_verify_names_the_server_the_user_and_the_file() -> None:
    down = KubeAPIError(f"cannot reach the apiserver at {VIP}: [Errno 111] Connection refused")
    factory = Factory(down)
    with pytest.raises(KubeconfigServerError) as info:
        ks.verify(factory, "/etc/kubernetes/kubelet.conf", VIP, "system:node:w1")
    assert str(info.value) == (
        f"verification failed: {VIP} did not accept an authenticated request with user 'system:node:w1' of "
        f"/etc/kubernetes/kubelet.conf: cannot reach the apiserver at {VIP}: [Errno 111] Connection refused"
    )
    assert factory.clients[0].closed


# --------------------------------------------------------------------------------------------------
# run() on real files
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def kubelet_conf(tmp_path: Path) -> Path:
    path = tmp_path / "kubelet.conf"
    path.write_text(KUBELET)
    path.chmod(0o600)
    return path


def others(directory: Path, *known: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p not in known)


def test_run_present_verifies_then_writes_keeps_the_original_and_a_backup(kubelet_conf: Path) -> None:
    factory = Factory()
    outcome = ks.run({"path": str(kubelet_conf), "server": VIP}, factory, check_mode=False)
    assert outcome.changed and outcome.verified and outcome.username == "system:node:w1"
    assert factory.calls == [(str(kubelet_conf), VIP)]
    assert kubelet_conf.read_text() == KUBELET.replace(OLD, VIP)
    assert stat.S_IMODE(kubelet_conf.stat().st_mode) == 0o600
    original = Path(outcome.original_file)
    assert original.read_text() == KUBELET and stat.S_IMODE(original.stat().st_mode) == 0o600
    assert outcome.backup_file and Path(outcome.backup_file).read_text() == KUBELET
    assert Path(outcome.backup_file).name.startswith(f"kubelet.conf.{os.getpid()}.")
    assert others(kubelet_conf.parent, kubelet_conf, original, Path(outcome.backup_file)) == []
    assert (outcome.before, outcome.after) == (OLD, VIP)
    assert outcome.diff["after"] == ks.redact(KUBELET.replace(OLD, VIP))


def test_run_keeps_the_original_and_only_the_newest_backups(kubelet_conf: Path) -> None:
    old = []
    for n in range(4):  # what four earlier runs left
        backup = kubelet_conf.parent / f"kubelet.conf.{100 + n}.2026-11-0{n + 1}@09:00:00~"
        backup.write_text(f"run {n}")
        os.utime(backup, ns=(n * 10**9, n * 10**9))
        old.append(backup)
    outcome = ks.run({"path": str(kubelet_conf), "server": VIP}, Factory(), check_mode=False)
    kept = {kubelet_conf, Path(outcome.original_file), Path(outcome.backup_file), *old[2:]}
    assert others(kubelet_conf.parent, *kept) == []  # the two oldest went; the original copy stays


def test_run_second_time_changes_nothing_and_calls_nobody(kubelet_conf: Path) -> None:
    ks.run({"path": str(kubelet_conf), "server": VIP}, Factory(), check_mode=False)
    factory = Factory()
    outcome = ks.run({"path": str(kubelet_conf), "server": "https://169.254.100.1:6444/"}, factory, check_mode=False)
    assert (outcome.changed, outcome.verified, outcome.backup_file, factory.calls) == (False, False, None, [])
    again = ks.run({"path": str(kubelet_conf), "server": VIP, "verify_always": True}, factory, check_mode=False)
    assert (again.changed, again.verified, again.username) == (False, True, "system:node:w1")


def test_run_failed_verification_writes_nothing(kubelet_conf: Path) -> None:
    refused = KubeAPIError("cannot reach the apiserver at https://169.254.100.1:6445: [Errno 111] Connection refused")
    with pytest.raises(KubeconfigServerError, match=r"^verification failed: https://169\.254\.100\.1:6445 did not"):
        ks.run({"path": str(kubelet_conf), "server": "https://169.254.100.1:6445"}, Factory(refused), False)
    assert kubelet_conf.read_text() == KUBELET
    assert others(kubelet_conf.parent, kubelet_conf) == []


def test_run_check_mode_verifies_and_writes_nothing(kubelet_conf: Path) -> None:
    factory = Factory()
    outcome = ks.run({"path": str(kubelet_conf), "server": VIP}, factory, check_mode=True)
    assert outcome.changed and outcome.verified and outcome.backup_file is None
    assert len(factory.calls) == 1
    assert kubelet_conf.read_text() == KUBELET and others(kubelet_conf.parent, kubelet_conf) == []


def test_run_without_verify_or_backup(kubelet_conf: Path) -> None:
    factory = Factory()
    outcome = ks.run({"path": str(kubelet_conf), "server": VIP, "verify": False, "backup": False}, factory, False)
    assert outcome.changed and not outcome.verified and outcome.backup_file is None and factory.calls == []
    assert others(kubelet_conf.parent, kubelet_conf) == ["kubelet.conf.kubeha-orig"]


def test_run_keeps_the_first_original_only(kubelet_conf: Path) -> None:
    ks.run({"path": str(kubelet_conf), "server": VIP, "backup": False}, Factory(), False)
    ks.run({"path": str(kubelet_conf), "server": "https://[fd6b:6861::1]:6444", "backup": False}, Factory(), False)
    assert Path(str(kubelet_conf) + ".kubeha-orig").read_text() == KUBELET
    outcome = ks.run({"path": str(kubelet_conf), "state": "absent"}, Factory(reviewed()), False)
    assert outcome.changed and (outcome.before, outcome.after) == ("https://[fd6b:6861::1]:6444", OLD)
    assert kubelet_conf.read_text() == KUBELET


def test_run_absent_restores_byte_for_byte_and_removes_the_original(kubelet_conf: Path) -> None:
    os.chmod(kubelet_conf, 0o640)
    ks.run({"path": str(kubelet_conf), "server": VIP, "backup": False}, Factory(), False)
    factory = Factory()
    checked = ks.run({"path": str(kubelet_conf), "state": "absent", "backup": False}, factory, True)
    assert checked.changed and kubelet_conf.read_text() == KUBELET.replace(OLD, VIP)
    outcome = ks.run({"path": str(kubelet_conf), "state": "absent", "backup": False}, factory, False)
    assert outcome.changed and outcome.verified and factory.calls[-1] == (str(kubelet_conf), OLD)
    assert kubelet_conf.read_bytes() == KUBELET.encode()
    assert stat.S_IMODE(kubelet_conf.stat().st_mode) == 0o640
    assert others(kubelet_conf.parent, kubelet_conf) == []
    again = ks.run({"path": str(kubelet_conf), "state": "absent"}, factory, False)
    assert again.changed is False


def test_run_absent_leaves_a_file_changed_since(kubelet_conf: Path) -> None:
    ks.run({"path": str(kubelet_conf), "server": VIP, "backup": False}, Factory(), False)
    renewed = KUBELET.replace(OLD, VIP).replace("Q0VSVA==", "TkVX")
    kubelet_conf.write_text(renewed)
    outcome = ks.run({"path": str(kubelet_conf), "state": "absent"}, Factory(), False)
    assert outcome.changed is False and outcome.warnings and "left as it is" in outcome.warnings[0]
    assert kubelet_conf.read_text() == renewed
    assert Path(outcome.original_file).read_text() == KUBELET


def test_run_crlf_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "several.conf"
    path.write_bytes(SEVERAL.encode())
    ks.run({"path": str(path), "server": VIP, "verify": False}, Factory(), False)
    assert path.read_bytes() == SEVERAL.replace('"https://10.0.0.2:6443"', f'"{VIP}"').encode()
    ks.run({"path": str(path), "state": "absent", "verify": False}, Factory(), False)
    assert path.read_bytes() == SEVERAL.encode()


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"server": VIP, "path": "/nonexistent/kubelet.conf"}, "/nonexistent/kubelet.conf does not exist"),
        ({"server": "http://169.254.100.1:6444"}, "'http://169.254.100.1:6444' is not an https:// URL"),
        ({"server": "https://fd6b:6861::1:6444"}, "must be written in brackets"),
        ({}, "server is required with state=present"),
        ({"server": VIP, "state": "gone"}, "state 'gone' is not one of present, absent"),
    ],
)
def test_run_bad_input_fails_before_anything(kubelet_conf: Path, params: dict[str, Any], needle: str) -> None:
    factory = Factory()
    with pytest.raises(KubeconfigServerError) as info:
        ks.run({"path": str(kubelet_conf)} | params, factory, False)
    assert needle in str(info.value)
    assert factory.calls == [] and kubelet_conf.read_text() == KUBELET
    assert others(kubelet_conf.parent, kubelet_conf) == []


def test_run_refuses_a_directory_and_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigServerError, match="is not a regular file"):
        ks.run({"path": str(tmp_path), "server": VIP}, Factory(), False)
    if os.geteuid() != 0:
        locked = tmp_path / "locked.conf"
        locked.write_text(KUBELET)
        locked.chmod(0)
        with pytest.raises(KubeconfigServerError, match="run the task with become"):
            ks.run({"path": str(locked), "server": VIP}, Factory(), False)


def test_run_a_failed_write_is_reported_and_leaves_the_file(kubelet_conf: Path) -> None:
    class Failing(ks.Files):
        def move(self, src: str, dest: str) -> None:
            raise OSError(28, "No space left on device")

    with pytest.raises(KubeconfigServerError, match=r"kubelet\.conf: writing failed: .*No space left on device"):
        ks.run({"path": str(kubelet_conf), "server": VIP, "backup": False}, Factory(), False, Failing())
    assert kubelet_conf.read_text() == KUBELET
    assert others(kubelet_conf.parent, kubelet_conf) == ["kubelet.conf.kubeha-orig"]
