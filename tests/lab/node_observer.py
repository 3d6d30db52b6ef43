"""The cluster as the judge: a recorder of the nodes' Leases, their Ready condition and NodeNotReady events.

It runs outside the nodes under test (in the lab's hub namespace) and asks every apiserver it is given, each
round, on a kept connection per apiserver, so a dead or black-holed master does not blind it: what any apiserver
answers is recorded. Each answer becomes one JSON line:

    {"t": <wall time>, "server": <url>, "leases": {node: renewTime}, "ready": {node: [status, heartbeat,
     transition]}, "not_ready_events": [[node, time], ...]}

`analyze` (pure) turns the lines into a timeline per node: each lease renewal (kubelet writes renewTime itself,
every 10 s, so the gaps between renewals are kubelet's own record, exact to the microsecond whatever the polling
interval), each Ready status seen, each NodeNotReady event. The recorder stops by itself after --seconds, or at
SIGTERM.

    python node_observer.py --kubeconfig admin.conf --server https://10.88.0.12:6443 ... --seconds 300 --out F
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import signal
import ssl
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import yaml

LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
NODES = "/api/v1/nodes"
NOT_READY_EVENTS = "/api/v1/events?fieldSelector=reason%3DNodeNotReady"


def timestamp(text: str | None) -> float | None:
    """An API time (RFC 3339, with or without microseconds) as seconds since the epoch."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ---- recording ---------------------------------------------------------------------------------------------


def tls_context(kubeconfig: Path, workdir: Path) -> ssl.SSLContext:
    """Client context from the kubeconfig's embedded CA and client pair (written to a private directory)."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
    files = {}
    for name, key in (("ca.crt", "certificate-authority-data"), ("client.crt", "client-certificate-data"),
                      ("client.key", "client-key-data")):  # fmt: skip
        path = workdir / name
        path.write_bytes(base64.b64decode(cluster[key] if name == "ca.crt" else user[key]))
        path.chmod(0o600)
        files[name] = str(path)
    context = ssl.create_default_context(cafile=files["ca.crt"])
    context.load_cert_chain(files["client.crt"], files["client.key"])
    return context


class Apiserver:
    """One apiserver, asked on a kept connection; a failed request drops the connection (the next opens anew)."""

    def __init__(self, url: str, context: ssl.SSLContext, timeout: float) -> None:
        parts = urlsplit(url)
        self.url, self.host, self.port = url, parts.hostname or "", parts.port or 443
        self.context, self.timeout = context, timeout
        self.conn: http.client.HTTPSConnection | None = None

    def get(self, path: str) -> dict:
        if self.conn is None:
            self.conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.context)
        try:
            self.conn.request("GET", path, headers={"Accept": "application/json"})
            response = self.conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise
        if response.status != 200:
            raise OSError(f"{self.url}{path}: HTTP {response.status}")
        return json.loads(body)


def observe(server: Apiserver) -> dict:
    """What one apiserver says now (raises when it cannot say)."""
    leases = {item["metadata"]["name"]: item["spec"].get("renewTime") for item in server.get(LEASES)["items"]}
    ready = {}
    for node in server.get(NODES)["items"]:
        for c in node.get("status", {}).get("conditions", []):
            if c["type"] == "Ready":
                ready[node["metadata"]["name"]] = [c["status"], c.get("lastHeartbeatTime"), c.get("lastTransitionTime")]
    events = []
    for e in server.get(NOT_READY_EVENTS)["items"]:
        if e.get("involvedObject", {}).get("kind") == "Node":
            when = e.get("lastTimestamp") or e.get("eventTime") or e["metadata"].get("creationTimestamp")
            events.append([e["involvedObject"]["name"], when])
    return {"t": time.time(), "server": server.url, "leases": leases, "ready": ready, "not_ready_events": events}


def record(servers: list[Apiserver], out: Path, seconds: float, interval: float) -> int:
    """Ask every apiserver each `interval` for `seconds` (or until SIGTERM); one JSON line per answer."""
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    deadline, answers = time.monotonic() + seconds, 0
    with out.open("a") as sink:
        while not stop["now"] and time.monotonic() < deadline:
            started = time.monotonic()
            for server in servers:
                try:
                    line = observe(server)
                except (OSError, http.client.HTTPException, ValueError, KeyError):
                    continue  # that apiserver cannot answer now: the others can
                sink.write(json.dumps(line) + "\n")
                answers += 1
            sink.flush()
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    return answers


# ---- the timeline ------------------------------------------------------------------------------------------


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def analyze(lines: list[dict], since: float, until: float) -> dict[str, dict]:
    """Per node, from `since` to `until` (wall times): the lease renewals (the last one before `since` included, as
    the start of the first gap), the longest gap between two renewals (the last one up to `until` counts too:
    a kubelet that stopped renewing has a gap growing until then), whether any apiserver showed it not Ready,
    and the NodeNotReady events dated in the window."""
    renewals: dict[str, set[float]] = {}
    statuses: dict[str, list[tuple[float, str]]] = {}
    events: dict[str, set[float]] = {}
    for line in lines:
        for node, renew in line["leases"].items():
            if (at := timestamp(renew)) is not None:
                renewals.setdefault(node, set()).add(at)
        if since <= line["t"] <= until:
            for node, (status, _heartbeat, _transition) in line["ready"].items():
                statuses.setdefault(node, []).append((line["t"], status))
        for node, when in line["not_ready_events"]:
            if (at := timestamp(when)) is not None and since <= at <= until:
                events.setdefault(node, set()).add(at)
    report = {}
    for node in sorted(set(renewals) | set(statuses)):
        times = sorted(renewals.get(node, ()))
        before = [t for t in times if t < since]
        inside = [t for t in times if since <= t <= until]
        series = before[-1:] + inside
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(series)]
        open_gap = round(until - series[-1], 3) if series else None
        longest = max([*gaps, open_gap] if open_gap is not None else gaps, default=None)
        seen = sorted(statuses.get(node, []))
        report[node] = {
            "renewals": [round(t - since, 3) for t in inside],
            "gaps_s": gaps,
            "open_gap_s": open_gap,
            "longest_gap_s": longest,
            "not_ready_seen": any(status != "True" for _t, status in seen),
            "first_not_ready_s": next((round(t - since, 3) for t, status in seen if status != "True"), None),
            "not_ready_events": len(events.get(node, ())),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--server", action="append", required=True, help="an apiserver URL; give each one")
    parser.add_argument("--seconds", type=float, required=True, help="stop after this long at the latest")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=2.0, help="per request")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="node-observer-") as workdir:
        context = tls_context(args.kubeconfig, Path(workdir))
        servers = [Apiserver(url, context, args.timeout) for url in args.server]
        answers = record(servers, args.out, args.seconds, args.interval)
    print(f"{answers} answers recorded in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
