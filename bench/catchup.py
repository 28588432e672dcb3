#!/usr/bin/env python3
"""Catch-up across many hosts: 50 SSH sources with a 200,000-line backlog each.

The hosts are 50 aliases in an OpenSSH client config (Host src00 ...
HostName 127.0.0.1) for one loopback sshd (tests/integration/harness.py,
its default limits), logging in as the harness's /bin/sh user. Each alias
has one file: a copy of the same generator file (`timed`, bench.data_file),
written before anything starts. Per round, in alternating order:

  exporter  sshtail_exporter (server mode, bench.Server) with
            --start-at beginning --format timed and the 50 ssh:// sources;
            /metrics polled (only the sshtail_lines_total lines are scanned)
            until all 50 x 200,000 lines are counted: time to drain from
            the exporter's start, lines/s, its CPU (% of one core; the
            machine has 2), the machine's and the sshd side's CPU; then
            every source's counters are checked against the truth
  peer      50 concurrent `ssh ALIAS cat FILE > /dev/null` (the transport
            alone, same cipher as the exporter): wall time, lines/s

Usage: bench/catchup.py [--quick] [--bin B] [--rounds N] [--write]
Writes bench/out/catchup-{full,quick}.json, prints a Markdown table; --write
puts it into bench/RESULTS.md between this script's markers.
"""
import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, 'tests', 'integration'))
sys.path.insert(0, BENCH)
import bench  # noqa: E402  (Server, data_file, copy_binary, proc_cpu_ticks, ...)
import harness  # noqa: E402
import promtext  # noqa: E402
from link import RemoteCpu  # noqa: E402  (CPU of the sshd side, sampled)

CIPHER = 'aes128-gcm@openssh.com'  # the exporter's first choice (checked)

FULL = dict(sources=50, lines=200_000, rounds=2, timeout_s=900)
QUICK = dict(sources=10, lines=20_000, rounds=1, timeout_s=120)
POLL_S = 0.2


def log(msg):
    print('[catchup %s] %s' % (time.strftime('%H:%M:%S'), msg), flush=True)


def sh_join(argv):
    return shlex.join([str(a) for a in argv])


def machine_ticks():
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open('/proc/stat') as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    total = sum(v[:8])  # guest time is already in user
    return total - idle, total


def scan_total(url, name=b'sshtail_lines_total'):
    """The sum of `name`'s samples; the exposition is scanned for that name
    only (parsing all of it in Python would cost more than the scrape)."""
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read()
    total = 0.0
    for line in body.split(b'\n'):
        if line.startswith(name) and line[len(name):len(name) + 1] in (b'{', b' '):
            rest = line.rsplit(b'}', 1)[1] if b'}' in line else line[len(name):]
            total += float(rest.split()[0])
    return total


