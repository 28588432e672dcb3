#include "sshtail/log_time.h"

#include <charconv>
#include <cmath>

namespace sshtail {
namespace {

constexpr const char* kNginxLocal = "%d/%b/%Y:%H:%M:%S %z";

bool Digits(std::string_view s, size_t* i, size_t min, size_t max,
            long long* out) {
  long long v = 0;
  size_t n = 0;
  while (n < max && *i < s.size() && s[*i] >= '0' && s[*i] <= '9') {
    v = v * 10 + (s[*i] - '0');
    ++*i;
    ++n;
  }
  if (n < min) return false;
  *out = v;
  return true;
}

// ".123" or ",123" (or nothing): adds the fraction to *frac.
bool Fraction(std::string_view s, size_t* i, bool required, double* frac) {
  if (*i < s.size() && (s[*i] == '.' || s[*i] == ',')) {
    ++*i;
  } else if (required) {
    // %f right after a literal '.' in the pattern: digits only.
  } else {
    return true;
  }
  double scale = 0.1;
  size_t n = 0;
  while (*i < s.size() && s[*i] >= '0' && s[*i] <= '9') {
    *frac += (s[*i] - '0') * scale;
    scale /= 10;
    ++*i;
    ++n;
  }
  return n > 0;
}

int Month(std::string_view s, size_t* i) {
  static const char* kMonths[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                  "jul", "aug", "sep", "oct", "nov", "dec"};
  if (*i + 3 > s.size()) return 0;
  char m[3];
  for (int k = 0; k < 3; ++k) {
    char c = s[*i + static_cast<size_t>(k)];
    m[k] = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }
  for (int k = 0; k < 12; ++k) {
    if (m[0] == kMonths[k][0] && m[1] == kMonths[k][1] &&
        m[2] == kMonths[k][2]) {
      *i += 3;
      return k + 1;
    }
  }
  return 0;
}

// Z, +HHMM, +HH:MM, +HH: the offset east of UTC in seconds.
bool Zone(std::string_view s, size_t* i, long long* offset) {
  if (*i < s.size() && s[*i] == 'Z') {
    ++*i;
    *offset = 0;
    return true;
  }
  if (*i >= s.size() || (s[*i] != '+' && s[*i] != '-')) return false;
  int sign = s[*i] == '-' ? -1 : 1;
  ++*i;
  long long hh, mm = 0;
  if (!Digits(s, i, 2, 2, &hh)) return false;
  if (*i < s.size() && s[*i] == ':') ++*i;
  size_t before = *i;
  if (!Digits(s, i, 2, 2, &mm)) *i = before;
  if (hh > 23 || mm > 59) return false;
  *offset = sign * (hh * 3600 + mm * 60);
  return true;
}

struct Parts {
  long long year = 1970, month = 1, day = 1, hour = 0, minute = 0, second = 0;
  double frac = 0;
  long long offset = 0;
};

bool ToSeconds(const Parts& p, double* out) {
  static const int kDays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (p.month < 1 || p.month > 12 || p.day < 1 || p.day > kDays[p.month - 1] ||
      p.hour > 23 || p.minute > 59 || p.second > 60) {
    return false;
  }
  bool leap = (p.year % 4 == 0 && p.year % 100 != 0) || p.year % 400 == 0;
  if (p.month == 2 && p.day == 29 && !leap) return false;
  long long days = DaysFromCivil(p.year, static_cast<unsigned>(p.month),
                                 static_cast<unsigned>(p.day));
  long long secs =
      days * 86400 + p.hour * 3600 + p.minute * 60 + p.second - p.offset;
  *out = static_cast<double>(secs) + p.frac;
  return true;
}

bool ParsePattern(std::string_view pat, std::string_view s, double* out) {
  Parts p;
  size_t i = 0;
  for (size_t k = 0; k < pat.size(); ++k) {
    char c = pat[k];
    if (c != '%') {
      if (i >= s.size() || s[i] != c) return false;
      ++i;
      continue;
    }
    if (++k >= pat.size()) return false;
    bool ok = true;
    switch (pat[k]) {
      case 'Y':
        ok = Digits(s, &i, 4, 4, &p.year);
        break;
      case 'm':
        ok = Digits(s, &i, 1, 2, &p.month);
        break;
      case 'd':
        ok = Digits(s, &i, 1, 2, &p.day);
        break;
      case 'H':
        ok = Digits(s, &i, 1, 2, &p.hour);
        break;
      case 'M':
        ok = Digits(s, &i, 1, 2, &p.minute);
        break;
      case 'S':
        ok = Digits(s, &i, 1, 2, &p.second) && Fraction(s, &i, false, &p.frac);
        break;
      case 'f':
        ok = Fraction(s, &i, true, &p.frac);
        break;
      case 'b':
        p.month = Month(s, &i);
        ok = p.month != 0;
        break;
      case 'z':
        ok = Zone(s, &i, &p.offset);
        break;
      case '%':
        ok = i < s.size() && s[i++] == '%';
        break;
      default:
        return false;
    }
    if (!ok) return false;
  }
  return i == s.size() && ToSeconds(p, out);
}

bool ParseIso8601(std::string_view s, double* out) {
  Parts p;
  size_t i = 0;
  auto lit = [&](char c) {
    if (i < s.size() && s[i] == c) {
      ++i;
      return true;
    }
    return false;
  };
  if (!Digits(s, &i, 4, 4, &p.year) || !lit('-') ||
      !Digits(s, &i, 2, 2, &p.month) || !lit('-') ||
      !Digits(s, &i, 2, 2, &p.day) || !(lit('T') || lit(' ')) ||
      !Digits(s, &i, 2, 2, &p.hour) || !lit(':') ||
      !Digits(s, &i, 2, 2, &p.minute) || !lit(':') ||
      !Digits(s, &i, 2, 2, &p.second) || !Fraction(s, &i, false, &p.frac)) {
    return false;
  }
  if (i < s.size() && !Zone(s, &i, &p.offset)) return false;
  return i == s.size() && ToSeconds(p, out);
}

bool ParseUnix(std::string_view s, double* out) {
  if (s.empty() || s.size() > 24) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || c == '.')) return false;
  }
  const char* b = s.data();
  const char* e = b + s.size();
  auto [ptr, ec] = std::from_chars(b, e, *out);
  return ec == std::errc() && ptr == e && std::isfinite(*out);
}

}  // namespace

