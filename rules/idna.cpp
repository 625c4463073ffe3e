#include "rules/idna.hpp"

#include "core/json_key.hpp"
#include "core/utf8.hpp"

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace bb::rules::idna {

namespace {

// RFC 3492, section 5: the parameters of Punycode as IDNA uses it.
constexpr std::uint32_t base = 36;
constexpr std::uint32_t tmin = 1;
constexpr std::uint32_t tmax = 26;
constexpr std::uint32_t skew = 38;
constexpr std::uint32_t damp = 700;
constexpr std::uint32_t initial_bias = 72;
constexpr std::uint32_t initial_n = 128;
constexpr std::uint32_t max_int = std::numeric_limits<std::uint32_t>::max();
// A DNS label is at most 63 bytes; a label read or written here is never longer.
constexpr std::size_t max_label = 63;

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + ('a' - 'A')) : c; }

// RFC 3492, 6.1.
std::uint32_t adapt(std::uint32_t delta, std::uint32_t points, bool first) {
    delta = first ? delta / damp : delta / 2;
    delta += delta / points;
    std::uint32_t k = 0;
    while (delta > ((base - tmin) * tmax) / 2) {
        delta /= base - tmin;
        k += base;
    }
    return k + (base - tmin + 1) * delta / (delta + skew);
}

std::uint32_t threshold(std::uint32_t k, std::uint32_t bias) {
    return k <= bias ? tmin : k >= bias + tmax ? tmax : k - bias;
}

// A code point a label may hold for the guards to read it as one label: an ASCII letter
// (lower case: ACE labels are read without case), digit or hyphen, or a non-ASCII code point
// that is no C1 control, surrogate or full stop (U+3002, U+FF0E, U+FF61 separate labels to
// IDNA, so a label holding one would be two).
bool label_code_point(std::uint32_t c) {
    if (c < 0x80) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    }
    return c >= 0xA0 && c <= 0x10FFFF && !(c >= 0xD800 && c <= 0xDFFF) && c != 0x3002 && c != 0xFF0E &&
           c != 0xFF61;
}

// The lower-case letter of an upper-case one in the scripts most domains outside ASCII are
// written in (IDNA's mapping, UTS 46, lower-cases every script; this covers Latin-1, Latin
// Extended-A, modern Greek and basic Cyrillic): what a mail library does to `BÜCHER.de`
// before it sends.
// Anything else is returned as it is.
std::uint32_t fold(std::uint32_t c) {
    if (c < 0xC0) {
        return c >= 'A' && c <= 'Z' ? c + 0x20 : c;
    }
    // Full-width letters, digits and hyphen are their ASCII selves to IDNA (UTS 46 maps
    // `ｅｖｉｌ` to evil); other full-width punctuation is left alone (it names no host).
    if ((c >= 0xFF10 && c <= 0xFF19) || (c >= 0xFF41 && c <= 0xFF5A) || c == 0xFF0D) {
        return c - 0xFEE0;
    }
    if (c >= 0xFF21 && c <= 0xFF3A) {
        return c - 0xFEE0 + 0x20;
    }
    if (c <= 0xDE) {
        return c == 0xD7 ? c : c + 0x20;  // À..Þ, not ×
    }
    if (c >= 0x100 && c <= 0x17F) {
        // Pairs, upper case first, but for Ĺ..Ň and Ź..Ž (odd first), Ÿ (whose lower case is
        // ÿ, in Latin-1) and the letters that have no pair here (İ ı ĸ ŉ ſ).
        if (c == 0x178) {
            return 0xFF;
        }
        if (c == 0x130 || c == 0x131 || c == 0x138 || c == 0x149 || c == 0x17F) {
            return c;
        }
        const bool odd_first = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E);
        return (c % 2 == 1) == odd_first ? c + 1 : c;
    }
    if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) {
        return c + 0x20;  // Α..Ω, Ϊ, Ϋ (0x3A2 is a hole)
    }
    switch (c) {  // the accented capitals of modern Greek
        case 0x386: return 0x3AC;
        case 0x388: return 0x3AD;
        case 0x389: return 0x3AE;
        case 0x38A: return 0x3AF;
        case 0x38C: return 0x3CC;
        case 0x38E: return 0x3CD;
        case 0x38F: return 0x3CE;
        default: break;
    }
    if (c >= 0x400 && c <= 0x42F) {
        return c < 0x410 ? c + 0x50 : c + 0x20;  // Ѐ..Џ, А..Я
    }
    return c;
}

// Whether fold() changes c: an ACE label that decodes to one is no A-label (IDNA2008 allows
// no upper-case letter in a label), and DNS sends to it as written.
bool folds(std::uint32_t c) { return fold(c) != c; }

void append_utf8(std::string& out, std::uint32_t c) {
    char buf[4];
    char* end = buf;
    put_utf8(c, end);
    out.append(buf, end);
}

