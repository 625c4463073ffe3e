// The guardrails' text scanners and building blocks: Luhn, IBAN mod-97, SSN ranges,
// SHA-256, domain and suppression sets, the word-level Aho-Corasick term matcher, and the
// word-by-word PII and content scanners. Everything here is linear in its input: each
// scanner visits every word once, and what it does per word is bounded by a constant
// (a card candidate looks back at most 19 digit groups, an IBAN forward at most 34
// characters, a private key header at most 64 bytes).

#include "rules/guardrails_scan.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace bb::rules {

namespace {

constexpr bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
constexpr bool is_upper(unsigned char c) { return c >= 'A' && c <= 'Z'; }
constexpr bool is_lower(unsigned char c) { return c >= 'a' && c <= 'z'; }
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

// Calls f(start, end) for every word of text in order; stops when f returns true.
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

// IBAN lengths of the countries we know (SWIFT IBAN registry); others: 15-34.
int iban_length(char a, char b) {
    static constexpr struct {
        char cc[3];
        int len;
    } known[] = {{"AD", 24}, {"AE", 23}, {"AT", 20}, {"BE", 16}, {"BG", 22}, {"BH", 22}, {"BR", 29}, {"CH", 21},
                 {"CY", 28}, {"CZ", 24}, {"DE", 22}, {"DK", 18}, {"EE", 20}, {"ES", 24}, {"FI", 18}, {"FO", 18},
                 {"FR", 27}, {"GB", 22}, {"GI", 23}, {"GL", 18}, {"GR", 27}, {"HR", 21}, {"HU", 28}, {"IE", 22},
                 {"IL", 23}, {"IS", 26}, {"IT", 27}, {"KW", 30}, {"KZ", 20}, {"LB", 28}, {"LI", 21}, {"LT", 20},
                 {"LU", 20}, {"LV", 21}, {"MC", 27}, {"ME", 22}, {"MT", 31}, {"NL", 18}, {"NO", 15}, {"PK", 24},
                 {"PL", 28}, {"PT", 25}, {"QA", 29}, {"RO", 24}, {"RS", 22}, {"SA", 24}, {"SE", 24}, {"SI", 19},
                 {"SK", 24}, {"SM", 27}, {"TN", 24}, {"TR", 26}, {"UA", 29}};
    for (const auto& k : known) {
        if (k.cc[0] == a && k.cc[1] == b) {
            return k.len;
        }
    }
    return 0;
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

std::string sha256_hex(std::string_view s) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(s.data(), s.size(), digest, &len, EVP_sha256(), nullptr);
    static constexpr char hexd[] = "0123456789abcdef";
    std::string out;
    out.reserve(len * 2);
    for (unsigned int i = 0; i < len; ++i) {
        out += hexd[digest[i] >> 4];
        out += hexd[digest[i] & 15];
    }
    return out;
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

void domain_set::add(std::string_view domain) {
    while (!domain.empty() && (domain.front() == '*' || domain.front() == '.')) {
        domain.remove_prefix(1);
    }
    while (!domain.empty() && domain.back() == '.') {
        domain.remove_suffix(1);
    }
    std::string d{domain};
    for (auto& c : d) {
        c = static_cast<char>(to_lower(static_cast<unsigned char>(c)));
    }
    if (!d.empty()) {
        domains_.insert(std::move(d));
    }
}

bool domain_set::contains(std::string_view host) const {
    while (!host.empty() && host.back() == '.') {
        host.remove_suffix(1);
    }
    if (host.empty() || host.size() > 253) {
        return false;
    }
    char buf[256];
    for (std::size_t i = 0; i < host.size(); ++i) {
        buf[i] = static_cast<char>(to_lower(static_cast<unsigned char>(host[i])));
    }
    std::string_view h{buf, host.size()};
    // The host itself, then each parent: at most one lookup per label.
    while (true) {
        if (domains_.find(h) != domains_.end()) {
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
    std::uint64_t h = 0;
    std::memcpy(&h, d.data(), sizeof h);  // already a uniform hash
    return static_cast<std::size_t>(h);
}

namespace {

bool hex_digest(std::string_view s, std::array<std::uint8_t, 16>& out) {
    if (s.size() != 64) {
        return false;
    }
    auto nib = [](char c) -> int {
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
    };
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

std::array<std::uint8_t, 16> address_digest(std::string_view address) {
    char buf[512];
    const std::size_t n = std::min(address.size(), sizeof buf);
    for (std::size_t i = 0; i < n; ++i) {
        buf[i] = static_cast<char>(to_lower(static_cast<unsigned char>(address[i])));
    }
    // The digest object is fetched once and the context reused per thread: EVP_Digest()
    // looks the algorithm up on every call, which costs more than hashing one address.
    struct sha_ctx {
        EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
        EVP_MD_CTX* ctx = EVP_MD_CTX_new();
        ~sha_ctx() {
            EVP_MD_CTX_free(ctx);
            EVP_MD_free(md);
        }
    };
    thread_local sha_ctx sha;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (sha.md == nullptr || sha.ctx == nullptr || EVP_DigestInit_ex2(sha.ctx, sha.md, nullptr) != 1 ||
        EVP_DigestUpdate(sha.ctx, buf, n) != 1 || EVP_DigestFinal_ex(sha.ctx, digest, &len) != 1) {
        EVP_Digest(buf, n, digest, &len, EVP_sha256(), nullptr);
    }
    std::array<std::uint8_t, 16> out{};
    std::memcpy(out.data(), digest, out.size());
    return out;
}

}  // namespace

std::optional<suppression_list> suppression_list::parse(std::string_view text, std::size_t max_entries,
                                                        std::string* error) {
    suppression_list out;
    std::size_t line_no = 0;
    while (!text.empty()) {
        ++line_no;
        const auto nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
        if (const auto hash = line.find('#'); hash != std::string_view::npos) {
            line = line.substr(0, hash);
        }
        while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) {
            line.remove_prefix(1);
        }
        while (!line.empty() && (line.back() == ' ' || line.back() == '\t' || line.back() == '\r')) {
            line.remove_suffix(1);
        }
        if (line.empty()) {
            continue;
        }
        std::array<std::uint8_t, 16> d{};
        if (line.find('@') != std::string_view::npos) {
            if (line.size() > 320 || line.find_first_of(" \t,;<>") != std::string_view::npos) {
                if (error) {
                    *error = "line " + std::to_string(line_no) + ": not an email address or a SHA-256 hex digest";
                }
                return std::nullopt;
            }
            d = address_digest(line);
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
    std::ifstream in{path, std::ios::binary};
    if (!in) {
        if (error) {
            *error = "cannot be read";
        }
        return std::nullopt;
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    // One address a line at most 320 bytes plus a comment: refuse a file that cannot be a list.
    if (text.size() > max_entries * 400 + 4096) {
        if (error) {
            *error = "is too large for max_entries " + std::to_string(max_entries);
        }
        return std::nullopt;
    }
    return parse(text, max_entries, error);
}

bool suppression_list::contains(std::string_view address) const {
    if (digests_.empty()) {
        return false;
    }
    return digests_.count(address_digest(address)) > 0;
}

// ---------------------------------------------------------------------------------------

namespace {
constexpr std::size_t max_term_words = 16;
constexpr std::size_t max_word_bytes = 63;
}  // namespace

bool term_matcher::add(std::string_view term, std::string* error) {
    std::vector<std::string> words;
    bool too_long = false;
    for_each_word(term, [&](std::size_t s, std::size_t e) {
        if (e - s > max_word_bytes) {
            too_long = true;
            return true;
        }
        std::string w{term.substr(s, e - s)};
        for (auto& c : w) {
            c = static_cast<char>(to_lower(static_cast<unsigned char>(c)));
        }
        words.push_back(std::move(w));
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
        first_bits_[w.size()] |= 1ull << (static_cast<unsigned char>(w[0]) & 63);
        last_bits_[w.size()] |= 1ull << (static_cast<unsigned char>(w.back()) & 63);
        const std::uint64_t edge = (static_cast<std::uint64_t>(state) << 32) | it->second;
        auto e = edges_.find(edge);
        if (e == edges_.end()) {
            e = edges_.emplace(edge, states_++).first;
        }
        state = e->second;
    }
    out_.resize(states_, -1);
    if (out_[state] < 0) {
        out_[state] = static_cast<std::int32_t>(terms_.size());
    }
    terms_.emplace_back(term);
    term_words_.push_back(words.size());
    return true;
}

std::uint64_t term_matcher::word_hash(std::string_view w) {
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

void term_matcher::build() {
    std::size_t cap = 16;
    while (cap < words_.size() * 2) {
        cap *= 2;
    }
    vocab_table_.assign(cap, {});
    for (std::size_t i = 0; i < words_.size(); ++i) {
        const std::uint64_t h = word_hash(words_[i]);
        std::size_t at = h & (cap - 1);
        while (vocab_table_[at].id != 0) {
            at = (at + 1) & (cap - 1);
        }
        vocab_table_[at] = {h, static_cast<std::uint32_t>(i + 1)};
    }
    out_.resize(states_, -1);
    fail_.assign(states_, 0);
    // Children per state, for the breadth-first pass.
    std::vector<std::vector<std::pair<std::uint32_t, std::uint32_t>>> children(states_);
    for (const auto& [edge, to] : edges_) {
        children[static_cast<std::uint32_t>(edge >> 32)].emplace_back(static_cast<std::uint32_t>(edge), to);
    }
    std::vector<std::uint32_t> queue;
    queue.reserve(states_);
    for (const auto& [id, to] : children[0]) {
        fail_[to] = 0;
        queue.push_back(to);
    }
    for (std::size_t qi = 0; qi < queue.size(); ++qi) {
        const std::uint32_t s = queue[qi];
        if (out_[s] < 0) {
            out_[s] = out_[fail_[s]];  // a term ending here through a suffix
        }
        for (const auto& [id, to] : children[s]) {
            std::uint32_t f = fail_[s];
            while (true) {
                auto it = edges_.find((static_cast<std::uint64_t>(f) << 32) | id);
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

std::uint32_t term_matcher::word_id(std::string_view lower_word) const {
    if (vocab_table_.empty()) {
        return 0;
    }
    const std::uint64_t h = word_hash(lower_word);
    const std::size_t mask = vocab_table_.size() - 1;
    for (std::size_t at = h & mask;; at = (at + 1) & mask) {
        const vocab_slot& slot = vocab_table_[at];
        if (slot.id == 0) {
            return 0;
        }
        if (slot.hash == h && words_[slot.id - 1] == lower_word) {
            return slot.id;
        }
    }
}

std::uint32_t term_matcher::step(std::uint32_t state, std::uint32_t id) const {
    if (id == 0) {
        return 0;  // a word in no term: every partial match is broken
    }
    while (true) {
        auto it = edges_.find((static_cast<std::uint64_t>(state) << 32) | id);
        if (it != edges_.end()) {
            return it->second;
        }
        if (state == 0) {
            return 0;
        }
        state = fail_[state];
    }
}

// ---------------------------------------------------------------------------------------

namespace detail {

bool word_byte(unsigned char c) { return table.word[c]; }

void normalize_address(std::string_view item, std::string& out) {
    const auto lt = item.rfind('<');
    if (lt != std::string_view::npos) {
        const auto gt = item.find('>', lt);
        item = item.substr(lt + 1, gt == std::string_view::npos ? std::string_view::npos : gt - lt - 1);
    }
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t' || item.front() == '"')) {
        item.remove_prefix(1);
    }
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t' || item.back() == '"')) {
        item.remove_suffix(1);
    }
    if (item.size() > 320) {
        item = item.substr(0, 320);
    }
    out.assign(item);
    for (auto& c : out) {
        c = static_cast<char>(to_lower(static_cast<unsigned char>(c)));
    }
}

namespace {

// Digit groups of a possible card number or SSN: consecutive all-digit words joined by one
// space or dash. Only the last 19 are kept (a card has at most 19 digits).
struct digit_groups {
    struct group {
        std::size_t start = 0;
        std::size_t len = 0;
        char sep = 0;  // separator before this group; 0 for the first
    };
    static constexpr std::size_t cap = 20;
    group g[cap];
    std::size_t n = 0;
    std::size_t end = 0;

    void push(std::size_t start, std::size_t len, char sep) {
        if (n == cap) {
            std::move(g + 1, g + cap, g);
            --n;
        }
        g[n++] = {start, len, sep};
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

// Card windows ending at the newest group: 13-19 digits, Luhn-valid, an issuer digit 2-6,
// written as one group or in the usual groupings (4-4-4-4[-3], 4-4-4-1..4, 4-6-5, 4-6-4)
// with one kind of separator.
bool check_card(std::string_view text, const digit_groups& dg, text_hit* hit) {
    std::size_t digits = 0;
    for (std::size_t k = 1; k <= dg.n; ++k) {
        const auto& first = dg.g[dg.n - k];
        digits += first.len;
        if (digits > 19) {
            return false;
        }
        if (k > 1 && dg.g[dg.n - k + 1].sep != dg.g[dg.n - 1].sep) {
            return false;
        }
        if (digits < 13) {
            continue;
        }
        bool shape = k == 1;
        if (k > 1) {
            const std::size_t last = dg.g[dg.n - 1].len;
            bool fours = last >= 1 && last <= 4;
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
        char buf[20];
        std::size_t m = 0;
        for (std::size_t j = dg.n - k; j < dg.n; ++j) {
            std::memcpy(buf + m, text.data() + dg.g[j].start, dg.g[j].len);
            m += dg.g[j].len;
        }
        if (buf[0] < '2' || buf[0] > '6' || !luhn_valid({buf, m})) {
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
    if (a.len != 3 || g.len != 2 || s.len != 4 || g.sep != '-' || s.sep != '-' || a.sep == '-') {
        return false;
    }
    // Not part of a longer dashed number (123-45-6789-0).
    if (end + 1 < text.size() && text[end] == '-' && is_digit(static_cast<unsigned char>(text[end + 1]))) {
        return false;
    }
    if (!ssn_valid(text.substr(a.start, 3), text.substr(g.start, 2), text.substr(s.start, 4))) {
        return false;
    }
    set_hit(hit, "US SSN", a.start);
    return true;
}

// An IBAN starting at `s` (two upper-case letters and two digits): read up to 34 characters
// of upper-case letters and digits, in one piece or in groups separated by single spaces,
// and check every length that ends on a group boundary (the country's length if known).
bool check_iban(std::string_view text, std::size_t s, text_hit* hit) {
    char buf[34];
    std::size_t m = 0;
    std::size_t boundaries[34];
    std::size_t nb = 0;
    std::size_t i = s;
    while (i < text.size() && m < 34) {
        const auto c = static_cast<unsigned char>(text[i]);
        if (is_upper(c) || is_digit(c)) {
            buf[m++] = static_cast<char>(c);
            ++i;
            continue;
        }
        if (table.word[c]) {
            return false;  // lower case or `_`: not an IBAN
        }
        boundaries[nb++] = m;
        if (c == ' ' && i + 1 < text.size() &&
            (is_upper(static_cast<unsigned char>(text[i + 1])) || is_digit(static_cast<unsigned char>(text[i + 1])))) {
            ++i;
            continue;
        }
        break;
    }
    if (i >= text.size() || m == 34) {
        boundaries[nb++] = m;
    }
    const int expected = iban_length(buf[0], buf[1]);
    for (std::size_t b = 0; b < nb; ++b) {
        const std::size_t len = boundaries[b];
        if (len < 15 || (expected != 0 && static_cast<int>(len) != expected)) {
            continue;
        }
        if (iban_valid({buf, len})) {
            set_hit(hit, "IBAN (" + std::string{buf, 2} + ", mod-97 valid)", s);
            return true;
        }
    }
    return false;
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
bool digit_pred(unsigned char c) { return is_digit(c); }

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
        on[static_cast<unsigned char>('b')] = on[static_cast<unsigned char>('s')] = on[static_cast<unsigned char>('r')] = true;
        on[static_cast<unsigned char>('x')] = on[static_cast<unsigned char>('g')] = true;
    }
};
constexpr pii_first_table pii_first{};

}  // namespace

bool scan_pii(std::uint8_t kinds, std::string_view text, text_hit* hit) {
    const bool card = kinds & static_cast<std::uint8_t>(pii_kind::card);
    const bool ssn = kinds & static_cast<std::uint8_t>(pii_kind::ssn);
    const bool iban = kinds & static_cast<std::uint8_t>(pii_kind::iban);
    const bool secrets = kinds & static_cast<std::uint8_t>(pii_kind::secrets);
    digit_groups dg;
    return for_each_word(text, [&](std::size_t s, std::size_t e) {
        const auto c0 = static_cast<unsigned char>(text[s]);
        if (!pii_first.on[c0]) {
            return false;
        }
        if (is_digit(c0)) {
            if (!(card || ssn)) {
                return false;
            }
            if (e - s > 19 || !all_of_range(text, s, e, digit_pred)) {
                dg.n = 0;
                return false;
            }
            char sep = 0;
            if (dg.n > 0 && s == dg.end + 1 && (text[dg.end] == ' ' || text[dg.end] == '-')) {
                sep = text[dg.end];
            } else {
                dg.n = 0;
            }
            dg.push(s, e - s, sep);
            return (ssn && check_ssn(text, dg, e, hit)) || (card && check_card(text, dg, hit));
        }
        if (iban && is_upper(c0) && e - s >= 4 && is_upper(static_cast<unsigned char>(text[s + 1])) &&
            is_digit(static_cast<unsigned char>(text[s + 2])) && is_digit(static_cast<unsigned char>(text[s + 3])) &&
            check_iban(text, s, hit)) {
            return true;
        }
        return secrets && check_secret(text, s, e, hit);
    });
}

namespace {

// Host of a URL whose authority starts at `from`: after any userinfo, before port/path.
std::string_view url_host(std::string_view text, std::size_t from) {
    std::size_t end = from;
    while (end < text.size() && end - from < 512) {
        const char c = text[end];
        if (c == '/' || c == '?' || c == '#' || c == '"' || c == '\'' || c == '<' || c == '>' || c == '\\' ||
            c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ')') {
            break;
        }
        ++end;
    }
    std::string_view auth = text.substr(from, end - from);
    if (const auto at = auth.rfind('@'); at != std::string_view::npos) {
        auth.remove_prefix(at + 1);
    }
    if (!auth.empty() && auth.front() == '[') {
        return auth.substr(0, auth.find(']') + 1);
    }
    return auth.substr(0, auth.find(':'));
}

bool contains_unsubscribe(std::string_view word) {
    constexpr std::string_view needle = "unsubscribe";
    if (word.size() < needle.size()) {
        return false;
    }
    for (std::size_t i = 0; i + needle.size() <= word.size(); ++i) {
        if (to_lower(static_cast<unsigned char>(word[i])) == 'u' && iequals_lower(word.substr(i, needle.size()), needle)) {
            return true;
        }
    }
    return false;
}

}  // namespace

bool scan_content(const content_guard& g, std::string_view text, bool& unsubscribe, text_hit* hit) {
    const bool terms = !g.terms.empty();
    std::uint32_t state = 0;
    // Starts of the last words, for the offset of a multi-word term.
    std::size_t starts[16];
    std::size_t nwords = 0;
    char lower[64];
    return for_each_word(text, [&](std::size_t s, std::size_t e) {
        const std::size_t len = e - s;
        starts[nwords++ & 15] = s;
        const auto c0 = to_lower(static_cast<unsigned char>(text[s]));
        if (len >= 11 && !unsubscribe && contains_unsubscribe(text.substr(s, len))) {
            unsubscribe = true;
        }
        if (g.check_links && (c0 == 'h') && (len == 4 || len == 5)) {
            const std::string_view w = text.substr(s, len);
            if ((iequals_lower(w, "http") || iequals_lower(w, "https")) && text.substr(e, 3) == "://") {
                const std::string_view host = url_host(text, e + 3);
                if (!host.empty() && !g.link_domains.contains(host)) {
                    set_hit(hit, "link to a domain outside link_domains (" + std::string{host.substr(0, 253)} + ")", s);
                    return true;
                }
            } else if (iequals_lower(w, "href")) {
                // href="//host/..." (scheme-relative); href="http..." is caught as a URL.
                std::size_t i = e;
                while (i < text.size() && (text[i] == ' ' || text[i] == '=' || text[i] == '"' || text[i] == '\'')) {
                    ++i;
                }
                if (text.substr(i, 2) == "//") {
                    const std::string_view host = url_host(text, i + 2);
                    if (!host.empty() && !g.link_domains.contains(host)) {
                        set_hit(hit, "link to a domain outside link_domains (" + std::string{host.substr(0, 253)} + ")", s);
                        return true;
                    }
                }
            }
        }
        if (!terms) {
            return false;
        }
        std::uint32_t id = 0;
        if (len <= max_word_bytes && g.terms.maybe_word(len, c0, to_lower(static_cast<unsigned char>(text[e - 1])))) {
            for (std::size_t i = 0; i < len; ++i) {
                lower[i] = static_cast<char>(to_lower(static_cast<unsigned char>(text[s + i])));
            }
            id = g.terms.word_id({lower, len});
        }
        if (id == 0 && state == 0) {
            return false;
        }
        state = g.terms.step(state, id);
        const std::int32_t t = g.terms.output(state);
        if (t >= 0) {
            const std::size_t k = g.terms.term_words(static_cast<std::size_t>(t));
            const std::size_t first = starts[(nwords - k) & 15];
            set_hit(hit, "blocked term #" + std::to_string(t) + " (" + g.terms.term(static_cast<std::size_t>(t)) + ")",
                    first);
            return true;
        }
        return false;
    });
}

}  // namespace detail
}  // namespace bb::rules
