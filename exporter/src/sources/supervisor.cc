#include "sources/supervisor.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <stdexcept>
#include <system_error>

#include "sources/file/rotated_files.h"
#include "sources/ssh/ssh_lister.h"
#include "sshtail/file_producer.h"
#include "sshtail/log.h"
#include "sshtail/rules.h"
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
  so.max_handshakes_per_host = o.ssh_max_handshakes_per_host;
  so.compression = o.ssh_compression;
  return so;
}

// ssh://authority of a glob's URL, then `path`.
std::string RemoteUrl(const std::string& glob_url, const std::string& path) {
  return glob_url.substr(0, glob_url.find('/', 6)) + EncodeUrlPath(path);
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

// Whether one of `saved`'s files is at `path` or among its rotated
// siblings.
bool LocallyThere(const std::string& path, const PositionSet& saved) {
  struct stat st {};
  FileId at;
  if (::stat(path.c_str(), &st) == 0) {
    at = FileId{static_cast<uint64_t>(st.st_dev),
                static_cast<uint64_t>(st.st_ino)};
  } else if (errno != ENOENT) {
    return true;  // cannot tell: the reader decides
  }
  std::vector<RotatedFile> rotated = ListRotated(path);
  for (const FilePosition& p : saved) {
    if (at.valid() && p.file == at) return true;
    for (const RotatedFile& r : rotated) {
      if (r.id == p.file) return true;
    }
  }
  return false;
}

}  // namespace

std::string SourceSupervisor::Key(const SourceSpec& s) {
  return s.kind == SourceSpec::Kind::kSsh
             ? "ssh " + SshConnectionKey(s) + s.path
             : "file " + s.path;
}

std::string SourceSupervisor::SpecKey(const SourceSpec& s) {
  std::string k = s.url + '\n' + s.name + '\n' + s.format + '\n' +
                  (s.sudo ? "sudo" : "") + '\n' + std::to_string(s.max_files);
  for (const auto& [n, v] : s.labels) k += '\n' + n + '=' + v;
  for (const auto& e : s.exclude) k += "\nexclude " + e;
  return k;
}

SourceSupervisor::SourceSupervisor(const Options& options, SourceTable& table,
                                   BatchQueue& queue)
    : options_(options),
      table_(table),
      queue_(queue),
      // Bounded: a file per slot, and as many again that went.
      ledger_(2 * (table.size() + options.max_slots)) {
  uint32_t configured = static_cast<uint32_t>(table_.size());
  for (uint32_t i = 0; i < configured; ++i) {
    const SourceSpec& s = table_.specs[i];
    configured_.push_back(i);
    if (s.glob) continue;
    if (s.kind == SourceSpec::Kind::kFile) local_paths_.insert(s.path);
    if (s.kind == SourceSpec::Kind::kFile || s.kind == SourceSpec::Kind::kSsh) {
      followed_.insert(Key(s));
    }
  }
  pool_begin_ = pool_next_ = configured;
  for (size_t k = 0; k < options.max_slots; ++k) {
    table_.Add(SourceSpec{}, SourceLabels{}, 0, SourceTable::State::kFree,
               /*with_status=*/false);
  }
  pool_end_ = static_cast<uint32_t>(table_.size());
  for (uint32_t i = 0; i < configured; ++i) {
    if (table_.specs[i].glob) AddGlob(i);
  }
}

void SourceSupervisor::AddGlob(uint32_t config) {
  const SourceSpec& s = table_.specs[config];
  Glob g;
  g.config = config;
  g.pattern = std::make_unique<PathGlob>(s.path, s.exclude);
  g.remote = s.kind == SourceSpec::Kind::kSsh;
  globs_.push_back(std::move(g));
}

SourceSupervisor::~SourceSupervisor() { Stop(); }

