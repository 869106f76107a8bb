#!/usr/bin/env python3
"""offcpu.py SCHED_DATA SERVER_PID COMMANDS -- where the server's threads
wait, per command: from a system-wide `perf record -e sched:sched_switch
-e sched:sched_wakeup -g` (bench/profile/write.sh), each time one of the
server's threads is switched out, the time until it runs again, grouped by
thread, state (S sleeping, D disk, R runnable but preempted) and what its
kernel stack was doing; and the wake-ups each thread got per command (a
hand-off or an I/O completion each)."""
import collections
import re
import subprocess
import sys

data, pid, ncmd = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
HEAD = re.compile(r'^\s*(.+?)\s+(\d+)/(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)$')
FRAME = re.compile(r'^\s+[0-9a-f]+\s+(\S+)')
# what a stack says about a wait, in this order
WHY = [('ext4_write_inode', 'fsync: inode write'), ('blkdev_issue_flush', 'fsync: cache flush'),
       ('fdatasync', 'fsync: data'), ('fsync', 'fsync'), ('ftruncate', 'ftruncate'),
       ('epoll_wait', 'epoll_wait (MHD idle / waiting)'), ('futex_wait', 'futex (mutex/condvar)'),
       ('pwrite', 'pwrite'), ('pread', 'pread'), ('sendmsg', 'send'), ('recv', 'recv'),
       ('irqentry_exit_to_user_mode', 'preempted'), ('__cond_resched', 'preempted')]

out = subprocess.run(['perf', 'script', '-i', data, '-F', 'comm,pid,tid,time,event,trace,ip,sym'],
                     capture_output=True, text=True).stdout
events, cur = [], None
for line in out.splitlines():
    if not line.strip():
        if cur:
            events.append(cur)
        cur = None
        continue
    m = HEAD.match(line)
    if m and not line.startswith('\t'):
        cur = [int(m.group(2)), int(m.group(3)), float(m.group(4)), m.group(5), m.group(6), []]
        continue
    m = FRAME.match(line)
    if m and cur is not None:
        cur[5].append(m.group(1))
if cur:
    events.append(cur)

ours = {e[1] for e in events if e[0] == pid}


def why(frames):
    text = ' '.join(frames)
    for k, label in WHY:
        if k in text:
            return label
    return 'other'


switched, waits, wakes, names = {}, collections.defaultdict(lambda: [0.0, 0]), collections.Counter(), {}
for spid, tid, t, ev, trace, frames in events:
    if ev == 'sched:sched_switch':
        m = re.search(r'prev_comm=(.*?) prev_pid=(\d+) .*prev_state=(\S+) ==> .*next_pid=(\d+)', trace)
        if not m:
            continue
        prev, nxt = int(m.group(2)), int(m.group(4))
        if prev in ours:
            names[prev] = m.group(1)
            switched[prev] = (t, m.group(3)[:1], why(frames))
        if nxt in switched:
            t0, st, w = switched.pop(nxt)
            a = waits[(names[nxt], st, w)]
            a[0] += t - t0
            a[1] += 1
    elif ev == 'sched:sched_wakeup':
        m = re.search(r'comm=(.*?) pid=(\d+)', trace)
        if m and int(m.group(2)) in ours:
            wakes[m.group(1)] += 1
print('wake-ups per command: ' + ', '.join(f'{c} {n / ncmd:.2f}' for c, n in wakes.most_common()))
print(f"{'thread':15s} st {'us/cmd':>7s} {'waits/cmd':>9s}  waiting in")
for (c, st, w), (tt, n) in sorted(waits.items(), key=lambda kv: -kv[1][0]):
    if tt * 1e6 / ncmd < 1.0:
        continue
    print(f'{c:15s} {st:2s} {tt * 1e6 / ncmd:7.1f} {n / ncmd:9.2f}  {w}')
