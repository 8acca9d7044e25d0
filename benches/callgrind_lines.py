#!/usr/bin/env python3
"""The code footprint of one call: instructions and distinct 64-byte lines of
code executed per call of a function, from a callgrind profile.

In a real server the engine's code is cold between requests (the framework,
the runtime and the kernel run in between), so a request pays for every line
of code it touches, not only for its instructions: a check that takes 0.2 µs
in a hot loop costs 1-2 µs between real requests (benches/README.md). This
counts both, deterministically (no timing noise):

    cargo bench --profile ci -p floodgate-benches --bench policy --no-run
    valgrind --tool=callgrind --dump-instr=yes --dump-line=no \\
        --callgrind-out-file=/tmp/cg.out --toggle-collect='*check_request_into*' \\
        target/ci/deps/policy-<hash> --bench anonymous_per_ip_10k_ips_into --profile-time 1
    python3 benches/callgrind_lines.py /tmp/cg.out check_request_into

A line counts when it ran in at least half of the calls (the steady state:
first inserts and other one-off slow paths left out).
"""
import collections
import re
import sys


def main(path, function, top=20):
    fn_names = {}
    calls = 0
    lines_by_fn = collections.defaultdict(set)
    counts = collections.Counter()  # instruction address -> executions
    owner = {}
    fn = None
    last = 0
    skip_next = False
    pending_call = None
    rows = open(path, errors="replace").read().splitlines()

    def name(body):
        m = re.match(r"(\(\d+\))\s*(.*)", body)
        if not m:
            return body
        if m.group(2):
            fn_names[m.group(1)] = m.group(2)
        return fn_names.get(m.group(1), m.group(1))

    total = 0
    for row in rows:
        if not row:
            continue
        if row.startswith("fn="):
            fn = name(row[3:])
            continue
        if row.startswith("cfn="):
            pending_call = name(row[4:])
            continue
        if row.startswith("calls="):
            if pending_call is not None and pending_call.endswith(function):
                calls += int(row[6:].split()[0])
            skip_next = True
            continue
        if row.startswith("summary:"):
            total = int(row.split()[1])
            continue
        if row[0] in "0123456789+-*":
            parts = row.split()
            p = parts[0]
            if p.startswith("0x"):
                addr = int(p, 16)
            elif p[0] in "+-":
                addr = last + int(p)
            else:
                addr = last
            last = addr
            if skip_next:  # the inclusive cost of a call, not an instruction
                skip_next = False
                continue
            if len(parts) > 1:
                counts[addr] += int(parts[1])
                owner[addr] = fn
    if calls == 0:
        sys.exit(f"no calls of a function ending in {function!r} in {path}")
    hot = {a for a, n in counts.items() if n >= calls / 2}
    for a in hot:
        lines_by_fn[owner[a]].add(a // 64)
    lines = {a // 64 for a in hot}
    print(f"{calls} calls of {function}: {total / calls:.0f} instructions and "
          f"{len(lines)} lines of code ({len(lines) * 64} bytes) per call")
    for f, ls in sorted(lines_by_fn.items(), key=lambda x: -len(x[1]))[:top]:
        print(f"{len(ls):6d}  {f[:120]}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 20)
