"""A damaged positions or state file loses no line: it is set aside (one
metric says so) and the run resumes from the previous generation FILE.prev,
reading again what came after it. Also: a stale or planted FILE.tmp, a
state file whose checksum holds but whose counters cannot be, a state path
that is a directory, and the label limit the state file and the
configuration share."""
import glob
import math
import os
import subprocess

import yaml

import harness
import promtext


def fnv1a(data):
    h = 1469598103934665603
    for c in data:
        h ^= c
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def rechecksum(text):
    """`text` (a version 2 state file) with its checksum line made right."""
    body = text[:text.rindex('\nchecksum ') + 1]
    return body + 'checksum %016x\n' % fnv1a(body.encode())


def offsets(path):
    """{url: offset of the current file} of a positions or state file."""
    with open(path) as f:
        text = f.read()
    if 'version: 2' not in text:
        doc = yaml.safe_load(text)
        return {url: next(p['offset'] for p in ps if p.get('current'))
                for url, ps in doc['sources'].items()}
    out, url = {}, None
    for line in text.splitlines():
        w = line.split(' ')
        if w[0] == 'source':
            url = w[1].strip('"')
        elif w[0] == 'position' and w[4] == '1':
            out[url] = int(w[3])
    return out


def saved_at_sizes(path, paths):
    try:
        got = offsets(path)
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return False
    return all(got.get(p) == os.path.getsize(p) for p in paths)


def append(path, lines):
    with open(path, 'a') as f:
        f.write('\n'.join(lines) + '\n')


def lines_before(path, offset):
    with open(path, 'rb') as f:
        return f.read()[:offset].count(b'\n')


def two_logs(d):
    paths = [os.path.join(d, 'a.log'), os.path.join(d, 'b.log')]
    for p in paths:
        open(p, 'w').close()
    return paths


def first_run(args, d, paths, lines, name='first'):
    """Starts at the end of the empty logs, counts 10 lines of each, stops
    cleanly, and writes 20 more of each while the exporter is down."""
    exp = harness.Exporter(args, d, name=name)
    for p in paths:
        exp.wait_value('sshtail_source_up', 1, source=p)
    for p in paths:
        append(p, lines[:10])
    for p in paths:
        exp.wait_value('sshtail_lines_total', 10, source=p)
    # Saved twice with those lines: the previous generation has them too.
    harness.wait_for(lambda: saved_at_sizes(args[args.index(flag(args)) + 1] + '.prev', paths),
                     30, what='a previous generation with the lines')
    assert exp.stop() == 0
    for p in paths:
        append(p, lines[10:])


def flag(args):
    return '--state-file' if '--state-file' in args else '--positions-file'


def damage_metrics(exp):
    m = exp.metrics()
    return (promtext.total(m, 'sshtail_state_file_corrupt_total'),
            promtext.total(m, 'sshtail_state_file_previous_generation'))


def test_truncated_positions_file_resumes_from_previous_generation():
    d = harness.tmpdir()
    paths = two_logs(d)
    pos = os.path.join(d, 'positions')
    lines, truth = harness.generate(30, 'timed', seed=41)
    args = ['--format', 'timed', '--positions-file', pos,
            '--positions.sync-interval', '200ms'] + paths
    first_run(args, d, paths, lines)
    assert os.path.exists(pos + '.prev')
    prev = offsets(pos + '.prev')
    with open(pos) as f:
        text = f.read()
    cut = ''.join(text.splitlines(True)[:3])  # the damage
    with open(pos, 'w') as f:
        f.write(cut)
    exp = harness.Exporter(args, d, name='second')
    for p in paths:
        # Nothing lost: every line after the previous generation's offset,
        # and (a marker line later) none counted twice.
        k = lines_before(p, prev[p])
        assert k <= 10, (p, k)
        exp.wait_value('sshtail_lines_total', 30 - k, source=p)
        _, before = harness.generate(k, 'timed', seed=41)
        harness.check_truth(exp.metrics(), harness.truth_minus(truth, before), p)
    assert damage_metrics(exp) == (1, 1)
    aside = glob.glob(pos + '.corrupt-*')
    assert len(aside) == 1, aside
    with open(aside[0]) as f:
        assert f.read() == cut
    more, _ = harness.generate(31, 'timed', seed=42)
    for p in paths:
        append(p, more[-1:])
    for p in paths:
        k = lines_before(p, prev[p])
        exp.wait_value('sshtail_lines_total', 31 - k, source=p)
    assert exp.stop() == 0
    # The next start finds a whole file again: nothing set aside.
    now = offsets(pos)
    for p in paths:
        assert now[p] == os.path.getsize(p)
    exp = harness.Exporter(args, d, name='third')
    assert damage_metrics(exp) == (0, 0)
    assert exp.stop() == 0
    assert len(glob.glob(pos + '.corrupt-*')) == 1


