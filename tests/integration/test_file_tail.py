"""Server mode on local files: appends, rotation by rename and by
copytruncate while a writer appends at 20k lines/s; scraped over HTTP,
counts compared with the generator's ground truth."""
import os
import shutil
import time

import harness
import promtext


def scrape_truth(exp, truth, source, timed=True):
    harness.check_truth(exp.metrics(), truth, source, timed)


def test_tail_rename_and_copytruncate_exact():
    d = harness.tmpdir()
    path = os.path.join(d, 'access.log')
    old_lines, _ = harness.generate(5000, 'timed', seed=99)
    with open(path, 'w') as f:  # existing content: before we start
        f.write('\n'.join(old_lines) + '\n')
    lines, truth = harness.generate(120000, 'timed', seed=5)
    exp = harness.Exporter(['--format', 'timed', path], d)
    exp.wait_value('sshtail_source_up', 1, source=path)
    w = harness.Writer(path, lines, rate=20000)
    w.start()

    # Rotation by rename, as logrotate + nginx do it: rename, the writer
    # keeps writing to the old file for a moment, then reopens the path.
    w.wait_written(30000)
    os.rename(path, path + '.1')
    time.sleep(0.3)
    w.reopen()

    # Rotation by copytruncate while the writer keeps writing.
    w.wait_written(70000)
    w.pause()  # copytruncate loses what is written between copy and
    exp.wait_value('sshtail_lines_total', w.written, source=path)  # truncate
    shutil.copy(path, path + '.2')
    with open(path, 'r+') as f:
        f.truncate(0)
    w.resume()

    w.finish()
    exp.wait_value('sshtail_lines_total', len(lines), source=path)
    scrape_truth(exp, truth, path)
    assert exp.value('sshtail_rotations_total', source=path) == 2
    assert exp.value('sshtail_lines_unmatched_total', source=path) == 0
    assert exp.stop() == 0


def test_missing_file_is_waited_for_and_read_from_start():
    d = harness.tmpdir()
    path = os.path.join(d, 'later', 'access.log')
    exp = harness.Exporter(['--format', 'timed', path], d)
    assert exp.value('sshtail_source_up', source=path) == 0
    os.makedirs(os.path.dirname(path))
    lines, truth = harness.generate(3000, 'timed', seed=8)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    exp.wait_value('sshtail_lines_total', 3000, source=path)
    scrape_truth(exp, truth, path)
    assert exp.stop() == 0


def test_start_at_end_counts_a_line_being_written():
    d = harness.tmpdir()
    path = os.path.join(d, 'a.log')
    lines, truth = harness.generate(1001, 'timed', seed=4)
    with open(path, 'w') as f:
        f.write('\n'.join(lines[:1000]) + '\n' + lines[1000][:40])  # half a line
    exp = harness.Exporter(['--format', 'timed', path], d)
    exp.wait_value('sshtail_source_up', 1, source=path)
    with open(path, 'a') as f:
        f.write(lines[1000][40:] + '\n')
    exp.wait_value('sshtail_lines_total', 1, source=path)
    m = exp.metrics()
    assert promtext.total(m, 'nginx_http_requests_total', source=path) == 1
    assert exp.stop() == 0


def test_positions_file_resumes_after_restart():
    d = harness.tmpdir()
    path = os.path.join(d, 'a.log')
    pos = os.path.join(d, 'positions.yml')
    lines, truth = harness.generate(20000, 'timed', seed=12)
    open(path, 'w').close()
    args = ['--format', 'timed', '--positions-file', pos, path]
    exp = harness.Exporter(args, d, name='first')
    with open(path, 'a') as f:
        f.write('\n'.join(lines[:8000]) + '\n')
    exp.wait_value('sshtail_lines_total', 8000, source=path)
    _, truth_first = harness.generate(8000, 'timed', seed=12)
    harness.check_truth(exp.metrics(), truth_first, path)
    assert exp.stop() == 0
    with open(path, 'a') as f:  # written while the exporter is down
        f.write('\n'.join(lines[8000:15000]) + '\n')
    exp2 = harness.Exporter(args, d, name='second')
    with open(path, 'a') as f:
        f.write('\n'.join(lines[15000:]) + '\n')
    exp2.wait_value('sshtail_lines_total', 12000, source=path)
    # Every line counted once across the two runs: the first saw lines
    # [0, 8000), the second [8000, 20000), including those written while
    # no exporter ran.
    harness.check_truth(exp2.metrics(), harness.truth_minus(truth, truth_first), path)
    assert exp2.stop() == 0