long long DaysFromCivil(long long y, unsigned m, unsigned d) {
  // Howard Hinnant's days_from_civil.
  y -= m <= 2;
  const long long era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<long long>(doe) - 719468;
}

bool TimeLayout::FromSpec(std::string_view spec, TimeLayout* out,
                          std::string* error) {
  TimeLayout t;
  if (spec == "nginx" || spec == "time_local") {
    t.kind_ = Kind::kPattern;
    t.pattern_ = kNginxLocal;
  } else if (spec == "iso8601" || spec == "time_iso8601") {
    t.kind_ = Kind::kIso8601;
  } else if (spec == "unix" || spec == "msec") {
    t.kind_ = Kind::kUnix;
  } else {
    bool any = false;
    for (size_t k = 0; k < spec.size(); ++k) {
      if (spec[k] != '%') continue;
      if (k + 1 >= spec.size() ||
          std::string_view("YmdHMSbzf%").find(spec[k + 1]) ==
              std::string_view::npos) {
        *error = "time format: unknown directive '" +
                 std::string(spec.substr(k, 2)) +
                 "' (known: %Y %m %d %H %M %S %b %z %f %%, or the layouts "
                 "nginx, iso8601, unix, msec)";
        return false;
      }
      any = any || spec[k + 1] != '%';
      ++k;
    }
    if (!any) {
      *error = "time format '" + std::string(spec) +
               "' has no directive (use nginx, iso8601, unix, msec or a "
               "pattern such as %Y-%m-%d %H:%M:%S)";
      return false;
    }
    t.kind_ = Kind::kPattern;
    t.pattern_ = std::string(spec);
  }
  *out = std::move(t);
  return true;
}

TimeLayout TimeLayout::ForNginxVariable(std::string_view variable) {
  TimeLayout t;
  std::string unused;
  if (variable == "time_local" || variable == "time_iso8601" ||
      variable == "msec") {
    FromSpec(variable, &t, &unused);
  }
  return t;
}

bool TimeLayout::Parse(std::string_view text, double* seconds) const {
  switch (kind_) {
    case Kind::kNone:
      return false;
    case Kind::kPattern:
      return ParsePattern(pattern_, text, seconds);
    case Kind::kIso8601:
      return ParseIso8601(text, seconds);
    case Kind::kUnix:
      return ParseUnix(text, seconds);
  }
  return false;
}

}  // namespace sshtail
