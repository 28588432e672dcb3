#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "sshtail/engine.h"
#include "sshtail/source.h"
#include "sshtail/text_format.h"

namespace sshtail {

/// The labels a source's series get: its name, static labels, and file.
inline SourceLabels LabelsOf(const SourceSpec& s) {
  SourceLabels out;
  out.name = s.name;
  out.labels.assign(s.labels.begin(), s.labels.end());
  out.file = text::ValidUtf8(s.file);  // a label value
  return out;
}

/// The sources being read, by runtime index (the index in a batch): the
/// configured ones, then the pool that globs' files and the sources a
/// reload adds take slots from, then each syslog socket's sender slots.
///
/// Sized once, before any thread starts. A slot's spec, labels and
/// config_index are written once, by the supervisor, before it marks the
/// slot active (release) and before its reader starts; never after. Other
/// threads check active() (acquire) before they read a slot; consumers may
/// read the slot of any batch they pop. A retired slot (its source was
/// removed by a reload) is never active again and never reused: its reader
/// may still be finishing, and batches of it may be queued.
struct SourceTable {
  enum class State : uint8_t {
    kFree,     ///< unused (a pool or syslog slot), or not started yet
    kActive,   ///< followed
    kGlob,     ///< a glob's own entry: its files have slots of their own
    kRetired,  ///< removed by a reload
  };

  /// Appends an entry, before any thread starts. A pool slot gets its
  /// status when it is taken (EnsureStatus): most are never used.
  uint32_t Add(SourceSpec spec, SourceLabels source_labels, uint32_t config,
               State state, bool with_status = true) {
    specs.push_back(std::move(spec));
    labels.push_back(std::move(source_labels));
    status.push_back(with_status ? std::make_unique<SourceStatus>() : nullptr);
    config_index.push_back(config);
    state_.emplace_back(state);
    return static_cast<uint32_t>(specs.size() - 1);
  }
  size_t size() const { return specs.size(); }
  State state(size_t i) const {
    return state_[i].load(std::memory_order_acquire);
  }
  bool active(size_t i) const { return state(i) == State::kActive; }
  /// Publishes what the supervisor wrote to slot `i`.
  void Set(size_t i, State s) { state_[i].store(s, std::memory_order_release); }
  void Activate(size_t i) { Set(i, State::kActive); }
  /// By the supervisor, before the slot is published.
  void EnsureStatus(size_t i) {
    if (!status[i]) status[i] = std::make_unique<SourceStatus>();
  }

  std::vector<SourceSpec> specs;
  std::vector<SourceLabels> labels;
  std::vector<std::unique_ptr<SourceStatus>> status;
  /// runtime -> the slot of the configured source whose format it uses
  std::vector<uint32_t> config_index;

 private:
  std::deque<std::atomic<State>> state_;
};

}  // namespace sshtail
