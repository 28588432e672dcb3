#include <algorithm>
#include <map>
#include <set>
#include <string>

#include "exporter_impl.h"
#include "sshtail/log.h"

namespace sshtail {

bool Exporter::Impl::Reload(std::string* error) {
  std::lock_guard lock(reload_mutex);
  retry_when_freed_past.reset();
  try {
    Options next = options;
    std::vector<SourceSpec> desired = static_sources;
    if (!options.config_file.empty() && !options.args.empty()) {
      // The same flags again, so the config file is read anew with the
      // same precedence. Rules, formats and sources apply now; other
      // settings need a restart.
      Options fresh;
      std::string problem;
      if (!ReparseCommandLine(options.args, &fresh, &problem)) {
        throw ConfigError(problem);
      }
      next.rule_files = fresh.rule_files;
      next.format = fresh.format;
      next.formats = fresh.formats;
      next.sources_files = fresh.sources_files;
      desired = fresh.sources;
    }
    desired = WithInventory(next, std::move(desired));
    SourcePlan plan;
    std::string waits;
    try {
      plan = supervisor->Plan(desired);
    } catch (const NoSlotError& e) {
      // The room may come from the sources this change removes: they go
      // now, the new ones come once their slots are free (tried again).
      plan = supervisor->Plan(supervisor->Running(desired));
      if (plan.remove.empty()) throw;
      waits = e.what();
    }
    next.sources = supervisor->ConfiguredBySlot(plan);
    FormatDefs defs = LoadFormatDefs(next, ContextFor(next));
    // All or nothing: everything that can fail fails in this check, before
    // the store replaces a single metric (the old rules point into it).
    FormatRules::Build(defs, nullptr);
    store.Apply(defs.all, [&] {
      rules = FormatRules::Build(defs, &store);
      detector->Reset();  // formats may have changed: detect again
    });
    options.rule_files = next.rule_files;
    options.format = next.format;
    options.formats = next.formats;
    expire_every = ExpireInterval(defs.all);
    if (!plan.empty()) ChangeSources(plan, desired.size());
    if (next.sources_files != options.sources_files) {
      options.sources_files = next.sources_files;
      watch = options.sources_files.empty()
                  ? nullptr
                  : std::make_unique<InventoryWatch>(options.sources_files);
      if (watch) watch->Changed();
    }
    if (!waits.empty()) {
      retry_when_freed_past = supervisor->freed();
      self.reload_ok().Set(0);
      *error = waits +
               "; the removed sources went, the new ones wait for "
               "their slots";
      Log(LogLevel::kWarn, "reload partly applied: " + *error);
      return false;
    }
    self.reload_ok().Set(1);
    self.reload_time().SetToCurrentTime();
    Log(LogLevel::kInfo, "configuration reloaded");
    return true;
  } catch (const std::exception& e) {
    if (dynamic_cast<const NoSlotError*>(&e)) {
      retry_when_freed_past = supervisor->freed();
    }
    *error = e.what();
    self.reload_ok().Set(0);
    self.reloads_failed().Increment();
    Log(LogLevel::kError, std::string("reload rejected: ") + e.what());
    return false;
  }
}

void Exporter::Impl::ChangeSources(const SourcePlan& plan, size_t total) {
  std::vector<uint32_t> gone = supervisor->Retire(plan.remove);
  std::set<std::string> coming;
  for (const auto& [slot, spec] : plan.add) coming.insert(spec.name);
  for (uint32_t slot : supervisor->Add(plan, Forget(gone, coming))) {
    self.counters(slot);
  }
  Log(LogLevel::kInfo,
      "sources: " + std::to_string(plan.add.size()) + " added, " +
          std::to_string(plan.remove.size()) + " removed, " +
          std::to_string(total - plan.add.size()) + " unchanged");
}

std::map<std::string, PositionSet> Exporter::Impl::Forget(
    const std::vector<uint32_t>& gone, const std::set<std::string>& coming) {
  std::set<std::string> names = coming;  // in use: overflow series stay
  for (size_t i = 0; i < table.size(); ++i) {
    if (table.active(i)) names.insert(table.labels[i].name);
  }
  std::vector<SourceLabels> labels;
  std::vector<bool> last;
  for (uint32_t slot : gone) {
    labels.push_back(table.labels[slot]);
    last.push_back(!names.count(table.labels[slot].name));
  }
  // Under the write side: no batch of theirs is being counted, and
  // consumers skip their later batches.
  store.RemoveSources(labels, last);
  // Their committed positions are final now: a file that comes back under
  // another spec (relabelled) resumes there, neither lost nor recounted.
  std::map<std::string, PositionSet> carried;
  for (uint32_t slot : gone) {
    self.Remove(slot);
    detector->Forget(slot);
    if (!HasPosition(table.specs[slot]) || table.specs[slot].glob) continue;
    PositionSet p = table.status[slot]->positions.Committed();
    if (!p.empty()) carried[table.specs[slot].url] = std::move(p);
  }
  return carried;
}

void Exporter::Impl::Tick() {
  bool changed = false;
  {
    std::lock_guard lock(reload_mutex);
    std::vector<uint32_t> retired;
    for (uint32_t slot : supervisor->Scan(&retired)) self.counters(slot);
    if (!retired.empty()) supervisor->KeepPositions(Forget(retired, {}));
    changed = watch && watch->Changed();
    changed |=
        retry_when_freed_past && supervisor->freed() > *retry_when_freed_past;
  }
  if (changed) {
    std::string e;
    Reload(&e);
  }
}

}  // namespace sshtail
