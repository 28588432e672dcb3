"""The source set changing under the exporter (issue 23): a file named by a
glob and by a plain source, relabels applied in two steps, positions of
files no reader follows across reloads and restarts, slots used again,
empty and oversized inventories, series of sources that went while the
exporter was stopped. Each test is the reproduction of one defect and
checks exact counts."""
import json
import os
import signal
import subprocess

import harness
import promtext
from test_inventory import write_atomically, write_lines


def write_config(d, text):
    path = os.path.join(d, 'config.yml')
    write_atomically(path, text)
    return path


def reload(exp):
    """POST /-/reload (synchronous: applied, or refused, when it answers)."""
    return exp.post('/-/reload')[0]


def followed(exp):
    return sorted(d.get('file', d['source'])
                  for d, v in promtext.select(exp.metrics(), 'sshtail_source_up'))


def test_a_file_of_a_glob_and_a_plain_source_is_followed_when_the_glob_goes():
    """Defect 1: the plain source waited for nothing once the glob went."""
    d = harness.tmpdir()
    logs = os.path.join(d, 'logs')
    os.makedirs(logs)
    a = os.path.join(logs, 'a.log')
    open(a, 'w').close()
    conf = write_config(d, 'sources:\n  - %s/*.log\n' % logs)
    exp = harness.Exporter(['--format', 'timed', '--web.enable-lifecycle', '--config', conf], d)
    exp.wait_value('sshtail_source_up', 1, file=a)
    write_config(d, 'sources:\n  - %s/*.log\n  - %s\n' % (logs, a))
    reload(exp)
    assert exp.value('sshtail_config_last_reload_successful') == 1
    write_config(d, 'sources:\n  - %s\n' % a)
    reload(exp)
    exp.wait_value('sshtail_source_up', 1, source=a)
    lines, truth = harness.generate(7, 'timed', seed=501)
    write_lines(a, lines)
    exp.wait_value('sshtail_lines_total', 7, source=a)
    harness.check_truth(exp.metrics(), truth, a)
    assert exp.stop() == 0


def test_a_relabel_applied_in_two_steps_resumes_where_the_old_source_was():
    """Defect 6: --sources.max-slots 1 makes the second relabel wait for
    its slot; its retry wiped the carried position (6 where 1 is right)."""
    d = harness.tmpdir()
    x = os.path.join(d, 'x.log')
    old, _ = harness.generate(5, 'timed', seed=502)
    write_lines(x, old, 'w')
    inv = os.path.join(d, 'targets.json')

    def groups(env):
        return json.dumps([{'targets': [x], 'labels': {'env': env}}])

    write_atomically(inv, groups('a'))
    exp = harness.Exporter(['--format', 'timed', '--start-at', 'beginning',
                            '--web.enable-lifecycle', '--sources.max-slots', '1',
                            '--sources.file', inv], d)
    exp.wait_value('nginx_http_requests_total', 5, env='a')
    for k, env in enumerate(('b', 'c')):
        write_atomically(inv, groups(env))
        # b: applied at once; c: the old source goes now, the new one once
        # its slot is free (the reload is tried again then).
        if reload(exp) != 200:
            exp.wait_value('sshtail_config_last_reload_successful', 1)
        lines, truth = harness.generate(1, 'timed', seed=503 + k)
        write_lines(x, lines)
        exp.wait_value('nginx_http_requests_total', 1, env=env)
    m = exp.metrics()
    assert promtext.total(m, 'nginx_http_requests_total') == 1
    assert promtext.select(m, 'nginx_http_requests_total', env='a') == []
    assert exp.value('sshtail_lines_total', source=x) == 1
    assert exp.stop() == 0


def test_a_retired_file_renamed_back_after_a_restart_resumes():
    """Defect 9: a retired glob file's position lived in memory only; back
    after a restart, the file was read whole (7 where 2 is right)."""
    d = harness.tmpdir()
    logs = os.path.join(d, 'logs')
    os.makedirs(logs)
    a = os.path.join(logs, 'a.log')
    open(a, 'w').close()
    pos = os.path.join(d, 'positions.yml')
    args = ['--format', 'timed', '--sources.retire-after', '1s', '--positions-file', pos,
            '--positions.sync-interval', '200ms', logs + '/*.log']
    exp = harness.Exporter(args, d, name='first')
    exp.wait_value('sshtail_source_up', 1, file=a)
    old, _ = harness.generate(5, 'timed', seed=504)
    write_lines(a, old)
    exp.wait_value('sshtail_lines_total', 5, file=a)
    os.rename(a, os.path.join(d, 'a.away'))  # out of the glob
    harness.wait_for(lambda: followed(exp) == [], 30, what='a.log retired')
    assert exp.stop() == 0
    exp = harness.Exporter(args, d, name='second')
    os.rename(os.path.join(d, 'a.away'), a)
    exp.wait_value('sshtail_source_up', 1, file=a)
    lines, truth = harness.generate(2, 'timed', seed=505)
    write_lines(a, lines)
    exp.wait_value('sshtail_lines_total', 2, file=a)
    m = exp.metrics()
    assert promtext.total(m, 'nginx_http_requests_total', file=a) == 2
    assert promtext.total(m, 'sshtail_files_lost_total') == 0
    assert exp.stop() == 0


