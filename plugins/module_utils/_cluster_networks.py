# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cluster's service and pod ranges, read from where the cluster keeps them.

A VIP inside one of them would be a Service's ClusterIP or a pod's address some day, and the node's proxy would
take that traffic. Preflight refuses such a VIP; these are the ranges it adds to the user's forbidden ones.

Sources, each named in the result: kubeadm-config's ``networking`` (``serviceSubnet``, ``podSubnet``), the Nodes'
``spec.podCIDRs``, and the flags of the control plane on this master (``--service-cluster-ip-range`` of
kube-apiserver, ``--cluster-cidr`` and ``--service-cluster-ip-range`` of kube-controller-manager), from the running
processes and from kubeadm's static-pod manifests (an apiserver that is down still has its manifest).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._kubeapi import (
    KubeAPIError,
    MissingLibraryError,
    import_yaml,
    object_path,
)

# The flags that hold a range, per component (their values are comma-separated: dual-stack).
FLAGS = {
    "kube-apiserver": {"--service-cluster-ip-range": "service"},
    "kube-controller-manager": {"--cluster-cidr": "pod", "--service-cluster-ip-range": "service"},
}
MANIFESTS = ("kube-apiserver.yaml", "kube-controller-manager.yaml")
NETWORKING_KEYS = {"serviceSubnet": "service", "podSubnet": "pod"}


class ClusterNetworksError(Exception):
    """The one error of the module's run; its message is meant for the user as is."""


