#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "sshtail/source.h"
#include "sshtail/ssh_producer.h"

namespace sshtail {

/// Called after each listing round with the paths the host reported.
using ListingRound = std::function<void(std::vector<std::string> paths)>;

/// Lists the files a remote glob matches, every heartbeat interval, over a
/// session of its own (RemoteListScript), and hands each round to
/// `on_round` from its thread. Reconnects with the readers' backoff; a
/// round is bounded (`max_paths` paths of at most 4 KiB). `status` (the
/// glob's own entry) shows whether the listing runs (`up`) and counts its
/// failures by reason. `once`: one round (or one failure), then Run()
/// returns. Run() on one thread; RequestStop() from any.
std::unique_ptr<Producer> MakeSshLister(const SourceSpec& glob,
                                        const SshOptions& options,
                                        size_t max_paths, SourceStatus* status,
                                        bool once, ListingRound on_round);

}  // namespace sshtail
