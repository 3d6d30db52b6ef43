"""A client on a lab node, driven line by line over SSH: one JSON answer per command.

spread HOST PORT N   N fresh connections, one request each: {"cp1": 5, "cp2": 5}
open HOST PORT       open the held connection and ask once: {"backend": "cp1"}
again                ask on the held connection: {"backend": "cp1"} or {"error": "..."}
"""

import json
import socket
import sys

held = None


def ask(sock):
    sock.sendall(b"hello\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(100)
        if not chunk:
            raise ConnectionError("closed by peer")
        data += chunk
    return data.decode().strip()


def connect(host, port):
    return socket.create_connection((host, int(port)), timeout=5)


for line in sys.stdin:
    cmd, *args = line.split()
    try:
        if cmd == "spread":
            counts = {}
            for _ in range(int(args[2])):
                with connect(args[0], args[1]) as sock:
                    name = ask(sock)
                counts[name] = counts.get(name, 0) + 1
            answer = counts
        elif cmd == "open":
            held = connect(args[0], args[1])
            answer = {"backend": ask(held)}
        elif cmd == "again":
            answer = {"backend": ask(held)}
        else:
            answer = {"error": f"unknown command {cmd}"}
    except OSError as exc:
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(answer), flush=True)
