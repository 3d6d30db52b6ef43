"""Which masters answer through a node's VIP: N new TLS connections, each counted by the master it reached.

    python3 vip_spread.py HOST PORT CAFILE N MASTERS

The master is told by the served certificate's DNS names: each master's certificate carries its node name, one
of MASTERS (comma-separated); other names, such as one added by the certificate step, are not counted. Prints
{"cp1": 4, "cp2": 3, ...}; a failed connection counts under "error", a certificate naming none of MASTERS under
"?". Each connection has a 2 s timeout.
"""

import json
import socket
import ssl
import sys

host, port, cafile, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
masters = set(sys.argv[5].split(","))
context = ssl.create_default_context(cafile=cafile)
seen = {}
for _ in range(count):
    try:
        with socket.create_connection((host, port), timeout=2) as raw:
            raw.settimeout(2)
            with context.wrap_socket(raw, server_hostname="kubernetes") as tls:
                sans = tls.getpeercert().get("subjectAltName", ())
                names = sorted(v for k, v in sans if k == "DNS" and v in masters)
                who = ",".join(names) or "?"
    except OSError:
        who = "error"
    seen[who] = seen.get(who, 0) + 1
print(json.dumps(seen))
