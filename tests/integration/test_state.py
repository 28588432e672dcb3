"""--state-file: counters and histograms continue across SIGKILLs at random
moments, exactly, and never go down between two scrapes; a corrupt state
file is set aside; a redefined metric starts from zero."""
import glob
import os
import random
import threading
import time
import urllib.request

import harness
import promtext


class Scraper(threading.Thread):
    """Reads /metrics every 200 ms from whichever exporter runs now and
    records every nginx_* and sshtail_lines_total sample that went down."""

    def __init__(self):
        super().__init__(daemon=True)
        self.url = None
        self.stop = threading.Event()
        self.last = {}
        self.scrapes = 0
        self.decreases = []

    def run(self):
        while not self.stop.is_set():
            url = self.url
            if url:
                try:
                    with urllib.request.urlopen(url + '/metrics', timeout=5) as r:
                        text = r.read().decode()
                except OSError:  # killed or not listening yet
                    text = None
                if text is not None:
                    self.check(promtext.parse(text))
            self.stop.wait(0.2)

    def check(self, metrics):
        self.scrapes += 1
        for key, v in metrics.items():
            name = key[0]
            if not (name.startswith('nginx_') or name == 'sshtail_lines_total'):
                continue
            before = self.last.get(key)
            if before is not None and v < before:
                self.decreases.append((key, before, v))
            self.last[key] = v


def test_sigkill_at_random_moments_exact_and_never_decreasing():
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    local = os.path.join(d, 'local.log')
    remote = os.path.join(d, 'remote.log')
    state = os.path.join(d, 'state')
    for p in (local, remote):
        open(p, 'w').close()
    n = 100000
    lines_l, truth_l = harness.generate(n, 'timed', seed=31)
    lines_r, truth_r = harness.generate(n, 'timed', seed=32)
    args = (['--format', 'timed', '--state-file', state, '--start-at', 'beginning']
            + sshd.exporter_args() + [local, sshd.url(remote)])
    src_r = '127.0.0.1'
    scraper = Scraper()
    scraper.start()
    exp = harness.Exporter(args, d, name='run0')
    scraper.url = exp.url
    exp.wait_value('sshtail_source_up', 1, source=src_r)
    writers = [harness.Writer(local, lines_l, rate=8000),
               harness.Writer(remote, lines_r, rate=8000)]
    for w in writers:
        w.start()
    rng = random.Random(int(os.environ.get('SSHTAIL_SEED', time.time())))
    kills = 0
    for kills in range(1, 7):
        # A random instant: reading, parsing, saving or answering a scrape.
        time.sleep(rng.uniform(0.3, 1.5))
        exp.kill()
        exp = harness.Exporter(args, d, name='run%d' % kills)
        scraper.url = exp.url
    assert any(w.is_alive() for w in writers), 'the writers ended before the last kill'
    for w in writers:
        w.finish()
    exp.wait_value('sshtail_lines_total', n, source=local, timeout=120)
    exp.wait_value('sshtail_lines_total', n, source=src_r, timeout=120)
    m = exp.metrics()
    harness.check_truth(m, truth_l, local)
    harness.check_truth(m, truth_r, src_r)
    # Let the scraper see the final values too, then compare everything.
    seen = scraper.scrapes
    harness.wait_for(lambda: scraper.scrapes >= seen + 2, 10, what='two more scrapes')
    scraper.stop.set()
    scraper.join(10)
    assert not scraper.decreases, 'samples went down: %s' % scraper.decreases[:10]
    assert exp.stop() == 0
    print('  %d SIGKILLs, %d scrapes, %d series watched, %d + %d lines exact'
          % (kills, scraper.scrapes, len(scraper.last), n, n))
    assert kills >= 5 and scraper.scrapes >= 30


