#!/usr/bin/env python3
"""SSH compression on a slow link: catch-up of a backlog over 20 Mbit/s.

There is no tc/netem on these machines, so the link is a rate-limiting TCP
relay (tests/integration/relay.py, 20 Mbit/s server -> client) in front of
an OpenSSH sshd on loopback (tests/integration/harness.py). The file is the
shared generator's `timed` log (bench.data_file). Commands, interleaved over
several rounds (order alternating), medians reported:

  slow link (through the relay)
    sshtail --once --ssh.compression    exporter, zlib@openssh.com asked for
    sshtail --once                      exporter, no compression
    ssh -C cat | wc -l                  OpenSSH with compression (the peer)
    ssh cat | wc -l                     OpenSSH without
  loopback (straight to sshd, no relay, no limit)
    sshtail --once [--ssh.compression]  to decide the default from numbers

Every run's counts are checked (the exporter's against the generator's
truth, wc -l against the line count); a wrong count makes the run FAILED and
the command shows no number. Per run: wall time (lines/s), the relay's
server->client bytes (wire bytes) and its rate in the middle of the run,
CPU of the client process tree (os.wait4) and of the sshd side (the
listener's reaped children).

Target: the exporter's catch-up throughput with --ssh.compression >= 4x the
link's raw line rate (link bytes/s / mean line length), exact counts.

Usage: bench/link.py [--quick] [--bin B] [--rounds N] [--write]
Writes bench/out/link-{full,quick}.json, prints a Markdown table; --write
puts it into bench/RESULTS.md between this script's markers.
"""
import argparse
import json
import os
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, 'tests', 'integration'))
sys.path.insert(0, BENCH)
import bench  # noqa: E402  (data_file, copy_binary, exporter_cipher, ...)
import harness  # noqa: E402
import promtext  # noqa: E402
import relay  # noqa: E402

CIPHER = 'aes128-gcm@openssh.com'  # what the exporter negotiates (checked)
TARGET_X = 4.0

# Full: 1,000,000 lines (~168 MB, bench.py's file): the compressed transfer
# takes ~10 s at 20 Mbit/s, an uncompressed one ~70 s.
FULL = dict(lines=1_000_000, rounds=3, loop_rounds=3, rate_bps=20e6)
QUICK = dict(lines=100_000, rounds=2, loop_rounds=2, rate_bps=20e6)


def log(msg):
    print('[link %s] %s' % (time.strftime('%H:%M:%S'), msg), flush=True)


def sh_join(argv):
    return shlex.join([str(a) for a in argv])


class Sampler(threading.Thread):
    """(seconds, relay.down_bytes) every 50 ms while a run lasts."""

    def __init__(self, r):
        super().__init__(daemon=True)
        self.r = r
        self.samples = []
        self.halt = threading.Event()
        self.t0 = time.monotonic()
        self.start()

    def run(self):
        while not self.halt.is_set():
            self.samples.append((time.monotonic() - self.t0, self.r.down_bytes))
            time.sleep(0.05)

    def stop(self):
        self.halt.set()
        self.join(5)
        return self.samples


def steady_rate(samples, wall):
    """Bytes/s carried between 20 % and 80 % of the run (no handshake, no tail)."""
    mid = [(t, b) for t, b in samples if 0.2 * wall <= t <= 0.8 * wall]
    if len(mid) < 3 or mid[-1][0] - mid[0][0] < 0.5:
        return None
    return (mid[-1][1] - mid[0][1]) / (mid[-1][0] - mid[0][0])


