# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The discovery_access module's main() through AnsibleModule, with a fake RBAC apiserver."""

from __future__ import annotations

import copy
import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (
    KubeAPIError,
    MissingLibraryError,
    error_for_status,
)
from ansible_collections.kubeha.apiserver.plugins.modules import discovery_access

if TYPE_CHECKING:
    from .conftest import ModuleRunner

MODULE = discovery_access  # what conftest.py's run_module runs

NAME = "kubeha-apiserver:discovery"
RBAC = "/apis/rbac.authorization.k8s.io/v1/namespaces/default"
ROLE_PATH = f"{RBAC}/roles/kubeha-apiserver%3Adiscovery"
BINDING_PATH = f"{RBAC}/rolebindings/kubeha-apiserver%3Adiscovery"
NS_PATH = "/api/v1/namespaces/default"
LABEL = {"app.kubernetes.io/managed-by": "kubeha.apiserver"}
RULE = {
    "apiGroups": ["discovery.k8s.io"],
    "resources": ["endpointslices"],
    "resourceNames": ["kubernetes"],
    "verbs": ["get"],
}
NODES = {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:nodes"}
REF = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME}


def status(code: int, message: str) -> bytes:
    return json.dumps({"kind": "Status", "code": code, "message": message}).encode()


class FakeAPI:
    """Roles and RoleBindings of namespace default as the apiserver keeps them: uid, resourceVersion,
    server-populated metadata, subject apiGroup defaulting, DELETE preconditions, 404 and 409."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.namespaces = {"default", "kube-system"}
        self.calls: list[tuple[str, str]] = []
        self.bodies: list[Any] = []
        self.errors: dict[tuple[str, str], KubeAPIError] = {}
        self.version = 100
        self.closed = False

    def _next(self) -> str:
        self.version += 1
        return str(self.version)

    def _call(self, method: str, path: str, body: Any = None) -> None:
        self.calls.append((method, path))
        self.bodies.append(copy.deepcopy(body))
        if (method, path) in self.errors:
            raise self.errors.pop((method, path))

    def _missing(self, method: str, path: str) -> KubeAPIError:
        return error_for_status(method, path, 404, status(404, f"{path.rsplit('/', 1)[-1]} not found"))

    def _stored(self, obj: dict[str, Any], uid: str | None = None) -> dict[str, Any]:
        stored = copy.deepcopy(obj)
        metadata = stored.setdefault("metadata", {})
        metadata["uid"] = uid or str(uuid.uuid4())
        metadata["resourceVersion"] = self._next()
        metadata.setdefault("creationTimestamp", "2025-01-01T00:00:00Z")
        metadata["managedFields"] = [{"manager": "kubeha.apiserver", "operation": "Update"}]
        for subject in stored.get("subjects") or []:
            if subject.get("kind") in ("User", "Group"):
                subject.setdefault("apiGroup", "rbac.authorization.k8s.io")
        return stored

    def put_object(self, path: str, obj: dict[str, Any]) -> None:
        """An object someone else created."""
        self.objects[path] = self._stored(obj)

    def get(self, path: str) -> dict[str, Any]:
        self._call("GET", path)
        if path.startswith("/api/v1/namespaces/"):
            name = path.rsplit("/", 1)[-1]
            if name not in self.namespaces:
                raise self._missing("GET", path)
            return {"kind": "Namespace", "metadata": {"name": name}}
        if path not in self.objects:
            raise self._missing("GET", path)
        return copy.deepcopy(self.objects[path])

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._call("POST", path, body)
        resource = {"Role": "roles", "RoleBinding": "rolebindings"}[body["kind"]]
        assert path == f"{RBAC}/{resource}"
        target = f"{path}/{body['metadata']['name'].replace(':', '%3A')}"
        if target in self.objects:
            raise error_for_status("POST", path, 409, status(409, "already exists"))
        self.objects[target] = self._stored(body)
        return copy.deepcopy(self.objects[target])

    def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._call("PUT", path, body)
        current = self.objects.get(path)
        if current is None:
            raise self._missing("PUT", path)
        if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]:
            raise error_for_status("PUT", path, 409, status(409, "the object has been modified"))
        if body.get("roleRef", current.get("roleRef")) != current.get("roleRef"):
            raise error_for_status("PUT", path, 422, status(422, "roleRef: Invalid value: cannot change roleRef"))
        self.objects[path] = self._stored(body, current["metadata"]["uid"])
        return copy.deepcopy(self.objects[path])

    def delete(self, path: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        self._call("DELETE", path, options)
        current = self.objects.get(path)
        if current is None:
            raise self._missing("DELETE", path)
        for key, value in ((options or {}).get("preconditions") or {}).items():
            if current["metadata"][key] != value:
                raise error_for_status("DELETE", path, 409, status(409, f"Precondition failed: {key}"))
        del self.objects[path]
        return {"kind": "Status", "status": "Success"}

    def close(self) -> None:
        self.closed = True

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.calls if m != "GET"]


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    env: dict[str, Any] = {"fake": FakeAPI(), "kubeconfigs": []}

    def make_client(kubeconfig: str, allow_insecure: bool = False) -> FakeAPI:
        env["kubeconfigs"].append(kubeconfig)
        return env["fake"]

    monkeypatch.setattr(discovery_access, "make_client", make_client)
    return env


def role(**extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": NAME, "namespace": "default", "labels": dict(LABEL)},
        "rules": [RULE],
    } | extra


def binding(**extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": NAME, "namespace": "default", "labels": dict(LABEL)},
        "roleRef": REF,
        "subjects": [NODES],
    } | extra


def test_present_creates_the_role_then_the_binding(api: dict[str, Any], run_module: ModuleRunner) -> None:
    fake: FakeAPI = api["fake"]
    result = run_module({})
    assert result["changed"] is True, result
    assert result["actions"] == [f"created Role default/{NAME}", f"created RoleBinding default/{NAME}"]
    assert fake.calls == [
        ("GET", ROLE_PATH),
        ("GET", BINDING_PATH),
        ("GET", NS_PATH),
        ("POST", f"{RBAC}/roles"),
        ("POST", f"{RBAC}/rolebindings"),
    ]
    assert fake.bodies[3] == role()
    assert fake.bodies[4] == binding()
    assert result["role"] == {
        "kind": "Role",
        "namespace": "default",
        "name": NAME,
        "action": "created",
        "changed": True,
        "exists": True,
        "reason": "",
        "rules": [RULE],
    }
    assert result["role_binding"]["role_ref"] == REF
    assert result["role_binding"]["subjects"] == [NODES]
    assert api["kubeconfigs"] == ["/etc/kubernetes/admin.conf"]
    assert fake.closed is True
    assert "diff" not in result and "warnings" not in result


def test_second_run_reads_only(api: dict[str, Any], run_module: ModuleRunner) -> None:
    run_module({})
    fake: FakeAPI = api["fake"]
    fake.calls.clear()
    result = run_module({}, diff=True)
    assert result["changed"] is False
    assert result["actions"] == []
    assert (result["role"]["action"], result["role_binding"]["action"]) == ("unchanged", "unchanged")
    assert fake.calls == [("GET", ROLE_PATH), ("GET", BINDING_PATH)]
    assert all(d["before"] == d["after"] for d in result["diff"])


def test_server_metadata_and_foreign_labels_do_not_churn(api: dict[str, Any], run_module: ModuleRunner) -> None:
    fake: FakeAPI = api["fake"]
    labels = LABEL | {"team": "platform"}
    subjects = [{"kind": "Group", "name": "system:nodes"}]  # the server defaults apiGroup
    fake.put_object(ROLE_PATH, role(metadata={"name": NAME, "namespace": "default", "labels": labels}))
    fake.put_object(BINDING_PATH, binding(subjects=subjects, metadata={"name": NAME, "labels": labels}))
    fake.objects[ROLE_PATH]["rules"][0]["verbs"] = ["get", "get"]  # the same set, written otherwise
    fake.objects[ROLE_PATH]["metadata"]["annotations"] = {"note": "kept"}
    result = run_module({})
    assert result["changed"] is False
    assert fake.writes() == []


def test_check_mode_predicts_and_writes_nothing(api: dict[str, Any], run_module: ModuleRunner) -> None:
    fake: FakeAPI = api["fake"]
    result = run_module({}, check_mode=True, diff=True)
    assert result["changed"] is True
    assert result["actions"] == [f"created Role default/{NAME}", f"created RoleBinding default/{NAME}"]
    assert fake.writes() == []
    assert fake.objects == {}
    assert result["diff"] == [
        {
            "before": {},
            "after": {"metadata": {"labels": LABEL}, "rules": [RULE]},
            "before_header": f"Role default/{NAME} (managed fields)",
            "after_header": f"Role default/{NAME} (managed fields)",
        },
        {
            "before": {},
            "after": {"metadata": {"labels": LABEL}, "roleRef": REF, "subjects": [NODES]},
            "before_header": f"RoleBinding default/{NAME} (managed fields)",
            "after_header": f"RoleBinding default/{NAME} (managed fields)",
        },
    ]


def test_wider_rules_are_narrowed_in_place(api: dict[str, Any], run_module: ModuleRunner) -> None:
    fake: FakeAPI = api["fake"]
    extra = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}
    fake.put_object(ROLE_PATH, role(rules=[RULE, extra]))
    fake.put_object(BINDING_PATH, binding())
    uid = fake.objects[ROLE_PATH]["metadata"]["uid"]
    version = fake.objects[ROLE_PATH]["metadata"]["resourceVersion"]
    result = run_module({}, diff=True)
    assert result["changed"] is True
    assert result["actions"] == [f"updated Role default/{NAME}"]
    assert fake.writes() == [("PUT", ROLE_PATH)]
    assert fake.bodies[-1]["metadata"]["resourceVersion"] == version
    assert fake.objects[ROLE_PATH]["rules"] == [RULE]
    assert fake.objects[ROLE_PATH]["metadata"]["uid"] == uid
    assert result["diff"][0]["before"]["rules"] == [RULE, extra]
    assert result["diff"][0]["after"]["rules"] == [RULE]


def test_update_retries_a_conflict(api: dict[str, Any], run_module: ModuleRunner) -> None:
    fake: FakeAPI = api["fake"]
    fake.put_object(ROLE_PATH, role())
    fake.put_object(BINDING_PATH, binding())
    fake.errors[("PUT", BINDING_PATH)] = error_for_status("PUT", BINDING_PATH, 409, status(409, "modified"))
    subjects = [{"kind": "User", "name": "system:node:w1"}, {"kind": "User", "name": "system:node:w2"}]
    result = run_module({"subjects": subjects})
    assert result["changed"] is True, result
    assert fake.writes() == [("PUT", BINDING_PATH), ("PUT", BINDING_PATH)]
    assert [s["name"] for s in fake.objects[BINDING_PATH]["subjects"]] == ["system:node:w1", "system:node:w2"]
    assert result["role_binding"]["action"] == "updated"


def test_other_role_ref_is_deleted_and_recreated(api: dict[str, Any], run_module: ModuleRunner) -> None:
    fake: FakeAPI = api["fake"]
    fake.put_object(ROLE_PATH, role())
    view = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}
    fake.put_object(BINDING_PATH, binding(roleRef=view))
    old = fake.objects[BINDING_PATH]["metadata"]
    result = run_module({}, diff=True)
    assert result["changed"] is True, result
    assert fake.writes() == [("DELETE", BINDING_PATH), ("POST", f"{RBAC}/rolebindings")]
    assert fake.bodies[-2] == {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "preconditions": {"uid": old["uid"], "resourceVersion": old["resourceVersion"]},
    }
    assert fake.objects[BINDING_PATH]["roleRef"] == REF
    binding_result = result["role_binding"]
    assert binding_result["action"] == "recreated"
    assert "roleRef ClusterRole 'view'" in binding_result["reason"] and "immutable" in binding_result["reason"]
    assert result["actions"][0].startswith(f"recreated RoleBinding default/{NAME}: its roleRef ClusterRole 'view'")
    assert result["diff"][1]["before"]["roleRef"] == view
    assert result["diff"][1]["after"]["roleRef"] == REF


def test_recreate_refuses_a_binding_changed_meanwhile(api: dict[str, Any], run_module: ModuleRunner) -> None:
    fake: FakeAPI = api["fake"]
    fake.put_object(ROLE_PATH, role())
    fake.put_object(
        BINDING_PATH, binding(roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "x"})
    )
    fake.errors[("DELETE", BINDING_PATH)] = error_for_status(
        "DELETE", BINDING_PATH, 409, status(409, "Precondition failed: resourceVersion")
    )
    result = run_module({})
    assert result["failed"] is True
    assert result["msg"].startswith(f"RoleBinding default/{NAME}: it was changed by someone else after it was read")
    assert result["msg"].endswith("run the task again; nothing was changed")
    assert ("POST", f"{RBAC}/rolebindings") not in fake.calls


def test_absent_deletes_the_binding_then_the_role(api: dict[str, Any], run_module: ModuleRunner) -> None:
    run_module({})
    fake: FakeAPI = api["fake"]
    fake.calls.clear()
    result = run_module({"state": "absent"})
    assert result["changed"] is True
    assert result["actions"] == [f"deleted Role default/{NAME}", f"deleted RoleBinding default/{NAME}"]
    assert fake.writes() == [("DELETE", BINDING_PATH), ("DELETE", ROLE_PATH)]
    assert fake.objects == {}
    assert (result["role"]["exists"], result["role_binding"]["exists"]) == (False, False)
    again = run_module({"state": "absent"})
    assert again["changed"] is False
    assert (again["role"]["action"], again["role_binding"]["action"]) == ("absent", "absent")


def test_absent_leaves_objects_it_does_not_manage(api: dict[str, Any], run_module: ModuleRunner) -> None:
    fake: FakeAPI = api["fake"]
    run_module({})
    fake.objects[ROLE_PATH]["metadata"]["labels"] = {}
    fake.calls.clear()
    result = run_module({"state": "absent"})
    assert result["failed"] is True
    assert result["msg"].startswith(f"Role default/{NAME} is not managed by kubeha.apiserver")
    assert fake.writes() == []


def test_present_adopts_an_unlabelled_role_with_a_warning(api: dict[str, Any], run_module: ModuleRunner) -> None:
    fake: FakeAPI = api["fake"]
    fake.put_object(ROLE_PATH, role(metadata={"name": NAME, "namespace": "default"}))
    result = run_module({})
    assert result["role"]["action"] == "updated"
    assert fake.objects[ROLE_PATH]["metadata"]["labels"] == LABEL
    expected = (
        f"Role default/{NAME} existed with no app.kubernetes.io/managed-by label; it is now labelled "
        "app.kubernetes.io/managed-by=kubeha.apiserver and managed by this module"
    )
    assert len(result["warnings"]) == 1
    assert expected in json.dumps(result["warnings"][0])


def test_missing_namespace_fails_before_any_write(api: dict[str, Any], run_module: ModuleRunner) -> None:
    result = run_module({"namespace": "nowhere"})
    assert result["failed"] is True
    assert result["msg"] == "namespace nowhere does not exist; nothing was changed"
    assert api["fake"].writes() == []


def test_forbidden_read_names_verb_and_resource(api: dict[str, Any], run_module: ModuleRunner) -> None:
    message = (
        'roles.rbac.authorization.k8s.io "kubeha-apiserver:discovery" is forbidden: User "system:node:cp1" cannot '
        'get resource "roles" in API group "rbac.authorization.k8s.io" in the namespace "default"'
    )
    api["fake"].errors[("GET", ROLE_PATH)] = error_for_status("GET", ROLE_PATH, 403, status(403, message))
    result = run_module({"kubeconfig": "/etc/kubernetes/kubelet.conf"})
    assert result["failed"] is True
    assert result["msg"].startswith(
        f"forbidden: cannot get roles.rbac.authorization.k8s.io default/{NAME}: {message} (the user of "
        "/etc/kubernetes/kubelet.conf needs get, create, update and delete on roles and rolebindings"
    )
    assert api["fake"].writes() == []


def test_failure_after_a_change_says_what_was_done(api: dict[str, Any], run_module: ModuleRunner) -> None:
    fake: FakeAPI = api["fake"]
    escalation = 'rolebindings.rbac.authorization.k8s.io "x" is forbidden: attempting to grant RBAC permissions'
    path = f"{RBAC}/rolebindings"
    fake.errors[("POST", path)] = error_for_status("POST", path, 403, status(403, escalation))
    result = run_module({})
    assert result["failed"] is True
    assert result["msg"].startswith(
        f"RoleBinding default/{NAME}: forbidden: cannot create rolebindings.rbac.authorization.k8s.io in namespace "
        f"default: {escalation}"
    )
    assert result["msg"].endswith(f"; already done: created Role default/{NAME}")
    assert result["changed"] is True
    assert result["role"]["action"] == "created"
    assert result["role_binding"]["action"] == "absent"


def test_bad_subject_kind_fails_before_any_client(api: dict[str, Any], run_module: ModuleRunner) -> None:
    result = run_module({"subjects": [{"kind": "Node", "name": "w2"}]})
    assert result["failed"] is True
    assert "kind" in result["msg"] and "Node" in result["msg"] and "ServiceAccount" in result["msg"]
    assert api["kubeconfigs"] == []


def test_namespace_on_a_group_fails_before_any_client(api: dict[str, Any], run_module: ModuleRunner) -> None:
    result = run_module({"subjects": [{"kind": "Group", "name": "system:nodes", "namespace": "default"}]})
    assert result["failed"] is True
    assert result["msg"] == (
        "subjects[0]: namespace is only meaningful for a ServiceAccount, not for Group 'system:nodes'"
    )
    assert api["kubeconfigs"] == []


def test_service_account_subject_gets_the_namespace(api: dict[str, Any], run_module: ModuleRunner) -> None:
    result = run_module({"subjects": [{"kind": "ServiceAccount", "name": "guard"}]})
    assert result["role_binding"]["subjects"] == [
        {"kind": "ServiceAccount", "apiGroup": "", "name": "guard", "namespace": "default"}
    ]


def test_missing_pyyaml(monkeypatch: pytest.MonkeyPatch, run_module: ModuleRunner) -> None:
    def make_client(kubeconfig: str, allow_insecure: bool = False) -> None:
        raise MissingLibraryError("PyYAML", "Traceback: No module named 'yaml'")

    monkeypatch.setattr(discovery_access, "make_client", make_client)
    result = run_module({})
    assert result["failed"] is True
    assert "PyYAML" in result["msg"] and "role" not in result
