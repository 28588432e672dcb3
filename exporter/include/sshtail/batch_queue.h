#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>

#include "sshtail/batch.h"

namespace sshtail {

/// Bounded multi-producer, multi-consumer queue of line batches.
///
/// Thread-safe. When full, Push() blocks (back-pressure): nothing is ever
/// dropped, and memory stays bounded by capacity x batch size.
class BatchQueue {
 public:
  explicit BatchQueue(size_t capacity);

  /// Blocks while the queue is full. Returns false, leaving `batch` with the
  /// caller, once the queue is closed.
  bool Push(BatchPtr& batch);

  /// Blocks while the queue is empty. Returns nullptr once the queue is
  /// closed and drained.
  BatchPtr Pop();

  /// Wakes every waiter; later Push() calls fail, Pop() drains what is left.
  void Close();

  size_t Size() const;
  size_t capacity() const { return capacity_; }

 private:
  const size_t capacity_;
  mutable std::mutex mutex_;
  std::condition_variable not_full_;
  std::condition_variable not_empty_;
  std::deque<BatchPtr> items_;
  bool closed_ = false;
};

}  // namespace sshtail
