#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

struct mg_callbacks;
struct ssl_ctx_st;
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
/// auth with bcrypt hashes, and response headers. Load() once;
/// CheckAuthorization() is thread-safe. Every setting is either enforced or
/// refused at load time: none is accepted and ignored.
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
  // Copies the settings; caches and counters start empty.
  WebConfig(const WebConfig& o) : s_(o.s_) {}
  WebConfig& operator=(const WebConfig& o) {
    if (this != &o) s_ = o.s_;
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

  /// Loads CivetWeb's OpenSSL shims and hooks our SSL_CTX into callbacks.
  bool PrepareTls(struct mg_callbacks* callbacks, std::string* error);

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

  static int ExternalSslCtx(void** ssl_ctx, void* user_data);
  static int VerifyPeer(x509_store_ctx_st* store, void* arg);
  bool VerifiesChain() const;
  /// A server context with every TLS setting applied, or nullptr
  /// (OpenSSL's error queue says why).
  ssl_ctx_st* NewSslCtx() const;
  bool SanAllowed(x509_st* cert) const;

  Settings s_;

  mutable std::mutex mutex_;
  mutable std::condition_variable slot_free_;
  mutable int running_ = 0;
  mutable int waiting_ = 0;
  mutable AuthStats stats_;
  mutable LruSet ok_{kOkCacheSize};
  mutable LruSet denied_{kDeniedCacheSize};
};

}  // namespace sshtail
