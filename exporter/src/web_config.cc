#include "web_config.h"

#include <civetweb.h>
#include <crypt.h>
#include <dlfcn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <vector>

#include "sshtail/log.h"

namespace sshtail {
namespace {

namespace fs = std::filesystem;

std::string Where(const std::string& file, const YAML::Node& n) {
  return file + ":" + std::to_string(n.Mark().line + 1);
}

std::string Base64Decode(const std::string& in) {
  std::vector<unsigned char> out(in.size());
  int n = EVP_DecodeBlock(out.data(),
                          reinterpret_cast<const unsigned char*>(in.data()),
                          static_cast<int>(in.size()));
  if (n < 0) return {};
  size_t len = static_cast<size_t>(n);
  // EVP_DecodeBlock counts padding as zero bytes.
  for (size_t i = in.size(); i > 0 && in[i - 1] == '='; --i) {
    if (len > 0) --len;
  }
  return std::string(reinterpret_cast<char*>(out.data()), len);
}

std::string Sha256(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<char*>(md), len);
}

bool BcryptMatches(const std::string& password, const std::string& hash) {
  struct crypt_data data {};
  const char* out = crypt_r(password.c_str(), hash.c_str(), &data);
  if (out == nullptr || out[0] == '*') return false;
  size_t n = std::strlen(out);
  return n == hash.size() && CRYPTO_memcmp(out, hash.data(), n) == 0;
}

// CivetWeb dlopen()s "libssl.so" and looks up SSL_get_peer_certificate,
// which OpenSSL 3 only has as a macro: every TLS connection would crash.
// These shims carry the SONAMEs libssl.so / libcrypto.so, so CivetWeb's
// dlopen() finds them already loaded; the ssl one defines the missing
// function. They live next to the binary (or in ../lib/sshtail_exporter).
bool LoadShims(std::string* error) {
  static bool loaded = false;
  if (loaded) return true;
  char exe[4096];
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) {
    *error = "cannot find the program's directory for the TLS shims";
    return false;
  }
  exe[n] = '\0';
  fs::path dir = fs::path(exe).parent_path();
  for (const char* name :
       {"libsshtail-crypto-shim.so", "libsshtail-ssl-shim.so"}) {
    bool ok = false;
    for (const fs::path& d : {dir, dir / "../lib/sshtail_exporter"}) {
      fs::path p = d / name;
      if (!fs::exists(p)) continue;
      if (::dlopen(p.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
        *error = std::string("cannot load ") + p.string() + ": " + dlerror();
        return false;
      }
      ok = true;
      break;
    }
    if (!ok) {
      *error = std::string("TLS needs ") + name + " next to the binary";
      return false;
    }
  }
  loaded = true;
  return true;
}

}  // namespace

WebConfig WebConfig::Load(const std::string& path) {
  WebConfig c;
  c.path_ = path;
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw std::invalid_argument(path + ": cannot read web config file");
  } catch (const YAML::Exception& e) {
    throw std::invalid_argument(path + ":" + std::to_string(e.mark.line + 1) +
                                ": " + e.msg);
  }
  if (!root || root.IsNull()) return c;
  if (!root.IsMap())
    throw std::invalid_argument(path + ":1: expected a mapping");
  std::string base = fs::path(path).parent_path().string();
  auto resolve = [&](const std::string& p) {
    if (p.empty() || p[0] == '/') return p;
    return (fs::path(base) / p).lexically_normal().string();
  };
  for (const auto& kv : root) {
    std::string key = kv.first.Scalar();
    if (key == "tls_server_config") {
      const YAML::Node& t = kv.second;
      if (!t.IsMap()) {
        throw std::invalid_argument(Where(path, t) +
                                    ": tls_server_config must be a mapping");
      }
      for (const auto& tkv : t) {
        std::string k = tkv.first.Scalar();
        std::string v = tkv.second.IsScalar() ? tkv.second.Scalar() : "";
        if (k == "cert_file") {
          c.cert_file_ = resolve(v);
        } else if (k == "key_file") {
          c.key_file_ = resolve(v);
        } else if (k == "client_ca_file") {
          c.client_ca_file_ = resolve(v);
        } else if (k == "client_auth_type") {
          if (v != "NoClientCert" && v != "RequestClientCert" &&
              v != "RequireAnyClientCert" && v != "VerifyClientCertIfGiven" &&
              v != "RequireAndVerifyClientCert") {
            throw std::invalid_argument(Where(path, tkv.second) +
                                        ": unknown client_auth_type '" + v +
                                        "'");
          }
          c.client_auth_ = v;
        } else if (k == "min_version") {
          if (v != "TLS10" && v != "TLS11" && v != "TLS12" && v != "TLS13") {
            throw std::invalid_argument(Where(path, tkv.second) +
                                        ": min_version must be TLS10..TLS13");
          }
          c.min_version_ = v;
        } else if (k == "max_version" || k == "cipher_suites" ||
                   k == "curve_preferences" ||
                   k == "prefer_server_cipher_suites" ||
                   k == "client_allowed_sans" || k == "cert" || k == "key") {
          Log(LogLevel::kWarn, Where(path, tkv.first) + ": tls_server_config." +
                                   k + " is not supported; ignored");
        } else {
          throw std::invalid_argument(Where(path, tkv.first) +
                                      ": unknown key tls_server_config." + k);
        }
      }
      if (c.cert_file_.empty() != c.key_file_.empty()) {
        throw std::invalid_argument(
            Where(path, t) +
            ": tls_server_config needs cert_file and key_file");
      }
    } else if (key == "basic_auth_users") {
      if (!kv.second.IsMap()) {
        throw std::invalid_argument(Where(path, kv.second) +
                                    ": basic_auth_users must be a mapping");
      }
      for (const auto& u : kv.second) {
        std::string user = u.first.Scalar();
        std::string hash = u.second.IsScalar() ? u.second.Scalar() : "";
        if (user.find(':') != std::string::npos) {
          throw std::invalid_argument(Where(path, u.first) +
                                      ": a user name cannot contain ':'");
        }
        if (hash.size() != 60 || hash[0] != '$' || hash[1] != '2') {
          throw std::invalid_argument(
              Where(path, u.second) + ": password of '" + user +
              "' must be a bcrypt hash ($2y$..., e.g. from htpasswd -nBC 10)");
        }
        c.users_[user] = hash;
      }
    } else if (key == "http_server_config") {
      Log(LogLevel::kWarn, Where(path, kv.first) +
                               ": http_server_config is not supported; "
                               "ignored");
    } else {
      throw std::invalid_argument(Where(path, kv.first) + ": unknown key '" +
                                  key + "'");
    }
  }
  if (c.tls_enabled()) {
    for (const auto& f : {c.cert_file_, c.key_file_}) {
      if (::access(f.c_str(), R_OK) != 0) {
        throw std::invalid_argument(path + ": cannot read " + f);
      }
    }
    // Load them now, so a bad pair is a config error (exit 2), not a
    // failure to listen later.
    SSL_CTX* ctx = c.NewSslCtx();
    if (ctx == nullptr) {
      unsigned long e = ERR_get_error();
      char reason[256] = "";
      if (e != 0) ERR_error_string_n(e, reason, sizeof reason);
      ERR_clear_error();
      throw std::invalid_argument(
          path + ": cannot use " + c.cert_file_ + " with " + c.key_file_ +
          (reason[0] ? std::string(": ") + reason : ""));
    }
    SSL_CTX_free(ctx);
  }
  return c;
}

