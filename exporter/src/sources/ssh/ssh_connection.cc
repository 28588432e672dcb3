#include "sources/ssh/ssh_connection.h"

#include <libssh/libssh.h>
#include <poll.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "sshtail/log.h"

namespace sshtail {
namespace ssh {

void SshConnection::Run() {
  while (!stop_.load() && !AllDone()) {
    TakeInbox();
    if (!session_) {
      if (!WaitUntil(next_connect_)) break;
      Failure f;
      if (!Connect(&f)) {
        if (stop_.load()) break;
        ConnectionFailed(f);
        continue;
      }
    }
    Serve();
  }
  for (auto& s : streams_) {
    Publish(*s);
    s->ref.status->up.store(false);
  }
  Disconnect();
  // Nothing of this connection touches its sources any more.
  std::vector<SourceStatus*> done;
  for (auto& s : streams_) done.push_back(s->ref.status);
  streams_.clear();
  {
    std::lock_guard lock(inbox_mutex_);
    for (const auto& r : inbox_) done.push_back(r.status);
    inbox_.clear();
  }
  for (SourceStatus* st : done) st->released.store(true);
}

void SshConnection::AddStream(const SshSourceRef& r) {
  streams_.push_back(std::make_unique<Stream>(r, queue_, po_));
  Stream& s = *streams_.back();
  s.resume = r.status->positions.Committed();
  s.fresh = s.resume.empty();
  s.saved_at = r.status->positions.RestoredAt();
  s.restored = !s.resume.empty() && s.saved_at > 0;
  for (const auto& p : s.resume) {
    if (p.current && p.offset == 0) s.unread_since = s.saved_at;
    if (!p.current && p.offset == 0) s.saved_unread.push_back(p.file);
  }
}

void SshConnection::TakeInbox() {
  std::vector<SshSourceRef> in;
  std::vector<uint32_t> gone;
  {
    std::lock_guard lock(inbox_mutex_);
    in.swap(inbox_);
    gone.swap(removed_);
  }
  std::vector<SourceStatus*> released;
  for (uint32_t index : gone) {
    // Its channels close with it (ChannelPtr): the remote readers end.
    std::erase_if(streams_, [&](const std::unique_ptr<Stream>& s) {
      if (s->ref.index != index) return false;
      s->ref.status->up.store(false);
      released.push_back(s->ref.status);
      return true;
    });
    std::erase_if(in, [&](const SshSourceRef& r) {
      if (r.index != index) return false;
      released.push_back(r.status);
      return true;
    });
  }
  // Only once its stream is gone: the slot may be reused.
  for (SourceStatus* st : released) st->released.store(true);
  for (const auto& r : in) {
    AddStream(r);
    streams_.back()->retry_at = Clock::now();
  }
}

bool SshConnection::AllDone() const {
  if (!po_.once) return false;
  for (const auto& s : streams_) {
    if (!s->done) return false;
  }
  return true;
}

bool SshConnection::WaitUntil(Clock::time_point t) {
  return HandshakeGate::Instance().WaitToRetry(server_, t, stop_fd_.get(),
                                               stop_);
}

void SshConnection::Count(Stream& s, const std::string& reason) {
  s.ref.status->CountFailure(reason);
}

void SshConnection::ConnectionFailed(const Failure& f) {
  // A connection that stayed up a while starts the backoff over.
  if (session_ && Clock::now() - connected_at_ > std::chrono::seconds(60)) {
    backoff_ = milliseconds(0);
  }
  // One log line per change of reason, not one per retry.
  if (f.reason != last_failure_) {
    Log(LogLevel::kWarn, "ssh " + target_.label + ": " + f.message +
                             " (reason=" + f.reason + ")");
    last_failure_ = f.reason;
  }
  for (auto& s : streams_) {
    if (session_) Publish(*s);  // a held batch (Hold) is not kept waiting
    s->held_since = {};
    Count(*s, f.reason);
    s->ref.status->up.store(false);
    if (po_.once) s->done = true;  // --once does not wait for a host
  }
  Disconnect();
  backoff_ = NextBackoff(backoff_, so_.max_backoff);
  next_connect_ = Clock::now() + Jitter(backoff_);
}

void SshConnection::Disconnect() {
  for (auto& s : streams_) {
    for (auto& c : s->channels) SaveChannelPosition(*s, c);
    s->channels.clear();
  }
  event_.reset();
  session_.reset();
  no_answer_ = false;
}

bool SshConnection::Connect(Failure* f) {
  SessionPtr s = OpenSession(so_, target_, stop_fd_.get(), &stop_, f, &server_);
  if (!s) return false;
  EventPtr ev(ssh_event_new());
  ssh_event_add_session(ev.get(), s.get());
  ssh_event_add_fd(ev.get(), stop_fd_.get(), POLLIN, &SshConnection::OnStop,
                   this);
  ssh_event_add_fd(ev.get(), wake_fd_.get(), POLLIN, &SshConnection::OnStop,
                   this);
  session_ = std::move(s);
  event_ = std::move(ev);
  connected_at_ = Clock::now();
  last_rx_ = Clock::now();
  if (!last_failure_.empty()) {
    Log(LogLevel::kInfo, "ssh " + target_.label + ": connected");
  }
  last_failure_.clear();
  return true;
}

int SshConnection::OnStop(socket_t fd, int, void*) {
  uint64_t v;
  [[maybe_unused]] ssize_t n = ::read(fd, &v, sizeof v);
  return 0;
}

void SshConnection::StreamFailed(Stream& s, const std::string& reason,
                                 const std::string& message) {
  Count(s, reason);
  if (s.last_failure != reason) {
    Log(LogLevel::kWarn, "source " + s.ref.spec->name + " (" + target_.label +
                             ":" + s.ref.spec->path + "): " + message +
                             " (reason=" + reason + ")");
    s.last_failure = reason;
  }
  // Channels are only marked: callers may still hold one; ReadAll() and
  // Serve() drop closed channels.
  for (auto& c : s.channels) {
    if (!c.closed) SaveChannelPosition(s, c);
    c.closed = true;
  }
  s.ref.status->up.store(false);
  if (po_.once) {
    s.done = true;
    return;
  }
  s.backoff = NextBackoff(s.backoff, so_.max_backoff);
  s.retry_at = Clock::now() + Jitter(s.backoff);
}

void SshConnection::Lost(const std::string& reason,
                         const std::string& message) {
  Failure f{reason, message};
  ConnectionFailed(f);
}

void SshConnection::Serve() {
  for (auto& s : streams_) s->retry_at = Clock::now();
  while (session_ && !stop_.load() && !AllDone()) {
    TakeInbox();
    auto now = Clock::now();
    for (auto& s : streams_) {
      if (!s->done && !s->HasRole(Channel::Role::kCurrent) &&
          !s->HasRole(Channel::Role::kProbe) && now >= s->retry_at) {
        OpenStream(*s);
        if (!session_) return;
      } else if (!po_.once && s->HasRole(Channel::Role::kCurrent)) {
        OpenPendingDrains(*s);
        if (!session_) return;
      }
    }
    if (DropIfUnanswered()) return;
    // Reading one channel (or its stderr) can pull packets of another
    // into libssh's buffers; then the socket is quiet although data is
    // waiting, and polling it would sleep until the next deadline.
    int timeout = Buffered() ? 0 : NextTimeout();
    if (ssh_event_dopoll(event_.get(), timeout) == SSH_ERROR &&
        !ssh_is_connected(session_.get())) {
      Lost("disconnect",
           "connection lost: " + std::string(ssh_get_error(session_.get())));
      return;
    }
    if (stop_.load()) return;
    size_t got = ReadAll();
    if (!session_ || DropIfUnanswered()) return;
    now = Clock::now();
    bool listening = false;
    for (const auto& st : streams_) listening = listening || st->AnyOpen();
    // Silence counts only while a remote reader should be talking.
    if (got > 0 || !listening) last_rx_ = now;
    if (!ssh_is_connected(session_.get())) {
      Lost("disconnect", "connection closed by the server");
      return;
    }
    if (now - last_rx_ > StallLimit()) {
      Lost("stalled", "nothing received for " +
                          std::to_string(StallLimit().count() / 1000) +
                          "s (dead connection?)" +
                          (po_.once ? "" : "; reconnecting"));
      return;
    }
    CloseDrained(now);
  }
}

bool SshConnection::DropIfUnanswered() {
  if (!no_answer_) return false;
  no_answer_ = false;
  Lost("stalled", "a channel request got no answer (dead connection?)" +
                      std::string(po_.once ? "" : "; reconnecting"));
  return true;
}

bool SshConnection::Buffered() const {
  for (int round = 0; round < 2; ++round) {
    for (const auto& s : streams_) {
      for (const auto& c : s->channels) {
        if (c.closed) continue;
        if (ssh_channel_poll(c.ch.get(), 0) > 0 ||
            ssh_channel_poll(c.ch.get(), 1) > 0 ||
            ssh_channel_is_eof(c.ch.get())) {
          return true;
        }
      }
    }
  }
  return false;
}

void SshConnection::CloseDrained(Clock::time_point now) {
  for (auto& s : streams_) {
    for (auto& c : s->channels) {
      if (c.role == Channel::Role::kDraining && c.begun &&
          now - c.last_data >= drain_quiet_) {
        c.closed = true;
        s->resume.erase(std::remove_if(s->resume.begin(), s->resume.end(),
                                       [&](const FilePosition& p) {
                                         return p.file == c.id;
                                       }),
                        s->resume.end());
      }
    }
    s->channels.remove_if([](const Channel& c) { return c.closed; });
  }
}

bool SshConnection::HasPacemaker(bool lasting) const {
  for (const auto& s : streams_) {
    for (const auto& c : s->channels) {
      if (IsPacemaker(c) && (!lasting || c.role != Channel::Role::kDraining)) {
        return true;
      }
    }
  }
  return false;
}

int SshConnection::BeatFor(const Stream& s, Channel::Role role) const {
  bool fast;
  if (role == Channel::Role::kDraining) {
    fast = !HasPacemaker();
  } else {
    // A lasting reader takes the beat from a drain (it ends), and a
    // rotation's new reader from the reader it replaces.
    fast = !HasPacemaker(/*lasting=*/true);
    for (const auto& c : s.channels) {
      fast = fast || (role == Channel::Role::kProbe &&
                      c.role == Channel::Role::kCurrent && IsPacemaker(c));
    }
  }
  return fast ? hb_ : hb_ * kSlowBeats;
}

milliseconds SshConnection::StallLimit() const {
  // Without a pacemaker (it was removed), the slow beats must do.
  milliseconds hb3 =
      so_.heartbeat_interval * 3 * (HasPacemaker() ? 1 : kSlowBeats);
  return po_.once ? std::max(hb3, so_.connect_timeout) : hb3;
}

int SshConnection::NextTimeout() const {
  auto now = Clock::now();
  auto next = last_rx_ + StallLimit() + milliseconds(10);
  // While lines flow, wake at least every 50 ms: a packet completed behind
  // our back (see Buffered) then waits that long at most. Quiet
  // connections sleep until the next heartbeat.
  for (const auto& s : streams_) {
    for (const auto& c : s->channels) {
      if (!c.closed && now - c.last_data < std::chrono::seconds(1)) {
        next = std::min(next, now + milliseconds(50));
      }
    }
  }
  for (const auto& s : streams_) {
    if (s->held_since != Clock::time_point{}) {
      next = std::min(
          next, std::min(s->held_since + kHoldFor, s->held_last + kHoldQuiet));
    }
    if (!s->done && !s->HasRole(Channel::Role::kCurrent)) {
      next = std::min(next, s->retry_at);
    }
    for (const auto& c : s->channels) {
      if (c.role == Channel::Role::kDraining) {
        next = std::min(next, c.last_data + drain_quiet_);
      }
    }
  }
  if (next <= now) return 0;
  return static_cast<int>(
      std::chrono::duration_cast<milliseconds>(next - now).count() + 1);
}

}  // namespace ssh

std::string SshConnectionKey(const SourceSpec& s) {
  return s.user + "@" + s.host + ":" + std::to_string(s.port) +
         (s.sudo ? "/sudo" : "");
}

std::vector<std::unique_ptr<SshProducer>> MakeSshProducers(
    const std::vector<SshSourceRef>& sources, BatchQueue& queue,
    const ProducerOptions& producer_options, const SshOptions& ssh_options) {
  InitLibssh();
  std::map<std::string, std::vector<SshSourceRef>> groups;
  std::vector<std::string> order;
  for (const auto& r : sources) {
    std::string key = SshConnectionKey(*r.spec);
    if (!groups.count(key)) order.push_back(key);
    groups[key].push_back(r);
  }
  std::vector<std::unique_ptr<SshProducer>> out;
  size_t per =
      static_cast<size_t>(std::max(1, ssh_options.files_per_connection));
  for (const auto& key : order) {
    const auto& all = groups[key];
    for (size_t i = 0; i < all.size(); i += per) {
      std::vector<SshSourceRef> part(
          all.begin() + static_cast<long>(i),
          all.begin() + static_cast<long>(std::min(all.size(), i + per)));
      out.push_back(std::make_unique<ssh::SshConnection>(
          std::move(part), queue, producer_options, ssh_options));
    }
  }
  return out;
}

}  // namespace sshtail
