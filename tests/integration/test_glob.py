"""Globs in local source paths: files that match later are followed from
their first line, rotated siblings are not followed as sources of their
own, `{field}` templates become labels, and a file created while the
exporter was stopped is read whole after a restart. A real nginx writing a
log per virtual host (`access_log .../$host.access.log`) creates the files
as requests for new hosts arrive."""
import os
import signal
import subprocess

import harness
import peers
import promtext


def write_lines(path, lines, mode='a'):
    with open(path, mode) as f:
        f.write('\n'.join(lines) + '\n')


def followed(exp):
    """The files the exporter follows: its sources' `file` labels."""
    return sorted(d['file'] for d, _ in promtext.select(exp.metrics(), 'sshtail_source_up')
                  if 'file' in d)


def write_config(d, text):
    path = os.path.join(d, 'config.yml')
    with open(path, 'w') as f:
        f.write(text)
    return path


def test_new_files_are_followed_from_their_first_line_and_rotated_ones_never():
    d = harness.tmpdir()
    logs = os.path.join(d, 'logs')
    os.makedirs(logs)
    a = os.path.join(logs, 'a.log')
    b = os.path.join(logs, 'b.log')
    old, _ = harness.generate(300, 'timed', seed=30)
    write_lines(a, old[:100])            # before the start: not counted
    write_lines(a + '.1', old[100:200])  # rotated siblings: never sources
    write_lines(os.path.join(logs, 'c.log-20261201'), old[200:250])
    write_lines(os.path.join(logs, 'skipme.log'), old[250:])  # exclude:
    conf = write_config(d, 'sources:\n  - url: %s/*\n    exclude: ["skip*"]\n' % logs)
    exp = harness.Exporter(['--format', 'timed', '--config', conf], d)
    harness.wait_for(lambda: followed(exp) == [a], 30, what='a.log followed')

    lines_a, truth_a = harness.generate(6000, 'timed', seed=31)
    w = harness.Writer(a, lines_a, rate=20000)
    w.start()
    # A file that appears while running: all of it counts, even the lines
    # written before the exporter's next look at the directory.
    lines_b, truth_b = harness.generate(4000, 'timed', seed=32)
    write_lines(b, lines_b[:2500], 'w')
    write_lines(os.path.join(logs, 'skipme2.log'), old[:10], 'w')
    w.wait_written(2000)
    os.rename(a, a + '.2')  # rotation by rename: drained, not a new source
    w.reopen()
    write_lines(b, lines_b[2500:])
    w.finish()
    exp.wait_value('sshtail_lines_total', 6000, source=a)
    exp.wait_value('sshtail_lines_total', 4000, source=b)
    m = exp.metrics()
    harness.check_truth(m, truth_a, a)
    harness.check_truth(m, truth_b, b)
    assert followed(exp) == [a, b]
    assert exp.value('sshtail_rotations_total', source=a) == 1
    assert promtext.total(m, 'sshtail_lines_total') == 10000
    # Every series of a glob's match says which file it counts.
    assert promtext.total(m, 'nginx_http_requests_total', file=b) == 4000
    assert exp.stop() == 0


def test_a_glob_in_a_directory_part_follows_a_new_directory():
    d = harness.tmpdir()
    os.makedirs(os.path.join(d, 'srv', 'one', 'logs'))
    one = os.path.join(d, 'srv', 'one', 'logs', 'access.log')
    two = os.path.join(d, 'srv', 'two', 'logs', 'access.log')
    open(one, 'w').close()
    exp = harness.Exporter(['--format', 'timed', os.path.join(d, 'srv', '*', 'logs',
                                                              'access.log')], d)
    harness.wait_for(lambda: followed(exp) == [one], 30, what='one followed')
    lines, truth = harness.generate(3000, 'timed', seed=33)
    write_lines(one, lines[:1000])
    os.makedirs(os.path.dirname(two))
    write_lines(two, lines[1000:], 'w')
    exp.wait_value('sshtail_lines_total', 1000, source=one)
    exp.wait_value('sshtail_lines_total', 2000, source=two)
    _, truth_one = harness.generate(1000, 'timed', seed=33)
    harness.check_truth(exp.metrics(), truth_one, one)
    harness.check_truth(exp.metrics(), harness.truth_minus(truth, truth_one), two)
    assert exp.stop() == 0


