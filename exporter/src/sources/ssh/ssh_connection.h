#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sources/ssh/handshake_gate.h"
#include "sources/ssh/ssh_session.h"
#include "sources/ssh/ssh_stream.h"
#include "sshtail/batch_queue.h"
#include "sshtail/ssh_producer.h"
#include "util/unique_fd.h"

namespace sshtail {
namespace ssh {

/// The producer of one SSH connection: its session, its channels (one
/// remote reader per file, plus the rotated files being drained) and its
/// thread. Its members live in three files by role: ssh_connection.cc
/// (connect, serve, liveness, backoff), ssh_catch_up.cc (what each channel
/// asks the remote reader for, and what the answers mean: rotation,
/// catch-up, positions) and ssh_channel_io.cc (stdout lines, stderr
/// heartbeats, reads). Run() on one thread; RequestStop, AddSource and
/// RemoveSource from any.
class SshConnection : public SshProducer {
 public:
  SshConnection(std::vector<SshSourceRef> refs, BatchQueue& queue,
                const ProducerOptions& po, const SshOptions& so)
      : po_(po), so_(so), queue_(queue) {
    for (const auto& r : refs) AddStream(r);
    target_ = TargetOf(*refs.front().spec, so);
    sudo_ = refs.front().spec->sudo;
    stop_fd_.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    wake_fd_.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    hb_ = std::max<int>(1,
                        static_cast<int>(so.heartbeat_interval.count() / 1000));
    drain_quiet_ = std::max(milliseconds(5000), so.heartbeat_interval * 2);
  }

  void RequestStop() override {
    stop_.store(true);
    HandshakeGate::Instance().Interrupt();
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(stop_fd_.get(), &one, sizeof one);
  }

  void AddSource(const SshSourceRef& ref) override {
    {
      std::lock_guard lock(inbox_mutex_);
      inbox_.push_back(ref);
    }
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof one);
  }

  void RemoveSource(uint32_t index) override {
    {
      std::lock_guard lock(inbox_mutex_);
      removed_.push_back(index);
    }
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof one);
  }

  void Run() override;

