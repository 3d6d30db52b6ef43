# Copyright (c) kubeha.apiserver developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The TCP servers and the counting client that the nftables kernel tests run inside their network namespace.

On sys.path through tests/unit/conftest.py's directory. SERVERS: four named servers on the namespace's loopback
(A 127.0.0.2:7001, B 127.0.0.3:7002, C 127.0.0.4:7003, V6 [::1]:7001), each answering its name, then echoing a
kept connection's lines; they end by themselves after the seconds given. COUNT: N new connections to HOST PORT,
counted by the name each got (or the error), as JSON.
"""

import textwrap

SERVERS = textwrap.dedent(
    """
    import socket, sys, threading, time
    def serve(family, address, port, name):
        s = socket.socket(family)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        s.listen(256)
        def one(c):
            with c:
                c.sendall(name.encode() + b"\\n")
                c.settimeout(20)
                try:
                    while (data := c.recv(64)):  # a kept connection: every line answered
                        c.sendall(name.encode() + b" " + data)
                except OSError:
                    pass
        def loop():
            while True:
                c, _ = s.accept()
                threading.Thread(target=one, args=(c,), daemon=True).start()
        threading.Thread(target=loop, daemon=True).start()
    serve(socket.AF_INET, "127.0.0.2", 7001, "A")
    serve(socket.AF_INET, "127.0.0.3", 7002, "B")
    serve(socket.AF_INET, "127.0.0.4", 7003, "C")
    serve(socket.AF_INET6, "::1", 7001, "V6")
    print("ready", flush=True)
    time.sleep(float(sys.argv[1]))  # bounded: the servers end by themselves
    """
)

COUNT = textwrap.dedent(
    """
    import collections, json, socket, sys
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    seen = collections.Counter()
    for _ in range(n):
        try:
            with socket.create_connection((host, port), timeout=2) as c:
                seen[c.makefile().readline().strip()] += 1
        except OSError as exc:
            seen[type(exc).__name__] += 1
    print(json.dumps(seen))
    """
)
