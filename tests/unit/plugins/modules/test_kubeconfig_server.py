# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The kubeconfig_server module's main() through AnsibleModule, verifying against a real local TLS apiserver stand-in.

The stand-in listens on 127.0.0.1 with a serving certificate from a test CA that names only that address,
requires a client certificate from the same CA, and answers SelfSubjectReviews with the certificate's
common name and organizations, as kube-apiserver does.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils import _kubeconfig_server as ks
from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import MissingLibraryError
from ansible_collections.kubeha.apiserver.plugins.modules import kubeconfig_server

if TYPE_CHECKING:
    from .conftest import ModuleRunner

MODULE = kubeconfig_server  # what conftest.py's run_module runs

OLD = "https://10.88.0.11:6443"
REVIEW = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


# --------------------------------------------------------------------------------------------------
# A CA, an apiserver stand-in with a certificate for 127.0.0.1, and a node's kubelet.conf
# --------------------------------------------------------------------------------------------------


class PKI:
    def __init__(self) -> None:
        pytest.importorskip("cryptography")
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self.x509, self.hashes, self.serialization, self.ec = x509, hashes, serialization, ec
        self.NameOID, self.EKU = NameOID, ExtendedKeyUsageOID
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
        self.ca = (
            self._builder(self.ca_name, self.ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )

    def _builder(self, subject: Any, public_key: Any) -> Any:
        now = datetime.datetime.now(datetime.UTC)
        return (
            self.x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.ca_name if hasattr(self, "ca_name") else subject)
            .public_key(public_key)
            .serial_number(self.x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )

    def issue(self, common_name: str, org: str = "", server_ip: str = "") -> tuple[bytes, bytes]:
        x509, name_oid = self.x509, self.NameOID
        key = self.ec.generate_private_key(self.ec.SECP256R1())
        attrs = [x509.NameAttribute(name_oid.ORGANIZATION_NAME, org)] if org else []
        subject = x509.Name([*attrs, x509.NameAttribute(name_oid.COMMON_NAME, common_name)])
        builder = self._builder(subject, key.public_key())
        if server_ip:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(server_ip))]), critical=False
            ).add_extension(x509.ExtendedKeyUsage([self.EKU.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([self.EKU.CLIENT_AUTH]), critical=False)
        cert = builder.sign(self.ca_key, self.hashes.SHA256())
        ser = self.serialization
        key_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
        return cert.public_bytes(ser.Encoding.PEM), key_pem

    def ca_pem(self) -> bytes:
        return self.ca.public_bytes(self.serialization.Encoding.PEM)


class ReviewHandler(BaseHTTPRequestHandler):
    # How many more reviews to accept before answering 401 (None: all); the role tests set it.
    accept: int | None = None

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if ReviewHandler.accept is not None:
            if ReviewHandler.accept <= 0:
                self._answer(401, {"kind": "Status", "message": "Unauthorized", "code": 401})
                return
            ReviewHandler.accept -= 1
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        subject = {key: value for rdn in peer["subject"] for key, value in rdn}
        if self.path != REVIEW or body.get("kind") != "SelfSubjectReview":
            self._answer(404, {"kind": "Status", "message": "the server could not find the requested resource"})
            return
        user = {"username": subject["commonName"], "groups": [subject["organizationName"], "system:authenticated"]}
        self._answer(
            201, {"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1", "status": {"userInfo": user}}
        )

    def _answer(self, code: int, doc: dict[str, Any]) -> None:
        payload = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The stand-in on 127.0.0.1:<port>; yields its URL, the PKI and a closed port."""
    pki = PKI()
    tmp = tmp_path_factory.mktemp("apiserver")
    cert, key = pki.issue("kube-apiserver", server_ip="127.0.0.1")
    (tmp / "ca.crt").write_bytes(pki.ca_pem())
    (tmp / "apiserver.crt").write_bytes(cert)
    (tmp / "apiserver.key").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "apiserver.crt", tmp / "apiserver.key")
    context.load_verify_locations(tmp / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    server = HTTPServer(("127.0.0.1", 0), ReviewHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with socket.socket() as probe:  # a port nothing listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
        yield {
            "url": f"https://127.0.0.1:{server.server_port}",
            "port": server.server_port,
            "pki": pki,
            "closed": closed,
        }
    server.shutdown()
    server.server_close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def kubelet_conf(apiserver: dict[str, Any], tmp_path: Path) -> Path:
    pki: PKI = apiserver["pki"]
    cert, key = pki.issue("system:node:w1", org="system:nodes")
    text = f"""\
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {b64(pki.ca_pem())}
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
    client-certificate-data: {b64(cert)}
    client-key-data: {b64(key)}
"""
    path = tmp_path / "kubelet.conf"
    path.write_text(text)
    path.chmod(0o600)
    return path


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p != path and p.is_file())


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def test_present_verifies_through_tls_with_the_files_own_certificate(
    apiserver: dict[str, Any], kubelet_conf: Path, run_module: ModuleRunner
) -> None:
    before = kubelet_conf.read_text()
    result = run_module({"path": str(kubelet_conf), "server": apiserver["url"]}, diff=True)
    assert result["changed"] is True, result
    assert result["verified"] is True
    assert result["username"] == "system:node:w1"
    assert result["groups"] == ["system:nodes", "system:authenticated"]
    assert (result["before"], result["after"], result["server"]) == (OLD, apiserver["url"], apiserver["url"])
    assert kubelet_conf.read_text() == before.replace(OLD, apiserver["url"])
    assert stat.S_IMODE(kubelet_conf.stat().st_mode) == 0o600
    assert Path(result["backup_file"]).read_text() == before
    assert Path(result["original_file"]).read_text() == before
    assert stat.S_IMODE(Path(result["original_file"]).stat().st_mode) == 0o600
    assert len(siblings(kubelet_conf)) == 2
    key_data = before.split("client-key-data: ")[1].split("\n")[0]
    assert key_data not in json.dumps(result), "the diff shows the private key"
    assert f"server: {apiserver['url']}" in result["diff"]["after"]

    again = run_module({"path": str(kubelet_conf), "server": apiserver["url"]})
    assert (again["changed"], again["verified"], again["backup_file"]) == (False, False, None)
    checked = run_module({"path": str(kubelet_conf), "server": apiserver["url"], "verify_always": True})
    assert (checked["changed"], checked["username"]) == (False, "system:node:w1")

    restored = run_module({"path": str(kubelet_conf), "state": "absent", "verify": False})
    assert restored["changed"] is True and restored["after"] == OLD
    assert kubelet_conf.read_text() == before
    assert not Path(result["original_file"]).exists()


def test_check_mode_verifies_and_changes_nothing(
    apiserver: dict[str, Any], kubelet_conf: Path, run_module: ModuleRunner
) -> None:
    before = kubelet_conf.read_text()
    result = run_module({"path": str(kubelet_conf), "server": apiserver["url"]}, check_mode=True, diff=True)
    assert (result["changed"], result["username"], result["backup_file"]) == (True, "system:node:w1", None)
    assert result["diff"]["before"] != result["diff"]["after"]
    assert kubelet_conf.read_text() == before and siblings(kubelet_conf) == []


@pytest.mark.parametrize(
    ("server", "needles"),
    [
        ("closed", ["verification failed: https://127.0.0.1:", "Connection refused", "user 'system:node:w1' of"]),
        ("localhost", ["verification failed: https://localhost:", "certificate verify failed"]),
    ],
)
def test_a_server_that_does_not_work_is_refused_before_writing(
    apiserver: dict[str, Any], kubelet_conf: Path, run_module: ModuleRunner, server: str, needles: list[str]
) -> None:
    url = f"https://127.0.0.1:{apiserver['closed']}" if server == "closed" else f"https://localhost:{apiserver['port']}"
    before = kubelet_conf.read_text()
    result = run_module({"path": str(kubelet_conf), "server": url})
    assert result["failed"] is True
    for needle in needles:
        assert needle in result["msg"], result["msg"]
    assert url in result["msg"] and str(kubelet_conf) in result["msg"]
    assert "Traceback" not in json.dumps(result)
    assert kubelet_conf.read_text() == before and siblings(kubelet_conf) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({"server": "http://169.254.100.1:6444"}, "'http://169.254.100.1:6444' is not an https:// URL"),
        ({"server": "https://169.254.100.1:6444/api"}, "has a path, query or fragment"),
        ({"path": "/nonexistent/kubelet.conf", "server": "https://169.254.100.1:6444"}, "does not exist"),
        ({"state": "present"}, "state is present but all of the following are missing: server"),
        ({"server": "https://169.254.100.1:6444", "verify": False, "verify_always": True}, "verify_always needs"),
        ({"server": "https://169.254.100.1:6444", "timeout": 0}, "timeout must be 1 or more seconds, not 0"),
    ],
)
def test_bad_input_fails_clearly(
    kubelet_conf: Path, run_module: ModuleRunner, args: dict[str, Any], needle: str
) -> None:
    before = kubelet_conf.read_text()
    result = run_module({"path": str(kubelet_conf)} | args)
    assert result["failed"] is True and needle in result["msg"], result
    assert "Traceback" not in json.dumps(result)
    assert kubelet_conf.read_text() == before and siblings(kubelet_conf) == []


def test_not_a_kubeconfig_and_no_current_context(tmp_path: Path, run_module: ModuleRunner) -> None:
    pod = tmp_path / "pod.yaml"
    pod.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")
    result = run_module({"path": str(pod), "server": "https://169.254.100.1:6444"})
    assert result["failed"] and result["msg"].startswith(f"{pod} is not a kubeconfig")
    bare = tmp_path / "bare.conf"
    bare.write_text("clusters:\n- name: a\n  cluster: {server: 'https://10.0.0.1:6443'}\ncontexts: []\n")
    result = run_module({"path": str(bare), "server": "https://169.254.100.1:6444"})
    assert result["failed"] and result["msg"].startswith(f"{bare} has no current-context")


def test_missing_pyyaml_is_reported_as_such(
    kubelet_conf: Path, run_module: ModuleRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_yaml() -> Any:
        raise MissingLibraryError("PyYAML", "Traceback: no module named yaml")

    monkeypatch.setattr(ks, "import_yaml", no_yaml)
    result = run_module({"path": str(kubelet_conf), "server": "https://169.254.100.1:6444"})
    assert result["failed"] is True and "PyYAML" in result["msg"] and "Failed to import" in result["msg"]


def test_warning_when_absent_cannot_know_the_original(
    apiserver: dict[str, Any], kubelet_conf: Path, run_module: ModuleRunner
) -> None:
    kubelet_conf.write_text(kubelet_conf.read_text().replace(OLD, apiserver["url"]))
    result = run_module({"path": str(kubelet_conf), "state": "absent", "server": apiserver["url"]})
    assert result["changed"] is False
    assert any(
        "does not exist, so the server it had before is not known" in json.dumps(w) for w in result["warnings"]
    ), result["warnings"]


# --------------------------------------------------------------------------------------------------
# The kubeconfig_endpoint role's proof, switch and rollback: ansible-playbook on localhost, same stand-in
# --------------------------------------------------------------------------------------------------


def run_role(tmp_path: Path, server: str, path: Path) -> subprocess.CompletedProcess[str]:
    """The role's present.yml (the proof, then switch.yml per file) for one kubeconfig, without a unit."""
    import ansible_collections.kubeha.apiserver as collection

    collections_root = Path(next(iter(collection.__path__))).parents[2]
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {
                "ansible_python_interpreter": sys.executable,
                "kubeconfig_endpoint_python": sys.executable,
                "kubeconfig_endpoint_server": server,
                "kubeconfig_endpoint_retries": 2,
                "kubeconfig_endpoint_delay": 0,
                "kubeconfig_endpoint_files": [{"path": str(path), "unit": ""}],
                "kubeconfig_endpoint_marker_dir": str(tmp_path / "markers"),
            },
            "tasks": [
                {
                    "name": "The role's present path",
                    "ansible.builtin.include_role": {
                        "name": "kubeha.apiserver.kubeconfig_endpoint",
                        "tasks_from": "present",
                    },
                }
            ],
        }
    ]
    playbook = tmp_path / "play" / "play.yml"  # not beside the kubeconfig
    playbook.parent.mkdir(exist_ok=True)
    playbook.write_text(json.dumps(play))
    env = os.environ | {"ANSIBLE_COLLECTIONS_PATH": str(collections_root), "ANSIBLE_NOCOLOR": "1"}
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(playbook)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, check=False)


