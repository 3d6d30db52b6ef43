"""The apiserver_cert_sans role against the lab's three real kube-apiservers (kubeadm's PKI; systemd units on the
binary flavour, kubeadm's static pods on the kubeadm flavour).

The tests run in file order on one module-scoped snapshot of every master's apiserver.crt and apiserver.key:
bad input and check mode first (nothing may change), then the VIPs added (the apiservers reload the file by
themselves: no restart), a second run (changed=0), a forced restart of each master in turn (its systemd unit, or
its static pod: the manifest out of kubelet's directory and back, kubelet stopping and starting the pod), a rollback
(a restart that cannot work, after the apiserver already serves the new certificate), and the reset, which
must give back the original files byte for byte. While the role runs, /readyz of every master is sampled from
the host: never two not ready at once. The lab may be found with the role applied (site.yml runs it): the
fixture then starts from a reset, and its teardown writes every certificate and the role's files back exactly as
found, whatever failed in between.

Run under the lab's exclusive lock: the test restarts apiservers.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lab as labmod
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from scenarios import ansible_env, run_playbook

PLAY = Path(__file__).resolve().parent / "files" / "apiserver_cert_sans_play.yml"
PKI = "/etc/kubernetes/pki"
CERT, KEY = f"{PKI}/apiserver.crt", f"{PKI}/apiserver.key"
VIP4, VIP6 = "169.254.100.1", "fd6b:6861::1"
EXTRA = "kubeha-cert-test.lab"
NO_MANIFEST = "/etc/kubernetes/manifests/kubeha-no-such-apiserver.yaml"  # on no master, of either flavour
# The role's files beside the certificate: the originals, the issued copy, timestamped backups.
ROLE_FILES = re.compile(r"^apiserver\.(crt|key)(\.kubeha-orig|\.kubeha-issued|\.kubeha-new|\.[0-9-]+@[0-9:]+~)$")
SERVED = """
import base64, socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
with socket.create_connection((sys.argv[1], 6443), timeout=5) as sock:
    with ctx.wrap_socket(sock, server_hostname=sys.argv[2]) as tls:
        print(base64.b64encode(tls.getpeercert(True)).decode())
"""


def play(*extra: str, variables: dict | None = None) -> subprocess.CompletedProcess:
    return run_playbook(PLAY, *extra, variables=variables, timeout=900)


def changed(run: subprocess.CompletedProcess) -> int:
    return sum(int(n) for n in re.findall(r"changed=(\d+)", run.stdout.split("PLAY RECAP")[-1]))


def read(node: labmod.Node, path: str, missing_ok: bool = False) -> str | None:
    res = labmod.ssh(node, f"cat {path}", check=not missing_ok)
    return res.stdout if res.returncode == 0 else None


def files(masters) -> dict[str, dict[str, str]]:
    return {m.name: {"crt": read(m, CERT), "key": read(m, KEY)} for m in masters}


def role_files(node: labmod.Node) -> list[str]:
    return sorted(n for n in labmod.ssh(node, f"ls {PKI}").stdout.split() if ROLE_FILES.match(n))


def main_pid(node: labmod.Node) -> str:
    return labmod.apiserver_pid(node)


def served(node: labmod.Node, name: str) -> x509.Certificate:
    """The certificate the apiserver presents, verified from the host against the lab CA for `name`."""
    res = labmod.sh(sys.executable, "-c", SERVED, node.addr4, name, str(labmod.WORK / "ca.crt"), ns=labmod.HUB_NS)
    return x509.load_der_x509_certificate(base64.b64decode(res.stdout))


def sans(cert: x509.Certificate) -> list[str]:
    """The SANs in the certificate's order."""
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [f"{'DNS' if isinstance(n, x509.DNSName) else 'IP' if isinstance(n, x509.IPAddress) else '?'}:{n.value}"
            for n in ext]  # fmt: skip


