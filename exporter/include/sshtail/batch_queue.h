#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

#include "sshtail/batch.h"

namespace sshtail {

/// Bounded multi-producer, multi-consumer queue of line batches.
///
/// Thread-safe. When full, Push() blocks (back-pressure): nothing is ever
/// dropped, and memory stays bounded by capacity x batch size.
///
/// Ordered mode (`per_source_order`): at most one batch of a source is out
/// at a time, and a source's batches leave in the order they came. Pop()
/// skips batches whose source has one in flight; the consumer calls
/// Finished(source) once it is done with a batch. The state file needs it:
/// values then never include a batch whose position is not committed.
class BatchQueue {
 public:
  explicit BatchQueue(size_t capacity, bool per_source_order = false);

  /// Blocks while the queue is full. Returns false, leaving `batch` with the
  /// caller, once the queue is closed.
  bool Push(BatchPtr& batch);

  /// Blocks while the queue is empty (ordered mode: while no batch of an
  /// idle source waits). Returns nullptr once the queue is closed and
  /// drained.
  BatchPtr Pop();

  /// The consumer is done with the batch of `source` it popped. Ordered
  /// mode: that source's next batch may go out.
  void Finished(uint32_t source);

  /// No batch of `source` is queued or being consumed (every one pushed
  /// is Finished): a removed source's slot may be reused.
  bool Idle(uint32_t source) const;

  /// Wakes every waiter; later Push() calls fail, Pop() drains what is left.
  void Close();

  size_t Size() const;
  size_t capacity() const { return capacity_; }
  bool ordered() const { return ordered_; }

 private:
  bool InFlight(uint32_t source) const {
    return source < in_flight_.size() && in_flight_[source];
  }

  const size_t capacity_;
  const bool ordered_;
  mutable std::mutex mutex_;
  std::condition_variable not_full_;
  std::condition_variable not_empty_;
  std::deque<BatchPtr> items_;
  std::vector<bool> in_flight_;  // by source, ordered mode only
  std::vector<uint32_t> out_;    // by source: pushed, not yet Finished
  bool closed_ = false;
};

}  // namespace sshtail