@pytest.fixture
def accept(monkeypatch: pytest.MonkeyPatch) -> Callable[[int | None], None]:
    def set_accept(count: int | None) -> None:
        monkeypatch.setattr(ReviewHandler, "accept", count)

    return set_accept


def test_role_switches_after_its_proof(
    apiserver: dict[str, Any], kubelet_conf: Path, tmp_path: Path, accept: Callable[[int | None], None]
) -> None:
    before = kubelet_conf.read_text()
    run = run_role(tmp_path, apiserver["url"], kubelet_conf)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert kubelet_conf.read_text() == before.replace(OLD, apiserver["url"])
    again = run_role(tmp_path, apiserver["url"], kubelet_conf)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-4000:]


def test_role_changes_nothing_when_its_proof_fails(
    apiserver: dict[str, Any], kubelet_conf: Path, tmp_path: Path, accept: Callable[[int | None], None]
) -> None:
    before = kubelet_conf.read_text()
    accept(0)
    run = run_role(tmp_path, apiserver["url"], kubelet_conf)
    assert run.returncode != 0
    assert f"localhost: the endpoint {apiserver['url']} does not work with this node's credentials, so nothing was " \
        "changed on this node: verification failed" in run.stdout, run.stdout[-4000:]  # fmt: skip
    assert "Unauthorized" in run.stdout
    assert kubelet_conf.read_text() == before and siblings(kubelet_conf) == []


