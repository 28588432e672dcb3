// The rule loader: any input either loads or is rejected with a
// ConfigError ("file:line: ..."); nothing else may escape or crash. What
// loads must also bind and run on a line.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz_util.h"

using namespace sshtail;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  if (size > 4096) return 0;
  RuleContext ctx;
  ctx.default_format = "timed";
  try {
    FuzzRules r(text, ctx);
    r.Line(
        "1.2.3.4 - - [25/Nov/2026:08:15:21 +0000] \"GET /a HTTP/1.1\" 200 1 "
        "\"-\" \"curl\" 0.001 0.002");
    r.Line("job=a took=1.5 x");
    r.Dump();
  } catch (const ConfigError& e) {
    std::string what = e.what();
    if (what.rfind("fuzz.yml", 0) != 0) {
      std::fprintf(stderr, "error without file name: %s\n", what.c_str());
      std::abort();
    }
  }
  return 0;
}
