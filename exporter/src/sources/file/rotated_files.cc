#include "sources/file/rotated_files.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>

namespace sshtail {

int64_t BirthNs(const std::string& path) {
  struct statx stx {};
  if (::statx(AT_FDCWD, path.c_str(), 0, STATX_BTIME, &stx) != 0 ||
      !(stx.stx_mask & STATX_BTIME)) {
    return 0;
  }
  return static_cast<int64_t>(stx.stx_btime.tv_sec) * 1000000000 +
         stx.stx_btime.tv_nsec;
}

bool IsRotatedName(std::string_view base, std::string_view name, bool* gz) {
  *gz = false;
  if (name.size() <= base.size() + 1 || name.substr(0, base.size()) != base) {
    return false;
  }
  std::string_view suffix = name.substr(base.size());
  constexpr std::string_view kGz = ".gz";
  if (suffix.size() > kGz.size() &&
      suffix.substr(suffix.size() - kGz.size()) == kGz) {
    *gz = true;
    suffix.remove_suffix(kGz.size());
  }
  if (suffix.size() < 2 || (suffix[0] != '.' && suffix[0] != '-') ||
      suffix[1] < '0' || suffix[1] > '9') {
    return false;
  }
  for (char c : suffix.substr(2)) {
    bool ok = (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::vector<RotatedFile> ListRotated(const std::string& path) {
  std::vector<RotatedFile> out;
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "."
                    : slash == 0               ? "/"
                                               : path.substr(0, slash);
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (struct dirent* e = ::readdir(d)) {
    bool gz = false;
    if (!IsRotatedName(base, e->d_name, &gz)) continue;
    RotatedFile r;
    r.name = e->d_name;
    r.path = (dir == "/" ? "" : dir) + "/" + r.name;
    struct stat st {};
    if (::stat(r.path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    r.id = FileId{static_cast<uint64_t>(st.st_dev),
                  static_cast<uint64_t>(st.st_ino)};
    r.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 +
                 st.st_mtim.tv_nsec;
    r.ctime_ns = static_cast<int64_t>(st.st_ctim.tv_sec) * 1000000000 +
                 st.st_ctim.tv_nsec;
    r.gz = gz;
    out.push_back(std::move(r));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end(),
            [](const RotatedFile& a, const RotatedFile& b) {
              if (a.mtime_ns != b.mtime_ns) return a.mtime_ns > b.mtime_ns;
              return a.name < b.name;
            });
  return out;
}

bool HasPlainTwin(const std::vector<RotatedFile>& list,
                  const std::string& gz_name) {
  if (gz_name.size() < 3) return false;
  std::string plain = gz_name.substr(0, gz_name.size() - 3);
  for (const auto& r : list) {
    if (!r.gz && r.name == plain) return true;
  }
  return false;
}

}  // namespace sshtail
