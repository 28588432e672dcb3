#include "sshtail/engine.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <deque>
#include <map>
#include <set>

#include "sshtail/backfill.h"
#include "sshtail/text_format.h"

namespace sshtail {
namespace {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const {
    return std::hash<std::string_view>{}(s);
  }
};

// Past this many cached label keys a thread's cache starts over: keys are
// raw values (before mapping), so a capped metric fed a million distinct
// paths must not keep a million keys.
constexpr size_t kMaxCachedKeys = 65536;
// ... and a byte bound, since a key can be as long as a line (64 KiB).
constexpr size_t kMaxCachedBytes = 16 << 20;

std::string_view StatusClass(std::string_view s) {
  static const char* kClasses[] = {"0xx", "1xx", "2xx", "3xx", "4xx",
                                   "5xx", "6xx", "7xx", "8xx", "9xx"};
  if (s.size() == 3 && s[0] >= '0' && s[0] <= '9' && s[1] >= '0' &&
      s[1] <= '9' && s[2] >= '0' && s[2] <= '9') {
    return kClasses[s[0] - '0'];
  }
  return "other";
}

// The last of an nginx multi-value ("502, 200 : 200" -> "200").
std::string_view LastValue(std::string_view s) {
  size_t comma = s.rfind(", ");
  size_t colon = s.rfind(" : ");
  size_t cut = std::string_view::npos;
  size_t skip = 0;
  if (comma != std::string_view::npos) {
    cut = comma;
    skip = 2;
  }
  if (colon != std::string_view::npos &&
      (cut == std::string_view::npos || colon > cut)) {
    cut = colon;
    skip = 3;
  }
  return cut == std::string_view::npos ? s : s.substr(cut + skip);
}

bool ParsePlain(std::string_view s, double* out) {
  if (s.empty()) return false;
  // Fast path: up to 15 digits with an optional fraction. The mantissa and
  // the power of ten are exact doubles, so one division rounds correctly,
  // exactly as from_chars would.
  static constexpr double kPow10[] = {1,    1e1,  1e2,  1e3, 1e4,  1e5,
                                      1e6,  1e7,  1e8,  1e9, 1e10, 1e11,
                                      1e12, 1e13, 1e14, 1e15};
  uint64_t mantissa = 0;
  int digits = 0;
  int frac = -1;
  size_t i = 0;
  for (; i < s.size() && digits <= 15; ++i) {
    char c = s[i];
    if (c >= '0' && c <= '9') {
      mantissa = mantissa * 10 + static_cast<uint64_t>(c - '0');
      ++digits;
      if (frac >= 0) ++frac;
    } else if (c == '.' && frac < 0) {
      frac = 0;
    } else {
      break;
    }
  }
  if (i == s.size() && digits > 0 && digits <= 15) {
    double v = static_cast<double>(mantissa);
    *out = frac > 0 ? v / kPow10[frac] : v;
    return true;
  }
  // nginx's "-" (no upstream, no value): the common case of a failure.
  if (s.size() == 1 && s[0] == '-') return false;
  const char* b = s.data();
  const char* e = b + s.size();
  if (*b == '+') ++b;
  auto [p, ec] = std::from_chars(b, e, *out);
  return ec == std::errc() && p == e;
}

}  // namespace

std::string_view NormalizeMethod(std::string_view t) {
  static constexpr std::string_view kMethods[] = {
      "GET",       "POST",    "HEAD",    "PUT",       "DELETE",
      "PATCH",     "OPTIONS", "CONNECT", "TRACE",     "PROPFIND",
      "PROPPATCH", "MKCOL",   "COPY",    "MOVE",      "LOCK",
      "UNLOCK",    "SEARCH",  "REPORT",  "MKCALENDAR"};
  for (auto m : kMethods) {
    if (t == m) return m;
  }
  return "other";
}

