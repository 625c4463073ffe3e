// The guardrails' text scanners and building blocks: Luhn, IBAN mod-97, SSN ranges,
// SHA-256, domain and suppression sets, the word-level Aho-Corasick term matcher, and the
// PII and content scanners with their word-by-word references. Everything here is linear in
// its input: the SIMD classification reads each byte once (a pair prefilter also reads the
// next), each scanner visits each word at most once, and what it does per word is bounded by
// a constant (a card candidate looks back at most 19 digit groups, an IBAN forward at most 34
// characters, a private key header at most 64 bytes, a URL host at most 512 bytes).

#include "rules/guardrails_scan.hpp"
#include "rules/idna.hpp"

#include "core/file.hpp"
#include "core/hex.hpp"
#include "core/sha256.hpp"
#include "core/utf8.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace bb::rules {

namespace {

constexpr bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
constexpr bool is_upper(unsigned char c) { return c >= 'A' && c <= 'Z'; }
constexpr bool is_lower(unsigned char c) { return c >= 'a' && c <= 'z'; }
constexpr bool is_alpha(unsigned char c) { return is_upper(c) || is_lower(c); }
// What may join the digit groups of a card or an SSN (block_masks::sep).
// Space, tab and line breaks: what text puts between the groups of a number. (Not a form
// feed: the text as shown writes a tag that breaks a line as one, and such a tag splits a
// number, see scan_shown.)
constexpr bool blank(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
// What may join the digit groups of a card or an SSN: one `-` or `.`, or blanks (pii_scan::word).
constexpr bool digit_sep(unsigned char c) { return c == '-' || c == '.' || blank(c); }
constexpr unsigned char to_lower(unsigned char c) { return is_upper(c) ? static_cast<unsigned char>(c + 32) : c; }

struct byte_table {
    bool word[256] = {};
    constexpr byte_table() {
        for (int c = 0; c < 256; ++c) {
            word[c] = is_digit(static_cast<unsigned char>(c)) || is_upper(static_cast<unsigned char>(c)) ||
                      is_lower(static_cast<unsigned char>(c)) || c == '_' || c >= 0x80;
        }
    }
};
constexpr byte_table table{};

bool iequals_lower(std::string_view text, std::string_view lower) {
    if (text.size() != lower.size()) {
        return false;
    }
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (to_lower(static_cast<unsigned char>(text[i])) != static_cast<unsigned char>(lower[i])) {
            return false;
        }
    }
    return true;
}

// Bit i set when p[i] is a word byte, for n <= 64 bytes.
inline std::uint64_t word_mask(const unsigned char* p, std::size_t n) {
#if defined(__SSE2__)
    if (n == 64) {
        std::uint64_t m = 0;
        const __m128i a_1 = _mm_set1_epi8('a' - 1);
        const __m128i z_1 = _mm_set1_epi8('z' + 1);
        const __m128i d0 = _mm_set1_epi8('0' - 1);
        const __m128i d9 = _mm_set1_epi8('9' + 1);
        const __m128i us = _mm_set1_epi8('_');
        const __m128i bit5 = _mm_set1_epi8(0x20);
        for (int k = 0; k < 4; ++k) {
            const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * k));
            const __m128i low = _mm_or_si128(c, bit5);
            const __m128i alpha = _mm_and_si128(_mm_cmpgt_epi8(low, a_1), _mm_cmplt_epi8(low, z_1));
            const __m128i digit = _mm_and_si128(_mm_cmpgt_epi8(c, d0), _mm_cmplt_epi8(c, d9));
            const __m128i under = _mm_cmpeq_epi8(c, us);
            const int bits = _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(alpha, digit), under)) | _mm_movemask_epi8(c);
            m |= static_cast<std::uint64_t>(static_cast<std::uint16_t>(bits)) << (16 * k);
        }
        return m;
    }
#endif
    std::uint64_t m = 0;
    for (std::size_t i = 0; i < n; ++i) {
        m |= static_cast<std::uint64_t>(table.word[p[i]]) << i;
    }
    return m;
}

// Pair prefilter tables: position i is a candidate when
//   lo0[b_i & 15] & hi0[b_i >> 4] & lo1[b_{i+1} & 15] & hi1[b_{i+1} >> 4] != 0,
// each bit a bucket of (first byte, second byte) pairs whose nibbles allow both (Hyperscan's
// Teddy): a superset of the pairs put in, checked exactly afterwards.
struct pair_tables {
    std::uint8_t lo0[16] = {};
    std::uint8_t hi0[16] = {};
    std::uint8_t lo1[16] = {};
    std::uint8_t hi1[16] = {};

    constexpr void add(int bucket, unsigned char first, int second /* -1: any */) {
        const auto bit = static_cast<std::uint8_t>(1u << bucket);
        lo0[first & 15] |= bit;
        hi0[first >> 4] |= bit;
        for (int v = 0; v < 16; ++v) {
            if (second < 0 || (second & 15) == v) {
                lo1[v] |= bit;
            }
            if (second < 0 || (second >> 4) == v) {
                hi1[v] |= bit;
            }
        }
    }
};

// The words the PII scan looks at besides digits (pii_pair): IBANs, AKIA/ASIA, BEGIN and
// BEARER as two upper-case letters (bucket 0: 0x40-0x5F twice, a little wider), Bearer in
// other cases, sk_/rk_live_, xox?-, ghp_/github_pat_.
constexpr pair_tables pii_pairs(bool secrets) {
    pair_tables t;
    for (int c = 0x40; c <= 0x5F; ++c) {
        for (int d = 0x40; d <= 0x5F; ++d) {
            t.add(0, static_cast<unsigned char>(c), d);
        }
    }
    if (secrets) {
        for (const unsigned char b : {'B', 'b'}) {
            t.add(1, b, 'E');
            t.add(1, b, 'e');
        }
        t.add(2, 's', 'k');
        t.add(2, 'r', 'k');
        t.add(3, 'x', 'o');
        t.add(4, 'g', 'h');
        t.add(4, 'g', 'i');
    }
    return t;
}
constexpr pair_tables pii_pairs_iban = pii_pairs(false);
constexpr pair_tables pii_pairs_secrets = pii_pairs(true);

// What a scan needs classified.
enum class scan_mode : std::uint8_t {
    pii,    // word bytes, digits, separators, PII pairs
    terms,  // word bytes, term-start pairs
};

// Classes of the 64 bytes of one block: bit i describes p[i].
struct block_masks {
    std::uint64_t word;   // word bytes (table.word)
    std::uint64_t digit;  // 0-9 (pii)
    std::uint64_t sep;    // digit_sep: '-' '.' and blanks, what may join the digit groups of a card or an SSN (pii)
    std::uint64_t pairs;  // the pair prefilter's candidates (all ones when there is none)
    std::uint64_t lt;     // '<': where a tag may join what is written on both sides of it
    std::uint64_t high;   // bytes >= 0x80: a number glued to non-ASCII text starts a group (pii)
};

// Classifies n blocks at p into out; 64 * n + 1 bytes are readable (the pair prefilter reads
// the byte after each position).
template <scan_mode M>
void classify_sse2(const unsigned char* p, std::size_t n, block_masks* out, bool secrets) {
    for (std::size_t blk = 0; blk < n; ++blk, p += 64) {
        block_masks& m = out[blk];
        m.word = 0;
        m.digit = m.sep = m.lt = m.high = 0;
        m.pairs = M == scan_mode::pii ? 0 : ~0ull;
#if defined(__SSE2__)
        // Range checks as one signed compare each: x + (128 - lo) < -128 + width.
        const __m128i bit5 = _mm_set1_epi8(0x20);
        const __m128i alpha_off = _mm_set1_epi8(static_cast<char>(128 - 'a'));
        const __m128i digit_off = _mm_set1_epi8(static_cast<char>(128 - '0'));
        const __m128i upper_off = _mm_set1_epi8(static_cast<char>(128 - 'A'));
        const __m128i lim26 = _mm_set1_epi8(static_cast<char>(-128 + 26));
        const __m128i lim10 = _mm_set1_epi8(static_cast<char>(-128 + 10));
        const __m128i us = _mm_set1_epi8('_');
        for (int k = 0; k < 4; ++k) {
            const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * k));
            const __m128i alpha = _mm_cmplt_epi8(_mm_add_epi8(_mm_or_si128(c, bit5), alpha_off), lim26);
            const __m128i digit = _mm_cmplt_epi8(_mm_add_epi8(c, digit_off), lim10);
            // Bytes >= 0x80 are word bytes: their own top bit is what movemask reads.
            const __m128i w = _mm_or_si128(_mm_or_si128(alpha, digit), _mm_or_si128(_mm_cmpeq_epi8(c, us), c));
            const int shift = 16 * k;
            auto bits = [shift](__m128i v) {
                return static_cast<std::uint64_t>(static_cast<std::uint16_t>(_mm_movemask_epi8(v))) << shift;
            };
            m.word |= bits(w);
            m.lt |= bits(_mm_cmpeq_epi8(c, _mm_set1_epi8('<')));
            if constexpr (M == scan_mode::pii) {
                // No byte shuffles in SSE2: the first byte's class only (upper case, and the
                // lower-case first letters of secrets).
                __m128i first = _mm_cmplt_epi8(_mm_add_epi8(c, upper_off), lim26);
                if (secrets) {
                    first = _mm_or_si128(
                        first, _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(c, _mm_set1_epi8('b')), _mm_cmpeq_epi8(c, _mm_set1_epi8('g'))),
                                            _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(c, _mm_set1_epi8('r')),
                                                                      _mm_cmpeq_epi8(c, _mm_set1_epi8('s'))),
                                                         _mm_cmpeq_epi8(c, _mm_set1_epi8('x')))));
                }
                // ' ' '-' '.', and \t \n (one range compare) and \r.
                const __m128i ctl = _mm_or_si128(_mm_cmplt_epi8(_mm_add_epi8(c, _mm_set1_epi8(static_cast<char>(128 - '\t'))),
                                                                _mm_set1_epi8(static_cast<char>(-128 + 2))),
                                                 _mm_cmpeq_epi8(c, _mm_set1_epi8('\r')));
                const __m128i sep = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(c, _mm_set1_epi8(' ')), _mm_cmpeq_epi8(c, _mm_set1_epi8('-'))),
                                                 _mm_or_si128(_mm_cmpeq_epi8(c, _mm_set1_epi8('.')), ctl));
                m.digit |= bits(digit);
                m.sep |= bits(sep);
                m.high |= bits(c);
                m.pairs |= bits(first);
            }
        }
#else
        for (int i = 0; i < 64; ++i) {
            const unsigned char c = p[i];
            m.word |= static_cast<std::uint64_t>(table.word[c]) << i;
            m.lt |= static_cast<std::uint64_t>(c == '<') << i;
            if constexpr (M == scan_mode::pii) {
                m.digit |= static_cast<std::uint64_t>(is_digit(c)) << i;
                m.sep |= static_cast<std::uint64_t>(digit_sep(c)) << i;
                m.high |= static_cast<std::uint64_t>(c >= 0x80) << i;
                const bool first = is_upper(c) || (secrets && (c == 'b' || c == 'g' || c == 'r' || c == 's' || c == 'x'));
                m.pairs |= static_cast<std::uint64_t>(first) << i;
            }
        }
#endif
    }
}

#if defined(__x86_64__) || defined(__i386__)
#define BB_GUARDRAILS_AVX2 1
// The same with AVX2, 32 bytes at a time, where the CPU has it (checked at run time: the
// build targets the baseline). Each byte's classes come from two table lookups on its
// nibbles (vpshufb), ANDed: bit set when both the low and the high nibble allow it.
enum : std::uint8_t {
    cls_a = 0x01,      // letters with high nibble 4 or 6, low 1-F (A-O, a-o)
    cls_b = 0x02,      // letters with high nibble 5 or 7, low 0-A (P-Z, p-z)
    cls_digit = 0x04,  // 3 x 0-9
    cls_under = 0x08,  // 5 x F
    cls_lt = 0x10,     // 3 x C: '<'
    cls_sep = 0x40,    // 2 x {0, D, E}: ' ' '-' '.'
    cls_ctl = 0x80,    // 0 x {9, A, D}: \t \n \r, which join digit groups like ' ' (read with cls_sep)
};
struct nibble_tables {
    std::uint8_t lo[16] = {};
    std::uint8_t hi[16] = {};
    constexpr nibble_tables() {
        for (int v = 0; v < 16; ++v) {
            lo[v] = static_cast<std::uint8_t>((v >= 1 ? cls_a : 0) | (v <= 10 ? cls_b : 0) | (v <= 9 ? cls_digit : 0) |
                                              (v == 15 ? cls_under : 0) | (v == 0 || v == 13 || v == 14 ? cls_sep : 0) |
                                              (v == 12 ? cls_lt : 0) | (v == 9 || v == 10 || v == 13 ? cls_ctl : 0));
        }
        hi[0] = cls_ctl;
        hi[2] = cls_sep;
        hi[3] = cls_digit | cls_lt;
        hi[4] = cls_a;
        hi[5] = cls_b | cls_under;
        hi[6] = cls_a;
        hi[7] = cls_b;
    }
};
constexpr nibble_tables nibbles{};

__attribute__((target("avx2"), always_inline)) inline std::uint64_t bits32(__m256i v) {
    return static_cast<std::uint32_t>(_mm256_movemask_epi8(v));
}

__attribute__((target("avx2"), always_inline)) inline __m256i table32(const std::uint8_t* t16) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t16)));
}

// lo[c & 15] & hi[c >> 4] for each byte, from the nibbles.
__attribute__((target("avx2"), always_inline)) inline __m256i lookup32(__m256i lo_nib, __m256i hi_nib, __m256i lo,
                                                                       __m256i hi) {
    return _mm256_and_si256(_mm256_shuffle_epi8(lo, lo_nib), _mm256_shuffle_epi8(hi, hi_nib));
}
__attribute__((target("avx2"), always_inline)) inline __m256i low_nibbles(__m256i c) {
    return _mm256_and_si256(c, _mm256_set1_epi8(0x0F));
}
__attribute__((target("avx2"), always_inline)) inline __m256i high_nibbles(__m256i c) {
    return _mm256_and_si256(_mm256_srli_epi16(c, 4), _mm256_set1_epi8(0x0F));
}

template <scan_mode M>
__attribute__((target("avx2"))) void classify_avx2(const unsigned char* p, std::size_t n, block_masks* out,
                                                   const pair_tables* pt) {
    const __m256i lo_t = table32(nibbles.lo);
    const __m256i hi_t = table32(nibbles.hi);
    const __m256i zero = _mm256_setzero_si256();
    const __m256i word_cls = _mm256_set1_epi8(cls_a | cls_b | cls_digit | cls_under);
    __m256i lo0 = zero;
    __m256i hi0 = zero;
    __m256i lo1 = zero;
    __m256i hi1 = zero;
    if (pt) {
        lo0 = table32(pt->lo0);
        hi0 = table32(pt->hi0);
        lo1 = table32(pt->lo1);
        hi1 = table32(pt->hi1);
    }
    for (std::size_t blk = 0; blk < n; ++blk, p += 64) {
        std::uint64_t word = 0;
        std::uint64_t digit = 0;
        std::uint64_t sep = 0;
        std::uint64_t pairs = 0;
        std::uint64_t lt = 0;
        std::uint64_t high = 0;
        for (int k = 0; k < 2; ++k) {
            const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * k));
            const __m256i c_lo = low_nibbles(c);
            const __m256i c_hi = high_nibbles(c);
            const __m256i cls = lookup32(c_lo, c_hi, lo_t, hi_t);
            const int shift = 32 * k;
            // Bytes >= 0x80 are word bytes: their own top bit is what movemask reads.
            const std::uint64_t not_word = bits32(_mm256_cmpeq_epi8(_mm256_and_si256(cls, word_cls), zero));
            word |= ((~not_word & 0xFFFFFFFFu) | bits32(c)) << shift;
            lt |= bits32(_mm256_slli_epi16(cls, 3)) << shift;  // cls_lt is bit 4
            if constexpr (M == scan_mode::pii) {
                digit |= bits32(_mm256_slli_epi16(cls, 5)) << shift;  // cls_digit is bit 2
                // cls_sep is bit 6, cls_ctl bit 7 (a 16-bit shift moves each byte's own bit 6 to 7).
                sep |= bits32(_mm256_or_si256(cls, _mm256_slli_epi16(cls, 1))) << shift;
                high |= bits32(c) << shift;
            }
            if (pt) {
                const __m256i next = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * k + 1));
                const __m256i both =
                    _mm256_and_si256(lookup32(c_lo, c_hi, lo0, hi0), lookup32(low_nibbles(next), high_nibbles(next), lo1, hi1));
                pairs |= (~bits32(_mm256_cmpeq_epi8(both, zero)) & 0xFFFFFFFFu) << shift;
            }
        }
        out[blk].word = word;
        out[blk].digit = digit;
        out[blk].sep = sep;
        out[blk].pairs = pt ? pairs : ~0ull;
        out[blk].lt = lt;
        out[blk].high = high;
    }
}

// BB_GUARDRAILS_BASELINE=1 in the environment makes a CPU with AVX2 take the SSE2 path too,
// so the tests (CTest runs the guardrail tests both ways) and the benchmark can exercise and
// measure what a CPU without AVX2 runs.
bool have_avx2() {
    static const bool yes = __builtin_cpu_supports("avx2") && std::getenv("BB_GUARDRAILS_BASELINE") == nullptr;
    return yes;
}
#endif

// `pairs`: the prefilter (terms: the matcher's; pii: chosen by `secrets`); null for none.
template <scan_mode M>
void classify_blocks(const unsigned char* p, std::size_t n, block_masks* out, const pair_tables* pairs, bool secrets) {
#if defined(BB_GUARDRAILS_AVX2)
    if (have_avx2()) {
        classify_avx2<M>(p, n, out, pairs);
        return;
    }
#endif
    (void)pairs;
    classify_sse2<M>(p, n, out, secrets);
}

// Copies len <= 65 bytes to a 128-byte buffer and zeros the rest. (memset/memcpy here became
// `rep stos` and a libc call, a fixed cost paid for every short JSON string.)
inline void copy_padded(unsigned char* dst, const unsigned char* src, std::size_t len) {
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128();
    for (int i = 0; i < 8; ++i) {
        _mm_store_si128(reinterpret_cast<__m128i*>(dst + 16 * i), zero);
    }
    std::size_t i = 0;
    for (; i + 16 <= len; i += 16) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    }
    for (; i < len; ++i) {
        dst[i] = src[i];
    }
#else
    std::memset(dst, 0, 128);
    std::memcpy(dst, src, len);
#endif
}

// Calls f(block, masks) for the 64-byte blocks of text in order (the last one padded with
// zeros, which are in no class and no pair); stops when f returns true. Classifies 2 KiB at
// a time, so memory stays bounded whatever the text.
template <scan_mode M, class F>
bool for_each_block(std::string_view text, const pair_tables* pairs, bool secrets, F&& f) {
    constexpr std::size_t chunk = 32;
    block_masks masks[chunk];
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    const std::size_t n = text.size();
    if (n <= 16) {
        // A short text (most JSON values): classified byte by byte, cheaper than setting up
        // a block. No pair prefilter (all ones): the exact checks that follow decide.
        block_masks m{0, 0, 0, ~0ull, 0, 0};
        for (std::size_t i = 0; i < n; ++i) {
            const unsigned char c = p[i];
            m.word |= static_cast<std::uint64_t>(table.word[c]) << i;
            m.lt |= static_cast<std::uint64_t>(c == '<') << i;
            if constexpr (M == scan_mode::pii) {
                m.digit |= static_cast<std::uint64_t>(is_digit(c)) << i;
                m.sep |= static_cast<std::uint64_t>(digit_sep(c)) << i;
                m.high |= static_cast<std::uint64_t>(c >= 0x80) << i;
            }
        }
        return n > 0 && f(0, m);
    }
    for (std::size_t from = 0; from < n;) {
        // Straight from the text while 65 bytes are there (the pairs read one more).
        std::size_t k = std::min((n - from - 1) / 64, chunk);
        classify_blocks<M>(p + from, k, masks, pairs, secrets);
        if (k < chunk && from + 64 * k < n) {
            alignas(32) unsigned char tail[128];
            copy_padded(tail, p + from + 64 * k, n - from - 64 * k);
            classify_blocks<M>(tail, 1, masks + k, pairs, secrets);
            ++k;
        }
        for (std::size_t j = 0; j < k; ++j) {
            if (f(from + 64 * j, masks[j])) {
                return true;
            }
        }
        from += 64 * k;
    }
    return false;
}

// Word starts of a block: word bytes whose previous byte is not one. `carry`: whether the
// last byte of the previous block was a word byte; updated.
inline std::uint64_t word_starts(const block_masks& m, std::uint64_t& carry) {
    const std::uint64_t starts = m.word & ~((m.word << 1) | carry);
    carry = m.word >> 63;
    return starts;
}

// Bits of the runs of ones of x that are at least len long (9 <= len <= 16), and of the
// runs that touch bit 0 or bit 63 (they may go on in the next block: kept, to be safe).
inline std::uint64_t long_runs(std::uint64_t x, unsigned len) {
    std::uint64_t e = x & (x >> 1);  // x[i..i+1] all ones
    e &= e >> 2;                     // x[i..i+3]
    e &= e >> 4;                     // x[i..i+7]
    e &= e >> (len - 8);             // x[i..i+len-1]
    std::uint64_t d = e | (e << 1);  // back over each whole run
    d |= d << 2;
    d |= d << 4;
    d |= d << (len - 8);
    const std::uint64_t low = x & ~(x + 1);  // the run from bit 0, if any
    const std::uint64_t high = ~x == 0 ? ~0ull : (x >> 63) ? ~0ull << (64 - __builtin_clzll(~x)) : 0;
    return d | low | high;
}

// End of the word starting at bit b of the block at `block` (word: the block's word mask).
inline std::size_t word_end(std::string_view text, std::size_t block, unsigned b, std::uint64_t word) {
    const std::uint64_t rest = ~(word >> b);
    const unsigned k = rest == 0 ? 64 - b : static_cast<unsigned>(__builtin_ctzll(rest));
    std::size_t e = block + b + k;
    if (b + k >= 64) {  // runs into the next block
        const auto* p = reinterpret_cast<const unsigned char*>(text.data());
        while (e < text.size() && table.word[p[e]]) {
            ++e;
        }
    }
    return e;
}

// Where a link may start (first_bad_link reads each): a ':' after a 'p' or 's' (the end of
// an `http:`/`https:` scheme) or after a tab or line break (browsers delete those from a
// URL: `href="https&NewLine;://x"`), a '.' after a 'w' (`www.`), and a slash or backslash
// not after a ':' followed by another or by a tab or line break (scheme-relative
// `href="//host"`, `href="/&Tab;/host"`; browsers read '\\' as '/' in web URLs).
// Mail has few of each, so the scan is mostly one pass of compares.
inline bool link_slash(unsigned char c) { return c == '/' || c == '\\'; }
// What browsers delete from anywhere in a URL (WHATWG URL: ASCII tab or newline).
inline bool url_break(char c) { return c == '\t' || c == '\r' || c == '\n'; }

