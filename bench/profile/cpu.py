#!/usr/bin/env python3
"""cpu.py PERF_DATA COMMANDS [TOP] -- CPU per command of each thread of the
server, and per thread the functions that take most of it (inclusive, with
their own share), from a `perf record -F 2999 -g --call-graph dwarf` of
the server (bench/profile/write.sh). Frames perf leaves unnamed in our own
libraries (libcqrs, cqrsd) are named with addr2line."""
import collections
import re
import subprocess
import sys

HZ = 2999  # the -F of write.sh
data, ncmd = sys.argv[1], float(sys.argv[2])
top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
FRAME = re.compile(r'^\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)$')


def clean(sym):
    return re.sub(r'\+0x[0-9a-f]+$', '', sym.replace(' (inlined)', ''))


def samples(path):
    out = subprocess.run(['perf', 'script', '-i', path, '-F', 'comm,tid,ip,sym,dso'],
                         capture_output=True, text=True).stdout
    cur = None
    for line in out.splitlines():
        if not line.strip():
            if cur:
                yield cur
            cur = None
        elif not line.startswith('\t'):
            cur = (line.split()[0], [])
        elif cur is not None:
            m = FRAME.match(line)
            if m:
                cur[1].append(m.groups())
    if cur:
        yield cur


def namer(all_samples):
    need = collections.defaultdict(set)
    for _, frames in all_samples:
        for ip, sym, dso in frames:
            if sym.startswith('[unknown]') and ('libcqrs' in dso or 'cqrsd' in dso):
                need[dso].add(ip)
    names = {}
    for dso, ips in need.items():
        ips = sorted(ips)
        r = subprocess.run(['addr2line', '-f', '-e', dso] + ['0x' + i for i in ips],
                           capture_output=True, text=True).stdout.splitlines()
        for i, ip in enumerate(ips):
            names[(dso, ip)] = r[2 * i] if 2 * i < len(r) else '??'
    return lambda ip, sym, dso: names.get((dso, ip), clean(sym))


S = list(samples(data))
name = namer(S)
by = collections.Counter(c for c, _ in S)
print(f'{len(S)} samples at {HZ} Hz = {len(S) / HZ * 1e6 / ncmd:.1f} us of CPU per command')
for c, n in by.most_common():
    print(f'  {c:16s} {n / HZ * 1e6 / ncmd:7.1f} us/command')
for c, _ in by.most_common(3):
    incl, own, n = collections.Counter(), collections.Counter(), 0
    for comm, frames in S:
        if comm != c:
            continue
        n += 1
        seen = set()
        for i, f in enumerate(frames):
            s = name(*f)
            if i == 0:
                own[s] += 1
            if s not in seen:
                seen.add(s)
                incl[s] += 1
    print(f'-- {c}: inclusive % (own %) of its {n} samples, functions of ours and SQLite/jansson/libc')
    shown = 0
    for s, k in incl.most_common():
        if s.startswith(('[', '0x', '__x64', 'entry_', 'do_syscall')) or s in ('start_thread', 'clone3'):
            continue
        print(f'  {100 * k / n:5.1f}% ({100 * own[s] / n:4.1f}%)  {s}')
        shown += 1
        if shown >= top:
            break
