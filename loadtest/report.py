#!/usr/bin/env python3
"""Turn run.sh's raw measurements into the Markdown report.

Input: --results (one "kind=... key=value ..." line per measurement; a trailing
"text=" field may contain spaces) and --meta (key=value lines about the
machine and settings). Prints the report; with --record FILE also replaces the
section SECTION in FILE, leaving every other section as it was.
"""

import argparse
import os
import statistics
import sys

SECTION = "## Data plane vs HAProxy and nginx"
ORDER = [("breakerbox", 1), ("breakerbox-guarded", 1), ("breakerbox-guardrails", 1), ("haproxy", 1), ("nginx", 1), ("breakerbox", 2), ("haproxy", 2)]
LABEL = {"breakerbox": "breakerbox", "breakerbox-guarded": "breakerbox + 20 rules/breakers",
         "breakerbox-guardrails": "breakerbox + PII/audience/content guardrails", "haproxy": "HAProxy",
         "nginx": "nginx"}


def parse_line(line):
    line = line.rstrip("\n")
    text = None
    if " text=" in line:
        line, text = line.split(" text=", 1)
    rec = dict(f.split("=", 1) for f in line.split() if "=" in f)
    if text is not None:
        rec["text"] = text
    return rec


def read_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            meta[k] = v
    return meta


def ms(us):
    return f"{us / 1000:.2f} ms"


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def thousands(x):
    return f"{x:,.0f}"


def summarize_load(rows):
    """Median over rounds for rates and latencies; worst case for memory and errors."""
    num = lambda k: [float(r[k]) for r in rows]
    rps = num("rps")
    return {
        "rps": statistics.median(rps),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "p50": statistics.median(num("p50_us")),
        "p99": statistics.median(num("p99_us")),
        "hwm": max(num("hwm_kib")),
        "requests": sum(num("requests")),
        "non2xx": sum(num("non2xx")),
        "mode": rows[0].get("non2xx_mode", "?"),
        "sockerr": sum(sum(num(k)) for k in ("err_connect", "err_read", "err_write", "err_timeout")),
        # The proxy's own CPU time per request: unlike requests/s it does not
        # depend on whether the client side kept up, so it is the steadier
        # figure on a 2-core box.
        "cpu_us": statistics.median(
            [float(r["proxy_cpu_s"]) * 1e6 / max(1.0, float(r["requests"])) for r in rows]),
        # Its kernel part (system time): the sockets' TCP work on loopback.
        "sys_us": statistics.median(
            [float(r.get("proxy_sys_s", "nan")) * 1e6 / max(1.0, float(r["requests"])) for r in rows]),
        "cpu_proxy": statistics.median(num("cpu_proxy")),
        "cpu_loadgen": statistics.median(num("cpu_loadgen")),
        "rounds": len(rows),
    }