inline bool link_mark(const char* p, std::size_t i) {
    const auto c = static_cast<unsigned char>(p[i]);
    const char raw = i > 0 ? p[i - 1] : '\0';
    const auto before = i > 0 ? static_cast<unsigned char>(raw | 0x20) : 0u;
    return (c == ':' && (before == 'p' || before == 's' || url_break(raw))) || (c == '.' && before == 'w') ||
           (link_slash(c) && raw != ':' && (link_slash(static_cast<unsigned char>(p[i + 1])) || url_break(p[i + 1])));
}

#if defined(BB_GUARDRAILS_AVX2)
// Scans 32-byte windows from `from` (>= 1) while a window and the bytes either side of it
// are in the text: returns the start of the first window with a mark (mask: its marks), or
// the first position not scanned (mask 0).
__attribute__((target("avx2"))) std::size_t next_link_marks_avx2(const char* p, std::size_t n, std::size_t from,
                                                                  std::uint32_t& mask) {
    const __m256i slash = _mm256_set1_epi8('/');
    const __m256i backslash = _mm256_set1_epi8('\\');
    const __m256i colon = _mm256_set1_epi8(':');
    const __m256i dot = _mm256_set1_epi8('.');
    const __m256i lower = _mm256_set1_epi8(0x20);
    const __m256i cr = _mm256_set1_epi8('\r');
    std::size_t i = from;
    for (; i + 33 <= n; i += 32) {
        const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 1));
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i - 1));
        const __m256i before = _mm256_or_si256(raw, lower);
        // url_break of the byte after and of the one before, or another byte below '\r' (a
        // mark first_bad_link then passes over: controls are rare in mail, and two compares
        // are cheaper than six)
        const __m256i b_break = _mm256_cmpeq_epi8(_mm256_min_epu8(b, cr), b);
        const __m256i before_break = _mm256_cmpeq_epi8(_mm256_min_epu8(raw, cr), raw);
        // A scheme's slashes are read at its ':' (not a mark of their own). (The byte as
        // written: 0x1A lower-cased would be a ':'.)
        const __m256i pair = _mm256_andnot_si256(
            _mm256_cmpeq_epi8(raw, colon),
            _mm256_and_si256(_mm256_or_si256(_mm256_cmpeq_epi8(a, slash), _mm256_cmpeq_epi8(a, backslash)),
                             _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(b, slash), _mm256_cmpeq_epi8(b, backslash)),
                                             b_break)));
        const __m256i scheme = _mm256_and_si256(
            _mm256_cmpeq_epi8(a, colon), _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(before, _mm256_set1_epi8('p')),
                                                                          _mm256_cmpeq_epi8(before, _mm256_set1_epi8('s'))),
                                                         before_break));
        const __m256i www = _mm256_and_si256(_mm256_cmpeq_epi8(a, dot), _mm256_cmpeq_epi8(before, _mm256_set1_epi8('w')));
        mask = static_cast<std::uint32_t>(_mm256_movemask_epi8(_mm256_or_si256(pair, _mm256_or_si256(scheme, www))));
        if (mask != 0) {
            return i;
        }
    }
    mask = 0;
    return i;
}
#endif

// Calls f(i) for every link mark (link_mark) but one on the last byte, in order (and, on the
// SIMD paths, for a ':' or slash next to another control byte below '\r': f must check what
// it is given); stops when f returns true.
template <class F>
bool for_each_link_mark(std::string_view text, F&& f) {
    const char* p = text.data();
    const std::size_t n = text.size();
    if (n < 2) {
        return false;  // no mark fits
    }
    if (link_mark(p, 0) && f(std::size_t{0})) {
        return true;
    }
    std::size_t i = 1;
#if defined(BB_GUARDRAILS_AVX2)
    if (have_avx2() && n >= 34) {
        for (;;) {
            std::uint32_t m = 0;
            const std::size_t at = next_link_marks_avx2(p, n, i, m);
            if (m == 0) {
                i = at;  // the rest for the loops below
                break;
            }
            for (; m != 0; m &= m - 1) {
                if (f(at + static_cast<std::size_t>(__builtin_ctz(m)))) {
                    return true;
                }
            }
            i = at + 32;
        }
    }
#endif
#if defined(__SSE2__)
    const __m128i slash = _mm_set1_epi8('/');
    const __m128i backslash = _mm_set1_epi8('\\');
    const __m128i colon = _mm_set1_epi8(':');
    const __m128i dot = _mm_set1_epi8('.');
    const __m128i lower = _mm_set1_epi8(0x20);
    const __m128i cr = _mm_set1_epi8('\r');
    for (; i + 17 <= n; i += 16) {
        const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + 1));
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i - 1));
        const __m128i before = _mm_or_si128(raw, lower);
        // (as in next_link_marks_avx2: a byte up to '\r')
        const __m128i b_break = _mm_cmpeq_epi8(_mm_min_epu8(b, cr), b);
        const __m128i before_break = _mm_cmpeq_epi8(_mm_min_epu8(raw, cr), raw);
        const __m128i pair = _mm_andnot_si128(
            _mm_cmpeq_epi8(raw, colon),
            _mm_and_si128(_mm_or_si128(_mm_cmpeq_epi8(a, slash), _mm_cmpeq_epi8(a, backslash)),
                          _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(b, slash), _mm_cmpeq_epi8(b, backslash)), b_break)));
        const __m128i scheme =
            _mm_and_si128(_mm_cmpeq_epi8(a, colon), _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(before, _mm_set1_epi8('p')),
                                                                              _mm_cmpeq_epi8(before, _mm_set1_epi8('s'))),
                                                                 before_break));
        const __m128i www = _mm_and_si128(_mm_cmpeq_epi8(a, dot), _mm_cmpeq_epi8(before, _mm_set1_epi8('w')));
        auto m = static_cast<unsigned>(_mm_movemask_epi8(_mm_or_si128(pair, _mm_or_si128(scheme, www))));
        while (m != 0) {
            if (f(i + static_cast<std::size_t>(__builtin_ctz(m)))) {
                return true;
            }
            m &= m - 1;
        }
    }
#endif
    for (; i + 1 < n; ++i) {
        if (link_mark(p, i) && f(i)) {
            return true;
        }
    }
    return false;  // a mark on the last byte has no host after it
}

// Whether `at` is inside an HTML comment (`<!-- unsubscribe -->` shows nothing): the
// nearest `<!--` or `-->` before it, within 2 KiB, is a `<!--`. (`<!-->` and `<!--->` close
// at once, as browsers read them: their `-->` is the nearer.) Asked only where the word was
// found; the 2 KiB bound keeps that cheap (a longer comment around the word is not seen).
bool in_html_comment(std::string_view text, std::size_t at) {
    const char* p = text.data();
    const std::size_t low = at > 2048 ? at - 2048 : 0;
    auto marker = [&](std::size_t j) -> int {  // 1: `<!--` at j, -1: `-->` ending at j, 0: neither
        if (p[j] == '<' && j + 4 <= text.size() && std::memcmp(p + j, "<!--", 4) == 0) {
            return 1;
        }
        if (p[j] == '>' && j >= 2 && p[j - 1] == '-' && p[j - 2] == '-') {
            return -1;
        }
        return 0;
    };
    std::size_t j = at;
#if defined(__SSE2__)
    const __m128i lt = _mm_set1_epi8('<');
    const __m128i gt = _mm_set1_epi8('>');
    while (j >= low + 16) {
        j -= 16;
        const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + j));
        auto m = static_cast<unsigned>(_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(c, lt), _mm_cmpeq_epi8(c, gt))));
        while (m != 0) {
            const unsigned b = 31u - static_cast<unsigned>(__builtin_clz(m));  // the last first
            // `-->` is found at its '>', which comes after its start: a `<!-->` reads closed.
            if (const int k = marker(j + b); k != 0) {
                return k > 0;
            }
            m &= ~(1u << b);
        }
    }
#endif
    while (j > low) {
        --j;
        if (const int k = marker(j); k != 0) {
            return k > 0;
        }
    }
    return false;
}

// Whether text holds "unsubscribe" in any case, outside an HTML comment. Every byte of it is
// a word byte, so this is the same as "some word contains it".
bool has_unsubscribe(std::string_view text) {
    constexpr std::string_view needle = "unsubscribe";
    const char* p = text.data();
    const std::size_t n = text.size();
    if (n < needle.size()) {
        return false;
    }
    auto at = [&](std::size_t i) {
        return iequals_lower(text.substr(i, needle.size()), needle) && !in_html_comment(text, i);
    };
    std::size_t i = 0;
#if defined(__SSE2__)
    const __m128i bit5 = _mm_set1_epi8(0x20);
    const __m128i u = _mm_set1_epi8('u');
    const __m128i nn = _mm_set1_epi8('n');
    for (; i + 17 <= n; i += 16) {
        const __m128i a = _mm_or_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i)), bit5);
        const __m128i b = _mm_or_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + 1)), bit5);
        auto m = static_cast<unsigned>(_mm_movemask_epi8(_mm_and_si128(_mm_cmpeq_epi8(a, u), _mm_cmpeq_epi8(b, nn))));
        while (m != 0) {
            const std::size_t k = i + static_cast<std::size_t>(__builtin_ctz(m));
            if (k + needle.size() <= n && at(k)) {
                return true;
            }
            m &= m - 1;
        }
    }
#endif
    for (; i + needle.size() <= n; ++i) {
        if (to_lower(static_cast<unsigned char>(p[i])) == 'u' && at(i)) {
            return true;
        }
    }
    return false;
}

// The two-byte UTF-8 code point at `i` (a lead byte C2 to DF and a continuation byte), or 0.
char32_t two_byte_at(std::string_view s, std::size_t i) {
    const auto lead = static_cast<unsigned char>(s[i]);
    if (lead < 0xC2 || lead > 0xDF || i + 1 >= s.size() || (static_cast<unsigned char>(s[i + 1]) & 0xC0) != 0x80) {
        return 0;
    }
    return (static_cast<char32_t>(lead & 0x1F) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3F);
}

// Calls f(first byte, second byte) for each way a text can write what starts at `i` of a
// folded word: a two-byte letter in each of its cases (case_variants); an ASCII letter in both
// cases (the second byte 0), and where the word has ss, also ß (C3 9F: it folds to ss, as
// long); any other byte as it is.
template <class F>
void for_each_spelling(std::string_view w, std::size_t i, F&& f) {
    if (const char32_t cp = two_byte_at(w, i); cp != 0) {
        for (const char16_t v : detail::case_variants(cp)) {
            f(static_cast<unsigned char>(0xC0 | (v >> 6)), static_cast<unsigned char>(0x80 | (v & 0x3F)));
        }
        return;
    }
    const auto c = static_cast<unsigned char>(w[i]);
    f(c, 0);
    if (is_lower(c)) {
        f(static_cast<unsigned char>(c - 32), 0);
    }
    if (w.compare(i, 2, "ss") == 0) {
        f(0xC3, 0x9F);
    }
}

// Whether text at `i` reads as `w` (fold_case'd, single spaces between its words): any case
// (ASCII, and the two-byte letters fold_two_byte folds: `DÉSABONNER`, `ОТПИСАТЬСЯ`; a ß is
// the ss of `w`, never half of it), and any run of blanks and line breaks where `w` has a
// space (a wrapped `darse de\nbaja`).
bool reads_as(std::string_view text, std::size_t i, std::string_view w) {
    const auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f'; };
    for (std::size_t k = 0; k < w.size();) {
        if (i >= text.size()) {
            return false;
        }
        const char wc = w[k];
        if (wc == ' ') {
            if (!blank(text[i])) {
                return false;
            }
            while (i < text.size() && blank(text[i])) {
                ++i;
            }
            ++k;
            continue;
        }
        if (two_byte_at(text, i) != 0) {
            char folded[2];
            detail::fold_word(reinterpret_cast<const unsigned char*>(text.data()) + i, 2, folded);
            if (k + 1 >= w.size() || w[k] != folded[0] || w[k + 1] != folded[1]) {
                return false;
            }
            i += 2;
            k += 2;
            continue;
        }
        if (to_lower(static_cast<unsigned char>(text[i])) != static_cast<unsigned char>(wc)) {
            return false;
        }
        ++i;
        ++k;
    }
    return true;
}

// Whether text holds one of a content guard's own unsubscribe words (`abmelden`,
// `darse de baja`: stored case-folded, blanks as single spaces), outside an HTML comment, as
// has_unsubscribe reads `unsubscribe`. Only when the guard has such words. Each candidate
// position is where the word's first byte is in one of its spellings (memchr), and reads_as
// stops at the first byte that differs.
bool has_unsubscribe_word(const std::vector<std::string>& words, std::string_view text) {
    for (const auto& w : words) {
        // The first bytes of the word's first letter in each of its spellings, each once (`a`
        // and `A`; `р` is D1 80, `Р` D0 A0).
        unsigned char firsts[8];
        std::size_t nfirsts = 0;
        for_each_spelling(w, 0, [&](unsigned char first, unsigned char) {
            if (std::find(firsts, firsts + nfirsts, first) == firsts + nfirsts) {
                firsts[nfirsts++] = first;
            }
        });
        for (std::size_t k = 0; k < nfirsts; ++k) {
            for (std::size_t i = text.find(static_cast<char>(firsts[k])); i != std::string_view::npos;
                 i = text.find(static_cast<char>(firsts[k]), i + 1)) {
                if (reads_as(text, i, w) && !in_html_comment(text, i)) {
                    return true;
                }
            }
        }
    }
    return false;
}

// Calls f(start, end) for every word of text in order; stops when f returns true.
// The reference walk: every word, one by one (the fast scanners use for_each_start).
template <class F>
bool for_each_word(std::string_view text, F&& f) {
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    const std::size_t n = text.size();
    bool in_word = false;
    std::size_t start = 0;
    for (std::size_t i = 0; i < n; i += 64) {
        const std::size_t len = std::min<std::size_t>(64, n - i);
        const std::uint64_t valid = len == 64 ? ~0ull : (1ull << len) - 1;
        const std::uint64_t m = word_mask(p + i, len) & valid;
        const std::uint64_t prev = (m << 1) | (in_word ? 1u : 0u);
        std::uint64_t starts = m & ~prev;
        std::uint64_t ends = ~m & prev & valid;
        while (starts | ends) {
            const int s = starts ? __builtin_ctzll(starts) : 64;
            const int e = ends ? __builtin_ctzll(ends) : 64;
            if (e < s) {
                if (f(start, i + static_cast<std::size_t>(e))) {
                    return true;
                }
                ends &= ends - 1;
            } else {
                start = i + static_cast<std::size_t>(s);
                starts &= starts - 1;
            }
        }
        in_word = (m >> (len - 1)) & 1u;
    }
    if (in_word) {
        return f(start, n);
    }
    return false;
}

// Shared by IBAN checks: value of the alphanumeric string (letters A=10..Z=35) mod 97.
int mod97(std::string_view s) {
    int r = 0;
    for (const char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if (is_digit(c)) {
            r = (r * 10 + (c - '0')) % 97;
        } else if (is_upper(c)) {
            r = (r * 100 + (c - 'A' + 10)) % 97;
        } else {
            return -1;
        }
    }
    return r;
}

// IBAN lengths of the countries we know (SWIFT IBAN registry); others: 15-34. Indexed by the
// two upper-case letters (every candidate of the PII scan looks its country up).
struct iban_lengths {
    std::uint8_t len[26][26] = {};
    constexpr iban_lengths() {
        struct country {
            char cc[3];
            int len;
        };
        constexpr country known[] = {
            {"AD", 24}, {"AE", 23}, {"AT", 20}, {"BE", 16}, {"BG", 22}, {"BH", 22}, {"BR", 29},
            {"CH", 21}, {"CY", 28}, {"CZ", 24}, {"DE", 22}, {"DK", 18}, {"EE", 20}, {"ES", 24},
            {"FI", 18}, {"FO", 18}, {"FR", 27}, {"GB", 22}, {"GI", 23}, {"GL", 18}, {"GR", 27},
            {"HR", 21}, {"HU", 28}, {"IE", 22}, {"IL", 23}, {"IS", 26}, {"IT", 27}, {"KW", 30},
            {"KZ", 20}, {"LB", 28}, {"LI", 21}, {"LT", 20}, {"LU", 20}, {"LV", 21}, {"MC", 27},
            {"ME", 22}, {"MT", 31}, {"NL", 18}, {"NO", 15}, {"PK", 24}, {"PL", 28}, {"PT", 25},
            {"QA", 29}, {"RO", 24}, {"RS", 22}, {"SA", 24}, {"SE", 24}, {"SI", 19}, {"SK", 24},
            {"SM", 27}, {"TN", 24}, {"TR", 26}, {"UA", 29}};
        for (const auto& k : known) {
            len[k.cc[0] - 'A'][k.cc[1] - 'A'] = static_cast<std::uint8_t>(k.len);
        }
    }
};
constexpr iban_lengths iban_length_of{};

int iban_length(char a, char b) {
    const auto ua = static_cast<unsigned char>(a);
    const auto ub = static_cast<unsigned char>(b);
    return is_upper(ua) && is_upper(ub) ? iban_length_of.len[ua - 'A'][ub - 'A'] : 0;
}

}  // namespace

bool luhn_valid(std::string_view digits) {
    if (digits.empty()) {
        return false;
    }
    int sum = 0;
    bool dbl = false;
    for (std::size_t i = digits.size(); i-- > 0;) {
        const auto c = static_cast<unsigned char>(digits[i]);
        if (!is_digit(c)) {
            return false;
        }
        int d = c - '0';
        if (dbl) {
            d *= 2;
            if (d > 9) {
                d -= 9;
            }
        }
        sum += d;
        dbl = !dbl;
    }
    return sum % 10 == 0;
}

bool iban_valid(std::string_view iban) {
    if (iban.size() < 15 || iban.size() > 34 || !is_upper(static_cast<unsigned char>(iban[0])) ||
        !is_upper(static_cast<unsigned char>(iban[1])) || !is_digit(static_cast<unsigned char>(iban[2])) ||
        !is_digit(static_cast<unsigned char>(iban[3]))) {
        return false;
    }
    const int expected = iban_length(iban[0], iban[1]);
    if (expected != 0 && static_cast<int>(iban.size()) != expected) {
        return false;
    }
    // Move the first four characters to the end, then mod 97 must be 1.
    const int head = mod97(iban.substr(4));
    if (head < 0) {
        return false;
    }
    int r = head;
    for (const char ch : iban.substr(0, 4)) {
        const auto c = static_cast<unsigned char>(ch);
        r = is_digit(c) ? (r * 10 + (c - '0')) % 97 : (r * 100 + (c - 'A' + 10)) % 97;
    }
    return r == 1;
}

bool ssn_valid(std::string_view area, std::string_view group, std::string_view serial) {
    if (area.size() != 3 || group.size() != 2 || serial.size() != 4) {
        return false;
    }
    for (std::string_view part : {area, group, serial}) {
        for (const char c : part) {
            if (!is_digit(static_cast<unsigned char>(c))) {
                return false;
            }
        }
    }
    if (area == "000" || area == "666" || area[0] == '9') {
        return false;
    }
    return group != "00" && serial != "0000";
}

std::string mask_address(std::string_view address) {
    const auto at = address.rfind('@');
    if (at == std::string_view::npos) {
        return address.empty() ? std::string{"(empty)"} : std::string{address.substr(0, 1)} + "***";
    }
    std::string out;
    if (at > 0) {
        out += address[0];
    }
    out += "***";
    out += address.substr(at);
    return out;
}

// ---------------------------------------------------------------------------------------