bool ParseLogNumber(std::string_view s, double* out) {
  if (ParsePlain(s, out)) return true;
  if (s.find(' ') == std::string_view::npos &&
      s.find(',') == std::string_view::npos) {
    return false;
  }
  double sum = 0;
  bool any = false;
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = i;
    while (j < s.size() && s[j] != ',' && s[j] != ' ' && s[j] != ':') ++j;
    std::string_view item = s.substr(i, j - i);
    double v;
    if (!item.empty() && item != "-") {
      if (!ParsePlain(item, &v)) return false;
      sum += v;
      any = true;
    }
    // Skip separators ", " and " : ".
    while (j < s.size() && (s[j] == ',' || s[j] == ' ' || s[j] == ':')) ++j;
    if (j == s.size()) break;
    i = j;
  }
  if (any) *out = sum;
  return any;
}

std::shared_ptr<const CompiledRules> CompiledRules::Build(
    const RuleSetDef& def, const MetricStore* store, bool allow_scan,
    bool with_time) {
  auto out = std::shared_ptr<CompiledRules>(new CompiledRules());
  for (const auto& r : def.rules) {
    CompiledRule cr;
    cr.name = r.name;
    // Fields the metrics and filters use.
    std::set<std::string> used;
    for (const auto& f : r.match) used.insert(f.field);
    for (const auto& f : r.skip) used.insert(f.field);
    for (const auto& m : r.metrics) {
      if (!m.value_field.empty()) used.insert(m.value_field);
      for (const auto& l : m.labels) {
        if (!l.field.empty()) used.insert(l.field);
      }
    }
    // Backfill: the line's own time, captured like any other field.
    std::string time_name;
    if (with_time) {
      if (r.time) {
        time_name = r.time->field;
        cr.time_layout = r.time->layout;
      } else if (r.regex.empty()) {
        std::vector<std::string> vars;
        try {
          vars = NginxVariables(r.log_format);
        } catch (const std::invalid_argument&) {
        }
        for (const char* v : {"msec", "time_iso8601", "time_local"}) {
          if (std::find(vars.begin(), vars.end(), v) != vars.end()) {
            time_name = v;
            break;
          }
        }
        cr.time_layout = TimeLayout::ForNginxVariable(time_name);
      }
      if (time_name.empty()) {
        throw ConfigError(
            r.loc.str() + ": rule '" + r.name +
            "' has no time for --output openmetrics: " +
            (r.regex.empty()
                 ? "its log_format has none of $time_local, $time_iso8601, "
                   "$msec"
                 : "give it time: {field: GROUP, format: LAYOUT}"));
      }
      used.insert(time_name);
    }
    std::map<std::string, int> index;  // field name -> fields[] index
    auto add_field = [&](const std::string& name, FieldRef ref) {
      index[name] = static_cast<int>(cr.fields.size());
      cr.fields.push_back(ref);
    };
    if (!r.regex.empty()) {
      // Unused named groups become non-capturing, and RE2 is asked only for
      // groups up to the last one used.
      std::string pattern = r.regex;
      RE2 probe(pattern, PatternOptions());
      if (!probe.ok()) {
        throw ConfigError(r.loc.str() + ": bad regex: " + probe.error());
      }
      for (const auto& [name, group] : probe.NamedCapturingGroups()) {
        if (used.count(name)) continue;
        std::string token = "(?P<" + name + ">";
        size_t at = pattern.find(token);
        if (at != std::string::npos) pattern.replace(at, token.size(), "(?:");
      }
      RE2 final_re(pattern, PatternOptions());
      if (!final_re.ok()) pattern = r.regex;  // keep the user's as is
      RE2 re(pattern, PatternOptions());
      int max_group = 0;
      for (const auto& [name, group] : re.NamedCapturingGroups()) {
        if (!used.count(name)) continue;
        FieldRef ref;
        ref.group = group;
        add_field(name, ref);
        max_group = std::max(max_group, group);
      }
      cr.pattern = pattern;
      cr.submatches = max_group + 1;
      cr.escape = NginxEscape::kNone;
    } else {
      // An nginx variable; $request also gives method, path and protocol.
      auto add_variable = [&](const std::string& var, FieldRef ref) {
        ref.multi = IsNginxMultiValue(var);
        add_field(var, ref);
        if (var != "request") return;
        for (auto [name, kind] :
             {std::pair{"method", FieldRef::Kind::kMethod},
              std::pair{"path", FieldRef::Kind::kPath},
              std::pair{"protocol", FieldRef::Kind::kProtocol}}) {
          FieldRef derived = ref;
          derived.kind = kind;
          add_field(name, derived);
        }
      };
      std::set<std::string> wanted;
      for (const auto& f : used) {
        if (f == "method" || f == "path" || f == "protocol") {
          wanted.insert("request");
        } else {
          wanted.insert(f);
        }
      }
      NginxFormat nf;
      try {
        nf = CompileNginxFormat(r.log_format, r.escape, wanted);
      } catch (const std::invalid_argument& e) {
        throw ConfigError(r.loc.str() + ": " + e.what());
      }
      cr.pattern = nf.regex;
      cr.escape = r.escape;
      cr.submatches = static_cast<int>(nf.groups.size()) + 1;
      if (allow_scan && !nf.scan.empty()) {
        // Scan mode: the scanner matches; fields are its variables.
        cr.scan = nf.scan;
        cr.submatches = 0;
        std::set<std::string> done;
        for (size_t v = 0; v < cr.scan.steps.size(); ++v) {
          const std::string& var = nf.variables[v];
          if (!wanted.count(var) || !done.insert(var).second) continue;
          FieldRef ref;
          ref.slot = static_cast<int>(v);
          add_variable(var, ref);
        }
        nf.groups.clear();
      }
      for (size_t g = 0; g < nf.groups.size(); ++g) {
        cr.group_seps.push_back(nf.groups[g].seps);
        for (size_t p = 0; p < nf.groups[g].vars.size(); ++p) {
          const std::string& var = nf.groups[g].vars[p];
          FieldRef ref;
          ref.group = static_cast<int>(g) + 1;
          ref.part = static_cast<int>(p);
          add_variable(var, ref);
        }
      }
    }
    RE2 check(cr.pattern, PatternOptions());
    if (!check.ok()) {
      throw ConfigError(r.loc.str() + ": rule '" + r.name +
                        "': pattern does not compile: " + check.error());
    }
    auto field_of = [&](const std::string& name, const SourceLoc& loc) {
      auto it = index.find(name);
      if (it == index.end()) {
        throw ConfigError(loc.str() + ": rule '" + r.name +
                          "': unknown field '" + name + "'");
      }
      return it->second;
    };
    if (!time_name.empty()) cr.time_field = field_of(time_name, r.loc);
    for (const auto& f : r.match) {
      cr.filters.push_back(
          CompiledFilter{field_of(f.field, f.loc), f.regex, false});
    }
    for (const auto& f : r.skip) {
      cr.filters.push_back(
          CompiledFilter{field_of(f.field, f.loc), f.regex, true});
    }
    // Group metrics by their label definitions.
    std::map<std::string, size_t> group_of;
    for (const auto& m : r.metrics) {
      std::string sig;
      for (const auto& l : m.labels) sig += l.Signature() + "\x1d";
      auto it = group_of.find(sig);
      if (it == group_of.end()) {
        CompiledGroup g;
        for (const auto& l : m.labels) {
          CompiledLabel cl;
          cl.def = l;
          if (!l.field.empty()) cl.field = field_of(l.field, l.loc);
          for (const auto& rep : l.replace) {
            auto re = std::make_unique<RE2>(rep.regex, PatternOptions());
            if (!re->ok()) {
              throw ConfigError(rep.loc.str() + ": bad regex: " + re->error());
            }
            cl.replace.emplace_back(std::move(re), rep.with);
          }
          for (const auto& [k, v] : l.map) cl.map.emplace(k, v);
          g.labels.push_back(std::move(cl));
        }
        it = group_of.emplace(sig, cr.groups.size()).first;
        cr.groups.push_back(std::move(g));
      }
      CompiledMetric cm;
      cm.state = store ? store->Find(m.name) : nullptr;
      if (store && cm.state == nullptr) {
        throw ConfigError(m.loc.str() + ": metric '" + m.name +
                          "' is not in the store");
      }
      cm.type = m.type;
      cm.value_field =
          m.value_field.empty() ? -1 : field_of(m.value_field, m.loc);
      cm.gauge_set = m.gauge_set;
      cm.buckets = m.buckets;
      cr.groups[it->second].metrics.push_back(std::move(cm));
    }
    out->rules_.push_back(std::move(cr));
  }
  return out;
}

