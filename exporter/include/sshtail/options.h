#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "sshtail/source.h"

namespace sshtail {

/// A named nginx format from `formats:` in the config. Plain value type.
struct NamedFormat {
  std::string name;
  std::string text;   ///< a literal format or a pasted log_format directive
  std::string where;  ///< file:line, for errors
};

/// Every setting of the exporter: command-line flags, or the same names as
/// keys of the --config file (flags win). Plain value type.
struct Options {
  std::vector<SourceSpec> sources;
  /// --sources.file / sources_files: file_sd files (globs allowed) whose
  /// targets are sources too (LoadInventory), watched while running.
  std::vector<std::string> sources_files;
  /// Pool slots for globs' files and the sources reloads add.
  size_t max_slots = 4096;
  /// A glob's file whose path has been gone this long stops being
  /// followed (its series go); 0: never.
  std::chrono::milliseconds retire_after{600000};
  std::string config_file;
  std::vector<std::string> rule_files;
  /// --format: "auto" (detected per source), a format name, a literal
  /// format or a pasted `log_format` directive.
  std::string format = "auto";
  /// `formats:` in the config: named formats, in the file's order.
  std::vector<NamedFormat> formats;
  StartAt start_at = StartAt::kEnd;
  size_t max_line_bytes = 64 * 1024;
  size_t max_series_total = 250000;  ///< all rule series together
  bool once = false;
  bool check_config = false;
  /// --once output: "prometheus" (the text format, now) or "openmetrics"
  /// (the history, one sample per --backfill.step of log time).
  std::string output = "prometheus";
  std::chrono::milliseconds backfill_step{60000};
  /// --backfill.label NAME=VALUE: set on every backfilled series.
  std::vector<std::pair<std::string, std::string>> backfill_labels;

  std::string listen_address = ":9923";
  std::string listen_address_file;
  std::string telemetry_path = "/metrics";
  std::string web_config_file;
  bool web_enable_lifecycle = false;  ///< POST /-/reload allowed
  int web_max_connections = 256;      ///< one web thread each

  size_t queue_batches = 16;
  int consumers = 0;  ///< 0: one per CPU, at most 4
  std::string positions_file;
  /// --state-file: the same file as positions_file (which it sets), plus
  /// the values of every series of the saved sources.
  std::string state_file;
  std::chrono::milliseconds positions_interval{5000};
  std::string log_level = "info";

  std::vector<std::string> ssh_identity_files;
  std::string ssh_known_hosts;  ///< empty: ~/.ssh/known_hosts
  bool ssh_accept_new_host_keys = false;
  std::string ssh_config;  ///< empty: ~/.ssh/config ("none" to skip)
  std::string ssh_user;    ///< default user for ssh:// without user@
  bool ssh_sudo = false;   ///< default for sources without `sudo:`
  std::chrono::milliseconds ssh_connect_timeout{10000};
  std::chrono::milliseconds ssh_heartbeat_interval{5000};
  std::chrono::milliseconds ssh_max_backoff{30000};
  int ssh_files_per_connection = 4;
  int ssh_max_handshakes_per_host = 4;  ///< 0: no bound
  bool ssh_compression = false;

  /// Replicas that share the sources (1: no sharding); this one's index
  /// (-1: `auto`, from the host name); the directory they all share.
  int shard_count = 1;
  int shard_index = -1;
  std::string shard_dir;

  std::vector<std::string> args;  ///< the command line, to reload the config
};

/// What ParseCommandLine decided.
enum class ParseResult { kRun, kExit0, kExit2 };

/// Parses flags, then the --config file (if any) for what the flags did not
/// set. On --help/--version prints to stdout and returns kExit0; on any
/// error prints one line to stderr and returns kExit2.
ParseResult ParseCommandLine(int argc, const char* const argv[], Options* out);

/// Parses `args` (a saved command line) again, for a reload: the config
/// file is read anew. On error returns false with a one-line `error`.
bool ReparseCommandLine(const std::vector<std::string>& args, Options* out,
                        std::string* error);

/// Parses "250ms", "5s", "2m", "1h". Returns false if malformed.
bool ParseDuration(const std::string& text, std::chrono::milliseconds* out);

/// The version string, e.g. "0.1.0".
const char* Version();

}  // namespace sshtail
