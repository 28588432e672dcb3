#include "sshtail/rules.h"

#include <prometheus/check_names.h>
#include <re2/re2.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "rules/nginx_variables.h"
#include "sshtail/state_file.h"

namespace sshtail {

RE2::Options PatternOptions() {
  RE2::Options o;
  o.set_encoding(RE2::Options::EncodingLatin1);
  o.set_log_errors(false);
  o.set_max_mem(64 << 20);
  return o;
}
namespace {

const std::vector<double> kDefaultBuckets = {.005, .01, .025, .05, .1, .25,
                                             .5,   1,   2.5,  5,   10};

// prometheus-cpp's own rules (which also reserve names starting with "__"),
// so that whatever passes here registers without an exception later.
bool ValidMetricName(const std::string& s) {
  return prometheus::CheckMetricName(s);
}

bool ValidLabelName(const std::string& s) {
  return prometheus::CheckLabelName(s);
}

std::string Join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) {
    if (!out.empty()) out += ", ";
    out += s;
  }
  return out;
}

class Parser {
 public:
  Parser(std::string file, const RuleContext& ctx)
      : file_(std::move(file)), ctx_(ctx) {}

  RuleSetDef Parse(const std::string& text) {
    YAML::Node root;
    try {
      root = YAML::Load(text);
    } catch (const YAML::Exception& e) {
      throw ConfigError(file_ + ":" + std::to_string(e.mark.line + 1) + ": " +
                        e.msg);
    }
    RuleSetDef set;
    if (!root || root.IsNull()) return set;
    YAML::Node list = root;
    if (root.IsMap()) {
      CheckKeys(root, {"rules"}, "rule file");
      list = root["rules"];
      if (!list) Fail(root, "rule file needs a `rules:` list");
    }
    if (!list.IsSequence()) Fail(list, "`rules:` must be a list");
    for (const auto& r : list) set.rules.push_back(Rule(r));
    return set;
  }

 private:
  SourceLoc Loc(const YAML::Node& n) const {
    return SourceLoc{file_, n.Mark().line + 1};
  }

  [[noreturn]] void Fail(const YAML::Node& n, const std::string& msg) const {
    throw ConfigError(Loc(n).str() + ": " + msg);
  }

  void CheckKeys(const YAML::Node& map, std::set<std::string> allowed,
                 const std::string& what) const {
    if (!map.IsMap()) Fail(map, what + " must be a mapping");
    for (const auto& kv : map) {
      std::string key = kv.first.Scalar();
      if (!allowed.count(key)) {
        std::vector<std::string> names(allowed.begin(), allowed.end());
        Fail(kv.first, "unknown key '" + key + "' in " + what +
                           " (expected one of: " + Join(names) + ")");
      }
    }
  }

  std::string Scalar(const YAML::Node& n, const std::string& what) const {
    if (!n.IsScalar()) Fail(n, what + " must be a string");
    return n.Scalar();
  }

  bool Bool(const YAML::Node& n, const std::string& what) const {
    try {
      return n.as<bool>();
    } catch (const YAML::Exception&) {
      Fail(n, what + " must be true or false");
    }
  }

  double Number(const YAML::Node& n, const std::string& what) const {
    try {
      double d = n.as<double>();
      if (!std::isfinite(d)) Fail(n, what + " must be a finite number");
      return d;
    } catch (const YAML::Exception&) {
      Fail(n, what + " must be a number");
    }
  }

  std::chrono::seconds Duration(const YAML::Node& n,
                                const std::string& what) const {
    std::string s = Scalar(n, what);
    static const RE2 re("([0-9]+)(s|m|h|d)");
    long long v = 0;
    std::string unit;
    if (!RE2::FullMatch(s, re, &v, &unit)) {
      Fail(n, what + " must look like 30s, 15m, 2h or 7d");
    }
    long long mult = unit == "s"   ? 1
                     : unit == "m" ? 60
                     : unit == "h" ? 3600
                                   : 86400;
    return std::chrono::seconds(v * mult);
  }

