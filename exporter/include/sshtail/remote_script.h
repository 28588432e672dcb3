#pragma once

#include <cstdint>
#include <string>

#include "sshtail/batch.h"

namespace sshtail {

/// What one SSH channel should stream. Plain value type.
struct RemoteRequest {
  enum class Mode {
    kPath,   ///< follow the file at `path`
    kInode,  ///< follow the file with identity `expect` next to `path`
    kOnce,   ///< send the file at `path` up to its current end, then exit
  };
  Mode mode = Mode::kPath;
  std::string path;
  FileId expect;        ///< known identity (valid() false: none)
  uint64_t offset = 0;  ///< resume here if the identity matches
  /// Raw bytes that must be just before `offset` (at most
  /// FilePosition::kTailBytes; empty: not checked). If they are not, the
  /// file was truncated and regrew: it is sent from 0.
  std::string expect_tail;
  bool same_is_noop = false;  ///< kPath: print SAME and exit if unchanged
  bool start_at_end = false;  ///< new file: send only its tail window
  uint64_t end_window = 0;    ///< bytes before the end sent for start_at_end
  /// kInode: also list the rotated siblings modified after the file found
  /// ("<tag> NEWER dev ino" lines before BEGIN): rotated after it.
  bool list_newer = false;
  /// kInode with offset 0: the file is not looked for (nothing read from it
  /// identifies it); instead the rotated siblings modified after this
  /// instant less 1 s, and renamed or created after it (ctime), are listed
  /// as NEWER, then GONE. 0: unused.
  int64_t newer_than_ns = 0;
  /// kInode with list_newer: when the file is not found, the rotated
  /// siblings modified after this instant less 1 s, and renamed or created
  /// after it, are listed as NEWER before GONE (the saved current file was
  /// deleted while away: nothing else dates the files rotated after it).
  /// 0: unused.
  int64_t newer_if_gone_ns = 0;
  /// With list_newer: only siblings changed (ctime) at or before this
  /// remote time (ns) are listed; later ones are the live reader's (a
  /// copytruncate copy made after it began holds lines it read). 0: no
  /// bound.
  int64_t newer_before_ns = 0;
  /// kInode with offset 0 (no bytes to check): a file found by inode that
  /// was created (birth time, where the file system keeps it) after this
  /// instant is another file with a reused inode number: GONE. 0: unused.
  int64_t born_before_ns = 0;
  /// How often "H ..." is written on stderr when nothing changed.
  int heartbeat_seconds = 5;
  /// How often a missing path is looked at (0: every heartbeat).
  int check_seconds = 0;
  std::string tag;         ///< random; starts every control line
  std::string nonce_path;  ///< /dev/fd/3 spelled with a random ./ pattern
};

/// The POSIX sh script (fed to `sh -s` on the remote host) that streams one
/// file. stdout: one control line "<tag> BEGIN dev ino start size now" (now:
/// the host's time in ns just before it looked at the file, maybe empty; or
/// "<tag> MISSING", "GONE", "NOACCESS", "SAME"), then the file's bytes from
/// `start`; a truncation shows up in-band as the line
/// "tail: <nonce_path>: file truncated". stderr: "H dev ino size" every
/// heartbeat. Every value is single-quoted: no path or name can inject a
/// command.
std::string RemoteScript(const RemoteRequest& request);

/// The POSIX sh script that lists, every `heartbeat_seconds`, the regular
/// files matching `glob` (a PathGlob::glob(): `*`, `?`, `[...]`, `\x`):
/// "<tag> F <path>" per file, then "<tag> E" (the round's end, and the
/// liveness signal). Literal parts are single-quoted; a bracket may hold
/// only letters, digits and "._-!^" (throws std::invalid_argument
/// otherwise). It ends when a write fails: the channel is gone. `once`:
/// one round, then it exits (--once).
std::string RemoteListScript(const std::string& glob, int heartbeat_seconds,
                             const std::string& tag, bool once = false);

/// `s` quoted for POSIX sh: '...' with ' written as '"'"'.
std::string ShellQuote(const std::string& s);

/// Random tag (128 bits) and nonce path (128 bits) for a channel, from the
/// kernel's CSPRNG (getrandom).
std::string RandomTag();
std::string RandomNoncePath();

}  // namespace sshtail
