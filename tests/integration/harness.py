"""Test harness: real sshd, nginx, Prometheus and the exporter on loopback.

Everything a test starts lives in a temporary directory and is stopped at
exit. No fixed ports: servers bind port 0 where they can, otherwise a port
that was free a moment ago is used and the start is retried.
"""
import atexit
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import promtext

BIN = os.environ.get('SSHTAIL_BIN', os.path.join(os.path.dirname(__file__), '../../build/sshtail_exporter'))
SOURCE_DIR = os.environ.get('SSHTAIL_SOURCE_DIR', os.path.abspath(os.path.join(os.path.dirname(__file__), '../..')))
GEN = os.environ.get('SSHTAIL_GEN') or next(
    (p for p in (os.path.join(SOURCE_DIR, '../shared/bench/gen_nginx_log.py'),
                 '/work/shared/bench/gen_nginx_log.py') if os.path.exists(p)),
    os.path.join(SOURCE_DIR, '../shared/bench/gen_nginx_log.py'))

_cleanups = []


def _cleanup_all():
    while _cleanups:
        fn = _cleanups.pop()
        try:
            fn()
        except Exception as e:  # keep cleaning
            print('cleanup error: %s' % e, file=sys.stderr)


atexit.register(_cleanup_all)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))


def tmpdir(prefix='sshtail-test-'):
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)
    _cleanups.append(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


def stop_process(proc, timeout=10):
    """SIGTERM, then SIGKILL if `proc` has not exited within `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def write_file(directory, name, text):
    """Writes `text` to directory/name and returns the path."""
    path = os.path.join(directory, name)
    with open(path, 'w') as f:
        f.write(text)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for(pred, timeout=30.0, interval=0.02, what='condition'):
    """Polls `pred` until it returns a true value; fails after `timeout`."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = pred()
            if last:
                return last
        except Exception as e:  # e.g. connection refused while starting
            last = e
        time.sleep(interval)
    raise AssertionError('timed out after %.0fs waiting for %s (last: %r)' % (timeout, what, last))


def port_open(port, host='127.0.0.1'):
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- log lines

def _gen_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location('gen_nginx_log', GEN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def generate(n, fmt='timed', seed=1):
    """Returns (lines, truth) from the shared generator, deterministic."""
    mod = _gen_module()
    lines = []
    truth = None
    for line, truth in mod.make_lines(n, fmt, seed):
        lines.append(line)
    truth = json.loads(json.dumps(truth))
    truth['request_time_sum'] = round(truth['request_time_sum'], 3)
    return lines, truth


def generate_file(path, n, fmt='timed', seed=1):
    """Writes n generator lines with the generator's own CLI; returns truth."""
    truth_path = path + '.truth.json'
    subprocess.run([sys.executable, GEN, '--lines', str(n), '--format', fmt, '--seed', str(seed),
                    '--out', path, '--truth', truth_path], check=True)
    with open(truth_path) as f:
        return json.load(f)


def truth_minus(a, b):
    """Truth of the lines in `a` but not in its prefix `b` (same seed)."""
    out = {'lines': a['lines'] - b['lines'],
           'body_bytes_sum': a['body_bytes_sum'] - b['body_bytes_sum'],
           'request_time_sum': round(a['request_time_sum'] - b['request_time_sum'], 3),
           'by_method_status': {}}
    for k, v in a['by_method_status'].items():
        left = v - b['by_method_status'].get(k, 0)
        if left:
            out['by_method_status'][k] = left
    return out


class Writer(threading.Thread):
    """Appends lines to a file at a steady rate, like nginx: it keeps its
    file open and reopens the path only when asked (nginx's USR1)."""

    def __init__(self, path, lines, rate=20000, chunk=200):
        super().__init__(daemon=True)
        self.path = path
        self.lines = lines
        self.rate = rate
        self.chunk = chunk
        self.written = 0
        self._reopen = threading.Event()
        self._pause = threading.Event()
        self._paused = threading.Event()
        self._lock = threading.Lock()
        self.error = None

    def run(self):
        try:
            f = open(self.path, 'ab', buffering=0)
            start = time.monotonic()
            i = 0
            while i < len(self.lines):
                if self._pause.is_set():
                    self._paused.set()
                    while self._pause.is_set():
                        time.sleep(0.001)
                    self._paused.clear()
                    start = time.monotonic() - i / self.rate
                if self._reopen.is_set():
                    f.close()
                    f = open(self.path, 'ab', buffering=0)
                    self._reopen.clear()
                part = self.lines[i:i + self.chunk]
                f.write(('\n'.join(part) + '\n').encode())
                i += len(part)
                with self._lock:
                    self.written = i
                ahead = i / self.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            f.close()
        except Exception as e:
            self.error = e

    def reopen(self):
        self._reopen.set()

    def pause(self):
        self._pause.set()
        wait_for(self._paused.is_set, 10, 0.001, 'writer to pause')

    def resume(self):
        self._pause.clear()

    def wait_written(self, n, timeout=60):
        wait_for(lambda: self.written >= n, timeout, 0.005, '%d lines written' % n)

    def finish(self, timeout=120):
        self.join(timeout)
        assert not self.is_alive(), 'writer did not finish'
        assert self.error is None, self.error


# ----------------------------------------------------------------- exporter

class Exporter:
    """The real binary in server mode on 127.0.0.1:<port 0>."""

    def __init__(self, args, workdir, env=None, name='exporter'):
        self.workdir = workdir
        self.addr_file = os.path.join(workdir, name + '.addr')
        self.log_path = os.path.join(workdir, name + '.log')
        if os.path.exists(self.addr_file):
            os.unlink(self.addr_file)
        self.args = [BIN, '--web.listen-address', '127.0.0.1:0',
                     '--web.listen-address-file', self.addr_file] + list(args)
        self.log = open(self.log_path, 'ab')
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=e)
        _cleanups.append(self.kill)
        wait_for(lambda: os.path.exists(self.addr_file) or self.proc.poll() is not None, 30,
                 what='exporter to listen')
        if self.proc.poll() is not None:
            raise AssertionError('exporter exited with %s:\n%s' % (self.proc.returncode, self.logs()))
        with open(self.addr_file) as f:
            self.address = f.read().strip()
        self.url = 'http://%s' % self.address

    def logs(self):
        with open(self.log_path, 'rb') as f:
            return f.read().decode(errors='replace')

    def get(self, path='/metrics', timeout=10):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return r.status, r.read().decode()

    def post(self, path):
        req = urllib.request.Request(self.url + path, data=b'', method='POST')
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self):
        return promtext.parse(self.get()[1])

    def value(self, name, **labels):
        return promtext.total(self.metrics(), name, **labels)

    def wait_value(self, name, want, timeout=60, **labels):
        """Waits until the summed value of `name` equals `want`."""
        last = [None]

        def ok():
            last[0] = self.value(name, **labels)
            return last[0] == want
        try:
            wait_for(ok, timeout, 0.05, '%s%s == %s' % (name, labels, want))
        except AssertionError:
            raise AssertionError('%s%s is %s, want %s\n--- exporter log ---\n%s'
                                 % (name, labels, last[0], want, self.logs()))

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout)
        self.log.close()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_once(args, input=None, timeout=300):
    """Runs the binary in --once mode; returns CompletedProcess (text)."""
    return subprocess.run([BIN, '--once'] + list(args), input=input, capture_output=True,
                          text=True, timeout=timeout)


