#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace sshtail {

/// Splits a byte stream into lines.
///
/// A partial line is carried until its newline arrives; a trailing '\r' is
/// removed; a line longer than `max_line_bytes` is skipped whole (reported
/// through OnTooLong), never split in two. Not thread-safe: one per stream.
class LineSplitter {
 public:
  explicit LineSplitter(size_t max_line_bytes) : max_(max_line_bytes) {}

  /// Feeds bytes. `sink` needs `void Line(std::string_view)` (the line
  /// without its terminator) and `void TooLong()`.
  template <class Sink>
  void Feed(std::string_view data, Sink& sink);

  /// Starts over as if new: forgets any carried partial line and the byte
  /// count (after a truncation).
  void Reset() {
    partial_.clear();
    discarding_ = false;
    skip_first_ = false;
    discard_len_ = 0;
    complete_bytes_ = 0;
  }

  /// When `skip` is set, bytes up to the next newline are dropped without
  /// being counted as a line (used when starting in the middle of a line).
  void SkipToNextLine() { skip_first_ = true; }

  /// Bytes belonging to complete lines (including those skipped as too long)
  /// since construction: the stream offset of the last line end.
  uint64_t complete_bytes() const { return complete_bytes_; }
  size_t pending_bytes() const {
    return discarding_ ? discard_len_ : partial_.size();
  }

 private:
  template <class Sink>
  void Emit(std::string_view line, Sink& sink) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    sink.Line(line);
  }

  size_t max_;
  std::string partial_;
  bool discarding_ = false;
  bool skip_first_ = false;
  size_t discard_len_ = 0;
  uint64_t complete_bytes_ = 0;
};

template <class Sink>
void LineSplitter::Feed(std::string_view data, Sink& sink) {
  const char* p = data.data();
  const char* end = p + data.size();
  while (p < end) {
    const char* nl = static_cast<const char*>(std::memchr(p, '\n', end - p));
    if (nl == nullptr) {
      size_t n = end - p;
      if (discarding_ || skip_first_) {
        discard_len_ += n;
      } else if (partial_.size() + n > max_ + 1) {
        // +1: a line of exactly max bytes may still get its "\r".
        discarding_ = true;
        discard_len_ = partial_.size() + n;
        partial_.clear();
      } else {
        partial_.append(p, n);
      }
      return;
    }
    size_t n = nl - p;
    if (skip_first_) {
      skip_first_ = false;
      complete_bytes_ += discard_len_ + n + 1;
      discard_len_ = 0;
    } else if (discarding_) {
      discarding_ = false;
      complete_bytes_ += discard_len_ + n + 1;
      discard_len_ = 0;
      sink.TooLong();
    } else if (partial_.empty()) {
      std::string_view line(p, n);
      size_t len = (n > 0 && p[n - 1] == '\r') ? n - 1 : n;
      complete_bytes_ += n + 1;
      if (len > max_) {
        sink.TooLong();
      } else {
        Emit(line, sink);
      }
    } else {
      complete_bytes_ += partial_.size() + n + 1;
      partial_.append(p, n);
      size_t len = partial_.size();
      if (len > 0 && partial_[len - 1] == '\r') --len;
      if (len > max_) {
        sink.TooLong();
      } else {
        Emit(partial_, sink);
      }
      partial_.clear();
    }
    p = nl + 1;
  }
}

}  // namespace sshtail
