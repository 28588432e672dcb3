"""--once on local files and stdin: exact counts, exposition format, errors."""
import os
import shutil
import subprocess

import harness
import promtext


def test_once_200k_timed_matches_truth():
    d = harness.tmpdir()
    path = os.path.join(d, 'access.log')
    truth = harness.generate_file(path, 200000, 'timed', seed=7)
    r = harness.run_once(['--format', 'timed', path])
    assert r.returncode == 0, r.stderr
    harness.check_truth(promtext.parse(r.stdout), truth, path)
    prom = os.path.join(d, 'out.prom')
    with open(prom, 'w') as f:
        f.write(r.stdout)
    chk = subprocess.run(['promtool', 'check', 'metrics'], input=r.stdout, text=True,
                         capture_output=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr


def test_once_combined_and_stdin():
    d = harness.tmpdir()
    path = os.path.join(d, 'combined.log')
    truth = harness.generate_file(path, 30000, 'combined', seed=3)
    with open(path) as f:
        data = f.read()
    r = harness.run_once(['-'], input=data)
    assert r.returncode == 0, r.stderr
    m = promtext.parse(r.stdout)
    harness.check_truth(m, truth, 'stdin', timed=False)
    assert not promtext.select(m, 'nginx_http_request_duration_seconds_count')
    # The file:// form of the same file.
    r = harness.run_once(['file://' + path])
    assert r.returncode == 0, r.stderr
    harness.check_truth(promtext.parse(r.stdout), truth, path, timed=False)


def test_once_custom_format_string():
    d = harness.tmpdir()
    path = harness.write_file(d, 'custom.log',
                              '10.0.0.1 [25/Nov/2026:08:00:00 +0000] "GET / HTTP/1.1" 200 5\n'
                              '10.0.0.2 [25/Nov/2026:08:00:01 +0000] "POST /a HTTP/2.0" 500 7\n'
                              '10.0.0.3 [25/Nov/2026:08:00:02 +0000] "GET /b HTTP/1.1" 200 11\n'
                              'not a log line\n')
    r = harness.run_once(['--format', '$remote_addr [$time_local] "$request" $status $body_bytes_sent',
                          path])
    assert r.returncode == 0, r.stderr
    m = promtext.parse(r.stdout)
    assert promtext.total(m, 'nginx_http_requests_total', method='GET', status='200') == 2
    assert promtext.total(m, 'nginx_http_requests_total', method='POST', status='500') == 1
    assert promtext.total(m, 'nginx_http_response_bytes_total', method='GET') == 16
    assert promtext.total(m, 'sshtail_lines_unmatched_total', source=path) == 1
    assert promtext.total(m, 'sshtail_lines_total', source=path) == 4


def test_hostile_lines_are_counted_never_fatal():
    d = harness.tmpdir()
    path = os.path.join(d, 'hostile.log')
    good, truth = harness.generate(1000, 'timed', seed=11)
    junk = [b'\x00\x01\x02binary\xff\xfe', b'"' * 5000, b'\x16\x03\x01\x02\x00',
            b'A' * 70000,  # longer than --max-line-bytes: skipped whole
            b'GET / HTTP/1.1', b'', b'\r', b'%n%s%x' * 100, b'\xc3\x28 invalid utf-8']
    with open(path, 'wb') as f:
        for i, line in enumerate(good):
            f.write(line.encode() + (b'\r\n' if i % 2 else b'\n'))
            if i % 100 == 0:
                for j in junk:
                    f.write(j + b'\n')
        f.write(b'partial line without newline')
    r = harness.run_once(['--format', 'timed', path])
    assert r.returncode == 0, r.stderr
    m = promtext.parse(r.stdout)
    rounds = 10
    assert promtext.total(m, 'sshtail_lines_too_long_total', source=path) == rounds
    assert promtext.total(m, 'sshtail_lines_total', source=path) == 1000 + rounds * (len(junk) - 1)
    assert promtext.total(m, 'sshtail_lines_unmatched_total', source=path) == rounds * (len(junk) - 1)
    got = {}
    for labels, v in promtext.select(m, 'nginx_http_requests_total', source=path):
        got['%s %s' % (labels['method'], labels['status'])] = int(v)
    assert got == truth['by_method_status']


def test_label_values_from_hostile_bytes_stay_valid():
    """nginx logs raw bytes as \\xHH; un-escaped they are not UTF-8, and a
    scrape with an invalid label value is rejected by Prometheus."""
    d = harness.tmpdir()
    rules = harness.write_file(
        d, 'paths.yml',
        "rules:\n  - name: p\n    log_format: combined\n    metrics:\n"
        "      - {name: by_path_total, type: counter, labels: {path: path, ua: http_user_agent}}\n")
    log = os.path.join(d, 'a.log')
    with open(log, 'wb') as f:
        f.write(b'1.2.3.4 - - [25/Nov/2026:08:00:00 +0000] "GET /\\xFF\\xFE\\x22\\x5C HTTP/1.1" '
                b'200 1 "-" "\\xC0\\xAFbad \\xE2\\x82\\xAC"\n')
    r = subprocess.run([harness.BIN, '--once', '--rules', rules, log], capture_output=True)
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode('utf-8')  # raises if not UTF-8
    chk = subprocess.run(['promtool', 'check', 'metrics'], input=r.stdout, capture_output=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    m = promtext.parse(text)
    (labels, v), = promtext.select(m, 'by_path_total')
    assert labels['path'] == '/\ufffd\ufffd"\\', labels
    assert labels['ua'] == '\ufffd\ufffdbad \u20ac', labels


def test_bad_flags_and_config_exit_2_with_one_line():
    d = harness.tmpdir()
    bad_rules = os.path.join(d, 'bad.yml')
    with open(bad_rules, 'w') as f:
        f.write('rules:\n  - name: x\n    regex: "("\n    metrics: []\n')
    cases = [
        ['--no-such-flag', '/x'],
        ['--format', 'timed $', '/x'],
        ['--format', '$remote_adr $status', '/x'],
        ['--rules', os.path.join(d, 'missing.yml'), '/x'],
        ['--rules', bad_rules, '/x'],
        ['--start-at', 'middle', '/x'],
        ['ftp://host/x'],
        [],
    ]
    for args in cases:
        r = harness.run_once(args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, (args, r.stderr)
        assert r.stdout == '', (args, r.stdout)
    r = harness.run_once(['--rules', bad_rules, '/x'])
    assert (bad_rules + ':3: bad regex') in r.stderr, r.stderr


def test_check_config_reads_the_sources_file():
    """--check-config with --sources.file printed "0 source(s)" whatever the
    inventory held; it counts the inventory's targets, and a bad inventory is
    exit 2 with one line naming file:line."""
    d = harness.tmpdir()
    log = harness.write_file(d, 'a.log', '')
    good = harness.write_file(d, 'good.yml', '\n'.join([
        '- targets: [web1, web2]',
        '  labels: {__path__: /var/log/nginx/access.log}',
        '- targets: [%s]' % log,
        '']))
    r = subprocess.run([harness.BIN, '--check-config', '--sources.file', good],
                       capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout.strip()) == (0, 'config OK: 3 source(s)'), r
    r = subprocess.run([harness.BIN, '--check-config', '--sources.file', good, log + '2'],
                       capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout.strip()) == (0, 'config OK: 4 source(s)'), r
    bad = harness.write_file(d, 'bad.yml', '\n'.join([
        '- targets: [web1]',
        '  labels: {__path__: /var/log/nginx/access.log}',
        '- targets: [web3]',
        '  labels: {}',
        '']))
    r = subprocess.run([harness.BIN, '--check-config', '--sources.file', bad],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r
    assert (bad + ':3:') in r.stderr, r.stderr


def test_help_and_version():
    for flag in ('--help', '--version'):
        r = subprocess.run([harness.BIN, flag], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout, (flag, r.stderr)
    r = subprocess.run([harness.BIN, '--help'], capture_output=True, text=True)
    assert '--web.listen-address' in r.stdout and '--once' in r.stdout


def test_a_pids_limit_never_ends_the_process():
    # Issue 9: a failed thread creation (a container's pids limit) called
    # std::terminate. Readers without a thread now run inline in --once.
    import resource
    d = harness.tmpdir()
    paths, total = [], 0
    for i in range(12):
        n = 100 + i
        paths.append(harness.write_file(
            d, 'a%d.log' % i, '\n'.join(harness.generate(n, 'timed', seed=40 + i)[0]) + '\n'))
        total += n
    # RLIMIT_NPROC counts every process of the user: use a uid of our own.
    uid = next(u for u in range(64100, 64200)
               if subprocess.run(['pgrep', '-U', str(u)], capture_output=True).returncode == 1)

    # That uid may not be able to enter the directory of the build (a clone
    # under /root or a home directory): run a copy from the temp dir (0755).
    binary = os.path.join(d, 'sshtail_exporter')
    shutil.copy2(harness.BIN, binary)
    os.chmod(binary, 0o755)

    def limited():
        os.setgid(uid)
        os.setuid(uid)
        # The main thread and 2 more: some readers cannot get a thread.
        resource.setrlimit(resource.RLIMIT_NPROC, (3, 3))

    r = subprocess.run([binary, '--once', '--format', 'timed', '--consumers', '2'] + paths,
                       capture_output=True, text=True, timeout=120, preexec_fn=limited)
    assert r.returncode == 0, (r.returncode, r.stderr)
    m = promtext.parse(r.stdout)
    assert promtext.total(m, 'nginx_http_requests_total') == total
    assert promtext.total(m, 'sshtail_lines_unmatched_total') == 0


if __name__ == '__main__':
    harness.main([test_once_200k_timed_matches_truth, test_once_combined_and_stdin,
                  test_once_custom_format_string, test_hostile_lines_are_counted_never_fatal,
                  test_label_values_from_hostile_bytes_stay_valid,
                  test_bad_flags_and_config_exit_2_with_one_line,
                  test_check_config_reads_the_sources_file, test_help_and_version,
                  test_a_pids_limit_never_ends_the_process])
