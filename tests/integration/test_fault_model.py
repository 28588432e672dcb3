"""Randomized, seeded fault model (in the style of Vector's and Alloy's file
tailing tests): one local file and one SSH file (real sshd on loopback,
logging in as a /bin/sh user), one exporter following both, and a seeded
random sequence of actions against them: appends (with partial lines
completed later and CRLF endings), rename rotation, copytruncate, truncate
and regrow past the old offset, compress-then-delete as logrotate does,
delete and recreate, connection kill (ss -K), sshd session freeze (SIGSTOP)
and thaw, exporter SIGTERM + restart with positions, exporter SIGKILL +
restart, and a reload (SIGHUP).

The oracle is the writer's own record. After every step the test polls (with
a deadline) until, for each source, sshtail_lines_total, the summed
nginx_http_requests_total and nginx_http_response_bytes_total equal the
model exactly (and nothing is unmatched). After SIGKILL + restart the rule
is "no line lost": counts >= truth, and the excess bounded by the lines read
since the positions file was last written; the model then rebases on what
was seen.

Lines the model expects to be lost (documented: README "Catching up after
downtime" and issue 9 "when a file is truly gone, count what could not be
read"): complete lines that were not read yet when their file's content was
destroyed while the exporter could not be reading it -- a file deleted, or
truncated in place without a copy, while the exporter was stopped or while
the SSH session was frozen and the exporter gave up on it; a file rotated
or compressed after such a truncation; and, over SSH, a file compressed
while a reconnect's saved position was at its offset 0. A copytruncate
while blind loses nothing: the reader finds the rest in the copy (by the
bytes before its saved offset, as a file newer than its own, or by time
after a restart at offset 0). Everything else is expected exactly.

Determinism: every action that changes which file is at the path creates
the new file with at least one line, and each step waits until it is
counted, so the exporter follows the new file before the next step; a
copytruncate waits until the exporter has seen the truncation; a blind
window (exporter down, frozen session) changes the path of a source at most
once (the middle file of two rotations is unknowable: issue 9 "two rotations
within one heartbeat interval").

Usage (defaults: the fixed seed list below, run by CTest):
  test_fault_model.py [--seeds N] [--start S] [--actions M] [--keep-going]
  test_fault_model.py --replay SEED [--actions M] [--only 3,7,12]
  env: SSHTAIL_FAULT_SEEDS=N SSHTAIL_FAULT_START=S SSHTAIL_FAULT_ACTIONS=M
"""
import argparse
import gzip
import json
import os
import random
import re
import shutil
import signal
import sys
import time

import harness
import promtext

# 91: a channel request during an sshd freeze went unanswered and the
# session was never replaced (no channel open, so no stall was seen).
DEFAULT_SEEDS = [1, 2, 3, 4, 5, 6, 7, 91]
DEFAULT_ACTIONS = 30
SYNC_TIMEOUT = 20.0
LOCAL, SSH = 'L', 'S'

_BODY = re.compile(r'" \d{3} (\d+) "')

# ------------------------------------------------------------- action lists

KINDS = [('append', 30), ('rename', 7), ('copytruncate', 5), ('truncate_regrow', 4),
         ('compress', 6), ('delete_recreate', 4), ('conn_kill', 5), ('freeze', 4),
         ('term_restart', 5), ('kill_restart', 5), ('reload', 3)]
PATH_OPS = ('rename', 'compress', 'delete_recreate')
FILE_OPS = ('append', 'rename', 'copytruncate', 'truncate_regrow', 'compress', 'delete_recreate')


def _weighted(rng, table):
    total = sum(w for _, w in table)
    r = rng.random() * total
    for k, w in table:
        r -= w
        if r < 0:
            return k
    return table[-1][0]


def _file_op(rng, kind, target):
    a = {'a': kind, 't': target}
    if kind == 'append':
        a['n'] = rng.choice([0, 1, 1, 2, 3, 5, 8, 13, 30])
        a['crlf'] = rng.choice([0, 0, 0.2, 1])
        a['partial'] = rng.choice([0, 0, 0, 1, 40, 120])
        a['s'] = rng.randrange(1 << 30)
    elif kind in PATH_OPS:
        a['late'] = rng.choice([0, 0, 1, 3])      # lines the writer still writes to the old file
        a['new'] = rng.choice([1, 1, 2, 5])       # the reopened file gets a line or more at once
        if kind == 'compress':
            a['drain'] = rng.random() < 0.5       # wait for the exporter before gzip + rm
    elif kind == 'truncate_regrow':
        a['extra'] = rng.choice([1, 2, 5])        # lines beyond the old size
    return a


def _window(rng, targets, kinds, max_ops=3):
    """Sub-actions run while a source is blind; at most one path change per source."""
    ops, moved = [], set()
    for _ in range(rng.randint(0, max_ops)):
        t = rng.choice(targets)
        k = rng.choice(kinds)
        if k in PATH_OPS:
            if t in moved:
                k = 'append'
            moved.add(t)
        ops.append(_file_op(rng, k, t))
    return ops


