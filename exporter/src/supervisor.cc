#include "supervisor.h"

#include <system_error>

#include "rotated_files.h"
#include "sshtail/file_producer.h"
#include "sshtail/log.h"
#include "sshtail/ssh_producer.h"
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

}  // namespace

SourceSupervisor::SourceSupervisor(const Options& options, SourceTable& table,
                                   BatchQueue& queue)
    : options_(options), table_(table), queue_(queue) {
  for (uint32_t i = 0; i < table_.size(); ++i) {
    const SourceSpec& s = table_.specs[i];
    if (s.kind == SourceSpec::Kind::kFile && !s.glob) followed_.insert(s.path);
  }
  size_t configured = table_.size();
  for (uint32_t i = 0; i < configured; ++i) {
    if (!table_.specs[i].glob) continue;
    Glob g;
    g.config = i;
    g.pattern = std::make_unique<PathGlob>(table_.specs[i].path,
                                           table_.specs[i].exclude);
    g.first_slot = static_cast<uint32_t>(table_.size());
    for (size_t k = 0; k < table_.specs[i].max_files; ++k) {
      table_.Add(SourceSpec{}, SourceLabels{}, i, false);
    }
    globs_.push_back(std::move(g));
  }
}

SourceSupervisor::~SourceSupervisor() { Stop(); }

bool SourceSupervisor::Assign(Glob& g, const std::string& path, StartAt start,
                              uint32_t* slot) {
  if (followed_.count(path)) return false;
  const SourceSpec& glob = table_.specs[g.config];
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
  SourceSpec spec = glob;
  spec.glob = false;
  spec.url = path;
  spec.path = path;
  spec.file = path;
  spec.name = text::ValidUtf8(glob.name.empty() ? path : glob.name);
  if (fields.empty()) {
    spec.labels["file"] = text::ValidUtf8(path);
  } else {
    for (const auto& [k, v] : fields) spec.labels[k] = text::ValidUtf8(v);
  }
  SourceLabels labels;
  labels.name = spec.name;
  for (const auto& kv : spec.labels) labels.labels.push_back(kv);
  labels.file = text::ValidUtf8(path);
  table_.specs[i] = std::move(spec);
  table_.labels[i] = std::move(labels);
  start_[i] = start;
  followed_.insert(path);
  table_.Activate(i);
  *slot = i;
  return true;
}

void SourceSupervisor::ExpandGlobs(const std::set<std::string>& saved_urls,
                                   int64_t saved_at_ns) {
  for (Glob& g : globs_) {
    std::set<std::string> paths;
    for (auto& p : g.pattern->Expand()) paths.insert(std::move(p));
    for (const auto& url : saved_urls) {
      if (g.pattern->Matches(url, nullptr)) paths.insert(url);
    }
    for (const auto& path : paths) {
      StartAt start = options_.start_at;
      // Not saved and born since the save: all of it is new.
      if (saved_at_ns > 0 && !saved_urls.count(path) &&
          BirthNs(path) > saved_at_ns) {
        start = StartAt::kBeginning;
      }
      uint32_t slot = 0;
      Assign(g, path, start, &slot);
    }
    size_t n = g.used;
    Log(LogLevel::kInfo, "source " + table_.specs[g.config].url + ": " +
                             std::to_string(n) + " file(s) match");
  }
}

void SourceSupervisor::Adopt(std::unique_ptr<Producer> producer) {
  producers_.push_back(std::move(producer));
}

void SourceSupervisor::Start() {
  std::vector<SshSourceRef> ssh;
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
        ssh.push_back(SshSourceRef{&s, i, table_.status[i].get()});
        break;
      case SourceSpec::Kind::kSyslogUnix:
      case SourceSpec::Kind::kSyslogUdp:
        break;  // adopted: bound before (a bad socket path is exit 2)
    }
  }
  if (!ssh.empty()) {
    for (auto& p : MakeSshProducers(ssh, queue_, ProducerOpts(options_),
                                    SshOpts(options_))) {
      producers_.push_back(std::move(p));
    }
  }
  StartThreads();
}

std::vector<uint32_t> SourceSupervisor::Scan() {
  std::vector<uint32_t> added;
  if (stopping_) return added;
  for (Glob& g : globs_) {
    if (g.used >= table_.specs[g.config].max_files) continue;
    for (const auto& path : g.pattern->Expand(&followed_)) {
      uint32_t slot = 0;
      // It appeared while running: every line of it is new.
      if (!Assign(g, path, StartAt::kBeginning, &slot)) continue;
      added.push_back(slot);
      Log(LogLevel::kInfo, "source " + table_.specs[g.config].url +
                               ": following new file " + path);
      ProducerOptions po = ProducerOpts(options_);
      po.start_at = StartAt::kBeginning;
      producers_.push_back(MakeFileProducer(table_.specs[slot], slot,
                                            *table_.status[slot], queue_, po));
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