struct Evaluator::Impl {
  struct Acc {
    Series* series = nullptr;
    double add = 0;
    double sum = 0;
    std::vector<double> buckets;
    double set_value = 0;
    uint64_t set_version = 0;
    bool has_set = false;
    bool dirty = false;
    BackfillStore::Series* backfill = nullptr;  // backfill mode only
  };
  struct Entry {
    prometheus::Labels labels;  // series are created at first observation
    std::vector<Acc> accs;
  };
  using Cache = std::unordered_map<std::string, std::unique_ptr<Entry>,
                                   StringHash, std::equal_to<>>;
  struct GroupRt {
    const CompiledGroup* def;
    Cache cache;
    size_t cache_bytes = 0;
    // The last line's key and entry: most lines repeat the label values of
    // the one before (GET 200), and then the key's hash is not needed.
    std::string last_key;
    Entry* last = nullptr;
  };
  struct RuleRt {
    const CompiledRule* def;
    std::unique_ptr<RE2> re;
    std::vector<std::unique_ptr<RE2>> filters;
    std::vector<GroupRt> groups;
    // Per line: field texts computed so far, and scanned variable spans.
    std::vector<std::string_view> memo;
    std::vector<uint64_t> memo_line;
    std::vector<std::string_view> spans;
  };

  Impl(MetricStore& s, const std::vector<SourceLabels>& src)
      : store(s), sources(src) {}