# Left out unless SSHTAIL_FAULT_SKIP says otherwise ('none': everything):
# over SSH, a truncation regrown past the old offset faster than the remote
# `tail -f` polls (50 ms) is not seen (finding F3; no content check while
# streaming). Truncate + regrow while stopped or disconnected stays in.
DEFAULT_SKIP = 'ssh_live:truncate_regrow'
SKIP = set(k for k in os.environ.get('SSHTAIL_FAULT_SKIP', DEFAULT_SKIP).split(',')
           if k and k != 'none')


def _skipped(a, top=True):
    """--skip KIND (or ssh:KIND, or ssh_live:KIND for steps outside blind
    windows): exploring past a known defect (the step becomes an append)."""
    t = a.get('t', LOCAL + SSH)
    if a['a'] in SKIP:
        return {'a': 'append', 't': t, 'n': 1, 'crlf': 0, 'partial': 0, 's': 1}
    if SSH in t and ('ssh:' + a['a'] in SKIP or (top and 'ssh_live:' + a['a'] in SKIP)):
        if t == SSH:
            return {'a': 'append', 't': t, 'n': 1, 'crlf': 0, 'partial': 0, 's': 1}
        a = dict(a, t=LOCAL)
    if 'ops' in a:
        a['ops'] = [_skipped(o, False) for o in a['ops']]
    return a


def make_actions(seed, n):
    init, out = _make_actions(seed, n)
    return init, [_skipped(a) for a in out]


def _make_actions(seed, n):
    rng = random.Random(seed)
    init = {LOCAL: rng.choice([0, 0, 3, 20]), SSH: rng.choice([0, 0, 3, 20]),
            'partial': rng.choice([0, 0, 50]), 'start_at': rng.choice(['beginning', 'end'])}
    out = []
    for _ in range(n):
        k = _weighted(rng, KINDS)
        if k in FILE_OPS:
            out.append(_file_op(rng, k, rng.choice([LOCAL, SSH, LOCAL + SSH])))
        elif k == 'conn_kill':
            out.append({'a': k, 'ops': _window(rng, [SSH, LOCAL], ['append'], 2)})
        elif k == 'freeze':
            mode = rng.choice(['thaw_early', 'reconnect'])
            kinds = ['append', 'append', 'rename', 'compress', 'delete_recreate']
            if mode == 'reconnect':
                kinds += ['copytruncate', 'truncate_regrow']
            out.append({'a': k, 'mode': mode, 'ops': _window(rng, [SSH], kinds)})
        elif k in ('term_restart', 'kill_restart'):
            kinds = ['append', 'append'] + list(FILE_OPS[1:])
            out.append({'a': k, 'ops': _window(rng, [LOCAL, SSH], kinds)})
        else:
            out.append({'a': k})
    return init, out


# -------------------------------------------------------------------- model

class Inode:
    """One log file's content as the exporter should see it."""

    def __init__(self, fd):
        st = os.fstat(fd)
        self.id = (st.st_dev, st.st_ino)
        self.created_at = time.time()
        self.size = 0
        self.ends = []      # end offset of each complete line of the current content
        self.bodies = []    # its $body_bytes_sent
        self.read_upto = 0  # lines ending at or before this are known counted
        self.linked = True
        self.truncated_at = 0.0  # wall time of the last truncation
        self.rewritten_blind = False  # truncated while the reader was away
        self.gz_at = None  # wall time it was compressed (and deleted) at
        self.name = None  # its path once rotated away (None: deleted)
        self.saved_at_0 = False  # the reader's last save has it at offset 0
        # Truncated while blind by copytruncate: the reader finds the rest
        # in the copy (by the saved bytes, or as a file newer than its own).
        self.copied_blind = False
        self.born_blind = False  # created while the reader was away
        # born_blind: the reader finds the file it was in (the one this
        # replaced at the path), so files rotated after that one are read.
        self.anchor_found = True
        self.last_trunc_copy = False  # its last truncation was a copytruncate

    def complete_end(self):
        return self.ends[-1] if self.ends else 0

    def unread(self):
        return [(e, b) for e, b in zip(self.ends, self.bodies) if e > self.read_upto]


class Source:
    def __init__(self, key, directory, label):
        self.key = key
        self.dir = directory
        self.path = os.path.join(directory, 'access.log')
        self.label = label
        self.inodes = []
        self.copies = []  # copytruncate's copies (read only)
        self.fd = None
        self.w = None          # the inode the writer (nginx) has open
        self.partial = None    # (rest bytes, body) of a line half written to self.w
        self.exp_lines = 0     # expected counters of the current exporter run
        self.exp_bytes = 0
        self.lost = 0
        # Of those, the ones the reader may still find (by time, in a file
        # rotated after its save): counted or not, both are right.
        self.maybe_lines = 0
        self.maybe_bytes = 0
        self.rot = 0           # rotated-file name counter
        self.rot_min = 0       # lower bound of sshtail_rotations_total this run

    def reopen(self):
        if self.fd is not None:
            os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.w = Inode(self.fd)
        self.inodes.append(self.w)
        return self.w