class RemoteCpu(threading.Thread):
    """CPU of everything under sshd's listener while a run lasts. OpenSSH's
    per-connection monitor does not always reap its post-auth child (with
    the OpenSSH client it exits first and init reaps it, taking the
    compression work with it), so the listener's cutime/cstime alone misses
    that; sampling (each process's own utime+stime, last value seen, every
    `interval`) misses each process's last interval and processes shorter
    than one. seconds() is the larger of the two: a lower bound."""

    def __init__(self, root, interval=0.02):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.hz = os.sysconf('SC_CLK_TCK')
        self.seen = {}  # (pid, start time) -> own ticks
        self.halt = threading.Event()
        self.reaped0 = bench.proc_cpu_ticks(root, children=True)
        self.start()

    def sample(self):
        todo = [self.root]
        while todo:
            pid = todo.pop()
            try:
                with open('/proc/%d/task/%d/children' % (pid, pid)) as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            for k in kids:
                try:
                    with open('/proc/%d/stat' % k) as f:
                        v = f.read().rsplit(')', 1)[1].split()
                    self.seen[(k, v[19])] = int(v[11]) + int(v[12])
                except (OSError, IndexError, ValueError):
                    continue
                todo.append(k)

    def run(self):
        while not self.halt.is_set():
            self.sample()
            time.sleep(self.interval)

    def seconds(self):
        """Stops sampling; the CPU seconds of the sshd side since the start."""
        self.halt.set()
        self.join(5)
        self.sample()
        reaped = bench.proc_cpu_ticks(self.root, children=True) - self.reaped0
        self.reaped_s, self.sampled_s = reaped / self.hz, sum(self.seen.values()) / self.hz
        return max(self.reaped_s, self.sampled_s)


def md(s):
    """A table cell: | escaped."""
    return str(s).replace('|', '\\|')


