#pragma once

#include <re2/re2.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace sshtail {

/// True if `path` holds a glob character (`*`, `?`, `[`) or a template
/// field (`{name}`).
bool HasGlob(const std::string& path);

/// A source path with globs and template fields: `/srv/*/logs/{vhost}.log`.
/// `*`, `?` and `[...]` match within one path component, as in sh; `{name}`
/// matches like `*` and gives its text as label `name`. Immutable once
/// built; thread-safe.
class PathGlob {
 public:
  /// Throws std::invalid_argument (one line) for an unterminated `[` or
  /// `{`, a field name that is not a label name, a field given twice, or a
  /// glob in a path that is not absolute.
  explicit PathGlob(const std::string& pattern,
                    std::vector<std::string> exclude = {});

  /// The pattern as glob(3) takes it (fields become `*`).
  const std::string& glob() const { return glob_; }
  /// The template's field names, in order.
  const std::vector<std::string>& fields() const { return fields_; }

  /// True if `path` matches the pattern and its file name no exclude
  /// pattern (the default ones, then the given ones); fills `labels` with
  /// the fields' values.
  bool Matches(const std::string& path,
               std::map<std::string, std::string>* labels) const;

  /// The regular files that match now, sorted, less those in `skip`
  /// (which are not stat'ed: a scan of known files costs a readdir).
  std::vector<std::string> Expand(
      const std::set<std::string>* skip = nullptr) const;

  /// What is excluded whatever the config says: the names logrotate gives
  /// rotated files (`*.1`, `*.gz`, dateext `*-20261201`), which rotation
  /// handling reads already.
  static const std::vector<std::string>& DefaultExclude();

 private:
  std::string glob_;
  std::vector<std::string> fields_;
  std::vector<std::string> exclude_;
  std::unique_ptr<RE2> re_;
};

}  // namespace sshtail