bool SourceSupervisor::Assign(Glob& g, const std::string& path, StartAt start,
                              uint32_t* slot) {
  const SourceSpec& glob = table_.specs[g.config];
  SourceSpec spec = glob;
  spec.glob = false;
  spec.path = path;
  if (followed_.count(Key(spec))) return false;
  if (free_.empty() && pool_next_ >= pool_end_) {
    if (!warned_pool_) {
      Log(LogLevel::kWarn, "source " + glob.url + ": no slot left (" +
                               std::to_string(options_.max_slots) +
                               " in use, --sources.max-slots); not following " +
                               path + " and later files");
      warned_pool_ = true;
    }
    return false;
  }
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
  uint32_t i = 0;
  TakeSlot(&i);
  ++g.used;
  g.slots.push_back(i);
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
  SourceLabels labels = LabelsOf(spec);
  followed_.insert(Key(spec));
  if (!g.remote) local_paths_.insert(path);
  table_.specs[i] = std::move(spec);
  table_.labels[i] = std::move(labels);
  table_.config_index[i] = g.config;
  table_.EnsureStatus(i);
  start_[i] = start;
  Carry(i);
  table_.Activate(i);
  ledger_.Erase(table_.specs[i].url);
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
      std::string path;
      if (Matched(g, url, &path)) {
        paths.insert(path);
        saved.insert(path);
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
  Launch(std::move(producer), nullptr);
}

Producer* SourceSupervisor::Launch(std::unique_ptr<Producer> p,
                                   SourceStatus* releases) {
  auto w = std::make_unique<Worker>();
  w->producer = std::move(p);
  w->releases = releases;
  Producer* raw = w->producer.get();
  worker_of_[raw] = w.get();
  workers_.push_back(std::move(w));
  return raw;
}

void SourceSupervisor::Halt(Producer* p) {
  p->RequestStop();
  if (auto it = worker_of_.find(p); it != worker_of_.end()) {
    it->second->stopped = true;
  }
}

bool SourceSupervisor::TakeSlot(uint32_t* slot) {
  if (!free_.empty()) {
    *slot = *free_.begin();
    free_.erase(free_.begin());
    return true;
  }
  if (pool_next_ >= pool_end_) return false;
  *slot = pool_next_++;
  return true;
}

std::vector<uint32_t> SourceSupervisor::NextSlots(size_t n) const {
  std::vector<uint32_t> out;
  for (auto it = free_.begin(); it != free_.end() && out.size() < n; ++it) {
    out.push_back(*it);
  }
  for (uint32_t i = pool_next_; i < pool_end_ && out.size() < n; ++i) {
    out.push_back(i);
  }
  return out;
}

void SourceSupervisor::Reap() {
  for (auto it = workers_.begin(); it != workers_.end();) {
    Worker& w = **it;
    bool over = w.stopped && (w.started ? w.finished.load() : true);
    if (!over) {
      ++it;
      continue;
    }
    if (w.started) w.thread.join();
    // Never run: nothing of it was pushed. (A connection that never ran
    // keeps its slots retired: it never says it let them go.)
    if (!w.started && w.releases) w.releases->released.store(true);
    worker_of_.erase(w.producer.get());
    it = workers_.erase(it);
  }
  std::erase_if(draining_, [&](uint32_t slot) {
    const SourceStatus* st = table_.status[slot].get();
    if (st && !st->released.load()) return false;
    if (!queue_.Idle(slot)) return false;
    table_.Free(slot);
    free_.insert(slot);
    ++freed_;
    return true;
  });
}

void SourceSupervisor::StartSsh(uint32_t slot, bool from_start) {
  const SourceSpec& s = table_.specs[slot];
  SshSourceRef ref{&s, slot, table_.status[slot].get(), from_start};
  auto& conns = ssh_[SshConnectionKey(s)];
  size_t per =
      static_cast<size_t>(std::max(1, options_.ssh_files_per_connection));
  for (auto& [conn, n] : conns) {
    if (n < per) {
      conn->AddSource(ref);
      ++n;
      ssh_of_[slot] = conn;
      return;
    }
  }
  auto made = MakeSshProducers({ref}, queue_, ProducerOpts(options_),
                               SshOpts(options_));
  SshProducer* conn = made.front().get();
  conns.emplace_back(conn, 1);
  ssh_of_[slot] = conn;
  Launch(std::move(made.front()), nullptr);
}

void SourceSupervisor::StartReader(uint32_t slot, StartAt start) {
  const SourceSpec& s = table_.specs[slot];
  ProducerOptions po = ProducerOpts(options_);
  po.start_at = start;
  switch (s.kind) {
    case SourceSpec::Kind::kFile:
      readers_[slot] =
          Launch(MakeFileProducer(s, slot, *table_.status[slot], queue_, po),
                 table_.status[slot].get());
      break;
    case SourceSpec::Kind::kStdin:
      readers_[slot] =
          Launch(MakeStdinProducer(slot, *table_.status[slot], queue_, po),
                 table_.status[slot].get());
      break;
    case SourceSpec::Kind::kSsh:
      StartSsh(slot, start == StartAt::kBeginning);
      break;
    case SourceSpec::Kind::kSyslogUnix:
    case SourceSpec::Kind::kSyslogUdp:
      break;  // adopted: bound before (a bad socket path is exit 2)
  }
}

void SourceSupervisor::StopReader(uint32_t slot) {
  const SourceSpec& s = table_.specs[slot];
  followed_.erase(Key(s));
  if (s.kind == SourceSpec::Kind::kFile) local_paths_.erase(s.path);
  start_.erase(slot);
  if (slot >= pool_begin_ && slot < pool_end_) draining_.push_back(slot);
  if (auto it = readers_.find(slot); it != readers_.end()) {
    Halt(it->second);  // its thread ends soon; Reap joins it
    readers_.erase(it);
  }
  auto it = ssh_of_.find(slot);
  if (it == ssh_of_.end()) return;
  SshProducer* conn = it->second;
  ssh_of_.erase(it);
  conn->RemoveSource(slot);
  auto& conns = ssh_[SshConnectionKey(s)];
  for (auto c = conns.begin(); c != conns.end(); ++c) {
    if (c->first != conn) continue;
    if (--c->second == 0) {
      Halt(conn);  // its last file: the session closes
      conns.erase(c);
    }
    break;
  }
}

void SourceSupervisor::Start() {
  for (uint32_t i = 0; i < table_.size(); ++i) {
    if (!table_.active(i)) continue;
    auto it = start_.find(i);
    StartReader(i, it != start_.end() ? it->second : options_.start_at);
  }
  for (size_t k = 0; k < globs_.size(); ++k) StartLister(k);
  StartThreads();
}

void SourceSupervisor::StartLister(size_t k) {
  Glob& g = globs_[k];
  if (!g.remote || g.retired || g.lister) return;
  const SourceSpec& glob = table_.specs[g.config];
  // A round holds at most twice the files the glob may follow.
  SourceStatus* st = table_.status[g.config].get();
  g.lister = Launch(MakeSshLister(glob, SshOpts(options_), 2 * glob.max_files,
                                  st, options_.once,
                                  [this, k](std::vector<std::string> paths) {
                                    Listed(k, std::move(paths));
                                  }),
                    st);
}

void SourceSupervisor::Carry(uint32_t slot) {
  const SourceSpec& s = table_.specs[slot];
  auto p = ledger_.Find(s.url);
  if (!p) return;
  // A local file none of whose saved files is at its path or among its
  // rotated siblings any more was read to its end (a glob retires a file
  // only once its path is gone and its reader drained it): the file there
  // now is another one, new, not the rest of a lost one.
  if (s.kind == SourceSpec::Kind::kFile && !LocallyThere(s.path, *p)) {
    ledger_.Erase(s.url);
    return;
  }
  table_.status[slot]->positions.Restore(std::move(*p));
}

void SourceSupervisor::KeepPositions(
    std::map<std::string, SourceState> positions) {
  for (auto& [url, st] : positions) {
    ledger_.Hold(url, st.name, std::move(st.positions));
  }
}

bool SourceSupervisor::Covers(const std::string& url,
                              const std::vector<SourceSpec>* desired) const {
  SourceSpec s;
  try {
    s = ParseSourceUrl(url);
  } catch (const std::invalid_argument&) {
    return false;
  }
  if (s.glob) return false;
  auto covers = [&](const SourceSpec& c) {
    if (c.kind != s.kind) return false;
    if (!c.glob) return c.url == url || Key(c) == Key(s);
    if (s.kind == SourceSpec::Kind::kSsh &&
        SshConnectionKey(c) != SshConnectionKey(s)) {
      return false;
    }
    return PathGlob(c.path, c.exclude).Matches(s.path, nullptr);
  };
  if (desired) {
    return std::any_of(desired->begin(), desired->end(), covers);
  }
  return std::any_of(configured_.begin(), configured_.end(),
                     [&](uint32_t slot) { return covers(table_.specs[slot]); });
}

void SourceSupervisor::RetireGone(Glob& g, const std::set<std::string>* present,
                                  std::vector<uint32_t>* retired) {
  auto now = std::chrono::steady_clock::now();
  for (auto it = g.slots.begin(); it != g.slots.end();) {
    uint32_t f = *it;
    const std::string& path = table_.specs[f].path;
    struct stat st {};
    bool there = present ? present->count(path) > 0
                         : ::stat(path.c_str(), &st) == 0 || errno != ENOENT;
    if (!table_.active(f) || there) {
      gone_since_.erase(f);
      ++it;
      continue;
    }
    auto since = gone_since_.try_emplace(f, now).first->second;
    if (now - since < options_.retire_after) {
      ++it;
      continue;
    }
    gone_since_.erase(f);
    Log(LogLevel::kInfo, "source " + table_.specs[g.config].url + ": " + path +
                             " is gone; no longer followed, its series go");
    table_.Set(f, SourceTable::State::kRetired);
    StopReader(f);
    --g.used;
    g.warned_full = false;
    retired->push_back(f);
    it = g.slots.erase(it);
  }
}

SourcePlan SourceSupervisor::Plan(
    const std::vector<SourceSpec>& desired) const {
  SourcePlan plan;
  std::map<std::string, uint32_t> now;
  for (uint32_t slot : configured_) now[SpecKey(table_.specs[slot])] = slot;
  std::set<std::string> wanted;
  std::vector<const SourceSpec*> adding;
  for (const auto& spec : desired) {
    std::string k = SpecKey(spec);
    wanted.insert(k);
    if (!now.count(k)) adding.push_back(&spec);
  }
  std::vector<uint32_t> slots = NextSlots(adding.size());
  if (slots.size() < adding.size()) {
    throw NoSlotError("no slot left for source '" + adding[slots.size()]->url +
                      "' (" + std::to_string(options_.max_slots) +
                      " in use, --sources.max-slots)");
  }
  for (size_t i = 0; i < adding.size(); ++i) {
    plan.add.emplace_back(slots[i], *adding[i]);
  }
  for (const auto& [k, slot] : now) {
    if (!wanted.count(k)) plan.remove.push_back(slot);
  }
  // A socket is bound at start (a bad one is exit 2), stdin read once.
  auto fixed = [](const SourceSpec& s) {
    return s.kind != SourceSpec::Kind::kFile &&
           s.kind != SourceSpec::Kind::kSsh;
  };
  for (uint32_t slot : plan.remove) {
    if (fixed(table_.specs[slot])) {
      throw ConfigError("source '" + table_.specs[slot].url +
                        "' changed or went: a syslog or stdin source needs a "
                        "restart");
    }
  }
  for (const auto& [slot, spec] : plan.add) {
    if (fixed(spec)) {
      throw ConfigError("new source '" + spec.url +
                        "': a syslog or stdin source needs a restart");
    }
  }
  return plan;
}

size_t SourceSupervisor::RoomAfter(const SourcePlan& removal) const {
  auto pooled = [&](uint32_t slot) {
    return slot >= pool_begin_ && slot < pool_end_;
  };
  size_t room = free_.size() + (pool_end_ - pool_next_) + draining_.size();
  for (uint32_t slot : removal.remove) {
    if (pooled(slot)) ++room;
    for (const Glob& g : globs_) {
      if (g.config != slot || g.retired) continue;
      for (uint32_t f : g.slots) room += pooled(f) && table_.active(f);
    }
  }
  return room;
}

std::vector<SourceSpec> SourceSupervisor::Running(
    const std::vector<SourceSpec>& desired) const {
  std::set<std::string> now;
  for (uint32_t slot : configured_) now.insert(SpecKey(table_.specs[slot]));
  std::vector<SourceSpec> out;
  for (const auto& spec : desired) {
    if (now.count(SpecKey(spec))) out.push_back(spec);
  }
  return out;
}

std::vector<SourceSpec> SourceSupervisor::ConfiguredBySlot(
    const SourcePlan& plan) const {
  std::set<uint32_t> gone(plan.remove.begin(), plan.remove.end());
  size_t n = 0;
  for (uint32_t slot : configured_) n = std::max<size_t>(n, slot + 1);
  for (const auto& [slot, spec] : plan.add) n = std::max<size_t>(n, slot + 1);
  std::vector<SourceSpec> out(n);
  for (uint32_t slot : configured_) {
    if (!gone.count(slot)) out[slot] = table_.specs[slot];
  }
  for (const auto& [slot, spec] : plan.add) out[slot] = spec;
  return out;
}

std::vector<uint32_t> SourceSupervisor::Retire(
    const std::vector<uint32_t>& slots) {
  std::vector<uint32_t> out;
  for (uint32_t slot : slots) {
    std::erase(configured_, slot);
    if (table_.specs[slot].glob) {
      for (Glob& g : globs_) {
        if (g.config != slot || g.retired) continue;
        g.retired = true;
        if (g.lister) Halt(g.lister);
        g.lister = nullptr;
        for (uint32_t f : g.slots) {
          if (!table_.active(f)) continue;
          table_.Set(f, SourceTable::State::kRetired);
          StopReader(f);
          out.push_back(f);
        }
      }
      table_.Set(slot, SourceTable::State::kRetired);
      if (slot >= pool_begin_ && slot < pool_end_) draining_.push_back(slot);
      // Local: nothing of its own reads it. Remote: its lister does.
      if (table_.specs[slot].kind != SourceSpec::Kind::kSsh) {
        table_.status[slot]->released.store(true);
      }
      out.push_back(slot);
      continue;
    }
    if (waiting_.erase(slot)) {
      // Never started: nothing of it to stop, its slot is free at once.
      table_.Set(slot, SourceTable::State::kRetired);
      table_.status[slot]->released.store(true);
      if (slot >= pool_begin_ && slot < pool_end_) draining_.push_back(slot);
      out.push_back(slot);
      continue;
    }
    if (!table_.active(slot)) continue;
    table_.Set(slot, SourceTable::State::kRetired);
    StopReader(slot);
    out.push_back(slot);
  }
  return out;
}

std::vector<uint32_t> SourceSupervisor::Add(
    const SourcePlan& plan, std::map<std::string, SourceState> carried,
    const std::vector<SourceSpec>* desired) {
  // Merged, never replaced: a position carried by an earlier step (a
  // reload applied in two, a glob not listed yet) stays until taken.
  KeepPositions(std::move(carried));
  std::vector<uint32_t> out;
  // Every slot of the plan first: a glob's files take theirs below.
  for (const auto& [slot, spec] : plan.add) {
    uint32_t taken = 0;
    if (!TakeSlot(&taken) || taken != slot) {
      throw std::logic_error("SourcePlan out of date");
    }
  }
  for (const auto& [slot, spec] : plan.add) {
    table_.specs[slot] = spec;
    table_.labels[slot] = LabelsOf(spec);
    table_.config_index[slot] = slot;
    table_.EnsureStatus(slot);
    configured_.push_back(slot);
    if (spec.glob) {
      table_.Set(slot, SourceTable::State::kGlob);
      AddGlob(slot);
      Glob& g = globs_.back();
      if (!g.remote) {
        for (const auto& path : g.pattern->Expand(&local_paths_)) {
          uint32_t f = 0;
          if (!Assign(g, path, options_.start_at, &f)) continue;
          StartReader(f, options_.start_at);
          out.push_back(f);
        }
      } else {
        // Files of it with a position (relabelled, handed over): followed
        // now, as at start, not when the host first answers, so their
        // values and positions have a source from the start.
        for (const auto& path : HeldPaths(g)) {
          uint32_t f = 0;
          if (!Assign(g, path, options_.start_at, &f)) continue;
          StartReader(f, options_.start_at);
          out.push_back(f);
        }
        g.saved = g.saved || !g.slots.empty();
      }
      StartLister(globs_.size() - 1);
      continue;
    }
    if (followed_.count(Key(spec))) {
      // A glob follows that file already: this entry starts once the
      // glob lets it go (StartWaiting).
      Log(LogLevel::kWarn, "source " + spec.url +
                               " is followed already (by a glob); not "
                               "following it twice while it is");
      waiting_.insert(slot);
      continue;
    }
    Follow(slot);
    out.push_back(slot);
  }
  for (uint32_t slot : StartWaiting()) out.push_back(slot);
  // What no wanted source could take up again is forgotten: a removed
  // source added back later is new, as README says.
  ledger_.Prune([&](const std::string& url) { return Covers(url, desired); });
  StartThreads();
  return out;
}

bool SourceSupervisor::Matched(const Glob& g, const std::string& url,
                               std::string* path) const {
  const SourceSpec& glob = table_.specs[g.config];
  SourceSpec s;
  try {
    s = ParseSourceUrl(url);
  } catch (const std::invalid_argument&) {
    return false;
  }
  if (s.kind != glob.kind || s.glob ||
      (g.remote && SshConnectionKey(s) != SshConnectionKey(glob)) ||
      !g.pattern->Matches(s.path, nullptr)) {
    return false;
  }
  *path = s.path;
  return true;
}

std::vector<std::string> SourceSupervisor::HeldPaths(const Glob& g) const {
  std::vector<std::string> out;
  for (const auto& [url, st] : ledger_.Held()) {
    std::string path;
    if (Matched(g, url, &path)) out.push_back(std::move(path));
  }
  return out;
}

std::vector<uint32_t> SourceSupervisor::StartWaiting() {
  std::vector<uint32_t> out;
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    uint32_t slot = *it;
    bool configured = std::find(configured_.begin(), configured_.end(), slot) !=
                      configured_.end();
    if (configured && followed_.count(Key(table_.specs[slot]))) {
      ++it;
      continue;
    }
    it = waiting_.erase(it);
    if (!configured) continue;
    const SourceSpec& spec = table_.specs[slot];
    Log(LogLevel::kInfo, "source " + spec.url +
                             ": no glob follows its file any more; "
                             "following it");
    Follow(slot);
    out.push_back(slot);
  }
  return out;
}

