#!/usr/bin/env bash
# Runs a test binary where the only nameserver is 127.0.0.1, inside a network namespace
# that has nothing but loopback. Called by CTest as `unshare -rmn dns_sandbox.sh BINARY...`
# (a user namespace, so no root is needed; the mount namespace keeps the bind of
# /etc/resolv.conf away from the machine). The test itself holds UDP port 53 and never
# answers, so a lookup hangs for the resolver's full timeout unless breakerbox bounds it.
set -euo pipefail
ip link set lo up
[[ -e /etc/resolv.conf ]] || { echo "dns_sandbox: /etc/resolv.conf is missing, nothing to bind over" >&2; exit 1; }
conf=$(mktemp)
trap 'rm -f "$conf"' EXIT
printf 'nameserver 127.0.0.1\noptions timeout:5 attempts:2\n' >"$conf"
mount --bind "$conf" /etc/resolv.conf
BB_DNS_SANDBOX=1 "$@"
