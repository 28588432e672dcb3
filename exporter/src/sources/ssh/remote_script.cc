#include "sshtail/remote_script.h"

#include <sys/random.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <stdexcept>

#include "sshtail/positions.h"

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

// 64 bits from the kernel's CSPRNG: the tag and nonce must not be
// guessable from earlier ones (a seeded PRNG would be).
uint64_t RandomBits() {
  uint64_t v = 0;
  auto* p = reinterpret_cast<unsigned char*>(&v);
  size_t got = 0;
  while (got < sizeof v) {
    ssize_t n = getrandom(p + got, sizeof v - got, 0);
    if (n > 0) {
      got += static_cast<size_t>(n);
    } else if (n < 0 && errno != EINTR) {
      std::abort();  // no randomness (pre-3.17 kernel): never go on without
    }
  }
  return v;
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
  // 128 random bits as "/." or "//." segments: the path still names
  // /dev/fd/3, and a log line cannot guess it.
  std::string p = "/dev";
  for (int w = 0; w < 2; ++w) {
    uint64_t v = RandomBits();
    for (int i = 0; i < 64; ++i) p += (v >> i) & 1 ? "//." : "/.";
  }
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
  s += "hb=" + std::to_string(std::max(1, r.heartbeat_seconds)) + "\n";
  s += "chk=" +
       std::to_string(std::max(
           1, r.check_seconds > 0 ? r.check_seconds : r.heartbeat_seconds)) +
       "\n";
  s += "edev=" + (r.expect.valid() ? std::to_string(r.expect.dev) : "") + "\n";
  s += "eino=" + (r.expect.valid() ? std::to_string(r.expect.ino) : "") + "\n";
  s += "off=" + std::to_string(r.offset) + "\n";
  // Hex digits only: nothing to quote. A tail that cannot be right is not
  // checked.
  bool tail_ok = r.expect_tail.size() <= FilePosition::kTailBytes &&
                 r.expect_tail.size() <= r.offset;
  s += "etail=" + (tail_ok ? HexEncode(r.expect_tail) : "") + "\n";
  s += "noop=" + std::string(r.same_is_noop ? "1" : "0") + "\n";
  s += "atend=" + std::string(r.start_at_end ? "1" : "0") + "\n";
  s += "win=" + std::to_string(r.end_window) + "\n";
  s += "newer=" + std::string(r.list_newer ? "1" : "0") + "\n";
  bool by_time = r.newer_than_ns > 0 && r.offset == 0;
  s += "since=" + (by_time ? std::to_string(r.newer_than_ns) : "") + "\n";
  s += "born=" +
       (r.born_before_ns > 0 && r.offset == 0 ? std::to_string(r.born_before_ns)
                                              : "") +
       "\n";
  s += "gsince=" +
       (r.newer_if_gone_ns > 0 && r.list_newer
            ? std::to_string(r.newer_if_gone_ns)
            : "") +
       "\n";
  s += "before=" +
       (r.newer_before_ns > 0 ? std::to_string(r.newer_before_ns) : "") + "\n";
  // mode=inode: the rotated file is found by inode (plain, or a .gz we
  // were reading), else by its fingerprint among the rotated siblings
  // (compression and copytruncate's copy have a new inode): the
  // (decompressed) bytes before the offset must be the saved ones. With newer=1
  // the script also lists the rotated siblings modified after it ("NEWER dev
  // ino"): rotated after it while we were away, to be read whole. Same rules as
  // rotated_files.cc.
  s += R"SH(f=$p
d=${p%/*}
[ -n "$d" ] || d=/
b=${p##*/}
# A rotated sibling: the path's name, '.' or '-', a digit, then only
# digits and . _ - (logrotate's .N and dateext), maybe .gz.
rot() {
  r=${1##*/}
  case $r in "$b".[0-9]*|"$b"-[0-9]*) ;; *) return 1 ;; esac
  r=${r#"$b"?}
  r=${r%.gz}
  case $r in *[!0-9._-]*) return 1 ;; esac
  [ -f "$1" ]
}
# "NEWER dev ino" for each rotated sibling modified after $1 (ns) and
# changed (ctime) after $2 and, if $4 is set, not after $4, but not the
# file $3 ("dev ino") nor the one at the path. logrotate writes X.gz, then
# deletes X: X only is listed.
newer() {
  nref=$1 nmin=$2 nex=$3 nmax=$4
  s=$(stat -L -c '%d %i' -- "$p" 2>/dev/null) || s='- -'
  k=0
  for c in "$d"/* "$d"/.[!.]* "$d"/..?*; do
    rot "$c" || continue
    case $c in *.gz) [ -f "${c%.gz}" ] && continue ;; esac
    m=$(stat -L -c '%d %i %.9Y %.9Z' -- "$c" 2>/dev/null) || continue
    set -- $m
    [ "$1 $2" != "$nex" ] && [ "$1 $2" != "$s" ] || continue
    [ "${3%.*}${3#*.}" -gt "$nref" ] || continue
    [ "${4%.*}${4#*.}" -gt "$nmin" ] || continue
    [ -z "$nmax" ] || [ "${4%.*}${4#*.}" -le "$nmax" ] || continue
    echo "$t NEWER $1 $2"
    k=$((k + 1))
    [ "$k" -lt 64 ] || break
  done
}
isgz() { [ "$(od -An -tx1 -N2 /dev/fd/3 | tr -d ' \n')" = 1f8b ]; }
# The bytes before $off in fd 3 (decompressed if $1 = 1) are $etail.
tailok() {
  [ -n "$etail" ] || return 0
  n=$((${#etail} / 2))
  if [ "$1" = 1 ]; then
    got=$(gzip -dc </dev/fd/3 2>/dev/null |
      od -An -v -tx1 -j $((off - n)) -N "$n" | tr -d ' \n')
  else
    got=$(od -An -v -tx1 -j $((off - n)) -N "$n" /dev/fd/3 | tr -d ' \n')
  fi
  [ "$got" = "$etail" ]
}
if [ "$mode" = inode ] && [ -n "$since" ]; then
  # Found by time (as the local reader does): modified after the save less
  # 1 s, and renamed or created after it.
  newer $((since - 1000000000)) "$since" -
  echo "$t GONE"; exit 0
fi
if [ "$mode" = inode ]; then
  f=
  gz=0
  for c in "$d"/* "$d"/.[!.]* "$d"/..?*; do
    # The file at the path is never the rotated one: an inode number is
    # reused once its file is deleted.
    [ -f "$c" ] && [ "$c" != "$p" ] || continue
    set -- $(stat -L -c '%d %i' -- "$c" 2>/dev/null)
    if [ "$1" = "$edev" ] && [ "$2" = "$eino" ]; then
      { command exec 3<"$c"; } 2>/dev/null && f=$c
      break
    fi
  done
  if [ -n "$f" ] && [ -n "$born" ]; then
    w=$(stat -L -c '%.9W' /dev/fd/3 2>/dev/null)
    case $w in ''|*[!0-9.]*|0|0.*) ;; *) [ "${w%.*}${w#*.}" -le "$born" ] || f= ;; esac
  fi
  if [ -n "$f" ] && isgz; then
    gz=1
    tailok 1 || f=
  elif [ -n "$f" ]; then
    set -- $(stat -L -c '%s' /dev/fd/3)
    { [ "$1" -ge "$off" ] && tailok 0; } || f=
  fi
  if [ -z "$f" ] && [ -n "$etail" ] && [ "$off" -gt 0 ]; then
    # By fingerprint: compressed (new inode), or copied (copytruncate).
    for c in "$d"/* "$d"/.[!.]* "$d"/..?*; do
      rot "$c" || continue
      { command exec 3<"$c"; } 2>/dev/null || continue
      if isgz; then
        if tailok 1; then f=$c gz=1; break; fi
      else
        set -- $(stat -L -c '%s' /dev/fd/3)
        if [ "$1" -ge "$off" ] && tailok 0; then f=$c; break; fi
      fi
    done
  fi
  if [ -z "$f" ]; then
    # Deleted while we were away: the files rotated after the save, by time.
    # If the path holds our inode number, only a file born after the save
    # is not ours truncated (a copytruncate copy found by time would be read
    # again whole).
    if [ -n "$gsince" ]; then
      set -- $(stat -L -c '%d %i %.9W' -- "$p" 2>/dev/null) - - -
      w=$3
      case $w in ''|*[!0-9.]*|0|0.*) w=0 ;; *) w=${w%.*}${w#*.} ;; esac
      if [ "$1 $2" != "$edev $eino" ] || [ "$w" -gt "$gsince" ]; then
        newer $((gsince - 1000000000)) "$gsince" - "$before"
      fi
    fi
    echo "$t GONE"; exit 0
  fi
  set -- $(stat -L -c '%d %i %s %.9Y' /dev/fd/3)
  cdev=$1 cino=$2 size=$3 ref=${4%.*}${4#*.}
  edev=$cdev eino=$cino  # ours, maybe a copy: resumed at the offset below
  if [ "$newer" = 1 ]; then newer "$ref" 0 "$cdev $cino" "$before"; fi
  if [ "$gz" = 1 ]; then
    # A compressed file never grows: its rest, then the end of the channel.
    echo "$t BEGIN $cdev $cino $off $size"
    gzip -dc <&3 | tail -c +$((off + 1))
    exit 0
  fi
else
  said=0 n=0
  while [ ! -e "$f" ]; do
    if [ "$said" = 0 ]; then echo "$t MISSING"; said=1; fi
    if [ "$mode" = once ]; then exit 0; fi
    sleep "$chk"
    n=$((n + chk))
    if [ "$n" -ge "$hb" ]; then echo "H - -" >&2 || exit 0; n=0; fi
  done
  # It appeared while we waited: every line of it is new.
  if [ "$said" = 1 ]; then atend=0; fi
fi
if [ "$mode" != inode ]; then
  if [ ! -r "$f" ] || [ ! -f "$f" ]; then echo "$t NOACCESS"; exit 0; fi
  exec 3<"$f"
fi
now=$(date +%s%N 2>/dev/null)
case $now in *[!0-9]*) now= ;; esac
set -- $(stat -L -c '%d %i %s' /dev/fd/3)
cdev=$1 cino=$2 size=$3
start=0
if [ "$cdev" = "$edev" ] && [ "$cino" = "$eino" ]; then
  if [ "$noop" = 1 ]; then echo "$t SAME"; exit 0; fi
  same=0
  if [ "$size" -ge "$off" ]; then
    same=1
    # The bytes before the offset must still be the ones read before, else
    # the file was truncated and regrew past it (copytruncate while we were
    # away). od reopens /dev/fd/3 (fd 3's offset is shared with dd below).
    if [ -n "$etail" ]; then
      n=$((${#etail} / 2))
      got=$(od -An -v -tx1 -j $((off - n)) -N "$n" /dev/fd/3 | tr -d ' \n')
      [ "$got" = "$etail" ] || same=0
    fi
  fi
  if [ "$same" = 1 ]; then
    start=$off
  elif [ "$mode" = inode ]; then
    # A rotated file that is not what we read: ours is gone, its inode
    # number went to another file.
    echo "$t GONE"; exit 0
  fi
elif [ "$atend" = 1 ] && [ "$size" -gt "$win" ]; then
  start=$((size - win))
fi
echo "$t BEGIN $cdev $cino $start $size $now"
if [ "$mode" = once ]; then
  # A gzip file (by its magic bytes, whatever its name) is sent
  # decompressed. od reopens /dev/fd/3: fd 3 stays at offset 0.
  if [ "$start" = 0 ] && [ "$size" -ge 2 ] &&
     [ "$(od -An -tx1 -N2 /dev/fd/3 | tr -d ' \n')" = 1f8b ]; then
    exec gzip -dc <&3
  fi
  exec dd bs=256K skip="$start" count=$((size - start)) \
    iflag=skip_bytes,count_bytes status=none <&3
fi
)SH";
  // /dev/fd/3 keeps reading exactly the file identified above, whatever
  // happens to the name; tail polls it (inotify does not follow /dev/fd).
  s += "tail -s 0.05 -c +$((start + 1)) -f " + ShellQuote(r.nonce_path) +
       " 2>&1 &\n";
  // The path is looked at every second and reported when it names another
  // file (so two rotations within one heartbeat interval are seen), and
  // every interval anyway: the client's liveness signal.
  // Nothing of ours may outlive the channel: an idle tail never writes, so
  // it would not notice. The heartbeat writes every interval; when that
  // fails (EPIPE: SIGPIPE is ignored here so the loop goes on to clean up)
  // it ends tail. fd 3 is closed in the loop and then in this shell, so
  // only tail holds the file (a deleted log's space is freed with it).
  s += R"SH(tp=$!
(
  me=$(stat -L -c '%d %i' /dev/fd/3)
  exec 3<&-
  trap '' PIPE
  trap 'kill $! 2>/dev/null; exit 0' TERM
  last= n=0
  while :; do
    sleep 1 &
    wait $!
    n=$((n + 1))
    # Most seconds the path still names the file tail holds: the builtin
    # test says so without forking stat (hosts with hundreds of logs).
    if [ "$n" -lt "$hb" ] && [ -n "$me" ] && [ "$last" = "$me" ] &&
       [ "$p" -ef "/proc/$tp/fd/3" ] 2>/dev/null; then
      continue
    fi
    s=$(stat -L -c '%d %i' -- "$p" 2>/dev/null) || s='- -'
    if [ "$s" != "$last" ] || [ "$n" -ge "$hb" ]; then
      echo "H $s" || break
      last=$s n=0
    fi
  done
  kill "$tp" 2>/dev/null
) >&2 &
w=$!
exec 3<&-
wait "$tp"
kill "$w" 2>/dev/null
)SH";
  return s;
}

std::string RemoteListScript(const std::string& glob, int heartbeat_seconds,
                             const std::string& tag, bool once) {
  std::string word, literal;
  auto flush = [&] {
    if (!literal.empty()) word += ShellQuote(literal);
    literal.clear();
  };
  for (size_t i = 0; i < glob.size(); ++i) {
    char c = glob[i];
    if (c == '*' || c == '?') {
      flush();
      word += c;
    } else if (c == '[') {
      size_t close = glob.find(']', i + 2);
      if (close == std::string::npos) {
        throw std::invalid_argument("unterminated '[' in '" + glob + "'");
      }
      std::string body = glob.substr(i + 1, close - i - 1);
      for (char b : body) {
        if (!std::isalnum(static_cast<unsigned char>(b)) && b != '.' &&
            b != '_' && b != '-' && b != '!' && b != '^') {
          throw std::invalid_argument(
              "a [...] in a remote glob may hold letters, digits and "
              "\"._-!^\" only: '" +
              glob + "'");
        }
      }
      flush();
      word += "[" + body + "]";
      i = close;
    } else if (c == '\\' && i + 1 < glob.size()) {
      literal += glob[++i];
    } else {
      literal += c;
    }
  }
  flush();
  std::string s = "t=" + ShellQuote(tag) + "\n";
  s += "while :; do\n";
  s += "  for f in " + word + "; do\n";
  s += R"SH(    [ -f "$f" ] && { printf '%s F %s\n' "$t" "$f" || exit 0; }
  done
  printf '%s E\n' "$t" || exit 0
)SH";
  s += once
           ? "  exit 0\n"
           : "  sleep " + std::to_string(std::max(1, heartbeat_seconds)) + "\n";
  s += "done\n";
  return s;
}

}  // namespace sshtail
