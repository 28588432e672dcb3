// Line evaluation with the built-in timed rules, a JSON-escaped format and a
// regex rule with mapping and filters. Lines must never crash; the timed
// rules must count the same through the scan path and through groups.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz_util.h"

using namespace sshtail;

namespace {

const char* kMapping = R"(
rules:
  - name: json
    log_format: '{"s":$status,"r":"$request","u":"$http_user_agent","t":$request_time}'
    escape: json
    metrics:
      - {name: json_total, type: counter, labels: {method: method, ua: http_user_agent, s: status}}
      - {name: json_seconds, type: histogram, value: request_time}
  - name: kv
    regex: '^(?P<k>\w+)=(?P<v>[^ ]*)(?: (?P<n>[-0-9.,: ]+))?$'
    skip: {field: k, regex: '^skip'}
    metrics:
      - name: kv_total
        type: counter
        labels:
          k: {field: k, replace: [{regex: '^(a)(\w*)', with: '\2\1'}], default: z}
          v: {field: v, map: {x: y}, status_class: true}
        max_series: 5
      - {name: kv_value, type: gauge, value: n, labels: {k: k}}
      - {name: kv_sum, type: gauge, value: n, action: add}
)";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static RuleContext timed = [] {
    RuleContext c;
    c.default_format = "timed";
    return c;
  }();
  static FuzzRules* mapping = new FuzzRules(kMapping, {});
  FuzzRules scan(BuiltinNginxRules(), timed, true);
  FuzzRules groups(BuiltinNginxRules(), timed, false);
  std::string in(reinterpret_cast<const char*>(data), size);
  size_t start = 0;
  while (start <= in.size()) {
    size_t nl = in.find('\n', start);
    if (nl == std::string::npos) nl = in.size();
    std::string_view line(in.data() + start, nl - start);
    bool a = scan.Line(line);
    bool b = groups.Line(line);
    if (a != b) {
      std::fprintf(stderr, "match differs for [%.*s]\n",
                   static_cast<int>(line.size()), line.data());
      std::abort();
    }
    mapping->Line(line);
    start = nl + 1;
  }
  if (scan.Dump() != groups.Dump()) {
    std::fprintf(stderr, "scan and groups differ\n%s---\n%s",
                 scan.Dump().c_str(), groups.Dump().c_str());
    std::abort();
  }
  mapping->Dump();
  return 0;
}
