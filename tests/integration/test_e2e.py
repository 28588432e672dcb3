"""End to end: real nginx -> access log -> real sshd -> the exporter (SSH
source) -> real Prometheus with grafana/alerts.yml, then every dashboard panel
expression and every alert rule expression against that Prometheus.

    nginx (timed log_format, /, /missing, /error, /slow -> slow upstream)
      | access.log in the test's temp dir
    sshd on loopback <- exporter --format timed ssh://user@127.0.0.1:PORT/.../access.log
      | /metrics
    Prometheus (scrape 1s, rules = alerts.yml with one `for:` shortened)
"""
import os
import re
import sys

import harness
import peers
import promtext

sys.path.insert(0, os.path.join(harness.SOURCE_DIR, 'tests', 'grafana'))
import dashboard_exprs  # noqa: E402

GRAFANA = os.path.join(harness.SOURCE_DIR, 'grafana')
DASHBOARDS = [os.path.join(GRAFANA, 'dashboards', n)
              for n in ('nginx-overview.json', 'exporter-health.json')]
ALERTS = os.path.join(GRAFANA, 'alerts.yml')
JOB = 'sshtail'  # matches SshtailExporterDown's up{job=~".*sshtail.*"}
SRC = '127.0.0.1'  # the source label of an SSH source is its host
RATE_INTERVAL = '30s'  # $__rate_interval for 1s scrapes (Grafana: max(4*scrape, ...))

# Traffic of the first phase: path -> (requests, status nginx logs for it).
TRAFFIC = [('/', 300, '200'), ('/missing', 50, '404'), ('/slow', 100, '200'),
           ('/error', 20, '500')]
BURST_5XX = 500  # second phase: requests to /error


# ------------------------------------------------------------ alert rules

def alerts_with_short_for(text, alert, new_for):
    """alerts.yml with the `for:` line of one alert replaced (text
    substitution, so everything else is byte for byte the shipped file)."""
    lines = text.split('\n')
    start = [i for i, l in enumerate(lines) if re.match(r'^\s*-\s*alert:\s*%s\s*$' % alert, l)]
    assert len(start) == 1, 'alert %s not found once in alerts.yml' % alert
    for i in range(start[0] + 1, len(lines)):
        if re.match(r'^\s*-\s*(alert|record):', lines[i]):
            break
        m = re.match(r'^(\s*)for:\s*\S+\s*$', lines[i])
        if m:
            lines[i] = '%sfor: %s' % (m.group(1), new_for)
            return '\n'.join(lines)
    raise AssertionError('alert %s has no for: line' % alert)


def _top_level(expr):
    """Yields (index, char) of expr outside (), [], {} and string literals."""
    depth = 0
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in '"\'`':
            end = i + 1
            while end < len(expr) and expr[end] != c:
                end += 2 if expr[end] == '\\' and c != '`' else 1
            i = end + 1
            continue
        if c in '([{':
            depth += 1
        elif c in ')]}':
            depth -= 1
        elif depth == 0:
            yield i, c
        i += 1


def _strip_parens(expr):
    expr = expr.strip()
    while expr.startswith('(') and expr.endswith(')'):
        depth = 0
        for i, c in enumerate(expr):
            depth += c == '('
            depth -= c == ')'
            if depth == 0 and i < len(expr) - 1:
                return expr  # "(a) / (b)": the parens do not wrap it all
        expr = expr[1:-1].strip()
    return expr


def data_parts(expr):
    """The "data" parts of an alert condition: the operands of its top-level
    and/or/unless, each without its top-level comparison (`X > 0.05` -> `X`).
    In PromQL, set operators bind loosest and comparisons next, so these are
    exactly the series the alert thresholds are applied to."""
    expr = _strip_parens(expr)
    cuts = []
    for i, _ in _top_level(expr):
        m = re.match(r'(and|or|unless)\b', expr[i:])
        if m and (i == 0 or not re.match(r'[\w:]', expr[i - 1])):
            cuts.append((i, m.end()))
    if cuts:
        parts, pos = [], 0
        for i, n in cuts:
            parts.append(expr[pos:i])
            pos = i + n
        parts.append(expr[pos:])
        return [p for part in parts for p in data_parts(part)]
    for i, c in _top_level(expr):
        if c in '<>' or (c in '=!' and expr[i + 1:i + 2] == '='):
            return data_parts(expr[:i])
    return [expr]