def check_truth(metrics, truth, source, timed=True):
    problems = promtext.check_truth(metrics, truth, source, timed)
    assert not problems, '\n'.join(problems)


# --------------------------------------------------------------------- sshd

def test_user():
    """The remote user for SSH tests. As root: an unprivileged user with
    /bin/sh as its shell (created once), like a real exporter account, and
    free of root's shell start-up files (which sshd runs for every channel).
    Otherwise: the current user."""
    if os.geteuid() != 0:
        return subprocess.run(['id', '-un'], capture_output=True, text=True).stdout.strip()
    name = 'sshtail-it'
    if subprocess.run(['id', name], capture_output=True).returncode != 0:
        subprocess.run(['useradd', '-m', '-s', '/bin/sh', name], check=True,
                       capture_output=True)
        # Under UsePAM no a new account is locked until it has a password
        # field other than '!'.
        subprocess.run(['usermod', '-p', '*', name], check=True)
    return name


class Sshd:
    """A real OpenSSH sshd on loopback with its own host key and config.

    `key` is a client key that may log in as the current user; `known_hosts`
    holds the host key in the plain [127.0.0.1]:PORT form.
    """

    def __init__(self, workdir, extra_config='', user=None, stock_limits=False,
                 log_level='ERROR'):
        self.dir = os.path.join(workdir, 'sshd')
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs('/run/sshd', exist_ok=True)
        self.user = user or test_user()
        self.host_key = os.path.join(self.dir, 'host_ed25519')
        self.key = os.path.join(self.dir, 'client_ed25519')
        for k in (self.host_key, self.key):
            if not os.path.exists(k):
                subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', k], check=True)
        self.authorized = os.path.join(self.dir, 'authorized_keys')
        shutil.copy(self.key + '.pub', self.authorized)
        self.extra_config = extra_config
        # Stock: sshd's own MaxSessions 10 and MaxStartups 10:30:100.
        self.limits = [] if stock_limits else ['MaxSessions 64', 'MaxStartups 200']
        self.log_level = log_level
        self.proc = None
        self.port = None
        self.frozen = []  # stopped by freeze_sessions(): ended by stop()
        self.known_hosts = os.path.join(self.dir, 'known_hosts')
        self.start()
        self.write_known_hosts()
        _cleanups.append(self.stop)

    def host_key_line(self, pub=None):
        with open(pub or self.host_key + '.pub') as f:
            kt, b64 = f.read().split()[:2]
        return '[127.0.0.1]:%d %s %s\n' % (self.port, kt, b64)

    def write_known_hosts(self):
        with open(self.known_hosts, 'w') as f:
            f.write(self.host_key_line())

    def trust_port(self, port):
        """known_hosts also vouches for this host key at `port` (a relay in
        front of this sshd)."""
        with open(self.known_hosts, 'a') as f:
            f.write(self.host_key_line().replace(':%d ' % self.port, ':%d ' % port, 1))

    def start(self, port=None):
        for attempt in range(20):
            self.port = port or free_port()
            cfg = os.path.join(self.dir, 'sshd_config')
            with open(cfg, 'w') as f:
                f.write('\n'.join([
                    'Port %d' % self.port,
                    'ListenAddress 127.0.0.1',
                    'HostKey %s' % self.host_key,
                    'PidFile %s' % os.path.join(self.dir, 'sshd.pid'),
                    'AuthorizedKeysFile %s' % self.authorized,
                    'PasswordAuthentication no',
                    'KbdInteractiveAuthentication no',
                    'UsePAM no',
                    'PermitRootLogin prohibit-password',
                    'StrictModes no'] + self.limits + [
                    'LogLevel ' + self.log_level,
                    self.extra_config, '']))
            self.log = open(os.path.join(self.dir, 'sshd.log'), 'ab')
            self.proc = subprocess.Popen(['/usr/sbin/sshd', '-D', '-e', '-f', cfg],
                                         stdout=self.log, stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, 10,
                         what='sshd to listen')
            except AssertionError:
                self.proc.kill()
                raise
            if self.proc.poll() is None:
                return
            if port:  # a fixed port must work
                raise AssertionError('sshd did not start on port %d' % port)
        raise AssertionError('sshd did not start')

    def session_pids(self):
        """Every process serving a connection: the listener's descendants."""
        out, todo = [], [self.proc.pid]
        while todo:
            kids = subprocess.run(['pgrep', '-P', str(todo.pop())], capture_output=True,
                                  text=True).stdout.split()
            out += [int(k) for k in kids]
            todo += kids
        return out

    def freeze_sessions(self):
        """SIGSTOPs the sshd processes serving connections: TCP stays up,
        nothing arrives. The remote readers' short-lived children may end
        between the listing and the signal, so only sshd itself is stopped.
        Returns the pids stopped."""
        out = []
        for pid in self.session_pids():
            try:
                with open('/proc/%d/comm' % pid) as f:
                    if f.read().strip() != 'sshd':
                        continue
                os.kill(pid, signal.SIGSTOP)
                out.append(pid)
            except (FileNotFoundError, ProcessLookupError):
                pass
        self.frozen += out
        return out

    def end_frozen(self, pids):
        """Kills what freeze_sessions() stopped and is still stopped (a pid
        that ended may name another process now): those connections end."""
        for pid in pids:
            try:
                with open('/proc/%d/stat' % pid) as f:
                    comm, rest = f.read().rsplit(')', 1)
                if comm.endswith('(sshd') and rest.split()[0] in ('T', 't'):
                    os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass
        self.frozen = [p for p in self.frozen if p not in pids]

    def thaw_sessions(self, pids):
        """SIGCONTs what freeze_sessions() stopped: those connections go on."""
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.frozen = [p for p in self.frozen if p not in pids]

    def kill_sessions(self):
        """Ends every session this sshd serves: the per-connection monitors
        and, first, what runs under them (the user's sshd keeps a connection
        up on its own for a while when only its monitor dies)."""
        if not (self.proc and self.proc.poll() is None):
            return
        mine = ('sshd', 'sh', 'tail', 'sleep', 'dd', 'od', 'stat', 'gzip', 'cat', 'sudo')
        for pid in reversed(self.session_pids()):
            try:
                with open('/proc/%d/comm' % pid) as f:
                    if f.read().strip() not in mine:
                        continue  # ended, and the number went elsewhere
                os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass
        subprocess.run(['pkill', '-KILL', '-P', str(self.proc.pid)], capture_output=True)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            # Sessions outlive the listener in a real restart; here the host
            # "goes away", so end them first, with the listener stopped: a
            # client reconnecting meanwhile would get a session nobody ends.
            self.proc.send_signal(signal.SIGSTOP)
            self.kill_sessions()
            # A stopped session process would outlive its monitor.
            self.end_frozen(self.frozen)
            self.proc.terminate()
            self.proc.send_signal(signal.SIGCONT)
            self.proc.wait(10)

    def restart(self):
        """Stops sshd and every connection it serves, starts it on the same port."""
        self.stop()
        wait_for(lambda: not port_open(self.port), 10, what='sshd to stop')
        self.start(self.port)

    def kill_connections(self):
        """Aborts every TCP connection to sshd (the client sees a reset)."""
        subprocess.run(['ss', '-K', 'dst', '127.0.0.1', 'dport', '=', str(self.port)],
                       capture_output=True)

    def url(self, path):
        return 'ssh://%s@127.0.0.1:%d%s' % (self.user, self.port, path)

    def exporter_args(self, heartbeat='1s'):
        return ['--ssh.identity-file', self.key, '--ssh.known-hosts', self.known_hosts,
                '--ssh.config', 'none', '--ssh.heartbeat-interval', heartbeat]


def main(tests):
    """Runs test functions in order; prints a summary; exits non-zero on failure."""
    failed = 0
    for t in tests:
        start = time.monotonic()
        try:
            t()
            print('PASS %s (%.1fs)' % (t.__name__, time.monotonic() - start), flush=True)
        except Exception:
            import traceback
            failed += 1
            print('FAIL %s (%.1fs)' % (t.__name__, time.monotonic() - start), flush=True)
            traceback.print_exc()
        finally:
            _cleanup_all()
    sys.exit(1 if failed else 0)
