#!/usr/bin/env python3
"""syslog loss: how many access-log lines nginx drops on a unix datagram
socket, by net.unix.max_dgram_qlen, idle and on a busy machine.

A real nginx (tests/integration/test_syslog.py's SyslogNginx: error_log at
warn, so each `send() to syslog failed` is logged) sends `combined` to the
exporter's `syslog+unix://` socket while curl sends exactly N requests
(4 keep-alive connections). Each run checks the exactness claim — the
exporter's count == stub_status - nginx's send failures — and records the
failures as the loss. "busy": two extra processes spin on the CPU for the
run (the machine has 2 cores). The queue length is per network namespace:
each length runs in a namespace of its own (`unshare -n`, as root).

Usage: bench/syslog_loss.py [--quick] [--bin B] [--runs N] [--write]
Prints a Markdown table; --write puts it into bench/RESULTS.md between this
script's markers.
"""
import argparse
import json
import os
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, 'tests', 'integration'))
sys.path.insert(0, BENCH)

QLENS = (10, 512)


def inner(requests, runs, busy):
    """In this namespace: `runs` runs, JSON lines on stdout."""
    import harness
    import test_syslog as ts
    ts.REQUESTS = requests
    out = []
    for _ in range(runs):
        hogs = []
        if busy:
            hogs = [subprocess.Popen([sys.executable, '-c', 'while True: pass'])
                    for _ in range(2)]
        try:
            d = harness.tmpdir()
            sd, _ = ts.socket_dir(d)
            sock = os.path.join(sd, 'nginx.sock')
            exp = harness.Exporter(['syslog+unix://' + sock], d)
            nginx = ts.SyslogNginx(d, 'unix:' + sock)
            rate = ts.send_load(nginx.port, requests)
            failures = ts.check_exact(exp, nginx, requests, rate, 'bench', allow_drops=True)
            out.append(dict(rate=rate, failures=failures, requests=requests))
            nginx.stop()
            exp.stop()
        finally:
            for h in hogs:
                h.kill()
                h.wait()
            harness._cleanup_all()
    print('RESULT ' + json.dumps(out), flush=True)


def run_in_netns(qlen, requests, runs, busy, binary):
    env = dict(os.environ, SSHTAIL_BIN=binary)
    cmd = ['unshare', '-n', 'sh', '-c',
           'ip link set lo up && sysctl -q -w net.unix.max_dgram_qlen=%d && '
           'exec "$0" "$1" --inner --requests %d --runs %d %s'
           % (qlen, requests, runs, '--busy' if busy else ''),
           sys.executable, os.path.abspath(__file__)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    for line in r.stdout.splitlines():
        if line.startswith('RESULT '):
            return json.loads(line[len('RESULT '):])
    raise RuntimeError('qlen %d busy %s failed:\n%s\n%s' % (qlen, busy, r.stdout[-3000:],
                                                          r.stderr[-3000:]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--quick', action='store_true')
    p.add_argument('--bin', default=os.path.join(ROOT, 'build', 'sshtail_exporter'))
    p.add_argument('--runs', type=int, default=None)
    p.add_argument('--requests', type=int, default=None)
    p.add_argument('--write', action='store_true')
    p.add_argument('--inner', action='store_true')
    p.add_argument('--busy', action='store_true')
    a = p.parse_args()
    requests = a.requests or (20_000 if a.quick else 100_000)
    runs = a.runs or (1 if a.quick else 3)
    if a.inner:
        inner(requests, runs, a.busy)
        return
    assert os.geteuid() == 0, 'needs root (unshare -n, sysctl in the namespace)'
    import bench
    _, binary = bench.side_bench_work('syslog-loss-work', a.bin)
    load = os.getloadavg()[0]
    rows = []
    for qlen in QLENS:
        for busy in (False, True):
            t0 = time.monotonic()
            res = run_in_netns(qlen, requests, runs, busy, binary)
            lost = [r['failures'] for r in res]
            rates = [r['rate'] for r in res]
            rows.append('| %d | %s | %d x %s | %s | %s | %s |' % (
                qlen, '+2 CPU spinners' if busy else 'as is', runs, format(requests, ','),
                ', '.join('%.0f' % x for x in rates),
                ', '.join('%d' % x for x in lost),
                ', '.join('%.3f %%' % (100.0 * x / requests) for x in lost)))
            print(rows[-1], '(%.0f s)' % (time.monotonic() - t0), flush=True)
    body = '\n'.join([
        '## syslog loss: nginx -> unix datagram socket (`bench/syslog_loss.py`)',
        '',
        'Load average at start: %.2f (2 cores, shared: "as is" is not idle). Every run '
        'exact: exporter count == stub_status - nginx\'s `send() to syslog failed` lines '
        '(error_log at warn). Lost = those lines.' % load,
        '',
        '| max_dgram_qlen | machine | runs x requests | requests/s | lost | lost % |',
        '|---|---|---|---|---|---|',
    ] + rows + [
        '',
        'Command: `bench/syslog_loss.py --write` (as root; each queue length in its own '
        'network namespace).',
    ])
    print(body)
    if a.write:
        bench.put_section('syslog_loss', body)


if __name__ == '__main__':
    main()