namespace detail {

namespace {

// The simple case folds (CaseFolding.txt, status C) of the code points U+0080 to U+07FF,
// Unicode 14, in two tables: ranges where every other code point, from the first, folds to
// the next one (Ā to ā, Ѡ to ѡ), and ranges that fold by one offset (À-Ö by +32, А-Я by +32,
// Ѐ-Џ by +80, the irregular ones one by one). Written out from Python's str.casefold() over
// the range (`len(c.casefold()) == 1` and the fold in the range: not ſ to s, Ⱥ to ⱥ), less
// U+0345 (a combining mark, which the text as shown drops); GuardFastPaths.TwoByteCaseFolding
// checks samples.
struct alternating_fold {
    char16_t first, last;
};
constexpr alternating_fold alternating_folds[] = {
    {0x100, 0x12E}, {0x132, 0x136}, {0x139, 0x147}, {0x14A, 0x176}, {0x179, 0x17D}, {0x182, 0x184},
    {0x187, 0x187}, {0x18B, 0x18B}, {0x191, 0x191}, {0x198, 0x198}, {0x1A0, 0x1A4}, {0x1A7, 0x1A7},
    {0x1AC, 0x1AC}, {0x1AF, 0x1AF}, {0x1B3, 0x1B5}, {0x1B8, 0x1B8}, {0x1BC, 0x1BC}, {0x1C5, 0x1C5},
    {0x1C8, 0x1C8}, {0x1CB, 0x1DB}, {0x1DE, 0x1EE}, {0x1F2, 0x1F4}, {0x1F8, 0x21E}, {0x222, 0x232},
    {0x23B, 0x23B}, {0x241, 0x241}, {0x246, 0x24E}, {0x370, 0x372}, {0x376, 0x376}, {0x3C2, 0x3C2},
    {0x3D8, 0x3EE}, {0x3F7, 0x3F7}, {0x3FA, 0x3FA}, {0x460, 0x480}, {0x48A, 0x4BE}, {0x4C1, 0x4CD},
    {0x4D0, 0x52E}};
struct offset_fold {
    char16_t first, last;
    std::int16_t by;
};
constexpr offset_fold offset_folds[] = {
    {0xB5, 0xB5, 775}, {0xC0, 0xD6, 32}, {0xD8, 0xDE, 32}, {0x178, 0x178, -121}, {0x181, 0x181, 210},
    {0x186, 0x186, 206}, {0x189, 0x18A, 205}, {0x18E, 0x18E, 79}, {0x18F, 0x18F, 202}, {0x190, 0x190,
    203}, {0x193, 0x193, 205}, {0x194, 0x194, 207}, {0x196, 0x196, 211}, {0x197, 0x197, 209}, {0x19C,
    0x19C, 211}, {0x19D, 0x19D, 213}, {0x19F, 0x19F, 214}, {0x1A6, 0x1A6, 218}, {0x1A9, 0x1A9, 218},
    {0x1AE, 0x1AE, 218}, {0x1B1, 0x1B2, 217}, {0x1B7, 0x1B7, 219}, {0x1C4, 0x1C4, 2}, {0x1C7, 0x1C7, 2},
    {0x1CA, 0x1CA, 2}, {0x1F1, 0x1F1, 2}, {0x1F6, 0x1F6, -97}, {0x1F7, 0x1F7, -56}, {0x220, 0x220,
    -130}, {0x23D, 0x23D, -163}, {0x243, 0x243, -195}, {0x244, 0x244, 69}, {0x245, 0x245, 71},
    {0x37F, 0x37F, 116}, {0x386, 0x386, 38}, {0x388, 0x38A, 37}, {0x38C, 0x38C, 64},
    {0x38E, 0x38F, 63}, {0x391, 0x3A1, 32}, {0x3A3, 0x3AB, 32}, {0x3CF, 0x3CF, 8}, {0x3D0, 0x3D0, -30},
    {0x3D1, 0x3D1, -25}, {0x3D5, 0x3D5, -15}, {0x3D6, 0x3D6, -22}, {0x3F0, 0x3F0, -54}, {0x3F1, 0x3F1,
    -48}, {0x3F4, 0x3F4, -60}, {0x3F5, 0x3F5, -64}, {0x3F9, 0x3F9, -7}, {0x3FD, 0x3FF, -130}, {0x400,
    0x40F, 80}, {0x410, 0x42F, 32}, {0x4C0, 0x4C0, 15}, {0x531, 0x556, 48}};

constexpr char32_t fold_by_ranges(char32_t cp) {
    for (const auto& r : offset_folds) {
        if (cp < r.first) {
            break;
        }
        if (cp <= r.last) {
            return static_cast<char32_t>(static_cast<std::int32_t>(cp) + r.by);
        }
    }
    for (const auto& r : alternating_folds) {
        if (cp < r.first) {
            break;
        }
        if (cp <= r.last && (cp - r.first) % 2 == 0) {
            return cp + 1;
        }
    }
    return cp;
}

// A folded Greek vowel without its tonos or dialytika: Greek written in capitals drops them
// (`ΔΩΡΕΑΝ` is how `δωρεάν` is set in a capitalised subject), so they are no difference.
constexpr char32_t greek_unaccented(char32_t f) {
    switch (f) {
        case 0x3AC: return 0x3B1;  // ά
        case 0x3AD: return 0x3B5;  // έ
        case 0x3AE: return 0x3B7;  // ή
        case 0x3AF: case 0x3CA: case 0x390: return 0x3B9;  // ί ϊ ΐ
        case 0x3CC: return 0x3BF;  // ό
        case 0x3CD: case 0x3CB: case 0x3B0: return 0x3C5;  // ύ ϋ ΰ
        case 0x3CE: return 0x3C9;  // ώ
        default: return f;
    }
}

// The folds as one lookup per code point (the term scan folds every letter of a candidate
// word), and the other way round: the code points that fold to each (at most 7: ι Ι ί Ί ϊ Ϊ ΐ).
// Built at compile time.
struct fold_tables {
    std::array<char16_t, 0x800> fold{};
    std::array<std::array<char16_t, 8>, 0x800> variants{};
    std::array<std::uint8_t, 0x800> nvariants{};
};

constexpr fold_tables make_fold_tables() {
    fold_tables t;
    for (char32_t cp = 0; cp < 0x800; ++cp) {
        const char32_t f = cp < 0x80 ? cp : greek_unaccented(fold_by_ranges(cp));
        t.fold[cp] = static_cast<char16_t>(f);
        if (t.nvariants[f] == t.variants[f].size()) {
            throw "more spellings of one letter than fold_tables::variants holds";  // at compile time
        }
        t.variants[f][t.nvariants[f]++] = static_cast<char16_t>(cp);
    }
    return t;
}

constexpr fold_tables folds = make_fold_tables();

}  // namespace

char32_t fold_two_byte(char32_t cp) { return cp < 0x800 ? folds.fold[cp] : cp; }

std::span<const char16_t> case_variants(char32_t folded) {
    if (folded >= 0x800) {
        return {};
    }
    return {folds.variants[folded].data(), folds.nvariants[folded]};
}

void fold_word(const unsigned char* p, std::size_t len, char* out) {
    const auto& t = folds;
    for (std::size_t i = 0; i < len; ++i) {
        const unsigned char c = p[i];
        if (c >= 0xC2 && c <= 0xDF && i + 1 < len && (p[i + 1] & 0xC0) == 0x80) {
            const char32_t f = t.fold[(static_cast<char32_t>(c & 0x1F) << 6) | (p[i + 1] & 0x3F)];
            if (f == 0xDF) {  // ß is ss (STRASSE, Swiss Strasse): two bytes either way
                out[i] = 's';
                out[++i] = 's';
                continue;
            }
            out[i] = static_cast<char>(0xC0 | (f >> 6));
            out[++i] = static_cast<char>(0x80 | (f & 0x3F));
        } else {
            out[i] = static_cast<char>(to_lower(c));
        }
    }
}

std::string fold_case(std::string_view s) {
    std::string out(s.size(), '\0');
    fold_word(reinterpret_cast<const unsigned char*>(s.data()), s.size(), out.data());
    return out;
}

std::uint64_t bytes_hash(std::string_view w) {
    std::uint64_t h = w.size() * 0x9E3779B97F4A7C15ull;
    std::size_t i = 0;
    for (; i + 8 <= w.size(); i += 8) {
        std::uint64_t chunk = 0;
        std::memcpy(&chunk, w.data() + i, 8);
        h = (h ^ chunk) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    if (i < w.size()) {
        std::uint64_t chunk = 0;
        std::memcpy(&chunk, w.data() + i, w.size() - i);
        h = (h ^ chunk) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    return h;
}

}  // namespace detail

std::size_t domain_set::domain_hash::operator()(std::string_view s) const noexcept { return detail::bytes_hash(s); }

void domain_set::add(std::string_view domain) {
    std::string d{domain};
    for (auto& c : d) {
        c = static_cast<char>(to_lower(static_cast<unsigned char>(c)));
    }
    // Kept in Unicode form: `xn--bcher-kva.de` and `bücher.de` are one entry (idna.hpp). First,
    // so that a full stop it maps to a dot is dropped at either end below like an ASCII one.
    if (idna::may_have_other_form(d)) {
        idna::to_unicode(d, d);
    }
    std::size_t from = 0;
    while (from < d.size() && (d[from] == '*' || d[from] == '.')) {
        ++from;
    }
    while (d.size() > from && d.back() == '.') {
        d.pop_back();
    }
    d.erase(0, from);
    if (!d.empty()) {
        domains_.insert(std::move(d));
    }
}

bool domain_set::contains(std::string_view host) const {
    while (!host.empty() && host.back() == '.') {
        host.remove_suffix(1);
    }
    // A DNS name is at most 253 bytes in its ACE form; in Unicode form (how recipients come
    // here) up to about 950 (each 63-byte ACE label can stand for 59 four-byte characters).
    constexpr std::size_t max_host = 1024;
    if (host.empty() || host.size() > max_host || domains_.empty()) {
        return false;
    }
    char buf[max_host];
    for (std::size_t i = 0; i < host.size(); ++i) {
        buf[i] = static_cast<char>(to_lower(static_cast<unsigned char>(host[i])));
    }
    const std::string_view h{buf, host.size()};
    // In the Unicode form the entries are kept in: an ACE label (`xn--...`) is looked up as
    // the Unicode label it stands for.
    if (idna::may_have_other_form(h)) [[unlikely]] {
        return contains_unicode(h);
    }
    return contains_lowered(h);
}

bool domain_set::contains_unicode(std::string_view lowered) const {
    std::string unicode;
    return idna::to_unicode(lowered, unicode) ? contains_lowered(unicode) : contains_lowered(lowered);
}

bool domain_set::contains_lowered(std::string_view h) const {
    // The host itself, then each parent: at most one lookup per label.
    while (true) {
        if (domains_.contains(h)) {
            return true;
        }
        const auto dot = h.find('.');
        if (dot == std::string_view::npos) {
            return false;
        }
        h.remove_prefix(dot + 1);
    }
}

// ---------------------------------------------------------------------------------------

std::size_t suppression_list::digest_hash::operator()(const std::array<std::uint8_t, 16>& d) const noexcept {
    std::uint64_t lo = 0;
    std::memcpy(&lo, d.data(), sizeof lo);
    return static_cast<std::size_t>(lo);
}

namespace {

bool hex_digest(std::string_view s, std::array<std::uint8_t, 16>& out) {
    if (s.size() != 64) {
        return false;
    }
    const auto nib = hex_digit_value;
    for (std::size_t i = 0; i < 64; ++i) {
        if (nib(s[i]) < 0) {
            return false;
        }
    }
    for (std::size_t i = 0; i < 16; ++i) {
        out[i] = static_cast<std::uint8_t>(nib(s[2 * i]) * 16 + nib(s[2 * i + 1]));
    }
    return true;
}

using digest16 = std::array<std::uint8_t, 16>;

// SHA-256 of the lower-cased address (at most 512 bytes), its first 16 bytes (bb::sha256:
// OpenSSL's hash without the EVP dispatch, which cost more than hashing an address).
digest16 address_digest(std::string_view address) {
    char buf[512];
    const std::size_t n = std::min<std::size_t>(address.size(), sizeof buf);
    for (std::size_t i = 0; i < n; ++i) {
        buf[i] = static_cast<char>(to_lower(static_cast<unsigned char>(address[i])));
    }
    const sha256_digest d = sha256(std::string_view{buf, n});
    digest16 out{};
    std::memcpy(out.data(), d.data(), out.size());
    return out;
}

// Gmail delivers every spelling of a mailbox that differs only in dots in its local part, and
// googlemail.com is gmail.com (Google's help, "Dots don't matter in Gmail addresses"): the
// one spelling of such an address without its dots, at gmail.com, `+` tag and all; nullopt
// for any other domain (Google Workspace domains and every other server keep their dots) or
// a local part that is nothing, or starts with the tag, once its dots are gone. `address` is
// as normalize_address spelled it.
std::optional<std::string> gmail_spelling(std::string_view address) {
    const auto at = address.rfind('@');
    if (at == std::string_view::npos) {
        return std::nullopt;
    }
    const std::string_view domain = address.substr(at + 1);
    if (!iequals_lower(domain, "gmail.com") && !iequals_lower(domain, "googlemail.com")) {
        return std::nullopt;
    }
    const std::string_view local = address.substr(0, at);
    const std::size_t plus = local.find('+');
    std::string out;
    for (std::size_t i = 0; i < local.size(); ++i) {
        if (local[i] != '.' || i > plus) {
            out += local[i];
        }
    }
    if (out.empty() || out.front() == '+') {
        return std::nullopt;
    }
    out += "@gmail.com";
    return out;
}

// Why a suppression file's address, as normalize_address spelled it, is no address ("" when it
// is one): an `@` between a local part and a domain, no blank, control byte or separator.
std::string suppression_address_fault(std::string_view a) {
    const auto at = a.rfind('@');
    // (An internationalized domain by its ACE form: its Unicode form may be longer.)
    std::string ace;
    const std::size_t length = at != std::string_view::npos && idna::may_have_other_form(a.substr(at + 1)) &&
                                       idna::to_ascii(a.substr(at + 1), ace)
                                   ? at + 1 + ace.size()
                                   : a.size();
    if (length > 320) {
        return "longer than 320 bytes";
    }
    if (at == 0 || at + 1 >= a.size()) {
        return "nothing before or after the @";
    }
    for (const char c : a) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f || c == ' ' || c == ',' || c == ';' || c == '<' || c == '>' || c == '"') {
            return "a blank, control character or separator";
        }
    }
    const std::string_view domain = a.substr(at + 1);
    if (domain.front() == '.' || domain.find("..") != std::string_view::npos) {
        return "an empty label in the domain";
    }
    return "";
}

}  // namespace

std::optional<suppression_list> suppression_list::parse(std::string_view text, std::size_t max_entries,
                                                        std::string* error) {
    suppression_list out;
    // A file saved as UTF-16 (Excel's "Unicode Text") holds a NUL after every ASCII byte:
    // each line would load as an address no recipient ever matches.
    if (text.starts_with("\xFF\xFE") || text.starts_with("\xFE\xFF") ||
        text.find('\0') != std::string_view::npos) {
        if (error) {
            *error = "the file is UTF-16 or holds NUL bytes: save it as UTF-8 text";
        }
        return std::nullopt;
    }
    text = without_bom(text);  // Excel's "CSV UTF-8"
    std::size_t line_no = 0;
    std::string address;
    while (!text.empty()) {
        ++line_no;
        const auto nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
        if (const auto hash = line.find('#'); hash != std::string_view::npos) {
            line = line.substr(0, hash);
        }
        // Blanks around a line, a no-break space (U+00A0) among them, and a CRLF's CR.
        for (;;) {
            if (!line.empty() && (line.front() == ' ' || line.front() == '\t')) {
                line.remove_prefix(1);
            } else if (line.starts_with("\xC2\xA0")) {
                line.remove_prefix(2);
            } else {
                break;
            }
        }
        for (;;) {
            if (!line.empty() && (line.back() == ' ' || line.back() == '\t' || line.back() == '\r')) {
                line.remove_suffix(1);
            } else if (line.ends_with("\xC2\xA0")) {
                line.remove_suffix(2);
            } else {
                break;
            }
        }
        if (line.empty()) {
            continue;
        }
        std::array<std::uint8_t, 16> d{};
        if (line.find('@') != std::string_view::npos) {
            // Spelled as the guard spells a recipient before it hashes one (normalize_address:
            // `"Jane"@Example.com.` and `<jane@example.com>` are jane@example.com), so every
            // line can match; a line that is still no address is refused, never loaded as
            // one nobody matches (a quoted CSV cell, a `mailto:` link, a CR-only file).
            if (iequals_lower(line.substr(0, 7), "mailto:")) {
                line.remove_prefix(7);
            }
            detail::normalize_address(line, address);
            if (const std::string why = suppression_address_fault(address); !why.empty()) {
                if (error) {
                    *error = "line " + std::to_string(line_no) + ": not an email address (" + why +
                             ") or a SHA-256 hex digest";
                }
                return std::nullopt;
            }
            d = address_digest(address);
            // Every dotted spelling of a listed Gmail mailbox is the same person: the listed
            // one's own spelling without dots is looked up too (contains). Apart from the
            // entries, so sizes and reload counts stay the file's lines.
            if (auto g = gmail_spelling(address); g && *g != address) {
                const digest16 dg = address_digest(*g);
                out.gmail_.insert(dg);
                out.gmail_of_.emplace(d, dg);
            }
        } else if (!hex_digest(line, d)) {
            if (error) {
                *error = "line " + std::to_string(line_no) + ": not an email address or a SHA-256 hex digest";
            }
            return std::nullopt;
        }
        out.digests_.insert(d);
        if (out.digests_.size() > max_entries) {
            if (error) {
                *error = "more than " + std::to_string(max_entries) + " entries (raise max_entries)";
            }
            return std::nullopt;
        }
    }
    return out;
}

std::optional<suppression_list> suppression_list::load_file(const std::string& path, std::size_t max_entries,
                                                            std::string* error) {
    // One address a line at most 320 bytes plus a comment: a larger file cannot be a list.
    const std::size_t limit = max_entries * 400 + 4096;
    file_error fe = file_error::none;
    const std::optional<std::string> text = read_regular_file(path, limit, &fe);
    if (!text) {
        if (error) {
            *error = fe == file_error::too_large ? "is too large for max_entries " + std::to_string(max_entries)
                                                 : describe(fe, limit);
        }
        return std::nullopt;
    }
    return parse(*text, max_entries, error);
}

bool suppression_list::contains(std::string_view address) const {
    if (digests_.empty()) {
        return false;
    }
    if (contains_as_written(address)) {
        return true;
    }
    // A sub-address (`jane+news@example.com`) reaches the mailbox of `jane@example.com`
    // wherever `+` tags are delivered (Gmail, Outlook, Fastmail, most servers), while the APIs'
    // own suppression lists compare whole addresses: a suppressed person would be mailed
    // again under a new tag. The base is looked up too, so a tag never gets past the list.
    // (Only `+`: `-` separates tags on few servers and is common in real local parts.)
    const auto at = address.rfind('@');
    const auto plus = at == std::string_view::npos ? at : address.substr(0, at).find('+');
    std::string base;
    if (plus != std::string_view::npos && plus != 0) {
        base = address.substr(0, plus);
        base += address.substr(at);
        if (contains_as_written(base)) {
            return true;
        }
    }
    // A Gmail mailbox is every spelling of it with dots anywhere before the tag: its one
    // spelling without dots (at gmail.com) is looked up, tagged and not, among the entries
    // and among the listed Gmail addresses' own spellings without dots. (Both Gmail domains
    // end in mail.com: one compare for every other recipient.)
    if (address.size() < 8 || !iequals_lower(address.substr(address.size() - 8), "mail.com")) {
        return false;
    }
    for (const std::string_view spelled : {address, std::string_view{base}}) {
        if (spelled.empty()) {
            continue;
        }
        const std::optional<std::string> g = gmail_spelling(spelled);
        if (!g) {
            break;  // (not Gmail: neither is the base)
        }
        // (Already looked up among the entries when spelled so: then only the Gmail set.)
        const bool entries = *g != address && *g != base;
        if (!entries && gmail_.empty()) {
            continue;
        }
        const digest16 d = address_digest(*g);
        if ((entries && digests_.contains(d)) || gmail_.contains(d)) {
            return true;
        }
    }
    return false;
}

bool suppression_list::contains_as_written(std::string_view address) const {
    if (digests_.contains(address_digest(address))) {
        return true;
    }
    // An internationalized domain has two spellings (idna.hpp), and a line of the list, or
    // the digest an operator made of one, may use either: the address is looked up in both.
    if (!idna::may_have_other_form(address)) {
        return false;  // (the whole address: nearly always false, and cheaper than finding the '@' first)
    }
    const auto at = address.rfind('@');
    if (at == std::string_view::npos) {
        return false;
    }
    std::string domain;
    for (const bool unicode : {true, false}) {
        if (unicode ? idna::to_unicode(address.substr(at + 1), domain) : idna::to_ascii(address.substr(at + 1), domain)) {
            std::string other{address.substr(0, at + 1)};
            other += domain;
            if (other != address && digests_.contains(address_digest(other))) {
                return true;
            }
        }
    }
    return false;
}

std::size_t suppression_list::first_of(std::span<const std::string_view> addresses) const {
    if (digests_.empty()) {
        return addresses.size();
    }
    for (std::size_t i = 0; i < addresses.size(); ++i) {
        if (contains(addresses[i])) {
            return i;
        }
    }
    return addresses.size();
}

// ---------------------------------------------------------------------------------------

namespace {
constexpr std::size_t max_term_words = 16;
constexpr std::size_t max_word_bytes = 63;
}  // namespace

namespace {

// Calls f(first, second) for the raw first two bytes a text's word can start with to be `w`
// in any case; second -1 for a one-byte word (any byte that is no word byte follows it).
template <class F>
void for_each_start_pair(const std::string& w, F&& f) {
    for_each_spelling(w, 0, [&](unsigned char a, unsigned char b) {
        if (b != 0) {
            f(a, static_cast<int>(b));  // a two-byte spelling (a letter, or ß for ss): its own two bytes
        } else if (w.size() == 1) {
            f(a, -1);
        } else {
            // The second byte: the first of each spelling of what follows (an ASCII letter in
            // both cases, a two-byte letter's lead byte, ß's for ss: Eßzimmer, sßt).
            for_each_spelling(w, 1, [&](unsigned char c, unsigned char) { f(a, static_cast<int>(c)); });
        }
    });
}

}  // namespace

namespace {

// Scripts written without spaces between words.
bool unspaced_script(std::uint32_t cp) {
    return (cp >= 0x0E00 && cp <= 0x0EFF) ||    // Thai, Lao
           (cp >= 0x1000 && cp <= 0x109F) ||    // Myanmar
           (cp >= 0x1780 && cp <= 0x17FF) ||    // Khmer
           (cp >= 0x3005 && cp <= 0x3007) ||    // 々 〆 〇
           cp == 0x303B ||                      // 〻
           (cp >= 0x3040 && cp <= 0x30FF) ||    // Hiragana, Katakana
           (cp >= 0x3400 && cp <= 0x4DBF) ||    // CJK extension A
           (cp >= 0x4E00 && cp <= 0x9FFF) ||    // CJK unified ideographs
           (cp >= 0xF900 && cp <= 0xFAFF) ||    // CJK compatibility ideographs
           (cp >= 0xFF66 && cp <= 0xFF9F) ||    // half-width katakana
           (cp >= 0x20000 && cp <= 0x323AF);    // CJK extensions B to H, compatibility supplement
}

// Whether `w` is all code points of unspaced scripts.
bool unspaced_word(std::string_view w) {
    if (w.empty()) {
        return false;
    }
    for (std::size_t i = 0; i < w.size();) {
        std::uint32_t cp = 0;
        const std::size_t n = utf8_at(w, i, cp);
        if (n == 0 || !unspaced_script(cp)) {
            return false;
        }
        i += n;
    }
    return true;
}

}  // namespace

bool term_matcher::add(std::string_view written, std::string* error) {
    // As a text is read (as shown): `don’t` is the words don and t, as `don't` is.
    std::string shown_term;
    detail::show(written, shown_term, false);
    const std::string_view term = shown_term;
    std::vector<std::string> words;
    std::string_view first_word;  // as shown, not folded
    bool too_long = false;
    for_each_word(term, [&](std::size_t s, std::size_t e) {
        if (e - s > max_word_bytes) {
            too_long = true;
            return true;
        }
        if (words.empty()) {
            first_word = term.substr(s, e - s);
        }
        words.push_back(detail::fold_case(term.substr(s, e - s)));
        return false;
    });
    if (too_long) {
        *error = "a word of a term has at most " + std::to_string(max_word_bytes) + " bytes";
        return false;
    }
    if (words.empty()) {
        *error = "a term needs at least one word (letters or digits)";
        return false;
    }
    if (words.size() > max_term_words) {
        *error = "a term has at most " + std::to_string(max_term_words) + " words";
        return false;
    }
    std::uint32_t state = 0;
    for (const auto& w : words) {
        auto [it, added] = vocab_.try_emplace(w, static_cast<std::uint32_t>(vocab_.size() + 1));
        if (added) {
            words_.push_back(w);
        }
        // The first and last bytes of the word in every spelling of its first and last
        // letters (`р` starts D1, `Р` D0; `ü` ends BC, `Ü` 9C; an ss is also ß, C3 9F), as a
        // text's word has them: an ASCII last letter as itself (a text's is lower-cased), a
        // last two-byte spelling by its second byte.
        for_each_spelling(w, 0, [&](unsigned char lead, unsigned char) { first_bits_[w.size()] |= 1ull << (lead & 63); });
        if (w.size() < 2 || two_byte_at(w, w.size() - 2) == 0) {
            last_bits_[w.size()] |= 1ull << (static_cast<unsigned char>(w.back()) & 63);
        }
        if (w.size() >= 2) {
            for_each_spelling(w, w.size() - 2, [&](unsigned char, unsigned char cont) {
                if (cont != 0) {
                    last_bits_[w.size()] |= 1ull << (cont & 63);
                }
            });
        }
        state = words_ac_.extend(state, it->second);
    }
    words_ac_.end(state, static_cast<std::int32_t>(terms_.size()));
    // A term of one word written wholly in an unspaced script is found inside longer runs too.
    if (words.size() == 1 && unspaced_word(first_word)) {
        unspaced_.push_back({std::string{first_word}, static_cast<std::int32_t>(terms_.size())});
    }
    terms_.emplace_back(written);
    term_words_.push_back(words.size());
    return true;
}

