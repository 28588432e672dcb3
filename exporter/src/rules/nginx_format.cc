#include "sshtail/nginx_format.h"

#include <re2/re2.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <stdexcept>

namespace sshtail {
namespace {

constexpr std::string_view kCombined =
    "$remote_addr - $remote_user [$time_local] \"$request\" $status "
    "$body_bytes_sent \"$http_referer\" \"$http_user_agent\"";
constexpr std::string_view kMain =
    "$remote_addr - $remote_user [$time_local] \"$request\" $status "
    "$body_bytes_sent \"$http_referer\" \"$http_user_agent\" "
    "\"$http_x_forwarded_for\"";

bool IsVarChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
}

struct Token {
  bool variable;
  std::string text;  // literal text, or the variable name
};

std::vector<Token> Tokenize(std::string_view f) {
  std::vector<Token> out;
  std::string literal;
  for (size_t i = 0; i < f.size();) {
    if (f[i] != '$') {
      literal.push_back(f[i++]);
      continue;
    }
    size_t start = i + 1;
    std::string name;
    if (start < f.size() && f[start] == '{') {
      size_t close = f.find('}', start);
      if (close == std::string_view::npos) {
        throw std::invalid_argument("log_format: unterminated ${ at column " +
                                    std::to_string(i + 1));
      }
      name = std::string(f.substr(start + 1, close - start - 1));
      i = close + 1;
    } else {
      size_t j = start;
      while (j < f.size() && IsVarChar(f[j])) ++j;
      name = std::string(f.substr(start, j - start));
      i = j;
    }
    if (name.empty()) {
      throw std::invalid_argument(
          "log_format: '$' without a variable name at column " +
          std::to_string(start));
    }
    for (char c : name) {
      if (!IsVarChar(c)) {
        throw std::invalid_argument("log_format: bad variable name '$" + name +
                                    "'");
      }
    }
    if (!literal.empty()) out.push_back(Token{false, std::move(literal)});
    literal.clear();
    out.push_back(Token{true, std::move(name)});
  }
  if (!literal.empty()) out.push_back(Token{false, std::move(literal)});
  return out;
}

// One byte as a member of an RE2 character class.
std::string ClassChar(char c) {
  unsigned char u = static_cast<unsigned char>(c);
  if (std::isalnum(u)) return std::string(1, c);
  if (std::ispunct(u)) return std::string("\\") + c;
  static const char* digits = "0123456789abcdef";
  return std::string("\\x{") + digits[u >> 4] + digits[u & 15] + "}";
}

// A variable's pattern, and which bytes its value can hold (to know which
// literal can split two variables captured together).
struct VarPattern {
  std::string re;
  NginxScan::Check check = NginxScan::Check::kAny;
  std::string alphabet;  // the bytes a value can hold, if `bounded`
  bool bounded = false;
  char excluded = 0;  // or: any byte but this one, if `excludes`
  bool excludes = false;

  bool CannotContain(char c) const {
    if (bounded) return alphabet.find(c) == std::string::npos;
    return excludes && c == excluded;
  }
};

VarPattern Bounded(std::string re, std::string alphabet,
                   NginxScan::Check check) {
  VarPattern p;
  p.re = std::move(re);
  p.check = check;
  p.alphabet = std::move(alphabet);
  p.bounded = true;
  return p;
}

std::string MultiValuePattern(const std::string& one) {
  return "(?:" + one + ")(?:(?:, | : )(?:" + one + "))*";
}

VarPattern ValuePattern(const std::string& var, const std::string& next,
                        NginxEscape escape) {
  using Check = NginxScan::Check;
  static const std::string kDigits = "0123456789";
  if (var == "status") return Bounded("[0-9]{3}", kDigits, Check::kStatus);
  if (var == "body_bytes_sent" || var == "bytes_sent" || var == "connection" ||
      var == "connection_requests" || var == "request_length") {
    return Bounded("[0-9]+", kDigits, Check::kDigits);
  }
  if (var == "request_time" || var == "msec") {
    return Bounded("[0-9]+(?:\\.[0-9]+)?", kDigits + ".", Check::kDecimal);
  }
  if (var == "pipe") return Bounded("[p.]", "p.", Check::kPipe);
  if (var == "time_iso8601") {
    return Bounded("[0-9T:+.-]+Z?", kDigits + "T:+.-Z", Check::kIso8601);
  }
  const std::string kMulti = kDigits + ".-, :";
  if (var == "upstream_response_time" || var == "upstream_connect_time" ||
      var == "upstream_header_time" || var == "upstream_queue_time") {
    return Bounded(MultiValuePattern("[0-9]+(?:\\.[0-9]+)?|-"), kMulti,
                   Check::kMultiTime);
  }
  if (var == "upstream_status") {
    return Bounded(MultiValuePattern("[0-9]{3}|-"), kMulti,
                   Check::kMultiStatus);
  }
  VarPattern p;
  if (next.empty()) {
    p.re = escape == NginxEscape::kJson ? "(?:[^\\\\]|\\\\.)*" : ".*";
    p.check = NginxScan::Check::kNoNewline;
    return p;
  }
  std::string stop = ClassChar(next[0]);
  if (escape == NginxEscape::kJson) {
    // An escaped stop character (\") may occur: never split on it.
    p.re = "(?:[^" + stop + "\\\\]|\\\\.)*";
    return p;
  }
  // Anything up to the next literal's first byte. nginx escapes '"' and
  // '\\' in values, so inside quotes this is exact.
  p.re = "[^" + stop + "]*";
  p.excluded = next[0];
  p.excludes = true;
  return p;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) {
    s.remove_prefix(1);
  }
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) {
    s.remove_suffix(1);
  }
  return s;
}

