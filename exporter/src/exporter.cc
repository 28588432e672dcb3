#include "sshtail/exporter.h"

#include <malloc.h>
#include <prometheus/metric_family.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <system_error>

#include "config/inventory.h"
#include "exporter_impl.h"
#include "metrics/self_metrics.h"
#include "sources/path_glob.h"
#include "sources/source_table.h"
#include "sources/supervisor.h"
#include "sshtail/backfill.h"
#include "sshtail/batch_queue.h"
#include "sshtail/engine.h"
#include "sshtail/file_producer.h"
#include "sshtail/format_detect.h"
#include "sshtail/log.h"
#include "sshtail/metric_store.h"
#include "sshtail/rules.h"
#include "sshtail/state_file.h"
#include "sshtail/syslog_producer.h"
#include "sshtail/text_format.h"
#include "sshtail/web_server.h"
#include "web/web_config.h"

namespace sshtail {

RuleContext ContextFor(const Options& o) {
  RuleContext ctx;
  std::vector<std::string> reserved = {"source"};
  auto reserve = [&](const std::string& k) {
    if (std::find(reserved.begin(), reserved.end(), k) == reserved.end()) {
      reserved.push_back(k);
    }
  };
  for (const auto& s : o.sources) {
    for (const auto& kv : s.labels) reserve(kv.first);
    if (!s.glob) continue;
    // A glob's matches are told apart by `file` or by its fields.
    PathGlob g(s.path);
    if (g.fields().empty()) reserve("file");
    for (const auto& f : g.fields()) reserve(f);
  }
  ctx.reserved_labels = reserved;
  return ctx;
}

// Idle series are looked for at half the shortest ttl, 1 to 10 s apart.
std::chrono::milliseconds ExpireInterval(const RuleSetDef& defs) {
  std::chrono::milliseconds every(10000);
  for (const auto& r : defs.rules) {
    for (const auto& m : r.metrics) {
      if (m.ttl.count() > 0) {
        every = std::min<std::chrono::milliseconds>(every, m.ttl / 2);
      }
    }
  }
  return std::max(every, std::chrono::milliseconds(1000));
}

namespace {

std::string HtmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

}  // namespace

std::unique_ptr<InventoryWatch> Watch(const Options& o) {
  std::vector<std::string> files = o.sources_files;
  if (!o.config_file.empty()) files.push_back(o.config_file);
  if (files.empty()) return nullptr;
  auto w = std::make_unique<InventoryWatch>(std::move(files));
  w->Changed();  // what was read now
  return w;
}

// The configured sources and the inventory's targets, named; the
// inventory's SSH targets take --ssh.sudo as configured ones do.
std::vector<SourceSpec> WithInventory(const Options& o,
                                      std::vector<SourceSpec> sources,
                                      bool at_start) {
  // At start every source takes a slot: more than --sources.max-slots are
  // refused (exit 2) before any is made, and reading stops there.
  // A reload's can never exceed the start's slots and the pool together.
  size_t limit = at_start ? o.max_slots : 2 * o.max_slots;
  if (sources.size() > limit) {
    throw ConfigError(std::to_string(sources.size()) +
                      " sources, more than --sources.max-slots " +
                      std::to_string(o.max_slots));
  }
  if (o.sources_files.empty()) return sources;
  for (auto& s : LoadInventory(o.sources_files, limit - sources.size())) {
    if (s.kind == SourceSpec::Kind::kSsh && o.ssh_sudo) s.sudo = true;
    sources.push_back(std::move(s));
  }
  try {
    ResolveNames(sources);
  } catch (const std::invalid_argument& e) {
    throw ConfigError(e.what());
  }
  return sources;
}

size_t CheckConfig(const Options& given) {
  CheckShardIndex(given);
  Options options = given;
  options.sources = WithInventory(given, given.sources, !given.once);
  // Compiled as for matching, so what passes here also loads.
  FormatDefs defs = LoadFormatDefs(options, ContextFor(options));
  FormatRules::Build(defs, nullptr);
  // --output openmetrics also needs every rule's time.
  if (options.output == "openmetrics") FormatRules::Build(defs, nullptr, true);
  if (!options.web_config_file.empty())
    WebConfig::Load(options.web_config_file);
  return options.sources.size();
}

Exporter::Impl::Impl(Options o)
    : static_sources(o.sources),
      options(Loaded(std::move(o))),
      // The state file needs each source's batches in order, one at a
      // time (see BatchQueue); without it any consumer takes any batch.
      // So does handing a host over to another replica.
      queue(options.queue_batches,
            (!options.state_file.empty() || options.shard_count > 1) &&
                !options.once),
      self(table, queue),
      store(self.overflow(), options.max_series_total) {
  ClaimAtStart();
  for (size_t i = 0; i < options.sources.size(); ++i) {
    const SourceSpec& spec = options.sources[i];
    table.Add(
        spec, LabelsOf(spec), static_cast<uint32_t>(i),
        spec.glob ? SourceTable::State::kGlob : SourceTable::State::kActive);
  }
  if (!options.once) watch = Watch(options);
  supervisor = std::make_unique<SourceSupervisor>(options, table, queue);
  // SelfMetrics was built before `table` was filled: it keeps a reference
  // and reads it at scrape time only.
  FormatDefs defs = LoadFormatDefs(options, ContextFor(options));
  if (!options.web_config_file.empty()) {
    WebConfig::Load(options.web_config_file);  // fail early, exit 2
  }
  FormatRules::Build(defs, nullptr);  // fails before the store changes
  std::vector<std::string> names;
  for (const auto& spec : options.sources) {
    if (!spec.glob) names.push_back(spec.name);
  }
  store.SetSources(std::move(names));
  store.Apply(defs.all);
  rules = FormatRules::Build(defs, &store);
  // --output openmetrics: the same rules, each with its time field (a
  // rule without one is a configuration error, exit 2).
  if (options.once && options.output == "openmetrics") {
    backfill_rules = FormatRules::Build(defs, &store, true);
  }
  expire_every = ExpireInterval(defs.all);
  // --once reads every source from its start and must not move the
  // daemon's positions (it may share the config file).
  SavedState saved;
  int64_t saved_at_ns = 0;
  if (!options.positions_file.empty() && !options.once) {
    keep_values = !options.state_file.empty();
    StateFile::CheckPath(keep_values ? "--state-file" : "--positions-file",
                         options.positions_file);  // exit 2
    // Both keep the generation they replace as FILE.prev, for a resume
    // when FILE is damaged.
    positions = std::make_unique<PositionsFile>(options.positions_file, true);
    state_file = std::make_unique<StateFile>(options.positions_file, true);
    std::string problem;
    saved = state_file->Load(&problem);
    // When it was saved: files rotated after that hold only new lines.
    saved_at_ns = saved.saved_at_ns;
    self.StateFileLoaded(saved.set_aside, saved.from_previous);
    if (!problem.empty()) {
      Log(LogLevel::kWarn,
          "state file " + options.positions_file + " not used: " + problem);
    }
  }
  // A host another replica followed after this one's own save resumes
  // where that one left it, values and all.
  SavedState handed;
  std::map<std::string, int64_t> handed_at;
  if (shard) {
    handed = HandedOver(start_claim, &saved, saved_at_ns, &handed_at);
    DropSources(&saved, handed);
  }
  std::set<std::string> saved_urls;
  for (const auto& kv : saved.sources) {
    if (!Elsewhere(kv.first, kv.second.positions)) saved_urls.insert(kv.first);
  }
  for (const auto& kv : handed.sources) saved_urls.insert(kv.first);
  supervisor->ExpandGlobs(saved_urls, saved.sources.empty() ? 0 : saved_at_ns);
  for (size_t i = 0; i < table.size(); ++i) {
    if (!table.active(i)) continue;
    const std::string& url = table.specs[i].url;
    if (auto it = handed.sources.find(url); it != handed.sources.end()) {
      table.status[i]->positions.Restore(it->second.positions, handed_at[url]);
    } else if (auto own = saved.sources.find(url); own != saved.sources.end()) {
      table.status[i]->positions.Restore(own->second.positions, saved_at_ns);
    }
  }
  HoldUnclaimed(saved, handed);
  if (keep_values) RestoreValues(saved, options.positions_file);
  if (!handed.sources.empty()) {
    RestoreValues(handed, "the shard directory " + options.shard_dir);
  }
  // Every source's counters exist from the start, at 0.
  for (uint32_t i = 0; i < table.size(); ++i) {
    if (table.active(i)) self.counters(i);
  }
  BindSyslogSources();
  std::vector<SourceLabels> known;
  for (size_t i = 0; i < table.size(); ++i) {
    known.push_back(table.active(i) ? table.labels[i] : SourceLabels{});
  }
  detector = std::make_unique<FormatDetector>(table.config_index, known);
}

void Exporter::Impl::BindSyslogSources() {
  std::vector<uint32_t> syslog;
  for (uint32_t i = 0; i < options.sources.size(); ++i) {
    auto kind = options.sources[i].kind;
    if (kind == SourceSpec::Kind::kSyslogUnix ||
        kind == SourceSpec::Kind::kSyslogUdp) {
      syslog.push_back(i);
    }
  }
  if (syslog.empty()) return;
  if (options.once) {
    throw std::invalid_argument("--once cannot read syslog source '" +
                                options.sources[syslog[0]].url +
                                "': a socket has no end");
  }
  // Sender hostnames may not take a configured source's name.
  std::vector<std::string> configured;
  for (const auto& spec : options.sources) configured.push_back(spec.name);
  for (uint32_t i = 0; i < table.size(); ++i) {
    if (table.active(i)) configured.push_back(table.labels[i].name);
  }
  auto names = std::make_shared<SyslogNames>(configured);
  syslog_names = names;
  std::vector<std::vector<SyslogHostSlot>> slots(syslog.size());
  for (size_t k = 0; k < syslog.size(); ++k) {
    for (size_t h = 0; h < kSyslogMaxHosts; ++h) {
      // Its static labels and its format; the name comes with a sender.
      uint32_t slot = table.Add(table.specs[syslog[k]], table.labels[syslog[k]],
                                syslog[k], SourceTable::State::kFree);
      slots[k].push_back(SyslogHostSlot{slot, nullptr, nullptr});
    }
  }
  for (size_t k = 0; k < syslog.size(); ++k) {
    for (auto& slot : slots[k]) {
      slot.status = table.status[slot.index].get();
      slot.name = &table.labels[slot.index].name;
    }
    uint32_t i = syslog[k];
    ProducerOptions po;
    po.max_line_bytes = options.max_line_bytes;
    supervisor->Adopt(MakeSyslogProducer(options.sources[i], i,
                                         *table.status[i], std::move(slots[k]),
                                         names, queue, po));
  }
}

void Exporter::Impl::StartConsumers() {
  int n = options.consumers;
  if (n <= 0) {
    n = static_cast<int>(std::thread::hardware_concurrency());
    n = std::clamp(n, 1, 4);
  }
  for (int i = 0; i < n; ++i) {
    try {
      consumers.emplace_back([this] { ConsumerLoop(); });
    } catch (const std::system_error& e) {
      // A pids limit: run with the parsers we have.
      Log(LogLevel::kWarn, "cannot start parser thread " +
                               std::to_string(i + 1) + ": " + e.what());
      break;
    }
  }
  if (consumers.empty()) {
    throw std::runtime_error("cannot start any parser thread");
  }
}

void Exporter::Impl::ConsumerLoop() {
  // Parsers yield to the web threads (a scrape must answer quickly while
  // parsing saturates the CPUs) and to the readers; nice 5 is a 3:1 share.
  setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), 5);
  Evaluator eval(store, table.labels);
  while (BatchPtr b = queue.Pop()) {
    {
      // Counted and committed under one read lock: under the write lock
      // (a state snapshot) every batch is either wholly in the values and
      // the committed positions, or in neither.
      auto lock = store.ReadLock();
      if (table.state(b->source) == SourceTable::State::kRetired) {
        // Removed by a reload (its series are gone): not counted.
        queue.Finished(b->source);
        continue;
      }
      std::shared_ptr<const FormatRules> r = rules;
      uint64_t unmatched =
          detector->Process(eval, *b, r, table.labels[b->source]);
      const SourceCounters& c = self.counters(b->source);
      if (b->lines) c.lines->Increment(b->lines);
      if (unmatched) c.unmatched->Increment(static_cast<double>(unmatched));
      if (b->raw_bytes) {
        c.bytes->Increment(static_cast<double>(b->raw_bytes));
      }
      if (b->too_long) c.too_long->Increment(b->too_long);
      if (b->seq) table.status[b->source]->positions.Done(b->seq);
    }
    queue.Finished(b->source);
  }
}

