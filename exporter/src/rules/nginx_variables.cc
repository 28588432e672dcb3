// nginx variables known to exist, from nginx.org's variable index (core,
// http modules and common add-ons), and the prefixes of variable families.
#include "rules/nginx_variables.h"

#include <algorithm>
#include <array>
#include <string_view>
#include <vector>

namespace sshtail {
namespace {

constexpr std::array<std::string_view, 146> kNames = {
    "ancient_browser",
    "arg",
    "args",
    "balancer_ip",
    "binary_remote_addr",
    "body_bytes_sent",
    "bytes_received",
    "bytes_sent",
    "connection",
    "connection_requests",
    "connection_time",
    "connections_active",
    "connections_reading",
    "connections_waiting",
    "connections_writing",
    "content_length",
    "content_type",
    "date_gmt",
    "date_local",
    "document_root",
    "document_uri",
    "fastcgi_path_info",
    "fastcgi_script_name",
    "geoip_area_code",
    "geoip_city",
    "geoip_city_continent_code",
    "geoip_city_country_code",
    "geoip_city_country_code3",
    "geoip_city_country_name",
    "geoip_country_code",
    "geoip_country_code3",
    "geoip_country_name",
    "geoip_dma_code",
    "geoip_latitude",
    "geoip_longitude",
    "geoip_org",
    "geoip_postal_code",
    "geoip_region",
    "geoip_region_name",
    "gzip_ratio",
    "host",
    "hostname",
    "http2",
    "http3",
    "https",
    "invalid_referer",
    "is_args",
    "jwt_claim",
    "jwt_header",
    "jwt_payload",
    "limit_conn_status",
    "limit_rate",
    "limit_req_status",
    "memcached_key",
    "modern_browser",
    "msec",
    "msie",
    "nginx_version",
    "pid",
    "pipe",
    "protocol",
    "proxy_add_x_forwarded_for",
    "proxy_host",
    "proxy_port",
    "proxy_protocol_addr",
    "proxy_protocol_port",
    "proxy_protocol_server_addr",
    "proxy_protocol_server_port",
    "query_string",
    "quic",
    "realip_remote_addr",
    "realip_remote_port",
    "realpath_root",
    "remote_addr",
    "remote_port",
    "remote_user",
    "request",
    "request_body",
    "request_body_file",
    "request_completion",
    "request_filename",
    "request_id",
    "request_length",
    "request_method",
    "request_time",
    "request_uri",
    "scheme",
    "secure_link",
    "secure_link_expires",
    "server_addr",
    "server_name",
    "server_port",
    "server_protocol",
    "session_log_binary_id",
    "session_log_id",
    "session_time",
    "slice_range",
    "ssl_alpn_protocol",
    "ssl_cipher",
    "ssl_ciphers",
    "ssl_client_cert",
    "ssl_client_escaped_cert",
    "ssl_client_fingerprint",
    "ssl_client_i_dn",
    "ssl_client_i_dn_legacy",
    "ssl_client_raw_cert",
    "ssl_client_s_dn",
    "ssl_client_s_dn_legacy",
    "ssl_client_serial",
    "ssl_client_v_end",
    "ssl_client_v_remain",
    "ssl_client_v_start",
    "ssl_client_verify",
    "ssl_curve",
    "ssl_curves",
    "ssl_early_data",
    "ssl_preread_alpn_protocols",
    "ssl_preread_protocol",
    "ssl_preread_server_name",
    "ssl_protocol",
    "ssl_server_name",
    "ssl_session_id",
    "ssl_session_reused",
    "status",
    "tcpinfo_rcv_space",
    "tcpinfo_rtt",
    "tcpinfo_rttvar",
    "tcpinfo_snd_cwnd",
    "time_iso8601",
    "time_local",
    "uid_got",
    "uid_reset",
    "uid_set",
    "upstream_addr",
    "upstream_bytes_received",
    "upstream_bytes_sent",
    "upstream_cache_status",
    "upstream_connect_time",
    "upstream_first_byte_time",
    "upstream_header_time",
    "upstream_queue_time",
    "upstream_response_length",
    "upstream_response_time",
    "upstream_session_time",
    "upstream_status",
    "uri",
};

constexpr std::array<std::string_view, 12> kPrefixes = {
    "arg_",           "cookie_",           "http_",         "jwt_claim_",
    "jwt_header_",    "sent_http_",        "sent_trailer_", "upstream_cookie_",
    "upstream_http_", "upstream_trailer_", "geoip2_",       "ssl_",
};

}  // namespace

bool IsKnownNginxVariable(std::string_view name) {
  if (std::find(kNames.begin(), kNames.end(), name) != kNames.end()) {
    return true;
  }
  for (auto p : kPrefixes) {
    if (name.size() > p.size() && name.substr(0, p.size()) == p) return true;
  }
  return false;
}

std::string ClosestNginxVariable(std::string_view name) {
  // Levenshtein distance; good enough for typos like $remote_adr.
  auto distance = [](std::string_view a, std::string_view b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      size_t prev = row[0];
      row[0] = i;
      for (size_t j = 1; j <= b.size(); ++j) {
        size_t cur = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1,
                           prev + (a[i - 1] == b[j - 1] ? 0 : 1)});
        prev = cur;
      }
    }
    return row[b.size()];
  };
  std::string best;
  size_t best_d = 4;
  for (auto n : kNames) {
    size_t d = distance(name, n);
    if (d < best_d) {
      best_d = d;
      best = std::string(n);
    }
  }
  return best;
}

}  // namespace sshtail