// Parses `log_format name [escape=x] 'a' "b" c;` as nginx's config parser
// does for quoted and bare words.
std::string ParseDirective(std::string_view text, NginxEscape* escape) {
  std::vector<std::string> words;
  size_t i = 0;
  while (i < text.size()) {
    char c = text[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    if (c == ';') break;
    std::string word;
    if (c == '\'' || c == '"') {
      char q = c;
      ++i;
      bool closed = false;
      while (i < text.size()) {
        char d = text[i];
        if (d == '\\' && i + 1 < text.size()) {
          char e = text[i + 1];
          if (e == q || e == '\\') {
            word.push_back(e);
          } else if (e == 't') {
            word.push_back('\t');
          } else if (e == 'n') {
            word.push_back('\n');
          } else if (e == 'r') {
            word.push_back('\r');
          } else {
            word.push_back('\\');
            word.push_back(e);
          }
          i += 2;
          continue;
        }
        if (d == q) {
          closed = true;
          ++i;
          break;
        }
        word.push_back(d);
        ++i;
      }
      if (!closed) {
        throw std::invalid_argument("log_format: unterminated quoted string");
      }
    } else {
      while (i < text.size() &&
             !std::isspace(static_cast<unsigned char>(text[i])) &&
             text[i] != ';') {
        word.push_back(text[i++]);
      }
    }
    words.push_back(std::move(word));
  }
  if (words.size() < 2) {
    throw std::invalid_argument(
        "log_format directive needs a name and a format");
  }
  size_t first = 1;  // words[0] is the format's name
  if (words[1].rfind("escape=", 0) == 0) {
    std::string e = words[1].substr(7);
    if (e == "default") {
      *escape = NginxEscape::kDefault;
    } else if (e == "json") {
      *escape = NginxEscape::kJson;
    } else if (e == "none") {
      *escape = NginxEscape::kNone;
    } else {
      throw std::invalid_argument("log_format: unknown escape=" + e);
    }
    first = 2;
  }
  std::string joined;
  for (size_t k = first; k < words.size(); ++k) joined += words[k];
  return joined;
}

}  // namespace

std::string ExpandNginxFormat(std::string_view text, NginxEscape* escape) {
  std::string_view t = Trim(text);
  if (t == "combined") return std::string(kCombined);
  if (t == "timed") {
    return std::string(kCombined) + " $request_time $upstream_response_time";
  }
  if (t == "main") return std::string(kMain);
  if (t.rfind("log_format", 0) == 0 && t.size() > 10 &&
      std::isspace(static_cast<unsigned char>(t[10]))) {
    return ParseDirective(t.substr(10), escape);
  }
  return std::string(text);
}

std::vector<std::string> NginxVariables(std::string_view format) {
  std::vector<std::string> vars;
  for (auto& t : Tokenize(format)) {
    if (t.variable) vars.push_back(t.text);
  }
  if (vars.empty()) {
    throw std::invalid_argument("log_format '" + std::string(format) +
                                "' has no $variables");
  }
  return vars;
}

bool IsNginxMultiValue(std::string_view variable) {
  return variable.rfind("upstream_", 0) == 0;
}

