#!/usr/bin/env python3
"""What --state-file costs: parsing throughput and scrape latency with and
without it, 10,000 series, the default --positions.sync-interval (5 s).

Each run starts the exporter in server mode on FILES log files (read from
their start), lets it parse them to the end and measures
  * wall time from start to the last CPU tick of the exporter (it is idle
    once every line is parsed; /metrics is not polled meanwhile, since with
    a state file every scrape is also a state write),
  * CPU time (user + system) per line,
then checks sshtail_lines_total with one scrape and times SCRAPES more
scrapes (each one a snapshot + write + fsync with the state file).
Runs with and without the state file are interleaved (off/on, then on/off,
...) so that other work on this shared machine hits both alike; medians
are printed. Usage:

  bench/state_cost.py [--bin build/sshtail_exporter] [--runs 6]
                      [--lines 3500000] [--files 2] [--consumers N]
                      [--sync-interval 5s]
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

RULES = """rules:
  - name: bench_paths
    log_format: timed
    metrics:
      - name: bench_http_requests_by_path_total
        type: counter
        help: Requests by request path (benchmark rule).
        labels:
          path: path
        max_series: 20000
"""


def make_logs(directory, files, lines, series):
    """FILES logs of LINES lines; SERIES distinct paths over all of them."""
    per = series // files
    paths = []
    for f in range(files):
        path = os.path.join(directory, 'access%d-%dx%d.log' % (f, lines, series))
        paths.append(path)
        if os.path.exists(path) and os.path.getsize(path) > 0:
            continue
        with open(path + '.tmp', 'w') as out:
            chunk = []
            for i in range(lines):
                chunk.append(
                    '10.0.%d.%d - - [02/Dec/2026:07:00:%02d +0000] "GET /p/%d HTTP/1.1" '
                    '200 %d "-" "bench/1.0" 0.%03d 0.%03d\n'
                    % (i % 250, f, i % 60, i % per, 100 + i % 900, i % 997, i % 991))
                if len(chunk) == 10000:
                    out.write(''.join(chunk))
                    chunk = []
            out.write(''.join(chunk))
        os.rename(path + '.tmp', path)
    return paths


def cpu_ticks(pid):
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def scrape(url):
    start = time.monotonic()
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read().decode()
    return time.monotonic() - start, body


def lines_total(text):
    total = 0
    for line in text.splitlines():
        if line.startswith('sshtail_lines_total{'):
            total += float(line.rsplit(' ', 1)[1])
    return total


def one_run(args, work, logs, rules, state):
    addr = os.path.join(work, 'addr')
    if os.path.exists(addr):
        os.unlink(addr)
    cmd = [args.bin, '--rules', rules, '--start-at', 'beginning',
           '--web.listen-address', '127.0.0.1:0', '--web.listen-address-file', addr]
    if args.consumers:
        cmd += ['--consumers', str(args.consumers)]
    if state:
        cmd += ['--positions.sync-interval', args.sync_interval]
        st = os.path.join(work, 'state')
        for p in (st, st + '.tmp'):
            if os.path.exists(p):
                os.unlink(p)
        cmd += ['--state-file', st]
    cmd += logs
    for path in logs:  # from the page cache in every run, not the disk
        with open(path, 'rb') as f:
            while f.read(1 << 24):
                pass
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    hz = os.sysconf('SC_CLK_TCK')
    last_ticks, last_change = 0, start
    st_path = os.path.join(work, 'state')
    writes, st_ino = 0, None  # state writes while parsing (atomic renames)
    while True:
        time.sleep(0.02)
        if state:
            try:
                ino = os.stat(st_path).st_ino
            except FileNotFoundError:
                ino = None
            if ino is not None and ino != st_ino:
                writes += 1
            st_ino = ino
        if proc.poll() is not None:
            raise SystemExit('exporter exited: %s' % proc.stderr.read().decode())
        t = cpu_ticks(proc.pid)
        now = time.monotonic()
        if t != last_ticks:
            last_ticks, last_change = t, now
        elif t > 0 and now - last_change > 0.5:
            break
    wall = last_change - start
    cpu = last_ticks / hz
    with open(addr) as f:
        url = 'http://%s/metrics' % f.read().strip()
    _, body = scrape(url)
    want = args.lines * args.files
    got = lines_total(body)
    if got != want:
        raise SystemExit('counted %d lines, want %d (run still busy?)' % (got, want))
    series = sum(1 for l in body.splitlines() if l.startswith('bench_http_requests_by_path_total{'))
    latencies = [scrape(url)[0] for _ in range(args.scrapes)]
    size = os.path.getsize(os.path.join(work, 'state')) if state else 0
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return {'wall': wall, 'cpu': cpu, 'lines_per_s': want / wall,
            'cpu_us_per_line': cpu / want * 1e6, 'series': series,
            'scrape_ms': sorted(x * 1000 for x in latencies), 'state_bytes': size,
            'writes': writes}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--bin', default=os.environ.get(
        'SSHTAIL_BIN', os.path.join(here, '..', 'build', 'sshtail_exporter')))
    ap.add_argument('--runs', type=int, default=6)
    ap.add_argument('--lines', type=int, default=3500000, help='lines per file')
    ap.add_argument('--files', type=int, default=2)
    ap.add_argument('--series', type=int, default=10000)
    ap.add_argument('--scrapes', type=int, default=50)
    ap.add_argument('--consumers', type=int, default=0)
    ap.add_argument('--sync-interval', default='5s',
                    help='--positions.sync-interval with the state file')
    ap.add_argument('--data', default=os.path.join(here, 'out', 'state_cost'))
    args = ap.parse_args()
    os.makedirs(args.data, exist_ok=True)
    logs = make_logs(args.data, args.files, args.lines, args.series)
    work = tempfile.mkdtemp(prefix='state-cost-', dir=args.data)
    rules = os.path.join(work, 'rules.yml')
    with open(rules, 'w') as f:
        f.write(RULES)
    results = {False: [], True: []}
    try:
        for r in range(args.runs):
            for state in ((False, True) if r % 2 == 0 else (True, False)):
                res = one_run(args, work, logs, rules, state)
                results[state].append(res)
                print('run %d state=%-3s %7.3f s  %9.0f lines/s  %.3f us CPU/line  '
                      'scrape p50 %.1f ms  (%d series, state %d bytes, %d writes '
                      'while parsing)'
                      % (r + 1, 'on' if state else 'off', res['wall'], res['lines_per_s'],
                         res['cpu_us_per_line'], statistics.median(res['scrape_ms']),
                         res['series'], res['state_bytes'], res['writes']), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(state, key):
        return statistics.median(x[key] for x in results[state])

    def pct(state, q):
        all_ms = sorted(v for x in results[state] for v in x['scrape_ms'])
        return all_ms[min(len(all_ms) - 1, int(q * len(all_ms)))]

    print()
    print('%d interleaved runs each, %d files x %d lines, %d series, consumers=%s, '
          'sync-interval %s' % (args.runs, args.files, args.lines,
                                results[True][0]['series'],
                                args.consumers or 'default', args.sync_interval))
    print('| | without --state-file | with --state-file | change |')
    print('|---|---|---|---|')
    for key, label, fmt in (('lines_per_s', 'lines/s (median wall)', '%.0f'),
                            ('cpu_us_per_line', 'CPU us per line (median)', '%.3f')):
        off, on = med(False, key), med(True, key)
        print('| %s | %s | %s | %+.1f %% |' % (label, fmt % off, fmt % on, (on / off - 1) * 100))
    for q, name in ((0.5, 'p50'), (0.99, 'p99')):
        print('| scrape latency %s | %.1f ms | %.1f ms | |' % (name, pct(False, q), pct(True, q)))
    print('| state file size | | %d bytes | |' % results[True][0]['state_bytes'])
    print('| state writes while parsing (median) | | %d | |' % med(True, 'writes'))


if __name__ == '__main__':
    sys.exit(main())