def test_a_reused_slot_detects_its_new_files_format():
    """Defect 7: the slot kept the retired file's detected format (0
    requests, 5 unmatched, no sshtail_source_format_info)."""
    d = harness.tmpdir()
    logs = os.path.join(d, 'logs')
    os.makedirs(logs)
    a, b = os.path.join(logs, 'a.log'), os.path.join(logs, 'b.log')
    open(a, 'w').close()
    exp = harness.Exporter(['--format', 'auto', '--sources.retire-after', '1s',
                            '--sources.max-slots', '1', logs + '/*.log'], d)
    exp.wait_value('sshtail_source_up', 1, file=a)
    combined, _ = harness.generate(5, 'combined', seed=506)
    write_lines(a, combined)
    exp.wait_value('sshtail_lines_total', 5, file=a)
    assert promtext.select(exp.metrics(), 'sshtail_source_format_info',
                           file=a)[0][0]['format'] == 'combined'
    os.unlink(a)
    harness.wait_for(lambda: followed(exp) == [], 30, what='a.log retired')
    timed, truth = harness.generate(5, 'timed', seed=507)
    write_lines(b, timed, 'w')
    exp.wait_value('sshtail_lines_total', 5, file=b)
    m = exp.metrics()
    assert promtext.total(m, 'nginx_http_requests_total', file=b) == 5
    assert promtext.total(m, 'sshtail_lines_unmatched_total', file=b) == 0
    info = promtext.select(m, 'sshtail_source_format_info', file=b)
    assert [x['format'] for x, _ in info] == ['timed'], info
    assert exp.stop() == 0


def test_an_empty_inventory_keeps_the_running_sources():
    """Defect 12: `gen > targets.json` left the file empty for a moment,
    and the reload removed every source (lines lost, counters reset)."""
    d = harness.tmpdir()
    x = os.path.join(d, 'x.log')
    open(x, 'w').close()
    inv = os.path.join(d, 'targets.json')
    write_atomically(inv, json.dumps([{'targets': [x]}]))
    exp = harness.Exporter(['--format', 'timed', '--sources.file', inv], d)
    exp.wait_value('sshtail_source_up', 1, source=x)
    lines, truth = harness.generate(170, 'timed', seed=508)
    write_lines(x, lines[:120])
    exp.wait_value('sshtail_lines_total', 120, source=x)
    open(inv, 'w').close()  # as a shell redirection leaves it
    exp.wait_value('sshtail_config_reloads_failed_total', 1)
    assert exp.value('sshtail_config_last_reload_successful') == 0
    write_lines(x, lines[120:])
    exp.wait_value('sshtail_lines_total', 170, source=x)
    harness.check_truth(exp.metrics(), truth, x)
    with open(inv, 'w') as f:  # written: the same set, nothing changes
        f.write(json.dumps([{'targets': [x]}]))
    exp.wait_value('sshtail_config_last_reload_successful', 1)
    assert exp.value('sshtail_lines_total', source=x) == 170
    assert exp.stop() == 0


