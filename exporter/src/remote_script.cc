#include "sshtail/remote_script.h"

#include <random>

namespace sshtail {

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\"'\"'";
    } else {
      out += c;
    }
  }
  out += "'";
  return out;
}

namespace {

uint64_t RandomBits() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return rng();
}

}  // namespace

std::string RandomTag() {
  static const char* hex = "0123456789abcdef";
  std::string t = "SSHTAIL-";
  for (int i = 0; i < 2; ++i) {
    uint64_t v = RandomBits();
    for (int j = 0; j < 16; ++j) t += hex[(v >> (4 * j)) & 15];
  }
  return t;
}

std::string RandomNoncePath() {
  // 64 random bits as "/." or "//." segments: the path still names
  // /dev/fd/3, and a log line cannot guess it.
  uint64_t v = RandomBits();
  std::string p = "/dev";
  for (int i = 0; i < 64; ++i) p += (v >> i) & 1 ? "//." : "/.";
  return p + "/fd/3";
}

std::string RemoteScript(const RemoteRequest& r) {
  const char* mode = r.mode == RemoteRequest::Mode::kPath    ? "path"
                     : r.mode == RemoteRequest::Mode::kInode ? "inode"
                                                             : "once";
  std::string s;
  s += "LC_ALL=C; export LC_ALL\n";
  s += "p=" + ShellQuote(r.path) + "\n";
  s += "mode=" + std::string(mode) + "\n";
  s += "t=" + ShellQuote(r.tag) + "\n";
  s += "hb=" + std::to_string(r.heartbeat_seconds) + "\n";
  s += "edev=" + (r.expect.valid() ? std::to_string(r.expect.dev) : "") + "\n";
  s += "eino=" + (r.expect.valid() ? std::to_string(r.expect.ino) : "") + "\n";
  s += "off=" + std::to_string(r.offset) + "\n";
  s += "noop=" + std::string(r.same_is_noop ? "1" : "0") + "\n";
  s += "atend=" + std::string(r.start_at_end ? "1" : "0") + "\n";
  s += "win=" + std::to_string(r.end_window) + "\n";
  s += R"SH(f=$p
if [ "$mode" = inode ]; then
  d=${p%/*}
  [ -n "$d" ] || d=/
  f=
  for c in "$d"/* "$d"/.[!.]* "$d"/..?*; do
    [ -f "$c" ] || continue
    set -- $(stat -L -c '%d %i' -- "$c" 2>/dev/null)
    if [ "$1" = "$edev" ] && [ "$2" = "$eino" ]; then f=$c; break; fi
  done
  if [ -z "$f" ]; then echo "$t GONE"; exit 0; fi
else
  said=0
  while [ ! -e "$f" ]; do
    if [ "$said" = 0 ]; then echo "$t MISSING"; said=1; fi
    if [ "$mode" = once ]; then exit 0; fi
    sleep "$hb"
    echo "H - - -" >&2 || exit 0
  done
fi
if [ ! -r "$f" ] || [ ! -f "$f" ]; then echo "$t NOACCESS"; exit 0; fi
exec 3<"$f"
set -- $(stat -L -c '%d %i %s' /dev/fd/3)
cdev=$1 cino=$2 size=$3
start=0
if [ "$cdev" = "$edev" ] && [ "$cino" = "$eino" ]; then
  if [ "$noop" = 1 ]; then echo "$t SAME"; exit 0; fi
  if [ "$size" -ge "$off" ]; then start=$off; fi
elif [ "$atend" = 1 ] && [ "$size" -gt "$win" ]; then
  start=$((size - win))
fi
echo "$t BEGIN $cdev $cino $start $size"
if [ "$mode" = once ]; then
  exec dd bs=256K skip="$start" count=$((size - start)) \
    iflag=skip_bytes,count_bytes status=none <&3
fi
(
  while sleep "$hb"; do
    s=$(stat -L -c '%d %i %s' -- "$p" 2>/dev/null) || s='- - -'
    echo "H $s" || exit 0
  done
) >&2 &
w=$!
)SH";
  // /dev/fd/3 keeps reading exactly the file identified above, whatever
  // happens to the name; tail polls it (inotify does not follow /dev/fd).
  s += "tail -s 0.05 -c +$((start + 1)) -f " + ShellQuote(r.nonce_path) +
       " 2>&1\n";
  s += "kill $w 2>/dev/null\n";
  return s;
}

}  // namespace sshtail
