#pragma once
// The value of one hex digit (either case), -1 for any other byte.

#include <cstddef>
#include <string_view>

namespace bb {

inline int hex_digit_value(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

// Exactly 2 * n hex digits (either case) into n bytes at out; false for anything else (out
// is then partly written). Digests in configs: SHA-256 is 64 digits into 32 bytes.
inline bool hex_to_bytes(std::string_view hex, unsigned char* out, std::size_t n) {
    if (hex.size() != 2 * n) {
        return false;
    }
    for (std::size_t i = 0; i < n; ++i) {
        const int hi = hex_digit_value(hex[2 * i]);
        const int lo = hex_digit_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return false;
        }
        out[i] = static_cast<unsigned char>(hi * 16 + lo);
    }
    return true;
}

}  // namespace bb
