#pragma once

#include <yaml-cpp/yaml.h>

#include <string>

#include "sshtail/rules.h"

namespace sshtail {

/// "file:line" of a node, for ConfigError messages.
inline std::string Where(const std::string& file, const YAML::Node& n) {
  return file + ":" + std::to_string(n.Mark().line + 1);
}

/// Parses `file`; throws ConfigError ("file: cannot read <what>", or
/// "file:line: <yaml error>").
inline YAML::Node LoadYamlFile(const std::string& file,
                               const std::string& what) {
  try {
    return YAML::LoadFile(file);
  } catch (const YAML::BadFile&) {
    throw ConfigError(file + ": cannot read " + what);
  } catch (const YAML::Exception& e) {
    throw ConfigError(file + ":" + std::to_string(e.mark.line + 1) + ": " +
                      e.msg);
  }
}

}  // namespace sshtail
