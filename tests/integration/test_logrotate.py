"""Rotation the way operators already run it: a real nginx writes while the
exporter follows its access log, and a real `logrotate -f` rotates it three
times — twice with Debian's own /etc/logrotate.d/nginx (daily, compress,
delaycompress, create 0640 www-data adm, postrotate `invoke-rc.d nginx
rotate`, i.e. USR1 to nginx's master), once with the example the package
ships (deploy/logrotate/nginx) — paths moved to a temp dir. The exporter
is neither signalled nor restarted; its counts equal what curl sent and what
nginx wrote into the rotated (and compressed) files, exactly.

Needs logrotate and nginx (scripts/deps installs both); skipped without
them."""
import gzip
import os
import shutil
import subprocess
import sys
import threading
import time

import harness
import peers
import promtext

SRC = os.path.abspath(harness.SOURCE_DIR)
SHIPPED = os.path.join(SRC, 'deploy', 'logrotate', 'nginx')
DEBIAN = '/etc/logrotate.d/nginx'


def local_config(text, logdir, pidfile):
    """A logrotate config for /var/log/nginx/*.log made to rotate logdir and
    signal the test's nginx (the same USR1 `invoke-rc.d nginx rotate` and
    the shipped snippet send)."""
    assert '/var/log/nginx/*.log' in text, text
    text = text.replace('/var/log/nginx/*.log', logdir + '/*.log')
    usr1 = 'kill -USR1 "$(cat %s)"' % pidfile
    text = text.replace('invoke-rc.d nginx rotate', usr1)
    text = text.replace('/run/nginx.pid', pidfile)
    assert usr1 in text or pidfile in text, 'no postrotate signal to nginx in:\n' + text
    return text


class Traffic(threading.Thread):
    """curl against nginx until stopped: / (200), /missing (404), /error (500)."""

    def __init__(self, nginx):
        super().__init__(daemon=True)
        self.nginx = nginx
        self.codes = {}
        self.stopping = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stopping.is_set():
                for path, n in (('/', 300), ('/missing', 60), ('/error', 40)):
                    for code, k in peers.curl_glob(self.nginx.url(path), n).items():
                        self.codes[code] = self.codes.get(code, 0) + k
        except Exception as e:
            self.error = e

    def total(self):
        return sum(self.codes.values())

    def finish(self):
        self.stopping.set()
        self.join(120)
        assert not self.is_alive() and self.error is None, self.error


def read_log(path):
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rt') as f:
        return f.read()


def test_logrotate_while_following_is_exact():
    d = harness.tmpdir()
    nginx = peers.Nginx(d)
    logdir = os.path.dirname(nginx.access_log)
    pidfile = os.path.join(nginx.dir, 'nginx.pid')
    harness.wait_for(lambda: os.path.exists(pidfile), 10, what='nginx pid file')
    configs = []
    debian_text = open(DEBIAN).read() if os.path.exists(DEBIAN) else None
    if debian_text is None:
        print('note: no %s here (nginx-common not installed); using the shipped snippet '
              'for every rotation' % DEBIAN, flush=True)
    for i, text in enumerate([debian_text or open(SHIPPED).read()] * 2 + [open(SHIPPED).read()]):
        conf = harness.write_file(d, 'logrotate-%d.conf' % i, local_config(text, logdir, pidfile))
        configs.append(conf)
    state = os.path.join(d, 'logrotate.state')

    exp = harness.Exporter(['--format', 'timed', nginx.access_log], d)
    exp.wait_value('sshtail_source_up', 1, source=nginx.access_log)
    pid = exp.proc.pid
    traffic = Traffic(nginx)
    traffic.start()
    for i, conf in enumerate(configs):
        harness.wait_for(lambda: traffic.total() >= 1200 * (i + 1), 120, 0.05,
                         'traffic before rotation %d' % (i + 1))
        r = subprocess.run(['logrotate', '-f', '-v', '-s', state, conf], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, (conf, r.stdout, r.stderr)
        # nginx reopened the path (the file `create` made) and writes there.
        harness.wait_for(lambda: os.path.getsize(nginx.access_log) > 0, 30, 0.05,
                         'nginx to write to the new file')
        # A day between rotations is 6 s here: the exporter drains a renamed
        # file until it has been quiet for 5 s.
        time.sleep(6)
    traffic.finish()
    sent = traffic.total()
    exp.wait_value('sshtail_lines_total', sent, timeout=60, source=nginx.access_log)

    # delaycompress: the newest rotated file stays plain, the older ones are
    # gzipped; `create 0640 ... adm` made the new file.
    names = sorted(os.listdir(logdir))
    for n in ('access.log', 'access.log.1', 'access.log.2.gz', 'access.log.3.gz'):
        assert n in names, names
    st = os.stat(nginx.access_log)
    assert st.st_mode & 0o777 == 0o640, oct(st.st_mode)
    try:
        import grp
        assert grp.getgrgid(st.st_gid).gr_name == 'adm', st.st_gid
    except KeyError:
        pass

    # Ground truth: every line nginx wrote, across the rotated files.
    text = ''.join(read_log(os.path.join(logdir, n)) for n in
                   ('access.log.3.gz', 'access.log.2.gz', 'access.log.1', 'access.log'))
    assert text.count('\n') == sent, (text.count('\n'), sent)
    once = harness.run_once(['--format', 'timed', '-'], input=text)
    assert once.returncode == 0, once.stderr
    want = promtext.parse(once.stdout)

    m = exp.metrics()
    src = nginx.access_log
    assert promtext.total(m, 'sshtail_lines_total', source=src) == sent
    assert promtext.total(m, 'sshtail_lines_unmatched_total', source=src) == 0
    assert promtext.total(m, 'sshtail_rotations_total', source=src) == 3
    for code, n in traffic.codes.items():
        assert promtext.total(m, 'nginx_http_requests_total', source=src, status=str(code)) == n, (
            code, n)
    for name in ('nginx_http_response_bytes_total', 'nginx_http_request_duration_seconds_count',
                 'sshtail_bytes_total'):
        assert promtext.total(m, name, source=src) == promtext.total(want, name), name
    assert exp.proc.pid == pid and exp.proc.poll() is None, 'the exporter restarted'
    print('  %d requests, 3 rotations (%s), counts exact' % (sent, ', '.join(
        os.path.basename(c) for c in configs)), flush=True)
    assert exp.stop() == 0


if __name__ == '__main__':
    missing = [t for t in ('logrotate', 'nginx', 'curl') if not shutil.which(t) and
               not os.path.exists('/usr/sbin/' + t)]
    if missing:
        print('SKIP test_logrotate: %s not installed' % ', '.join(missing), flush=True)
        sys.exit(0)
    harness.main([test_logrotate_while_following_is_exact])