// Strict UTF-8 (core/utf8.hpp: no overlong form, surrogate or code point past U+10FFFF)
// into code points.
bool utf8_code_points(std::string_view s, std::vector<std::uint32_t>& out) {
    out.clear();
    for (std::size_t i = 0; i < s.size();) {
        const std::size_t len = utf8_sequence(s, i);
        if (len == 0) {
            return false;
        }
        const auto b0 = static_cast<unsigned char>(s[i]);
        std::uint32_t c = len == 1 ? b0 : b0 & (0x7F >> len);
        for (std::size_t k = 1; k < len; ++k) {
            c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
        }
        out.push_back(c);
        i += len;
    }
    return true;
}

// RFC 3492, 6.2: the code points of the Punycode `in` (the label without its `xn--`).
bool punycode_decode(std::string_view in, std::vector<std::uint32_t>& out) {
    out.clear();
    const auto dash = in.rfind('-');
    std::size_t pos = 0;
    if (dash != std::string_view::npos) {
        for (std::size_t k = 0; k < dash; ++k) {
            if (static_cast<unsigned char>(in[k]) >= 0x80) {
                return false;  // basic code points are ASCII (RFC 3492 6.2)
            }
            out.push_back(static_cast<unsigned char>(lower(in[k])));
        }
        pos = dash + 1;
    }
    std::uint32_t n = initial_n;
    std::uint32_t i = 0;
    std::uint32_t bias = initial_bias;
    while (pos < in.size()) {
        const std::uint32_t old_i = i;
        std::uint32_t w = 1;
        for (std::uint32_t k = base;; k += base) {
            if (pos >= in.size()) {
                return false;
            }
            const char c = lower(in[pos++]);
            const std::uint32_t digit = c >= 'a' && c <= 'z' ? static_cast<std::uint32_t>(c - 'a')
                                        : c >= '0' && c <= '9' ? static_cast<std::uint32_t>(c - '0') + 26
                                                               : base;
            if (digit >= base || digit > (max_int - i) / w) {
                return false;
            }
            i += digit * w;
            const std::uint32_t t = threshold(k, bias);
            if (digit < t) {
                break;
            }
            if (w > max_int / (base - t)) {
                return false;
            }
            w *= base - t;
        }
        const auto points = static_cast<std::uint32_t>(out.size() + 1);
        bias = adapt(i - old_i, points, old_i == 0);
        if (i / points > max_int - n) {
            return false;
        }
        n += i / points;
        i %= points;
        if (out.size() >= max_label) {
            return false;
        }
        out.insert(out.begin() + i, n);
        ++i;
    }
    return true;
}

// RFC 3492, 6.3: the Punycode of `in` (without `xn--`), into out.
bool punycode_encode(const std::vector<std::uint32_t>& in, std::string& out) {
    auto digit = [](std::uint32_t d) { return static_cast<char>(d < 26 ? 'a' + d : '0' + (d - 26)); };
    const std::size_t start = out.size();
    std::uint32_t basic = 0;
    for (const std::uint32_t c : in) {
        if (c < 0x80) {
            out += static_cast<char>(c);
            ++basic;
        }
    }
    if (basic > 0) {
        out += '-';
    }
    std::uint32_t n = initial_n;
    std::uint32_t delta = 0;
    std::uint32_t bias = initial_bias;
    for (std::uint32_t h = basic; h < in.size();) {
        std::uint32_t m = max_int;
        for (const std::uint32_t c : in) {
            if (c >= n && c < m) {
                m = c;
            }
        }
        if (m - n > (max_int - delta) / (h + 1)) {
            return false;
        }
        delta += (m - n) * (h + 1);
        n = m;
        for (const std::uint32_t c : in) {
            if (c < n && ++delta == 0) {
                return false;
            }
            if (c == n) {
                std::uint32_t q = delta;
                for (std::uint32_t k = base;; k += base) {
                    const std::uint32_t t = threshold(k, bias);
                    if (q < t) {
                        break;
                    }
                    out += digit(t + (q - t) % (base - t));
                    q = (q - t) / (base - t);
                }
                out += digit(q);
                bias = adapt(delta, h + 1, h == basic);
                delta = 0;
                ++h;
            }
        }
        ++delta;
        ++n;
        if (out.size() - start + 4 > max_label) {  // with its `xn--`
            return false;
        }
    }
    return true;
}

bool ace_prefix(std::string_view label) {
    return label.size() > 4 && lower(label[0]) == 'x' && lower(label[1]) == 'n' && label[2] == '-' && label[3] == '-';
}

// Calls f(label, last) for each label of `domain` (split at '.').
template <class F>
void each_label(std::string_view domain, F&& f) {
    while (true) {
        const auto dot = domain.find('.');
        f(domain.substr(0, dot), dot == std::string_view::npos);
        if (dot == std::string_view::npos) {
            return;
        }
        domain.remove_prefix(dot + 1);
    }
}

