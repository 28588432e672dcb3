#include "sources/ssh/ssh_session.h"

#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "sources/ssh/handshake_gate.h"
#include "sshtail/log.h"
#include "sshtail/remote_script.h"

namespace sshtail {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct KeyDeleter {
  void operator()(ssh_key k) const { ssh_key_free(k); }
};
using KeyPtr = std::unique_ptr<ssh_key_struct, KeyDeleter>;

// known_hosts is one file shared by every connection thread.
std::mutex& KnownHostsMutex() {
  static std::mutex m;
  return m;
}

// The system-wide file OpenSSH also reads.
constexpr const char* kGlobalKnownHosts = "/etc/ssh/ssh_known_hosts";

std::string ClassifyConnectError(const std::string& e) {
  auto has = [&](const char* s) { return e.find(s) != std::string::npos; };
  if (has("resolve") || has("Name or service not known") ||
      has("getaddrinfo") || has("No address")) {
    return "dns";
  }
  if (has("refused")) return "refused";
  if (has("imeout") || has("timed out")) return "timeout";
  if (has("unreachable")) return "unreachable";
  return "connect";
}

std::string HomeDir() {
  std::vector<char> buf(16384);
  struct passwd pw;
  struct passwd* out = nullptr;
  if (getpwuid_r(getuid(), &pw, buf.data(), buf.size(), &out) == 0 && out &&
      out->pw_dir) {
    return out->pw_dir;
  }
  const char* h = std::getenv("HOME");
  return h ? h : "";
}

// The user's known_hosts: the flag, else ~/.ssh/known_hosts. Never from
// ~/.ssh/config.
std::string UserKnownHosts(const SshOptions& so) {
  std::string p = so.known_hosts;
  if (p.empty()) p = "~/.ssh/known_hosts";
  if (p == "~" || p.rfind("~/", 0) == 0) p = HomeDir() + p.substr(1);
  return p;
}

std::string Fingerprint(ssh_session s) {
  ssh_key raw = nullptr;
  if (ssh_get_server_publickey(s, &raw) != SSH_OK) return "unknown key";
  KeyPtr key(raw);
  unsigned char* hash = nullptr;
  size_t hlen = 0;
  if (ssh_get_publickey_hash(key.get(), SSH_PUBLICKEY_HASH_SHA256, &hash,
                             &hlen) != 0) {
    return "unknown key";
  }
  char* fp = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash, hlen);
  std::string out = std::string(ssh_key_type_to_char(ssh_key_type(key.get()))) +
                    " " + (fp ? fp : "?");
  ssh_string_free_char(fp);
  ssh_clean_pubkey_hash(&hash);
  return out;
}

// libssh 0.10 runs ProxyJump as `ssh -W [%h]:%p jumphost`: the OpenSSH
// client must read the same config file (for the jump host's name, key
// and known_hosts), and must never prompt. `exec` makes the SIGTERM libssh
// sends on close reach ssh itself, not an intermediate shell.
void AdjustProxyCommand(ssh_session ss, const SshOptions& so) {
  char* pc = nullptr;
  if (ssh_options_get(ss, SSH_OPTIONS_PROXYCOMMAND, &pc) != SSH_OK || !pc) {
    return;
  }
  std::string cmd = pc;
  ssh_string_free_char(pc);
  if (cmd.rfind("ssh ", 0) != 0) return;  // a user's own ProxyCommand
  std::string extra = "-o BatchMode=yes ";
  if (!so.config_file.empty() && so.config_file != "none") {
    extra += "-F " + ShellQuote(so.config_file) + " ";
  }
  cmd.insert(4, extra);
  cmd.insert(0, "exec ");
  ssh_options_set(ss, SSH_OPTIONS_PROXYCOMMAND, cmd.c_str());
}

// ~/.ssh/config may set UserKnownHostsFile, GlobalKnownHostsFile and
// StrictHostKeyChecking (libssh 0.10 treats "no" as: an unknown or even a
// changed key is OK). None of them may loosen the check: each file is
// judged on its own, a changed key in either is refused.
ssh_known_hosts_e CheckIn(ssh_session ss, const std::string& file) {
  // Same file twice: libssh's merge of "user" and "global" cannot upgrade
  // the verdict.
  ssh_options_set(ss, SSH_OPTIONS_KNOWNHOSTS, file.c_str());
  ssh_options_set(ss, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, file.c_str());
  return ssh_session_is_known_server(ss);
}

