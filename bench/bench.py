#!/usr/bin/env python3
"""Benchmarks of sshtail_exporter; run through bench/run (see bench/README.md).

Sections (each independent; one that errors is reported and the others run):
  local    --once throughput vs mtail -one_shot (hyperfine, interleaved rounds)
  ssh      --once over SSH vs OpenSSH `ssh cat` (hyperfine, interleaved rounds)
  memory   peak RSS of --once (small vs large file) and of a slow consumer
  latency  append -> visible in /metrics, local file and SSH, at 10k lines/s
  scale    200 quiet SSH sources: CPU and RSS of the exporter
  scrape   /metrics with 10k series while parsing at full speed

Python 3 standard library only; reuses tests/integration/harness.py (sshd)
and promtext.py (exposition parsing), and the shared log generator.
"""
import argparse
import bisect
import hashlib
import http.client
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, 'tests', 'integration'))
import harness  # noqa: E402
import promtext  # noqa: E402

SECTIONS = ['local', 'ssh', 'memory', 'latency', 'scale', 'scrape']
SEED = 1

FULL = dict(lines=1_000_000, small_lines=250_000, rounds=3, runs=2,
            stream_copies=3, lat_seconds=20, lat_rate=10_000,
            scale_sources=200, scale_seconds=60, scrape_series=10_000, scrapes=100,
            idle_scrapes=20)
QUICK = dict(lines=50_000, small_lines=12_500, rounds=1, runs=2,
             stream_copies=3, lat_seconds=3, lat_rate=10_000,
             scale_sources=8, scale_seconds=5, scrape_series=1_000, scrapes=20,
             idle_scrapes=5)

BIN = None        # the copied binary, set in main()
CFG = None
WORK = None
COMMANDS = {}     # section -> list of exact command lines, for RESULTS.md


def log(msg):
    print('[bench %s] %s' % (time.strftime('%H:%M:%S'), msg), flush=True)


def sh_join(argv):
    return shlex.join([str(a) for a in argv])


def pct(xs, p):
    """Nearest-rank percentile."""
    s = sorted(xs)
    if not s:
        return float('nan')
    k = max(0, math.ceil(p / 100.0 * len(s)) - 1)
    return s[k]


def loadavg():
    with open('/proc/loadavg') as f:
        return ' '.join(f.read().split()[:3])


def proc_status(pid):
    """VmRSS, VmHWM (KiB) and Threads of a live process."""
    out = {}
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                k, _, v = line.partition(':')
                if k in ('VmRSS', 'VmHWM'):
                    out[k] = int(v.split()[0])
                elif k == 'Threads':
                    out[k] = int(v)
    except OSError:
        pass
    return out


def proc_cpu_ticks(pid, children=False):
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime (reaped children)
    return ticks