def test_positions_are_saved_at_the_configured_interval():
    # A save every 100 ms bounds what a crash reads again; the main loop
    # used to wake once a second whatever the interval (regression).
    d = harness.tmpdir()
    path = os.path.join(d, 'a.log')
    pos = os.path.join(d, 'positions.yml')
    write_lines(path, harness.generate(10, 'timed', seed=3)[0], 'w')
    exp = harness.Exporter(['--format', 'timed', '--start-at', 'beginning',
                            '--positions-file', pos,
                            '--positions.sync-interval', '100ms', path], d)
    exp.wait_value('sshtail_lines_total', 10, source=path)
    harness.wait_for(lambda: os.path.exists(pos), what='first positions save')
    # Each save is an atomic rename: another inode than the one before. Two
    # seconds hold about 20 saves at 100 ms, 2 or 3 at a once-a-second wake.
    saves, last = 0, os.stat(pos).st_ino
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        ino = os.stat(pos).st_ino
        saves += ino != last
        last = ino
        time.sleep(0.005)
    assert saves >= 8, '%d saves in 2 s at a 100 ms interval' % saves
    assert exp.stop() == 0


def write_lines(path, lines, mode='a'):
    with open(path, mode) as f:
        f.write('\n'.join(lines) + '\n')


def check_rest(exp, truth, first_n, seed, source):
    """`exp` counted exactly the lines after the first `first_n`."""
    _, first = harness.generate(first_n, 'timed', seed=seed)
    harness.check_truth(exp.metrics(), harness.truth_minus(truth, first), source)


def test_copytruncate_and_regrowth_while_stopped_reads_the_copy_then_the_file():
    # Issue 9, defect 6: the bytes before the saved offset changed while no
    # exporter ran; the file must be read again from 0, not from the offset.
    # What was written after the offset and before the copy is read from
    # the copy (it was counted lost).
    d = harness.tmpdir()
    path = os.path.join(d, 'a.log')
    pos = os.path.join(d, 'positions.yml')
    lines, truth = harness.generate(2400, 'timed', seed=21)
    args = ['--format', 'timed', '--positions-file', pos,
            '--start-at', 'beginning', path]
    write_lines(path, lines[:1000], 'w')
    exp = harness.Exporter(args, d, name='first')
    exp.wait_value('sshtail_lines_total', 1000, source=path)
    assert exp.stop() == 0
    write_lines(path, lines[1000:1100], 'a')  # after the offset: in the copy
    shutil.copy(path, path + '.1')
    with open(path, 'r+') as f:
        f.truncate(0)
    write_lines(path, lines[1100:], 'a')  # 1300 new lines: past the old offset
    assert os.path.getsize(path) > os.path.getsize(path + '.1')
    exp2 = harness.Exporter(args, d, name='second')
    exp2.wait_value('sshtail_lines_total', 1400, source=path)
    check_rest(exp2, truth, 1000, 21, path)
    assert exp2.stop() == 0


def test_once_leaves_the_daemons_positions_alone():
    # Issue 9, defect 3: --once with the daemon's --positions-file moved
    # every source to its end; lines written while the daemon was down were
    # then never counted.
    d = harness.tmpdir()
    path = os.path.join(d, 'a.log')
    pos = os.path.join(d, 'positions.yml')
    lines, truth = harness.generate(1030, 'timed', seed=22)
    args = ['--format', 'timed', '--positions-file', pos, path]
    write_lines(path, lines[:1000], 'w')
    exp = harness.Exporter(args + ['--start-at', 'beginning'], d, name='first')
    exp.wait_value('sshtail_lines_total', 1000, source=path)
    assert exp.stop() == 0
    with open(pos) as f:
        saved = f.read()
    write_lines(path, lines[1000:], 'a')  # written while the daemon is down
    r = harness.run_once(['--format', 'timed', '--positions-file', pos, path])
    assert r.returncode == 0, r.stderr
    assert promtext.total(promtext.parse(r.stdout), 'nginx_http_requests_total') == 1030
    with open(pos) as f:
        assert f.read() == saved
    exp2 = harness.Exporter(args, d, name='second')
    exp2.wait_value('sshtail_lines_total', 30, source=path)
    check_rest(exp2, truth, 1000, 22, path)
    assert exp2.stop() == 0


