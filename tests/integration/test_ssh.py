"""SSH sources against a real OpenSSH sshd on loopback: exact counts while a
writer appends at 20k lines/s through connection kills, sshd restarts,
rotations and exporter restarts; host-key trust; injection; failures."""
import os
import shutil
import signal
import subprocess
import time

import harness
import promtext
import relay


def check_prefix(exp, source, n, seed, fmt='timed'):
    """The exporter counted exactly the first n generator lines."""
    _, truth = harness.generate(n, fmt, seed)
    exp.wait_value('sshtail_lines_total', n, source=source)
    harness.check_truth(exp.metrics(), truth, source, timed=(fmt == 'timed'))


def test_faults_mid_stream_exact():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    path = os.path.join(d, 'access.log')
    pos = os.path.join(d, 'positions.yml')
    open(path, 'w').close()
    seed = 21
    lines, truth = harness.generate(260000, 'timed', seed)
    args = ['--format', 'timed', '--positions-file', pos,
            '--positions.sync-interval', '500ms'] + sshd.exporter_args() + [sshd.url(path)]
    exp = harness.Exporter(args, d, name='exp1')
    src = '127.0.0.1'
    exp.wait_value('sshtail_source_up', 1, source=src)
    w = harness.Writer(path, lines, rate=20000)
    w.start()

    # (a) the TCP connection is killed while lines flow.
    w.wait_written(20000)
    sshd.kill_connections()
    w.wait_written(40000)
    w.pause()
    check_prefix(exp, src, w.written, seed)
    assert exp.value('sshtail_ssh_reconnects_total', source=src, reason='disconnect') >= 1
    w.resume()

    # (b) sshd stops (sessions end) and comes back on the same port.
    w.wait_written(60000)
    sshd.stop()
    w.wait_written(80000)
    sshd.start(sshd.port)
    w.wait_written(90000)
    w.pause()
    check_prefix(exp, src, w.written, seed)
    w.resume()

    # (c) rotation by rename; the writer reopens a little later.
    w.wait_written(110000)
    os.rename(path, path + '.1')
    w.wait_written(115000)
    w.reopen()
    w.wait_written(140000)
    w.pause()
    check_prefix(exp, src, w.written, seed)
    w.resume()

    # (d) rotation by copytruncate.
    w.wait_written(160000)
    w.pause()
    exp.wait_value('sshtail_lines_total', w.written, source=src)
    shutil.copy(path, path + '.2')
    with open(path, 'r+') as f:
        f.truncate(0)
    w.resume()
    w.wait_written(190000)
    w.pause()
    check_prefix(exp, src, w.written, seed)
    assert exp.value('sshtail_rotations_total', source=src) == 2

    # (e) the exporter restarts; lines written while it is down count once.
    counted_first = w.written
    assert exp.stop() == 0
    w.resume()
    w.wait_written(210000)
    exp2 = harness.Exporter(args, d, name='exp2')
    w.finish()
    exp2.wait_value('sshtail_lines_total', len(lines) - counted_first, source=src)
    _, first = harness.generate(counted_first, 'timed', seed)
    harness.check_truth(exp2.metrics(), harness.truth_minus(truth, first), src)
    assert exp2.stop() == 0


def test_rotation_while_disconnected_reads_the_old_file_to_its_end():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    path = os.path.join(d, 'access.log')
    open(path, 'w').close()
    seed = 23
    lines, truth = harness.generate(60000, 'timed', seed)
    exp = harness.Exporter(['--format', 'timed', '--ssh.max-backoff', '1s'] +
                           sshd.exporter_args() + [sshd.url(path)], d)
    exp.wait_value('sshtail_source_up', 1, source='127.0.0.1')
    w = harness.Writer(path, lines, rate=20000)
    w.start()
    w.wait_written(10000)
    sshd.stop()  # the host is unreachable...
    w.wait_written(20000)
    os.rename(path, path + '.1')  # ...while the log is rotated
    w.wait_written(25000)  # lines still going to the old file
    w.reopen()
    w.wait_written(35000)
    sshd.start(sshd.port)
    w.finish()
    check_prefix(exp, '127.0.0.1', len(lines), seed)
    assert exp.value('sshtail_rotations_total', source='127.0.0.1') >= 1
    assert exp.stop() == 0


