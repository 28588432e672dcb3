"""--format auto (the default): each source's nginx format is detected from
its lines. Three local files, one combined, one main (RHEL's default), one
timed, read by the real binary under default flags and compared with the
generator's truth; a format change in a file; a per-source `format:` in the
config; --format combined still forcing combined."""
import os

import harness
import promtext

REDETECT_AFTER = 16  # FormatDetector::kRedetectAfter


def to_main(lines):
    """combined -> nginx's `main`: "$http_x_forwarded_for" appended (the
    counted fields, hence the truth, stay the same)."""
    return [l + (' "-"' if i % 2 == 0 else ' "203.0.113.%d, 10.0.0.1"' % (i % 250))
            for i, l in enumerate(lines)]


def truth_plus(a, b):
    out = {'lines': a['lines'] + b['lines'],
           'body_bytes_sum': a['body_bytes_sum'] + b['body_bytes_sum'],
           'request_time_sum': round(a['request_time_sum'] + b['request_time_sum'], 3),
           'by_method_status': dict(a['by_method_status'])}
    for k, v in b['by_method_status'].items():
        out['by_method_status'][k] = out['by_method_status'].get(k, 0) + v
    return out


def fleet(d, n=20000):
    """Three files of n lines each: (path, lines, truth, format, timed)."""
    c_lines, c_truth = harness.generate(n, 'combined', seed=31)
    m_lines, m_truth = harness.generate(n, 'combined', seed=32)
    t_lines, t_truth = harness.generate(n, 'timed', seed=33)
    return [(os.path.join(d, 'debian.log'), c_lines, c_truth, 'combined', False),
            (os.path.join(d, 'rhel.log'), to_main(m_lines), m_truth, 'main', False),
            (os.path.join(d, 'timed.log'), t_lines, t_truth, 'timed', True)]


def check_formats(metrics, files):
    for path, _, _, fmt, _ in files:
        got = promtext.select(metrics, 'sshtail_source_format_info', source=path)
        assert [(l['format'], v) for l, v in got] == [(fmt, 1)], (path, got)


def test_live_tail_default_flags_exact():
    d = harness.tmpdir()
    files = fleet(d)
    for path, _, _, _, _ in files:
        open(path, 'w').close()
    exp = harness.Exporter([p for p, _, _, _, _ in files], d)  # no --format
    for path, _, _, _, _ in files:
        exp.wait_value('sshtail_source_up', 1, source=path)
    writers = [harness.Writer(path, lines, rate=10000) for path, lines, _, _, _ in files]
    for w in writers:
        w.start()
    for w in writers:
        w.finish()
    for path, lines, truth, _, timed in files:
        exp.wait_value('sshtail_lines_total', len(lines), source=path)
    m = exp.metrics()
    for path, _, truth, _, timed in files:
        harness.check_truth(m, truth, path, timed)
    assert not promtext.select(m, 'nginx_http_request_duration_seconds_count',
                               source=files[0][0])
    check_formats(m, files)
    logs = exp.logs()
    for path, _, _, fmt, _ in files:
        assert logs.count('source %s: nginx format %s (detected' % (path, fmt)) == 1, logs

    # The host's nginx config changes: the combined file now gets `main`
    # lines. The first REDETECT_AFTER of them show the change (unmatched),
    # the rest count as main.
    path, _, c_truth, _, _ = files[0]
    new, new_truth = harness.generate(3000, 'combined', seed=34)
    _, head_truth = harness.generate(REDETECT_AFTER, 'combined', seed=34)
    w = harness.Writer(path, to_main(new), rate=10000)
    w.start()
    w.finish()
    exp.wait_value('sshtail_lines_total', c_truth['lines'] + len(new), source=path)
    m = exp.metrics()
    want = truth_plus(c_truth, harness.truth_minus(new_truth, head_truth))
    got = {}
    for l, v in promtext.select(m, 'nginx_http_requests_total', source=path):
        got['%s %s' % (l['method'], l['status'])] = int(v)
    assert got == want['by_method_status']
    assert promtext.total(m, 'nginx_http_response_bytes_total', source=path) == \
        want['body_bytes_sum']
    assert promtext.total(m, 'sshtail_lines_unmatched_total', source=path) == REDETECT_AFTER
    assert [l['format'] for l, _ in promtext.select(
        m, 'sshtail_source_format_info', source=path)] == ['main']
    assert exp.logs().count('source %s: nginx format main (detected' % path) == 1
    assert exp.stop() == 0


