#pragma once

#include <string>
#include <string_view>

namespace sshtail {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

/// Sets the lowest level written. Thread-safe.
void SetLogLevel(LogLevel level);
/// Parses "debug", "info", "warn" or "error"; false if unknown.
bool ParseLogLevel(std::string_view text, LogLevel* level);

/// Writes one logfmt line (time, level, msg) to stderr. Thread-safe; a line
/// is written with a single write() so lines never interleave.
void Log(LogLevel level, std::string_view message);

}  // namespace sshtail
