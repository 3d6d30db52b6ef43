# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Stand-in apiservers for the /readyz probes' unit tests: a throwaway PKI and small real HTTPS servers.

The fixtures ``pki`` and ``https_server`` (tests/unit/conftest.py) are made from these. The PKI has a cluster CA, an
unrelated CA, a server certificate for 127.0.0.1, 127.0.0.2 and ::1, one for another address, a client certificate,
and a server certificate that names only ``kubernetes``. A server listens on 127.0.0.1, 127.0.0.2 or ::1, on a free port
or the one asked for, answers every GET with a status and body (or a script of them, one per
request, then the last one again; a path given its own answer with ``route`` always gets that one), can require a
client certificate signed by the cluster CA, and can be killed as SIGKILL kills an apiserver. Certificates are made
with ``cryptography``, imported only when a PKI is made.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import ipaddress
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend


@dataclass
class Issued:
    cert: Path
    key: Path


class CA:
    def __init__(self, directory: Path, name: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / f"{name}.crt"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, ips: list[str], client: bool = False, dns: Sequence[str] = ()) -> Issued:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        sans: list[Any] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips] + [x509.DNSName(n) for n in dns]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return issued


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class PKI:
    ca: CA
    other_ca: CA
    server: Issued
    wrong_san: Issued
    client: Issued
    named: Issued  # a server certificate with the DNS name "kubernetes" and no IP address (a VIP's case)


def make_pki(directory: Path) -> PKI:
    ca = CA(directory, "cluster-ca")
    return PKI(
        ca=ca,
        other_ca=CA(directory, "other-ca"),
        server=ca.issue("apiserver", ["127.0.0.1", "127.0.0.2", "::1"]),
        wrong_san=ca.issue("apiserver-elsewhere", ["10.255.255.1"]),
        client=ca.issue("system:node:w1", [], client=True),
        named=ca.issue("apiserver-named", [], dns=["kubernetes"]),
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.connections.append(self.connection)

    def do_GET(self) -> None:
        status, body = self.server.answer(self.path)
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


class _KeepAliveHandler(_Handler):
    protocol_version = "HTTP/1.1"  # as Go's server: the connection stays open between requests


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], context: ssl.SSLContext, answers: Sequence[tuple[int, bytes]], keep_alive: bool
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _KeepAliveHandler if keep_alive else _Handler)
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.answers = list(answers)
        self.lock = threading.Lock()
        self.paths: list[str] = []
        self.connections: list[socket.socket] = []
        self.routes: dict[str, tuple[int, bytes]] = {}  # path (without the query) -> its own fixed answer

    def answer(self, path: str) -> tuple[int, bytes]:
        """The next scripted answer; the last one is kept for every request after it."""
        with self.lock:
            self.paths.append(path)
            routed = self.routes.get(path.split("?", 1)[0])
            if routed is not None:
                return routed
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def kill(self) -> None:
        """What SIGKILL does to an apiserver: the listener and every connection are closed at once."""
        self.shutdown()
        self.server_close()
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def handle_error(self, request: object, client_address: object) -> None:
        return  # failed handshakes are what some tests are about


class HTTPSServers:
    """Starts small HTTPS servers with the test PKI; a call returns the new server's backend."""

    def __init__(self, pki: PKI) -> None:
        self.pki = pki
        self.servers: dict[Backend, _Server] = {}

    def __call__(
        self,
        status: int = 200,
        body: bytes = b"ok",
        issued: Issued | None = None,
        require_client: bool = False,
        keep_alive: bool = False,
        host: str = "127.0.0.1",
        answers: Sequence[tuple[int, bytes]] = (),
        port: int = 0,
    ) -> Backend:
        """A server on ``host`` (``port``, else a free one); it answers ``answers`` one per request (the last one
        kept), else ``status, body``."""
        cert = issued or self.pki.server
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert.cert, cert.key)
        if require_client:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.pki.ca.path)
        server = _Server((host, port), context, list(answers) or [(status, body)], keep_alive)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        backend = Backend(host, server.server_address[1])
        self.servers[backend] = server
        return backend

    def route(self, backend: Backend, path: str, status: int, body: bytes) -> None:
        """From now on ``backend`` answers ``path`` with ``status, body`` (other paths as before)."""
        server = self.servers[backend]
        with server.lock:
            server.routes[path] = (status, body)

    def paths(self, backend: Backend) -> list[str]:
        return self.servers[backend].paths

    def connections(self, backend: Backend) -> int:
        return len(self.servers[backend].connections)

    def kill(self, backend: Backend) -> None:
        self.servers.pop(backend).kill()

    def close(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()


def closed_port(host: str = "127.0.0.1") -> Backend:
    """A port nothing listens on (bound, then released): a connect is refused."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return Backend(host, sock.getsockname()[1])
