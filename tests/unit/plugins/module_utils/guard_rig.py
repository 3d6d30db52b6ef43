# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""A guard wired to fakes, shared by the guard's unit tests (each defines its ``rig`` fixture with ``rigs``).

The kernel and the commands are replaced by fakes: an in-memory IPVS adapter (it applies ``_ipvs_model`` actions with
``simulate``), a runner recording the command lines, a scripted prober, and /proc, /proc/sys and /sys trees under
a test's ``tmp_path``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath_ipvs import IPVSDataPath
from ansible_collections.kubeha.apiserver.plugins.module_utils._datapath_modes import make_data_path
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_config import parse_config
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_daemon import Guard
from ansible_collections.kubeha.apiserver.plugins.module_utils._guard_hooks import Hooks
from ansible_collections.kubeha.apiserver.plugins.module_utils._ipvs_model import Action, IPVSError, Service, simulate
from ansible_collections.kubeha.apiserver.plugins.module_utils._node_plumbing import Paths, remove_interface
from ansible_collections.kubeha.apiserver.plugins.module_utils._probe import ProbeSettings
from ansible_collections.kubeha.apiserver.plugins.module_utils._proxy import Backend, ProbeResult

VIP4, VIP6, PORT = "169.254.100.1", "fd00::1", 6443
M1, M2, M3 = Backend("10.0.0.11", 6443), Backend("10.0.0.12", 6443), Backend("10.0.0.13", 6443)
M4 = Backend("10.0.0.14", 6443)
M6 = Backend("fd00::11", 6443)
CERT = "-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\na2V5\n-----END PRIVATE KEY-----\n"


# Real /proc/net/ip_vs_conn lines (net/netfilter/ipvs/ip_vs_conn.c): "%-3s %08X %04X %08X %04X %08X %04X
# %-11s %7u%s" for IPv4, "%pI6" (full colon form) for IPv6 addresses. 0x192B = 6443.
IP_VS_CONN = """\
Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP A9FE6401 A1B2 A9FE6401 192B 0A00000C 192B ESTABLISHED     899
TCP 0AF40105 D431 A9FE6401 192B 0A00000C 192B ESTABLISHED     898
TCP A9FE6401 C350 A9FE6401 192B 0A00000C 192B TIME_WAIT        60
TCP A9FE6401 B000 A9FE6401 192B 0A00000B 192B ESTABLISHED     900
TCP 0A000015 E001 A9FE6401 192B 0A00000C 192B SYN_RECV          9
UDP A9FE6401 0035 A9FE6402 0035 0A00000C 0035 UDP             120
TCP fd00:0000:0000:0000:0000:0000:0000:0001 9C40 fd00:0000:0000:0000:0000:0000:0000:0001 192B \
fd00:0000:0000:0000:0000:0000:0000:0012 192B ESTABLISHED     899
garbage line
"""


class FakeIPVS:
    """The kernel's IPVS table in memory; actions are applied with _ipvs_model.simulate."""

    def __init__(self) -> None:
        self.services: dict[tuple[str, int, str], Service] = {}
        self.applied: list[Action] = []
        self.fail: str | None = None
        self.fail_once: str | None = None
        self.raise_next: list[BaseException] = []  # raised one per apply, whatever their type

    def get(self, address: str, port: int, protocol: str) -> Service | None:
        return self.services.get(Service(address, port, protocol).key)

    def apply(self, actions: Sequence[Action]) -> None:
        if self.raise_next:
            raise self.raise_next.pop(0)
        if self.fail:
            raise IPVSError(self.fail)
        if self.fail_once:
            message, self.fail_once = self.fail_once, None
            raise IPVSError(message)
        for action in actions:
            key = action.service.key
            after = simulate(self.services.get(key), [action])
            if after is None:
                self.services.pop(key, None)
            else:
                self.services[key] = after
            self.applied.append(action)

    def close(self) -> None:
        return

    def weights(self, vip: str = VIP4) -> dict[str, int]:
        service = self.services[(vip, PORT, "tcp")]
        return {rs.endpoint: rs.weight for rs in service.real_servers}


