#include "sshtail/options.h"

#include <prometheus/check_names.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <stdexcept>

#include "config/yaml_file.h"
#include "sources/path_glob.h"
#include "sources/shard.h"
#include "sshtail/rules.h"
#include "sshtail/state_file.h"

#ifndef SSHTAIL_VERSION
#define SSHTAIL_VERSION "0.0.0"
#endif

namespace sshtail {
namespace {

namespace fs = std::filesystem;

enum class Kind { kBool, kValue, kList };

struct Flag {
  std::string name;
  std::string help;
  Kind kind;
  std::string metavar;
  std::function<void(const std::string&, const std::string& base_dir)> set;
};

size_t ParseSize(const std::string& flag, const std::string& v) {
  size_t pos = 0;
  unsigned long long n = 0;
  try {
    n = std::stoull(v, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos != v.size() || v.empty() || v[0] == '-' || n == 0) {
    throw std::invalid_argument(
        "--" + flag + ": expected a positive whole number, got '" + v + "'");
  }
  return static_cast<size_t>(n);
}

std::chrono::milliseconds Duration(const std::string& flag,
                                   const std::string& v) {
  std::chrono::milliseconds d;
  if (!ParseDuration(v, &d) || d.count() <= 0) {
    throw std::invalid_argument("--" + flag +
                                ": expected a duration such as 500ms, 5s, 2m; "
                                "got '" +
                                v + "'");
  }
  return d;
}

bool ParseBool(const std::string& flag, const std::string& v) {
  if (v == "true" || v == "1" || v == "yes") return true;
  if (v == "false" || v == "0" || v == "no") return false;
  throw std::invalid_argument("--" + flag + ": expected true or false, got '" +
                              v + "'");
}

// Relative paths in the config file are relative to the config file.
std::string Resolve(const std::string& path, const std::string& base) {
  if (base.empty() || path.empty() || path[0] == '/' || path == "-") {
    return path;
  }
  return (fs::path(base) / path).lexically_normal().string();
}

std::vector<Flag> Flags(Options* o) {
  std::vector<Flag> f;
  auto add =
      [&](std::string name, Kind kind, std::string metavar, std::string help,
          std::function<void(const std::string&, const std::string&)> set) {
        f.push_back(Flag{std::move(name), std::move(help), kind,
                         std::move(metavar), std::move(set)});
      };
  add("config", Kind::kValue, "FILE",
      "YAML config: sources (with names, static labels, sudo), rules, and "
      "any flag below by its name",
      [o](const std::string& v, const std::string&) { o->config_file = v; });
  add("rules", Kind::kList, "FILE",
      "rule file (repeatable); default: the built-in rules/nginx.yml",
      [o](const std::string& v, const std::string& base) {
        o->rule_files.push_back(Resolve(v, base));
      });
  add("sources.file", Kind::kList, "FILE",
      "targets in Prometheus file_sd form (JSON or YAML; repeatable; globs "
      "allowed; config: sources_files), watched and re-read on change",
      [o](const std::string& v, const std::string& base) {
        o->sources_files.push_back(Resolve(v, base));
      });
  add("sources.max-slots", Kind::kValue, "N",
      "files that globs and reloads may add over the process' life (each "
      "costs about 700 bytes from the start; default: 4096)",
      [o](const std::string& v, const std::string&) {
        o->max_slots = ParseSize("sources.max-slots", v);
        if (o->max_slots > 1000000) {
          throw std::invalid_argument("--sources.max-slots: at most 1000000");
        }
      });
  add("sources.retire-after", Kind::kValue, "DURATION",
      "a file a glob found stops being followed, and its series go, once its "
      "path has been gone this long; 0: never (default: 10m)",
      [o](const std::string& v, const std::string&) {
        o->retire_after = v == "0" ? std::chrono::milliseconds(0)
                                   : Duration("sources.retire-after", v);
      });
  add("format", Kind::kValue, "FORMAT",
      "nginx log_format for the built-in rules: auto (per source, the first "
      "of combined, main, timed and the config's formats: that its lines "
      "match), combined, main, timed, a name from formats:, or a literal "
      "format string (default: auto)",
      [o](const std::string& v, const std::string&) { o->format = v; });
  add("start-at", Kind::kValue, "WHERE",
      "where to start a file seen for the first time: beginning or end "
      "(default: end)",
      [o](const std::string& v, const std::string&) {
        if (v == "beginning") {
          o->start_at = StartAt::kBeginning;
        } else if (v == "end") {
          o->start_at = StartAt::kEnd;
        } else {
          throw std::invalid_argument(
              "--start-at: expected beginning or end, got '" + v + "'");
        }
      });
  add("max-line-bytes", Kind::kValue, "N",
      "longer lines are skipped whole and counted (default: 65536)",
      [o](const std::string& v, const std::string&) {
        o->max_line_bytes = ParseSize("max-line-bytes", v);
      });
  add("max-series-total", Kind::kValue, "N",
      "series of all rule metrics together; past it new label sets go to "
      "their source's overflow series (default: 250000)",
      [o](const std::string& v, const std::string&) {
        o->max_series_total = ParseSize("max-series-total", v);
      });
  add("once", Kind::kBool, "",
      "read every source from its beginning to its current end, print the "
      "metrics to stdout, exit (1 if a source could not be read)",
      [o](const std::string& v, const std::string&) {
        o->once = ParseBool("once", v);
      });
  add("output", Kind::kValue, "FORMAT",
      "with --once: prometheus (the metrics now, default) or openmetrics "
      "(history with each line's own time, for promtool tsdb "
      "create-blocks-from openmetrics)",
      [o](const std::string& v, const std::string&) {
        if (v != "prometheus" && v != "openmetrics") {
          throw std::invalid_argument(
              "--output: expected prometheus or openmetrics, got '" + v + "'");
        }
        o->output = v;
      });
  add("backfill.step", Kind::kValue, "D",
      "with --output openmetrics: one sample per series per this much log "
      "time (default: 1m)",
      [o](const std::string& v, const std::string&) {
        o->backfill_step = Duration("backfill.step", v);
      });
  add("backfill.label", Kind::kList, "NAME=VALUE",
      "with --output openmetrics: a label for every series (repeatable), "
      "e.g. job=... and instance=... as Prometheus scrapes the exporter",
      [o](const std::string& v, const std::string&) {
        size_t eq = v.find('=');
        std::string name = v.substr(0, eq);
        bool ok = eq != std::string::npos && !name.empty() &&
                  name.rfind("__", 0) != 0 &&
                  !std::isdigit(static_cast<unsigned char>(name[0]));
        for (char c : name) {
          ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
        }
        if (!ok) {
          throw std::invalid_argument(
              "--backfill.label: expected NAME=VALUE with a label name, got "
              "'" +
              v + "'");
        }
        o->backfill_labels.emplace_back(name, v.substr(eq + 1));
      });
  add("check-config", Kind::kBool, "",
      "load config and rules, report the first problem as file:line, exit 0 "
      "or 2",
      [o](const std::string& v, const std::string&) {
        o->check_config = ParseBool("check-config", v);
      });
  add("web.listen-address", Kind::kValue, "ADDR",
      "[host]:port to serve metrics on; port 0 picks a free one (default: "
      ":9923)",
      [o](const std::string& v, const std::string&) { o->listen_address = v; });
  add("web.listen-address-file", Kind::kValue, "FILE",
      "once listening, write the actual host:port here",
      [o](const std::string& v, const std::string& base) {
        o->listen_address_file = Resolve(v, base);
      });
  add("web.telemetry-path", Kind::kValue, "PATH",
      "path of the metrics endpoint (default: /metrics)",
      [o](const std::string& v, const std::string&) {
        if (v.empty() || v[0] != '/') {
          throw std::invalid_argument(
              "--web.telemetry-path: must start with '/'");
        }
        o->telemetry_path = v;
      });
  add("web.enable-lifecycle", Kind::kBool, "",
      "allow POST /-/reload (SIGHUP always reloads)",
      [o](const std::string& v, const std::string&) {
        o->web_enable_lifecycle = ParseBool("web.enable-lifecycle", v);
      });
  add("web.max-connections", Kind::kValue, "N",
      "HTTP connections served at once, a thread each; more wait until one "
      "frees (default: 256)",
      [o](const std::string& v, const std::string&) {
        size_t n = ParseSize("web.max-connections", v);
        if (n > 16384) {
          throw std::invalid_argument("--web.max-connections: at most 16384");
        }
        o->web_max_connections = static_cast<int>(n);
      });
  add("web.config.file", Kind::kValue, "FILE",
      "TLS and basic-auth settings, in the Prometheus exporter-toolkit "
      "format",
      [o](const std::string& v, const std::string& base) {
        o->web_config_file = Resolve(v, base);
      });
  add("queue.batches", Kind::kValue, "N",
      "capacity of the queue between readers and parsers, in batches of up "
      "to 256 KiB (default: 16)",
      [o](const std::string& v, const std::string&) {
        o->queue_batches = ParseSize("queue.batches", v);
      });
  add("consumers", Kind::kValue, "N",
      "parser threads (default: one per CPU, at most 4)",
      [o](const std::string& v, const std::string&) {
        size_t n = ParseSize("consumers", v);
        if (n > 64) throw std::invalid_argument("--consumers: at most 64");
        o->consumers = static_cast<int>(n);
      });
  add("positions-file", Kind::kValue, "FILE",
      "remember where each source is, so a restart neither loses nor "
      "recounts lines",
      [o](const std::string& v, const std::string& base) {
        o->positions_file = Resolve(v, base);
      });
  add("state-file", Kind::kValue, "FILE",
      "like --positions-file (the same file), and the values of every "
      "series too: counters and histograms continue across restarts and "
      "crashes",
      [o](const std::string& v, const std::string& base) {
        o->state_file = Resolve(v, base);
      });
  add("positions.sync-interval", Kind::kValue, "DURATION",
      "how often the positions (or state) file is written (default: 5s)",
      [o](const std::string& v, const std::string&) {
        o->positions_interval = Duration("positions.sync-interval", v);
      });
  add("log.level", Kind::kValue, "LEVEL",
      "debug, info, warn or error (default: info)",
      [o](const std::string& v, const std::string&) {
        if (v != "debug" && v != "info" && v != "warn" && v != "error") {
          throw std::invalid_argument(
              "--log.level: expected debug, info, warn or error, got '" + v +
              "'");
        }
        o->log_level = v;
      });
  add("ssh.identity-file", Kind::kList, "FILE",
      "private key to offer (repeatable); the agent and ~/.ssh/config's "
      "IdentityFile are used too",
      [o](const std::string& v, const std::string& base) {
        o->ssh_identity_files.push_back(Resolve(v, base));
      });
  add("ssh.known-hosts", Kind::kValue, "FILE",
      "known_hosts file to check host keys against (default: "
      "~/.ssh/known_hosts)",
      [o](const std::string& v, const std::string& base) {
        o->ssh_known_hosts = Resolve(v, base);
      });
  add("ssh.accept-new-host-keys", Kind::kBool, "",
      "trust and record the key of a host not yet in known_hosts (a changed "
      "key is always refused)",
      [o](const std::string& v, const std::string&) {
        o->ssh_accept_new_host_keys = ParseBool("ssh.accept-new-host-keys", v);
      });
  add("ssh.config", Kind::kValue, "FILE",
      "OpenSSH client config to read (default: ~/.ssh/config; 'none' to "
      "skip)",
      [o](const std::string& v, const std::string& base) {
        o->ssh_config = v == "none" ? v : Resolve(v, base);
      });
  add("ssh.user", Kind::kValue, "USER",
      "user for ssh:// sources without user@ (default: ~/.ssh/config, then "
      "$USER)",
      [o](const std::string& v, const std::string&) { o->ssh_user = v; });
  add("ssh.sudo", Kind::kBool, "",
      "read remote files through `sudo -n` (per source: `sudo:` in the "
      "config)",
      [o](const std::string& v, const std::string&) {
        o->ssh_sudo = ParseBool("ssh.sudo", v);
      });
  add("shard.count", Kind::kValue, "N",
      "replicas that share the sources, each host followed by one of them "
      "(default: 1, no sharding); reloadable",
      [o](const std::string& v, const std::string&) {
        size_t n = ParseSize("shard.count", v);
        if (n < 1 || n > 1000) {
          throw std::invalid_argument("--shard.count: 1 to 1000");
        }
        o->shard_count = static_cast<int>(n);
      });
  add("shard.index", Kind::kValue, "I",
      "this replica's index, 0 to count-1, or 'auto': the number ending the "
      "host name, as in a StatefulSet's pod sshtail-2 (default: auto)",
      [o](const std::string& v, const std::string&) {
        if (v == "auto") {
          o->shard_index = -1;
          return;
        }
        if (v.empty() || v.size() > 4 ||
            v.find_first_not_of("0123456789") != std::string::npos) {
          throw std::invalid_argument(
              "--shard.index: expected 0, 1, ... or auto, got '" + v + "'");
        }
        o->shard_index = std::stoi(v);
      });
  add("shard.dir", Kind::kValue, "DIR",
      "directory every replica shares: a lock per host, and the state a "
      "host's follower leaves for the next one",
      [o](const std::string& v, const std::string& base) {
        o->shard_dir = Resolve(v, base);
      });
  add("ssh.compression", Kind::kBool, "",
      "ask for zlib compression (zlib@openssh.com) on every SSH connection, "
      "for slow links; off: ~/.ssh/config's Compression decides per host "
      "(default: off)",
      [o](const std::string& v, const std::string&) {
        o->ssh_compression = ParseBool("ssh.compression", v);
      });
  add("ssh.connect-timeout", Kind::kValue, "DURATION",
      "TCP connect and handshake timeout (default: 10s)",
      [o](const std::string& v, const std::string&) {
        o->ssh_connect_timeout = Duration("ssh.connect-timeout", v);
      });
  add("ssh.heartbeat-interval", Kind::kValue, "DURATION",
      "the remote side reports every this often; a connection silent for 3 "
      "intervals is dead (default: 5s)",
      [o](const std::string& v, const std::string&) {
        o->ssh_heartbeat_interval = Duration("ssh.heartbeat-interval", v);
        if (o->ssh_heartbeat_interval.count() < 1000) {
          throw std::invalid_argument("--ssh.heartbeat-interval: at least 1s");
        }
      });
  add("ssh.max-backoff", Kind::kValue, "DURATION",
      "longest wait between reconnect attempts (default: 30s)",
      [o](const std::string& v, const std::string&) {
        o->ssh_max_backoff = Duration("ssh.max-backoff", v);
      });
  add("ssh.files-per-connection", Kind::kValue, "N",
      "files of one host that share an SSH connection; sshd's MaxSessions "
      "(default 10) must allow twice this plus one (default: 4)",
      [o](const std::string& v, const std::string&) {
        o->ssh_files_per_connection =
            static_cast<int>(ParseSize("ssh.files-per-connection", v));
      });
  add("ssh.max-handshakes-per-host", Kind::kValue, "N",
      "SSH handshakes in flight to one host at once, the others wait their "
      "turn; sshd drops connections beyond its MaxStartups (default 10) "
      "(default: 4; 0: no bound)",
      [o](const std::string& v, const std::string&) {
        o->ssh_max_handshakes_per_host =
            v == "0" ? 0
                     : static_cast<int>(std::min<size_t>(
                           ParseSize("ssh.max-handshakes-per-host", v), 4096));
      });
  return f;
}

// Names of formats: short words that cannot be mistaken for a format.
std::string CheckFormatName(const std::string& name) {
  bool ok = !name.empty() && name.size() <= 64;
  for (char c : name) {
    ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' ||
                c == '-' || c == '.');
  }
  if (!ok) {
    return "invalid format name '" + name +
           "' (letters, digits, '_', '-', '.')";
  }
  for (const char* kw :
       {"auto", "none", "custom", "combined", "main", "timed", "default"}) {
    if (name == kw) return "format name '" + name + "' is reserved";
  }
  return "";
}

SourceSpec SourceFromYaml(const YAML::Node& n, const std::string& file,
                          const std::string& base) {
  SourceSpec spec;
  std::string url;
  if (n.IsScalar()) {
    url = n.Scalar();
  } else if (n.IsMap()) {
    for (const auto& kv : n) {
      std::string k = kv.first.Scalar();
      if (k != "url" && k != "name" && k != "labels" && k != "sudo" &&
          k != "format" && k != "exclude" && k != "max_files") {
        throw ConfigError(Where(file, kv.first) + ": unknown key '" + k +
                          "' in source (expected url, name, labels, sudo, "
                          "format, exclude, max_files)");
      }
    }
    if (!n["url"] || !n["url"].IsScalar()) {
      throw ConfigError(Where(file, n) + ": source needs a url");
    }
    url = n["url"].Scalar();
  } else {
    throw ConfigError(Where(file, n) +
                      ": a source is a URL or a mapping with url:");
  }
  if (!url.empty() && url[0] != '/' && url != "-" &&
      url.find("://") == std::string::npos) {
    url = Resolve(url, base);
  }
  try {
    spec = ParseSourceUrl(url);
  } catch (const std::invalid_argument& e) {
    throw ConfigError(Where(file, n) + ": " + e.what());
  }
  spec.config_file = file;
  spec.config_line = n.Mark().line + 1;
  if (n.IsMap()) {
    if (n["name"]) {
      spec.name = n["name"].Scalar();
      if (spec.name.empty()) {
        throw ConfigError(Where(file, n["name"]) + ": empty source name");
      }
    }
    if (n["format"]) {
      if (!n["format"].IsScalar() || n["format"].Scalar().empty()) {
        throw ConfigError(Where(file, n["format"]) +
                          ": format must be a format name or an nginx "
                          "log_format string");
      }
      spec.format = n["format"].Scalar();
      spec.format_line = n["format"].Mark().line + 1;
    }
    if (n["sudo"]) {
      try {
        spec.sudo = n["sudo"].as<bool>();
      } catch (const YAML::Exception&) {
        throw ConfigError(Where(file, n["sudo"]) +
                          ": sudo must be true or false");
      }
      if (spec.kind != SourceSpec::Kind::kSsh && spec.sudo) {
        throw ConfigError(Where(file, n["sudo"]) +
                          ": sudo applies to ssh:// sources only");
      }
    }
    for (const char* key : {"exclude", "max_files"}) {
      if (n[key] && !spec.glob) {
        throw ConfigError(Where(file, n[key]) + ": " + key +
                          " applies to a path with a glob only");
      }
    }
    if (n["exclude"]) {
      const YAML::Node& ex = n["exclude"];
      if (!ex.IsSequence()) {
        throw ConfigError(Where(file, ex) +
                          ": exclude must be a list of file name patterns");
      }
      for (const auto& p : ex) {
        if (!p.IsScalar() || p.Scalar().empty()) {
          throw ConfigError(Where(file, p) +
                            ": an exclude pattern must be a non-empty string");
        }
        spec.exclude.push_back(p.Scalar());
      }
    }
    if (n["max_files"]) {
      long long v = 0;
      try {
        v = n["max_files"].as<long long>();
      } catch (const YAML::Exception&) {
        v = 0;
      }
      if (v < 1 || v > 100000) {
        throw ConfigError(Where(file, n["max_files"]) +
                          ": max_files must be a number from 1 to 100000");
      }
      spec.max_files = static_cast<size_t>(v);
    }
    if (n["labels"]) {
      if (!n["labels"].IsMap()) {
        throw ConfigError(Where(file, n["labels"]) +
                          ": labels must be a mapping");
      }
      for (const auto& kv : n["labels"]) {
        std::string k = kv.first.Scalar();
        if (!prometheus::CheckLabelName(k) || k == "source") {
          throw ConfigError(Where(file, kv.first) + ": invalid label name '" +
                            k + "'");
        }
        if (!kv.second.IsScalar()) {
          throw ConfigError(Where(file, kv.second) +
                            ": a label value must be a string");
        }
        spec.labels[k] = kv.second.Scalar();
      }
      if (spec.glob) {
        // A glob's matches are told apart by `file` or by the fields.
        std::vector<std::string> own = PathGlob(spec.path).fields();
        if (own.empty()) own.push_back("file");
        for (const auto& k : own) {
          if (spec.labels.count(k)) {
            throw ConfigError(Where(file, n["labels"]) + ": label '" + k +
                              "' is set by the path of a glob source");
          }
        }
      }
      // Each series also carries `source`, and `file` or a glob's fields:
      // within the limit the state file reads back.
      size_t own = 1 + (spec.glob ? std::max<size_t>(
                                        1, PathGlob(spec.path).fields().size())
                                  : 1);
      if (spec.labels.size() + own > kMaxSeriesLabels) {
        throw ConfigError(Where(file, n["labels"]) + ": " +
                          std::to_string(spec.labels.size()) +
                          " static labels; with the exporter's own (source, "
                          "file) a series may carry at most " +
                          std::to_string(kMaxSeriesLabels));
      }
    }
  }
  return spec;
}

// Flattens nested maps: {web: {listen-address: x}} -> "web.listen-address".
void Flatten(const YAML::Node& map, const std::string& prefix,
             std::vector<std::pair<std::string, YAML::Node>>* out) {
  for (const auto& kv : map) {
    std::string key = prefix + kv.first.Scalar();
    if (kv.second.IsMap() && key != "sources" && key != "formats") {
      Flatten(kv.second, key + ".", out);
    } else {
      out->emplace_back(key, kv.second);
    }
  }
}

void LoadConfig(const std::string& file, const std::vector<Flag>& flags,
                CLI::App& app, Options* o) {
  YAML::Node root = LoadYamlFile(file, "config file");
  if (!root || root.IsNull()) return;
  if (!root.IsMap()) throw ConfigError(file + ":1: config must be a mapping");
  std::string base = fs::path(file).parent_path().string();
  std::vector<std::pair<std::string, YAML::Node>> items;
  Flatten(root, "", &items);
  bool cli_sources = !o->sources.empty();
  for (const auto& [key, node] : items) {
    if (key == "sources") {
      if (!node.IsSequence()) {
        throw ConfigError(Where(file, node) + ": sources must be a list");
      }
      if (cli_sources) continue;  // sources on the command line win
      for (const auto& s : node) {
        o->sources.push_back(SourceFromYaml(s, file, base));
      }
      continue;
    }
    if (key == "formats") {
      if (!node.IsMap()) {
        throw ConfigError(Where(file, node) +
                          ": formats must be a mapping of name: format");
      }
      o->formats.clear();
      for (const auto& kv : node) {
        std::string name = kv.first.Scalar();
        std::string problem = CheckFormatName(name);
        if (problem.empty() && !kv.second.IsScalar()) {
          problem = "format '" + name + "' must be an nginx log_format string";
        }
        if (!problem.empty()) {
          throw ConfigError(Where(file, kv.first) + ": " + problem);
        }
        for (const auto& f : o->formats) {
          if (f.name == name) {
            throw ConfigError(Where(file, kv.first) + ": format '" + name +
                              "' is defined twice");
          }
        }
        o->formats.push_back(
            NamedFormat{name, kv.second.Scalar(), Where(file, kv.second)});
      }
      continue;
    }
    const Flag* flag = nullptr;
    std::string name = key == "sources_files" ? "sources.file" : key;
    for (const auto& f : flags) {
      if (f.name == name) flag = &f;
    }
    if (flag == nullptr || key == "config" || key == "once" ||
        key == "check-config" || key == "sources.file") {
      throw ConfigError(Where(file, node) + ": unknown setting '" + key + "'");
    }
    if (app.get_option("--" + name)->count() > 0) continue;  // the flag wins
    try {
      if (node.IsSequence()) {
        if (flag->kind != Kind::kList) {
          throw std::invalid_argument("--" + key + " takes one value");
        }
        for (const auto& v : node) flag->set(v.Scalar(), base);
      } else if (node.IsScalar()) {
        flag->set(node.Scalar(), base);
      } else {
        throw std::invalid_argument("--" + key + ": expected a value");
      }
    } catch (const ConfigError&) {
      throw;
    } catch (const std::invalid_argument& e) {
      throw ConfigError(Where(file, node) + ": " + e.what());
    }
  }
}

}  // namespace

const char* Version() { return SSHTAIL_VERSION; }

bool ParseDuration(const std::string& text, std::chrono::milliseconds* out) {
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    ++i;
  }
  if (i == 0 || i > 12) return false;
  long long n = std::stoll(text.substr(0, i));
  std::string unit = text.substr(i);
  long long ms;
  if (unit == "ms") {
    ms = n;
  } else if (unit == "s") {
    ms = n * 1000;
  } else if (unit == "m") {
    ms = n * 60000;
  } else if (unit == "h") {
    ms = n * 3600000;
  } else {
    return false;
  }
  *out = std::chrono::milliseconds(ms);
  return true;
}