// IDNA's mapping as far as it goes here (UTS 46 maps the whole name, then splits it into
// labels): letters lower-cased (fold), U+3002, U+FF0E and U+FF61 made dots. Into `mapped`
// when the domain is UTF-8 with a non-ASCII code point that maps to something else; false
// (nothing written) otherwise, the domain then standing as it is.
bool map_domain(std::string_view domain, std::string& mapped, std::vector<std::uint32_t>& points) {
    if (json_key::is_ascii(domain) || !utf8_code_points(domain, points)) {
        return false;
    }
    bool changed = false;
    mapped.clear();
    for (const std::uint32_t c : points) {
        const bool stop = c == 0x3002 || c == 0xFF0E || c == 0xFF61;
        const std::uint32_t m = stop ? '.' : fold(c);
        changed = changed || (c >= 0x80 && m != c);
        append_utf8(mapped, m);
    }
    return changed;
}

}  // namespace

bool may_have_other_form(std::string_view domain) {
    // Every recipient's domain comes here: 8 bytes at a time, nothing to do for a domain with
    // no non-ASCII byte and no '-' (an ACE label has two).
    constexpr std::uint64_t ones = 0x0101010101010101ull;
    constexpr std::uint64_t highs = 0x8080808080808080ull;
    std::uint64_t seen = 0;
    auto word = [&](std::size_t at) {
        std::uint64_t w;
        std::memcpy(&w, domain.data() + at, 8);
        const std::uint64_t dashes = w ^ (ones * '-');  // a zero byte where a '-' is
        seen |= w | ((dashes - ones) & ~dashes);        // high bit: non-ASCII, or a '-' (or a false hit)
    };
    if (domain.size() >= 8) {
        for (std::size_t i = 0; i + 8 <= domain.size(); i += 8) {
            word(i);
        }
        word(domain.size() - 8);  // the last bytes, some read twice
    } else {
        for (const char ch : domain) {
            const auto c = static_cast<unsigned char>(ch);
            seen |= c >= 0x80 || c == '-' ? 0x80 : 0;
        }
    }
    if ((seen & highs) == 0) {
        return false;
    }
    for (std::size_t k = 0; k < domain.size(); ++k) {
        const auto c = static_cast<unsigned char>(domain[k]);
        if (c >= 0x80 || ((k == 0 || domain[k - 1] == '.' || domain[k - 1] == '@') && ace_prefix(domain.substr(k)))) {
            return true;
        }
    }
    return false;
}


bool to_unicode(std::string_view domain, std::string& out) {
    std::string result;
    std::string canonical;
    std::string mapped;
    std::vector<std::uint32_t> points;
    bool decoded = map_domain(domain, mapped, points);
    if (decoded) {
        domain = mapped;
    }
    each_label(domain, [&](std::string_view label, bool last) {
        bool ok = ace_prefix(label) && label.size() <= max_label && punycode_decode(label.substr(4), points);
        bool non_ascii = false;
        for (std::size_t k = 0; ok && k < points.size(); ++k) {
            ok = label_code_point(points[k]) && !folds(points[k]);
            non_ascii = non_ascii || points[k] >= 0x80;
        }
        if (ok && non_ascii) {
            // Only the one spelling that encodes back to it (RFC 3490 4.2, steps 6-7):
            // `xn---tda` also decodes to ü, but a resolver sends to it as written, not to
            // xn--tda.
            canonical.clear();
            ok = punycode_encode(points, canonical) && canonical.size() == label.size() - 4;
            for (std::size_t k = 0; ok && k < canonical.size(); ++k) {
                ok = canonical[k] == lower(label[4 + k]);
            }
        }
        if (ok && non_ascii) {
            for (const std::uint32_t c : points) {
                append_utf8(result, c);
            }
            decoded = true;
        } else {
            for (const char c : label) {
                result += lower(c);
            }
        }
        if (!last) {
            result += '.';
        }
    });
    if (decoded) {
        out = std::move(result);
    }
    return decoded;
}

bool to_ascii(std::string_view domain, std::string& out) {
    std::string result;
    std::string mapped;
    std::vector<std::uint32_t> points;
    const bool remapped = map_domain(domain, mapped, points);
    if (remapped) {
        domain = mapped;
    }
    bool encoded = false;
    bool ok = true;
    each_label(domain, [&](std::string_view label, bool last) {
        if (!ok) {
            return;
        }
        if (json_key::is_ascii(label)) {
            for (const char c : label) {
                result += lower(c);
            }
        } else {
            ok = utf8_code_points(label, points);
            for (auto& c : points) {
                c = fold(c);  // ASCII letters too (map_domain left the domain as it was)
                ok = ok && label_code_point(c);
            }
            result += "xn--";
            ok = ok && punycode_encode(points, result);
            encoded = true;
        }
        if (!last) {
            result += '.';
        }
    });
    if (!ok || (!encoded && !remapped)) {
        return false;
    }
    out = std::move(result);
    return true;
}

}  // namespace bb::rules::idna
