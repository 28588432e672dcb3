#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

struct mg_callbacks;
struct ssl_ctx_st;
struct ssl_st;
struct x509_st;
struct x509_store_ctx_st;

namespace sshtail {

/// What a basic-auth check decided.
enum class AuthResult {
  kOk,      ///< a configured user with the right password
  kDenied,  ///< anything else: 401
  kBusy,    ///< too many password checks already running or waiting: 429
};

/// A set of strings with a fixed capacity; the least recently used entry
/// goes first. Not thread-safe.
class LruSet {
 public:
  explicit LruSet(size_t capacity) : capacity_(capacity) {}
  /// True if present (and marks it used).
  bool Touch(const std::string& key);
  void Insert(const std::string& key);
  size_t size() const { return order_.size(); }

 private:
  size_t capacity_;
  std::list<std::string> order_;  // most recent first
  std::unordered_map<std::string, std::list<std::string>::iterator> index_;
};

/// The exporter-toolkit web config (`--web.config.file`): TLS and basic
/// auth with bcrypt hashes, and response headers. CheckAuthorization() is
/// thread-safe. Every setting is either enforced or refused at load time:
/// none is accepted and ignored. WebConfigSource re-reads it on change.
class WebConfig {
 public:
  /// Bounds on bcrypt work (see CheckAuthorization).
  static constexpr int kMaxParallelBcrypt = 2;
  static constexpr int kMaxBcryptWaiters = 8;
  static constexpr std::chrono::milliseconds kMaxBcryptWait{1000};
  static constexpr size_t kOkCacheSize = 64;
  static constexpr size_t kDeniedCacheSize = 4096;
  /// Most bcrypt cost an unknown user's decoy check takes.
  static constexpr int kMaxDecoyCost = 10;

  /// Throws std::invalid_argument ("file:line: ...") on a bad file.
  static WebConfig Load(const std::string& path);

  WebConfig() = default;
  // Copies the settings (and shares the TLS context); caches and counters
  // start empty.
  WebConfig(const WebConfig& o) : s_(o.s_), ctx_(o.ctx_) {}
  WebConfig& operator=(const WebConfig& o) {
    if (this != &o) {
      s_ = o.s_;
      ctx_ = o.ctx_;
    }
    return *this;
  }

  bool tls_enabled() const { return !s_.cert_file.empty(); }
  bool auth_enabled() const { return !s_.users.empty(); }

  /// Checks an "Authorization: Basic ..." header. Outcomes are cached by
  /// the header's SHA-256 (successes and failures in separate bounded LRUs,
  /// so failures never evict a working credential). A miss costs one bcrypt
  /// run, at most kMaxParallelBcrypt at a time; a check that would wait
  /// longer than kMaxBcryptWait, or behind kMaxBcryptWaiters others, is
  /// kBusy. Unknown users cost the same bcrypt work as known ones, up to
  /// cost kMaxDecoyCost.
  AuthResult CheckAuthorization(const std::string& header) const;

  /// "Name: value\r\n" lines from http_server_config.headers.
  const std::string& extra_headers() const { return s_.extra_headers; }

  /// For tests: bcrypt runs so far, the most seen at once, cache sizes.
  struct AuthStats {
    long bcrypt_runs = 0;
    int max_parallel = 0;
    long busy = 0;
    size_t ok_cached = 0;
    size_t denied_cached = 0;
    int decoy_cost = 0;  ///< bcrypt cost of an unknown user's check
  };
  AuthStats auth_stats() const;

  /// The server TLS context with every setting applied, built by Load()
  /// (nullptr without TLS). It owns what its verify callback needs, so a
  /// connection may outlive this WebConfig.
  ssl_ctx_st* ssl_ctx() const { return ctx_.get(); }
  /// The files this config was read from: itself, cert, key, client CA.
  std::vector<std::string> files() const;

 private:
  struct Settings {
    std::string path;
    std::string cert_file;
    std::string key_file;
    std::string client_ca_file;
    std::string client_auth = "NoClientCert";
    int min_version = 0;       // OpenSSL TLS*_VERSION; 0: TLS 1.2
    int max_version = 0;       // 0: the newest
    std::string cipher_list;   // OpenSSL names, TLS <= 1.2
    std::string ciphersuites;  // OpenSSL names, TLS 1.3
    bool prefer_server_ciphers = true;
    std::string groups;  // OpenSSL group list from curve_preferences
    std::vector<std::string> allowed_sans;
    std::string extra_headers;
    std::map<std::string, std::string> users;  // user -> bcrypt hash
    std::string dummy_hash;  // the users' highest cost, <= kMaxDecoyCost
  };

  static int VerifyPeer(x509_store_ctx_st* store, void* arg);
  /// A server context with every TLS setting applied, or nullptr
  /// (OpenSSL's error queue says why).
  ssl_ctx_st* NewSslCtx() const;

  Settings s_;
  std::shared_ptr<ssl_ctx_st> ctx_;

  mutable std::mutex mutex_;
  mutable std::condition_variable slot_free_;
  mutable int running_ = 0;
  mutable int waiting_ = 0;
  mutable AuthStats stats_;
  mutable LruSet ok_{kOkCacheSize};
  mutable LruSet denied_{kDeniedCacheSize};
};

/// --web.config.file, re-read when it changes, as exporter-toolkit does for
/// every new connection: Current() stats the file and the cert, key and CA
/// files it names at most once a second (inode, size, mtime, ctime) and
/// loads it again when any changed. A file that does not load (or that
/// would turn TLS on or off, which needs a restart) keeps the previous
/// config; last_reload_successful() says so, and it is logged once per
/// change. TLS connections take the current config's SSL_CTX in the
/// ClientHello callback (before version, cipher and certificate choice), so
/// a renewed certificate or any changed TLS setting applies to the next
/// handshake. Thread-safe.
class WebConfigSource {
 public:
  static constexpr std::chrono::milliseconds kRecheck{1000};

  /// Loads `path` (empty: no web config, nothing to re-read). Throws like
  /// WebConfig::Load.
  explicit WebConfigSource(std::string path);

  std::shared_ptr<const WebConfig> Current();
  bool tls_enabled() const { return tls_; }
  bool last_reload_successful() const { return ok_.load(); }
  /// sshtail_web_config_* in the text exposition format ("" without a file).
  std::string Metrics() const;

  /// Loads CivetWeb's OpenSSL shims and hooks the SSL_CTX into callbacks
  /// (mg_start's user_data must be this).
  bool PrepareTls(struct mg_callbacks* callbacks, std::string* error);

 private:
  static int ExternalSslCtx(void** ssl_ctx, void* user_data);
  static int ClientHello(ssl_st* ssl, int* alert, void* arg);
  static std::string Signature(const std::vector<std::string>& files);

  const std::string path_;
  bool tls_ = false;
  mutable std::mutex mutex_;
  std::shared_ptr<const WebConfig> current_;
  std::string signature_;  // of current_'s files, or of the last failure
  std::chrono::steady_clock::time_point next_check_{};
  bool checking_ = false;
  std::atomic<bool> ok_{true};
  std::atomic<double> last_success_{0};
  std::atomic<long> reloads_{0};
  std::atomic<long> failures_{0};
};

}  // namespace sshtail