def regex_literal(s):
    """s as a PromQL double-quoted regex matching exactly s (what Grafana
    substitutes for a single selected variable value)."""
    return re.escape(s).replace('\\', '\\\\')


# ------------------------------------------------------------- access log

_TIMED = re.compile(r'^\S+ - \S+ \[[^\]]+\] "(\S+) (\S+) HTTP/[\d.]+" (\d{3}) (\d+) '
                    r'"[^"]*" "[^"]*" ([\d.]+) (\S+)$')


def log_truth(lines):
    """What nginx wrote: counts and bytes by (method, status), durations."""
    t = {'requests': {}, 'bytes': {}, 'request_time_sum': 0.0,
         'upstream_count': 0, 'upstream_sum': 0.0}
    for line in lines:
        m = _TIMED.match(line)
        assert m, 'nginx wrote a line the test cannot parse: %r' % line
        key = (m.group(1), m.group(3))
        t['requests'][key] = t['requests'].get(key, 0) + 1
        t['bytes'][key] = t['bytes'].get(key, 0) + int(m.group(4))
        t['request_time_sum'] += float(m.group(5))
        if m.group(6) != '-':
            t['upstream_count'] += 1
            t['upstream_sum'] += float(m.group(6))
    return t


def check_exporter(exp, truth, want_requests):
    """The exporter's /metrics equal the access log exactly."""
    m = exp.metrics()
    got = {(d['method'], d['status']): int(v)
           for d, v in promtext.select(m, 'nginx_http_requests_total', source=SRC)}
    assert got == want_requests, 'requests by (method, status): got %s, want %s' % (
        got, want_requests)
    assert got == truth['requests'], (got, truth['requests'])
    gotb = {(d['method'], d['status']): int(v)
            for d, v in promtext.select(m, 'nginx_http_response_bytes_total', source=SRC)}
    assert gotb == truth['bytes'], 'bytes: got %s, want %s' % (gotb, truth['bytes'])
    n = sum(want_requests.values())
    total = promtext.total
    assert total(m, 'sshtail_lines_total', source=SRC) == n
    assert total(m, 'sshtail_lines_unmatched_total', source=SRC) == 0
    assert total(m, 'nginx_http_request_duration_seconds_count', source=SRC) == n
    assert total(m, 'nginx_http_request_duration_seconds_bucket', source=SRC, le='+Inf') == n
    s = total(m, 'nginx_http_request_duration_seconds_sum', source=SRC)
    assert abs(s - truth['request_time_sum']) < 0.0015, (s, truth['request_time_sum'])
    up = 'nginx_http_upstream_response_duration_seconds'
    assert total(m, up + '_count', source=SRC) == truth['upstream_count']
    s = total(m, up + '_sum', source=SRC)
    assert abs(s - truth['upstream_sum']) < 0.0015, (s, truth['upstream_sum'])
    return m


# ------------------------------------------------------------------- test