  // The runtime of one rule set (a source's format picks one of several).
  struct SetRt {
    std::shared_ptr<const CompiledRules> rules;
    std::vector<RuleRt> rule_rt;
  };

  // Keeps the runtimes of several rule sets: switching between the formats
  // of different sources must not recompile or drop caches.
  std::vector<RuleRt>& Bind(const std::shared_ptr<const CompiledRules>& rules) {
    uint64_t gen = store.generation();
    if (gen == generation && current != nullptr && current->rules == rules) {
      return current->rule_rt;
    }
    if (gen != generation) {
      // Series pointers may be gone: start over (nothing is pending here,
      // every batch ends with a flush).
      sets.clear();
      current = nullptr;
      generation = gen;
    }
    for (auto& set : sets) {
      if (set.rules == rules) {
        current = &set;
        return set.rule_rt;
      }
    }
    SetRt& set = sets.emplace_back();
    set.rules = rules;
    for (const auto& r : rules->rules()) {
      RuleRt rt;
      rt.def = &r;
      if (r.scan.empty()) {
        rt.re = std::make_unique<RE2>(r.pattern, PatternOptions());
      }
      for (const auto& f : r.filters) {
        rt.filters.push_back(std::make_unique<RE2>(f.regex, PatternOptions()));
      }
      for (const auto& g : r.groups) rt.groups.push_back(GroupRt{&g, {}});
      rt.memo.resize(r.fields.size());
      rt.memo_line.assign(r.fields.size(), 0);
      rt.spans.resize(r.scan.steps.size());
      max_sub = std::max(max_sub, r.submatches);
      set.rule_rt.push_back(std::move(rt));
    }
    subs.resize(static_cast<size_t>(std::max(max_sub, 1)));
    current = &set;
    return set.rule_rt;
  }

  // The text of a field after its kind, before unescaping and mapping.
  // Computed once per line and field.
  std::string_view FieldText(RuleRt& rt, int field) {
    size_t i = static_cast<size_t>(field);
    if (rt.memo_line[i] == line_id) return rt.memo[i];
    rt.memo_line[i] = line_id;
    return rt.memo[i] = ComputeField(rt, field);
  }