def sessions_gone(sshd, timeout=10):
    """Waits until sshd serves no session: its CPU is then in the listener's
    cutime/cstime (each process reaps its children)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not bench.descendants(sshd.proc.pid):
            return True
        time.sleep(0.02)
    return False


class Cmd:
    def __init__(self, label, make, kind, link):
        self.label, self.make, self.kind, self.link = label, make, kind, link
        self.display = make('RELAYPORT' if link == 'slow' else None)[1]  # as shown in RESULTS.md
        self.runs = []


def run_one(cmd, sshd, rate_bps, truth, work, timeout_s):
    """One run of `cmd`: wall, rusage of its process tree, wire bytes, check.
    Over the slow link, through a relay of its own: relay.py's thread can die
    when a connection ends (a KeyError, see the report) and must not take the
    next run with it."""
    sessions_gone(sshd)
    r = None
    if cmd.link == 'slow':
        r = relay.Relay(sshd.port, rate_bps=rate_bps)
        sshd.trust_port(r.port)
    argv = cmd.make(r.port if r else None)[0]
    remote = RemoteCpu(sshd.proc.pid)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    down0, up0 = (r.down_bytes, r.up_bytes) if r else (0, 0)
    out_path = os.path.join(work, 'out-%s.txt' % cmd.label.replace(' ', '_'))
    sampler = Sampler(r) if r else None
    with open(out_path, 'wb') as out, open(out_path + '.err', 'wb') as err:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdout=out, stderr=err)
        # A hung run is a failed run. os.kill, not p.kill: Popen would reap
        # the child itself (poll) and leave wait4 without it; unreaped, its
        # pid cannot have been reused.
        killer = threading.Timer(timeout_s, os.kill, (p.pid, signal.SIGKILL))
        killer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except BaseException:
            p.kill()
            raise
        finally:
            killer.cancel()
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    samples = sampler.stop() if sampler else []
    down = (r.down_bytes - down0) if r else None
    up = (r.up_bytes - up0) if r else None
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    sessions_gone(sshd)
    remote_s = remote.seconds()
    with open(out_path, errors='replace') as f:
        text = f.read()
    with open(out_path + '.err', errors='replace') as f:
        errtext = f.read()
    problems = []
    relay_died = bool(r) and not r.is_alive()
    if r:
        r.stop()
    if relay_died and p.returncode != 0:
        problems.append('the relay thread died (relay.py)')
    if wall >= timeout_s:
        problems.append('killed after %.0f s' % wall)
    elif p.returncode != 0:
        problems.append('exit %d: %s' % (p.returncode, errtext.strip()[-300:]))
    elif cmd.kind == 'exporter':
        problems = promtext.check_truth(promtext.parse(text), truth, '127.0.0.1', True)
    else:
        got = int(text.strip() or -1)
        if got != truth['lines']:
            problems.append('wc -l %d != %d (%s)' % (got, truth['lines'], errtext.strip()[-200:]))
    res = {'wall_s': wall, 'client_cpu_s': ru.ru_utime + ru.ru_stime,
           'client_maxrss_kib': ru.ru_maxrss,
           'remote_cpu_s': remote_s, 'remote_reaped_s': remote.reaped_s,
           'remote_sampled_s': remote.sampled_s,
           'relay_cpu_s': (self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime)
           if r else None,
           'down_bytes': down, 'up_bytes': up,
           'steady_Bps': steady_rate(samples, wall) if samples else None,
           'relay_died_after': relay_died and not problems,
           'ok': not problems, 'problems': problems}
    cmd.runs.append(res)
    log('%-28s %6.2f s  %s%s' % (cmd.label, wall,
                                 ('wire %.1f MB  ' % (down / 1e6)) if down is not None else '',
                                 'exact' if not problems else 'WRONG: %s' % '; '.join(problems)))
    return res


def rounds(cmds, n, sshd, rate_bps, truth, work, timeout_s):
    for k in range(n):
        order = cmds if k % 2 == 0 else list(reversed(cmds))
        log('round %d/%d (load %.2f)' % (k + 1, n, os.getloadavg()[0]))
        for c in order:
            run_one(c, sshd, rate_bps, truth, work, timeout_s)


def med(runs, key):
    xs = [x[key] for x in runs if x.get(key) is not None]
    return statistics.median(xs) if xs else None


def summarize(cmd, lines, raw_lps):
    ok = [x for x in cmd.runs if x['ok']]
    s = {'label': cmd.label, 'link': cmd.link, 'command': cmd.display, 'runs': len(cmd.runs),
         'failed_runs': len(cmd.runs) - len(ok),
         'problems': [p for x in cmd.runs for p in x['problems']]}
    if s['failed_runs'] or not ok:
        return s  # a wrong count is a failed run, never a number
    s['median_s'] = med(ok, 'wall_s')
    s['min_s'] = min(x['wall_s'] for x in ok)
    s['max_s'] = max(x['wall_s'] for x in ok)
    s['lines_per_s'] = lines / s['median_s']
    for k in ('client_cpu_s', 'remote_cpu_s', 'relay_cpu_s', 'down_bytes', 'up_bytes', 'steady_Bps'):
        s[k] = med(ok, k)
    s['x_raw'] = s['lines_per_s'] / raw_lps if raw_lps else None
    return s


def fmt(x, f='%.2f', none='-'):
    return f % x if x is not None else none


def table(S, size, link):
    out = []
    if link:
        out += ['| command (over the 20 Mbit/s relay) | runs | median s (min-max) | lines/s | '
                '× raw line rate | wire MB / run (vs file) | wire MB/s mid-run | client CPU s | '
                'sshd-side CPU s |',
                '|---|---|---|---|---|---|---|---|---|']
    else:
        out += ['| command (loopback, no relay) | runs | median s (min-max) | lines/s | '
                'client CPU s | µs client CPU / line | sshd-side CPU s |',
                '|---|---|---|---|---|---|---|']
    for s in S:
        if 'median_s' not in s:
            out.append('| %s | %d | **FAILED** (%d wrong: %s) |' % (
                md(s['label']), s['runs'], s['failed_runs'], md('; '.join(s['problems'])[:200])))
            continue
        rng = '%.2f (%.2f-%.2f)' % (s['median_s'], s['min_s'], s['max_s'])
        if link:
            out.append('| %s | %d | %s | %s | %.2f× | %.1f (%.0f %%) | %s | %.2f | %s |' % (
                md(s['label']), s['runs'], rng, '{:,.0f}'.format(s['lines_per_s']), s['x_raw'],
                s['down_bytes'] / 1e6, 100.0 * s['down_bytes'] / size,
                fmt(s['steady_Bps'] and s['steady_Bps'] / 1e6, '%.3f'), s['client_cpu_s'],
                fmt(s['remote_cpu_s'])))
        else:
            out.append('| %s | %d | %s | %s | %.2f | %.3f | %s |' % (
                md(s['label']), s['runs'], rng, '{:,.0f}'.format(s['lines_per_s']), s['client_cpu_s'],
                s['client_cpu_s'] / s['lines'] * 1e6 if 'lines' in s else float('nan'),
                fmt(s['remote_cpu_s'])))
    return '\n'.join(out)


def verdicts(R):
    S = {s['label']: s for s in R['link'] + R['loopback']}
    raw = R['raw_lines_per_s']
    rows = []
    a, c = S['sshtail --ssh.compression'], S['ssh -C cat | wc -l']
    b = S['sshtail']
    if 'median_s' in a:
        ok = a['x_raw'] >= TARGET_X
        rows.append(('exporter catch-up with --ssh.compression >= %g× the link\'s raw line rate '
                     '(%s lines/s), exact counts' % (TARGET_X, '{:,.0f}'.format(raw)),
                     '%.2f× (%s lines/s), %d/%d runs exact' % (
                         a['x_raw'], '{:,.0f}'.format(a['lines_per_s']), a['runs'], a['runs']),
                     'met' if ok else 'MISSED'))
    else:
        rows.append(('exporter catch-up with --ssh.compression >= %g× raw line rate, exact counts'
                     % TARGET_X, '%d of %d runs wrong' % (a['failed_runs'], a['runs']), 'FAILED'))
    if 'median_s' in a and 'median_s' in c:
        rows.append(('side by side: exporter --ssh.compression vs ssh -C cat | wc -l',
                     '%.0f %% of its lines/s (%.2f× vs %.2f× raw); wire %.1f vs %.1f MB' % (
                         100 * a['lines_per_s'] / c['lines_per_s'], a['x_raw'], c['x_raw'],
                         a['down_bytes'] / 1e6, c['down_bytes'] / 1e6), 'info'))
    if 'median_s' in a and 'median_s' in b:
        rows.append(('without --ssh.compression on the slow link', '%.2f× raw (%s lines/s): '
                     'compression is %.1f× faster here' % (
                         b['x_raw'], '{:,.0f}'.format(b['lines_per_s']),
                         a['lines_per_s'] / b['lines_per_s']), 'info'))
    la, lb = S['loopback sshtail --ssh.compression'], S['loopback sshtail']
    if 'median_s' in la and 'median_s' in lb:
        slower = la['lines_per_s'] < lb['lines_per_s']
        rows.append(('default from loopback (no link limit): compression on vs off',
                     '%s vs %s lines/s (%.0f %%); client CPU %.2f vs %.2f s; sshd side %s vs %s s' % (
                         '{:,.0f}'.format(la['lines_per_s']), '{:,.0f}'.format(lb['lines_per_s']),
                         100 * la['lines_per_s'] / lb['lines_per_s'], la['client_cpu_s'],
                         lb['client_cpu_s'], fmt(la['remote_cpu_s']), fmt(lb['remote_cpu_s'])),
                     'keep off by default' if slower else 'compression does not cost here'))
    return rows


def write_results(R, body, argv):
    bench.put_section('link', '\n'.join([
        '## 8. SSH compression on a 20 Mbit/s link (`bench/link.py`)', '',
        'Written by `python3 bench/link.py %s` on %s (load average at the start %s); '
        'see bench/README.md.' % (argv, time.strftime('%Y-%m-%d'), R['loadavg_start']), '', body]))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='100,000 lines, 2 rounds (~1-2 min)')
    ap.add_argument('--bin', default=os.environ.get('SSHTAIL_BIN',
                                                    os.path.join(ROOT, 'build', 'sshtail_exporter')))
    ap.add_argument('--lines', type=int, help='log lines (default 1,000,000; quick 100,000)')
    ap.add_argument('--rounds', type=int, help='rounds over the slow link (default 3; quick 2)')
    ap.add_argument('--loop-rounds', type=int, help='rounds on loopback (default 3; quick 2)')
    ap.add_argument('--write', action='store_true', help='put the section into bench/RESULTS.md')
    a = ap.parse_args()
    cfg = dict(QUICK if a.quick else FULL)
    for k in ('lines', 'rounds', 'loop_rounds'):
        if getattr(a, k) is not None:
            cfg[k] = getattr(a, k)
    work, binary = bench.side_bench_work('link-work-quick' if a.quick else 'link-work', a.bin)
    R = {'config': cfg, 'loadavg_start': ' '.join('%.2f' % x for x in os.getloadavg()),
         'binary': a.bin}
    log('binary %s copied to %s; load average %s' % (a.bin, binary, R['loadavg_start']))

    path, truth = bench.data_file(cfg['lines'])
    size = os.path.getsize(path)
    subprocess.run(['cat', path], stdout=subprocess.DEVNULL, check=True)  # page cache
    lines = truth['lines']
    mean_len = size / lines
    link_Bps = cfg['rate_bps'] / 8
    raw_lps = link_Bps / mean_len
    R.update(file=path, lines=lines, bytes=size, mean_line_bytes=mean_len, link_Bps=link_Bps,
             raw_lines_per_s=raw_lps)
    log('%s: %d lines, %.1f MB, %.1f bytes/line; link %.2f MB/s -> raw %s lines/s' % (
        path, lines, size / 1e6, mean_len, link_Bps / 1e6, '{:,.0f}'.format(raw_lps)))

    failed = False
    try:
        sshd = harness.Sshd(os.path.join(work, 'sshd'))
        tiny = os.path.join(work, 'tiny.log')
        with open(tiny, 'wb') as f:
            f.writelines(bench.read_lines(path, 10))
        R['exporter_cipher'] = bench.exporter_cipher(sshd, tiny)
        if R['exporter_cipher'] != CIPHER:
            log('note: the exporter negotiates %s, OpenSSH is run with -c %s'
                % (R['exporter_cipher'], CIPHER))
        R['remote_user'] = bench.remote_user(sshd)

        def exporter(compress):
            def make(port):  # port: the relay's; None: sshd's own
                argv = ([binary, '--once', '--format', 'timed'] +
                        (['--ssh.compression'] if compress else []) + bench.ssh_flags(sshd) +
                        ['ssh://%s@127.0.0.1:%s%s' % (sshd.user, port or sshd.port, path)])
                return argv, sh_join(argv) + ' > OUT.prom'
            return make

        def openssh(compress):
            def make(port):
                ssh = (['ssh', '-F', 'none', '-i', sshd.key, '-o', 'UserKnownHostsFile=' + sshd.known_hosts,
                        '-o', 'BatchMode=yes', '-c', CIPHER] + (['-C'] if compress else []) +
                       ['-p', str(port or sshd.port), sshd.user + '@127.0.0.1', 'cat ' + shlex.quote(path)])
                return ['bash', '-c', sh_join(ssh) + ' | wc -l'], sh_join(ssh) + ' | wc -l'
            return make

        link_cmds = [Cmd('sshtail --ssh.compression', exporter(True), 'exporter', 'slow'),
                     Cmd('sshtail', exporter(False), 'exporter', 'slow'),
                     Cmd('ssh -C cat | wc -l', openssh(True), 'wc', 'slow'),
                     Cmd('ssh cat | wc -l', openssh(False), 'wc', 'slow')]
        loop_cmds = [Cmd('loopback sshtail --ssh.compression', exporter(True), 'exporter', 'loopback'),
                     Cmd('loopback sshtail', exporter(False), 'exporter', 'loopback')]

        log('slow link: %d rounds of %d commands' % (cfg['rounds'], len(link_cmds)))
        # A run may take 3x what the link needs for the whole file, uncompressed.
        timeout_s = max(120.0, 3 * size / link_Bps)
        rounds(link_cmds, cfg['rounds'], sshd, cfg['rate_bps'], truth, work, timeout_s)
        log('loopback: %d rounds of %d commands' % (cfg['loop_rounds'], len(loop_cmds)))
        rounds(loop_cmds, cfg['loop_rounds'], sshd, cfg['rate_bps'], truth, work, timeout_s)
        R['relay_died_after_runs'] = sum(1 for c in link_cmds for x in c.runs if x['relay_died_after'])
        R['link'] = [summarize(c, lines, raw_lps) for c in link_cmds]
        R['loopback'] = [summarize(c, lines, raw_lps) for c in loop_cmds]
        for s in R['loopback']:
            s['lines'] = lines
        R['runs'] = {c.label: c.runs for c in link_cmds + loop_cmds}
        failed = any(s['failed_runs'] for s in R['link'] + R['loopback'])
    finally:
        harness._cleanup_all()
    R['loadavg_end'] = ' '.join('%.2f' % x for x in os.getloadavg())

    # Relay accuracy: its mid-run rate on the uncompressed transfers.
    plain = [x['steady_Bps'] for lbl in ('sshtail', 'ssh cat | wc -l') for x in R['runs'][lbl]
             if x.get('steady_Bps')]
    R['relay_mid_run_Bps'] = statistics.median(plain) if plain else None
    relay_cpu = [x['relay_cpu_s'] / x['wall_s'] for c in link_cmds for x in c.runs
                 if x.get('relay_cpu_s') is not None]
    R['relay_cpu_share'] = statistics.median(relay_cpu) if relay_cpu else None

    text = ['File: %s lines of the generator\'s `timed` format, %.1f MB, %.1f bytes per line '
          '(page cache). Link: `relay.Relay(rate_bps=%g)` in front of sshd on loopback = %.2f MB/s '
          'server→client; its raw line rate = %.2f MB/s ÷ %.1f B = **%s lines/s**. Remote user %s; '
          'cipher %s for both clients (OpenSSH with `-c`); %d rounds over the link, %d on loopback, '
          'order alternating; medians. Load average %s at the start, %s at the end.' % (
              '{:,}'.format(lines), size / 1e6, mean_len, cfg['rate_bps'], link_Bps / 1e6,
              link_Bps / 1e6, mean_len, '{:,.0f}'.format(raw_lps), R['remote_user'],
              R['exporter_cipher'], cfg['rounds'], cfg['loop_rounds'], R['loadavg_start'],
              R['loadavg_end']),
          '', '| target | measured | verdict |', '|---|---|---|']
    for name, got, v in verdicts(R):
        text.append('| %s | %s | **%s** |' % (md(name), md(got), v))
    text += ['', table(R['link'], size, True), '',
           'Wire MB = the relay\'s server→client bytes per run; MB/s mid-run = its rate between 20 %% and '
           '80 %% of the run (uncompressed transfers, median: %s MB/s for a nominal %.2f; the relay '
           'thread used %s of a core meanwhile). Client CPU = the client\'s process tree '
           '(`os.wait4`: the exporter; or bash+ssh+wc). sshd-side CPU = the sessions under sshd\'s listener '
           '(monitor, the user\'s sshd that compresses and encrypts, shell, cat/dd): the larger of what '
           'the listener reaped and a 20 ms sampling of each process (OpenSSH\'s monitor leaves its '
           'child to init when the OpenSSH client hangs up, so reaping alone misses it), a lower bound. '
           'Each run has a relay of its own; relay threads that died at the end of a run (a KeyError in '
           'relay.py when both ends of a connection are ready at once): %d.' % (
               fmt(R['relay_mid_run_Bps'] and R['relay_mid_run_Bps'] / 1e6, '%.3f'), link_Bps / 1e6,
               fmt(R['relay_cpu_share'] and 100 * R['relay_cpu_share'], '%.0f %%'),
               R['relay_died_after_runs']),
           '', table(R['loopback'], size, False), '', 'Commands (the exporter is a copy of `%s`):' % a.bin,
           '', '```sh'] + [c.display for c in link_cmds + loop_cmds] + ['```']
    text = '\n'.join(text)
    out = os.path.join(BENCH, 'out', 'link-%s.json' % ('quick' if a.quick else 'full'))
    with open(out, 'w') as f:
        json.dump(R, f, indent=1, default=str)
    print(text)
    for name, got, v in verdicts(R):
        print('  %-8s %s: %s' % (v, name, got))
    if a.write:
        write_results(R, text, ' '.join(sys.argv[1:]))
        log('wrote bench/RESULTS.md section 8')
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
