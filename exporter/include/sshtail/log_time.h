#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace sshtail {

/// How a line's own time is written, for --output openmetrics (backfill).
/// Parsed without locale: month names are English, as nginx writes them.
/// Plain value type; Parse() is const and thread-safe.
class TimeLayout {
 public:
  enum class Kind {
    kNone,     ///< no time: every line is unmatched for backfill
    kPattern,  ///< strftime-like pattern (see FromSpec)
    kIso8601,  ///< 2026-12-02T07:34:31+00:00 ($time_iso8601), also with
               ///< a fraction, Z, +0000, a space instead of T
    kUnix,     ///< seconds since the epoch, maybe fractional ($msec)
  };

  TimeLayout() = default;

  /// A named layout or a pattern:
  ///   nginx (= "%d/%b/%Y:%H:%M:%S %z", $time_local), iso8601 ($time_iso8601),
  ///   unix or msec (epoch seconds, "1733125471.123"),
  ///   or a pattern of literal bytes and %Y %m %d %H %M %S %b %z %f %%.
  /// %S takes an optional fraction (",123" or ".123"); %f is digits of a
  /// fraction; %z is Z, +HHMM or +HH:MM; without %z the time is UTC.
  /// Returns false with `error` set for an unknown directive.
  static bool FromSpec(std::string_view spec, TimeLayout* out,
                       std::string* error);

  /// The layout of an nginx variable that holds a time: time_local,
  /// time_iso8601, msec; kind() == kNone for anything else.
  static TimeLayout ForNginxVariable(std::string_view variable);

  /// Seconds since the Unix epoch (UTC). False when `text` does not have
  /// this layout or names an impossible date; never throws.
  bool Parse(std::string_view text, double* seconds) const;

  Kind kind() const { return kind_; }
  const std::string& pattern() const { return pattern_; }

 private:
  Kind kind_ = Kind::kNone;
  std::string pattern_;
};

/// Days from 1970-01-01 to the given proleptic Gregorian date (any year).
long long DaysFromCivil(long long year, unsigned month, unsigned day);

}  // namespace sshtail