class Hosts:
    """The aliases, their files and the client config."""

    def __init__(self, work, n, lines):
        self.dir = os.path.join(work, 'hosts')
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.sshd = harness.Sshd(os.path.join(self.dir, 'sshd'))
        self.names = ['src%02d' % i for i in range(n)]
        self.config = os.path.join(self.dir, 'ssh_config')
        with open(self.config, 'w') as f:
            for a in self.names:
                f.write('Host %s\n  HostName 127.0.0.1\n  Port %d\n  User %s\n  IdentityFile %s\n'
                        '  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n  BatchMode yes\n'
                        % (a, self.sshd.port, self.sshd.user, self.sshd.key, self.sshd.known_hosts))
        self.src, self.truth = bench.data_file(lines)
        self.size = os.path.getsize(self.src)
        logs = os.path.join(self.dir, 'logs')
        os.makedirs(logs, exist_ok=True)
        os.chmod(logs, 0o755)
        self.paths = {}
        t0 = time.monotonic()
        for a in self.names:
            p = os.path.join(logs, '%s.log' % a)
            if not (os.path.exists(p) and os.path.getsize(p) == self.size):
                shutil.copyfile(self.src, p)
            os.chmod(p, 0o644)
            self.paths[a] = p
        for p in self.paths.values():  # in the page cache, like a host's fresh log
            subprocess.run(['cat', p], stdout=subprocess.DEVNULL, check=True)
        log('%d copies of %s (%.1f MB each) ready in %.1f s' % (
            n, self.src, self.size / 1e6, time.monotonic() - t0))

    def exporter_args(self):
        return (['--start-at', 'beginning', '--format', 'timed', '--ssh.config', self.config,
                 '--ssh.identity-file', self.sshd.key, '--ssh.known-hosts', self.sshd.known_hosts] +
                ['ssh://%s%s' % (a, self.paths[a]) for a in self.names])

    def ssh_argv(self, alias):
        return ['ssh', '-F', self.config, '-c', CIPHER, alias, 'cat ' + shlex.quote(self.paths[alias])]

    def quiet(self, timeout=15):
        """No session left on sshd (the exporter's remote readers end when
        their channels close); what is left after `timeout` is killed."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not bench.descendants(self.sshd.proc.pid):
                return True
            time.sleep(0.1)
        log('sessions still on sshd after %d s: killing them' % timeout)
        self.sshd.kill_sessions()
        time.sleep(1)
        return not bench.descendants(self.sshd.proc.pid)



def run_exporter(h, cfg, k, commands):
    n_src, want = len(h.names), len(h.names) * h.truth['lines']
    hz = os.sysconf('SC_CLK_TCK')
    h.quiet()
    remote = RemoteCpu(h.sshd.proc.pid, 0.1)
    m0 = machine_ticks()
    wall0 = time.time()
    t0 = time.monotonic()
    srv = bench.Server(h.exporter_args(), 'exporter-%d' % k)
    if not commands:
        commands.append(sh_join(srv.argv[:-n_src]) + ' ssh://srcNN%s/srcNN.log ...   # NN = 00..%02d' % (
            os.path.dirname(h.paths[h.names[0]]), n_src - 1))
    log('exporter %d: listening after %.2f s; polling' % (k, time.monotonic() - t0))
    polls, got, at = [], 0.0, None
    cpu_at = []  # (t, exporter ticks) at each poll
    while True:
        try:
            got = scan_total(srv.url)
        except OSError as e:
            log('scrape failed: %s' % e)
        at = time.monotonic()
        try:
            cpu_at.append((at - t0, bench.proc_cpu_ticks(srv.pid)))
        except OSError:
            pass
        polls.append((at - t0, got))
        if got >= want or at - t0 > cfg['timeout_s'] or srv.proc.poll() is not None:
            break
        time.sleep(POLL_S)
    drained = got >= want
    drain_s = at - t0
    ticks = bench.proc_cpu_ticks(srv.pid) if srv.proc.poll() is None else None
    m1 = machine_ticks()
    remote_s = remote.seconds()
    st = bench.proc_status(srv.pid)
    res = {'round': k, 'drained': drained, 'lines_counted_at_end_of_polling': got, 'want': want,
           'drain_s': drain_s, 'lines_per_s': want / drain_s if drained else None,
           'exporter_cpu_s': ticks / hz if ticks is not None else None,
           'exporter_cpu_pct': 100.0 * ticks / hz / drain_s if ticks is not None else None,
           'machine_busy_pct': 200.0 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
           'remote_cpu_pct': 100.0 * remote_s / drain_s,
           'rss_mib': st.get('VmRSS', 0) / 1024, 'hwm_mib': st.get('VmHWM', 0) / 1024,
           'threads': st.get('Threads'), 'polls': len(polls),
           'progress': polls[::max(1, len(polls) // 40)]}
    # Busiest stretch: the exporter's CPU between the polls at 25 % and 75 % of the drain.
    mid = [(t, c) for t, c in cpu_at if 0.25 * drain_s <= t <= 0.75 * drain_s]
    if len(mid) >= 2 and mid[-1][0] > mid[0][0]:
        res['exporter_cpu_pct_mid'] = 100.0 * (mid[-1][1] - mid[0][1]) / hz / (mid[-1][0] - mid[0][0])
    # The exporter's own clock: when each source's last line was read.
    time.sleep(1.0)  # nothing more may come: the count must stay exact
    m = srv.metrics()
    last = [v for _, v in promtext.select(m, 'sshtail_source_last_line_timestamp_seconds')]
    res['read_all_s'] = (max(last) - wall0) if last and min(last) > 0 else None
    problems = []
    for a in h.names:
        p = promtext.check_truth(m, h.truth, a, True)
        if p:
            problems.append('%s: %s' % (a, '; '.join(p)))
    total = promtext.total(m, 'sshtail_lines_total')
    if total != want:
        problems.append('sshtail_lines_total %d != %d' % (total, want))
    if srv.proc.poll() is not None:
        problems.append('exporter exited %s: %s' % (srv.proc.returncode, srv.logs()[-500:]))
    res['up'] = promtext.total(m, 'sshtail_source_up')
    res['reconnects'] = promtext.total(m, 'sshtail_ssh_reconnects_total')
    res['problems'] = problems
    res['exact'] = drained and not problems
    srv.kill()
    h.quiet()
    log('exporter %d: %s %d lines in %.2f s (%s lines/s), exporter CPU %s %% of a core '
        '(machine %.0f %% of 200 %%), %s' % (
            k, 'drained' if drained else 'NOT drained:', got, drain_s,
            '{:,.0f}'.format(res['lines_per_s']) if drained else '-',
            '%.0f' % res['exporter_cpu_pct'] if res['exporter_cpu_pct'] is not None else '?',
            res['machine_busy_pct'], 'all exact' if res['exact'] else 'WRONG: %s' % problems[:3]))
    return res


def run_peer(h, k, commands, timeout_s):
    n_src, want = len(h.names), len(h.names) * h.truth['lines']
    h.quiet()
    if not commands:
        commands.append('for a in src{00..%02d}; do ssh -F %s -c %s "$a" "cat %s/$a.log" > /dev/null & done; '
                        'wait' % (n_src - 1, shlex.quote(h.config), CIPHER,
                                  os.path.dirname(h.paths[h.names[0]])))
    remote = RemoteCpu(h.sshd.proc.pid, 0.1)
    m0 = machine_ticks()
    t0 = time.monotonic()
    # The Popen objects stay referenced: a dropped one that still runs is
    # reaped by subprocess's own clean-up on the next Popen, and its exit
    # (and CPU) would be lost to wait4.
    errs = os.path.join(bench.WORK, 'peer-stderr')
    os.makedirs(errs, exist_ok=True)
    procs = {}
    for a in h.names:
        with open(os.path.join(errs, a + '.txt'), 'wb') as err:
            procs[a] = subprocess.Popen(h.ssh_argv(a), stdout=subprocess.DEVNULL, stderr=err)
    cpu, codes, last, killed = 0.0, {}, None, False
    while len(codes) < len(procs):
        if time.monotonic() - t0 > timeout_s and not killed:
            killed = True
            for a, p in procs.items():
                if a not in codes:
                    os.kill(p.pid, signal.SIGKILL)  # reaped below (not by Popen): a failed run
        for a, p in procs.items():
            if a in codes:
                continue
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                p.returncode = codes[a] = os.waitstatus_to_exitcode(status)
                cpu += ru.ru_utime + ru.ru_stime
                last = time.monotonic()
        time.sleep(0.005)
    wall = last - t0
    m1 = machine_ticks()
    h.quiet()
    remote_s = remote.seconds()
    bad = {a: '%s: %s' % (c, open(os.path.join(errs, a + '.txt'), errors='replace').read().strip()[-200:])
           for a, c in codes.items() if c != 0}
    res = {'round': k, 'wall_s': wall, 'lines_per_s': want / wall, 'bytes_per_s': n_src * h.size / wall,
           'client_cpu_s': cpu, 'client_cpu_pct': 100.0 * cpu / wall,
           'machine_busy_pct': 200.0 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
           'remote_cpu_pct': 100.0 * remote_s / wall,
           'failed': bad, 'ok': not bad}
    log('peer %d: %d x ssh cat in %.2f s (%s lines/s, %.0f MB/s); ssh clients %.0f %% of a core, '
        'machine %.0f %% of 200 %%%s' % (k, n_src, wall, '{:,.0f}'.format(res['lines_per_s']),
                                         res['bytes_per_s'] / 1e6, res['client_cpu_pct'],
                                         res['machine_busy_pct'],
                                         '' if not bad else ', FAILED exits %s' % bad))
    return res


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, f='%.1f'):
    return f % x if x is not None else '-'


def report(R):
    E, P = R['exporter'], R['peer']
    ok_e = [e for e in E if e['exact']]
    ok_p = [p for p in P if p['ok']]
    n, lines = R['sources'], R['lines']
    want = n * lines
    rows = []
    out = ['%d sources (`Host src00..src%02d`, HostName 127.0.0.1, one sshd with the harness\'s limits: '
           'MaxSessions 64, MaxStartups 200; remote user %s), each a copy of the same %s-line `timed` '
           'file (%.1f MB; %s lines, %.2f GB in all), in the page cache. Cipher %s (the exporter\'s; '
           '`ssh -c` for the peer). %d round(s), exporter and peer in alternating order; medians. '
           'Machine: %d CPUs; load average %s at the start, %s at the end.' % (
               n, n - 1, R['remote_user'], '{:,}'.format(lines), R['file_bytes'] / 1e6,
               '{:,}'.format(want), n * R['file_bytes'] / 1e9, R['exporter_cipher'], R['rounds'],
               os.cpu_count(), R['loadavg_start'], R['loadavg_end']), '']
    if len(ok_e) == len(E) and E:
        d = med([e['drain_s'] for e in E])
        lps = want / d
        cpu = med([e['exporter_cpu_pct'] for e in E])
        rows.append(('every source\'s count exact (lines, requests by method/status, bytes, histogram)',
                     '%d/%d rounds, %d sources each' % (len(E), len(E), n), 'met'))
        rows.append(('drain uses both cores: exporter CPU over the drain > 100 % of one core',
                     '%.0f %% (mid-drain %s %%); machine %.0f %% of 200 %%' % (
                         cpu, fmt(med([e.get('exporter_cpu_pct_mid') for e in E]), '%.0f'),
                         med([e['machine_busy_pct'] for e in E])),
                     'met' if cpu > 100 else 'MISSED'))
        if ok_p:
            pl = med([p['lines_per_s'] for p in P])
            rows.append(('drain throughput vs the transport alone (%d × ssh cat)' % n,
                         '%s vs %s lines/s (%.0f %%)' % ('{:,.0f}'.format(lps), '{:,.0f}'.format(pl),
                                                        100 * lps / pl), 'info'))
    else:
        bad = [e for e in E if not e['exact']]
        rows.append(('every source drained with exact counts', '%d of %d rounds wrong or not drained: %s' % (
            len(bad), len(E), '; '.join(p for e in bad for p in e['problems'])[:300] or
            'count %s of %d' % ([e['lines_counted_at_end_of_polling'] for e in bad], want)), 'FAILED'))
    out += ['| target | measured | verdict |', '|---|---|---|']
    out += ['| %s | %s | **%s** |' % r for r in rows]
    out += ['', '| | exporter (%d ssh:// sources, --start-at beginning) | peer: %d × `ssh ALIAS cat FILE > /dev/null` |'
            % (n, n), '|---|---|---|']

    def row(name, fe, fp):
        out.append('| %s | %s | %s |' % (name, fe, fp))
    ee = ok_e if len(ok_e) == len(E) else []
    row('wall time, median (each round)',
        '%s s (%s)' % (fmt(med([e['drain_s'] for e in ee]), '%.2f'),
                       ', '.join('%.2f' % e['drain_s'] for e in ee)) if ee else '**FAILED**',
        '%s s (%s)' % (fmt(med([p['wall_s'] for p in ok_p]), '%.2f'),
                       ', '.join('%.2f' % p['wall_s'] for p in ok_p)) if ok_p else '**FAILED**')
    row('lines/s', '{:,.0f}'.format(want / med([e['drain_s'] for e in ee])) if ee else '-',
        '{:,.0f}'.format(want / med([p['wall_s'] for p in ok_p])) if ok_p else '-')
    row('... every line read, by the exporter\'s clock (last `sshtail_source_last_line_timestamp_seconds`)',
        '%s s after its start' % fmt(med([e['read_all_s'] for e in ee]), '%.2f') if ee else '-', '')
    row('client CPU (% of one core, over the wall time)',
        '%s %% (mid-drain %s %%)' % (fmt(med([e['exporter_cpu_pct'] for e in ee]), '%.0f'),
                                    fmt(med([e.get('exporter_cpu_pct_mid') for e in ee]), '%.0f')) if ee else '-',
        '%s %% (ssh clients)' % fmt(med([p['client_cpu_pct'] for p in ok_p]), '%.0f') if ok_p else '-')
    row('sshd side CPU (sessions, sh, cat/tail; % of one core)',
        '%s %%' % fmt(med([e['remote_cpu_pct'] for e in ee]), '%.0f') if ee else '-',
        '%s %%' % fmt(med([p['remote_cpu_pct'] for p in ok_p]), '%.0f') if ok_p else '-')
    row('machine busy (% of 200 %)',
        '%s %%' % fmt(med([e['machine_busy_pct'] for e in ee]), '%.0f') if ee else '-',
        '%s %%' % fmt(med([p['machine_busy_pct'] for p in ok_p]), '%.0f') if ok_p else '-')
    row('exporter RSS at the end / peak, threads',
        '%s / %s MiB, %s' % (fmt(med([e['rss_mib'] for e in ee])), fmt(med([e['hwm_mib'] for e in ee])),
                              fmt(med([e['threads'] for e in ee]), '%.0f')) if ee else '-', '')
    row('sources up / SSH reconnects at the end',
        '%s / %s' % (fmt(med([e['up'] for e in ee]), '%.0f'), fmt(med([e['reconnects'] for e in ee]), '%.0f'))
        if ee else '-', '')
    out += ['', 'Wall time of the exporter: from its start (process launch) to the end of the first '
            'scrape that counts every line (polls every %.1f s, scanning only `sshtail_lines_total`). '
            'CPU: utime+stime from /proc (the exporter) or wait4 (the ssh clients); the sshd side: every '
            'process under sshd\'s listener sampled every 0.1 s, or what the listener reaped if more '
            '(a lower bound; see bench/link.py RemoteCpu); machine busy from /proc/stat.'
            % POLL_S, '', 'Commands (the exporter is a copy of `%s`):' % R['binary'], '', '```sh']
    out += R['commands']['exporter'] + ['# then poll /metrics until sum(sshtail_lines_total) = %s' %
                                        '{:,}'.format(want)] + R['commands']['peer'] + ['```']
    return '\n'.join(out), rows


def write_results(md, R, argv):
    bench.put_section('catchup', '\n'.join([
        '## 9. Catch-up: %d SSH sources with a %s-line backlog each (`bench/catchup.py`)'
        % (R['sources'], '{:,}'.format(R['lines'])), '',
        'Written by `python3 bench/catchup.py %s` on %s; see bench/README.md.' % (
            argv, time.strftime('%Y-%m-%d')), '', md]))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='10 sources x 20,000 lines, 1 round')
    ap.add_argument('--bin', default=os.environ.get('SSHTAIL_BIN',
                                                    os.path.join(ROOT, 'build', 'sshtail_exporter')))
    ap.add_argument('--sources', type=int, help='SSH sources / aliases (default 50; quick 10)')
    ap.add_argument('--lines', type=int, help='lines per source (default 200,000; quick 20,000)')
    ap.add_argument('--rounds', type=int, help='rounds of exporter + peer (default 2; quick 1)')
    ap.add_argument('--write', action='store_true', help='put the section into bench/RESULTS.md')
    a = ap.parse_args()
    cfg = dict(QUICK if a.quick else FULL)
    for k in ('sources', 'lines', 'rounds'):
        if getattr(a, k) is not None:
            cfg[k] = getattr(a, k)
    work, binary = bench.side_bench_work('catchup-work-quick' if a.quick else 'catchup-work',
                                         a.bin)
    R = {'config': cfg, 'sources': cfg['sources'], 'lines': cfg['lines'], 'rounds': cfg['rounds'],
         'binary': a.bin, 'loadavg_start': ' '.join('%.2f' % x for x in os.getloadavg()),
         'commands': {'exporter': [], 'peer': []}, 'exporter': [], 'peer': []}
    log('binary %s copied to %s; load average %s' % (a.bin, binary, R['loadavg_start']))
    try:
        h = Hosts(work, cfg['sources'], cfg['lines'])
        R['file'], R['file_bytes'] = h.src, h.size
        R['remote_user'] = bench.remote_user(h.sshd)
        tiny = os.path.join(work, 'tiny.log')
        with open(tiny, 'wb') as f:
            f.writelines(bench.read_lines(h.src, 10))
        os.chmod(tiny, 0o644)
        R['exporter_cipher'] = bench.exporter_cipher(h.sshd, tiny)
        if R['exporter_cipher'] != CIPHER:
            log('note: the exporter negotiates %s; the peer runs with -c %s' % (R['exporter_cipher'], CIPHER))
        for k in range(cfg['rounds']):
            log('round %d/%d (load %.2f)' % (k + 1, cfg['rounds'], os.getloadavg()[0]))
            steps = [('exporter', lambda: run_exporter(h, cfg, k, R['commands']['exporter'])),
                     ('peer', lambda: run_peer(h, k, R['commands']['peer'], cfg['timeout_s']))]
            for name, fn in (steps if k % 2 == 0 else steps[::-1]):
                R[name].append(fn())
    finally:
        harness._cleanup_all()
    R['loadavg_end'] = ' '.join('%.2f' % x for x in os.getloadavg())
    md, rows = report(R)
    with open(os.path.join(BENCH, 'out', 'catchup-%s.json' % ('quick' if a.quick else 'full')), 'w') as f:
        json.dump(R, f, indent=1, default=str)
    print(md)
    for name, got, v in rows:
        print('  %-8s %s: %s' % (v, name, got))
    if a.write:
        write_results(md, R, ' '.join(sys.argv[1:]))
        log('wrote bench/RESULTS.md section 9')
    failed = any(not e['exact'] for e in R['exporter']) or any(not p['ok'] for p in R['peer'])
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
