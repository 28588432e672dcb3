#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "sshtail/engine.h"
#include "sshtail/source.h"

namespace sshtail {

/// The sources being read, by runtime index (the index in a batch): the
/// configured ones, then each glob's file slots, then each syslog socket's
/// sender slots.
///
/// Sized once, before any thread starts. A slot's spec and labels are
/// written once, by the supervisor, before it marks the slot active
/// (release) and before its reader starts; never after. Other threads
/// check active() (acquire) before they read a slot; consumers may read
/// the slot of any batch they pop.
struct SourceTable {
  /// Appends an entry; `active` for a configured source with a reader.
  uint32_t Add(SourceSpec spec, SourceLabels source_labels, uint32_t config,
               bool is_active) {
    specs.push_back(std::move(spec));
    labels.push_back(std::move(source_labels));
    status.push_back(std::make_unique<SourceStatus>());
    config_index.push_back(config);
    active_.emplace_back(is_active);
    return static_cast<uint32_t>(specs.size() - 1);
  }
  size_t size() const { return specs.size(); }
  bool active(size_t i) const {
    return active_[i].load(std::memory_order_acquire);
  }
  void Activate(size_t i) { active_[i].store(true, std::memory_order_release); }

  std::vector<SourceSpec> specs;
  std::vector<SourceLabels> labels;
  std::vector<std::unique_ptr<SourceStatus>> status;
  std::vector<uint32_t> config_index;  ///< runtime -> configured source

 private:
  std::deque<std::atomic<bool>> active_;
};

}  // namespace sshtail
