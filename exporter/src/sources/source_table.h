#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <shared_mutex>
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
/// config_index are written by the supervisor while the slot is free,
/// before it marks the slot active (release) and before its reader starts.
/// Consumers may read the slot of any batch they pop. Other threads that
/// look at slots hold ReadLock() and check the state (acquire) before they
/// read a slot. A retired slot (its source was removed) goes back to the
/// pool (Free) only once its reader has released it and no batch of it is
/// left (BatchQueue::Idle); Free takes the lock exclusively, so nobody is
/// reading the old contents.
struct SourceTable {
  enum class State : uint8_t {
    kFree,     ///< unused (a pool or syslog slot), or not started yet
    kActive,   ///< followed
    kGlob,     ///< a glob's own entry: its files have slots of their own
    kRetired,  ///< removed (a reload, a glob's file gone), not yet free
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
  /// Held while a thread other than the supervisor's looks at many slots
  /// (a scrape, a save): Free waits for it.
  std::shared_lock<std::shared_mutex> ReadLock() const {
    return std::shared_lock(reuse_mutex_);
  }
  /// By the supervisor: a retired slot, released and idle, becomes free.
  void Free(size_t i) {
    std::unique_lock lock(reuse_mutex_);
    specs[i] = SourceSpec{};
    labels[i] = SourceLabels{};
    status[i].reset();
    config_index[i] = 0;
    Set(i, State::kFree);
  }

  std::vector<SourceSpec> specs;
  std::vector<SourceLabels> labels;
  std::vector<std::unique_ptr<SourceStatus>> status;
  /// runtime -> the slot of the configured source whose format it uses
  std::vector<uint32_t> config_index;

 private:
  std::deque<std::atomic<State>> state_;
  mutable std::shared_mutex reuse_mutex_;
};

}  // namespace sshtail
