#!/usr/bin/env bash
# Quarantine holds per second through HTTP: breakerbox with a breaker that holds every
# request, driven by wrk at 1, 16 and 64 connections, with group commit and then with one
# transaction per hold (store.group_commit=false). Traffic only to 127.0.0.1; bounded.
# usage: loadtest/holds.sh [--record]   (DURATION=5s by default)
set -euo pipefail
cd "$(dirname "$0")/.."
BB=${BREAKERBOX:-build/breakerbox}
DURATION=${DURATION:-5s}
RECORD=0
[[ ${1:-} == --record ]] && RECORD=1
command -v wrk >/dev/null || scripts/setup.sh wrk
[[ -x $BB ]] || { echo "no $BB: build first" >&2; exit 1; }
WORK=$(mktemp -d /tmp/breakerbox-holds.XXXXXX)
BBPID=""
cleanup() { [[ -n $BBPID ]] && kill "$BBPID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
run() { # group_commit conns -> prints "holds/s p50_ms p99_ms"
  local gc=$1 conns=$2 p
  p=$(port)
  rm -f "$WORK"/bb.db*
  cat >"$WORK/bb.json" <<JSON
{"workers": 1, "listeners": [{"name": "bench", "address": "127.0.0.1:$p"}],
 "store": {"path": "$WORK/bb.db", "group_commit": $gc, "max_held": 100000000, "max_held_bytes": 100000000000,
           "per_breaker_max_held": 100000000, "per_breaker_max_held_bytes": 100000000000},
 "upstreams": [{"name": "up", "url": "http://127.0.0.1:9"}],
 "routes": [{"name": "mail-send", "match": {"path_prefix": "/v3/mail/send"}, "upstream": "up"}],
 "failure_modes": [{"id": "fm", "title": "hold everything", "severity": "sev2"}],
 "breakers": [{"id": "hold", "action": "quarantine", "reset": "manual"}],
 "rules": [{"id": "all", "route": "mail-send", "measure": {"per_request": "requests"}, "limit": 0,
            "failure_mode": "fm", "trips": "hold"}],
 "log": {"level": "error", "access_log": "off"}}
JSON
  taskset -c 0 "$BB" --config "$WORK/bb.json" >"$WORK/bb.log" 2>&1 &
  BBPID=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.05; done
  taskset -c 1 wrk -t1 -c"$conns" -d"$DURATION" --latency -s loadtest/post.lua "http://127.0.0.1:$p" >"$WORK/wrk.out" 2>&1 || true
  kill "$BBPID"; wait "$BBPID" 2>/dev/null || true; BBPID=""
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/ {print int($2)}' "$WORK/wrk.out")
  p50=$(awk '$1=="50%" {print $2}' "$WORK/wrk.out")
  p99=$(awk '$1=="99%" {print $2}' "$WORK/wrk.out")
  echo "$rps $p50 $p99"
}
table="| connections | group commit: holds/s | p50 | p99 | one transaction per hold: holds/s | p50 | p99 | ratio |
|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in 1 16 64; do
  read -r g50 gp50 gp99 < <(run true "$c")
  read -r o50 op50 op99 < <(run false "$c")
  ratio=$(awk -v a="$g50" -v b="$o50" 'BEGIN { if (b > 0) printf "%.1fx", a / b; else print "-" }')
  table+="
| $c | $g50 | $gp50 | $gp99 | $o50 | $op50 | $op99 | $ratio |"
done
machine="$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs, $(df -T "$WORK" | awk 'NR==2 {print $2}') on $(df "$WORK" | awk 'NR==2 {print $1}'), $(date -u '+%Y-%m-%d %H:%M UTC')"
report="## Quarantine holds through HTTP

\`loadtest/holds.sh\`: every request to POST /v3/mail/send is held (202 + ticket after the
commit); wrk with a 200-byte JSON body, $DURATION per cell, breakerbox (1 worker) on CPU 0, wrk on CPU 1.
Machine: $machine.

$table
"
echo "$report"
if (( RECORD )); then
  python3 - "$report" <<'PY'
import re, sys
path = "loadtest/RESULTS.md"
text = open(path).read()
section = sys.argv[1].rstrip() + "\n"
pattern = re.compile(r"## Quarantine holds through HTTP\n.*?(?=\n## |\Z)", re.S)
text = pattern.sub(section.rstrip("\n"), text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
PY
fi
