# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The kubeadm lab's pure parts: the image archives ctr imports, kubeadm's configurations, the CA hash."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import tarfile

import container_images as ci
import kubeadm_flavour as kf
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from lab import Node

CP1 = Node("cp1", "nspawn", "control-plane", 11)
CP2 = Node("cp2", "nspawn", "control-plane", 12)
QEMU_WORKER = Node("w1", "qemu", "worker", 21)
TOKEN = "abcdef.0123456789abcdef"


def test_layers_are_reproducible_and_owned_by_root():
    entries = [("usr", None, 0o755), ("usr/bin/x", b"binary", 0o755)]
    assert ci._tar(entries) == ci._tar(entries)
    with tarfile.open(fileobj=io.BytesIO(ci._tar(entries))) as tar:
        assert [(m.name, m.uid, m.gid, m.mtime) for m in tar.getmembers()] == [("usr", 0, 0, 0), ("usr/bin/x", 0, 0, 0)]


def test_the_archive_names_each_image_and_stores_a_shared_layer_once(tmp_path):
    base = ci.base_layer()
    one = ci.Image("registry.k8s.io/a:v1", (base, ci.Layer(ci._tar([("a", b"1", 0o755)]))))
    two = ci.Image("registry.k8s.io/b:v1", (base, ci.Layer(ci._tar([("b", b"2", 0o755)]))), ("/b",))
    out = tmp_path / "images.tar"
    ci.write_archive([one, two], out)
    with tarfile.open(out) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
        assert [m["RepoTags"] for m in manifest] == [["registry.k8s.io/a:v1"], ["registry.k8s.io/b:v1"]]
        assert names.count(base.digest.removeprefix("sha256:") + "/layer.tar") == 1
        for entry, image in zip(manifest, (one, two), strict=True):
            config = json.load(tar.extractfile(entry["Config"]))
            # What containerd checks on import: each layer's sha256 is the config's diff ID, in order.
            digests = ["sha256:" + hashlib.sha256(tar.extractfile(n).read()).hexdigest() for n in entry["Layers"]]
            assert digests == config["rootfs"]["diff_ids"] == [layer.digest for layer in image.layers]
            assert (config["os"], config["architecture"]) == ("linux", "amd64")
        assert json.load(tar.extractfile(manifest[1]["Config"]))["config"]["Entrypoint"] == ["/b"]


def test_the_etcd_image_is_tagged_as_upstream_tags_its_releases():
    assert ci.etcd_image_tag("v3.6.16") == "3.6.16-0"


def docs(text: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(text)}


def test_the_first_master_initialises_a_cluster_without_a_load_balancer():
    config = docs(kf.init_config(CP1, TOKEN, "v1.36.3", "v3.6.16"))
    assert config["ClusterConfiguration"]["controlPlaneEndpoint"] == "10.88.0.11:6443"
    assert config["ClusterConfiguration"]["etcd"]["local"]["imageTag"] == "3.6.16-0"
    assert config["InitConfiguration"]["bootstrapTokens"][0]["token"] == TOKEN
    kubelet = config["KubeletConfiguration"]
    assert (kubelet["failCgroupV1"], kubelet["cgroupDriver"]) == (False, "cgroupfs")
    registration = config["InitConfiguration"]["nodeRegistration"]
    assert registration["ignorePreflightErrors"] == ["SystemVerification"]  # cgroup v1, on the shared kernel only
    assert registration["kubeletExtraArgs"] == [{"name": "node-ip", "value": "10.88.0.11,fd88:88::11"}]
    assert config["KubeProxyConfiguration"]["mode"] == "ipvs"


def test_a_master_joins_the_control_plane_and_a_qemu_worker_runs_on_cgroup_v2():
    master = docs(kf.join_config(CP2, "10.88.0.11:6443", TOKEN, "sha256:00"))["JoinConfiguration"]
    assert master["controlPlane"]["localAPIEndpoint"]["advertiseAddress"] == "10.88.0.12"
    assert master["discovery"]["bootstrapToken"] == {
        "apiServerEndpoint": "10.88.0.11:6443",
        "token": TOKEN,
        "caCertHashes": ["sha256:00"],
    }
    worker = docs(kf.join_config(QEMU_WORKER, "10.88.0.11:6443", TOKEN, "sha256:00"))["JoinConfiguration"]
    assert "controlPlane" not in worker
    assert "ignorePreflightErrors" not in worker["nodeRegistration"]


def test_the_discovery_hash_is_the_sha256_of_the_cas_public_key(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert kf.ca_cert_hash(tmp_path / "ca.crt") == "sha256:" + hashlib.sha256(spki).hexdigest()
    # Negative control: another key gives another hash.
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    other_spki = other.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert kf.ca_cert_hash(tmp_path / "ca.crt") != "sha256:" + hashlib.sha256(other_spki).hexdigest()


def test_a_master_on_the_shared_kernel_gets_a_cgroup_root_of_its_own_and_the_cluster_cas(tmp_path, monkeypatch):
    pki = tmp_path / "pki"
    (pki / "etcd").mkdir(parents=True)
    for name in kf.SHARED_CERTS:
        (pki / name).write_text(name)
    monkeypatch.setattr(kf.lab, "SHARED_PKI", pki)
    root = tmp_path / "root"
    assert kf.write_seed(CP1, root, "registry.k8s.io/pause:3.10.2") == ["containerd.service", "kubelet.service"]
    assert (root / "etc/default/kubelet").read_text() == "KUBELET_EXTRA_ARGS=--cgroup-root=/kubeha-lab/cp1\n"
    assert (root / "etc/kubernetes/pki/ca.key").stat().st_mode & 0o777 == 0o600
    assert (root / "etc/kubernetes/pki/etcd/ca.crt").read_text() == "etcd/ca.crt"
    containerd = (root / "etc/containerd/config.toml").read_text()
    assert 'sandbox_image = "registry.k8s.io/pause:3.10.2"' in containerd
    assert "restrict_oom_score_adj = true" in containerd


def test_a_qemu_worker_has_its_own_cgroups_and_no_cluster_ca_keys(tmp_path):
    kf.write_seed(QEMU_WORKER, tmp_path, "registry.k8s.io/pause:3.10.2")
    assert (tmp_path / "etc/default/kubelet").read_text() == ""
    assert not (tmp_path / "etc/kubernetes/pki").exists()