class Failure(Exception):
    pass


class Run:
    """One seed: fresh directories and exporter state, shared sshd."""

    def __init__(self, sshd, seed, init, actions, verbose=False):
        self.sshd = sshd
        self.seed = seed
        self.init = init
        self.actions = actions
        self.verbose = verbose
        self.d = harness.tmpdir('sshtail-fm-%d-' % seed)
        self.state = os.path.join(self.d, 'state')
        os.makedirs(self.state)
        ldir, sdir = os.path.join(self.d, 'local'), os.path.join(self.d, 'remote')
        for x in (ldir, sdir):
            os.makedirs(x)
            os.chmod(x, 0o755)
        self.src = {LOCAL: Source(LOCAL, ldir, None), SSH: Source(SSH, sdir, '127.0.0.1')}
        self.src[LOCAL].label = self.src[LOCAL].path
        self.pool, _ = harness.generate(4000, 'timed', seed=seed + 1000)
        self.pool_i = 0
        self.exp = None
        self.runs = 0
        self.down = False       # exporter stopped: both sources blind
        self.ssh_blind = False  # frozen session the exporter will give up on
        self.frozen = []
        self.positions = os.path.join(self.state, 'positions.yml')
        self.notes = []

    # ------------------------------------------------------------ helpers
    def log(self, msg):
        if self.verbose:
            print('  [%d] %s' % (self.seed, msg), flush=True)

    def blind(self, s):
        return self.down or (s.key == SSH and self.ssh_blind)

    def next_line(self):
        line = self.pool[self.pool_i % len(self.pool)]
        self.pool_i += 1
        return line, int(_BODY.search(line).group(1))

    def _complete(self, s, end, body):
        s.w.ends.append(end)
        s.w.bodies.append(body)
        s.exp_lines += 1
        s.exp_bytes += body

    def write(self, s, n, crlf=0.0, partial=0, rng=None, finish=True):
        """Appends through the writer's fd: the rest of a half-written line,
        n complete lines, then maybe the first `partial` bytes of one more."""
        rng = rng or random.Random(0)
        buf = b''
        pos = s.w.size
        if s.partial is not None and finish:
            rest, body = s.partial
            buf += rest
            self._complete(s, pos + len(buf), body)
            s.partial = None
        for _ in range(n):
            line, body = self.next_line()
            buf += line.encode() + (b'\r\n' if rng.random() < crlf else b'\n')
            self._complete(s, pos + len(buf), body)
        if partial and s.partial is None:
            line, body = self.next_line()
            raw = line.encode() + (b'\r\n' if rng.random() < crlf else b'\n')
            k = min(partial, len(raw) - 1)
            buf += raw[:k]
            s.partial = (raw[k:], body)
        if buf:
            os.write(s.fd, buf)
            s.w.size += len(buf)

    def destroy_unread(self, s, ino, why):
        """`ino`'s content is gone; lines in it the exporter has not read
        are lost if it could not be reading them now."""
        if not self.blind(s):
            return
        lost = ino.unread()
        if lost:
            s.exp_lines -= len(lost)
            s.exp_bytes -= sum(b for _, b in lost)
            s.lost += len(lost)
            s.maybe_lines += len(lost)
            s.maybe_bytes += sum(b for _, b in lost)
            self.notes.append('%s: %d lines lost (%s while blind)' % (s.key, len(lost), why))
        ino.read_upto = ino.complete_end()

    # ---------------------------------------------------------- exporter
    def start_exporter(self):
        self.runs += 1
        if self.verbose and os.path.exists(self.positions):
            self.log('positions: ' + open(self.positions).read().replace('\n', ' '))
            for s in self.src.values():
                self.log('%s files: %s' % (s.key, [(i.id[1], i.linked, i.size) for i in s.inodes]))
        args = ['--format', 'timed', '--start-at', self.init['start_at'],
                '--positions-file', self.positions, '--positions.sync-interval', '200ms',
                '--ssh.max-backoff', '1s'] + self.sshd.exporter_args('1s') + \
            [self.src[LOCAL].path, self.sshd.url(self.src[SSH].path)]
        self.started_at = time.time()
        self.exp = harness.Exporter(args, self.state, name='exp%d' % self.runs)
        self.down = False
        for s in self.src.values():
            s.rot_min = 0
            for ino in s.inodes:  # the new reader has seen these rewrites
                ino.rewritten_blind = ino.copied_blind = ino.born_blind = False
                ino.saved_at_0 = False
        # Both readers running before anything else happens (a rotation
        # racing the first connect would be a blind window of unknown size).
        self.wait(lambda m: all(self.val(m, 'sshtail_source_up', s) == 1
                                for s in self.src.values()), 'both sources up')

    def metrics(self):
        return self.exp.metrics()

    @staticmethod
    def val(m, name, s, **labels):
        return promtext.total(m, name, source=s.label, **labels)

    def wait(self, pred, what, timeout=SYNC_TIMEOUT):
        end = time.monotonic() + timeout
        last = None
        while True:
            try:
                m = self.metrics()
                if pred(m):
                    return m
                last = m
            except Exception as e:  # noqa: BLE001 - a scrape while restarting
                last = e
            if time.monotonic() > end:
                raise Failure('timed out after %.0fs waiting for %s\n%s'
                              % (timeout, what, self.describe(last)))
            time.sleep(0.02)

    def seen(self, m, s):
        return (self.val(m, 'sshtail_lines_total', s),
                self.val(m, 'nginx_http_requests_total', s),
                self.val(m, 'nginx_http_response_bytes_total', s),
                self.val(m, 'sshtail_lines_unmatched_total', s),
                self.val(m, 'sshtail_rotations_total', s))

    def describe(self, m):
        if not isinstance(m, dict):
            return 'last scrape: %r' % (m,)
        out = ['  reload: ok %s at %s' % (
            promtext.total(m, 'sshtail_config_last_reload_successful'),
            promtext.total(m, 'sshtail_config_last_reload_success_timestamp_seconds'))]
        for s in self.src.values():
            lines, reqs, byts, unm, rot = self.seen(m, s)
            out.append('  %s (%s): lines %d (want %d), requests %d, bytes %d (want %d), '
                       'unmatched %d, rotations %d (want >= %d), lost by model %d'
                       % (s.key, s.label, lines, s.exp_lines, reqs, byts, s.exp_bytes, unm,
                          rot, s.rot_min, s.lost))
        return '\n'.join(out)

    def exact(self, m):
        for s in self.src.values():
            lines, reqs, byts, unm, rot = self.seen(m, s)
            if reqs != lines or unm != 0:
                return False
            if not s.exp_lines <= lines <= s.exp_lines + s.maybe_lines:
                return False
            if not s.exp_bytes <= byts <= s.exp_bytes + s.maybe_bytes:
                return False
            if rot < s.rot_min:
                return False
        return True

    def sync(self, what):
        """Polls until the exporter agrees with the model exactly (lines the
        model gave up on may be counted too: once the counts settle, what
        was counted of them is the truth)."""
        m = self.wait(self.exact, what)
        if any(s.maybe_lines for s in self.src.values()):
            harness.wait_for(self.nothing_pending, SYNC_TIMEOUT, 0.05,
                             'catch-up reads begun (positions file)')
            m = self.settle()
            if not self.exact(m):
                raise Failure('%s: counts left the model after settling\n%s'
                              % (what, self.describe(m)))
            for s in self.src.values():
                lines, _, byts, _, _ = self.seen(m, s)
                if lines > s.exp_lines:
                    self.notes.append('%s: %d of the %d lines given up on were found'
                                      % (s.key, lines - s.exp_lines, s.maybe_lines))
                s.exp_lines, s.exp_bytes = int(lines), int(byts)
                s.maybe_lines = s.maybe_bytes = 0
        for s in self.src.values():
            for ino in s.inodes:
                ino.read_upto = ino.complete_end()

    @staticmethod
    def save_predates_truncation(ino, s, saved):
        """True if the saved position of `ino` lies in its content from
        before its last truncation: its saved bytes before the offset are
        not the file's bytes there now."""
        path = s.path if ino is s.w else ino.name
        if not ino.linked or path is None:
            return False
        for entries in saved.values():
            for p in entries or []:
                try:
                    if (int(p['dev']), int(p['ino'])) != ino.id:
                        continue
                    off, tail = int(p['offset']), bytes.fromhex(p.get('tail') or '')
                except (KeyError, TypeError, ValueError):
                    continue
                with open(path, 'rb') as f:
                    f.seek(max(0, off - len(tail)))
                    return f.read(len(tail)) != tail or os.path.getsize(path) < off
        return False

    def nothing_pending(self):
        return not any(not p.get('current') and int(p.get('offset', 1)) == 0
                       for entries in self.read_positions().values()
                       for p in entries or [])

    def read_positions(self):
        try:
            import yaml
            with open(self.positions) as f:
                doc = yaml.safe_load(f) or {}
            return doc.get('sources') or {}
        except Exception:  # noqa: BLE001 - a format we do not know: no offsets
            return {}

    # ------------------------------------------------------------ file ops
    def op(self, a):
        for key in a['t']:
            s = self.src[key]
            getattr(self, 'op_' + a['a'])(s, a)

    def op_append(self, s, a):
        self.write(s, a['n'], a['crlf'], a['partial'], random.Random(a['s']))

    def _live_flush_partial(self, s):
        """Before destroying content of a live source: the half line is
        finished and read first (what the writer wrote, the reader read)."""
        if s.partial is not None:
            self.write(s, 0)
            if not self.blind(s):
                self.sync('finished partial line before truncation')

    def _rotate_away(self, s, a, unlink_path):
        old = s.w
        if unlink_path:
            os.unlink(s.path)
            old.linked = False
            name = None
        else:
            s.rot += 1
            name = '%s.%d' % (s.path, s.rot)
            os.rename(s.path, name)
            old.name = name
        # The writer finishes its line and writes a few more to the old
        # file until it reopens the path (nginx until USR1).
        self.write(s, a['late'])
        s.reopen()
        s.w.born_blind = self.blind(s)
        self.write(s, a['new'])
        if not self.blind(s):
            s.rot_min += 1
        return old, name

    def op_rename(self, s, a):
        old, _ = self._rotate_away(s, a, False)
        s.w.anchor_found = not (old.rewritten_blind and not old.copied_blind)
        if old.rewritten_blind and not old.copied_blind:
            # Truncated and then rotated away while the reader was away: the
            # bytes before the saved offset differ, which a resume cannot
            # tell from an inode number reused by another file (README:
            # such a file is taken as gone, never read from a foreign
            # offset or twice).
            self.destroy_unread(s, old, 'truncated, then rotated')

    def op_delete_recreate(self, s, a):
        old, _ = self._rotate_away(s, a, True)
        # Nothing to start from, unless a restart looks by time (saved at 0).
        s.w.anchor_found = self.down and old.read_upto == 0
        self.destroy_unread(s, old, 'deleted')

    def op_compress(self, s, a):
        old, name = self._rotate_away(s, a, False)
        if a['drain'] and not self.blind(s) and not (s.key == SSH and self.frozen):
            self.sync('rotated file drained before compression')
        with open(name, 'rb') as fi, gzip.open(name + '.gz', 'wb') as fo:
            shutil.copyfileobj(fi, fo)
        shutil.copystat(name, name + '.gz')  # logrotate keeps the mtime too
        os.unlink(name)
        old.linked = False
        rewritten = old.rewritten_blind and not old.copied_blind
        s.w.anchor_found = not rewritten
        if not rewritten:
            old.gz_at = time.time()  # its content lives on in the .gz
        if rewritten:
            # Its bytes before the saved offset changed (and no copy holds
            # them): the .gz cannot be recognised as ours (README "Catching
            # up after downtime").
            self.destroy_unread(s, old, 'truncated, then compressed')
        elif (s.key == SSH and not self.down and old.read_upto == 0 and
              not old.born_blind and not old.copied_blind):
            # A reconnect (not a restart) at offset 0 of it: no bytes to
            # find its .gz by, and only a restart looks for files by time.
            self.destroy_unread(s, old, 'at offset 0 on reconnect, then compressed')
            s.w.anchor_found = False
        # Otherwise nothing is lost: a restart or reconnect finds the rest
        # of the file in the .gz by the 64 bytes before the saved offset.

    def _truncate(self, s, why, keep=False):
        old_size = s.w.size
        # A reader at offset 0 has no bytes to miss: the file is new to it.
        was_read = s.w.read_upto > 0
        if not keep:
            self.destroy_unread(s, s.w, why)
        os.truncate(s.path, 0)
        s.w.truncated_at = time.time()
        s.w.rewritten_blind = s.w.rewritten_blind or (self.blind(s) and was_read)
        s.w.last_trunc_copy = False
        s.w.size = 0
        s.w.ends, s.w.bodies = [], []
        s.w.read_upto = 0
        return old_size

    def _tick(self, s):
        """File times come from the kernel's coarse clock (a few ms): files
        written within one tick cannot be told apart by mtime, and a
        sibling with the same mtime as the file the reader resumes in is
        not read (README limit). Real rotations are farther apart; a blind
        window keeps its writes one tick apart too."""
        if self.blind(s):
            time.sleep(0.012)

    def op_copytruncate(self, s, a):
        self._live_flush_partial(s)
        s.rot += 1
        seen = None if self.blind(s) else self.val(self.metrics(), 'sshtail_rotations_total', s)
        name = '%s.%d' % (s.path, s.rot)
        self._tick(s)
        shutil.copy(s.path, name)
        self._tick(s)
        # The copy is a rotated sibling: a restart that catches up reads it
        # whole, so the lines read from the original count as read in it.
        fd = os.open(name, os.O_RDONLY)
        copy = Inode(fd)
        os.close(fd)
        copy.name, copy.copied_at = name, time.time()
        copy.ends, copy.bodies = list(s.w.ends), list(s.w.bodies)
        copy.read_upto = s.w.read_upto
        s.copies.append(copy)
        # While blind the reader finds the unread lines in the copy: by the
        # bytes before its saved offset, as a file newer than the one it was
        # in, or by time (a restart, saved at offset 0). Not: when those
        # bytes were rewritten without a copy, or on a reconnect at offset
        # 0 of this file.
        w = s.w
        if w.born_blind:  # found as newer than the file the reader was in
            findable = w.anchor_found
        else:
            findable = self.down or w.read_upto > 0 or w.copied_blind
        keep = self.blind(s) and not (w.rewritten_blind and not w.copied_blind) and findable
        old_size = self._truncate(s, 'copied and truncated', keep)
        w.last_trunc_copy = True
        if keep:
            w.copied_blind = True
        if old_size and not self.blind(s):
            s.rot_min += 1
            # The writer goes on only once the reader saw the truncation
            # (both copytruncate and a regrowth are covered elsewhere). The
            # counter may be ahead of the model (a restart counts rotations
            # it found), so wait for it to move, not for a bound.
            self.wait(lambda m: self.val(m, 'sshtail_rotations_total', s) > seen,
                      '%s truncation noticed' % s.key)

    def op_truncate_regrow(self, s, a):
        self._live_flush_partial(s)
        old_size = self._truncate(s, 'truncated')
        n = 0
        buf_size = 0
        # Regrow past the old offset in one write, before anyone looks.
        while buf_size <= old_size or n < a['extra']:
            buf_size += len(self.pool[(self.pool_i + n) % len(self.pool)]) + 1
            n += 1
        self.write(s, n)
        if old_size and not self.blind(s):
            s.rot_min += 1

    # ----------------------------------------------------------- faults
    def act_conn_kill(self, a):
        m = self.metrics()
        before = self.val(m, 'sshtail_ssh_reconnects_total', self.src[SSH])
        self.sshd.kill_connections()
        for o in a['ops']:
            self.op(o)   # appends only: safe whenever the reconnect lands
        self.wait(lambda m: self.val(m, 'sshtail_ssh_reconnects_total', self.src[SSH]) > before
                  and self.val(m, 'sshtail_source_up', self.src[SSH]) == 1,
                  'reconnect after ss -K')
        self.sync('after connection kill')

    def act_freeze(self, a):
        s = self.src[SSH]
        m = self.metrics()
        stalled = self.val(m, 'sshtail_ssh_reconnects_total', s, reason='stalled')
        pids = self.sshd.freeze_sessions()
        if not pids:
            raise Failure('no sshd session to freeze')
        self.frozen = pids
        harness.wait_for(lambda: all(self._stopped(p) for p in pids), 5, 0.005, 'sshd stopped')
        started = time.monotonic()
        self.ssh_blind = a['mode'] == 'reconnect'
        for o in a['ops']:
            self.op(o)
        if a['mode'] == 'thaw_early':
            if time.monotonic() - started > 2.0:
                raise Failure('window took too long for an early thaw')
            self.thaw()
        else:
            self.wait(lambda m: self.val(m, 'sshtail_ssh_reconnects_total', s,
                                         reason='stalled') > stalled
                      and self.val(m, 'sshtail_source_up', s) == 1,
                      'stalled session noticed and replaced')
            self.ssh_blind = False
            for ino in s.inodes:
                ino.rewritten_blind = ino.copied_blind = ino.born_blind = False
            self.sync('after reconnecting past a frozen session')
            self.thaw()
        self.sync('after thaw')

    @staticmethod
    def _stopped(pid):
        try:
            with open('/proc/%d/stat' % pid) as f:
                return f.read().rsplit(')', 1)[1].split()[0] in ('T', 't', 'Z', 'X')
        except OSError:
            return True

    def thaw(self):
        self.sshd.thaw_sessions(self.frozen)
        self.frozen = []

    def _down_window(self, a):
        self.down = True
        for s in self.src.values():
            s.exp_lines = s.exp_bytes = 0
        for o in a['ops']:
            self.op(o)

    def act_term_restart(self, a):
        rc = self.exp.stop(signal.SIGTERM)
        if rc != 0:
            raise Failure('exporter exited with %s on SIGTERM' % rc)
        saved = self.read_positions()
        for s in self.src.values():
            for ino in s.inodes:
                ino.saved_at_0 = any(
                    (int(p['dev']), int(p['ino'])) == ino.id and int(p['offset']) == 0
                    for entries in saved.values() for p in entries or [])
        self._down_window(a)
        self.start_exporter()
        self.sync('after SIGTERM and restart')

    def act_kill_restart(self, a):
        # A positions file that knows both sources (written every 200ms).
        self.wait(lambda m: len(self.read_positions()) >= 2, 'positions file with both sources')
        self.exp.proc.send_signal(signal.SIGSTOP)
        saved = self.read_positions()
        saved_at = os.stat(self.positions).st_mtime
        self.exp.proc.kill()
        self.exp.proc.wait()
        self.exp.log.close()
        # What a restart may read again: what was read after the save.
        bound = {}
        for s in self.src.values():
            offs = {}
            for entries in saved.values():
                for p in entries or []:
                    try:
                        offs.setdefault((int(p['dev']), int(p['ino'])), []).append(int(p['offset']))
                    except (KeyError, TypeError, ValueError):
                        pass
            b = 0
            for ino in s.inodes:
                # A file compressed after the save can be read again from its
                # .gz: the save names an older file, and catch-up reads the
                # .gz whole.
                # (A save is taken at most an interval after the lines it
                # covers were read, so "after the save" is "in this run".)
                in_gz = ino.gz_at is not None and (
                    ino.id in offs or ino.gz_at >= self.started_at)
                if not ino.linked and ino is not s.w and not in_gz:
                    continue
                # A save from before the reader committed its last
                # truncation: a restart reads the file from 0.
                stale = ino.truncated_at > 0 and self.save_predates_truncation(ino, s, saved)
                if stale:
                    # To the restarted reader this truncation happened while
                    # it was away: a rotated or compressed copy no longer
                    # matches the saved bytes.
                    ino.rewritten_blind = True
                    # A live copytruncate's copy holds the saved bytes.
                    ino.copied_blind = ino.last_trunc_copy
                # A save older than this file names another one with its
                # inode number (a deleted file's number is reused).
                mine = offs.get(ino.id, []) if ino.created_at < saved_at - 0.05 else []
                ino.saved_at_0 = mine == [0]
                since = min(mine or [0])
                if stale or ino.truncated_at >= saved_at - 0.05:
                    since = 0  # the saved offset may be in the old content
                b += sum(1 for e in ino.ends if since < e <= ino.read_upto)
            for c in s.copies:
                # A stale save names a file older than this run's copies:
                # catch-up reads them whole.
                if c.copied_at >= self.started_at:
                    b += sum(1 for e in c.ends if e <= c.read_upto)
            bound[s.key] = b
        self._down_window(a)
        # Reads of files destroyed meanwhile cannot be repeated: the bound
        # above only shrinks by that. Now: no line lost, then settle.
        self.start_exporter()
        floor = {k: (s.exp_lines, s.exp_bytes) for k, s in self.src.items()}

        def at_least(m):
            return all(self.val(m, 'sshtail_lines_total', s) >= s.exp_lines and
                       self.val(m, 'nginx_http_response_bytes_total', s) >= s.exp_bytes and
                       self.val(m, 'sshtail_lines_unmatched_total', s) == 0
                       for s in self.src.values())
        self.wait(at_least, 'no line lost after SIGKILL (counts >= truth)')
        self.settle()
        # Catch-up is over once no rotated file waits at offset 0 (a file
        # to read whole can wait seconds for a reader slot): what it reads
        # again belongs to this step's excess, not to a later step's count.
        harness.wait_for(self.nothing_pending, SYNC_TIMEOUT, 0.05,
                         'catch-up reads begun (positions file)')
        m = self.settle()
        for s in self.src.values():
            lines = self.val(m, 'sshtail_lines_total', s)
            extra = lines - floor[s.key][0]
            # Lines given up on while it was down may be found (by time).
            bound[s.key] += s.maybe_lines
            s.maybe_lines = s.maybe_bytes = 0
            if extra > bound[s.key]:
                raise Failure('%s: %d lines counted twice after SIGKILL, more than the %d read '
                              'since the last positions save\n%s'
                              % (s.key, extra, bound[s.key], self.describe(m)))
            if extra:
                self.notes.append('%s: %d lines read again after SIGKILL (bound %d)'
                                  % (s.key, extra, bound[s.key]))
            s.exp_lines = int(lines)
            s.exp_bytes = int(self.val(m, 'nginx_http_response_bytes_total', s))
        self.sync('after SIGKILL and restart (rebased)')

    def settle(self, quiet=0.8):
        """Counts that stopped moving (the re-read after SIGKILL is done)."""
        last, since = None, time.monotonic()
        end = since + SYNC_TIMEOUT
        while time.monotonic() < end:
            m = self.metrics()
            now = tuple(self.seen(m, s)[:3] for s in self.src.values())
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return m
            time.sleep(0.05)
        raise Failure('counts never settled after SIGKILL\n' + self.describe(m))

    def act_reload(self, a):
        m = self.metrics()
        before = promtext.total(m, 'sshtail_config_last_reload_success_timestamp_seconds')
        # The timestamp has whole seconds: let the clock pass it first, so
        # that a reload that happened shows.
        # (time(2) is the coarse clock: a jiffy behind time.time()).
        harness.wait_for(lambda: time.time() >= before + 1.05, 3, 0.01, 'clock past last reload')
        self.exp.proc.send_signal(signal.SIGHUP)
        self.wait(lambda m: promtext.total(
            m, 'sshtail_config_last_reload_success_timestamp_seconds') > before and
            promtext.total(m, 'sshtail_config_last_reload_successful') == 1,
            'reload done (timestamp was %s)' % before)
        self.sync('after reload')

    # -------------------------------------------------------------- run
    def setup(self):
        for key in (LOCAL, SSH):
            s = self.src[key]
            s.reopen()
            self.write(s, self.init[key], partial=self.init['partial'])
            if self.init['start_at'] == 'end':
                # Existing complete lines are before the start; a line
                # being written is counted once finished.
                s.exp_lines = s.exp_bytes = 0
                s.w.read_upto = s.w.complete_end()
        self.start_exporter()
        self.sync('initial contents')

    def run(self, only=None):
        self.setup()
        for i, a in enumerate(self.actions):
            if only is not None and i not in only:
                continue
            self.log('%d %s' % (i, json.dumps(a)))
            self.step = i
            if a['a'] in FILE_OPS:
                self.op(a)
                self.sync('after %s' % a['a'])
            else:
                getattr(self, 'act_' + a['a'])(a)
        # Everything written is counted at the end, with a clean stop.
        rc = self.exp.stop(signal.SIGTERM)
        if rc != 0:
            raise Failure('exporter exited with %s on SIGTERM' % rc)

    def close(self):
        self.thaw()
        if self.exp:
            self.exp.kill()
        for s in self.src.values():
            if s.fd is not None:
                os.close(s.fd)
                s.fd = None
        # Remote readers of this seed's sessions: gone with them.
        for p in self.sshd.session_pids():
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_seed(sshd, seed, n_actions, only=None, verbose=False):
    init, actions = make_actions(seed, n_actions)
    r = Run(sshd, seed, init, actions, verbose)
    start = time.monotonic()
    try:
        r.run(only)
        return True, time.monotonic() - start, r.notes
    except (Failure, AssertionError) as e:
        step = getattr(r, 'step', None)
        print('FAIL seed %d at action %s: %s' % (seed, step, e), flush=True)
        print('  init: %s' % json.dumps(init))
        for i, a in enumerate(actions):
            if only is None or i in only:
                print('  %s%2d %s' % ('>' if i == step else ' ', i, json.dumps(a)))
        print('  model notes: %s' % r.notes)
        print('  replay: SSHTAIL_BIN=%s python3 -u %s --replay %d --actions %d%s'
              % (harness.BIN, os.path.abspath(__file__), seed, n_actions,
                 ' --only ' + ','.join(map(str, sorted(only))) if only is not None else ''))
        if r.exp:
            print('  --- exporter log (last run, tail) ---')
            print('\n'.join(r.exp.logs().splitlines()[-40:]))
        sys.stdout.flush()
        return False, time.monotonic() - start, r.notes
    finally:
        r.close()