def test_more_sources_than_slots_are_refused_whole():
    """Defects 15 and 16: at start, more inventory targets than
    --sources.max-slots is exit 2 (they all started); on a reload, a change
    that cannot fit even after its removals is refused and the running set
    stays (it was applied halfway: nothing ran)."""
    d = harness.tmpdir()
    x = os.path.join(d, 'x.log')
    open(x, 'w').close()
    inv = os.path.join(d, 'targets.json')
    many = json.dumps([{'targets': [os.path.join(d, 'm%d.log' % k) for k in range(50)]}])
    write_atomically(inv, many)
    r = subprocess.run([harness.BIN, '--web.listen-address', '127.0.0.1:0', '--format',
                        'timed', '--sources.max-slots', '8', '--sources.file', inv],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    write_atomically(inv, json.dumps([{'targets': [x]}]))
    exp = harness.Exporter(['--format', 'timed', '--sources.max-slots', '8',
                            '--sources.file', inv], d)
    exp.wait_value('sshtail_source_up', 1, source=x)
    write_atomically(inv, many)
    exp.wait_value('sshtail_config_reloads_failed_total', 1)
    lines, truth = harness.generate(20, 'timed', seed=509)
    write_lines(x, lines)
    exp.wait_value('sshtail_lines_total', 20, source=x)
    m = exp.metrics()
    assert promtext.total(m, 'sshtail_source_up') == 1
    assert promtext.total(m, 'sshtail_config_last_reload_successful') == 0
    assert exp.stop() == 0


def test_series_of_sources_gone_while_stopped_are_not_restored():
    """Defect 11: a file removed from the inventory, or a static label
    changed, while the exporter was stopped kept its old series for ever
    (a live reload drops them; a restart must end in the same state). A
    source unchanged keeps its series and its own counters, static labels
    and all."""
    d = harness.tmpdir()
    a, b, c = (os.path.join(d, n + '.log') for n in 'abc')
    for p in (a, b, c):
        open(p, 'w').close()
    inv = os.path.join(d, 'targets.json')
    state = os.path.join(d, 'state')
    args = ['--format', 'timed', '--state-file', state, '--sources.file', inv]
    kept = {'targets': [c], 'labels': {'env': 'a'}}
    write_atomically(inv, json.dumps([{'targets': [a], 'labels': {'env': 'a'}},
                                      {'targets': [b], 'labels': {'env': 'a'}}, kept]))
    exp = harness.Exporter(args, d, name='first')
    exp.wait_value('sshtail_source_up', 3)
    for k, p in enumerate((a, b, c)):
        lines, _ = harness.generate(10, 'timed', seed=510 + k)
        write_lines(p, lines)
    exp.wait_value('sshtail_lines_total', 30)
    assert exp.stop() == 0
    write_atomically(inv, json.dumps([{'targets': [a], 'labels': {'env': 'b'}}, kept]))
    exp = harness.Exporter(args, d, name='second')
    exp.wait_value('sshtail_source_up', 1, source=a)
    lines, truth = harness.generate(3, 'timed', seed=512)
    write_lines(a, lines)
    exp.wait_value('nginx_http_requests_total', 3, env='b')
    m = exp.metrics()
    assert promtext.select(m, 'nginx_http_requests_total', env='a', source=a) == []
    assert promtext.select(m, 'nginx_http_requests_total', source=b) == []
    assert promtext.total(m, 'nginx_http_requests_total', source=c, env='a') == 10
    assert promtext.total(m, 'sshtail_lines_total', source=c) == 10
    assert promtext.total(m, 'nginx_http_requests_total') == 13
    assert exp.stop() == 0


def test_a_relabelled_remote_glob_keeps_its_position_until_listed():
    """Defect 5: a remote glob relabelled while its host is down, then a
    reload that adds another source, then a restart: the old position was
    only in memory, wiped by the next Add() and absent from the state file
    (lines counted again, or lost with --start-at end)."""
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    logs = os.path.join(d, 'remote')
    os.makedirs(logs)
    os.chmod(logs, 0o755)
    a = os.path.join(logs, 'a.log')
    open(a, 'w').close()
    os.chmod(a, 0o644)
    other = os.path.join(d, 'other.log')
    open(other, 'w').close()
    state = os.path.join(d, 'state')

    def conf(env, extra=''):
        return write_config(d, 'sources:\n  - url: %s\n    labels: {env: %s}\n%s'
                            % (sshd.url(logs + '/*.log'), env, extra))

    args = ['--format', 'timed', '--state-file', state, '--positions.sync-interval', '200ms',
            '--web.enable-lifecycle', '--config', conf('a')] + sshd.exporter_args()
    exp = harness.Exporter(args, d, name='first')
    exp.wait_value('sshtail_source_up', 1, file=a)
    old, _ = harness.generate(5, 'timed', seed=513)
    write_lines(a, old)
    exp.wait_value('sshtail_lines_total', 5, file=a)
    # Live: relabelled and another source added while the host is down;
    # the lines written meanwhile are read once the host is back.
    sshd.stop()
    conf('b')
    assert reload(exp) == 200
    conf('b', '  - %s\n' % other)
    assert reload(exp) == 200
    down, truth = harness.generate(3, 'timed', seed=514)
    write_lines(a, down)
    sshd.start(sshd.port)
    exp.wait_value('nginx_http_requests_total', 3, file=a, env='b')
    # Across a restart: the same window, then SIGTERM while it is open.
    sshd.stop()
    conf('c')
    assert reload(exp) == 200
    conf('c', '  - %s\n' % other)
    assert reload(exp) == 200
    assert exp.stop() == 0
    more, truth = harness.generate(2, 'timed', seed=515)
    write_lines(a, more)
    sshd.start(sshd.port)
    exp = harness.Exporter(args, d, name='second')
    exp.wait_value('nginx_http_requests_total', 2, file=a, env='c')
    m = exp.metrics()
    assert promtext.total(m, 'nginx_http_requests_total', file=a) == 2
    assert promtext.total(m, 'sshtail_files_lost_total') == 0
    assert exp.stop() == 0


def test_a_retired_file_recreated_is_new_not_lost():
    """Defect 8: a glob's file deleted (all of it read), retired, then
    created again: the drained file's position went to the new file, and
    sshtail_files_lost_total said 1 ("lines after offset N are lost")."""
    d = harness.tmpdir()
    logs = os.path.join(d, 'logs')
    os.makedirs(logs)
    a = os.path.join(logs, 'a.log')
    keep = os.path.join(logs, 'keep.log')
    for p in (a, keep):
        open(p, 'w').close()
    exp = harness.Exporter(['--format', 'timed', '--sources.retire-after', '1s',
                            logs + '/*.log'], d)
    exp.wait_value('sshtail_source_up', 1, file=a)
    old, _ = harness.generate(5, 'timed', seed=520)
    write_lines(a, old)
    exp.wait_value('sshtail_lines_total', 5, file=a)
    os.unlink(a)
    harness.wait_for(lambda: followed(exp) == [keep], 30, what='a.log retired')
    lines, truth = harness.generate(3, 'timed', seed=521)
    write_lines(a, lines, 'w')
    exp.wait_value('sshtail_lines_total', 3, file=a)
    m = exp.metrics()
    assert promtext.total(m, 'nginx_http_requests_total', file=a) == 3
    assert promtext.total(m, 'sshtail_files_lost_total') == 0
    assert exp.stop() == 0


def test_a_sigkill_before_a_rotated_files_catch_up_began_loses_nothing():
    """Defect 14: after a restart, the new current file was counted before
    the catch-up channel of the old one (rotated while the exporter was
    down) had begun; the saved entry of the old file was already gone from
    the positions, so a SIGKILL then lost its rest for good (3,700 of
    4,000). With --state-file a scrape shows only what is saved, values and
    positions together, so every restart must end at exactly 4,000. The
    window opens only when the new file's lines come first; the scenario
    is repeated until it was hit twice (8 tries at most)."""
    d = harness.tmpdir()
    sshd = harness.Sshd(d)
    hits = 0
    for attempt in range(8):
        if hits >= 2:
            break
        logs = os.path.join(d, 'remote%d' % attempt)
        os.makedirs(logs)
        os.chmod(logs, 0o755)
        log = os.path.join(logs, 'access.log')
        state = os.path.join(d, 'state%d' % attempt)
        args = ['--format', 'timed', '--start-at', 'beginning', '--state-file', state,
                '--positions.sync-interval', '100ms'] + sshd.exporter_args() + [sshd.url(log)]
        lines, truth = harness.generate(4000, 'timed', seed=530 + attempt)
        write_lines(log, lines[:2000], 'w')
        os.chmod(log, 0o644)
        exp = harness.Exporter(args, d, name='a%d' % attempt)
        exp.wait_value('sshtail_lines_total', 2000)
        os.rename(log, log + '.1')
        write_lines(log, lines[2000:3000], 'w')
        os.chmod(log, 0o644)
        exp.wait_value('sshtail_lines_total', 3000)
        exp.kill()
        write_lines(log, lines[3000:3300])
        os.rename(log + '.1', log + '.2')
        os.rename(log, log + '.1')
        write_lines(log, lines[3300:], 'w')
        os.chmod(log, 0o644)
        exp = harness.Exporter(args, d, name='b%d' % attempt)
        seen = []

        def counted():
            seen.append(exp.value('sshtail_lines_total'))
            return seen[-1] >= 3700
        harness.wait_for(counted, 60, interval=0.002, what='3,700 counted')
        exp.kill()
        if seen[-1] == 3700:
            hits += 1  # the new file first: the old one's rest not read yet
        exp = harness.Exporter(args, d, name='c%d' % attempt)
        exp.wait_value('sshtail_lines_total', 4000)
        m = exp.metrics()
        harness.check_truth(m, truth, '127.0.0.1')
        assert promtext.total(m, 'sshtail_files_lost_total') == 0
        exp.kill()
    assert hits > 0, 'the window was never hit in 8 tries'


if __name__ == '__main__':
    harness.main([test_a_file_of_a_glob_and_a_plain_source_is_followed_when_the_glob_goes,
                  test_a_relabel_applied_in_two_steps_resumes_where_the_old_source_was,
                  test_a_retired_file_renamed_back_after_a_restart_resumes,
                  test_a_reused_slot_detects_its_new_files_format,
                  test_an_empty_inventory_keeps_the_running_sources,
                  test_more_sources_than_slots_are_refused_whole,
                  test_series_of_sources_gone_while_stopped_are_not_restored,
                  test_a_relabelled_remote_glob_keeps_its_position_until_listed,
                  test_a_retired_file_recreated_is_new_not_lost,
                  test_a_sigkill_before_a_rotated_files_catch_up_began_loses_nothing])
