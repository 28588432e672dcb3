#pragma once

#include <memory>
#include <string>

#include "sshtail/source.h"

namespace sshtail {

/// Follows a local file (or stdin) by inotify, with a poll fallback.
///
/// Survives rotation by rename (the old file is read until it has been
/// quiet for a while, the new one from its start) and by copytruncate
/// (size below the offset, or the bytes before the offset changed: restart
/// at 0). A missing file is waited for. Not copyable; Run() on one thread.
std::unique_ptr<Producer> MakeFileProducer(const SourceSpec& spec,
                                           uint32_t index, SourceStatus& status,
                                           BatchQueue& queue,
                                           const ProducerOptions& options);

/// Reads standard input to its end.
std::unique_ptr<Producer> MakeStdinProducer(uint32_t index,
                                            SourceStatus& status,
                                            BatchQueue& queue,
                                            const ProducerOptions& options);

}  // namespace sshtail
