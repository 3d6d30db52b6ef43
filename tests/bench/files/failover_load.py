"""Load for one failover scenario, run on a lab node through the proxy under test; one JSON document at the end.

    python3 failover_load.py HOST PORT CAFILE VICTIM DURATION EVENT_AT LONG_LIVED

Two kinds of clients run side by side, both verifying the apiserver certificate against CAFILE for the name
`kubernetes` (every apiserver certificate carries it):
- steady: a new TLS connection and one `GET /readyz` every 100 ms for DURATION seconds;
- long-lived: LONG_LIVED connections opened at the start, each asking `GET /readyz` every 200 ms on the same
  connection, with no timeout of their own (as a watch: only the proxy or the peer ends them). Each knows the
  master it reached from the served certificate's DNS names (each master's certificate carries its node
  name). One that is closed reconnects through HOST:PORT at once and records when it was answered again.
EVENT_AT is the node's clock time (epoch seconds) at which the caller will fail VICTIM: failures before it are
not counted as the event's. Steady requests have a 2 s timeout; the run ends DURATION seconds after it started.
"""

import json
import socket
import ssl
import sys
import threading
import time

host, port, cafile, victim = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
duration, event_at, long_lived = float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
context = ssl.create_default_context(cafile=cafile)
REQUEST = b"GET /readyz HTTP/1.1\r\nHost: kubernetes\r\n\r\n"
start = time.time()
end = start + duration


def connect():
    raw = socket.create_connection((host, port), timeout=2)
    raw.settimeout(2)
    tls = context.wrap_socket(raw, server_hostname="kubernetes")
    names = [value for kind, value in tls.getpeercert().get("subjectAltName", ()) if kind == "DNS"]
    return tls, names


def ask(tls):
    """One request on a kept-alive connection; True when the answer is 200 with body `ok`."""
    tls.sendall(REQUEST)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(4096)
        if not chunk:
            raise ConnectionError("closed by peer")
        data += chunk
    head, _sep, body = data.partition(b"\r\n\r\n")
    lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    length = lengths[0] if lengths else 0
    while len(body) < length:
        chunk = tls.recv(4096)
        if not chunk:
            raise ConnectionError("closed by peer")
        body += chunk
    return head.startswith(b"HTTP/1.1 200") and body.strip() == b"ok"


def error_text(exc):
    return f"{type(exc).__name__}: {exc}"[:160]


steady = []


def steady_client():
    while time.time() < end:
        t = time.time()
        try:
            tls, _names = connect()
            with tls:
                ok, error = ask(tls), ""
        except Exception as exc:  # every failure is data here
            ok, error = False, error_text(exc)
        steady.append([t, ok, error, round(time.time() - t, 4)])
        time.sleep(max(0.0, 0.1 - (time.time() - t)))


held = []


def long_lived_client():
    record = {"pinned": None, "backends": [], "closed_at": None, "error": "", "answered_again_at": None}
    held.append(record)
    tls = None
    while time.time() < end:
        t = time.time()
        try:
            if tls is None:
                tls, names = connect()
                tls.settimeout(max(1.0, end - time.time()))  # a watch has no deadline of its own
                record["backends"].append(",".join(sorted(names)))
                if record["pinned"] is None:
                    record["pinned"] = victim in names
            if ask(tls) and record["closed_at"] is not None and record["answered_again_at"] is None:
                record["answered_again_at"] = time.time()
        except Exception as exc:  # the connection is gone: note when, then reconnect at once
            if record["closed_at"] is None and time.time() >= event_at:
                record["closed_at"], record["error"] = time.time(), error_text(exc)
            if tls is not None:
                tls.close()
            tls = None
            continue
        time.sleep(max(0.0, 0.2 - (time.time() - t)))
    if tls is not None:
        tls.close()


threads = [threading.Thread(target=steady_client)]
threads += [threading.Thread(target=long_lived_client) for _slot in range(long_lived)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(duration + 10)
print(json.dumps({"start": start, "steady": steady, "long_lived": held}))
