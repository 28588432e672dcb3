// Content negotiation and compression of /metrics.
#include "web/http_gzip.h"

#include <zlib.h>

#include <catch2/catch.hpp>
#include <string>

namespace sshtail {
namespace {

std::string Gunzip(const std::string& in) {
  z_stream z{};
  REQUIRE(inflateInit2(&z, 15 + 16) == Z_OK);
  std::string out;
  char buf[4096];
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  int rc = Z_OK;
  while (rc == Z_OK) {
    z.next_out = reinterpret_cast<Bytef*>(buf);
    z.avail_out = sizeof buf;
    rc = inflate(&z, Z_NO_FLUSH);
    out.append(buf, sizeof buf - z.avail_out);
  }
  inflateEnd(&z);
  REQUIRE(rc == Z_STREAM_END);
  return out;
}

TEST_CASE("Accept-Encoding: gzip only where the client accepts it") {
  // What Prometheus sends.
  CHECK(AcceptsGzip("gzip"));
  CHECK(AcceptsGzip("gzip, deflate, br"));
  CHECK(AcceptsGzip("deflate,GZIP;q=0.5"));
  CHECK(AcceptsGzip("x-gzip"));
  CHECK(AcceptsGzip("*"));
  CHECK(AcceptsGzip("identity;q=1, *;q=0.1"));
  CHECK_FALSE(AcceptsGzip(""));
  CHECK_FALSE(AcceptsGzip("identity"));
  CHECK_FALSE(AcceptsGzip("deflate, br"));
  CHECK_FALSE(AcceptsGzip("gzip;q=0"));
  CHECK_FALSE(AcceptsGzip("gzip;q=0.000"));
  CHECK_FALSE(AcceptsGzip("*, gzip;q=0"));  // named beats the wildcard
  CHECK_FALSE(AcceptsGzip("*;q=0"));
  CHECK_FALSE(AcceptsGzip("gzip;q=abc"));  // unreadable: not accepted
  CHECK_FALSE(AcceptsGzip("gzipped"));
}

TEST_CASE("gzip output decompresses to the input") {
  std::string text;
  for (int i = 0; i < 20000; ++i) {
    text += "nginx_http_requests_total{source=\"web" + std::to_string(i % 97) +
            "\",status=\"200\"} " + std::to_string(i) + "\n";
  }
  std::string gz = GzipCompress(text);
  REQUIRE(gz.size() > 18);
  CHECK(static_cast<unsigned char>(gz[0]) == 0x1f);
  CHECK(static_cast<unsigned char>(gz[1]) == 0x8b);
  CHECK(gz.size() < text.size() / 4);
  CHECK(Gunzip(gz) == text);
  CHECK(Gunzip(GzipCompress("")).empty());
}

}  // namespace
}  // namespace sshtail
