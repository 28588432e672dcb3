#include "sources/supervisor.h"

#include <cstdio>
#include <stdexcept>
#include <system_error>

#include "sources/file/rotated_files.h"
#include "sources/ssh/ssh_lister.h"
#include "sshtail/file_producer.h"
#include "sshtail/log.h"
#include "sshtail/text_format.h"

namespace sshtail {
namespace {

ProducerOptions ProducerOpts(const Options& o) {
  ProducerOptions po;
  po.start_at = o.start_at;
  po.once = o.once;
  po.max_line_bytes = o.max_line_bytes;
  return po;
}

SshOptions SshOpts(const Options& o) {
  SshOptions so;
  so.identity_files = o.ssh_identity_files;
  so.known_hosts = o.ssh_known_hosts;
  so.accept_new_host_keys = o.ssh_accept_new_host_keys;
  so.config_file = o.ssh_config;
  so.default_user = o.ssh_user;
  so.connect_timeout = o.ssh_connect_timeout;
  so.heartbeat_interval = o.ssh_heartbeat_interval;
  so.max_backoff = o.ssh_max_backoff;
  so.files_per_connection = o.ssh_files_per_connection;
  return so;
}

// ssh://authority of a glob's URL, then `path`, %-encoded where
// ParseSourceUrl would not read it back as it is.
std::string RemoteUrl(const std::string& glob_url, const std::string& path) {
  std::string out = glob_url.substr(0, glob_url.find('/', 6));
  for (unsigned char c : path) {
    if (c == '%' || c <= ' ' || c >= 0x7f) {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", c);
      out += hex;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

// A path a remote host reported: it must look like one (the host is not
// trusted) before it is matched.
bool PlausiblePath(const std::string& p) {
  if (p.empty() || p.front() != '/' || p.size() > 4096) return false;
  for (unsigned char c : p) {
    if (c < ' ' || c == 0x7f) return false;
  }
  return true;
}

}  // namespace

std::string SourceSupervisor::Key(const SourceSpec& s) {
  return s.kind == SourceSpec::Kind::kSsh
             ? "ssh " + SshConnectionKey(s) + s.path
             : "file " + s.path;
}

SourceSupervisor::SourceSupervisor(const Options& options, SourceTable& table,
                                   BatchQueue& queue)
    : options_(options), table_(table), queue_(queue) {
  size_t configured = table_.size();
  for (uint32_t i = 0; i < configured; ++i) {
    const SourceSpec& s = table_.specs[i];
    if (s.glob) continue;
    if (s.kind == SourceSpec::Kind::kFile) local_paths_.insert(s.path);
    if (s.kind == SourceSpec::Kind::kFile || s.kind == SourceSpec::Kind::kSsh) {
      followed_.insert(Key(s));
    }
  }
  for (uint32_t i = 0; i < configured; ++i) {
    const SourceSpec& s = table_.specs[i];
    if (!s.glob) continue;
    if (s.kind == SourceSpec::Kind::kSsh && options.once) {
      throw std::invalid_argument("--once cannot expand the remote glob '" +
                                  s.url + "' yet; list its files");
    }
    Glob g;
    g.config = i;
    g.pattern = std::make_unique<PathGlob>(s.path, s.exclude);
    g.remote = s.kind == SourceSpec::Kind::kSsh;
    g.first_slot = static_cast<uint32_t>(table_.size());
    for (size_t k = 0; k < s.max_files; ++k) {
      table_.Add(SourceSpec{}, SourceLabels{}, i, false);
    }
    globs_.push_back(std::move(g));
  }
}

SourceSupervisor::~SourceSupervisor() { Stop(); }

bool SourceSupervisor::Assign(Glob& g, const std::string& path, StartAt start,
                              uint32_t* slot) {
  const SourceSpec& glob = table_.specs[g.config];
  SourceSpec spec = glob;
  spec.glob = false;
  spec.path = path;
  if (followed_.count(Key(spec))) return false;
  if (g.used >= glob.max_files) {
    if (!g.warned_full) {
      Log(LogLevel::kWarn, "source " + glob.url + ": " +
                               std::to_string(glob.max_files) +
                               " files followed (max_files); not following " +
                               path + " and later matches");
      g.warned_full = true;
    }
    return false;
  }
  std::map<std::string, std::string> fields;
  g.pattern->Matches(path, &fields);
  uint32_t i = g.first_slot + static_cast<uint32_t>(g.used++);
  spec.url = g.remote ? RemoteUrl(glob.url, path) : path;
  spec.file = path;
  // The source stays the host (or the path, for a local file).
  spec.name = text::ValidUtf8(!glob.name.empty() ? glob.name
                              : g.remote         ? glob.host
                                                 : path);
  if (fields.empty()) {
    spec.labels["file"] = text::ValidUtf8(path);
  } else {
    for (const auto& [k, v] : fields) spec.labels[k] = text::ValidUtf8(v);
  }
  SourceLabels labels;
  labels.name = spec.name;
  for (const auto& kv : spec.labels) labels.labels.push_back(kv);
  labels.file = text::ValidUtf8(path);
  followed_.insert(Key(spec));
  if (!g.remote) local_paths_.insert(path);
  table_.specs[i] = std::move(spec);
  table_.labels[i] = std::move(labels);
  start_[i] = start;
  table_.Activate(i);
  *slot = i;
  return true;
}

void SourceSupervisor::ExpandGlobs(const std::set<std::string>& saved_urls,
                                   int64_t saved_at_ns) {
  for (Glob& g : globs_) {
    const SourceSpec& glob = table_.specs[g.config];
    std::set<std::string> paths, saved;
    if (!g.remote) {
      for (auto& p : g.pattern->Expand()) paths.insert(std::move(p));
    }
    for (const auto& url : saved_urls) {
      SourceSpec s;
      try {
        s = ParseSourceUrl(url);
      } catch (const std::invalid_argument&) {
        continue;
      }
      if (s.kind == glob.kind && !s.glob &&
          (!g.remote || SshConnectionKey(s) == SshConnectionKey(glob)) &&
          g.pattern->Matches(s.path, nullptr)) {
        paths.insert(s.path);
        saved.insert(s.path);
      }
    }
    g.saved = !saved.empty();
    for (const auto& path : paths) {
      StartAt start = options_.start_at;
      // Not saved and born since the save: all of it is new.
      if (!g.remote && saved_at_ns > 0 && !saved.count(path) &&
          BirthNs(path) > saved_at_ns) {
        start = StartAt::kBeginning;
      }
      uint32_t slot = 0;
      Assign(g, path, start, &slot);
    }
    if (!g.remote) {
      Log(LogLevel::kInfo, "source " + glob.url + ": " +
                               std::to_string(g.used) + " file(s) match");
    }
  }
}

void SourceSupervisor::Adopt(std::unique_ptr<Producer> producer) {
  producers_.push_back(std::move(producer));
}

void SourceSupervisor::StartSsh(uint32_t slot, bool from_start) {
  const SourceSpec& s = table_.specs[slot];
  SshSourceRef ref{&s, slot, table_.status[slot].get(), from_start};
  auto& conns = ssh_[SshConnectionKey(s)];
  size_t per =
      static_cast<size_t>(std::max(1, options_.ssh_files_per_connection));
  if (!conns.empty() && conns.back().second < per) {
    conns.back().first->AddSource(ref);
    ++conns.back().second;
    return;
  }
  auto made = MakeSshProducers({ref}, queue_, ProducerOpts(options_),
                               SshOpts(options_));
  conns.emplace_back(made.front().get(), 1);
  producers_.push_back(std::move(made.front()));
}

void SourceSupervisor::Start() {
  for (uint32_t i = 0; i < table_.size(); ++i) {
    if (!table_.active(i)) continue;
    const SourceSpec& s = table_.specs[i];
    ProducerOptions po = ProducerOpts(options_);
    auto it = start_.find(i);
    if (it != start_.end()) po.start_at = it->second;
    switch (s.kind) {
      case SourceSpec::Kind::kFile:
        producers_.push_back(
            MakeFileProducer(s, i, *table_.status[i], queue_, po));
        break;
      case SourceSpec::Kind::kStdin:
        producers_.push_back(
            MakeStdinProducer(i, *table_.status[i], queue_, po));
        break;
      case SourceSpec::Kind::kSsh:
        StartSsh(i, po.start_at == StartAt::kBeginning);
        break;
      case SourceSpec::Kind::kSyslogUnix:
      case SourceSpec::Kind::kSyslogUdp:
        break;  // adopted: bound before (a bad socket path is exit 2)
    }
  }
  for (size_t k = 0; k < globs_.size(); ++k) {
    if (!globs_[k].remote) continue;
    const SourceSpec& glob = table_.specs[globs_[k].config];
    // A round holds at most twice the files the glob may follow.
    producers_.push_back(
        MakeSshLister(glob, SshOpts(options_), 2 * glob.max_files,
                      [this, k](std::vector<std::string> paths) {
                        Listed(k, std::move(paths));
                      }));
  }
  StartThreads();
}

void SourceSupervisor::Listed(size_t k, std::vector<std::string> paths) {
  std::lock_guard lock(listed_mutex_);
  listed_[k] = std::move(paths);
}

std::vector<uint32_t> SourceSupervisor::Scan() {
  std::vector<uint32_t> added;
  if (stopping_) return added;
  std::map<size_t, std::vector<std::string>> listed;
  {
    std::lock_guard lock(listed_mutex_);
    listed.swap(listed_);
  }
  for (size_t k = 0; k < globs_.size(); ++k) {
    Glob& g = globs_[k];
    const SourceSpec& glob = table_.specs[g.config];
    if (g.used >= glob.max_files) continue;
    std::vector<std::string> paths;
    bool first = false;
    if (g.remote) {
      auto it = listed.find(k);
      if (it == listed.end()) continue;
      for (auto& p : it->second) {
        if (PlausiblePath(p) && g.pattern->Matches(p, nullptr)) {
          paths.push_back(std::move(p));
        }
      }
      first = g.rounds++ == 0;
    } else {
      paths = g.pattern->Expand(&local_paths_);
    }
    // Files there at the first listing are there "at start", unless the
    // glob ran before (its files were saved): then an unsaved one is new.
    StartAt start = first && !g.saved ? options_.start_at : StartAt::kBeginning;
    for (const auto& path : paths) {
      uint32_t slot = 0;
      if (!Assign(g, path, start, &slot)) continue;
      added.push_back(slot);
      if (!first) {
        Log(LogLevel::kInfo,
            "source " + glob.url + ": following new file " + path);
      }
      if (g.remote) {
        StartSsh(slot, start == StartAt::kBeginning);
        continue;
      }
      ProducerOptions po = ProducerOpts(options_);
      po.start_at = start;
      producers_.push_back(MakeFileProducer(table_.specs[slot], slot,
                                            *table_.status[slot], queue_, po));
    }
    if (first) {
      Log(LogLevel::kInfo, "source " + glob.url + ": " +
                               std::to_string(g.used) + " file(s) match");
    }
  }
  StartThreads();
  return added;
}

// A thread that cannot be created (a container's pids limit) must not end
// the process: the rest are retried by Scan, and run inline by --once.
void SourceSupervisor::StartThreads() {
  while (started_ < producers_.size()) {
    Producer* raw = producers_[started_].get();
    try {
      threads_.emplace_back([raw] { raw->Run(); });
    } catch (const std::system_error& e) {
      if (!thread_failed_) {
        Log(LogLevel::kError, "cannot start a reader thread (" +
                                  std::string(e.what()) + "); " +
                                  std::to_string(producers_.size() - started_) +
                                  " reader(s) wait and are retried");
      }
      thread_failed_ = true;
      return;
    }
    ++started_;
  }
  if (thread_failed_) Log(LogLevel::kInfo, "every reader thread started");
  thread_failed_ = false;
}

void SourceSupervisor::Stop() {
  stopping_ = true;
  for (auto& p : producers_) p->RequestStop();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

void SourceSupervisor::RunToEnd() {
  for (auto& t : threads_) t.join();
  threads_.clear();
  // Readers without a thread of their own run here, one after the other.
  while (started_ < producers_.size()) producers_[started_++]->Run();
}

}  // namespace sshtail
