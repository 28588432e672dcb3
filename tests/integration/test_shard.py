"""Sharding: replicas of the exporter share 300 SSH sources (100 hosts of 3
files, all on one real sshd through ~/.ssh/config aliases) by rendezvous
hashing of the host, each host followed by exactly one replica. The count
goes 3 -> 4 -> 2 while lines flow: a host that moves is resumed by its new
replica where the old one left it, counters and all (through --shard.dir),
so the union of every replica's counts stays exact and no source is ever
followed by two replicas at once."""
import json
import os
import re
import signal
import threading
import time

import harness
import promtext

HOSTS, FILES = 100, 3
UP_FILE = re.compile(r'^sshtail_source_up\{[^\n]*?file="([^"]*)"', re.M)


def fnv1a(s):
    h = 1469598103934665603
    for c in s.encode():
        h = ((h ^ c) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def mix(x):
    m = 0xFFFFFFFFFFFFFFFF
    x = (x + 0x9e3779b97f4a7c15) & m
    x = ((x ^ (x >> 30)) * 0xbf58476d1ce4e5b9) & m
    x = ((x ^ (x >> 27)) * 0x94d049bb133111eb) & m
    return x ^ (x >> 31)


def owner(host, count):
    """The replica a host goes to (rendezvous), as the exporter computes it."""
    h = fnv1a('ssh:' + host)
    scores = [mix(h ^ mix(i + 1)) for i in range(count)]
    return scores.index(max(scores))


class Writer(threading.Thread):
    """Appends the generator's lines, line i to file i % 300, at `rate`."""

    def __init__(self, files, lines, rate):
        super().__init__(daemon=True)
        self.files, self.lines, self.rate = files, lines, rate
        self.written = 0
        self.per_file = [0] * len(files)
        self.stop = threading.Event()

    def run(self):
        t0 = time.monotonic()
        while not self.stop.is_set() and self.written < len(self.lines):
            due = min(len(self.lines), int((time.monotonic() - t0) * self.rate))
            while self.written < due:
                k = self.written % len(self.files)
                with open(self.files[k], 'a') as f:
                    f.write(self.lines[self.written] + '\n')
                self.per_file[k] += 1
                self.written += 1
            time.sleep(0.01)


class Overlap(threading.Thread):
    """Scrapes every live replica in turn, over and over. A file that two
    replicas show (sshtail_source_up) in two rounds in a row is followed
    twice; a handover may show it in both within one round."""

    def __init__(self, replicas):
        super().__init__(daemon=True)
        self.replicas = replicas  # index -> Exporter, changed by the test
        self.stop = threading.Event()
        self.rounds = 0
        self.problems = []

    def run(self):
        last = {}
        while not self.stop.is_set():
            seen = {}
            for i, exp in list(self.replicas.items()):
                try:
                    text = exp.get()[1]
                except Exception:
                    continue
                # Only these lines: parsing all of each exposition is slow.
                for f in UP_FILE.findall(text):
                    seen.setdefault(f, set()).add(i)
            both = {f: r for f, r in seen.items() if len(r) > 1}
            for f, r in both.items():
                if last.get(f) == r:
                    self.problems.append('%s followed by replicas %s' % (f, sorted(r)))
            last = both
            self.rounds += 1
            self.stop.wait(0.05)

    def finish(self):
        self.stop.set()
        self.join(10)
        assert self.rounds > 30, self.rounds
        assert not self.problems, self.problems[:5]


class Shards:
    """`hosts` ~/.ssh/config aliases of one sshd, `files` files each, in a
    file_sd inventory; replicas of the exporter sharing them."""

    def __init__(self, hosts, files, start_at='beginning'):
        self.d = d = harness.tmpdir()
        self.sshd = harness.Sshd(d)
        self.logs = os.path.join(d, 'logs')
        self.dir = os.path.join(d, 'shard')
        os.makedirs(self.logs)
        os.makedirs(self.dir)
        os.chmod(d, 0o755)
        os.chmod(self.logs, 0o755)
        self.start_at = start_at
        self.hosts = ['h%03d' % h for h in range(hosts)]
        self.ssh_config = os.path.join(d, 'ssh_config')
        with open(self.ssh_config, 'w') as f:
            for h in self.hosts:
                f.write('Host %s\n  HostName 127.0.0.1\n  Port %d\n  User %s\n'
                        % (h, self.sshd.port, self.sshd.user))
        self.files, self.host_of = [], {}
        for h in self.hosts:
            for k in range(files):
                p = os.path.join(self.logs, '%s-%d.log' % (h, k))
                open(p, 'w').close()
                os.chmod(p, 0o644)
                self.files.append(p)
                self.host_of[p] = h
        self.inv = os.path.join(d, 'targets.json')
        self.inventory(self.hosts)
        self.replicas = {}

    def inventory(self, hosts):
        groups = [{'targets': [self.host_of[p]], 'labels': {'__path__': p}}
                  for p in self.files if self.host_of[p] in hosts]
        with open(self.inv + '.tmp', 'w') as f:
            json.dump(groups, f)
        os.rename(self.inv + '.tmp', self.inv)

    def conf(self, i, count):
        path = os.path.join(self.d, 'r%d.yml' % i)
        with open(path + '.tmp', 'w') as f:
            f.write('shard.count: %d\n' % count)
        os.rename(path + '.tmp', path)
        return path

    def start(self, i, count):
        args = self.sshd.exporter_args()
        args[args.index('--ssh.config') + 1] = self.ssh_config
        self.replicas[i] = harness.Exporter(
            ['--format', 'timed', '--start-at', self.start_at, '--config', self.conf(i, count),
             '--shard.index', str(i), '--shard.dir', self.dir,
             '--state-file', os.path.join(self.d, 'r%d.state' % i), '--sources.file', self.inv,
             '--positions.sync-interval', '1s'] + args, self.d, name='r%d' % i)
        return self.replicas[i]

    def recount(self, count, which=None):
        """The config of `which` (all) says `count` now, and they reload."""
        for i in (which if which is not None else list(self.replicas)):
            self.conf(i, count)
            self.replicas[i].proc.send_signal(signal.SIGHUP)

    def stop(self, i):
        assert self.replicas.pop(i).stop() == 0

    def followed(self):
        """file -> the replicas whose source of it is up."""
        out = {}
        for i, exp in self.replicas.items():
            for dd, v in promtext.select(exp.metrics(), 'sshtail_source_up'):
                if v == 1:
                    out.setdefault(dd['file'], set()).add(i)
        return out

    def settled(self, count, files=None):
        f = self.followed()
        want = self.files if files is None else files
        return (sorted(f) == sorted(want) and
                all(r == {owner(self.host_of[p], count)} for p, r in f.items()))

    def total(self, name, **labels):
        return sum(promtext.total(e.metrics(), name, **labels) for e in self.replicas.values())


def assert_union_exact(ms, files, w, seed):
    """The replicas' expositions `ms` together count what Writer `w` (seeded `seed`)
    wrote: in all, per file, and per method and status."""
    written = w.written
    assert sum(promtext.total(m, 'sshtail_lines_total') for m in ms) == written
    for k, p in enumerate(files):
        got = sum(promtext.total(m, 'sshtail_lines_total', file=p) for m in ms)
        assert got == w.per_file[k], (p, got, w.per_file[k])
    _, truth = harness.generate(written, 'timed', seed=seed)
    got = {}
    for m in ms:
        for dd, v in promtext.select(m, 'nginx_http_requests_total'):
            key = '%s %s' % (dd['method'], dd['status'])
            got[key] = got.get(key, 0) + int(v)
    assert got == truth['by_method_status'], (got, truth['by_method_status'])


def test_replicas_share_hosts_and_hand_them_over_exactly():
    s = Shards(HOSTS, FILES)
    for i in range(3):
        s.start(i, 3)
    harness.wait_for(lambda: s.settled(3), 90, 0.5, '3 replicas, every file once')
    lines, _ = harness.generate(45000, 'timed', seed=500)
    w = Writer(s.files, lines, rate=1500)
    w.start()
    mon = Overlap(s.replicas)
    mon.start()
    time.sleep(3)

    # 3 -> 4: a fourth replica starts; the others learn the count by reload.
    s.start(3, 4)
    s.recount(4, [0, 1, 2])
    harness.wait_for(lambda: s.settled(4), 90, 0.5, '4 replicas, every file once')
    moved = sum(1 for h in s.hosts if owner(h, 3) != owner(h, 4))
    assert 10 <= moved <= 45, moved  # about a quarter of the hosts
    time.sleep(3)

    # 4 -> 2: every replica reloads; the two past the count hand their
    # hosts over while still running (then they stop).
    s.recount(2)
    harness.wait_for(lambda: s.settled(2), 90, 0.5, '2 replicas follow every file')
    for i in (2, 3):
        assert s.replicas[i].value('sshtail_shard_hosts', state='followed') == 0
        s.stop(i)
    w.stop.set()
    w.join(10)
    written = w.written
    assert written > 10000, written
    mon.finish()

    harness.wait_for(lambda: s.total('sshtail_lines_total') >= written, 60, 0.5,
                     '%d lines counted across the replicas' % written)
    time.sleep(1)
    assert_union_exact([e.metrics() for e in s.replicas.values()], s.files, w, seed=500)
    for i in list(s.replicas):
        s.stop(i)


def append(path, seed, n):
    lines, truth = harness.generate(n, 'timed', seed)
    with open(path, 'a') as f:
        f.write('\n'.join(lines) + '\n')
    return truth


def test_restart_while_the_count_changed_and_a_host_removed():
    """A replica restarted while the count changed takes a host another
    replica handed over meanwhile, although its own state file is newer
    (it lacks the host); a host removed from the inventory and added back
    is new again (--start-at end), as an unsharded source is."""
    s = Shards(40, 1, start_at='end')
    moving = [h for h in s.hosts if owner(h, 3) == 2 and owner(h, 2) == 1][0]
    other = [h for h in s.hosts if owner(h, 3) == 0 and owner(h, 2) == 0][0]
    f_moving = s.files[s.hosts.index(moving)]
    f_other = s.files[s.hosts.index(other)]
    for i in range(3):
        s.start(i, 3)
    harness.wait_for(lambda: s.settled(3), 60, 0.3, '3 replicas follow every file')
    t1 = append(f_moving, 601, 5)
    s.replicas[2].wait_value('sshtail_lines_total', 5, file=f_moving)
    s.stop(2)             # hands f_moving over at 5 lines
    t2 = append(f_moving, 602, 3)
    s.stop(1)             # its own state: newer than that, without f_moving
    s.recount(2, [0])
    s.start(1, 2)
    s.replicas[1].wait_value('sshtail_lines_total', 8, file=f_moving)
    m = s.replicas[1].metrics()
    got = {'%s %s' % (x['method'], x['status']): int(v)
           for x, v in promtext.select(m, 'nginx_http_requests_total', file=f_moving)}
    want = {}
    for t in (t1, t2):
        for k, v in t['by_method_status'].items():
            want[k] = want.get(k, 0) + v
    assert got == want

    # Removed from the inventory, written to, added back: a new source.
    append(f_other, 603, 4)
    s.replicas[0].wait_value('sshtail_lines_total', 4, file=f_other)
    s.inventory([h for h in s.hosts if h != other])
    harness.wait_for(lambda: s.total('sshtail_source_up', file=f_other) == 0, 30, 0.2,
                     'the removed host gone')
    append(f_other, 604, 6)   # while it is not configured: not counted
    s.inventory(s.hosts)
    s.replicas[0].wait_value('sshtail_source_up', 1, file=f_other)
    assert s.replicas[0].value('sshtail_lines_total', file=f_other) == 0
    append(f_other, 605, 2)
    s.replicas[0].wait_value('sshtail_lines_total', 2, file=f_other)
    for i in list(s.replicas):
        s.stop(i)


if __name__ == '__main__':
    harness.main([test_replicas_share_hosts_and_hand_them_over_exactly,
                  test_restart_while_the_count_changed_and_a_host_removed])
