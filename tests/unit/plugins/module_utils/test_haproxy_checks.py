# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The haproxy configuration the guard renders, run by the real haproxy (Debian's, installed by make setup) on
loopback against real TLS servers: its health checks accept an apiserver's certificate and refuse one that the same
CA signed for something else (a node's), by the name every apiserver certificate carries. Bounded: each haproxy
runs a few seconds and is stopped by its PID."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible_collections.kubeha.apiserver.plugins.module_utils._haproxy_config import (
    HaproxySettings,
    haproxy_server_name,
    render_haproxy,
)
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue(ca_key, ca_name, common_name: str, dns: list[str], out: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    crt, keyfile = out / f"{common_name}.crt", out / f"{common_name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(pem(key))
    return crt, keyfile


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-ca")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    # As kubeadm issues an apiserver's certificate, and a certificate of the same CA for something else.
    apiserver = issue(ca_key, ca_name, "kube-apiserver", ["kubernetes", "kubernetes.default"], d)
    other = issue(ca_key, ca_name, "system:node:w1", ["w1"], d)
    return {"ca": d / "ca.crt", "apiserver": apiserver[0], "apiserver_key": apiserver[1], "other": other[0],
            "other_key": other[1]}  # fmt: skip


class Readyz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        return


def tls_server(cert: Path, key: Path) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Readyz)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def apiserver(pki) -> Iterator[int]:
    yield from tls_server(pki["apiserver"], pki["apiserver_key"])


@pytest.fixture(scope="module")
def impostor(pki) -> Iterator[int]:
    yield from tls_server(pki["other"], pki["other_key"])


RUNNING_AS: dict[str, str] = {}  # the last haproxy's user id and root directory, read while it ran


def server_states(tmp_path: Path, pki, ports: list[int], **settings) -> dict[str, str]:
    """Run the rendered configuration until every server has a verdict (3 s at most); {server name: UP or DOWN}."""
    socket_path = tmp_path / "haproxy.sock"
    cfg = HaproxySettings(
        vips=("127.0.0.1",), port=free_port(), ca_file=str(pki["ca"]), interval_s=0.2, timeout_s=1.0, rise=1,
        fall=1, stats_socket=str(socket_path), **settings,
    )  # fmt: skip
    backends = [Backend("127.0.0.1", port) for port in ports]
    (tmp_path / "haproxy.cfg").write_text(render_haproxy(cfg, backends, [], prefer_local=False))
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(tmp_path / "haproxy.cfg")], stderr=subprocess.PIPE, text=True)
    states: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            time.sleep(0.3)
            if not socket_path.exists():
                continue
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(socket_path))
                sock.sendall(b"show stat\n")
                text = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
            rows = [line.split(",") for line in text.splitlines() if not line.startswith("#")]
            states = {row[1]: row[17].split()[0] for row in rows if len(row) > 17 and row[1] != "BACKEND"
                      and row[0] == "kube_apiservers"}  # fmt: skip
            if states and all(state in ("UP", "DOWN") for state in states.values()):
                status = Path(f"/proc/{proc.pid}/status").read_text()
                RUNNING_AS["uid"] = re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)
                RUNNING_AS["root"] = os.readlink(f"/proc/{proc.pid}/root")
                break
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    return states


def name(port: int) -> str:
    return haproxy_server_name(Backend("127.0.0.1", port))


def test_the_checks_accept_an_apiserver_and_refuse_another_certificate_of_the_ca(tmp_path, pki, apiserver, impostor):
    states = server_states(tmp_path, pki, [apiserver, impostor])
    assert states == {name(apiserver): "UP", name(impostor): "DOWN"}


def test_negative_control_with_the_chain_alone_the_other_certificate_passes(tmp_path, pki, apiserver, impostor):
    """What the checks did before verifyhost: the cluster CA's signature is all they asked."""
    states = server_states(tmp_path, pki, [apiserver, impostor], verify_name="")
    assert states == {name(apiserver): "UP", name(impostor): "UP"}


def test_haproxy_runs_as_its_own_user_in_a_chroot(tmp_path, pki, apiserver):
    # After loading the configuration, the CA and the sockets as root, haproxy drops to the haproxy user of
    # Debian's package and chroots to its empty directory. Negative control: with neither set it stays root.
    assert server_states(tmp_path, pki, [apiserver]) == {name(apiserver): "UP"}
    assert {"uid": str(pwd.getpwnam("haproxy").pw_uid), "root": "/var/lib/haproxy"} == RUNNING_AS
    assert server_states(tmp_path, pki, [apiserver], user="", chroot="") == {name(apiserver): "UP"}
    assert RUNNING_AS == {"uid": "0", "root": "/"}