  std::string_view ComputeField(const RuleRt& rt, int field) const {
    const CompiledRule& r = *rt.def;
    const FieldRef& f = r.fields[static_cast<size_t>(field)];
    std::string_view t;
    if (f.slot >= 0) {
      t = rt.spans[static_cast<size_t>(f.slot)];
    } else {
      re2::StringPiece sp = subs[static_cast<size_t>(f.group)];
      t = std::string_view(sp.data() ? sp.data() : "", sp.size());
    }
    if (f.slot < 0 && !r.group_seps.empty()) {
      const auto& seps = r.group_seps[static_cast<size_t>(f.group - 1)];
      if (!seps.empty()) {
        // Shared group: the first occurrence of each separator splits it.
        for (int i = 0; i < f.part; ++i) {
          size_t at = t.find(seps[static_cast<size_t>(i)]);
          if (at == std::string_view::npos) return {};
          t.remove_prefix(at + seps[static_cast<size_t>(i)].size());
        }
        if (static_cast<size_t>(f.part) < seps.size()) {
          t = t.substr(0, t.find(seps[static_cast<size_t>(f.part)]));
        }
      }
    }
    switch (f.kind) {
      case FieldRef::Kind::kRaw:
        return t;
      case FieldRef::Kind::kMethod:
        return NormalizeMethod(t.substr(0, t.find(' ')));
      case FieldRef::Kind::kPath: {
        size_t sp1 = t.find(' ');
        if (sp1 == std::string_view::npos) return {};
        std::string_view rest = t.substr(sp1 + 1);
        size_t sp2 = rest.rfind(' ');
        if (sp2 != std::string_view::npos &&
            rest.substr(sp2 + 1).rfind("HTTP/", 0) == 0) {
          rest = rest.substr(0, sp2);
        }
        return rest;
      }
      case FieldRef::Kind::kProtocol: {
        size_t sp2 = t.rfind(' ');
        if (sp2 == std::string_view::npos) return {};
        std::string_view last = t.substr(sp2 + 1);
        return last.rfind("HTTP/", 0) == 0 ? last : std::string_view();
      }
    }
    return t;
  }

  std::string LabelValue(RuleRt& rt, const CompiledLabel& l) {
    const CompiledRule& r = *rt.def;
    if (l.field < 0) return l.def.constant;
    std::string_view raw = FieldText(rt, l.field);
    if (r.fields[static_cast<size_t>(l.field)].multi) raw = LastValue(raw);
    std::string value(UnescapeNginx(raw, r.escape, &scratch));
    if (l.def.status_class) value = std::string(StatusClass(value));
    if (!l.replace.empty()) {
      // The first regex found in the value makes the value `with`, its
      // \1..\9 taken from that match (RE2::Extract).
      bool hit = false;
      std::string out;
      for (const auto& [re, with] : l.replace) {
        if (RE2::Extract(value, *re, with, &out)) {
          value = std::move(out);
          hit = true;
          break;
        }
      }
      if (!hit && l.def.default_value) value = *l.def.default_value;
    }
    if (!l.map.empty()) {
      auto it = l.map.find(value);
      if (it != l.map.end()) {
        value = it->second;
      } else if (l.def.default_value) {
        value = *l.def.default_value;
      }
    }
    return text::ValidUtf8(value);
  }

  Entry* Lookup(RuleRt& rt, GroupRt& g, uint32_t source) {
    key.assign(reinterpret_cast<const char*>(&source), sizeof source);
    for (const auto& l : g.def->labels) {
      if (l.field < 0) continue;
      std::string_view t = FieldText(rt, l.field);
      key.append(t.data(), t.size());
      key.push_back('\0');
    }
    if (g.last != nullptr && key == g.last_key) return g.last;
    auto it = g.cache.find(std::string_view(key));
    if (it != g.cache.end()) {
      g.last_key = key;
      g.last = it->second.get();
      return g.last;
    }
    if (g.cache.size() >= kMaxCachedKeys || g.cache_bytes >= kMaxCachedBytes) {
      Flush();
      g.cache.clear();
      g.cache_bytes = 0;
    }
    prometheus::Labels labels;
    const SourceLabels& src = sources[source];
    labels["source"] = src.name;
    for (const auto& [k, v] : src.labels) labels[k] = v;
    for (const auto& l : g.def->labels) labels[l.def.name] = LabelValue(rt, l);
    auto e = std::make_unique<Entry>();
    e->labels = std::move(labels);
    for (const auto& m : g.def->metrics) {
      Acc a;
      if (m.type == MetricType::kHistogram) {
        a.buckets.assign(m.buckets.size() + 1, 0.0);
      }
      e->accs.push_back(std::move(a));
    }
    Entry* raw = e.get();
    g.cache_bytes += 2 * key.size() + sizeof(Entry) + 64;
    for (const auto& [k, v] : raw->labels) g.cache_bytes += k.size() + v.size();
    g.cache.emplace(key, std::move(e));
    g.last_key = key;
    g.last = raw;
    return raw;
  }

