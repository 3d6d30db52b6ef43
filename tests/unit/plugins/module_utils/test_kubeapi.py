# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""module_utils/_kubeapi without an apiserver: kubeconfig loading, error mapping, optimistic updates.

The HTTP layer is replaced by stand-ins: ``KubeClient._send`` (the one method doing a request) or the
client's opener, and a fake client with ``get``/``put``/``patch`` for the helpers built on them.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
import re
import stat
import sys
import textwrap
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils import _kubeapi
from ansible_collections.kubeha.apiserver.plugins.module_utils._daemonset_restart import (
    RESTARTED_AT,
    rollout_restart,
    wait_daemonset_rollout,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (
    Credentials,
    KubeAPIError,
    KubeClient,
    MissingLibraryError,
    describe_path,
    error_for_status,
    import_yaml,
    load_kubeconfig,
    memory_files,
    update_with_retry,
)

CA_PEM = b"-----BEGIN CERTIFICATE-----\nY2E=\n-----END CERTIFICATE-----\n"
CERT_PEM = b"-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n"
KEY_PEM = b"-----BEGIN PRIVATE KEY-----\na2V5\n-----END PRIVATE KEY-----\n"
CM_PATH = "/api/v1/namespaces/kube-system/configmaps/kube-proxy"
DS_PATH = "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def kubeconfig(tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any], **extra: Any) -> str:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubernetes", "cluster": cluster}],
        "contexts": [{"name": "kubernetes-admin@kubernetes", "context": {"cluster": "kubernetes", "user": "admin"}}],
        "current-context": "kubernetes-admin@kubernetes",
        "users": [{"name": "admin", "user": user}],
    }
    doc.update(extra)
    path = tmp_path / "admin.conf"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return str(path)


ADMIN_CLUSTER = {"certificate-authority-data": b64(CA_PEM), "server": "https://10.0.0.11:6443"}
ADMIN_USER = {"client-certificate-data": b64(CERT_PEM), "client-key-data": b64(KEY_PEM)}


# --------------------------------------------------------------------------------------------------
# load_kubeconfig
# --------------------------------------------------------------------------------------------------


def test_kubeadm_admin_conf_with_data_fields(tmp_path: Path) -> None:
    path = tmp_path / "admin.conf"
    path.write_text(
        textwrap.dedent(f"""\
        apiVersion: v1
        clusters:
        - cluster:
            certificate-authority-data: {b64(CA_PEM)}
            server: https://10.0.0.11:6443/
          name: kubernetes
        contexts:
        - context:
            cluster: kubernetes
            user: kubernetes-admin
          name: kubernetes-admin@kubernetes
        current-context: kubernetes-admin@kubernetes
        kind: Config
        preferences: {{}}
        users:
        - name: kubernetes-admin
          user:
            client-certificate-data: {b64(CERT_PEM)}
            client-key-data: {b64(KEY_PEM)}
        """)
    )
    creds = load_kubeconfig(str(path))
    assert creds.server == "https://10.0.0.11:6443"
    assert creds.source == str(path)
    assert (creds.ca_data, creds.client_cert, creds.client_key) == (CA_PEM, CERT_PEM, KEY_PEM)
    assert creds.token is None
    assert creds.insecure is False
    assert "BEGIN" not in repr(creds)  # key material stays out of reprs and tracebacks


def test_file_fields_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_bytes(CA_PEM)
    (tmp_path / "pki" / "admin.crt").write_bytes(CERT_PEM)
    (tmp_path / "pki" / "admin.key").write_bytes(KEY_PEM)
    absolute = str(tmp_path / "pki" / "admin.crt")
    path = kubeconfig(
        tmp_path,
        {"certificate-authority": "pki/ca.crt", "server": "https://10.0.0.11:6443"},
        {"client-certificate": absolute, "client-key": "pki/admin.key"},
    )
    creds = load_kubeconfig(path)
    assert (creds.ca_data, creds.client_cert, creds.client_key) == (CA_PEM, CERT_PEM, KEY_PEM)