@dataclass(frozen=True)
class Found:
    """One range and where it was read (``kind`` is ``service`` or ``pod``)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    kind: str
    source: str


@dataclass
class Reading:
    found: list[Found] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, text: object, kind: str, source: str) -> None:
        """Each comma-separated CIDR of ``text``; a value that is not one is a warning naming it (it is the cluster's
        own configuration, and the other sources still count)."""
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                network = ipaddress.ip_network(part, strict=False)
            except ValueError:
                self.warnings.append(f"{source}: {part!r} is not a CIDR, left out")
                continue
            self.found.append(Found(network, kind, source))

    def ranges(self) -> list[str]:
        """Every range once, without those inside another (a Node's podCIDR inside --cluster-cidr), in the order
        found."""
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item in self.found:
            if item.network not in networks:
                networks.append(item.network)
        kept = [n for n in networks if not any(o != n and o.version == n.version and n.subnet_of(o) for o in networks)]
        return [str(n) for n in kept]

    def by_kind(self, kind: str) -> list[str]:
        seen: list[str] = []
        for item in self.found:
            if item.kind == kind and str(item.network) not in seen:
                seen.append(str(item.network))
        return seen

    def result(self) -> dict[str, Any]:
        return {
            "changed": False,
            "ranges": self.ranges(),
            "service_ranges": self.by_kind("service"),
            "pod_ranges": self.by_kind("pod"),
            "found": [{"range": str(f.network), "kind": f.kind, "source": f.source} for f in self.found],
        }


def flag_values(argv: Sequence[str], flags: Mapping[str, str]) -> Iterator[tuple[str, str, str]]:
    """``(flag, kind, value)`` for each of ``flags`` in a command line, as ``--flag=value`` or ``--flag value``."""
    for index, arg in enumerate(argv):
        name, equals, value = arg.partition("=")
        if name not in flags:
            continue
        if not equals:
            if index + 1 >= len(argv):
                continue
            value = argv[index + 1]
        yield name, flags[name], value


def component(argv: Sequence[str]) -> str | None:
    """Which control-plane component a command line runs (its program's name), if any."""
    if not argv:
        return None
    name = os.path.basename(argv[0])
    return name if name in FLAGS else None


def command_lines(proc: str = "/proc") -> Iterator[tuple[str, list[str]]]:
    """``(pid, argv)`` of every process here, in PID order (OSError when ``proc`` cannot be listed)."""
    for pid in sorted((e for e in os.listdir(proc) if e.isdigit()), key=int):
        try:
            with open(os.path.join(proc, pid, "cmdline"), "rb") as handle:
                raw = handle.read()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        yield pid, [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def read_processes(reading: Reading, proc: str = "/proc") -> None:
    """The flags of every kube-apiserver and kube-controller-manager running here (static pods or systemd units)."""
    try:
        processes = list(command_lines(proc))
    except OSError as exc:
        reading.warnings.append(f"cannot list {proc}: {exc.strerror}")
        return
    for pid, argv in processes:
        name = component(argv)
        if name is None:
            continue
        for flag, kind, value in flag_values(argv[1:], FLAGS[name]):
            reading.add(value, kind, f"{name} {flag} (process {pid})")


def manifest_commands(doc: Any) -> Iterator[tuple[str, list[str]]]:
    """``(component, argv)`` for each container of a static-pod manifest that runs a control-plane component."""
    if not isinstance(doc, Mapping):
        return
    spec = doc.get("spec")
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    for container in containers if isinstance(containers, list) else []:
        if not isinstance(container, Mapping):
            continue
        argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
        name = component(argv)
        if name is not None:
            yield name, argv


def read_manifests(reading: Reading, manifest_dir: str) -> None:
    """The same flags in kubeadm's static-pod manifests (none on a binary install: nothing to read)."""
    yaml = import_yaml()
    for filename in MANIFESTS:
        path = os.path.join(manifest_dir, filename)
        try:
            with open(path, encoding="utf-8") as handle:
                doc = yaml.safe_load(handle)
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            reading.warnings.append(f"cannot read {path}: {exc}")
            continue
        for name, argv in manifest_commands(doc):
            for flag, kind, value in flag_values(argv[1:], FLAGS[name]):
                reading.add(value, kind, f"{name} {flag} ({path})")


def read_kubeadm_config(reading: Reading, client: Any, namespace: str = "kube-system") -> None:
    """kubeadm-config's ClusterConfiguration ``networking`` (absent on clusters kubeadm did not make)."""
    yaml = import_yaml()
    try:
        configmap = client.get(object_path("/api/v1", namespace, "configmaps", "kubeadm-config"))
    except KubeAPIError as exc:
        if exc.status == 404:
            return
        raise
    text = (configmap.get("data") or {}).get("ClusterConfiguration")
    if not text:
        return
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        reading.warnings.append(f"ConfigMap {namespace}/kubeadm-config: ClusterConfiguration is not YAML: {exc}")
        return
    networking = config.get("networking") if isinstance(config, Mapping) else None
    for key, kind in NETWORKING_KEYS.items():
        if isinstance(networking, Mapping) and networking.get(key):
            reading.add(networking[key], kind, f"ConfigMap {namespace}/kubeadm-config networking.{key}")


def read_nodes(reading: Reading, client: Any) -> None:
    """Every Node's ``spec.podCIDRs`` (or the older single ``podCIDR``)."""
    for node in client.get("/api/v1/nodes").get("items") or []:
        name = (node.get("metadata") or {}).get("name", "?")
        spec = node.get("spec") or {}
        for cidr in spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []):
            reading.add(cidr, "pod", f"Node {name} spec.podCIDRs")


def read(client: Any, manifest_dir: str, proc: str = "/proc") -> Reading:
    """Every source; ``KubeAPIError`` when the apiserver cannot be asked (preflight then cannot vouch for the VIP)."""
    reading = Reading()
    read_kubeadm_config(reading, client)
    read_nodes(reading, client)
    read_processes(reading, proc)
    read_manifests(reading, manifest_dir)
    return reading


def run(params: Mapping[str, Any], client_factory: Callable[[], Any]) -> Reading:
    """The module's whole run (it reads only, so check mode changes nothing): ``read`` with the apiserver client of
    ``client_factory()``; an apiserver that cannot be asked is a ``ClusterNetworksError`` saying what was read."""
    try:
        client = client_factory()
        try:
            return read(client, params["manifest_dir"])
        finally:
            close = getattr(client, "close", None)
            if callable(close):
                close()
    except MissingLibraryError:
        raise
    except KubeAPIError as exc:
        raise ClusterNetworksError(f"cannot read the cluster's service and pod ranges: {exc}") from exc