  // Backfill mode: the line's deltas go to its step in the sink. Series
  // come from the store as in live mode, so caps and overflow apply; one
  // the store did not create is its source's overflow series.
  void ApplyBackfill(RuleRt& rt, Entry* e, const CompiledGroup& g) {
    for (size_t i = 0; i < g.metrics.size(); ++i) {
      const CompiledMetric& m = g.metrics[i];
      Acc& a = e->accs[i];
      double v = 1;
      if (m.value_field >= 0 &&
          !ParseLogNumber(FieldText(rt, m.value_field), &v)) {
        continue;
      }
      if (m.type == MetricType::kCounter && v < 0) continue;
      if (a.backfill == nullptr) {
        size_t before = m.state->size();
        a.series = m.state->Get(e->labels);
        if (m.state->size() != before) {
          a.backfill = backfill->Find(a.series, m.state->def(), e->labels);
        } else {
          prometheus::Labels overflow = e->labels;
          for (const auto& l : m.state->def().labels) {
            overflow[l.name] = "__overflow__";
          }
          a.backfill = backfill->Find(a.series, m.state->def(), overflow);
        }
      }
      backfill->Observe(a.backfill, line_time, v);
    }
  }

  void Apply(RuleRt& rt, Entry* e, const CompiledGroup& g) {
    if (backfill != nullptr) {
      ApplyBackfill(rt, e, g);
      return;
    }
    for (size_t i = 0; i < g.metrics.size(); ++i) {
      const CompiledMetric& m = g.metrics[i];
      Acc& a = e->accs[i];
      double v = 1;
      if (m.value_field >= 0 &&
          !ParseLogNumber(FieldText(rt, m.value_field), &v)) {
        continue;  // "-" or no number: nothing observed
      }
      if (a.series == nullptr) a.series = m.state->Get(e->labels);
      switch (m.type) {
        case MetricType::kCounter:
          if (v < 0) continue;
          a.add += v;
          break;
        case MetricType::kGauge:
          if (m.gauge_set) {
            a.set_value = v;
            a.set_version = version;
            a.has_set = true;
          } else {
            a.add += v;
          }
          break;
        case MetricType::kHistogram: {
          size_t b = 0;
          size_t nb = m.buckets.size();
          while (b < nb && m.buckets[b] < v) ++b;
          a.buckets[b] += 1;
          a.sum += v;
          break;
        }
      }
      if (!a.dirty) {
        a.dirty = true;
        dirty.push_back(&a);
      }
    }
  }

  bool Line(std::string_view line, uint32_t source,
            std::vector<RuleRt>& rule_rt) {
    bool any = false;
    bool untimed = false;
    ++line_id;
    re2::StringPiece text(line.data(), line.size());
    for (auto& rt : rule_rt) {
      const CompiledRule& r = *rt.def;
      if (!r.scan.empty()) {
        if (!r.scan.Match(line, rt.spans.data())) continue;
      } else if (!rt.re->Match(text, 0, text.size(), RE2::ANCHOR_BOTH,
                               subs.data(), r.submatches)) {
        continue;
      }
      if (backfill != nullptr &&
          (r.time_field < 0 ||
           !r.time_layout.Parse(FieldText(rt, r.time_field), &line_time))) {
        untimed = true;  // no step to put it in: not counted by this rule
        continue;
      }
      any = true;
      bool pass = true;
      for (size_t i = 0; i < r.filters.size() && pass; ++i) {
        std::string_view f = FieldText(rt, r.filters[i].field);
        bool hit = RE2::PartialMatch(re2::StringPiece(f.data(), f.size()),
                                     *rt.filters[i]);
        pass = r.filters[i].skip ? !hit : hit;
      }
      if (!pass) continue;
      for (auto& g : rt.groups) Apply(rt, Lookup(rt, g, source), *g.def);
    }
    if (untimed && !any) ++untimed_lines;
    return any;
  }

