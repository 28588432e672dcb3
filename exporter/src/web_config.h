#pragma once

#include <map>
#include <mutex>
#include <set>
#include <string>

struct mg_callbacks;
struct ssl_ctx_st;

namespace sshtail {

/// The exporter-toolkit web config (`--web.config.file`): TLS and basic
/// auth with bcrypt hashes. Load() once; CheckAuthorization() is
/// thread-safe.
class WebConfig {
 public:
  /// Throws std::invalid_argument ("file:line: ...") on a bad file.
  static WebConfig Load(const std::string& path);

  WebConfig() = default;
  WebConfig(const WebConfig& o)
      : path_(o.path_),
        cert_file_(o.cert_file_),
        key_file_(o.key_file_),
        client_ca_file_(o.client_ca_file_),
        client_auth_(o.client_auth_),
        min_version_(o.min_version_),
        users_(o.users_) {}
  WebConfig& operator=(const WebConfig& o) {
    if (this != &o) {
      path_ = o.path_;
      cert_file_ = o.cert_file_;
      key_file_ = o.key_file_;
      client_ca_file_ = o.client_ca_file_;
      client_auth_ = o.client_auth_;
      min_version_ = o.min_version_;
      users_ = o.users_;
    }
    return *this;
  }

  bool tls_enabled() const { return !cert_file_.empty(); }
  bool auth_enabled() const { return !users_.empty(); }

  /// True if an "Authorization: Basic ..." header names a configured user
  /// with the right password.
  bool CheckAuthorization(const std::string& header) const;

  /// Loads CivetWeb's OpenSSL shims and hooks our SSL_CTX into callbacks.
  bool PrepareTls(struct mg_callbacks* callbacks, std::string* error);

 private:
  static int ExternalSslCtx(void** ssl_ctx, void* user_data);
  /// A server context with our certificate, key and client-auth settings,
  /// or nullptr (OpenSSL's error queue says why).
  ssl_ctx_st* NewSslCtx() const;

  std::string path_;
  std::string cert_file_;
  std::string key_file_;
  std::string client_ca_file_;
  std::string client_auth_ = "NoClientCert";
  std::string min_version_ = "TLS12";
  std::map<std::string, std::string> users_;  // user -> bcrypt hash

  // Verified credentials, as SHA-256 digests: bcrypt is slow on purpose,
  // and Prometheus sends the same credentials every scrape.
  mutable std::mutex cache_mutex_;
  mutable std::set<std::string> verified_;
};

}  // namespace sshtail