void SourceSupervisor::Follow(uint32_t slot) {
  const SourceSpec& spec = table_.specs[slot];
  followed_.insert(Key(spec));
  if (spec.kind == SourceSpec::Kind::kFile) local_paths_.insert(spec.path);
  Carry(slot);
  table_.Activate(slot);
  ledger_.Erase(spec.url);  // after Activate: a save finds it somewhere
  StartReader(slot, options_.start_at);
}

void SourceSupervisor::Listed(size_t k, std::vector<std::string> paths) {
  std::lock_guard lock(listed_mutex_);
  listed_[k] = std::move(paths);
}

std::vector<uint32_t> SourceSupervisor::Scan(std::vector<uint32_t>* retired) {
  std::vector<uint32_t> added;
  if (stopping_) return added;
  Reap();
  std::map<size_t, std::vector<std::string>> listed;
  {
    std::lock_guard lock(listed_mutex_);
    listed.swap(listed_);
  }
  // Local files are stat'ed for retirement at most every 10 s (a tenth of
  // a core's percent at 1,000 files every second).
  auto now = std::chrono::steady_clock::now();
  bool check_local =
      retired && options_.retire_after.count() > 0 &&
      now - last_local_check_ >=
          std::min<std::chrono::milliseconds>(std::chrono::seconds(10),
                                              options_.retire_after / 2);
  if (check_local) last_local_check_ = now;
  for (size_t k = 0; k < globs_.size(); ++k) {
    Glob& g = globs_[k];
    const SourceSpec& glob = table_.specs[g.config];
    if (g.retired) continue;
    std::vector<std::string> paths;
    bool first = false;
    if (g.remote) {
      auto it = listed.find(k);
      if (it == listed.end()) continue;
      // A round cut at its bound may lack files that are there.
      bool whole = it->second.size() < 2 * glob.max_files;
      for (auto& p : it->second) {
        if (PlausiblePath(p) && g.pattern->Matches(p, nullptr)) {
          paths.push_back(std::move(p));
        }
      }
      first = g.rounds++ == 0;
      if (retired && whole && options_.retire_after.count() > 0) {
        std::set<std::string> present(paths.begin(), paths.end());
        RetireGone(g, &present, retired);
      }
    } else {
      if (check_local) RetireGone(g, nullptr, retired);
      if (g.used < glob.max_files) paths = g.pattern->Expand(&local_paths_);
    }
    if (g.used >= glob.max_files) continue;
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
      StartReader(slot, start);
    }
    if (first) {
      Log(LogLevel::kInfo, "source " + glob.url + ": " +
                               std::to_string(g.used) + " file(s) match");
    }
  }
  for (uint32_t slot : StartWaiting()) added.push_back(slot);
  StartThreads();
  return added;
}

