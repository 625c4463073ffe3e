#include "store/codec.hpp"

#include "core/utf8.hpp"

#include <cerrno>
#include <sys/random.h>

namespace bb::store {

std::string make_ticket(std::int64_t now_ms) {
    // ASCII order, so comparing tickets as strings compares their time prefixes.
    static constexpr char alphabet[] = "234567abcdefghijklmnopqrstuvwxyz";
    unsigned char raw[13];  // 104 bits; 20 base32 characters use 100 of them
    std::size_t got = 0;
    while (got < sizeof raw) {
        const auto n = ::getrandom(raw + got, sizeof raw - got, 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return {};
        }
        got += static_cast<std::size_t>(n);
    }
    std::string out = "q_";
    // 45 bits of milliseconds: good until the year 3084.
    const auto t = static_cast<std::uint64_t>(now_ms < 0 ? 0 : now_ms);
    for (int shift = 40; shift >= 0; shift -= 5) {
        out += alphabet[(t >> shift) & 31];
    }
    std::uint32_t acc = 0;
    int bits = 0;
    std::size_t i = 0;
    while (out.size() < ticket_length) {
        if (bits < 5) {
            acc = (acc << 8) | raw[i++];
            bits += 8;
        }
        out += alphabet[(acc >> (bits - 5)) & 31];
        bits -= 5;
    }
    return out;
}

namespace {

void put_u32(std::string& out, std::size_t n) {
    for (int i = 0; i < 4; ++i) {
        out += static_cast<char>((n >> (8 * i)) & 0xff);
    }
}

bool get_u32(std::string_view& in, std::uint32_t& n) {
    if (in.size() < 4) {
        return false;
    }
    n = 0;
    for (int i = 0; i < 4; ++i) {
        n |= static_cast<std::uint32_t>(static_cast<unsigned char>(in[i])) << (8 * i);
    }
    in.remove_prefix(4);
    return true;
}

bool get_bytes(std::string_view& in, std::string& out) {
    std::uint32_t n = 0;
    if (!get_u32(in, n) || in.size() < n) {
        return false;
    }
    out.assign(in.data(), n);
    in.remove_prefix(n);
    return true;
}

}  // namespace

std::string encode_headers(const header_list& headers) {
    std::size_t size = 4;
    for (const auto& [n, v] : headers) {
        size += 8 + n.size() + v.size();
    }
    std::string out;
    out.reserve(size);
    put_u32(out, headers.size());
    for (const auto& [n, v] : headers) {
        put_u32(out, n.size());
        out += n;
        put_u32(out, v.size());
        out += v;
    }
    return out;
}

std::optional<header_list> decode_headers(std::string_view blob) {
    std::uint32_t count = 0;
    if (!get_u32(blob, count) || count > blob.size() / 8) {
        return std::nullopt;
    }
    header_list out;
    out.reserve(count);
    for (std::uint32_t i = 0; i < count; ++i) {
        std::string n;
        std::string v;
        if (!get_bytes(blob, n) || !get_bytes(blob, v)) {
            return std::nullopt;
        }
        out.emplace_back(std::move(n), std::move(v));
    }
    if (!blob.empty()) {
        return std::nullopt;
    }
    return out;
}

std::string base64_encode(std::string_view bytes) {
    static constexpr char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 3 <= bytes.size(); i += 3) {
        const std::uint32_t v = (static_cast<unsigned char>(bytes[i]) << 16) |
                                (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                                static_cast<unsigned char>(bytes[i + 2]);
        out += table[(v >> 18) & 63];
        out += table[(v >> 12) & 63];
        out += table[(v >> 6) & 63];
        out += table[v & 63];
    }
    const std::size_t rest = bytes.size() - i;
    if (rest == 1) {
        const std::uint32_t v = static_cast<unsigned char>(bytes[i]) << 16;
        out += table[(v >> 18) & 63];
        out += table[(v >> 12) & 63];
        out += "==";
    } else if (rest == 2) {
        const std::uint32_t v =
            (static_cast<unsigned char>(bytes[i]) << 16) | (static_cast<unsigned char>(bytes[i + 1]) << 8);
        out += table[(v >> 18) & 63];
        out += table[(v >> 12) & 63];
        out += table[(v >> 6) & 63];
        out += '=';
    }
    return out;
}

std::string json_string(std::string_view s) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    out.reserve(s.size() + 2);
    out += '"';
    std::size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c >= 0x80) {
            const auto n = utf8_sequence(s, i);
            if (n == 0) {
                out += "\\ufffd";
                ++i;
            } else {
                out.append(s.data() + i, n);
                i += n;
            }
            continue;
        }
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20 || c == 0x7f) {
                    out += "\\u00";
                    out += hex[(c >> 4) & 0xf];
                    out += hex[c & 0xf];
                } else {
                    out += static_cast<char>(c);
                }
        }
        ++i;
    }
    out += '"';
    return out;
}

}  // namespace bb::store