void Exporter::Impl::StopAll() {
  {
    std::lock_guard lock(reload_mutex);
    supervisor->Stop();
  }
  queue.Close();
  for (auto& t : consumers) t.join();
  consumers.clear();
  SavePositions();
  // Every line read is counted now: the next follower of each host (this
  // replica restarted, or another after a rescale) resumes exactly here.
  std::lock_guard lock(reload_mutex);
  HandOverAll();
}

bool Exporter::Impl::Ready() const {
  auto table_lock = table.ReadLock();
  for (size_t i = 0; i < table.size(); ++i) {
    if (table.active(i) && !table.status[i]->connected_once.load()) {
      return false;
    }
  }
  return true;
}

int Exporter::Impl::Unread() const {
  for (size_t i = 0; i < table.size(); ++i) {
    // A remote glob whose host could not be listed is unread too.
    bool listed = table.state(i) == SourceTable::State::kGlob &&
                  table.specs[i].kind == SourceSpec::Kind::kSsh;
    if ((table.active(i) || listed) &&
        !table.status[i]->connected_once.load()) {
      Log(LogLevel::kError,
          "source " + (listed ? table.specs[i].url : table.specs[i].name) +
              " could not be read");
      return 1;
    }
  }
  return 0;
}

std::string Exporter::Impl::LandingPage() const {
  std::string html =
      "<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
      "<title>sshtail_exporter</title></head><body>"
      "<h1>sshtail_exporter</h1><p>Version " +
      std::string(Version()) + "</p><ul><li><a href=\"" +
      HtmlEscape(options.telemetry_path) +
      "\">Metrics</a></li><li><a href=\"/-/healthy\">Health</a></li>"
      "<li><a href=\"/-/ready\">Readiness</a></li></ul><h2>Sources</h2>"
      "<table><tr><th>source</th><th>url</th><th>up</th></tr>";
  auto table_lock = table.ReadLock();
  for (size_t i = 0; i < table.size(); ++i) {
    if (!table.active(i)) continue;
    html += "<tr><td>" + HtmlEscape(table.specs[i].name) + "</td><td>" +
            HtmlEscape(table.specs[i].url) + "</td><td>" +
            (table.status[i]->up.load() ? "up" : "down") + "</td></tr>";
  }
  html += "</table></body></html>\n";
  return html;
}

