#!/usr/bin/env python3
"""Open N real keep-alive connections to a proxy and hold them idle.

Each connection sends one POST /v3/mail/send and reads the whole response
before it is counted, so the proxy has gone through its full request path and
is now holding a keep-alive connection (not merely an accepted socket). Then
the connections stay open, untouched, until SIGTERM/SIGINT, stdin closes or
--max-hold seconds pass, so the caller can read the proxy's RSS in between.

Only a bounded number of requests are in flight at once (--inflight): a proxy
opens upstream connections for concurrent requests, and we want the memory
delta to be the cost of idle *client* connections, not of a burst of upstream
ones.

Protocol with the caller:
  * with --no-hold, exits as soon as every request is answered (warm-up use);
  * otherwise, when every connection has finished (ok or failed), writes one line
    "ready ok=N failed=N" to --ready-file (atomically, via rename) and stdout;
  * on exit prints "done held=N closed_by_peer=N", i.e. how many connections
    the proxy closed while we were holding them (idle timeouts, limits).
Exit status: 0 if all N succeeded, 1 otherwise, 2 on usage errors.
"""

import argparse
import errno
import os
import resource
import selectors
import signal
import socket
import sys
import time

BODY = (
    b'{"personalizations":[{"to":[{"email":"ada@example.com"}]}],'
    b'"from":{"email":"ops@example.com"},"subject":"Spring sale",'
    b'"content":[{"type":"text/plain","value":"Hello Ada, the big sale starts today."}]}'
)
assert len(BODY) == 200


def request_bytes(host, port):
    return (
        "POST /v3/mail/send HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n"
        "\r\n"
    ).encode() + BODY


def response_complete(buf):
    """Return (done, status). Enough HTTP/1.1 to delimit one small response."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return False, None
    head = buf[:head_end].decode("latin-1").split("\r\n")
    try:
        status = int(head[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        return True, -1
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    rest = buf[head_end + 4:]
    if "content-length" in headers:
        return len(rest) >= int(headers["content-length"]), status
    if "chunked" in headers.get("transfer-encoding", ""):
        return rest.endswith(b"0\r\n\r\n"), status
    # No length: the body would end at close, which defeats keep-alive.
    return True, -2


class Conn:
    __slots__ = ("sock", "out", "buf", "state", "status")

    def __init__(self, sock, out):
        self.sock, self.out, self.buf = sock, out, b""
        self.state, self.status = "connecting", None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int)
    ap.add_argument("-n", "--connections", type=int, default=5000)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds allowed to get every connection through its request")
    ap.add_argument("--ready-file")
    ap.add_argument("--no-hold", action="store_true",
                    help="close everything and exit once every request is answered")
    ap.add_argument("--max-hold", type=float, default=120.0,
                    help="seconds to hold at most, so a forgotten client still ends")
    ap.add_argument("--print-body", action="store_true",
                    help="write the 200-byte request body to stdout and exit")
    args = ap.parse_args()
    if args.print_body:
        sys.stdout.buffer.write(BODY)
        return 0

    if args.port is None:
        ap.error("--port is required")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections + 64
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            print(f"idle_conns: need {want} fds, hard limit is {hard}", file=sys.stderr)
            return 2
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    stop = False

    def on_signal(_sig, _frm):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    req = request_bytes(args.host, args.port)
    sel = selectors.DefaultSelector()
    conns, ok, failed, started, active = [], 0, 0, 0, 0
    failures = {}
    deadline = time.monotonic() + args.timeout

    def fail(c, why):
        nonlocal failed, active
        failures[why] = failures.get(why, 0) + 1
        failed += 1
        active -= 1
        c.state = "failed"
        sel.unregister(c.sock)
        c.sock.close()

    while ok + failed < args.connections and time.monotonic() < deadline and not stop:
        while active < args.inflight and started < args.connections:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = Conn(s, req)
            rc = s.connect_ex((args.host, args.port))
            started += 1
            active += 1
            conns.append(c)
            sel.register(s, selectors.EVENT_WRITE, c)
            if rc not in (0, errno.EINPROGRESS):
                fail(c, f"connect:{errno.errorcode.get(rc, rc)}")
        for key, _ in sel.select(timeout=0.2):
            c = key.data
            try:
                if c.state == "connecting":
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        fail(c, f"connect:{errno.errorcode.get(err, err)}")
                        continue
                    c.state = "sending"
                if c.state == "sending":
                    n = c.sock.send(c.out)
                    c.out = c.out[n:]
                    if not c.out:
                        c.state = "reading"
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                    continue
                if c.state == "reading":
                    data = c.sock.recv(65536)
                    if not data:
                        fail(c, "closed-before-response")
                        continue
                    c.buf += data
                    complete, status = response_complete(c.buf)
                    if complete:
                        c.status = status
                        if 200 <= status <= 299:
                            ok += 1
                            active -= 1
                            c.state = "idle"
                            c.buf = b""
                            # Watch for the proxy closing it while we hold it.
                            sel.modify(c.sock, selectors.EVENT_READ, c)
                        else:
                            fail(c, f"status:{status}")
            except OSError as e:
                fail(c, f"io:{errno.errorcode.get(e.errno, e.errno)}")

    if ok + failed < args.connections:
        failures["timeout"] = args.connections - ok - failed
        failed = args.connections - ok

    line = f"ready ok={ok} failed={failed}"
    if failures:
        line += " reasons=" + ",".join(f"{k}:{v}" for k, v in sorted(failures.items()))
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(line + "\n")
        os.replace(tmp, args.ready_file)
    print(line, flush=True)

    if args.no_hold:
        for c in conns:
            if c.state == "idle":
                c.sock.close()
        return 0 if failed == 0 else 1

    # Hold. Stdin closing also ends the hold, so a caller that just pipes into
    # us (or dies) does not leave thousands of sockets behind.
    closed_by_peer = 0
    try:
        if not os.isatty(0):
            sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    except (ValueError, OSError, PermissionError):
        pass  # e.g. /dev/null is not pollable with epoll; signals still work.
    hold_until = time.monotonic() + args.max_hold
    while not stop and time.monotonic() < hold_until:
        for key, _ in sel.select(timeout=0.5):
            if key.data == "stdin":
                if not os.read(0, 4096):
                    stop = True
                    break
                continue
            c = key.data
            if c.state != "idle":
                continue
            try:
                data = c.sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                closed_by_peer += 1
                c.state = "closed"
                sel.unregister(c.sock)
                c.sock.close()
    held = sum(1 for c in conns if c.state == "idle")
    print(f"done held={held} closed_by_peer={closed_by_peer}", flush=True)
    for c in conns:
        if c.state == "idle":
            c.sock.close()
    return 0 if failed == 0 and closed_by_peer == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