def kept(before: x509.Certificate, after: x509.Certificate) -> dict:
    """Everything but the SANs, serial and signature, as a comparable dict."""

    def ext(cert: x509.Certificate, cls) -> tuple:
        e = cert.extensions.get_extension_for_class(cls)
        return (e.critical, e.value)

    return {
        "subject": (before.subject, after.subject),
        "issuer": (before.issuer, after.issuer),
        "not_before": (before.not_valid_before_utc, after.not_valid_before_utc),
        "not_after": (before.not_valid_after_utc, after.not_valid_after_utc),
        "key": tuple(
            c.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            for c in (before, after)
        ),
        "key_usage": (ext(before, x509.KeyUsage), ext(after, x509.KeyUsage)),
        "eku": (ext(before, x509.ExtendedKeyUsage), ext(after, x509.ExtendedKeyUsage)),
        "basic_constraints": (ext(before, x509.BasicConstraints), ext(after, x509.BasicConstraints)),
        "aki": (ext(before, x509.AuthorityKeyIdentifier), ext(after, x509.AuthorityKeyIdentifier)),
        "san_critical": (ext(before, x509.SubjectAlternativeName)[0], ext(after, x509.SubjectAlternativeName)[0]),
    }


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


class ReadySampler:
    """/readyz of every master from the host, all at once every 0.25 s, until stopped (at most `limit` s)."""

    def __init__(self, masters, limit: float = 900):
        self.masters, self.limit, self.samples = masters, limit, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        start = time.monotonic()
        with ThreadPoolExecutor(len(self.masters)) as pool:
            while not self.stop.is_set() and time.monotonic() - start < self.limit:
                at = time.monotonic() - start
                ready = list(pool.map(lambda m: labmod.readyz(m.addr4, timeout=2), self.masters))
                down = [m.name for m, ok in zip(self.masters, ready, strict=True) if not ok]
                self.samples.append((round(at, 2), down))
                self.stop.wait(0.25)

    def __enter__(self) -> ReadySampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    @property
    def most_down(self) -> int:
        return max((len(down) for _at, down in self.samples), default=0)

    def down_spans(self) -> dict[str, tuple[float, float]]:
        spans: dict[str, tuple[float, float]] = {}
        for at, down in self.samples:
            for name in down:
                first, _last = spans.get(name, (at, at))
                spans[name] = (first, at)
        return spans


def pki_snapshot(node: labmod.Node) -> dict[str, str]:
    """apiserver.crt, apiserver.key and the role's files beside them, by name."""
    return {name: read(node, f"{PKI}/{name}") for name in ["apiserver.crt", "apiserver.key", *role_files(node)]}


def put_back(node: labmod.Node, snapshot: dict[str, str]) -> None:
    """Exactly the files of `snapshot` (keys 0600, certificates 0644), the role's other files removed."""
    for name, content in snapshot.items():
        if read(node, f"{PKI}/{name}", missing_ok=True) != content:
            tmp, mode = f"{PKI}/.{name}.kubeha-test", "600" if ".key" in name else "644"
            labmod.ssh(node, f"cat > {tmp} <<'EOF'\n{content}EOF\nchmod {mode} {tmp} && mv {tmp} {PKI}/{name}")
    for name in set(role_files(node)) - set(snapshot):
        labmod.ssh(node, f"rm -f {PKI}/{name}")


@pytest.fixture(scope="module")
def original(masters):
    """Every master's original apiserver.crt and .key; the lab as found is put back byte for byte at the end.

    The lab may be found with the role already applied (playbooks/site.yml runs it): then the test starts from
    a reset, and the end writes back the certificates and the role's files exactly as they were found.
    """
    for m in masters:
        assert labmod.readyz(m.addr4), f"{m.name}'s apiserver is not ready: the lab is not healthy"
    # As site.yml's earlier plays leave the masters: the collection's virtualenv, which check mode cannot make.
    venv = "/opt/kubeha-apiserver/venv"
    for m in masters:
        labmod.ssh(m, f"test -x {venv}/bin/python || (apt-get update -qq && apt-get install -y -qq python3-venv"
                      f" >/dev/null && python3 -m venv {venv}) && {venv}/bin/pip install -q cryptography==50.0.2",
                   timeout=600)  # fmt: skip
    found = {m.name: pki_snapshot(m) for m in masters}
    if any(role_files(m) for m in masters):
        run = play(variables={"apiserver_cert_sans_state": "absent"})
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr
    pristine = files(masters)
    for m in masters:
        assert role_files(m) == [], f"{m.name} still has the role's files: {role_files(m)}"
        if "apiserver.crt.kubeha-orig" in found[m.name]:
            assert pristine[m.name]["crt"] == found[m.name]["apiserver.crt.kubeha-orig"]
    yield pristine
    for m in masters:
        put_back(m, found[m.name])
        want = load(found[m.name]["apiserver.crt"])
        labmod.wait_for(f"{m.name} serving its certificate as found", lambda m=m, w=want: served(m, m.addr4) == w, 60)
        labmod.wait_for(f"{m.name}'s apiserver ready", lambda m=m: labmod.readyz(m.addr4), 120)
        assert pki_snapshot(m) == found[m.name]


