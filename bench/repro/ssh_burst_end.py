#!/usr/bin/env python3
"""Repro: the SSH reader sometimes sleeps while data (or EOF) is already there.

1. Follow mode: the last lines of a burst sometimes reach /metrics only
   0.4-2 s after they were written (local files, and OpenSSH `ssh host tail -f`
   with the same remote command, do not show it).
2. --once over SSH: about 1 run in 25-50 takes 15 s longer (3 x the 5 s
   heartbeat, i.e. the liveness timeout of ssh_event_dopoll), with exact
   counts and nothing logged.

  bench/repro/ssh_burst_end.py [--bursts 12] [--compare-openssh] [--once 40]

Each burst appends 100 lines every 10 ms for 3 s to a file the exporter follows
over SSH (sshd on loopback from tests/integration/harness.py), then measures
how long until sshtail_lines_total reaches the total. With --compare-openssh
the same bursts are read by `ssh ... 'exec 3<F; tail -s 0.05 -c +1 -f /dev/fd/3'`
(the exporter's remote command) for comparison. Binary: $SSHTAIL_BIN or
build/sshtail_exporter (copied first).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'integration'))
import harness  # noqa: E402


def burst(path, chunk, seconds=3.0, per_s=100):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    start = time.monotonic()
    for k in range(int(seconds * per_s)):
        d = start + k / per_s - time.monotonic()
        if d > 0:
            time.sleep(d)
        os.write(fd, chunk)
    os.close(fd)
    return int(seconds * per_s), time.monotonic()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--bursts', type=int, default=12)
    ap.add_argument('--compare-openssh', action='store_true')
    ap.add_argument('--once', type=int, default=0, metavar='N',
                    help='also run --once over SSH N times on a 1M-line file and list the slow runs')
    a = ap.parse_args()
    work = harness.tmpdir('sshtail-repro-')
    src = os.environ.get('SSHTAIL_BIN', os.path.join(ROOT, 'build', 'sshtail_exporter'))
    harness.BIN = shutil.copy2(src, os.path.join(work, 'sshtail_exporter'))
    lines = harness.generate(100, 'timed', seed=1)[0]
    chunk = ('\n'.join(lines) + '\n').encode()
    sshd = harness.Sshd(work)

    path = os.path.join(work, 'access.log')
    open(path, 'w').close()
    e = harness.Exporter(['--format', 'timed'] + sshd.exporter_args(os.environ.get('HB', '5s')) + [sshd.url(path)], work)
    e.wait_value('sshtail_source_up', 1, source='127.0.0.1')
    time.sleep(1)
    total, out = 0, []
    for _ in range(a.bursts):
        n, t_end = burst(path, chunk)
        total += n * len(lines)
        while True:
            body = urllib.request.urlopen(e.url + '/metrics').read().decode()
            m = re.search(r'^sshtail_lines_total\{source="127.0.0.1"\} (\S+)', body, re.M)
            if m and float(m.group(1)) >= total:
                break
            time.sleep(0.002)
        out.append((time.monotonic() - t_end) * 1000)
        time.sleep(1)
    print('sshtail_exporter, last write -> /metrics (ms):', ' '.join('%.0f' % x for x in out))

    if a.compare_openssh:
        out = []
        for i in range(a.bursts):
            p2 = os.path.join(work, 'o%d.log' % i)
            open(p2, 'w').close()
            p = subprocess.Popen(['ssh', '-F', 'none', '-i', sshd.key, '-o', 'UserKnownHostsFile=' + sshd.known_hosts,
                                  '-o', 'BatchMode=yes', '-p', str(sshd.port), sshd.user + '@127.0.0.1',
                                  'exec 3<%s; tail -s 0.05 -c +1 -f /dev/fd/3' % p2],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
            got = [0]

            def rd():
                while True:
                    b = os.read(p.stdout.fileno(), 1 << 16)
                    if not b:
                        break
                    got[0] += len(b)
            threading.Thread(target=rd, daemon=True).start()
            time.sleep(1)
            n, t_end = burst(p2, chunk)
            while got[0] < n * len(chunk):
                time.sleep(0.001)
            out.append((time.monotonic() - t_end) * 1000)
            p.kill()
        print('OpenSSH ssh + same tail, last write -> client (ms):', ' '.join('%.0f' % x for x in out))

    if a.once:
        big = os.path.join(ROOT, 'bench', 'out', 'data', 'timed-1000000-seed1.log')
        if not os.path.exists(big):
            big = os.path.join(work, 'big.log')
            harness.generate_file(big, 1000000, 'timed', seed=1)
        times = []
        for _ in range(a.once):
            t = time.monotonic()
            subprocess.run([harness.BIN, '--once', '--format', 'timed'] + sshd.exporter_args('5s') +
                           [sshd.url(big)], stdout=subprocess.DEVNULL, check=True)
            times.append(time.monotonic() - t)
        print('--once over SSH, %d runs (s): %s' % (len(times), ' '.join('%.1f' % x for x in times)))
        print('runs over 5 s: %d' % sum(1 for x in times if x > 5))


if __name__ == '__main__':
    main()
