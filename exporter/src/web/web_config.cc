#include "web/web_config.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <crypt.h>
#include <dlfcn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
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
std::string Lower(std::string s) {
  for (char& ch : s) {
    ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  }
  return s;
}

// "TLS10".."TLS13" -> OpenSSL's version constant; 0 if unknown.
int TlsVersion(const std::string& v) {
  if (v == "TLS10") return TLS1_VERSION;
  if (v == "TLS11") return TLS1_1_VERSION;
  if (v == "TLS12") return TLS1_2_VERSION;
  if (v == "TLS13") return TLS1_3_VERSION;
  return 0;
}

// A Go (IANA) cipher suite name -> OpenSSL's name, from OpenSSL's own table
// (SSL_CIPHER_standard_name), so every suite this libssl knows is accepted
// and nothing else is.
bool LookupCipher(std::string name, std::string* openssl, bool* tls13) {
  // Go's short aliases for the two ChaCha20 suites.
  if (name == "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" ||
      name == "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305") {
    name += "_SHA256";
  }
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return false;
  SSL_CTX_set_security_level(ctx, 0);
  SSL_CTX_set_cipher_list(ctx, "ALL:COMPLEMENTOFALL");
  SSL* ssl = SSL_new(ctx);
  bool found = false;
  if (ssl != nullptr) {
    STACK_OF(SSL_CIPHER)* all = SSL_get_ciphers(ssl);
    for (int i = 0; all != nullptr && i < sk_SSL_CIPHER_num(all); ++i) {
      const SSL_CIPHER* c = sk_SSL_CIPHER_value(all, i);
      const char* standard = SSL_CIPHER_standard_name(c);
      if (standard != nullptr && name == standard) {
        *openssl = SSL_CIPHER_get_name(c);
        *tls13 = std::strcmp(SSL_CIPHER_get_version(c), "TLSv1.3") == 0;
        found = true;
        break;
      }
    }
    SSL_free(ssl);
  }
  SSL_CTX_free(ctx);
  ERR_clear_error();
  return found;
}

std::vector<std::string> StringList(const std::string& where_file,
                                    const YAML::Node& n,
                                    const std::string& what) {
  if (!n.IsSequence()) {
    throw std::invalid_argument(Where(where_file, n) + ": " + what +
                                " must be a list");
  }
  std::vector<std::string> out;
  for (const auto& item : n) {
    if (!item.IsScalar() || item.Scalar().empty()) {
      throw std::invalid_argument(Where(where_file, item) + ": " + what +
                                  ": expected a non-empty string");
    }
    out.push_back(item.Scalar());
  }
  return out;
}

void Append(std::string* list, const std::string& item) {
  if (!list->empty()) *list += ':';
  *list += item;
}

// http_server_config.headers: the five headers exporter-toolkit allows,
// with its value checks.
std::string ParseHeaders(const std::string& path, const YAML::Node& n) {
  if (!n.IsMap()) {
    throw std::invalid_argument(
        Where(path, n) + ": http_server_config.headers must be a mapping");
  }
  static const char* const kAllowed[] = {
      "Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options",
      "X-XSS-Protection", "Strict-Transport-Security"};
  std::string out;
  for (const auto& kv : n) {
    std::string name = kv.first.Scalar();
    const char* canonical = nullptr;
    for (const char* a : kAllowed) {
      if (Lower(name) == Lower(a)) canonical = a;
    }
    if (canonical == nullptr) {
      throw std::invalid_argument(Where(path, kv.first) + ": HTTP header '" +
                                  name + "' can not be configured");
    }
    std::string value = kv.second.IsScalar() ? kv.second.Scalar() : "";
    if (!kv.second.IsNull() && !kv.second.IsScalar()) {
      throw std::invalid_argument(Where(path, kv.second) + ": header " + name +
                                  " must be a string");
    }
    if (value.find_first_of("\r\n") != std::string::npos) {
      throw std::invalid_argument(Where(path, kv.second) + ": header " + name +
                                  " contains a line break");
    }
    if (value.empty()) continue;  // "unset if blank"
    std::string lower = Lower(value);
    if (std::strcmp(canonical, "X-Frame-Options") == 0 && lower != "deny" &&
        lower != "sameorigin") {
      throw std::invalid_argument(Where(path, kv.second) +
                                  ": X-Frame-Options must be deny or "
                                  "sameorigin");
    }
    if (std::strcmp(canonical, "X-Content-Type-Options") == 0 &&
        lower != "nosniff") {
      throw std::invalid_argument(Where(path, kv.second) +
                                  ": X-Content-Type-Options must be nosniff");
    }
    out += std::string(canonical) + ": " + value + "\r\n";
  }
  return out;
}