def test_bad_input_fails_before_any_change(masters, original) -> None:
    run = play(variables={"apiserver_cert_sans_extra": ["IP:300.1.1.1", "bad_name!", "ok.example"]})
    assert run.returncode != 0
    assert "SAN 'IP:300.1.1.1': '300.1.1.1' is not a valid IPv4 or IPv6 address" in run.stdout
    assert "SAN 'bad_name!': not a valid DNS name (label 'bad_name!' is not 1-63 letters" in run.stdout
    run = play(variables={"apiserver_cert_sans_ca_key": f"{PKI}/no-such-ca.key"})
    assert run.returncode != 0
    assert "missing on the masters (nothing was changed): " in run.stdout
    for m in masters:
        assert f"{m.name}:{PKI}/no-such-ca.key" in run.stdout
    assert files(masters) == original
    assert all(role_files(m) == [] for m in masters)


def test_check_mode_reports_each_master_and_changes_nothing(masters, original) -> None:
    run = play("--check")
    assert run.returncode == 0, run.stdout + run.stderr
    for m in masters:
        assert f"{m.name}: a new certificate would add IP:{VIP4}, IP:{VIP6}" in run.stdout
    assert files(masters) == original
    assert all(role_files(m) == [] for m in masters)
    # The negative control of the TLS check below: the VIP is not a name of the served certificate yet.
    with pytest.raises(RuntimeError, match=re.escape(f"IP address mismatch, certificate is not valid for '{VIP4}'")):
        served(masters[0], VIP4)


def test_present_adds_the_vips_and_keeps_everything_else(masters, original, record_property) -> None:
    pids = {m.name: main_pid(m) for m in masters}
    started = time.monotonic()
    with ReadySampler(masters) as sampler:
        run = play()
    took = time.monotonic() - started
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr
    record_property("present_seconds", round(took, 1))
    now = files(masters)
    for m in masters:
        before, after = load(original[m.name]["crt"]), load(now[m.name]["crt"])
        assert sans(after) == [*sans(before), f"IP:{VIP4}", f"IP:{VIP6}"]
        assert all(a == b for a, b in kept(before, after).values()), kept(before, after)
        assert now[m.name]["key"] == original[m.name]["key"]
        # The backups: the original kept for the reset, and this rotation's timestamped copy.
        assert read(m, f"{CERT}.kubeha-orig") == original[m.name]["crt"]
        assert read(m, f"{KEY}.kubeha-orig") == original[m.name]["key"]
        stamped = [n for n in role_files(m) if n.endswith("~")]
        assert len(stamped) == 2 and read(m, f"{PKI}/{stamped[0]}") == original[m.name]["crt"]
        # What a client of the VIP sees: the served certificate verifies for both VIPs.
        for name in (VIP4, VIP6):
            assert served(m, name) == after
        # kube-apiserver reloaded the file by itself: the same process serves the new certificate.
        assert main_pid(m) == pids[m.name]
    assert sampler.samples and sampler.most_down == 0, sampler.samples
    print(f"\npresent: 3 masters in {took:.1f} s, no restart, {len(sampler.samples)} /readyz samples, none down")


