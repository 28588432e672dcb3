#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "sshtail/source.h"

namespace sshtail {

/// Distinct sender hostnames one syslog socket reports as their own `source`
/// label. Anyone who can reach a UDP port can send any hostname: past this
/// many, lines of new hostnames are counted under the socket's own name.
inline constexpr size_t kSyslogMaxHosts = 16;

/// Room for the RFC 3164 header in front of a message of --max-line-bytes
/// (nginx: "<PRI>" + 15-byte time + hostname (< 256) + tag (<= 32) + ": ").
inline constexpr size_t kSyslogHeaderRoom = 512;

/// One datagram split into its RFC 3164 parts. The views point into the
/// datagram. Plain value type.
struct SyslogMessage {
  int priority = 0;
  std::string_view hostname;  ///< empty when the sender omits it (nginx's
                              ///< `nohostname`)
  std::string_view tag;       ///< without the ':' (and `[pid]` kept)
  std::string_view message;   ///< the log line: no trailing "\n" or "\r\n"
};

/// Parses what nginx sends (`<PRI>Mmm dd hh:mm:ss [hostname ]tag: message`,
/// see ngx_syslog_add_header). Returns false for anything else, including a
/// message holding a newline (it would be counted as two lines). Pure.
bool ParseSyslogDatagram(std::string_view datagram, SyslogMessage* out);

/// A source index reserved for one sender hostname of a syslog source. The
/// exporter reserves kSyslogMaxHosts of them per socket, so consumers index
/// fixed vectors. The producer writes `*name` once, before it pushes the
/// first batch of `index`: the queue's lock orders that write before any
/// consumer reads the name for a batch of that index.
struct SyslogHostSlot {
  uint32_t index = 0;
  SourceStatus* status = nullptr;  ///< positions of this index's batches
  std::string* name = nullptr;     ///< the `source` label, set on first use
};

/// The `source` names sender hostnames may not take: every configured
/// source's name (a datagram must not be able to write into a configured
/// source's series, which the config itself refuses: two sources with one
/// name), and a hostname already taken by another syslog socket. Shared by
/// the syslog producers; thread-safe.
class SyslogNames {
 public:
  explicit SyslogNames(const std::vector<std::string>& configured);
  /// Takes `name` for `owner` (a producer) and returns true if it is free
  /// or already `owner`'s; false if configured or another owner's.
  bool Claim(const std::string& name, const void* owner);
  /// Reserves `name` for a configured source (one a reload adds): false
  /// if a sender hostname has it already (the reload must be refused).
  bool Reserve(const std::string& name);
  /// True if `name` is configured or another owner's (claims nothing).
  bool TakenByOther(const std::string& name, const void* owner) const;

 private:
  mutable std::mutex mutex_;
  std::unordered_map<std::string, const void*> owner_;  // nullptr: configured
};

/// Receives nginx's access log as syslog datagrams on a unix datagram socket
/// (kSyslogUnix, created here) or a UDP socket (kSyslogUdp) and pushes each
/// message as one line. The socket is created by this call, so a bad path or
/// address fails at start: throws std::invalid_argument with a one-line
/// message. A unix socket is created mode 0660 (group from a setgid parent
/// directory); an existing socket at the path is replaced only if no process
/// is bound to it; any other file there is refused. A sender hostname that
/// `names` refuses is not given a slot: its lines count under the socket's
/// own name and in status.syslog_name_conflicts. Not copyable; Run() on one
/// thread, RequestStop() from any.
std::unique_ptr<Producer> MakeSyslogProducer(
    const SourceSpec& spec, uint32_t index, SourceStatus& status,
    std::vector<SyslogHostSlot> host_slots, std::shared_ptr<SyslogNames> names,
    BatchQueue& queue, const ProducerOptions& options);

}  // namespace sshtail
