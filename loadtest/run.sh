#!/usr/bin/env bash
# Data-plane benchmark: breakerbox vs HAProxy vs nginx, each in front of the
# same nginx upstream, all on 127.0.0.1. See loadtest/README.md.
#
#   loadtest/run.sh            # full run (~3.5 min), prints a Markdown report
#   QUICK=1 loadtest/run.sh    # 3 s runs, 1 round (~1 min)
#   loadtest/run.sh --record   # also replace the section in loadtest/RESULTS.md
#
# Environment (defaults in brackets):
#   BREAKERBOX  binary, relative to the repo root [build/breakerbox]
#   DURATION    measured wrk run [10s; QUICK: 3s]     WARMUP  [2s; QUICK: 1s]
#   ROUNDS      rounds, interleaved, median reported [3; QUICK: 1]
#   CONNS       wrk connections [64]   WRK_THREADS [2]   IDLE_CONNS  [5000]
#   STATUS_CHECK  "errors": wrk's own counter of statuses >= 400 (cheap);
#               "exact": every status checked in Lua, ~10% of wrk's CPU [errors]
#   PROXY_CPU   CPU for the proxy under test [0]      LOADGEN_CPU  [1]
#   QUIET_WAIT  seconds to wait for other CPU load to stop first [30; QUICK: 5]
#   KEEP_TMP=1  keep the temp dir (configs, logs, raw wrk output)
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

RECORD=0
for arg in "$@"; do
  case "$arg" in
    --record) RECORD=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
  esac
done

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
  DURATION=${DURATION:-3s}; WARMUP=${WARMUP:-1s}; ROUNDS=${ROUNDS:-1}; QUIET_WAIT=${QUIET_WAIT:-5}
else
  DURATION=${DURATION:-10s}; WARMUP=${WARMUP:-2s}; ROUNDS=${ROUNDS:-3}; QUIET_WAIT=${QUIET_WAIT:-30}
fi
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
# wrk shares a core with the upstream and is close to saturating it in front of
# a fast proxy, so by default we do not spend its CPU on per-response Lua.
STATUS_CHECK=${STATUS_CHECK:-errors}
case "$STATUS_CHECK" in
  errors) WRK_SCRIPT_ARGS=() ;;
  exact) WRK_SCRIPT_ARGS=(count) ;;
  *) echo "run.sh: STATUS_CHECK must be errors or exact" >&2; exit 2 ;;
