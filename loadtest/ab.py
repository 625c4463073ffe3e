#!/usr/bin/env python3
"""Interleaved A/B of two builds of one Google Benchmark binary, for machines whose speed
drifts between minutes (this project's 2-vCPU VM moved by up to 1.6x): each round runs both
builds once per benchmark, alternating which goes first, pinned to one CPU; the minimum over
rounds is the figure to compare (the median is shown too).

    git worktree add /tmp/ref <commit> && cmake -S /tmp/ref -B /tmp/ref/build -G Ninja \\
        -DCMAKE_BUILD_TYPE=Release && ninja -C /tmp/ref/build bench_guardrails
    loadtest/ab.py /tmp/ref/build/loadtest/bench_guardrails build/loadtest/bench_guardrails . 8
"""
import collections
import json
import statistics
import subprocess
import sys


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: ab.py A_BINARY B_BINARY FILTER ROUNDS")
    a, b, flt, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    cpu = "1"
    res = {"A": collections.defaultdict(list), "B": collections.defaultdict(list)}
    for r in range(rounds):
        order = (("A", a), ("B", b)) if r % 2 == 0 else (("B", b), ("A", a))
        for tag, binary in order:
            out = subprocess.run(["taskset", "-c", cpu, binary, f"--benchmark_filter={flt}",
                                  "--benchmark_min_time=0.2", "--benchmark_format=json"],
                                 capture_output=True, text=True, check=True).stdout
            for bm in json.loads(out)["benchmarks"]:
                scale = {"ns": 1000.0, "us": 1.0, "ms": 0.001}[bm["time_unit"]]
                res[tag][bm["name"]].append(bm["real_time"] / scale)
    print(f"{'benchmark':40} {'A min':>9} {'B min':>9} {'B/A min':>8} {'A med':>9} {'B med':>9} {'B/A med':>8}  (us)")
    for name, av in res["A"].items():
        bv = res["B"][name]
        print(f"{name:40} {min(av):9.2f} {min(bv):9.2f} {min(bv) / min(av):8.3f} "
              f"{statistics.median(av):9.2f} {statistics.median(bv):9.2f} "
              f"{statistics.median(bv) / statistics.median(av):8.3f}")


if __name__ == "__main__":
    main()