def test_silent_dead_connection_is_noticed():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    path = os.path.join(d, 'quiet.log')
    open(path, 'w').close()
    exp = harness.Exporter(['--format', 'timed'] + sshd.exporter_args() + [sshd.url(path)], d)
    exp.wait_value('sshtail_source_up', 1, source='127.0.0.1')
    # Freeze the sshd processes serving us: TCP stays up, nothing arrives.
    children = sshd.freeze_sessions()
    assert children
    try:
        start = time.monotonic()
        exp.wait_value('sshtail_ssh_reconnects_total', 1, timeout=30, source='127.0.0.1',
                       reason='stalled')
        assert time.monotonic() - start < 10  # heartbeat 1s: noticed after ~3s
        exp.wait_value('sshtail_source_up', 1, source='127.0.0.1')
        lines, truth = harness.generate(500, 'timed', 2)
        with open(path, 'a') as f:
            f.write('\n'.join(lines) + '\n')
        check_prefix(exp, '127.0.0.1', 500, 2)
    finally:
        sshd.end_frozen(children)
    assert exp.stop() == 0


def test_liveness_survives_the_pacemakers_rotation():
    """Four files on one connection: one remote reader (the pacemaker, the
    first file's: it is opened first) beats every heartbeat, the others
    every third. The first file is rotated, so the pacemaker's reader
    drains and ends; the new file's reader takes the beat over, and a
    frozen connection is still noticed within about three heartbeats (9
    without the handover). Counts stay exact throughout."""
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    paths = [os.path.join(d, '%d.log' % k) for k in range(4)]
    for p in paths:
        open(p, 'w').close()
    exp = harness.Exporter(['--format', 'timed', '--ssh.files-per-connection', '4'] +
                           sshd.exporter_args() + [sshd.url(p) for p in paths], d)
    exp.wait_value('sshtail_source_up', 4)
    lines = [harness.generate(300, 'timed', 10 + k)[0] for k in range(4)]

    def write(part):
        for k, p in enumerate(paths):
            with open(p, 'a') as f:
                f.write('\n'.join(lines[k][part * 100:(part + 1) * 100]) + '\n')
    write(0)
    exp.wait_value('sshtail_lines_total', 400)
    os.rename(paths[0], paths[0] + '.1')
    open(paths[0], 'w').close()
    write(1)
    exp.wait_value('sshtail_lines_total', 800)
    exp.wait_value('sshtail_rotations_total', 1)

    def tails():  # remote readers under this sshd: one per channel
        kids, todo, n = {}, [sshd.proc.pid], 0
        for st in filter(str.isdigit, os.listdir('/proc')):
            try:
                with open('/proc/%s/stat' % st) as f:
                    fields = f.read().rsplit(')', 1)
                kids.setdefault(int(fields[1].split()[1]), []).append(
                    (int(st), fields[0].split('(', 1)[1]))
            except (FileNotFoundError, ValueError, IndexError):
                pass
        while todo:
            for pid, comm in kids.get(todo.pop(), []):
                n += comm == 'tail'
                todo.append(pid)
        return n
    harness.wait_for(lambda: tails() == 4, 30, 0.1, "the rotated file's reader to end")
    children = sshd.freeze_sessions()
    assert children
    try:
        start = time.monotonic()
        harness.wait_for(lambda: exp.value('sshtail_ssh_reconnects_total', reason='stalled') >= 1,
                         30, 0.05, 'a stalled reconnect')
        took = time.monotonic() - start
        print('  frozen after the rotation: noticed in %.1fs' % took)
        assert took < 7, took
    finally:
        sshd.end_frozen(children)
    exp.wait_value('sshtail_source_up', 4)
    write(2)
    for k, p in enumerate(paths):
        check_prefix(exp, '127.0.0.1:' + p, 300, 10 + k)
    assert exp.stop() == 0