// OpenSSL 3.0's default supported groups (ssl/t1_lib.c), for a connection
// that switches to a context without curve_preferences.
constexpr const char* kDefaultGroups =
    "X25519:P-256:X448:P-521:P-384:ffdhe2048:ffdhe3072:ffdhe4096:ffdhe6144:"
    "ffdhe8192";

// What a TLS context's callbacks need, owned by the context (ex_data), so
// a connection can outlive the WebConfig that built its context.
struct TlsRules {
  bool verify_chain = false;
  std::vector<std::string> allowed_sans;
  // To apply to a connection that switches to this context (see
  // WebConfigSource::ClientHello): SSL_new() copied these from the context
  // the connection was created with.
  std::string cipher_list;
  std::string ciphersuites;
  std::string groups;
};

void FreeTlsRules(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<TlsRules*>(ptr);
}

int TlsRulesIndex() {
  static const int index =
      SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, &FreeTlsRules);
  return index;
}

const TlsRules* RulesOf(const SSL_CTX* ctx) {
  return ctx == nullptr ? nullptr
                        : static_cast<const TlsRules*>(
                              SSL_CTX_get_ex_data(ctx, TlsRulesIndex()));
}

bool SanAllowed(X509* cert, const std::vector<std::string>& allowed_sans) {
  auto* names = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (names == nullptr) return false;
  bool allowed = false;
  for (int i = 0; !allowed && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* n = sk_GENERAL_NAME_value(names, i);
    std::string text;
    if (n->type == GEN_DNS || n->type == GEN_EMAIL || n->type == GEN_URI) {
      const ASN1_IA5STRING* s = n->d.ia5;
      text.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                  static_cast<size_t>(ASN1_STRING_length(s)));
    } else if (n->type == GEN_IPADD) {
      const ASN1_OCTET_STRING* ip = n->d.iPAddress;
      char buf[INET6_ADDRSTRLEN] = "";
      int len = ASN1_STRING_length(ip);
      if (len == 4 || len == 16) {
        ::inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(ip),
                    buf, sizeof buf);
      }
      text = buf;
    } else {
      continue;
    }
    // Exact match, as exporter-toolkit does; a NUL inside never matches.
    for (const auto& want : allowed_sans) {
      if (text == want) allowed = true;
    }
  }
  GENERAL_NAMES_free(names);
  return allowed;
}

}  // namespace

bool LruSet::Touch(const std::string& key) {
  auto it = index_.find(key);
  if (it == index_.end()) return false;
  order_.splice(order_.begin(), order_, it->second);
  return true;
}

void LruSet::Insert(const std::string& key) {
  if (Touch(key) || capacity_ == 0) return;
  if (order_.size() >= capacity_) {
    index_.erase(order_.back());
    order_.pop_back();
  }
  order_.push_front(key);
  index_[key] = order_.begin();
}