def test_role_rolls_back_when_the_check_after_the_write_fails(
    apiserver: dict[str, Any], kubelet_conf: Path, tmp_path: Path, accept: Callable[[int | None], None]
) -> None:
    """The stand-in accepts the proof and the module's check before the write, then refuses: the role rolls back."""
    before = kubelet_conf.read_text()
    accept(2)
    run = run_role(tmp_path, apiserver["url"], kubelet_conf)
    assert run.returncode != 0
    expected = (
        rf"localhost: {re.escape(str(kubelet_conf))} was rolled back from its backup {re.escape(str(kubelet_conf))}"
        r"\.\d+\.\S+~, because \\?\"Verify again through the endpoint with the file's own credentials\\?\" failed: "
        rf"verification failed: {re.escape(apiserver['url'])} did not accept .*Unauthorized"
    )
    assert re.search(expected, run.stdout), run.stdout[-4000:]
    assert kubelet_conf.read_text() == before


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_restart_marker_says_a_restart_is_due_until_it_is_recorded(
    apiserver: dict[str, Any], kubelet_conf: Path, tmp_path: Path, run_module: ModuleRunner
) -> None:
    # Before the write, the marker records what the unit runs (the file as it was); after it, a restart is due until
    # the marker holds the new content's digest, on this run or any later one (a run that died before the restart).
    marker = tmp_path / "markers" / "kubelet.conf.sha256"
    args = {"path": str(kubelet_conf), "server": apiserver["url"], "restart_marker": str(marker)}
    original = sha256(kubelet_conf)
    predicted = run_module(args, check_mode=True)
    assert (predicted["changed"], predicted["restart_due"]) == (True, True) and not marker.exists()
    first = run_module(args)
    assert (first["changed"], first["restart_due"]) == (True, True)
    assert marker.read_text() == original + "\n" and first["digest"] == sha256(kubelet_conf)
    later = run_module(args)  # the run died before restarting: the next one still says so
    assert (later["changed"], later["restart_due"]) == (False, True)
    marker.write_text(later["digest"] + "\n")  # what the role records once the unit restarted
    done = run_module(args)
    assert (done["changed"], done["restart_due"]) == (False, False)


