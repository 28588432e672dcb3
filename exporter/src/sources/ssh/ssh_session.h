#pragma once

// The SSH session part of the SSH producer: connect, host-key check,
// authentication. Private to sources/ssh/.

#include <libssh/libssh.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "sshtail/ssh_producer.h"

namespace sshtail {

struct SessionDeleter {
  void operator()(ssh_session s) const {
    if (ssh_is_connected(s)) ssh_disconnect(s);
    ssh_free(s);
  }
};
using SessionPtr = std::unique_ptr<ssh_session_struct, SessionDeleter>;

struct ChannelDeleter {
  void operator()(ssh_channel c) const {
    if (ssh_channel_is_open(c)) ssh_channel_close(c);
    ssh_channel_free(c);
  }
};
using ChannelPtr = std::unique_ptr<ssh_channel_struct, ChannelDeleter>;

struct EventDeleter {
  void operator()(ssh_event e) const { ssh_event_free(e); }
};
using EventPtr = std::unique_ptr<ssh_event_struct, EventDeleter>;

/// A connection-level failure: the reason label and a one-line message.
struct Failure {
  std::string reason;
  std::string message;
};

/// Where to connect. Plain value type.
struct SessionTarget {
  std::string host;
  std::string user;   ///< empty: from the config or libssh's default
  int port = 0;       ///< 0: from the config or 22
  std::string label;  ///< for log lines
};

/// The target of `spec` (an ssh:// source), its user defaulted from
/// SshOptions, labelled "[user@]host[:port]".
SessionTarget TargetOf(const SourceSpec& spec, const SshOptions& so);

/// The wait before the next reconnect: 1 s, then doubling up to `max`.
std::chrono::milliseconds NextBackoff(std::chrono::milliseconds current,
                                      std::chrono::milliseconds max);
/// Between `d` / 2 and `d`: hosts that failed together retry apart, and
/// none waits longer than `d`. Thread-safe (a generator per thread).
std::chrono::milliseconds Jitter(std::chrono::milliseconds d);

/// Starts `script` on the fresh session channel `ch`: `sh -s` (under
/// `sudo -n` if asked) reading it from stdin. False on failure (see
/// ssh_get_error).
bool StartRemoteScript(ssh_channel ch, bool sudo, const std::string& script);

/// Connects, checks the host key and authenticates. Returns null with
/// `*f` filled on failure. Returns early (reason "stopped") once `stop_fd`
/// (an eventfd) becomes readable or `*stop` is set. `*server` (if given)
/// gets the server it went to (HandshakeGate's key), once it is known.
SessionPtr OpenSession(const SshOptions& so, const SessionTarget& t,
                       int stop_fd, const std::atomic<bool>* stop, Failure* f,
                       std::string* server = nullptr);

/// Once per process, before the first session: ssh_init(), and children
/// forked by libssh (ProxyCommand/ProxyJump) start with no blocked signals
/// and default dispositions.
void InitLibssh();

}  // namespace sshtail
