#include "sshtail/web_server.h"

#include <civetweb.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "sshtail/log.h"
#include "web/conn_gate.h"
#include "web/http_gzip.h"
#include "web/web_config.h"

namespace sshtail {
namespace {

// How long a client has to send a complete request (and, with TLS, to
// finish the handshake) before its connection is closed.
constexpr std::chrono::milliseconds kHeaderDeadline{5000};

}  // namespace

struct WebServer::Impl {
  std::string listen_address;
  std::string telemetry_path;
  std::string web_config_file;
  WebHandlers handlers;
  WebSettings settings;
  std::unique_ptr<WebConfigSource> web;  // re-read on change
  struct mg_context* ctx = nullptr;
  ConnGate gate;  // the public socket; CivetWeb listens on loopback
  std::string bound;

  void Send(struct mg_connection* conn, const WebConfig& config, int status,
            const char* content_type, const std::string& body,
            const char* extra_headers = "") const {
    const char* reason = mg_get_response_code_text(conn, status);
    mg_printf(conn,
              "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
              "Cache-Control: no-store\r\n%s%s\r\n",
              status, reason, content_type, body.size(), extra_headers,
              config.extra_headers().c_str());
    const auto* info = mg_get_request_info(conn);
    if (std::strcmp(info->request_method, "HEAD") != 0) {
      mg_write(conn, body.data(), body.size());
    }
  }

  // Basic auth from the web config; true if the request may proceed.
  bool Authorized(struct mg_connection* conn, const WebConfig& config) {
    if (!config.auth_enabled()) return true;
    const char* header = mg_get_header(conn, "Authorization");
    AuthResult r = header == nullptr ? AuthResult::kDenied
                                     : config.CheckAuthorization(header);
    if (r == AuthResult::kOk) return true;
    if (r == AuthResult::kBusy) {
      // Too many password checks at once (a guessing flood): answer at
      // once instead of queueing bcrypt work.
      Send(conn, config, 429, "text/plain; charset=utf-8",
           "Too many authentication attempts; retry later.\n",
           "Retry-After: 1\r\n");
      return false;
    }
    Send(conn, config, 401, "text/plain; charset=utf-8", "Unauthorized\n",
         "WWW-Authenticate: Basic realm=\"sshtail_exporter\"\r\n");
    return false;
  }

  static int Handle(struct mg_connection* conn, void* data) {
    auto* self = static_cast<Impl*>(data);
    const auto* info = mg_get_request_info(conn);
    std::string uri = info->local_uri ? info->local_uri : "/";
    std::string method = info->request_method;
    // The newest web config (a changed password applies to the next
    // request; the certificate to the next handshake).
    std::shared_ptr<const WebConfig> config = self->web->Current();
    if (!self->Authorized(conn, *config)) return 401;
    auto method_not_allowed = [&](const char* allow) {
      std::string extra = std::string("Allow: ") + allow + "\r\n";
      self->Send(conn, *config, 405, "text/plain; charset=utf-8",
                 "Method not allowed.\n", extra.c_str());
      return 405;
    };
    bool get = method == "GET" || method == "HEAD";
    if (uri == self->telemetry_path) {
      if (!get) return method_not_allowed("GET, HEAD");
      std::string body = self->handlers.metrics() + self->web->Metrics();
      const char* accept = mg_get_header(conn, "Accept-Encoding");
      if (accept != nullptr && AcceptsGzip(accept)) {
        // Prometheus asks for gzip; a large exposition shrinks ~10x.
        std::string gz = GzipCompress(body);
        if (!gz.empty()) {
          self->Send(conn, *config, 200,
                     "text/plain; version=0.0.4; charset=utf-8", gz,
                     "Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n");
          return 200;
        }
      }
      self->Send(conn, *config, 200, "text/plain; version=0.0.4; charset=utf-8",
                 body, "Vary: Accept-Encoding\r\n");
      return 200;
    }
    if (uri == "/-/healthy") {
      if (!get) return method_not_allowed("GET, HEAD");
      self->Send(conn, *config, 200, "text/plain; charset=utf-8", "Healthy.\n");
      return 200;
    }
    if (uri == "/-/ready") {
      if (!get) return method_not_allowed("GET, HEAD");
      bool ready = self->handlers.ready();
      self->Send(
          conn, *config, ready ? 200 : 503, "text/plain; charset=utf-8",
          ready ? "Ready.\n" : "Not ready: a source has not connected yet.\n");
      return ready ? 200 : 503;
    }
    if (uri == "/-/reload") {
      if (method != "POST" && method != "PUT") {
        return method_not_allowed("POST, PUT");
      }
      if (!self->settings.enable_lifecycle) {
        self->Send(conn, *config, 403, "text/plain; charset=utf-8",
                   "Lifecycle API is not enabled.\n");
        return 403;
      }
      std::string error;
      bool ok = self->handlers.reload(&error);
      self->Send(conn, *config, ok ? 200 : 500, "text/plain; charset=utf-8",
                 ok ? "Reloaded.\n" : "Reload failed: " + error + "\n");
      return ok ? 200 : 500;
    }
    if (uri == "/") {
      if (!get) return method_not_allowed("GET, HEAD");
      self->Send(conn, *config, 200, "text/html; charset=utf-8",
                 self->handlers.landing_page());
      return 200;
    }
    self->Send(conn, *config, 404, "text/plain; charset=utf-8", "Not found.\n");
    return 404;
  }