class VhostNginx(peers.Nginx):
    """A real nginx that logs each virtual host to `vhosts/$host.access.log`:
    nginx creates the file on the first request for a new host."""

    def _config(self):
        self.vhosts = os.path.join(self.dir, 'vhosts')
        os.makedirs(self.vhosts, exist_ok=True)
        conf = super()._config()
        if os.geteuid() == 0:
            # Workers open a log with variables themselves: let them write
            # into the test's private directory.
            conf = 'user root;\n' + conf
        return conf.replace('access_log %s timed;' % self.access_log,
                            'access_log %s/$host.access.log timed;' % self.vhosts)

    def _start(self):
        # The parent waits for the fixed access log; this one has none yet.
        open(self.access_log, 'a').close()
        super()._start()


def test_real_nginx_vhost_logs_with_a_path_template():
    d = harness.tmpdir()
    nginx = VhostNginx(d)
    exp = harness.Exporter(['--format', 'timed',
                            os.path.join(nginx.vhosts, '{vhost}.access.log')], d)
    want = {'shop': (40, 7), 'blog': (25, 3), 'api': (60, 0)}
    for host, (ok, errors) in want.items():
        codes = peers.curl_glob(nginx.url('/'), ok, extra=['-H', 'Host: ' + host])
        assert codes == {200: ok}
        if errors:
            codes = peers.curl_glob(nginx.url('/error'), errors,
                                    extra=['-H', 'Host: ' + host])
            assert codes == {500: errors}
    for host, (ok, errors) in want.items():
        exp.wait_value('nginx_http_requests_total', ok + errors, vhost=host)
    m = exp.metrics()
    for host, (ok, errors) in want.items():
        path = os.path.join(nginx.vhosts, host + '.access.log')
        assert promtext.total(m, 'nginx_http_requests_total', vhost=host,
                              status='200', source=path) == ok
        assert promtext.total(m, 'nginx_http_requests_total', vhost=host,
                              status='500') == errors
        assert promtext.total(m, 'sshtail_lines_total', source=path) == ok + errors
        assert promtext.total(m, 'sshtail_lines_unmatched_total', source=path) == 0
    # The template names the file: rule series carry `vhost`, not `file`.
    assert not [x for x, _ in promtext.select(m, 'nginx_http_requests_total') if 'file' in x]
    assert exp.stop() == 0


def test_a_file_created_while_stopped_is_read_whole_after_a_restart():
    d = harness.tmpdir()
    logs = os.path.join(d, 'logs')
    os.makedirs(logs)
    a = os.path.join(logs, 'a.log')
    b = os.path.join(logs, 'b.log')
    pos = os.path.join(d, 'positions.yml')
    lines, truth = harness.generate(5000, 'timed', seed=34)
    open(a, 'w').close()
    args = ['--format', 'timed', '--positions-file', pos, os.path.join(logs, '*.log')]
    exp = harness.Exporter(args, d, name='first')
    harness.wait_for(lambda: followed(exp) == [a], 30, what='a.log followed')
    write_lines(a, lines[:1000])
    exp.wait_value('sshtail_lines_total', 1000, source=a)
    assert exp.stop() == 0
    write_lines(a, lines[1000:2000])   # while stopped: the rest of a,
    write_lines(b, lines[2000:4000], 'w')  # and a new file (after the save)
    exp2 = harness.Exporter(args, d, name='second')
    write_lines(b, lines[4000:])
    exp2.wait_value('sshtail_lines_total', 1000, source=a)
    exp2.wait_value('sshtail_lines_total', 3000, source=b)
    _, t1 = harness.generate(1000, 'timed', seed=34)
    _, t2 = harness.generate(2000, 'timed', seed=34)
    harness.check_truth(exp2.metrics(), harness.truth_minus(t2, t1), a)
    harness.check_truth(exp2.metrics(), harness.truth_minus(truth, t2), b)
    assert exp2.stop() == 0


def test_max_files_bounds_what_one_glob_follows():
    d = harness.tmpdir()
    logs = os.path.join(d, 'logs')
    os.makedirs(logs)
    for n in 'abc':
        open(os.path.join(logs, n + '.log'), 'w').close()
    conf = write_config(d, 'sources:\n  - url: %s/*.log\n    max_files: 2\n' % logs)
    exp = harness.Exporter(['--format', 'timed', '--config', conf], d)
    harness.wait_for(lambda: len(followed(exp)) == 2, 30, what='two files followed')
    open(os.path.join(logs, 'd.log'), 'w').close()
    lines, _ = harness.generate(10, 'timed', seed=35)
    write_lines(os.path.join(logs, 'a.log'), lines)
    exp.wait_value('sshtail_lines_total', 10)
    assert followed(exp) == [os.path.join(logs, 'a.log'), os.path.join(logs, 'b.log')]
    assert exp.value('sshtail_glob_files', glob=logs + '/*.log') == 2
    assert exp.stop() == 0


