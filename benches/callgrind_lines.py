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
    python3 benches/callgrind_lines.py /tmp/cg.out check_request_into [--without with_slow]

A line counts when it ran in at least half of the calls (the steady state:
first inserts and other one-off slow paths left out). Instructions are all of
them per call, so they move with the profile's length when a one-off path is
in it: the bench's 10k first inserts (`MemoryStore::with_slow`) add about 110
instructions per call over 131k calls and twice that over 65k. `--without F`
takes out the whole cost of the calls to functions whose name contains F
(repeatable), so that two builds compare on the steady state.

`--source F BINARY` breaks the lines of code of the profiled function
whose name ends in F down by source line: each hot instruction of F (inlined
code included) goes to the outermost source line within F that it comes
from (binutils' `addr2line -i` on BINARY, built with line tables:
`CARGO_PROFILE_CI_DEBUG=line-tables-only`). A line that most of its
instructions come through (a macro's call site, as `decide`'s procedure) is
looked through. It shows where a large function's lines go: `decide`'s 92 lines on
the per-IP request, for one, are spread over its whole body, no line of it
above 8.

`--atomics BINARY` also counts the atomic read-modify-writes per call (every
lock-prefixed instruction, and `xchg` with memory: each a full barrier on
x86), by function: objdump gives their addresses in BINARY (the profiled
one), the profile how often each ran. These VMs have no hardware counters,
and these barriers move the clock where instruction counts do not
(benches/README.md, "Atomic read-modify-writes per check"). `steady` sums
those that ran in at least half of the calls, outside `--without`'s
functions. Profile the whole program for it (no `--toggle-collect`): the
engine's `check_request_into` and the policy's both match a
`*check_request_into*` toggle, and nested matches toggle collection off.
"""
import collections
import re
import subprocess
import sys


def atomic_instructions(binary):
    """Address -> mnemonic of each lock-prefixed instruction, and each xchg with memory."""
    found = {}
    dump = subprocess.run(["objdump", "-d", "--no-show-raw-insn", binary], capture_output=True, text=True, check=True)
    for line in dump.stdout.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(\S+)\s*(\S*)", line)
        if not m:
            continue
        op, arg = m.group(2), m.group(3)
        if op == "lock":
            found[int(m.group(1), 16)] = f"lock {arg}"
        elif op.startswith("xchg") and "(" in line:
            found[int(m.group(1), 16)] = op
    return found


def by_source(hot, counts, calls, binary, top):
    """Hot instructions (executions per call) and lines of code of one
    function, by the outermost source line within it each comes from."""
    addresses = sorted(hot)
    out = subprocess.run(["addr2line", "-a", "-i", "-e", binary] + [hex(a) for a in addresses],
                         capture_output=True, text=True, check=True).stdout
    chains, current = {}, None
    for line in out.splitlines():
        if line.startswith("0x"):
            current = int(line, 16)
            chains[current] = []
        elif current is not None:
            # Outermost frame first; without the path's directories.
            chains[current].insert(0, re.sub(r" \(discriminator \d+\)", "", line.rsplit("/", 1)[-1]))
    # A frame that most instructions have outermost is a call site (a
    # macro's, as `decide`'s procedure): look one frame further in.
    depth = {a: 0 for a in addresses}
    while True:
        outer = collections.Counter(c[depth[a]] for a, c in chains.items() if len(c) > depth[a] + 1)
        site = [f for f, n in outer.items() if n > len(addresses) / 2]
        if not site:
            break
        for a, c in chains.items():
            if len(c) > depth[a] + 1 and c[depth[a]] == site[0]:
                depth[a] += 1
    executed = collections.Counter()
    lines = collections.defaultdict(set)
    for a in addresses:
        chain = chains.get(a) or ["?"]
        where = chain[min(depth.get(a, 0), len(chain) - 1)]
        executed[where] += counts[a] / calls
        lines[where].add(a // 64)
    print(f"by source line: {len({a // 64 for a in addresses})} lines of code, "
          f"{sum(executed.values()):.0f} instructions per call")
    for where, n in sorted(executed.items(), key=lambda x: (-len(lines[x[0]]), -x[1]))[:top]:
        print(f"{len(lines[where]):6d} lines {n:7.1f} instructions  {where}")


def main(path, function, top=20, without=(), atomics=None, source=None):
    fn_names = {}
    calls = 0
    lines_by_fn = collections.defaultdict(set)
    counts = collections.Counter()  # instruction address -> executions
    owner = {}
    fn = None
    last = 0
    skip_next = False
    pending_call = None
    left_out = 0  # the inclusive cost of the calls `without` names
    take_out = False
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
            take_out = pending_call is not None and any(w in pending_call for w in without)
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
                if take_out and len(parts) > 1:
                    left_out += int(parts[1])
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
    without_text = f" (without {', '.join(without)})" if without else ""
    print(f"{calls} calls of {function}: {(total - left_out) / calls:.0f} instructions{without_text} and "
          f"{len(lines)} lines of code ({len(lines) * 64} bytes) per call")
    for f, ls in sorted(lines_by_fn.items(), key=lambda x: -len(x[1]))[:top]:
        print(f"{len(ls):6d}  {f[:120]}")
    if source:
        name, binary = source
        mine = {a for a in hot if owner[a].endswith(name)}
        if not mine:
            sys.exit(f"no hot instructions in a function ending in {name!r}")
        by_source(mine, counts, calls, binary, top)
    if atomics:
        rows = collections.Counter()
        for addr, op in atomic_instructions(atomics).items():
            if counts.get(addr):
                rows[(owner[addr], op)] += counts[addr]
        steady = sum(n for (f, _), n in rows.items() if n >= calls / 2 and not any(w in f for w in without))
        print(f"atomic read-modify-writes per call: {sum(rows.values()) / calls:.2f}, steady {steady / calls:.2f}")
        for (f, op), n in rows.most_common(top):
            print(f"{n / calls:6.2f}  {op:14s} {f[:110]}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile")
    ap.add_argument("function")
    ap.add_argument("top", nargs="?", type=int, default=20)
    ap.add_argument("--without", action="append", default=[], metavar="F")
    ap.add_argument("--atomics", metavar="BINARY")
    ap.add_argument("--source", nargs=2, metavar=("F", "BINARY"))
    a = ap.parse_args()
    main(a.profile, a.function, a.top, tuple(a.without), a.atomics, a.source)
