"""The lab's network: the hub namespace and its bridge, each node's link to it (a tap for qemu, a namespace and a
veth pair for nspawn) and its addresses, and the lab's namespaces as `down` finds them."""

from __future__ import annotations

from lab_core import BRIDGE, GW4, GW6, HUB_NS, NS_PREFIX, Node, sh


def make_network(nodes: list[Node]) -> None:
    sh("ip", "netns", "add", HUB_NS)
    sh("ip", "-n", HUB_NS, "link", "set", "lo", "up")
    sh("ip", "-n", HUB_NS, "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "-n", HUB_NS, "addr", "add", f"{GW4}/24", "dev", BRIDGE)
    sh("ip", "-n", HUB_NS, "addr", "add", f"{GW6}/64", "dev", BRIDGE, "nodad")
    sh("ip", "-n", HUB_NS, "link", "set", BRIDGE, "up")
    for node in nodes:
        attach(node)


def attach(node: Node) -> None:
    """The node's link to the lab's bridge: a tap for qemu, a namespace and a veth pair for nspawn."""
    if node.kind == "qemu":
        tap = f"t-{node.name}"
        sh("ip", "-n", HUB_NS, "tuntap", "add", "dev", tap, "mode", "tap")
        sh("ip", "-n", HUB_NS, "link", "set", tap, "master", BRIDGE, "up")
        return
    ns = node.netns
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", HUB_NS, "link", "add", f"v-{node.name}", "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "-n", HUB_NS, "link", "set", f"v-{node.name}", "master", BRIDGE, "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "addr", "add", f"{node.addr4}/24", "dev", "eth0")
    sh("ip", "-n", ns, "addr", "add", f"{node.addr6}/64", "dev", "eth0", "nodad")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "route", "add", "default", "via", GW4)
    sh("ip", "-n", ns, "-6", "route", "add", "default", "via", GW6)


def any_lab_netns() -> bool:
    res = sh("ip", "netns", "list", check=False)
    return any(line.split()[0] == HUB_NS or line.startswith(NS_PREFIX) for line in res.stdout.splitlines() if line)


def lab_netns_names() -> list[str]:
    res = sh("ip", "netns", "list", check=False)
    names = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
    return [n for n in names if n == HUB_NS or n.startswith(NS_PREFIX)]