WebConfig WebConfig::Load(const std::string& path) {
  WebConfig c;
  Settings& s = c.s_;
  s.path = path;
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
  // Where settings checked after the loop were written.
  std::string sans_at, max_at, ca_at, tls_setting_at, tls_setting;
  std::string min_name = "TLS12";
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
        if (k != "cert_file" && k != "key_file" && tls_setting.empty()) {
          tls_setting = k;
          tls_setting_at = Where(path, tkv.first);
        }
        if (k == "cert_file") {
          s.cert_file = resolve(v);
        } else if (k == "key_file") {
          s.key_file = resolve(v);
        } else if (k == "client_ca_file") {
          s.client_ca_file = resolve(v);
          ca_at = Where(path, tkv.first);
        } else if (k == "client_auth_type") {
          // exporter-toolkit keeps RequireClientCert as an old name.
          if (v == "RequireClientCert") v = "RequireAnyClientCert";
          if (v != "NoClientCert" && v != "RequestClientCert" &&
              v != "RequireAnyClientCert" && v != "VerifyClientCertIfGiven" &&
              v != "RequireAndVerifyClientCert") {
            throw std::invalid_argument(Where(path, tkv.second) +
                                        ": unknown client_auth_type '" + v +
                                        "'");
          }
          s.client_auth = v;
        } else if (k == "min_version" || k == "max_version") {
          if (TlsVersion(v) == 0) {
            throw std::invalid_argument(Where(path, tkv.second) + ": " + k +
                                        " must be TLS10, TLS11, TLS12 or "
                                        "TLS13");
          }
          if (k == "min_version") {
            s.min_version = TlsVersion(v);
            min_name = v;
          } else {
            s.max_version = TlsVersion(v);
            max_at = Where(path, tkv.second);
          }
        } else if (k == "cipher_suites") {
          for (const auto& name : StringList(path, tkv.second, k)) {
            std::string openssl;
            bool tls13 = false;
            if (!LookupCipher(name, &openssl, &tls13)) {
              throw std::invalid_argument(Where(path, tkv.second) +
                                          ": unknown cipher suite '" + name +
                                          "'");
            }
            Append(tls13 ? &s.ciphersuites : &s.cipher_list, openssl);
          }
        } else if (k == "curve_preferences") {
          for (const auto& name : StringList(path, tkv.second, k)) {
            const char* group = name == "CurveP256"   ? "P-256"
                                : name == "CurveP384" ? "P-384"
                                : name == "CurveP521" ? "P-521"
                                : name == "X25519"    ? "X25519"
                                                      : nullptr;
            if (group == nullptr) {
              throw std::invalid_argument(
                  Where(path, tkv.second) + ": unknown curve '" + name +
                  "' (CurveP256, CurveP384, CurveP521 or X25519)");
            }
            Append(&s.groups, group);
          }
        } else if (k == "prefer_server_cipher_suites") {
          if (v != "true" && v != "false") {
            throw std::invalid_argument(
                Where(path, tkv.second) +
                ": prefer_server_cipher_suites must be true or false");
          }
          s.prefer_server_ciphers = v == "true";
        } else if (k == "client_allowed_sans") {
          s.allowed_sans = StringList(path, tkv.second, k);
          sans_at = Where(path, tkv.first);
        } else if (k == "cert" || k == "key" || k == "client_ca") {
          throw std::invalid_argument(
              Where(path, tkv.first) + ": tls_server_config." + k +
              " (inline PEM) is not supported; use " + k + "_file");
        } else {
          throw std::invalid_argument(Where(path, tkv.first) +
                                      ": unknown key tls_server_config." + k);
        }
      }
      if (s.cert_file.empty() != s.key_file.empty()) {
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
        if (hash.size() != 60 || hash[0] != '$' || hash[1] != '2' ||
            hash[3] != '$' || hash[4] < '0' || hash[4] > '9' || hash[5] < '0' ||
            hash[5] > '9' || hash[6] != '$') {
          throw std::invalid_argument(
              Where(path, u.second) + ": password of '" + user +
              "' must be a bcrypt hash ($2y$..., e.g. from htpasswd -nBC 10)");
        }
        int cost = (hash[4] - '0') * 10 + (hash[5] - '0');
        if (cost < 4 || cost > 31) {
          // crypt(3) refuses it: a user who could never log in.
          throw std::invalid_argument(Where(path, u.second) +
                                      ": password of '" + user +
                                      "': bcrypt cost must be 04 to 31");
        }
        s.users[user] = hash;
      }
    } else if (key == "http_server_config") {
      const YAML::Node& h = kv.second;
      if (!h.IsMap()) {
        throw std::invalid_argument(Where(path, h) +
                                    ": http_server_config must be a mapping");
      }
      for (const auto& hkv : h) {
        std::string k = hkv.first.Scalar();
        if (k == "headers") {
          s.extra_headers = ParseHeaders(path, hkv.second);
        } else if (k == "http2") {
          // Not a security setting: we serve HTTP/1.1 either way.
          std::string v = hkv.second.IsScalar() ? hkv.second.Scalar() : "";
          if (v != "true" && v != "false") {
            throw std::invalid_argument(Where(path, hkv.second) +
                                        ": http2 must be true or false");
          }
        } else {
          throw std::invalid_argument(Where(path, hkv.first) +
                                      ": unknown key http_server_config." + k);
        }
      }
    } else {
      throw std::invalid_argument(Where(path, kv.first) + ": unknown key '" +
                                  key + "'");
    }
  }
  if (s.max_version != 0 &&
      s.max_version < (s.min_version ? s.min_version : TLS1_2_VERSION)) {
    throw std::invalid_argument(
        max_at + ": max_version is below min_version (" + min_name + ")");
  }
  if (!s.client_ca_file.empty() && s.client_auth == "NoClientCert") {
    // No client certificate would be asked for: the CA would restrict
    // nothing (exporter-toolkit refuses this too).
    throw std::invalid_argument(
        ca_at +
        ": client_ca_file without client_auth_type (client certificates "
        "would not be checked); set client_auth_type, e.g. "
        "RequireAndVerifyClientCert");
  }
  if (!s.allowed_sans.empty() && s.client_auth != "RequireAnyClientCert" &&
      s.client_auth != "RequireAndVerifyClientCert") {
    // Any other type lets a client in without a certificate, so without a
    // SAN to check: the restriction would be void.
    throw std::invalid_argument(sans_at +
                                ": client_allowed_sans needs client_auth_type "
                                "RequireAndVerifyClientCert"
                                " or RequireAnyClientCert");
  }
  if (s.cert_file.empty() && !tls_setting.empty()) {
    throw std::invalid_argument(tls_setting_at + ": tls_server_config." +
                                tls_setting +
                                " without cert_file and key_file (TLS would "
                                "be off)");
  }
  // bcrypt work for unknown users at the highest cost configured, so
  // timing does not tell them apart, but at most kMaxDecoyCost: a user
  // with an expensive hash must not make every unknown name cost that
  // much (2^(cost-10) times a cost-10 check, ~50 ms here).
  int cost = 4;
  for (const auto& [user, hash] : s.users) {
    cost = std::max(cost, std::stoi(hash.substr(4, 2)));
  }
  cost = std::min(cost, kMaxDecoyCost);
  char digits[3] = {static_cast<char>('0' + cost / 10),
                    static_cast<char>('0' + cost % 10), '\0'};
  s.dummy_hash = std::string("$2y$") + digits +
                 "$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";
  if (c.tls_enabled()) {
    for (const auto& f : {s.cert_file, s.key_file}) {
      if (::access(f.c_str(), R_OK) != 0) {
        throw std::invalid_argument(path + ": cannot read " + f);
      }
    }
    // Build the context now, so a bad pair or an unusable cipher/curve
    // list is a config error (exit 2), not a failure to listen later.
    SSL_CTX* ctx = c.NewSslCtx();
    if (ctx == nullptr) {
      unsigned long e = ERR_get_error();
      char reason[256] = "";
      if (e != 0) ERR_error_string_n(e, reason, sizeof reason);
      ERR_clear_error();
      throw std::invalid_argument(
          path + ": cannot use tls_server_config (" + s.cert_file + ", " +
          s.key_file + ")" + (reason[0] ? std::string(": ") + reason : ""));
    }
    c.ctx_.reset(ctx, &SSL_CTX_free);
  }
  return c;
}

