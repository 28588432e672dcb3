#include <libssh/libssh.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "sources/ssh/ssh_connection.h"
#include "sshtail/log.h"
#include "sshtail/remote_script.h"

namespace sshtail {
namespace ssh {

bool SshConnection::OpenChannel(Stream& s, RemoteRequest req,
                                Channel::Role role) {
  req.path = s.ref.spec->path;
  req.heartbeat_seconds = BeatFor(s, role);
  req.check_seconds = hb_;
  req.tag = RandomTag();
  req.nonce_path = RandomNoncePath();
  ChannelPtr ch(ssh_channel_new(session_.get()));
  if (!ch || ssh_channel_open_session(ch.get()) != SSH_OK) {
    std::string e = ssh_get_error(session_.get());
    if (e.empty()) {
      // No answer at all (a refusal carries a reason): the peer is frozen
      // or black-holed. The stall check only runs while a channel is
      // open, so the session is dropped from Serve() instead.
      no_answer_ = true;
      e = "no answer from the server";
    }
    StreamFailed(s, "channel",
                 "cannot open a channel: " + e +
                     " (sshd's MaxSessions too low for "
                     "--ssh.files-per-connection?)");
    return false;
  }
  std::string script = RemoteScript(req);
  if (!StartRemoteScript(ch.get(), sudo_, script)) {
    std::string e = ssh_get_error(session_.get());
    if (e.empty()) {
      no_answer_ = !ssh_channel_is_closed(ch.get());
      e = no_answer_ ? "no answer from the server"
                     : "the server closed the channel";
    }
    StreamFailed(s, "channel", "cannot start the remote reader: " + e);
    return false;
  }
  Channel& c = s.channels.emplace_back(po_.max_line_bytes);
  c.ch = std::move(ch);
  c.role = role;
  c.request = std::move(req);
  c.marker = "tail: " + c.request.nonce_path + ": file truncated";
  c.recent_max = std::max(c.marker.size() + 1, FilePosition::kTailBytes);
  c.last_data = Clock::now();
  return true;
}

void SshConnection::OpenStream(Stream& s) {
  if (po_.once) {
    RemoteRequest r;
    r.mode = RemoteRequest::Mode::kOnce;
    OpenChannel(s, r, Channel::Role::kCurrent);
    return;
  }
  RemoteRequest cur;
  cur.mode = RemoteRequest::Mode::kPath;
  for (const auto& p : s.resume) {
    if (p.current) {
      cur.expect = p.file;
      cur.offset = p.offset;
      cur.expect_tail = p.tail;
    }
  }
  if (s.fresh && !s.saw_missing && !s.from_start &&
      po_.start_at == StartAt::kEnd) {
    cur.start_at_end = true;
    cur.end_window = po_.max_line_bytes + 2;
  }
  if (s.unread_since > 0) {
    // Nothing identifies an unread file (an inode number is reused, a .gz
    // has a new one): the file at the path is read from its start, and
    // the ones rotated after the save are listed by time.
    cur.expect = FileId{};
    RemoteRequest by_time;
    by_time.mode = RemoteRequest::Mode::kInode;
    by_time.newer_than_ns = s.unread_since;
    if (!OpenChannel(s, by_time, Channel::Role::kDraining)) return;
  }
  if (!OpenChannel(s, cur, Channel::Role::kCurrent)) return;
  OpenPendingDrains(s);
}

RemoteRequest SshConnection::RestOf(const FileId& expect, uint64_t offset,
                                    const std::string& tail) {
  RemoteRequest r;
  r.mode = RemoteRequest::Mode::kInode;
  r.expect = expect;
  r.offset = offset;
  r.expect_tail = tail;
  return r;
}

RemoteRequest SshConnection::CatchUp(const RemoteRequest& cur,
                                     unsigned long long now, int64_t saved_at) {
  RemoteRequest r = RestOf(cur.expect, cur.offset, cur.expect_tail);
  r.list_newer = true;
  r.newer_before_ns = static_cast<int64_t>(now);
  r.newer_if_gone_ns = saved_at;
  return r;
}

bool SshConnection::IsRequested(const FilePosition& p, const RemoteRequest& r) {
  return p.file == r.expect && p.offset == r.offset && p.tail == r.expect_tail;
}

bool SshConnection::HasChannelFor(const Stream& s, const FileId& id,
                                  const Channel* except) {
  for (const auto& c : s.channels) {
    if (c.closed || &c == except) continue;
    if (c.begun ? c.id == id : c.request.expect == id) return true;
  }
  return false;
}

bool SshConnection::AwaitingSavedReader(const Stream& s) {
  for (const auto& c : s.channels) {
    if (!c.closed && !c.begun && c.role == Channel::Role::kDraining &&
        c.request.mode == RemoteRequest::Mode::kInode && c.request.offset > 0) {
      return true;
    }
  }
  return false;
}

void SshConnection::OpenPendingDrains(Stream& s) {
  size_t open = 0;
  for (const auto& c : s.channels) {
    if (!c.closed && c.role == Channel::Role::kDraining) ++open;
  }
  PositionSet todo = s.resume;  // OpenChannel may change s.resume
  for (const auto& p : todo) {
    if (open >= kMaxDrains) return;
    if (p.current || HasChannelFor(s, p.file)) continue;
    if (p.offset == 0 && AwaitingSavedReader(s)) return;
    RemoteRequest old = RestOf(p.file, p.offset, p.tail);
    if (p.offset == 0 && std::find(s.saved_unread.begin(), s.saved_unread.end(),
                                   p.file) != s.saved_unread.end()) {
      old.born_before_ns = s.saved_at;
    }
    if (!OpenChannel(s, old, Channel::Role::kDraining)) return;
    ++open;
  }
}

bool SshConnection::Pending(const Stream& s, const FileId& id) {
  for (const auto& c : s.channels) {
    if (!c.closed && !c.begun && c.role == Channel::Role::kDraining &&
        c.request.expect == id) {
      return true;
    }
  }
  return false;
}

void SshConnection::SaveChannelPosition(Stream& s, Channel& c) {
  if (!c.begun || c.role == Channel::Role::kProbe) return;
  bool current = c.role == Channel::Role::kCurrent;
  auto& r = s.resume;
  r.erase(std::remove_if(r.begin(), r.end(),
                         [&](const FilePosition& p) {
                           return p.file == c.id ||
                                  (current && p.current && !Pending(s, p.file));
                         }),
          r.end());
  // The old current file whose catch-up has not begun yet stays, as the
  // rotated file it now is.
  if (current) {
    for (auto& p : r) p.current = false;
  }
  r.push_back(FilePosition{c.id, c.file_offset(), current, c.tail});
  s.fresh = false;
}

PositionSet SshConnection::Positions(const Stream& s) const {
  PositionSet set;
  bool current_begun = false;
  for (const auto& c : s.channels) {
    if (!c.begun || c.role == Channel::Role::kProbe) continue;
    bool current = c.role == Channel::Role::kCurrent;
    current_begun = current_begun || current;
    set.push_back(FilePosition{c.id, c.file_offset(), current, c.tail});
  }
  // Files not reopened yet keep their saved place; so does the saved
  // current file when another is current now and its catch-up channel has
  // not begun (a crash then must not lose the rest of it: issue 23, 14).
  for (const auto& p : s.resume) {
    bool have = false;
    for (const auto& q : set) have = have || q.file == p.file;
    if (have) continue;
    if (!p.current || !s.HasRole(Channel::Role::kCurrent)) {
      set.push_back(p);
    } else if (current_begun && Pending(s, p.file)) {
      FilePosition old = p;
      old.current = false;
      set.push_back(std::move(old));
    }
  }
  return set;
}

bool SshConnection::Publish(Stream& s) {
  PositionSet pos = Positions(s);
  for (const auto& p : pos) {
    if (p.current) s.ref.status->offset.store(p.offset);
  }
  uint64_t raw = s.pending_raw;
  s.pending_raw = 0;
  return s.builder.Flush(pos, raw);
}

void SshConnection::Control(Stream& s, Channel& c, const std::string& line) {
  std::string rest = line.substr(c.request.tag.size() + 1);
  if (rest == "MISSING") {
    c.missing = true;
    s.saw_missing = true;
    s.ref.status->up.store(false);
    if (!s.missing_logged) {
      Log(LogLevel::kWarn, "source " + s.ref.spec->name + ": waiting for " +
                               target_.label + ":" + s.ref.spec->path +
                               " (no such file) (reason=file_missing)");
      Count(s, "file_missing");
      s.missing_logged = true;
    }
    if (po_.once) s.done = true;
    return;
  }
  if (rest == "GONE" && c.request.newer_than_ns > 0) {
    s.unread_since = 0;  // every file rotated since is listed (NEWER)
    c.closed = true;
    OpenPendingDrains(s);
    return;
  }
  if (rest == "GONE" && c.gone_is_unknown) {
    c.closed = true;
    return;
  }
  if (rest == "GONE") {
    s.ref.status->files_lost.fetch_add(1);
    Log(LogLevel::kWarn, "source " + s.ref.spec->name +
                             ": a rotated file is gone before it was read "
                             "to its end; lines after offset " +
                             std::to_string(c.request.offset) +
                             " in it are lost");
    s.resume.erase(std::remove_if(s.resume.begin(), s.resume.end(),
                                  [&](const FilePosition& p) {
                                    return IsRequested(p, c.request);
                                  }),
                   s.resume.end());
    c.closed = true;
    OpenPendingDrains(s);
    return;
  }
  unsigned long long ndev, nino;
  if (std::sscanf(rest.c_str(), "NEWER %llu %llu", &ndev, &nino) == 2) {
    // Rotated after the file being caught up while we were away: read
    // whole. Kept in resume (offset 0) until its channel has begun.
    // A saved rotated file with this inode number, not reopened yet, may
    // be another file (the number is reused once a file is deleted): kept
    // too, and dropped if that file's reader finds it by inode (BEGIN).
    FileId id{ndev, nino};
    bool known = false;
    for (const auto& o : s.channels) {
      if (&o == &c || o.closed) continue;
      known =
          known || (o.begun ? o.id == id
                            : o.request.expect == id && o.request.offset == 0);
    }
    for (const auto& p : s.resume) {
      known = known || (!p.current && p.file == id && p.offset == 0);
    }
    if (!known) {
      Log(LogLevel::kInfo, "source " + s.ref.spec->name +
                               ": catching up: a file rotated while away "
                               "is read whole");
      s.resume.push_back(FilePosition{id, 0, false, {}});
      OpenPendingDrains(s);
    }
    return;
  }
  if (rest == "NOACCESS") {
    StreamFailed(s, "permission",
                 "cannot read " + s.ref.spec->path +
                     " (permission denied? use sudo: true for root-only "
                     "logs)");
    return;
  }
  if (rest == "SAME") {  // a probe found no rotation
    c.closed = true;
    return;
  }
  unsigned long long dev, ino, start, size, now = 0;
  if (std::sscanf(rest.c_str(), "BEGIN %llu %llu %llu %llu %llu", &dev, &ino,
                  &start, &size, &now) < 4) {
    StreamFailed(s, "protocol", "unexpected reply from the remote reader");
    return;
  }
  c.begun = true;
  bool waited = c.missing;
  c.missing = false;
  c.id = FileId{dev, ino};
  c.base = static_cast<int64_t>(start);
  if (c.request.start_at_end && !waited && size >= start) {
    // Lines that end within the window were written before we started
    // (the window is the whole file when it is small).
    c.drop_until = size - start;
  }
  bool by_inode = c.request.mode == RemoteRequest::Mode::kInode;
  if (start > 0 && start == c.request.offset &&
      (c.id == c.request.expect || by_inode)) {
    // The script checked that these bytes are still before `start`.
    c.prefix = c.request.expect_tail;
    c.tail = c.prefix;
  }
  if (by_inode && !(c.id == c.request.expect)) {
    // Found by its fingerprint in a .gz: the channel's position (the .gz's
    // identity) replaces the saved one. A file listed NEWER with the saved
    // inode number is another one: it can be read now; the .gz listed
    // NEWER is this file.
    s.resume.erase(
        std::remove_if(s.resume.begin(), s.resume.end(),
                       [&](const FilePosition& p) {
                         return IsRequested(p, c.request) ||
                                (!p.current && p.file == c.id && p.offset == 0);
                       }),
        s.resume.end());
    OpenPendingDrains(s);
  } else if (by_inode && c.request.offset > 0) {
    // Found by inode (and content): a NEWER entry for it is this file.
    s.resume.erase(std::remove_if(s.resume.begin(), s.resume.end(),
                                  [&](const FilePosition& p) {
                                    return !p.current && p.file == c.id &&
                                           p.offset == 0;
                                  }),
                   s.resume.end());
  }
  bool rotated_while_away =
      c.request.expect.valid() && !(c.id == c.request.expect);
  if (c.role == Channel::Role::kProbe) {
    // The path now names another file: drain the old one, follow this.
    for (auto& o : s.channels) {
      if (&o != &c && o.role == Channel::Role::kCurrent) {
        o.role = Channel::Role::kDraining;
        o.last_data = Clock::now();
      }
    }
    c.role = Channel::Role::kCurrent;
    s.ref.status->rotations.fetch_add(1);
    Log(LogLevel::kInfo, "source " + s.ref.spec->name + ": " +
                             s.ref.spec->path +
                             " was rotated; draining the old file");
  } else if (c.role == Channel::Role::kCurrent && rotated_while_away) {
    // Rotated while we were disconnected: read the rest of the old one.
    s.ref.status->rotations.fetch_add(1);
    bool draining = false;
    for (const auto& o : s.channels) {
      draining = draining || (o.role == Channel::Role::kDraining &&
                              o.request.expect == c.request.expect);
    }
    if (!draining) {
      OpenChannel(s, CatchUp(c.request, now, s.restored ? s.saved_at : 0),
                  Channel::Role::kDraining);
    }
  } else if (c.role == Channel::Role::kCurrent && c.request.expect.valid() &&
             start == 0 && c.request.offset > 0) {
    // Truncated while away: the rest of what we were reading is in the
    // copy if it was copied first (copytruncate), maybe compressed since.
    s.ref.status->rotations.fetch_add(1);
    if (!c.request.expect_tail.empty()) {
      // By time only if the file at the path was born after the save: our
      // inode number went to a new file (the script checks).
      if (OpenChannel(s, CatchUp(c.request, now, s.restored ? s.saved_at : 0),
                      Channel::Role::kDraining)) {
        s.channels.back().gone_is_unknown = true;
      }
    }
  }
  if (c.role == Channel::Role::kCurrent) {
    // Later catch-ups (after a reconnect) start from positions this run
    // committed: the save's time no longer dates anything.
    s.restored = false;
    s.ref.status->up.store(true);
    // --once: "read" means read to the end (see ChannelEnded).
    if (!po_.once) s.ref.status->connected_once.store(true);
    s.missing_logged = false;
    s.last_failure.clear();
    s.backoff = milliseconds(0);
  }
  s.fresh = false;
}

}  // namespace ssh
}  // namespace sshtail
