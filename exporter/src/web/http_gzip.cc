#include "web/http_gzip.h"

#include <zlib.h>

#include <cctype>
#include <cstdlib>

namespace sshtail {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  return s;
}

bool EqualsNoCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

// The q-value of one element's parameters ("q=0.5"); 1 when absent, 0 when
// malformed (a coding we cannot read is not accepted).
double QValue(std::string_view params) {
  while (!params.empty()) {
    size_t semi = params.find(';');
    std::string_view p = Trim(params.substr(0, semi));
    params = semi == std::string_view::npos ? std::string_view{}
                                            : params.substr(semi + 1);
    if (p.size() < 2 || !(p[0] == 'q' || p[0] == 'Q') || p[1] != '=') {
      continue;
    }
    std::string v(Trim(p.substr(2)));
    if (v.empty() || v.size() > 5) return 0;
    char* end = nullptr;
    double q = std::strtod(v.c_str(), &end);
    if (end != v.c_str() + v.size() || q < 0 || q > 1) return 0;
    return q;
  }
  return 1;
}

}  // namespace

bool AcceptsGzip(std::string_view header) {
  int gzip = -1;  // -1: not named; else 0 or 1
  int any = -1;
  while (!header.empty()) {
    size_t comma = header.find(',');
    std::string_view element = header.substr(0, comma);
    header = comma == std::string_view::npos ? std::string_view{}
                                             : header.substr(comma + 1);
    size_t semi = element.find(';');
    std::string_view coding = Trim(element.substr(0, semi));
    double q =
        semi == std::string_view::npos ? 1 : QValue(element.substr(semi + 1));
    if (EqualsNoCase(coding, "gzip") || EqualsNoCase(coding, "x-gzip")) {
      gzip = q > 0;
    } else if (coding == "*") {
      any = q > 0;
    }
  }
  return gzip == 1 || (gzip == -1 && any == 1);
}

std::string GzipCompress(std::string_view in) {
  if (in.size() > (uInt{1} << 31)) return {};
  z_stream z{};
  // 15 + 16: a gzip header and trailer instead of zlib's.
  if (deflateInit2(&z, Z_BEST_SPEED, Z_DEFLATED, 15 + 16, 8,
                   Z_DEFAULT_STRATEGY) != Z_OK) {
    return {};
  }
  std::string out(deflateBound(&z, static_cast<uLong>(in.size())), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  int rc = deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  if (rc != Z_STREAM_END) return {};
  return out;
}

}  // namespace sshtail
