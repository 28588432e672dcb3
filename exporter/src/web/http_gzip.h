#pragma once

#include <string>
#include <string_view>

namespace sshtail {

/// True if an Accept-Encoding header value accepts gzip: a `gzip` (or `*`)
/// coding whose q-value is not 0 (RFC 9110 12.5.3), not overridden by an
/// explicit `gzip;q=0`. Pure function.
bool AcceptsGzip(std::string_view accept_encoding);

/// `in` as one gzip member (fast compression level: a scrape is CPU on the
/// exporter's side and the exposition compresses well anyway). Empty on
/// failure, which only an allocation failure causes. Pure function.
std::string GzipCompress(std::string_view in);

}  // namespace sshtail
