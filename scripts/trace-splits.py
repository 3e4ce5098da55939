#!/usr/bin/env python3
"""Halves of an Azure Functions 2019 trace directory, for the over-fitting check in
docs/benchmarks.md: A/B (alternate functions) and E/L (first/last half of the
minutes). Usage: scripts/trace-splits.py TRACE_DIR OUT_DIR"""
import csv
import os
import sys

src, out = sys.argv[1], sys.argv[2]
inv = list(csv.reader(open(f"{src}/invocations.csv")))
others = {n: list(csv.reader(open(f"{src}/{n}"))) for n in ("durations.csv", "memory.csv")}
hdr, rows = inv[0], inv[1:]


def write(name, header, body):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/invocations.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(body)
    for n, data in others.items():
        with open(f"{d}/{n}", "w", newline="") as f:
            csv.writer(f).writerows(data)


minutes = [i for i, h in enumerate(hdr) if h.isdigit()]
fixed = [i for i, h in enumerate(hdr) if not h.isdigit()]
half = len(minutes) // 2
write("A", hdr, rows[0::2])
write("B", hdr, rows[1::2])
for name, cols in (("E", fixed + minutes[:half]), ("L", fixed + minutes[half:])):
    write(name, [hdr[i] for i in cols], [[r[i] for i in cols] for r in rows])
