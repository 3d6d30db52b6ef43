"""discovery_access against the lab's real apiservers (Node and RBAC authorizers), seen by a real node identity.

The proof is what the guard itself does: a GET of the ``kubernetes`` EndpointSlice in ``default`` with w2's
kubelet client certificate (read from the node's own kubelet.conf), sent from the host to cp1's apiserver and
verified against the lab CA. Before the module that answers 403 (the negative control), after state=present
200 with the three masters, after state=absent 403 again. The tests run in file order. site.yml grants the
same access, so the module-scoped fixture takes a snapshot of the two objects, removes them for the tests and
puts them back exactly at the end, whatever failed in between (guards running on the lab cannot discover
meanwhile: the suite runs under the lab's exclusive lock).
"""

from __future__ import annotations

import base64
import copy
import json
import posixpath
import tempfile
from pathlib import Path

import lab as labmod
import pytest
import yaml
from conftest import run_module

MODULE = "kubeha.apiserver.discovery_access"
ADMIN = "/etc/kubernetes/admin.conf"
NAME = "kubeha-apiserver:discovery"
# A second pair of objects, for the immutable-roleRef test only.
OTHER = "kubeha-apiserver:discovery-roleref-test"
NOBODY = "kubeha-test:nobody"
LABEL = "app.kubernetes.io/managed-by"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
SLICE = f"{SLICES}/kubernetes"  # what the guard reads
RULES = [
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "resourceNames": ["kubernetes"],
        "verbs": ["get"],
    }
]
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
PROPAGATION_S = 30  # the RBAC authorizer answers from its informer cache: a new binding takes a moment


def rbac_object(kind: str, name: str = NAME) -> dict | None:
    res = labmod.kubectl("get", kind, name, "-n", "default", "-o", "json", "--ignore-not-found")
    return json.loads(res.stdout) if res.stdout.strip() else None


def versions() -> dict[str, str | None]:
    return {
        kind: (obj or {}).get("metadata", {}).get("resourceVersion")
        for kind in ("role", "rolebinding")
        for obj in [rbac_object(kind)]
    }


def kubelet_identity(node: labmod.Node) -> tuple[bytes, bytes]:
    """The node's kubelet client certificate and key, from its kubelet.conf: inline data or file paths."""
    conf = yaml.safe_load(labmod.ssh(node, f"cat {KUBELET_CONF}").stdout)
    context = next(c["context"] for c in conf["contexts"] if c["name"] == conf["current-context"])
    user = next(u["user"] for u in conf["users"] if u["name"] == context["user"])

    def material(key: str) -> bytes:
        if user.get(f"{key}-data"):
            return base64.b64decode(user[f"{key}-data"])
        path = posixpath.join(posixpath.dirname(KUBELET_CONF), user[key])  # an absolute path stays as it is
        return labmod.ssh(node, f"cat {path}").stdout.encode()

    return material("client-certificate"), material("client-key")


def read_as(node: labmod.Node, master: labmod.Node, path: str = SLICE) -> tuple[int, dict]:
    """GET ``path`` (the kubernetes EndpointSlice) from ``master``'s apiserver as ``node``'s kubelet; (status, body)."""
    cert, key = kubelet_identity(node)  # read each time: kubelet (or a rotation drill) may replace it
    with tempfile.TemporaryDirectory(prefix="kubeha-discovery-test-") as tmp:
        files = {"cert": Path(tmp) / "client.crt", "key": Path(tmp) / "client.key", "body": Path(tmp) / "body"}
        files["cert"].write_bytes(cert)
        files["key"].touch(mode=0o600)
        files["key"].write_bytes(key)
        res = labmod.sh(
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            str(labmod.WORK / "ca.crt"),
            "--cert",
            str(files["cert"]),
            "--key",
            str(files["key"]),
            "-o",
            str(files["body"]),
            "-w",
            "%{http_code}",
            f"https://{master.addr4}:6443{path}",
            ns=labmod.HUB_NS,
            check=False,
        )
        assert res.returncode == 0, f"curl to {master.name} failed: {res.stderr}"
        body = files["body"].read_text()
    return int(res.stdout), json.loads(body) if body.strip() else {}


def wait_status(node: labmod.Node, master: labmod.Node, expected: int) -> dict:
    """Wait (with a deadline) until the apiserver answers ``expected``; that answer's body."""

    def answered() -> dict | None:
        code, body = read_as(node, master)
        return body if code == expected else None

    return labmod.wait_for(
        f"{node.name} reading the kubernetes EndpointSlice on {master.name} to answer {expected}",
        answered,
        PROPAGATION_S,
    )


