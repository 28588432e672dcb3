"""Sources from Prometheus file_sd files (--sources.file), and from the
config's `sources:`, changed while the exporter runs: an edit adds, removes
and relabels sources while lines flow. Kept sources keep their reader and
their counters; a removed source's series go; a relabelled one resumes at
its position (no line lost between its old and its new labels); a broken
file changes nothing."""
import json
import os
import signal
import subprocess
import threading

import harness
import promtext


def write_lines(path, lines, mode='a'):
    with open(path, mode) as f:
        f.write('\n'.join(lines) + '\n')


def write_atomically(path, text):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.rename(tmp, path)


def by_method_status(m, **labels):
    return {'%s %s' % (x['method'], x['status']): int(v)
            for x, v in promtext.select(m, 'nginx_http_requests_total', **labels)}


def connection_tree(sshd, path):
    """The sshd processes (and their children) serving the connection whose
    remote reader holds `path` open."""
    for pid in sshd.session_pids():
        try:
            fds = os.listdir('/proc/%d/fd' % pid)
            if not any(os.readlink('/proc/%d/fd/%s' % (pid, fd)) == path for fd in fds):
                continue
        except OSError:
            continue
        # Up to the listener's child: the connection's own sshd.
        while True:
            with open('/proc/%d/stat' % pid) as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            if ppid == sshd.proc.pid:
                break
            pid = ppid
        tree, todo = [pid], [pid]
        while todo:
            kids = subprocess.run(['pgrep', '-P', str(todo.pop())], capture_output=True,
                                  text=True).stdout.split()
            tree += [int(k) for k in kids]
            todo += [int(k) for k in kids]
        return tree
    raise AssertionError('no sshd session follows ' + path)


class Monotonic(threading.Thread):
    """Scrapes while the test runs: a kept source's counter never goes down."""

    def __init__(self, exp, selectors):
        super().__init__(daemon=True)
        self.exp, self.selectors = exp, selectors
        self.last = {}
        self.problems = []
        self.stop = threading.Event()
        self.scrapes = 0

    def run(self):
        while not self.stop.is_set():
            try:
                m = self.exp.metrics()
            except Exception:
                continue
            self.scrapes += 1
            for key, labels in self.selectors.items():
                v = promtext.total(m, 'sshtail_lines_total', **labels)
                if v < self.last.get(key, 0):
                    self.problems.append('%s went from %s to %s' % (key, self.last[key], v))
                self.last[key] = v
            self.stop.wait(0.1)

    def finish(self):
        self.stop.set()
        self.join(10)
        assert self.scrapes > 10, self.scrapes
        assert not self.problems, self.problems