def test_restore_never_trusts_a_reused_inode():
    # Found by the fault model: the positions file still listed rotated
    # files that were deleted while the exporter was down; their inode
    # numbers went to new files (the new log, a copytruncate copy), which
    # were then read from a foreign offset, or twice.
    d = harness.tmpdir()
    path = os.path.join(d, 'access.log')
    other = os.path.join(d, 'copy.log')
    lines, truth = harness.generate(50, 'timed', seed=23)
    write_lines(path, lines, 'w')  # created while the exporter was down
    write_lines(other, harness.generate(30, 'timed', seed=24)[0], 'w')  # counted long ago
    st_path, st_other = os.stat(path), os.stat(other)
    pos = os.path.join(d, 'positions.yml')
    wrong = '78' * 16
    with open(pos, 'w') as f:
        f.write('sources:\n  %s:\n' % path)
        f.write('    - {dev: %d, ino: 999999999, offset: 10, current: true}\n' % st_path.st_dev)
        for st in (st_path, st_other):
            f.write('    - {dev: %d, ino: %d, offset: 200, current: false, tail: "%s"}\n'
                    % (st.st_dev, st.st_ino, wrong))
    exp = harness.Exporter(['--format', 'timed', '--positions-file', pos, path], d)
    exp.wait_value('sshtail_lines_total', 50, source=path)
    # All three saved files are gone: the current one, and the two rotated
    # ones whose numbers went to other files (the bytes tell).
    exp.wait_value('sshtail_files_lost_total', 3, source=path)
    with open(path, 'a') as f:  # still followed as the current file
        f.write(harness.generate(51, 'timed', seed=23)[0][50] + '\n')
    exp.wait_value('sshtail_lines_total', 51, source=path)
    time.sleep(0.5)  # nothing else may arrive
    assert exp.value('sshtail_lines_total', source=path) == 51
    _, truth51 = harness.generate(51, 'timed', seed=23)
    harness.check_truth(exp.metrics(), truth51, path)
    assert exp.stop() == 0


def test_truncation_inside_an_over_long_line_is_seen():
    # Issue 9: a truncation while an over-long line is being skipped must
    # still restart the file at 0 (local files compare sizes and the bytes
    # before the read position, whatever the line splitter is doing).
    d = harness.tmpdir()
    path = os.path.join(d, 'a.log')
    lines, truth = harness.generate(120, 'timed', seed=25)
    write_lines(path, lines[:10], 'w')
    exp = harness.Exporter(['--format', 'timed', '--max-line-bytes', '1024',
                            '--start-at', 'beginning', path], d)
    exp.wait_value('sshtail_lines_total', 10, source=path)
    with open(path, 'a') as f:  # over-long lines, the last unfinished,
        f.write('x' * 5000 + '\n' + 'y' * 5000)  # in one write: read at once
    exp.wait_value('sshtail_lines_too_long_total', 1, source=path)
    old_size = os.path.getsize(path)
    with open(path, 'r+') as f:
        f.truncate(0)
    write_lines(path, lines[10:], 'a')  # regrows past the old size
    assert os.path.getsize(path) > old_size  # regrew past where we were
    exp.wait_value('sshtail_lines_total', 120, source=path)
    harness.check_truth(exp.metrics(), truth, path)
    assert exp.value('sshtail_lines_too_long_total', source=path) == 1
    assert exp.value('sshtail_rotations_total', source=path) == 1
    assert exp.stop() == 0


if __name__ == '__main__':
    harness.main([test_tail_rename_and_copytruncate_exact,
                  test_missing_file_is_waited_for_and_read_from_start,
                  test_start_at_end_counts_a_line_being_written,
                  test_positions_file_resumes_after_restart,
                  test_positions_are_saved_at_the_configured_interval,
                  test_copytruncate_and_regrowth_while_stopped_reads_the_copy_then_the_file,
                  test_once_leaves_the_daemons_positions_alone,
                  test_restore_never_trusts_a_reused_inode,
                  test_truncation_inside_an_over_long_line_is_seen])
