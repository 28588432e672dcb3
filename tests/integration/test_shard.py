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


def test_replicas_share_hosts_and_hand_them_over_exactly():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    logs = os.path.join(d, 'logs')
    shard_dir = os.path.join(d, 'shard')
    os.makedirs(logs)
    os.makedirs(shard_dir)
    os.chmod(d, 0o755)
    os.chmod(logs, 0o755)
    hosts = ['h%03d' % h for h in range(HOSTS)]
    ssh_config = os.path.join(d, 'ssh_config')
    with open(ssh_config, 'w') as f:
        for h in hosts:
            f.write('Host %s\n  HostName 127.0.0.1\n  Port %d\n  User %s\n'
                    % (h, sshd.port, sshd.user))
    files, groups = [], []
    for h in hosts:
        for k in range(FILES):
            p = os.path.join(logs, '%s-%d.log' % (h, k))
            open(p, 'w').close()
            os.chmod(p, 0o644)
            files.append(p)
            groups.append({'targets': [h], 'labels': {'__path__': p}})
    inv = os.path.join(d, 'targets.json')
    with open(inv, 'w') as f:
        json.dump(groups, f)
    host_of = {p: os.path.basename(p).split('-')[0] for p in files}

    def conf(i, count):
        path = os.path.join(d, 'r%d.yml' % i)
        with open(path + '.tmp', 'w') as f:
            f.write('shard.count: %d\n' % count)
        os.rename(path + '.tmp', path)
        return path

    def start(i, count):
        args = sshd.exporter_args()
        args[args.index('--ssh.config') + 1] = ssh_config
        return harness.Exporter(
            ['--format', 'timed', '--start-at', 'beginning', '--config', conf(i, count),
             '--shard.index', str(i), '--shard.dir', shard_dir,
             '--state-file', os.path.join(d, 'r%d.state' % i), '--sources.file', inv,
             '--positions.sync-interval', '1s'] + args, d, name='r%d' % i)

    def followed(replicas):
        """file -> the replicas that follow it, and the union is settled."""
        out = {}
        for i, exp in replicas.items():
            for dd, v in promtext.select(exp.metrics(), 'sshtail_source_up'):
                if v == 1:
                    out.setdefault(dd['file'], set()).add(i)
        return out

    def settled(replicas, count):
        f = followed(replicas)
        return (len(f) == len(files) and
                all(r == {owner(host_of[p], count)} for p, r in f.items()))

    replicas = {}
    for i in range(3):
        replicas[i] = start(i, 3)
    harness.wait_for(lambda: settled(replicas, 3), 90, 0.5, '3 replicas, every file once')
    lines, _ = harness.generate(45000, 'timed', seed=500)
    w = Writer(files, lines, rate=1500)
    w.start()
    mon = Overlap(replicas)
    mon.start()
    time.sleep(3)

    # 3 -> 4: a fourth replica starts; the others learn the count by reload.
    replicas[3] = start(3, 4)
    for i in range(3):
        conf(i, 4)
        replicas[i].proc.send_signal(signal.SIGHUP)
    harness.wait_for(lambda: settled(replicas, 4), 90, 0.5, '4 replicas, every file once')
    moved = sum(1 for h in hosts if owner(h, 3) != owner(h, 4))
    assert 10 <= moved <= 45, moved  # about a quarter of the hosts
    time.sleep(3)

    # 4 -> 2: two replicas go (their hosts are handed over at exit).
    for i in (0, 1):
        conf(i, 2)
        replicas[i].proc.send_signal(signal.SIGHUP)
    for i in (2, 3):
        exp = replicas.pop(i)
        assert exp.stop() == 0
    harness.wait_for(lambda: settled(replicas, 2), 90, 0.5, '2 replicas, every file once')
    w.stop.set()
    w.join(10)
    written = w.written
    assert written > 10000, written
    mon.finish()

    def total():
        return sum(promtext.total(e.metrics(), 'sshtail_lines_total') for e in replicas.values())
    harness.wait_for(lambda: total() >= written, 60, 0.5,
                     '%d lines counted across the replicas' % written)
    time.sleep(1)
    ms = [e.metrics() for e in replicas.values()]
    assert sum(promtext.total(m, 'sshtail_lines_total') for m in ms) == written
    for k, p in enumerate(files):
        got = sum(promtext.total(m, 'sshtail_lines_total', file=p) for m in ms)
        assert got == w.per_file[k], (p, got, w.per_file[k])
    _, truth = harness.generate(written, 'timed', seed=500)
    got = {}
    for m in ms:
        for dd, v in promtext.select(m, 'nginx_http_requests_total'):
            key = '%s %s' % (dd['method'], dd['status'])
            got[key] = got.get(key, 0) + int(v)
    assert got == truth['by_method_status']
    for exp in replicas.values():
        assert exp.stop() == 0


if __name__ == '__main__':
    harness.main([test_replicas_share_hosts_and_hand_them_over_exactly])