def apiserver_ready(master: labmod.Node) -> None:
    labmod.wait_for(f"{master.name}'s apiserver /readyz", lambda: labmod.readyz(master.addr4), 120)


@pytest.fixture(scope="module")
def worker(nodes) -> labmod.Node:
    return nodes["w2"]


@pytest.fixture(scope="module")
def master(masters) -> labmod.Node:
    node = next(m for m in masters if m.addr4 == "10.88.0.11")
    apiserver_ready(node)
    return node


# What the apiserver fills in: left out when an object is put back as it was.
SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")


def restorable(obj: dict) -> dict:
    obj = copy.deepcopy(obj)
    for key in SERVER_FIELDS:
        obj["metadata"].pop(key, None)
    return obj


@pytest.fixture(scope="module")
def clean(control_node):
    """Neither object during the tests (the negative control needs that), and the lab as it was found after.

    site.yml grants the access (the lab may be left so by a demo or another suite): whatever the objects
    were, they are put back at the end, exactly, from a snapshot.
    """
    found = {kind: rbac_object(kind) for kind in ("role", "rolebinding")}

    def remove() -> None:
        for kind in ("rolebinding", "role"):  # the objects of any owner, the roleRef test's too
            for name in (NAME, OTHER):
                labmod.kubectl("delete", kind, name, "-n", "default", "--ignore-not-found")

    remove()
    yield
    try:
        result = run_module(control_node, MODULE, {"state": "absent", "kubeconfig": ADMIN})
    finally:
        remove()
        for kind in ("role", "rolebinding"):
            if found[kind] is not None:
                labmod.kubectl("create", "-f", "-", input=json.dumps(restorable(found[kind])))
    assert not result.get("failed"), result
    after = {kind: rbac_object(kind) for kind in ("role", "rolebinding")}
    assert {k: v and restorable(v) for k, v in after.items()} == {k: v and restorable(v) for k, v in found.items()}


def test_negative_control_the_node_cannot_read_the_endpointslice(clean, worker, master):
    code, body = read_as(worker, master)
    assert code == 403, body
    # Authenticated as the node (not a 401), and refused by the authorizers for exactly this request.
    message = body["message"]
    assert 'User "system:node:w2" cannot get resource "endpointslices"' in message, message
    assert 'in API group "discovery.k8s.io" in the namespace "default"' in message, message


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"subjects": [{"kind": "Node", "name": "w2"}]}, "Node"),
        (
            {"subjects": [{"kind": "Group", "name": "system:nodes", "namespace": "default"}]},
            "namespace is only meaningful for a ServiceAccount",
        ),
        ({"subjects": []}, "subjects is empty"),
        ({"subjects": [{"kind": "Group", "name": "system:authenticated"}]}, "stands for more than the nodes"),
        ({"name": "a/b"}, "'a/b' is not a valid Role name"),
        ({"namespace": "Default"}, "'Default' is not a valid namespace name"),
        ({"namespace": "no-such-namespace"}, "namespace no-such-namespace does not exist; nothing was changed"),
        ({"kubeconfig": "/nonexistent/admin.conf"}, "cannot read the kubeconfig /nonexistent/admin.conf"),
    ],
)
def test_bad_inputs_fail_clearly_and_change_nothing(clean, control_node, args, expected):
    before = versions()
    result = run_module(control_node, MODULE, {"kubeconfig": ADMIN} | args)
    assert result.get("failed") is True, result
    assert expected in result["msg"], result["msg"]
    assert "Traceback" not in json.dumps(result)
    assert versions() == before == {"role": None, "rolebinding": None}


def test_no_permission_names_the_verb_and_the_resource(clean, control_node):
    # cp1's own kubelet identity: a real user the Node authorizer and RBAC refuse RBAC objects to.
    result = run_module(control_node, MODULE, {"kubeconfig": KUBELET_CONF})
    assert result.get("failed") is True, result
    msg = result["msg"]
    assert msg.startswith(f"forbidden: cannot get roles.rbac.authorization.k8s.io default/{NAME}: "), msg
    assert 'User "system:node:cp1" cannot get resource "roles"' in msg, msg
    assert versions() == {"role": None, "rolebinding": None}


def test_check_mode_predicts_and_changes_nothing(clean, control_node, worker, master):
    result = run_module(control_node, MODULE, {"kubeconfig": ADMIN}, check=True, diff=True)
    assert not result.get("failed"), result
    assert result["changed"] is True
    assert result["actions"] == [f"created Role default/{NAME}", f"created RoleBinding default/{NAME}"]
    assert result["diff"][0]["before"] == {} and result["diff"][0]["after"]["rules"] == RULES
    assert versions() == {"role": None, "rolebinding": None}
    assert read_as(worker, master)[0] == 403