def descendants(root_pid):
    kids = {}
    for d in os.listdir('/proc'):
        if d.isdigit():
            try:
                with open('/proc/%s/stat' % d) as f:
                    pp = int(f.read().rsplit(')', 1)[1].split()[1])
                kids.setdefault(pp, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = set(), [root_pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def tree_ticks(pids):
    total = {}
    for p in pids:
        try:
            total[p] = proc_cpu_ticks(p, children=True)
        except OSError:
            pass
    return total


# ------------------------------------------------------------------ data

def data_file(lines):
    """The generator's first `lines` timed lines (seed fixed) and its truth."""
    d = os.path.join(BENCH, 'out', 'data')
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, 'timed-%d-seed%d.log' % (lines, SEED))
    truth_path = path + '.truth.json'
    if not (os.path.exists(path) and os.path.exists(truth_path)):
        log('generating %d lines -> %s' % (lines, path))
        tmp = path + '.tmp'
        harness.generate_file(tmp, lines, 'timed', seed=SEED)
        os.replace(tmp + '.truth.json', truth_path)
        os.replace(tmp, path)
    with open(truth_path) as f:
        return path, json.load(f)


def read_lines(path, n):
    out = []
    with open(path, 'rb') as f:
        for line in f:
            out.append(line)
            if len(out) >= n:
                break
    return out


# -------------------------------------------------------------- processes

class Server:
    """The copied binary in server mode on 127.0.0.1:0 (like harness.Exporter,
    but with the copied binary and an optional stdin pipe)."""

    def __init__(self, args, name, stdin=None):
        self.addr_file = os.path.join(WORK, name + '.addr')
        self.log_path = os.path.join(WORK, name + '.log')
        if os.path.exists(self.addr_file):
            os.unlink(self.addr_file)
        self.argv = [BIN, '--web.listen-address', '127.0.0.1:0',
                     '--web.listen-address-file', self.addr_file] + [str(a) for a in args]
        self.logf = open(self.log_path, 'ab')
        self.proc = subprocess.Popen(self.argv, stdin=stdin, stdout=self.logf,
                                     stderr=subprocess.STDOUT)
        harness._cleanups.append(self.kill)
        harness.wait_for(lambda: os.path.exists(self.addr_file) or self.proc.poll() is not None,
                         30, what=name + ' to listen')
        if self.proc.poll() is not None:
            raise RuntimeError('%s exited with %s:\n%s' % (name, self.proc.returncode, self.logs()))
        with open(self.addr_file) as f:
            self.address = f.read().strip()
        self.url = 'http://%s/metrics' % self.address
        self.pid = self.proc.pid

    def logs(self):
        with open(self.log_path, 'rb') as f:
            return f.read().decode(errors='replace')[-4000:]

    def metrics(self):
        with urllib.request.urlopen(self.url, timeout=30) as r:
            return promtext.parse(r.read().decode())

    def value(self, name, **labels):
        return promtext.total(self.metrics(), name, **labels)

    def kill(self):
        harness.stop_process(self.proc)
        self.logf.close()


def remote_user(sshd):
    """'user (login shell)': sshd runs every channel's command through it."""
    import pwd
    try:
        return '%s (login shell %s)' % (sshd.user, pwd.getpwnam(sshd.user).pw_shell)
    except KeyError:
        return sshd.user


def exporter_cipher(sshd, path):
    """The cipher libssh negotiates: a second sshd with the harness's config
    and LogLevel DEBUG1 (command-line -o wins over the file) serves one --once."""
    port = harness.free_port()
    logp = os.path.join(sshd.dir, 'sshd-debug.log')
    kh = os.path.join(sshd.dir, 'known_hosts-debug')
    with open(kh, 'w') as f:
        f.write(sshd.host_key_line().replace(':%d]' % sshd.port, ':%d]' % port))
    with open(logp, 'wb') as logf:
        p = subprocess.Popen(['/usr/sbin/sshd', '-D', '-e', '-f', os.path.join(sshd.dir, 'sshd_config'),
                              '-o', 'LogLevel=DEBUG1', '-o', 'Port=%d' % port,
                              '-o', 'PidFile=' + os.path.join(sshd.dir, 'sshd-debug.pid')],
                             stdout=logf, stderr=subprocess.STDOUT)
        try:
            harness.wait_for(lambda: harness.port_open(port), 10, what='debug sshd')
            subprocess.run([BIN, '--once', '--ssh.identity-file', sshd.key, '--ssh.known-hosts', kh,
                            '--ssh.config', 'none', 'ssh://%s@127.0.0.1:%d%s' % (sshd.user, port, path)],
                           capture_output=True, timeout=60)
        finally:
            p.terminate()
            p.wait(10)
    with open(logp, errors='replace') as f:
        m = re.search(r'kex: server->client cipher: (\S+)', f.read())
    return m.group(1) if m else '?'


def ssh_flags(sshd):
    return ['--ssh.identity-file', sshd.key, '--ssh.known-hosts', sshd.known_hosts,
            '--ssh.config', 'none']


def openssh_argv(sshd, remote_cmd):
    return ['ssh', '-F', 'none', '-i', sshd.key, '-o', 'UserKnownHostsFile=' + sshd.known_hosts,
            '-o', 'BatchMode=yes', '-p', str(sshd.port), sshd.user + '@127.0.0.1', remote_cmd]


def hyperfine_rounds(section, cmds, rounds, runs):
    """Runs `hyperfine` `rounds` times over all `cmds` (label, argv-or-string),
    alternating their order, so that machine noise hits every command alike
    (one hyperfine call runs all runs of one command, then the next). Returns
    {label: [seconds, ...]}."""
    times = {label: [] for label, _ in cmds}
    for r in range(rounds):
        order = cmds if r % 2 == 0 else list(reversed(cmds))
        out = os.path.join(WORK, 'hyperfine-%s-%d.json' % (section, r))
        argv = ['hyperfine', '-N', '--style', 'basic', '--warmup', '1', '--runs', str(runs),
                '--export-json', out]
        for label, _ in order:
            argv += ['-n', label]
        argv += [c if isinstance(c, str) else sh_join(c) for _, c in order]
        if r == 0:
            COMMANDS.setdefault(section, []).append(sh_join(argv).replace(out, 'OUT.json') +
                                                    '   # x%d rounds, order alternating' % rounds)
        log('%s: hyperfine round %d/%d' % (section, r + 1, rounds))
        subprocess.run(argv, check=True, stdout=sys.stdout, stderr=sys.stderr)
        with open(out) as f:
            for res in json.load(f)['results']:
                times[res['command']].extend(res['times'])
    return times


def summarize_times(times, lines):
    out = {}
    for label, ts in times.items():
        med = statistics.median(ts)
        out[label] = {'runs': len(ts), 'median_s': med, 'min_s': min(ts), 'max_s': max(ts),
                      'lines_per_s': lines / med if lines else None}
    return out


# --------------------------------------------------------------- sections

def counters_vs_truth(metrics, truth, **labels):
    problems = []
    got = {}
    for d, v in promtext.select(metrics, 'nginx_http_requests_total', **labels):
        k = '%s %s' % (d['method'], d['status'])
        got[k] = got.get(k, 0) + int(v)
    if got != truth['by_method_status']:
        diff = {k: (got.get(k), truth['by_method_status'].get(k))
                for k in set(got) | set(truth['by_method_status'])
                if got.get(k) != truth['by_method_status'].get(k)}
        problems.append('requests by method/status differ (got, want): %s' % diff)
    nbytes = promtext.total(metrics, 'nginx_http_response_bytes_total', **labels)
    if int(nbytes) != truth['body_bytes_sum']:
        problems.append('body bytes %d != %d' % (nbytes, truth['body_bytes_sum']))
    return problems


def section_local():
    path, truth = data_file(CFG['lines'])
    progdir = os.path.join(BENCH, 'mtail')
    ours = [BIN, '--once', '--format', 'timed', path]
    mtail = ['mtail', '-one_shot', '-one_shot_format', 'prometheus', '-progs', progdir,
             '-logs', path]
    res = {'file': path, 'lines': truth['lines'], 'bytes': os.path.getsize(path)}

    log('local: checking exact counts')
    r = subprocess.run(ours, capture_output=True, text=True, timeout=600)
    res['sshtail_exit'] = r.returncode
    res['sshtail_check'] = (promtext.check_truth(promtext.parse(r.stdout), truth, path, True)
                            if r.returncode == 0 else ['exit %d: %s' % (r.returncode, r.stderr[-500:])])
    r = subprocess.run(mtail, capture_output=True, text=True, timeout=1200)
    res['mtail_exit'] = r.returncode
    if r.returncode == 0:
        m = promtext.parse(r.stdout)
        res['mtail_check'] = counters_vs_truth(m, truth)
        # Known mtail bug: observations of exactly 0 are missing from the
        # buckets; recorded for information only.
        cnt = promtext.total(m, 'nginx_http_request_duration_seconds_count')
        inf = promtext.total(m, 'nginx_http_request_duration_seconds_bucket', le='+Inf')
        res['mtail_hist_count_minus_inf'] = cnt - inf
    else:
        res['mtail_check'] = ['exit %d: %s' % (r.returncode, r.stderr[-500:])]
    COMMANDS.setdefault('local', []).append(sh_join(ours) + ' > /dev/null')
    COMMANDS['local'].append(sh_join(mtail) + ' > /dev/null')

    times = hyperfine_rounds('local', [('sshtail', ours), ('mtail', mtail)],
                             CFG['rounds'], CFG['runs'])
    res['results'] = summarize_times(times, truth['lines'])
    a, b = res['results']['sshtail'], res['results']['mtail']
    res['ratio'] = a['lines_per_s'] / b['lines_per_s']
    return res


def section_ssh():
    path, truth = data_file(CFG['lines'])
    sshd = harness.Sshd(os.path.join(WORK, 'ssh-throughput'))
    ours = [BIN, '--once', '--format', 'timed'] + ssh_flags(sshd) + [sshd.url(path)]
    cat = openssh_argv(sshd, 'cat ' + path)
    wc = ['bash', '-c', sh_join(cat) + ' | wc -l']  # shown as: ssh ... | wc -l
    res = {'file': path, 'lines': truth['lines'], 'bytes': os.path.getsize(path)}

    log('ssh: checking exact counts')
    r = subprocess.run(ours, capture_output=True, text=True, timeout=600)
    res['sshtail_check'] = (promtext.check_truth(promtext.parse(r.stdout), truth, '127.0.0.1', True)
                            if r.returncode == 0 else ['exit %d: %s' % (r.returncode, r.stderr[-500:])])
    r = subprocess.run(wc, capture_output=True, text=True, timeout=600)
    res['wc_lines'] = int(r.stdout.strip() or -1)
    v = subprocess.run(openssh_argv(sshd, 'true')[:1] + ['-v'] + openssh_argv(sshd, 'true')[1:],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r'kex: server->client cipher: (\S+) MAC: (\S+)', v.stderr)
    res['openssh_cipher'] = m.group(1) if m else '?'
    res['remote_user'] = remote_user(sshd)
    tiny = os.path.join(WORK, 'tiny.log')
    with open(tiny, 'wb') as f:
        f.writelines(read_lines(path, 10))
    res['sshtail_cipher'] = exporter_cipher(sshd, tiny)
    # OpenSSH with the exporter's cipher too, for reference (not the target).
    cat_same = cat[:1] + ['-c', res['sshtail_cipher']] + cat[1:]
    runs = [('sshtail-ssh', ours), ('ssh-cat', cat), ('ssh-cat-wc', wc)]
    if res['sshtail_cipher'] not in ('?', res['openssh_cipher']):
        runs.append(('ssh-cat-same-cipher', cat_same))
    for _, c in runs:
        COMMANDS.setdefault('ssh', []).append(sh_join(c) + ('' if c is wc else ' > /dev/null'))

    times = hyperfine_rounds('ssh', runs, CFG['rounds'], CFG['runs'])
    res['results'] = summarize_times(times, truth['lines'])
    res['ratio_vs_cat'] = (res['results']['sshtail-ssh']['lines_per_s'] /
                           res['results']['ssh-cat']['lines_per_s'])
    if 'ssh-cat-same-cipher' in res['results']:
        res['ratio_vs_same_cipher'] = (res['results']['sshtail-ssh']['lines_per_s'] /
                                       res['results']['ssh-cat-same-cipher']['lines_per_s'])
    return res


def peak_rss_kib(argv, stdout=subprocess.DEVNULL):
    """Peak RSS in KiB: GNU time's %M (wait4's ru_maxrss when it is absent)."""
    if os.path.exists('/usr/bin/time'):
        r = subprocess.run(['/usr/bin/time', '-f', '%M'] + argv, stdout=stdout,
                           stderr=subprocess.PIPE, text=True, timeout=600, check=True)
        return int(r.stderr.strip().splitlines()[-1])
    p = subprocess.Popen(argv, stdout=stdout)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError('%s exited %d' % (argv, p.returncode))
    return ru.ru_maxrss


def stream_rss(path, copies, extra, label):
    """cat path x copies | exporter --once extra -, sampling /proc/PID/status."""
    out_path = os.path.join(WORK, 'stream-%s.prom' % label)
    cat = subprocess.Popen(['cat'] + [path] * copies, stdout=subprocess.PIPE)
    argv = [BIN, '--once', '--format', 'timed'] + extra + ['-']
    with open(out_path, 'w') as out:
        p = subprocess.Popen(argv, stdin=cat.stdout, stdout=out, stderr=subprocess.PIPE)
        cat.stdout.close()
        t0 = time.monotonic()
        samples = []
        while p.poll() is None:
            s = proc_status(p.pid)
            if 'VmRSS' in s:
                samples.append((time.monotonic() - t0, s['VmRSS'], s['VmHWM']))
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        err = p.stderr.read().decode(errors='replace')
    cat.wait()
    with open(out_path) as f:
        m = promtext.parse(f.read())
    lines = promtext.total(m, 'sshtail_lines_total', source='stdin')
    COMMANDS.setdefault('memory', []).append(
        'cat %s | %s   # sampling /proc/PID/status every 20 ms' % (sh_join([path] * copies), sh_join(argv)))
    return {'label': label, 'args': ' '.join(extra), 'exit': p.returncode, 'stderr': err[-300:],
            'lines': int(lines), 'want_lines': copies * CFG['lines'], 'seconds': elapsed,
            'max_rss_kib': max((s[1] for s in samples), default=0),
            'hwm_kib': max((s[2] for s in samples), default=0),
            'samples': samples}


def section_memory():
    big, _ = data_file(CFG['lines'])
    small = os.path.join(BENCH, 'out', 'data', 'timed-%d-seed%d.log' % (CFG['small_lines'], SEED))
    if not os.path.exists(small):
        with open(small + '.tmp', 'wb') as f:
            f.writelines(read_lines(big, CFG['small_lines']))
        os.replace(small + '.tmp', small)
    xl = os.path.join(BENCH, 'out', 'data', 'timed-%dx4-seed%d.log' % (CFG['lines'], SEED))
    if not os.path.exists(xl):
        with open(xl + '.tmp', 'wb') as out:
            for _ in range(4):
                with open(big, 'rb') as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        os.replace(xl + '.tmp', xl)
    res = {'once': {}}
    for label, path, n in (('small', small, CFG['small_lines']), ('big', big, CFG['lines']),
                           ('xl', xl, 4 * CFG['lines'])):
        argv = [BIN, '--once', '--format', 'timed', path]
        vals = [peak_rss_kib(argv) for _ in range(3)]
        res['once'][label] = {'lines': n, 'bytes': os.path.getsize(path), 'peak_kib': vals,
                              'median_kib': statistics.median(vals)}
        COMMANDS.setdefault('memory', []).append('/usr/bin/time -f %M ' + sh_join(argv) +
                                                 ' > /dev/null   # x3, median')
    log('memory: --once peak RSS %s' % {k: v['median_kib'] for k, v in res['once'].items()})
    res['stream'] = [
        stream_rss(big, CFG['stream_copies'], ['--consumers', '1', '--queue.batches', '8'], 'slow'),
        stream_rss(big, CFG['stream_copies'], [], 'default'),
    ]
    for s in res['stream']:
        log('memory: stream %s peak RSS %d KiB, %d lines in %.1fs' %
            (s['label'], s['hwm_kib'], s['lines'], s['seconds']))
    return res


class Poller(threading.Thread):
    """GETs /metrics back to back (2 ms apart), each on a new connection, and
    records (sent, received, sshtail_lines_total{source}). New connections on
    purpose: a reused (keep-alive) connection answers ~40 ms late (see the
    scrape section), which would measure the HTTP layer, not the pipeline."""

    def __init__(self, address, source):
        super().__init__(daemon=True)
        host, port = address.rsplit(':', 1)
        self.host, self.port = host, int(port)
        self.re = re.compile(r'^sshtail_lines_total\{source="%s"\} (\S+)$' % re.escape(source), re.M)
        self.polls = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            t0 = time.monotonic()
            conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            try:
                conn.request('GET', '/metrics', headers={'Connection': 'close'})
                body = conn.getresponse().read().decode()
            except (OSError, http.client.HTTPException):
                self.errors += 1
                time.sleep(0.01)
                continue
            finally:
                conn.close()
            t1 = time.monotonic()
            m = self.re.search(body)
            self.polls.append((t0, t1, float(m.group(1)) if m else 0.0))
            time.sleep(0.002)


def measure_latency(server, source, path, lines, rate, seconds):
    chunk = max(1, rate // 100)                # 100 writes per second
    interval = chunk / float(rate)
    n_chunks = int(seconds * rate / chunk)
    chunks = [b''.join(lines[i * chunk:(i + 1) * chunk]) for i in range(n_chunks)]
    poller = Poller(server.address, source)
    poller.start()
    time.sleep(0.5)
    writes = []
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    start = time.monotonic()
    cum = 0
    for k, data in enumerate(chunks):
        delay = start + k * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        os.write(fd, data)
        t = time.monotonic()
        cum += chunk
        writes.append((t, cum))
    os.close(fd)
    write_secs = time.monotonic() - start
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (not poller.polls or poller.polls[-1][2] < cum):
        time.sleep(0.01)
    time.sleep(0.1)
    poller.stop.set()
    poller.join(10)
    polls = poller.polls
    vals = [p[2] for p in polls]
    lat, unseen = [], 0
    for tw, c in writes:
        j = bisect.bisect_left(vals, c)
        if j == len(vals):
            unseen += 1
            continue
        lat.append(max(0.0, polls[j][1] - tw))
    with open(os.path.join(WORK, 'latency-%s.csv' % source.strip('/').replace('/', '_')), 'w') as f:
        f.write('write_s,lines,latency_ms\n')
        k = 0
        for tw, c in writes:
            j = bisect.bisect_left(vals, c)
            f.write('%.4f,%d,%s\n' % (tw - start, c, '%.2f' % ((polls[j][1] - tw) * 1000)
                                        if j < len(vals) else ''))
    with open(os.path.join(WORK, 'polls-%s.csv' % source.strip('/').replace('/', '_')), 'w') as f:
        f.write('sent_s,received_s,lines\n')
        for a, b, v in polls:
            f.write('%.4f,%.4f,%d\n' % (a - start, b - start, v))
    periods = [b[0] - a[0] for a, b in zip(polls, polls[1:])]
    durs = [p[1] - p[0] for p in polls]
    ms = [x * 1000 for x in lat]
    return {'samples': len(lat), 'unseen': unseen, 'lines': cum,
            'rate': cum / write_secs, 'final_count': vals[-1] if vals else 0,
            'p50_ms': pct(ms, 50), 'p90_ms': pct(ms, 90), 'p99_ms': pct(ms, 99),
            'max_ms': max(ms) if ms else float('nan'),
            'last_write_ms': ms[-1] if ms and not unseen else float('nan'),
            'poll_period_ms': statistics.median(periods) * 1000 if periods else float('nan'),
            'scrape_ms': statistics.median(durs) * 1000 if durs else float('nan'),
            'poll_errors': poller.errors, 'polls': len(polls)}


def section_latency():
    big, _ = data_file(CFG['lines'])
    need = CFG['lat_rate'] * CFG['lat_seconds']
    lines = read_lines(big, need)
    while len(lines) < need:
        lines = lines + lines
    d = os.path.join(WORK, 'latency')
    os.makedirs(d, exist_ok=True)
    res = {}

    local = os.path.join(d, 'local.log')
    open(local, 'w').close()
    args = ['--format', 'timed', local]
    srv = Server(args, 'latency-local')
    COMMANDS.setdefault('latency', []).append(sh_join(srv.argv))
    harness.wait_for(lambda: srv.value('sshtail_source_up', source=local) == 1, 30,
                     what='local source up')
    log('latency: local source, %d lines/s for %ds' % (CFG['lat_rate'], CFG['lat_seconds']))
    res['local'] = measure_latency(srv, local, local, lines, CFG['lat_rate'], CFG['lat_seconds'])
    res['local']['unmatched'] = srv.value('sshtail_lines_unmatched_total', source=local)
    # The built-in rules' exposition for one busy source, scraped idle: on a
    # new connection and on a reused (keep-alive) one, as Prometheus does.
    res['builtin_scrape'] = {'idle': scrape_stats([curl_time(srv.url) for _ in range(20)]),
                             'idle_reuse': scrape_stats([curl_time(srv.url, reuse=True)
                                                         for _ in range(20)])}
    srv.kill()

    sshd = harness.Sshd(os.path.join(d, 'sshd'))
    remote = os.path.join(d, 'ssh.log')
    open(remote, 'w').close()
    args = ['--format', 'timed'] + ssh_flags(sshd) + [sshd.url(remote)]
    srv = Server(args, 'latency-ssh')
    COMMANDS['latency'].append(sh_join(srv.argv))
    harness.wait_for(lambda: srv.value('sshtail_source_up', source='127.0.0.1') == 1, 60,
                     what='ssh source up')
    time.sleep(1)  # the remote tail is running once the source is up; let it settle
    log('latency: SSH source, %d lines/s for %ds' % (CFG['lat_rate'], CFG['lat_seconds']))
    res['ssh'] = measure_latency(srv, '127.0.0.1', remote, lines, CFG['lat_rate'], CFG['lat_seconds'])
    res['ssh']['unmatched'] = srv.value('sshtail_lines_unmatched_total', source='127.0.0.1')
    srv.kill()
    for k in ('local', 'ssh'):
        r = res[k]
        log('latency %s: p50 %.1f p90 %.1f p99 %.1f max %.1f ms (%d samples)' %
            (k, r['p50_ms'], r['p90_ms'], r['p99_ms'], r['max_ms'], r['samples']))
    return res


def section_scale():
    big, _ = data_file(CFG['lines'])
    n = CFG['scale_sources']
    d = os.path.join(WORK, 'scale')
    os.makedirs(d, exist_ok=True)
    few = read_lines(big, 5)
    paths = []
    for i in range(n):
        p = os.path.join(d, 'access-%03d.log' % i)
        with open(p, 'wb') as f:
            f.writelines(few)
        paths.append(p)
    sshd = harness.Sshd(os.path.join(d, 'sshdir'))
    args = (['--format', 'timed', '--ssh.files-per-connection', '4'] + ssh_flags(sshd) +
            [sshd.url(p) for p in paths])
    t0 = time.monotonic()
    srv = Server(args, 'scale')
    COMMANDS.setdefault('scale', []).append(
        sh_join(srv.argv[:srv.argv.index(sshd.url(paths[0]))]) +
        ' ssh://%s@127.0.0.1:PORT%s/access-{000..%03d}.log' % (sshd.user, d, n - 1))
    log('scale: waiting for %d SSH sources' % n)
    up_now = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        up_now = srv.value('sshtail_source_up')
        if up_now == n:
            break
        time.sleep(0.5)
    up_after = time.monotonic() - t0
    if up_now == n:
        log('scale: %d sources up after %.1fs; measuring %ds' % (n, up_after, CFG['scale_seconds']))
    else:
        log('scale: only %d of %d sources up after %.0fs; measuring anyway' % (up_now, n, up_after))
    m0 = srv.metrics()
    time.sleep(2)
    hz = os.sysconf('SC_CLK_TCK')
    remote_pids = descendants(sshd.proc.pid)
    r0 = tree_ticks(remote_pids)
    c0, w0 = proc_cpu_ticks(srv.pid), time.monotonic()
    time.sleep(CFG['scale_seconds'])
    c1, w1 = proc_cpu_ticks(srv.pid), time.monotonic()
    r1 = tree_ticks(remote_pids)
    st = proc_status(srv.pid)
    m = srv.metrics()
    remote_ticks = sum(r1[p] - r0[p] for p in r1 if p in r0)
    res = {'sources': n, 'connections': math.ceil(n / 4), 'up_after_s': up_after,
           'all_up': up_now == n, 'up_before_window': up_now,
           'reconnects_before_window': promtext.total(m0, 'sshtail_ssh_reconnects_total'),
           'remote_user': remote_user(sshd),
           'window_s': w1 - w0, 'cpu_pct': (c1 - c0) / hz / (w1 - w0) * 100,
           'rss_kib': st.get('VmRSS'), 'hwm_kib': st.get('VmHWM'), 'threads': st.get('Threads'),
           'up_at_end': promtext.total(m, 'sshtail_source_up'),
           'reconnects': promtext.total(m, 'sshtail_ssh_reconnects_total'),
           'lines': promtext.total(m, 'sshtail_lines_total'),
           'remote_procs': len(remote_pids),
           'remote_cpu_pct': remote_ticks / hz / (w1 - w0) * 100}
    srv.kill()
    log('scale: CPU %.2f %% of a core, RSS %s KiB, %s threads' %
        (res['cpu_pct'], res['rss_kib'], res['threads']))
    return res


def request_path(line):
    """The `path` field as the exporter derives it from $request."""
    req = line.split(b'"', 2)[1]
    sp1 = req.find(b' ')
    if sp1 < 0:
        return b''
    rest = req[sp1 + 1:]
    sp2 = rest.rfind(b' ')
    if sp2 >= 0 and rest[sp2 + 1:].startswith(b'HTTP/'):
        rest = rest[:sp2]
    return rest


def scrape_stats(xs):
    t = [x[0] for x in xs]
    return {'p50_ms': pct(t, 50), 'p90_ms': pct(t, 90), 'p99_ms': pct(t, 99), 'max_ms': max(t),
            'n': len(t), 'bytes': statistics.median(x[1] for x in xs)}


def curl_time(url, reuse=False):
    """(ms, bytes) of one scrape; with reuse, of the second of two scrapes on
    one keep-alive connection (what Prometheus does)."""
    argv = ['curl', '-s', '-o', '/dev/null', '-w', '%{time_total} %{size_download}\n', url]
    if reuse:
        argv = argv[:2] + ['-o', '/dev/null'] + argv[2:] + [url]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    t, size = r.stdout.split('\n')[1 if reuse else 0].split()
    return float(t) * 1000, int(size)


def section_scrape():
    big, _ = data_file(CFG['lines'])
    want = CFG['scrape_series']
    prefix, seen = [], set()
    with open(big, 'rb') as f:
        for line in f:
            prefix.append(line)
            seen.add(request_path(line))
            if len(seen) >= want:
                break
    data = b''.join(prefix)
    rules = os.path.join(BENCH, 'rules', 'paths.yml')
    srv = Server(['--rules', rules, '-'], 'scrape', stdin=subprocess.PIPE)
    COMMANDS.setdefault('scrape', []).append(
        'while :; do cat PREFIX; done | ' + sh_join(srv.argv) +
        '   # PREFIX = the first %d generator lines, %d distinct paths' % (len(prefix), len(seen)))
    COMMANDS['scrape'].append("curl -s -o /dev/null -w '%{time_total}\\n' " + srv.url +
                              '   # new connection')
    COMMANDS['scrape'].append("curl -s -o /dev/null -o /dev/null -w '%{time_total}\\n' " + srv.url + ' ' +
                              srv.url + '   # keep-alive: the 2nd time is used')
    srv.proc.stdin.write(data)
    srv.proc.stdin.flush()
    harness.wait_for(lambda: srv.value('sshtail_lines_total', source='stdin') == len(prefix), 60,
                     what='prefix parsed')
    series = len(promtext.select(srv.metrics(), 'bench_http_requests_by_path_total'))
    idle = [curl_time(srv.url) for _ in range(CFG['idle_scrapes'])]
    idle_reuse = [curl_time(srv.url, reuse=True) for _ in range(CFG['idle_scrapes'])]

    stop = threading.Event()

    def feed():
        try:
            while not stop.is_set():
                srv.proc.stdin.write(data)
        except (BrokenPipeError, ValueError):
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    time.sleep(1.0)
    l0, t0 = srv.value('sshtail_lines_total', source='stdin'), time.monotonic()
    loaded, loaded_reuse = [], []
    for _ in range(CFG['scrapes']):
        loaded.append(curl_time(srv.url))
        time.sleep(0.05)
        loaded_reuse.append(curl_time(srv.url, reuse=True))
        time.sleep(0.05)
    l1, t1 = srv.value('sshtail_lines_total', source='stdin'), time.monotonic()
    stop.set()
    feeder.join(30)
    series_end = len(promtext.select(srv.metrics(), 'bench_http_requests_by_path_total'))
    try:
        srv.proc.stdin.close()
    except OSError:
        pass
    srv.kill()
    stats = scrape_stats
    res = {'prefix_lines': len(prefix), 'distinct_paths': len(seen), 'series': series,
           'series_end': series_end, 'body_bytes': statistics.median(x[1] for x in loaded),
           'lines_per_s_during': (l1 - l0) / (t1 - t0), 'scrapes': len(loaded),
           'loaded': stats(loaded), 'loaded_reuse': stats(loaded_reuse),
           'idle': stats(idle), 'idle_reuse': stats(idle_reuse)}
    log('scrape: %d series, loaded p50 %.1f ms p99 %.1f ms (keep-alive p50 %.1f p99 %.1f) at %.0f lines/s' %
        (series, res['loaded']['p50_ms'], res['loaded']['p99_ms'], res['loaded_reuse']['p50_ms'],
         res['loaded_reuse']['p99_ms'], res['lines_per_s_during']))
    return res


# ----------------------------------------------------------------- report

def version(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001
        return 'unknown (%s)' % e


def machine_info(src_bin):
    cpu = '?'
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    with open('/proc/meminfo') as f:
        mem = f.readline().split()[1]
    with open(BIN, 'rb') as f:
        sha = hashlib.sha256(f.read()).hexdigest()[:16]
    git = subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'], capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(['git', '-C', ROOT, 'status', '--porcelain', '--', 'exporter', 'rules'],
                           capture_output=True, text=True).stdout.strip()
    debian = open('/etc/debian_version').read().strip() if os.path.exists('/etc/debian_version') else '?'
    return {
        'date': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
        'nproc': subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip(),
        'cpu': cpu, 'kernel': platform.release(), 'debian': debian,
        'mem_gib': '%.1f' % (int(mem) / 1048576),
        'exporter': version([BIN, '--version']), 'binary': '%s (copied from %s, sha256 %s)' % (
            BIN, src_bin, sha),
        'source': 'git %s%s' % (git, ', uncommitted changes under exporter/ or rules/' if dirty else ''),
        'mtail': version(['mtail', '--version']), 'hyperfine': version(['hyperfine', '--version']),
        'openssh': version(['ssh', '-V']), 'gnuplot': version(['gnuplot', '--version']),
        'python': platform.python_version(),
    }


def verdict(ok):
    return '**met**' if ok else '**MISSED**'


def fmt_rate(x):
    return '{:,.0f}'.format(x) if x is not None else '-'


def mib(kib):
    return kib / 1024.0 if kib is not None else float('nan')


def targets(R):
    rows = []  # (target, measured, verdict, margin)
    L = R.get('local')
    if L and 'results' in L:
        ratio = L['ratio']
        rows.append(('1. `--once` ≥ 15× mtail lines/s',
                     '%.1f× (%s vs %s lines/s)' % (ratio, fmt_rate(L['results']['sshtail']['lines_per_s']),
                                                   fmt_rate(L['results']['mtail']['lines_per_s'])),
                     verdict(ratio >= 15), '%.0f %% of target' % (ratio / 15 * 100)))
        # Issue 13's per-line target (bench/PROFILE.md says where the time goes).
        rows.append(('1b. `--once` ≥ 100× mtail lines/s', '%.1f×' % ratio, verdict(ratio >= 100),
                     '%.0f %% of target; see PROFILE.md' % (ratio / 100 * 100)))
        ok = not L['sshtail_check'] and not L['mtail_check']
        rows.append(('1. exact counts vs generator truth', 'sshtail: %s; mtail counters: %s' % (
            'exact' if not L['sshtail_check'] else 'WRONG', 'exact' if not L['mtail_check'] else 'WRONG'),
            verdict(ok), ''))
    S = R.get('ssh')
    if S and 'results' in S:
        lps = S['results']['sshtail-ssh']['lines_per_s']
        rows.append(('2. SSH ≥ 1,000,000 lines/s', '%s lines/s' % fmt_rate(lps), verdict(lps >= 1e6),
                     '%.0f %% of target' % (lps / 1e6 * 100)))
        rows.append(('2. SSH ≥ 80 % of OpenSSH `cat`', '%.0f %% of `ssh cat`' % (S['ratio_vs_cat'] * 100),
                     verdict(S['ratio_vs_cat'] >= 0.8), '%.0f %% of target' % (S['ratio_vs_cat'] / 0.8 * 100)))
        same = S.get('ratio_vs_same_cipher')
        if same is not None:
            rows.append(('2b. SSH ≥ 95 %% of `ssh -c %s cat` (the same cipher)' % S['sshtail_cipher'],
                         '%.0f %%' % (same * 100), verdict(same >= 0.95),
                         '%.0f %% of target; see PROFILE.md' % (same / 0.95 * 100)))
        rows.append(('2. exact counts over SSH', 'exact' if not S['sshtail_check'] else 'WRONG',
                     verdict(not S['sshtail_check']), ''))
    T = R.get('latency')
    if T and 'local' in T:
        for k, name in (('local', 'local file'), ('ssh', 'SSH')):
            if k in T:
                p99 = T[k]['p99_ms']
                rows.append(('3. latency p99 < 100 ms, %s' % name,
                             'p99 %.1f ms (p50 %.1f, max %.1f; %d samples)' % (
                                 p99, T[k]['p50_ms'], T[k]['max_ms'], T[k]['samples']),
                             verdict(p99 < 100 and T[k]['unseen'] == 0), '%.0f %% of limit' % p99))
    M = R.get('memory')
    if M and 'once' in M:
        big = mib(M['once']['big']['median_kib'])
        small = mib(M['once']['small']['median_kib'])
        rows.append(('4. `--once` %s lines peak RSS ≤ 64 MB' % '{:,}'.format(CFG['lines']), '%.1f MiB' % big,
                     verdict(big <= 64), '%.0f %% of limit' % (big / 64 * 100)))
        for a, b in (('small', 'big'), ('big', 'xl')):
            x, y = M['once'][a], M['once'][b]
            rows.append(('4. `--once` RSS does not grow with file size, %s → %s lines (≤ +10 %%)' % (
                '{:,}'.format(x['lines']), '{:,}'.format(y['lines'])),
                '%.1f → %.1f MiB' % (mib(x['median_kib']), mib(y['median_kib'])),
                verdict(y['median_kib'] <= x['median_kib'] * 1.10),
                '%+.0f %%' % ((y['median_kib'] / x['median_kib'] - 1) * 100)))
        for s in M.get('stream', []):
            hwm = mib(s['hwm_kib'])
            rows.append(('4. slow consumer: RSS bounded (≤ 64 MB), `%s`' % (s['args'] or 'defaults'),
                         'peak %.1f MiB over %s lines' % (hwm, '{:,}'.format(s['lines'])),
                         verdict(hwm <= 64 and s['lines'] == s['want_lines']),
                         '%.0f %% of limit' % (hwm / 64 * 100)))
    C = R.get('scale')
    if C and 'cpu_pct' in C:
        rows.append(('5. %d quiet SSH sources: CPU < 2 %% of a core' % C['sources'],
                     '%.2f %% over %.0f s%s' % (C['cpu_pct'], C['window_s'], '' if C['all_up'] else
                                               ' (only %d sources ever up!)' % C['up_before_window']),
                     verdict(C['cpu_pct'] < 2 and C['all_up']),
                     '%.0f %% of limit' % (C['cpu_pct'] / 2 * 100)))
        rows.append(('5. %d quiet SSH sources: RSS < 200 MB' % C['sources'],
                     '%.1f MiB (peak %.1f)' % (mib(C['rss_kib']), mib(C['hwm_kib'])),
                     verdict(mib(C['hwm_kib']) < 200), '%.0f %% of limit' % (mib(C['hwm_kib']) / 200 * 100)))
    B = (R.get('latency') or {}).get('builtin_scrape')
    if B:
        p99 = B['idle_reuse']['p99_ms']
        rows.append(('6. (extra) scrape of the built-in rules, 1 source, %.0f KB, keep-alive, idle < 50 ms'
                     % (B['idle_reuse']['bytes'] / 1e3),
                     'p99 %.1f ms, median %.1f ms (new connection: median %.1f ms)' % (
                         p99, B['idle_reuse']['p50_ms'], B['idle']['p50_ms']),
                     verdict(p99 < 50), '%.0f %% of limit' % (p99 / 50 * 100)))
    P = R.get('scrape')
    if P and 'loaded' in P:
        for k, how in (('loaded', 'new connection'), ('loaded_reuse', 'keep-alive connection')):
            p99 = P[k]['p99_ms']
            rows.append(('6. scrape of %s series < 50 ms under load, %s' % ('{:,}'.format(P['series']), how),
                         'p99 %.1f ms, median %.1f ms (at %s lines/s)' % (
                             p99, P[k]['p50_ms'], fmt_rate(P['lines_per_s_during'])),
                         verdict(p99 < 50), '%.0f %% of limit' % (p99 / 50 * 100)))
    return rows


def write_results(R, info, out_dir, charts_rel, quick):
    L, S, M, T, C, P = (R.get(k) or {} for k in ('local', 'ssh', 'memory', 'latency', 'scale', 'scrape'))
    o = []
    w = o.append
    w('# sshtail_exporter benchmark results%s\n' % (' (QUICK smoke run — sizes shrunk, not comparable)'
                                                   if quick else ''))
    w('Written by `bench/run%s` on %s. Medians unless noted; see `bench/README.md` for the method.\n'
      % (' --quick' if quick else '', info['date']))
    w('## Machine\n')
    w('| | |\n|---|---|')
    for k, label in (('nproc', '`nproc`'), ('cpu', 'CPU'), ('mem_gib', 'memory (GiB)'),
                     ('kernel', 'kernel'), ('debian', 'Debian'), ('exporter', 'exporter'),
                     ('binary', 'binary'), ('source', 'source tree'), ('mtail', 'mtail'),
                     ('hyperfine', 'hyperfine'), ('openssh', 'OpenSSH'), ('gnuplot', 'gnuplot'),
                     ('python', 'python3')):
        w('| %s | %s |' % (label, str(info[k]).replace('|', '\\|')))
    w('| load average per section | %s |' % ', '.join('%s: %s' % (k, R[k].get('loadavg', '?'))
                                                    for k in SECTIONS if R.get(k)))
    w('')
    w('## Targets\n')
    w('| target | measured | verdict | margin |\n|---|---|---|---|')
    for row in targets(R):
        w('| %s |' % ' | '.join(row))
    errs = [(k, R[k]['error']) for k in SECTIONS if R.get(k) and 'error' in R[k]]
    for k, e in errs:
        w('\n**Section `%s` could not be measured:**\n\n```\n%s\n```' % (k, e.strip()[-2000:]))
    w('')

    if 'results' in L:
        w('## 1. `--once` throughput, local file\n')
        w('%s lines, %.0f MB (generator, `--format timed`, seed %d). %d runs per tool in %d '
          'interleaved hyperfine rounds.\n' % ('{:,}'.format(L['lines']), L['bytes'] / 1e6, SEED,
                                               L['results']['sshtail']['runs'], CFG['rounds']))
        w('| tool | median s | min s | max s | lines/s | MB/s |\n|---|---|---|---|---|---|')
        for k in ('sshtail', 'mtail'):
            r = L['results'][k]
            w('| %s | %.3f | %.3f | %.3f | %s | %.0f |' % (k, r['median_s'], r['min_s'], r['max_s'],
                                                          fmt_rate(r['lines_per_s']),
                                                          L['bytes'] / r['median_s'] / 1e6))
        w('\nRatio sshtail / mtail: **%.1f×** (target ≥ 15×).\n' % L['ratio'])
        w('Exact counts: sshtail %s; mtail counters %s. mtail histogram `_count` − `+Inf` bucket = %s '
          '(its known bug with observations of exactly 0; histograms are not compared).\n' % (
              'match the truth (requests per method/status, bytes, lines, histogram count/sum)'
              if not L['sshtail_check'] else 'DIFFER: %s' % L['sshtail_check'],
              'match' if not L['mtail_check'] else 'DIFFER: %s' % L['mtail_check'],
              '{:,.0f}'.format(L.get('mtail_hist_count_minus_inf', float('nan')))))
    if 'results' in S:
        w('## 2. `--once` over SSH (sshd on loopback)\n')
        w('Same file, read through a real OpenSSH sshd on 127.0.0.1 as %s. Ciphers negotiated: '
          'sshtail (libssh) `%s`, OpenSSH `ssh` `%s`%s.\n' % (
              S['remote_user'], S.get('sshtail_cipher', '?'), S['openssh_cipher'],
              '; `ssh-cat-same-cipher` is `ssh -c %s …`, for reference only' % S['sshtail_cipher']
              if 'ssh-cat-same-cipher' in S['results'] else ''))
        w('| command | median s | min s | max s | lines/s | MB/s |\n|---|---|---|---|---|---|')
        for k in ('sshtail-ssh', 'ssh-cat', 'ssh-cat-wc', 'ssh-cat-same-cipher'):
            if k not in S['results']:
                continue
            r = S['results'][k]
            w('| %s | %.3f | %.3f | %.3f | %s | %.0f |' % (k, r['median_s'], r['min_s'], r['max_s'],
                                                          fmt_rate(r['lines_per_s']),
                                                          S['bytes'] / r['median_s'] / 1e6))
        w('\nsshtail over SSH = **%.0f %%** of `ssh cat` (target ≥ 80 %%) and %s lines/s (target '
          '≥ 1,000,000). Counts over SSH: %s. `ssh cat | wc -l` = %s.\n' % (
              S['ratio_vs_cat'] * 100, fmt_rate(S['results']['sshtail-ssh']['lines_per_s']),
              'exact' if not S['sshtail_check'] else 'DIFFER: %s' % S['sshtail_check'],
              '{:,}'.format(S['wc_lines'])))
        if 'ratio_vs_same_cipher' in S:
            w('Against `ssh -c %s cat` (the exporter\'s cipher): %.0f %%.\n' % (
                S['sshtail_cipher'], S['ratio_vs_same_cipher'] * 100))
    if 'once' in M:
        w('## 4. Memory\n')
        w('| run | lines | peak RSS (MiB) |\n|---|---|---|')
        for k in ('small', 'big', 'xl'):
            r = M['once'][k]
            w('| `--once` file | %s | %.1f (runs: %s) |' % ('{:,}'.format(r['lines']), mib(r['median_kib']),
                                                           ', '.join('%.1f' % mib(v) for v in r['peak_kib'])))
        for s in M['stream']:
            w('| `cat file×%d \\| --once %s -` | %s | %.1f (max VmRSS %.1f, %.1f s, exit %s) |' % (
                CFG['stream_copies'], s['args'], '{:,}'.format(s['lines']), mib(s['hwm_kib']),
                mib(s['max_rss_kib']), s['seconds'], s['exit']))
        w('\nThe queue holds at most `--queue.batches` × 256 KiB (8 → 2 MiB, 64 → 16 MiB). '
          'RSS over time: `%s/rss.png`.\n' % charts_rel)
    if 'local' in T:
        w('## 3. Latency: appended line → visible in /metrics\n')
        w('A writer appends generator lines at %s lines/s (100 lines every 10 ms); a poller GETs '
          '/metrics back to back. Latency of a write = time from `write()` returning to the end of '
          'the first scrape whose `sshtail_lines_total` includes it (an upper bound: it includes one '
          'scrape and up to one poll period).\n' % fmt_rate(CFG['lat_rate']))
        w('The last write of a run is the end of the burst; its latency is shown on its own (a reader '
          'that leaves data buffered until something else arrives shows up there).\n')
        w('| source | samples | p50 ms | p90 ms | p99 ms | max ms | last write ms | rate lines/s | '
          'poll period ms | scrape ms |\n|---|---|---|---|---|---|---|---|---|---|')
        for k in ('local', 'ssh'):
            if k in T:
                r = T[k]
                w('| %s | %d%s | %.1f | %.1f | %.1f | %.1f | %.1f | %s | %.1f | %.1f |' % (
                    k, r['samples'], (' (%d never seen)' % r['unseen']) if r['unseen'] else '',
                    r['p50_ms'], r['p90_ms'], r['p99_ms'], r['max_ms'], r['last_write_ms'], fmt_rate(r['rate']),
                    r['poll_period_ms'], r['scrape_ms']))
        w('')
    if 'cpu_pct' in C:
        w('## 5. Scale: %d quiet SSH sources\n' % C['sources'])
        w('| | |\n|---|---|')
        for label, v in (('sources / connections (`--ssh.files-per-connection 4`)',
                          '%d / %d' % (C['sources'], C['connections'])),
                         ('all up after' if C['all_up'] else 'NOT all up; gave up after',
                          '%.1f s (%d up, %d reconnects by then)' % (
                              C['up_after_s'], C['up_before_window'], C['reconnects_before_window'])),
                         ('remote user', C['remote_user']),
                         ('exporter CPU over %.0f s' % C['window_s'], '%.2f %% of one core' % C['cpu_pct']),
                         ('exporter RSS / peak', '%.1f / %.1f MiB' % (mib(C['rss_kib']), mib(C['hwm_kib']))),
                         ('exporter threads', C['threads']),
                         ('sources up at the end / reconnects', '%d / %d' % (C['up_at_end'], C['reconnects'])),
                         ('remote side (sshd sessions, sh, tail: %d processes) CPU' % C['remote_procs'],
                          '%.2f %% of one core' % C['remote_cpu_pct'])):
            w('| %s | %s |' % (label, v))
        w('\nHeartbeat at its default (5 s); no scrapes during the window.\n')
    if 'loaded' in P:
        w('## 6. Scrape with %s series while parsing at full speed\n' % '{:,}'.format(P['series']))
        w('Rule `bench/rules/paths.yml` (a counter per request URI). The first %s generator lines hold '
          'exactly %s distinct URIs; they are fed to stdin once, then again and again as fast as the '
          'exporter takes them (%s lines/s during the scrapes) while curl times %d scrapes, 50 ms '
          'apart. Exposition: %.0f KB.\n' % ('{:,}'.format(P['prefix_lines']), '{:,}'.format(P['distinct_paths']),
                                            fmt_rate(P['lines_per_s_during']), P['scrapes'], P['body_bytes'] / 1e3))
        w('| exporter | connection | scrapes | p50 ms | p90 ms | p99 ms | max ms |\n'
          '|---|---|---|---|---|---|---|')
        for k, a, b in (('idle', 'idle', 'new'), ('idle_reuse', 'idle', 'keep-alive (2nd request)'),
                        ('loaded', 'parsing at full speed', 'new'),
                        ('loaded_reuse', 'parsing at full speed', 'keep-alive (2nd request)')):
            r = P[k]
            w('| %s | %s | %d | %.1f | %.1f | %.1f | %.1f |' % (a, b, r['n'], r['p50_ms'], r['p90_ms'],
                                                              r['p99_ms'], r['max_ms']))
        B = T.get('builtin_scrape')
        if B:
            for k, b in (('idle', 'new'), ('idle_reuse', 'keep-alive (2nd request)')):
                r = B[k]
                w('| idle, built-in rules, 1 source (%.0f KB, from the latency section) | %s | %d | %.1f | '
                  '%.1f | %.1f | %.1f |' % (r['bytes'] / 1e3, b, r['n'], r['p50_ms'], r['p90_ms'],
                                            r['p99_ms'], r['max_ms']))
        w('\nSeries of the rule metric: %d after the first pass, %d at the end.\n' % (P['series'],
                                                                                   P['series_end']))
    w('## Charts\n')
    for name, what in (('throughput', 'lines/s per tool'), ('latency', 'latency percentiles'),
                       ('scrape', 'scrape time percentiles'), ('rss', 'RSS of the stdin stream runs')):
        if os.path.exists(os.path.join(out_dir, 'charts', name + '.png')):
            w('![%s](%s/%s.png)\n' % (what, charts_rel, name))
    w('## Exact commands\n')
    w('The exporter is the copy made at the start of the run (see Machine); paths are as run.\n')
    for k in SECTIONS:
        if COMMANDS.get(k):
            w('**%s**\n\n```sh\n%s\n```\n' % (k, '\n'.join(COMMANDS[k])))
    path = os.path.join(out_dir, 'RESULTS.md')
    text = '\n'.join(o).rstrip() + '\n'
    # The sections of bench/fleet.py, link.py and catchup.py are their own:
    # carried over as they were.
    old = open(path).read() if os.path.exists(path) else ''
    for name in ('fleet', 'link', 'catchup'):
        begin = '<!-- bench/%s.py: begin -->' % name
        end = '<!-- bench/%s.py: end -->' % name
        if begin in old and end in old:
            text += '\n' + old[old.index(begin):old.index(end) + len(end)] + '\n'
    with open(path, 'w') as f:
        f.write(text)


FLEET_BEGIN = '<!-- bench/fleet.py: begin -->'
FLEET_END = '<!-- bench/fleet.py: end -->'


def put_section(name, body, path=None):
    """Puts `body` between bench/NAME.py's markers in RESULTS.md: in place if they are
    there (every other section untouched), else at the end."""
    path = path or os.path.join(BENCH, 'RESULTS.md')
    begin = '<!-- bench/%s.py: begin -->' % name
    end = '<!-- bench/%s.py: end -->' % name
    text = open(path).read() if os.path.exists(path) else ''
    block = '\n'.join([begin, '', body, '', end])
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip('\n') + '\n\n' + block + '\n'
    with open(path, 'w') as f:
        f.write(text)


def gnuplot(script, name, charts):
    gp = os.path.join(WORK, name + '.gp')
    with open(gp, 'w') as f:
        f.write('set terminal pngcairo size 900,540 font "sans,10" noenhanced\nset output "%s"\n' %
                os.path.join(charts, name + '.png'))
        f.write(script)
    r = subprocess.run(['gnuplot', gp], capture_output=True, text=True)
    if r.returncode != 0:
        log('gnuplot %s failed: %s' % (name, r.stderr.strip()[-500:]))


def charts(R, out_dir):
    ch = os.path.join(out_dir, 'charts')
    os.makedirs(ch, exist_ok=True)
    for f in os.listdir(ch):
        if f.endswith('.png'):
            os.unlink(os.path.join(ch, f))
    bars = []
    if 'results' in (R.get('local') or {}):
        bars += [('sshtail --once\\n(local)', R['local']['results']['sshtail']['lines_per_s']),
                 ('mtail -one_shot\\n(local)', R['local']['results']['mtail']['lines_per_s'])]
    if 'results' in (R.get('ssh') or {}):
        bars += [('sshtail --once\\n(SSH)', R['ssh']['results']['sshtail-ssh']['lines_per_s']),
                 ('ssh cat\\n(OpenSSH)', R['ssh']['results']['ssh-cat']['lines_per_s'])]
        if 'ssh-cat-same-cipher' in R['ssh']['results']:
            bars.append(('ssh -c %s cat\\n(OpenSSH)' % R['ssh']['sshtail_cipher'].split('@')[0],
                         R['ssh']['results']['ssh-cat-same-cipher']['lines_per_s']))
    if bars:
        dat = os.path.join(WORK, 'throughput.dat')
        with open(dat, 'w') as f:
            for label, v in bars:
                f.write('"%s" %f\n' % (label, v))
        gnuplot('''set title "Lines per second (median, %s lines, timed format)"
set bmargin 4
set style data histograms
set style fill solid 0.8 border -1
set boxwidth 0.6
set ylabel "lines/s"
set format y "%%.1s%%c"
set yrange [0:*]
set grid ytics
set key off
plot "%s" using 2:xtic(1) lc rgb "#3a7bd5", "" using 0:2:(sprintf("%%.0f", $2)) with labels offset 0,0.8
''' % ('{:,}'.format(CFG['lines']), dat), 'throughput', ch)
    T = R.get('latency') or {}
    if 'local' in T:
        dat = os.path.join(WORK, 'latency.dat')
        with open(dat, 'w') as f:
            for p in ('p50', 'p90', 'p99', 'max'):
                f.write('%s %f %f\n' % (p, T['local'][p + '_ms'], T.get('ssh', T['local'])[p + '_ms']))
        gnuplot('''set title "Append -> visible in /metrics at %s lines/s"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set ylabel "ms"
set yrange [0:%f]
set grid ytics
plot "%s" using 2:xtic(1) title "local file" lc rgb "#3a7bd5", "" using 3 title "SSH" lc rgb "#e07b39", 100 with lines dt 2 lc rgb "red" title "target p99 100 ms"
''' % ('{:,}'.format(CFG['lat_rate']), max([100.0] + [T[k][p + '_ms'] for k in ('local', 'ssh') if k in T
                                                          for p in ('p50', 'p90', 'p99', 'max')]) * 1.15,
       dat), 'latency', ch)
    P = R.get('scrape') or {}
    if 'loaded' in P:
        dat = os.path.join(WORK, 'scrape.dat')
        with open(dat, 'w') as f:
            for p in ('p50', 'p90', 'p99', 'max'):
                f.write('%s %f %f %f %f\n' % (p, P['idle'][p + '_ms'], P['idle_reuse'][p + '_ms'],
                                              P['loaded'][p + '_ms'], P['loaded_reuse'][p + '_ms']))
        gnuplot('''set title "Scrape time of /metrics with %s series (curl time_total)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set ylabel "ms"
set yrange [0:*]
set grid ytics
set key top left
plot "%s" using 2:xtic(1) title "idle, new conn" lc rgb "#9cc59c", "" using 3 title "idle, keep-alive" lc rgb "#4f8f4f", "" using 4 title "parsing, new conn" lc rgb "#f0a46c", "" using 5 title "parsing, keep-alive" lc rgb "#b85a1c", 50 with lines dt 2 lc rgb "red" title "target 50 ms"
''' % ('{:,}'.format(P['series']), dat), 'scrape', ch)
    M = R.get('memory') or {}
    if M.get('stream'):
        plots = []
        for s in M['stream']:
            dat = os.path.join(WORK, 'rss-%s.dat' % s['label'])
            with open(dat, 'w') as f:
                for t, rss, _ in s['samples']:
                    f.write('%f %f\n' % (t, rss / 1024.0))
            plots.append('"%s" using 1:2 with lines lw 2 title "--once %s - (stdin, %s lines)"' % (
                dat, s['args'] or '(defaults)', '{:,}'.format(s['lines'])))
        gnuplot('''set title "RSS while reading a stdin stream faster than it is parsed"
set xlabel "s"
set ylabel "VmRSS (MiB)"
set yrange [0:*]
set grid
set key bottom right
plot %s, 64 with lines dt 2 lc rgb "red" title "64 MB"
''' % ', '.join(plots), 'rss', ch)


# ------------------------------------------------------------------- main

def side_bench_work(name, src_bin):
    """Work dir bench/out/NAME for a side benchmark (catchup.py, link.py), with a copy
    of the binary (so a rebuild cannot disturb a run); returns (work, binary)."""
    global WORK, BIN
    work = os.path.join(BENCH, 'out', name)
    os.makedirs(work, exist_ok=True)
    os.chmod(work, 0o755)
    WORK = work
    BIN = harness.BIN = copy_binary(src_bin, os.path.join(work, 'bin'))
    return work, BIN


def copy_binary(src, dst_dir):
    """Copies the binary and its shims; retries while a rebuild is linking it."""
    os.makedirs(dst_dir, exist_ok=True)
    src_dir = os.path.dirname(os.path.abspath(src))
    dst = os.path.join(dst_dir, 'sshtail_exporter')
    for attempt in range(12):
        shutil.copy2(src, dst)
        for f in os.listdir(src_dir):
            if f.startswith('libsshtail-') and f.endswith('.so'):
                shutil.copy2(os.path.join(src_dir, f), dst_dir)
        r = subprocess.run([dst, '--version'], capture_output=True, text=True)
        if r.returncode == 0:
            return dst
        log('copied binary does not run (%s); retrying in 5 s' % r.stderr.strip()[:200])
        time.sleep(5)
    raise SystemExit('bench: %s does not run' % src)


def main():
    global BIN, CFG, WORK
    ap = argparse.ArgumentParser(prog='bench/run', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='tiny smoke run (well under a minute)')
    ap.add_argument('--bin', default=os.environ.get('SSHTAIL_BIN', os.path.join(ROOT, 'build', 'sshtail_exporter')),
                    help='exporter binary (env SSHTAIL_BIN; default build/sshtail_exporter)')
    ap.add_argument('--only', default='', help='comma-separated sections to run: ' + ','.join(SECTIONS))
    ap.add_argument('--rounds', type=int, help='hyperfine rounds (default 3, quick 1)')
    ap.add_argument('--runs', type=int, help='hyperfine runs per command per round (default 2)')
    ap.add_argument('--out', help='where RESULTS.md and charts/ go (default bench/, quick: bench/out/quick/)')
    a = ap.parse_args()

    CFG = dict(QUICK if a.quick else FULL)
    if a.rounds:
        CFG['rounds'] = a.rounds
    if a.runs:
        CFG['runs'] = a.runs
    out_dir = os.path.abspath(a.out or (os.path.join(BENCH, 'out', 'quick') if a.quick else BENCH))
    os.makedirs(out_dir, exist_ok=True)
    charts_rel = os.path.relpath(os.path.join(out_dir, 'charts'), out_dir)
    WORK = os.path.join(BENCH, 'out', 'work-quick' if a.quick else 'work')
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    os.chmod(WORK, 0o755)
    BIN = copy_binary(a.bin, os.path.join(WORK, 'bin'))
    harness.BIN = BIN
    sys.setswitchinterval(0.0005)  # the latency writer/poller threads must not wait on the GIL
    log('binary %s copied to %s; mode %s' % (a.bin, BIN, 'quick' if a.quick else 'full'))
    info = machine_info(a.bin)

    only = [s for s in a.only.split(',') if s] or SECTIONS
    funcs = {'local': section_local, 'ssh': section_ssh, 'memory': section_memory,
             'latency': section_latency, 'scale': section_scale, 'scrape': section_scrape}
    R = {}
    failed = False
    t_start = time.monotonic()
    for name in SECTIONS:
        if name not in only:
            continue
        la = loadavg()
        t0 = time.monotonic()
        log('section %s (load average %s)' % (name, la))
        try:
            R[name] = funcs[name]()
        except Exception:  # noqa: BLE001  a broken section must not hide the others
            failed = True
            R[name] = {'error': traceback.format_exc()}
            log('section %s failed:\n%s' % (name, R[name]['error']))
        finally:
            harness._cleanup_all()
        R[name]['loadavg'] = la
        R[name]['seconds'] = time.monotonic() - t0

    for s in (R.get('memory') or {}).get('stream', []):
        s['samples_count'] = len(s['samples'])
    with open(os.path.join(BENCH, 'out', 'results-%s.json' % ('quick' if a.quick else 'full')), 'w') as f:
        json.dump({'config': CFG, 'machine': info, 'results': R, 'commands': COMMANDS}, f, indent=1,
                  default=str)
    charts(R, out_dir)
    write_results(R, info, out_dir, charts_rel, a.quick)
    log('done in %.0fs: %s' % (time.monotonic() - t_start, os.path.join(out_dir, 'RESULTS.md')))
    for row in targets(R):
        print('  %-58s %-60s %s' % (row[0].replace('`', '')[:58], row[1][:60], row[2].strip('*')))
    # Missed targets are results, not failures; only a section that could not
    # be measured fails the run.
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
