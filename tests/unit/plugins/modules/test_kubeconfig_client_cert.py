# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""kubeconfig_client_cert through AnsibleModule on real files: real certificates and keys (cryptography), real
kubeconfigs in a temporary directory. The key's text must never be in a result, a diff or a message."""

from __future__ import annotations

import base64
import datetime
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from ansible_collections.kubeha.apiserver.plugins.module_utils import _client_cert
from ansible_collections.kubeha.apiserver.plugins.modules import kubeconfig_client_cert

if TYPE_CHECKING:
    from .conftest import ModuleRunner

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

MODULE = kubeconfig_client_cert  # what conftest.py's run_module runs


def identity(name: str) -> tuple[bytes, bytes, str]:
    """A self-signed client certificate for ``name``, its key (PEM) and the fingerprint openssl would print."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    printed = "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, printed


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(path: Path, users: dict[str, dict[str, Any]], current_user: str) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.11:6443"}}],
        "contexts": [{"name": f"ctx-{u}", "context": {"cluster": "c", "user": u}} for u in users],
        "users": [{"name": u, "user": entry} for u, entry in users.items()],
        "current-context": f"ctx-{current_user}",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def secrets_of(key_pem: bytes) -> list[str]:
    """The texts that would give the key away: its PEM body lines, its base64, the base64 of the kubeconfig value."""
    body = [line for line in key_pem.decode().splitlines() if line and not line.startswith("-----")]
    return [*body, b64(key_pem)[:40]]


def assert_no_secret(text: str, key_pem: bytes) -> None:
    for secret in secrets_of(key_pem):
        assert secret not in text


@pytest.fixture
def node(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "pki").mkdir()
    return tmp_path


def test_files_are_used_as_they_are_relative_to_the_kubeconfig(node: Path, run_module: ModuleRunner) -> None:
    cert, key, printed = identity("system:node:w1")
    (node / "pki" / "kubelet-client-current.pem").write_bytes(cert + key)
    conf = kubeconfig(
        node / "kubelet.conf",
        {
            "default-auth": {
                "client-certificate": "pki/kubelet-client-current.pem",
                "client-key": "pki/kubelet-client-current.pem",
            }
        },
        "default-auth",
    )
    result = run_module({"kubeconfig": str(conf), "dest": str(node / "etc" / "client.pem")})
    assert result["changed"] is False
    assert result["source"] == "files"
    assert result["cert_file"] == str(node / "pki" / "kubelet-client-current.pem")  # not the working directory's
    assert result["key_file"] is None  # one file holds both
    assert result["fingerprint"] == printed
    assert not (node / "etc" / "client.pem").exists()
    assert_no_secret(run_module.out, key)


def test_separate_files_return_both_names(node: Path, run_module: ModuleRunner) -> None:
    cert, key, _printed = identity("system:node:w1")
    (node / "pki" / "c.crt").write_bytes(cert)
    (node / "pki" / "c.key").write_bytes(key)
    conf = kubeconfig(
        node / "k.conf", {"u": {"client-certificate": str(node / "pki" / "c.crt"), "client-key": "pki/c.key"}}, "u"
    )
    result = run_module({"kubeconfig": str(conf), "dest": str(node / "etc" / "client.pem")})
    assert (result["cert_file"], result["key_file"]) == (str(node / "pki" / "c.crt"), str(node / "pki" / "c.key"))


def test_embedded_credentials_are_written_private_once(node: Path, run_module: ModuleRunner) -> None:
    cert, key, printed = identity("system:node:w2")
    conf = kubeconfig(node / "k.conf", {"u": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}, "u")
    dest = node / "etc" / "client.pem"
    args = {"kubeconfig": str(conf), "dest": str(dest)}

    result = run_module(args, diff=True)
    assert result["changed"] is True and result["source"] == "embedded"
    assert (result["cert_file"], result["key_file"]) == (str(dest), None)
    assert dest.read_bytes() == cert + key
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert result["diff"]["before"] == "absent\n"
    assert result["diff"]["after"] == f"certificate {printed} and its key, mode 0600\n"
    assert_no_secret(run_module.out, key)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["client.pem"]  # no temporary file left

    again = run_module(args)
    assert again["changed"] is False

    dest.chmod(0o644)  # a mode that lets others read the key is repaired
    fixed = run_module(args)
    assert fixed["changed"] is True and stat.S_IMODE(dest.stat().st_mode) == 0o600


def test_check_mode_predicts_and_writes_nothing(node: Path, run_module: ModuleRunner) -> None:
    cert, key, _printed = identity("system:node:w2")
    conf = kubeconfig(node / "k.conf", {"u": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}, "u")
    dest = node / "etc" / "client.pem"
    result = run_module({"kubeconfig": str(conf), "dest": str(dest)}, check_mode=True, diff=True)
    assert result["changed"] is True
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    assert_no_secret(run_module.out, key)


def test_the_current_contexts_user_not_the_first(node: Path, run_module: ModuleRunner) -> None:
    first_cert, first_key, _first = identity("someone-else")
    cert, key, printed = identity("system:node:w1")
    users = {
        "first": {"client-certificate-data": b64(first_cert), "client-key-data": b64(first_key)},
        "node": {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
    }
    conf = kubeconfig(node / "k.conf", users, "node")
    result = run_module({"kubeconfig": str(conf), "dest": str(node / "etc" / "client.pem")})
    assert result["user"] == "node" and result["fingerprint"] == printed
    assert (node / "etc" / "client.pem").read_bytes() == cert + key


def test_a_stale_copy_goes_when_the_kubeconfig_names_files(node: Path, run_module: ModuleRunner) -> None:
    cert, key, _printed = identity("system:node:w1")
    dest = node / "etc" / "client.pem"
    embedded = kubeconfig(
        node / "a.conf", {"u": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}, "u"
    )
    run_module({"kubeconfig": str(embedded), "dest": str(dest)})
    assert dest.exists()
    (node / "pki" / "current.pem").write_bytes(cert + key)
    files = kubeconfig(
        node / "b.conf", {"u": {"client-certificate": "pki/current.pem", "client-key": "pki/current.pem"}}, "u"
    )
    result = run_module({"kubeconfig": str(files), "dest": str(dest)}, diff=True)
    assert result["changed"] is True and not dest.exists()
    assert result["diff"]["after"] == "absent\n"


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ({"token": "abc.def"}, "has no client certificate (it has token)"),
        ({"exec": {"command": "x"}}, "has no client certificate (it has exec)"),
        (
            {"client-certificate-data": "CERTIFICATE ONLY"},
            "has a client certificate but no client-key-data or client-key",
        ),
        (
            {"client-certificate-data": "not base64!", "client-key-data": "eA=="},
            "client-certificate-data is not valid base64",
        ),
        ({"client-certificate": "missing.crt", "client-key": "missing.key"}, "cannot read"),
    ],
)
def test_bad_credentials_are_refused_naming_the_reason_and_nothing_is_written(
    node: Path, run_module: ModuleRunner, user: dict[str, Any], message: str
) -> None:
    if user.get("client-certificate-data") == "CERTIFICATE ONLY":
        user = {"client-certificate-data": b64(identity("x")[0])}
    conf = kubeconfig(node / "k.conf", {"u": user}, "u")
    result = run_module({"kubeconfig": str(conf), "dest": str(node / "etc" / "client.pem")})
    assert result["failed"] is True
    assert message in result["msg"] and "users[u]" in result["msg"], result["msg"]
    assert list((node / "etc").iterdir()) == []


def test_a_key_that_is_not_the_certificates_is_refused_before_any_write(node: Path, run_module: ModuleRunner) -> None:
    cert, _key, _printed = identity("system:node:w1")
    _other_cert, other_key, _other = identity("another")
    conf = kubeconfig(
        node / "k.conf", {"u": {"client-certificate-data": b64(cert), "client-key-data": b64(other_key)}}, "u"
    )
    result = run_module({"kubeconfig": str(conf), "dest": str(node / "etc" / "client.pem")})
    assert result["failed"] is True
    assert "the client certificate and key do not load together" in result["msg"]
    assert list((node / "etc").iterdir()) == []
    assert_no_secret(run_module.out, other_key)


def test_negative_control_the_pair_check_accepts_a_matching_pair(node: Path) -> None:
    """The refusal above is the key's fault, not a check that refuses everything."""
    cert, key, _printed = identity("system:node:w1")
    _client_cert.prove_pair(cert, key, "test")
    _other_cert, other_key, _other = identity("another")
    with pytest.raises(_client_cert.ClientCertError):
        _client_cert.prove_pair(cert, other_key, "test")


