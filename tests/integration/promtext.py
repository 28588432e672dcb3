"""Parse Prometheus text exposition and compare it with generator truth."""
import json
import math
import re

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _unescape(v):
    """Label value escapes of the text format: \\\\, \\" and \\n only."""
    return re.sub(r'\\(.)', lambda m: {'n': '\n'}.get(m.group(1), m.group(1)), v)


def parse(text):
    """Returns {(name, ((label, value), ...)): float}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith('#'):
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError('bad exposition line: %r' % line)
        labels = tuple(sorted(
            (k, _unescape(v)) for k, v in _LABEL.findall(m.group(3) or '')))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def select(metrics, name, **want):
    """All samples of `name` whose labels include `want`."""
    res = []
    for (n, labels), v in metrics.items():
        if n != name:
            continue
        d = dict(labels)
        if all(d.get(k) == str(val) for k, val in want.items()):
            res.append((d, v))
    return res


def total(metrics, name, **want):
    return sum(v for _, v in select(metrics, name, **want))


def check_truth(metrics, truth, source, timed=True):
    """Returns a list of mismatches (empty when the metrics equal the truth)."""
    problems = []
    got = {}
    for d, v in select(metrics, 'nginx_http_requests_total', source=source):
        got['%s %s' % (d['method'], d['status'])] = int(v)
    if got != truth['by_method_status']:
        diff = {k: (got.get(k), truth['by_method_status'].get(k))
                for k in set(got) | set(truth['by_method_status'])
                if got.get(k) != truth['by_method_status'].get(k)}
        problems.append('requests by method/status differ (got, want): %s' % diff)
    nbytes = total(metrics, 'nginx_http_response_bytes_total', source=source)
    if int(nbytes) != truth['body_bytes_sum']:
        problems.append('body bytes %d != %d' % (nbytes, truth['body_bytes_sum']))
    lines = total(metrics, 'sshtail_lines_total', source=source)
    if int(lines) != truth['lines']:
        problems.append('sshtail_lines_total %d != %d' % (lines, truth['lines']))
    unmatched = total(metrics, 'sshtail_lines_unmatched_total', source=source)
    if unmatched != 0:
        problems.append('%d unmatched lines' % unmatched)
    if timed:
        count = total(metrics, 'nginx_http_request_duration_seconds_count', source=source)
        inf = total(metrics, 'nginx_http_request_duration_seconds_bucket', source=source, le='+Inf')
        ssum = total(metrics, 'nginx_http_request_duration_seconds_sum', source=source)
        if int(count) != truth['lines']:
            problems.append('histogram _count %d != %d' % (count, truth['lines']))
        if inf != count:
            problems.append('+Inf bucket %d != _count %d' % (inf, count))
        if not math.isclose(round(ssum, 3), truth['request_time_sum'], abs_tol=0.0015):
            problems.append('histogram _sum %.3f != %.3f' % (ssum, truth['request_time_sum']))
    return problems


def load_truth(path):
    with open(path) as f:
        return json.load(f)