NginxFormat CompileNginxFormat(std::string_view format, NginxEscape escape,
                               const std::set<std::string>& wanted) {
  NginxFormat out;
  out.format = std::string(format);
  out.escape = escape;
  std::vector<Token> tokens = Tokenize(format);
  std::set<std::string> seen;
  std::string re;
  // The group being built: open while wanted variables follow each other
  // with only a safe literal between them.
  bool open = false;
  VarPattern last;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const Token& t = tokens[i];
    if (!t.variable) {
      bool join = open && i + 1 < tokens.size() && tokens[i + 1].variable &&
                  wanted.count(tokens[i + 1].text) &&
                  !seen.count(tokens[i + 1].text) &&
                  last.CannotContain(t.text[0]);
      if (open && !join) {
        re += ")";
        open = false;
      }
      if (join) out.groups.back().seps.push_back(t.text);
      re += RE2::QuoteMeta(t.text);
      continue;
    }
    out.variables.push_back(t.text);
    std::string next;
    if (i + 1 < tokens.size() && !tokens[i + 1].variable) {
      next = tokens[i + 1].text;
    }
    VarPattern pattern = ValuePattern(t.text, next, escape);
    bool capture = wanted.count(t.text) && seen.insert(t.text).second;
    if (capture) {
      if (!open) {
        out.groups.emplace_back();
        re += "(";
        open = true;
      }
      out.groups.back().vars.push_back(t.text);
      re += pattern.re;
      last = pattern;
    } else {
      if (open) {
        re += ")";
        open = false;
      }
      re += "(?:" + pattern.re + ")";
    }
    // Two variables in a row: no literal to split on.
    if (open && i + 1 < tokens.size() && tokens[i + 1].variable) {
      re += ")";
      open = false;
    }
  }
  if (open) re += ")";
  // The scan plan (see NginxScan).
  bool scannable = escape != NginxEscape::kJson;
  std::string before;
  for (size_t i = 0; i < tokens.size() && scannable; ++i) {
    const Token& t = tokens[i];
    if (!t.variable) {
      before = t.text;
      continue;
    }
    NginxScan::Step step;
    step.before = std::move(before);
    before.clear();
    std::string next;
    if (i + 1 == tokens.size()) {
      step.to_end = true;
    } else if (tokens[i + 1].variable) {
      scannable = false;
    } else {
      next = tokens[i + 1].text;
      step.stop = next[0];
    }
    VarPattern p = ValuePattern(t.text, next, escape);
    if (!step.to_end && !p.CannotContain(step.stop)) scannable = false;
    step.check = p.check;
    out.scan.steps.push_back(std::move(step));
  }
  out.scan.tail = before;
  if (!scannable) out.scan = NginxScan();
  if (out.variables.empty()) {
    throw std::invalid_argument("log_format '" + std::string(format) +
                                "' has no $variables");
  }
  out.regex = std::move(re);
  return out;
}