AuthResult WebConfig::CheckAuthorization(const std::string& header) const {
  static const std::string kPrefix = "Basic ";
  if (header.compare(0, kPrefix.size(), kPrefix) != 0) {
    return AuthResult::kDenied;
  }
  std::string decoded = Base64Decode(header.substr(kPrefix.size()));
  size_t colon = decoded.find(':');
  if (colon == std::string::npos) return AuthResult::kDenied;
  std::string user = decoded.substr(0, colon);
  std::string password = decoded.substr(colon + 1);
  auto it = s_.users.find(user);
  const bool known = it != s_.users.end();
  const std::string& hash = known ? it->second : s_.dummy_hash;
  const std::string key = Sha256(header);

  std::unique_lock lock(mutex_);
  if (ok_.Touch(key)) return AuthResult::kOk;
  if (denied_.Touch(key)) return AuthResult::kDenied;
  if (running_ >= kMaxParallelBcrypt) {
    // Each waiter holds a web thread: few may wait, and not for long.
    if (waiting_ >= kMaxBcryptWaiters) {
      ++stats_.busy;
      return AuthResult::kBusy;
    }
    ++waiting_;
    bool got = slot_free_.wait_for(
        lock, kMaxBcryptWait, [this] { return running_ < kMaxParallelBcrypt; });
    --waiting_;
    if (!got) {
      ++stats_.busy;
      return AuthResult::kBusy;
    }
    // The same credentials may have been checked meanwhile.
    if (ok_.Touch(key)) return AuthResult::kOk;
    if (denied_.Touch(key)) return AuthResult::kDenied;
  }
  ++running_;
  ++stats_.bcrypt_runs;
  stats_.max_parallel = std::max(stats_.max_parallel, running_);
  lock.unlock();
  bool ok = BcryptMatches(password, hash) && known;
  lock.lock();
  --running_;
  (ok ? ok_ : denied_).Insert(key);
  lock.unlock();
  slot_free_.notify_one();
  return ok ? AuthResult::kOk : AuthResult::kDenied;
}

