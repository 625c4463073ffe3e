#pragma once
// How the names in rule paths, guard fields and the sandbox rewrite are compared with the
// keys of a JSON body: the way the most lenient upstream parser compares them.
//
// Go's encoding/json (SendGrid's API among others) matches an object key to a struct field
// without regard to case, and its folding takes four non-ASCII letters to ASCII ones:
// U+017F "ſ" to s, U+212A "K" (Kelvin sign) to k, U+0130 "İ" and U+0131 "ı" to i. Such an
// upstream reads {"TO": [...]} or {"ſubject": ...} as `to` / `subject`; a cap or a guard that
// compared bytes would not see those recipients at all. Jackson, simdjson and most others are
// case-sensitive. Matching every key that some upstream could take for the name errs on the
// side of seeing too much (a case-sensitive upstream ignores "TO", a cap counts it anyway),
// never too little. Other non-ASCII bytes compare as they are (names in config are ASCII in
// practice; a non-ASCII name matches only its own spelling and case).
//
// Header-only: the comparison runs for every key the rules and guards look at.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace bb::json_key {

namespace detail {

// The folded byte for the character at key[i] and how many bytes it takes; for an ASCII
// letter its lower case, for the four special letters their ASCII fold, else the byte itself.
inline unsigned char fold_at(std::string_view key, std::size_t i, std::size_t& len) {
    const auto c = static_cast<unsigned char>(key[i]);
    len = 1;
    if (c < 0x80) {
        return c >= 'A' && c <= 'Z' ? static_cast<unsigned char>(c + ('a' - 'A')) : c;
    }
    auto at = [&](std::size_t k) { return i + k < key.size() ? static_cast<unsigned char>(key[i + k]) : 0u; };
    if (c == 0xC5 && at(1) == 0xBF) {  // U+017F
        len = 2;
        return 's';
    }
    if (c == 0xC4 && (at(1) == 0xB0 || at(1) == 0xB1)) {  // U+0130, U+0131
        len = 2;
        return 'i';
    }
    if (c == 0xE2 && at(1) == 0x84 && at(2) == 0xAA) {  // U+212A
        len = 3;
        return 'k';
    }
    return c;
}

}  // namespace detail

// The folded form of a name (config time): what matches() compares keys with.
inline std::string fold(std::string_view name) {
    std::string out;
    out.reserve(name.size());
    for (std::size_t i = 0; i < name.size();) {
        std::size_t len = 1;
        out += static_cast<char>(detail::fold_at(name, i, len));
        i += len;
    }
    return out;
}

namespace detail {

inline bool matches_folding(std::string_view key, std::string_view folded) {
    std::size_t j = 0;
    for (std::size_t i = 0; i < key.size();) {
        std::size_t len = 1;
        const unsigned char f = fold_at(key, i, len);
        if (j == folded.size() || static_cast<unsigned char>(folded[j]) != f) {
            return false;
        }
        i += len;
        ++j;
    }
    return j == folded.size();
}

}  // namespace detail

// Whether `key`, as it appears in a body (escapes decoded), folds to `folded` (a fold()
// result). Folding never makes a key longer, and only the four special letters make it
// shorter: a key as long as the name compares byte by byte with ASCII letters lowered (a
// special letter in it could not match, and a folded name holds none), a shorter one never
// matches, a longer one only through those letters.
inline bool matches(std::string_view key, std::string_view folded) {
    const std::size_t n = folded.size();
    if (key.size() == n) {
        if (std::memcmp(key.data(), folded.data(), n) == 0) {
            return true;  // the usual spelling
        }
        for (std::size_t i = 0; i < n; ++i) {
            auto c = static_cast<unsigned char>(key[i]);
            c = c >= 'A' && c <= 'Z' ? static_cast<unsigned char>(c | 0x20) : c;
            if (c != static_cast<unsigned char>(folded[i])) {
                return false;
            }
        }
        return true;
    }
    if (key.size() < n || n == 0) {
        return false;
    }
    const auto c0 = static_cast<unsigned char>(key[0]);
    if (c0 < 0x80 && (c0 >= 'A' && c0 <= 'Z' ? (c0 | 0x20) : c0) != static_cast<unsigned char>(folded[0])) {
        return false;  // the usual longer key: another name
    }
    return detail::matches_folding(key, folded);
}

// Whether two keys fold to the same name (neither folded beforehand).
inline bool equal_fold(std::string_view a, std::string_view b) {
    std::size_t i = 0;
    std::size_t j = 0;
    while (i < a.size() && j < b.size()) {
        std::size_t la = 1;
        std::size_t lb = 1;
        if (detail::fold_at(a, i, la) != detail::fold_at(b, j, lb)) {
            return false;
        }
        i += la;
        j += lb;
    }
    return i == a.size() && j == b.size();
}

// Eight ASCII bytes (no high bit) with A-Z turned to a-z, all at once.
inline std::uint64_t ascii_lower8(std::uint64_t w) {
    const std::uint64_t ge_a = w + 0x3F3F3F3F3F3F3F3Full;  // high bit: byte >= 'A' (no carries below 0x80)
    const std::uint64_t gt_z = w + 0x2525252525252525ull;  // high bit: byte > 'Z'
    return w | ((ge_a & ~gt_z & 0x8080808080808080ull) >> 2);
}

inline std::uint64_t load8(const char* p) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    return w;
}

// Whether a key is plain ASCII, so that its fold is its ASCII lower case byte for byte.
inline bool is_ascii(std::string_view key) {
    std::uint64_t any = 0;
    std::size_t i = 0;
    for (; i + 8 <= key.size(); i += 8) {
        any |= load8(key.data() + i);
    }
    for (; i < key.size(); ++i) {
        any |= static_cast<unsigned char>(key[i]);
    }
    return (any & 0x8080808080808080ull) == 0;
}

// matches() for an ASCII key as long as the folded name (at least 8 bytes), eight bytes at a
// time.
inline bool ascii_matches_long(std::string_view key, std::string_view folded) {
    const std::size_t n = key.size();
    for (std::size_t i = 0; i + 8 <= n; i += 8) {
        if (ascii_lower8(load8(key.data() + i)) != load8(folded.data() + i)) {
            return false;
        }
    }
    return ascii_lower8(load8(key.data() + n - 8)) == load8(folded.data() + n - 8);
}

}  // namespace bb::json_key