Exporter::Exporter(Options options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

Exporter::~Exporter() = default;

void Exporter::Start() {
  impl_->StartConsumers();
  impl_->supervisor->Start();
}

void Exporter::Stop() { impl_->StopAll(); }

std::string Exporter::Exposition() const { return impl_->Exposition(); }

bool Exporter::Reload(std::string* error) { return impl_->Reload(error); }

bool Exporter::Ready() const { return impl_->Ready(); }

// About 100 GiB of text: past this, the input's times are surely wrong.
constexpr uint64_t kMaxBackfillSamples = 1000000000;

int Exporter::RunOnce(std::ostream& out) {
  if (impl_->backfill_rules) {
    // --output openmetrics: one parser thread (the history is kept in one
    // BackfillStore), no live metrics; the exporter's own metrics are not
    // part of the history.
    Impl& im = *impl_;
    BackfillStore history(im.options.backfill_step.count(),
                          im.options.backfill_labels);
    uint64_t lines = 0, unmatched = 0, untimed = 0, too_long = 0;
    std::thread parser([&] {
      Evaluator eval(im.store, im.table.labels);
      eval.SetBackfill(&history);
      while (BatchPtr b = im.queue.Pop()) {
        {
          auto lock = im.store.ReadLock();
          unmatched += im.detector->Process(eval, *b, im.backfill_rules,
                                            im.table.labels[b->source]);
        }
        lines += b->lines;
        too_long += b->too_long;
      }
      untimed = eval.untimed_lines();
    });
    im.supervisor->Start();
    im.supervisor->RunToEnd();
    im.queue.Close();
    parser.join();
    // Steps run from the first line's to the last line's: one line with a
    // wrong year would make every series decades long.
    double days = static_cast<double>(history.steps()) *
                  static_cast<double>(im.options.backfill_step.count()) /
                  86400000.0;
    if (history.samples() > kMaxBackfillSamples) {
      Log(LogLevel::kError,
          "backfill: refusing to write " + std::to_string(history.samples()) +
              " samples: the lines span " + std::to_string(days) +
              " days; check their times, or give a longer --backfill.step");
      return 1;
    }
    if (days > 92) {
      Log(LogLevel::kWarn, "backfill: the lines span " + std::to_string(days) +
                               " days; a line with a wrong time stretches "
                               "every series");
    }
    history.Write(out);
    Log(LogLevel::kInfo,
        "backfill: " + std::to_string(lines) + " lines, " +
            std::to_string(unmatched) + " unmatched (" +
            std::to_string(untimed) + " without a valid time), " +
            std::to_string(too_long) + " too long; " +
            std::to_string(history.series()) + " series x " +
            std::to_string(history.steps()) +
            " steps = " + std::to_string(history.samples()) +
            " samples; deltas " + std::to_string(history.deltas()) + " (" +
            std::to_string(history.memory_bytes() >> 10) + " KiB)");
    return im.Unread();
  }
  impl_->StartConsumers();
  impl_->supervisor->Start();
  impl_->supervisor->RunToEnd();
  impl_->queue.Close();
  for (auto& t : impl_->consumers) t.join();
  impl_->consumers.clear();
  impl_->SavePositions();
  out << impl_->Exposition();
  out.flush();
  // The metrics are printed either way; the exit code tells a script that a
  // source could not be read at all (each such source logged why).
  return impl_->Unread();
}

int Exporter::RunServer() {
  // Signals go to this thread only, through sigtimedwait().
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  WebHandlers handlers;
  handlers.metrics = [this] { return impl_->Exposition(); };
  handlers.ready = [this] { return impl_->Ready(); };
  handlers.reload = [this](std::string* e) { return impl_->Reload(e); };
  handlers.landing_page = [this] { return impl_->LandingPage(); };
  WebSettings web_settings;
  web_settings.enable_lifecycle = impl_->options.web_enable_lifecycle;
  web_settings.max_connections = impl_->options.web_max_connections;
  WebServer web(impl_->options.listen_address, impl_->options.telemetry_path,
                impl_->options.web_config_file, handlers, web_settings);
  Start();
  std::string error;
  if (!web.Start(&error)) {
    std::fprintf(stderr, "sshtail_exporter: error: %s\n", error.c_str());
    Stop();
    return 1;
  }
  Log(LogLevel::kInfo, "listening on " + web.address() + " with " +
                           std::to_string(impl_->options.sources.size()) +
                           " source(s)");
  if (!impl_->options.listen_address_file.empty()) {
    std::string tmp = impl_->options.listen_address_file + ".tmp";
    {
      std::ofstream f(tmp);
      f << web.address() << "\n";
    }
    std::rename(tmp.c_str(), impl_->options.listen_address_file.c_str());
  }

  auto next_save =
      std::chrono::steady_clock::now() + impl_->options.positions_interval;
  auto next_expire = std::chrono::steady_clock::now() + impl_->expire_every;
  for (;;) {
    // Woken for the next save or expiry: a fixed 1 s wait would stretch a
    // shorter --positions.sync-interval (and the lines a crash repeats).
    auto wake =
        std::min({next_save, next_expire,
                  std::chrono::steady_clock::now() + std::chrono::seconds(1)});
    auto wait_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                       wake - std::chrono::steady_clock::now())
                       .count();
    if (wait_ns < 1000000) wait_ns = 1000000;
    struct timespec ts = {static_cast<time_t>(wait_ns / 1000000000),
                          static_cast<long>(wait_ns % 1000000000)};
    int sig = sigtimedwait(&set, nullptr, &ts);
    if (sig == SIGTERM || sig == SIGINT) {
      Log(LogLevel::kInfo, "shutting down");
      break;
    }
    if (sig == SIGHUP) {
      std::string e;
      impl_->Reload(&e);
    }
    impl_->Tick();
    auto now = std::chrono::steady_clock::now();
    if (now >= next_save) {
      impl_->SavePositions();
      next_save = now + impl_->options.positions_interval;
    }
    if (now >= next_expire) {
      impl_->store.Expire();
      next_expire = now + impl_->expire_every;
    }
  }
  web.Stop();
  Stop();
  return 0;
}

