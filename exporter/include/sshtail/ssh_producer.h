#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "sshtail/source.h"

namespace sshtail {

/// SSH settings shared by every ssh:// source. Plain value type.
struct SshOptions {
  std::vector<std::string> identity_files;
  std::string known_hosts;  ///< empty: ~/.ssh/known_hosts
  bool accept_new_host_keys = false;
  std::string config_file;  ///< empty: ~/.ssh/config; "none": skip
  std::string default_user;
  std::chrono::milliseconds connect_timeout{10000};
  std::chrono::milliseconds heartbeat_interval{5000};
  std::chrono::milliseconds max_backoff{30000};
  int files_per_connection = 4;
  /// Handshakes in flight to one server at once (<= 0: no bound).
  int max_handshakes_per_host = 4;
  /// zlib compression on every connection (else ~/.ssh/config decides).
  bool compression = false;
};

/// An ssh:// source as the producers see it.
struct SshSourceRef {
  const SourceSpec* spec;
  uint32_t index;
  SourceStatus* status;
  /// Read from its start whatever --start-at says: it appeared while the
  /// exporter ran.
  bool from_start = false;
};

/// The producer of the files sharing one SSH connection. It can take more
/// files of its host while running (a remote glob's new matches) and drop
/// files (a reload removed them).
class SshProducer : public Producer {
 public:
  /// Adds a file of the connection's key (SshConnectionKey), read from the
  /// start it asks for. Thread-safe.
  virtual void AddSource(const SshSourceRef& ref) = 0;
  /// Stops following runtime source `index`: its channels close and its
  /// status is no longer written. Thread-safe.
  virtual void RemoveSource(uint32_t index) = 0;
};

/// Sources with the same key (user, host, port, sudo) share connections.
std::string SshConnectionKey(const SourceSpec& spec);

/// Groups the sources by SshConnectionKey into connections of at most
/// `files_per_connection` files and returns one producer per connection
/// (possibly none: one comes for files added later). Each producer owns
/// its libssh session and channels on its own thread.
std::vector<std::unique_ptr<SshProducer>> MakeSshProducers(
    const std::vector<SshSourceRef>& sources, BatchQueue& queue,
    const ProducerOptions& producer_options, const SshOptions& ssh_options);

}  // namespace sshtail
