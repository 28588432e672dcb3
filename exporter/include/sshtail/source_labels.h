#pragma once

#include <string>
#include <utility>
#include <vector>

namespace sshtail {

/// The labels a source adds to every series: its name and static labels.
struct SourceLabels {
  std::string name;
  std::vector<std::pair<std::string, std::string>> labels;
  /// A glob's match: its path, which tells apart the exporter's own series
  /// of files that share a name.
  std::string file;
};

}  // namespace sshtail