def test_a_dest_that_is_not_a_regular_file_is_refused(node: Path, run_module: ModuleRunner) -> None:
    cert, key, _printed = identity("system:node:w1")
    conf = kubeconfig(node / "k.conf", {"u": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}, "u")
    (node / "etc" / "client.pem").symlink_to(node / "elsewhere")
    result = run_module({"kubeconfig": str(conf), "dest": str(node / "etc" / "client.pem")})
    assert result["failed"] is True and "is not a regular file" in result["msg"]
    assert not (node / "elsewhere").exists()


def test_the_pair_is_proven_without_a_file_on_disk(node: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """prove_pair keeps the key in an anonymous memory file: nothing appears in the temporary directory."""
    cert, key, _printed = identity("system:node:w1")
    spool = node / "tmp"
    spool.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool))
    monkeypatch.setattr("tempfile.tempdir", None)
    seen: list[str] = []
    real_open = os.open

    def watching_open(path: Any, *args: Any, **kwargs: Any) -> int:
        seen.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", watching_open)
    _client_cert.prove_pair(cert, key, "test")
    assert list(spool.iterdir()) == [] and seen == []
    # Negative control: the watch sees a temporary file made the usual way, even one removed at once.
    fd, name = tempfile.mkstemp()
    os.close(fd)
    os.unlink(name)
    assert name in seen and name.startswith(str(spool))