def build(results, meta):
    # notes: everything worth a line under "Problems seen"; problems: the
    # subset that makes the run fail (exit status 1).
    load, idle, notes, problems = {}, {}, [], []
    for r in results:
        key = (r.get("proxy"), int(r.get("workers", "1")))
        kind = r.get("kind")
        if kind == "load":
            load.setdefault(key, []).append(r)
            if key[1] == 1:
                # The proxy is alone on its CPU; busy time it did not use
                # itself was taken by something else (a build, a cron job).
                own = 100 * float(r["proxy_cpu_s"]) / float(r["duration_s"])
                other = float(r["cpu_proxy"]) - own
                if other > 10:
                    notes.append(f"noise: {LABEL[key[0]]} ×1 (round {r['round']}): other processes (or the "
                                 f"hypervisor) took ~{other:.0f}% of the proxy's CPU during the run")
        elif kind == "idle":
            idle[key[0]] = r
        elif kind in ("fail", "note"):
            where = f"{LABEL.get(key[0], key[0])} ×{key[1]}"
            if r.get("round"):
                where += f" ({'idle test' if r['round'] == 'idle' else 'round ' + r['round']})"
            notes.append(f"{'FAILED' if kind == 'fail' else 'note'}: {where}: {r.get('text', '')}")
            if kind == "fail":
                problems.append(notes[-1])

    rounds = int(meta.get("rounds", "1"))
    pcpu, lcpu = meta.get("proxy_cpu", "0"), meta.get("loadgen_cpu", "1")
    out = []
    w = out.append

    w("### Throughput and latency")
    w("")
    w(f"`wrk -t{meta.get('wrk_threads')} -c{meta.get('conns')} -d{meta.get('duration')} --latency`, "
      f"POST /v3/mail/send with a 200-byte JSON body, after a {meta.get('warmup')} warm-up; "
      + (f"median of {rounds} interleaved rounds (range in brackets)." if rounds > 1 else "one round."))
    w("")
    errname = "non-2xx" if meta.get("status_check") == "exact" else "status ≥ 400"
    w(f"| proxy | workers | CPUs | requests/s | p50 | p99 | proxy CPU per request (kernel part) | peak RSS "
      f"| {errname} / socket errors | CPU busy proxy / loadgen |")
    w("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    summaries = {}
    for key in ORDER:
        proxy, workers = key
        cpus = pcpu if workers == 1 else f"{pcpu},{lcpu} (shared)"
        if key not in load:
            if proxy == "breakerbox" and meta.get("breakerbox", "").startswith("not found"):
                if workers == 1:
                    w(f"| breakerbox | – | – | skipped: {meta['breakerbox']} | | | | | | |")
                continue
            w(f"| {LABEL[proxy]} | {workers} | {cpus} | no result (see notes) | | | | | | |")
            continue
        s = summaries[key] = summarize_load(load[key])
        rps = thousands(s["rps"])
        if s["rounds"] > 1:
            rps += f" ({thousands(s['rps_min'])}–{thousands(s['rps_max'])})"
        errs = f"{s['non2xx']:.0f} / {s['sockerr']:.0f}"
        if s["non2xx"] or s["sockerr"]:
            errs = f"**{errs}** of {thousands(s['requests'])}"
            problems.append(f"{LABEL[proxy]} ×{workers}: {s['non2xx']:.0f} {errname} responses and "
                            f"{s['sockerr']:.0f} socket errors in {thousands(s['requests'])} requests")
        w(f"| {LABEL[proxy]} | {workers} | {cpus} | {rps} | {ms(s['p50'])} | {ms(s['p99'])} | "
          f"{s['cpu_us']:.1f} µs ({s['sys_us']:.1f} kernel) | {mib(s['hwm'])} | {errs} | "
          f"{s['cpu_proxy']:.0f}% / {s['cpu_loadgen']:.0f}% |")
    w("")

    comparisons = []
    for workers in (1, 2):
        b, h = summaries.get(("breakerbox", workers)), summaries.get(("haproxy", workers))
        if b and h:
            caveat = (" (**with errors: failed requests count as served**)"
                      if any(x["non2xx"] or x["sockerr"] for x in (b, h)) else "")
            comparisons.append(
                f"- breakerbox vs HAProxy, {workers} worker{'s' if workers > 1 else ''}{caveat}: "
                f"**{b['rps'] / h['rps']:.2f}×** the requests/s; "
                f"p99 {ms(b['p99'])} vs {ms(h['p99'])} ({(b['p99'] / h['p99'] - 1) * 100:+.0f}%); "
                f"{b['cpu_us'] / h['cpu_us']:.2f}× the CPU per request "
                f"(user space {b['cpu_us'] - b['sys_us']:.1f} vs {h['cpu_us'] - h['sys_us']:.1f} µs, "
                f"kernel {b['sys_us']:.1f} vs {h['sys_us']:.1f} µs)")
    g, b1, h1 = summaries.get(("breakerbox-guarded", 1)), summaries.get(("breakerbox", 1)), summaries.get(("haproxy", 1))
    if g and b1:
        comparisons.append(
            f"- 20 rules and breakers vs plain breakerbox, 1 worker: **{g['rps'] / b1['rps']:.2f}×** the requests/s "
            f"(target ≥ 0.90×); p99 {ms(g['p99'])} vs {ms(b1['p99'])}"
            + (f"; vs HAProxy {g['rps'] / h1['rps']:.2f}×" if h1 else ""))
    gr = summaries.get(("breakerbox-guardrails", 1))
    if gr and b1:
        comparisons.append(
            f"- PII, audience and content guardrails on vs off, 1 worker: **{gr['rps'] / b1['rps']:.2f}×** the requests/s; "
            f"p99 {ms(gr['p99'])} vs {ms(b1['p99'])}; {gr['cpu_us'] - b1['cpu_us']:+.1f} µs CPU per request")
    for proxy in ("breakerbox", "haproxy"):
        one, two = summaries.get((proxy, 1)), summaries.get((proxy, 2))
        if one and two:
            comparisons.append(
                f"- {LABEL[proxy]} scaling 1 → 2 workers: {two['rps'] / one['rps']:.2f}× "
                f"(the second worker shares CPU {lcpu} with wrk and the upstream)")
    if comparisons:
        w("\n".join(comparisons))
        w("")

    w("### Idle keep-alive connections")
    w("")
    w(f"RSS of a fresh proxy (1 worker) before and after {meta.get('idle_conns')} client connections "
      "that each completed one POST and then stay open, idle.")
    w("")
    w("| proxy | connections held | RSS before | RSS after | per connection | notes |")
    w("|---|---:|---:|---:|---:|---|")
    for proxy in ("breakerbox", "haproxy", "nginx"):
        r = idle.get(proxy)
        if r is None:
            if proxy == "breakerbox" and meta.get("breakerbox", "").startswith("not found"):
                w("| breakerbox | skipped | | | | binary not found |")
            else:
                w(f"| {LABEL[proxy]} | no result (see notes) | | | | |")
            continue
        ok, n = int(r["ok"]), int(r["n"])
        before, after = int(r["rss_before_kib"]), int(r["rss_after_kib"])
        per = f"{(after - before) / ok:.1f} KiB" if ok else "–"
        nb = [f"{r['established']} established at the proxy"]
        if int(r["failed"]):
            nb.append(f"**{r['failed']} failed** ({r.get('reasons', '')})")
            problems.append(f"{LABEL[proxy]} idle test: {r['failed']} of {n} connections failed")
        if r.get("closed_by_peer") not in ("0", None):
            nb.append(f"**{r['closed_by_peer']} closed by the proxy while idle**")
            problems.append(f"{LABEL[proxy]} idle test: {r['closed_by_peer']} connections closed while idle")
        w(f"| {LABEL[proxy]} | {ok} of {n} | {mib(before)} | {mib(after)} | {per} | {'; '.join(nb)} |")
    w("")

    # Identical notes repeat once per round; one line each is enough.
    listed = list(dict.fromkeys(problems + notes))
    if listed:
        w("### Problems seen")
        w("")
        for n in listed:
            w(f"- {n}")
        w("")

    w("### Machine and method")
    w("")
    w(f"- {meta.get('cpu_model')}, {meta.get('nproc')} CPUs, {meta.get('kernel')}, {meta.get('date')}")
    w(f"- breakerbox: {meta.get('breakerbox')}; HAProxy {meta.get('haproxy')}; "
      f"nginx {meta.get('nginx')}; wrk {meta.get('wrk')}")
    w(f"- Pinning: the proxy under test on CPU {pcpu} (`taskset`); wrk, the upstream nginx and the "
      f"idle-connection client on CPU {lcpu}. So a 1-worker proxy has a core to itself and the "
      f"client side cannot steal from it; \"CPU busy\" shows which side was saturated "
      f"(a load generator near 100% means the number is a floor). 2-worker rows run on both CPUs "
      f"and compete with the client: they show scaling, not a clean 2-core figure.")
    w("- Upstream: nginx, 1 worker, `return 202 {\"message\":\"accepted\"}`, keep-alive with "
      "1,000,000 requests per connection. Every proxy keeps connections alive on both sides, logs nothing, "
      "and routes only POST /v3/mail/send (HAProxy `http-reuse always`, nginx `keepalive 64`).")
    mode = next((s["mode"] for s in summaries.values()), "non2xx")
    w(("- Errors: every response's status checked in wrk's Lua `response()` hook (non-2xx)"
       if mode == "non2xx" else
       "- Errors: wrk's status counter (statuses ≥ 400; `STATUS_CHECK=exact` counts every "
       "non-2xx at some client CPU); before each run one POST must get exactly 202 and the upstream's body")
      + "; socket errors: wrk's connect + read + write + timeout (2 s) errors.")
    w("- Proxy CPU per request: the proxy's own user + system time during the measured run "
      "(all its threads and processes) divided by the requests served.")
    busy = meta.get("busy_before", "0 0").split()
    if any(int(b) > 15 for b in busy):
        w(f"- **The machine was busy before the run** (CPU {pcpu} {busy[0]}%, CPU {lcpu} {busy[1]}% "
          "over 1 s): expect noise.")
    w("- Latency: wrk's own percentiles (closed loop, so coordinated omission applies; compare, "
      "do not quote as SLOs). Peak RSS: VmHWM summed over the proxy's processes (nginx master + "
      "worker, so shared pages count twice there). Idle memory: VmRSS, same sum.")
    if meta.get("quick") == "1":
        w("- QUICK=1 run: short runs, single round; indicative only.")
    return "\n".join(out) + "\n", problems


def record(path, body):
    section = f"{SECTION}\n\n{body}"
    if os.path.exists(path):
        with open(path) as f:
            lines = f.read().splitlines(keepends=True)
    else:
        lines = ["# Load test results\n", "\n"]
    start = next((i for i, l in enumerate(lines) if l.rstrip("\n") == SECTION), None)
    if start is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        if lines and lines[-1].strip():
            lines.append("\n")
        lines.append(section)
    else:
        end = next((i for i in range(start + 1, len(lines))
                    if lines[i].startswith("## ") or lines[i].startswith("# ")), len(lines))
        tail = lines[end:]
        lines[start:end] = [section + ("\n" if tail else "")]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("".join(lines))
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--record", metavar="RESULTS_MD")
    args = ap.parse_args()
    with open(args.results) as f:
        results = [parse_line(l) for l in f if l.strip()]
    body, problems = build(results, read_meta(args.meta))
    print(f"\n{SECTION}\n\n{body}")
    if args.record:
        record(args.record, body)
        print(f"(recorded in {args.record})", file=sys.stderr)
    if problems:
        print(f"report: {len(problems)} problem(s): a proxy failed, returned errors or dropped "
              "connections; see \"Problems seen\"", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
