// The log_format compiler: any format that tokenizes must compile to a
// valid RE2 pattern, and for any line, the scan path and the capture-group
// path must extract the same fields.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz_util.h"
#include "sshtail/nginx_format.h"

using namespace sshtail;

namespace {

// The format, as YAML-safe text: a metric per variable, all as labels.
std::string RulesFor(const std::string& format,
                     const std::vector<std::string>& vars, const char* esc) {
  std::string y = "rules:\n  - name: f\n    log_format: \"";
  for (char c : format) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(c));
    y += buf;
  }
  y += "\"\n    escape: ";
  y += esc;
  y += "\n    nginx_variables: [";
  for (size_t i = 0; i < vars.size(); ++i) y += (i ? "," : "") + vars[i];
  y += "]\n    metrics:\n      - name: m\n        type: counter\n        "
       "labels:\n";
  for (size_t i = 0; i < vars.size() && i < 6; ++i) {
    y += "          l" + std::to_string(i) + ": " + vars[i] + "\n";
  }
  return y;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string in(reinterpret_cast<const char*>(data), size);
  size_t nl = in.find('\n');
  std::string format = in.substr(0, nl);
  std::string line = nl == std::string::npos ? "" : in.substr(nl + 1);
  if (format.empty() || format.size() > 300) return 0;
  NginxEscape escape = NginxEscape::kDefault;
  std::string expanded;
  std::vector<std::string> vars;
  try {
    expanded = ExpandNginxFormat(format, &escape);
    vars = NginxVariables(expanded);
  } catch (const std::invalid_argument&) {
    return 0;
  }
  if (expanded.empty() || vars.size() > 20 ||
      expanded.find('\0') != std::string::npos) {
    return 0;
  }
  std::set<std::string> wanted(vars.begin(), vars.end());
  NginxFormat f = CompileNginxFormat(expanded, escape, wanted);
  RE2 re(f.regex, PatternOptions());
  if (!re.ok()) {
    std::fprintf(stderr, "format %s compiled to a bad pattern %s: %s\n",
                 expanded.c_str(), f.regex.c_str(), re.error().c_str());
    std::abort();
  }
  // Scan vs groups: both paths must count the same.
  const char* esc = escape == NginxEscape::kJson   ? "json"
                    : escape == NginxEscape::kNone ? "none"
                                                   : "default";
  std::string yaml = RulesFor(expanded, vars, esc);
  try {
    FuzzRules scan(yaml, {}, true);
    FuzzRules groups(yaml, {}, false);
    bool a = scan.Line(line);
    bool b = groups.Line(line);
    if (a != b || scan.Dump() != groups.Dump()) {
      std::fprintf(
          stderr, "scan and groups differ for format [%s] line [%s]\n%s---\n%s",
          expanded.c_str(), line.c_str(), scan.Dump().c_str(),
          groups.Dump().c_str());
      std::abort();
    }
  } catch (const ConfigError&) {
    // e.g. a variable name that is not a valid label source; fine.
  }
  return 0;
}
