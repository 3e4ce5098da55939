#!/usr/bin/env python3
"""CPU time per process name between two snapshots of /proc (user + system ticks):

    scripts/cpu-per-process.py snap BEFORE.json
    … the load …
    scripts/cpu-per-process.py snap AFTER.json
    scripts/cpu-per-process.py diff BEFORE.json AFTER.json CALLS   # µs per call

A process that ended between the snapshots is not counted (the load generator, when
it runs as its own command). `nimbus serve X` is named by its service."""
import os, sys, json, collections
HZ = os.sysconf('SC_CLK_TCK')
def snap():
    out = {}
    for pid in os.listdir('/proc'):
        if not pid.isdigit(): continue
        try:
            s = open(f'/proc/{pid}/stat').read()
            cmd = open(f'/proc/{pid}/cmdline').read().split('\0')
        except OSError: continue
        comm = s[s.index('(')+1:s.rindex(')')]
        f = s[s.rindex(')')+2:].split()
        t = int(f[11]) + int(f[12])
        name = comm
        if 'nimbus' in comm and len(cmd) > 2 and cmd[1] == 'serve': name = 'nimbus ' + cmd[2]
        out[pid] = (name, t)
    return out
if sys.argv[1] == 'snap':
    json.dump(snap(), open(sys.argv[2], 'w'))
else:
    a, b = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
    calls = float(sys.argv[4])
    per = collections.Counter()
    for pid, (name, t) in b.items():
        t0 = a.get(pid, (name, 0))[1] if pid in a else 0
        per[name] += t - t0
    total = sum(per.values())
    for name, t in per.most_common(12):
        if t <= 0: continue
        print(f"{name:28s} {t/HZ:7.2f} s  {t/HZ/calls*1e6:8.1f} us/call  {t/total:5.1%}")
    print(f"{'total':28s} {total/HZ:7.2f} s  {total/HZ/calls*1e6:8.1f} us/call")