bool CheckHostKey(ssh_session ss, const SshOptions& so, const SessionTarget& t,
                  Failure* f) {
  std::string fp = Fingerprint(ss);
  std::string user_file = UserKnownHosts(so);
  std::lock_guard lock(KnownHostsMutex());
  int strict = 1;
  ssh_options_set(ss, SSH_OPTIONS_STRICTHOSTKEYCHECK, &strict);
  ssh_known_hosts_e user = CheckIn(ss, user_file);
  ssh_known_hosts_e global = CheckIn(ss, kGlobalKnownHosts);
  auto changed = [](ssh_known_hosts_e e) {
    return e == SSH_KNOWN_HOSTS_CHANGED || e == SSH_KNOWN_HOSTS_OTHER;
  };
  auto unknown = [](ssh_known_hosts_e e) {
    return e == SSH_KNOWN_HOSTS_UNKNOWN || e == SSH_KNOWN_HOSTS_NOT_FOUND;
  };
  if (changed(user) || changed(global)) {
    *f = {"hostkey_changed",
          "REFUSED: host key changed to " + fp +
              "; if that is expected, remove the old entry from "
              "known_hosts (ssh-keygen -R)"};
    return false;
  }
  if (user == SSH_KNOWN_HOSTS_OK || global == SSH_KNOWN_HOSTS_OK) return true;
  if (!unknown(user) || !unknown(global)) {
    *f = {"hostkey_error",
          "cannot check host key: " + std::string(ssh_get_error(ss))};
    return false;
  }
  if (!so.accept_new_host_keys) {
    *f = {"hostkey_unknown",
          "REFUSED: host key " + fp +
              " is not in known_hosts; add it (ssh-keyscan) or run "
              "with --ssh.accept-new-host-keys"};
    return false;
  }
  ssh_options_set(ss, SSH_OPTIONS_KNOWNHOSTS, user_file.c_str());
  if (ssh_session_update_known_hosts(ss) != SSH_OK) {
    *f = {"hostkey_error",
          "cannot record host key " + fp + ": " + ssh_get_error(ss)};
    return false;
  }
  Log(LogLevel::kInfo, "ssh " + t.label + ": recorded new host key " + fp);
  return true;
}

// ssh_connect in non-blocking mode, so that a stop request does not wait
// for the connect timeout (a frozen host or jump host).
bool ConnectInterruptibly(ssh_session ss, const SshOptions& so, int stop_fd,
                          const std::atomic<bool>* stop, Failure* f) {
  auto deadline = Clock::now() + so.connect_timeout;
  ssh_set_blocking(ss, 0);
  for (;;) {
    int rc = ssh_connect(ss);
    if (rc == SSH_OK) break;
    if (rc == SSH_ERROR) {
      std::string e = ssh_get_error(ss);
      *f = {ClassifyConnectError(e), "cannot connect: " + e};
      return false;
    }
    if (stop->load()) {
      *f = {"stopped", "stopped"};
      return false;
    }
    auto now = Clock::now();
    if (now >= deadline) {
      *f = {"timeout", "cannot connect: no SSH handshake within " +
                           std::to_string(so.connect_timeout.count()) + "ms"};
      return false;
    }
    short ev = POLLIN;
    if (ssh_get_poll_flags(ss) & SSH_WRITE_PENDING) ev |= POLLOUT;
    struct pollfd p[2] = {{ssh_get_fd(ss), ev, 0}, {stop_fd, POLLIN, 0}};
    // libssh does not say when a TCP connect completes: wake at least
    // every 50 ms while connecting (bounded by the connect timeout).
    auto left =
        std::chrono::duration_cast<milliseconds>(deadline - now).count() + 1;
    ::poll(p, 2, static_cast<int>(std::min<long long>(50, left)));
  }
  ssh_set_blocking(ss, 1);
  return true;
}

// The server a handshake goes to, as the client config resolves it
// (HostName, Port): aliases of one host share its MaxStartups.
std::string ServerOf(ssh_session ss, const SessionTarget& t) {
  char* host = nullptr;
  std::string h = t.host;
  if (ssh_options_get(ss, SSH_OPTIONS_HOST, &host) == SSH_OK && host) {
    h = host;
  }
  ssh_string_free_char(host);
  unsigned int port = 0;
  if (ssh_options_get_port(ss, &port) != SSH_OK) port = 22;
  return h + ":" + std::to_string(port);
}

void ResetSignalsInChild() {
  // Async-signal-safe calls only: this runs between fork and exec.
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  signal(SIGPIPE, SIG_DFL);
}

}  // namespace

SessionTarget TargetOf(const SourceSpec& spec, const SshOptions& so) {
  SessionTarget t;
  t.host = spec.host;
  t.user = spec.user.empty() ? so.default_user : spec.user;
  t.port = spec.port;
  t.label = (t.user.empty() ? "" : t.user + "@") + t.host +
            (t.port ? ":" + std::to_string(t.port) : "");
  return t;
}

std::chrono::milliseconds NextBackoff(std::chrono::milliseconds current,
                                      std::chrono::milliseconds max) {
  return current.count() == 0 ? std::chrono::milliseconds(1000)
                              : std::min(current * 2, max);
}

std::chrono::milliseconds Jitter(std::chrono::milliseconds d) {
  static thread_local std::mt19937 rng{std::random_device{}()};
  // "Equal jitter": never past `d`, so --ssh.max-backoff is the longest
  // wait; spread over half of it, so hosts back at once do not all retry
  // in the same second.
  std::uniform_real_distribution<double> u(0.5, 1.0);
  return std::chrono::milliseconds(static_cast<long long>(d.count() * u(rng)));
}

