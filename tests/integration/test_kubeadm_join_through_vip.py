"""A worker that is not in the cluster joins it through its own local proxy, with the first master down.

On the kubeadm flavour. w2 (an nspawn worker) leaves the cluster as if it had never been in it: `kubeadm reset`,
its Node object deleted, no file of the collection's. The VIPs go into every apiserver certificate (the
apiserver_cert_sans role) and playbooks/prepare_node.yml gives w2 its local proxy: anonymous /readyz probes, the
inventory's masters, the cluster CA copied from cp1. Then cp1's apiserver stops (cp1:6443 is the cluster's
controlPlaneEndpoint, the one address kubeadm gave every node) and w2 runs the real
`kubeadm join 169.254.100.1:6444 --token ... --discovery-token-ca-cert-hash ...` (as a JoinConfiguration).

The join follows the server cluster-info names. Negative control first: with cluster-info as kubeadm made it
(cp1:6443), discovery goes through the VIP but the TLS bootstrap goes to the stopped cp1 and the join fails, bounded
by its tlsBootstrap timeout. Then cluster_endpoint points cluster-info at the VIP, and the same join succeeds: the
bootstrap goes through w2's proxy to cp2 or cp3, and w2 posts Ready. Last, site.yml on w2 alone gives its guard the
kubelet's credentials and discovery. Run last on a lab (w2 ends joined through the VIP, not as kubeadm left it).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

import lab as labmod
import pytest
from conftest import run_module
from kubeadm_flavour import cluster_info_server, kubeadm_reset
from scenarios import playbook, run_playbook

VIP_ENDPOINT = "169.254.100.1:6444"
VIP_SERVER = f"https://{VIP_ENDPOINT}"
ADMIN = "/etc/kubernetes/admin.conf"
SEED_JOIN = "/etc/kubernetes/kubeha-lab/kubeadm.yaml"  # the lab's JoinConfiguration for this node (at cp1:6443)
JOIN_AT_VIP = "/etc/kubernetes/kubeha-lab/join-at-vip.yaml"
CLUSTER_INFO = {"targets": ["cluster_info"], "kubeconfig": ADMIN, "wait_signed": True, "timeout": 90}
# The join's bounds: the negative control waits out tlsBootstrap, then kubeadm exits non-zero.
JOIN_TIMEOUTS = "timeouts:\n  discovery: 60s\n  kubernetesAPICall: 30s\n  tlsBootstrap: 45s\n"
READYZ_AT_VIP = (
    "python3 -c \"import ssl, urllib.request as u; c = ssl.create_default_context(cafile='{ca}'); "
    f"print(u.urlopen('https://{VIP_ENDPOINT}/readyz', context=c, timeout=5).read().decode())\""
)


def play(tasks: list[dict], hosts: str, tmp_path, name: str) -> None:
    path = tmp_path / f"{name}.yml"
    path.write_text(json.dumps([{"hosts": hosts, "gather_facts": False, "become": True, "tasks": tasks}]))
    run = run_playbook(path, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def leave(node: labmod.Node) -> None:
    """The node out of the cluster as kubeadm takes it out: reset (kubelet stopped, its files and pods gone),
    then its Node object deleted."""
    kubeadm_reset(node)
    labmod.kubectl("delete", "node", node.name, "--ignore-not-found", "--wait=true")


def join(node: labmod.Node):
    """The real `kubeadm join` at the VIP, with the lab's token and CA hash (bounded: see JOIN_TIMEOUTS)."""
    return labmod.ssh(node, f"kubeadm join --config {JOIN_AT_VIP}", check=False, timeout=300)


