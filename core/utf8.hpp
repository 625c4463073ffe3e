#pragma once
// UTF-8 encoding of one code point, for decoders (JSON \u escapes, HTML character references).

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace bb {

// Writes cp (<= 0x10FFFF; the caller replaces surrogates) to out and advances it: 1-4 bytes.
// A UTF-8 byte order mark before a JSON value: Jackson and Python read past it (Go and
// simdjson refuse it), so every reader of a body here reads past it too, and they agree.
inline constexpr std::string_view utf8_bom = "\xEF\xBB\xBF";
inline std::string_view without_bom(std::string_view body) {
    return body.starts_with(utf8_bom) ? body.substr(utf8_bom.size()) : body;
}

inline void put_utf8(std::uint32_t cp, char*& out) {
    if (cp < 0x80) {
        *out++ = static_cast<char>(cp);
    } else if (cp < 0x800) {
        *out++ = static_cast<char>(0xC0 | (cp >> 6));
        *out++ = static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *out++ = static_cast<char>(0xE0 | (cp >> 12));
        *out++ = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        *out++ = static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        *out++ = static_cast<char>(0xF0 | (cp >> 18));
        *out++ = static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        *out++ = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        *out++ = static_cast<char>(0x80 | (cp & 0x3F));
    }
}

// UTF-16's surrogates: a high one then a low one stand for one code point above U+FFFF.
inline bool high_surrogate(std::uint32_t u) { return u >= 0xD800 && u < 0xDC00; }
inline bool low_surrogate(std::uint32_t u) { return u >= 0xDC00 && u < 0xE000; }
inline std::uint32_t from_surrogates(std::uint32_t high, std::uint32_t low) {
    return 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
}

// How many bytes put_utf8 writes for cp.
inline std::size_t utf8_length(std::uint32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }

// Length of the well-formed UTF-8 sequence at s[i] (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF), or 0.
inline std::size_t utf8_sequence(std::string_view s, std::size_t i) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
        return 1;
    }
    std::size_t n = 0;
    unsigned char lo = 0x80;
    unsigned char hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
        n = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
        n = 3;
        lo = b == 0xE0 ? 0xA0 : 0x80;
        hi = b == 0xED ? 0x9F : 0xBF;
    } else if (b >= 0xF0 && b <= 0xF4) {
        n = 4;
        lo = b == 0xF0 ? 0x90 : 0x80;
        hi = b == 0xF4 ? 0x8F : 0xBF;
    } else {
        return 0;
    }
    if (i + n > s.size()) {
        return 0;
    }
    for (std::size_t k = 1; k < n; ++k) {
        const auto c = static_cast<unsigned char>(s[i + k]);
        if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xBF)) {
            return 0;
        }
    }
    return n;
}

// The code point of the well-formed multi-byte UTF-8 sequence at t[i] (utf8_sequence) and
// its length; 0 when there is none.
inline std::size_t utf8_at(std::string_view t, std::size_t i, std::uint32_t& cp) {
    const std::size_t n = utf8_sequence(t, i);
    if (n < 2) {
        return 0;
    }
    cp = static_cast<unsigned char>(t[i]) & (0x7Fu >> n);
    for (std::size_t k = 1; k < n; ++k) {
        cp = cp << 6 | (static_cast<unsigned char>(t[i + k]) & 0x3Fu);
    }
    return n;
}

inline bool valid_utf8(std::string_view s) {
    for (std::size_t i = 0; i < s.size();) {
        const std::size_t n = utf8_sequence(s, i);
        if (n == 0) {
            return false;
        }
        i += n;
    }
    return true;
}

// For a name that people read (a breaker instance's key, a cell of breakerctl's table): the
// unit at s[i], its length in *n, and whether it must not be shown raw. Unsafe: C0 controls
// and DEL, C1 controls (U+0080..U+009F: a terminal reads U+009B as CSI), the bidi marks,
// embeddings, overrides and isolates (U+200E/F, U+202A..U+202E, U+2066..U+2069: they reorder
// what is printed after them), and any byte not part of well-formed UTF-8 (shown as U+FFFD,
// so two different names would read the same, and neither as typed).
inline bool display_unsafe(std::string_view s, std::size_t i, std::size_t* n) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
        *n = 1;
        return b < 0x20 || b == 0x7f;
    }
    const std::size_t len = utf8_sequence(s, i);
    if (len == 0) {
        *n = 1;
        return true;
    }
    *n = len;
    const auto b1 = static_cast<unsigned char>(s[i + 1]);
    if (len == 2) {
        return b == 0xC2 && b1 <= 0x9F;
    }
    if (len == 3 && b == 0xE2) {
        const auto b2 = static_cast<unsigned char>(s[i + 2]);
        return (b1 == 0x80 && (b2 == 0x8E || b2 == 0x8F || (b2 >= 0xAA && b2 <= 0xAE))) ||
               (b1 == 0x81 && b2 >= 0xA6 && b2 <= 0xA9);
    }
    return false;
}

// `s` with every byte of a display_unsafe unit written as %XX (`c1\n` -> `c1%0A`, `caf\xE9`
// -> `caf%E9`), whole units only within `max_bytes`. Idempotent: what it returns has
// nothing left to write so.
inline std::string escape_unshowable(std::string_view s, std::size_t max_bytes) {
    std::string out;
    for (std::size_t i = 0, n = 0; i < s.size(); i += n) {
        const bool unsafe = display_unsafe(s, i, &n);
        if (out.size() + (unsafe ? 3 * n : n) > max_bytes) {
            break;
        }
        if (!unsafe) {
            out.append(s, i, n);
            continue;
        }
        for (std::size_t j = i; j < i + n; ++j) {
            static constexpr char hex[] = "0123456789ABCDEF";
            const auto u = static_cast<unsigned char>(s[j]);
            out += '%';
            out += hex[u >> 4];
            out += hex[u & 15];
        }
    }
    return out;
}

// Whether escape_unshowable would change `s` (ASCII printable text never needs it).
inline bool needs_escape(std::string_view s) {
    for (std::size_t i = 0, n = 0; i < s.size(); i += n) {
        if (display_unsafe(s, i, &n)) {
            return true;
        }
    }
    return false;
}

}  // namespace bb