def test_second_run_changes_nothing(masters) -> None:
    before = files(masters)
    run = play()
    assert run.returncode == 0, run.stdout[-4000:]
    assert changed(run) == 0, run.stdout.split("PLAY RECAP")[-1]
    assert files(masters) == before


def test_forced_restarts_take_one_master_down_at_a_time(masters, original) -> None:
    pids = {m.name: main_pid(m) for m in masters}
    method = "static_pod" if labmod.state_flavour() == "kubeadm" else "systemd"
    variables = {"apiserver_cert_sans_extra": [EXTRA], "apiserver_cert_sans_restart": method}
    started = time.monotonic()
    with ReadySampler(masters) as sampler:
        run = play(variables=variables)
    took = time.monotonic() - started
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr
    for m in masters:
        assert main_pid(m) != pids[m.name], f"{m.name} was not restarted"
        cert = served(m, VIP4)
        assert sans(cert) == [*sans(load(original[m.name]["crt"])), f"IP:{VIP4}", f"IP:{VIP6}", f"DNS:{EXTRA}"]
    spans = sampler.down_spans()
    print(f"\n{method} restarts: 3 masters in {took:.1f} s; not ready (s after start): {spans}")
    # Never two down at once; and the sampler did see each restart (else the bound would prove nothing).
    assert sampler.most_down == 1, sampler.samples
    assert sorted(spans) == sorted(m.name for m in masters), spans
    order = sorted(spans, key=lambda name: spans[name][0])
    assert order == [m.name for m in masters]
    assert all(spans[a][1] < spans[b][0] for a, b in itertools.pairwise(order)), spans


def test_a_failed_rotation_is_rolled_back(masters) -> None:
    """A restart that cannot work (a static pod manifest that is not there), after the certificate file was replaced.

    The apiserver picks up the new file by itself within milliseconds; the rollback must make it serve the previous
    certificate again.
    """
    before = files(masters)
    variables = {"apiserver_cert_sans_extra": [EXTRA, "rollback.kubeha-cert-test.lab"],
                 "apiserver_cert_sans_restart": "static_pod", "apiserver_cert_sans_manifest": NO_MANIFEST}  # fmt: skip
    with ReadySampler(masters) as sampler:
        run = play(variables=variables)
    assert run.returncode != 0
    first = masters[0].name
    # One message names the master, the step, the cause and the outcome.
    assert f"cannot restart the apiserver of {first}: no static pod manifest at {NO_MANIFEST}" in run.stdout
    assert f"Rolled back: {first} serves its previous certificate again and answers /readyz" in run.stdout
    assert files(masters) == before, "the first master's files are not back, or another master was touched"
    assert served(masters[0], VIP4) == load(before[first]["crt"])
    assert labmod.readyz(masters[0].addr4)
    assert sampler.most_down <= 1, sampler.samples
    # The failed rotation left its backup; the other masters were never reached.
    assert len([n for n in role_files(masters[0]) if n.endswith("~")]) == 6
    assert all(len([n for n in role_files(m) if n.endswith("~")]) == 4 for m in masters[1:])


# A manifest where no kubelet looks, of either flavour: the test plays the file moves, not a real static pod.
TEST_MANIFEST = "/etc/kubeha-cert-test/manifests/kube-apiserver.yaml"
TEST_HOLD = "/etc/kubeha-cert-test/kube-apiserver.yaml.kubeha-hold"