@pytest.fixture(scope="module")
def newcomer(lab, nodes, masters, control_node, tmp_path_factory):
    """w2 as a node that is not in the cluster, with the local proxy prepare_node.yml gives it; cp1 stopped
    around each join (the test's). The teardown puts cluster-info back as kubeadm made it."""
    assert lab.get("flavour") == "kubeadm", "this suite runs on the kubeadm flavour (KUBEHA_LAB_FLAVOUR=kubeadm)"
    tmp = tmp_path_factory.mktemp("join")
    node = next((n for n in nodes.values() if n.role == "worker" and n.kind == "nspawn"), None)
    assert node is not None, "the lab has no nspawn worker to join again"
    assert cluster_info_server() == f"https://{masters[0].addr4}:6443", "cluster-info is not as kubeadm made it"
    # The VIPs in every apiserver certificate, as site.yml puts them (the new node's TLS bootstrap is made to one).
    play([{"ansible.builtin.include_role": {"name": "kubeha.apiserver.local_proxy", "tasks_from": "venv"}},
          {"ansible.builtin.include_role": {"name": "kubeha.apiserver.apiserver_cert_sans"}}],
         "kube_control_plane", tmp, "cert_sans")  # fmt: skip
    leave(node)
    play([{"ansible.builtin.include_role": {"name": "kubeha.apiserver.local_proxy"},
           "vars": {"local_proxy_state": "absent"}}], node.name, tmp, "absent")  # fmt: skip
    assert labmod.ssh(node, "test ! -e /etc/kubernetes/kubelet.conf && test ! -e /etc/kubeha-apiserver",
                      check=False).returncode == 0  # fmt: skip
    prepared = playbook("prepare_node", "--limit", node.name)
    assert prepared.returncode == 0, prepared.stdout[-4000:] + prepared.stderr[-2000:]
    labmod.ssh(node, f"sed -e 's|^\\( *apiServerEndpoint:\\).*|\\1 \"{VIP_ENDPOINT}\"|' {SEED_JOIN} > {JOIN_AT_VIP}"
                     f" && printf '{JOIN_TIMEOUTS}' >> {JOIN_AT_VIP}")  # fmt: skip
    yield node
    result = run_module(control_node, "kubeha.apiserver.cluster_endpoint", CLUSTER_INFO | {"state": "absent"})
    assert not result.get("failed"), result


@contextmanager
def stopped(master: labmod.Node):
    """The master's apiserver stopped (kubelet stops its static pod), then started again and ready."""
    labmod.ssh(master, labmod.apiserver_command("stop"), timeout=200)
    try:
        assert not labmod.readyz(master.addr4)
        yield
    finally:
        labmod.ssh(master, labmod.apiserver_command("start"))
        labmod.wait_for(f"{master.name}'s apiserver ready", lambda: labmod.readyz(master.addr4), 180)


def test_prepare_node_gives_the_new_node_a_proxy_that_probes_without_credentials(newcomer, masters):
    guard = json.loads(labmod.ssh(newcomer, "cat /etc/kubeha-apiserver/guard.json").stdout)
    assert guard["client_cert_file"] is None and guard["discovery"]["enabled"] is False
    assert guard["ca_file"] == "/etc/kubeha-apiserver/cluster-ca.crt"
    assert sorted(guard["seeds"]) == sorted(f"{m.addr4}:6443" for m in masters)
    # Anonymous /readyz through the VIP, the CA verified: what kubeadm's discovery will reach.
    probe = READYZ_AT_VIP.format(ca="/etc/kubeha-apiserver/cluster-ca.crt")
    assert labmod.ssh(newcomer, probe).stdout.strip() == "ok"


def test_negative_control_with_cluster_info_at_the_first_master_the_join_fails(newcomer, masters):
    cp1 = masters[0]
    assert cluster_info_server() == f"https://{cp1.addr4}:6443"
    with stopped(cp1):
        started = time.monotonic()
        res = join(newcomer)
        took = time.monotonic() - started
    try:
        assert res.returncode != 0, "kubeadm join succeeded with cluster-info naming a stopped apiserver"
        # Discovery went through the VIP; what came next went where cluster-info said, and found nothing.
        assert f"{cp1.addr4}:6443" in res.stdout + res.stderr, res.stdout[-3000:] + res.stderr[-3000:]
        assert took < 240, f"the failed join took {took:.0f} s"
    finally:
        leave(newcomer)


