#include "sshtail/batch_queue.h"

namespace sshtail {

BatchQueue::BatchQueue(size_t capacity) : capacity_(capacity ? capacity : 1) {}

bool BatchQueue::Push(BatchPtr& batch) {
  std::unique_lock lock(mutex_);
  not_full_.wait(lock, [&] { return closed_ || items_.size() < capacity_; });
  if (closed_) return false;
  items_.push_back(std::move(batch));
  lock.unlock();
  not_empty_.notify_one();
  return true;
}

BatchPtr BatchQueue::Pop() {
  std::unique_lock lock(mutex_);
  not_empty_.wait(lock, [&] { return closed_ || !items_.empty(); });
  if (items_.empty()) return nullptr;
  BatchPtr batch = std::move(items_.front());
  items_.pop_front();
  lock.unlock();
  not_full_.notify_one();
  return batch;
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
