#include "sshtail/batch_queue.h"

namespace sshtail {

BatchQueue::BatchQueue(size_t capacity, bool per_source_order)
    : capacity_(capacity ? capacity : 1), ordered_(per_source_order) {}

bool BatchQueue::Push(BatchPtr& batch) {
  std::unique_lock lock(mutex_);
  not_full_.wait(lock, [&] { return closed_ || items_.size() < capacity_; });
  if (closed_) return false;
  uint32_t source = batch->source;
  if (source >= out_.size()) out_.resize(source + 1, 0);
  ++out_[source];
  items_.push_back(std::move(batch));
  lock.unlock();
  not_empty_.notify_one();
  return true;
}

BatchPtr BatchQueue::Pop() {
  std::unique_lock lock(mutex_);
  auto next = items_.end();
  not_empty_.wait(lock, [&] {
    next = items_.begin();
    // Ordered: the oldest batch of a source with nothing in flight. Every
    // waiting consumer could take the same items, so one wake-up suffices.
    if (ordered_) {
      while (next != items_.end() && InFlight((*next)->source)) ++next;
    }
    return next != items_.end() || (closed_ && items_.empty());
  });
  if (next == items_.end()) return nullptr;
  BatchPtr batch = std::move(*next);
  items_.erase(next);
  // Ordered: consumers may sleep on a closed queue whose batches were all
  // blocked; the one that empties it tells them to end.
  bool drained = ordered_ && closed_ && items_.empty();
  if (ordered_) {
    if (batch->source >= in_flight_.size()) {
      in_flight_.resize(batch->source + 1, false);
    }
    in_flight_[batch->source] = true;
  }
  lock.unlock();
  not_full_.notify_one();
  if (drained) not_empty_.notify_all();
  return batch;
}

void BatchQueue::Finished(uint32_t source) {
  bool waiting = false;
  {
    std::lock_guard lock(mutex_);
    if (source < out_.size() && out_[source] > 0) --out_[source];
    if (!ordered_) return;
    if (source < in_flight_.size()) in_flight_[source] = false;
    for (const auto& b : items_) waiting |= b->source == source;
  }
  // A consumer may be asleep with only this source's batches left; any one
  // of them can take the next (waking all of them costs CPU for nothing).
  if (waiting) not_empty_.notify_one();
}

bool BatchQueue::Idle(uint32_t source) const {
  std::lock_guard lock(mutex_);
  return source >= out_.size() || out_[source] == 0;
}

void BatchQueue::Close() {
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
  }
  not_full_.notify_all();
  not_empty_.notify_all();
}

size_t BatchQueue::Size() const {
  std::lock_guard lock(mutex_);
  return items_.size();
}

}  // namespace sshtail