def test_a_new_worker_joins_through_its_own_vip_while_the_first_master_is_down(
    newcomer, control_node, masters, record_property
):
    result = run_module(control_node, "kubeha.apiserver.cluster_endpoint", CLUSTER_INFO | {"server": VIP_SERVER})
    assert not result.get("failed") and result["changed"], result
    assert cluster_info_server() == VIP_SERVER
    with stopped(masters[0]):
        since = time.time()
        started = time.monotonic()
        res = join(newcomer)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        record_property("join_s", round(time.monotonic() - started, 1))
        assert labmod.kubeconfig_server(newcomer, "/etc/kubernetes/kubelet.conf") == VIP_SERVER
        # Asked of cp2: cp1's apiserver, the admin kubeconfig's server, is the one stopped.
        labmod.wait_for(f"{newcomer.name} Ready", lambda: labmod.node_ready_since(newcomer.name, since, masters[1]),
                        180, 2)  # fmt: skip
        record_property("ready_s", round(time.monotonic() - started, 1))


def test_site_yml_on_the_joined_node_gives_its_guard_the_kubelets_credentials(newcomer):
    run = playbook("site", "--limit", newcomer.name)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    guard = json.loads(labmod.ssh(newcomer, "cat /etc/kubeha-apiserver/guard.json").stdout)
    assert guard["client_cert_file"] and guard["discovery"]["enabled"] is True
    assert guard["ca_file"] == "/etc/kubernetes/pki/ca.crt"
    assert labmod.kubeconfig_server(newcomer, "/etc/kubernetes/kubelet.conf") == VIP_SERVER
    assert labmod.node_ready(newcomer.name)
    probe = READYZ_AT_VIP.format(ca="/etc/kubernetes/pki/ca.crt")
    assert labmod.ssh(newcomer, probe).stdout.strip() == "ok"


def kubelet_pid(node: labmod.Node) -> int:
    return int(labmod.ssh(node, "systemctl show -p MainPID --value kubelet").stdout.strip())


def switch_kubeconfigs(node: labmod.Node, *extra: str) -> None:
    run = playbook("kubeconfig_endpoint", "--limit", node.name, *extra)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_a_kubelet_restart_a_dead_run_left_undone_happens_on_the_next_run(newcomer, masters, control_node):
    """The real kubelet on w2. A consistent start: the role points kubelet.conf at cp2 (kubelet restarted, marker
    recorded). The dead run: the file written at the VIP by the module alone, as a run that died before the restart
    leaves it (kubelet still runs cp2's file). Then the role, which writes nothing (the file is at the VIP already),
    restarts kubelet from the marker, and w2 stays Ready; a second run restarts nothing (negative control)."""
    node = newcomer
    cp2 = f"https://{masters[1].addr4}:6443"
    switch_kubeconfigs(node, "-e", f"kubeconfig_endpoint_server={cp2}")
    assert labmod.kubeconfig_server(node, "/etc/kubernetes/kubelet.conf") == cp2
    running = kubelet_pid(node)
    dead_run = run_module(node, "kubeha.apiserver.kubeconfig_server",
                          {"path": "/etc/kubernetes/kubelet.conf", "server": VIP_SERVER, "backup": True},
                          python="/opt/kubeha-apiserver/venv/bin/python")  # fmt: skip
    assert not dead_run.get("failed") and dead_run["changed"], dead_run
    assert kubelet_pid(node) == running  # the dead run restarted nothing
    switch_kubeconfigs(node)
    assert labmod.kubeconfig_server(node, "/etc/kubernetes/kubelet.conf") == VIP_SERVER
    restarted = kubelet_pid(node)
    assert restarted not in (running, 0), "the marker said a restart was due: kubelet must have been restarted"
    digest = labmod.ssh(node, "sha256sum /etc/kubernetes/kubelet.conf").stdout.split()[0]
    marker = "/var/lib/kubeha-apiserver/restarted-for/etc_kubernetes_kubelet.conf.sha256"
    assert labmod.ssh(node, f"cat {marker}").stdout.strip() == digest
    labmod.wait_for(f"{node.name} Ready", lambda: labmod.node_ready(node.name), 60, 2)
    switch_kubeconfigs(node)
    assert kubelet_pid(node) == restarted, "nothing was due: a second run must not restart kubelet"