def test_host_keys_strict():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    path = os.path.join(d, 'a.log')
    local = os.path.join(d, 'local.log')
    for p in (path, local):
        open(p, 'w').close()
    base = ['--ssh.identity-file', sshd.key, '--ssh.config', 'none',
            '--ssh.heartbeat-interval', '1s', '--ssh.max-backoff', '2s']

    # Unknown host key: refused, the source stays down, the rest is served.
    empty = os.path.join(d, 'known_hosts_empty')
    open(empty, 'w').close()
    exp = harness.Exporter(base + ['--ssh.known-hosts', empty, sshd.url(path), local], d,
                           name='unknown')
    exp.wait_value('sshtail_ssh_reconnects_total', 1, source='127.0.0.1',
                   reason='hostkey_unknown')
    lines, _ = harness.generate(100, 'timed', 1)
    with open(local, 'a') as f:
        f.write('\n'.join(lines) + '\n')
    exp.wait_value('sshtail_lines_total', 100, source=local)
    assert exp.value('sshtail_source_up', source='127.0.0.1') == 0
    assert exp.get('/-/healthy')[0] == 200
    assert exp.stop() == 0
    assert os.path.getsize(empty) == 0  # nothing was recorded

    # Changed host key: refused even with --ssh.accept-new-host-keys.
    other = os.path.join(d, 'other_key')
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', other], check=True)
    changed = os.path.join(d, 'known_hosts_changed')
    with open(changed, 'w') as f:
        f.write(sshd.host_key_line(other + '.pub'))
    before = open(changed).read()
    exp = harness.Exporter(base + ['--ssh.known-hosts', changed, '--ssh.accept-new-host-keys',
                                   sshd.url(path)], d, name='changed')
    exp.wait_value('sshtail_ssh_reconnects_total', 1, source='127.0.0.1',
                   reason='hostkey_changed')
    assert exp.value('sshtail_source_up', source='127.0.0.1') == 0
    assert exp.stop() == 0
    assert open(changed).read() == before

    # Accept-new records an unknown key (like OpenSSH's accept-new) and works.
    fresh = os.path.join(d, 'known_hosts_fresh')
    exp = harness.Exporter(base + ['--ssh.known-hosts', fresh, '--ssh.accept-new-host-keys',
                                   sshd.url(path)], d, name='acceptnew')
    exp.wait_value('sshtail_source_up', 1, source='127.0.0.1')
    with open(path, 'a') as f:
        f.write('\n'.join(lines) + '\n')
    exp.wait_value('sshtail_lines_total', 100, source='127.0.0.1')
    assert exp.stop() == 0
    with open(sshd.host_key + '.pub') as f:
        assert f.read().split()[1] in open(fresh).read()


