#!/usr/bin/env python3
"""RSS per idle TLS keep-alive connection of a breakerbox build.

Starts the demo upstream and BINARY (default build/breakerbox) with one worker and a TLS
listener (the test certificates in build/test-certs/), opens N connections (default 2000) on
127.0.0.1 that each complete one POST over TLS and then stay open, and prints the growth of
the proxy's RSS per connection. Everything listens on loopback; both processes are stopped
at the end, and the whole run is bounded (120 s).

    loadtest/tls_idle.py [BINARY] [N]
"""
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BODY = (b'{"personalizations":[{"to":[{"email":"ada@example.com"}]}],"from":{"email":"ops@example.com"},'
        b'"subject":"Hi","content":[{"type":"text/plain","value":"x"}]}')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline):
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build/breakerbox")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    certs = os.path.join(ROOT, "build/test-certs")
    deadline = time.monotonic() + 120
    work = tempfile.mkdtemp(prefix="bb-tls-idle-")
    up_port, tls_port, plain_port, admin_port = free_port(), free_port(), free_port(), free_port()
    cfg = json.load(open(os.path.join(ROOT, "demo/breakerbox.json")))
    cfg["workers"] = 1
    cfg["listeners"] = [{"name": "plain", "address": f"127.0.0.1:{plain_port}"},
                        {"name": "tls", "address": f"127.0.0.1:{tls_port}",
                         "tls": {"cert_file": f"{certs}/server.pem", "key_file": f"{certs}/server.key"}}]
    cfg["admin"]["address"] = f"127.0.0.1:{admin_port}"
    cfg["store"]["path"] = f"{work}/bb.db"
    cfg["log"] = {"level": "warn", "access_log": "off"}
    for u in cfg["upstreams"]:
        u["url"] = f"http://127.0.0.1:{up_port}"
    with open(f"{work}/bb.json", "w") as f:
        json.dump(cfg, f)
    up = subprocess.Popen([os.path.join(os.path.dirname(binary), "breakerbox-demo-upstream"), f"127.0.0.1:{up_port}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bb = subprocess.Popen([binary, "--config", f"{work}/bb.json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conns = []
    try:
        wait_port(up_port, deadline)
        wait_port(tls_port, deadline)
        ctx = ssl.create_default_context(cafile=f"{certs}/ca.pem")

        def one(i):
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", tls_port)), server_hostname="localhost")
            s.sendall(b"POST /v3/mail/send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"X-Campaign-Id: c%d\r\nContent-Length: %d\r\n\r\n" % (i, len(BODY)) + BODY)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    sys.exit("the proxy closed a connection")
                data += chunk
            head, rest = data.split(b"\r\n\r\n", 1)
            length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
            while length and len(rest) < length[0]:
                rest += s.recv(65536)
            if not head.startswith(b"HTTP/1.1 2"):
                sys.exit(f"unexpected answer: {head[:80]!r}")
            return s

        for s in [one(i) for i in range(50)]:  # warm-up: the allocator's first arenas
            s.close()
        time.sleep(1)
        before = rss_kib(bb.pid)
        for i in range(n):
            if time.monotonic() > deadline:
                sys.exit("out of time")
            conns.append(one(1000 + i))
        time.sleep(1)
        after = rss_kib(bb.pid)
        print(f"{binary}: {n} idle TLS connections, RSS {before} -> {after} KiB, "
              f"{(after - before) / n:.1f} KiB per connection")
    finally:
        for s in conns:
            s.close()
        for p in (bb, up):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
