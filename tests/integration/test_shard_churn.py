"""Hand-overs between replicas of sources that globs name (issue 23,
defects 2, 3, 4 and 13): a replica that lets a host go leaves its
positions and values in the shard directory, and its lock goes only once
they are written; the next owner shows the host's values from its first
scrape, never 0 first. Each count is checked exactly."""
import os
import signal
import threading

import harness
import promtext
from test_shard import fnv1a, mix


def owner(key, count):
    h = fnv1a(key)
    scores = [mix(h ^ mix(i + 1)) for i in range(count)]
    return scores.index(max(scores))


def write_lines(path, lines, mode='a'):
    with open(path, mode) as f:
        f.write('\n'.join(lines) + '\n')


class FirstSeen(threading.Thread):
    """Scrapes a replica over and over; remembers the first value each
    `sshtail_lines_total` series showed."""

    def __init__(self, exp):
        super().__init__(daemon=True)
        self.exp = exp
        self.first = {}
        self.scrapes = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                m = self.exp.metrics()
            except Exception:
                continue
            self.scrapes += 1
            for labels, v in promtext.select(m, 'sshtail_lines_total'):
                self.first.setdefault(labels.get('file', labels['source']), v)

    def finish(self):
        self.stop.set()
        self.join(10)
        assert self.scrapes > 5, self.scrapes


class Pair:
    """Replica A (count 3) follows `url`; B (count 2) waits for its lock."""

    def __init__(self, d, key, url, extra_args):
        self.d = d
        self.shard = os.path.join(d, 'shard')
        os.makedirs(self.shard)
        self.key = key
        self.a_index, self.b_index = owner(key, 3), owner(key, 2)
        self.args = ['--format', 'timed', '--shard.dir', self.shard,
                     '--positions.sync-interval', '200ms'] + extra_args + [url]

    def conf(self, name, count):
        path = os.path.join(self.d, name + '.yml')
        with open(path + '.tmp', 'w') as f:
            f.write('shard.count: %d\n' % count)
        os.rename(path + '.tmp', path)
        return path

    def start(self, name, index, count):
        return harness.Exporter(
            self.args + ['--config', self.conf(name, count), '--shard.index', str(index),
                         '--state-file', os.path.join(self.d, name + '.state')],
            self.d, name=name)


def hand_over_at_exit(d, key, url, paths, extra_args=()):
    p = Pair(d, key, url, list(extra_args))
    a = p.start('a', p.a_index, 3)
    for f in paths:
        a.wait_value('sshtail_source_up', 1, file=f)
    b = p.start('b', p.b_index, 2)
    b.wait_value('sshtail_shard_hosts', 1, state='waiting')
    truths = {}
    for k, f in enumerate(paths):
        lines, truths[f] = harness.generate(10, 'timed', seed=600 + k)
        write_lines(f, lines)
        a.wait_value('sshtail_lines_total', 10, file=f)
    seen = FirstSeen(b)
    seen.start()
    assert a.stop() == 0
    for f in paths:
        b.wait_value('sshtail_lines_total', 10, file=f)
    for k, f in enumerate(paths):
        more, _ = harness.generate(15, 'timed', seed=600 + k)
        write_lines(f, more[10:])
    for f in paths:
        b.wait_value('sshtail_lines_total', 15, file=f)
    seen.finish()
    m = b.metrics()
    for k, f in enumerate(paths):
        _, truth = harness.generate(15, 'timed', seed=600 + k)
        got = {'%s %s' % (x['method'], x['status']): int(v)
               for x, v in promtext.select(m, 'nginx_http_requests_total', file=f)}
        assert got == truth['by_method_status'], f
        # Never 0 first: a scrape then would be a counter reset.
        assert seen.first.get(f, 10) >= 10, (f, seen.first)
    assert b.stop() == 0


def test_a_local_globs_files_are_handed_over():
    """Defect 3: the glob's key is file:<pattern>, its files' file:<path>:
    no state was written, the next owner showed 3 where 17 is right."""
    d = harness.tmpdir()
    logs = os.path.join(d, 'logs')
    os.makedirs(logs)
    paths = [os.path.join(logs, n) for n in ('a.log', 'b.log')]
    for f in paths:
        open(f, 'w').close()
    pattern = logs + '/*.log'
    hand_over_at_exit(d, 'file:' + pattern, pattern, paths)


def test_a_remote_globs_values_are_handed_over():
    """Defect 2: the values were restored before the glob's first listing
    found a file, so they matched nothing (5 where 15 is right)."""
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    logs = os.path.join(d, 'remote')
    os.makedirs(logs)
    os.chmod(logs, 0o755)
    paths = [os.path.join(logs, n) for n in ('a.log', 'b.log')]
    for f in paths:
        open(f, 'w').close()
        os.chmod(f, 0o644)
    hand_over_at_exit(d, 'ssh:127.0.0.1', sshd.url(logs + '/*.log'), paths,
                      sshd.exporter_args())


def test_a_failed_hand_over_write_keeps_the_lock():
    """Defect 4: with the state's temporary file impossible to write, the
    lock went anyway and the next owner started without the state (3
    where 13 is right). Now the host stays locked, the write is retried,
    and the next owner takes it only once it is written."""
    d = harness.tmpdir()
    # A file that moves when the count goes from 3 to 2.
    f = next(os.path.join(d, 'x%d.log' % k) for k in range(100)
             if owner('file:' + os.path.join(d, 'x%d.log' % k), 3)
             != owner('file:' + os.path.join(d, 'x%d.log' % k), 2))
    open(f, 'w').close()
    p = Pair(d, 'file:' + f, f, [])
    a = p.start('a', p.a_index, 3)
    a.wait_value('sshtail_source_up', 1, source=f)
    b = p.start('b', p.b_index, 2)
    b.wait_value('sshtail_shard_hosts', 1, state='waiting')
    lines, truth = harness.generate(13, 'timed', seed=610)
    write_lines(f, lines[:10])
    a.wait_value('sshtail_lines_total', 10, source=f)
    tmp = os.path.join(p.shard, '%016x.state.tmp' % fnv1a(p.key))
    os.makedirs(tmp)  # the write's temporary file cannot be made
    p.conf('a', 2)  # A's index no longer owns the file: it hands it over
    a.proc.send_signal(signal.SIGHUP)
    a.wait_value('sshtail_shard_hosts', 1, state='handing_over')
    harness.wait_for(lambda: a.value('sshtail_shard_handover_write_failures_total') >= 2, 30,
                     what='the write retried')
    write_lines(f, lines[10:])
    assert b.value('sshtail_shard_hosts', state='waiting') == 1
    os.rmdir(tmp)
    a.wait_value('sshtail_shard_hosts', 0, state='handing_over')
    b.wait_value('sshtail_lines_total', 13, source=f)
    harness.check_truth(b.metrics(), truth, f)
    assert a.value('sshtail_lines_total') == 0
    assert a.stop() == 0
    assert b.stop() == 0


if __name__ == '__main__':
    harness.main([test_a_local_globs_files_are_handed_over,
                  test_a_remote_globs_values_are_handed_over,
                  test_a_failed_hand_over_write_keeps_the_lock])
