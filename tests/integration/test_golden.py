"""Golden tests: every rules/<name>.yml has tests/testdata/<name>.log whose
--once exposition must equal tests/testdata/<name>.prom exactly.

Extra flags for a case go in tests/testdata/<name>.args, one per line. The
source label (the log's absolute path) is written as <name>.log, and the
few time-dependent self metrics are left out. SSHTAIL_UPDATE_GOLDEN=1
rewrites the .prom files (review the diff before committing).
"""
import difflib
import glob
import os

import harness

VOLATILE = ('sshtail_build_info', 'sshtail_config_last_reload_success_timestamp_seconds',
            'sshtail_source_last_line_timestamp_seconds')


def normalize(text, log_path, name):
    out = []
    for line in text.splitlines():
        family = line.split()[2] if line.startswith('# ') else line.split('{')[0].split(' ')[0]
        if family.startswith(VOLATILE):
            continue
        out.append(line.replace(log_path, name + '.log'))
    return '\n'.join(out) + '\n'


def run_case(rule_file):
    name = os.path.splitext(os.path.basename(rule_file))[0]
    data = os.path.join(harness.SOURCE_DIR, 'tests', 'testdata')
    log = os.path.join(data, name + '.log')
    expected = os.path.join(data, name + '.prom')
    assert os.path.exists(log), 'rules/%s.yml has no tests/testdata/%s.log' % (name, name)
    args = []
    if os.path.exists(os.path.join(data, name + '.args')):
        with open(os.path.join(data, name + '.args')) as f:
            args = [a for a in f.read().splitlines() if a]
    outputs = set()
    # The same exposition whatever the number of parser threads.
    for consumers in ('1', '3'):
        r = harness.run_once(args + ['--consumers', consumers, '--rules', rule_file, log])
        assert r.returncode == 0, r.stderr
        outputs.add(normalize(r.stdout, log, name))
    assert len(outputs) == 1, 'output differs between 1 and 3 consumers'
    got = outputs.pop()
    if os.environ.get('SSHTAIL_UPDATE_GOLDEN'):
        with open(expected, 'w') as f:
            f.write(got)
    assert os.path.exists(expected), 'missing %s (run with SSHTAIL_UPDATE_GOLDEN=1)' % expected
    with open(expected) as f:
        want = f.read()
    if got != want:
        diff = ''.join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                            expected, 'got'))
        raise AssertionError('golden mismatch for %s:\n%s' % (name, diff[:20000]))


def test_nginx_golden_agrees_with_generator_truth():
    """The nginx golden is not just what the binary printed once: it equals
    the generator's truth for its 400 lines plus the 4 hand-written ones."""
    import promtext
    with open(os.path.join(harness.SOURCE_DIR, 'tests', 'testdata', 'nginx.prom')) as f:
        m = promtext.parse(f.read())
    lines, truth = harness.generate(400, 'timed', 42)
    want = dict(truth['by_method_status'])
    want['other 400'] = want.get('other 400', 0) + 2  # TLS bytes and "-"
    want['GET 200'] += 1  # the multi-value upstream line
    got = {'%s %s' % (d['method'], d['status']): int(v)
           for d, v in promtext.select(m, 'nginx_http_requests_total')}
    assert got == want, (got, want)
    assert promtext.total(m, 'nginx_http_response_bytes_total') == truth['body_bytes_sum'] + 167
    assert round(promtext.total(m, 'nginx_http_request_duration_seconds_sum'), 3) == \
        round(truth['request_time_sum'] + 0.051, 3)
    upstream = [float(l.rsplit(' ', 1)[1]) for l in lines if not l.endswith(' -')]
    assert promtext.total(m, 'nginx_http_upstream_response_duration_seconds_count') == \
        len(upstream) + 1
    assert round(promtext.total(m, 'nginx_http_upstream_response_duration_seconds_sum'), 3) == \
        round(sum(upstream) + 0.045, 3)
    assert promtext.total(m, 'sshtail_lines_unmatched_total') == 1


def make_test(rule_file):
    def test():
        run_case(rule_file)
    test.__name__ = 'golden_' + os.path.splitext(os.path.basename(rule_file))[0]
    return test


if __name__ == '__main__':
    files = sorted(glob.glob(os.path.join(harness.SOURCE_DIR, 'rules', '*.yml')))
    assert len(files) >= 3, files
    harness.main([make_test(f) for f in files] + [test_nginx_golden_agrees_with_generator_truth])
