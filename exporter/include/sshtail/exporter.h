#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "sshtail/options.h"

namespace sshtail {

/// The whole exporter: producers -> queue -> consumers -> metrics, plus the
/// web endpoint and the positions file.
///
/// Thread-safe where it says so; Start/Stop/Run* from one thread.
class Exporter {
 public:
  /// Loads and checks rules. Throws ConfigError (one line, file:line).
  explicit Exporter(Options options);
  ~Exporter();
  Exporter(const Exporter&) = delete;
  Exporter& operator=(const Exporter&) = delete;

  /// --once: read every source to its current end, write the exposition.
  int RunOnce(std::ostream& out);
  /// Serves until SIGTERM or SIGINT; SIGHUP reloads. Returns the exit code.
  int RunServer();

  /// Starts producers and consumers.
  void Start();
  /// Stops producers, counts what they queued, saves positions.
  void Stop();

  /// The Prometheus text exposition of every metric. Thread-safe.
  std::string Exposition() const;
  /// Re-reads the config file and rule files. On error keeps the running
  /// set, returns false and fills `error`. Thread-safe.
  bool Reload(std::string* error);
  /// True once every source has connected (or opened its file) once.
  bool Ready() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Loads the rules for `options` and checks them, with the targets of
/// --sources.file and the web config: what --check-config does. Returns the
/// number of sources (configured and inventory). Throws ConfigError.
size_t CheckConfig(const Options& options);

/// The program: parses flags, runs, returns the exit code.
int Main(int argc, const char* const argv[]);

}  // namespace sshtail