  std::vector<FilterDef> Filters(const YAML::Node& n, const std::string& what) {
    std::vector<FilterDef> out;
    auto one = [&](const YAML::Node& f) {
      CheckKeys(f, {"field", "regex"}, what);
      if (!f["field"] || !f["regex"]) Fail(f, what + " needs field and regex");
      out.push_back(FilterDef{Scalar(f["field"], what + " field"),
                              Scalar(f["regex"], what + " regex"),
                              Loc(f["regex"])});
    };
    if (n.IsSequence()) {
      for (const auto& f : n) one(f);
    } else {
      one(n);
    }
    return out;
  }

  RuleDef Rule(const YAML::Node& n) {
    CheckKeys(n,
              {"name", "regex", "log_format", "escape", "nginx_variables",
               "match", "skip", "metrics", "time"},
              "rule");
    RuleDef r;
    r.loc = Loc(n);
    if (!n["name"]) Fail(n, "rule needs a name");
    r.name = Scalar(n["name"], "rule name");
    if (n["regex"] && n["log_format"]) {
      Fail(n["log_format"],
           "rule '" + r.name + "' has both regex and log_format; use one");
    }
    if (n["regex"]) {
      r.regex = Scalar(n["regex"], "regex");
      RE2 re(r.regex, PatternOptions());
      if (!re.ok()) Fail(n["regex"], "bad regex: " + re.error());
      if (n["escape"]) Fail(n["escape"], "escape applies to log_format only");
    } else if (n["log_format"]) {
      std::string f = Scalar(n["log_format"], "log_format");
      if (n["escape"]) {
        std::string e = Scalar(n["escape"], "escape");
        if (e == "default") {
          r.escape = NginxEscape::kDefault;
        } else if (e == "json") {
          r.escape = NginxEscape::kJson;
        } else if (e == "none") {
          r.escape = NginxEscape::kNone;
        } else {
          Fail(n["escape"], "escape must be default, json or none");
        }
      }
      try {
        if (f == "default") {
          r.default_format = true;
          r.log_format = ExpandNginxFormat(ctx_.default_format, &r.escape);
        } else {
          r.log_format = ExpandNginxFormat(f, &r.escape);
        }
        std::set<std::string> extra;
        if (n["nginx_variables"]) {
          if (!n["nginx_variables"].IsSequence()) {
            Fail(n["nginx_variables"], "nginx_variables must be a list");
          }
          for (const auto& v : n["nginx_variables"]) {
            extra.insert(Scalar(v, "nginx variable"));
          }
        }
        for (const auto& v : NginxVariables(r.log_format)) {
          if (IsKnownNginxVariable(v) || extra.count(v)) continue;
          std::string near = ClosestNginxVariable(v);
          Fail(n["log_format"],
               "unknown nginx variable $" + v +
                   (near.empty() ? "" : " (did you mean $" + near + "?)") +
                   "; list variables of third-party modules under "
                   "nginx_variables");
        }
      } catch (const ConfigError&) {
        throw;
      } catch (const std::invalid_argument& e) {
        Fail(n["log_format"], e.what());
      }
    } else {
      Fail(n, "rule '" + r.name + "' needs a regex or a log_format");
    }
    if (n["match"]) r.match = Filters(n["match"], "match");
    if (n["skip"]) r.skip = Filters(n["skip"], "skip");
    if (n["time"]) r.time = Time(n["time"]);
    if (!n["metrics"] || !n["metrics"].IsSequence() ||
        n["metrics"].size() == 0) {
      Fail(n, "rule '" + r.name + "' needs a non-empty metrics list");
    }
    for (const auto& m : n["metrics"]) r.metrics.push_back(Metric(m));
    return r;
  }

