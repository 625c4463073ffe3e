#!/bin/bash
# Instructions per rules-engine evaluation, counted by callgrind: a figure this project's
# noisy 2-vCPU VMs cannot move (wall-clock A/B runs drift by 20% between minutes there, and
# the VM exposes no hardware counters to `perf stat`). Compares two builds of
# bench_guardrails (or bench_rules) benchmark by benchmark:
#
#   loadtest/instructions.sh /tmp/ref/build/loadtest/bench_guardrails \
#       build/loadtest/bench_guardrails 'AllGuardrails_2KiB' 'RunShGuardrails_200B'
#
# Each figure is engine::evaluate's inclusive instruction count divided by its calls
# (valgrind --tool=callgrind; about 50x slower than native, so a 256 KiB body takes ~20 s).
# It counts work, not time: cache misses and branch mispredictions do not show.
set -euo pipefail
shopt -s inherit_errexit  # a failed valgrind inside $(...) stops the script too
[ $# -ge 3 ] || { echo "usage: $0 A_BINARY B_BINARY BENCHMARK..." >&2; exit 2; }
command -v valgrind >/dev/null && command -v callgrind_annotate >/dev/null || {
    echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
a=$1 b=$2
shift 2
fn='bb::rules::engine::evaluate(bb::rules::request_view const&, std::chrono::time_point<std::chrono::_V2::steady_clock, std::chrono::duration<long, std::ratio<1l, 1000000000l> > >)'
out=$(mktemp)
trap 'rm -f "$out"' EXIT
per_call() {  # BINARY BENCHMARK
    rm -f "$out"  # never read the other build's profile
    valgrind --tool=callgrind --callgrind-out-file="$out" "$1" --benchmark_filter="^BM_$2\$" \
        --benchmark_min_time=0.3 >/dev/null 2>&1 || { echo "valgrind failed: $1 $2" >&2; return 1; }
    local incl id calls
    # (The overload that takes more arguments starts with the same text: match the whole name.)
    # (awk reads to the end: a reader that stops early would fail the pipe under pipefail.)
    incl=$(callgrind_annotate --inclusive=yes --threshold=100 "$out" 2>/dev/null |
        awk -v fn="$fn [" '!done && index($0, fn) { gsub(",", "", $1); print $1; done = 1 }')
    # (callgrind names a function once, in whichever fn= or cfn= line comes first, then by id.)
    id=$(awk -v fn="$fn" '!done && /^c?fn=\(/ && substr($0, length($0) - length(fn) + 1) == fn {
        sub(/^c?fn=/, "", $1); print $1; done = 1 }' "$out")
    calls=0
    if [ -n "$id" ]; then
        calls=$(awk -v call="cfn=$id" '$1 == call { want = 1; next }
            want && /^calls=/ { split(substr($0, 7), c, " "); n += c[1] } { want = 0 } END { print n + 0 }' "$out")
    fi
    if [ -z "$incl" ] || [ "$calls" -eq 0 ]; then
        echo "no engine::evaluate calls in $1 for $2 (no such benchmark?)" >&2
        return 1
    fi
    echo $((incl / calls))
}
printf '%-40s %14s %14s %8s\n' benchmark "A instr/eval" "B instr/eval" "B/A"
for bm in "$@"; do
    ia=$(per_call "$a" "$bm")
    ib=$(per_call "$b" "$bm")
    printf '%-40s %14d %14d %8.3f\n' "$bm" "$ia" "$ib" "$(echo "$ib / $ia" | bc -l)"
done