 private:
  void AddStream(const SshSourceRef& r);
  // Files added while running become streams here, on this thread.
  void TakeInbox();
  bool AllDone() const;
  // Sleeps until `t` or a stop request; false if stopped.
  // Waits for the next connect: `t`, or sooner when another session to
  // the server authenticated (HandshakeGate::Up). False on stop.
  bool WaitUntil(Clock::time_point t);
  void Count(Stream& s, const std::string& reason);
  void ConnectionFailed(const Failure& f);
  void Disconnect();
  bool Connect(Failure* f);
  static int OnStop(socket_t fd, int, void*);
  // Opens a channel running the script for `req`. False on failure.
  bool OpenChannel(Stream& s, RemoteRequest req, Channel::Role role);
  // Opens what a stream needs: the path, plus rotated files being drained.
  void OpenStream(Stream& s);
  // A request for the rest, after `offset`, of the rotated file `expect`
  // whose bytes before it were `tail`: found by inode, else by those bytes.
  static RemoteRequest RestOf(const FileId& expect, uint64_t offset,
                              const std::string& tail);
  // The rest of the file `cur` expected, which is no longer at the path
  // (or no longer holds its bytes), and the files rotated after it up to
  // the remote time `now` the live reader began at.
  // The first catch-up after a restart also asks, should that file be
  // gone, for the files rotated after the save (`saved_at`), by time.
  static RemoteRequest CatchUp(const RemoteRequest& cur, unsigned long long now,
                               int64_t saved_at = 0);
  // `p` is the saved position `r` asked for. The offset and tail count
  // too: an inode number freed by compression can come back as a newer
  // rotated file, which has its own entry (offset 0).
  static bool IsRequested(const FilePosition& p, const RemoteRequest& r);
  // A channel other than `except` reads (or will read, once begun) the
  // file `id`.
  static bool HasChannelFor(const Stream& s, const FileId& id,
                            const Channel* except = nullptr);
  // A saved rotated file's reader has not answered yet: a file listed NEWER
  // may be where the rest of that file went (its .gz), which only its BEGIN
  // tells.
  static bool AwaitingSavedReader(const Stream& s);
  // Opens draining channels for rotated files in `resume` that have none,
  // at most kMaxDrains at a time. Files to read whole wait for the saved
  // files' readers (see AwaitingSavedReader).
  void OpenPendingDrains(Stream& s);
  void StreamFailed(Stream& s, const std::string& reason,
                    const std::string& message);
  // Remembers where a channel got to, for the next reconnect.
  void SaveChannelPosition(Stream& s, Channel& c);
  PositionSet Positions(const Stream& s) const;
  // A draining channel that will read `id` has not begun yet.
  static bool Pending(const Stream& s, const FileId& id);
  bool Publish(Stream& s);
  // Whether to keep filling the stream's batch instead of publishing it
  // now (kHoldRead); `got` is what this round read of its files.
  bool Hold(Stream& s, size_t got, Clock::time_point now);
  // Handles one control line on a channel's stdout (before the data).
  void Control(Stream& s, Channel& c, const std::string& line);
  // Feeds stdout bytes of a channel.
  void Data(Stream& s, Channel& c, const char* p, size_t n);
  // Handles stderr: heartbeats ("H dev ino") and error text.
  void Stderr(Stream& s, Channel& c, const char* p, size_t n);
  // Reads everything available on every channel. Returns bytes read.
  size_t ReadAll();
  void ChannelEnded(Stream& s, Channel& c);
  static std::string RemoteReason(const Channel& c);
  static std::string RemoteMessage(const Channel& c);
  void Lost(const std::string& reason, const std::string& message);
  // One connected session: open channels, read, watch liveness.
  void Serve();
  // A channel request went unanswered: the connection is dead, although no
  // channel was open to notice the silence. Reconnects like a stall.
  bool DropIfUnanswered();
  // True if a channel has bytes or an end of file waiting in libssh.
  // Polling a buffer that is empty makes libssh read up to 4 KiB from the
  // socket, which can complete a packet for a buffer already looked at: a
  // second round sees it.
  bool Buffered() const;
  void CloseDrained(Clock::time_point now);
  // Silence after which a connection is dead: 3 heartbeats. --once has no
  // heartbeat (dd sends the file in one go), but a black-holed connection
  // must still end: the connect timeout, at least as long.
  milliseconds StallLimit() const;
  int NextTimeout() const;

  const ProducerOptions po_;
  const SshOptions so_;
  BatchQueue& queue_;
  std::vector<std::unique_ptr<Stream>> streams_;
  SessionTarget target_;
  bool sudo_ = false;
  int hb_ = 5;
  // One channel per connection (the pacemaker) beats every interval: the
  // connection's liveness. The others beat every kSlowBeats intervals, only
  // so that their remote readers notice a closed channel and end: at 4
  // files per connection, half the idle wake-ups.
  static constexpr int kSlowBeats = 3;
  bool IsPacemaker(const Channel& c) const {
    return !c.closed && c.request.heartbeat_seconds == hb_;
  }
  // Any pacemaker; with `lasting`, one that follows a path (drains end).
  bool HasPacemaker(bool lasting = false) const;
  // The beat of a new channel of `s` in `role`.
  int BeatFor(const Stream& s, Channel::Role role) const;
  milliseconds drain_quiet_{5000};
  UniqueFd stop_fd_;
  UniqueFd wake_fd_;  // AddSource
  std::mutex inbox_mutex_;
  std::vector<SshSourceRef> inbox_;  // guarded by inbox_mutex_
  std::vector<uint32_t> removed_;    // guarded by inbox_mutex_
  std::atomic<bool> stop_{false};
  SessionPtr session_;
  EventPtr event_;
  Clock::time_point connected_at_{};
  Clock::time_point last_rx_{};
  Clock::time_point next_connect_{};
  milliseconds backoff_{0};
  std::string last_failure_;
  std::string server_;      // HandshakeGate's key, once known
  bool no_answer_ = false;  // a channel request timed out; see Serve()
  // Not zeroed: only the bytes a read fills are touched (250 connections
  // would otherwise hold 16 MiB of zeros).
  std::unique_ptr<char[]> buf_{new char[kReadChunk]};
};

}  // namespace ssh
}  // namespace sshtail