  // time: {field: ts, format: nginx | iso8601 | unix | msec | '%d/%b/...'}
  // (format may be left out for $time_local, $time_iso8601 and $msec).
  TimeDef Time(const YAML::Node& n) const {
    CheckKeys(n, {"field", "format"}, "time");
    if (!n["field"]) Fail(n, "time needs a field");
    TimeDef t;
    t.loc = Loc(n);
    t.field = Scalar(n["field"], "time field");
    if (n["format"]) {
      std::string error;
      if (!TimeLayout::FromSpec(Scalar(n["format"], "time format"), &t.layout,
                                &error)) {
        Fail(n["format"], error);
      }
    } else {
      t.layout = TimeLayout::ForNginxVariable(t.field);
      if (t.layout.kind() == TimeLayout::Kind::kNone) {
        Fail(n,
             "time needs a format (nginx, iso8601, unix, msec or a "
             "pattern such as '%d/%b/%Y:%H:%M:%S %z')");
      }
    }
    return t;
  }

  LabelDef Label(const std::string& name, const YAML::Node& n) {
    LabelDef l;
    l.name = name;
    l.loc = Loc(n);
    if (n.IsScalar()) {
      l.field = n.Scalar();
      return l;
    }
    CheckKeys(n,
              {"field", "value", "status_class", "replace", "map", "default"},
              "label '" + name + "'");
    if (n["field"] && n["value"]) {
      Fail(n, "label '" + name + "' has both field and value");
    }
    if (n["field"]) {
      l.field = Scalar(n["field"], "label field");
    } else if (n["value"]) {
      l.constant = Scalar(n["value"], "label value");
      if (n["status_class"] || n["replace"] || n["map"]) {
        Fail(n, "label '" + name + "' is constant; mapping needs a field");
      }
      return l;
    } else {
      Fail(n, "label '" + name + "' needs a field or a value");
    }
    if (n["status_class"])
      l.status_class = Bool(n["status_class"], "status_class");
    if (n["replace"]) {
      if (!n["replace"].IsSequence())
        Fail(n["replace"], "replace must be a list");
      for (const auto& r : n["replace"]) {
        CheckKeys(r, {"regex", "with"}, "replace entry");
        if (!r["regex"] || !r["with"]) Fail(r, "replace needs regex and with");
        LabelDef::Replace rep{Scalar(r["regex"], "regex"),
                              Scalar(r["with"], "with"), Loc(r["regex"])};
        RE2 re(rep.regex, PatternOptions());
        if (!re.ok()) Fail(r["regex"], "bad regex: " + re.error());
        std::string err;
        if (!re.CheckRewriteString(rep.with, &err)) {
          Fail(r["with"], "bad replacement: " + err);
        }
        l.replace.push_back(std::move(rep));
      }
    }
    if (n["map"]) {
      if (!n["map"].IsMap()) Fail(n["map"], "map must be a mapping");
      for (const auto& kv : n["map"]) {
        l.map.emplace_back(Scalar(kv.first, "map key"),
                           Scalar(kv.second, "map value"));
      }
    }
    if (n["default"]) l.default_value = Scalar(n["default"], "default");
    return l;
  }