def test_negative_control_without_a_marker_an_unchanged_file_needs_no_restart(
    apiserver: dict[str, Any], kubelet_conf: Path, tmp_path: Path, run_module: ModuleRunner
) -> None:
    """A node the collection never restarted anything on: no marker, the file already at the endpoint."""
    marker = tmp_path / "markers" / "kubelet.conf.sha256"
    kubelet_conf.write_text(kubelet_conf.read_text().replace(OLD, apiserver["url"]))
    result = run_module({"path": str(kubelet_conf), "server": apiserver["url"], "restart_marker": str(marker)})
    assert (result["changed"], result["restart_due"]) == (False, False) and not marker.exists()
    assert run_module({"path": str(kubelet_conf), "server": apiserver["url"]})["restart_due"] is False


def test_role_records_the_marker_and_completes_a_switch_left_half_done(
    apiserver: dict[str, Any], kubelet_conf: Path, tmp_path: Path, run_module: ModuleRunner,
    accept: Callable[[int | None], None],
) -> None:  # fmt: skip
    # The module alone plays the run that wrote the file and died before the restart; the role's next run has no
    # file to change but a restart to do (here without a unit: it verifies again and records the marker), then
    # nothing more.
    marker = tmp_path / "markers" / (str(kubelet_conf).lstrip("/").replace("/", "_") + ".sha256")
    args = {"path": str(kubelet_conf), "server": apiserver["url"], "restart_marker": str(marker)}
    assert run_module(args)["restart_due"] is True
    switched = kubelet_conf.read_text()
    run = run_role(tmp_path, apiserver["url"], kubelet_conf)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "Verify again through the endpoint" in run.stdout and "changed=1" in run.stdout, run.stdout[-4000:]
    assert marker.read_text() == sha256(kubelet_conf) + "\n" and kubelet_conf.read_text() == switched
    again = run_role(tmp_path, apiserver["url"], kubelet_conf)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-4000:]