int Main(int argc, const char* const argv[]) {
  // A peer closing a socket must be an error return, not a killed process.
  std::signal(SIGPIPE, SIG_IGN);
  // glibc gives threads up to 8 arenas per CPU, and each keeps what its
  // threads freed: with a thread per SSH connection that was 163 MiB at
  // 250 connections against 68 MiB with 2 arenas (bench/fleet.py's
  // fleet; the threads allocate little and rarely). MALLOC_ARENA_MAX wins.
  if (std::getenv("MALLOC_ARENA_MAX") == nullptr) mallopt(M_ARENA_MAX, 2);
  Options options;
  switch (ParseCommandLine(argc, argv, &options)) {
    case ParseResult::kExit0:
      return 0;
    case ParseResult::kExit2:
      return 2;
    case ParseResult::kRun:
      break;
  }
  LogLevel level = LogLevel::kInfo;
  ParseLogLevel(options.log_level, &level);
  SetLogLevel(level);
  if (options.check_config) {
    size_t sources = 0;
    try {
      sources = CheckConfig(options);  // with the inventory's targets
    } catch (const std::invalid_argument& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 2;
    }
    std::printf("config OK: %zu source(s)\n", sources);
    return 0;
  }
  std::unique_ptr<Exporter> exporter;
  try {
    exporter = std::make_unique<Exporter>(options);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "sshtail_exporter: error: %s\n", e.what());
    return 2;
  } catch (const std::runtime_error& e) {
    std::fprintf(stderr, "sshtail_exporter: error: %s\n", e.what());
    return 2;
  }
  try {
    if (options.once) return exporter->RunOnce(std::cout);
    return exporter->RunServer();
  } catch (const std::runtime_error& e) {
    std::fprintf(stderr, "sshtail_exporter: error: %s\n", e.what());
    return 1;
  }
}

}  // namespace sshtail