def test_token_and_token_file(tmp_path: Path) -> None:
    assert load_kubeconfig(kubeconfig(tmp_path, ADMIN_CLUSTER, {"token": "abc.def"})).token == "abc.def"
    (tmp_path / "token").write_text("from-file\n")
    creds = load_kubeconfig(kubeconfig(tmp_path, ADMIN_CLUSTER, {"tokenFile": "token"}))
    assert creds.token == "from-file"
    assert creds.client_cert is None


def test_context_selection(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path,
        ADMIN_CLUSTER,
        ADMIN_USER,
        contexts=[
            {"name": "a", "context": {"cluster": "kubernetes", "user": "admin"}},
            {"name": "b", "context": {"cluster": "other", "user": "admin"}},
        ],
        clusters=[
            {"name": "kubernetes", "cluster": ADMIN_CLUSTER},
            {"name": "other", "cluster": {"server": "https://192.0.2.1:6443", "insecure-skip-tls-verify": True}},
        ],
        **{"current-context": "a"},
    )
    assert load_kubeconfig(path).server == "https://10.0.0.11:6443"
    other = load_kubeconfig(path, context="b", allow_insecure=True)
    assert other.server == "https://192.0.2.1:6443"
    assert other.insecure is True
    assert other.ca_data is None
    with pytest.raises(KubeAPIError, match=r"admin\.conf: context 'c' is not defined in contexts \(defined: a, b\)"):
        load_kubeconfig(path, context="c")


@pytest.mark.parametrize(
    ("cluster", "user", "extra", "message"),
    [
        ({"server": ""}, ADMIN_USER, {}, "clusters[kubernetes] has no server"),
        ({"server": "10.0.0.11:6443"}, ADMIN_USER, {}, "is not an https:// URL"),
        (ADMIN_CLUSTER, {"client-certificate-data": b64(CERT_PEM)}, {}, "has a client certificate but no client-key"),
        (ADMIN_CLUSTER, {"client-key-data": b64(KEY_PEM)}, {}, "has a client key but no client-certificate"),
        (ADMIN_CLUSTER, {}, {}, "users[admin] has no credentials"),
        (ADMIN_CLUSTER, {"exec": {"command": "aws"}}, {}, "uses an exec credential plugin, which is not supported"),
        (ADMIN_CLUSTER, {"username": "a", "password": "b"}, {}, "basic authentication"),
        (
            ADMIN_CLUSTER,
            {"client-certificate-data": "%%%", "client-key-data": "x"},
            {},
            "client-certificate-data is not",
        ),
        ({**ADMIN_CLUSTER, "proxy-url": "http://proxy:3128"}, ADMIN_USER, {}, "proxy-url is not supported"),
        (ADMIN_CLUSTER, ADMIN_USER, {"current-context": ""}, "no context was given and current-context is not set"),
        (ADMIN_CLUSTER, ADMIN_USER, {"users": []}, "user 'admin' is not defined in users (defined: none)"),
        (ADMIN_CLUSTER, ADMIN_USER, {"clusters": "x"}, "clusters is not a list"),
        (ADMIN_CLUSTER, {"client-certificate": "missing.crt", "client-key": "k"}, {}, "cannot read users[admin]"),
        (ADMIN_CLUSTER, {"tokenFile": "missing-token"}, {}, "cannot read users[admin].tokenFile"),
    ],
)
def test_kubeconfig_errors_name_the_file_and_the_field(
    tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    path = kubeconfig(tmp_path, cluster, user, **extra)
    with pytest.raises(KubeAPIError, match=re.escape(message)) as info:
        load_kubeconfig(path)
    assert str(info.value).startswith(path)


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        (
            {**ADMIN_CLUSTER, "server": "http://10.0.0.11:8080"},
            "clusters[kubernetes].server 'http://10.0.0.11:8080' is plain HTTP",
        ),
        ({**ADMIN_CLUSTER, "insecure-skip-tls-verify": True}, "clusters[kubernetes] sets insecure-skip-tls-verify"),
        (
            {"server": "https://10.0.0.11:6443"},
            "clusters[kubernetes] has no certificate-authority-data or certificate-authority",
        ),
    ],
)
def test_an_apiserver_that_is_not_verified_is_refused_unless_allowed(
    tmp_path: Path, cluster: dict[str, Any], message: str
) -> None:
    path = kubeconfig(tmp_path, cluster, ADMIN_USER)
    with pytest.raises(KubeAPIError) as info:
        load_kubeconfig(path)
    assert str(info.value).startswith(f"{path}: {message}: the apiserver could not be verified")
    assert "allow_insecure: true" in str(info.value)
    # Negative control: the explicit option takes the same file, as it is.
    allowed = load_kubeconfig(path, allow_insecure=True)
    assert allowed.server == cluster["server"]
    assert allowed.insecure is bool(cluster.get("insecure-skip-tls-verify"))