std::int32_t term_matcher::find_unspaced(std::string_view text, std::size_t* at) const {
    std::uint32_t state = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
        const auto c = static_cast<unsigned char>(text[i]);
        if (state == 0 && c < 0xE0) {
            continue;  // (every unspaced script is written in three or four bytes)
        }
        state = unspaced_ac_.step(state, c);
        if (const std::int32_t k = unspaced_ac_.output(state); k >= 0) {
            const auto& t = unspaced_[static_cast<std::size_t>(k)];
            *at = i + 1 - t.text.size();  // (UTF-8 is self-synchronizing: the match starts a character)
            return t.index;
        }
    }
    return -1;
}

std::size_t term_matcher::word_hash::operator()(std::string_view w) const noexcept { return detail::bytes_hash(w); }

std::uint32_t symbol_automaton::extend(std::uint32_t state, std::uint32_t symbol) {
    auto [e, added] = edges_.try_emplace(static_cast<std::uint64_t>(state) << 32 | symbol, states_);
    if (added) {
        ++states_;
        out_.push_back(-1);
    }
    return e->second;
}

void symbol_automaton::build() {
    fail_.assign(states_, 0);
    // Children per state, for the breadth-first pass.
    std::vector<std::vector<std::pair<std::uint32_t, std::uint32_t>>> children(states_);
    for (const auto& [edge, to] : edges_) {
        children[static_cast<std::uint32_t>(edge >> 32)].emplace_back(static_cast<std::uint32_t>(edge), to);
    }
    std::vector<std::uint32_t> queue;
    queue.reserve(states_);
    for (const auto& [symbol, to] : children[0]) {
        fail_[to] = 0;
        queue.push_back(to);
    }
    for (std::size_t qi = 0; qi < queue.size(); ++qi) {
        const std::uint32_t s = queue[qi];
        if (out_[s] < 0) {
            out_[s] = out_[fail_[s]];  // a sequence ending here through a suffix
        }
        for (const auto& [symbol, to] : children[s]) {
            std::uint32_t f = fail_[s];
            while (true) {
                auto it = edges_.find((static_cast<std::uint64_t>(f) << 32) | symbol);
                if (it != edges_.end() && it->second != to) {
                    fail_[to] = it->second;
                    break;
                }
                if (f == 0) {
                    fail_[to] = 0;
                    break;
                }
                f = fail_[f];
            }
            queue.push_back(to);
        }
    }
}

std::uint32_t symbol_automaton::step(std::uint32_t state, std::uint32_t symbol) const {
    while (true) {
        if (auto e = edges_.find((static_cast<std::uint64_t>(state) << 32) | symbol); e != edges_.end()) {
            return e->second;
        }
        if (state == 0) {
            return 0;
        }
        state = fail_[state];
    }
}

void term_matcher::build() {
    for (std::size_t k = 0; k < unspaced_.size(); ++k) {
        std::uint32_t state = 0;
        for (const char c : unspaced_[k].text) {
            state = unspaced_ac_.extend(state, static_cast<unsigned char>(c));
        }
        unspaced_ac_.end(state, static_cast<std::int32_t>(k));
    }
    unspaced_ac_.build();

    // Raw first two bytes of each word in every case (for_each_start_pair); after a one-byte
    // word comes any byte that is not a word byte (0 at the end).
    auto set_pairs = [](std::vector<std::uint64_t>& bits, const std::string& w) {
        for_each_start_pair(w, [&](unsigned char first, int second) {
            auto set = [&](unsigned b) {
                const unsigned pair = first | (b << 8);
                bits[pair >> 6] |= 1ull << (pair & 63);
            };
            if (second >= 0) {
                set(static_cast<unsigned>(second));
                return;
            }
            for (unsigned c = 0; c < 256; ++c) {
                if (!table.word[c]) {
                    set(c);
                }
            }
        });
    };
    std::fill(word_pairs_.begin(), word_pairs_.end(), 0);
    std::fill(first_pairs_.begin(), first_pairs_.end(), 0);
    for (const auto& w : words_) {
        set_pairs(word_pairs_, w);
    }
    // The SIMD prefilter over the same first-word pairs: words with the same first letter in
    // one bucket (8 buckets, shared round-robin when there are more first letters).
    pair_tables starts;
    unsigned char bucket_of[256];
    std::memset(bucket_of, 0xFF, sizeof bucket_of);
    int buckets = 0;
    words_ac_.for_each_first([&](std::uint32_t id, std::uint32_t) {
        const std::string& w = words_[id - 1];  // from the root: a first word
        set_pairs(first_pairs_, w);
        const auto c0 = static_cast<unsigned char>(w[0]);
        if (bucket_of[c0] == 0xFF) {
            bucket_of[c0] = static_cast<unsigned char>(buckets++ % 8);
        }
        for_each_start_pair(w, [&](unsigned char a, int b) { starts.add(bucket_of[c0], a, b); });
    });
    static_assert(sizeof starts == sizeof start_nibbles_);
    std::memcpy(start_nibbles_.data(), &starts, sizeof starts);
    words_ac_.build();
}

std::uint32_t term_matcher::word_id(std::string_view folded_word) const {
    const auto it = vocab_.find(folded_word);
    return it == vocab_.end() ? 0 : it->second;
}

std::uint32_t term_matcher::step(std::uint32_t state, std::uint32_t id) const {
    if (id == 0) {
        return 0;  // a word in no term: every partial match is broken
    }
    return words_ac_.step(state, id);
}

// ---------------------------------------------------------------------------------------

namespace detail {

bool word_byte(unsigned char c) { return table.word[c]; }

// The last `<` outside quoted strings: in `"<ceo@example.com>"@evil.net` the angle brackets
// are the local part's (RFC 5322 quoted-string), the mailbox is at evil.net.
static std::size_t angle_outside_quotes(std::string_view item) {
    if (item.find('"') == std::string_view::npos) {
        return item.rfind('<');
    }
    std::size_t last = std::string_view::npos;
    bool quoted = false;
    for (std::size_t i = 0; i < item.size(); ++i) {
        const char c = item[i];
        if (quoted && c == '\\') {
            ++i;  // a quoted-pair
        } else if (c == '"') {
            quoted = !quoted;
        } else if (!quoted && c == '<') {
            last = i;
        }
    }
    // An unterminated quote is no quoted-string (an upstream refuses the address): read
    // as before, by the last `<`.
    return quoted ? item.rfind('<') : last;
}

// Bytes that send an address down normalize_address_general: blanks and other control
// bytes, the quote, angle brackets, parentheses and the backslash. Without any of them
// (nearly every recipient: `Jane.Doe@Example.com`) and without a trailing dot, the general
// path only lower-cases the address (no display name, comment, quoted local part, folding
// white space or root dot to take off) and writes an internationalized domain in Unicode form.
struct address_special_table {
    bool on[256] = {};
    constexpr address_special_table() {
        for (int c = 0; c <= ' '; ++c) {
            on[c] = true;
        }
        for (const char c : {'"', '<', '>', '(', ')', '\\'}) {
            on[static_cast<unsigned char>(c)] = true;
        }
    }
};
constexpr address_special_table address_special{};

// `item` copied into `out` with ASCII lower-cased, in one pass (every recipient goes through
// here, twice with both the recipients and duplicates guards on); whether it holds a byte
// of address_special.
[[gnu::always_inline]] static inline bool lower_into(std::string_view item, std::string& out) {
    const std::size_t n = item.size();
    out.resize(n);
    char* o = out.data();
    std::size_t i = 0;
    bool special_seen = false;
#if defined(__SSE2__)
    const __m128i upper_off = _mm_set1_epi8(static_cast<char>(128 - 'A'));
    const __m128i lim26 = _mm_set1_epi8(static_cast<char>(-128 + 26));
    const __m128i bit5 = _mm_set1_epi8(0x20);
    const __m128i space = _mm_set1_epi8(' ');
    __m128i special = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16) {
        const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(item.data() + i));
        const __m128i upper = _mm_cmplt_epi8(_mm_add_epi8(c, upper_off), lim26);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + i), _mm_or_si128(c, _mm_and_si128(upper, bit5)));
        __m128i sp = _mm_cmpeq_epi8(_mm_max_epu8(c, space), space);  // <= ' '
        sp = _mm_or_si128(sp, _mm_cmpeq_epi8(c, _mm_set1_epi8('"')));
        sp = _mm_or_si128(sp, _mm_cmpeq_epi8(c, _mm_set1_epi8('<')));
        sp = _mm_or_si128(sp, _mm_cmpeq_epi8(c, _mm_set1_epi8('>')));
        sp = _mm_or_si128(sp, _mm_cmpeq_epi8(c, _mm_set1_epi8('(')));
        sp = _mm_or_si128(sp, _mm_cmpeq_epi8(c, _mm_set1_epi8(')')));
        sp = _mm_or_si128(sp, _mm_cmpeq_epi8(c, _mm_set1_epi8('\\')));
        special = _mm_or_si128(special, sp);
    }
    special_seen = _mm_movemask_epi8(special) != 0;
#endif
    for (; i < n; ++i) {
        const auto c = static_cast<unsigned char>(item[i]);
        special_seen |= address_special.on[c];
        o[i] = static_cast<char>(to_lower(c));
    }
    return special_seen;
}

// An address's domain in the Unicode form the guards compare (idna.hpp): `jane@xn--bcher-kva.de`
// is jane@bücher.de to the suppression list, the duplicate counts and the domain lists.
static void unicode_domain(std::string& address) {
    const auto at = address.rfind('@');
    if (at == std::string::npos) {
        return;
    }
    const std::string_view domain = std::string_view{address}.substr(at + 1);
    thread_local std::string unicode;
    if (idna::may_have_other_form(domain) && idna::to_unicode(domain, unicode)) {
        address.replace(at + 1, std::string::npos, unicode);
    }
}

void normalize_address_general(std::string_view item, std::string& out) {
    const auto lt = angle_outside_quotes(item);
    if (lt != std::string_view::npos) {
        const auto gt = item.find('>', lt);
        item = item.substr(lt + 1, gt == std::string_view::npos ? std::string_view::npos : gt - lt - 1);
    } else if (item.find('(') != std::string_view::npos) {
        // A bare address with a comment (`a@x.com (work)`): the address without it.
        thread_local std::string bare;
        bare.clear();
        int depth = 0;
        for (const char c : item) {
            if (c == '(') {
                ++depth;
            } else if (c == ')' && depth > 0) {
                --depth;
            } else if (depth == 0) {
                bare += c;
            }
        }
        item = bare;
    }
    auto trimmed = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '"'; };
    while (!item.empty() && trimmed(item.front())) {
        item.remove_prefix(1);
    }
    while (!item.empty() && trimmed(item.back())) {
        item.remove_suffix(1);
    }
    // Never cut: `aaa...(300)...@news.example.com.evil.tld` cut at 320 bytes would end in
    // an allowed domain the upstream never sees. The body bounds the length.
    lower_into(item, out);
    // One spelling per mailbox, as an MTA keeps it (Postfix's internal form): a quoted local
    // part unquoted (`"jane"@x.com`, `"ja\ne"@x.com` is jane@x.com) and the root's trailing
    // dot dropped (`jane@x.com.`), so the suppression list and duplicate counts see them.
    auto at = out.rfind('@');
    if (at == std::string::npos) {
        return;
    }
    // Blanks around the '@' and inside the domain are folding white space to an MTA that
    // reads the obsolete syntax (`jane @competitor.com`, `jane@competitor .com` is
    // jane@competitor.com); a domain never holds one. Without them, the block and
    // suppression lists see the mailbox such an upstream delivers to.
    if (std::any_of(out.begin() + static_cast<std::ptrdiff_t>(at), out.end(), blank)) {
        out.erase(std::remove_if(out.begin() + static_cast<std::ptrdiff_t>(at), out.end(), blank), out.end());
    }
    while (at > 0 && blank(out[at - 1])) {
        out.erase(--at, 1);
    }
    // (After the mapping: a root dot written as another full stop, `jane@example.com。`, goes too.)
    unicode_domain(out);
    while (out.size() > at + 1 && out.back() == '.') {
        out.pop_back();
    }
    // (A plain loop: find_first_of calls memchr on its set for every byte.)
    if (std::any_of(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(at), [](char ch) { return ch == '"' || ch == '\\'; })) {
        std::string local;
        for (std::size_t k = 0; k < at; ++k) {
            if (out[k] == '\\' && k + 1 < at) {
                local += out[++k];
            } else if (out[k] != '"') {
                local += out[k];
            }
        }
        out.replace(0, at, local);
    }
}

void normalize_address(std::string_view item, std::string& out) {
    // One pass copies, lower-cases and looks for what the general path is for (an
    // internationalized domain included).
    if (item.empty() || item.back() == '.' || lower_into(item, out) || idna::may_have_other_form(out)) {
        normalize_address_general(item, out);
    }
}

namespace {

// Digit groups of a possible card number or SSN: consecutive all-digit words joined by one
// dash or dot, or by blanks (pii_scan::word). Only the last 19 are kept (a card has at most
// 19 digits).
struct digit_groups {
    struct group {
        std::size_t start;
        std::size_t len;
        char sep;   // separator before this group: '-', '.' or ' ' (blanks); 0 for the first
        bool wide;  // blanks, but not one space (a double space, a tab, a line break)
        bool line;  // blanks with a line break
    };
    static constexpr std::size_t cap = 20;
    group g[cap];  // g[0..n) only: not zeroed, a scan runs once per JSON string
    std::size_t n = 0;
    std::size_t end = 0;
    std::size_t digits = 0;  // in g[0..n): under 13, no card can end here

    void clear() {
        n = 0;
        digits = 0;
    }
    void push(std::size_t start, std::size_t len, char sep, bool wide, bool line) {
        if (n == cap) {
            digits -= g[0].len;
            std::move(g + 1, g + cap, g);
            --n;
        }
        g[n++] = {start, len, sep, wide, line};
        digits += len;
        end = start + len;
    }
};

// Bytes of a bearer or API token: ASCII letters and digits, `_ - . ~ + /`.
bool token_byte(unsigned char c) {
    if (c < 0x80 && table.word[c]) {
        return true;
    }
    return c == '-' || c == '.' || c == '~' || c == '+' || c == '/';
}

void set_hit(text_hit* hit, std::string what, std::size_t offset) {
    if (hit) {
        hit->what = std::move(what);
        hit->offset = offset;
    }
}

// A card number starting with 2 is a Mastercard (2221-2720) or a Mir card (2200-2204); no
// other network issues in 2xxx (`2017 2018 2019 2020` is four years).
bool two_series_iin(std::string_view first4) {
    const int v = (first4[0] - '0') * 1000 + (first4[1] - '0') * 100 + (first4[2] - '0') * 10 + (first4[3] - '0');
    return (v >= 2200 && v <= 2204) || (v >= 2221 && v <= 2720);
}

// Whether the line holding text[end - 1] has something other than digits and separators
// before them: text, or markup (a tag's '>' or a reference's ';' reads as text, so the
// text as written joins wherever the text as shown does). A form feed (a tag that breaks
// the line, in the text as shown) starts a line. Up to 64 bytes back; further is text.
bool text_before_on_line(std::string_view text, std::size_t end) {
    for (std::size_t k = end, n = 0; k > 0; --k, ++n) {
        const auto c = static_cast<unsigned char>(text[k - 1]);
        if (c == '\n' || c == '\r' || c == '\f') {
            return false;
        }
        if (n == 64 || !(is_digit(c) || c == ' ' || c == '\t' || c == '-' || c == '.')) {
            return true;
        }
    }
    return false;
}

// Card windows ending at the newest group: 13-19 digits, Luhn-valid, an issuer digit 2-6
// (2 only in the ranges issued), written as one group or in the usual groupings
// (4-4-4-4[-3], 4-4-4-1..4, 4-6-5, 4-6-4) with one kind of separator (blanks of any width
// are one kind, with at most one line break among them), not inside a longer
// run of 4-digit groups that starts with a 9 (a USPS tracking number).
bool check_card(std::string_view text, const digit_groups& dg, text_hit* hit) {
    if (dg.digits < 13) {
        return false;
    }
    std::size_t digits = 0;
    int lines = 0;
    for (std::size_t k = 1; k <= dg.n; ++k) {
        const auto& first = dg.g[dg.n - k];
        digits += first.len;
        if (digits > 19) {
            return false;
        }
        if (k > 1 && dg.g[dg.n - k + 1].sep != dg.g[dg.n - 1].sep) {
            return false;
        }
        // A line wrapped inside a number breaks it once; groups one per line are a list.
        if (k > 1 && (lines += dg.g[dg.n - k + 1].line) > 1) {
            return false;
        }
        if (digits < 13) {
            continue;
        }
        bool shape = k == 1;
        bool fours = false;
        if (k > 1) {
            const std::size_t last = dg.g[dg.n - 1].len;
            fours = last >= 1 && last <= 4;
            for (std::size_t j = dg.n - k; j + 1 < dg.n && fours; ++j) {
                fours = dg.g[j].len == 4;
            }
            const bool amex = k == 3 && dg.g[dg.n - 3].len == 4 && dg.g[dg.n - 2].len == 6 &&
                              (dg.g[dg.n - 1].len == 5 || dg.g[dg.n - 1].len == 4);
            shape = fours || amex;
        }
        if (!shape) {
            continue;
        }
        // Joined as the card's own groups are: the same separator, and blanks wider than one
        // space only if the card's are or at a wrapped line (`9400 1111` + a break + `5112
        // 0000 0000 04` is a tracking number too).
        const auto same_run = [&](const digit_groups::group& g) {
            return g.sep == dg.g[dg.n - 1].sep && (!g.wide || g.line || dg.g[dg.n - 1].wide);
        };
        if (fours && k < dg.n && dg.g[dg.n - k - 1].len == 4 && same_run(first)) {
            // Inside a longer run of 4-digit groups that starts with a 9: a USPS tracking
            // number as USPS shows it (`9400 1111 5112 7527 8510 09`, 20-22 digits); a window
            // of it is no card. (A card after another group, `1234 4111 1111 1111 1111`, is;
            // so is one after a wider gap, `9123   4111 1111 1111 1111`.)
            std::size_t j = dg.n - k - 1;
            while (j > 0 && same_run(dg.g[j]) && dg.g[j - 1].len == 4) {
                --j;
            }
            if (text[dg.g[j].start] == '9') {
                continue;
            }
        }
        char buf[20] = {};
        std::size_t m = 0;
        for (std::size_t j = dg.n - k; j < dg.n; ++j) {
            std::memcpy(buf + m, text.data() + dg.g[j].start, dg.g[j].len);
            m += dg.g[j].len;
        }
        if (buf[0] < '2' || buf[0] > '6' || (buf[0] == '2' && !two_series_iin({buf, 4})) || !luhn_valid({buf, m})) {
            continue;
        }
        set_hit(hit, "card number (Luhn-valid, ****" + std::string{buf + m - 4, 4} + ")", first.start);
        return true;
    }
    return false;
}

bool check_ssn(std::string_view text, const digit_groups& dg, std::size_t end, text_hit* hit) {
    if (dg.n < 3) {
        return false;
    }
    const auto& a = dg.g[dg.n - 3];
    const auto& g = dg.g[dg.n - 2];
    const auto& s = dg.g[dg.n - 1];
    // `AAA-GG-SSSS` or `AAA GG SSSS` (as forms and scanned letters write it: single spaces),
    // one kind of separator, not part of a longer number so written (123-45-6789-0,
    // 1 123 45 6789; a group before it on another line or after a double space is not).
    if (a.len != 3 || g.len != 2 || s.len != 4 || (g.sep != '-' && g.sep != ' ') || g.wide || s.wide ||
        s.sep != g.sep || (a.sep == g.sep && !a.wide)) {
        return false;
    }
    if (end + 1 < text.size() && text[end] == g.sep && is_digit(static_cast<unsigned char>(text[end + 1]))) {
        return false;
    }
    if (!ssn_valid(text.substr(a.start, 3), text.substr(g.start, 2), text.substr(s.start, 4))) {
        return false;
    }
    set_hit(hit, "US SSN", a.start);
    return true;
}

// An IBAN starting at `s` (two letters and two digits): read up to 34 characters of letters
// and digits, in one piece or in groups separated by single spaces, and check every length
// that ends on a group boundary (the country's length if known). Written in upper case, or
// (`any_case`) with lower-case letters anywhere (`de89 3704 ...` typed into a form, `De89`
// after a phone capitalised the field, `GB82 west ...`): then only for a country whose
// length is known, so a lower-case hex id (`ab12...`) is not read as an IBAN of some other,
// and only as IBANs are laid out (written_so, below).
bool check_iban(std::string_view text, std::size_t s, bool any_case, text_hit* hit) {
    const auto letter = [any_case](unsigned char c) { return is_upper(c) || (any_case && is_lower(c)); };
    // (The caller saw two letters at s.)
    const int expected = iban_length(static_cast<char>(text[s] & ~0x20), static_cast<char>(text[s + 1] & ~0x20));
    if (any_case && expected == 0) {
        return false;
    }
    char buf[34];
    std::size_t m = 0;
    std::size_t boundaries[34];
    std::size_t nb = 0;
    std::size_t i = s;
    while (i < text.size() && m < 34) {
        const auto c = static_cast<unsigned char>(text[i]);
        if (letter(c) || is_digit(c)) {
            buf[m++] = static_cast<char>(is_lower(c) ? c - 32 : c);
            ++i;
            continue;
        }
        if (table.word[c]) {
            // Lower case (in upper-case mode) or `_`: the piece being read is a word, not a group. In the first
            // piece there is no IBAN; after a group it ends before this word
            // (`DE89 3704 0044 0532 0130 00 Deutsche Bank`).
            if (nb == 0) {
                return false;
            }
            break;
        }
        boundaries[nb++] = m;
        if (c == ' ' && i + 1 < text.size() &&
            (letter(static_cast<unsigned char>(text[i + 1])) || is_digit(static_cast<unsigned char>(text[i + 1])))) {
            ++i;
            continue;
        }
        break;
    }
    if ((i >= text.size() || m == 34) && (nb == 0 || boundaries[nb - 1] != m)) {
        boundaries[nb++] = m;
    }
    // With lower case, only as IBANs are written: in groups of four (the last of one to four),
    // or in one piece whose account part is a bank code of up to four letters and digits
    // (`de89370400440532013000`, `gb82west12345698765432`). Text of any case runs on after a
    // group where upper-case text would stop: `#de8500 none repeat scroll` must not read as
    // DE85 00NONEREPEATSCROLL, nor a hex id as a one-piece IBAN.
    const auto written_so = [&](std::size_t b) {
        if (b == 0) {
            std::size_t k = 4;
            while (k < boundaries[0] && k < 8 && !is_digit(static_cast<unsigned char>(buf[k]))) {
                ++k;
            }
            for (; k < boundaries[0]; ++k) {
                if (!is_digit(static_cast<unsigned char>(buf[k]))) {
                    return false;
                }
            }
            return true;
        }
        for (std::size_t k = 0; k < b; ++k) {
            if (boundaries[k] - (k == 0 ? 0 : boundaries[k - 1]) != 4) {
                return false;
            }
        }
        const std::size_t last = boundaries[b] - boundaries[b - 1];
        return last >= 1 && last <= 4;
    };
    // A group of one letter repeated is a mask (`DE89 XXXX XXXX XXXX XXXX 53`, `xx`), not an
    // account's: a masked IBAN shown to its owner passes mod-97 by chance (1 in 97).
    const auto masked = [&](std::size_t b) {
        for (std::size_t k = 1; k <= b; ++k) {
            const std::size_t from = boundaries[k - 1];
            const std::size_t to = boundaries[k];
            if (to - from >= 2 && !is_digit(static_cast<unsigned char>(buf[from])) &&
                std::all_of(buf + from, buf + to, [&](char c) { return c == buf[from]; })) {
                return true;
            }
        }
        return false;
    };
    for (std::size_t b = 0; b < nb; ++b) {
        const std::size_t len = boundaries[b];
        if (len < 15 || (expected != 0 && static_cast<int>(len) != expected) || (any_case && !written_so(b)) || masked(b)) {
            continue;
        }
        if (iban_valid({buf, len})) {
            set_hit(hit, "IBAN (" + std::string{buf, 2} + ", mod-97 valid)", s);
            return true;
        }
    }
    return false;
}

// An IBAN at `s` (two letters, two digits): upper case first (any country); then, for a known
// country, with lower case anywhere (an upper-case read stops at the first lower-case letter).
// Out of line: few words get here, and the word loop stays small.
[[gnu::noinline]] bool find_iban(std::string_view text, std::size_t s, text_hit* hit) {
    const bool upper = is_upper(static_cast<unsigned char>(text[s])) && is_upper(static_cast<unsigned char>(text[s + 1]));
    return (upper && check_iban(text, s, false, hit)) || check_iban(text, s, true, hit);
}

bool all_of_range(std::string_view text, std::size_t s, std::size_t e, bool (*pred)(unsigned char)) {
    for (std::size_t i = s; i < e; ++i) {
        if (!pred(static_cast<unsigned char>(text[i]))) {
            return false;
        }
    }
    return true;
}

bool upper_alnum(unsigned char c) { return is_upper(c) || is_digit(c); }

std::size_t token_run(std::string_view text, std::size_t from, std::size_t enough) {
    std::size_t n = 0;
    while (from + n < text.size() && n < enough && token_byte(static_cast<unsigned char>(text[from + n]))) {
        ++n;
    }
    return n;
}

bool check_secret(std::string_view text, std::size_t s, std::size_t e, text_hit* hit) {
    const std::string_view w = text.substr(s, e - s);
    const auto c0 = static_cast<unsigned char>(w[0]);
    if (w.size() == 20 && (w.starts_with("AKIA") || w.starts_with("ASIA")) && all_of_range(text, s, e, upper_alnum)) {
        set_hit(hit, "AWS access key id (" + std::string{w.substr(0, 4)} + "...)", s);
        return true;
    }
    if (w == "BEGIN" && s >= 5 && text.substr(s - 5, 5) == "-----") {
        // `-----BEGIN [RSA |EC |OPENSSH |ENCRYPTED ]PRIVATE KEY-----` (and PGP's KEY BLOCK).
        std::string_view line = text.substr(e, 64);
        line = line.substr(0, line.find('\n'));
        const auto pk = line.find("PRIVATE KEY");
        if (pk != std::string_view::npos && line.find("-----", pk) != std::string_view::npos) {
            set_hit(hit, "private key block", s - 5);
            return true;
        }
        return false;
    }
    if ((c0 == 'B' || c0 == 'b') && w.size() == 6 && iequals_lower(w, "bearer") && e < text.size() && text[e] == ' ' &&
        token_run(text, e + 1, 20) >= 20) {
        set_hit(hit, "bearer token", s);
        return true;
    }
    if ((c0 == 's' || c0 == 'r') && w.size() >= 24 && (w.starts_with("sk_live_") || w.starts_with("rk_live_"))) {
        set_hit(hit, "API secret key (" + std::string{w.substr(0, 8)} + "...)", s);
        return true;
    }
    if (c0 == 'x' && w.size() == 4 && (w == "xoxb" || w == "xoxp" || w == "xoxa" || w == "xoxr") && e < text.size() &&
        text[e] == '-' && token_run(text, e + 1, 10) >= 10) {
        set_hit(hit, "Slack token (" + std::string{w} + "-...)", s);
        return true;
    }
    if (c0 == 'g' && ((w.size() == 40 && w.starts_with("ghp_")) || (w.size() >= 40 && w.starts_with("github_pat_")))) {
        set_hit(hit, "GitHub token (" + std::string{w.substr(0, 4)} + "...)", s);
        return true;
    }
    return false;
}

// First bytes of words the PII scanner looks at more closely.
struct pii_first_table {
    bool on[256] = {};
    constexpr pii_first_table() {
        for (int c = '0'; c <= '9'; ++c) {
            on[c] = true;
        }
        for (int c = 'A'; c <= 'Z'; ++c) {
            on[c] = true;
        }
        for (int c = 'a'; c <= 'z'; ++c) {
            on[c] = true;  // b g r s x: secrets; any: an IBAN with lower case
        }
    }
};
constexpr pii_first_table pii_first{};

}  // namespace