WebConfig::AuthStats WebConfig::auth_stats() const {
  std::lock_guard lock(mutex_);
  AuthStats out = stats_;
  out.decoy_cost = std::stoi(s_.dummy_hash.substr(4, 2));
  out.ok_cached = ok_.size();
  out.denied_cached = denied_.size();
  return out;
}

// Replaces OpenSSL's chain verification (SSL_CTX_set_cert_verify_callback),
// as Go's crypto/tls does per ClientAuthType: RequestClientCert and
// RequireAnyClientCert take any certificate, VerifyClientCertIfGiven and
// RequireAndVerifyClientCert verify it against client_ca_file. Then
// client_allowed_sans is checked on the client's own certificate.
int WebConfig::VerifyPeer(X509_STORE_CTX* store, void*) {
  auto* ssl = static_cast<SSL*>(
      X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  const TlsRules* rules =
      ssl == nullptr ? nullptr : RulesOf(SSL_get_SSL_CTX(ssl));
  if (rules == nullptr) return 0;
  if (rules->verify_chain && X509_verify_cert(store) != 1) return 0;
  X509* leaf = X509_STORE_CTX_get0_cert(store);
  if (leaf == nullptr) return 0;
  if (rules->allowed_sans.empty() || SanAllowed(leaf, rules->allowed_sans)) {
    return 1;
  }
  X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
  Log(LogLevel::kDebug,
      "web: client certificate refused: no SAN in client_allowed_sans");
  return 0;
}

SSL_CTX* WebConfig::NewSslCtx() const {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return nullptr;
  auto fail = [ctx] {
    SSL_CTX_free(ctx);
    return nullptr;
  };
  auto* rules = new TlsRules;
  rules->verify_chain = s_.client_auth == "VerifyClientCertIfGiven" ||
                        s_.client_auth == "RequireAndVerifyClientCert";
  rules->allowed_sans = s_.allowed_sans;
  rules->cipher_list = s_.cipher_list;
  rules->ciphersuites = s_.ciphersuites;
  rules->groups = s_.groups;
  if (SSL_CTX_set_ex_data(ctx, TlsRulesIndex(), rules) != 1) {
    delete rules;
    return fail();
  }
  int min = s_.min_version ? s_.min_version : TLS1_2_VERSION;
  if (SSL_CTX_set_min_proto_version(ctx, min) != 1) return fail();
  if (s_.max_version != 0 &&
      SSL_CTX_set_max_proto_version(ctx, s_.max_version) != 1) {
    return fail();
  }
  // Only TLS 1.3 suites listed: no TLS 1.2 suite is allowed, so no TLS 1.2.
  if (s_.cipher_list.empty() && !s_.ciphersuites.empty()) {
    if (s_.max_version != 0 && s_.max_version < TLS1_3_VERSION) return fail();
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1) {
      return fail();
    }
  }
  if (!s_.cipher_list.empty() &&
      SSL_CTX_set_cipher_list(ctx, s_.cipher_list.c_str()) != 1) {
    return fail();
  }
  if (!s_.ciphersuites.empty() &&
      SSL_CTX_set_ciphersuites(ctx, s_.ciphersuites.c_str()) != 1) {
    return fail();
  }
  if (!s_.groups.empty() &&
      SSL_CTX_set1_groups_list(ctx, s_.groups.c_str()) != 1) {
    return fail();
  }
  if (s_.prefer_server_ciphers) {
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
  }
  if (SSL_CTX_use_certificate_chain_file(ctx, s_.cert_file.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, s_.key_file.c_str(), SSL_FILETYPE_PEM) !=
          1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    return fail();
  }
  if (s_.client_auth != "NoClientCert") {
    if (!s_.client_ca_file.empty() &&
        SSL_CTX_load_verify_locations(ctx, s_.client_ca_file.c_str(),
                                      nullptr) != 1) {
      return fail();
    }
    if (!s_.client_ca_file.empty()) {
      // The CA names go into the CertificateRequest, as Go sends them.
      STACK_OF(X509_NAME)* names =
          SSL_load_client_CA_file(s_.client_ca_file.c_str());
      if (names == nullptr) return fail();
      SSL_CTX_set_client_CA_list(ctx, names);
    }
    int mode = SSL_VERIFY_PEER;
    if (s_.client_auth == "RequireAndVerifyClientCert" ||
        s_.client_auth == "RequireAnyClientCert") {
      mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    }
    SSL_CTX_set_verify(ctx, mode, nullptr);
    SSL_CTX_set_cert_verify_callback(ctx, &WebConfig::VerifyPeer, nullptr);
  }
  return ctx;
}

