#include "sshtail/format_detect.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include "sshtail/log.h"
#include "sshtail/nginx_format.h"

namespace sshtail {
namespace {

constexpr const char* kBuiltin[] = {"combined", "main", "timed"};

bool IsBuiltin(const std::string& s) {
  return std::find(std::begin(kBuiltin), std::end(kBuiltin), s) !=
         std::end(kBuiltin);
}

bool UsesDefault(const RuleSetDef& defs) {
  for (const auto& r : defs.rules) {
    if (r.default_format) return true;
  }
  return false;
}

// Syntax of a format from the config, checked where it is written.
void CheckFormat(const std::string& text, const std::string& where) {
  try {
    NginxEscape escape = NginxEscape::kDefault;
    std::string f = ExpandNginxFormat(text, &escape);
    NginxVariables(f);
    CompileNginxFormat(f, escape, {});
  } catch (const std::invalid_argument& e) {
    throw ConfigError(where + ": " + e.what());
  }
}

}  // namespace

FormatDefs LoadFormatDefs(const Options& o, const RuleContext& ctx) {
  for (const auto& f : o.formats) CheckFormat(f.text, f.where);
  struct Want {
    std::string spec;   // as written: auto, a name, or a literal format
    std::string where;  // file:line for errors; empty: --format
  };
  std::vector<Want> wants;
  for (const auto& s : o.sources) {
    if (s.format.empty()) {
      wants.push_back({o.format, ""});
    } else {
      wants.push_back(
          {s.format, s.config_file + ":" + std::to_string(s.format_line)});
    }
  }
  if (wants.empty()) wants.push_back({o.format, ""});  // --check-config
  bool detect = false;
  for (const auto& w : wants) detect = detect || w.spec == "auto";

  FormatDefs out;
  std::vector<std::string> wheres;  // per format: where a load error points
  auto find = [&](const std::string& name, const std::string& text) {
    for (size_t i = 0; i < out.formats.size(); ++i) {
      if (out.formats[i].name == name && out.formats[i].text == text) {
        return static_cast<int>(i);
      }
    }
    return -1;
  };
  if (detect) {
    for (const char* b : kBuiltin) out.formats.push_back({b, b, true});
    for (const auto& f : o.formats)
      out.formats.push_back({f.name, f.text, true});
    wheres.resize(out.formats.size());
    for (size_t i = 0; i < o.formats.size(); ++i) {
      wheres[std::size(kBuiltin) + i] = o.formats[i].where;
    }
  }
  for (const auto& w : wants) {
    if (w.spec == "auto") {
      out.source_format.push_back(-1);
      continue;
    }
    FormatChoice c{"custom", w.spec, false};
    if (IsBuiltin(w.spec)) c.name = w.spec;
    for (const auto& f : o.formats) {
      if (f.name == w.spec) c = {f.name, f.text, false};
    }
    if (c.name == "custom" && !w.where.empty()) CheckFormat(c.text, w.where);
    int i = find(c.name, c.text);
    if (i < 0) {
      i = static_cast<int>(out.formats.size());
      out.formats.push_back(c);
      wheres.push_back(w.where);
    }
    out.source_format.push_back(i);
  }
  // Each format's rules. A candidate that cannot serve the rules (a metric
  // needs a field it lacks) is left out; a format a source names cannot.
  std::vector<int> keep(out.formats.size(), -1);
  std::vector<FormatChoice> kept;
  std::string first_error;
  for (size_t i = 0; i < out.formats.size(); ++i) {
    bool named = std::find(out.source_format.begin(), out.source_format.end(),
                           static_cast<int>(i)) != out.source_format.end();
    RuleContext c = ctx;
    c.default_format = out.formats[i].text;
    try {
      out.defs.push_back(LoadRules(o.rule_files, c));
    } catch (const ConfigError& e) {
      std::string msg = wheres[i].empty()
                            ? std::string(e.what())
                            : wheres[i] + ": format '" + out.formats[i].name +
                                  "': " + e.what();
      if (named || !out.formats[i].candidate) throw ConfigError(msg);
      if (first_error.empty()) first_error = msg;
      continue;
    }
    keep[i] = static_cast<int>(kept.size());
    kept.push_back(out.formats[i]);
  }
  if (detect && std::none_of(kept.begin(), kept.end(),
                             [](const auto& f) { return f.candidate; })) {
    throw ConfigError(first_error);
  }
  out.formats = std::move(kept);
  for (int& f : out.source_format) {
    if (f >= 0) f = keep[static_cast<size_t>(f)];
  }
  // Without `log_format: default` every format gives the same rules.
  if (std::none_of(out.defs.begin(), out.defs.end(), UsesDefault)) {
    out.formats.resize(1);
    out.formats[0] = FormatChoice{"", "", false};
    out.defs.resize(1);
    std::fill(out.source_format.begin(), out.source_format.end(), 0);
  }
  for (const auto& d : out.defs) {
    for (const auto& r : d.rules) out.all.rules.push_back(r);
  }
  return out;
}

std::shared_ptr<const FormatRules> FormatRules::Build(const FormatDefs& defs,
                                                      const MetricStore* store,
                                                      bool with_time) {
  std::shared_ptr<FormatRules> out(new FormatRules());
  out->formats_ = defs.formats;
  out->source_format_ = defs.source_format;
  for (const auto& d : defs.defs) {
    out->rules_.push_back(CompiledRules::Build(d, store, true, with_time));
  }
  for (size_t i = 0; i < defs.formats.size(); ++i) {
    if (!defs.formats[i].candidate) continue;
    Matcher m;
    m.format = static_cast<int>(i);
    NginxEscape escape = NginxEscape::kDefault;
    std::string f = ExpandNginxFormat(defs.formats[i].text, &escape);
    NginxFormat nf = CompileNginxFormat(f, escape, {});
    m.variables = nf.variables.size();
    m.scan = nf.scan;
    if (m.scan.empty())
      m.re = std::make_unique<RE2>(nf.regex, PatternOptions());
    out->matchers_.push_back(std::move(m));
  }
  return out;
}

int FormatRules::Detect(std::string_view line) const {
  for (const auto& m : matchers_) {
    bool full =
        m.re ? RE2::FullMatch(re2::StringPiece(line.data(), line.size()), *m.re)
             : m.scan.MatchedSteps(line) > m.scan.steps.size();
    if (full) return m.format;
  }
  return -1;
}

void FormatRules::Progress(std::string_view line,
                           std::vector<uint64_t>* score) const {
  score->resize(matchers_.size());
  for (size_t c = 0; c < matchers_.size(); ++c) {
    const Matcher& m = matchers_[c];
    if (m.re) {
      bool full =
          RE2::FullMatch(re2::StringPiece(line.data(), line.size()), *m.re);
      (*score)[c] += full ? m.variables : 0;
    } else {
      (*score)[c] += std::min(m.scan.MatchedSteps(line), m.scan.steps.size());
    }
  }
}

struct FormatDetector::State {
  std::atomic<int> chosen{-1};       // format in use; -1: undecided
  std::atomic<int> provisional{-1};  // undecided: rules for unmatched lines
  std::atomic<uint32_t> run{0};      // unmatched lines in a row
  std::atomic<bool> named{false};
  mutable std::mutex mutex;
  // Guarded by mutex.
  std::string name;
  std::string file;   // a glob's match: its path
  std::string shown;  // the detected format, "none", or "" (undecided)
  uint32_t misses = 0;
  bool warned = false;
  std::vector<uint64_t> progress;
};

FormatDetector::FormatDetector(const std::vector<uint32_t>& config_index,
                               const std::vector<SourceLabels>& known)
    : config_index_(config_index) {
  for (size_t i = 0; i < config_index_.size(); ++i) {
    states_.push_back(std::make_unique<State>());
    if (i < known.size() && !known[i].name.empty()) {
      states_[i]->name = known[i].name;
      states_[i]->file = known[i].file;
      states_[i]->named.store(true);
    }
  }
}

FormatDetector::~FormatDetector() = default;

uint64_t FormatDetector::Process(
    Evaluator& eval, const LineBatch& batch,
    const std::shared_ptr<const FormatRules>& rules_ptr,
    const SourceLabels& source) {
  const FormatRules& rules = *rules_ptr;
  State& s = *states_[batch.source];
  if (!s.named.load(std::memory_order_acquire)) {
    std::lock_guard lock(s.mutex);
    // A syslog hostname's, or a glob match's: known by its first batch.
    s.name = source.name;
    s.file = source.file;
    s.named.store(true, std::memory_order_release);
  }
  int fixed = rules.source_format(config_index_[batch.source]);
  if (fixed >= 0) {
    return eval.Process(batch, rules.rules(static_cast<size_t>(fixed)));
  }
  BatchCursor at;
  uint64_t unmatched = 0;
  uint32_t run = s.run.load(std::memory_order_relaxed);
  int cur = s.chosen.load(std::memory_order_acquire);
  const std::string& data = batch.data;
  while (at.offset < data.size()) {
    if (cur >= 0) {
      unmatched +=
          eval.ProcessLines(batch, rules.rules(static_cast<size_t>(cur)), &at,
                            &run, kRedetectAfter);
      if (run >= kRedetectAfter) {
        cur = Undecide(s, cur);
        run = 0;
      }
      continue;
    }
    size_t nl = data.find('\n', at.offset);
    if (nl == std::string::npos) nl = data.size();
    std::string_view line(data.data() + at.offset, nl - at.offset);
    int f = rules.Detect(line);
    if (f >= 0) {
      // Counted with the format it matches, whatever another thread chose.
      cur = Decide(s, f, rules);
    } else {
      f = s.provisional.load(std::memory_order_relaxed);
      if (f < 0) f = rules.candidate_format(0);
      Miss(s, line, rules);
    }
    unmatched += eval.ProcessLines(batch, rules.rules(static_cast<size_t>(f)),
                                   &at, nullptr, 0, 1);
    run = 0;
  }
  s.run.store(run, std::memory_order_relaxed);
  eval.Flush();
  return unmatched;
}

int FormatDetector::Decide(State& s, int format, const FormatRules& rules) {
  std::lock_guard lock(s.mutex);
  if (s.chosen.load(std::memory_order_relaxed) < 0) {
    s.chosen.store(format, std::memory_order_release);
    s.misses = 0;
    s.warned = false;
    s.progress.clear();
    const std::string& n = rules.format(static_cast<size_t>(format)).name;
    if (s.shown != n) {
      Log(LogLevel::kInfo, "source " + s.name + ": nginx format " + n +
                               " (detected from its lines)");
      s.shown = n;
    }
  }
  return s.chosen.load(std::memory_order_relaxed);
}

int FormatDetector::Undecide(State& s, int from) {
  std::lock_guard lock(s.mutex);
  if (s.chosen.load(std::memory_order_relaxed) == from) {
    s.provisional.store(from, std::memory_order_relaxed);
    s.chosen.store(-1, std::memory_order_release);
    s.misses = 0;
    s.progress.clear();
  }
  return s.chosen.load(std::memory_order_relaxed);
}

void FormatDetector::Miss(State& s, std::string_view line,
                          const FormatRules& rules) {
  std::lock_guard lock(s.mutex);
  if (s.warned) return;
  rules.Progress(line, &s.progress);
  if (++s.misses < kNoMatchAfter) return;
  size_t best = 0;
  for (size_t c = 1; c < s.progress.size(); ++c) {
    if (s.progress[c] > s.progress[best]) best = c;
  }
  std::string tried;
  for (size_t c = 0; c < rules.candidates(); ++c) {
    tried += (c ? ", " : "") +
             rules.format(static_cast<size_t>(rules.candidate_format(c))).name;
  }
  const std::string& nearest =
      rules.format(static_cast<size_t>(rules.candidate_format(best))).name;
  double avg = static_cast<double>(s.progress[best]) / s.misses;
  char fields[64];
  std::snprintf(fields, sizeof fields, "%.1f of %zu", avg,
                rules.candidate_variables(best));
  Log(LogLevel::kWarn, "source " + s.name + ": no known nginx format matches " +
                           std::to_string(s.misses) +
                           " lines in a row (tried " + tried +
                           "); nearest: " + nearest + " (" + fields +
                           " variables matched on average); its lines count "
                           "as unmatched until one matches");
  s.warned = true;
  s.shown = "none";
}

void FormatDetector::Reset() {
  for (auto& s : states_) {
    std::lock_guard lock(s->mutex);
    s->chosen.store(-1);
    s->provisional.store(-1);
    s->run.store(0);
    s->misses = 0;
    s->warned = false;
    s->progress.clear();
  }
}

void FormatDetector::Forget(uint32_t i) {
  State& s = *states_[i];
  std::lock_guard lock(s.mutex);
  // All of it: a slot used again is a new source, detected anew and named
  // by its first batch (a retired slot's own batches are skipped).
  s.name.clear();
  s.file.clear();
  s.shown.clear();
  s.chosen.store(-1);
  s.provisional.store(-1);
  s.run.store(0);
  s.misses = 0;
  s.warned = false;
  s.progress.clear();
  s.named.store(false, std::memory_order_release);
}

std::string FormatDetector::Shown(uint32_t i, const FormatRules& rules) const {
  int fixed = rules.source_format(config_index_[i]);
  if (fixed >= 0) return rules.format(static_cast<size_t>(fixed)).name;
  std::lock_guard lock(states_[i]->mutex);
  return states_[i]->shown;
}

prometheus::MetricFamily FormatDetector::Info(const FormatRules& rules) const {
  prometheus::MetricFamily f;
  f.name = "sshtail_source_format_info";
  f.help =
      "The nginx log format a source's lines are counted with (--format, "
      "the source's format:, or detected; none: no known format matches).";
  f.type = prometheus::MetricType::Gauge;
  for (uint32_t i = 0; i < states_.size(); ++i) {
    std::string name, file;
    {
      std::lock_guard lock(states_[i]->mutex);
      name = states_[i]->name;
      file = states_[i]->file;
    }
    // Named: its slot was written before (see the constructor).
    if (name.empty()) continue;
    std::string format = Shown(i, rules);
    if (format.empty()) continue;
    prometheus::ClientMetric m;
    m.label = {{"format", format}, {"source", name}};
    if (!file.empty()) m.label.insert(m.label.begin(), {"file", file});
    m.gauge.value = 1;
    f.metric.push_back(std::move(m));
  }
  return f;
}

}  // namespace sshtail