def test_a_verified_cluster_needs_no_option(tmp_path: Path) -> None:
    """The refusal is about verification only: the CA as data or as a file both pass by default."""
    assert load_kubeconfig(kubeconfig(tmp_path, ADMIN_CLUSTER, ADMIN_USER)).ca_data == CA_PEM
    (tmp_path / "ca.crt").write_bytes(CA_PEM)
    cluster = {"certificate-authority": "ca.crt", "server": "https://10.0.0.11:6443"}
    assert load_kubeconfig(kubeconfig(tmp_path, cluster, ADMIN_USER)).ca_data == CA_PEM


def test_kubeconfig_file_problems(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.conf")
    with pytest.raises(KubeAPIError, match=r"cannot read the kubeconfig .*nope\.conf: No such file"):
        load_kubeconfig(missing)
    bad = tmp_path / "bad.conf"
    bad.write_text("clusters: [\n")
    with pytest.raises(KubeAPIError, match=r"bad\.conf is not valid YAML"):
        load_kubeconfig(str(bad))
    bad.write_text("- a\n")
    with pytest.raises(KubeAPIError, match=r"bad\.conf is not a kubeconfig"):
        load_kubeconfig(str(bad))


def test_missing_pyyaml_is_a_distinct_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` raise ImportError
    with pytest.raises(MissingLibraryError) as info:
        import_yaml()
    assert info.value.library == "PyYAML"
    assert "ImportError" in info.value.import_traceback or "ModuleNotFoundError" in info.value.import_traceback
    with pytest.raises(MissingLibraryError):
        load_kubeconfig(kubeconfig(tmp_path, ADMIN_CLUSTER, ADMIN_USER))
    assert issubclass(MissingLibraryError, KubeAPIError)


# --------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (CM_PATH, "configmaps kube-system/kube-proxy"),
        (DS_PATH, "daemonsets.apps kube-system/kube-proxy"),
        (DS_PATH + "/status", "daemonsets.apps/status kube-system/kube-proxy"),
        ("/api/v1/namespaces/kube-system/configmaps", "configmaps in namespace kube-system"),
        ("/api/v1/nodes/cp1", "nodes cp1"),
        ("/api/v1/namespaces/kube-public", "namespaces kube-public"),
        ("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "selfsubjectaccessreviews.authorization.k8s.io"),
        ("/healthz", "/healthz"),
    ],
)
def test_describe_path(path: str, expected: str) -> None:
    assert describe_path(path) == expected


def status_body(message: str, code: int) -> bytes:
    return json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": code}).encode()


@pytest.mark.parametrize(
    ("method", "path", "status", "expected"),
    [
        (
            "PUT",
            CM_PATH,
            403,
            'forbidden: cannot update configmaps kube-system/kube-proxy: configmaps "kube-proxy" is forbidden',
        ),
        ("PATCH", DS_PATH, 403, "forbidden: cannot patch daemonsets.apps kube-system/kube-proxy: "),
        ("GET", CM_PATH, 404, "not found: cannot get configmaps kube-system/kube-proxy: "),
        ("PUT", CM_PATH, 409, "conflict: cannot update configmaps kube-system/kube-proxy: "),
        ("GET", "/api/v1/namespaces/kube-system/configmaps", 401, "unauthorized: cannot list configmaps in namespace"),
        ("POST", "/api/v1/namespaces/x/configmaps", 500, "HTTP 500: cannot create configmaps in namespace x: "),
    ],
)
def test_error_for_status(method: str, path: str, status: int, expected: str) -> None:
    error = error_for_status(method, path, status, status_body('configmaps "kube-proxy" is forbidden', status))
    assert str(error).startswith(expected)
    assert error.status == status


def test_error_for_status_without_a_status_body() -> None:
    assert str(error_for_status("GET", CM_PATH, 502, b"", "Bad Gateway")).endswith(": Bad Gateway")
    assert str(error_for_status("GET", CM_PATH, 500, b"oops\n")).endswith(": oops")
    long = error_for_status("GET", CM_PATH, 500, b"x" * 2000)
    assert str(long).endswith("...")
    assert len(str(long)) < 700


# --------------------------------------------------------------------------------------------------
# KubeClient with a stand-in for the HTTP layer
# --------------------------------------------------------------------------------------------------

TOKEN_CREDS = Credentials(server="https://10.0.0.11:6443", source="admin.conf", token="t0k3n")


class Recorder:
    """Replaces ``KubeClient._send``: answers from a queue and records the requests."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []

    def __call__(self, method: str, url: str, data: bytes | None, headers: dict[str, str]) -> tuple[int, bytes, str]:
        self.requests.append({"method": method, "url": url, "data": data, "headers": headers})
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.fixture
def client() -> KubeClient:
    with KubeClient(TOKEN_CREDS, timeout=3) as kube:
        yield kube


def test_get_returns_json_and_sends_the_token(client: KubeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    send = Recorder((200, b'{"kind": "ConfigMap", "data": {"a": "b"}}', "OK"))
    monkeypatch.setattr(client, "_send", send)
    assert client.get(CM_PATH) == {"kind": "ConfigMap", "data": {"a": "b"}}
    request = send.requests[0]
    assert request["method"] == "GET"
    assert request["url"] == "https://10.0.0.11:6443" + CM_PATH
    assert request["data"] is None
    assert request["headers"]["Authorization"] == "Bearer t0k3n"
    assert request["headers"]["Accept"] == "application/json"


def test_put_and_patch_send_json_bodies(client: KubeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    send = Recorder((200, b"{}", "OK"), (200, b"{}", "OK"), (201, b"{}", "Created"))
    monkeypatch.setattr(client, "_send", send)
    client.put(CM_PATH, {"data": {"k": "v"}})
    client.patch(DS_PATH, {"spec": {}}, "application/merge-patch+json")
    client.post("/api/v1/namespaces/x/configmaps", {"metadata": {"name": "y"}})
    assert [r["method"] for r in send.requests] == ["PUT", "PATCH", "POST"]
    assert json.loads(send.requests[0]["data"]) == {"data": {"k": "v"}}
    assert send.requests[0]["headers"]["Content-Type"] == "application/json"
    assert send.requests[1]["headers"]["Content-Type"] == "application/merge-patch+json"


def test_delete_with_and_without_options(client: KubeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    path = "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/r"
    status = {"kind": "Status", "status": "Success"}
    send = Recorder((200, json.dumps(status).encode(), "OK"), (200, b"{}", "OK"), (404, status_body("gone", 404), ""))
    monkeypatch.setattr(client, "_send", send)
    assert client.delete(path) == status
    client.delete(path, {"preconditions": {"uid": "u1", "resourceVersion": "7"}})
    assert [r["method"] for r in send.requests] == ["DELETE", "DELETE"]
    assert send.requests[0]["data"] is None
    assert "Content-Type" not in send.requests[0]["headers"]
    assert json.loads(send.requests[1]["data"]) == {"preconditions": {"uid": "u1", "resourceVersion": "7"}}
    assert send.requests[1]["headers"]["Content-Type"] == "application/json"
    with pytest.raises(KubeAPIError) as info:
        client.delete(path)
    assert str(info.value) == "not found: cannot delete roles.rbac.authorization.k8s.io default/r: gone"
    assert info.value.status == 404


def test_server_override(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = KubeClient(TOKEN_CREDS, server_override="https://10.0.0.12:6443/")
    send = Recorder((200, b"{}", "OK"))
    monkeypatch.setattr(kube, "_send", send)
    kube.get("/readyz")
    assert send.requests[0]["url"] == "https://10.0.0.12:6443/readyz"


@pytest.mark.parametrize(
    ("status", "start"),
    [
        (403, "forbidden: cannot get configmaps kube-system/kube-proxy: "),
        (404, "not found: cannot get configmaps kube-system/kube-proxy: "),
        (409, "conflict: cannot get configmaps kube-system/kube-proxy: "),
    ],
)
def test_http_errors_are_mapped(client: KubeClient, monkeypatch: pytest.MonkeyPatch, status: int, start: str) -> None:
    monkeypatch.setattr(client, "_send", Recorder((status, status_body("apiserver says no", status), "")))
    with pytest.raises(KubeAPIError) as info:
        client.get(CM_PATH)
    assert str(info.value) == start + "apiserver says no"
    assert info.value.status == status


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")), "Connection refused"),
        (TimeoutError("timed out"), "timed out"),
        (ConnectionResetError(104, "Connection reset by peer"), "Connection reset by peer"),
    ],
)
def test_connection_errors(client: KubeClient, monkeypatch: pytest.MonkeyPatch, error: Exception, reason: str) -> None:
    monkeypatch.setattr(client, "_send", Recorder(error))
    with pytest.raises(KubeAPIError, match=r"^cannot reach the apiserver at https://10\.0\.0\.11:6443: ") as info:
        client.get(CM_PATH)
    assert reason in str(info.value)
    assert info.value.status is None


def test_non_json_answers(client: KubeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "_send", Recorder((200, b"<html>", "OK"), (200, b"[1]", "OK"), (200, b"", "OK")))
    with pytest.raises(KubeAPIError, match="did not answer with JSON"):
        client.get(CM_PATH)
    with pytest.raises(KubeAPIError, match="unexpected answer"):
        client.get(CM_PATH)
    assert client.get(CM_PATH) == {}


class FakeResponse(io.BytesIO):
    status = 200
    reason = "OK"


class FakeOpener:
    """Stands in for the urllib opener under ``_send``."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.seen: list[Any] = []

    def open(self, request: Any, timeout: float) -> Any:
        self.seen.append((request, timeout))
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def test_send_turns_http_errors_into_statuses(client: KubeClient) -> None:
    error = urllib.error.HTTPError(
        "https://10.0.0.11:6443" + CM_PATH, 403, "Forbidden", Message(), io.BytesIO(status_body("nope", 403))
    )
    client._opener = FakeOpener(error)
    with pytest.raises(KubeAPIError, match=r"^forbidden: cannot get configmaps kube-system/kube-proxy: nope$"):
        client.get(CM_PATH)
    client._opener = FakeOpener(FakeResponse(b'{"ok": true}'))
    assert client.get(CM_PATH) == {"ok": True}
    request, timeout = client._opener.seen[0]
    assert (request.get_method(), request.full_url, timeout) == ("GET", "https://10.0.0.11:6443" + CM_PATH, 3)


def test_environment_proxies_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    kube = KubeClient(TOKEN_CREDS)
    assert not [h for h in kube._opener.handlers if getattr(h, "proxies", None)]
    # control: urllib's default opener would have used the proxy
    default = urllib.request.build_opener()
    assert [h.proxies["https"] for h in default.handlers if getattr(h, "proxies", None)] == [
        "http://proxy.invalid:3128"
    ]


def test_invalid_ca_is_reported_with_the_kubeconfig() -> None:
    creds = Credentials(server="https://x:6443", source="admin.conf", ca_data=b"garbage", token="t")
    with pytest.raises(KubeAPIError, match=r"^admin\.conf: the certificate authority is not a valid PEM certificate"):
        KubeClient(creds)


def self_signed(tmp_path: Path, encrypted: bool = False) -> tuple[bytes, bytes]:
    crypto = pytest.importorskip("cryptography")
    assert crypto  # only needed to skip without cryptography
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-admin")])
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 (also read by older Pythons)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    encryption = serialization.BestAvailableEncryption(b"secret") if encrypted else serialization.NoEncryption()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_the_client_key_never_reaches_a_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard builds a client at every discovery call: its key goes to ssl through memory files only."""
    cert, key = self_signed(tmp_path)
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool))
    monkeypatch.setattr("tempfile.tempdir", None)
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *args, **kw: opened.append(str(path)) or real_open(path, *args, **kw))
    creds = Credentials(server="https://10.0.0.11:6443", source="admin.conf", client_cert=cert, client_key=key)
    with KubeClient(creds):
        pass
    assert (opened, list(spool.iterdir())) == ([], [])
    # Negative control: the watch does see a key written the usual way (the fallback below, for a non-Linux host).
    monkeypatch.delattr(os, "memfd_create")
    with KubeClient(creds):
        pass
    written = [name for name in opened if os.path.basename(os.path.dirname(name)).startswith("kubeha-kubeapi-")]
    assert len(written) == 2 and all(name.startswith(str(spool)) for name in written)


def test_without_memory_files_the_key_is_private_and_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "memfd_create")
    with memory_files(b"cert", b"key") as names:
        assert [Path(name).read_bytes() for name in names] == [b"cert", b"key"]
        assert [stat.S_IMODE(os.stat(name).st_mode) for name in names] == [0o600, 0o600]
        assert stat.S_IMODE(os.stat(os.path.dirname(names[0])).st_mode) == 0o700
    assert not os.path.exists(os.path.dirname(names[0]))


def test_memory_files_hold_the_bytes_and_close_after(tmp_path: Path) -> None:
    with memory_files(b"first", b"second") as names:
        assert [Path(name).read_bytes() for name in names] == [b"first", b"second"]
        assert all(name.startswith("/proc/self/fd/") for name in names)
    assert not any(os.path.exists(name) for name in names)


def test_bad_or_encrypted_client_keys_are_reported(tmp_path: Path) -> None:
    cert, _key = self_signed(tmp_path)
    _cert, other_key = self_signed(tmp_path)
    mismatched = Credentials(server="https://x:6443", source="admin.conf", client_cert=cert, client_key=other_key)
    with pytest.raises(KubeAPIError, match=r"^admin\.conf: the client certificate or key is not valid"):
        KubeClient(mismatched)
    cert, encrypted_key = self_signed(tmp_path, encrypted=True)
    encrypted = Credentials(server="https://x:6443", source="admin.conf", client_cert=cert, client_key=encrypted_key)
    with pytest.raises(KubeAPIError, match="encrypted"):
        KubeClient(encrypted)


# --------------------------------------------------------------------------------------------------
# update_with_retry, rollout_restart, wait_daemonset_rollout with a fake client
# --------------------------------------------------------------------------------------------------


class FakeClient:
    """An in-memory object store with resourceVersions; ``conflicts`` PUTs fail with 409 first."""

    def __init__(self, obj: dict[str, Any], conflicts: int = 0, put_error: KubeAPIError | None = None) -> None:
        self.obj = obj
        self.conflicts = conflicts
        self.put_error = put_error
        self.calls: list[tuple[str, str]] = []
        self.puts: list[dict[str, Any]] = []
        self.patches: list[tuple[str, dict[str, Any], str]] = []

    def get(self, path: str) -> dict[str, Any]:
        self.calls.append(("GET", path))
        return json.loads(json.dumps(self.obj))

    def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("PUT", path))
        self.puts.append(json.loads(json.dumps(body)))
        if self.put_error is not None:
            raise self.put_error
        if self.conflicts:
            self.conflicts -= 1
            # someone else wrote in between: the stored object moves on
            version = int(self.obj["metadata"]["resourceVersion"]) + 1
            self.obj["metadata"]["resourceVersion"] = str(version)
            raise error_for_status("PUT", path, 409, status_body("the object has been modified", 409))
        if body["metadata"]["resourceVersion"] != self.obj["metadata"]["resourceVersion"]:
            raise AssertionError("stale resourceVersion sent")
        self.obj = json.loads(json.dumps(body))
        self.obj["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        return json.loads(json.dumps(self.obj))

    def patch(self, path: str, body: dict[str, Any], content_type: str) -> dict[str, Any]:
        self.calls.append(("PATCH", path))
        self.patches.append((path, body, content_type))
        return {"metadata": {"generation": 2}, "spec": {"updateStrategy": {"type": "RollingUpdate"}}}


def configmap(version: str = "100") -> dict[str, Any]:
    return {"metadata": {"name": "kube-proxy", "resourceVersion": version}, "data": {"k": "old"}}


def set_new(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["data"]["k"] == "new":
        return None
    obj["data"]["k"] = "new"
    return obj


def test_update_puts_with_the_resource_version() -> None:
    fake = FakeClient(configmap())
    before, after = update_with_retry(fake, CM_PATH, set_new)
    assert before["data"]["k"] == "old"
    assert after["data"]["k"] == "new"
    assert fake.puts[0]["metadata"]["resourceVersion"] == "100"
    assert [c[0] for c in fake.calls] == ["GET", "PUT"]


def test_update_does_not_put_when_nothing_to_do() -> None:
    fake = FakeClient({"metadata": {"resourceVersion": "7"}, "data": {"k": "new"}})
    before, after = update_with_retry(fake, CM_PATH, set_new)
    assert before is after
    assert [c[0] for c in fake.calls] == ["GET"]


def test_update_retries_conflicts_from_a_fresh_get() -> None:
    fake = FakeClient(configmap(), conflicts=2)
    seen_versions: list[str] = []

    def mutate(obj: dict[str, Any]) -> dict[str, Any] | None:
        seen_versions.append(obj["metadata"]["resourceVersion"])
        return set_new(obj)

    _before, after = update_with_retry(fake, CM_PATH, mutate)
    assert after["data"]["k"] == "new"
    assert [c[0] for c in fake.calls] == ["GET", "PUT", "GET", "PUT", "GET", "PUT"]
    assert seen_versions == ["100", "101", "102"]
    assert [p["metadata"]["resourceVersion"] for p in fake.puts] == ["100", "101", "102"]


def test_update_gives_up_after_the_attempts() -> None:
    fake = FakeClient(configmap(), conflicts=10)
    with pytest.raises(KubeAPIError, match=r"kept being changed by someone else \(3 conflicts\)") as info:
        update_with_retry(fake, CM_PATH, set_new, attempts=3)
    assert info.value.status == 409
    assert len(fake.puts) == 3


def test_update_does_not_retry_other_errors() -> None:
    forbidden = error_for_status("PUT", CM_PATH, 403, status_body("no", 403))
    fake = FakeClient(configmap(), put_error=forbidden)
    with pytest.raises(KubeAPIError, match=r"^forbidden: cannot update configmaps kube-system/kube-proxy: no$"):
        update_with_retry(fake, CM_PATH, set_new)
    assert len(fake.puts) == 1


def test_update_mutates_a_copy_and_needs_a_resource_version() -> None:
    original = configmap()
    fake = FakeClient(original)
    got: list[dict[str, Any]] = []

    def keep(obj: dict[str, Any]) -> dict[str, Any] | None:
        got.append(obj)
        obj["data"]["k"] = "scribbled"
        return None

    before, _after = update_with_retry(fake, CM_PATH, keep)
    assert before["data"]["k"] == "old"
    assert got[0] is not before
    with pytest.raises(KubeAPIError, match=r"no metadata\.resourceVersion"):
        update_with_retry(FakeClient({"data": {"k": "old"}}), CM_PATH, set_new)
    with pytest.raises(KubeAPIError, match="attempts must be at least 1"):
        update_with_retry(fake, CM_PATH, set_new, attempts=0)


def test_rollout_restart_patches_the_pod_template() -> None:
    fake = FakeClient({})
    rollout_restart(fake, "kube-system", "kube-proxy", now="2026-01-02T03:04:05Z")
    path, body, content_type = fake.patches[0]
    assert path == DS_PATH
    assert body == {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: "2026-01-02T03:04:05Z"}}}}}
    assert content_type == "application/strategic-merge-patch+json"
    rollout_restart(fake, "kube-system", "kube-proxy")
    stamp = fake.patches[1][1]["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)


class SequenceClient:
    """Answers GETs with successive DaemonSet states (the last one repeats)."""

    def __init__(self, *states: dict[str, Any]) -> None:
        self.states = list(states)
        self.gets = 0

    def get(self, path: str) -> dict[str, Any]:
        self.gets += 1
        return self.states[min(self.gets, len(self.states)) - 1]


def daemonset(generation: int, observed: int, desired: int, updated: int, available: int, **spec: Any) -> dict:
    return {
        "metadata": {"generation": generation},
        "spec": spec,
        "status": {
            "observedGeneration": observed,
            "desiredNumberScheduled": desired,
            "updatedNumberScheduled": updated,
            "numberAvailable": available,
        },
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_until_rolled_out() -> None:
    fake = SequenceClient(
        daemonset(2, 1, 3, 3, 3),  # the controller has not seen the restart yet
        daemonset(2, 2, 3, 1, 2),
        daemonset(2, 2, 3, 3, 2),
        daemonset(2, 2, 3, 3, 3),
    )
    clock = Clock()
    final = wait_daemonset_rollout(fake, "kube-system", "kube-proxy", 60, interval=2, clock=clock, sleep=clock.sleep)
    assert final["status"]["numberAvailable"] == 3
    assert fake.gets == 4
    assert clock.sleeps == [2, 2, 2]


def test_wait_with_no_pods_is_done_once_observed() -> None:
    clock = Clock()
    fake = SequenceClient({"metadata": {"generation": 1}, "status": {"observedGeneration": 1}})
    wait_daemonset_rollout(fake, "kube-system", "kube-proxy", 5, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []


def test_wait_times_out_with_the_progress() -> None:
    clock = Clock()
    fake = SequenceClient(daemonset(2, 2, 3, 2, 2))
    with pytest.raises(KubeAPIError, match=r"timed out after 5s waiting for DaemonSet kube-system/kube-proxy: 2 of 3"):
        wait_daemonset_rollout(fake, "kube-system", "kube-proxy", 5, interval=2, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [2, 2, 1]


def test_wait_refuses_on_delete_daemonsets() -> None:
    fake = SequenceClient(daemonset(2, 2, 3, 0, 3, updateStrategy={"type": "OnDelete"}))
    with pytest.raises(KubeAPIError, match="OnDelete update strategy"):
        wait_daemonset_rollout(fake, "kube-system", "kube-proxy", 5, sleep=lambda s: None)


def test_module_utils_file_is_stdlib_only() -> None:
    """PyYAML is imported lazily: the module must import (and report missing_required_lib) without it."""
    source = Path(_kubeapi.__file__).read_text()
    top_level = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in top_level if "yaml" in line]
