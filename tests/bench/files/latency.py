"""Request latency from a lab node to several targets, measured interleaved so that they share the same moments.

    python3 latency.py CAFILE ROUNDS NAME=HOST:PORT[+HOST:PORT...] ...

Each round asks every target once in turn, in two ways: `fresh` (a new TCP and TLS connection, then
`GET /readyz`, as a client without connection reuse sees it) and `kept` (`GET /readyz` on one connection kept
per target). A target with several endpoints rotates over them (straight to the apiservers, round-robin, as the
proxies spread their connections). Prints {"NAME": {"fresh": [seconds, ...], "kept": [...]}, ...}.
Bounded: ROUNDS rounds, each request with a 2 s timeout.
"""

import json
import socket
import ssl
import sys
import time

cafile, rounds = sys.argv[1], int(sys.argv[2])
context = ssl.create_default_context(cafile=cafile)
REQUEST = b"GET /readyz HTTP/1.1\r\nHost: kubernetes\r\n\r\n"


def endpoint(text):
    host, _sep, port = text.rpartition(":")
    return host.strip("[]"), int(port)


targets = {}
for arg in sys.argv[3:]:
    name, _sep, spec = arg.partition("=")
    targets[name] = [endpoint(part) for part in spec.split("+")]


def connect(address):
    raw = socket.create_connection(address, timeout=2)
    raw.settimeout(2)
    return context.wrap_socket(raw, server_hostname="kubernetes")


def ask(tls):
    tls.sendall(REQUEST)
    data = b""
    while not data.endswith(b"ok"):
        chunk = tls.recv(4096)
        if not chunk:
            raise ConnectionError("closed by peer")
        data += chunk


kept = {name: connect(addresses[0]) for name, addresses in targets.items()}
samples = {name: {"fresh": [], "kept": []} for name in targets}
for i in range(rounds):
    for name, addresses in targets.items():
        t = time.perf_counter()
        with connect(addresses[i % len(addresses)]) as tls:
            ask(tls)
        samples[name]["fresh"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ask(kept[name])
        samples[name]["kept"].append(time.perf_counter() - t)
for tls in kept.values():
    tls.close()
print(json.dumps(samples))