def test_file_sd_edits_while_lines_flow():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    logs = os.path.join(d, 'remote')
    os.makedirs(logs)
    os.chmod(logs, 0o755)
    a, b, c, dd = (os.path.join(logs, n + '.log') for n in 'abcd')
    e = os.path.join(d, 'e.log')
    for p in (a, b, c, dd, e):
        open(p, 'w').close()
        os.chmod(p, 0o644)
    target = '%s@127.0.0.1:%d' % (sshd.user, sshd.port)
    inv = os.path.join(d, 'targets.json')

    def groups(c_env, with_b=True, with_d=False):
        g = [{'targets': [target], 'labels': {'env': 'prod', '__path__': a}}]
        if with_b:
            g.append({'targets': [target], 'labels': {'env': 'prod', '__path__': b}})
        g.append({'targets': [target], 'labels': {'env': c_env, '__path__': c}})
        if with_d:
            g.append({'targets': [target], 'labels': {'env': 'prod', '__path__': dd}})
        g.append({'targets': [e], 'labels': {'env': 'local'}})
        return json.dumps(g, indent=1)

    write_atomically(inv, groups('dev'))
    exp = harness.Exporter(['--format', 'timed', '--ssh.files-per-connection', '1',
                            '--sources.file', inv] + sshd.exporter_args(), d)
    for p in (a, b, c):
        exp.wait_value('sshtail_source_up', 1, file=p)
    exp.wait_value('sshtail_source_up', 1, source=e)
    m = exp.metrics()
    # Named by the host, told apart by the file; the group's labels on
    # every series.
    assert promtext.select(m, 'sshtail_source_up', file=a)[0][0]['source'] == '127.0.0.1'

    mon = Monotonic(exp, {'a': {'file': a}, 'e': {'source': e}})
    mon.start()
    truth = {}
    writers = {}
    for p, n, seed in ((a, 8000, 1), (b, 8000, 2), (e, 8000, 3)):
        lines, truth[p] = harness.generate(n, 'timed', seed=seed)
        writers[p] = harness.Writer(p, lines, rate=1000)
        writers[p].start()
    writers[a].wait_written(1000)

    # Add a host's file.
    write_atomically(inv, groups('dev', with_d=True))
    exp.wait_value('sshtail_source_up', 1, file=dd)
    lines, truth[dd] = harness.generate(3000, 'timed', seed=4)
    writers[dd] = harness.Writer(dd, lines, rate=1000)
    writers[dd].start()

    # A broken file: rejected, nothing changes.
    fails = exp.value('sshtail_config_reloads_failed_total')
    write_atomically(inv, '[{"targets": ["%s"], "labels": {"__path__": "%s"}' % (target, a))
    exp.wait_value('sshtail_config_last_reload_successful', 0)
    assert exp.value('sshtail_config_reloads_failed_total') == fails + 1
    for p in (a, b, c, dd):
        assert exp.value('sshtail_source_up', file=p) == 1, p
    write_atomically(inv, groups('dev', with_d=True))
    exp.wait_value('sshtail_config_last_reload_successful', 1)

    # c: lines counted under env=dev; then its connection freezes, so the
    # next lines stay unread when it is relabelled (and b is removed).
    first, t_first = harness.generate(200, 'timed', seed=5)
    write_lines(c, first)
    exp.wait_value('nginx_http_requests_total', 200, file=c, env='dev')
    frozen = connection_tree(sshd, c)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        unread, t_unread = harness.generate(300, 'timed', seed=6)
        write_lines(c, unread)
        write_atomically(inv, groups('staging', with_b=False, with_d=True))
        # The relabelled source resumes where env=dev stopped.
        exp.wait_value('nginx_http_requests_total', 300, file=c, env='staging')
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    later, t_later = harness.generate(200, 'timed', seed=7)
    write_lines(c, later)
    exp.wait_value('nginx_http_requests_total', 500, file=c, env='staging')
    m = exp.metrics()
    assert promtext.select(m, 'nginx_http_requests_total', env='dev') == []
    want = dict(t_unread['by_method_status'])
    for k, v in t_later['by_method_status'].items():
        want[k] = want.get(k, 0) + v
    assert by_method_status(m, file=c) == want

    # b is gone: its series and its own metrics, while its file still grows.
    harness.wait_for(lambda: not [k for k in exp.metrics() if dict(k[1]).get('file') == b],
                     10, what='b removed')

    for p in (a, e, dd):
        writers[p].finish()
    writers[b].finish()
    exp.wait_value('sshtail_lines_total', 8000, file=a)
    exp.wait_value('sshtail_lines_total', 8000, source=e)
    exp.wait_value('sshtail_lines_total', 3000, file=dd)
    mon.finish()
    m = exp.metrics()
    assert by_method_status(m, file=a, env='prod') == truth[a]['by_method_status']
    assert by_method_status(m, file=dd, env='prod') == truth[dd]['by_method_status']
    harness.check_truth(m, truth[e], e)
    # Kept sources were never reconnected or restarted.
    for p in (a, dd):
        assert promtext.total(m, 'sshtail_ssh_reconnects_total', file=p) == 0, p
    assert exp.stop() == 0


def test_config_sources_reload_on_sighup():
    d = harness.tmpdir()
    one, two = os.path.join(d, 'one.log'), os.path.join(d, 'two.log')
    for p in (one, two):
        open(p, 'w').close()
    conf = os.path.join(d, 'config.yml')
    write_atomically(conf, 'sources:\n  - %s\n' % one)
    exp = harness.Exporter(['--format', 'timed', '--config', conf], d)
    exp.wait_value('sshtail_source_up', 1, source=one)
    l1, t1 = harness.generate(500, 'timed', seed=11)
    write_lines(one, l1)
    exp.wait_value('sshtail_lines_total', 500, source=one)
    write_atomically(conf, 'sources:\n  - %s\n  - url: %s\n    labels: {vhost: two}\n'
                     % (one, two))
    exp.proc.send_signal(signal.SIGHUP)
    exp.wait_value('sshtail_source_up', 1, source=two)
    l2, t2 = harness.generate(700, 'timed', seed=12)
    write_lines(two, l2)
    l3, t3 = harness.generate(300, 'timed', seed=13)
    write_lines(one, l3)
    exp.wait_value('sshtail_lines_total', 700, source=two)
    exp.wait_value('sshtail_lines_total', 800, source=one)  # not reset
    m = exp.metrics()
    harness.check_truth(m, t2, two)
    assert promtext.total(m, 'nginx_http_requests_total', source=two, vhost='two') == 700
    # A bad source in the config: rejected, both stay.
    write_atomically(conf, 'sources:\n  - url: %s\n    lables: {}\n' % one)
    exp.proc.send_signal(signal.SIGHUP)
    exp.wait_value('sshtail_config_last_reload_successful', 0)
    assert exp.value('sshtail_source_up', source=two) == 1
    # Removed: its series go.
    write_atomically(conf, 'sources:\n  - %s\n' % one)
    exp.proc.send_signal(signal.SIGHUP)
    harness.wait_for(lambda: exp.value('sshtail_source_up', source=two) == 0 and
                     exp.value('nginx_http_requests_total', source=two) == 0, 10,
                     what='two removed')
    assert exp.value('sshtail_lines_total', source=one) == 800
    assert exp.stop() == 0


