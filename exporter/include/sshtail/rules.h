#pragma once

#include <re2/re2.h>

#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "sshtail/log_time.h"
#include "sshtail/nginx_format.h"

namespace sshtail {

/// RE2 options for every pattern, when checked and when matched: bytes, not
/// UTF-8 (logs are bytes; nginx escapes the rest), no logging of errors.
RE2::Options PatternOptions();

/// A configuration error. what() is one line: "file:line: what is wrong".
class ConfigError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// Where something was defined.
struct SourceLoc {
  std::string file;
  int line = 0;  ///< 1-based; 0 = unknown
  std::string str() const {
    return line > 0 ? file + ":" + std::to_string(line) : file;
  }
};

/// How a label gets its value from a line. Plain value type.
struct LabelDef {
  std::string name;
  std::string field;          ///< field to read; empty for a constant
  std::string constant;       ///< used when `field` is empty
  bool status_class = false;  ///< "404" -> "4xx"
  struct Replace {
    std::string regex;
    std::string with;
    SourceLoc loc;
  };
  /// The first regex found in the value replaces the whole value by
  /// `with` (\1..\9 from the match); no match: `default_value` if set.
  std::vector<Replace> replace;
  std::vector<std::pair<std::string, std::string>> map;  ///< lookup table
  std::optional<std::string> default_value;  ///< when no replace/map entry hit
  SourceLoc loc;

  /// Canonical text of the definition, to compare two definitions.
  std::string Signature() const;
};

enum class MetricType { kCounter, kGauge, kHistogram };

/// One metric a rule updates. Plain value type.
struct MetricDef {
  std::string name;
  std::string help;
  MetricType type = MetricType::kCounter;
  std::string value_field;  ///< empty: counters add 1, gauges need a value
  bool gauge_set = true;    ///< gauge: set (true) or add (false)
  std::vector<LabelDef> labels;
  std::vector<double> buckets;  ///< histogram upper bounds, sorted
  size_t max_series = 10000;
  std::chrono::seconds ttl{0};  ///< 0: series never expire
  bool optional = false;        ///< skip silently if a field is missing
  SourceLoc loc;

  /// Canonical text of what makes two definitions the same series space.
  std::string Signature() const;
};

/// A line filter: the field must (match) or must not (skip) match a regex.
struct FilterDef {
  std::string field;
  std::string regex;
  SourceLoc loc;
};

/// Where a line's own time is, for --output openmetrics (backfill). Plain
/// value type.
struct TimeDef {
  std::string field;  ///< a named group, or an nginx variable
  TimeLayout layout;  ///< how the field is written
  SourceLoc loc;
};

/// One rule: how to parse a line and which metrics it updates.
struct RuleDef {
  std::string name;
  std::string regex;       ///< either this...
  std::string log_format;  ///< ...or this (already expanded)
  /// `log_format: default`: the format comes from --format (or the source).
  bool default_format = false;
  NginxEscape escape = NginxEscape::kDefault;
  std::vector<FilterDef> match;
  std::vector<FilterDef> skip;
  std::vector<MetricDef> metrics;
  /// `time:`; unset for an nginx format means its $msec, $time_iso8601 or
  /// $time_local (the first of these it has). Used by backfill only.
  std::optional<TimeDef> time;
  SourceLoc loc;
};

/// Everything loaded from the rule files.
struct RuleSetDef {
  std::vector<RuleDef> rules;
};

/// What rule files may refer to.
struct RuleContext {
  /// The format rules that say `log_format: default` get (a name, a
  /// literal format or a pasted directive; see ExpandNginxFormat).
  std::string default_format = "combined";
  /// Label names every series gets besides the rule's own: "source" and the
  /// static labels of the sources. Rules may not define these.
  std::vector<std::string> reserved_labels = {"source"};
};

/// The built-in rules (rules/nginx.yml, compiled into the binary).
const char* BuiltinNginxRules();

/// Parses one rule file's text. `file` names it in errors. Throws
/// ConfigError("file:line: ...") on any problem.
RuleSetDef ParseRules(const std::string& text, const std::string& file,
                      const RuleContext& ctx);

/// Reads and parses rule files, or the built-in rules when `files` is
/// empty, then checks the whole set (field names, duplicates). Throws
/// ConfigError.
RuleSetDef LoadRules(const std::vector<std::string>& files,
                     const RuleContext& ctx);

/// Checks names, fields and duplicate metrics across a whole rule set.
/// Throws ConfigError. LoadRules calls it; exposed for tests.
void ValidateRules(RuleSetDef& set, const RuleContext& ctx);

/// Fields a rule offers: named groups of its regex, or the variables of its
/// log_format plus method/path/protocol when it has $request.
std::vector<std::string> RuleFields(const RuleDef& rule);

}  // namespace sshtail
