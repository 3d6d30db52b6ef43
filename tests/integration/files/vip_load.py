"""Steady load through a node's VIP: a new TLS connection and GET /readyz every INTERVAL for DURATION seconds.

    python3 vip_load.py VIP PORT CAFILE DURATION INTERVAL

The certificate is verified against the cluster CA for the name `kubernetes`, which every apiserver
certificate carries (the VIP joins the SANs later, in the certificate step). Prints one JSON line at the end:
{"start": t0, "results": [[t, ok, error, seconds], ...]} on the node's own clock. Each request is bounded by a 2 s
timeout and the run by DURATION: it always stops by itself.
"""

import json
import socket
import ssl
import sys
import time

vip, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
duration, interval = float(sys.argv[4]), float(sys.argv[5])
context = ssl.create_default_context(cafile=cafile)


def readyz():
    with socket.create_connection((vip, port), timeout=2) as raw:
        raw.settimeout(2)
        with context.wrap_socket(raw, server_hostname="kubernetes") as tls:
            tls.sendall(b"GET /readyz HTTP/1.1\r\nHost: kubernetes\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
    head, _sep, body = data.partition(b"\r\n\r\n")
    ok = head.startswith(b"HTTP/1.1 200") and body.strip().endswith(b"ok")
    # An apiserver's own "not ready" (e.g. while it shuts down) is named by its status line.
    return ok, "" if ok else "answered: " + head.split(b"\r\n")[0].decode("ascii", "replace")[:100]


results = []
start = time.time()
while time.time() - start < duration:
    t = time.time()
    try:
        ok, error = readyz()
    except Exception as exc:  # every failure is data here
        ok, error = False, f"{type(exc).__name__}: {exc}"[:200]
    results.append([t, ok, error, round(time.time() - t, 4)])
    time.sleep(max(0.0, interval - (time.time() - t)))
print(json.dumps({"start": start, "results": results}))
