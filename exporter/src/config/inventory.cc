#include "config/inventory.h"

#include <glob.h>
#include <prometheus/check_names.h>
#include <sys/stat.h>

#include <map>

#include "config/yaml_file.h"
#include "sources/path_glob.h"
#include "sshtail/rules.h"
#include "sshtail/text_format.h"

namespace sshtail {
namespace {

// The files a pattern names now, sorted; a plain path names itself.
std::vector<std::string> Files(const std::string& pattern) {
  if (pattern.find_first_of("*?[") == std::string::npos) return {pattern};
  glob_t g{};
  std::vector<std::string> out;
  if (::glob(pattern.c_str(), 0, nullptr, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  }
  ::globfree(&g);
  return out;
}

SourceSpec Target(const std::string& file, const YAML::Node& target,
                  const std::map<std::string, std::string>& labels,
                  const YAML::Node& labels_node) {
  if (!target.IsScalar() || target.Scalar().empty()) {
    throw ConfigError(Where(file, target) + ": a target must be a string");
  }
  const std::string& t = target.Scalar();
  auto path = labels.find("__path__");
  bool own_url = t.find("://") != std::string::npos || t[0] == '/';
  std::string url;
  if (own_url) {
    if (path != labels.end()) {
      throw ConfigError(Where(file, target) + ": target '" + t +
                        "' is a URL or path; __path__ applies to host "
                        "targets");
    }
    url = t;
  } else {
    if (path == labels.end() || path->second.empty() ||
        path->second[0] != '/') {
      throw ConfigError(Where(file, target) + ": target '" + t +
                        "' needs a __path__ label with the log's absolute "
                        "path");
    }
    if (t.find('/') != std::string::npos) {
      throw ConfigError(Where(file, target) + ": invalid target '" + t +
                        "' (expected [user@]host[:port])");
    }
    url = "ssh://" + t + EncodeUrlPath(path->second);
  }
  SourceSpec spec;
  try {
    spec = ParseSourceUrl(url);
  } catch (const std::invalid_argument& e) {
    throw ConfigError(Where(file, target) + ": " + e.what());
  }
  if (spec.kind != SourceSpec::Kind::kFile &&
      spec.kind != SourceSpec::Kind::kSsh) {
    throw ConfigError(Where(file, target) + ": target '" + t +
                      "' is not a file or an ssh:// source");
  }
  spec.config_file = file;
  spec.config_line = target.Mark().line + 1;
  std::vector<std::string> own;  // labels the path sets
  if (spec.glob) {
    own = PathGlob(spec.path).fields();
    if (own.empty()) own.push_back("file");
  } else if (spec.kind == SourceSpec::Kind::kSsh) {
    // Named by the host; a host's files are told apart by `file`.
    spec.name = text::ValidUtf8(spec.host);
    spec.file = spec.path;
    spec.labels["file"] = text::ValidUtf8(spec.path);
    own.push_back("file");
  }
  for (const auto& [k, v] : labels) {
    if (k == "__format__") {
      spec.format = v;
      spec.format_line = labels_node.Mark().line + 1;
      continue;
    }
    if (k.rfind("__", 0) == 0) continue;  // __path__, __meta_*: not labels
    for (const auto& o : own) {
      if (k == o) {
        throw ConfigError(Where(file, labels_node) + ": label '" + k +
                          "' is set by the path of target '" + t + "'");
      }
    }
    spec.labels[k] = text::ValidUtf8(v);
  }
  return spec;
}

void LoadFile(const std::string& file, std::vector<SourceSpec>* out,
              size_t max_targets) {
  struct stat st {};
  if (::stat(file.c_str(), &st) == 0 &&
      static_cast<uint64_t>(st.st_size) > kMaxInventoryBytes) {
    throw ConfigError(file + ":1: a sources file larger than " +
                      std::to_string(kMaxInventoryBytes) + " bytes");
  }
  YAML::Node root = LoadYamlFile(file, "sources file");
  // An empty file is one being written (`gen > targets.json`), not an
  // inventory: taken as "no targets" it would drop every source.
  if (!root || root.IsNull()) {
    throw ConfigError(file +
                      ":1: the sources file is empty (write [] for no "
                      "targets)");
  }
  if (!root.IsSequence()) {
    throw ConfigError(file +
                      ":1: a sources file is a list of {targets, labels}");
  }
  for (const auto& group : root) {
    if (!group.IsMap()) {
      throw ConfigError(Where(file, group) +
                        ": a target group is a mapping with targets:");
    }
    for (const auto& kv : group) {
      std::string k = kv.first.Scalar();
      if (k != "targets" && k != "labels") {
        throw ConfigError(Where(file, kv.first) + ": unknown key '" + k +
                          "' in target group (expected targets, labels)");
      }
    }
    const YAML::Node targets = group["targets"];
    if (!targets || !targets.IsSequence()) {
      throw ConfigError(Where(file, group) +
                        ": a target group needs a targets: list");
    }
    std::map<std::string, std::string> labels;
    const YAML::Node labels_node = group["labels"];
    if (labels_node && !labels_node.IsNull()) {
      if (!labels_node.IsMap()) {
        throw ConfigError(Where(file, labels_node) +
                          ": labels must be a mapping");
      }
      for (const auto& kv : labels_node) {
        std::string k = kv.first.Scalar();
        bool reserved = k.rfind("__", 0) == 0;
        if (!reserved && (!prometheus::CheckLabelName(k) || k == "source")) {
          throw ConfigError(Where(file, kv.first) + ": invalid label name '" +
                            k + "'");
        }
        if (!kv.second.IsScalar()) {
          throw ConfigError(Where(file, kv.second) +
                            ": a label value must be a string");
        }
        labels[k] = kv.second.Scalar();
      }
    }
    for (const auto& t : targets) {
      if (out->size() >= max_targets) {
        throw ConfigError(Where(file, t) + ": more targets than the " +
                          std::to_string(max_targets) +
                          " slots --sources.max-slots leaves for them");
      }
      out->push_back(Target(file, t, labels, labels_node ? labels_node : t));
    }
  }
}

}  // namespace

std::vector<SourceSpec> LoadInventory(const std::vector<std::string>& patterns,
                                      size_t max_targets) {
  std::vector<SourceSpec> out;
  for (const auto& p : patterns) {
    for (const auto& f : Files(p)) LoadFile(f, &out, max_targets);
  }
  return out;
}

InventoryWatch::InventoryWatch(std::vector<std::string> patterns)
    : patterns_(std::move(patterns)) {}

std::string InventoryWatch::Signature() const {
  std::string sig;
  for (const auto& p : patterns_) {
    for (const auto& f : Files(p)) {
      struct stat st {};
      sig += f;
      if (::stat(f.c_str(), &st) == 0) {
        sig += ' ' + std::to_string(st.st_ino) + ' ' +
               std::to_string(st.st_size) + ' ' +
               std::to_string(st.st_mtim.tv_sec) + '.' +
               std::to_string(st.st_mtim.tv_nsec) + ' ' +
               std::to_string(st.st_ctim.tv_nsec);
      }
      sig += '\n';
    }
  }
  return sig;
}

bool InventoryWatch::Changed() {
  std::string now = Signature();
  bool changed = !first_ && now != last_;
  first_ = false;
  last_ = std::move(now);
  return changed;
}

}  // namespace sshtail