def test_wrong_key_dns_refused_missing_reasons():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    wrong = os.path.join(d, 'wrong_key')
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', wrong], check=True)
    closed_port = harness.free_port()
    sources = [
        'ssh://%s@127.0.0.1:%d/tmp/x.log' % (sshd.user, sshd.port),
    ]
    exp = harness.Exporter(['--ssh.identity-file', wrong, '--ssh.known-hosts', sshd.known_hosts,
                            '--ssh.config', 'none', '--ssh.max-backoff', '2s'] + sources, d,
                           name='wrongkey', env={'SSH_AUTH_SOCK': ''})
    exp.wait_value('sshtail_ssh_reconnects_total', 1, source='127.0.0.1', reason='auth')
    assert exp.stop() == 0

    missing = os.path.join(d, 'not-yet.log')
    srcs = [sshd.url(missing),
            'ssh://nonexistent-host.invalid/var/log/x.log',
            'ssh://127.0.0.1:%d/var/log/x.log' % closed_port]
    exp = harness.Exporter(['--format', 'timed'] + sshd.exporter_args() +
                           ['--ssh.max-backoff', '2s'] + srcs, d, name='reasons')
    exp.wait_value('sshtail_ssh_reconnects_total', 1, source='nonexistent-host.invalid',
                   reason='dns')
    names = [s for s in ('127.0.0.1:' + missing, '127.0.0.1:/var/log/x.log')]
    exp.wait_value('sshtail_ssh_reconnects_total', 1, source=names[0], reason='file_missing')
    harness.wait_for(lambda: exp.value('sshtail_ssh_reconnects_total', source=names[1],
                                       reason='refused') >= 1, 30, what='refused reason')
    # The missing file appears: it is read from its start.
    lines, truth = harness.generate(300, 'timed', 6)
    with open(missing, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    exp.wait_value('sshtail_lines_total', 300, source=names[0])
    harness.check_truth(exp.metrics(), truth, names[0])
    assert exp.stop() == 0


def test_path_injection_reads_the_literal_file():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    marker = 'sshtail-pwned-%d' % os.getpid()
    home = os.path.expanduser('~' + sshd.user)
    # Runs in the remote shell's directory (the home) if ever executed.
    name = "we ird;'q\"$(touch %s)`touch %s`|&$HOME;touch %s.log" % (marker, marker, marker)
    path = os.path.join(d, name)
    lines, truth = harness.generate(400, 'timed', 9)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    from urllib.parse import quote
    url = 'ssh://%s@127.0.0.1:%d%s' % (sshd.user, sshd.port, quote(path))
    r = harness.run_once(['--format', 'timed'] + sshd.exporter_args() + [url])
    assert r.returncode == 0, r.stderr
    harness.check_truth(promtext.parse(r.stdout), truth, '127.0.0.1')
    # A name that does not exist is reported missing, never run.
    url2 = 'ssh://%s@127.0.0.1:%d%s' % (sshd.user, sshd.port,
                                        quote(os.path.join(d, '$(touch %s)' % marker)))
    r = harness.run_once(sshd.exporter_args() + [url2])
    assert r.returncode == 1, r.stderr  # metrics printed, the source unread
    for where in (home, d, '/'):
        assert not os.path.exists(os.path.join(where, marker)), where


def test_fifty_sources_every_line():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    paths = [os.path.join(d, 'f%02d.log' % i) for i in range(50)]
    for p in paths:
        open(p, 'w').close()
    exp = harness.Exporter(['--format', 'timed'] + sshd.exporter_args() +
                           [sshd.url(p) for p in paths], d)
    names = ['127.0.0.1:' + p for p in paths]
    harness.wait_for(lambda: exp.value('sshtail_source_up') == 50, 60, 0.1, 'all 50 sources up')
    truths = {}
    for i, p in enumerate(paths):
        lines, truths[p] = harness.generate(2000 + i, 'timed', 100 + i)
        with open(p, 'a') as f:
            f.write('\n'.join(lines) + '\n')
    exp.wait_value('sshtail_lines_total', sum(t['lines'] for t in truths.values()), timeout=120)
    m = exp.metrics()
    for p, n in zip(paths, names):
        harness.check_truth(m, truths[p], n)
    assert exp.stop() == 0


def test_connections_to_one_host_wait_their_turn():
    """16 connections to one sshd that drops any beyond 4 unauthenticated
    (MaxStartups): at most 2 handshakes are in flight, none is dropped."""
    d = harness.tmpdir()
    sshd = harness.Sshd(d, stock_limits=True, extra_config='MaxStartups 4')
    paths = [os.path.join(d, 'c%02d.log' % i) for i in range(16)]
    truths = {}
    for i, p in enumerate(paths):
        lines, truths[p] = harness.generate(300 + i, 'timed', 200 + i)
        with open(p, 'w') as f:
            f.write('\n'.join(lines) + '\n')
    exp = harness.Exporter(['--format', 'timed', '--start-at', 'beginning',
                            '--ssh.files-per-connection', '1',
                            '--ssh.max-handshakes-per-host', '2'] +
                           sshd.exporter_args() + [sshd.url(p) for p in paths], d)
    harness.wait_for(lambda: exp.value('sshtail_source_up') == 16, 60, 0.1, 'all 16 up')
    exp.wait_value('sshtail_lines_total', sum(t['lines'] for t in truths.values()))
    m = exp.metrics()
    for p in paths:
        harness.check_truth(m, truths[p], '127.0.0.1:' + p)
    assert promtext.total(m, 'sshtail_ssh_reconnects_total') == 0
    assert exp.stop() == 0


def test_a_host_back_brings_all_its_connections_back():
    """Eight connections to one host wait out backoffs of 8-16 s while it
    is down. When it is back, a new source's connection gets in at once,
    and that wakes the eight: all are up within 6 s, not at the end of
    each one's backoff (without the wake-up, all eight within 6 s happens
    about once in 250 runs)."""
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    paths = [os.path.join(d, 'b%d.log' % i) for i in range(9)]
    for p in paths:
        open(p, 'w').close()
    conf = os.path.join(d, 'config.yml')

    def write_conf(n):
        with open(conf + '.tmp', 'w') as f:
            f.write('sources:\n' + ''.join('  - %s\n' % sshd.url(p) for p in paths[:n]))
        os.rename(conf + '.tmp', conf)
    write_conf(8)
    exp = harness.Exporter(['--format', 'timed', '--ssh.files-per-connection', '1',
                            '--ssh.max-backoff', '16s', '--config', conf] +
                           sshd.exporter_args(), d)
    src = lambda p: '127.0.0.1:' + p  # noqa: E731
    harness.wait_for(lambda: exp.value('sshtail_source_up') == 8, 30, 0.1, 'all 8 up')
    port = sshd.port
    sshd.stop()
    # Five failures each: the next waits are drawn from 8-16 s.
    harness.wait_for(lambda: all(exp.value("sshtail_ssh_reconnects_total", source=src(p)) >= 5
                                 for p in paths[:8]), 60, 0.2, 'backoffs of 8 s and more')
    sshd.start(port)
    back = time.monotonic()
    write_conf(9)
    exp.proc.send_signal(signal.SIGHUP)
    harness.wait_for(lambda: exp.value('sshtail_source_up') == 9, 30, 0.05, 'all 9 up')
    took = time.monotonic() - back
    print('  all up %.1f s after the host was back' % took)
    assert took < 6, 'all up %.1f s after the host was back' % took
    lines, truth = harness.generate(100, 'timed', seed=124)
    with open(paths[3], 'a') as f:
        f.write('\n'.join(lines) + '\n')
    check_prefix(exp, src(paths[3]), 100, 124)
    assert exp.stop() == 0


def test_compression_only_when_asked():
    """--ssh.compression: the bytes on the wire, counted by a relay in front
    of sshd, are a fraction of the log's; without it, more than the log.
    Exact counts both ways."""
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    path = os.path.join(d, 'access.log')
    lines, truth = harness.generate(20000, 'timed', seed=123)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    size = os.path.getsize(path)
    r = relay.Relay(sshd.port)
    sshd.trust_port(r.port)
    url = 'ssh://%s@127.0.0.1:%d%s' % (sshd.user, r.port, path)
    wire = {}
    for name, flag in (('plain', []), ('compressed', ['--ssh.compression'])):
        before = r.down_bytes
        res = harness.run_once(['--format', 'timed'] + flag + sshd.exporter_args() + [url])
        assert res.returncode == 0, res.stderr
        harness.check_truth(promtext.parse(res.stdout), truth, '127.0.0.1')
        wire[name] = r.down_bytes - before
    r.stop()
    assert wire['plain'] > size, (wire, size)
    assert wire['compressed'] < size / 3, (wire, size)


def test_ssh_config_alias_and_agent():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    path = os.path.join(d, 'a.log')
    lines, truth = harness.generate(700, 'timed', 31)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    # ~/.ssh/config style: the alias gives host, port, user and key.
    cfg = os.path.join(d, 'ssh_config')
    with open(cfg, 'w') as f:
        f.write('Host webalias\n  HostName 127.0.0.1\n  Port %d\n  User %s\n'
                '  IdentityFile %s\n' % (sshd.port, sshd.user, sshd.key))
    r = harness.run_once(['--format', 'timed', '--ssh.config', cfg, '--ssh.known-hosts',
                          sshd.known_hosts, 'ssh://webalias' + path])
    assert r.returncode == 0, r.stderr
    harness.check_truth(promtext.parse(r.stdout), truth, 'webalias')

    # ProxyJump through a jump host (the same sshd here): libssh runs the
    # OpenSSH client for the hop, with the same config file.
    with open(cfg, 'a') as f:
        f.write('Host behindjump\n  HostName 127.0.0.1\n  Port %d\n  User %s\n'
                '  IdentityFile %s\n  ProxyJump webalias\n'
                'Host *\n  UserKnownHostsFile %s\n' % (sshd.port, sshd.user, sshd.key,
                                                     sshd.known_hosts))
    r = harness.run_once(['--format', 'timed', '--ssh.config', cfg, '--ssh.known-hosts',
                          sshd.known_hosts, 'ssh://behindjump' + path])
    assert r.returncode == 0, r.stderr
    harness.check_truth(promtext.parse(r.stdout), truth, 'behindjump')

    # ssh-agent: no key file given at all.
    sock = os.path.join(d, 'agent.sock')
    agent = subprocess.Popen(['ssh-agent', '-D', '-a', sock], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    harness._cleanups.append(agent.kill)
    harness.wait_for(lambda: os.path.exists(sock), 10, what='ssh-agent')
    env = dict(os.environ, SSH_AUTH_SOCK=sock)
    subprocess.run(['ssh-add', sshd.key], env=env, check=True, capture_output=True)
    r = subprocess.run([harness.BIN, '--once', '--format', 'timed', '--ssh.config', 'none',
                        '--ssh.known-hosts', sshd.known_hosts, sshd.url(path)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    harness.check_truth(promtext.parse(r.stdout), truth, '127.0.0.1')


def test_sudo_for_root_only_logs():
    if os.geteuid() != 0:
        print('skipped: needs root to set up a root-only file and sudoers')
        return
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    lines, truth = harness.generate(500, 'timed', 41)
    paths = [os.path.join(d, 'secret%d.log' % i) for i in (1, 2)]
    for path in paths:
        with open(path, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        os.chmod(path, 0o600)
    cfg = os.path.join(d, 'config.yml')
    with open(cfg, 'w') as f:
        f.write('sources:\n  - url: %s\n    name: plain\n  - url: %s\n    name: su\n'
                '    sudo: true\n' % (sshd.url(paths[0]), sshd.url(paths[1])))
    sudoers = '/etc/sudoers.d/sshtail-it-test'
    harness._cleanups.append(lambda: os.path.exists(sudoers) and os.unlink(sudoers))
    args = ['--format', 'timed', '--config', cfg, '--ssh.max-backoff', '2s',
            '--start-at', 'beginning'] + sshd.exporter_args()

    # No sudo rights: the plain source cannot read, the sudo one is refused.
    exp = harness.Exporter(args, d, name='nosudo')
    exp.wait_value('sshtail_ssh_reconnects_total', 1, source='plain', reason='permission')
    exp.wait_value('sshtail_ssh_reconnects_total', 1, source='su', reason='sudo')
    assert exp.value('sshtail_source_up') == 0
    assert exp.stop() == 0

    with open(sudoers, 'w') as f:
        f.write('%s ALL=(root) NOPASSWD: ALL\n' % sshd.user)
    os.chmod(sudoers, 0o440)
    exp = harness.Exporter(args, d, name='sudo')
    exp.wait_value('sshtail_lines_total', 500, source='su')
    harness.check_truth(exp.metrics(), truth, 'su')
    assert exp.value('sshtail_source_up', source='plain') == 0
    assert exp.stop() == 0


if __name__ == '__main__':
    harness.main([test_faults_mid_stream_exact,
                  test_rotation_while_disconnected_reads_the_old_file_to_its_end,
                  test_silent_dead_connection_is_noticed,
                  test_liveness_survives_the_pacemakers_rotation,
                  test_host_keys_strict, test_wrong_key_dns_refused_missing_reasons,
                  test_path_injection_reads_the_literal_file, test_fifty_sources_every_line,
                  test_connections_to_one_host_wait_their_turn,
                  test_a_host_back_brings_all_its_connections_back,
                  test_compression_only_when_asked,
                  test_ssh_config_alias_and_agent, test_sudo_for_root_only_logs])
