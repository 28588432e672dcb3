#include "sources/position_ledger.h"

#include <algorithm>

namespace sshtail {

void PositionLedger::Hold(const std::string& url, const std::string& name,
                          PositionSet positions) {
  if (positions.empty()) return;
  std::lock_guard lock(mutex_);
  entries_[url] = Entry{SourceState{name, std::move(positions)}, ++next_};
  while (entries_.size() > max_) {
    auto oldest = std::min_element(entries_.begin(), entries_.end(),
                                   [](const auto& a, const auto& b) {
                                     return a.second.order < b.second.order;
                                   });
    entries_.erase(oldest);
  }
}

std::optional<PositionSet> PositionLedger::Find(const std::string& url) const {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(url);
  if (it == entries_.end()) return std::nullopt;
  return it->second.state.positions;
}

void PositionLedger::Erase(const std::string& url) {
  std::lock_guard lock(mutex_);
  entries_.erase(url);
}

std::map<std::string, SourceState> PositionLedger::Held() const {
  std::lock_guard lock(mutex_);
  std::map<std::string, SourceState> out;
  for (const auto& [url, e] : entries_) out[url] = e.state;
  return out;
}

size_t PositionLedger::size() const {
  std::lock_guard lock(mutex_);
  return entries_.size();
}

}  // namespace sshtail
