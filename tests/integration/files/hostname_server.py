"""A lab backend for traffic tests: answers every line it receives with its host name, on one TCP port.

Connections stay open until the client closes them, so a test can hold one while it changes the proxy.
"""

import socket
import socketserver
import sys


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        name = socket.gethostname().encode() + b"\n"
        for _line in self.rfile:
            self.wfile.write(name)
            self.wfile.flush()


class Server(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6  # dual-stack: IPv4 clients arrive as ::ffff:a.b.c.d
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    with Server(("::", int(sys.argv[1])), Handler) as server:
        server.serve_forever()
