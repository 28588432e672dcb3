"""SSH sources at the edges (issue 9): --start-at end on a small remote file,
a hostile remote host that streams garbage, copytruncate-and-regrow while
stopped or disconnected, ~/.ssh/config trying to weaken the host-key check,
a truncation inside an over-long line, --once on a black-holed connection,
shutdown with a frozen ProxyJump host, and remote processes outliving their
channel. Real sshd on loopback; exact counts against the generator's truth.

Run one test: python3 test_ssh_hostile.py test_name [...]"""
import os
import shutil
import signal
import subprocess
import sys
import time

import harness
import promtext

SRC = '127.0.0.1'


def append_lines(path, lines):
    with open(path, 'a') as f:
        f.write('\n'.join(lines) + '\n')


def rss_kib(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise AssertionError('no VmRSS for %d' % pid)


def forced_command(sshd, command):
    """Every login to `sshd` runs `command` instead of what the client asked."""
    with open(sshd.key + '.pub') as f:
        pub = f.read().strip()
    with open(sshd.authorized, 'w') as f:
        f.write('command="%s" %s\n' % (command.replace('"', '\\"'), pub))


def user_processes(sshd):
    """(pid, start time) of the test user's processes under this sshd."""
    import pwd
    uid = pwd.getpwnam(sshd.user).pw_uid
    out = set()
    for pid in sshd.session_pids():
        try:
            if os.stat('/proc/%d' % pid).st_uid != uid:
                continue
            with open('/proc/%d/stat' % pid) as f:
                out.add((pid, f.read().rsplit(')', 1)[1].split()[19]))
        except FileNotFoundError:
            pass
    return out


def alive(procs):
    left = set()
    for pid, start in procs:
        try:
            with open('/proc/%d/stat' % pid) as f:
                if f.read().rsplit(')', 1)[1].split()[19] == start:
                    left.add(pid)
        except FileNotFoundError:
            pass
    return left


# ---------------------------------------------------------------- defect 2

def test_start_at_end_skips_a_small_existing_remote_file():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    path = os.path.join(d, 'access.log')
    old, _ = harness.generate(120, 'timed', 51)  # well under 64 KiB
    append_lines(path, old)
    assert os.path.getsize(path) < 64 * 1024
    exp = harness.Exporter(['--format', 'timed'] + sshd.exporter_args() + [sshd.url(path)], d)
    exp.wait_value('sshtail_source_up', 1, source=SRC)
    new, truth = harness.generate(300, 'timed', 52)
    append_lines(path, new)
    exp.wait_value('sshtail_lines_total', 300, timeout=20, source=SRC)
    harness.check_truth(exp.metrics(), truth, SRC)
    assert exp.value('sshtail_source_offset_bytes', source=SRC) == os.path.getsize(path)
    assert exp.stop() == 0


# ---------------------------------------------------------------- defect 5

def test_hostile_remote_cannot_grow_memory():
    d = harness.tmpdir()
    # One host streams stderr with no newline forever, one streams stdout
    # lines that never contain the BEGIN line.
    err_host = harness.Sshd(os.path.join(d, 'err'))
    out_host = harness.Sshd(os.path.join(d, 'out'))
    forced_command(err_host, 'exec cat /dev/zero >&2')
    forced_command(out_host, 'exec yes garbage-without-begin')
    local = os.path.join(d, 'local.log')
    open(local, 'w').close()
    kh = os.path.join(d, 'known_hosts')
    with open(kh, 'w') as f:
        f.write(err_host.host_key_line() + out_host.host_key_line())
    args = ['--format', 'timed', '--ssh.config', 'none', '--ssh.known-hosts', kh,
            '--ssh.identity-file', err_host.key, '--ssh.identity-file', out_host.key,
            '--ssh.heartbeat-interval', '1s', '--ssh.max-backoff', '1s',
            err_host.url('/var/log/x.log'), out_host.url('/var/log/y.log'), local]
    exp = harness.Exporter(args, d)
    start = time.monotonic()
    peak = 0
    samples = []
    while time.monotonic() - start < 12:
        r = rss_kib(exp.proc.pid)
        peak = max(peak, r)
        samples.append(r)
        time.sleep(0.25)  # sampling period, not synchronisation
    print('  RSS KiB: first %d, peak %d, last %d' % (samples[0], peak, samples[-1]))
    assert peak < 64 * 1024, 'RSS peaked at %d KiB' % peak
    for h in (err_host, out_host):
        src = '127.0.0.1:' + ('/var/log/x.log' if h is err_host else '/var/log/y.log')
        assert exp.value('sshtail_ssh_reconnects_total', source=src, reason='protocol') >= 1
        assert exp.value('sshtail_source_up', source=src) == 0
    # The other sources keep working.
    lines, truth = harness.generate(200, 'timed', 53)
    append_lines(local, lines)
    exp.wait_value('sshtail_lines_total', 200, timeout=20, source=local)
    assert exp.stop() == 0


# ---------------------------------------------------------------- defect 6

def test_copytruncate_and_regrow_while_stopped_or_disconnected():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    path = os.path.join(d, 'a.log')
    pos = os.path.join(d, 'positions.yml')
    open(path, 'w').close()
    args = ['--format', 'timed', '--positions-file', pos, '--positions.sync-interval', '200ms',
            '--ssh.max-backoff', '1s'] + sshd.exporter_args() + [sshd.url(path)]
    exp = harness.Exporter(args, d, name='exp1')
    exp.wait_value('sshtail_source_up', 1, source=SRC)
    first, _ = harness.generate(1000, 'timed', 61)
    append_lines(path, first)
    exp.wait_value('sshtail_lines_total', 1000, timeout=20, source=SRC)
    assert exp.stop() == 0
    old_size = os.path.getsize(path)

    # Stopped: lines after the offset, copytruncate, then more bytes than
    # before. The lines written before the copy are read from the copy.
    second, truth2 = harness.generate(1300, 'timed', 62)
    append_lines(path, second[:100])
    shutil.copy(path, path + '.1')
    with open(path, 'r+') as f:
        f.truncate(0)
    append_lines(path, second[100:])
    assert os.path.getsize(path) > old_size
    exp2 = harness.Exporter(args, d, name='exp2')
    exp2.wait_value('sshtail_lines_total', 1300, timeout=20, source=SRC)
    harness.check_truth(exp2.metrics(), truth2, SRC)
    assert exp2.value('sshtail_source_offset_bytes', source=SRC) == os.path.getsize(path)

    # Disconnected: the same while the host is unreachable.
    size2 = os.path.getsize(path)
    sshd.stop()
    sshd.kill_connections()  # a session process can outlive the listener
    exp2.wait_value('sshtail_source_up', 0, timeout=20, source=SRC)
    rest2, _ = harness.generate(50, 'timed', 65)
    append_lines(path, rest2)
    shutil.copy(path, path + '.2')
    with open(path, 'r+') as f:
        f.truncate(0)
    third, truth3 = harness.generate(1400, 'timed', 63)
    append_lines(path, third)
    assert os.path.getsize(path) > size2
    sshd.start(sshd.port)
    exp2.wait_value('sshtail_lines_total', 2750, timeout=30, source=SRC)
    m = exp2.metrics()
    assert promtext.total(m, 'nginx_http_requests_total', source=SRC) == 2750
    assert exp2.value('sshtail_source_offset_bytes', source=SRC) == os.path.getsize(path)
    assert exp2.stop() == 0


# ---------------------------------------------------------------- defect 8

def test_ssh_config_cannot_weaken_host_key_checking():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    path = os.path.join(d, 'a.log')
    lines, truth = harness.generate(50, 'timed', 71)
    append_lines(path, lines)
    other = os.path.join(d, 'other_key')
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', other], check=True)
    wrong = os.path.join(d, 'known_hosts_wrong')
    with open(wrong, 'w') as f:
        f.write(sshd.host_key_line(other + '.pub'))
    right = os.path.join(d, 'known_hosts_right')  # the real key, for "global"
    with open(right, 'w') as f:
        f.write(sshd.host_key_line())
    empty = os.path.join(d, 'known_hosts_empty')
    open(empty, 'w').close()
    tries = {
        'user_devnull': 'UserKnownHostsFile /dev/null\n',
        'user_right': 'UserKnownHostsFile %s\n' % right,
        'strict_no': 'StrictHostKeyChecking no\n',
        'global_right': 'GlobalKnownHostsFile %s\n' % right,
        'all': 'UserKnownHostsFile /dev/null\nGlobalKnownHostsFile %s\n'
               'StrictHostKeyChecking no\n' % right,
    }
    url = 'ssh://%s@127.0.0.1:%d%s' % (sshd.user, sshd.port, path)

    def run(name, body, known_hosts, accept_new):
        cfg = os.path.join(d, 'ssh_config_' + name)
        with open(cfg, 'w') as f:
            f.write('Host *\n' + ''.join('  ' + l + '\n' for l in body.splitlines()))
        args = ['--format', 'timed', '--ssh.config', cfg, '--ssh.known-hosts', known_hosts,
                '--ssh.identity-file', sshd.key]
        if accept_new:
            args.append('--ssh.accept-new-host-keys')
        return harness.run_once(args + [url], timeout=60)

    for name, body in tries.items():
        # A key that contradicts the given known_hosts: always refused.
        before = open(wrong).read()
        r = run(name, body, wrong, True)
        m = promtext.parse(r.stdout)
        assert r.returncode == 1, (name, r.returncode, r.stderr)
        assert promtext.total(m, 'sshtail_ssh_reconnects_total', source=SRC,
                              reason='hostkey_changed') == 1, (name, r.stdout)
        assert promtext.total(m, 'sshtail_lines_total', source=SRC) == 0, name
        assert open(wrong).read() == before, name
        # Unknown without --ssh.accept-new-host-keys: refused, nothing recorded.
        r = run(name, body, empty, False)
        m = promtext.parse(r.stdout)
        assert r.returncode == 1, (name, r.returncode, r.stderr)
        assert promtext.total(m, 'sshtail_ssh_reconnects_total', source=SRC,
                              reason='hostkey_unknown') == 1, (name, r.stdout)
        assert os.path.getsize(empty) == 0, name
    # The flag wins over the file: the right known_hosts works whatever
    # UserKnownHostsFile says.
    r = run('flag_wins', 'UserKnownHostsFile %s\n' % wrong, sshd.known_hosts, False)
    assert r.returncode == 0, r.stderr
    harness.check_truth(promtext.parse(r.stdout), truth, SRC)


# ------------------------------------------ truncation inside an over-long line

def tail_read_offset(sshd, path):
    """Bytes the remote tail has read from `path` (from /proc fdinfo)."""
    real = os.path.realpath(path)
    for pid in sshd.session_pids():
        try:
            with open('/proc/%d/comm' % pid) as f:
                if f.read().strip() != 'tail':
                    continue
            pos = []
            for fd in os.listdir('/proc/%d/fd' % pid):
                if os.readlink('/proc/%d/fd/%s' % (pid, fd)) == real:
                    with open('/proc/%d/fdinfo/%s' % (pid, fd)) as f:
                        pos += [int(l.split()[1]) for l in f if l.startswith('pos:')]
            if pos:
                return max(pos)
        except (FileNotFoundError, PermissionError):
            pass
    return None


def short_lines(n, start=0):
    return ['10.0.0.%d - - [10/Oct/2023:13:55:36 +0000] "GET /%d HTTP/1.1" 200 %d "-" "t"'
            % (i % 250, i, i) for i in range(start, start + n)]


def test_truncation_inside_an_over_long_line_is_seen():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    path = os.path.join(d, 'a.log')
    open(path, 'w').close()
    # 300: shorter than tail's truncation notice itself (the nonce path).
    exp = harness.Exporter(['--max-line-bytes', '300'] + sshd.exporter_args() +
                           [sshd.url(path)], d)
    exp.wait_value('sshtail_source_up', 1, source=SRC)
    append_lines(path, short_lines(100))
    exp.wait_value('sshtail_lines_total', 100, timeout=20, source=SRC)

    # (a) a plain truncation: the notice is longer than --max-line-bytes.
    with open(path, 'r+') as f:
        f.truncate(0)
    harness.wait_for(lambda: exp.value('sshtail_rotations_total', source=SRC) == 1, 20,
                     what='truncation seen')
    append_lines(path, short_lines(50, 100))
    exp.wait_value('sshtail_lines_total', 150, timeout=20, source=SRC)
    harness.wait_for(lambda: exp.value('sshtail_source_offset_bytes', source=SRC) ==
                     os.path.getsize(path), 20, what='offset at the end of the file')

    # (b) truncated while an over-long line is unfinished.
    with open(path, 'a') as f:
        f.write('x' * 5000)  # no newline yet
    size = os.path.getsize(path)
    harness.wait_for(lambda: tail_read_offset(sshd, path) == size, 20,
                     what='remote tail to read the long partial line')
    with open(path, 'r+') as f:
        f.truncate(0)
    harness.wait_for(lambda: exp.value('sshtail_rotations_total', source=SRC) == 2, 20,
                     what='second truncation seen')
    append_lines(path, short_lines(70, 200))
    exp.wait_value('sshtail_lines_total', 220, timeout=20, source=SRC)
    harness.wait_for(lambda: exp.value('sshtail_source_offset_bytes', source=SRC) ==
                     os.path.getsize(path), 20, what='offset at the end of the file')
    assert exp.value('sshtail_lines_too_long_total', source=SRC) == 0
    # A reconnect resumes at that offset: nothing lost, nothing twice.
    sshd.kill_connections()
    exp.wait_value('sshtail_ssh_reconnects_total', 1, timeout=20, source=SRC,
                   reason='disconnect')
    exp.wait_value('sshtail_source_up', 1, source=SRC)
    append_lines(path, short_lines(30, 300))
    exp.wait_value('sshtail_lines_total', 250, timeout=20, source=SRC)
    assert exp.stop() == 0


# ---------------------------------------------------- --once, black-holed

def test_once_on_a_black_holed_connection_fails():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    path = os.path.join(d, 'a.log')
    append_lines(path, short_lines(10))
    # The remote side takes a while to start: time to freeze the session.
    forced_command(sshd, 'sleep 3; exec sh -s')
    cmd = [harness.BIN, '--once', '--ssh.connect-timeout', '2s'] + sshd.exporter_args() + \
        [sshd.url(path)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    harness._cleanups.append(lambda: p.poll() is None and p.kill())

    def sleeping():
        for pid in sshd.session_pids():
            try:
                with open('/proc/%d/comm' % pid) as f:
                    if f.read().strip() == 'sleep':
                        return True
            except FileNotFoundError:
                pass
        return False
    harness.wait_for(sleeping, 20, what='the remote side to start')
    assert sshd.freeze_sessions()
    frozen = time.monotonic()
    try:
        out, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError('--once still running 20s after the connection froze')
    took = time.monotonic() - frozen
    print('  --once ended %.1fs after the freeze' % took)
    assert p.returncode == 1, (p.returncode, err)
    m = promtext.parse(out)
    assert promtext.total(m, 'sshtail_ssh_reconnects_total', source=SRC, reason='stalled') == 1
    assert took < 10


# ------------------------------------------- ProxyJump: prompt shutdown

def test_shutdown_with_a_frozen_jump_host_is_prompt():
    d = harness.tmpdir()
    target = harness.Sshd(os.path.join(d, 'target'))
    jump = harness.Sshd(os.path.join(d, 'jump'))
    path = os.path.join(d, 'a.log')
    direct = os.path.join(d, 'b.log')
    for p in (path, direct):
        open(p, 'w').close()
    kh = os.path.join(d, 'known_hosts')
    with open(kh, 'w') as f:
        f.write(target.host_key_line() + jump.host_key_line())
    cfg = os.path.join(d, 'ssh_config')
    with open(cfg, 'w') as f:
        f.write('Host jumphost\n  HostName 127.0.0.1\n  Port %d\n  User %s\n  IdentityFile %s\n'
                'Host behind\n  HostName 127.0.0.1\n  Port %d\n  User %s\n  IdentityFile %s\n'
                '  ProxyJump jumphost\n'
                'Host *\n  UserKnownHostsFile %s\n'
                % (jump.port, jump.user, jump.key, target.port, target.user, target.key, kh))
    os.kill(jump.proc.pid, signal.SIGSTOP)  # accepts TCP, never answers
    harness._cleanups.append(lambda: os.kill(jump.proc.pid, signal.SIGCONT))
    pos = os.path.join(d, 'positions.yml')
    exp = harness.Exporter(['--format', 'timed', '--ssh.config', cfg, '--ssh.known-hosts', kh,
                            '--ssh.identity-file', target.key, '--positions-file', pos,
                            '--positions.sync-interval', '1h',
                            'ssh://behind' + path, target.url(direct)], d)
    exp.wait_value('sshtail_source_up', 1, source='127.0.0.1')
    lines, _ = harness.generate(100, 'timed', 81)
    append_lines(direct, lines)
    exp.wait_value('sshtail_lines_total', 100, timeout=20, source='127.0.0.1')

    def hop_running():
        kids = subprocess.run(['pgrep', '-P', str(exp.proc.pid)], capture_output=True,
                              text=True).stdout.split()
        return kids
    harness.wait_for(hop_running, 20, what='the ProxyJump hop to start')
    exp.proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    try:
        rc = exp.proc.wait(10)
    except subprocess.TimeoutExpired:
        raise AssertionError('exporter still running 10s after SIGTERM')
    print('  exited %.1fs after SIGTERM' % (time.monotonic() - start))
    assert rc == 0
    with open(pos) as f:
        saved = f.read()
    assert direct in saved, saved
    assert 'offset: %d' % os.path.getsize(direct) in saved.replace('"', ''), saved


# ------------------------------------ nothing of ours outlives its channel

def test_remote_processes_end_with_the_channel():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    path = os.path.join(d, 'idle.log')
    append_lines(path, short_lines(5))
    exp = harness.Exporter(['--ssh.max-backoff', '1s'] + sshd.exporter_args() +
                           [sshd.url(path)], d)
    exp.wait_value('sshtail_source_up', 1, source=SRC)
    harness.wait_for(lambda: tail_read_offset(sshd, path) is not None, 20,
                     what='remote tail')
    before = user_processes(sshd)
    assert before
    sshd.kill_connections()
    start = time.monotonic()
    harness.wait_for(lambda: not alive(before), 10, 0.1,
                     what='remote processes of the killed connection to end')
    print('  after ss -K: gone in %.1fs' % (time.monotonic() - start))
    exp.wait_value('sshtail_source_up', 1, timeout=20, source=SRC)
    harness.wait_for(lambda: tail_read_offset(sshd, path) is not None, 20,
                     what='remote tail again')
    before = user_processes(sshd)
    exp.proc.kill()
    exp.proc.wait()
    start = time.monotonic()
    harness.wait_for(lambda: not alive(before), 10, 0.1,
                     what='remote processes of the killed exporter to end')
    print('  after SIGKILL: gone in %.1fs' % (time.monotonic() - start))


# ------------------------------------------------- two rotations, one beat

def test_two_rotations_within_one_heartbeat_interval():
    # The path is looked at every second, not once per heartbeat: a file
    # that lives at the path for a couple of seconds between two rotations
    # is read in full. A 30 s heartbeat makes the old design miss it.
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    path = os.path.join(d, 'access.log')
    open(path, 'w').close()
    exp = harness.Exporter(['--format', 'timed'] + sshd.exporter_args('30s') + [sshd.url(path)], d)
    exp.wait_value('sshtail_source_up', 1, source=SRC)
    lines, truth = harness.generate(900, 'timed', 61)
    append_lines(path, lines[:300])
    exp.wait_value('sshtail_lines_total', 300, timeout=20, source=SRC)
    os.rename(path, path + '.1')          # first rotation
    append_lines(path, lines[300:600])    # the middle file
    exp.wait_value('sshtail_lines_total', 600, timeout=8, source=SRC)
    os.rename(path + '.1', path + '.2')   # second rotation, well within 30 s
    os.rename(path, path + '.1')
    append_lines(path, lines[600:])
    exp.wait_value('sshtail_lines_total', 900, timeout=20, source=SRC)
    harness.check_truth(exp.metrics(), truth, SRC)
    assert exp.value('sshtail_rotations_total', source=SRC) == 2
    assert exp.stop() == 0


ALL = [test_start_at_end_skips_a_small_existing_remote_file,
       test_hostile_remote_cannot_grow_memory,
       test_copytruncate_and_regrow_while_stopped_or_disconnected,
       test_ssh_config_cannot_weaken_host_key_checking,
       test_truncation_inside_an_over_long_line_is_seen,
       test_once_on_a_black_holed_connection_fails,
       test_shutdown_with_a_frozen_jump_host_is_prompt,
       test_remote_processes_end_with_the_channel,
       test_two_rotations_within_one_heartbeat_interval]

if __name__ == '__main__':
    want = sys.argv[1:]
    harness.main([t for t in ALL if not want or t.__name__ in want])
