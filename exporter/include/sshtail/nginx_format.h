#pragma once

#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace sshtail {

/// nginx's `escape=` parameter of log_format.
enum class NginxEscape { kDefault, kJson, kNone };

/// Matches lines of an nginx format without a regex engine, for formats
/// where every variable's values cannot hold the first byte of the literal
/// after it (every stock format). For such a format this is exactly
/// RE2::FullMatch(line, regex): a variable must end at the first such byte,
/// so the split is unique; then each literal is compared and each value is
/// checked against its variable's pattern. A fuzzer holds it to that.
/// Immutable; thread-safe.
struct NginxScan {
  /// What a value must look like (the variable's RE2 pattern).
  enum class Check {
    kAny,          ///< [^stop]*: nothing left to check
    kNoNewline,    ///< .* (RE2's '.' does not match '\n')
    kDigits,       ///< [0-9]+
    kStatus,       ///< [0-9]{3}
    kDecimal,      ///< [0-9]+(\.[0-9]+)?
    kPipe,         ///< [p.]
    kIso8601,      ///< [0-9T:+.-]+Z?
    kMultiTime,    ///< decimal or -, separated by ", " or " : "
    kMultiStatus,  ///< [0-9]{3} or -, separated the same way
  };
  struct Step {
    std::string before;   ///< literal before the variable
    char stop = 0;        ///< the value ends at the first such byte...
    bool to_end = false;  ///< ...or at the end of the line
    Check check = Check::kAny;
  };
  std::vector<Step> steps;  ///< one per variable, in order
  std::string tail;         ///< literal after the last variable

  bool empty() const { return steps.empty(); }
  /// True if `line` matches; then values[i] is variable i's text.
  bool Match(std::string_view line, std::string_view* values) const;
  /// How far `line` gets: the variables matched before the first mismatch,
  /// steps.size() + 1 for a full match (to name the nearest format).
  size_t MatchedSteps(std::string_view line) const;
};

/// An nginx log_format turned into an RE2 pattern. Plain value type.
struct NginxFormat {
  std::string format;  ///< the format string itself
  NginxEscape escape = NginxEscape::kDefault;
  std::vector<std::string> variables;  ///< variables in order, without '$'
  std::string regex;                   ///< anchored at both ends by Match()

  /// A capturing group. Neighbouring wanted variables share one group when
  /// the literal between them cannot occur in the first one's value (fewer
  /// groups let RE2 use its one-pass matcher); `seps[i]` separates
  /// `vars[i]` from `vars[i+1]`, and the first occurrence splits them.
  struct Group {
    std::vector<std::string> vars;
    std::vector<std::string> seps;
  };
  std::vector<Group> groups;  ///< capturing group i+1 is groups[i]

  /// How a scannable format matches (see NginxScan); empty when the format
  /// cannot be scanned (two variables in a row, escape=json).
  NginxScan scan;
};

/// Expands the predefined names: "combined" (nginx's own), "timed"
/// (combined + " $request_time $upstream_response_time"), "main" (the
/// Debian/nginx.org example format). Anything else is returned unchanged.
/// Also accepts a pasted nginx directive: `log_format NAME [escape=X]
/// 'part' 'part';`, whose parts are joined (escape is returned in *escape).
std::string ExpandNginxFormat(std::string_view text, NginxEscape* escape);

/// Parses the variables of a format. Throws std::invalid_argument for a
/// lone '$', an unterminated ${...}, or a format without variables.
std::vector<std::string> NginxVariables(std::string_view format);

/// Compiles a format to an RE2 pattern. Only the variables in `wanted` become
/// capturing groups (others are non-capturing, so RE2 can use its one-pass
/// matcher). Throws std::invalid_argument on a bad format.
NginxFormat CompileNginxFormat(std::string_view format, NginxEscape escape,
                               const std::set<std::string>& wanted);

/// True for nginx variables whose values may hold several comma/colon
/// separated values ($upstream_*).
bool IsNginxMultiValue(std::string_view variable);

/// Reverses nginx's escaping of a logged value (\xHH for default, JSON
/// escapes for json). Returns `in` itself when it has no backslash.
std::string_view UnescapeNginx(std::string_view in, NginxEscape escape,
                               std::string* scratch);

}  // namespace sshtail