def test_slots_of_removed_sources_are_reused():
    """--sources.max-slots 2 and an inventory whose files change seven
    times, SSH and local files in turn: each removed source's slot is
    reused (without reuse the third edit is refused). Two replaced in one
    edit need four slots: the two removed go at once, the two new start
    as soon as the removed ones' slots are free. Every count is exact, the
    removed sources' series go, a kept source's counter never resets."""
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    logs = os.path.join(d, 'remote')
    os.makedirs(logs)
    os.chmod(logs, 0o755)
    kept = os.path.join(d, 'kept.log')
    open(kept, 'w').close()
    target = '%s@127.0.0.1:%d' % (sshd.user, sshd.port)
    # Even: a file on the SSH host; odd: a local file (a target of its own).
    files = []
    for k in range(9):
        p = os.path.join(logs if k % 2 == 0 else d, 'r%d.log' % k)
        open(p, 'w').close()
        os.chmod(p, 0o644)
        files.append(p)

    def groups(live):
        g = []
        for p in live:
            k = files.index(p)
            g.append({'targets': [target], 'labels': {'__path__': p}} if k % 2 == 0
                     else {'targets': [p]})
        return json.dumps(g)

    def label(p):  # how its series are found
        return {'file': p} if files.index(p) % 2 == 0 else {'source': p}

    inv = os.path.join(d, 'targets.json')
    write_atomically(inv, '[]')
    exp = harness.Exporter(['--format', 'timed', '--sources.max-slots', '2',
                            '--sources.file', inv, kept] + sshd.exporter_args(), d)
    exp.wait_value('sshtail_source_up', 1, source=kept)
    mon = Monotonic(exp, {'kept': {'source': kept}})
    mon.start()
    kept_lines, kept_truth = harness.generate(2000, 'timed', seed=100)
    at = 0

    def check_live(live, seed, new=None):
        nonlocal at
        for p in live:
            exp.wait_value('sshtail_source_up', 1, **label(p))
        for i, p in enumerate(live if new is None else new):
            lines, truth = harness.generate(50 + files.index(p), 'timed', seed=seed + i)
            write_lines(p, lines)
            exp.wait_value('sshtail_lines_total', truth['lines'], **label(p))
            assert by_method_status(exp.metrics(), **label(p)) == truth['by_method_status'], p
        write_lines(kept, kept_lines[at:at + 100])
        at += 100
        exp.wait_value('sshtail_lines_total', at, source=kept)

    live = [files[0]]
    write_atomically(inv, groups(live))
    check_live(live, 200)
    for k in range(1, 6):  # one replaced by the next, five times
        gone = live
        live = [files[k]]
        write_atomically(inv, groups(live))
        check_live(live, 200 + 10 * k)
        assert exp.value('sshtail_config_last_reload_successful') == 1
        m = exp.metrics()
        for p in gone:
            assert promtext.select(m, 'sshtail_lines_total', **label(p)) == [], p
            assert promtext.select(m, 'nginx_http_requests_total', **label(p)) == [], p
    live = [files[5], files[6]]
    write_atomically(inv, groups(live))
    check_live(live, 300, new=[files[6]])
    # Both replaced in one edit: four slots at once, two in the pool.
    live = [files[7], files[8]]
    write_atomically(inv, groups(live))
    check_live(live, 400)
    exp.wait_value('sshtail_config_last_reload_successful', 1)
    m = exp.metrics()
    for p in files[:7]:
        assert promtext.select(m, 'sshtail_lines_total', **label(p)) == [], p
    assert promtext.total(m, 'sshtail_source_up') == 3
    harness.check_truth(m, harness.generate(at, 'timed', seed=100)[1], kept)
    mon.finish()
    assert exp.stop() == 0


if __name__ == '__main__':
    harness.main([test_file_sd_edits_while_lines_flow,
                  test_config_sources_reload_on_sighup,
                  test_slots_of_removed_sources_are_reused])
