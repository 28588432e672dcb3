#!/usr/bin/env python3
"""Fleet scale: 1,000 files on 250 hosts, this build against a release.

The hosts are 250 aliases in an OpenSSH client config (Host web000 ...
HostName 127.0.0.1) for one loopback sshd with stock MaxSessions and
MaxStartups, logging in as a user whose shell is /bin/sh; each host has 4
files, 4 files per connection. For each binary, in the same run:

  up        time until all 1,000 sources are up
  idle      exporter CPU (% of one core) and RSS over a quiet window
  latency   one new line in every file: time until all 1,000 are counted
  outage    sshd down for a while, then back: time until all are up again,
            connections sshd dropped for MaxStartups meanwhile
  reload    (builds with --sources.file) the inventory drops 125 hosts (500
            files) and adds 125 others: time until the new are up, and
            whether the kept 500 kept their counters

Usage: bench/fleet.py [--quick] [--bin B] [--release-rev REV | --release-bin B]
Writes bench/out/fleet-{full,quick}.json and prints a Markdown table.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, 'tests', 'integration'))
sys.path.insert(0, BENCH)
import bench  # noqa: E402  (process helpers, Server)
import harness  # noqa: E402
import promtext  # noqa: E402

HOSTS, FILES = 250, 4


def log(msg):
    print('[fleet %s] %s' % (time.strftime('%H:%M:%S'), msg), flush=True)


def build_release(rev, work):
    """The exporter at `rev`, built in a worktree of its own (ccache helps)."""
    src = os.path.join(work, 'release-src')
    if not os.path.exists(src):
        subprocess.run(['git', '-C', ROOT, 'worktree', 'add', '--detach', src, rev], check=True,
                       capture_output=True)
    out = os.path.join(work, 'release-build')
    env = dict(os.environ, CCACHE_NOHASHDIR='1')
    launcher = ['-DCMAKE_CXX_COMPILER_LAUNCHER=ccache'] if subprocess.run(
        ['which', 'ccache'], capture_output=True).returncode == 0 else []
    subprocess.run(['cmake', '-S', src, '-B', out, '-DCMAKE_BUILD_TYPE=RelWithDebInfo'] + launcher,
                   check=True, capture_output=True, env=env)
    subprocess.run(['cmake', '--build', out, '-j2', '--target', 'sshtail_exporter'], check=True,
                   capture_output=True, env=env)
    return os.path.join(out, 'sshtail_exporter')


class Fleet:
    """Files of HOSTS aliases on one sshd."""

    def __init__(self, work):
        self.dir = os.path.join(work, 'fleet')
        os.makedirs(self.dir, exist_ok=True)
        self.sshd = harness.Sshd(os.path.join(self.dir, 'sshd'), stock_limits=True,
                                 log_level='INFO')
        self.ssh_config = os.path.join(self.dir, 'ssh_config')
        self.names = ['web%03d' % h for h in range(2 * HOSTS)]  # half for the reload
        with open(self.ssh_config, 'w') as f:
            for n in self.names:
                f.write('Host %s\n  HostName 127.0.0.1\n  Port %d\n  User %s\n'
                        % (n, self.sshd.port, self.sshd.user))
        self.paths = {}
        logs = os.path.join(self.dir, 'logs')
        os.makedirs(logs, exist_ok=True)
        os.chmod(self.dir, 0o755)
        os.chmod(logs, 0o755)
        for n in self.names:
            self.paths[n] = []
            for k in range(FILES):
                p = os.path.join(logs, '%s-%d.log' % (n, k))
                open(p, 'w').close()
                os.chmod(p, 0o644)
                self.paths[n].append(p)

    def args(self):
        return ['--format', 'timed', '--ssh.files-per-connection', str(FILES),
                '--ssh.identity-file', self.sshd.key, '--ssh.known-hosts', self.sshd.known_hosts,
                '--ssh.config', self.ssh_config, '--ssh.max-backoff', '30s']

    def urls(self, hosts):
        return ['ssh://%s%s' % (n, p) for n in hosts for p in self.paths[n]]

    def inventory(self, hosts, path):
        groups = [{'targets': [n], 'labels': {'__path__': p}} for n in hosts for p in self.paths[n]]
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(groups, f)
        os.rename(tmp, path)

    def append_one(self, hosts, line):
        for n in hosts:
            for p in self.paths[n]:
                with open(p, 'a') as f:
                    f.write(line)

    def down(self):
        """Every host unreachable: the listener stopped first (a client
        reconnecting meanwhile would get a session nobody kills), each
        session's processes killed (a session outlives its monitor), then
        the listener; nothing of the sessions is left to load the machine."""
        pid = self.sshd.proc.pid
        os.kill(pid, signal.SIGSTOP)
        # By parent and by user, never by a listed pid: one that ended may
        # name another process by the time it is signalled (a listing of
        # this many short-lived processes once killed an unrelated one).
        for _ in range(20):
            if not bench.descendants(pid):
                break
            subprocess.run(['pkill', '-KILL', '-P', str(pid)], capture_output=True)
            subprocess.run(['pkill', '-KILL', '-u', self.sshd.user], capture_output=True)
            time.sleep(0.1)
        self.sshd.stop()
        subprocess.run(['pkill', '-KILL', '-u', self.sshd.user], capture_output=True)

    def dropped(self):
        with open(os.path.join(self.sshd.dir, 'sshd.log'), errors='replace') as f:
            return len(re.findall(r'MaxStartups', f.read()))


SCRAPES = []  # (seconds from request to the whole body) of every poll


def scrape_total(srv, name):
    """The sum of `name`'s samples, and when the body had arrived. The
    exposition is scanned for that name only: parsing all of a 1,000-source
    exposition in Python takes seconds on the loaded machine, which a
    Prometheus scrape does not pay and the figures must not include."""
    t0 = time.monotonic()
    with urllib.request.urlopen(srv.url, timeout=30) as r:
        body = r.read()
    at = time.monotonic()
    SCRAPES.append(at - t0)
    pre, total = name.encode(), 0.0
    for line in body.split(b'\n'):
        if line.startswith(pre) and line[len(pre):len(pre) + 1] in (b'{', b' '):
            rest = line.rsplit(b'}', 1)[1] if b'}' in line else line[len(pre):]
            total += float(rest.split()[0])
    return total, at


def wait_up(srv, want, timeout):
    t0 = time.monotonic()
    up = 0
    while time.monotonic() - t0 < timeout:
        try:
            up, at = scrape_total(srv, 'sshtail_source_up')
        except Exception:
            up, at = 0, None
        if up >= want:
            return at - t0, up
        time.sleep(0.25)
    return None, up


def wait_down(srv, timeout):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        up, at = scrape_total(srv, 'sshtail_source_up')
        if up == 0:
            return at - t0, 0
        time.sleep(0.5)
    return None, None


def measure(binary, label, fleet, cfg, inventory):
    work = os.path.join(bench.WORK, label)
    os.makedirs(work, exist_ok=True)
    hosts = fleet.names[:HOSTS]
    n = HOSTS * FILES
    if inventory:
        inv = os.path.join(work, 'targets.json')
        fleet.inventory(hosts, inv)
        args = fleet.args() + ['--sources.file', inv]
    else:
        conf = os.path.join(work, 'config.yml')
        with open(conf, 'w') as f:
            f.write('sources:\n' + ''.join('  - %s\n' % u for u in fleet.urls(hosts)))
        args = fleet.args() + ['--config', conf]
    bench.BIN = binary
    res = {'binary': label, 'sources': n}
    drops0 = fleet.dropped()
    srv = bench.Server(args, label)
    up_s, up = wait_up(srv, n, 180)
    res['up_after_s'], res['up'] = up_s, up
    res['startup_dropped'] = fleet.dropped() - drops0
    log('%s: %s of %d up after %s s' % (label, up, n, up_s))
    time.sleep(3)
    hz = os.sysconf('SC_CLK_TCK')
    remote = bench.descendants(fleet.sshd.proc.pid)
    r0 = bench.tree_ticks(remote)
    c0, w0 = bench.proc_cpu_ticks(srv.pid), time.monotonic()
    time.sleep(cfg['idle_s'])
    c1, w1 = bench.proc_cpu_ticks(srv.pid), time.monotonic()
    r1 = bench.tree_ticks(remote)
    res['remote_procs'] = len(remote)
    res['remote_cpu_pct'] = sum(r1[p] - r0[p] for p in r1 if p in r0) / hz / (w1 - w0) * 100
    res['loadavg'] = os.getloadavg()[0]
    st = bench.proc_status(srv.pid)
    res['idle_cpu_pct'] = (c1 - c0) / hz / (w1 - w0) * 100
    res['rss_mib'] = st.get('VmRSS', 0) / 1024
    res['threads'] = st.get('Threads')
    lines, _ = harness.generate(1, 'timed', seed=3)
    before, _ = scrape_total(srv, 'sshtail_lines_total')
    del SCRAPES[:]
    t0, wall0 = time.monotonic(), time.time()
    fleet.append_one(hosts, lines[0] + '\n')
    wall1 = time.time()
    while True:
        got, at = scrape_total(srv, 'sshtail_lines_total')
        if got >= before + n or at - t0 > 60:
            break
        time.sleep(0.05)
    res['all_lines_counted_s'] = at - t0
    res['scrape_p50_s'] = sorted(SCRAPES)[len(SCRAPES) // 2]
    m = srv.metrics()
    res['lines_counted'] = promtext.total(m, 'sshtail_lines_total') - before
    # When each file's line was read, by the exporter's own clock: the
    # latency without the scrapes (a 1,000-source exposition is large).
    read_at = sorted(v for _, v in promtext.select(m, 'sshtail_source_last_line_timestamp_seconds'))
    res['write_s'] = wall1 - wall0
    res['read_p50_s'] = read_at[len(read_at) // 2] - wall0 if read_at else None
    res['read_max_s'] = read_at[-1] - wall0 if read_at else None
    res['exposition_kb'] = len(urllib.request.urlopen(srv.url, timeout=30).read()) / 1e3
    log('%s: idle CPU %.2f %%, RSS %.1f MiB; %d new lines counted in %.2f s'
        % (label, res['idle_cpu_pct'], res['rss_mib'], res['lines_counted'],
           res['all_lines_counted_s']))
    # Every host unreachable for a while, then back.
    drops0 = fleet.dropped()
    fleet.down()
    down_s, _ = wait_down(srv, 120)
    res['all_down_s'] = down_s
    if down_s is None:
        m = srv.metrics()
        still = [d.get('file') for d, v in promtext.select(m, 'sshtail_source_up') if v]
        log('%s: %d sources still up 120 s after every session was killed: %s; sshd: %s'
            % (label, len(still), still[:5], len(bench.descendants(fleet.sshd.proc.pid))
               if fleet.sshd.proc.poll() is None else 'stopped'))
    time.sleep(cfg['outage_s'])
    fleet.sshd.start(fleet.sshd.port)
    back_s, up = wait_up(srv, n, 240)
    res['outage_s'], res['back_after_s'], res['back_up'] = cfg['outage_s'], back_s, up
    res['outage_dropped'] = fleet.dropped() - drops0
    log('%s: back after %s s (%d up), %d dropped for MaxStartups'
        % (label, back_s, up, res['outage_dropped']))
    if inventory:
        kept = fleet.names[HOSTS // 2:HOSTS]
        m0 = srv.metrics()
        keep0 = {p: promtext.total(m0, 'sshtail_lines_total', file=p)
                 for n_ in kept for p in fleet.paths[n_]}
        new = fleet.names[HOSTS:HOSTS + HOSTS // 2]
        t0 = time.monotonic()
        fleet.inventory(kept + new, inv)
        want = len(kept + new) * FILES

        def switched():
            m = srv.metrics()
            gone = sum(v for d, v in promtext.select(m, 'sshtail_source_up')
                       if d.get('file', '').split('/')[-1][:6] in set(fleet.names[:HOSTS // 2]))
            return promtext.total(m, 'sshtail_source_up') == want and gone == 0
        harness.wait_for(switched, 240, 0.25, 'reload applied')
        res['reload_s'] = time.monotonic() - t0
        m = srv.metrics()
        res['reload_kept_counters'] = all(
            promtext.total(m, 'sshtail_lines_total', file=p) == v for p, v in keep0.items())
        res['reload_kept_up'] = sum(promtext.total(m, 'sshtail_source_up', file=p)
                                    for p in keep0)
        log('%s: reload -500 +500 in %.1f s, kept counters: %s'
            % (label, res['reload_s'], res['reload_kept_counters']))
    st = bench.proc_status(srv.pid)
    res['rss_end_mib'] = st.get('VmRSS', 0) / 1024
    res['hwm_mib'] = st.get('VmHWM', 0) / 1024
    srv.kill()
    # The next binary meets a fresh sshd, with nothing of this run left.
    fleet.down()
    fleet.sshd.start(fleet.sshd.port)
    return res


def table(results):
    rows = [('sources (hosts x files)', lambda r: '%d (%d x %d)' % (r['sources'], HOSTS, FILES)),
            ('all up after', lambda r: '%.1f s' % r['up_after_s'] if r['up_after_s'] is not None
             else 'not all (%d)' % r['up']),
            ('connections sshd dropped (MaxStartups) at start',
             lambda r: str(r['startup_dropped'])),
            ('idle CPU', lambda r: '%.2f %% of a core' % r['idle_cpu_pct']),
            ('the simulated hosts (sshd, sh, tail processes) meanwhile',
             lambda r: '%.0f %% of a core (%d processes; load %.0f)'
             % (r['remote_cpu_pct'], r['remote_procs'], r['loadavg'])),
            ('RSS idle / peak', lambda r: '%.1f / %.1f MiB' % (r['rss_mib'], r['hwm_mib'])),
            ('threads', lambda r: str(r['threads'])),
            ('a new line in every file: all counted (seen by scrapes) after',
             lambda r: '%.2f s (%d lines; exposition %.0f kB, one scrape %.2f s median)'
             % (r['all_lines_counted_s'], r['lines_counted'], r['exposition_kb'],
                r.get('scrape_p50_s', float('nan')))),
            ('... read by the exporter (its last-line times): median / last',
             lambda r: '%.2f / %.2f s (writing them took %.2f s)'
             % (r['read_p50_s'], r['read_max_s'], r['write_s'])),
            ('all hosts down, then back: all up after',
             lambda r: ('%.1f s' % r['back_after_s'] if r['back_after_s'] is not None
                        else 'not all (%d)' % r['back_up']) + ' (down %d s)' % r['outage_s']),
            ('connections dropped (MaxStartups) on the way back',
             lambda r: str(r['outage_dropped'])),
            ('reload: -500 files, +500 files: applied after',
             lambda r: '%.1f s' % r['reload_s'] if 'reload_s' in r else 'n/a'),
            ('reload: the 500 kept keep their counters',
             lambda r: str(r['reload_kept_counters']) if 'reload_s' in r else 'n/a')]
    out = ['| | ' + ' | '.join(r['binary'] for r in results) + ' |',
           '|---|' + '---|' * len(results)]
    for name, f in rows:
        out.append('| %s | %s |' % (name, ' | '.join(f(r) for r in results)))
    return '\n'.join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--bin', default=os.path.join(ROOT, 'build', 'sshtail_exporter'))
    ap.add_argument('--release-rev', help='git revision to build and compare with')
    ap.add_argument('--release-bin', help='a release binary to compare with')
    ap.add_argument('--release-name', help='its name in the table')
    ap.add_argument('--write', action='store_true', help='put the table into bench/RESULTS.md')
    a = ap.parse_args()
    cfg = {'idle_s': 10, 'outage_s': 10} if a.quick else {'idle_s': 30, 'outage_s': 60}
    bench.WORK = os.path.join(BENCH, 'out', 'fleet-work')
    os.makedirs(bench.WORK, exist_ok=True)
    bins = [('this build', bench.copy_binary(a.bin, os.path.join(bench.WORK, 'bin-new')), True)]
    rel = a.release_bin
    if a.release_rev:
        log('building %s' % a.release_rev)
        rel = build_release(a.release_rev, bench.WORK)
    if rel:
        name = 'release %s' % (a.release_name or a.release_rev or os.path.basename(rel))
        bins.insert(0, (name, bench.copy_binary(rel, os.path.join(bench.WORK, 'bin-rel')), False))
    fleet = Fleet(bench.WORK)
    results = []
    try:
        for label, binary, inventory in bins:
            results.append(measure(binary, label, fleet, cfg, inventory))
    finally:
        harness._cleanup_all()
    out = os.path.join(BENCH, 'out', 'fleet-%s.json' % ('quick' if a.quick else 'full'))
    with open(out, 'w') as f:
        json.dump({'cfg': cfg, 'results': results, 'loadavg': os.getloadavg()}, f, indent=1)
    md = table(results)
    print(md)
    if a.write:
        write_results(md, results, cfg, ' '.join(sys.argv[1:]))


def write_results(md, results, cfg, argv):
    """Puts the table into bench/RESULTS.md between bench.py's markers."""
    path = os.path.join(BENCH, 'RESULTS.md')
    text = open(path).read() if os.path.exists(path) else ''
    if bench.FLEET_BEGIN in text:
        text = (text[:text.index(bench.FLEET_BEGIN)].rstrip('\n') + '\n' +
                text[text.index(bench.FLEET_END) + len(bench.FLEET_END):].lstrip('\n'))
    r = results[-1]
    verdict = [
        ('all up within 60 s', r['up_after_s'] is not None and r['up_after_s'] < 60,
         '%.1f s' % (r['up_after_s'] or 0)),
        ('idle CPU < 1 % of a core', r['idle_cpu_pct'] < 1, '%.4f %%' % r['idle_cpu_pct']),
        ('RSS < 100 MB', r['rss_mib'] * 1.048576 < 100, '%.1f MiB' % r['rss_mib']),
        ('a new line in every file counted within 5 s (read times)',
         r['read_max_s'] is not None and r['read_max_s'] < 5, '%.2f s' % (r['read_max_s'] or 0)),
        ('... as seen by scraping the %.1f MB exposition' % (r['exposition_kb'] / 1e3),
         r['all_lines_counted_s'] < 5, '%.2f s' % r['all_lines_counted_s']),
        ('after an outage, all up within --ssh.max-backoff (30 s, the longest wait) + 6 s',
         r['back_after_s'] is not None and r['back_after_s'] <= 36, '%.1f s' % (r['back_after_s'] or 0)),
        ('no MaxStartups drops on the way back', r['outage_dropped'] == 0, str(r['outage_dropped'])),
        ('reload -500 +500 keeps the other 500\'s counters', r.get('reload_kept_counters'),
         '%s, applied in %.1f s' % (r.get('reload_kept_counters'), r.get('reload_s', 0)))]
    block = [bench.FLEET_BEGIN, '', '## 7. Fleet: 1,000 files on 250 hosts (`bench/fleet.py`)', '',
             'Written by `python3 bench/fleet.py %s` on %s (idle window %d s, outage %d s); '
             'see bench/README.md. One run; RSS of the same binary varied by about 20 MiB '
             'between runs here.' % (argv, time.strftime('%Y-%m-%d'), cfg['idle_s'], cfg['outage_s']),
             '', '| target (this build) | measured | verdict |', '|---|---|---|']
    for name, ok, got in verdict:
        block.append('| %s | %s | **%s** |' % (name, got, 'met' if ok else 'MISSED'))
    block += ['', md, '', bench.FLEET_END]
    with open(path, 'w') as f:
        f.write(text.rstrip('\n') + '\n\n' + '\n'.join(block) + '\n')


if __name__ == '__main__':
    main()