def test_clean_restart_continues_and_old_positions_file_loads():
    d = harness.tmpdir()
    path = os.path.join(d, 'a.log')
    state = os.path.join(d, 'state')
    lines, truth = harness.generate(3000, 'timed', seed=33)
    with open(path, 'w') as f:
        f.write('\n'.join(lines[:1000]) + '\n')
    # A positions-only file of the old format: positions, no values.
    pos_args = ['--format', 'timed', '--positions-file', state, '--start-at', 'beginning', path]
    exp = harness.Exporter(pos_args, d, name='positions')
    exp.wait_value('sshtail_lines_total', 1000, source=path)
    assert exp.stop() == 0
    with open(state) as f:
        assert 'version:' not in f.read()
    args = ['--format', 'timed', '--state-file', state, path]
    exp = harness.Exporter(args, d, name='first')
    with open(path, 'a') as f:
        f.write('\n'.join(lines[1000:2000]) + '\n')
    exp.wait_value('sshtail_lines_total', 1000, source=path)  # resumed, from 0
    assert exp.stop() == 0
    with open(state) as f:
        assert f.read().count('version: 2') == 1
    with open(path, 'a') as f:  # while stopped
        f.write('\n'.join(lines[2000:]) + '\n')
    exp = harness.Exporter(args, d, name='second')
    exp.wait_value('sshtail_lines_total', 2000, source=path)
    _, first = harness.generate(1000, 'timed', seed=33)
    harness.check_truth(exp.metrics(), harness.truth_minus(truth, first), path)
    assert exp.stop() == 0


def test_corrupt_or_foreign_state_is_set_aside():
    d = harness.tmpdir()
    path = os.path.join(d, 'a.log')
    state = os.path.join(d, 'state')
    lines, truth = harness.generate(500, 'timed', seed=34)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    args = ['--format', 'timed', '--state-file', state, '--start-at', 'beginning', path]
    exp = harness.Exporter(args, d, name='good')
    exp.wait_value('sshtail_lines_total', 500, source=path)
    assert exp.stop() == 0
    with open(state) as f:
        good = f.read()
    damaged = good.replace('series 0', 'series 1', 1)  # checksum no longer holds
    variants = {'damaged': damaged, 'truncated': good[:len(good) // 2],
                'foreign': 'version: "3"\nservices:\n  web: {image: nginx}\n',
                'binary': '\x00\x01garbage\xff' * 10}
    for i, (what, text) in enumerate(sorted(variants.items())):
        for old in glob.glob(state + '.corrupt-*'):
            os.unlink(old)
        with open(state, 'w') as f:
            f.write(text)
        exp = harness.Exporter(args, d, name='bad%d' % i)
        # Not trusted: nothing restored, the file is read from its start.
        exp.wait_value('sshtail_lines_total', 500, source=path)
        harness.check_truth(exp.metrics(), truth, path)
        logs = exp.logs()
        assert exp.stop() == 0, what
        aside = glob.glob(state + '.corrupt-*')
        assert len(aside) == 1, (what, aside)
        with open(aside[0]) as f:
            assert f.read() == text, what
        assert sum('not used' in l for l in logs.splitlines()) == 1, (what, logs)


RULES = '''rules:
  - name: t
    log_format: '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time $upstream_response_time'
    metrics:
      - name: t_requests_total
        type: counter
        labels: {method: method}
      - name: t_bytes_total
        type: counter
        value: body_bytes_sent
        labels: {%s}
'''


def test_redefined_metric_starts_from_zero():
    d = harness.tmpdir()
    path = os.path.join(d, 'a.log')
    state = os.path.join(d, 'state')
    rules = os.path.join(d, 'rules.yml')
    lines, truth = harness.generate(1500, 'timed', seed=35)
    with open(path, 'w') as f:
        f.write('\n'.join(lines[:1000]) + '\n')
    with open(rules, 'w') as f:
        f.write(RULES % 'method: method')
    args = ['--rules', rules, '--state-file', state, '--start-at', 'beginning', path]
    exp = harness.Exporter(args, d, name='first')
    exp.wait_value('t_requests_total', 1000, source=path)
    assert exp.stop() == 0
    with open(rules, 'w') as f:  # t_bytes_total gets a label: a new metric
        f.write(RULES % 'method: method, status: status')
    with open(path, 'a') as f:
        f.write('\n'.join(lines[1000:]) + '\n')
    exp = harness.Exporter(args, d, name='second')
    exp.wait_value('t_requests_total', 1500, source=path)  # continues
    _, first = harness.generate(1000, 'timed', seed=35)
    rest = harness.truth_minus(truth, first)
    assert exp.value('t_bytes_total', source=path) == rest['body_bytes_sum']
    assert exp.value('sshtail_lines_total', source=path) == 1500
    assert 'redefined metric(s) start from zero' in exp.logs()
    assert exp.stop() == 0


if __name__ == '__main__':
    harness.main([test_sigkill_at_random_moments_exact_and_never_decreasing,
                  test_clean_restart_continues_and_old_positions_file_loads,
                  test_corrupt_or_foreign_state_is_set_aside,
                  test_redefined_metric_starts_from_zero])