def test_present_lets_the_node_list_the_masters(clean, control_node, worker, master, masters):
    result = run_module(control_node, MODULE, {"kubeconfig": ADMIN}, diff=True)
    assert not result.get("failed"), result
    assert result["changed"] is True
    assert (result["role"]["action"], result["role_binding"]["action"]) == ("created", "created")

    role, binding = rbac_object("role"), rbac_object("rolebinding")
    assert role["rules"] == RULES  # exactly one rule: get of the one EndpointSlice
    assert role["metadata"]["labels"][LABEL] == "kubeha.apiserver"
    assert binding["metadata"]["labels"][LABEL] == "kubeha.apiserver"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME}
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]

    body = wait_status(worker, master, 200)
    endpoints = {
        (address, port["port"])
        for endpoint in body.get("endpoints") or []
        for address in endpoint["addresses"]
        for port in body.get("ports") or []
    }
    assert {(m.addr4, 6443) for m in masters} <= endpoints, endpoints
    assert {m.addr4 for m in masters} == {"10.88.0.11", "10.88.0.12", "10.88.0.13"}
    # Nothing more: not a list of the namespace's EndpointSlices, not another one by name.
    listed, listed_body = read_as(worker, master, SLICES)
    assert listed == 403 and 'cannot list resource "endpointslices"' in listed_body["message"], listed_body
    other, other_body = read_as(worker, master, f"{SLICES}/kubeha-other")
    assert other == 403 and 'cannot get resource "endpointslices"' in other_body["message"], other_body


def test_second_run_is_unchanged(clean, control_node):
    before = versions()
    result = run_module(control_node, MODULE, {"kubeconfig": ADMIN}, diff=True)
    assert not result.get("failed"), result
    assert result["changed"] is False and result["actions"] == []
    assert all(d["before"] == d["after"] for d in result["diff"])
    assert versions() == before


def test_check_mode_of_absent_changes_nothing(clean, control_node, worker, master):
    before = versions()
    result = run_module(control_node, MODULE, {"kubeconfig": ADMIN, "state": "absent"}, check=True)
    assert result["changed"] is True
    assert result["actions"] == [f"deleted Role default/{NAME}", f"deleted RoleBinding default/{NAME}"]
    assert versions() == before
    assert read_as(worker, master)[0] == 200


def test_other_role_ref_is_recreated(clean, control_node):
    """A RoleBinding's roleRef cannot be updated: the apiserver refuses it, so the module deletes and recreates."""
    # A user nobody authenticates as: the lab's real nodes never hold the view role, even for a moment.
    labmod.kubectl("create", "rolebinding", OTHER, "-n", "default", "--clusterrole=view", f"--user={NOBODY}")
    labmod.kubectl("label", "rolebinding", OTHER, "-n", "default", f"{LABEL}=kubeha.apiserver")
    old = rbac_object("rolebinding", OTHER)
    args = {"kubeconfig": ADMIN, "name": OTHER, "subjects": [{"kind": "User", "name": NOBODY}]}
    result = run_module(control_node, MODULE, args)
    assert not result.get("failed"), result
    assert result["role_binding"]["action"] == "recreated"
    assert "roleRef ClusterRole 'view'" in result["role_binding"]["reason"], result["role_binding"]
    new = rbac_object("rolebinding", OTHER)
    assert new["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OTHER}
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert new["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": NOBODY}]
    again = run_module(control_node, MODULE, args)
    assert again["changed"] is False, again


def test_absent_refuses_an_object_it_does_not_manage(clean, control_node):
    labmod.kubectl("label", "role", OTHER, "-n", "default", f"{LABEL}-")
    result = run_module(control_node, MODULE, {"kubeconfig": ADMIN, "name": OTHER, "state": "absent"})
    assert result.get("failed") is True, result
    assert f"Role default/{OTHER} is not managed by kubeha.apiserver" in result["msg"], result["msg"]
    assert rbac_object("role", OTHER) is not None and rbac_object("rolebinding", OTHER) is not None


def test_absent_takes_the_access_away(clean, control_node, worker, master):
    result = run_module(control_node, MODULE, {"kubeconfig": ADMIN, "state": "absent"}, diff=True)
    assert not result.get("failed"), result
    assert result["changed"] is True
    assert (result["role"]["action"], result["role_binding"]["action"]) == ("deleted", "deleted")
    assert versions() == {"role": None, "rolebinding": None}
    wait_status(worker, master, 403)
    again = run_module(control_node, MODULE, {"kubeconfig": ADMIN, "state": "absent"})
    assert again["changed"] is False, again
