#include "sources/ssh/ssh_lister.h"

#include <libssh/libssh.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>

#include "sources/path_glob.h"
#include "sources/ssh/handshake_gate.h"
#include "sources/ssh/ssh_session.h"
#include "sshtail/log.h"
#include "sshtail/remote_script.h"
#include "util/unique_fd.h"

namespace sshtail {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr size_t kMaxLine = 4096 + 64;

class SshLister : public Producer {
 public:
  SshLister(const SourceSpec& glob, const SshOptions& so, size_t max_paths,
            SourceStatus* status, bool once, ListingRound on_round)
      : so_(so),
        glob_(PathGlob(glob.path).glob()),
        max_paths_(max_paths),
        status_(status),
        once_(once),
        on_round_(std::move(on_round)),
        sudo_(glob.sudo),
        target_(TargetOf(glob, so)) {
    hb_ = std::max<int>(1,
                        static_cast<int>(so.heartbeat_interval.count() / 1000));
    stop_fd_.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  }

  void RequestStop() override {
    stop_.store(true);
    HandshakeGate::Instance().Interrupt();
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(stop_fd_.get(), &one, sizeof one);
  }

  void Run() override {
    milliseconds backoff(0);
    while (!stop_.load()) {
      Failure f;
      auto began = Clock::now();
      bool ended = Serve(&f);  // stopped, or --once's round taken
      status_->up.store(false);
      if (ended || stop_.load()) break;
      status_->CountFailure(f.reason);
      if (once_) {
        Log(LogLevel::kError,
            "ssh " + target_.label + ": listing " + glob_ + ": " + f.message);
        break;
      }
      if (Clock::now() - began > std::chrono::seconds(60)) {
        backoff = milliseconds(0);
      }
      if (f.reason != last_failure_) {
        Log(LogLevel::kWarn, "ssh " + target_.label + ": listing " + glob_ +
                                 ": " + f.message + " (reason=" + f.reason +
                                 ")");
        last_failure_ = f.reason;
      }
      backoff = NextBackoff(backoff, so_.max_backoff);
      HandshakeGate::Instance().WaitToRetry(
          server_, Clock::now() + Jitter(backoff), stop_fd_.get(), stop_);
    }
  }

 private:
  static int OnStop(socket_t fd, int, void*) {
    uint64_t v;
    [[maybe_unused]] ssize_t n = ::read(fd, &v, sizeof v);
    return 0;
  }

  // One session: list until it fails (false, `f` filled) or a stop (true).
  bool Serve(Failure* f) {
    SessionPtr session =
        OpenSession(so_, target_, stop_fd_.get(), &stop_, f, &server_);
    if (!session) return stop_.load();
    ChannelPtr ch(ssh_channel_new(session.get()));
    std::string tag = RandomTag();
    std::string script = RemoteListScript(glob_, hb_, tag, once_);
    if (!ch || ssh_channel_open_session(ch.get()) != SSH_OK ||
        !StartRemoteScript(ch.get(), sudo_, script)) {
      std::string e = ssh_get_error(session.get());
      *f = {"channel", "cannot start the listing: " +
                           (e.empty() ? std::string("no answer") : e)};
      return false;
    }
    if (!last_failure_.empty()) {
      Log(LogLevel::kInfo, "ssh " + target_.label + ": listing again");
      last_failure_.clear();
    }
    status_->up.store(true);
    status_->connected_once.store(true);
    EventPtr ev(ssh_event_new());
    ssh_event_add_session(ev.get(), session.get());
    ssh_event_add_fd(ev.get(), stop_fd_.get(), POLLIN, &SshLister::OnStop,
                     nullptr);
    const std::string f_prefix = tag + " F ", end_line = tag + " E";
    std::string line;
    bool overlong = false;
    std::vector<std::string> round;
    auto last_rx = Clock::now();
    const milliseconds stall = so_.heartbeat_interval * 3;
    char buf[16384];
    while (!stop_.load()) {
      auto left = std::chrono::duration_cast<milliseconds>(last_rx + stall -
                                                           Clock::now());
      if (left.count() <= 0) {
        *f = {"stalled", "the listing sent nothing for " +
                             std::to_string(stall.count() / 1000) + "s"};
        return false;
      }
      ssh_event_dopoll(ev.get(), static_cast<int>(left.count()) + 1);
      if (stop_.load()) return true;
      for (;;) {
        int n = ssh_channel_read_nonblocking(ch.get(), buf, sizeof buf, 0);
        if (n == SSH_ERROR) {
          *f = {"disconnect", "connection lost: " +
                                  std::string(ssh_get_error(session.get()))};
          return false;
        }
        if (n <= 0) break;
        last_rx = Clock::now();
        for (int k = 0; k < n; ++k) {
          char c = buf[k];
          if (c != '\n') {
            if (line.size() < kMaxLine) {
              line += c;
            } else {
              overlong = true;
            }
            continue;
          }
          if (!overlong && line == end_line) {
            on_round_(std::move(round));
            round.clear();
            if (once_) return true;
          } else if (!overlong && line.rfind(f_prefix, 0) == 0 &&
                     round.size() < max_paths_) {
            round.push_back(line.substr(f_prefix.size()));
          }
          line.clear();
          overlong = false;
        }
      }
      // stderr is not ours to keep (a login banner, a sudo complaint).
      while (ssh_channel_read_nonblocking(ch.get(), buf, sizeof buf, 1) > 0) {
      }
      if (ssh_channel_is_eof(ch.get()) && ssh_channel_poll(ch.get(), 0) <= 0) {
        *f = {"stream_ended", "the remote listing stopped"};
        return false;
      }
      if (!ssh_is_connected(session.get())) {
        *f = {"disconnect", "connection closed by the server"};
        return false;
      }
    }
    return true;
  }

  const SshOptions so_;
  const std::string glob_;
  const size_t max_paths_;
  SourceStatus* const status_;
  const bool once_;
  ListingRound on_round_;
  const bool sudo_;
  const SessionTarget target_;
  int hb_ = 5;
  UniqueFd stop_fd_;
  std::atomic<bool> stop_{false};
  std::string last_failure_;
  std::string server_;  // HandshakeGate's key, once known
};

}  // namespace

std::unique_ptr<Producer> MakeSshLister(const SourceSpec& glob,
                                        const SshOptions& options,
                                        size_t max_paths, SourceStatus* status,
                                        bool once, ListingRound on_round) {
  return std::make_unique<SshLister>(glob, options, max_paths, status, once,
                                     std::move(on_round));
}

}  // namespace sshtail
