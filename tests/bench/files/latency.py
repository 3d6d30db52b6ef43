"""Request latency from a lab node to several targets, measured interleaved so that they share the same moments.

    python3 latency.py CAFILE ROUNDS MASTERS NAME=HOST:PORT ...

MASTERS is the apiservers' addresses, comma-separated; `direct` (straight to them) is always measured, each NAME
is a proxy in front of them. Two passes of ROUNDS rounds, kept then fresh; each round asks every target once, in
an order that turns from round to round:
- `fresh`: a new TCP and TLS connection, then `GET /readyz`, as a client without connection reuse sees it.
  `direct` turns over the masters round-robin, as the proxies spread new connections.
- `kept`: `GET /readyz` on a connection kept open, the same master for every target in a round (turning over
  the masters from round to round): each target keeps one connection per master (through a proxy: connections
  are opened until each master has answered one, told by the certificate it serves), so a difference
  between masters does not pass for the proxy's.
Prints {"NAME": {"fresh": [seconds, ...], "kept": [...]}, ...}, in round order.
Bounded: ROUNDS rounds, each request with a 2 s timeout, at most 10 connections per master to pair them.
"""

import json
import socket
import ssl
import sys
import time

cafile, rounds = sys.argv[1], int(sys.argv[2])
masters = sys.argv[3].split(",")
context = ssl.create_default_context(cafile=cafile)
REQUEST = b"GET /readyz HTTP/1.1\r\nHost: kubernetes\r\n\r\n"


def endpoint(text):
    host, _sep, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def connect(address):
    raw = socket.create_connection(address, timeout=2)
    raw.settimeout(2)
    return context.wrap_socket(raw, server_hostname="kubernetes")


def master_of(tls):
    return certificates.get(tls.getpeercert(binary_form=True))


def ask(tls):
    tls.sendall(REQUEST)
    data = b""
    while not data.endswith(b"ok"):
        chunk = tls.recv(4096)
        if not chunk:
            raise ConnectionError("closed by peer")
        data += chunk


def one_per_master(address):
    kept = {}
    for _attempt in range(10 * len(masters)):
        tls = connect(address)
        who = master_of(tls)
        if who is None or who in kept:
            tls.close()
        else:
            kept[who] = tls
        if len(kept) == len(masters):
            return kept
    raise SystemExit(f"{address}: not every master answered in {10 * len(masters)} connections: {sorted(kept)}")


fresh_to = {"direct": [(m, 6443) for m in masters]}
kept = {"direct": {m: connect((m, 6443)) for m in masters}}
certificates = {tls.getpeercert(binary_form=True): m for m, tls in kept["direct"].items()}
for arg in sys.argv[4:]:
    name, _sep, spec = arg.partition("=")
    fresh_to[name] = [endpoint(spec)]
    kept[name] = one_per_master(endpoint(spec))

names = list(fresh_to)
samples = {name: {"fresh": [], "kept": []} for name in names}
# Kept connections first, then fresh ones, each pass interleaved: a fresh connection's teardown (FIN, TLS
# close) still in flight would otherwise slow the kept request after it, through the proxy that carried it.
for i in range(rounds):
    for name in names[i % len(names) :] + names[: i % len(names)]:
        t = time.perf_counter()
        ask(kept[name][masters[i % len(masters)]])
        samples[name]["kept"].append(time.perf_counter() - t)
for i in range(rounds):
    for name in names[i % len(names) :] + names[: i % len(names)]:
        addresses = fresh_to[name]
        t = time.perf_counter()
        with connect(addresses[i % len(addresses)]) as tls:
            ask(tls)
        samples[name]["fresh"].append(time.perf_counter() - t)
for by_master in kept.values():
    for tls in by_master.values():
        tls.close()
print(json.dumps(samples))