  // CivetWeb's own messages are mostly failed handshakes from scanners: not
  // worth a warning each (a failure to listen is reported by Start()).
  static int LogMessage(const struct mg_connection*, const char* message) {
    Log(LogLevel::kDebug, std::string("web: ") + message);
    return 1;
  }
};

WebServer::WebServer(std::string listen_address, std::string telemetry_path,
                     std::string web_config_file, WebHandlers handlers,
                     WebSettings settings)
    : impl_(std::make_unique<Impl>()) {
  impl_->settings = settings;
  impl_->listen_address = std::move(listen_address);
  impl_->telemetry_path = std::move(telemetry_path);
  impl_->web_config_file = std::move(web_config_file);
  impl_->handlers = std::move(handlers);
}

WebServer::~WebServer() { Stop(); }

bool WebServer::Start(std::string* error) {
  try {
    impl_->web = std::make_unique<WebConfigSource>(impl_->web_config_file);
  } catch (const std::exception& e) {
    *error = e.what();
    return false;
  }
  const bool tls = impl_->web->tls_enabled();
  if (impl_->listen_address.empty()) {
    *error = "--web.listen-address: empty";
    return false;
  }
  // Many held connections need descriptors: the soft limit goes up to the
  // hard one (what Go programs do at start).
  struct rlimit nofile {};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 &&
      nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &nofile);
  }
  if (!impl_->gate.Listen(impl_->listen_address, error)) return false;
  // CivetWeb serves on a loopback port of its own; ConnGate accepts on the
  // public one and relays a connection once the client has sent something
  // (see conn_gate.h), at most max_connections at once and an eighth of
  // them per client address.
  std::string ports = "127.0.0.1:0";
  if (tls) ports += "s";
  // CivetWeb 1.15 gives each connection a thread for its whole life, so
  // the thread count is the connection bound. request_timeout_ms is a total
  // deadline for the request headers (read_message() compares against the
  // request's start after every read; one read waits at most that long, so
  // a connection is dropped within 2x) and for the TLS handshake;
  // keep_alive_timeout_ms does the same for the next request on a kept-alive
  // connection. Without a complete request in time, a connection gives its
  // thread back, so idle or trickling clients cannot hold them all.
  // Headers are capped at max_request_size (16 KiB, CivetWeb's default).
  // tcp_nodelay: headers and body go out in two writes; without it, Nagle
  // and delayed ACKs add ~40 ms to every scrape on a kept-alive connection.
  std::string threads = std::to_string(impl_->settings.max_connections);
  std::string deadline = std::to_string(kHeaderDeadline.count());
  std::vector<const char*> options = {"listening_ports",
                                      ports.c_str(),
                                      "num_threads",
                                      threads.c_str(),
                                      "request_timeout_ms",
                                      deadline.c_str(),
                                      "keep_alive_timeout_ms",
                                      deadline.c_str(),
                                      "enable_keep_alive",
                                      "yes",
                                      "max_request_size",
                                      "16384",
                                      "tcp_nodelay",
                                      "1",
                                      nullptr};
  struct mg_callbacks callbacks {};
  callbacks.log_message = &Impl::LogMessage;
  if (tls && !impl_->web->PrepareTls(&callbacks, error)) return false;
  mg_init_library(tls ? MG_FEATURES_TLS : 0);
  impl_->ctx = mg_start(&callbacks, impl_->web.get(), options.data());
  if (impl_->ctx == nullptr) {
    *error = "web: CivetWeb cannot listen on a loopback port";
    return false;
  }
  mg_set_request_handler(impl_->ctx, "/", &Impl::Handle, impl_.get());
  struct mg_server_port sp[4];
  int n = mg_get_server_ports(impl_->ctx, 4, sp);
  if (n <= 0) {
    *error = "web: CivetWeb did not listen";
    Stop();
    return false;
  }
  ConnGate::Limits limits;
  limits.total = static_cast<size_t>(impl_->settings.max_connections);
  limits.per_ip = std::max<size_t>(1, limits.total / 8);
  limits.wait = kHeaderDeadline;
  if (!impl_->gate.Start(sp[0].port, limits, error)) {
    Stop();
    return false;
  }
  impl_->bound = impl_->gate.bound();
  return true;
}

void WebServer::Stop() {
  if (impl_) impl_->gate.Stop();
  if (impl_ && impl_->ctx) {
    mg_stop(impl_->ctx);
    impl_->ctx = nullptr;
  }
}

std::string WebServer::address() const { return impl_->bound; }

}  // namespace sshtail