namespace {

struct pii_scan {
    explicit pii_scan(std::uint8_t kinds)
        : card(kinds & static_cast<std::uint8_t>(pii_kind::card)),
          ssn(kinds & static_cast<std::uint8_t>(pii_kind::ssn)),
          iban(kinds & static_cast<std::uint8_t>(pii_kind::iban)),
          secrets(kinds & static_cast<std::uint8_t>(pii_kind::secrets)) {}
    bool card;
    bool ssn;
    bool iban;
    bool secrets;
    digit_groups dg;

    // One word [s, e) of text, in order. Does nothing for a word whose first byte is not in
    // pii_first (the fast scan relies on that to skip them).
    bool word(std::string_view text, std::size_t s, std::size_t e, text_hit* hit) {
        const auto c0 = static_cast<unsigned char>(text[s]);
        if (!pii_first.on[c0]) {
            return false;
        }
        if (is_digit(c0)) {
            if (!(card || ssn)) {
                return false;
            }
            // A number ends where non-ASCII text is glued to it (`4111...1111円`, CJK text
            // puts no space there); digits glued to ASCII letters or `_` are a word, no number.
            std::size_t d = s;
            while (d < e && d - s <= 19 && is_digit(static_cast<unsigned char>(text[d]))) {
                ++d;
            }
            if (d - s > 19 || (d < e && static_cast<unsigned char>(text[d]) < 0x80)) {
                dg.clear();
                return false;
            }
            e = d;
            // Joined to the group before by one `-` or `.`, or by blanks: one space, or up to
            // 16 of them with at most one line break (a double space; a line wrapped inside
            // the number, `4111 1111\r\n1111 1111`; HTML source, which shows them as one space).
            // A line break joins only where a line wraps, inside a number that text leads up to
            // on its line (`card 4111 1111` + a break + `1111 1111`); a line that is only
            // numbers is an entry of a list (`5123 4410` and `2210 0934` are two codes).
            char sep = 0;
            bool wide = false;
            int lines = 0;
            if (dg.n > 0 && s > dg.end && s - dg.end <= 16) {
                const auto c = static_cast<unsigned char>(text[dg.end]);
                if (s == dg.end + 1 && (c == '-' || c == '.' || c == ' ')) {
                    sep = static_cast<char>(c);
                } else {
                    sep = ' ';
                    wide = true;
                    for (std::size_t k = dg.end; k < s && sep != 0; ++k) {
                        const auto b = static_cast<unsigned char>(text[k]);
                        lines += b == '\n' || (b == '\r' && (k + 1 == s || text[k + 1] != '\n'));
                        sep = blank(b) && lines <= 1 ? sep : 0;
                    }
                    if (sep != 0 && lines > 0 && !text_before_on_line(text, dg.end)) {
                        sep = 0;
                    }
                }
            }
            if (sep == 0) {
                dg.clear();
            }
            dg.push(s, e - s, sep, wide, lines > 0);
            return (ssn && check_ssn(text, dg, e, hit)) || (card && check_card(text, dg, hit));
        }
        if (iban && e - s >= 4 && is_digit(static_cast<unsigned char>(text[s + 2])) &&
            is_digit(static_cast<unsigned char>(text[s + 3]))) {
            if (is_alpha(c0) && is_alpha(static_cast<unsigned char>(text[s + 1])) && find_iban(text, s, hit)) {
                return true;
            }
        }
        return secrets && check_secret(text, s, e, hit);
    }
};

}  // namespace

bool scan_pii_reference(std::uint8_t kinds, std::string_view text, text_hit* hit) {
    pii_scan scan{kinds};
    return for_each_word(text, [&](std::size_t s, std::size_t e) {
        if (scan.word(text, s, e, hit)) {
            return true;
        }
        // Digits glued after non-ASCII text (`番号4111...`, `：4111...`) start a number too.
        for (std::size_t i = s + 1; i < e; ++i) {
            if (is_digit(static_cast<unsigned char>(text[i])) && static_cast<unsigned char>(text[i - 1]) >= 0x80 &&
                scan.word(text, i, e, hit)) {
                return true;
            }
        }
        return false;
    });
}

namespace {

// Where the text goes on after the tags from t[i] == '<' when they are inline elements or
// comments (shown as nothing, see tag_at), one or more in a row; npos when the first is not a
// tag or shows as a break. Defined with tag_at.
std::size_t after_joining_tags(std::string_view t, std::size_t i, std::size_t& read);
bool inline_element(std::string_view lower_name);

// The two checks below each read the tags from one '<' on; `read` is where the tags they read
// end. A '<' before it (inside tags already read: an attribute value, or a '<' the check read
// as a tag that a mail client shows inside a comment) is not read again, so a text of many
// '<' stays linear: the scanners take it as a possible split instead (the text is read once
// more without its tags, which decides), since the check may have read tags the client does
// not see.

// Whether the '<' at t[i] (i > 0, after a digit, or after a digit and separators) starts tags
// shown as nothing between two digit groups of one number: `4111 <b>1111</b>`,
// `41<span>11</span>`, `<span>4111</span> <span>1111</span>`, `4111\n  <b> 1111</b>`.
// Wider than what joins groups (pii_scan::word decides on the text without its tags): a `-`
// or `.`, or up to 16 blanks, on either side of each run of tags.
[[gnu::noinline]] bool digits_joined_by_tags(std::string_view t, std::size_t i, std::size_t& read) {
    const auto u = [&](std::size_t k) { return static_cast<unsigned char>(t[k]); };
    // Back over what may join, to a digit.
    std::size_t b = i;
    if (t[b - 1] == '-' || t[b - 1] == '.') {
        --b;
    } else {
        while (b > 0 && i - b < 16 && blank(u(b - 1))) {
            --b;
        }
    }
    if (b == 0 || !is_digit(u(b - 1))) {
        return false;
    }
    // On over tags, up to 16 blanks in all (or one `-` or `.`) and more tags, to a digit.
    std::size_t j = after_joining_tags(t, i, read);
    std::size_t blanks = 0;
    bool dash = false;
    while (j < t.size() && !is_digit(u(j))) {
        if (t[j] == '<') {
            j = after_joining_tags(t, j, read);
        } else if ((t[j] == '-' || t[j] == '.') && !dash) {
            dash = true;
            ++j;
        } else if (blank(u(j)) && ++blanks <= 16) {
            ++j;
        } else {
            return false;
        }
    }
    return j < t.size() && is_digit(u(j));
}

// Whether the '<' at t[i] (t[i - 1] a word byte) starts tags shown as nothing inside a word:
// `fr<b>ee</b>`.
[[gnu::noinline]] bool word_joined_by_tags(std::string_view t, std::size_t i, std::size_t& read) {
    // Most are the end of an element after its last word (`sale</a> `, `FAQ</a>.`,
    // `sale</a></td>`): closing tags, read here without tag_at's general parse, and dropped
    // as soon as the byte after one is neither a word nor a tag. (Folding this into tag_at
    // as its own fast path and calling after_joining_tags alone was measured at +3% for the
    // content guard: the call chain per candidate is what this avoids.)
    std::size_t j = i;
    while (j + 2 < t.size() && t[j] == '<' && t[j + 1] == '/') {
        // `</name>` with a plain name of up to 8 bytes; anything else takes the general parse.
        char name[8];
        std::size_t len = 0;
        std::size_t k = j + 2;
        for (; k < t.size() && len < sizeof name &&
               (is_digit(static_cast<unsigned char>(t[k])) || is_upper(static_cast<unsigned char>(t[k])) ||
                is_lower(static_cast<unsigned char>(t[k])));
             ++k) {
            name[len++] = static_cast<char>(t[k] | 0x20);
        }
        if (len == 0 || k >= t.size() || t[k] != '>') {
            break;  // `</blockquote>`, `</a >`: the general parse below
        }
        read = k + 1;
        if (read < t.size() && t[read] != '<' && !table.word[static_cast<unsigned char>(t[read])]) {
            return false;  // followed by neither a word nor a tag: joins nothing, whatever it is
        }
        if (!inline_element({name, len})) {
            return false;  // a break: nothing is joined across it
        }
        j = read;
    }
    if (j < t.size() && t[j] == '<') {
        j = after_joining_tags(t, j, read);
    }
    return j < t.size() && table.word[static_cast<unsigned char>(t[j])];
}

// Whether a word starting with c0 c1 (c1: the byte after c0, 0 at the end of the text), c0
// not a digit, can be something pii_scan::word finds: an IBAN (two upper-case letters), an
// AWS key id (AK, AS), BEGIN or Bearer (Be in any case), sk_/rk_live_, xox?-, ghp_/github_pat_.
bool pii_pair(unsigned char c0, unsigned char c1, bool iban, bool secrets) {
    if (iban && is_upper(c0) && is_upper(c1)) {
        return true;
    }
    if (!secrets) {
        return false;
    }
    switch (c0) {
        case 'A': return c1 == 'K' || c1 == 'S';
        case 'B':
        case 'b': return c1 == 'E' || c1 == 'e';
        case 's':
        case 'r': return c1 == 'k';
        case 'x': return c1 == 'o';
        case 'g': return c1 == 'h' || c1 == 'i';
        default: return false;
    }
}

// `de89`, `De89`: how an IBAN with lower case starts (pii_scan::word reads the rest).
bool iban_start(const unsigned char* p, std::size_t s, std::size_t n) {
    return s + 3 < n && is_alpha(p[s]) && is_alpha(p[s + 1]) && is_digit(p[s + 2]) && is_digit(p[s + 3]);
}

}  // namespace

bool scan_pii(std::uint8_t kinds, std::string_view text, text_hit* hit, bool* split_by_tag) {
    pii_scan scan{kinds};
    // Only the words pii_scan::word can do something with:
    // - starting with a digit (a word's first byte, or a digit right after a byte >= 0x80:
    //   pii_scan reads a number glued to non-ASCII text as one), and only inside a chain of
    //   digits joined by separators (a dash, a dot, blanks) at least as long as an SSN (11) or a
    //   card (13): every card or SSN it checks is made of such groups, and a digit group
    //   outside those chains can neither be part of one nor change the groups kept for one
    //   (it is not adjacent to any);
    // - starting with an upper-case letter or b g r s x, and only with the second bytes of an
    //   IBAN or of a secret (pii_pair);
    // - starting with two letters of any case and two digits (an IBAN with lower case): from
    //   the digit classes, two and three bytes on.
    const bool digits = scan.card || scan.ssn;
    const bool upper = scan.iban || scan.secrets;
    const bool pick = scan.secrets;
    if ((!digits && !upper) || text.size() < pii_min_length(kinds)) {
        return false;
    }
    const unsigned chain = scan.ssn ? 11 : 13;
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    const std::size_t n = text.size();
    std::uint64_t carry = 0;
    std::uint64_t run_carry = 0;     // the previous block ended with a digit or separators after one
    std::uint64_t high_carry = 0;    // the previous block ended with a byte >= 0x80
    std::size_t tags_read = 0;       // see digits_joined_by_tags
    const pair_tables* pairs = upper ? (pick ? &pii_pairs_secrets : &pii_pairs_iban) : nullptr;
    return for_each_block<scan_mode::pii>(text, pairs, pick,
                                          [&](std::size_t block, const block_masks& m) __attribute__((always_inline)) {
        const std::uint64_t starts = word_starts(m, carry);
        // Digits right after non-ASCII text start a number inside a word (`番号4111...`).
        const std::uint64_t after_high = (m.high << 1) | high_carry;
        high_carry = m.high >> 63;
        std::uint64_t cand = 0;
        if (digits) {
            // Separators count when a run of them starts right after a digit: adding the run's
            // first bit carries through the run and clears it. Then its last bit goes unless a
            // digit follows (or the block ends): the ` ` after a date would lengthen its chain.
            // (What stays of longer runs that no digit follows is wider than what joins groups,
            // to be safe; a second such step measured dearer than the candidates it saves.)
            const std::uint64_t after = (m.digit << 1) | run_carry;  // after a digit, or such a run
            const std::uint64_t runs = m.sep & ~(m.sep + (m.sep & after));
            run_carry = (m.digit >> 63) | (runs >> 63);
            const std::uint64_t edge = 1ull << 63;
            const std::uint64_t joined = runs & ((m.digit >> 1) | (runs >> 1) | edge);
            cand |= (starts | after_high) & m.digit & long_runs(m.digit | joined, chain);
            if (split_by_tag != nullptr) {
                // A tag right after a digit, or after separators after one, may join two groups
                // of one number: find_pii reads the text again without its tags when one does.
                std::uint64_t at = m.lt & (after | (runs << 1));
                while (at != 0 && !*split_by_tag) [[unlikely]] {
                    const std::size_t i = block + static_cast<unsigned>(__builtin_ctzll(at));
                    at &= at - 1;
                    *split_by_tag = i < tags_read || digits_joined_by_tags(text, i, tags_read);
                }
            }
        }
        if (upper) {
            cand |= starts & m.pairs;
        }
        if (scan.iban) {
            // Two and three bytes on: past the block edge read from the text (3 bytes), which
            // is cheaper than taking every word start near the edge as a candidate.
            std::uint64_t next = 0;  // bits 0-2: digits at block + 64, 65, 66
            for (unsigned k = 0; k < 3; ++k) {
                next |= static_cast<std::uint64_t>(block + 64 + k < n && is_digit(p[block + 64 + k])) << k;
            }
            cand |= starts & ~m.digit & ((m.digit >> 2) | (next << 62)) & ((m.digit >> 3) | (next << 61));
        }
        while (cand != 0) {
            const auto b = static_cast<unsigned>(__builtin_ctzll(cand));
            cand &= cand - 1;
            const std::size_t s = block + b;
            const unsigned char c0 = p[s];
            if (!is_digit(c0) && !pii_pair(c0, s + 1 < n ? p[s + 1] : 0, scan.iban, scan.secrets) &&
                !(scan.iban && iban_start(p, s, n))) {
                continue;  // pii_scan::word would do nothing with it
            }
            if (scan.word(text, s, word_end(text, block, b, m.word), hit)) {
                return true;
            }
        }
        return false;
    });
}

std::string classification_mismatch(std::string_view text) {
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    std::string out;
    // The pair prefilter must keep every PII pair (pii_pair) and may keep more.
    auto check = [&](const char* which, std::size_t block, const block_masks& m, bool secrets) {
        for (std::size_t i = 0; i < 64 && block + i < text.size() && out.empty(); ++i) {
            const unsigned char c = p[block + i];
            const unsigned char next = block + i + 1 < text.size() ? p[block + i + 1] : 0;
            const bool word = (m.word >> i) & 1u;
            const bool digit = (m.digit >> i) & 1u;
            const bool sep = (m.sep >> i) & 1u;
            const bool pair = (m.pairs >> i) & 1u;
            const bool lt = (m.lt >> i) & 1u;
            const bool high = (m.high >> i) & 1u;
            if (word != table.word[c] || digit != is_digit(c) || sep != digit_sep(c) || lt != (c == '<') ||
                high != (c >= 0x80) ||
                (!pair && !is_digit(c) && pii_pair(c, next, true, secrets))) {
                out = std::string{which} + ": byte " + std::to_string(c) + " at " + std::to_string(block + i);
            }
        }
    };
    for (const bool secrets : {false, true}) {
        std::vector<block_masks> masks((text.size() + 127) / 64);
        std::string padded{text};
        padded.resize(masks.size() * 64 + 1, '\0');
        const auto* q = reinterpret_cast<const unsigned char*>(padded.data());
        const pair_tables* pairs = secrets ? &pii_pairs_secrets : &pii_pairs_iban;
        classify_sse2<scan_mode::pii>(q, masks.size(), masks.data(), secrets);
        for (std::size_t b = 0; b < masks.size(); ++b) {
            check("sse2", b * 64, masks[b], secrets);
        }
#if defined(BB_GUARDRAILS_AVX2)
        if (have_avx2()) {
            classify_avx2<scan_mode::pii>(q, masks.size(), masks.data(), pairs);
            for (std::size_t b = 0; b < masks.size(); ++b) {
                check("avx2", b * 64, masks[b], secrets);
            }
        }
#endif
        for_each_block<scan_mode::pii>(text, pairs, secrets, [&](std::size_t block, const block_masks& m) {
            check("chunks", block, m, secrets);
            return false;
        });
    }
    return out;
}