// A thread that cannot be created (a container's pids limit) must not end
// the process: the rest are retried by Scan, and run inline by --once.
void SourceSupervisor::StartThreads() {
  for (auto& wp : workers_) {
    Worker& w = *wp;
    if (w.started || w.stopped) continue;
    try {
      w.thread = std::thread([&w] {
        w.producer->Run();
        if (w.releases) w.releases->released.store(true);
        w.finished.store(true);
      });
    } catch (const std::system_error& e) {
      if (!thread_failed_) {
        Log(LogLevel::kError, "cannot start a reader thread (" +
                                  std::string(e.what()) +
                                  "); the readers waiting are retried");
      }
      thread_failed_ = true;
      return;
    }
    w.started = true;
  }
  if (thread_failed_) Log(LogLevel::kInfo, "every reader thread started");
  thread_failed_ = false;
}

void SourceSupervisor::Stop() {
  stopping_ = true;
  for (auto& w : workers_) w->producer->RequestStop();
  for (auto& w : workers_) {
    if (w->thread.joinable()) w->thread.join();
  }
}

void SourceSupervisor::RunToEnd() {
  // A remote glob's files are known after its lister's one round; they
  // get connections of their own (one of the host's may be done already).
  bool remote = false;
  for (Glob& g : globs_) {
    if (!g.lister) continue;
    remote = true;
    Worker* w = worker_of_[g.lister];
    if (w->thread.joinable()) w->thread.join();
    if (!w->started) {
      w->started = true;
      w->producer->Run();
    }
  }
  if (remote) {
    ssh_.clear();
    Scan();
  }
  // By index: nothing is added meanwhile, but be plain about it.
  for (size_t i = 0; i < workers_.size(); ++i) {
    if (workers_[i]->thread.joinable()) workers_[i]->thread.join();
  }
  // Readers without a thread of their own run here, one after the other.
  for (auto& w : workers_) {
    if (!w->started) {
      w->started = true;
      w->producer->Run();
    }
  }
}

}  // namespace sshtail