bool WebConfig::CheckAuthorization(const std::string& header) const {
  static const std::string kPrefix = "Basic ";
  if (header.compare(0, kPrefix.size(), kPrefix) != 0) return false;
  std::string decoded = Base64Decode(header.substr(kPrefix.size()));
  size_t colon = decoded.find(':');
  if (colon == std::string::npos) return false;
  std::string user = decoded.substr(0, colon);
  std::string password = decoded.substr(colon + 1);
  auto it = users_.find(user);
  // Same bcrypt work for unknown users, so timing does not tell them apart.
  static const std::string kDummy =
      "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";
  const std::string& hash = it == users_.end() ? kDummy : it->second;
  std::string digest = Sha256(user + '\0' + password + '\0' + hash);
  {
    std::lock_guard lock(cache_mutex_);
    if (it != users_.end() && verified_.count(digest)) return true;
  }
  bool ok = BcryptMatches(password, hash) && it != users_.end();
  if (ok) {
    std::lock_guard lock(cache_mutex_);
    if (verified_.size() > 1024) verified_.clear();
    verified_.insert(digest);
  }
  return ok;
}

SSL_CTX* WebConfig::NewSslCtx() const {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return nullptr;
  int min = min_version_ == "TLS13"   ? TLS1_3_VERSION
            : min_version_ == "TLS11" ? TLS1_1_VERSION
            : min_version_ == "TLS10" ? TLS1_VERSION
                                      : TLS1_2_VERSION;
  SSL_CTX_set_min_proto_version(ctx, min);
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_file_.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, key_file_.c_str(), SSL_FILETYPE_PEM) !=
          1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    SSL_CTX_free(ctx);
    return nullptr;
  }
  if (client_auth_ != "NoClientCert") {
    if (!client_ca_file_.empty() &&
        SSL_CTX_load_verify_locations(ctx, client_ca_file_.c_str(), nullptr) !=
            1) {
      SSL_CTX_free(ctx);
      return nullptr;
    }
    int mode = SSL_VERIFY_PEER;
    if (client_auth_ == "RequireAndVerifyClientCert" ||
        client_auth_ == "RequireAnyClientCert") {
      mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    }
    SSL_CTX_set_verify(ctx, mode, nullptr);
  }
  return ctx;
}

int WebConfig::ExternalSslCtx(void** ssl_ctx, void* user_data) {
  auto* c = static_cast<WebConfig*>(user_data);
  if (*ssl_ctx != nullptr) {  // shutdown
    SSL_CTX_free(static_cast<SSL_CTX*>(*ssl_ctx));
    *ssl_ctx = nullptr;
    return 1;
  }
  SSL_CTX* ctx = c->NewSslCtx();
  if (ctx == nullptr) {
    Log(LogLevel::kError,
        c->path_ + ": cannot use " + c->cert_file_ + " with " + c->key_file_);
    return -1;
  }
  *ssl_ctx = ctx;
  return 1;
}

bool WebConfig::PrepareTls(struct mg_callbacks* callbacks, std::string* error) {
  if (!LoadShims(error)) return false;
  callbacks->external_ssl_ctx = &WebConfig::ExternalSslCtx;
  return true;
}

}  // namespace sshtail
