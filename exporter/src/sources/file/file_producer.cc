#include "sshtail/file_producer.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "sources/file/rotated_files.h"
#include "sshtail/line_splitter.h"
#include "sshtail/log.h"
#include "util/unique_fd.h"

namespace sshtail {
namespace {

using Clock = std::chrono::steady_clock;

// A rotated file is read until it has been quiet this long: writers such as
// nginx keep appending to it until they reopen their logs.
constexpr auto kDrainQuiet = std::chrono::seconds(5);
// A file saved at offset 0 and gone at restart is looked for among files
// modified after the save, less this (lines written just before it).
constexpr int64_t kUnreadMarginNs = 1000000000;
// Safety net when inotify says nothing (NFS, a directory that does not exist
// yet, writes through mmap).
constexpr int kFallbackPollMs = 1000;
// Small reads keep batches close to their target size (memory is bounded by
// queue capacity x batch size).
constexpr size_t kReadChunk = 64 * 1024;
constexpr size_t kFingerprint = FilePosition::kTailBytes;

FileId IdOf(const struct stat& st) {
  return FileId{static_cast<uint64_t>(st.st_dev),
                static_cast<uint64_t>(st.st_ino)};
}

std::string DirOf(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

struct GzClose {
  void operator()(gzFile_s* f) const { gzclose(f); }
};
using GzPtr = std::unique_ptr<gzFile_s, GzClose>;

int64_t MtimeNs(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 +
         st.st_mtim.tv_nsec;
}

bool IsGzip(int fd) {
  unsigned char magic[2] = {0, 0};
  return ::pread(fd, magic, sizeof magic, 0) == 2 && magic[0] == 0x1f &&
         magic[1] == 0x8b;
}

struct OpenFile {
  OpenFile(size_t max_line) : splitter(max_line) {}
  UniqueFd fd;
  // A rotated file compressed while we were away: read through zlib, its
  // offsets are those of the decompressed bytes (the original file's).
  GzPtr gz;
  std::string hist;       // gz: the last decompressed bytes, for TailBefore
  bool finished = false;  // gz: read to its end (it never grows)
  FileId id;
  uint64_t start = 0;     // offset the splitter started at
  uint64_t read_pos = 0;  // bytes read so far (file offset of fd)
  LineSplitter splitter;
  bool current = true;
  Clock::time_point last_growth = Clock::now();
  int wd = -1;
  std::string tail;  // the last bytes read, to notice a rewrite
  uint64_t saved_tail_at = UINT64_MAX;  // FilePosition::tail cache
  std::string saved_tail;
  uint64_t eof_at = UINT64_MAX;  // once mode: stop here
  int64_t mtime_ns = 0;          // when opened

  uint64_t line_offset() const { return start + splitter.complete_bytes(); }
};

class FileProducer : public Producer {
 public:
  FileProducer(const SourceSpec& spec, uint32_t index, SourceStatus& status,
               BatchQueue& queue, const ProducerOptions& options)
      : spec_(spec),
        status_(status),
        options_(options),
        builder_(queue, index, status, options.batch_bytes),
        dir_(DirOf(spec.path)),
        base_(spec.path.substr(spec.path.rfind('/') + 1)),
        buf_(kReadChunk) {
    stop_fd_.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    inotify_.Reset(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  }

  void RequestStop() override {
    stop_.store(true);
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(stop_fd_.get(), &one, sizeof one);
  }

  void Run() override {
    if (options_.once) {
      RunOnce();
      return;
    }
    Restore();
    while (!stop_.load()) {
      Service();
      if (!Publish()) return;
      Wait();
    }
    Publish();
  }

 private:
  void RunOnce() {
    UniqueFd fd(::open(spec_.path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
      Log(LogLevel::kWarn, "source " + spec_.name + ": cannot open " +
                               spec_.path + ": " + std::strerror(errno));
      status_.CountFailure(errno == ENOENT ? "file_missing" : "open");
      return;
    }
    struct stat st {};
    ::fstat(fd.get(), &st);
    if (IsGzip(fd.get())) {
      RunOnceGzip(std::move(fd));
      return;
    }
    auto& f = files_.emplace_back(options_.max_line_bytes);
    f.fd = std::move(fd);
    f.id = IdOf(st);
    f.eof_at = static_cast<uint64_t>(st.st_size);
    status_.up.store(true);
    status_.connected_once.store(true);
    ReadAvailable(f);
    Publish();
    status_.up.store(false);
  }

  // --once of a gzip file (found by its magic bytes, whatever its name):
  // decompressed with zlib, to its end. A corrupt or cut-off file yields
  // its lines up to the damage, logged; the last partial line is dropped.
  void RunOnceGzip(UniqueFd fd) {
    int raw = ::dup(fd.get());
    GzPtr gz(raw >= 0 ? gzdopen(raw, "rb") : nullptr);
    if (!gz) {
      if (raw >= 0) ::close(raw);
      Log(LogLevel::kWarn,
          "source " + spec_.name + ": cannot read " + spec_.path + " as gzip");
      status_.CountFailure("open");
      return;
    }
    gzbuffer(gz.get(), 128 * 1024);
    status_.up.store(true);
    status_.connected_once.store(true);
    LineSplitter splitter(options_.max_line_bytes);
    for (;;) {
      int n = gzread(gz.get(), buf_.data(), static_cast<unsigned>(buf_.size()));
      if (n < 0) {
        int err = 0;
        const char* msg = gzerror(gz.get(), &err);
        Log(LogLevel::kWarn, "source " + spec_.name + ": " + spec_.path +
                                 ": gzip data is damaged (" +
                                 (msg ? msg : "?") +
                                 "); lines before it are counted");
        break;
      }
      if (n == 0) {
        int err = Z_OK;
        gzerror(gz.get(), &err);
        if (err != Z_OK) {  // Z_BUF_ERROR: the input ends mid-stream
          Log(LogLevel::kWarn, "source " + spec_.name + ": " + spec_.path +
                                   ": gzip data ends early (cut off, or "
                                   "still being written); lines before it "
                                   "are counted");
        }
        break;
      }
      uint64_t before = splitter.complete_bytes();
      splitter.Feed(std::string_view(buf_.data(), static_cast<size_t>(n)),
                    builder_);
      pending_raw_ += splitter.complete_bytes() - before;
      if (builder_.full() && !Flush()) break;
    }
    Flush();
    status_.up.store(false);
  }

  // Pushes what the builder holds, without a position (gzip: never saved).
  bool Flush() {
    uint64_t raw = pending_raw_;
    pending_raw_ = 0;
    return builder_.Flush({}, raw);
  }

  // Opens the files a previous run was reading, or the path itself.
  void Restore() {
    PositionSet saved = status_.positions.Committed();
    bool have_current = false;
    struct stat cur {};
    bool cur_exists = ::stat(spec_.path.c_str(), &cur) == 0;
    // The saved current file when it is no longer at the path: rotated
    // (maybe compressed) while we were away.
    const FilePosition* moved = nullptr;
    // The saved current file had nothing read yet (offset 0): nothing
    // identifies it (an inode number is reused, a .gz has a new one), so it
    // is found by time instead: every file rotated after the save, less a
    // margin for lines written just before it, is read whole.
    bool unread_current = false;
    for (const auto& p : saved) {
      if (p.current && p.offset == 0 && status_.positions.RestoredAt() > 0) {
        unread_current = true;
      }
    }
    // The saved current file is nowhere (deleted, the path recreated; or
    // its inode number went to the file now at the path): nothing dates
    // the files rotated after it, so they are found by time, as for an
    // unread one (a file made after the save holds no saved line).
    bool current_gone = false;
    // The file at the path first: only it can have been truncated in place.
    for (const auto& p : saved) {
      // Unread: whatever is at the path now is read from its start below.
      if (!p.current || unread_current) continue;
      if (!cur_exists || !(IdOf(cur) == p.file)) {
        moved = &p;
      } else if (TailMatches(spec_.path, p)) {
        have_current = OpenAt(spec_.path, p, true, /*rewritten_from_0=*/true);
      } else if (FindInRotated(p, nullptr)) {
        // Copied and truncated while away, or its inode number went to a
        // new file after ours was compressed and deleted: the rest of ours
        // is in a rotated sibling, the path holds new lines.
        moved = &p;
      } else {
        // Truncated in place, or a new file with our inode number.
        have_current = OpenAt(spec_.path, p, true, /*rewritten_from_0=*/true);
        current_gone = true;
      }
    }
    int64_t saved_at = status_.positions.RestoredAt();
    bool by_time = unread_current || (current_gone && saved_at > 0);
    bool have_ref = by_time;
    int64_t ref_mtime = by_time ? saved_at - kUnreadMarginNs : 0;
    for (const auto& p : saved) {
      if (p.current && &p != moved) continue;
      // A rotated file now at the path is read there; but its inode number
      // may have gone to a new file there: then its bytes differ.
      if (!p.current && cur_exists && IdOf(cur) == p.file &&
          TailMatches(spec_.path, p)) {
        // Renamed back to the path (or the path's file was retired while
        // rotated out): read on from its offset, not whole.
        if (!have_current) {
          have_current =
              OpenAt(spec_.path, p, true, /*rewritten_from_0=*/false);
        }
        continue;
      }
      int64_t mtime = 0;
      if (!OpenSaved(p, &mtime)) {
        status_.files_lost.fetch_add(1);
        Log(LogLevel::kWarn, "source " + spec_.name +
                                 ": a rotated file from the positions file is "
                                 "gone; lines after offset " +
                                 std::to_string(p.offset) + " in it are lost");
        if (&p == moved && saved_at > 0) {
          have_ref = by_time = true;  // see current_gone
          ref_mtime = saved_at - kUnreadMarginNs;
        }
        continue;
      }
      if (&p == moved) {
        have_ref = true;
        ref_mtime = mtime;
      }
    }
    // Files rotated after ours while we were away hold only new lines.
    // Found by time, a file must also have been renamed or created after
    // the save (rotated, compressed or copied then): rotated files that
    // were there already are not ours.
    if (have_ref) {
      OpenNewer(ref_mtime, cur_exists ? IdOf(cur) : FileId{},
                by_time ? saved_at : 0);
    }
    if (!saved.empty() && !have_current) {
      // The file at the path is new since the last run: all of it is new.
      TryOpenCurrent(/*from_start=*/true);
    }
    WatchDir();
    if (files_.empty() || !HasCurrent()) {
      TryOpenCurrent(options_.start_at == StartAt::kBeginning);
    }
  }

  // The saved bytes are still before the saved offset in `path` (true when
  // nothing was saved to compare).
  bool TailMatches(const std::string& path, const FilePosition& p) {
    if (p.tail.empty() || p.tail.size() > p.offset) return true;
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
    if (!fd) return false;
    std::string now(p.tail.size(), '\0');
    ssize_t n = ::pread(fd.get(), now.data(), now.size(),
                        static_cast<off_t>(p.offset - p.tail.size()));
    return n == static_cast<ssize_t>(now.size()) && now == p.tail;
  }

  // Opens a saved file that is not at the path: by inode (plain, or a .gz
  // we were reading), else by its fingerprint among the rotated siblings
  // (compression and copytruncate give it a new inode). Sets its mtime.
  bool OpenSaved(const FilePosition& p, int64_t* mtime) {
    std::string old = FindByInode(p.file);
    int64_t saved_at = status_.positions.RestoredAt();
    if (!old.empty() && p.offset == 0 && saved_at > 0 &&
        BirthNs(old) > saved_at) {
      // Nothing read from it, so no bytes to check: created after the save,
      // it is another file that got the saved inode number.
      old.clear();
    }
    if (!old.empty()) {
      UniqueFd probe(::open(old.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
      bool gz = probe && IsGzip(probe.get());
      if (gz ? OpenGzAt(old, p) : OpenAt(old, p, false, false)) {
        *mtime = files_.back().mtime_ns;
        return true;
      }
    }
    return FindInRotated(p, mtime);
  }

  // The rotated sibling whose bytes [offset - 64, offset) (decompressed for
  // a .gz) are the saved tail: compressed (new inode) or copied
  // (copytruncate) while away. Opened at the offset when `mtime` is set,
  // else only found. Without a tail (offset 0) nothing can be recognised.
  bool FindInRotated(const FilePosition& p, int64_t* mtime) {
    if (p.tail.empty() || p.offset == 0) return false;
    for (const auto& r : ListRotated(spec_.path)) {
      if (IsOpen(r.id)) continue;
      if (r.gz ? OpenGzAt(r.path, p) : OpenAt(r.path, p, false, false)) {
        if (mtime == nullptr) {
          files_.pop_back();
          return true;
        }
        *mtime = files_.back().mtime_ns;
        Log(LogLevel::kInfo, "source " + spec_.name + ": catching up: " +
                                 r.path + " holds the rest of the file we " +
                                 "were reading (rotated while away)");
        return true;
      }
    }
    return false;
  }

  // Rotated siblings modified after the file we were in (`ref_mtime`) were
  // rotated after it: read whole. Skipped: files already open, the file at
  // the path, and a .gz whose plain twin is still there (same content).
  // With `min_ctime`, only files also renamed or created after it.
  void OpenNewer(int64_t ref_mtime, const FileId& at_path,
                 int64_t min_ctime = 0) {
    std::vector<RotatedFile> list = ListRotated(spec_.path);
    for (const auto& r : list) {
      if (r.mtime_ns <= ref_mtime) break;  // newest first
      if (IsOpen(r.id) || r.id == at_path || r.ctime_ns <= min_ctime) continue;
      if (r.gz && HasPlainTwin(list, r.name)) continue;
      FilePosition from0{r.id, 0, false, {}};
      bool ok =
          r.gz ? OpenGzAt(r.path, from0) : OpenAt(r.path, from0, false, false);
      if (ok) {
        Log(LogLevel::kInfo,
            "source " + spec_.name + ": catching up: " + r.path +
                " was rotated while away; " + "reading all of it");
      }
    }
  }

  bool IsOpen(const FileId& id) const {
    for (const auto& f : files_) {
      if (f.id == id) return true;
    }
    return false;
  }

  // Opens a gzip file as a rotated file, at decompressed offset
  // `saved.offset`, if the decompressed bytes before it are `saved.tail`.
  bool OpenGzAt(const std::string& path, const FilePosition& saved) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
    if (!fd) return false;
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) ||
        !IsGzip(fd.get())) {
      return false;
    }
    int raw = ::dup(fd.get());
    GzPtr gz(raw >= 0 ? gzdopen(raw, "rb") : nullptr);
    if (!gz) {
      if (raw >= 0) ::close(raw);
      return false;
    }
    gzbuffer(gz.get(), 128 * 1024);
    // Skip to the tail, then compare it: decompressing is the only way.
    uint64_t tail_len =
        saved.tail.size() <= saved.offset ? saved.tail.size() : 0;
    uint64_t skip = saved.offset - tail_len;
    while (skip > 0) {
      unsigned want =
          static_cast<unsigned>(std::min<uint64_t>(skip, buf_.size()));
      int n = gzread(gz.get(), buf_.data(), want);
      if (n <= 0) return false;  // shorter than the offset: not ours
      skip -= static_cast<uint64_t>(n);
    }
    std::string got(tail_len, '\0');
    size_t have = 0;
    while (have < got.size()) {
      int n = gzread(gz.get(), got.data() + have,
                     static_cast<unsigned>(got.size() - have));
      if (n <= 0) return false;
      have += static_cast<size_t>(n);
    }
    if (got != saved.tail.substr(0, tail_len)) return false;
    auto& f = files_.emplace_back(options_.max_line_bytes);
    f.fd = std::move(fd);
    f.gz = std::move(gz);
    f.id = IdOf(st);
    f.mtime_ns = MtimeNs(st);
    f.start = saved.offset;
    f.read_pos = saved.offset;
    f.current = false;
    f.hist = got;
    return true;
  }

  bool HasCurrent() const {
    for (const auto& f : files_) {
      if (f.current) return true;
    }
    return false;
  }

  std::string FindByInode(const FileId& id) {
    DIR* d = ::opendir(dir_.c_str());
    if (d == nullptr) return {};
    std::string found;
    while (struct dirent* e = ::readdir(d)) {
      // The file at the path is never the rotated one: an inode number is
      // reused once its file is deleted.
      if (e->d_ino != id.ino || base_ == e->d_name) continue;
      std::string candidate = dir_ + "/" + e->d_name;
      struct stat st {};
      if (::stat(candidate.c_str(), &st) == 0 && IdOf(st) == id &&
          S_ISREG(st.st_mode)) {
        found = candidate;
        break;
      }
    }
    ::closedir(d);
    return found;
  }

  // Opens `path` at a saved position. If the file is shorter than the
  // offset or the bytes before it changed, it is read from 0 when
  // `rewritten_from_0` (copytruncate), else not opened (not our file).
  bool OpenAt(const std::string& path, const FilePosition& saved, bool current,
              bool rewritten_from_0) {
    uint64_t offset = saved.offset;
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
    if (!fd) return false;
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
      if (!S_ISREG(st.st_mode) && !warned_not_regular_) {
        warned_not_regular_ = true;
        Log(LogLevel::kWarn,
            "source " + spec_.name + ": " + path + " is not a regular file");
      }
      return false;
    }
    if (static_cast<uint64_t>(st.st_size) < offset) {
      if (!rewritten_from_0) return false;
      Log(LogLevel::kInfo, "source " + spec_.name + ": " + path +
                               " is shorter than the saved offset; reading "
                               "it from the start");
      status_.rotations.fetch_add(1);
      offset = 0;
    } else if (!saved.tail.empty() && saved.tail.size() <= offset) {
      // Truncated and grown past the offset while we were away
      // (copytruncate): the bytes before the offset are not ours any more.
      std::string now(saved.tail.size(), '\0');
      ssize_t n = ::pread(fd.get(), now.data(), now.size(),
                          static_cast<off_t>(offset - saved.tail.size()));
      if (n != static_cast<ssize_t>(now.size()) || now != saved.tail) {
        if (!rewritten_from_0) return false;
        Log(LogLevel::kInfo, "source " + spec_.name + ": " + path +
                                 " was rewritten since the saved position; "
                                 "reading it from the start");
        status_.rotations.fetch_add(1);
        offset = 0;
      }
    }
    if (::lseek(fd.get(), static_cast<off_t>(offset), SEEK_SET) < 0) {
      return false;
    }
    auto& f = files_.emplace_back(options_.max_line_bytes);
    f.fd = std::move(fd);
    f.id = IdOf(st);
    f.mtime_ns = MtimeNs(st);
    f.start = offset;
    f.read_pos = offset;
    f.current = current;
    // A rewrite before our first new byte must be seen too.
    if (offset == saved.offset) f.tail = saved.tail;
    WatchFile(f);
    if (current) {
      status_.up.store(true);
      status_.connected_once.store(true);
    }
    return true;
  }

  // Opens the file at the path as the current one. At the end means: after
  // the last complete line, so a line being written now is still counted.
  void TryOpenCurrent(bool from_start) {
    UniqueFd fd(::open(spec_.path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
    if (!fd) {
      if (!warned_missing_) {
        warned_missing_ = true;
        Log(LogLevel::kWarn, "source " + spec_.name + ": waiting for " +
                                 spec_.path + ": " + std::strerror(errno));
        status_.CountFailure(errno == ENOENT ? "file_missing" : "open");
      }
      return;
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return;
    for (const auto& f : files_) {
      if (f.id == IdOf(st)) return;  // already reading it
    }
    warned_missing_ = false;
    uint64_t offset = 0;
    bool mid_line = false;
    if (!from_start && st.st_size > 0) {
      offset = static_cast<uint64_t>(st.st_size);
      // Back up to just after the last newline.
      size_t window = std::min<uint64_t>(offset, options_.max_line_bytes + 2);
      std::string tail(window, '\0');
      ssize_t n = ::pread(fd.get(), tail.data(), window,
                          static_cast<off_t>(offset - window));
      if (n == static_cast<ssize_t>(window)) {
        size_t nl = tail.rfind('\n');
        if (nl != std::string::npos) {
          offset = offset - window + nl + 1;
        } else if (window < offset) {
          mid_line = true;  // a giant line: skip its rest
        } else {
          offset = 0;
        }
      }
    }
    ::lseek(fd.get(), static_cast<off_t>(offset), SEEK_SET);
    auto& f = files_.emplace_back(options_.max_line_bytes);
    f.fd = std::move(fd);
    f.id = IdOf(st);
    f.start = offset;
    f.read_pos = offset;
    f.tail = TailBefore(f, offset);
    if (mid_line) f.splitter.SkipToNextLine();
    WatchFile(f);
    status_.up.store(true);
    status_.connected_once.store(true);
  }

  void WatchDir() {
    if (!inotify_ || dir_wd_ >= 0) return;
    dir_wd_ = ::inotify_add_watch(
        inotify_.get(), dir_.c_str(),
        IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_ATTRIB);
  }

  void WatchFile(OpenFile& f) {
    if (!inotify_) return;
    std::string proc = "/proc/self/fd/" + std::to_string(f.fd.get());
    f.wd = ::inotify_add_watch(inotify_.get(), proc.c_str(),
                               IN_MODIFY | IN_ATTRIB);
  }

  void Unwatch(OpenFile& f) {
    if (f.wd < 0) return;
    bool shared = false;  // inotify gives one wd per inode
    for (const auto& o : files_) {
      if (&o != &f && o.wd == f.wd) shared = true;
    }
    if (!shared) ::inotify_rm_watch(inotify_.get(), f.wd);
    f.wd = -1;
  }

  void Service() {
    WatchDir();
    for (auto& f : files_) ReadAvailable(f);
    CheckRotation();
    // Close drained files.
    auto now = Clock::now();
    for (auto it = files_.begin(); it != files_.end();) {
      if (!it->current &&
          (it->finished || now - it->last_growth >= kDrainQuiet)) {
        ReadAvailable(*it);
        Unwatch(*it);
        it = files_.erase(it);
      } else {
        ++it;
      }
    }
  }

  // Truncated (size below what we read) or rewritten (the bytes before our
  // position changed): the copytruncate case.
  bool Truncated(OpenFile& f) {
    if (f.gz) return false;
    struct stat st {};
    if (::fstat(f.fd.get(), &st) != 0) return false;
    uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size < f.read_pos) return true;
    if (f.tail.empty() || f.read_pos < f.tail.size()) return false;
    char now[kFingerprint];
    ssize_t n = ::pread(f.fd.get(), now, f.tail.size(),
                        static_cast<off_t>(f.read_pos - f.tail.size()));
    return n != static_cast<ssize_t>(f.tail.size()) ||
           std::memcmp(now, f.tail.data(), f.tail.size()) != 0;
  }

  void ReadAvailable(OpenFile& f) {
    if (f.gz) {
      ReadGz(f);
      return;
    }
    if (!options_.once && Truncated(f)) {
      Log(LogLevel::kInfo, "source " + spec_.name + ": file truncated; " +
                               "reading it from the start");
      Publish();
      status_.rotations.fetch_add(1);
      ::lseek(f.fd.get(), 0, SEEK_SET);
      f.start = 0;
      f.read_pos = 0;
      f.tail.clear();
      f.saved_tail_at = UINT64_MAX;
      f.splitter.Reset();
    }
    while (f.read_pos < f.eof_at) {
      size_t want = buf_.size();
      if (f.eof_at != UINT64_MAX) {
        want = std::min<uint64_t>(want, f.eof_at - f.read_pos);
      }
      ssize_t n = ::read(f.fd.get(), buf_.data(), want);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      f.read_pos += static_cast<uint64_t>(n);
      f.last_growth = Clock::now();
      size_t keep = std::min<size_t>(kFingerprint, static_cast<size_t>(n));
      if (keep == kFingerprint) {
        f.tail.assign(buf_.data() + n - keep, keep);
      } else {
        f.tail.append(buf_.data(), keep);
        if (f.tail.size() > kFingerprint) {
          f.tail.erase(0, f.tail.size() - kFingerprint);
        }
      }
      uint64_t before = f.splitter.complete_bytes();
      f.splitter.Feed(std::string_view(buf_.data(), static_cast<size_t>(n)),
                      builder_);
      pending_raw_ += f.splitter.complete_bytes() - before;
      if (builder_.full() && !Publish()) return;
    }
  }

  // Reads a compressed rotated file to its end. Damage ends it early (the
  // lines before it are counted), logged.
  void ReadGz(OpenFile& f) {
    while (!f.finished) {
      int n =
          gzread(f.gz.get(), buf_.data(), static_cast<unsigned>(buf_.size()));
      if (n <= 0) {
        int err = Z_OK;
        const char* msg = gzerror(f.gz.get(), &err);
        if (n < 0 || err != Z_OK) {
          Log(LogLevel::kWarn, "source " + spec_.name +
                                   ": a compressed rotated file is damaged "
                                   "or cut off (" +
                                   (msg ? msg : "?") +
                                   "); lines before the damage are counted");
        }
        f.finished = true;
        break;
      }
      f.read_pos += static_cast<uint64_t>(n);
      f.last_growth = Clock::now();
      uint64_t before = f.splitter.complete_bytes();
      f.splitter.Feed(std::string_view(buf_.data(), static_cast<size_t>(n)),
                      builder_);
      pending_raw_ += f.splitter.complete_bytes() - before;
      // Keep the bytes from kFingerprint before the last complete line on.
      f.hist.append(buf_.data(), static_cast<size_t>(n));
      size_t keep =
          static_cast<size_t>(f.read_pos - f.line_offset()) + kFingerprint;
      if (f.hist.size() > keep + kReadChunk) {
        f.hist.erase(0, f.hist.size() - keep);
      }
      if (builder_.full() && !Publish()) return;
    }
  }

  void CheckRotation() {
    struct stat st {};
    bool exists = ::stat(spec_.path.c_str(), &st) == 0;
    for (auto& f : files_) {
      if (!f.current) continue;
      if (exists && IdOf(st) == f.id) return;  // no change
      // Renamed away or replaced: drain it, then follow the new file.
      f.current = false;
      f.last_growth = Clock::now();
      status_.rotations.fetch_add(1);
      status_.up.store(false);
      Log(LogLevel::kInfo, "source " + spec_.name + ": " + spec_.path +
                               " was rotated; draining the old file");
    }
    if (exists) TryOpenCurrent(/*from_start=*/true);
  }

  PositionSet Positions() {
    PositionSet set;
    for (auto& f : files_) {
      uint64_t at = f.line_offset();
      set.push_back(FilePosition{f.id, at, f.current, TailBefore(f, at)});
    }
    return set;
  }

  // The bytes just before `at`, saved with the position so that a resume can
  // tell whether the file is still the one we read.
  const std::string& TailBefore(OpenFile& f, uint64_t at) {
    if (f.saved_tail_at == at) return f.saved_tail;
    size_t want =
        static_cast<size_t>(std::min<uint64_t>(at, FilePosition::kTailBytes));
    if (f.gz) {
      size_t back = static_cast<size_t>(f.read_pos - at);
      if (f.hist.size() >= back + want) {
        f.saved_tail = f.hist.substr(f.hist.size() - back - want, want);
      } else {
        f.saved_tail.clear();
      }
      f.saved_tail_at = at;
      return f.saved_tail;
    }
    f.saved_tail.assign(want, '\0');
    ssize_t n = ::pread(f.fd.get(), f.saved_tail.data(), want,
                        static_cast<off_t>(at - want));
    if (n != static_cast<ssize_t>(want)) f.saved_tail.clear();
    f.saved_tail_at = at;
    return f.saved_tail;
  }

  bool Publish() {
    PositionSet pos = Positions();
    for (const auto& p : pos) {
      if (p.current) status_.offset.store(p.offset);
    }
    uint64_t raw = pending_raw_;
    pending_raw_ = 0;
    return builder_.Flush(pos, raw);
  }

  void Wait() {
    int timeout = kFallbackPollMs;
    auto now = Clock::now();
    for (const auto& f : files_) {
      if (f.current) continue;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                      f.last_growth + kDrainQuiet - now)
                      .count() +
                  1;
      timeout = static_cast<int>(std::clamp<long long>(left, 0, timeout));
    }
    struct pollfd fds[2] = {{stop_fd_.get(), POLLIN, 0},
                            {inotify_.get(), POLLIN, 0}};
    int nfds = inotify_ ? 2 : 1;
    if (!inotify_) timeout = std::min(timeout, 250);
    int r = ::poll(fds, nfds, timeout);
    if (r > 0 && nfds == 2 && (fds[1].revents & POLLIN)) {
      alignas(struct inotify_event) char events[16384];
      while (::read(inotify_.get(), events, sizeof events) > 0) {
      }
    }
  }

  const SourceSpec spec_;
  SourceStatus& status_;
  const ProducerOptions options_;
  BatchBuilder builder_;
  const std::string dir_;
  const std::string base_;  // the path's file name
  std::vector<char> buf_;
  std::list<OpenFile> files_;
  UniqueFd stop_fd_;
  UniqueFd inotify_;
  int dir_wd_ = -1;
  std::atomic<bool> stop_{false};
  uint64_t pending_raw_ = 0;
  bool warned_missing_ = false;
  bool warned_not_regular_ = false;
};

class StdinProducer : public Producer {
 public:
  StdinProducer(uint32_t index, SourceStatus& status, BatchQueue& queue,
                const ProducerOptions& options)
      : status_(status),
        builder_(queue, index, status, options.batch_bytes),
        splitter_(options.max_line_bytes),
        buf_(kReadChunk) {
    stop_fd_.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  }

  void RequestStop() override {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(stop_fd_.get(), &one, sizeof one);
  }

  void Run() override {
    status_.up.store(true);
    status_.connected_once.store(true);
    for (;;) {
      struct pollfd fds[2] = {{stop_fd_.get(), POLLIN, 0},
                              {STDIN_FILENO, POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0 && errno != EINTR) break;
      if (fds[0].revents & POLLIN) break;
      if (!(fds[1].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = ::read(STDIN_FILENO, buf_.data(), buf_.size());
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) break;
      uint64_t before = splitter_.complete_bytes();
      splitter_.Feed(std::string_view(buf_.data(), static_cast<size_t>(n)),
                     builder_);
      if (!builder_.Flush({}, splitter_.complete_bytes() - before)) break;
    }
    status_.up.store(false);
  }

 private:
  SourceStatus& status_;
  BatchBuilder builder_;
  LineSplitter splitter_;
  std::vector<char> buf_;
  UniqueFd stop_fd_;
};

}  // namespace

std::unique_ptr<Producer> MakeFileProducer(const SourceSpec& spec,
                                           uint32_t index, SourceStatus& status,
                                           BatchQueue& queue,
                                           const ProducerOptions& options) {
  return std::make_unique<FileProducer>(spec, index, status, queue, options);
}

std::unique_ptr<Producer> MakeStdinProducer(uint32_t index,
                                            SourceStatus& status,
                                            BatchQueue& queue,
                                            const ProducerOptions& options) {
  return std::make_unique<StdinProducer>(index, status, queue, options);
}

}  // namespace sshtail