def test_bad_globs_are_config_errors():
    d = harness.tmpdir()
    cases = [
        ('sources:\n  - url: %s/{1x}.log\n' % d, 'config.yml:2'),
        ('sources:\n  - url: %s/[ab.log\n' % d, 'config.yml:2'),
        ('sources:\n  - url: %s/a.log\n    exclude: ["*.x"]\n' % d, 'config.yml:3'),
        ('sources:\n  - url: %s/*.log\n    max_files: 0\n' % d, 'config.yml:3'),
        ('sources:\n  - url: %s/*.log\n    labels: {file: x}\n' % d, 'config.yml:3'),
        ('sources:\n  - url: ssh://web1/var/log/[a$b].log\n', 'config.yml:2'),
    ]
    for text, where in cases:
        conf = write_config(d, text)
        r = subprocess.run([harness.BIN, '--config', conf, '--check-config'],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (text, r.returncode, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and where in lines[0], (text, r.stderr)


def test_remote_glob_follows_new_files_on_the_hosts_connections():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    logs = os.path.join(d, 'remote logs')  # a space: quoted for the shell
    os.makedirs(logs)
    os.chmod(logs, 0o755)
    paths = [os.path.join(logs, 'v%d.log' % k) for k in range(6)]
    old, _ = harness.generate(50, 'timed', seed=40)
    write_lines(paths[0], old)           # there at start: --start-at end
    write_lines(paths[0] + '.1', old)    # rotated: never a source
    pos = os.path.join(d, 'positions.yml')
    args = (['--format', 'timed', '--ssh.files-per-connection', '2',
             '--positions-file', pos] + sshd.exporter_args() + [sshd.url(logs + '/v*.log')])
    exp = harness.Exporter(args, d, name='first')
    exp.wait_value('sshtail_source_up', 1, file=paths[0])
    # Five more files while running, each read from its first line.
    truths = {}
    for k, p in enumerate(paths):
        lines, truths[p] = harness.generate(500 + 100 * k, 'timed', seed=41 + k)
        write_lines(p, lines, 'a' if k == 0 else 'w')
    for p in paths:
        exp.wait_value('sshtail_lines_total', truths[p]['lines'], file=p)
    m = exp.metrics()
    for p in paths:
        # The source stays the host; `file` names the file.
        got = {'%s %s' % (x['method'], x['status']): int(v)
               for x, v in promtext.select(m, 'nginx_http_requests_total', file=p)}
        assert got == truths[p]['by_method_status'], p
        assert promtext.select(m, 'sshtail_lines_total', file=p)[0][0]['source'] == '127.0.0.1'
    assert followed(exp) == sorted(paths)
    # Six files, two per connection: three reader sessions and the listing.
    conns = subprocess.run(['ss', '-Htn', 'state', 'established', 'dst', '127.0.0.1',
                            'dport', '=', str(sshd.port)], capture_output=True, text=True)
    assert len(conns.stdout.splitlines()) == 4, conns.stdout
    assert exp.stop() == 0

    # While stopped: more lines in a followed file, and a new file. After
    # the restart the first keeps its position; the new one (not saved,
    # while files of the glob were) is read whole.
    more, t_more = harness.generate(300, 'timed', seed=50)
    write_lines(paths[1], more)
    late = os.path.join(logs, 'v9.log')
    late_lines, t_late = harness.generate(200, 'timed', seed=51)
    write_lines(late, late_lines, 'w')
    exp2 = harness.Exporter(args, d, name='second')
    exp2.wait_value('sshtail_lines_total', 300, file=paths[1])
    exp2.wait_value('sshtail_lines_total', 200, file=late)
    m = exp2.metrics()
    for p, t in ((paths[1], t_more), (late, t_late)):
        got = {'%s %s' % (x['method'], x['status']): int(v)
               for x, v in promtext.select(m, 'nginx_http_requests_total', file=p)}
        assert got == t['by_method_status'], p
    assert promtext.total(m, 'sshtail_lines_total') == 500
    assert exp2.stop() == 0


def by_file(m, path):
    return {'%s %s' % (x['method'], x['status']): int(v)
            for x, v in promtext.select(m, 'nginx_http_requests_total', file=path)}


def retired_when_gone(remote):
    """--sources.retire-after: a glob's file whose path is gone that long is
    no longer followed and its series go; the others stay. A file renamed
    out of the glob and back is the same file: it resumes where it was
    (nothing recounted); a path recreated is a new file, read whole."""
    d = harness.tmpdir()
    logs = os.path.join(d, 'logs')
    os.makedirs(logs)
    os.chmod(logs, 0o755)
    a, b = os.path.join(logs, 'a.log'), os.path.join(logs, 'b.log')
    open(a, 'w').close()
    open(b, 'w').close()
    # Two slots: a and b coming back need the ones a and b had (reused).
    args = ['--format', 'timed', '--sources.retire-after', '2s', '--sources.max-slots', '2']
    if remote:
        sshd = harness.Sshd(d)
        args += sshd.exporter_args() + [sshd.url(logs + '/*.log')]
    else:
        args += [logs + '/*.log']
    exp = harness.Exporter(args, d)
    harness.wait_for(lambda: followed(exp) == [a, b], 30, what='both followed')
    exp.wait_value('sshtail_source_up', 2)  # reading (from their end)
    la, ta = harness.generate(300, 'timed', seed=60)
    lb, tb = harness.generate(400, 'timed', seed=61)
    write_lines(a, la[:100])
    write_lines(b, lb[:200])
    exp.wait_value('sshtail_lines_total', 100, file=a)
    exp.wait_value('sshtail_lines_total', 200, file=b)
    os.unlink(b)
    harness.wait_for(lambda: followed(exp) == [a], 30, what='b.log retired')
    m = exp.metrics()
    assert by_file(m, b) == {} and promtext.select(m, 'sshtail_lines_total', file=b) == []
    assert promtext.total(m, 'sshtail_glob_files') == 1
    assert promtext.total(m, 'sshtail_lines_total', file=a) == 100
    # Out of the glob and back: the same file, resumed where it was.
    os.rename(a, a + '.away')
    harness.wait_for(lambda: followed(exp) == [], 30, what='a.log retired')
    write_lines(a + '.away', la[100:200])
    os.rename(a + '.away', a)
    write_lines(b, lb[200:], 'w')  # a new file at b's path: read whole
    exp.wait_value('sshtail_lines_total', 100, file=a)
    write_lines(a, la[200:])
    exp.wait_value('sshtail_lines_total', 200, file=a)
    exp.wait_value('sshtail_lines_total', 200, file=b)
    m = exp.metrics()
    _, t100 = harness.generate(100, 'timed', seed=60)
    _, t200 = harness.generate(200, 'timed', seed=61)
    assert by_file(m, a) == harness.truth_minus(ta, t100)['by_method_status']
    assert by_file(m, b) == harness.truth_minus(tb, t200)['by_method_status']
    assert followed(exp) == [a, b]
    assert exp.stop() == 0


def test_once_lists_a_remote_glob_and_reads_every_match():
    """--once with a remote glob: the host lists it once, every match is
    read to its end (rotated siblings are not sources), exit 0; a host
    that cannot be listed is exit 1 and counts a failure of the listing."""
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    logs = os.path.join(d, 'logs')
    os.makedirs(logs)
    os.chmod(logs, 0o755)
    truths = {}
    for k in range(5):
        p = os.path.join(logs, 'v%d.log' % k)
        lines, truths[p] = harness.generate(100 + 37 * k, 'timed', seed=70 + k)
        write_lines(p, lines, 'w')
    rot, _ = harness.generate(50, 'timed', seed=79)
    write_lines(os.path.join(logs, 'v0.log.1'), rot, 'w')
    r = harness.run_once(['--format', 'timed', '--ssh.files-per-connection', '2'] +
                         sshd.exporter_args() + [sshd.url(logs + '/*.log')])
    assert r.returncode == 0, r.stderr
    m = promtext.parse(r.stdout)
    assert sorted(d_['file'] for d_, _ in promtext.select(m, 'sshtail_lines_total')) == \
        sorted(truths)
    for p, t in truths.items():
        assert promtext.total(m, 'sshtail_lines_total', file=p) == t['lines'], p
        assert by_file(m, p) == t['by_method_status'], p
    assert promtext.total(m, 'sshtail_lines_total') == sum(t['lines'] for t in truths.values())

    # Nobody listens there.
    bad = 'ssh://%s@127.0.0.1:%d%s' % (sshd.user, harness.free_port(), logs + '/*.log')
    r = harness.run_once(['--format', 'timed'] + sshd.exporter_args() + [bad])
    assert r.returncode == 1, (r.returncode, r.stderr)
    m = promtext.parse(r.stdout)
    assert promtext.total(m, 'sshtail_ssh_reconnects_total', file=logs + '/*.log',
                          reason='refused') == 1
    assert promtext.total(m, 'sshtail_glob_up') == 0


def test_a_remote_glob_whose_host_is_down_is_visible():
    """A remote glob's host that cannot be listed has no files, so no
    source of it shows: sshtail_glob_up says so, and the listing's failures
    count in sshtail_ssh_reconnects_total; back up, it lists again."""
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    logs = os.path.join(d, 'logs')
    os.makedirs(logs)
    os.chmod(logs, 0o755)
    a = os.path.join(logs, 'a.log')
    open(a, 'w').close()
    os.chmod(a, 0o644)
    port = sshd.port
    sshd.stop()
    url = sshd.url(logs + '/*.log')
    exp = harness.Exporter(['--format', 'timed', '--ssh.max-backoff', '1s'] +
                           sshd.exporter_args() + [url], d)
    exp.wait_value('sshtail_ssh_reconnects_total', 2, file=logs + '/*.log', reason='refused')
    m = exp.metrics()
    assert promtext.total(m, 'sshtail_glob_up', glob=url) == 0
    assert promtext.select(m, 'sshtail_source_up') == []
    sshd.start(port)
    exp.wait_value('sshtail_glob_up', 1, glob=url)
    exp.wait_value('sshtail_source_up', 1, file=a)
    lines, truth = harness.generate(300, 'timed', seed=80)
    write_lines(a, lines)
    exp.wait_value('sshtail_lines_total', 300, file=a)
    assert by_file(exp.metrics(), a) == truth['by_method_status']
    assert exp.stop() == 0


def test_a_reload_adds_two_local_globs_and_a_file():
    """One reload adds two globs with files and a plain file after them:
    the globs' files take slots of their own, every source starts."""
    d = harness.tmpdir()
    x, y = os.path.join(d, 'x'), os.path.join(d, 'y')
    os.makedirs(x)
    os.makedirs(y)
    first = os.path.join(d, 'first.log')
    plain = os.path.join(d, 'plain.log')
    files = [os.path.join(x, 'a.log'), os.path.join(x, 'b.log'),
             os.path.join(y, 'c.log'), os.path.join(y, 'd.log'), plain]
    for p in [first] + files:
        open(p, 'w').close()
    conf = write_config(d, 'sources:\n  - %s\n' % first)
    exp = harness.Exporter(['--format', 'timed', '--config', conf], d)
    exp.wait_value('sshtail_source_up', 1, source=first)
    write_config(d, 'sources:\n  - %s\n  - %s/*.log\n  - %s/*.log\n  - %s\n'
                 % (first, x, y, plain))
    exp.proc.send_signal(signal.SIGHUP)
    harness.wait_for(lambda: followed(exp) == sorted(files[:4]), 30, what='the globs\' files')
    exp.wait_value('sshtail_source_up', 1, source=plain)
    assert exp.value('sshtail_config_last_reload_successful') == 1
    truths = {}
    for k, p in enumerate(files):
        lines, truths[p] = harness.generate(100 + k, 'timed', seed=90 + k)
        write_lines(p, lines)
    for p in files[:4]:
        exp.wait_value('sshtail_lines_total', truths[p]['lines'], file=p)
        assert by_file(exp.metrics(), p) == truths[p]['by_method_status']
    exp.wait_value('sshtail_lines_total', truths[plain]['lines'], source=plain)
    assert exp.stop() == 0


def test_a_file_gone_for_retire_after_is_no_longer_followed_local():
    retired_when_gone(False)


def test_a_file_gone_for_retire_after_is_no_longer_followed_ssh():
    retired_when_gone(True)


if __name__ == '__main__':
    harness.main([test_new_files_are_followed_from_their_first_line_and_rotated_ones_never,
                  test_a_glob_in_a_directory_part_follows_a_new_directory,
                  test_real_nginx_vhost_logs_with_a_path_template,
                  test_a_file_created_while_stopped_is_read_whole_after_a_restart,
                  test_max_files_bounds_what_one_glob_follows,
                  test_remote_glob_follows_new_files_on_the_hosts_connections,
                  test_bad_globs_are_config_errors,
                  test_once_lists_a_remote_glob_and_reads_every_match,
                  test_a_remote_glob_whose_host_is_down_is_visible,
                  test_a_reload_adds_two_local_globs_and_a_file,
                  test_a_file_gone_for_retire_after_is_no_longer_followed_local,
                  test_a_file_gone_for_retire_after_is_no_longer_followed_ssh])