  void Flush() {
    int64_t now = MetricStore::NowSeconds();
    for (Acc* a : dirty) {
      Series* s = a->series;
      if (s->counter && a->add > 0) s->counter->Increment(a->add);
      if (s->gauge) {
        if (a->has_set) {
          std::lock_guard lock(s->set_mutex);
          if (a->set_version >= s->set_version) {
            s->set_version = a->set_version;
            s->gauge->Set(a->set_value);
          }
        } else if (a->add != 0) {
          s->gauge->Increment(a->add);
        }
      }
      if (s->histogram) {
        s->histogram->ObserveMultiple(a->buckets, a->sum);
        std::fill(a->buckets.begin(), a->buckets.end(), 0.0);
      }
      if (s->last_used.load(std::memory_order_relaxed) != now) {
        s->last_used.store(now, std::memory_order_relaxed);
      }
      a->add = 0;
      a->sum = 0;
      a->has_set = false;
      a->dirty = false;
    }
    dirty.clear();
  }

  MetricStore& store;
  const std::vector<SourceLabels>& sources;
  uint64_t generation = 0;
  std::deque<SetRt> sets;  // a deque: RuleRt pointers stay valid
  SetRt* current = nullptr;
  std::vector<re2::StringPiece> subs;
  int max_sub = 0;
  std::string key;
  std::string scratch;
  std::vector<Acc*> dirty;
  uint64_t version = 0;
  uint64_t line_id = 0;
  BackfillStore* backfill = nullptr;
  double line_time = 0;
  uint64_t untimed_lines = 0;
};

Evaluator::Evaluator(MetricStore& store,
                     const std::vector<SourceLabels>& sources)
    : impl_(std::make_unique<Impl>(store, sources)) {}

Evaluator::~Evaluator() = default;

namespace {

// The line loop; kRuns adds the count of unmatched lines in a row (only
// auto-detected sources pay for it, and only on unmatched lines).
template <bool kRuns, typename LineFn>
uint64_t EachLine(const LineBatch& batch, BatchCursor* at, uint32_t* run,
                  uint32_t stop_run, uint64_t max_lines, LineFn&& line) {
  uint64_t unmatched = 0;
  const char* begin = batch.data.data();
  const char* p = begin + at->offset;
  const char* end = begin + batch.data.size();
  uint64_t n = 0;
  while (p < end && n < max_lines) {
    const char* nl = static_cast<const char*>(std::memchr(p, '\n', end - p));
    if (nl == nullptr) nl = end;
    bool matched = line(std::string_view(p, nl - p), at->line_no++);
    p = nl + 1;
    ++n;
    if (!matched) {
      ++unmatched;
      if (kRuns && ++*run >= stop_run) break;
    } else if (kRuns) {
      *run = 0;
    }
  }
  at->offset = std::min(static_cast<size_t>(p - begin), batch.data.size());
  return unmatched;
}

}  // namespace

uint64_t Evaluator::Process(const LineBatch& batch,
                            const std::shared_ptr<const CompiledRules>& rules) {
  BatchCursor at;
  uint64_t unmatched = ProcessLines(batch, rules, &at, nullptr, 0);
  impl_->Flush();
  return unmatched;
}

uint64_t Evaluator::ProcessLines(
    const LineBatch& batch, const std::shared_ptr<const CompiledRules>& rules,
    BatchCursor* at, uint32_t* run, uint32_t stop_run, uint64_t max_lines) {
  auto& rule_rt = impl_->Bind(rules);
  Impl& im = *impl_;
  auto line = [&](std::string_view text, uint64_t line_no) {
    im.version = batch.seq << 24 | (line_no & 0xffffff);
    return im.Line(text, batch.source, rule_rt);
  };
  if (run != nullptr && stop_run > 0) {
    return EachLine<true>(batch, at, run, stop_run, max_lines, line);
  }
  return EachLine<false>(batch, at, run, stop_run, max_lines, line);
}

bool Evaluator::ProcessLine(std::string_view line, uint32_t source,
                            const std::shared_ptr<const CompiledRules>& rules) {
  auto& rule_rt = impl_->Bind(rules);
  return impl_->Line(line, source, rule_rt);
}

void Evaluator::Flush() { impl_->Flush(); }

void Evaluator::SetBackfill(BackfillStore* sink) { impl_->backfill = sink; }

uint64_t Evaluator::untimed_lines() const { return impl_->untimed_lines; }

}  // namespace sshtail
