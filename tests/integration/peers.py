"""Real peers for the integration tests: nginx (with a slow upstream),
curl traffic with exact counts, and Prometheus.

Everything lives in the test's temporary directory, binds loopback only,
and is stopped by harness' cleanup at exit (or at the end of each test when
run through harness.main).
"""
import http.server
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import harness

# nginx's `timed` format, as the exporter's `--format timed` expects it.
TIMED_LOG_FORMAT = ("log_format timed '$remote_addr - $remote_user [$time_local] "
                    "\"$request\" $status $body_bytes_sent \"$http_referer\" "
                    "\"$http_user_agent\" $request_time $upstream_response_time';")

ROOT_BODY = 'hello from nginx\n'


# ------------------------------------------------------------------ upstream

class SlowUpstream:
    """An HTTP server on 127.0.0.1:<port 0> (a thread of the test process)
    that answers every request after 50, 100, 150 or 200 ms (round robin), so
    that nginx logs a real, non-zero $upstream_response_time."""

    BODY = b'slow upstream answer\n'

    def __init__(self, delays=(0.05, 0.10, 0.15, 0.20)):
        self.delays = delays
        self.count = 0
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                with lock:
                    delay = outer.delays[outer.count % len(outer.delays)]
                    outer.count += 1
                # Delay the answer: this is the latency under test, not a
                # synchronisation.
                time.sleep(delay)
                self.send_response(200)
                self.send_header('Content-Type', 'text/plain')
                self.send_header('Content-Length', str(len(outer.BODY)))
                self.end_headers()
                self.wfile.write(outer.BODY)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            # The default backlog of 5 drops SYNs under parallel load, and
            # the client's retransmission adds a whole second.
            request_queue_size = 256

        self.server = Server(('127.0.0.1', 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        harness._cleanups.append(self.stop)

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


# --------------------------------------------------------------------- nginx

class Nginx:
    """A real nginx (foreground, unprivileged port on 127.0.0.1) writing the
    `timed` format to `<workdir>/nginx/access.log`.

    Locations: `= /` answers 200 with ROOT_BODY; `/error` 500; `/slow` is
    proxied to `upstream_port` (a SlowUpstream is started when none is
    given); anything else, e.g. `/missing`, is looked up in an empty document
    root and is nginx's own 404.
    """

    def __init__(self, workdir, upstream_port=None):
        self.dir = os.path.join(workdir, 'nginx')
        self.html = os.path.join(self.dir, 'html')
        os.makedirs(self.html, exist_ok=True)
        self.access_log = os.path.join(self.dir, 'access.log')
        self.error_log = os.path.join(self.dir, 'error.log')
        self.conf = os.path.join(self.dir, 'nginx.conf')
        if upstream_port is None:
            self.upstream = SlowUpstream()
            upstream_port = self.upstream.port
        self.upstream_port = upstream_port
        self.proc = None
        self.port = None
        self._start()
        harness._cleanups.append(self.stop)

    def _config(self):
        d = self.dir
        return '\n'.join([
            'daemon off;',
            'master_process on;',
            'worker_processes 1;',
            'pid %s/nginx.pid;' % d,
            'error_log %s warn;' % self.error_log,
            'events { worker_connections 256; }',
            'http {',
            '  %s' % TIMED_LOG_FORMAT,
            '  access_log %s timed;' % self.access_log,
            '  client_body_temp_path %s/client_body;' % d,
            '  proxy_temp_path %s/proxy;' % d,
            '  fastcgi_temp_path %s/fastcgi;' % d,
            '  uwsgi_temp_path %s/uwsgi;' % d,
            '  scgi_temp_path %s/scgi;' % d,
            '  server {',
            '    listen 127.0.0.1:%d;' % self.port,
            '    root %s;' % self.html,
            '    location = / { default_type text/plain; return 200 %s; }'
            % json.dumps(ROOT_BODY),
            '    location /error { return 500; }',
            '    location /slow { proxy_pass http://127.0.0.1:%d; }' % self.upstream_port,
            '  }',
            '}', ''])

    def _start(self):
        for _ in range(20):
            self.port = harness.free_port()
            with open(self.conf, 'w') as f:
                f.write(self._config())
            self.log = open(os.path.join(self.dir, 'nginx.out'), 'ab')
            self.proc = subprocess.Popen(['nginx', '-p', self.dir, '-c', self.conf,
                                          '-e', self.error_log],
                                         stdout=self.log, stderr=subprocess.STDOUT)
            harness.wait_for(lambda: harness.port_open(self.port) or self.proc.poll() is not None,
                             15, what='nginx to listen')
            if self.proc.poll() is None:
                harness.wait_for(lambda: os.path.exists(self.access_log), 10,
                                 what='nginx to open its access log')
                return
            # Port taken between free_port() and bind(): try another.
        raise AssertionError('nginx did not start; error log:\n' + self.errors())

    def errors(self):
        try:
            with open(self.error_log) as f:
                return f.read()
        except OSError:
            return ''

    def url(self, path):
        return 'http://127.0.0.1:%d%s' % (self.port, path)

    def access_lines(self):
        with open(self.access_log) as f:
            return f.read().splitlines()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # fast shutdown
            self.proc.wait(15)


# ---------------------------------------------------------------------- curl

def curl_glob(url_base, n, parallel=1, timeout=120, extra=()):
    """Sends exactly n GET requests to `url_base?i=1..n` with one curl (URL
    globbing); returns {http_code: count} of the answers curl got."""
    sep = '&' if '?' in url_base else '?'
    url = '%s%si=[1-%d]' % (url_base, sep, n)
    args = ['curl', '-sS', '-o', '/dev/null', '-w', '%{http_code}\\n', '--max-time', '30']
    if parallel > 1:
        args += ['-Z', '--parallel-max', str(parallel)]
    r = subprocess.run(args + list(extra) + [url], capture_output=True, text=True,
                       timeout=timeout)
    codes = {}
    for line in r.stdout.split():
        codes[int(line)] = codes.get(int(line), 0) + 1
    assert sum(codes.values()) == n, 'curl made %d requests, want %d (rc %d): %s' % (
        sum(codes.values()), n, r.returncode, r.stderr)
    return codes


# ---------------------------------------------------------------- Prometheus

class Prometheus:
    """Prometheus 2.x on 127.0.0.1 with a fresh TSDB, scraping `targets`
    (host:port) as job `job` every second and evaluating `rule_files`
    (copied into its directory) every second."""

    def __init__(self, workdir, targets, job='sshtail', rule_files=()):
        self.dir = os.path.join(workdir, 'prometheus')
        os.makedirs(self.dir, exist_ok=True)
        self.job = job
        rules = []
        for i, path in enumerate(rule_files):
            dst = os.path.join(self.dir, 'rules%d_%s' % (i, os.path.basename(path)))
            with open(path) as src, open(dst, 'w') as out:
                out.write(src.read())
            rules.append(dst)
        self.config = os.path.join(self.dir, 'prometheus.yml')
        with open(self.config, 'w') as f:
            f.write('global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n')
            f.write('rule_files: %s\n' % json.dumps(rules))
            f.write('scrape_configs:\n')
            f.write('  - job_name: %s\n' % json.dumps(job))
            f.write('    static_configs:\n')
            f.write('      - targets: %s\n' % json.dumps(list(targets)))
        self.proc = None
        self._start()
        harness._cleanups.append(self.stop)

    def _start(self):
        for attempt in range(10):
            self.port = harness.free_port()
            tsdb = os.path.join(self.dir, 'data%d' % attempt)  # fresh every start
            self.log_path = os.path.join(self.dir, 'prometheus.log')
            self.log = open(self.log_path, 'ab')
            self.proc = subprocess.Popen(
                ['prometheus', '--config.file=' + self.config,
                 '--storage.tsdb.path=' + tsdb,
                 '--web.listen-address=127.0.0.1:%d' % self.port,
                 '--log.level=warn'],
                stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)
            self.url = 'http://127.0.0.1:%d' % self.port
            harness.wait_for(lambda: self._ready() or self.proc.poll() is not None, 30,
                             0.05, 'prometheus to be ready')
            if self.proc.poll() is None:
                return
        raise AssertionError('prometheus did not start:\n' + self.logs())

    def _ready(self):
        try:
            with urllib.request.urlopen(self.url + '/-/ready', timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def logs(self):
        with open(self.log_path, 'rb') as f:
            return f.read().decode(errors='replace')

    def api(self, path, **params):
        """GET /api/v1/<path>; returns the decoded JSON, errors included."""
        url = '%s/api/v1/%s' % (self.url, path)
        if params:
            url += '?' + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read().decode())
        except urllib.error.HTTPError as e:  # 400/422/503 carry a JSON error
            return json.loads(e.read().decode())

    def query(self, expr):
        """The JSON answer of an instant query (status, data or error)."""
        return self.api('query', query=expr)

    def result(self, expr):
        """The result list of a successful instant query."""
        r = self.query(expr)
        assert r.get('status') == 'success', 'query %r failed: %s' % (expr, r)
        return r['data']['result']

    def scalar(self, expr):
        """The single value of a query answering one sample, else None."""
        res = self.result(expr)
        if len(res) != 1:
            return None
        return float(res[0]['value'][1])

    def wait_scalar(self, expr, want, timeout=30):
        last = [None]

        def ok():
            last[0] = self.scalar(expr)
            return last[0] == want
        try:
            harness.wait_for(ok, timeout, 0.2, '%s == %s in Prometheus' % (expr, want))
        except AssertionError:
            raise AssertionError('Prometheus: %s is %s, want %s' % (expr, last[0], want))

    def rules(self):
        """[rule dict] of every group, from /api/v1/rules."""
        r = self.api('rules')
        assert r.get('status') == 'success', r
        return [rule for g in r['data']['groups'] for rule in g['rules']]

    def alerts(self):
        r = self.api('alerts')
        assert r.get('status') == 'success', r
        return r['data']['alerts']

    def stop(self):
        harness.stop_process(self.proc, 20)