namespace {

ParseResult Parse(int argc, const char* const argv[], Options* o,
                  std::string* problem) {
  CLI::App app(
      "sshtail_exporter: follows nginx access logs, local or on remote hosts "
      "over SSH\n(nothing installed there), and serves Prometheus metrics "
      "from every line.",
      "sshtail_exporter");
  app.set_version_flag("--version",
                       std::string("sshtail_exporter ") + SSHTAIL_VERSION);
  app.footer(
      "SOURCE is /abs/path or file:///abs/path (a local file), - (stdin), or\n"
      "ssh://[user@]host[:port]/abs/path; a path may hold globs (*, ?, [...])\n"
      "and {name} fields (labels). See README.md for every metric.");
  std::vector<Flag> flags = Flags(o);
  std::map<std::string, std::string> single;
  std::map<std::string, std::vector<std::string>> lists;
  for (const auto& f : flags) {
    CLI::Option* opt = nullptr;
    if (f.kind == Kind::kBool) {
      opt = app.add_flag("--" + f.name, f.help);
    } else if (f.kind == Kind::kValue) {
      opt = app.add_option("--" + f.name, single[f.name], f.help);
      opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    } else {
      opt = app.add_option("--" + f.name, lists[f.name], f.help);
      opt->allow_extra_args(false);
    }
    if (!f.metavar.empty()) opt->type_name(f.metavar);
  }
  std::vector<std::string> positional;
  app.add_option("SOURCE", positional, "logs to follow")->type_name("");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return ParseResult::kExit0;
  } catch (const CLI::CallForVersion& e) {
    std::cout << e.what() << "\n";
    return ParseResult::kExit0;
  } catch (const CLI::ParseError& e) {
    *problem = std::string(e.what()) + " (see --help)";
    return ParseResult::kExit2;
  }
  try {
    for (const auto& f : flags) {
      auto* opt = app.get_option("--" + f.name);
      if (opt->count() == 0) continue;
      if (f.kind == Kind::kBool) {
        f.set("true", "");
      } else if (f.kind == Kind::kValue) {
        f.set(single[f.name], "");
      } else {
        for (const auto& v : lists[f.name]) f.set(v, "");
      }
    }
    for (const auto& p : positional) o->sources.push_back(ParseSourceUrl(p));
    if (!o->config_file.empty()) LoadConfig(o->config_file, flags, app, o);
    for (auto& s : o->sources) {
      if (s.kind == SourceSpec::Kind::kSsh && !s.sudo && o->ssh_sudo) {
        s.sudo = true;
      }
    }
    ResolveNames(o->sources);
    int stdin_count = 0;
    for (const auto& s : o->sources) {
      stdin_count += s.kind == SourceSpec::Kind::kStdin;
    }
    if (stdin_count > 1) {
      throw std::invalid_argument("stdin (-) can be given only once");
    }
    if (o->output == "openmetrics" && !o->once && !o->check_config) {
      throw std::invalid_argument(
          "--output openmetrics needs --once (it prints the history of the "
          "files read)");
    }
    if (!o->state_file.empty()) {
      if (!o->positions_file.empty() && o->positions_file != o->state_file) {
        throw std::invalid_argument(
            "--state-file and --positions-file name one file (the state "
            "file also holds the positions): give one of them");
      }
      o->positions_file = o->state_file;
    }
    if (o->shard_count > 1) {
      if (o->shard_dir.empty()) {
        throw std::invalid_argument(
            "--shard.count " + std::to_string(o->shard_count) +
            " needs --shard.dir, a directory every replica shares (a host's "
            "state moves through it with the host)");
      }
      if (o->once) {
        throw std::invalid_argument(
            "--once reads every source once; --shard.count is for replicas "
            "of the daemon");
      }
      if (o->shard_index < 0) {
        char host[256] = {};
        ::gethostname(host, sizeof host - 1);
        o->shard_index = ShardKeeper::IndexFromHostname(host);
        if (o->shard_index < 0) {
          throw std::invalid_argument(
              "--shard.index auto: the host name '" + std::string(host) +
              "' does not end in -<number> (as a StatefulSet's pods do); "
              "give --shard.index");
        }
      }
      // An index at or past the count is refused at start (Exporter);
      // on a reload it follows nothing: a scale-down's leaving replica.
    }
    if (o->sources.empty() && o->sources_files.empty() && !o->check_config) {
      throw std::invalid_argument(
          "no sources: give at least one SOURCE (a path, ssh://host/path or "
          "-), sources: in --config, or --sources.file");
    }
  } catch (const std::invalid_argument& e) {
    *problem = e.what();
    return ParseResult::kExit2;
  }
  o->args.assign(argv, argv + argc);
  return ParseResult::kRun;
}

}  // namespace

ParseResult ParseCommandLine(int argc, const char* const argv[], Options* o) {
  std::string problem;
  ParseResult r = Parse(argc, argv, o, &problem);
  if (r == ParseResult::kExit2) {
    std::fprintf(stderr, "sshtail_exporter: error: %s\n", problem.c_str());
  }
  return r;
}

bool ReparseCommandLine(const std::vector<std::string>& args, Options* out,
                        std::string* error) {
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  ParseResult r = Parse(static_cast<int>(argv.size()), argv.data(), out, error);
  if (r == ParseResult::kExit0) *error = "unexpected --help or --version";
  return r == ParseResult::kRun;
}

}  // namespace sshtail