bool StartRemoteScript(ssh_channel ch, bool sudo, const std::string& script) {
  return ssh_channel_request_exec(ch, sudo ? "sudo -n sh -s" : "sh -s") ==
             SSH_OK &&
         ssh_channel_write(ch, script.data(),
                           static_cast<uint32_t>(script.size())) ==
             static_cast<int>(script.size()) &&
         ssh_channel_send_eof(ch) == SSH_OK;
}

void InitLibssh() {
  // The exporter blocks SIGTERM/SIGINT/SIGHUP for its signal thread and
  // ignores SIGPIPE; a ProxyCommand child (forked by libssh) would inherit
  // both, and libssh's close (SIGTERM, then waitpid) would hang forever.
  static std::once_flag once;
  std::call_once(once, [] {
    ssh_init();
    pthread_atfork(nullptr, nullptr, ResetSignalsInChild);
  });
}

SessionPtr OpenSession(const SshOptions& so, const SessionTarget& t,
                       int stop_fd, const std::atomic<bool>* stop, Failure* f,
                       std::string* server) {
  SessionPtr s(ssh_new());
  if (!s) {
    *f = {"internal", "cannot allocate an SSH session"};
    return nullptr;
  }
  ssh_session ss = s.get();
  ssh_options_set(ss, SSH_OPTIONS_HOST, t.host.c_str());
  if (t.port) {
    unsigned int p = static_cast<unsigned int>(t.port);
    ssh_options_set(ss, SSH_OPTIONS_PORT, &p);
  }
  if (!t.user.empty()) ssh_options_set(ss, SSH_OPTIONS_USER, t.user.c_str());
  long timeout = std::max<long>(1, so.connect_timeout.count() / 1000);
  ssh_options_set(ss, SSH_OPTIONS_TIMEOUT, &timeout);
  for (const auto& id : so.identity_files) {
    ssh_options_set(ss, SSH_OPTIONS_ADD_IDENTITY, id.c_str());
  }
  // AES-GCM first: hardware-accelerated on the hosts we care about.
  const char* ciphers =
      "aes128-gcm@openssh.com,aes256-gcm@openssh.com,"
      "chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr";
  ssh_options_set(ss, SSH_OPTIONS_CIPHERS_C_S, ciphers);
  ssh_options_set(ss, SSH_OPTIONS_CIPHERS_S_C, ciphers);
  // Only when asked: unset, a host's Compression in ~/.ssh/config decides.
  if (so.compression) ssh_options_set(ss, SSH_OPTIONS_COMPRESSION, "yes");
  // Explicit options above win over ~/.ssh/config, as with OpenSSH.
  if (so.config_file == "none") {
    int no = 0;
    ssh_options_set(ss, SSH_OPTIONS_PROCESS_CONFIG, &no);
  } else if (ssh_options_parse_config(ss, so.config_file.empty()
                                              ? nullptr
                                              : so.config_file.c_str()) < 0) {
    *f = {"config",
          "cannot parse ssh config: " + std::string(ssh_get_error(ss))};
    return nullptr;
  }
  // Host-key settings are ours whatever the config said (CheckHostKey
  // sets the files again; this covers libssh's own use during connect,
  // which orders host key types by the known entries).
  std::string user_file = UserKnownHosts(so);
  ssh_options_set(ss, SSH_OPTIONS_KNOWNHOSTS, user_file.c_str());
  ssh_options_set(ss, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, kGlobalKnownHosts);
  int strict = 1;
  ssh_options_set(ss, SSH_OPTIONS_STRICTHOSTKEYCHECK, &strict);
  AdjustProxyCommand(ss, so);
  std::string to = ServerOf(ss, t);
  if (server) *server = to;
  HandshakeGate::Slot slot =
      HandshakeGate::Instance().Enter(to, so.max_handshakes_per_host, *stop);
  if (!slot) {
    *f = {"stopped", "stopped"};
    return nullptr;
  }
  if (!ConnectInterruptibly(ss, so, stop_fd, stop, f)) return nullptr;
  if (!CheckHostKey(ss, so, t, f)) return nullptr;
  int rc = ssh_userauth_none(ss, nullptr);
  if (rc != SSH_AUTH_SUCCESS) {
    rc = ssh_userauth_publickey_auto(ss, nullptr, nullptr);
  }
  if (rc != SSH_AUTH_SUCCESS) {
    char* user = nullptr;
    ssh_options_get(ss, SSH_OPTIONS_USER, &user);
    std::string who = user ? user : "?";
    ssh_string_free_char(user);
    *f = {"auth", "authentication failed for user " + who +
                      " (no key from the agent, --ssh.identity-file or "
                      "~/.ssh was accepted)"};
    return nullptr;
  }
  HandshakeGate::Instance().Up(to);
  return s;
}

}  // namespace sshtail