def test_a_manifest_left_aside_by_an_interrupted_run_is_put_back(masters) -> None:
    # What a run killed between restart.yml's two moves leaves: the manifest aside, the apiserver stopped. The next
    # run puts it back before anything else (the reset includes the same task file first; its run here would leave
    # test_reset nothing to do). Negative control: with a manifest there again (someone put one back by hand), the
    # aside copy is left alone and the manifest kept.
    victim, other = masters[1], masters[2]
    for node, files_there in (
        (victim, f"echo held > {TEST_HOLD}"),
        (other, f"echo held > {TEST_HOLD} && echo mine > {TEST_MANIFEST}"),
    ):
        labmod.ssh(node, f"mkdir -p {Path(TEST_MANIFEST).parent} && {files_there}")
    try:
        # The names the earlier tests left: no rotation, only the recovery.
        run = play(variables={"apiserver_cert_sans_manifest": TEST_MANIFEST, "apiserver_cert_sans_extra": [EXTRA]})
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr
        assert read(victim, TEST_MANIFEST) == "held\n" and read(victim, TEST_HOLD, missing_ok=True) is None
        assert read(other, TEST_MANIFEST) == "mine\n" and read(other, TEST_HOLD) == "held\n"
        recovered = run.stdout.split("Put back the static pod manifest an interrupted run left aside")[1].split(
            "TASK ["
        )[0]
        # The delegated host is shown with its address when it has one: "changed: [cp1 -> cp2(10.88.0.12)]".
        assert re.search(rf"changed: \[\w+ -> {victim.name}(\([^)]*\))?\]", recovered), recovered
        assert not re.search(rf"changed: \[\w+ -> {other.name}(\([^)]*\))?\]", recovered), recovered
    finally:
        for node in (victim, other):
            labmod.ssh(node, f"rm -rf {Path(TEST_MANIFEST).parent.parent}")


def test_reset_gives_the_original_certificates_back(masters, original) -> None:
    with ReadySampler(masters) as sampler:
        run = play(variables={"apiserver_cert_sans_state": "absent"})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr
    assert files(masters) == original
    for m in masters:
        assert role_files(m) == []
        assert served(m, m.addr4) == load(original[m.name]["crt"])
    assert sampler.most_down <= 1, sampler.samples
    again = play(variables={"apiserver_cert_sans_state": "absent"})
    assert again.returncode == 0 and changed(again) == 0, again.stdout.split("PLAY RECAP")[-1]


# The first task after the new certificate is in place, as ansible-playbook prints it when it starts.
ACTIVATE = "Make the apiserver of the master serve it, and verify"


def killed_after_the_certificate_is_in_place() -> str:
    """Run the role (a new name to add) and SIGKILL the controller's run as the first master's activation starts:
    the new certificate is in place, not yet verified or served by a restart. Bounded: 600 s. Its output."""
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(labmod.WORK / "inventory.yml"),
            str(PLAY), "-e", json.dumps({"apiserver_cert_sans_extra": ["killed.kubeha-cert-test.lab"]})]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=ansible_env(), start_new_session=True)
    seen: list[str] = []
    timer = threading.Timer(600, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        for line in proc.stdout:
            seen.append(line)
            if ACTIVATE in line:
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        timer.cancel()
        proc.wait(timeout=60)
    return "".join(seen)


def test_a_run_killed_once_the_new_certificate_is_in_place_is_still_reset(masters, original) -> None:
    # The certificate is recorded as issued before it is put in place: a run killed right after that leaves a
    # certificate that the reset recognises as the role's, and restores the original. Negative control: without the
    # record (what a run killed at that point left when the record came after the activation), the reset keeps the
    # new certificate in place.
    first = masters[0]
    try:
        for control in (False, True):
            output = killed_after_the_certificate_is_in_place()
            assert ACTIVATE in output, output[-4000:]
            in_place = read(first, CERT)
            assert in_place != original[first.name]["crt"] and read(first, f"{CERT}.kubeha-issued") == in_place
            if control:
                labmod.ssh(first, f"rm {CERT}.kubeha-issued")
            run = play(variables={"apiserver_cert_sans_state": "absent"})
            assert run.returncode == 0, run.stdout[-4000:] + run.stderr
            if not control:
                assert files(masters) == original and role_files(first) == []
                serves_original(first, original)
            else:
                assert read(first, CERT) == in_place  # not restored: the reset cannot tell it is the role's
    finally:
        put_back(first, {"apiserver.crt": original[first.name]["crt"], "apiserver.key": original[first.name]["key"]})
        serves_original(first, original)


def serves_original(node: labmod.Node, original: dict) -> None:
    want = load(original[node.name]["crt"])
    labmod.wait_for(f"{node.name} serving its original certificate", lambda: served(node, node.addr4) == want, 60)