def run_seeds(seeds, n_actions, keep_going=False, only=None, verbose=False):
    d = harness.tmpdir('sshtail-fm-sshd-')
    sshd = harness.Sshd(d)
    failed = []
    total = time.monotonic()
    for seed in seeds:
        ok, took, notes = run_seed(sshd, seed, n_actions, only, verbose)
        print('%s seed %d (%d actions, %.1fs)%s' % ('ok  ' if ok else 'FAIL', seed, n_actions,
                                                    took, '  ' + '; '.join(notes) if notes else ''),
              flush=True)
        if not ok:
            failed.append(seed)
            if not keep_going:
                break
    print('fault model: %d seeds x %d actions, %d failed %s, %.0fs'
          % (len(seeds), n_actions, len(failed), failed, time.monotonic() - total), flush=True)
    return failed


def test_fault_model_fixed_seeds():
    n = int(os.environ.get('SSHTAIL_FAULT_ACTIONS', DEFAULT_ACTIONS))
    count = os.environ.get('SSHTAIL_FAULT_SEEDS')
    if count:
        start = int(os.environ.get('SSHTAIL_FAULT_START', 1))
        seeds = list(range(start, start + int(count)))
    else:
        seeds = DEFAULT_SEEDS
    failed = run_seeds(seeds, n, keep_going=True)
    assert not failed, 'failing seeds: %s' % failed


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--seeds', type=int)
    p.add_argument('--start', type=int, default=1)
    p.add_argument('--actions', type=int, default=None)
    p.add_argument('--replay', type=int)
    p.add_argument('--only', help='comma-separated action indices to keep')
    p.add_argument('--keep-going', action='store_true')
    p.add_argument('-v', '--verbose', action='store_true')
    p.add_argument('--skip', default='', help='action kinds to leave out, e.g. truncate_regrow,ssh:copytruncate')
    args = p.parse_args()
    SKIP.update(filter(None, args.skip.split(',')))
    if args.actions is not None:
        os.environ['SSHTAIL_FAULT_ACTIONS'] = str(args.actions)
    if args.replay is not None or args.seeds:
        n = int(os.environ.get('SSHTAIL_FAULT_ACTIONS', DEFAULT_ACTIONS))
        only = set(int(x) for x in args.only.split(',')) if args.only else None
        seeds = [args.replay] if args.replay is not None else \
            list(range(args.start, args.start + args.seeds))
        try:
            failed = run_seeds(seeds, n, keep_going=args.keep_going or args.seeds,
                               only=only, verbose=args.verbose)
        finally:
            harness._cleanup_all()
        sys.exit(1 if failed else 0)
    harness.main([test_fault_model_fixed_seeds])


if __name__ == '__main__':
    main()