  MetricDef Metric(const YAML::Node& n) {
    CheckKeys(n,
              {"name", "type", "help", "value", "action", "labels", "buckets",
               "max_series", "ttl", "optional"},
              "metric");
    MetricDef m;
    m.loc = Loc(n);
    if (!n["name"]) Fail(n, "metric needs a name");
    m.name = Scalar(n["name"], "metric name");
    if (!ValidMetricName(m.name)) {
      Fail(n["name"], "invalid metric name '" + m.name + "'");
    }
    if (m.name.rfind("sshtail_", 0) == 0) {
      Fail(n["name"], "metric names starting with sshtail_ are reserved");
    }
    std::string type = n["type"] ? Scalar(n["type"], "type") : "";
    if (type == "counter") {
      m.type = MetricType::kCounter;
    } else if (type == "gauge") {
      m.type = MetricType::kGauge;
    } else if (type == "histogram") {
      m.type = MetricType::kHistogram;
    } else {
      Fail(n["type"] ? n["type"] : n,
           "metric '" + m.name + "' needs type: counter, gauge or histogram");
    }
    m.help = n["help"] ? Scalar(n["help"], "help") : m.name;
    if (n["value"]) m.value_field = Scalar(n["value"], "value");
    if (n["action"]) {
      std::string a = Scalar(n["action"], "action");
      if (m.type != MetricType::kGauge)
        Fail(n["action"], "action is for gauges");
      if (a == "set") {
        m.gauge_set = true;
      } else if (a == "add") {
        m.gauge_set = false;
      } else {
        Fail(n["action"], "action must be set or add");
      }
    }
    if ((m.type == MetricType::kGauge || m.type == MetricType::kHistogram) &&
        m.value_field.empty()) {
      Fail(n, "metric '" + m.name + "' needs a value field");
    }
    if (n["labels"]) {
      if (!n["labels"].IsMap()) Fail(n["labels"], "labels must be a mapping");
      std::set<std::string> seen;
      for (const auto& kv : n["labels"]) {
        std::string ln = Scalar(kv.first, "label name");
        if (!ValidLabelName(ln)) {
          Fail(kv.first, "invalid label name '" + ln + "'");
        }
        if (!seen.insert(ln).second) Fail(kv.first, "label '" + ln + "' twice");
        if (m.type == MetricType::kHistogram && ln == "le") {
          Fail(kv.first, "label 'le' is reserved for histogram buckets");
        }
        for (const auto& r : ctx_.reserved_labels) {
          if (ln == r) {
            Fail(kv.first, "label '" + ln +
                               "' is set by the exporter (source name or "
                               "static source label)");
          }
        }
        m.labels.push_back(Label(ln, kv.second));
      }
    }
    // With the sources' labels (source, static ones, glob fields) and
    // `file`: within the limit the state file reads back.
    const auto& r = ctx_.reserved_labels;
    size_t theirs =
        r.size() + (std::find(r.begin(), r.end(), "file") == r.end());
    if (m.labels.size() + theirs > kMaxSeriesLabels) {
      Fail(n["labels"] ? n["labels"] : n,
           "metric '" + m.name + "' has " + std::to_string(m.labels.size()) +
               " labels; with the sources' " + std::to_string(theirs) +
               " (source, file, static labels) a series may "
               "carry at most " +
               std::to_string(kMaxSeriesLabels));
    }
    if (n["buckets"]) {
      if (m.type != MetricType::kHistogram) {
        Fail(n["buckets"], "buckets are for histograms");
      }
      if (!n["buckets"].IsSequence() || n["buckets"].size() == 0) {
        Fail(n["buckets"], "buckets must be a non-empty list");
      }
      for (const auto& b : n["buckets"]) {
        double v = Number(b, "bucket");
        if (!m.buckets.empty() && v <= m.buckets.back()) {
          Fail(b, "buckets must be sorted in increasing order");
        }
        m.buckets.push_back(v);
      }
    } else if (m.type == MetricType::kHistogram) {
      m.buckets = kDefaultBuckets;
    }
    if (n["max_series"]) {
      double v = Number(n["max_series"], "max_series");
      if (v < 1 || v != std::floor(v) || v > 1e8) {
        Fail(n["max_series"], "max_series must be a whole number >= 1");
      }
      m.max_series = static_cast<size_t>(v);
    }
    if (n["ttl"]) m.ttl = Duration(n["ttl"], "ttl");
    if (n["optional"]) m.optional = Bool(n["optional"], "optional");
    return m;
  }

  const std::string file_;
  const RuleContext& ctx_;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path + ": cannot read rule file");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string LabelDef::Signature() const {
  std::string s = name + "\x1f" + field + "\x1f" + constant + "\x1f" +
                  (status_class ? "1" : "0");
  for (const auto& r : replace) s += "\x1fr" + r.regex + "\x1e" + r.with;
  for (const auto& [k, v] : map) s += "\x1fm" + k + "\x1e" + v;
  if (default_value)
    s += "\x1f"
         "d" +
         *default_value;
  return s;
}