def test_damaged_state_file_resumes_from_previous_generation_exactly():
    d = harness.tmpdir()
    paths = two_logs(d)
    state = os.path.join(d, 'state')
    lines, truth = harness.generate(30, 'timed', seed=43)
    args = ['--format', 'timed', '--state-file', state,
            '--positions.sync-interval', '200ms'] + paths
    first_run(args, d, paths, lines)
    for what, damage in (('truncated', lambda t: t[:len(t) // 2]),
                         ('emptied', lambda t: '')):
        with open(state) as f:
            text = f.read()
        for old in glob.glob(state + '.corrupt-*'):
            os.unlink(old)
        with open(state, 'w') as f:
            f.write(damage(text))
        exp = harness.Exporter(args, d, name='after-' + what)
        # Values of the previous generation plus the lines after it: exact.
        for p in paths:
            exp.wait_value('sshtail_lines_total', 30, source=p)
            harness.check_truth(exp.metrics(), truth, p)
        assert damage_metrics(exp) == (1, 1), what
        assert len(glob.glob(state + '.corrupt-*')) == 1, what
        assert exp.stop() == 0


def test_both_generations_damaged_start_as_with_no_file():
    d = harness.tmpdir()
    paths = two_logs(d)
    state = os.path.join(d, 'state')
    lines, _ = harness.generate(30, 'timed', seed=44)
    args = ['--format', 'timed', '--state-file', state, '--start-at', 'beginning',
            '--positions.sync-interval', '200ms'] + paths
    first_run(args, d, paths, lines)
    for f in (state, state + '.prev'):
        with open(f, 'r+') as fh:
            fh.truncate(os.path.getsize(f) - 3)
    exp = harness.Exporter(args, d, name='second')
    for p in paths:
        exp.wait_value('sshtail_lines_total', 30, source=p)  # from the start
    assert damage_metrics(exp) == (2, 0)
    assert len(glob.glob(state + '.corrupt-*')) + len(glob.glob(state + '.prev.corrupt-*')) == 2
    assert exp.stop() == 0


def test_checksummed_but_impossible_counter_is_damage():
    d = harness.tmpdir()
    paths = two_logs(d)
    state = os.path.join(d, 'state')
    lines, truth = harness.generate(30, 'timed', seed=45)
    args = ['--format', 'timed', '--state-file', state,
            '--positions.sync-interval', '200ms'] + paths
    first_run(args, d, paths, lines)
    for bad in ('nan', '-1', '-inf'):
        with open(state) as f:
            text = f.read()
        out = []
        for line in text.splitlines(True):
            if line.startswith('counter "sshtail_lines_total"'):
                line = line.rsplit(' ', 1)[0] + ' ' + bad + '\n'
            out.append(line)
        with open(state, 'w') as f:
            f.write(rechecksum(''.join(out)))
        for old in glob.glob(state + '.corrupt-*'):
            os.unlink(old)
        exp = harness.Exporter(args, d, name='bad-' + bad)
        for p in paths:
            exp.wait_value('sshtail_lines_total', 30, source=p)
            v = exp.value('sshtail_lines_total', source=p)
            assert not math.isnan(v)
            harness.check_truth(exp.metrics(), truth, p)
        assert damage_metrics(exp) == (1, 1), bad
        assert exp.stop() == 0


def test_stale_or_planted_tmp_is_replaced_not_followed():
    d = harness.tmpdir()
    path = os.path.join(d, 'a.log')
    state = os.path.join(d, 'state')
    victim = os.path.join(d, 'victim')
    with open(victim, 'w') as f:
        f.write('precious\n')
    lines, truth = harness.generate(100, 'timed', seed=46)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    args = ['--format', 'timed', '--state-file', state, '--start-at', 'beginning', path]
    for what in ('symlink', 'stale'):
        if what == 'symlink':
            os.symlink(victim, state + '.tmp')
        else:
            with open(state + '.tmp', 'w') as f:
                f.write('half a state file from a crash')
        exp = harness.Exporter(args, d, name=what)
        exp.wait_value('sshtail_lines_total', 100, source=path)
        harness.check_truth(exp.metrics(), truth, path)  # the scrape saved it
        assert exp.stop() == 0
        with open(victim) as f:
            assert f.read() == 'precious\n', what
        assert not os.path.lexists(state + '.tmp'), what
        with open(state) as f:
            assert f.read().count('version: 2') == 1, what


def run_exit(args, timeout=60):
    return subprocess.run([harness.BIN, '--web.listen-address', '127.0.0.1:0'] + args,
                          capture_output=True, text=True, timeout=timeout)


def test_state_path_that_is_a_directory_is_refused():
    d = harness.tmpdir()
    path = os.path.join(d, 'a.log')
    open(path, 'w').close()
    state = os.path.join(d, 'state')
    os.mkdir(state)
    for flag in ('--state-file', '--positions-file'):
        r = run_exit([flag, state, path])
        assert r.returncode == 2, (r.returncode, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert state in r.stderr and flag in r.stderr, r.stderr
        assert os.path.isdir(state)
        assert not glob.glob(state + '.corrupt-*')


def labels_yaml(n):
    return '{%s}' % ', '.join('l%d: "v%d"' % (i, i) for i in range(n))


def test_label_limit_is_one_for_config_and_state_file():
    d = harness.tmpdir()
    path = os.path.join(d, 'a.log')
    lines, truth = harness.generate(50, 'timed', seed=47)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    state = os.path.join(d, 'state')
    # 62 static labels, `source` and `file`: the most a series may carry.
    # It is saved and read back: values continue, nothing set aside.
    cfg = harness.write_file(d, 'ok.yml', 'sources:\n  - url: %s\n    labels: %s\n'
                             % (path, labels_yaml(62)))
    rules = harness.write_file(d, 'rules.yml', '''rules:
  - name: t
    regex: '^(?P<a>\\S+) .*'
    metrics:
      - name: t_lines_total
        type: counter
''')
    args = ['--config', cfg, '--rules', rules, '--state-file', state,
            '--start-at', 'beginning']
    exp = harness.Exporter(args, d, name='ok1')
    exp.wait_value('t_lines_total', 50)
    assert exp.stop() == 0
    append(path, lines[:5])
    exp = harness.Exporter(args, d, name='ok2')
    exp.wait_value('t_lines_total', 55)
    exp.wait_value('sshtail_lines_total', 55)
    assert damage_metrics(exp) == (0, 0)
    assert exp.stop() == 0
    # One more static label: refused where it is written.
    bad = harness.write_file(d, 'bad.yml', 'sources:\n  - url: %s\n    labels: %s\n'
                             % (path, labels_yaml(63)))
    r = run_exit(['--config', bad, '--rules', rules, '--state-file', state])
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert bad + ':3:' in r.stderr, r.stderr
    # A rule whose labels with the sources' pass the limit: its labels line.
    many = ''.join('          x%d: a\n' % i for i in range(64))
    rules_bad = harness.write_file(d, 'rules_bad.yml', '''rules:
  - name: t
    regex: '^(?P<a>\\S+) .*'
    metrics:
      - name: t_lines_total
        type: counter
        labels:
%s''' % many)
    r = run_exit(['--rules', rules_bad, '--state-file', state, path])
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert rules_bad + ':8:' in r.stderr, r.stderr  # its labels


if __name__ == '__main__':
    import sys
    tests = [test_truncated_positions_file_resumes_from_previous_generation,
             test_damaged_state_file_resumes_from_previous_generation_exactly,
             test_both_generations_damaged_start_as_with_no_file,
             test_checksummed_but_impossible_counter_is_damage,
             test_stale_or_planted_tmp_is_replaced_not_followed,
             test_state_path_that_is_a_directory_is_refused,
             test_label_limit_is_one_for_config_and_state_file]
    # `test_state_damage.py NAME...` runs only those.
    harness.main([t for t in tests if len(sys.argv) < 2 or t.__name__ in sys.argv[1:]])