esac
IDLE_CONNS=${IDLE_CONNS:-5000}
PROXY_CPU=${PROXY_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
BREAKERBOX=${BREAKERBOX:-build/breakerbox}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
LT=$REPO/loadtest
[[ $BREAKERBOX == /* ]] || BREAKERBOX=$REPO/$BREAKERBOX

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Seconds in a wrk duration ("10s", "2m", "500ms" rounds up to 1), for deadlines.
secs() {
  local d=$1
  case "$d" in
    *ms) echo 1 ;;
    *s) echo "${d%s}" ;;
    *m) echo $(( ${d%m} * 60 )) ;;
    *h) echo $(( ${d%h} * 3600 )) ;;
    *) echo "$d" ;;
  esac
}

# --- 1. Tools -----------------------------------------------------------------
install_missing() {
  local -a need=()
  command -v wrk >/dev/null || need+=(wrk)
  command -v haproxy >/dev/null || need+=(haproxy)
  command -v nginx >/dev/null || need+=(nginx-light)
  command -v curl >/dev/null || need+=(curl)
  command -v python3 >/dev/null || need+=(python3)
  command -v taskset >/dev/null || need+=(util-linux)
  command -v ss >/dev/null || need+=(iproute2)
  (( ${#need[@]} == 0 )) && return 0
  [[ $(id -u) == 0 ]] || die "missing ${need[*]}; install them (apt-get install -y ${need[*]})"
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}
install_missing

# 5,000 idle clients need 5,000 fds in the client and 5,000+ in the proxy;
# children inherit this. Containers often cap the hard limit, so take what we get.
HARD_NOFILE=$(ulimit -Hn)
if [[ $HARD_NOFILE == unlimited ]] || (( HARD_NOFILE >= 65536 )); then NOFILE=65536; else NOFILE=$HARD_NOFILE; fi
ulimit -n "$NOFILE"
(( NOFILE >= IDLE_CONNS + 1000 )) || die "open-file limit $NOFILE is too low for IDLE_CONNS=$IDLE_CONNS"

# --- Process bookkeeping ------------------------------------------------------
WORK=$(mktemp -d /tmp/breakerbox-bench.XXXXXX)
RESULTS=$WORK/results.txt   # one key=value line per measurement, read by report.py
META=$WORK/meta.txt
: >"$RESULTS"; : >"$META"
declare -a PIDS=()          # every long-running process we started

# Our children plus their direct children (nginx master -> workers).
proc_tree() {
  local pid=$1
  echo "$pid"
  pgrep -P "$pid" 2>/dev/null || true
}

# TERM, up to 5 s grace, then KILL (children too: nginx workers outlive a
# KILLed master). Always reaps and forgets the pid, so it is never signalled
# again after the kernel may have reused it.
stop_pid() {
  local pid=$1 kids i
  if kill -0 "$pid" 2>/dev/null; then
    kids=$(pgrep -P "$pid" 2>/dev/null || true)
    kill -TERM "$pid" 2>/dev/null || true
    for (( i = 0; i < 50; i++ )); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      # shellcheck disable=SC2086
      kill -KILL "$pid" $kids 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  local -a keep=()
  for i in "${PIDS[@]}"; do [[ $i == "$pid" ]] || keep+=("$i"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$pid"; done
  if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_bg NAME CPULIST CMD... -> LAST_PID. Not via $(...): the process must
# be our child so that cleanup can wait for it.
start_bg() {
  local name=$1 cpus=$2; shift 2
  taskset -c "$cpus" "$@" </dev/null >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# Run a bounded foreground step as a tracked background child and wait for it:
# bash runs traps only between commands, but 'wait' returns on a signal, so a
# SIGTERM to run.sh cleans up at once instead of after the step ends.
run_fg() {
  "$@" &
  local pid=$!
  PIDS+=("$pid")
  local rc=0
  wait "$pid" || rc=$?
  stop_pid "$pid"
  return "$rc"
}

# Free loopback ports, all bound at once so they differ; tiny race until the
# proxy binds, acceptable on a quiet machine.
free_ports() {
  python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# Sum of a /proc status field (VmRSS, VmHWM) in KiB over a process and its children.
mem_kib() {
  local field=$1 pid=$2 p total=0 v
  for p in $(proc_tree "$pid"); do
    v=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null || true)
    total=$(( total + ${v:-0} ))
  done
  echo "$total"
}

# CPU time in clock ticks of a process and its children (all threads), as
# "user+system system": what the proxy itself spent, whoever else was busy, and
# the kernel's part of it (on loopback most of a proxy's CPU is the kernel's TCP).
cpu_time_ticks() {
  local p total=0 sys=0 u s
  for p in $(proc_tree "$1"); do
    # Fields 14/15 of /proc/PID/stat; strip "pid (comm) " first, comm may hold spaces.
    read -r u s < <(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12, $13 }' || true)
    total=$(( total + ${u:-0} + ${s:-0} )); sys=$(( sys + ${s:-0} ))
  done
  echo "$total $sys"
}
CLK_TCK=$(getconf CLK_TCK)

# "busy total" jiffies of one CPU, to tell whether the proxy's CPU or the load
# generator's CPU was the bottleneck.
cpu_ticks() {
  awk -v c="cpu$1" '$1 == c { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6 }' /proc/stat
}
busy_pct() { # before after
  local b0 t0 b1 t1
  read -r b0 t0 <<<"$1"; read -r b1 t1 <<<"$2"
  (( t1 > t0 )) && echo $(( 100 * (b1 - b0) / (t1 - t0) )) || echo 0
}

BODY_FILE=$WORK/body.json
python3 "$LT/idle_conns.py" --print-body >"$BODY_FILE"

# One POST through a proxy: prints the status code (000 if no HTTP answer);
# the body lands in $WORK/probe.out.
probe() {
  curl -s -o "$WORK/probe.out" -w '%{http_code}' --max-time 2 \
    -H 'Content-Type: application/json' --data-binary "@$BODY_FILE" \
    "http://127.0.0.1:$1/v3/mail/send" 2>/dev/null || true
}

# Poll until PORT answers HTTP (any status) or the process dies / 10 s pass.
wait_ready() {
  local port=$1 pid=$2 deadline=$(( SECONDS + 10 )) code
  while (( SECONDS < deadline )); do
    kill -0 "$pid" 2>/dev/null || return 1
    code=$(probe "$port")
    [[ -n $code && $code != 000 ]] && return 0
    sleep 0.05
  done
  return 1
}

# --- 3. Upstream --------------------------------------------------------------
# nginx directories default to /var/lib/nginx etc.; keep everything in $WORK.
nginx_common() {
  local prefix=$1
  mkdir -p "$prefix/tmp"
  cat <<EOF
daemon off;
master_process on;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
worker_rlimit_nofile $NOFILE;
EOF
}
nginx_http_common() {
  local prefix=$1
  cat <<EOF
  access_log off;
  client_body_temp_path $prefix/tmp/body;
  proxy_temp_path $prefix/tmp/proxy;
  fastcgi_temp_path $prefix/tmp/fastcgi;
  uwsgi_temp_path $prefix/tmp/uwsgi;
  scgi_temp_path $prefix/tmp/scgi;
  # Without these, nginx closes client connections every 1,000 requests and
  # after 75 s; a close racing a proxy's reuse of a pooled connection turns
  # into a 502 for a POST (never retried), i.e. noise that is not the proxy's.
  keepalive_requests 1000000;
  keepalive_timeout 120s;
EOF
}

start_upstream() {
  local prefix=$WORK/upstream
  mkdir -p "$prefix"
  read -r UPSTREAM_PORT < <(free_ports 1)
  {
    nginx_common "$prefix"
    cat <<EOF
worker_processes 1;
events { worker_connections 8192; }
http {
$(nginx_http_common "$prefix")
  server {
    listen 127.0.0.1:$UPSTREAM_PORT;
    # 'return' discards the request body before answering, so keep-alive holds.
    location = /v3/mail/send {
      default_type application/json;
      return 202 '{"message":"accepted"}';
    }
    location / { return 404; }
  }
}
EOF
  } >"$prefix/nginx.conf"
  start_bg upstream "$LOADGEN_CPU" nginx -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log"
  UPSTREAM_PID=$LAST_PID
  wait_ready "$UPSTREAM_PORT" "$UPSTREAM_PID" || die "upstream nginx did not start: $(tail -5 "$prefix/error.log" "$WORK/upstream.log" 2>/dev/null)"
  [[ $(probe "$UPSTREAM_PORT") == 202 ]] || die "upstream does not answer 202"
  log "upstream nginx on 127.0.0.1:$UPSTREAM_PORT (pid $UPSTREAM_PID, CPU $LOADGEN_CPU)"
}

# --- 4. Proxies ---------------------------------------------------------------
config_breakerbox() { # file port workers
  cat >"$1" <<EOF
{"workers": $3,
 "listeners": [{"name": "bench", "address": "127.0.0.1:$2"}],
 "upstreams": [{"name": "demo", "url": "http://127.0.0.1:$UPSTREAM_PORT", "timeout": "15s", "max_connections": 1024}],
 "routes": [{"name": "mail-send", "match": {"path_prefix": "/v3/mail/send", "methods": ["POST"]}, "upstream": "demo"}],
 "log": {"level": "warn", "access_log": "off"}}
EOF
}

# The same proxy with 20 rules and 20 breakers on the benchmarked route (none trips:
# the limits are far above what the run sends), plus upstream health checks. This is
# what issue 4's "within 10% of plain breakerbox" is measured on.
config_breakerbox_guarded() { # file port workers
  local rules="" breakers="" i measure key window
  for i in $(seq 1 20); do
    case $(( i % 4 )) in
      0) measure='{"sum": "count($.personalizations[*].to[*])"}' ;;
      1) measure='{"sum": "requests"}' ;;
      2) measure='{"sum": "body_bytes"}' ;;
      3) measure='{"per_request": "count($.personalizations[*].to[*])"}' ;;
    esac
    case $(( i % 3 )) in
      0) key='"key": ["header:x-campaign-id"], ' ;;
      1) key='"key": ["route"], ' ;;
      2) key='' ;;
    esac
    window='"window": "1h", '
    [[ $measure == *per_request* ]] && window=''
    breakers+="${breakers:+,}{\"id\": \"b$i\", \"action\": \"pause\", \"cooldown\": \"30s\"}"
    rules+="${rules:+,}{\"id\": \"r$i\", \"route\": \"mail-send\", ${key}\"measure\": $measure, ${window}\"limit\": 1000000000000, \"failure_mode\": \"fm\", \"trips\": \"b$i\"}"
  done
  cat >"$1" <<EOF
{"workers": $3,
 "listeners": [{"name": "bench", "address": "127.0.0.1:$2"}],
 "store": {"path": "$WORK/guarded-$2.db"},
 "upstreams": [{"name": "demo", "url": "http://127.0.0.1:$UPSTREAM_PORT", "timeout": "15s", "max_connections": 1024,
                "health": {"consecutive_failures": 5, "failure_ratio": 0.5, "min_volume": 100, "cooldown": "10s"}}],
 "routes": [{"name": "mail-send", "match": {"path_prefix": "/v3/mail/send", "methods": ["POST"]}, "upstream": "demo"}],
 "failure_modes": [{"id": "fm", "title": "Benchmark failure mode", "severity": "sev2"}],
 "breakers": [$breakers],
 "rules": [$rules],
 "log": {"level": "warn", "access_log": "off"}}
EOF
}

# The same proxy with the content guardrails on the benchmarked route (PII, audience with a
# 10,000-address suppression list, content); none fires on the wrk body, so every byte is
# scanned. Issue 7's "proxy throughput with guardrails on vs off". The duplicates guard is
# left out here: wrk sends one body over and over, which is exactly the loop it contains
# (its cost is in bench_guardrails).
config_breakerbox_guardrails() { # file port workers
  local supp=$WORK/suppressed-$2.txt i
  for i in $(seq 1 10000); do echo "someone$i@elsewhere.example"; done >"$supp"
  cat >"$1" <<EOF
{"workers": $3,
 "listeners": [{"name": "bench", "address": "127.0.0.1:$2"}],
 "store": {"path": "$WORK/guardrails-$2.db"},
 "upstreams": [{"name": "demo", "url": "http://127.0.0.1:$UPSTREAM_PORT", "timeout": "15s", "max_connections": 1024}],
 "routes": [{"name": "mail-send", "match": {"path_prefix": "/v3/mail/send", "methods": ["POST"]}, "upstream": "demo"}],
 "failure_modes": [{"id": "fm", "title": "Benchmark failure mode", "severity": "sev2"}],
 "breakers": [{"id": "deny", "action": "deny"}],
 "rules": [
  {"id": "pii", "route": "mail-send", "guard": {"pii": ["card", "ssn", "iban", "secrets"]}, "failure_mode": "fm", "trips": "deny"},
  {"id": "audience", "route": "mail-send", "guard": {"recipients": {"allow_domains": ["example.com"],
     "block_domains": ["competitor.example"], "suppression_file": "$supp"}}, "failure_mode": "fm", "trips": "deny"},
  {"id": "content", "route": "mail-send", "guard": {"content": {"blocked_terms": ["free money", "act now", "wire transfer"],
     "link_domains": ["example.com"]}}, "failure_mode": "fm", "trips": "deny"}],
 "log": {"level": "warn", "access_log": "off"}}
EOF
}

config_haproxy() { # file port threads
  # maxconn: HAProxy needs two fds per proxied connection; derive it from the
  # fd limit rather than letting it fall back to the per-frontend default.
  local maxconn=$(( (NOFILE - 200) / 2 ))
  cat >"$1" <<EOF
global
  nbthread $3
  maxconn $maxconn

defaults
  mode http
  maxconn $maxconn
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 120s
  timeout server 15s
  timeout http-request 10s
  timeout http-keep-alive 120s

frontend bench
  bind 127.0.0.1:$2
  # Same routing decision the other proxies make.
  http-request deny deny_status 404 unless { path_beg /v3/mail/send } { method POST }
  default_backend demo

backend demo
  server up1 127.0.0.1:$UPSTREAM_PORT maxconn 1024
EOF
}

config_nginx() { # prefix port workers
  local prefix=$1
  nginx_common "$prefix"
  cat <<EOF
worker_processes $3;
events { worker_connections $(( NOFILE - 200 )); }
http {
$(nginx_http_common "$prefix")
  upstream demo {
    server 127.0.0.1:$UPSTREAM_PORT;
    keepalive 64;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:$2;
    location /v3/mail/send {
      limit_except POST { deny all; }
      proxy_pass http://demo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
    location / { return 404; }
  }
}
EOF
}

# start_proxy KIND WORKERS -> PROXY_PID, PROXY_PORT; on failure returns 1 with
# FAIL_REASON set (the run continues with the other proxies).
start_proxy() {
  local kind=$1 workers=$2 name="$1-w$2" cpus=$PROXY_CPU dir
  # One worker: the proxy owns CPU $PROXY_CPU. More: it must share CPUs with
  # the load generator on this 2-core box (noted in the report).
  (( workers > 1 )) && cpus="$PROXY_CPU,$LOADGEN_CPU"
  read -r PROXY_PORT < <(free_ports 1)
  dir=$WORK/$name
  mkdir -p "$dir"
  FAIL_REASON=""
  case "$kind" in
    breakerbox)
      config_breakerbox "$dir/breakerbox.json" "$PROXY_PORT" "$workers"
      start_bg "$name" "$cpus" "$BREAKERBOX" --config "$dir/breakerbox.json" --log-level warn ;;
    breakerbox-guarded)
      config_breakerbox_guarded "$dir/breakerbox.json" "$PROXY_PORT" "$workers"
      start_bg "$name" "$cpus" "$BREAKERBOX" --config "$dir/breakerbox.json" --log-level warn ;;
    breakerbox-guardrails)
      config_breakerbox_guardrails "$dir/breakerbox.json" "$PROXY_PORT" "$workers"
      start_bg "$name" "$cpus" "$BREAKERBOX" --config "$dir/breakerbox.json" --log-level warn ;;
    haproxy)
      config_haproxy "$dir/haproxy.cfg" "$PROXY_PORT" "$workers"
      start_bg "$name" "$cpus" haproxy -f "$dir/haproxy.cfg" -db ;;
    nginx)
      config_nginx "$dir" "$PROXY_PORT" "$workers" >"$dir/nginx.conf"
      start_bg "$name" "$cpus" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" ;;
  esac
  PROXY_PID=$LAST_PID
  if ! wait_ready "$PROXY_PORT" "$PROXY_PID"; then
    if kill -0 "$PROXY_PID" 2>/dev/null; then
      FAIL_REASON="did not answer on 127.0.0.1:$PROXY_PORT within 10s"
    else
      local rc=0
      wait "$PROXY_PID" || rc=$?
      FAIL_REASON="exited with status $rc at start-up"
    fi
    FAIL_REASON+="; output: $(tail -c 300 "$WORK/$name.log" | tr '\n' ' ')"
    if [[ $kind == breakerbox* ]]; then
      FAIL_REASON+=" | --check-config: $("$BREAKERBOX" --check-config "$dir/breakerbox.json" 2>&1 | head -c 300 | tr '\n' ' ')"
    fi
    stop_pid "$PROXY_PID"
    return 1
  fi
  # Make a wrong answer visible up front; wrk would only count it.
  local code
  code=$(probe "$PROXY_PORT")
  if [[ $code != 202 || $(cat "$WORK/probe.out") != '{"message":"accepted"}' ]]; then
    log "WARNING: $name answered $code $(head -c 200 "$WORK/probe.out") (expected 202 {\"message\":\"accepted\"})"
    echo "kind=note proxy=$kind workers=$workers round=$CURRENT_ROUND text=probe answered $code, body $(head -c 120 "$WORK/probe.out" | tr '\n' ' ')" >>"$RESULTS"
  fi
  return 0
}

# --- 5./6. Throughput and latency under load ----------------------------------
run_load() { # kind workers round
  local kind=$1 workers=$2 round=$3 name="$1-w$2" out c0 c1 p0 p1 t0 t1 hwm bench
  CURRENT_ROUND=$round
  if ! start_proxy "$kind" "$workers"; then
    log "$name: FAILED: $FAIL_REASON"
    echo "kind=fail proxy=$kind workers=$workers round=$round text=$FAIL_REASON" >>"$RESULTS"
    return 0
  fi
  out=$WORK/$name.round$round.wrk
  # Warm-up: fills the proxy's upstream pool and caches, faults in memory.
  run_fg timeout $(( $(secs "$WARMUP") + 30 )) taskset -c "$LOADGEN_CPU" \
    wrk -t"$WRK_THREADS" -c"$CONNS" -d"$WARMUP" -s "$LT/post.lua" "http://127.0.0.1:$PROXY_PORT" >/dev/null 2>&1 || true
  c0=$(cpu_ticks "$PROXY_CPU"); c1=$(cpu_ticks "$LOADGEN_CPU"); t0=$(cpu_time_ticks "$PROXY_PID")
  run_fg timeout $(( $(secs "$DURATION") + 30 )) taskset -c "$LOADGEN_CPU" \
    wrk -t"$WRK_THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$LT/post.lua" \
    "http://127.0.0.1:$PROXY_PORT" -- "${WRK_SCRIPT_ARGS[@]+"${WRK_SCRIPT_ARGS[@]}"}" >"$out" 2>&1 || true
  t1=$(cpu_time_ticks "$PROXY_PID")
  read -r t0 k0 <<<"$t0"; read -r t1 k1 <<<"$t1"
  p0=$(busy_pct "$c0" "$(cpu_ticks "$PROXY_CPU")"); p1=$(busy_pct "$c1" "$(cpu_ticks "$LOADGEN_CPU")")
  if kill -0 "$PROXY_PID" 2>/dev/null; then
    hwm=$(mem_kib VmHWM "$PROXY_PID")
  else
    hwm=0
    echo "kind=fail proxy=$kind workers=$workers round=$round text=process exited during the run: $(tail -c 300 "$WORK/$name.log" | tr '\n' ' ')" >>"$RESULTS"
    log "WARNING: $name exited during the run"
  fi
  stop_pid "$PROXY_PID"
  bench=$(grep '^BENCH ' "$out" || true)
  if [[ -z $bench ]]; then
    echo "kind=fail proxy=$kind workers=$workers round=$round text=wrk printed no result: $(tail -c 300 "$out" | tr '\n' ' ')" >>"$RESULTS"
    log "$name round $round: wrk printed no result (see $out)"
    return 0
  fi
  echo "kind=load proxy=$kind workers=$workers round=$round ${bench#BENCH } hwm_kib=$hwm cpu_proxy=$p0 cpu_loadgen=$p1 proxy_cpu_s=$(awk -v t=$(( t1 - t0 )) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }') proxy_sys_s=$(awk -v t=$(( k1 - k0 )) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')" >>"$RESULTS"
  log "$name round $round: $(sed -E 's/.* rps=([0-9.]+) p50_us=([0-9]+) p90_us=[0-9]+ p99_us=([0-9]+).* non2xx=([0-9]+).*/\1 req\/s, p50 \2 us, p99 \3 us, non-2xx \4/' <<<"$bench"), CPU $p0%/$p1%"
}

# --- 7. Idle keep-alive memory ------------------------------------------------
run_idle() { # kind
  local kind=$1 name="$1-w1" before after ready idle_pid est deadline done_line
  CURRENT_ROUND=idle
  if ! start_proxy "$kind" 1; then
    log "$name idle: FAILED: $FAIL_REASON"
    echo "kind=fail proxy=$kind workers=1 round=idle text=$FAIL_REASON" >>"$RESULTS"
    return 0
  fi
  # A few requests first so the baseline includes the upstream connection and
  # whatever a first request allocates; we want the per-connection increment.
  run_fg python3 "$LT/idle_conns.py" --port "$PROXY_PORT" -n 32 --no-hold >/dev/null 2>&1 || true
  sleep 0.5
  before=$(mem_kib VmRSS "$PROXY_PID")
  ready=$WORK/$name.idle.ready
  rm -f "$ready"
  start_bg "$name-idle-client" "$LOADGEN_CPU" python3 "$LT/idle_conns.py" \
    --port "$PROXY_PORT" -n "$IDLE_CONNS" --inflight 32 --timeout 40 --max-hold 60 --ready-file "$ready"
  idle_pid=$LAST_PID
  deadline=$(( SECONDS + 50 ))
  while [[ ! -s $ready ]] && (( SECONDS < deadline )) && kill -0 "$idle_pid" 2>/dev/null; do sleep 0.1; done
  if [[ ! -s $ready ]]; then
    stop_pid "$idle_pid"; stop_pid "$PROXY_PID"
    echo "kind=fail proxy=$kind workers=1 round=idle text=idle client did not finish: $(tail -c 300 "$WORK/$name-idle-client.log" | tr '\n' ' ')" >>"$RESULTS"
    return 0
  fi
  # Let lazily freed request buffers settle before reading RSS (well inside
  # every proxy's idle timeout: breakerbox 60 s, HAProxy/nginx 120 s here).
  sleep 1
  after=$(mem_kib VmRSS "$PROXY_PID")
  est=$(ss -Htn state established "( sport = :$PROXY_PORT )" | wc -l)
  stop_pid "$idle_pid"     # SIGTERM: the client prints how many the proxy closed
  done_line=$(grep '^done ' "$WORK/$name-idle-client.log" || echo "done held=? closed_by_peer=?")
  stop_pid "$PROXY_PID"
  echo "kind=idle proxy=$kind workers=1 n=$IDLE_CONNS $(sed 's/^ready //; s/ reasons=.*//' "$ready") rss_before_kib=$before rss_after_kib=$after established=$est ${done_line#done } reasons=$(sed -n 's/.* reasons=//p' "$ready")" >>"$RESULTS"
  log "$name idle: $(cat "$ready"); RSS $before -> $after KiB, $est established at the proxy, ${done_line#done }"
}

# --- Main ---------------------------------------------------------------------
{
  echo "cpu_model=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo "nproc=$(nproc)"
  echo "kernel=$(uname -sr)"
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}')"
  echo "haproxy=$(haproxy -v | head -1 | awk '{print $3}')"
  echo "nginx=$(nginx -v 2>&1 | sed 's/.*nginx\///')"
  echo "duration=$DURATION"; echo "warmup=$WARMUP"; echo "rounds=$ROUNDS"
  echo "conns=$CONNS"; echo "wrk_threads=$WRK_THREADS"; echo "idle_conns=$IDLE_CONNS"; echo "status_check=$STATUS_CHECK"
  echo "proxy_cpu=$PROXY_CPU"; echo "loadgen_cpu=$LOADGEN_CPU"; echo "nofile=$NOFILE"; echo "quick=$QUICK"
} >>"$META"

declare -a CONFIGS=()
if [[ -x $BREAKERBOX ]]; then
  CONFIGS+=("breakerbox 1" "breakerbox-guarded 1" "breakerbox-guardrails 1" "breakerbox 2")
  echo "breakerbox=${BREAKERBOX#"$REPO"/} built $(date -u -r "$BREAKERBOX" '+%Y-%m-%d %H:%M UTC'), tree $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'without commits')$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo ' (dirty)')" >>"$META"
else
  log "SKIPPING breakerbox: no executable at $BREAKERBOX (build it, or set BREAKERBOX=path)"
  echo "breakerbox=not found at ${BREAKERBOX#"$REPO"/}; skipped" >>"$META"
fi
CONFIGS+=("haproxy 1" "haproxy 2" "nginx 1")

# Benchmarks next to a compiler measure the compiler. Wait a bounded time for
# the CPUs to go quiet, else go on and say so (report.py also flags, per run,
# time other processes took on the proxy's CPU).
quiet_deadline=$(( SECONDS + QUIET_WAIT ))
while :; do
  c0=$(cpu_ticks "$PROXY_CPU"); c1=$(cpu_ticks "$LOADGEN_CPU")
  sleep 1
  busy0=$(busy_pct "$c0" "$(cpu_ticks "$PROXY_CPU")"); busy1=$(busy_pct "$c1" "$(cpu_ticks "$LOADGEN_CPU")")
  (( busy0 <= 15 && busy1 <= 15 )) && break
  if (( SECONDS >= quiet_deadline )); then
    log "WARNING: the machine is busy (CPU $PROXY_CPU ${busy0}%, CPU $LOADGEN_CPU ${busy1}% over 1 s); numbers will be noisy"
    log "         busiest (lifetime %CPU): $(ps -eo pcpu=,comm= --sort=-pcpu | head -3 | awk '{printf "%s %s%%; ", $2, $1}')"
    break
  fi
  [[ -n ${quiet_logged:-} ]] || log "waiting up to ${QUIET_WAIT}s for the CPUs to go quiet (now ${busy0}% / ${busy1}%)"
  quiet_logged=1
done
echo "busy_before=$busy0 $busy1" >>"$META"

start_upstream
log "proxies on CPU $PROXY_CPU; wrk ($WRK_THREADS threads, $CONNS conns) and upstream on CPU $LOADGEN_CPU; $ROUNDS round(s) of $DURATION after ${WARMUP} warm-up"

n=${#CONFIGS[@]}
for (( r = 1; r <= ROUNDS; r++ )); do
  # Rotate the order each round so no proxy always runs first or last.
  for (( i = 0; i < n; i++ )); do
    read -r kind workers <<<"${CONFIGS[$(( (i + r - 1) % n ))]}"
    run_load "$kind" "$workers" "$r"
  done
done

for kind in breakerbox haproxy nginx; do
  [[ $kind == breakerbox && ! -x $BREAKERBOX ]] && continue
  run_idle "$kind"
done

stop_pid "$UPSTREAM_PID"

report_args=(--results "$RESULTS" --meta "$META")
(( RECORD )) && report_args+=(--record "$LT/RESULTS.md")
# Exit status 1 when a proxy failed to start, died, returned errors or dropped
# idle connections; a missing breakerbox binary is only reported as skipped.
python3 "$LT/report.py" "${report_args[@]}"
