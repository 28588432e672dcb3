#include <libssh/libssh.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "sources/ssh/ssh_connection.h"
#include "sshtail/log.h"

namespace sshtail {
namespace ssh {

void SshConnection::Data(Stream& s, Channel& c, const char* p, size_t n) {
  c.last_data = Clock::now();
  while (!c.begun && n > 0 && !c.closed) {
    const char* nl = static_cast<const char*>(std::memchr(p, '\n', n));
    size_t used = nl ? static_cast<size_t>(nl - p) + 1 : n;
    c.header_bytes += used;
    if (nl == nullptr) {
      c.header_buf.append(p, n);
      if (c.header_buf.size() > kMaxHeaderLine ||
          c.header_bytes > kMaxHeaderBytes) {
        StreamFailed(s, "protocol", "unexpected reply from the remote reader");
      }
      return;
    }
    c.header_buf.append(p, static_cast<size_t>(nl - p));
    n -= used;
    p = nl + 1;
    std::string line = std::move(c.header_buf);
    c.header_buf.clear();
    if (line.rfind(c.request.tag + " ", 0) != 0) {
      // e.g. a login banner or motd printed by a shell rc
      if (line.size() > kMaxHeaderLine || c.header_bytes > kMaxHeaderBytes) {
        StreamFailed(s, "protocol", "unexpected reply from the remote reader");
        return;
      }
      AddErrText(c, line);
      continue;
    }
    Control(s, c, line);
  }
  if (!c.begun || n == 0 || c.closed) return;
  ChannelSink sink{c, s.builder, p, n};
  uint64_t before = c.splitter.complete_bytes();
  c.splitter.Feed(std::string_view(p, n), sink);
  uint64_t after = c.splitter.complete_bytes();
  s.pending_raw += after - before;
  if (after != before) c.tail = sink.FileTail(after);
  // Keep the last recent_max raw bytes.
  if (n >= c.recent_max) {
    c.recent.assign(p + n - c.recent_max, c.recent_max);
  } else {
    c.recent.append(p, n);
    if (c.recent.size() > c.recent_max) {
      c.recent.erase(0, c.recent.size() - c.recent_max);
    }
  }
  c.fed += n;
  if (sink.truncated) {
    s.ref.status->rotations.fetch_add(1);
    Log(LogLevel::kInfo, "source " + s.ref.spec->name +
                             ": file truncated; reading it from the start");
  }
}

void SshConnection::Stderr(Stream& s, Channel& c, const char* p, size_t n) {
  c.err_buf.append(p, n);
  size_t from = 0;
  size_t nl;
  while (!c.closed && (nl = c.err_buf.find('\n', from)) != std::string::npos) {
    std::string_view line(c.err_buf.data() + from, nl - from);
    from = nl + 1;
    if (line.size() > kMaxStderrLine) {
      StreamFailed(s, "protocol", "over-long line from the remote reader");
      break;
    }
    if (line.rfind("H ", 0) != 0) {
      AddErrText(c, line);
      continue;
    }
    if (c.role != Channel::Role::kCurrent || !c.begun) continue;
    unsigned long long dev, ino;
    std::string l(line);
    if (std::sscanf(l.c_str(), "H %llu %llu", &dev, &ino) != 2) continue;
    FileId now{dev, ino};
    if (now == c.id || s.HasRole(Channel::Role::kProbe)) continue;
    RemoteRequest probe;
    probe.mode = RemoteRequest::Mode::kPath;
    probe.expect = c.id;
    probe.offset = c.file_offset();
    probe.same_is_noop = true;
    OpenChannel(s, probe, Channel::Role::kProbe);
  }
  c.err_buf.erase(0, from);
  if (!c.closed && c.err_buf.size() > kMaxStderrLine) {
    StreamFailed(s, "protocol", "over-long line from the remote reader");
  }
  if (c.closed) c.err_buf.clear();
}

size_t SshConnection::ReadAll() {
  size_t total = 0;
  auto now = Clock::now();
  for (auto& sp : streams_) {
    Stream& s = *sp;
    size_t stdout_got = 0;
    for (auto it = s.channels.begin(); it != s.channels.end();) {
      Channel& c = *it;
      size_t got = 0;
      while (!c.closed && got < kFairShare) {
        int n = ssh_channel_read_nonblocking(
            c.ch.get(), buf_.get(), static_cast<uint32_t>(kReadChunk), 0);
        if (n == SSH_ERROR) {
          Lost("disconnect", "connection lost: " +
                                 std::string(ssh_get_error(session_.get())));
          return total;
        }
        if (n <= 0) break;
        got += static_cast<size_t>(n);
        stdout_got += static_cast<size_t>(n);
        Data(s, c, buf_.get(), static_cast<size_t>(n));
        if (s.builder.full() && !Publish(s)) return total;
      }
      int n;
      while (!c.closed && got < 2 * kFairShare &&
             (n = ssh_channel_read_nonblocking(
                  c.ch.get(), buf_.get(), static_cast<uint32_t>(kReadChunk),
                  1)) > 0) {
        got += static_cast<size_t>(n);
        Stderr(s, c, buf_.get(), static_cast<size_t>(n));
      }
      total += got;
      if (!c.closed && ssh_channel_is_eof(c.ch.get()) &&
          ssh_channel_poll(c.ch.get(), 0) <= 0 &&
          ssh_channel_poll(c.ch.get(), 1) <= 0) {
        ChannelEnded(s, c);
      }
      if (c.closed) {
        if (c.role == Channel::Role::kCurrent) SaveChannelPosition(s, c);
        if (c.role == Channel::Role::kDraining && !c.begun && c.ended) {
          // Its reader failed before it started (GONE was handled in
          // Control): not retried for ever, counted.
          size_t before = s.resume.size();
          s.resume.erase(std::remove_if(s.resume.begin(), s.resume.end(),
                                        [&](const FilePosition& p) {
                                          return IsRequested(p, c.request);
                                        }),
                         s.resume.end());
          if (s.resume.size() != before) {
            s.ref.status->files_lost.fetch_add(1);
            Log(LogLevel::kWarn, "source " + s.ref.spec->name +
                                     ": cannot read a rotated file (" +
                                     RemoteMessage(c) +
                                     "); its lines are lost");
          }
        }
        if (c.role == Channel::Role::kDraining && c.begun) {
          s.resume.erase(std::remove_if(s.resume.begin(), s.resume.end(),
                                        [&](const FilePosition& p) {
                                          return p.file == c.id;
                                        }),
                         s.resume.end());
        }
        it = s.channels.erase(it);
      } else {
        ++it;
      }
    }
    if (Hold(s, stdout_got, now)) continue;
    if (!Publish(s)) return total;
  }
  return total;
}

bool SshConnection::Hold(Stream& s, size_t got, Clock::time_point now) {
  bool holding = s.held_since != Clock::time_point{};
  if (!holding && got >= kHoldRead) {
    s.held_since = now;
    holding = true;
  }
  if (holding && got > 0) s.held_last = now;
  if (holding && !s.builder.empty() && !s.builder.full() &&
      now - s.held_since < kHoldFor && now - s.held_last < kHoldQuiet) {
    return true;
  }
  s.held_since = {};
  return false;
}

void SshConnection::ChannelEnded(Stream& s, Channel& c) {
  if (po_.once && c.role == Channel::Role::kCurrent) {
    if (!c.begun && !c.missing) {
      StreamFailed(s, RemoteReason(c), RemoteMessage(c));
      return;
    }
    if (c.begun) s.ref.status->connected_once.store(true);
    c.closed = true;
    s.done = true;
    return;
  }
  if (c.closed) return;
  if (!c.begun && c.role == Channel::Role::kCurrent) {
    StreamFailed(s, RemoteReason(c), RemoteMessage(c));
    return;
  }
  if (c.role == Channel::Role::kCurrent) {
    // The remote tail ended (killed, or the file system went away).
    StreamFailed(s, "stream_ended",
                 "the remote reader stopped: " + RemoteMessage(c));
    return;
  }
  c.ended = true;
  c.closed = true;
}

std::string SshConnection::RemoteReason(const Channel& c) {
  if (c.err_text.find("sudo") != std::string::npos) return "sudo";
  return "remote_error";
}

std::string SshConnection::RemoteMessage(const Channel& c) {
  std::string t = c.err_text.empty() ? "no output" : c.err_text;
  while (!t.empty() && t.back() == ' ') t.pop_back();
  return "remote side said: " + t;
}

}  // namespace ssh
}  // namespace sshtail
