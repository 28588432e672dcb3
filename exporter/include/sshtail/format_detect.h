#pragma once

#include <prometheus/metric_family.h>
#include <re2/re2.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "sshtail/engine.h"
#include "sshtail/options.h"
#include "sshtail/rules.h"

namespace sshtail {

/// One nginx format a source may use. Plain value type.
struct FormatChoice {
  std::string name;        ///< combined, main, timed, a formats: name, custom
  std::string text;        ///< what ExpandNginxFormat takes
  bool candidate = false;  ///< tried by --format auto
};

/// The rule files loaded once per format in use (`log_format: default`
/// becomes that format), and the format of each configured source. Plain
/// value type.
struct FormatDefs {
  std::vector<FormatChoice> formats;
  std::vector<RuleSetDef> defs;  ///< per format
  RuleSetDef all;                ///< every format's rules: the store's metrics
  std::vector<int> source_format;  ///< per source: index, -1 = detected
};

/// Resolves --format, `formats:` and each source's `format:` and loads the
/// rules for every format needed. Without a `log_format: default` rule there
/// is one rule set and nothing to detect. Throws ConfigError (file:line).
FormatDefs LoadFormatDefs(const Options& options, const RuleContext& ctx);

/// The compiled rules of every format, and the matchers --format auto tries
/// (combined, main, timed, then `formats:` in order). Immutable once built;
/// thread-safe.
class FormatRules {
 public:
  /// As CompiledRules::Build, for each format. Throws ConfigError.
  static std::shared_ptr<const FormatRules> Build(const FormatDefs& defs,
                                                  const MetricStore* store,
                                                  bool with_time = false);

  size_t size() const { return formats_.size(); }
  const FormatChoice& format(size_t i) const { return formats_[i]; }
  const std::shared_ptr<const CompiledRules>& rules(size_t i) const {
    return rules_[i];
  }
  /// The format of configured source `i`, or -1 when it is detected.
  int source_format(size_t i) const {
    return i < source_format_.size() ? source_format_[i] : -1;
  }
  /// The first candidate whose format `line` matches in full, or -1.
  int Detect(std::string_view line) const;
  /// Adds, per candidate, how many variables of `line` matched before the
  /// first mismatch (to name the nearest format).
  void Progress(std::string_view line, std::vector<uint64_t>* score) const;
  /// Candidate `c` (in Progress order): its format index and variables.
  int candidate_format(size_t c) const { return matchers_[c].format; }
  size_t candidate_variables(size_t c) const { return matchers_[c].variables; }
  size_t candidates() const { return matchers_.size(); }

 private:
  struct Matcher {
    int format = 0;
    NginxScan scan;           ///< when the format can be scanned
    std::unique_ptr<RE2> re;  ///< otherwise
    size_t variables = 0;
  };
  std::vector<FormatChoice> formats_;
  std::vector<std::shared_ptr<const CompiledRules>> rules_;
  std::vector<int> source_format_;
  std::vector<Matcher> matchers_;
};

/// Which format each source's lines are counted with. A detected source
/// starts undecided: each line is tried against the candidates, and the
/// first line that matches one decides (lines matching none count the same
/// under every format: unmatched by the format's rules). After
/// kRedetectAfter unmatched lines in a row it is undecided again. No line is
/// ever held back, so detection buffers nothing. Once decided, a batch costs
/// one atomic load, and unmatched lines an increment.
///
/// Thread-safe: consumers may Process() batches of one source on several
/// threads at once (each line is then still counted exactly once, with the
/// format it matched or the one in use; "in a row" spans batches in the
/// order they finish). Reset() and Build of new rules need the store's
/// write lock (no Process() running); Info() may run at any time.
class FormatDetector {
 public:
  static constexpr uint32_t kRedetectAfter = 16;
  /// Undecided lines without any match before the warning.
  static constexpr uint32_t kNoMatchAfter = 32;

  /// `config_index[i]` (kept by reference: a slot's entry is written before
  /// its first batch): the configured source runtime source `i` belongs to
  /// (a syslog socket's hostnames and a glob's files share its format);
  /// `known[i]` its name (and file) if known yet.
  FormatDetector(const std::vector<uint32_t>& config_index,
                 const std::vector<SourceLabels>& known);
  ~FormatDetector();

  /// Evaluates `batch` with its source's format(s) and flushes; returns the
  /// lines no rule matched. `source` names the batch's source. The caller
  /// holds the store's read lock.
  uint64_t Process(Evaluator& eval, const LineBatch& batch,
                   const std::shared_ptr<const FormatRules>& rules,
                   const SourceLabels& source);

  /// After new rules were swapped in: detected sources start over.
  void Reset();
  /// Runtime source `i` was removed: Info() no longer shows it. With the
  /// store's write lock held, after the source stopped getting batches.
  void Forget(uint32_t i);

  /// sshtail_source_format_info{source,format} for every source with a
  /// format: fixed, detected, or "none" after the no-match warning.
  prometheus::MetricFamily Info(const FormatRules& rules) const;

  /// The format shown for runtime source `i`: "" while undecided.
  std::string Shown(uint32_t i, const FormatRules& rules) const;

 private:
  struct State;
  int Decide(State& s, int format, const FormatRules& rules);
  int Undecide(State& s, int from);
  void Miss(State& s, std::string_view line, const FormatRules& rules);

  const std::vector<uint32_t>& config_index_;
  std::vector<std::unique_ptr<State>> states_;
};

}  // namespace sshtail