def dummy_link(*addresses: tuple[str, int], up: bool = True, kind: str = "dummy") -> dict[str, Any]:
    infos = [
        {"family": "inet6" if ":" in a else "inet", "local": a, "prefixlen": p, "scope": "global"} for a, p in addresses
    ]
    infos.append({"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"})
    flags = ["BROADCAST", "NOARP", *(["UP", "LOWER_UP"] if up else [])]
    return {"ifname": "kha0", "flags": flags, "linkinfo": {"info_kind": kind}, "addr_info": infos}


class FakeRunner:
    """Records command lines; answers from ``responses`` (argv prefix -> answers, the last one repeats)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.stdin: dict[str, str] = {}
        self.responses: dict[tuple[str, ...], list[tuple[int, str, str]]] = {
            ("ip", "-d", "-j", "addr", "show"): [(0, json.dumps([dummy_link((VIP4, 32))]), "")],
            # as nft answers for a table that does not exist (the nftables data path's, outside its mode)
            ("nft", "-j", "list", "table"): [(1, "", "Error: No such file or directory\n")],
        }

    def respond(self, prefix: Sequence[str], *answers: tuple[int, str, str]) -> None:
        self.responses[tuple(prefix)] = list(answers)

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        argv = list(argv)
        self.calls.append(argv)
        if stdin is not None:
            self.stdin[" ".join(argv)] = stdin
        return self.responses_for(argv)

    def responses_for(self, argv: Sequence[str]) -> tuple[int, str, str]:
        matches = [p for p in self.responses if tuple(argv[: len(p)]) == p]
        if not matches:
            return 0, "", ""
        answers = self.responses[max(matches, key=len)]
        return answers.pop(0) if len(answers) > 1 else answers[0]

    def commands(self, program: str) -> list[list[str]]:
        return [c for c in self.calls if c[0] == program]


class ScriptedProber:
    """Answers each backend as scripted: ``ok``, ``fail`` (timeout) or ``refused``; unknown ones are ok."""

    def __init__(self, events: list[str] | None = None) -> None:
        self.script: dict[Backend, str] = {}
        self.rounds = 0
        self.events = events if events is not None else []

    def set(self, outcome: str, *backends: Backend) -> None:
        for backend in backends:
            self.script[backend] = outcome

    def __call__(self, backends: Sequence[Backend], settings: ProbeSettings) -> dict[Backend, ProbeResult]:
        self.rounds += 1
        self.events.append("probe")
        results = {}
        for b in backends:
            outcome = self.script.get(b, "ok")
            if outcome == "ok":
                results[b] = ProbeResult(b, True, 0.012)
            elif outcome == "refused":
                results[b] = ProbeResult(b, False, 0.001, "connection refused", refused=True)
            else:
                results[b] = ProbeResult(b, False, 1.0, "timed out after 1s")
        return results


def make_paths(tmp_path: Path, ip_vs_conn: str = "") -> Paths:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True, exist_ok=True)
    (proc / "net" / "ip_vs").write_text("IP Virtual Server version 1.2.1 (size=4096)\n")
    (proc / "net" / "ip_vs_conn").write_text(ip_vs_conn)
    sysctl = tmp_path / "proc-sys" / "net" / "ipv4" / "vs"
    sysctl.mkdir(parents=True, exist_ok=True)
    for name in ("conntrack", "expire_nodest_conn", "expire_quiescent_template"):
        (sysctl / name).write_text("0\n")
    sys_root = tmp_path / "sys"
    for module in ("ip_vs_rr", "ip_vs_fo"):
        (sys_root / "module" / module).mkdir(parents=True, exist_ok=True)
    (sys_root / "class" / "net" / "kha0").mkdir(parents=True, exist_ok=True)
    return Paths(
        proc_root=str(proc),
        proc_sys=str(tmp_path / "proc-sys"),
        sys_root=str(sys_root),
        modules_root=str(tmp_path / "lib-modules"),
    )


def config_doc(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "vip": [VIP4],
        "port": PORT,
        "mode": "ipvs",
        "seeds": ["10.0.0.11:6443", "10.0.0.12:6443", "10.0.0.13:6443"],
        "local_addresses": ["10.0.0.21"],
        "prefer_local": False,
        "ca_file": str(tmp_path / "ca.crt"),
        "interval_s": 1.0,
        "timeout_s": 1.0,
        "rise": 2,
        "fall": 2,
        "fast_check_interval_s": 0,
        "state_file": str(tmp_path / "state" / "state.json"),
        "metrics_port": 0,
        "interface": "kha0",
    }
    doc.update(overrides)
    return doc


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A guard wired to fakes."""

    def __init__(self, tmp_path: Path, ip_vs_conn: str = "", **overrides: Any) -> None:
        self.tmp_path = tmp_path
        self.cfg = parse_config(config_doc(tmp_path, **overrides))
        self.ipvs = FakeIPVS()
        self.runner = FakeRunner()
        self.events: list[str] = []
        self.prober = ScriptedProber(self.events)
        self.connects: dict[Backend, str] = {}
        self.discovered: frozenset[Backend] = frozenset()
        self.discovery_error: BaseException | None = None
        self.clock = Clock()
        self.paths = make_paths(tmp_path, ip_vs_conn)
        self.hooks = Hooks(
            runner=self.runner,
            ipvs_factory=lambda: self.ipvs,
            prober=self.prober,
            connector=self.connect,
            discoverer=self.discover,
            notify=self.notify,
            clock=lambda: 1_700_000_000.5,
            monotonic=self.clock,
            paths=self.paths,
        )
        self.guard = Guard(self.cfg, str(tmp_path / "guard.json"), self.hooks)

    def connect(self, backend: Backend, timeout: float) -> ProbeResult:
        self.events.append(f"connect:{backend}:{timeout:g}")
        if self.connects.get(backend) == "refused":
            return ProbeResult(backend, False, 0.0, "connection refused", refused=True)
        if self.connects.get(backend) == "unanswered":
            return ProbeResult(backend, False, timeout, f"connect unanswered after {timeout:g}s", unanswered=True)
        return ProbeResult(backend, True, 0.0)

    def discover(self, cfg: Any, servers: Sequence[Backend]) -> frozenset[Backend]:
        self.events.append(f"discover:{','.join(map(str, servers))}")
        if self.discovery_error is not None:
            raise self.discovery_error
        return self.discovered

    def notify(self, message: str) -> bool:
        self.events.append(f"notify:{message}")
        return True

    def round(self) -> None:
        self.runner.calls.clear()
        self.guard.run_round()
        self.clock.now += 1.0


RigFactory = Callable[..., Rig]


def rigs(tmp_path: Path) -> Iterator[RigFactory]:
    """What a test's ``rig`` fixture yields: a factory of rigs (settings as keyword arguments), closed after it.

    A fixture of each test file, not of a conftest.py: the integration tests import their own conftest by name.
    """
    made: list[Rig] = []

    def build(**overrides: Any) -> Rig:
        r = Rig(tmp_path, **overrides)
        made.append(r)
        return r

    yield build
    for r in made:
        r.guard.close()


def ensure_plumbing(cfg: Any, runner: Any, paths: Paths) -> list[str]:
    """The plumbing of the configured mode's data path (the interface and the mode's own parts)."""
    return make_data_path(cfg, Hooks(runner=runner, paths=paths)).plumbing()


def remove_plumbing(cfg: Any, runner: Any) -> list[str]:
    """The IPVS data path's plumbing (no service: no pair given) and the interface, as ``--cleanup`` removes them."""
    return IPVSDataPath(cfg, Hooks(runner=runner)).remove([]) + remove_interface(cfg.interface, cfg.vips, runner)