namespace {

bool AllDigits(std::string_view v) {
  for (char c : v) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// [0-9]+(\.[0-9]+)?
bool IsDecimal(std::string_view v) {
  size_t dot = v.find('.');
  if (dot == std::string_view::npos) return !v.empty() && AllDigits(v);
  return dot > 0 && dot + 1 < v.size() && AllDigits(v.substr(0, dot)) &&
         AllDigits(v.substr(dot + 1));
}

// Items separated by ", " or " : ", each passing `item` or being "-".
template <class F>
bool IsMulti(std::string_view v, F item) {
  for (;;) {
    size_t comma = v.find(", ");
    size_t colon = v.find(" : ");
    size_t cut = std::min(comma, colon);
    std::string_view one = v.substr(0, cut);
    if (one != "-" && !item(one)) return false;
    if (cut == std::string_view::npos) return true;
    v.remove_prefix(cut + (cut == comma ? 2 : 3));
  }
}

bool Valid(NginxScan::Check check, std::string_view v) {
  using Check = NginxScan::Check;
  switch (check) {
    case Check::kAny:
      return true;
    case Check::kNoNewline:
      return v.find('\n') == std::string_view::npos;
    case Check::kDigits:
      return !v.empty() && AllDigits(v);
    case Check::kStatus:
      return v.size() == 3 && AllDigits(v);
    case Check::kDecimal:
      return IsDecimal(v);
    case Check::kPipe:
      return v == "p" || v == ".";
    case Check::kIso8601: {
      if (!v.empty() && v.back() == 'Z') v.remove_suffix(1);
      if (v.empty()) return false;
      for (char c : v) {
        if (!((c >= '0' && c <= '9') || c == 'T' || c == ':' || c == '+' ||
              c == '.' || c == '-')) {
          return false;
        }
      }
      return true;
    }
    case Check::kMultiTime:
      return IsMulti(v, IsDecimal);
    case Check::kMultiStatus:
      return IsMulti(
          v, [](std::string_view s) { return s.size() == 3 && AllDigits(s); });
  }
  return false;
}

// `lit` at `line[p]`. The literals between variables are a few bytes: a
// loop beats string_view::compare's bounds check and memcmp call.
inline bool LiteralAt(std::string_view line, size_t p, std::string_view lit) {
  if (line.size() - p < lit.size()) return false;
  const char* a = line.data() + p;
  for (size_t k = 0; k < lit.size(); ++k) {
    if (a[k] != lit[k]) return false;
  }
  return true;
}

}  // namespace

bool NginxScan::Match(std::string_view line, std::string_view* values) const {
  size_t p = 0;
  const size_t n = line.size();
  for (size_t i = 0; i < steps.size(); ++i) {
    const Step& s = steps[i];
    if (!LiteralAt(line, p, s.before)) return false;
    p += s.before.size();
    size_t end = n;
    if (!s.to_end) {
      const void* hit = std::memchr(line.data() + p, s.stop, n - p);
      if (hit == nullptr) return false;
      end = static_cast<size_t>(static_cast<const char*>(hit) - line.data());
    }
    std::string_view v(line.data() + p, end - p);
    if (!Valid(s.check, v)) return false;
    values[i] = v;
    p = end;
  }
  return n - p == tail.size() && LiteralAt(line, p, tail);
}

size_t NginxScan::MatchedSteps(std::string_view line) const {
  size_t p = 0;
  const size_t n = line.size();
  for (size_t i = 0; i < steps.size(); ++i) {
    const Step& s = steps[i];
    if (line.compare(p, s.before.size(), s.before) != 0) return i;
    p += s.before.size();
    size_t end = n;
    if (!s.to_end) {
      const void* hit = std::memchr(line.data() + p, s.stop, n - p);
      if (hit == nullptr) return i;
      end = static_cast<size_t>(static_cast<const char*>(hit) - line.data());
    }
    if (!Valid(s.check, line.substr(p, end - p))) return i;
    p = end;
  }
  return line.compare(p, std::string_view::npos, tail) == 0 ? steps.size() + 1
                                                            : steps.size();
}

std::string_view UnescapeNginx(std::string_view in, NginxEscape escape,
                               std::string* scratch) {
  if (escape == NginxEscape::kNone || in.find('\\') == std::string_view::npos) {
    return in;
  }
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  scratch->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c != '\\' || i + 1 >= in.size()) {
      scratch->push_back(c);
      continue;
    }
    char e = in[i + 1];
    if (escape == NginxEscape::kDefault) {
      if (e == 'x' && i + 3 < in.size() && hex(in[i + 2]) >= 0 &&
          hex(in[i + 3]) >= 0) {
        scratch->push_back(
            static_cast<char>(hex(in[i + 2]) * 16 + hex(in[i + 3])));
        i += 3;
      } else {
        scratch->push_back(c);
      }
      continue;
    }
    // JSON escapes.
    switch (e) {
      case '"':
      case '\\':
      case '/':
        scratch->push_back(e);
        ++i;
        break;
      case 'n':
        scratch->push_back('\n');
        ++i;
        break;
      case 'r':
        scratch->push_back('\r');
        ++i;
        break;
      case 't':
        scratch->push_back('\t');
        ++i;
        break;
      case 'b':
        scratch->push_back('\b');
        ++i;
        break;
      case 'f':
        scratch->push_back('\f');
        ++i;
        break;
      case 'u':
        if (i + 5 < in.size() && hex(in[i + 2]) >= 0 && hex(in[i + 3]) >= 0 &&
            hex(in[i + 4]) >= 0 && hex(in[i + 5]) >= 0) {
          int cp = hex(in[i + 2]) << 12 | hex(in[i + 3]) << 8 |
                   hex(in[i + 4]) << 4 | hex(in[i + 5]);
          if (cp < 0x80) {
            scratch->push_back(static_cast<char>(cp));
          } else if (cp < 0x800) {
            scratch->push_back(static_cast<char>(0xC0 | (cp >> 6)));
            scratch->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          } else {
            scratch->push_back(static_cast<char>(0xE0 | (cp >> 12)));
            scratch->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            scratch->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          }
          i += 5;
        } else {
          scratch->push_back(c);
        }
        break;
      default:
        scratch->push_back(c);
    }
  }
  return *scratch;
}

}  // namespace sshtail
