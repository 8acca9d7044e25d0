#!/usr/bin/env python3
"""Cost per HTTP request of rate-limiting middleware, in real servers on loopback.

For each framework, the same handler runs behind no limiter, Floodgate's
middleware and the peer middleware users would pick instead (@fastify/rate-limit,
express-rate-limit, slowapi, flask-limiter), with a limit so generous nothing is
denied. wrk loads each server in turn; the variants alternate within each round
(the machine is shared and noisy) and the medians over the rounds are reported
with their ratio to no limiter, and the server's CPU time per request (from
/proc, the server process and its workers): what each limiter adds, less
disturbed by wrk sharing the cores than throughput is. A second table gives
the ratios taken within each round (median and range over the rounds): the
variants of one round run back to back, so what drifts between rounds on a
shared host cancels out of them.

    python3 benches/http/run.py [--rounds 3] [--duration 5] [--only fastify,express]
    python3 benches/http/run.py --logging --duration 12   # a denied flood: each event logged vs summaries
    python3 benches/http/run.py --tight   # a flood nearly all denied (1/min per IP) vs no limiter
                                          # (stops if a limiter refuses < 90% of it, or no limiter refuses any)
    python3 benches/http/run.py --floor   # also the floor: a middleware setting two constant headers
    python3 benches/http/run.py --split --only fastify,express   # also the floor plus Floodgate's check alone
    python3 benches/http/run.py --only flask --extension   # also the Flask extension (floodgate.flask)
    python3 benches/http/run.py --footprint --only fastify,express,fastapi   # instructions and cache misses per request
    python3 benches/http/run.py --tight --hijack --only fastify   # also the Fastify plugin with { hijackDenials: true }

`--footprint` runs each server under valgrind's callgrind with its cache
model instead of timing it: instructions and first-level cache misses per
request, the whole server's and Floodgate's native code's (the Node addon, the
Python extension) apart. Floodgate's part is deterministic; the rest moves
between runs, by up to a third (V8 and CPython tier up and collect garbage
differently under valgrind): compare within a run. Needs valgrind (apt).
Needs: wrk (apt), `npm install` in benches/http, the Node addon built
(`cd bindings/node && npm run build:release`), and a Python with floodgate and
benches/http/requirements.txt installed (`--python`, default target/py-venv).
"""
import argparse
import os
import pathlib
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VARIANTS = ("none", "floodgate", "peer")
PEERS = {"fastify": "@fastify/rate-limit", "express": "express-rate-limit", "fastapi": "slowapi", "flask": "flask-limiter"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(framework, mode, port, python, extra_env=None, stderr=subprocess.PIPE, expect_headers=True, wrap=(), tries=600):
    env = dict(os.environ, FG_BENCH_MODE=mode, FG_BENCH_APP=framework, **(extra_env or {}))
    if framework in ("fastify", "express"):
        cmd = ["node", str(HERE / "node_server.mjs"), framework, mode, str(port)]
    elif framework == "fastapi":
        cmd = [python, "-m", "uvicorn", "py_apps:fastapi_app", "--port", str(port), "--log-level", "warning", "--no-access-log"]
    else:
        cmd = [python, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", "--log-level", "warning", "py_apps:flask_app"]
    proc = subprocess.Popen([*wrap, *cmd], cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    for _ in range(tries):
        try:
            try:
                answer = urllib.request.urlopen(f"http://127.0.0.1:{port}/items", timeout=1)
            except urllib.error.HTTPError as refused:
                # An answer all the same: a 429 when an earlier probe that timed
                # out (a slow start on a busy host) was counted under --tight.
                answer = refused
            with answer as r:
                headers = {k.lower() for k in r.headers.keys()}
                limited = any("ratelimit" in h for h in headers)
                if expect_headers and limited != (mode != "none"):
                    raise SystemExit(f"{framework}/{mode}: rate-limit headers {'missing' if mode != 'none' else 'present'}: {sorted(headers)}")
                return proc
        except (OSError, urllib.error.URLError):
            if proc.poll() is not None:
                raise SystemExit(f"{framework}/{mode} exited")
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{framework}/{mode} did not start")


TIGHT_ENV = {"FG_BENCH_POLICY": str(HERE / "deny.toml"), "FG_BENCH_PEER_LIMIT": "1/minute", "FG_BENCH_PEER_MAX": "1"}


def wrk(port, duration, connections, denials_ok=False, requests=False):
    """Requests per second (and, with `requests`, how many were answered and
    how many of those were not 2xx)."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", f"http://127.0.0.1:{port}/items"],
                         capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx and not denials_ok:
        raise SystemExit(f"{non2xx.group(1)} responses were not 2xx:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    if requests:
        return rps, int(re.search(r"(\d+) requests in", out).group(1)), int(non2xx.group(1)) if non2xx else 0
    return rps


def check_flood(framework, variant, n, refused):
    """Under `--tight` (1 request a minute per address, one client address), a
    limiter refuses nearly every request and no limiter none: a run where one
    did not measured something else (a limiter that let the flood through, a
    server that failed), so it stops."""
    if variant == "none":
        if refused:
            raise SystemExit(f"{framework}/none: {refused} of {n} responses were not 2xx without a limiter")
    elif variant not in ("floor", "check") and refused < 0.9 * n:
        raise SystemExit(f"{framework}/{variant}: a flood at 1/min refused only {refused} of {n} requests")


def cpu_seconds(pid):
    """User + system CPU time of process `pid` and its descendants (gunicorn's
    workers), from /proc: what the server spent, whatever wrk took on the
    other core. Steadier than throughput on a shared 2-core host."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = pathlib.Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in pathlib.Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            pass
    return total


def logging_cost(a):
    """FastAPI + Floodgate under a flood it denies (deny.toml: 1/min per IP):
    the package's logging (summaries) against every event logged as a line."""
    results = {"summaries": [], "each event": []}
    lines = {}
    for r in range(a.rounds):
        for name, env in (("summaries", {"FG_BENCH_LOG": "info"}), ("each event", {"FG_BENCH_LOG": "each"})):
            port = free_port()
            log = HERE / f"log-{name.replace(' ', '-')}.txt"
            with open(log, "wb") as err:
                proc = start("fastapi", "floodgate", port, a.python, dict(env, FG_BENCH_POLICY=str(HERE / "deny.toml")),
                             stderr=err, expect_headers=False)
                try:
                    wrk(port, 1, a.connections, denials_ok=True)
                    rps = wrk(port, a.duration, a.connections, denials_ok=True)
                finally:
                    proc.terminate()
                    proc.wait(timeout=10)
            text = log.read_bytes()
            log.unlink()
            lines[name] = (text.count(b"\n"), len(text))
            results[name].append(rps)
            print(f"round {r + 1}: {name:10} {rps:8.0f} req/s, {lines[name][0]} lines, {lines[name][1]} bytes", file=sys.stderr)
    base = statistics.median(results["each event"])
    for name, v in results.items():
        m = statistics.median(v)
        print(f"| {name} | {m / 1000:.2f}k req/s ({m / base:.2f}x) | {lines[name][0]} lines, {lines[name][1] / 1e6:.1f} MB in the last {a.duration + 1} s run |")


EVENTS = ("Ir", "I1mr", "D1mr")


def callgrind_costs(path):
    """Self cost per object file (Ir, I1mr, D1mr) in a callgrind output file:
    each function's own lines, not the inclusive cost of its calls."""
    names, costs, ob, skip, cols = {}, {}, "?", False, None
    for line in open(path):
        if line.startswith("events:"):
            order = line.split()[1:]
            cols = [order.index(e) for e in EVENTS]
        elif line.startswith(("ob=", "cob=")):
            # A compressed name is defined where it first appears, a call's or not.
            m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line.strip())
            if m and m.group(2):
                names[m.group(1)] = m.group(2)
            if line.startswith("ob="):
                ob = names.get(m.group(1), "?") if m else line[3:].strip()
        elif line.startswith("calls="):
            skip = True  # the next line is the call's inclusive cost
        elif line[:1].isdigit() or line[:1] in "+-*":
            if skip:
                skip = False
                continue
            v = line.split()[1:]
            c = costs.setdefault(ob, [0] * len(EVENTS))
            for i, col in enumerate(cols or ()):
                if col < len(v):
                    c[i] += int(v[col])
    return costs


def footprint(a):
    """Each server under callgrind: warmed up uninstrumented, then 2 connections
    for `--duration` x 4 seconds instrumented; costs of the main thread (the
    event loop) per answered request."""
    frameworks = [f for f in a.only.split(",") if f != "flask"]  # gunicorn forks its worker
    variants = ("none", "floor", "floodgate", "peer") if a.floor else VARIANTS
    if a.hijack:  # Fastify alone (checked in main)
        variants = (*variants[:-1], "hijack", variants[-1])
    print("| server | variant | instructions / request | I1 misses | D1 misses | Floodgate's native code: instructions | I1 misses |")
    print("|---|---|---|---|---|---|---|")
    for f in frameworks:
        for v in variants:
            port = free_port()
            out = tempfile.mkdtemp(prefix="fg-footprint-")
            wrap = ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--separate-threads=yes", "--instr-atstart=no",
                    f"--callgrind-out-file={out}/cg.%p"]
            proc = start(f, v, port, a.python, TIGHT_ENV if a.tight else None, wrap=wrap, tries=1200)
            try:
                wrk(port, 3 * a.duration, 4, denials_ok=a.tight)  # warm-up: the JIT tiers up
                subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
                _, n, refused = wrk(port, 4 * a.duration, 2, denials_ok=a.tight, requests=True)
                if a.tight:
                    check_flood(f, v, n, refused)
                subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            dumps = sorted(pathlib.Path(out).glob("cg.*.1-01"))  # thread 1: the event loop
            if not dumps:
                raise SystemExit(f"{f}/{v}: no callgrind dump in {out}")
            costs = callgrind_costs(dumps[0])
            total = [sum(c[i] for c in costs.values()) / n for i in range(len(EVENTS))]
            ours = [sum(c[i] for ob, c in costs.items() if "floodgate" in pathlib.Path(ob).name) / n
                    for i in range(len(EVENTS))]
            print(f"| {f} | {v} | {total[0]:,.0f} | {total[1]:,.0f} | {total[2]:,.0f} | {ours[0]:,.0f} | {ours[1]:,.0f} |",
                  flush=True)
            print(f"{f}/{v}: {n} requests instrumented, dumps in {out}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=1,
                    help="seconds of load before each measured run (0: none, for a smoke that checks the harness)")
    ap.add_argument("--only", default="fastify,express,fastapi,flask")
    ap.add_argument("--python", default=str(ROOT / "target" / "py-venv" / "bin" / "python"))
    ap.add_argument("--logging", action="store_true")
    ap.add_argument("--footprint", action="store_true",
                    help="instructions and cache misses per request under callgrind (valgrind), not throughput")
    ap.add_argument("--tight", action="store_true",
                    help="limiters at 1 request per minute per IP: nearly every request is denied")
    ap.add_argument("--extension", action="store_true",
                    help="Flask only: also Floodgate's Flask extension (floodgate.flask) beside its WSGI middleware")
    ap.add_argument("--floor", action="store_true",
                    help="also the floor: a middleware that only sets two constant rate-limit headers "
                         "(what any limiter setting them pays before it decides anything)")
    ap.add_argument("--split", action="store_true",
                    help="Node only: the floor, and the floor plus Floodgate's check whose verdict is not used "
                         "(what the check costs apart from the headers it sets)")
    ap.add_argument("--hijack", action="store_true",
                    help="Fastify only: also Floodgate's plugin with { hijackDenials: true } (refusals written to "
                         "the raw response; matters with --tight)")
    a = ap.parse_args()
    if a.hijack and a.only != "fastify":
        raise SystemExit("--hijack is Fastify's: use it with --only fastify")
    if a.logging:
        return logging_cost(a)
    if a.footprint:
        return footprint(a)
    frameworks = a.only.split(",")
    variants = ("none", "floor", "floodgate", "peer") if a.floor else VARIANTS
    if a.split:
        if not set(frameworks) <= {"fastify", "express"}:
            raise SystemExit("--split is the Node servers': use it with --only fastify,express")
        variants = ("none", "floor", "check", "floodgate", "peer")
    if a.hijack:
        variants = (*variants[:-1], "hijack", variants[-1])
    if a.extension:
        if frameworks != ["flask"]:
            raise SystemExit("--extension is Flask's: use it with --only flask")
        variants = (*variants[:-1], "extension", variants[-1])
    results = {(f, v): [] for f in frameworks for v in variants}
    cpu = {(f, v): [] for f in frameworks for v in variants}
    for r in range(a.rounds):
        for f in frameworks:
            k = r % len(variants)
            order = variants[k:] + variants[:k]
            for v in order:
                port = free_port()
                proc = start(f, v, port, a.python, TIGHT_ENV if a.tight else None)
                try:
                    if a.warmup:  # (JIT, caches, connections)
                        wrk(port, a.warmup, a.connections, denials_ok=a.tight)
                    before = cpu_seconds(proc.pid)
                    rps, n, refused = wrk(port, a.duration, a.connections, denials_ok=a.tight, requests=True)
                    if a.tight:
                        check_flood(f, v, n, refused)
                    us = (cpu_seconds(proc.pid) - before) / max(n, 1) * 1e6
                finally:
                    proc.terminate()
                    proc.wait(timeout=10)
                results[(f, v)].append(rps)
                cpu[(f, v)].append(us)
                print(f"round {r + 1}: {f:8} {v:10} {rps:10.0f} req/s {us:8.1f} µs CPU/req", file=sys.stderr)
    # Throughput (what clients see) and the server's CPU time per request (what
    # each limiter costs, less disturbed by wrk sharing the machine).
    shown = [v for v in variants if v != "none"]
    names = {"floor": "floor", "check": "floor + check", "floodgate": "Floodgate", "extension": "Floodgate extension",
             "hijack": "Floodgate, hijackDenials", "peer": "peer"}
    print("| server | no limiter | " + " | ".join(names[v] for v in shown)
          + " | server CPU µs/req: none | " + " | ".join(names[v] for v in shown) + " |")
    print("|---|---|" + "---|" * (2 * len(shown) + 1))
    for f in frameworks:
        rate = {v: statistics.median(results[(f, v)]) for v in variants}
        us = {v: statistics.median(cpu[(f, v)]) for v in variants}
        none = rate["none"]
        cells = [f"{PEERS[f] + ' ' if v == 'peer' else ''}{rate[v] / 1000:.1f}k ({rate[v] / none:.2f}x)" for v in shown]
        cpus = [f"{us[v]:.1f} ({us[v] - us['none']:+.1f})" for v in shown]
        print(f"| {f} | {none / 1000:.1f}k | " + " | ".join(cells) + f" | {us['none']:.1f} | " + " | ".join(cpus) + " |")
    # A round's variants run back to back, seconds apart; the rounds follow
    # one another over minutes on a shared host. A ratio taken within each
    # round, then the median over the rounds, cancels what drifts between them.
    pairs = [(v, "none") for v in shown] + [(v, "peer") for v in ("floodgate", "extension", "hijack") if v in variants and "peer" in variants]
    print()
    print("Requests per second, the ratio within each round: median (range) over the rounds")
    print()
    print("| server | " + " | ".join(f"{names[num]} / {'no limiter' if den == 'none' else names[den]}" for num, den in pairs) + " |")
    print("|---|" + "---|" * len(pairs))
    for f in frameworks:
        cells = []
        for num, den in pairs:
            ratios = [x / y for x, y in zip(results[(f, num)], results[(f, den)])]
            cells.append(f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
        print(f"| {f} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