namespace {

// Bytes that end a URL's authority.
struct authority_end_table {
    bool on[256] = {};
    constexpr authority_end_table() {
        for (const char c : {'/', '?', '#', '"', '\'', '<', '>', '\\', ' ', '\t', '\r', '\n', ')'}) {
            on[static_cast<unsigned char>(c)] = true;
        }
    }
};
constexpr authority_end_table authority_end{};

// What browsers trim from the start of a URL (WHATWG URL: C0 controls and spaces).
bool url_lead(char c) { return static_cast<unsigned char>(c) <= ' '; }

// Whether what starts at `start` starts a quoted attribute value, after what browsers trim.
bool starts_quoted_value(std::string_view text, std::size_t start) {
    std::size_t q = start;
    while (q > 0 && url_lead(text[q - 1])) {
        --q;
    }
    return q > 0 && (text[q - 1] == '"' || text[q - 1] == '\'');
}

// Host of a URL whose authority starts at `from`: after any userinfo, before port/path.
// `authority_end_at`: where the authority ended in `text`.
std::string_view read_host(std::string_view text, std::size_t from, std::size_t* authority_end_at = nullptr) {
    // Browsers skip any run of '/' and '\\' after an http(s) scheme (`https:///evil.com/`,
    // `href="////evil.com"`, `https:\\evil.com`).
    while (from < text.size() && (text[from] == '/' || text[from] == '\\')) {
        ++from;
    }
    std::size_t end = from;
    const std::size_t stop = std::min(text.size(), from + 512);
    while (end < stop && !authority_end.on[static_cast<unsigned char>(text[end])]) {
        ++end;
    }
    if (authority_end_at != nullptr) {
        *authority_end_at = end;
    }
    if (end == stop && stop < text.size() && !authority_end.on[static_cast<unsigned char>(text[stop])]) {
        // An authority longer than any real one: the host may be after an '@' further on
        // (`https://example.com:<600 bytes>@evil.com/`). Not guessed: a host that is in no
        // allow list, so the link is reported.
        return "(an authority over 512 bytes)";
    }
    if (end < text.size() && (text[end] == '"' || text[end] == '\'' || text[end] == '<' || text[end] == ')')) {
        // Where text ends a link, a browser reading an attribute value does not: only
        // `/ ? # \\` end its authority, and what comes before an '@' is userinfo
        // (`href="https://example.com'@evil.com/"` goes to evil.com). An '@' before the
        // next blank, '>' or one of those: the host is not guessed at.
        const std::size_t look = std::min(text.size(), end + 256);
        for (std::size_t k = end; k < look; ++k) {
            const char ch = text[k];
            if (ch == '@') {
                return "(a host after a quote or bracket and an '@')";
            }
            if (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '>' || ch == '/' || ch == '?' || ch == '#' ||
                ch == '\\') {
                break;
            }
        }
    }
    std::string_view auth = text.substr(from, end - from);
    if (const auto at = auth.rfind('@'); at != std::string_view::npos) {
        auth.remove_prefix(at + 1);
    }
    if (!auth.empty() && auth.front() == '[') {
        return auth.substr(0, auth.find(']') + 1);
    }
    std::string_view host = auth.substr(0, auth.find(':'));
    // A bracket outside an IPv6 literal is no host byte to a browser (a URL with one does not
    // parse), and ends a link in text: Markdown's `[www.x.com](https://...)`.
    for (std::size_t k = 0; k < host.size(); ++k) {
        if (host[k] == '[' || host[k] == ']') {  // (find_first_of calls memchr per byte)
            host = host.substr(0, k);
            break;
        }
    }
    // Non-ASCII bytes and `, ; ! ? * | }` at its end are the text's punctuation or markup,
    // not the host's (a linkifier stops at the closing quote of `“https://example.com”`,
    // before the comma of `www.example.com, or`, and Markdown's `**www.x.com**`; a host that
    // really ends in one has no address).
    while (!host.empty() && (static_cast<unsigned char>(host.back()) >= 0x80 || host.back() == ',' ||
                             host.back() == ';' || host.back() == '!' || host.back() == '?' || host.back() == '*' ||
                             host.back() == '|' || host.back() == '}')) {
        host.remove_suffix(1);
    }
    return host;
}

// Host of the link starting at `start` whose authority starts at `from`. In a quoted
// attribute value (`href="..."`) a tab or line break does not end the URL: browsers delete
// them (`href="https://example.com&#9;.evil.com/"` goes to example.com.evil.com,
// `href="https://x.com:1&#9;@evil.com"` to evil.com); then the host is read from a copy
// without them. Elsewhere a line break ends a link.
std::string_view url_host(std::string_view text, std::size_t from, std::size_t start) {
    std::size_t end = 0;
    const std::string_view host = read_host(text, from, &end);
    if (!starts_quoted_value(text, start) || (!host.empty() && host.front() == '(') || end >= text.size() || !url_break(text[end])) {
        return host;
    }
    // The authority ended at a tab or line break: read it again from a copy without them, up
    // to 1 KiB of kept bytes (over 512 of authority is reported anyway) from no more than
    // 4 KiB of text; an authority still open where the copy stops is reported.
    thread_local std::string kept;
    kept.clear();
    std::size_t i = from;
    const std::size_t limit = std::min(text.size(), from + 4096);
    for (; i < limit && kept.size() < 1024; ++i) {
        if (!url_break(text[i])) {
            kept += text[i];
        }
    }
    std::size_t kept_end = 0;
    const std::string_view h = read_host(kept, 0, &kept_end);
    if (i < text.size() && kept_end >= kept.size()) {
        return "(an authority over 512 bytes)";
    }
    return h;
}

// Whether `www.` at `at` starts a link as mail clients link it: at the start of the text or
// after a blank, a bracket, a quote, `: , ;` or a non-ASCII character (not inside a URL's
// path or query, `/x/www.y` or `?u=www.y`, nor a word: `awww.`).
bool www_starts_link(std::string_view text, std::size_t at) {
    if (at == 0) {
        return true;
    }
    const auto b = static_cast<unsigned char>(text[at - 1]);
    return b >= 0x80 || b == ' ' || url_break(static_cast<char>(b)) || b == '(' || b == '[' || b == '<' || b == '>' ||
           b == '"' || b == '\'' || b == ':' || b == ',' || b == ';' || b == '*';
}

// Whether the word text[s, e) holds "unsubscribe" outside an HTML comment.
bool contains_unsubscribe(std::string_view text, std::size_t s, std::size_t e) {
    constexpr std::string_view needle = "unsubscribe";
    for (std::size_t i = s; i + needle.size() <= e; ++i) {
        if (to_lower(static_cast<unsigned char>(text[i])) == 'u' && iequals_lower(text.substr(i, needle.size()), needle) &&
            !in_html_comment(text, i)) {
            return true;
        }
    }
    return false;
}

// Whether the URL whose scheme starts at `start`, with host `host`, names an XML namespace or
// a document type rather than a link: the value of an `xmlns` or `xmlns:*` attribute, or a
// string in a `<!DOCTYPE ...>` declaration. XHTML email templates carry both
// (`<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"
// "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">`, `<html
// xmlns="http://www.w3.org/1999/xhtml">`), and no mail client shows either as a link. Only
// for W3C's own host: text dressed up as a declaration hides no other link.
bool w3c_declaration(std::string_view text, std::size_t start, std::string_view host) {
    if (!iequals_lower(host, "www.w3.org") && !iequals_lower(host, "w3.org")) {
        return false;
    }
    // An attribute value: `xmlns = "` or `xmlns:v='` right before the scheme.
    std::size_t i = start;
    if (i > 0 && (text[i - 1] == '"' || text[i - 1] == '\'')) {
        --i;
        while (i > 0 && (text[i - 1] == ' ' || text[i - 1] == '=' || url_break(text[i - 1]))) {
            --i;
        }
        std::size_t b = i;
        while (b > 0 && i - b < 64 &&
               (table.word[static_cast<unsigned char>(text[b - 1])] || text[b - 1] == ':' || text[b - 1] == '-')) {
            --b;
        }
        const std::string_view name = text.substr(b, i - b);
        if (iequals_lower(name.substr(0, 5), "xmlns") && (name.size() == 5 || name[5] == ':')) {
            return true;
        }
    }
    // Inside `<!DOCTYPE`: its '<' before the scheme with no '>' between (a declaration is short).
    for (std::size_t j = start; j > 0 && start - j < 512; --j) {
        if (text[j - 1] == '>') {
            return false;
        }
        if (text[j - 1] == '<') {
            return iequals_lower(text.substr(j, 8), "!doctype");
        }
    }
    return false;
}

std::string link_finding(std::string_view host) {
    return "link to a domain outside link_domains (" + std::string{host.substr(0, 253)} + ")";
}

// Whether the word ending at `end` is exactly `lower` (in any case). `scheme`: a URL's
// scheme, which only an ASCII letter, digit or '_' before it joins: clients link
// `“https://x”` and `网址：https://x` (a non-ASCII byte is a word byte to the term scan, not
// to a URL).
bool word_before_is(std::string_view text, std::size_t end, std::string_view lower, bool scheme = false) {
    const std::size_t k = lower.size();
    if (end < k || !iequals_lower(text.substr(end - k, k), lower)) {
        return false;
    }
    const auto b = end == k ? 0u : static_cast<unsigned char>(text[end - k - 1]);
    return end == k || !table.word[b] || (scheme && b >= 0x80);
}

// Between `href` and a scheme-relative URL: ` = " '`, and the C0 controls: HTML reads tab,
// line feed, form feed and carriage return around the '=' as blanks, and browsers trim any
// of them from the start of a URL (`href="&Tab;//host"`); `(` for CSS (`url(//host)`).
bool href_gap(char c) { return c == '=' || c == '"' || c == '\'' || c == '(' || url_lead(c); }

// Words after which a scheme-relative `//host` is a link: the attributes whose value a mail
// client follows or fetches (`<img src="//host/pixel.gif">`, `data-src`, `<td
// background=...>`, `<form action=...>`) and CSS's `url(//host/x.png)` and `@import
// "//host/x.css"`. (A `srcset`'s later URLs: url_list_entry.) Any case; at most 10 letters.
bool url_word(std::string_view w) {
    for (const std::string_view name : {"href", "src", "url", "srcset", "imagesrcset", "action", "formaction", "background", "poster",
                                        "lowsrc", "dynsrc", "import"}) {
        if (iequals_lower(w, name)) {
            return true;
        }
    }
    return false;
}

// The start of a url_word that ends at `end` (a whole word: no word byte before it), or npos.
std::size_t url_word_before(std::string_view text, std::size_t end) {
    std::size_t i = end;
    while (i > 0 && end - i < 11 &&
           (is_lower(static_cast<unsigned char>(text[i - 1])) || is_upper(static_cast<unsigned char>(text[i - 1])))) {
        --i;
    }
    if (i > 0 && table.word[static_cast<unsigned char>(text[i - 1])]) {
        return std::string_view::npos;
    }
    return url_word(text.substr(i, end - i)) ? i : std::string_view::npos;
}

// Whether the word before the '(' at `paren` is CSS's `image-set` (or a prefixed
// `-webkit-image-set`), in any case.
bool image_set_before(std::string_view text, std::size_t paren) {
    std::size_t i = paren;
    while (i > 0 && paren - i < 24 &&
           (is_lower(static_cast<unsigned char>(text[i - 1])) || is_upper(static_cast<unsigned char>(text[i - 1])) ||
            text[i - 1] == '-')) {
        --i;
    }
    const std::string_view w = text.substr(i, paren - i);
    constexpr std::string_view name = "-image-set";
    return iequals_lower(w, name.substr(1)) ||
           (w.size() > name.size() && iequals_lower(w.substr(w.size() - name.size()), name));
}

// HTML references to a quote (how a CSS string is written inside a `style="..."` attribute)
// and to a comma (a list's comma written so, `srcset="a.png 1x&#44; //host/b.png 2x"`, which
// the browser decodes before it reads the list). In any case: `&Quot;`, which browsers leave
// as written, is read as a quote too, the stricter way.
constexpr std::string_view quote_references[] = {"&quot;", "&apos;", "&#34;", "&#39;", "&#x22;", "&#x27;"};
constexpr std::string_view comma_references[] = {"&#44;", "&#x2c;", "&comma;"};

// The length of the one of `refs` that starts at `i`, else 0.
std::size_t reference_in_at(std::span<const std::string_view> refs, std::string_view text, std::size_t i) {
    if (text[i] != '&') {
        return 0;
    }
    for (const std::string_view r : refs) {
        if (iequals_lower(text.substr(i, r.size()), r)) {
            return r.size();
        }
    }
    return 0;
}

// The length of the one of `refs` that ends at `end` (text[end - 1] is its ';'), else 0.
std::size_t reference_in_before(std::span<const std::string_view> refs, std::string_view text, std::size_t end) {
    for (const std::string_view r : refs) {
        if (end >= r.size() && text[end - 1] == ';' && reference_in_at(refs, text, end - r.size()) == r.size()) {
            return r.size();
        }
    }
    return 0;
}

// The spans of a text that hold lists of URLs a mail client fetches one of: the value of a
// `srcset` (or `imagesrcset`) attribute (`srcset="//a/x.png 1x, //b/x.png 2x"`: to its
// closing quote, or unquoted to a blank or `>`), and what follows a CSS `image-set(` to where
// the CSS it is in surely ended: the furthest of the next `"`, `'` and `>` (of those that come
// again), and of the next `</style` when a `<style` came before with no `</style` since (the
// end of the text if none). A double-quoted attribute value ends at the first of
// these, a single-quoted one, an unquoted one or a tag, and a `<style>` element each at theirs,
// so the furthest is never before the real end, whatever the image-set is in; the context
// itself is not worked out (decoys: a `='` in a title or a CSS string, a `<style>` in a
// comment). Not to the image-set's own `)`: finding that means reading CSS strings, escapes
// and comments as a browser does. So a comma after an image-set in the same CSS, or in what
// follows up to that end, counts too (rare; on the strict side). Every `srcset=` and
// `image-set(` starts a span, one inside another's too (a stray `srcset="` in a comment or an
// alt text must not hide the real one): the spans are united. Read once per text, when a
// scheme-relative URL first follows a ','; one forward pass whose searches each only move
// forward, so linear.
class url_lists {
public:
    // Whether the byte at `pos` is inside a span.
    bool holds(std::string_view text, std::size_t pos) {
        if (!read_) {
            read(text);
        }
        const auto it = std::upper_bound(spans_.begin(), spans_.end(), pos,
                                         [](std::size_t p, const auto& span) { return p < span.first; });
        return it != spans_.begin() && pos < std::prev(it)->second;
    }

private:
    // The first position at or after `from` that `stop` accepts, remembered: a call with a
    // `from` between the last call's and its answer gives the same answer, so a search whose
    // `from` only grows reads each byte once (each search below has its own).
    template <class Stop>
    struct forward_search {
        std::size_t from_ = 0;
        std::size_t at = 0;
        bool sought = false;
        std::size_t next(std::string_view text, std::size_t from, Stop stop) {
            if (!sought || from < from_ || at < from) {
                from_ = from;
                at = from;
                while (at < text.size() && !stop(text, at)) {
                    ++at;
                }
                sought = true;
            }
            return at;
        }
    };

    // Whether an attribute name may start at `k` (after a blank, a quote, '/' as in
    // `<img/srcset=`, or '-' as in `data-srcset`, which counts as `data-src` does; not in a
    // URL's query: `?srcset=`).
    static bool attribute_start(std::string_view text, std::size_t k) {
        if (k == 0) {
            return true;
        }
        const char b = text[k - 1];
        return url_lead(b) || b == '"' || b == '\'' || b == '/' || b == '-';
    }

    void read(std::string_view text) {
        read_ = true;
        const std::size_t n = text.size();
        const auto is = [](char c) { return [c](std::string_view t, std::size_t k) { return t[k] == c; }; };
        const auto blank_or_gt = [](std::string_view t, std::size_t k) { return url_lead(t[k]) || t[k] == '>'; };
        // `</style` as the HTML tokenizer ends a style element: followed by a blank, '/' or '>'.
        const auto style_close = [](std::string_view t, std::size_t k) {
            return t[k] == '<' && iequals_lower(t.substr(k, 7), "</style") &&
                   (k + 7 == t.size() || url_lead(t[k + 7]) || t[k + 7] == '/' || t[k + 7] == '>');
        };
        // srcset values, and the ends image-set spans take the furthest of.
        forward_search<decltype(is('"'))> value_quote[2];
        forward_search<decltype(blank_or_gt)> value_blank;
        forward_search<decltype(is('"'))> css_quote[2];
        forward_search<decltype(is('>'))> css_gt;
        forward_search<decltype(style_close)> css_style_close;
        // Whether a style element may be open: a `<style` (not `<styles`) with no `</style`
        // since. (In an HTML style element's text nothing but its `</style` ends it, so a real one
        // is never taken for closed; a `<style` in a comment only widens what follows.)
        bool style_open = false;
        for (std::size_t i = 0; i < n; ++i) {
            const auto c = static_cast<unsigned char>(text[i]) | 0x20u;
            if (text[i] == '<' && iequals_lower(text.substr(i, 6), "<style") &&
                (i + 6 == n || !is_lower(static_cast<unsigned char>(text[i + 6]) | 0x20u))) {
                style_open = true;
                continue;
            }
            if (text[i] == '<' && style_close(text, i)) {
                style_open = false;
                continue;
            }
            if (c == 's' && iequals_lower(text.substr(i, 6), "srcset") &&
                (attribute_start(text, i) ||
                 (i >= 5 && iequals_lower(text.substr(i - 5, 5), "image") && attribute_start(text, i - 5)))) {
                std::size_t j = i + 6;
                while (j < n && url_lead(text[j])) {
                    ++j;
                }
                if (j == n || text[j] != '=') {
                    continue;
                }
                ++j;
                while (j < n && url_lead(text[j])) {
                    ++j;
                }
                if (j < n && (text[j] == '"' || text[j] == '\'')) {
                    const int kind = text[j] == '"' ? 0 : 1;
                    spans_.emplace_back(j + 1, value_quote[kind].next(text, j + 1, is(text[j])));
                } else {
                    spans_.emplace_back(j, value_blank.next(text, j, blank_or_gt));
                }
                continue;
            }
            if (c == 'i' && iequals_lower(text.substr(i, 10), "image-set(")) {
                const std::size_t j = i + 10;
                // (A quote or '>' that never comes again ends nothing the image-set can be in:
                // an attribute value or tag left open is no attribute or tag. A style element
                // left open runs to the end.)
                std::size_t end = 0;
                for (const std::size_t e : {css_quote[0].next(text, j, is('"')), css_quote[1].next(text, j, is('\'')),
                                            css_gt.next(text, j, is('>'))}) {
                    end = e < n ? std::max(end, e) : end;
                }
                if (style_open) {
                    end = std::max(end, css_style_close.next(text, j, style_close));
                }
                spans_.emplace_back(j, end == 0 ? n : end);
            }
        }
        // United: sorted by start, overlapping spans merged.
        std::sort(spans_.begin(), spans_.end());
        std::size_t out = 0;
        for (const auto& span : spans_) {
            if (out > 0 && span.first <= spans_[out - 1].second) {
                spans_[out - 1].second = std::max(spans_[out - 1].second, span.second);
            } else {
                spans_[out++] = span;
            }
        }
        spans_.resize(out);
    }

    std::vector<std::pair<std::size_t, std::size_t>> spans_;
    bool read_ = false;
};

// A scheme-relative URL in a list of URLs (url_lists) after the first, or the first in an
// `image-set(`: for the run of ` ="'(`, blanks and quote references starting at `q` before
// the URL's slashes, the ',' (or comma reference) or '(' that starts it (where the link is
// reported), else npos.
// (`srcset`'s first URL, and `url(//...)` anywhere, follow their url_word.)
std::size_t url_list_entry(std::string_view text, std::size_t q, url_lists& lists) {
    if (q > 0 && text[q - 1] == ',' && lists.holds(text, q - 1)) {
        return q - 1;
    }
    if (const std::size_t r = reference_in_before(comma_references, text, q); r != 0 && lists.holds(text, q - r)) {
        return q - r;
    }
    return text[q] == '(' && image_set_before(text, q) ? q : std::string_view::npos;
}

// For a slash or backslash at `i`: the position past the second one of a scheme-relative
// URL's two, with tabs and line breaks between them deleted as browsers do
// (`href="/&Tab;/host"`); npos when no second one follows.
std::size_t after_second_slash(std::string_view text, std::size_t i) {
    std::size_t j = i + 1;
    while (j < text.size() && url_break(text[j])) {
        ++j;
    }
    return j < text.size() && link_slash(static_cast<unsigned char>(text[j])) ? j + 1 : std::string_view::npos;
}

// A scheme cut by tabs or line breaks, which browsers delete from a URL: for the ':' at
// `colon`, the start of the `http` or `https` before it when its letters are cut by at least
// one (`href="ht&Tab;tps://host"`, `href="https&NewLine;://host"`) and it starts a quoted
// attribute value (starts_quoted_value, as url_host reads one); else npos. In text a cut word is no
// link.
std::size_t cut_scheme(std::string_view text, std::size_t colon) {
    char letters[5];
    std::size_t n = 0;
    std::size_t i = colon;
    while (i > 0) {
        const char b = text[i - 1];
        if (url_break(b)) {
            --i;
            continue;
        }
        const auto c = static_cast<unsigned char>(b);
        if (!is_upper(c) && !is_lower(c)) {
            break;
        }
        if (n == sizeof letters) {
            return std::string_view::npos;
        }
        letters[n++] = static_cast<char>(to_lower(c));
        --i;
    }
    const std::string_view word{letters, n};  // backwards
    if (word != "ptth" && word != "sptth") {
        return std::string_view::npos;
    }
    std::size_t start = i;
    while (url_break(text[start])) {
        ++start;  // the first letter
    }
    if (start + n == colon) {
        return std::string_view::npos;  // not cut: word_before_is reads it
    }
    return starts_quoted_value(text, start) ? start : std::string_view::npos;
}

// Whether the byte after `www.` at `dot` can start a host (`www.` alone is no link).
bool www_has_host(std::string_view text, std::size_t dot) {
    return dot + 1 < text.size() && text[dot + 1] != '.' && !authority_end.on[static_cast<unsigned char>(text[dot + 1])];
}

// The first link to a host outside link_domains, the way the word scan finds them: a word
// `http`/`https` followed by `:`, a word `www` followed by `.` (as www_starts_link), or a word
// url_word, a ',' inside a list of URLs (url_lists) or an `image-set(`'s '(' followed by a run
// of ` ="'(`, blanks and quote references, and two slashes or backslashes. Only the link marks
// of the text (for_each_link_mark) are looked at, and each looks back at most over its own
// run (the lists are read once for the text). Returns the offset of the http/www/url_word word
// or of the ',' or '(' (the links come out in text order: the words and runs of two links
// cannot overlap).
std::size_t first_bad_link(domain_memo& domains, std::string_view text, std::string_view& host) {
    std::size_t found = std::string_view::npos;
    url_lists lists;
    for_each_link_mark(text, [&](std::size_t c) {
        std::size_t s = std::string_view::npos;
        std::size_t from = 0;
        std::size_t start = 0;
        if (text[c] == ':') {
            if (word_before_is(text, c, "http", true)) {
                s = c - 4;
            } else if (word_before_is(text, c, "https", true)) {
                s = c - 5;
            } else {
                s = cut_scheme(text, c);
            }
            start = s;
            from = c + 1;
        } else if (text[c] == '.') {
            if (word_before_is(text, c, "www", true) && www_starts_link(text, c - 3) && www_has_host(text, c)) {
                s = c - 3;
            }
            start = from = s;
        } else {  // two slashes not after a ':' (a scheme's are read at its ':')
            from = after_second_slash(text, c);
            std::size_t q = c;
            while (q > 0) {
                if (href_gap(text[q - 1])) {
                    --q;
                } else if (const std::size_t r = reference_in_before(quote_references, text, q); r != 0) {
                    q -= r;  // `style="background:url(&quot;//host/x.png&quot;)"`
                } else {
                    break;
                }
            }
            if (from != std::string_view::npos) {
                s = url_word_before(text, q);
                if (s == std::string_view::npos) {
                    s = url_list_entry(text, q, lists);
                }
            }
            start = c;
        }
        if (s == std::string_view::npos) {
            return false;
        }
        const std::string_view h = url_host(text, from, start);
        if (h.empty() || domains.contains(h) || w3c_declaration(text, s, h)) {
            return false;
        }
        found = s;
        host = h;
        return true;
    });
    return found;
}

std::string term_finding(const term_matcher& m, std::int32_t t) {
    return "blocked term #" + std::to_string(t) + " (" + m.term(static_cast<std::size_t>(t)) + ")";
}

}  // namespace

