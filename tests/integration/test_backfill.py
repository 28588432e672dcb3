"""--once --output openmetrics: history with each line's own time, built into
TSDB blocks by promtool, queried in a real Prometheus at past instants; .gz
files read locally (zlib) and over SSH (the host's gzip -dc)."""
import calendar
import gzip
import json
import os
import random
import re
import subprocess
import time
import urllib.parse
import urllib.request

import harness

MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec']
TIME_RE = re.compile(r'\[[^\]]*\]')
STATUS_RE = re.compile(r'" (\d{3}) ')


def time_local(t, offset_minutes=60):
    """nginx's $time_local for Unix time t in a zone east of UTC."""
    lt = time.gmtime(int(t) + offset_minutes * 60)
    sign = '+' if offset_minutes >= 0 else '-'
    off = abs(offset_minutes)
    return '%02d/%s/%04d:%02d:%02d:%02d %s%02d%02d' % (
        lt.tm_mday, MONTHS[lt.tm_mon - 1], lt.tm_year, lt.tm_hour, lt.tm_min, lt.tm_sec,
        sign, off // 60, off % 60)


def timed_log(n, start, seconds, seed=5):
    """n 'timed' lines spread over `seconds` from `start` (Unix time). Each
    line's time is its place in the file minus up to 20 s (nginx logs when a
    request ends, stamped with its start): neighbours are out of order.
    Returns [(time, status, line)]."""
    lines, _ = harness.generate(n, 'timed', seed)
    rng = random.Random(seed)
    out = []
    for i, line in enumerate(lines):
        t = int(start + i * seconds / n - rng.random() * 20)
        t = max(t, start)
        line = TIME_RE.sub('[' + time_local(t) + ']', line, count=1)
        status = STATUS_RE.search(line).group(1)
        out.append((t, status, line))
    return out


def write_parts(d, entries):
    """Oldest third gzipped as access.log.2.gz, the next third gzipped but
    named access.log.1 (found by its magic bytes), the rest plain."""
    n = len(entries)
    parts = [entries[:n // 3], entries[n // 3:2 * n // 3], entries[2 * n // 3:]]
    paths = [os.path.join(d, 'access.log.2.gz'), os.path.join(d, 'access.log.1'),
             os.path.join(d, 'access.log')]
    for i, (path, part) in enumerate(zip(paths, parts)):
        data = ''.join(e[2] + '\n' for e in part).encode()
        if i < 2:
            with gzip.open(path, 'wb') as f:
                f.write(data)
        else:
            with open(path, 'wb') as f:
                f.write(data)
    return paths


def parse_om(text):
    """{(name, frozenset(labels)): [(ts, value)]} of an OpenMetrics text."""
    assert text.endswith('# EOF\n'), text[-200:]
    series = {}
    for line in text.splitlines():
        if not line or line.startswith('#'):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+) (\S+)$', line)
        assert m, line
        labels = frozenset(re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', m.group(3) or ''))
        series.setdefault((m.group(1), labels), []).append((float(m.group(5)), float(m.group(4))))
    return series


def without_source(series):
    """Sums series over their source label: {(name, labels, ts): value}."""
    out = {}
    for (name, labels), points in series.items():
        key_labels = frozenset(kv for kv in labels if kv[0] != 'source')
        for ts, v in points:
            k = (name, key_labels, ts)
            out[k] = out.get(k, 0) + v
    return out


def backfill(args, timeout=300):
    return harness.run_once(['--output', 'openmetrics'] + list(args), timeout=timeout)


def start_prometheus(d, tsdb):
    cfg = os.path.join(d, 'prometheus.yml')
    with open(cfg, 'w') as f:
        f.write('global: {scrape_interval: 15s}\nscrape_configs: []\n')
    for attempt in range(10):
        port = harness.free_port()
        log = open(os.path.join(d, 'prometheus.log'), 'ab')
        proc = subprocess.Popen(
            ['prometheus', '--config.file=' + cfg, '--storage.tsdb.path=' + tsdb,
             '--storage.tsdb.retention.time=3650d', '--web.listen-address=127.0.0.1:%d' % port,
             '--log.level=warn'], stdout=log, stderr=subprocess.STDOUT, cwd=d)
        harness._cleanups.append(lambda p=proc: harness.stop_process(p))
        url = 'http://127.0.0.1:%d' % port

        def ready():
            if proc.poll() is not None:
                return True
            try:
                with urllib.request.urlopen(url + '/-/ready', timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        harness.wait_for(ready, 60, 0.1, 'prometheus to be ready')
        if proc.poll() is None:
            return url
    raise AssertionError('prometheus did not start')


def query(url, expr, at):
    q = urllib.parse.urlencode({'query': expr, 'time': '%.3f' % at})
    with urllib.request.urlopen(url + '/api/v1/query?' + q, timeout=30) as r:
        body = json.load(r)
    assert body['status'] == 'success', body
    return {tuple(sorted(s['metric'].items())): float(s['value'][1])
            for s in body['data']['result']}


def test_six_hours_into_prometheus():
    d = harness.tmpdir()
    step = 60
    # Six hours that ended an hour ago, on whole minutes.
    start = (int(time.time()) // 3600 - 7) * 3600
    entries = timed_log(36000, start, 6 * 3600)
    paths = write_parts(d, entries)
    t0 = time.monotonic()
    # job and instance as Prometheus gives the live exporter's series, so
    # that the dashboards' $job/$instance selectors find the history.
    r = backfill(['--format', 'timed', '--backfill.label', 'job=sshtail',
                  '--backfill.label', 'instance=web1:9923'] + paths)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    print('  backfill of %d lines: %.2fs, %d bytes; %s' % (
        len(entries), took, len(r.stdout), r.stderr.strip().splitlines()[-1]))
    assert '36000 lines, 0 unmatched' in r.stderr, r.stderr
    om = os.path.join(d, 'history.om')
    with open(om, 'w') as f:
        f.write(r.stdout)
    series = parse_om(r.stdout)
    # Every series has one sample per step from its first to the last one.
    last = max(ts for pts in series.values() for ts, _ in pts)
    for key, pts in series.items():
        stamps = sorted(set(ts for ts, _ in pts))
        assert stamps[-1] == last, key
        assert stamps == [stamps[0] + i * step for i in range(len(stamps))], key
    blocks = os.path.join(d, 'tsdb')
    p = subprocess.run(['promtool', 'tsdb', 'create-blocks-from', 'openmetrics', om, blocks],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    print('  promtool: ' + ' | '.join(l.strip() for l in p.stdout.strip().splitlines()))
    url = start_prometheus(d, blocks)

    def truth(at):
        """Requests by status with a time before the end of the last step
        that ended at or before `at`."""
        cut = (int(at) // step) * step
        out = {}
        for t, status, _ in entries:
            if t < cut:
                out[status] = out.get(status, 0) + 1
        return out
    instants = [start + 61, start + 3600 + 30, start + 2 * 3600 + 59, start + 3 * 3600,
                start + 4 * 3600 + 17.5, start + 5 * 3600 + 45, start + 6 * 3600 + 1,
                start + 6 * 3600 + 120]
    for at in instants:
        got = query(url, 'sum by (status) (nginx_http_requests_total'
                         '{job="sshtail",instance="web1:9923"})', at)
        got = {dict(k)['status']: v for k, v in got.items()}
        want = truth(at)
        assert got == want, 'at %s (+%ds): got %s want %s' % (at, at - start, got, want)
    total = query(url, 'sum(nginx_http_requests_total)', start + 6 * 3600 + 120)
    assert list(total.values()) == [36000.0], total
    # Histograms made it too: every line has a $request_time.
    count = query(url, 'sum(nginx_http_request_duration_seconds_count)', start + 6 * 3600 + 120)
    assert list(count.values()) == [36000.0], count
    # rate() works over the backfilled range.
    rate = query(url, 'sum(rate(nginx_http_requests_total[5m]))', start + 3 * 3600)
    assert abs(list(rate.values())[0] - 36000 / (6 * 3600)) < 0.5, rate
    print('  checked %d instants in Prometheus' % len(instants))


def test_out_of_order_untimed_and_regex_time():
    d = harness.tmpdir()
    fmt = '$remote_addr [$time_local] "$request" $status $body_bytes_sent'
    lines = [
        '10.0.0.1 [02/Dec/2026:10:00:50 +0000] "GET / HTTP/1.1" 200 5',
        '10.0.0.1 [02/Dec/2026:10:01:10 +0000] "GET / HTTP/1.1" 200 5',
        '10.0.0.1 [02/Dec/2026:10:00:55 +0000] "GET / HTTP/1.1" 200 5',  # out of order
        '10.0.0.1 [02/Dex/2026:10:01:20 +0000] "GET / HTTP/1.1" 200 5',  # no valid time
        '10.0.0.1 [-] "GET / HTTP/1.1" 200 5',                           # no valid time
        'not a log line',
        '10.0.0.1 [02/Dec/2026:11:01:30 +0100] "GET / HTTP/1.1" 500 9',  # 10:01:30 UTC
    ]
    path = harness.write_file(d, 'a.log', '\n'.join(lines) + '\n')
    r = backfill(['--format', fmt, path])
    assert r.returncode == 0, r.stderr
    assert '7 lines, 3 unmatched (2 without a valid time)' in r.stderr, r.stderr
    s = parse_om(r.stdout)
    ok = s[('nginx_http_requests_total',
            frozenset({('method', 'GET'), ('status', '200'), ('source', path)}))]
    t1000 = calendar.timegm((2026, 12, 2, 10, 0, 0))
    assert ok == [(t1000 + 60, 2.0), (t1000 + 120, 3.0)], ok
    err = s[('nginx_http_requests_total',
             frozenset({('method', 'GET'), ('status', '500'), ('source', path)}))]
    assert err == [(t1000 + 120, 1.0)], err
    # --backfill.step
    r = backfill(['--format', fmt, '--backfill.step', '30s', path])
    s = parse_om(r.stdout)
    ok = s[('nginx_http_requests_total',
            frozenset({('method', 'GET'), ('status', '200'), ('source', path)}))]
    assert ok == [(t1000 + 60, 2.0), (t1000 + 90, 3.0), (t1000 + 120, 3.0)], ok
    # A regex rule names its time field and layout.
    rules = harness.write_file(d, 'app.yml', '''
rules:
  - name: app
    regex: '^(?P<ts>\\S+ \\S+) (?P<level>[A-Z]+) .*'
    time: {field: ts, format: '%Y-%m-%d %H:%M:%S'}
    metrics:
      - name: app_lines_total
        type: counter
        labels: {level: level}
''')
    app = harness.write_file(d, 'app.log', '2026-12-02 10:00:01 INFO a\n'
                                           '2026-12-02 10:00:59.5 WARN b\n'
                                           '2026-12-02 10:02:00 INFO c\n'
                                           '2026-12-02 nope INFO d\n')
    r = backfill(['--rules', rules, app])
    assert r.returncode == 0, r.stderr
    s = parse_om(r.stdout)
    info = s[('app_lines_total', frozenset({('level', 'INFO'), ('source', app)}))]
    assert info == [(t1000 + 60, 1.0), (t1000 + 120, 1.0), (t1000 + 180, 2.0)], info
    assert '1 without a valid time' in r.stderr, r.stderr
    # Refused cleanly (one line, exit 2): without --once, a regex rule
    # without time, a bad step, a bad layout.
    with open(rules) as f:
        rules_text = f.read()
    nolast = harness.write_file(d, 'notime.yml', rules_text.replace(
        "    time: {field: ts, format: '%Y-%m-%d %H:%M:%S'}\n", ''))
    bad_layout = harness.write_file(d, 'badtime.yml', rules_text.replace('%Y-%m', '%Q-%m'))
    for args in (['--output', 'openmetrics', path],
                 ['--once', '--output', 'openmetrics', '--rules', nolast, app],
                 ['--once', '--output', 'openmetrics', '--backfill.step', '0s', app],
                 ['--once', '--output', 'json', app],
                 ['--once', '--output', 'openmetrics', '--backfill.label', '__x=1', app],
                 ['--once', '--output', 'openmetrics', '--backfill.label', 'job', app],
                 ['--once', '--output', 'openmetrics', '--rules', bad_layout, app]):
        p = subprocess.run([harness.BIN] + args, capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert p.stdout == '', p.stdout
    # --check-config knows about it too.
    p = subprocess.run([harness.BIN, '--check-config', '--output', 'openmetrics', '--rules', nolast],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and 'no time' in p.stderr, p.stderr
    # The default output is unchanged: today's text.
    r = harness.run_once(['--format', fmt, path])
    assert r.returncode == 0 and '# EOF' not in r.stdout, r.stdout
    assert 'nginx_http_requests_total{method="GET",source="%s",status="200"} 5' % path in r.stdout


def test_gz_over_ssh_same_as_local():
    d = harness.tmpdir()
    start = (int(time.time()) // 3600 - 3) * 3600
    entries = timed_log(6000, start, 3600, seed=11)
    paths = write_parts(d, entries)
    local = backfill(['--format', 'timed'] + paths)
    assert local.returncode == 0, local.stderr
    sshd = harness.Sshd(d)
    remote = backfill(['--format', 'timed'] + sshd.exporter_args() +
                      [sshd.url(p) for p in paths])
    assert remote.returncode == 0, remote.stderr
    assert '6000 lines, 0 unmatched' in remote.stderr, remote.stderr
    a = without_source(parse_om(local.stdout))
    b = without_source(parse_om(remote.stdout))
    assert a == b, 'local and SSH differ in %d samples' % len(set(a.items()) ^ set(b.items()))
    # A damaged .gz: its lines before the damage count, never a crash.
    with open(paths[0], 'rb') as f:
        data = f.read()
    cut = harness.write_file(d, 'cut.log.gz', '')
    with open(cut, 'wb') as f:
        f.write(data[:len(data) // 2])
    r = backfill(['--format', 'timed', cut])
    assert r.returncode == 0, r.stderr
    assert 'gzip' in r.stderr, r.stderr
    got = int(re.search(r'backfill: (\d+) lines', r.stderr).group(1))
    assert 0 < got < 2000, r.stderr
    print('  local == ssh: %d samples; a .gz cut in half gave %d of 2000 lines' % (len(a), got))


if __name__ == '__main__':
    harness.main([test_out_of_order_untimed_and_regex_time, test_gz_over_ssh_same_as_local,
                  test_six_hours_into_prometheus])
