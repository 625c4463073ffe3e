#pragma once
// Base64 (RFC 4648, with padding) for tests that build SES raw messages and attachments:
// written here rather than with the code under test, so a decoder bug cannot cancel out.

#include <cstdint>
#include <string>
#include <string_view>

namespace bb::test {

inline std::string b64(std::string_view raw) {
    static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (std::size_t i = 0; i < raw.size(); i += 3) {
        const std::uint32_t n = (static_cast<unsigned char>(raw[i]) << 16) |
                                (i + 1 < raw.size() ? static_cast<unsigned char>(raw[i + 1]) << 8 : 0) |
                                (i + 2 < raw.size() ? static_cast<unsigned char>(raw[i + 2]) : 0);
        out += alphabet[(n >> 18) & 63];
        out += alphabet[(n >> 12) & 63];
        out += i + 1 < raw.size() ? alphabet[(n >> 6) & 63] : '=';
        out += i + 2 < raw.size() ? alphabet[n & 63] : '=';
    }
    return out;
}

}  // namespace bb::test
