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

// "q_" + 9 characters of `now_ms` + 20 random characters (100 bits from getrandom(2), the
// kernel CSPRNG), in a base32 alphabet that sorts like the numbers it encodes. The random
// part makes tickets unguessable: knowing one does not lead to another. The time prefix
// makes new tickets sort after old ones, so the unique index on tickets is appended to at
// its right edge instead of having a random page rewritten per hold (this matters to group
// commit throughput), and tickets sort by hold time for people too.
// Returns "" only if the kernel refuses randomness (the caller treats it as a store fault).
std::string make_ticket(std::int64_t now_ms);
inline constexpr std::size_t ticket_length = 31;

// Length-prefixed binary form (u32 little-endian length, bytes; name then value), because
// header values may hold any byte and the list must come back byte-identical and in order.
std::string encode_headers(const header_list& headers);
std::optional<header_list> decode_headers(std::string_view blob);

std::string base64_encode(std::string_view bytes);

// A JSON string literal, quotes included. Bytes that are not valid UTF-8 become U+FFFD, so
// the output is always valid JSON (the body is exported in base64 and loses nothing).
std::string json_string(std::string_view s);

}  // namespace bb::store
