#pragma once

#include <functional>
#include <memory>
#include <string>

namespace sshtail {

/// What the web endpoint serves. Each callback may run on any web thread
/// and must be thread-safe.
struct WebHandlers {
  std::function<std::string()> metrics;
  std::function<bool()> ready;
  std::function<bool(std::string* error)> reload;
  std::function<std::string()> landing_page;
};

/// Limits and switches of the endpoint (flags --web.*).
struct WebSettings {
  /// POST/PUT /-/reload works only with --web.enable-lifecycle (403
  /// otherwise, as in Prometheus); SIGHUP always reloads.
  bool enable_lifecycle = false;
  /// Connections served at once, one web thread each, an eighth of them
  /// per client address. More wait, without a thread, in the exporter's
  /// accept loop (ConnGate) until one frees; a connection that sends
  /// nothing is never given one, and none can hold one without sending a
  /// complete request for longer than the header deadline.
  int max_connections = 256;
};

/// The HTTP(S) endpoint: telemetry path, landing page, /-/healthy,
/// /-/ready and POST /-/reload, with optional TLS and basic auth from an
/// exporter-toolkit web config file. Start/Stop from one thread.
class WebServer {
 public:
  WebServer(std::string listen_address, std::string telemetry_path,
            std::string web_config_file, WebHandlers handlers,
            WebSettings settings = {});
  ~WebServer();

  /// Binds and starts serving. On failure returns false with a one-line
  /// reason in `error`.
  bool Start(std::string* error);
  void Stop();
  /// host:port actually bound (after Start).
  std::string address() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sshtail
