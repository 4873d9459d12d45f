#!/usr/bin/env python3
"""A real server's HTTP server for the LVS/NAT tests (Python's http.server):
GET /name -> "NAME CLIENT_ADDR"; GET /big -> 10 MB of a known pattern;
POST /upload -> "NAME BYTES SHA256" of the body. Usage: nat-httpd.py NAME PORT
Both families where the host has IPv6 (IPv4 clients named without the ::ffff: prefix)."""
import hashlib
import http.server
import socket
import sys

NAME, PORT = sys.argv[1], int(sys.argv[2])
BIG = bytes(i % 251 for i in range(1 << 20)) * 10


class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/big":
            self.reply(BIG)
        else:
            peer = self.client_address[0].removeprefix("::ffff:")
            self.reply(f"{NAME} {peer}\n".encode())

    def do_POST(self):
        left, digest, total = int(self.headers["Content-Length"]), hashlib.sha256(), 0
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            digest.update(chunk)
            total += len(chunk)
            left -= len(chunk)
        self.reply(f"{NAME} {total} {digest.hexdigest()}\n".encode())

    def log_message(self, *args):
        pass


class DualStack(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


try:
    server = DualStack(("::", PORT), Handler)
except OSError:
    server = http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
print("listening", flush=True)
server.serve_forever()