bool scan_content_reference(const content_guard& g, std::string_view text, bool& unsubscribe, text_hit* hit) {
    const bool terms = !g.terms.empty();
    std::uint32_t state = 0;
    // Starts of the last words, for the offset of a multi-word term.
    std::size_t starts[16];
    std::size_t nwords = 0;
    char lower[64];
    if (!unsubscribe && !g.unsubscribe_words.empty() && has_unsubscribe_word(g.unsubscribe_words, text)) {
        unsubscribe = true;
    }
    // The first link to a host outside link_domains in a list of URLs (`srcset`'s URLs after
    // its first, CSS `image-set(`), read at each ',' and '(': reported before the findings of
    // the words from its ',' or '(' on.
    std::size_t list_link = std::string_view::npos;
    std::string list_host;  // (url_host's view of a host read without tabs is overwritten by the next)
    const auto skip_gap = [&](std::size_t j) {  // a run of ` ="'(`, blanks and quote references
        while (j < text.size()) {
            if (href_gap(text[j])) {
                ++j;
            } else if (const std::size_t r = reference_in_at(quote_references, text, j); r != 0) {
                j += r;
            } else {
                break;
            }
        }
        return j;
    };
    url_lists lists;
    // The end of the last gap run read and what follows it: a '(' inside it ends the same run.
    std::size_t gap_end = 0;
    std::size_t gap_after = std::string_view::npos;
    for (std::size_t i = 0; g.check_links && i < text.size() && list_link == std::string_view::npos; ++i) {
        std::size_t delimiter = 1;  // a ',', a '(', or a comma reference (`&#44;`)
        if (text[i] != ',' && text[i] != '(' && (delimiter = reference_in_at(comma_references, text, i)) == 0) {
            continue;
        }
        if (i >= gap_end) {
            gap_end = skip_gap(i + delimiter);
            gap_after = gap_end < text.size() && link_slash(static_cast<unsigned char>(text[gap_end]))
                            ? after_second_slash(text, gap_end)
                            : std::string_view::npos;
        }
        const std::size_t j = gap_end;
        const std::size_t after = gap_after;
        if (after == std::string_view::npos || (text[i] == '(' ? !image_set_before(text, i) : !lists.holds(text, i))) {
            continue;
        }
        const std::string_view host = url_host(text, after, j);
        if (!host.empty() && !g.link_domains.contains(host) && !w3c_declaration(text, i, host)) {
            list_link = i;
            list_host = host;
        }
    }
    const auto report_list_link = [&] {
        set_hit(hit, link_finding(list_host), list_link);
        return true;
    };
    const bool found = for_each_word(text, [&](std::size_t s, std::size_t e) {
        if (s >= list_link) {
            return report_list_link();
        }
        if (is_punctuation_reference(text, s, e)) {
            return false;  // `amp` of `&amp;`: read as the punctuation it shows
        }
        const std::size_t len = e - s;
        starts[nwords++ & 15] = s;
        const auto c0 = to_lower(static_cast<unsigned char>(text[s]));
        if (len >= 11 && !unsubscribe && contains_unsubscribe(text, s, e)) {
            unsubscribe = true;
        }
        if (g.check_links) {
            // A scheme cut by tabs or line breaks (cut_scheme), found at its first piece.
            std::size_t k = s;
            while (k < text.size() && (url_break(text[k]) || is_upper(static_cast<unsigned char>(text[k])) ||
                                       is_lower(static_cast<unsigned char>(text[k])))) {
                ++k;
            }
            if (k < text.size() && text[k] == ':' && cut_scheme(text, k) == s) {
                const std::string_view host = url_host(text, k + 1, s);
                if (!host.empty() && !g.link_domains.contains(host) && !w3c_declaration(text, s, host)) {
                    set_hit(hit, link_finding(host), s);
                    return true;
                }
            }
        }
        if (g.check_links && len >= 4 && e < text.size() && text[e] == ':') {
            // A word that is the scheme, or ends in it after a non-ASCII byte (`“https`).
            for (const std::string_view scheme : {std::string_view{"https"}, std::string_view{"http"}}) {
                const std::size_t k = scheme.size();
                if (len < k || !iequals_lower(text.substr(e - k, k), scheme) ||
                    (len > k && static_cast<unsigned char>(text[e - k - 1]) < 0x80)) {
                    continue;
                }
                const std::string_view host = url_host(text, e + 1, e - k);
                if (!host.empty() && !g.link_domains.contains(host) && !w3c_declaration(text, e - k, host)) {
                    set_hit(hit, link_finding(host), e - k);
                    return true;
                }
                break;
            }
        }
        if (g.check_links && len >= 3 && e < text.size() && text[e] == '.' && iequals_lower(text.substr(e - 3, 3), "www") &&
            (len == 3 ? www_starts_link(text, s) : static_cast<unsigned char>(text[e - 4]) >= 0x80) &&
            www_has_host(text, e)) {
            const std::string_view host = url_host(text, e - 3, e - 3);
            if (!host.empty() && !g.link_domains.contains(host)) {
                set_hit(hit, link_finding(host), e - 3);
                return true;
            }
        }
        if (g.check_links && url_word(text.substr(s, len))) {
            // href="//host/..." (scheme-relative; `\` reads as `/`); href="http..." is caught as a URL.
            const std::size_t i = skip_gap(e);
            const std::size_t after = i < text.size() && link_slash(static_cast<unsigned char>(text[i]))
                                          ? after_second_slash(text, i)
                                          : std::string_view::npos;
            if (after != std::string_view::npos) {
                const std::string_view host = url_host(text, after, i);
                if (!host.empty() && !g.link_domains.contains(host)) {
                    set_hit(hit, link_finding(host), s);
                    return true;
                }
            }
        }
        if (!terms) {
            return false;
        }
        std::uint32_t id = 0;
        if (len <= max_word_bytes && g.terms.maybe_word(len, c0, to_lower(static_cast<unsigned char>(text[e - 1])))) {
            detail::fold_word(reinterpret_cast<const unsigned char*>(text.data()) + s, len, lower);
            id = g.terms.word_id({lower, len});
        }
        if (id == 0 && state == 0) {
            return false;
        }
        state = g.terms.step(state, id);
        const std::int32_t t = g.terms.output(state);
        if (t >= 0) {
            const std::size_t k = g.terms.term_words(static_cast<std::size_t>(t));
            set_hit(hit, term_finding(g.terms, t), starts[(nwords - k) & 15]);
            return true;
        }
        return false;
    });
    return found || (list_link != std::string_view::npos && report_list_link());
}

// The same findings as scan_content_reference, found in three passes that each skip what
// they do not need: `unsubscribe` as a substring, links from the `//` pairs, and blocked
// terms from the words whose first two bytes start a term word (the others only reset the
// automaton, except the `amp` of `&amp;`, passed over as the reference does). The reference
// reports the finding of the first word that has one, a link before a term in the same word;
// so terms are looked for only in the words before the first link.
bool scan_content(const content_guard& g, std::string_view text, bool& unsubscribe, text_hit* hit, bool terms_only,
                  bool* split_by_tag) {
    if (!terms_only && !unsubscribe &&
        (has_unsubscribe(text) || (!g.unsubscribe_words.empty() && has_unsubscribe_word(g.unsubscribe_words, text)))) {
        unsubscribe = true;
    }
    std::string_view host;
    domain_memo link_domains{g.link_domains};
    const std::size_t link =
        g.check_links && !terms_only ? first_bad_link(link_domains, text, host) : std::string_view::npos;
    if (!g.terms.empty()) {
        const term_matcher& m = g.terms;
        const auto* p = reinterpret_cast<const unsigned char*>(text.data());
        const std::size_t n = text.size();
        std::uint32_t state = 0;
        // Starts of the last words that reached the automaton: a term's words are consecutive
        // words that all did, so its first is k back.
        std::size_t starts_ring[16];
        std::size_t nwords = 0;
        std::int32_t term = -1;
        std::size_t last_end = 0;  // of the last word that moved the automaton (or the `amp` of `&amp;` passed over)
        char lower[64];
        std::uint64_t carry = 0;
        std::size_t tags_read = 0;  // see word_joined_by_tags
        pair_tables starts_filter;
        static_assert(sizeof starts_filter == 64);
        std::memcpy(&starts_filter, m.start_nibbles().data(), sizeof starts_filter);
        // Inlined: the per-block call (saving and restoring a dozen registers each 64 bytes)
        // cost ~5% of the content guard once this loop grew past GCC's inlining limit.
        for_each_block<scan_mode::terms>(text, &starts_filter, false,
                                         [&](std::size_t block, const block_masks& mk) __attribute__((always_inline)) {
            if (split_by_tag != nullptr) {
                // A tag right after a word byte may join two pieces of one word (`fr<b>ee</b>`).
                std::uint64_t at = mk.lt & ((mk.word << 1) | carry);
                while (at != 0 && !*split_by_tag) [[unlikely]] {
                    const std::size_t i = block + static_cast<unsigned>(__builtin_ctzll(at));
                    at &= at - 1;
                    *split_by_tag = i < tags_read || word_joined_by_tags(text, i, tags_read);
                }
            }
            // Out of a match (state 0) only a term's first word matters: the prefilter's
            // candidates, then the exact pair check. In a match, the very next word.
            std::uint64_t rest = word_starts(mk, carry);
            const std::uint64_t cand = rest & mk.pairs;
            while (true) {
                const std::uint64_t next = state == 0 ? rest & cand : rest;
                if (next == 0) {
                    return false;
                }
                const auto b = static_cast<unsigned>(__builtin_ctzll(next));
                rest &= ~((2ull << b) - 1);  // this start and the ones before it are done
                const std::size_t s = block + b;
                if (s >= link) {
                    return true;  // the link comes first
                }
                if (state != 0 && split_by_tag != nullptr && !*split_by_tag &&
                    std::memchr(p + last_end, '<', s - last_end) != nullptr) [[unlikely]] {
                    *split_by_tag = true;  // a tag between the words of a match: find_content reads on without tags
                }
                if (s > 0 && p[s - 1] == '&') [[unlikely]] {
                    // The `amp` of `&amp;`: read as the punctuation it shows (in a match: passed
                    // over, not a reset; the gap check starts after it, else it reads back again
                    // and again).
                    if (const std::size_t e = word_end(text, block, b, mk.word); is_punctuation_reference(text, s, e)) {
                        last_end = state != 0 ? e : last_end;
                        continue;
                    }
                }
                const unsigned pair = p[s] | (s + 1 < n ? static_cast<unsigned>(p[s + 1]) << 8 : 0u);
                if (!(state == 0 ? m.maybe_term_start(pair) : m.maybe_word_start(pair))) {
                    state = 0;  // not a word of any term
                    continue;
                }
                const std::size_t e = word_end(text, block, b, mk.word);
                const std::size_t len = e - s;
                std::uint32_t id = 0;
                if (len <= max_word_bytes && m.maybe_word(len, to_lower(p[s]), to_lower(p[e - 1]))) {
                    detail::fold_word(p + s, len, lower);
                    id = m.word_id({lower, len});
                }
                if (id == 0) {
                    state = 0;
                    continue;
                }
                starts_ring[nwords++ & 15] = s;
                last_end = e;
                state = m.step(state, id);
                const std::int32_t t = m.output(state);
                if (t >= 0) {
                    term = t;
                    const std::size_t k = m.term_words(static_cast<std::size_t>(t));
                    set_hit(hit, term_finding(m, t), starts_ring[(nwords - k) & 15]);
                    return true;
                }
            }
        });
        if (term >= 0) {
            return true;
        }
    }
    if (link != std::string_view::npos) {
        set_hit(hit, link_finding(host), link);
        return true;
    }
    return false;
}

// ---------------------------------------------------------------------------------------
// Text as shown (see show()).

namespace {

constexpr int shown_keep = -1;
constexpr int shown_drop = -2;

// Punctuation and symbols that end a word as their ASCII kin do, though their bytes are
// not ASCII (the bytes as written read `“free` and `money”` as words, and `Don’t` as one
// word where a term says `don't`): typographic quotes and apostrophes, guillemets,
// inverted marks, the ellipsis, bullets, CJK and full-width punctuation, and pictographs
// (`🔥Free money`), which show as a space.
// Marks and signs written against a word (`Acme®`, `Acme™`, `€19`, `25°`): they end it as a
// space would. Apart from words (`© 2026`, `€ 5`) they hide nothing.
bool sign_mark(std::uint32_t cp) {
    switch (cp) {
        case 0xA2: case 0xA3: case 0xA4: case 0xA5: case 0xA7: case 0xA9: case 0xAE: case 0xB0: case 0xB6:
        case 0x2120: case 0x2122: return true;
        default: return cp >= 0x20A0 && cp <= 0x20C0;  // currency signs (€, ₹, ₽, ...)
    }
}

int typographic_as(std::uint32_t cp) {
    switch (cp) {
        case 0x2018: case 0x2019: case 0x201A: case 0x201B: case 0x2032: case 0x2035: return '\'';
        case 0x201C: case 0x201D: case 0x201E: case 0x201F: case 0x2033: case 0x2036:
        case 0xAB: case 0xBB: case 0x2039: case 0x203A:
        case 0x300C: case 0x300D: case 0x300E: case 0x300F: return '"';
        case 0xA1: return '!';
        case 0xBF: return '?';
        case 0x2026: case 0x3002: case 0xFF61: return '.';
        case 0x3001: case 0xFF64: return ',';
        case 0xB7: case 0x2022: case 0x2027: case 0x30FB: return ' ';
        default: break;
    }
    if (sign_mark(cp)) {
        return ' ';
    }
    if ((cp >= 0xFF01 && cp <= 0xFF0F) || (cp >= 0xFF1A && cp <= 0xFF20) || (cp >= 0xFF3B && cp <= 0xFF40) ||
        (cp >= 0xFF5B && cp <= 0xFF5E)) {
        return static_cast<int>(cp - 0xFEE0);  // full-width ASCII punctuation
    }
    if ((cp >= 0x2190 && cp <= 0x21FF) || (cp >= 0x2300 && cp <= 0x23FF) || (cp >= 0x25A0 && cp <= 0x27BF) ||
        (cp >= 0x2B00 && cp <= 0x2BFF) || (cp >= 0x1F000 && cp <= 0x1FAFF)) {
        return ' ';  // arrows, technical symbols, shapes, dingbats, emoji
    }
    return shown_keep;
}

// What a code point shows as when it can hide something from a scan of the bytes: a space,
// a dash, nothing (shown_drop), an ASCII digit or letter; shown_keep when it shows as itself.
int shown_as(std::uint32_t cp) {
    if (cp < 0x80) {
        return shown_keep;
    }
    if (cp == 0xA0 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x202F || cp == 0x205F || cp == 0x3000) {
        return ' ';
    }
    // Format and joining characters that show as nothing: soft hyphen, combining grapheme
    // joiner, Arabic letter mark, Mongolian vowel separator, zero-width space/joiners,
    // direction marks, embeddings and isolates, word joiner and invisible operators,
    // variation selectors, byte-order mark.
    if (cp == 0xAD || cp == 0x34F || cp == 0x61C || cp == 0x180E || (cp >= 0x200B && cp <= 0x200F) ||
        (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2060 && cp <= 0x2064) || (cp >= 0x2066 && cp <= 0x2069) ||
        (cp >= 0xFE00 && cp <= 0xFE0F) || cp == 0xFEFF) {
        return shown_drop;
    }
    if ((cp >= 0x2010 && cp <= 0x2015) || cp == 0x2043 || cp == 0x2212 || cp == 0xFE58 || cp == 0xFE63 ||
        cp == 0xFF0D) {
        return '-';
    }
    if (cp >= 0xFF10 && cp <= 0xFF19) {
        return static_cast<int>('0' + (cp - 0xFF10));
    }
    // Combining marks drawn over or after a character (strikethrough U+0336, the keycap
    // U+20E3 of `4️⃣`): the digit or letter under them is what is read.
    if ((cp >= 0x300 && cp <= 0x36F) || (cp >= 0x1AB0 && cp <= 0x1AFF) || (cp >= 0x1DC0 && cp <= 0x1DFF) ||
        (cp >= 0x20D0 && cp <= 0x20FF) || (cp >= 0xFE20 && cp <= 0xFE2F)) {
        return shown_drop;
    }
    // Decimal digits of other scripts (Unicode Nd, each block of ten from its zero) and the
    // mathematical digits (bold, double-struck, sans-serif, monospace: U+1D7CE-U+1D7FF).
    static constexpr std::uint32_t zeros[] = {
        0x660,  0x6F0,  0x7C0,  0x966,  0x9E6,  0xA66,  0xAE6,  0xB66,  0xBE6,  0xC66,  0xCE6,  0xD66,
        0xDE6,  0xE50,  0xED0,  0xF20,  0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90,
        0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0x1FBF0};
    for (const std::uint32_t z : zeros) {
        if (cp >= z && cp < z + 10) {
            return static_cast<int>('0' + (cp - z));
        }
    }
    if (cp >= 0x1D7CE && cp <= 0x1D7FF) {
        return static_cast<int>('0' + (cp - 0x1D7CE) % 10);
    }
    if (cp >= 0xFF21 && cp <= 0xFF3A) {
        return static_cast<int>('A' + (cp - 0xFF21));
    }
    if (cp >= 0xFF41 && cp <= 0xFF5A) {
        return static_cast<int>('a' + (cp - 0xFF41));
    }
    return typographic_as(cp);
}


// Punctuation and symbols a newsletter writes as numeric references (&#8217; &#169; ...):
// they show as themselves and hide nothing, so they alone do not make a text read again.
bool plain_symbol(std::uint32_t cp) {
    return (cp >= 0xA1 && cp <= 0xBF) || cp == 0xD7 || cp == 0xF7 || (cp >= 0x2016 && cp <= 0x205E) ||
           cp == 0x2122 || (cp >= 0x20A0 && cp <= 0x20C0);
}


// Numeric references 128-159 are read as windows-1252, as browsers do (&#150; is an en dash).
constexpr std::uint16_t windows_1252[32] = {
    0x20AC, 0x81,   0x201A, 0x192,  0x201E, 0x2026, 0x2020, 0x2021, 0x2C6,  0x2030, 0x160,
    0x2039, 0x152,  0x8D,   0x17D,  0x8F,   0x90,   0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x2DC,  0x2122, 0x161,  0x203A, 0x153,  0x9D,   0x17E,  0x178};

struct named_reference {
    std::string_view name;
    std::uint32_t cp;
    bool bare;  // read without its ';' too (HTML's legacy references)
};
// The named references that can hide something, and the five of ASCII punctuation, which
// are decoded with them (the content scanners pass over them as written: is_punctuation_reference).
// Names are case-sensitive, as in HTML.
constexpr named_reference named_references[] = {
    {"amp", '&', true},
    {"lt", '<', true},
    {"gt", '>', true},
    {"quot", '"', true},
    {"apos", '\'', false},
    {"nbsp", 0xA0, true},
    {"shy", 0xAD, true},
    {"NonBreakingSpace", 0xA0, false},
    {"ensp", 0x2002, false},
    {"emsp", 0x2003, false},
    {"emsp13", 0x2004, false},
    {"emsp14", 0x2005, false},
    {"numsp", 0x2007, false},
    {"puncsp", 0x2008, false},
    {"thinsp", 0x2009, false},
    {"ThinSpace", 0x2009, false},
    {"hairsp", 0x200A, false},
    {"VeryThinSpace", 0x200A, false},
    {"MediumSpace", 0x205F, false},
    {"ZeroWidthSpace", 0x200B, false},
    {"NegativeVeryThinSpace", 0x200B, false},
    {"NegativeThinSpace", 0x200B, false},
    {"NegativeMediumSpace", 0x200B, false},
    {"NegativeThickSpace", 0x200B, false},
    {"zwnj", 0x200C, false},
    {"zwj", 0x200D, false},
    {"lrm", 0x200E, false},
    {"rlm", 0x200F, false},
    {"NoBreak", 0x2060, false},
    {"af", 0x2061, false},
    {"ApplyFunction", 0x2061, false},
    {"it", 0x2062, false},
    {"InvisibleTimes", 0x2062, false},
    {"ic", 0x2063, false},
    {"InvisibleComma", 0x2063, false},
    {"hyphen", 0x2010, false},
    {"dash", 0x2010, false},
    {"ndash", 0x2013, false},
    {"mdash", 0x2014, false},
    {"horbar", 0x2015, false},
    {"minus", 0x2212, false},
    // ASCII punctuation and white space by other names (the five above are read as
    // punctuation by the scanners themselves; these are not, so they hide a word break).
    {"AMP", '&', true},
    {"LT", '<', true},
    {"GT", '>', true},
    {"QUOT", '"', true},
    {"Tab", '\t', false},
    {"NewLine", '\n', false},
    {"excl", '!', false},
    {"num", '#', false},
    {"dollar", '$', false},
    {"percnt", '%', false},
    {"lpar", '(', false},
    {"rpar", ')', false},
    {"ast", '*', false},
    {"plus", '+', false},
    {"comma", ',', false},
    {"colon", ':', false},
    {"semi", ';', false},
    {"equals", '=', false},
    {"quest", '?', false},
    {"sol", '/', false},
    {"bsol", '\\', false},
    {"period", '.', false},
    {"commat", '@', false},
    {"lowbar", '_', false},
    {"lsqb", '[', false},
    {"rsqb", ']', false},
    {"lcub", '{', false},
    {"rcub", '}', false},
    {"verbar", '|', false},
    {"grave", '`', false},
    {"Hat", '^', false},
};
constexpr std::size_t ascii_punctuation_references = 5;  // the first five

// First letters of the names: most '&' (a lone one, `&#`) are rejected by one test.
struct name_starts {
    std::uint64_t bits[2] = {};
    constexpr name_starts() {
        for (const auto& r : named_references) {
            const auto c = static_cast<unsigned char>(r.name[0]);
            bits[c >> 6] |= std::uint64_t{1} << (c & 63);
        }
    }
    constexpr bool has(unsigned char c) const { return c < 128 && (bits[c >> 6] >> (c & 63) & 1) != 0; }
};
constexpr name_starts reference_name_starts{};

// The character reference at t[i] == '&': its code point and length, 0 when there is none.
// `punctuation`: one of the five named references of ASCII punctuation.
std::size_t reference_at(std::string_view t, std::size_t i, std::uint32_t& cp, bool& punctuation) {
    punctuation = false;
    std::size_t j = i + 1;
    if (j >= t.size()) {
        return 0;
    }
    if (t[j] == '#') {
        // Numeric, as browsers read it: any number of digits, the ';' optional; zero, a
        // surrogate or past U+10FFFF is U+FFFD, 128-159 windows-1252.
        const bool hex = j + 1 < t.size() && (t[j + 1] == 'x' || t[j + 1] == 'X');
        j += hex ? 2 : 1;
        const std::size_t digits = j;
        std::uint32_t v = 0;
        for (; j < t.size(); ++j) {
            const int d = hex ? hex_digit_value(t[j]) : (is_digit(static_cast<unsigned char>(t[j])) ? t[j] - '0' : -1);
            if (d < 0) {
                break;
            }
            v = std::min<std::uint32_t>(v * (hex ? 16 : 10) + static_cast<std::uint32_t>(d), 0x110000);
        }
        if (j == digits) {
            return 0;
        }
        if (j < t.size() && t[j] == ';') {
            ++j;
        }
        cp = v == 0 || v > 0x10FFFF || (v >= 0xD800 && v < 0xE000) ? 0xFFFD : v;
        if (cp >= 0x80 && cp <= 0x9F) {
            cp = windows_1252[cp - 0x80];
        }
        return j - i;
    }
    if (!reference_name_starts.has(static_cast<unsigned char>(t[j]))) {
        return 0;
    }
    const char* rest = t.data() + j;
    const std::size_t left = t.size() - j;
    for (std::size_t k = 0; k < std::size(named_references); ++k) {
        const named_reference& r = named_references[k];
        if (r.name[0] != rest[0] || left < r.name.size() || std::memcmp(rest, r.name.data(), r.name.size()) != 0) {
            continue;
        }
        const bool semicolon = left > r.name.size() && rest[r.name.size()] == ';';
        if (!semicolon && !r.bare) {
            continue;
        }
        cp = r.cp;
        punctuation = k < ascii_punctuation_references;
        return 1 + r.name.size() + (semicolon ? 1 : 0);
    }
    return 0;
}

#if defined(BB_GUARDRAILS_AVX2)
// The first byte at or after i that is '&', not ASCII or (Tags) '<', 64 bytes a step; n - i >= 64.
template <bool Tags>
__attribute__((target("avx2"))) std::size_t next_candidate_avx2(const unsigned char* p, std::size_t i, std::size_t n) {
    const __m256i amp = _mm256_set1_epi8('&');
    const __m256i lt = _mm256_set1_epi8('<');
    for (; i + 64 <= n; i += 64) {
        const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32));
        __m256i ma = _mm256_or_si256(a, _mm256_cmpeq_epi8(a, amp));
        __m256i mb = _mm256_or_si256(b, _mm256_cmpeq_epi8(b, amp));
        if constexpr (Tags) {
            ma = _mm256_or_si256(ma, _mm256_cmpeq_epi8(a, lt));
            mb = _mm256_or_si256(mb, _mm256_cmpeq_epi8(b, lt));
        }
        if (!_mm256_testz_si256(_mm256_or_si256(ma, mb), _mm256_set1_epi8(static_cast<char>(0x80)))) {
            const std::uint64_t m = static_cast<std::uint32_t>(_mm256_movemask_epi8(ma)) |
                                    static_cast<std::uint64_t>(static_cast<std::uint32_t>(_mm256_movemask_epi8(mb))) << 32;
            return i + static_cast<std::size_t>(__builtin_ctzll(m));
        }
    }
    return i;
}
#endif

