#pragma once

// Exporter::Impl, shared by exporter.cc (wiring, threads, signals),
// exporter_state.cc (positions, state file, exposition) and
// exporter_reload.cc (rules and sources changed while running).

#include <prometheus/metric_family.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <shared_mutex>
#include <sstream>
#include <stdexcept>
#include <system_error>

#include "config/inventory.h"
#include "metrics/self_metrics.h"
#include "sources/path_glob.h"
#include "sources/shard.h"
#include "sources/source_table.h"
#include "sources/supervisor.h"
#include "sshtail/backfill.h"
#include "sshtail/batch_queue.h"
#include "sshtail/engine.h"
#include "sshtail/exporter.h"
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

/// The label names every series gets besides the rule's own.
RuleContext ContextFor(const Options& o);
/// How often idle series are looked for.
std::chrono::milliseconds ExpireInterval(const RuleSetDef& defs);
/// --shard.index must be below --shard.count (at start; a reload that
/// lowers the count past it leaves the replica with nothing to follow).
void CheckShardIndex(const Options& o);
/// Watches the inventory files and the config file (a ConfigMap changes
/// it in place): a change reloads. Null if there is neither.
std::unique_ptr<InventoryWatch> Watch(const Options& o);
/// The configured sources and the inventory's targets, named. `at_start`:
/// more of them than --sources.max-slots is a ConfigError (a reload's
/// sources take pool slots instead: SourceSupervisor::Plan).
std::vector<SourceSpec> WithInventory(const Options& o,
                                      std::vector<SourceSpec> sources,
                                      bool at_start = false);

struct Exporter::Impl {
  explicit Impl(Options o);

  // The options with the inventory's targets among the sources.
  static Options Loaded(Options o) {
    o.sources = WithInventory(o, std::move(o.sources), !o.once);
    return o;
  }

  // A source's own series are told apart by name, and by file for a glob's
  // matches (which may share a name).
  static std::string Identity(const std::string& name, const std::string& file);

  // The saved values of sources still configured under the same URL and
  // name; metrics whose definition changed start from zero (as on reload).
  // `from` names where they come from, for the log.
  void RestoreValues(const SavedState& saved, const std::string& from);

  // Sharding (exporter_shard.cc). Before the table is filled: the sources
  // of the hosts this replica holds (--shard.count > 1).
  void ClaimAtStart();
  // The states other replicas left for `keys`: each one written after
  // `own_at_ns`, or of a host `own` has no source of (own: this replica's
  // saved state, may be null). `at_ns` gets each source's file time.
  SavedState HandedOver(const std::vector<std::string>& keys,
                        const SavedState* own, int64_t own_at_ns,
                        std::map<std::string, int64_t>* at_ns);
  // Removes from `saved` the sources of `by`, with their series.
  static void DropSources(SavedState* saved, const SavedState& by);
  // Writes the state of each host (its slots) for the next replica, from
  // one snapshot. A host whose write fails is kept in `unwritten` (its
  // state with it) and its lock is not given back: RetryHandOvers.
  // Returns the hosts written.
  std::set<std::string> HandOver(
      const std::map<std::string, std::vector<uint32_t>>& by_key);
  // Writes the states that failed before; a host written goes on to
  // letting_go.
  void RetryHandOvers();
  // The shard key of a slot: its configured source's (a glob's files
  // belong to the glob's host, or to its pattern for a local glob).
  std::string ShardKeyOf(uint32_t slot) const;
  // Hands over the hosts a reload's claim lets go (their retired slots
  // among `gone`), forgets those gone from the inventory; each lock goes
  // once the host's readers have stopped.
  void LetGo(const ShardClaim& claim, const std::vector<uint32_t>& gone);
  void ReleaseLetGo();
  // At exit, after every reader stopped: the state of every host held.
  void HandOverAll();
  // sshtail_shard_* from the keeper.
  void ShowShard();

  // Sources whose position is saved; stdin and syslog have none, so their
  // values cannot be continued exactly and are not saved either.
  static bool HasPosition(const SourceSpec& s) {
    return s.kind == SourceSpec::Kind::kFile ||
           s.kind == SourceSpec::Kind::kSsh;
  }

  // Syslog sockets are created now, so a bad path or a busy port is exit 2.
  // Each gets kSyslogMaxHosts more source indices for its senders'
  // hostnames, past the configured ones (all vectors are sized here, once).
  void BindSyslogSources();

  void StartConsumers();

  void ConsumerLoop();

  void StopAll();

