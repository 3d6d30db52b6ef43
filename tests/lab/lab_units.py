"""The binary flavour's systemd units: the control plane on each master (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, as kubeadm would run them) and kube-proxy on each worker.

The control plane's command lines are data: units/COMPONENT.args, one argument a line, as the unit's ExecStart
lists them; {node_bin}, {name}, {addr4} and the cluster's values are filled in for each master."""

from __future__ import annotations

from lab_core import CLUSTER_NAME, HERE, NODE_BIN, POD_CIDRS, SERVICE_CIDRS, Node


def unit(description: str, exec_start: list[str], after: str = "network-online.target", extra: str = "") -> str:
    args = " \\\n  ".join(exec_start)
    return f"""\
[Unit]
Description={description}
After={after}

[Service]
ExecStart={args}
Restart=always
RestartSec=2
{extra}
[Install]
WantedBy=multi-user.target
"""


def command_line(component: str, values: dict[str, str]) -> list[str]:
    """The component's argv from units/COMPONENT.args (one argument a line), its {names} filled in from values."""
    text = (HERE / "units" / f"{component}.args").read_text()
    return [line.format(**values) for line in text.splitlines() if line]


def master_units(node: Node, masters: list[Node], joining: bool = False) -> dict[str, str]:
    values = {
        "node_bin": NODE_BIN,
        "name": node.name,
        "addr4": node.addr4,
        "initial_cluster": ",".join(f"{m.name}=https://{m.addr4}:2380" for m in masters),
        "initial_cluster_state": "existing" if joining else "new",
        "cluster_name": CLUSTER_NAME,
        "service_cidrs": SERVICE_CIDRS,
        "pod_cidrs": POD_CIDRS,
    }
    etcd, apiserver, controller_manager, scheduler = (
        command_line(c, values) for c in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
    )
    return {
        "etcd.service": unit("etcd (stacked, as kubeadm runs it)", etcd, extra="Type=notify\nTimeoutStartSec=0\n"),
        "kube-apiserver.service": unit("Kubernetes API server", apiserver, after="etcd.service"),
        "kube-controller-manager.service": unit(
            "Kubernetes controller manager", controller_manager, after="kube-apiserver.service"
        ),
        "kube-scheduler.service": unit("Kubernetes scheduler", scheduler, after="kube-apiserver.service"),
    }


def worker_units(node: Node) -> dict[str, str]:
    loader = "/usr/local/lib/kubeha-lab/kube-proxy-config.py"
    if node.has_ipvs:
        # As node setup guides do (modules-load.d), and again here for the first boot.
        extra = "ExecStartPre=/sbin/modprobe -a nf_conntrack ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh\n"
    else:
        # No IPVS in the shared kernel, and its /proc/sys is read-only here: iptables mode, kernel defaults.
        extra = "Environment=KUBEHA_LAB_PROXY_MODE=iptables KUBEHA_LAB_SHARED_KERNEL=1\n"
    extra += f"ExecStartPre=/usr/bin/python3 {loader}\nRestartSec=3\n"
    argv = [f"{NODE_BIN}/kube-proxy", "--config=/var/lib/kube-proxy/config.conf", f"--hostname-override={node.name}"]
    description = "kube-proxy (config read from the live kube-system/kube-proxy ConfigMap at each start)"
    return {"kube-proxy.service": unit(description, argv, extra=extra)}