// The first byte at or after i that is '&', not ASCII or (Tags) '<' (or t.size()): the only
// bytes where a text can show something other than what is written.
template <bool Tags = false>
std::size_t next_candidate(std::string_view t, std::size_t i) {
    const auto* p = reinterpret_cast<const unsigned char*>(t.data());
    const std::size_t n = t.size();
#if defined(BB_GUARDRAILS_AVX2)
    if (n - i >= 64 && have_avx2()) {
        i = next_candidate_avx2<Tags>(p, i, n);
        if (i + 64 <= n) {
            return i;
        }
    }
#endif
#if defined(__SSE2__)
    const __m128i amp = _mm_set1_epi8('&');
    const __m128i lt = _mm_set1_epi8('<');
    for (; i + 16 <= n; i += 16) {
        const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
        __m128i m = _mm_or_si128(c, _mm_cmpeq_epi8(c, amp));
        if constexpr (Tags) {
            m = _mm_or_si128(m, _mm_cmpeq_epi8(c, lt));
        }
        if (const int bits = _mm_movemask_epi8(m); bits != 0) {
            return i + static_cast<std::size_t>(__builtin_ctz(static_cast<unsigned>(bits)));
        }
    }
#endif
    while (i < n && p[i] != '&' && p[i] < 0x80 && (!Tags || p[i] != '<')) {
        ++i;
    }
    return i;
}

// Tags (show with tags): elements a mail client shows inside a line of text, which join the
// words around them (`fr<b>ee</b>` is "free"); any other tag breaks a word, as its line or cell
// break does. Comments show as nothing.
bool inline_element(std::string_view n) {
    if (n.empty()) {
        return false;
    }
    switch (n[0]) {  // by first letter: the scanners ask for every tag after a word
        case 'a': return n == "a" || n == "abbr" || n == "acronym";
        case 'b': return n == "b" || n == "bdi" || n == "bdo" || n == "big";
        case 'c': return n == "cite" || n == "code";
        case 'd': return n == "data" || n == "del" || n == "dfn";
        case 'e': return n == "em";
        case 'f': return n == "font";
        case 'i': return n == "i" || n == "ins";
        case 'k': return n == "kbd";
        case 'm': return n == "mark";
        case 'n': return n == "nobr";
        case 'q': return n == "q";
        case 's':
            return n == "s" || n == "samp" || n == "small" || n == "span" || n == "strike" || n == "strong" ||
                   n == "sub" || n == "sup";
        case 't': return n == "time" || n == "tt";
        case 'u': return n == "u";
        case 'v': return n == "var";
        case 'w': return n == "wbr";
        default: return false;
    }
}

// The tag at t[i] == '<' (a name starting with a letter, `</`, `<!`, `<?`, through the first
// '>' outside quoted attribute values; a comment through `-->`): its length and whether it
// shows as a break (`space`; else as nothing); 0 if none. A tag, an attribute value or a
// comment left open takes the rest of the text, as a browser does (so no byte is looked at
// by two tags: linear).
std::size_t tag_at(std::string_view t, std::size_t i, bool& space) {
    const std::size_t n = t.size();
    if (i + 1 >= n) {
        return 0;
    }
    const auto letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
    const char c1 = t[i + 1];
    if (i + 4 <= n && std::memcmp(t.data() + i, "<!--", 4) == 0) {
        space = false;
        if (i + 4 < n && t[i + 4] == '>') {
            return 5;  // <!--> : an empty comment
        }
        if (i + 5 < n && t[i + 4] == '-' && t[i + 5] == '>') {
            return 6;  // <!--->
        }
        const std::size_t close = t.find("-->", i + 4);
        return close == std::string_view::npos ? n - i : close + 3 - i;
    }
    if (!letter(c1) && !(c1 == '/' && i + 2 < n && letter(t[i + 2])) && c1 != '!' && c1 != '?') {
        return 0;
    }
    std::size_t end = 0;
    for (std::size_t pos = i + 1;;) {
        const std::size_t q = t.find_first_of("\"'>", pos);
        if (q == std::string_view::npos) {
            end = n - 1;
            break;
        }
        if (t[q] == '>') {
            end = q;
            break;
        }
        const std::size_t close = t.find(t[q], q + 1);
        if (close == std::string_view::npos) {
            end = n - 1;
            break;
        }
        pos = close + 1;
    }
    std::size_t k = i + (c1 == '/' ? 2 : 1);
    char name[8];
    std::size_t len = 0;
    for (; k <= end && (letter(t[k]) || (t[k] >= '0' && t[k] <= '9')); ++k) {  // t[end]: '>' or the last byte
        if (len < sizeof name) {
            name[len] = static_cast<char>(t[k] | 0x20);
        }
        ++len;
    }
    space = len > sizeof name || !inline_element({name, len});
    return end + 1 - i;
}

std::size_t after_joining_tags(std::string_view t, std::size_t i, std::size_t& read) {
    bool any = false;
    while (i < t.size() && t[i] == '<') {
        bool space = false;
        const std::size_t len = tag_at(t, i, space);
        if (len == 0) {
            break;
        }
        read = i + len;
        if (space) {
            return std::string_view::npos;
        }
        any = true;
        i += len;
    }
    return any ? i : std::string_view::npos;
}

// What the character at t[i] (a candidate) shows as: its length in t (0: shown as written)
// and what it shows as: shown_as()'s value, or shown_keep with the code point it stands for.
// Unless `all`, only what hides something: not one of the five references of ASCII
// punctuation written with its ';' (the scanners read it as the punctuation), nor a numeric
// reference of a plain symbol between two non-word bytes (`&#169; 2026`; in `don&#8217;t` it
// is part of a word, which the bytes as written split in three).
struct shown_char {
    std::size_t len = 0;
    std::uint32_t cp = 0;
    int as = shown_keep;
    std::size_t shown_length() const { return as >= 0 ? 1 : as == shown_drop ? 0 : utf8_length(cp); }
};
inline shown_char shown_at(std::string_view t, std::size_t i, bool all) {
    shown_char s;
    if (t[i] == '&') {
        bool punctuation = false;
        s.len = reference_at(t, i, s.cp, punctuation);
        if (s.len != 0) {
            s.as = shown_as(s.cp);
            if (!all) {
                const bool semicolon = t[i + s.len - 1] == ';';
                const bool apart = (i == 0 || !table.word[static_cast<unsigned char>(t[i - 1])]) &&
                                   (i + s.len == t.size() || !table.word[static_cast<unsigned char>(t[i + s.len])]);
                // (A typographic quote's reference too: `&#8220; x`. Written as UTF-8 it is read
                // again wherever it is: its bytes are word bytes to the scan as written.)
                if ((punctuation && semicolon) ||
                    ((s.as == shown_keep || typographic_as(s.cp) != shown_keep) && plain_symbol(s.cp) && apart)) {
                    s.len = 0;
                }
            }
        }
    } else if ((s.len = utf8_at(t, i, s.cp)) != 0) {
        s.as = shown_as(s.cp);
        if (s.as == shown_keep ||
            (!all && sign_mark(s.cp) && (i == 0 || !table.word[static_cast<unsigned char>(t[i - 1])]) &&
             (i + s.len == t.size() || !table.word[static_cast<unsigned char>(t[i + s.len])]))) {
            s.len = 0;
        }
    }
    return s;
}

// Calls piece(written_at, written_len, c) along `text`: c null for a run shown as written,
// else the character (or, with Tags, the tag) that shows otherwise. Stops when piece returns
// true.
template <bool Tags, class F>
void for_each_shown(std::string_view text, F&& piece) {
    std::size_t i = 0;
    while (i < text.size()) {
        const std::size_t next = next_candidate<Tags>(text, i);
        if (next > i && piece(i, next - i, static_cast<const shown_char*>(nullptr))) {
            return;
        }
        i = next;
        if (i >= text.size()) {
            return;
        }
        shown_char c;
        if constexpr (Tags) {
            bool space = false;
            if (text[i] == '<' && (c.len = tag_at(text, i, space)) != 0) {
                // A break: it separates words and lines, never the digit groups of a number
                // (a form feed, not a blank: `<li>4111</li><li>1111</li>` is two numbers).
                c.as = space ? '\f' : shown_drop;
                if (piece(i, c.len, &c)) {
                    return;
                }
                i += c.len;
                continue;
            }
        }
        c = shown_at(text, i, true);
        if (c.len == 0) {
            if (piece(i, 1, static_cast<const shown_char*>(nullptr))) {
                return;
            }
            ++i;
            continue;
        }
        if (piece(i, c.len, &c)) {
            return;
        }
        i += c.len;
    }
}

// Whether one of the 8 bytes is '&' or not ASCII.
inline bool amp_or_high8(std::uint64_t x) {
    constexpr std::uint64_t ones = 0x0101010101010101ull;
    const std::uint64_t y = x ^ (ones * '&');  // a zero byte where x has '&'
    return ((x | ((y - ones) & ~y)) & (ones * 0x80)) != 0;
}

inline std::uint64_t load8(const char* p) {
    std::uint64_t x;
    std::memcpy(&x, p, 8);
    return x;
}

// Whether a text shorter than 64 bytes has a byte that is '&' or not ASCII: the test every
// short scanned text pays (most have none), so whole words and overlapping loads, no loop
// over single bytes (next_candidate does longer texts).
bool short_text_has_candidate(std::string_view t) {
    const char* p = t.data();
    const std::size_t n = t.size();
    if (n >= 8) {
        for (std::size_t i = 0; i + 8 <= n; i += 8) {
            if (amp_or_high8(load8(p + i))) {
                return true;
            }
        }
        return amp_or_high8(load8(p + n - 8));
    }
    if (n >= 4) {
        std::uint32_t a;
        std::uint32_t b;
        std::memcpy(&a, p, 4);
        std::memcpy(&b, p + n - 4, 4);
        return amp_or_high8(std::uint64_t{a} << 32 | b);
    }
    for (std::size_t i = 0; i < n; ++i) {
        if (p[i] == '&' || static_cast<unsigned char>(p[i]) >= 0x80) {
            return true;
        }
    }
    return false;
}

}  // namespace

bool is_punctuation_reference(std::string_view text, std::size_t s, std::size_t e) {
    if (s == 0 || text[s - 1] != '&' || e >= text.size() || text[e] != ';') {
        return false;
    }
    const std::string_view w = text.substr(s, e - s);
    return std::any_of(named_references, named_references + ascii_punctuation_references,
                       [&](const named_reference& r) { return r.name == w; });
}

bool hides_characters(std::string_view text) {
    if (text.size() < 64 && !short_text_has_candidate(text)) {
        return false;
    }
    for (std::size_t i = next_candidate(text, 0); i < text.size(); i = next_candidate(text, i + 1)) {
        if (i + 5 <= text.size() && std::memcmp(text.data() + i, "&amp;", 5) == 0) {
            i += 4;  // the most common by far (every `&` of a URL in HTML), and it hides nothing
            continue;
        }
        if (shown_at(text, i, false).len != 0) {
            return true;
        }
    }
    return false;
}

namespace {

template <bool Tags>
void show_as(std::string_view text, std::string& out) {
    out.clear();
    out.reserve(text.size());
    for_each_shown<Tags>(text, [&](std::size_t at, std::size_t len, const shown_char* c) {
        if (c == nullptr) {
            out.append(text, at, len);
        } else if (c->as >= 0) {
            out += static_cast<char>(c->as);
        } else if (c->as == shown_keep) {
            char buf[4];
            char* e = buf;
            put_utf8(c->cp, e);
            out.append(buf, static_cast<std::size_t>(e - buf));
        }
        return false;
    });
}

template <bool Tags>
std::size_t written_offset_as(std::string_view text, std::size_t shown) {
    std::size_t before = 0;  // shown bytes before the piece
    std::size_t found = text.size();
    for_each_shown<Tags>(text, [&](std::size_t at, std::size_t len, const shown_char* c) {
        const std::size_t n = c ? c->shown_length() : len;
        if (shown < before + n) {
            found = c ? at : at + (shown - before);
            return true;
        }
        before += n;
        return false;
    });
    return found;
}

}  // namespace

void show(std::string_view text, std::string& out, bool tags) {
    tags ? show_as<true>(text, out) : show_as<false>(text, out);
}

std::size_t written_offset(std::string_view text, std::size_t shown, bool tags) {
    return tags ? written_offset_as<true>(text, shown) : written_offset_as<false>(text, shown);
}

namespace {

// scan over show(text, tags) (the caller decided it may find more than the text as written).
template <class Scan>
bool scan_shown(std::string_view text, bool tags, text_hit* hit, Scan&& scan) {
    thread_local std::string shown;
    show(text, shown, tags);
    text_hit h;
    const bool found = scan(std::string_view{shown}, &h);
    if (found && hit) {
        hit->what = std::move(h.what) + (tags ? " (as shown, without its HTML tags)"
                                              : " (written with HTML character references or invisible or "
                                                "look-alike characters)");
        hit->offset = written_offset(text, h.offset, tags);
    }
    if (shown.capacity() > (std::size_t{1} << 20)) {  // one large text does not pin its memory
        shown = {};
    }
    return found;
}

}  // namespace

bool find_pii(std::uint8_t kinds, std::string_view text, text_hit* hit) {
    bool split = false;  // a tag may join two digit groups of one number
    if (scan_pii(kinds, text, hit, &split)) {
        return true;
    }
    if (hides_characters(text) && scan_shown(text, false, hit, [&](std::string_view shown, text_hit* h) {
            return scan_pii(kinds, shown, h, &split);
        })) {
        return true;
    }
    // `4111 <b>1111</b> 1111 1111`: again over the text without its tags, only when a tag
    // met a number (most HTML never has one inside a number, and reading it again costs).
    return split && scan_shown(text, true, hit, [&](std::string_view shown, text_hit* h) {
               return scan_pii(kinds, shown, h);
           });
}

// By hand rather than with iconv (which rules/mime.cpp uses for labelled parts): a file is
// read whatever it holds, so an unpaired surrogate becomes U+FFFD instead of failing the
// whole conversion, and find_pii_in_file maps offsets back knowing each code unit's place.
bool utf16_text(std::string_view file, std::string& out) {
    if (file.size() < 4) {
        return false;
    }
    const auto b = [&](std::size_t i) { return static_cast<unsigned char>(file[i]); };
    bool le = true;
    std::size_t from = 0;
    if (b(0) == 0xFF && b(1) == 0xFE && !(b(2) == 0 && b(3) == 0)) {  // (FF FE 00 00 is UTF-32's)
        from = 2;
    } else if (b(0) == 0xFE && b(1) == 0xFF) {
        le = false;
        from = 2;
    } else {
        // No mark: ASCII text, one byte of each pair NUL (and never the other), over the
        // first 64 code units. A binary file has NULs in no such rhythm.
        const std::size_t units = std::min<std::size_t>(file.size() / 2, 64);
        if (units < 4) {
            return false;
        }
        const bool big = b(0) == 0 && b(1) != 0;
        for (std::size_t u = 0; u < units; ++u) {
            const unsigned char hi = b(2 * u + (big ? 0 : 1));
            const unsigned char lo = b(2 * u + (big ? 1 : 0));
            if (hi != 0 || lo == 0 || lo >= 0x80) {
                return false;
            }
        }
        le = !big;
    }
    out.clear();
    out.resize((file.size() - from) / 2 * 3);  // a code unit is at most 3 bytes in UTF-8 (a pair, 4)
    char* w = out.data();
    const auto unit = [&](std::size_t i) -> std::uint32_t {
        return le ? b(i) | (b(i + 1) << 8) : (b(i) << 8) | b(i + 1);
    };
    for (std::size_t i = from; i + 1 < file.size(); i += 2) {
        std::uint32_t cp = unit(i);
        if (high_surrogate(cp) && i + 3 < file.size() && low_surrogate(unit(i + 2))) {
            cp = from_surrogates(cp, unit(i + 2));
            i += 2;
        } else if (high_surrogate(cp) || low_surrogate(cp)) {
            cp = 0xFFFD;
        }
        put_utf8(cp, w);
    }
    out.resize(static_cast<std::size_t>(w - out.data()));
    return true;
}

bool find_pii_in_file(std::uint8_t kinds, std::string_view file, text_hit* hit) {
    // The bytes first, whatever the file looks like: a mark or NULs in front must not hide
    // the ASCII after them from the scan that found it before (nor from a reader that skips
    // them).
    if (find_pii(kinds, file, hit)) {
        return true;
    }
    std::string text;
    if (!utf16_text(file, text)) {
        return false;
    }
    text_hit h;
    if (!find_pii(kinds, text, &h)) {
        return false;
    }
    if (hit) {
        // The offset in the file: two bytes a code point, four for one above U+FFFF.
        std::size_t at = file.starts_with("\xFF\xFE") || file.starts_with("\xFE\xFF") ? 2 : 0;  // the mark
        for (std::size_t i = 0; i < h.offset && i < text.size(); ++i) {
            const auto c = static_cast<unsigned char>(text[i]);
            at += (c & 0xC0) == 0x80 ? 0 : c >= 0xF0 ? 4 : 2;
        }
        hit->what = h.what + " (in UTF-16 text)";
        hit->offset = at;
    }
    return true;
}

bool find_content(const content_guard& g, std::string_view text, bool& unsubscribe, text_hit* hit) {
    bool split = false;  // a partial match of a term met a tag
    // `無料` in `今すぐ無料でお試し`: Chinese, Japanese and Thai put no spaces between words.
    auto unspaced = [&g](std::string_view t, text_hit* h) {
        std::size_t at = 0;
        if (const auto k = g.terms.has_unspaced() ? g.terms.find_unspaced(t, &at) : -1; k >= 0) {
            h->what = term_finding(g.terms, k);
            h->offset = at;
            return true;
        }
        return false;
    };
    if (scan_content(g, text, unsubscribe, hit, false, &split) || unspaced(text, hit)) {
        return true;
    }
    if (hides_characters(text) && scan_shown(text, false, hit, [&](std::string_view shown, text_hit* h) {
            return scan_content(g, shown, unsubscribe, h, false, &split) || unspaced(shown, h);
        })) {
        return true;
    }
    // A term whose words are split by tags (`<b>free</b> <i>money</i>`): the terms again over
    // the text without its tags (its links and unsubscribe were read above, attributes
    // included). Only when a match met a tag: most HTML never does, and reading it again costs.
    // (For unspaced terms only where tags may split one: `無<b>料</b>`.)
    const bool unspaced_split =
        g.terms.has_unspaced() && text.find('<') != std::string_view::npos &&
        (text.find("&#") != std::string_view::npos ||
         std::any_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) >= 0xE0; }));
    return (split || unspaced_split) && scan_shown(text, true, hit, [&](std::string_view shown, text_hit* h) {
               bool ignored = true;
               return (split && scan_content(g, shown, ignored, h, true)) || unspaced(shown, h);
           });
}

}  // namespace detail
}  // namespace bb::rules