  void SavePositions();
  // At start: saved positions that no source resumed now but a configured
  // one may take up later (a glob not listed yet, a file renamed away) go
  // to the ledger.
  void HoldUnclaimed(const SavedState& saved, const SavedState& handed);
  // A saved local file that is neither at its path nor among the path's
  // rotated siblings: renamed away (a glob's retired file), so it waits in
  // the ledger until it is back instead of taking a slot now.
  static bool Elsewhere(const std::string& url, const PositionSet& saved);
  // Positions that no active source saves but that must outlive a crash:
  // the ledger's. A change of the source set moves positions between
  // slots and the ledger while restore_gate is held, so a save (which
  // holds it shared) sees each in one place.
  std::map<std::string, PositionSet> HeldPositions() const;

  // What was last made durable: rule metrics and the sshtail_* counters
  // that continue across restarts, exactly as in the state file.
  struct Durable {
    std::vector<MetricSnapshot> metrics;
    std::vector<prometheus::MetricFamily> counters;
  };

  static bool IsDurableCounter(const std::string& family) {
    return family == "sshtail_lines_total" ||
           family == "sshtail_lines_unmatched_total" ||
           family == "sshtail_bytes_total" ||
           family == "sshtail_lines_too_long_total" ||
           family == "sshtail_series_overflow_total";
  }

  // Snapshot (under the store's write lock: values and committed positions
  // match exactly), then the write (outside it). Serves what is durable: a
  // scrape never shows a value a crash could take back. Callers that arrive
  // while a write is running wait for it; if that snapshot was taken after
  // they arrived, they reuse it.
  std::shared_ptr<const Durable> MakeDurable();

  std::string Exposition();

  bool Reload(std::string* error);

  // Stops the sources a reload removed and drops their series, then starts
  // the new ones. The rules that know the new sources' formats are in.
  void ChangeSources(const SourcePlan& plan,
                     const std::vector<SourceSpec>& desired,
                     const ShardClaim* claim = nullptr);
  // Drops the series, self-metrics and format of retired slots `gone`
  // (`coming`: names of sources about to start, whose overflow series
  // stay). Returns their committed positions by URL.
  std::map<std::string, SourceState> Forget(
      const std::vector<uint32_t>& gone, const std::set<std::string>& coming);

  // Follows new matches of globs; re-reads the inventory when it changed.
  void Tick();

  bool Ready() const;

  // --once: the exit code says whether a source could not be read at all.
  int Unread() const;

  std::string LandingPage() const;

  const std::vector<SourceSpec> static_sources;  // from flags (no --config)
  Options options;
  SourceTable table;
  BatchQueue queue;
  SelfMetrics self;
  MetricStore store;
  std::shared_ptr<const FormatRules> rules;           // guarded by store's lock
  std::shared_ptr<const FormatRules> backfill_rules;  // --output openmetrics
  std::unique_ptr<SourceSupervisor> supervisor;
  std::unique_ptr<FormatDetector> detector;
  std::unique_ptr<PositionsFile> positions;
  bool positions_ok = true;  // with a state file: guarded by durable_mutex
  std::unique_ptr<StateFile> state_file;
  bool keep_values = false;  // --state-file: values are saved and served
  std::mutex durable_mutex;
  std::shared_ptr<const Durable> durable;  // guarded by durable_mutex
  uint64_t durable_covers = 0;             // guarded by durable_mutex
  std::atomic<uint64_t> durable_requests{0};
  std::vector<std::thread> consumers;
  /// Serialises reloads with each other and with the supervisor's calls.
  std::mutex reload_mutex;
  std::unique_ptr<InventoryWatch> watch;  // guarded by reload_mutex
  /// A reload refused for want of slots is tried again once some are
  /// freed (a removed source's slot frees a moment after the reload).
  std::optional<size_t> retry_when_freed_past;  // guarded by reload_mutex
  std::unique_ptr<ShardKeeper> shard;           // guarded by reload_mutex
  /// With syslog sockets: the names their senders may not take.
  std::shared_ptr<SyslogNames> syslog_names;
  std::vector<std::string> start_claim;  // hosts held from the start
  struct LettingGo {
    std::string key;
    std::vector<uint32_t> slots;
  };
  std::vector<LettingGo> letting_go;  // guarded by reload_mutex
  struct Unwritten {
    std::vector<uint32_t> slots;
    std::map<std::string, SourceState> sources;
    std::vector<MetricSnapshot> metrics;
    std::vector<SavedCounter> counters;
  };
  std::map<std::string, Unwritten> unwritten;  // guarded by reload_mutex
  size_t handover_write_failures = 0;          // guarded by reload_mutex
  /// Held exclusively while the source set changes (ChangeSources, the
  /// scan's retirements), shared by scrapes and saves: no one sees a
  /// position in neither a slot nor the ledger, or a restored series at 0.
  std::shared_mutex restore_gate;
  std::chrono::milliseconds expire_every{10000};
  mutable std::atomic<size_t> last_exposition_size{0};
};

}  // namespace sshtail
