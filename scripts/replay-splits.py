#!/usr/bin/env python3
"""Scores the keep-alive policies on a trace and on its four halves (A/B: alternate
functions, E/L: first/last half of the minutes), with each one's worst functions.

Usage: scripts/replay-splits.py NIMBUS_BINARY TRACE_DIR [WORST]

For each slice: invocations, the cold starts that are unavoidable (each function's
first call), fixed:10m's and hybrid's cold starts and rate, and hybrid's idle
instance-seconds as a share of fixed:10m's. Then the WORST (default 5) functions
of each slice by cold starts hybrid has beyond fixed:10m, and by idle share."""
import json
import os
import subprocess
import sys
import tempfile

nimbus, trace = sys.argv[1], sys.argv[2]
worst = int(sys.argv[3]) if len(sys.argv) > 3 else 5
here = os.path.dirname(os.path.abspath(__file__))
tmp = tempfile.mkdtemp(prefix="nimbus-splits-")
subprocess.run([sys.executable, f"{here}/trace-splits.py", trace, tmp], check=True)


def replay(d):
    out = subprocess.run(
        [nimbus, "replay", "--trace", d, "--policy", "fixed:10m", "--policy", "hybrid", "--per-function", "--json"],
        check=True, capture_output=True, text=True).stdout
    fixed, hybrid = json.loads(out)
    return fixed, hybrid


slices = [("whole", trace)] + [(s, f"{tmp}/{s}") for s in "ABEL"]
print("| slice | invocations | first calls | fixed:10m cold | hybrid cold | hybrid rate | hybrid idle / fixed |")
print("|---|---|---|---|---|---|---|")
details = []
for name, d in slices:
    fixed, hybrid = replay(d)
    firsts = sum(1 for f in fixed["per_function"] if f["invocations"] > 0)
    inv = fixed["invocations"]
    print(f"| {name} | {inv:,} | {firsts} ({100 * firsts / inv:.3f} %) | {fixed['cold_starts']:,} "
          f"({100 * fixed['cold_start_rate']:.3f} %) | {hybrid['cold_starts']:,} "
          f"({100 * (hybrid['cold_starts'] / fixed['cold_starts'] - 1):+.1f} %) | "
          f"{100 * hybrid['cold_start_rate']:.3f} % | "
          f"{100 * hybrid['idle_instance_seconds'] / fixed['idle_instance_seconds']:.1f} % |")
    pairs = list(zip(fixed["per_function"], hybrid["per_function"]))
    details.append((name, pairs))
for name, pairs in details:
    print(f"\n{name}: most cold starts beyond fixed:10m (function, invocations, fixed, hybrid, idle s fixed -> hybrid)")
    for f, h in sorted(pairs, key=lambda p: p[0]["cold_starts"] - p[1]["cold_starts"])[:worst]:
        print(f"  {f['function'][:8]} {f['invocations']:>9,} {f['cold_starts']:>4} {h['cold_starts']:>4}"
              f"  {f['idle_instance_seconds']:>8,.0f} -> {h['idle_instance_seconds']:>8,.0f}")
    print(f"{name}: most idle time kept beyond fixed:10m's")
    for f, h in sorted(pairs, key=lambda p: p[0]["idle_instance_seconds"] - p[1]["idle_instance_seconds"])[:worst]:
        print(f"  {f['function'][:8]} {f['invocations']:>9,} {f['cold_starts']:>4} {h['cold_starts']:>4}"
              f"  {f['idle_instance_seconds']:>8,.0f} -> {h['idle_instance_seconds']:>8,.0f}")