def test_nginx_ssh_exporter_prometheus_dashboards_alerts():
    d = harness.tmpdir()
    nginx = peers.Nginx(d)
    sshd = harness.Sshd(d)
    # A remote glob too, on the same sshd as another host (nothing matches
    # it): sshtail_glob_up, which SshtailGlobNotListed watches, has a series.
    vhosts = os.path.join(d, 'vhosts')
    os.makedirs(vhosts)
    ssh_config = os.path.join(d, 'ssh_config')
    with open(ssh_config, 'w') as f:
        f.write('Host vhosts\n  HostName 127.0.0.1\n  Port %d\n  User %s\n'
                % (sshd.port, sshd.user))
    args = sshd.exporter_args()
    args[args.index('--ssh.config') + 1] = ssh_config
    exp = harness.Exporter(['--format', 'timed', '--ssh.max-backoff', '2s'] + args +
                           [sshd.url(nginx.access_log), 'ssh://vhosts%s/*.access.log' % vhosts],
                           d)

    # Alert rules: the shipped file, with NginxHigh5xxRatio's `for: 2m`
    # replaced by `for: 3s` (textual substitution of that one line) so that
    # the test can see it fire within its time budget.
    with open(ALERTS) as f:
        shipped = f.read()
    rules_copy = os.path.join(d, 'alerts.yml')
    with open(rules_copy, 'w') as f:
        f.write(alerts_with_short_for(shipped, 'NginxHigh5xxRatio', '3s'))
    diff = [(a, b) for a, b in zip(shipped.split('\n'), open(rules_copy).read().split('\n'))
            if a != b]
    assert len(diff) == 1 and diff[0][1].strip() == 'for: 3s', diff
    # Prometheus starts now: its first scrape takes a few seconds.
    prom = peers.Prometheus(d, [exp.address], job=JOB, rule_files=[rules_copy])

    exp.wait_value('sshtail_source_up', 1, source=SRC)
    # One forced reconnect, so that sshtail_ssh_reconnects_total has a series
    # and the reconnect panel and SshtailReconnectStorm have data.
    sshd.kill_connections()
    harness.wait_for(lambda: exp.value('sshtail_ssh_reconnects_total', source=SRC) >= 1, 30,
                     0.05, 'the exporter to count the reconnect')
    exp.wait_value('sshtail_source_up', 1, source=SRC)

    # Phase 1: known traffic, exact counts.
    want = {}
    for path, n, status in TRAFFIC:
        codes = peers.curl_glob(nginx.url(path), n, parallel=10 if path == '/slow' else 1)
        assert codes == {int(status): n}, (path, codes)
        want[('GET', status)] = want.get(('GET', status), 0) + n
    assert want == {('GET', '200'): 400, ('GET', '404'): 50, ('GET', '500'): 20}
    total = sum(want.values())
    lines = nginx.access_lines()
    assert len(lines) == total, 'nginx logged %d lines, want %d' % (len(lines), total)
    truth = log_truth(lines)
    assert truth['upstream_count'] == 100  # only /slow has an upstream
    exp.wait_value('sshtail_lines_total', total, source=SRC)
    m = check_exporter(exp, truth, want)
    # Every upstream answer took at least 50 ms.
    assert promtext.total(m, 'nginx_http_upstream_response_duration_seconds_bucket',
                                  source=SRC, le='0.025') == 0

    # Prometheus ingested exactly that.
    prom.wait_scalar('sum(nginx_http_requests_total{job="%s"})' % JOB, total, timeout=40)
    by_status = {r['metric']['status']: float(r['value'][1]) for r in prom.result(
        'sum by (status) (nginx_http_requests_total{job="%s", source="%s"})' % (JOB, SRC))}
    assert by_status == {s: float(n) for (_, s), n in want.items()}, by_status

    # Every panel expression of both dashboards and every alert rule.
    variables = {'job': JOB, 'instance': regex_literal(exp.address), 'source': regex_literal(SRC),
                 '__rate_interval': RATE_INTERVAL, '__interval': RATE_INTERVAL,
                 '__range': RATE_INTERVAL}
    # "Returns data" means, per expression:
    # - dashboard panels: the instant query at "now" returns a non-empty
    #   result (at least one series or a scalar). In this setup every panel
    #   has data: the overflow, rotation and too-long counters are exported
    #   at 0 from the start, and the reconnect counter exists because of the
    #   forced reconnect above. rate()/increase() need two samples in the
    #   window, so the check polls until each has data (or the deadline).
    # - alert rules: the full `expr` is queried and must succeed (it is
    #   legitimately empty while the condition is false, e.g. up == 0); its
    #   data parts (data_parts(): each operand of a top-level and/or/unless
    #   without its threshold comparison, e.g. `up{...}` of `up{...} == 0`,
    #   `(5xx rate / rate)` and `rate` of NginxHigh5xxRatio) must each return
    #   a non-empty result; and /api/v1/rules must report the rule with
    #   health "ok", no lastError, and a real lastEvaluation.
    checks = []  # (where, expr, must have data)
    for path in DASHBOARDS:
        items = dashboard_exprs.exprs(path, variables)
        assert items, 'no expressions in %s' % path
        for title, expr in items:
            checks.append(('%s: panel %r' % (os.path.basename(path), title), expr, True))
    rules = dashboard_exprs.rule_exprs(ALERTS)
    assert len(rules) >= 9, rules
    # Alerts on metrics only sharded replicas export: their expression must
    # still succeed here (the metric names are checked by grafana: check,
    # the values by test_shard_churn).
    sharded_only = {'SshtailShardHandOverStuck'}
    for name, expr in rules:
        checks.append(('alert %s' % name, expr, False))
        for part in data_parts(expr):
            checks.append(('alert %s, data part' % name, part, name not in sharded_only))
    pending = list(checks)

    def all_have_data():
        for c in list(pending):
            where, expr, need_data = c
            r = prom.query(expr)
            assert r.get('status') == 'success', '%s: query failed: %s\n%s' % (where, expr, r)
            if not need_data or r['data']['result']:
                pending.remove(c)
        return not pending
    try:
        harness.wait_for(all_have_data, 40, 0.5, 'every expression to return data')
    except AssertionError:
        raise AssertionError('no data from:\n' + '\n'.join(
            '  %s: %s' % (w, e) for w, e, _ in pending))

    names = {n for n, _ in rules}

    def rules_evaluated():
        got = {r['name']: r for r in prom.rules()}
        assert names <= set(got), 'Prometheus did not load %s' % (names - set(got))
        for n in names:
            r = got[n]
            if r['health'] != 'ok' or r.get('lastError') or \
                    r.get('lastEvaluation', '').startswith('0001-'):
                return False
        return True
    harness.wait_for(rules_evaluated, 20, 0.2, 'every alert rule evaluated with health ok')

    # Phase 2: a burst of 5xx makes NginxHigh5xxRatio pending, then firing.
    codes = peers.curl_glob(nginx.url('/error'), BURST_5XX)
    assert codes == {500: BURST_5XX}, codes
    want[('GET', '500')] += BURST_5XX
    total += BURST_5XX
    lines = nginx.access_lines()
    assert len(lines) == total
    exp.wait_value('sshtail_lines_total', total, source=SRC)
    check_exporter(exp, log_truth(lines), want)
    prom.wait_scalar('sum(nginx_http_requests_total{job="%s"})' % JOB, total, timeout=20)

    def alert_state():
        for a in prom.alerts():
            lab = a['labels']
            if lab.get('alertname') == 'NginxHigh5xxRatio' and lab.get('source') == SRC:
                assert lab.get('job') == JOB and lab.get('instance') == exp.address, lab
                assert lab.get('severity') == 'critical', lab
                assert float(a['value']) > 0.05, a
                return a['state']
        return None
    seen = harness.wait_for(alert_state, 30, 0.2, 'NginxHigh5xxRatio to be pending or firing')
    assert seen in ('pending', 'firing'), seen
    harness.wait_for(lambda: alert_state() == 'firing', 20, 0.2,
                     'NginxHigh5xxRatio (for: 3s) to fire')

    assert exp.proc.poll() is None
    assert exp.stop() == 0


if __name__ == '__main__':
    harness.main([test_nginx_ssh_exporter_prometheus_dashboards_alerts])
