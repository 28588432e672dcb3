#include "sources/path_glob.h"

#include <fnmatch.h>
#include <glob.h>
#include <prometheus/check_names.h>
#include <sys/stat.h>

#include <algorithm>
#include <stdexcept>

namespace sshtail {
namespace {

[[noreturn]] void Bad(const std::string& pattern, const std::string& why) {
  throw std::invalid_argument("path '" + pattern + "': " + why);
}

// An sh bracket expression starting at pattern[i] == '[' as an RE2 class;
// `i` ends on its ']'.
std::string BracketToRegex(const std::string& pattern, size_t& i) {
  size_t j = i + 1;
  bool negate = j < pattern.size() && (pattern[j] == '!' || pattern[j] == '^');
  if (negate) ++j;
  std::string body;
  bool first = true;
  for (; j < pattern.size(); ++j, first = false) {
    char c = pattern[j];
    if (c == ']' && !first) break;
    if (c == '/') Bad(pattern, "a [...] cannot hold '/'");
    if (c == '\\' || c == '[' || c == ']' || c == '^') body += '\\';
    body += c;
  }
  if (j >= pattern.size()) Bad(pattern, "unterminated '['");
  i = j;
  // A glob never matches '/' in a bracket, negated or not.
  return negate ? "[^/" + body + "]" : "[" + body + "]";
}

}  // namespace

bool HasGlob(const std::string& path) {
  return path.find_first_of("*?[{") != std::string::npos;
}

const std::vector<std::string>& PathGlob::DefaultExclude() {
  static const std::vector<std::string> kDefault = {
      "*.gz",
      "*.bz2",
      "*.xz",
      "*.zst",
      "*.zip",
      "*.[0-9]",
      "*.[0-9][0-9]",
      "*.[0-9][0-9][0-9]",
      "*-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]",            // dateext
      "*-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]",  // %s, %Y%m%d%H
      "*-[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]",          // -%Y-%m-%d
      "*-[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]-[0-9]*",   // with %s
  };
  return kDefault;
}

PathGlob::PathGlob(const std::string& pattern, std::vector<std::string> exclude)
    : exclude_(std::move(exclude)) {
  if (pattern.empty() || pattern.front() != '/') {
    Bad(pattern, "a glob needs an absolute path");
  }
  std::string re;
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    switch (c) {
      case '*':
        re += "[^/]*";
        glob_ += c;
        break;
      case '?':
        re += "[^/]";
        glob_ += c;
        break;
      case '[': {
        size_t start = i;
        re += BracketToRegex(pattern, i);
        glob_ += pattern.substr(start, i - start + 1);
        break;
      }
      case '{': {
        size_t close = pattern.find('}', i);
        if (close == std::string::npos) Bad(pattern, "unterminated '{'");
        std::string name = pattern.substr(i + 1, close - i - 1);
        if (!prometheus::CheckLabelName(name) || name == "source" ||
            name.rfind("__", 0) == 0) {
          Bad(pattern, "'{" + name +
                           "}' is not a label name (a field is {name}, "
                           "letters, digits and '_')");
        }
        if (std::find(fields_.begin(), fields_.end(), name) != fields_.end()) {
          Bad(pattern, "field '{" + name + "}' is given twice");
        }
        fields_.push_back(name);
        re += "([^/]*)";
        glob_ += '*';
        i = close;
        break;
      }
      case '\\':
        if (i + 1 < pattern.size()) {
          re += RE2::QuoteMeta(std::string(1, pattern[i + 1]));
          glob_ += pattern.substr(i, 2);
          ++i;
        } else {
          re += "\\\\";
          glob_ += "\\\\";
        }
        break;
      default:
        re += RE2::QuoteMeta(std::string(1, c));
        glob_ += c;
    }
  }
  RE2::Options o;
  o.set_encoding(RE2::Options::EncodingLatin1);  // paths are bytes
  o.set_log_errors(false);
  re_ = std::make_unique<RE2>(re, o);
  if (!re_->ok()) Bad(pattern, re_->error());
}

bool PathGlob::Matches(const std::string& path,
                       std::map<std::string, std::string>* labels) const {
  std::vector<std::string> values(fields_.size());
  std::vector<RE2::Arg> args(fields_.size());
  std::vector<const RE2::Arg*> argp(fields_.size());
  for (size_t k = 0; k < fields_.size(); ++k) {
    args[k] = RE2::Arg(&values[k]);
    argp[k] = &args[k];
  }
  if (!RE2::FullMatchN(path, *re_, argp.data(), static_cast<int>(argp.size())))
    return false;
  std::string name = path.substr(path.rfind('/') + 1);
  auto excluded = [&](const std::string& p) {
    // A pattern with a '/' is matched against the whole path.
    if (p.find('/') != std::string::npos) {
      return fnmatch(p.c_str(), path.c_str(), FNM_PATHNAME) == 0;
    }
    return fnmatch(p.c_str(), name.c_str(), 0) == 0;
  };
  for (const auto& p : DefaultExclude()) {
    if (excluded(p)) return false;
  }
  for (const auto& p : exclude_) {
    if (excluded(p)) return false;
  }
  if (labels) {
    labels->clear();
    for (size_t k = 0; k < fields_.size(); ++k) {
      (*labels)[fields_[k]] = values[k];
    }
  }
  return true;
}

std::vector<std::string> PathGlob::Expand(
    const std::set<std::string>* skip) const {
  std::vector<std::string> out;
  glob_t g{};
  if (::glob(glob_.c_str(), 0, nullptr, &g) == 0) {
    for (size_t k = 0; k < g.gl_pathc; ++k) {
      std::string p = g.gl_pathv[k];
      if (skip && skip->count(p)) continue;
      struct stat st {};
      if (::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
          Matches(p, nullptr)) {
        out.push_back(std::move(p));
      }
    }
  }
  globfree(&g);
  return out;
}

}  // namespace sshtail