std::string MetricDef::Signature() const {
  std::ostringstream s;
  s << static_cast<int>(type) << '\x1f' << name;
  for (const auto& l : labels) s << '\x1f' << l.name;
  for (double b : buckets) s << '\x1f' << b;
  return s.str();
}

RuleSetDef ParseRules(const std::string& text, const std::string& file,
                      const RuleContext& ctx) {
  return Parser(file, ctx).Parse(text);
}

std::vector<std::string> RuleFields(const RuleDef& rule) {
  std::vector<std::string> fields;
  if (!rule.regex.empty()) {
    RE2 re(rule.regex, PatternOptions());
    for (const auto& [name, index] : re.NamedCapturingGroups()) {
      fields.push_back(name);
    }
    return fields;
  }
  fields = NginxVariables(rule.log_format);
  for (const auto& v : NginxVariables(rule.log_format)) {
    if (v == "request") {
      fields.push_back("method");
      fields.push_back("path");
      fields.push_back("protocol");
    }
  }
  return fields;
}

void ValidateRules(RuleSetDef& set, const RuleContext& ctx) {
  (void)ctx;
  std::set<std::string> rule_names;
  std::map<std::string, const MetricDef*> metrics;
  for (auto& rule : set.rules) {
    if (!rule_names.insert(rule.name).second) {
      throw ConfigError(rule.loc.str() + ": rule name '" + rule.name +
                        "' is used twice");
    }
    std::vector<std::string> fields = RuleFields(rule);
    std::set<std::string> have(fields.begin(), fields.end());
    auto missing = [&](const std::string& f) {
      return !f.empty() && !have.count(f);
    };
    auto unknown = [&](const SourceLoc& loc, const std::string& what,
                       const std::string& f) {
      throw ConfigError(
          loc.str() + ": rule '" + rule.name + "': " + what +
          ": unknown field '" + f + "' (" +
          (rule.regex.empty() ? "the log_format has: " : "the regex names: ") +
          Join(fields) + ")");
    };
    if (rule.time && missing(rule.time->field)) {
      unknown(rule.time->loc, "time", rule.time->field);
    }
    for (auto* filters : {&rule.match, &rule.skip}) {
      for (const auto& f : *filters) {
        if (missing(f.field)) unknown(f.loc, "filter", f.field);
        RE2 re(f.regex, PatternOptions());
        if (!re.ok()) {
          throw ConfigError(f.loc.str() + ": bad regex: " + re.error());
        }
      }
    }
    std::vector<MetricDef> kept;
    for (auto& m : rule.metrics) {
      bool skip = false;
      if (missing(m.value_field)) {
        if (!m.optional)
          unknown(m.loc, "metric '" + m.name + "'", m.value_field);
        skip = true;
      }
      for (const auto& l : m.labels) {
        if (missing(l.field)) {
          if (!m.optional) {
            unknown(l.loc, "label '" + l.name + "'", l.field);
          }
          skip = true;
        }
      }
      if (skip) continue;
      auto it = metrics.find(m.name);
      if (it != metrics.end()) {
        if (it->second->Signature() != m.Signature()) {
          throw ConfigError(m.loc.str() + ": metric '" + m.name +
                            "' is defined again with a different type, labels "
                            "or buckets (first at " +
                            it->second->loc.str() + ")");
        }
      }
      kept.push_back(std::move(m));
    }
    rule.metrics = std::move(kept);
    for (const auto& m : rule.metrics) metrics.emplace(m.name, &m);
  }
}

RuleSetDef LoadRules(const std::vector<std::string>& files,
                     const RuleContext& ctx) {
  RuleSetDef all;
  if (files.empty()) {
    all = ParseRules(BuiltinNginxRules(), "rules/nginx.yml (built in)", ctx);
  }
  for (const auto& f : files) {
    RuleSetDef one = ParseRules(ReadFile(f), f, ctx);
    for (auto& r : one.rules) all.rules.push_back(std::move(r));
  }
  ValidateRules(all, ctx);
  return all;
}

}  // namespace sshtail