std::vector<std::string> WebConfig::files() const {
  std::vector<std::string> out;
  for (const auto* f :
       {&s_.path, &s_.cert_file, &s_.key_file, &s_.client_ca_file}) {
    if (!f->empty()) out.push_back(*f);
  }
  return out;
}

WebConfigSource::WebConfigSource(std::string path) : path_(std::move(path)) {
  if (path_.empty()) {
    current_ = std::make_shared<const WebConfig>();
    return;
  }
  auto first = std::make_shared<const WebConfig>(WebConfig::Load(path_));
  signature_ = Signature(first->files());
  tls_ = first->tls_enabled();
  current_ = std::move(first);
  last_success_.store(std::chrono::duration<double>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count());
  next_check_ = std::chrono::steady_clock::now() + kRecheck;
}

std::string WebConfigSource::Signature(const std::vector<std::string>& files) {
  std::string sig;
  for (const auto& f : files) {
    struct stat st {};
    char buf[256];
    if (::stat(f.c_str(), &st) != 0) {
      std::snprintf(buf, sizeof buf, "-;");
    } else {
      std::snprintf(
          buf, sizeof buf, "%llu:%llu:%lld:%lld.%09ld:%lld.%09ld;",
          static_cast<unsigned long long>(st.st_dev),
          static_cast<unsigned long long>(st.st_ino),
          static_cast<long long>(st.st_size),
          static_cast<long long>(st.st_mtim.tv_sec), st.st_mtim.tv_nsec,
          static_cast<long long>(st.st_ctim.tv_sec), st.st_ctim.tv_nsec);
    }
    sig += f + "=" + buf;
  }
  return sig;
}

