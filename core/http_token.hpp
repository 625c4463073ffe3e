#pragma once
// RFC 9110 `tchar`: the bytes of a token (methods, header field names, parameter names and
// values), from one table for the framing checks, the config and the form readers.

#include <algorithm>
#include <string_view>

namespace bb {

namespace detail {

struct tchar_table {
    bool v[256] = {};
    constexpr tchar_table() {
        for (int c = 0; c < 256; ++c) {
            v[c] = (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
        }
        for (const char c : std::string_view{"!#$%&'*+-.^_`|~"}) {
            v[static_cast<unsigned char>(c)] = true;
        }
    }
};
inline constexpr tchar_table tchars{};

}  // namespace detail

inline bool is_tchar(char c) { return detail::tchars.v[static_cast<unsigned char>(c)]; }

inline bool is_token(std::string_view s) { return !s.empty() && std::all_of(s.begin(), s.end(), is_tchar); }

}  // namespace bb
