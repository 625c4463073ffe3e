#pragma once
// Percent-decoding as form bodies and query strings are read (`%XX` escapes, `+` as a space);
// an escape that is not two hex digits is kept as written. Shared by the form guard inputs
// (rules/), the admin API's paths and queries, the Mailgun sandbox and query redaction.

#include <string>
#include <string_view>

#include "core/hex.hpp"

namespace bb {

// Into `out` (cleared first; its capacity is reused). `plus_is_space`: false for a path,
// where `+` is itself (RFC 3986; only form encoding makes it a space).
inline void url_decode(std::string_view in, std::string& out, bool plus_is_space = true) {
    out.clear();
    for (std::size_t i = 0; i < in.size(); ++i) {
        const char c = in[i];
        if (c == '+' && plus_is_space) {
            out += ' ';
        } else if (c == '%' && i + 2 < in.size() && hex_digit_value(in[i + 1]) >= 0 &&
                   hex_digit_value(in[i + 2]) >= 0) {
            out += static_cast<char>(hex_digit_value(in[i + 1]) * 16 + hex_digit_value(in[i + 2]));
            i += 2;
        } else {
            out += c;
        }
    }
}

inline std::string url_decode(std::string_view in) {
    std::string out;
    url_decode(in, out);
    return out;
}

}  // namespace bb
