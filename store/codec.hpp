#pragma once
// Small encodings the store needs: quarantine tickets, the binary header list, base64 and
// JSON strings for export. Pure functions; thread-safe.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bb::store {

// Request headers in arrival order; names and values are raw bytes (binary-safe).
using header_list = std::vector<std::pair<std::string, std::string>>;

// "q_" + 20 base32 characters (100 bits from getrandom(2), the kernel CSPRNG): unguessable,
// so knowing one ticket does not let anyone release or inspect another. Returns "" only if
// the kernel refuses randomness, which the caller treats as a store fault.
std::string make_ticket();

// Length-prefixed binary form (u32 little-endian length, bytes; name then value), because
// header values may hold any byte and the list must come back byte-identical and in order.
std::string encode_headers(const header_list& headers);
std::optional<header_list> decode_headers(std::string_view blob);

std::string base64_encode(std::string_view bytes);

// A JSON string literal, quotes included. Bytes that are not valid UTF-8 become U+FFFD, so
// the output is always valid JSON (the body is exported in base64 and loses nothing).
std::string json_string(std::string_view s);

}  // namespace bb::store