def test_once_default_flags_and_no_match():
    d = harness.tmpdir()
    files = fleet(d, 30000)
    for path, lines, _, _, _ in files:
        harness.write_file(d, os.path.basename(path), '\n'.join(lines) + '\n')
    junk = harness.write_file(d, 'junk.log', ''.join('junk line %d\n' % i for i in range(100)))
    r = harness.run_once(['--consumers', '3'] + [p for p, _, _, _, _ in files] + [junk])
    assert r.returncode == 0, r.stderr
    m = promtext.parse(r.stdout)
    for path, _, truth, _, timed in files:
        harness.check_truth(m, truth, path, timed)
    check_formats(m, files)
    assert promtext.total(m, 'sshtail_lines_total', source=junk) == 100
    assert promtext.total(m, 'sshtail_lines_unmatched_total', source=junk) == 100
    assert [l['format'] for l, _ in promtext.select(
        m, 'sshtail_source_format_info', source=junk)] == ['none']
    assert r.stderr.count('no known nginx format matches') == 1, r.stderr
    assert 'source %s: no known nginx format' % junk in r.stderr


def test_per_source_format_in_config_and_forced_combined():
    d = harness.tmpdir()
    files = fleet(d, 5000)
    for path, lines, _, _, _ in files:
        harness.write_file(d, os.path.basename(path), '\n'.join(lines) + '\n')
    debian, rhel, timed = (f[0] for f in files)
    # format: wins over --format; a named format from formats: too.
    cfg = harness.write_file(d, 'sshtail.yml', (
        'format: combined\n'
        'formats:\n'
        '  rhel: \'log_format main \'\'$remote_addr - $remote_user [$time_local] "$request" \'\'\n'
        '         \'\'$status $body_bytes_sent "$http_referer" \'\'\n'
        '         \'\'"$http_user_agent" "$http_x_forwarded_for"\'\';\'\n'
        'sources:\n'
        '  - %s\n'
        '  - {url: %s, format: rhel}\n'
        '  - {url: %s, format: timed}\n') % (debian, rhel, timed))
    r = harness.run_once(['--config', cfg])
    assert r.returncode == 0, r.stderr
    m = promtext.parse(r.stdout)
    for path, _, truth, _, is_timed in files:
        harness.check_truth(m, truth, path, is_timed)
    assert [l['format'] for l, _ in promtext.select(
        m, 'sshtail_source_format_info', source=rhel)] == ['rhel']
    assert 'detected' not in r.stderr, r.stderr

    # --format combined forces combined on every source: main and timed
    # lines are unmatched, never re-detected.
    r = harness.run_once(['--format', 'combined', debian, rhel, timed])
    assert r.returncode == 0, r.stderr
    m = promtext.parse(r.stdout)
    harness.check_truth(m, files[0][2], debian, False)
    for path in (rhel, timed):
        assert promtext.total(m, 'sshtail_lines_total', source=path) == 5000
        assert promtext.total(m, 'sshtail_lines_unmatched_total', source=path) == 5000
        assert not promtext.select(m, 'nginx_http_requests_total', source=path)
        assert [l['format'] for l, _ in promtext.select(
            m, 'sshtail_source_format_info', source=path)] == ['combined']

    # A bad per-source format: one line with file:line, exit 2.
    bad = harness.write_file(d, 'bad.yml', 'sources:\n  - {url: %s, format: "$status $"}\n'
                             % debian)
    r = harness.run_once(['--config', bad])
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count('\n') == 0 and '%s:2:' % bad in r.stderr, r.stderr


def test_hosts_over_ssh_default_flags_exact():
    """A main host over SSH (real sshd, a /bin/sh user) next to a combined
    local file: each detected, both exact."""
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    rhel = os.path.join(d, 'rhel.log')
    debian = os.path.join(d, 'debian.log')
    m_lines, m_truth = harness.generate(5000, 'combined', seed=41)
    c_lines, c_truth = harness.generate(4000, 'combined', seed=42)
    harness.write_file(d, 'rhel.log', '\n'.join(to_main(m_lines)) + '\n')
    harness.write_file(d, 'debian.log', '\n'.join(c_lines) + '\n')
    exp = harness.Exporter(['--start-at', 'beginning'] + sshd.exporter_args() +
                           [sshd.url(rhel), debian], d)
    exp.wait_value('sshtail_lines_total', 5000, timeout=30, source='127.0.0.1')
    exp.wait_value('sshtail_lines_total', 4000, source=debian)
    m = exp.metrics()
    harness.check_truth(m, m_truth, '127.0.0.1', False)
    harness.check_truth(m, c_truth, debian, False)
    assert [l['format'] for l, _ in promtext.select(
        m, 'sshtail_source_format_info', source='127.0.0.1')] == ['main']
    assert [l['format'] for l, _ in promtext.select(
        m, 'sshtail_source_format_info', source=debian)] == ['combined']
    assert exp.stop() == 0


if __name__ == '__main__':
    harness.main([test_live_tail_default_flags_exact, test_once_default_flags_and_no_match,
                  test_per_source_format_in_config_and_forced_combined,
                  test_hosts_over_ssh_default_flags_exact])