std::shared_ptr<const WebConfig> WebConfigSource::Current() {
  std::shared_ptr<const WebConfig> cur;
  {
    std::lock_guard lock(mutex_);
    auto now = std::chrono::steady_clock::now();
    // One thread checks; the others go on with the current config.
    if (path_.empty() || checking_ || now < next_check_) return current_;
    checking_ = true;
    next_check_ = now + kRecheck;
    cur = current_;
  }
  std::vector<std::string> files = cur->files();
  std::string before = Signature(files);
  std::shared_ptr<const WebConfig> fresh;
  std::string fresh_signature;
  std::string error;
  if (before != signature_) {
    try {
      fresh = std::make_shared<const WebConfig>(WebConfig::Load(path_));
      if (fresh->tls_enabled() != tls_) {
        fresh.reset();
        error = path_ + ": turning TLS " + (tls_ ? "off" : "on") +
                " needs a restart";
      } else {
        // Stat'ed before the files were read: a write during the load is
        // seen at the next check. Other files: their state now.
        fresh_signature =
            fresh->files() == files ? before : Signature(fresh->files());
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (fresh) {
      ok_.store(true);
      reloads_.fetch_add(1);
      last_success_.store(
          std::chrono::duration<double>(
              std::chrono::system_clock::now().time_since_epoch())
              .count());
      Log(LogLevel::kInfo, "web config " + path_ + " reloaded");
    } else {
      ok_.store(false);
      failures_.fetch_add(1);
      Log(LogLevel::kError,
          "web config not reloaded, keeping the previous "
          "one: " +
              error);
    }
  }
  std::lock_guard lock(mutex_);
  if (fresh) {
    current_ = std::move(fresh);
    signature_ = std::move(fresh_signature);
  } else if (before != signature_) {
    signature_ = std::move(before);  // tried: wait for the next change
  }
  checking_ = false;
  return current_;
}

std::string WebConfigSource::Metrics() const {
  if (path_.empty()) return {};
  char buf[1024];
  std::snprintf(
      buf, sizeof buf,
      "# HELP sshtail_web_config_last_reload_successful Whether the last "
      "re-read of --web.config.file (on a change of it or of the files it "
      "names) worked; 0: the previous config is still in use.\n"
      "# TYPE sshtail_web_config_last_reload_successful gauge\n"
      "sshtail_web_config_last_reload_successful %d\n"
      "# HELP sshtail_web_config_last_reload_success_timestamp_seconds When "
      "--web.config.file was last loaded.\n"
      "# TYPE sshtail_web_config_last_reload_success_timestamp_seconds gauge\n"
      "sshtail_web_config_last_reload_success_timestamp_seconds %.3f\n"
      "# HELP sshtail_web_config_reloads_total Re-reads of --web.config.file "
      "by result.\n"
      "# TYPE sshtail_web_config_reloads_total counter\n"
      "sshtail_web_config_reloads_total{result=\"success\"} %ld\n"
      "sshtail_web_config_reloads_total{result=\"failure\"} %ld\n",
      ok_.load() ? 1 : 0, last_success_.load(), reloads_.load(),
      failures_.load());
  return buf;
}

// Runs before the version, cipher and certificate are chosen: the
// connection takes the newest config's context. SSL_set_SSL_CTX() brings
// the certificate, key, security level, verify store and callbacks; what
// SSL_new() copied from the first context is set here from the new one.
int WebConfigSource::ClientHello(SSL* ssl, int* alert, void* arg) {
  auto* self = static_cast<WebConfigSource*>(arg);
  std::shared_ptr<const WebConfig> cfg = self->Current();
  SSL_CTX* ctx = cfg->ssl_ctx();
  if (ctx == nullptr || ctx == SSL_get_SSL_CTX(ssl)) {
    return SSL_CLIENT_HELLO_SUCCESS;
  }
  const TlsRules* rules = RulesOf(ctx);
  bool ok = rules != nullptr && SSL_set_SSL_CTX(ssl, ctx) == ctx;
  if (ok) {
    SSL_clear_options(ssl, SSL_get_options(ssl));
    SSL_set_options(ssl, SSL_CTX_get_options(ctx));
    ok =
        SSL_set_min_proto_version(ssl, SSL_CTX_get_min_proto_version(ctx)) ==
            1 &&
        SSL_set_max_proto_version(ssl, SSL_CTX_get_max_proto_version(ctx)) == 1;
  }
  if (ok) {
    SSL_set_verify(ssl, SSL_CTX_get_verify_mode(ctx), nullptr);
    STACK_OF(X509_NAME)* names = SSL_CTX_get_client_CA_list(ctx);
    SSL_set_client_CA_list(ssl, names ? SSL_dup_CA_list(names) : nullptr);
    ok = SSL_set_cipher_list(ssl, rules->cipher_list.empty()
                                      ? OSSL_default_cipher_list()
                                      : rules->cipher_list.c_str()) == 1 &&
         SSL_set_ciphersuites(ssl, rules->ciphersuites.empty()
                                       ? OSSL_default_ciphersuites()
                                       : rules->ciphersuites.c_str()) == 1 &&
         SSL_set1_groups_list(ssl, rules->groups.empty()
                                       ? kDefaultGroups
                                       : rules->groups.c_str()) == 1;
  }
  if (!ok) {
    // Half of the new settings applied: refuse the handshake.
    ERR_clear_error();
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_CLIENT_HELLO_ERROR;
  }
  return SSL_CLIENT_HELLO_SUCCESS;
}

int WebConfigSource::ExternalSslCtx(void** ssl_ctx, void* user_data) {
  auto* self = static_cast<WebConfigSource*>(user_data);
  if (*ssl_ctx != nullptr) {  // shutdown
    SSL_CTX_free(static_cast<SSL_CTX*>(*ssl_ctx));
    *ssl_ctx = nullptr;
    return 1;
  }
  SSL_CTX* ctx = self->Current()->ssl_ctx();
  if (ctx == nullptr || SSL_CTX_up_ref(ctx) != 1) {
    Log(LogLevel::kError, self->path_ + ": no TLS context");
    return -1;
  }
  // Connections are created from this context; each switches to the
  // current config's in the ClientHello callback.
  SSL_CTX_set_client_hello_cb(ctx, &WebConfigSource::ClientHello, self);
  *ssl_ctx = ctx;
  return 1;
}

bool WebConfigSource::PrepareTls(struct mg_callbacks* callbacks,
                                 std::string* error) {
  if (!LoadShims(error)) return false;
  callbacks->external_ssl_ctx = &WebConfigSource::ExternalSslCtx;
  return true;
}

}  // namespace sshtail
