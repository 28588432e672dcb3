#pragma once

#include <string>
#include <string_view>

namespace sshtail {

/// True for variables of stock nginx and its common modules, and for the
/// variable families ($http_*, $cookie_*, $arg_*, ...).
bool IsKnownNginxVariable(std::string_view name);

/// The known variable nearest to `name` (for "did you mean"), or "".
std::string ClosestNginxVariable(std::string_view name);

}  // namespace sshtail
