// Guardrails: config parsing, the JSON walk that finds the values to look at (with their
// paths and byte offsets), the per-kind checks and the duplicate counter.

#include "rules/guardrails.hpp"
#include "rules/agent_constraints.hpp"

#include "core/byte_codec.hpp"
#include "core/hex.hpp"
#include "core/json_key.hpp"
#include "core/mix.hpp"
#include "core/utf8.hpp"

#include <algorithm>
#include <cstring>
#include <functional>
#include <iterator>
#include <optional>
#include <type_traits>
#include <unordered_set>

#include "rules/form.hpp"
#include "rules/guardrails_scan.hpp"
#include "rules/mime.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace bb::rules {

namespace {

constexpr std::size_t max_fields = 32;
constexpr std::size_t max_list = 10'000;       // domains, terms
constexpr std::size_t max_term_bytes = 256;
constexpr std::size_t max_json_depth = 512;

bool ieq(std::string_view a, std::string_view b) { return iequals(a, b); }

// ---------------------------------------------------------------------------------------
// A JSON walk over the raw body: every value with its path and, for strings, the decoded
// text and the byte offset of its first character in the body. Linear, iterative (bounded
// depth), and tolerant: it checks the grammar only as far as it needs to, and a body it
// cannot follow is reported as invalid so the caller can fall back to the raw bytes.

struct frame {
    bool array = false;
    std::size_t index = 0;
    std::string_view key;  // in the body, or in the walker's arena when it had escapes
};

enum class value_type : std::uint8_t { string, scalar, object, array };

// What a visitor wants next: the next value, the next value after this one's children (for a
// container: nothing under it can matter to it), or nothing (it found something).
// A visitor may also return a bool: true to stop.
enum class walk_next : std::uint8_t { go, skip, stop };

template <class R>
walk_next as_next(R r) {
    if constexpr (std::is_same_v<R, bool>) {
        return r ? walk_next::stop : walk_next::go;
    } else {
        return r;
    }
}

bool is_container(value_type t) { return t == value_type::object || t == value_type::array; }

// The bytes json_walker tells apart by table: JSON's white space; what ends a scalar (a
// separator, a closing bracket, white space); what may start one (a number, true, false,
// null; the rest of it is not checked).
struct json_byte_table {
    bool ws[256] = {};
    bool scalar_end[256] = {};
    bool scalar_start[256] = {};
    constexpr json_byte_table() {
        for (const char c : {' ', '\n', '\r', '\t'}) {
            ws[static_cast<unsigned char>(c)] = scalar_end[static_cast<unsigned char>(c)] = true;
        }
        for (const char c : {',', ']', '}'}) {
            scalar_end[static_cast<unsigned char>(c)] = true;
        }
        for (const char c : std::string_view{"-0123456789tfn"}) {
            scalar_start[static_cast<unsigned char>(c)] = true;
        }
    }
};
constexpr json_byte_table json_bytes{};

// First '"' or '\\' at or after p, or end.
[[gnu::always_inline]] inline const char* find_quote_or_escape(const char* p, const char* end) {
#if defined(__SSE2__)
    const __m128i q = _mm_set1_epi8('"');
    const __m128i b = _mm_set1_epi8('\\');
    while (end - p >= 16) {
        const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        const int m = _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(c, q), _mm_cmpeq_epi8(c, b)));
        if (m != 0) {
            return p + __builtin_ctz(static_cast<unsigned>(m));
        }
        p += 16;
    }
#endif
    while (p < end && *p != '"' && *p != '\\') {
        ++p;
    }
    return p;
}

// Copies body bytes from `i` to `out` up to the next '"' or '\\'; returns its position, or
// body.size(). Writes up to 15 bytes past what it copies (the arena has room: see json_walker).
std::size_t copy_to_quote_or_escape(std::string_view body, std::size_t i, char*& out) {
    const char* const b = body.data();
    const std::size_t n = body.size();
#if defined(__SSE2__)
    const __m128i q = _mm_set1_epi8('"');
    const __m128i bs = _mm_set1_epi8('\\');
    while (n - i >= 16) {
        const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out), c);
        const int m = _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(c, q), _mm_cmpeq_epi8(c, bs)));
        if (m != 0) {
            const auto k = static_cast<std::size_t>(__builtin_ctz(static_cast<unsigned>(m)));
            out += k;
            return i + k;
        }
        i += 16;
        out += 16;
    }
#endif
    while (i < n && b[i] != '"' && b[i] != '\\') {
        *out++ = b[i++];
    }
    return i;
}

bool hex4(std::string_view s, std::size_t at, unsigned& out) {
    if (at + 4 > s.size()) {
        return false;
    }
    out = 0;
    for (std::size_t i = 0; i < 4; ++i) {
        const int h = hex_digit_value(s[at + i]);
        if (h < 0) {
            return false;
        }
        out = out * 16 + static_cast<unsigned>(h);
    }
    return true;
}

// Decodes the escape at s[at] == '\\' to out (advanced past what it wrote; never more bytes
// than it reads); returns raw bytes consumed, 0 if invalid.
std::size_t decode_escape(std::string_view s, std::size_t at, char*& out) {
    if (at + 1 >= s.size()) {
        return 0;
    }
    switch (s[at + 1]) {
        case '"': *out++ = '"'; return 2;
        case '\\': *out++ = '\\'; return 2;
        case '/': *out++ = '/'; return 2;
        case 'b': *out++ = '\b'; return 2;
        case 'f': *out++ = '\f'; return 2;
        case 'n': *out++ = '\n'; return 2;
        case 'r': *out++ = '\r'; return 2;
        case 't': *out++ = '\t'; return 2;
        case 'u': {
            unsigned cp = 0;
            if (!hex4(s, at + 2, cp)) {
                return 0;
            }
            if (high_surrogate(cp) && at + 12 <= s.size() && s[at + 6] == '\\' && s[at + 7] == 'u') {
                unsigned lo = 0;
                if (hex4(s, at + 8, lo) && low_surrogate(lo)) {
                    put_utf8(from_surrogates(cp, lo), out);
                    return 12;
                }
            }
            put_utf8(high_surrogate(cp) || low_surrogate(cp) ? 0xFFFD : cp, out);
            return 6;
        }
        default: return 0;
    }
}

// What decode_escape writes for the two-byte escapes; 0 for the others (\u, invalid).
struct escape_table {
    char out[256] = {};
    constexpr escape_table() {
        out[static_cast<unsigned char>('"')] = '"';
        out[static_cast<unsigned char>('\\')] = '\\';
        out[static_cast<unsigned char>('/')] = '/';
        out[static_cast<unsigned char>('b')] = '\b';
        out[static_cast<unsigned char>('f')] = '\f';
        out[static_cast<unsigned char>('n')] = '\n';
        out[static_cast<unsigned char>('r')] = '\r';
        out[static_cast<unsigned char>('t')] = '\t';
    }
};
constexpr escape_table simple_escapes{};

// Body offset of decoded byte `idx` of the string whose raw text starts at raw_start.
std::size_t raw_offset(std::string_view body, std::size_t raw_start, std::size_t idx) {
    std::size_t decoded = 0;
    std::size_t i = raw_start;
    while (i < body.size() && body[i] != '"') {
        std::size_t raw = 1;
        std::size_t produced = 1;
        if (body[i] == '\\') {
            char tmp[4];
            char* t = tmp;
            raw = decode_escape(body, i, t);
            produced = static_cast<std::size_t>(t - tmp);
            if (raw == 0) {
                break;
            }
        }
        if (decoded + produced > idx) {
            return i;
        }
        decoded += produced;
        i += raw;
    }
    return i;
}

// A JSON walk over the raw body: every value with its path and, for strings, the decoded
// text and the byte offset of its first character in the body. Strings with escapes are
// decoded into an arena of body size + 64 bytes that lives until the next run: a decoded
// string is never longer than its raw text, so every string of a body fits, and the views
// handed out stay valid for the whole run (the shared parse keeps them past it).
class json_walker {
public:
    enum class result : std::uint8_t { done, stopped, invalid };

    // visit(frames, type, text, raw_start, escaped) -> walk_next (or true to stop). The
    // whole body is parsed whatever the visitor skips (the result says whether it is JSON).
    // closed() is called as each container ends (after its last value).
    template <class V>
    result run(std::string_view body, V&& visit_value) {
        return run<true>(body, visit_value, [] {});
    }
    // Skips: whether the visitor may return walk_next::skip (the shared parse never does).
    template <bool Skips, class V, class C>
    result run(std::string_view body, V&& visit_value, C&& closed) {
        depth_ = 0;
        // While depth_ > skip_above, values are inside a container the visitor skipped.
        std::size_t skip_above = std::string_view::npos;
        auto visit = [&](std::span<const frame> f, value_type t, std::string_view text, std::size_t start, bool esc)
                         __attribute__((always_inline)) {
            if constexpr (!Skips) {
                return as_next(visit_value(f, t, text, start, esc)) == walk_next::stop;
            } else {
                if (depth_ > skip_above) {
                    return false;
                }
                skip_above = std::string_view::npos;
                const walk_next next = as_next(visit_value(f, t, text, start, esc));
                if (next == walk_next::skip && is_container(t)) {
                    skip_above = depth_;
                }
                return next == walk_next::stop;
            }
        };
        if (arena_cap_ < body.size() + 64) {
            arena_cap_ = body.size() + 64;
            arena_ = std::make_unique_for_overwrite<char[]>(arena_cap_);  // not zeroed: written before read
        }
        arena_used_ = 0;
        const std::size_t n = body.size();
        // A UTF-8 byte order mark before the value: Jackson and Python read past it (Go and
        // simdjson refuse it), so the value after it is what such an upstream sends.
        std::size_t pos = skip_ws(body, body.starts_with(utf8_bom) ? utf8_bom.size() : 0);
        if (pos >= n) {
            return result::invalid;
        }
        enum class st : std::uint8_t { value, key, after } s = st::value;
        while (true) {
            switch (s) {
                case st::value: {
                    if (pos >= n) {
                        return result::invalid;
                    }
                    const char c = body[pos];
                    if (c == '{' || c == '[') {
                        if (visit(frames(), c == '{' ? value_type::object : value_type::array, std::string_view{}, pos,
                                  false)) {
                            return result::stopped;
                        }
                        if (depth_ >= max_json_depth) {
                            return result::invalid;
                        }
                        push(c == '[');
                        pos = skip_ws(body, pos + 1);
                        if (pos < n && body[pos] == (c == '{' ? '}' : ']')) {
                            --depth_;
                            closed();
                            ++pos;
                            s = st::after;
                        } else {
                            s = c == '{' ? st::key : st::value;
                        }
                        break;
                    }
                    if (c == '"') {
                        std::string_view text;
                        bool escaped = false;
                        const std::size_t start = pos + 1;
                        if (!read_string(body, pos, text, escaped)) {
                            return result::invalid;
                        }
                        if (visit(frames(), value_type::string, text, start, escaped)) {
                            return result::stopped;
                        }
                        s = st::after;
                        break;
                    }
                    const std::size_t start = pos;
                    while (pos < n && !json_bytes.scalar_end[static_cast<unsigned char>(body[pos])]) {
                        ++pos;
                    }
                    if (pos == start || !json_bytes.scalar_start[static_cast<unsigned char>(c)]) {
                        return result::invalid;
                    }
                    if (visit(frames(), value_type::scalar, body.substr(start, pos - start), start, false)) {
                        return result::stopped;
                    }
                    s = st::after;
                    break;
                }
                case st::key: {
                    if (pos >= n || body[pos] != '"') {
                        return result::invalid;
                    }
                    frame& f = frames_[depth_ - 1];
                    bool escaped = false;
                    if (!read_string(body, pos, f.key, escaped)) {
                        return result::invalid;
                    }
                    pos = skip_ws(body, pos);
                    if (pos >= n || body[pos] != ':') {
                        return result::invalid;
                    }
                    pos = skip_ws(body, pos + 1);
                    s = st::value;
                    break;
                }
                case st::after: {
                    pos = skip_ws(body, pos);
                    if (depth_ == 0) {
                        return pos == n ? result::done : result::invalid;
                    }
                    if (pos >= n) {
                        return result::invalid;
                    }
                    frame& f = frames_[depth_ - 1];
                    const char c = body[pos];
                    if (c == ',') {
                        pos = skip_ws(body, pos + 1);
                        if (f.array) {
                            ++f.index;
                            s = st::value;
                        } else {
                            s = st::key;
                        }
                    } else if (c == (f.array ? ']' : '}')) {
                        --depth_;
                        closed();
                        ++pos;
                    } else {
                        return result::invalid;
                    }
                    break;
                }
            }
        }
    }

    std::span<const frame> frames() const { return {frames_.data(), depth_}; }
    const char* arena() const { return arena_.get(); }
    // Frees the arena when it grew past `bytes` (one large body does not pin its memory).
    void trim(std::size_t bytes) {
        if (arena_cap_ > bytes) {
            arena_.reset();
            arena_cap_ = 0;
        }
    }

private:
    static std::size_t skip_ws(std::string_view b, std::size_t pos) {
        while (pos < b.size() && json_bytes.ws[static_cast<unsigned char>(b[pos])]) {
            ++pos;
        }
        return pos;
    }

    [[gnu::always_inline]] void push(bool array) {
        if (frames_.size() == depth_) {
            frames_.emplace_back();
        }
        frame& f = frames_[depth_++];
        f.array = array;
        f.index = 0;
        f.key = {};
    }

    // body[pos] == '"'; on success pos is just past the closing quote. text views the body
    // when the string has no escapes, else the arena.
    // Inline: most strings (keys, addresses) have no escape; those that do go out of line.
    [[gnu::always_inline]] bool read_string(std::string_view body, std::size_t& pos, std::string_view& text,
                                            bool& escaped) {
        const char* const begin = body.data();
        const char* const end = begin + body.size();
        const std::size_t start = pos + 1;
        const char* p = find_quote_or_escape(begin + start, end);
        if (p == end) {
            return false;
        }
        if (*p == '"') [[likely]] {
            text = body.substr(start, static_cast<std::size_t>(p - begin) - start);
            pos = static_cast<std::size_t>(p - begin) + 1;
            escaped = false;
            return true;
        }
        escaped = true;
        return read_escaped(body, pos, text, p);
    }

    // From the first escape at p on (see read_string).
    [[gnu::noinline]] bool read_escaped(std::string_view body, std::size_t& pos, std::string_view& text, const char* p) {
        const char* const begin = body.data();
        const std::size_t start = pos + 1;
        char* const out0 = arena_.get() + arena_used_;
        char* out = out0;
        std::memcpy(out, begin + start, static_cast<std::size_t>(p - (begin + start)));
        out += p - (begin + start);
        std::size_t i = static_cast<std::size_t>(p - begin);
        while (true) {
            // The two-byte escapes inline (\" \\ \/ \n ...: nearly all of them in HTML); \u by call.
            const char simple = i + 1 < body.size() ? simple_escapes.out[static_cast<unsigned char>(body[i + 1])] : 0;
            std::size_t used = 2;
            if (simple != 0) {
                *out++ = simple;
            } else if ((used = decode_escape(body, i, out)) == 0) {
                return false;
            }
            i = copy_to_quote_or_escape(body, i + used, out);
            if (i >= body.size()) {
                return false;
            }
            if (body[i] == '"') {
                break;
            }
        }
        text = {out0, static_cast<std::size_t>(out - out0)};
        arena_used_ += text.size();
        pos = i + 1;
        return true;
    }

    std::vector<frame> frames_;
    std::size_t depth_ = 0;
    std::unique_ptr<char[]> arena_;
    std::size_t arena_cap_ = 0;
    std::size_t arena_used_ = 0;
};

bool path_matches(const json_path& p, std::span<const frame> f, bool prefix);

// A key as the path names see it (names are folded, core/json_key.hpp): the head of its
// fold, when the key is ASCII (then the fold is its lower case, byte for byte, and the same
// length); a key with other bytes is compared through json_key::matches.
struct key_head {
    std::uint64_t head = 0;
    bool ascii = true;

    static key_head of(std::string_view key) {
        key_head k;
        const std::uint64_t h = path_index::head_of(key);
        k.ascii = key.size() <= 8 ? (h & 0x8080808080808080ull) == 0 : json_key::is_ascii(key);
        if (k.ascii) {
            k.head = json_key::ascii_lower8(h);
        }
        return k;
    }
};

[[gnu::noinline]] bool folded_name_matches(const path_index::name& n, std::string_view key) {
    return json_key::matches(key, n.text);
}

inline bool name_matches(const path_index::name& n, std::string_view key, key_head head) {
    if (!head.ascii) [[unlikely]] {
        return folded_name_matches(n, key);
    }
    return n.len == key.size() && n.head == head.head && (n.len <= 8 || json_key::ascii_matches_long(key, n.text));
}


// The paths of `index` that the value at `f` (not the root) is on: alive, the ones whose
// first f.size() steps match it, given the ones alive at its parent (not none); exact, the
// alive ones that end there.
struct path_step {
    std::uint64_t alive = 0;
    std::uint64_t exact = 0;
};

[[gnu::always_inline]] inline path_step step_paths(const path_index& index, std::uint64_t parent_alive,
                                                  std::span<const frame> f) {
    const std::size_t d = f.size();
    path_step out;
    if (d > index.levels.size()) {
        return out;
    }
    const path_index::level& lv = index.levels[d - 1];
    const frame& fr = f[d - 1];
    std::uint64_t bits = lv.wildcard;
    if (fr.array) {
        for (const auto& [i, b] : lv.indexes) {
            bits |= i == fr.index ? b : 0;
        }
    } else if (!lv.names.empty()) {
        const key_head head = key_head::of(fr.key);
        if (head.ascii) {
            const std::size_t len = fr.key.size();
            if (len + 1 < lv.by_len.size()) {
                for (std::size_t i = lv.by_len[len], e = lv.by_len[len + 1]; i < e; ++i) {
                    const auto& [n, b] = lv.names[i];
                    if ((parent_alive & b) != 0 && name_matches(n, fr.key, head)) {
                        bits |= b;
                    }
                }
            }
        } else {
            for (const auto& [n, b] : lv.names) {
                if ((parent_alive & b) != 0 && name_matches(n, fr.key, head)) {
                    bits |= b;
                }
            }
        }
    }
    out.alive = parent_alive & bits;
    out.exact = out.alive & lv.ending;
    return out;
}

}  // namespace

namespace detail {

// A body parsed once: the values json_walker visits, in order, with what each visitor
// needs (40 bytes a value). walk() replays them, rebuilding the path frames as it goes (in
// document order a value's ancestors are the last values seen at each smaller depth), so a
// guard sees exactly what a walk of its own would show it, the same stop and the same
// invalid result, at a fraction of the cost. A body with more than max_nodes values is
// walked again by each guard instead (bounded memory), as is one over 4 GiB.
class parsed_body {
public:
    // What the guard paths (guard_paths) say of one value.
    struct node_paths {
        std::uint64_t alive;  // paths whose first `depth` steps match it
        std::uint64_t exact;  // paths that end at it
        std::uint64_t under;  // paths that end at it or at one of its ancestors
    };

    void reset(const guard_paths* paths) {
        shared_ = paths && !paths->all.paths.empty() ? paths : nullptr;
        parsed_ = false;
        body_ = {};
        if (paths_.capacity() > retain_nodes) {
            paths_ = {};
        }
        // Large bodies do not pin their memory in every worker thread.
        if (nodes_.capacity() > retain_nodes) {
            nodes_ = {};
        }
        walker_.trim(retain_arena);
    }

    // Whether the body may have a key List-Unsubscribe (in any case); valid once walk() ran.
    bool may_have_key_list_unsubscribe() const { return streaming_ || list_unsubscribe_; }
    // Whether the body may have a top-level key mail_settings (as Go folds it); valid once
    // walk() ran.
    bool may_have_mail_settings() const { return streaming_ || mail_settings_; }

    template <class V>
    json_walker::result walk(std::string_view body, V&& visit) {
        ensure_parsed(body);
        if (streaming_) {
            return walker_.run(body, visit);
        }
        for (std::size_t i = 0; i < nodes_.size();) {
            const node& n = nodes_[i];
            current_ = static_cast<std::uint32_t>(i);
            if (n.depth > 0) {
                frame& f = frames_[n.depth - 1];
                f.array = n.flags & in_array;
                f.index = n.index;
                f.key = {n.key, n.key_len};
            }
            const walk_next next = as_next(visit(std::span<const frame>{frames_.data(), n.depth}, n.type,
                                                 std::string_view{n.text, n.text_len}, n.raw_start, n.flags & escaped));
            if (next == walk_next::stop) {
                return json_walker::result::stopped;
            }
            i = next == walk_next::skip && is_container(n.type) ? n.end : i + 1;
        }
        return result_;
    }

    // The strings and scalars only, without their paths, for a visitor that needs a path
    // only for what it finds: visit(text, raw_start, escaped) -> true to stop; then
    // path_of_stop() gives its path. Same values, order and result as walk(). Before each
    // value (containers too) whose key is at least `key_min` bytes long, visit_key(key,
    // raw_start of the value) -> true to stop there.
    template <class V, class K>
    json_walker::result walk_values(std::string_view body, V&& visit, std::size_t key_min, K&& visit_key) {
        ensure_parsed(body);
        if (streaming_) {
            return walker_.run(body, [&](std::span<const frame> f, value_type t, std::string_view text,
                                         std::size_t start, bool esc) {
                const bool by_key = !f.empty() && !f.back().array && f.back().key.size() >= key_min &&
                                    visit_key(f.back().key, start);
                if (!by_key && (is_container(t) || !visit(text, start, esc))) {
                    return false;
                }
                stop_frames_.assign(f.begin(), f.end());
                return true;
            });
        }
        for (std::size_t i = 0; i < nodes_.size(); ++i) {
            const node& n = nodes_[i];
            if ((n.key_len >= key_min && !(n.flags & in_array) && visit_key(std::string_view{n.key, n.key_len}, n.raw_start)) ||
                (!is_container(n.type) && visit(std::string_view{n.text, n.text_len}, n.raw_start, n.flags & escaped))) {
                // Rebuild the stopping value's frames (its ancestors are the last values
                // before it at each smaller depth).
                stop_frames_.assign(n.depth, frame{});
                for (std::size_t j = 0, need = n.depth; j <= i && need > 0; ++j) {
                    const node& m = nodes_[i - j];
                    if (m.depth == need) {
                        stop_frames_[need - 1] = {static_cast<bool>(m.flags & in_array), m.index, {m.key, m.key_len}};
                        --need;
                    }
                }
                return json_walker::result::stopped;
            }
        }
        return result_;
    }
    std::span<const frame> path_of_stop() const { return stop_frames_; }

    // Where the paths of guard index `index` start in the shared classification of `body`,
    // or -1 when the values of this parse are not classified for it (no shared paths, the
    // guard follows its own, or the body is walked again by each guard). Parses the body.
    int shared_offset(std::string_view body, const path_index& index) {
        ensure_parsed(body);
        if (!shared_ || streaming_ || paths_.size() != nodes_.size()) {
            return -1;
        }
        return shared_->offset_of(&index);
    }
    // During walk(): the classification of the value being visited.
    const node_paths& current_paths() const { return paths_[current_]; }

    // A SendGrid member that is a map (Go map[string]...: headers, custom_args, template
    // data): its keys are kept as written, so only the same bytes shadow there.
    static bool map_valued(std::string_view key) {
        return json_key::matches(key, "headers") || json_key::matches(key, "custom_args") ||
               json_key::matches(key, "dynamic_template_data") || json_key::matches(key, "substitutions") ||
               json_key::matches(key, "sections");
    }

    // During walk(): whether the value being visited, or one of its containers, is shadowed:
    // a later member of the same object has a key that folds to its own (json_key), and
    // parsers that keep the last of a key given twice (Go's, SendGrid's, and most others)
    // never see it. For what must be there to pass (an unsubscribe link or setting), not what
    // must not (those read every copy). A body too large to keep its values is walked as a
    // stream: false then. Costs a walk back to each container and over its later members.
    bool current_shadowed() {
        if (streaming_) {
            // Values not kept: which copy of a key is the last cannot be told. A body with
            // no key given twice has no shadowed value; one with any counts every value as
            // perhaps shadowed (an unsubscribe in it is not one the upstream reads for sure).
            return key_given_twice();
        }
        if (nodes_.empty()) {
            return false;
        }
        std::uint32_t i = current_;
        while (nodes_[i].depth > 0) {
            // The container: the last value before i one level up (the root for a top-level
            // member, without walking back over what came before it).
            std::uint32_t p = nodes_[i].depth == 1 ? 1 : i;
            while (p > 0 && nodes_[p - 1].depth >= nodes_[i].depth) {
                --p;
            }
            p = p > 0 ? p - 1 : 0;
            const node& parent = nodes_[p];
            if (parent.type == value_type::object) {
                // A map (SendGrid's `headers`, `custom_args`, template data: Go map[string]...)
                // keeps keys as written: only the same bytes shadow there. Struct fields fold.
                const std::string_view pk{parent.key, parent.key_len};
                const bool map = map_valued(pk);
                const std::string_view own{nodes_[i].key, nodes_[i].key_len};
                const std::string folded = map ? std::string{} : json_key::fold(own);
                for (std::uint32_t c = is_container(nodes_[i].type) ? nodes_[i].end : i + 1; c < parent.end;
                     c = is_container(nodes_[c].type) ? nodes_[c].end : c + 1) {
                    const std::string_view other{nodes_[c].key, nodes_[c].key_len};
                    if (map ? other == own : json_key::matches(other, folded)) {
                        return true;
                    }
                }
            }
            i = p;
        }
        return false;
    }

    // The strings at exactly `path`, in document order: visit(frames, text, raw_start) -> true
    // to stop. Only the containers on the way are entered (the rest is jumped over), so it
    // costs a few values, not a walk. Same result as walk().
    template <class V>
    json_walker::result strings_at(std::string_view body, const json_path& path, V&& visit) {
        ensure_parsed(body);
        if (streaming_) {
            return walker_.run(body, [&](std::span<const frame> f, value_type t, std::string_view text,
                                         std::size_t start, bool) {
                return t == value_type::string && path_matches(path, f, false) && visit(f, text, start);
            });
        }
        if (nodes_.empty()) {
            return result_;
        }
        path_frames_.clear();
        return descend(0, 0, path, visit) ? json_walker::result::stopped : result_;
    }

private:
    // A JSON body of the default 10 MiB limit can hold millions of values; recording them
    // all would cost 40 bytes each per worker thread. Past max_nodes (2.5 MiB of nodes, well
    // above a 1,000-recipient SendGrid send, ~11k values) the guards walk the body themselves.
    static constexpr std::size_t max_nodes = std::size_t{1} << 16;
    static constexpr std::size_t retain_nodes = max_nodes;
    static constexpr std::size_t retain_arena = std::size_t{4} << 20;
    enum : std::uint8_t { in_array = 1, escaped = 2 };
    struct node {
        const char* key;   // the body or the walker's arena (both stay until the next parse)
        const char* text;
        std::uint32_t key_len;
        std::uint32_t text_len;
        std::uint32_t raw_start;
        std::uint32_t index;
        std::uint32_t end;  // containers: the index of the first value after their children
        std::uint16_t depth;
        value_type type;
        std::uint8_t flags;
    };

    template <class V>
    bool descend(std::uint32_t i, std::size_t k, const json_path& p, V& visit) {
        const node& n = nodes_[i];
        if (k == p.segments.size()) {
            return n.type == value_type::string &&
                   visit(std::span<const frame>{path_frames_}, std::string_view{n.text, n.text_len}, n.raw_start);
        }
        if (!is_container(n.type)) {
            return false;
        }
        const path_segment& seg = p.segments[k];
        for (std::uint32_t c = i + 1; c < n.end; c = is_container(nodes_[c].type) ? nodes_[c].end : c + 1) {
            const node& ch = nodes_[c];
            const bool array = ch.flags & in_array;
            const std::string_view key{ch.key, ch.key_len};
            bool on = false;
            switch (seg.k) {
                case path_segment::kind::names:
                    // A key folds to a name no longer than itself and at most a third of its size
                    // (core/json_key.hpp): most keys are rejected by their length.
                    on = !array && std::any_of(seg.names.begin(), seg.names.end(), [&](const std::string& name) {
                        return key.size() >= name.size() && key.size() <= 3 * name.size() &&
                               json_key::matches(key, name);
                    });
                    break;
                case path_segment::kind::index: on = array && ch.index == seg.index; break;
                case path_segment::kind::wildcard: on = true; break;
                case path_segment::kind::filter: break;  // refused in guard fields (parse_field)
            }
            if (on) {
                path_frames_.push_back(frame{array, ch.index, key});
                const bool stop = descend(c, k + 1, p, visit);
                path_frames_.pop_back();
                if (stop) {
                    return true;
                }
            }
        }
        return false;
    }

    // Parses `body` unless this parse is of it already (the guards of a request share it).
    void ensure_parsed(std::string_view body) {
        if (!parsed_ || body.data() != body_.data() || body.size() != body_.size()) {
            parse(body);
        }
    }

    // The value at `f` against the shared guard paths (as path_tracker does for one guard).
    void classify(std::span<const frame> f) {
        const std::size_t d = f.size();
        const path_index& ix = shared_->all;
        node_paths np;
        if (d == 0) {
            const std::size_t n = ix.paths.size();
            np.alive = n >= 64 ? ~0ull : (1ull << n) - 1;
            np.exact = np.under = ix.root;
        } else if (alive_at_[d - 1] == 0) {  // the usual case: no path goes on here
            np.alive = np.exact = 0;
            np.under = under_at_[d - 1];
        } else {
            const path_step st = step_paths(ix, alive_at_[d - 1], f);
            np.alive = st.alive;
            np.exact = st.exact;
            np.under = under_at_[d - 1] | st.exact;
        }
        alive_at_[d] = np.alive;
        under_at_[d] = np.under;
        paths_.push_back(np);
    }

    // A streamed body: whether any object in it has a key given twice: keys folded as struct
    // fields fold them, but in a map (headers, template data: Go map[string]...) only the
    // same bytes, as current_shadowed() compares them. One walk, at most once a body.
    bool key_given_twice() {
        if (twice_) {
            return *twice_;
        }
        std::vector<std::unordered_set<std::string>> seen;
        bool twice = false;
        json_walker w;
        w.run<false>(
            body_,
            [&](std::span<const frame> f, value_type t, std::string_view, std::size_t, bool) {
                if (!f.empty() && !f.back().array) {
                    if (seen.size() < f.size()) {
                        seen.resize(f.size());
                    }
                    // The object's own key in its container: a map's members keep theirs as written.
                    const std::string_view pk = f.size() >= 2 && !f[f.size() - 2].array ? f[f.size() - 2].key
                                                                                          : std::string_view{};
                    const bool map = map_valued(pk);
                    if (!seen[f.size() - 1].insert(map ? std::string{f.back().key} : json_key::fold(f.back().key)).second) {
                        twice = true;
                        return true;  // one is enough
                    }
                }
                if (t == value_type::object) {
                    if (seen.size() < f.size() + 1) {
                        seen.resize(f.size() + 1);
                    }
                    seen[f.size()].clear();  // its members' keys, from none
                }
                return false;
            },
            [] {});
        twice_ = twice;
        return twice;
    }

    void parse(std::string_view body) {
        parsed_ = true;
        twice_.reset();
        body_ = body;
        nodes_.clear();
        paths_.clear();
        streaming_ = body.size() > 0xFFFF'FF00u;
        if (streaming_) {
            return;
        }
        bool too_many = false;
        list_unsubscribe_ = false;
        mail_settings_ = false;
        open_.clear();
        auto closed = [&] {
            // The container's children end here.
            nodes_[open_.back()].end = static_cast<std::uint32_t>(nodes_.size());
            open_.pop_back();
        };
        result_ = walker_.run<false>(body, [&](std::span<const frame> f, value_type t, std::string_view text,
                                               std::size_t start, bool esc) __attribute__((always_inline)) {
            if (nodes_.size() == max_nodes) {
                too_many = true;
                return true;
            }
            if (is_container(t)) {
                open_.push_back(static_cast<std::uint32_t>(nodes_.size()));
            }
            node n;
            n.depth = static_cast<std::uint16_t>(f.size());
            n.type = t;
            n.raw_start = static_cast<std::uint32_t>(start);
            n.flags = esc ? escaped : 0;
            n.key = nullptr;
            n.key_len = 0;
            n.index = 0;
            n.end = 0;
            if (!f.empty()) {
                const frame& last = f.back();
                if (last.key.size() == 16 && iequals(last.key, "List-Unsubscribe")) {
                    list_unsubscribe_ = true;
                }
                if (f.size() == 1 && !last.array && json_key::matches(last.key, "mail_settings")) {
                    mail_settings_ = true;
                }
                n.flags |= last.array ? in_array : 0;
                n.index = static_cast<std::uint32_t>(last.index);
                n.key = last.key.data();
                n.key_len = static_cast<std::uint32_t>(last.key.size());
            }
            n.text = text.data();
            n.text_len = static_cast<std::uint32_t>(text.size());
            nodes_.push_back(n);
            if (shared_) {
                classify(f);
            }
            return false;
        }, closed);
        if (too_many) {
            streaming_ = true;
            nodes_.clear();
            paths_.clear();
            return;
        }
        for (const std::uint32_t i : open_) {
            nodes_[i].end = static_cast<std::uint32_t>(nodes_.size());
        }
        if (frames_.size() <= max_json_depth) {
            frames_.resize(max_json_depth + 1);
        }
    }

    bool parsed_ = false;
    bool streaming_ = false;
    std::optional<bool> twice_;  // key_given_twice(), once known
    bool list_unsubscribe_ = false;
    bool mail_settings_ = false;
    std::string_view body_;
    json_walker walker_;
    std::vector<node> nodes_;
    std::vector<std::uint32_t> open_;  // while parsing: the containers not closed yet
    std::vector<frame> frames_;
    std::vector<frame> stop_frames_;
    std::vector<frame> path_frames_;  // strings_at: the frames down to the value
    json_walker::result result_ = json_walker::result::invalid;
    const guard_paths* shared_ = nullptr;
    std::vector<node_paths> paths_;  // per node, when shared_ (24 bytes a value)
    std::uint32_t current_ = 0;
    // While classifying: per depth, the last value seen there (written before read).
    std::array<std::uint64_t, max_json_depth + 1> alive_at_;
    std::array<std::uint64_t, max_json_depth + 1> under_at_;
};

}  // namespace detail

std::uint64_t path_index::head_of(std::string_view s) {
    // The first min(8, size) bytes, little-endian, zero-padded; from whole loads (a variable
    // memcpy into a register stores byte by byte and stalls the load that follows).
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const std::size_t n = s.size();
    if (n >= 8) {
        std::uint64_t h;
        std::memcpy(&h, p, 8);
        return h;
    }
    if (n >= 4) {  // two overlapping 4-byte loads
        std::uint32_t lo;
        std::uint32_t hi;
        std::memcpy(&lo, p, 4);
        std::memcpy(&hi, p + n - 4, 4);
        return lo | (static_cast<std::uint64_t>(hi) << (8 * (n - 4)));
    }
    if (n == 0) {
        return 0;
    }
    return p[0] | (static_cast<std::uint64_t>(p[n / 2]) << (8 * (n / 2))) | (static_cast<std::uint64_t>(p[n - 1]) << (8 * (n - 1)));
}

path_index path_index::of(std::initializer_list<const std::vector<guard_field>*> lists) {
    path_index out;
    std::size_t k = 0;
    for (const auto* list : lists) {
        for (const auto& f : *list) {
            if (f.form) {
                continue;
            }
            if (out.paths.size() == 64) {
                path_index fallback;
                fallback.fallback = true;
                return fallback;
            }
            out.lists[k] |= 1ull << out.paths.size();
            out.paths.push_back(f.path.segments);
        }
        ++k;
    }
    out.build_levels();
    return out;
}

void path_index::build_levels() {
    levels.clear();
    root = 0;
    for (std::size_t i = 0; i < paths.size(); ++i) {
        const std::uint64_t bit = 1ull << i;
        if (paths[i].empty()) {
            root |= bit;
            continue;
        }
        if (levels.size() < paths[i].size()) {
            levels.resize(paths[i].size());
        }
        for (std::size_t d = 0; d < paths[i].size(); ++d) {
            const path_segment& seg = paths[i][d];
            level& lv = levels[d];
            switch (seg.k) {
                case path_segment::kind::wildcard: lv.wildcard |= bit; break;
                case path_segment::kind::filter: break;  // refused in guard fields (parse_field)
                case path_segment::kind::index: {
                    auto it = std::find_if(lv.indexes.begin(), lv.indexes.end(),
                                           [&](const auto& e) { return e.first == seg.index; });
                    if (it == lv.indexes.end()) {
                        lv.indexes.emplace_back(seg.index, bit);
                    } else {
                        it->second |= bit;
                    }
                    break;
                }
                case path_segment::kind::names:
                    for (const auto& n : seg.names) {
                        auto it = std::find_if(lv.names.begin(), lv.names.end(),
                                               [&](const auto& e) { return e.first.text == n; });
                        if (it == lv.names.end()) {
                            lv.names.emplace_back(name{head_of(n), n.size(), n}, bit);
                        } else {
                            it->second |= bit;
                        }
                    }
                    break;
            }
        }
        levels[paths[i].size() - 1].ending |= bit;
    }
    for (level& lv : levels) {
        std::stable_sort(lv.names.begin(), lv.names.end(),
                         [](const auto& a, const auto& b) { return a.first.len < b.first.len; });
        lv.by_len.assign(lv.names.empty() ? 0 : lv.names.back().first.len + 2, 0);
        for (const auto& [n, b] : lv.names) {
            ++lv.by_len[n.len + 1];
        }
        for (std::size_t i = 1; i < lv.by_len.size(); ++i) {
            lv.by_len[i] += lv.by_len[i - 1];
        }
    }
}

guard_body::guard_body() : p_{std::make_unique<detail::parsed_body>()} {}
guard_body::~guard_body() = default;
void guard_body::reset(const guard_paths* paths) { p_->reset(paths); }

std::shared_ptr<const guard_paths> guard_paths::of(const std::vector<const guardrail*>& guards) {
    auto out = std::make_shared<guard_paths>();
    path_index& all = out->all;
    for (const guardrail* g : guards) {
        const path_index* ix = nullptr;
        switch (g->k) {
            case guardrail::kind::pii: ix = &g->pii.in_index; break;
            case guardrail::kind::recipients: ix = &g->recipients.index; break;
            case guardrail::kind::content: ix = &g->content.index; break;
            case guardrail::kind::duplicates: ix = &g->duplicates.index; break;
        }
        const std::size_t off = all.paths.size();
        if (ix->fallback || ix->paths.empty() || off + ix->paths.size() > 64) {
            continue;  // it follows its own paths
        }
        all.paths.insert(all.paths.end(), ix->paths.begin(), ix->paths.end());
        out->offsets.emplace_back(ix, static_cast<unsigned>(off));
    }
    if (out->offsets.size() < 2) {
        return nullptr;  // one guard gains nothing: it follows its own paths
    }
    all.build_levels();
    return out;
}

namespace {

bool path_matches(const json_path& p, std::span<const frame> f, bool prefix) {
    if (p.segments.size() > f.size() || (!prefix && p.segments.size() != f.size())) {
        return false;
    }
    for (std::size_t i = 0; i < p.segments.size(); ++i) {
        const auto& seg = p.segments[i];
        switch (seg.k) {
            case path_segment::kind::names:
                if (f[i].array || std::none_of(seg.names.begin(), seg.names.end(), [&](const std::string& n) {
                        return json_key::matches(f[i].key, n);
                    })) {
                    return false;
                }
                break;
            case path_segment::kind::index:
                if (!f[i].array || f[i].index != seg.index) {
                    return false;
                }
                break;
            case path_segment::kind::wildcard: break;
            case path_segment::kind::filter: return false;  // refused in guard fields (parse_field)
        }
    }
    return true;
}

bool any_path(const std::vector<guard_field>& fields, std::span<const frame> f, bool prefix) {
    for (const auto& fl : fields) {
        if (!fl.form && path_matches(fl.path, f, prefix)) {
            return true;
        }
    }
    return false;
}

const std::vector<guard_field>& no_fields() {
    static const std::vector<guard_field> none;
    return none;
}

// Whether a value is at one of a list of JSON paths (exact()) or under one (under()), the
// answers of any_path(fields, frames, false / true), found along a walk in document order: a
// value's frames are its parent's plus its own slot, and its parent was the last value seen
// one level up, so a value only tests its own slot against the paths still alive at its
// parent (most values: none; a top-level key: a lookup by first name). any_path tests every
// path against every frame of every value. Up to three lists at once (a duplicates guard's
// recipients, subjects and templates; exact(k) for list k); under() is for the first list.
// Call visit() for every value the walk shows, in order; when dead() nothing at or under a
// path is below the value (a container may be skipped).
class path_tracker {
public:
    // `doc`/`body`: the shared parse the walk will replay; when its values are classified
    // for this index (guard_paths), visit() reads their bits instead of following the paths.
    path_tracker(const path_index& index, const std::vector<guard_field>& a, const std::vector<guard_field>* b = nullptr,
                 const std::vector<guard_field>* c = nullptr, detail::parsed_body* doc = nullptr,
                 std::string_view body = {})
        : index_{index}, lists_{&a, b, c} {
        const std::size_t n = index.paths.size();
        all_ = n >= 64 ? ~0ull : (1ull << n) - 1;
        if (doc && !index.fallback) {
            if (const int off = doc->shared_offset(body, index); off >= 0) {
                shared_ = doc;
                offset_ = static_cast<unsigned>(off);
            }
        }
    }

    [[gnu::always_inline]] void visit(std::span<const frame> f) {
        if (shared_) {
            const auto& p = shared_->current_paths();
            exact_ = (p.exact >> offset_) & all_;
            shared_alive_ = (p.alive >> offset_) & all_;
            shared_under_ = ((p.under >> offset_) & index_.lists[0]) != 0;
            return;
        }
        const std::size_t d = f.size();
        depth_ = d;
        if (d >= 2 && alive_[d - 1] == 0 && !index_.fallback) {  // the usual case: no path goes on here
            exact_ = 0;
            alive_[d] = 0;
            under_[d] = under_[d - 1];
            return;
        }
        visit_alive(f);
    }
    bool exact(std::size_t list = 0) const {
        return index_.fallback ? (exact_ >> list) & 1u : (exact_ & index_.lists[list]) != 0;
    }
    bool under() const { return shared_ ? shared_under_ : under_[depth_]; }
    bool dead() const { return shared_ ? shared_alive_ == 0 && !shared_under_ : alive_[depth_] == 0 && !under_[depth_]; }
    bool shared() const { return shared_ != nullptr; }

private:
    [[gnu::noinline]] void visit_alive(std::span<const frame> f) {
        const std::size_t d = f.size();
        if (index_.fallback) {
            exact_ = 0;
            for (std::size_t k = 0; k < 3; ++k) {
                if (lists_[k] && any_path(*lists_[k], f, false)) {
                    exact_ |= 1ull << k;
                }
            }
            alive_[d] = ~0ull;  // never dead
            under_[d] = any_path(*lists_[0], f, true);
            return;
        }
        std::uint64_t alive = all_;
        std::uint64_t exact = index_.root;
        bool under = false;
        if (d > 0) {
            under = under_[d - 1];
            const path_step st = step_paths(index_, alive_[d - 1], f);
            alive = st.alive;
            exact = st.exact;
        }
        exact_ = exact;
        alive_[d] = alive;
        under_[d] = under || (exact & index_.lists[0]) != 0;
    }

    const path_index& index_;
    const std::vector<guard_field>* lists_[3];
    const detail::parsed_body* shared_ = nullptr;
    unsigned offset_ = 0;
    std::uint64_t shared_alive_ = 0;
    bool shared_under_ = false;
    std::uint64_t all_ = 0;
    std::uint64_t exact_ = 0;
    std::size_t depth_ = 0;
    // Per depth, for the last value seen there: paths whose first `depth` steps match it, and
    // whether it is under a path. Written before read (a parent comes before its values).
    std::array<std::uint64_t, max_json_depth + 1> alive_;
    std::array<bool, max_json_depth + 1> under_;
};

}  // namespace

namespace detail {

bool decoded_strings(std::string_view json, std::vector<std::string>& out) {
    json_walker walker;
    out.clear();
    const auto res = walker.run(json, [&](std::span<const frame>, value_type t, std::string_view text, std::size_t, bool) {
        if (t == value_type::string) {
            out.emplace_back(text);
        }
        return false;
    });
    return res == json_walker::result::done;
}

std::string path_tracking_mismatch(std::string_view json, const std::vector<guard_field>& fields,
                                   std::size_t* under) {
    json_walker walker;
    const path_index index = path_index::of({&fields});
    path_tracker tracker{index, fields};
    std::string out;
    walker.run(json, [&](std::span<const frame> f, value_type, std::string_view, std::size_t start, bool) {
        tracker.visit(f);
        if (under && tracker.under()) {
            ++*under;
        }
        if (tracker.exact() != any_path(fields, f, false) || tracker.under() != any_path(fields, f, true)) {
            out = "value at " + std::to_string(start) + ": exact " + std::to_string(tracker.exact()) + ", under " +
                  std::to_string(tracker.under());
            return true;
        }
        return false;
    });
    return out;
}

std::string shared_tracking_mismatch(std::string_view json, const std::vector<std::vector<guard_field>>& guards,
                                     std::size_t* shared) {
    std::vector<std::unique_ptr<guardrail>> gs;
    std::vector<const guardrail*> ptrs;
    for (const auto& fields : guards) {
        auto g = std::make_unique<guardrail>();
        g->k = guardrail::kind::content;
        g->content.fields = fields;
        g->content.index = path_index::of({&g->content.fields});
        ptrs.push_back(g.get());
        gs.push_back(std::move(g));
    }
    const auto paths = guard_paths::of(ptrs);
    parsed_body doc;
    doc.reset(paths.get());
    for (const auto& g : gs) {
        const auto& fields = g->content.fields;
        path_tracker tracker{g->content.index, fields, nullptr, nullptr, &doc, json};
        if (shared && tracker.shared()) {
            ++*shared;
        }
        std::string out;
        std::size_t dead_at = std::string_view::npos;  // depth of the dead value we are below
        doc.walk(json, [&](std::span<const frame> f, value_type, std::string_view, std::size_t start, bool) {
            const std::size_t d = f.size();
            if (dead_at != std::string_view::npos && d <= dead_at) {
                dead_at = std::string_view::npos;
            }
            tracker.visit(f);
            const bool exact = any_path(fields, f, false);
            const bool under = any_path(fields, f, true);
            if (dead_at != std::string_view::npos && (exact || under)) {
                out = "value at " + std::to_string(start) + " is on a path below a dead value";
                return true;
            }
            if (dead_at == std::string_view::npos && (tracker.exact() != exact || tracker.under() != under)) {
                out = "value at " + std::to_string(start) + ": exact " + std::to_string(tracker.exact()) + ", under " +
                      std::to_string(tracker.under()) + (tracker.shared() ? " (shared)" : "");
                return true;
            }
            if (dead_at == std::string_view::npos && tracker.dead()) {
                dead_at = d;
            }
            return false;
        });
        if (!out.empty()) {
            return out;
        }
    }
    return {};
}

}  // namespace detail

namespace {

// Whether a key or form field name may be shown in a finding (which reaches logs and the
// client): a short name of letters, digits, `_` and `-` with fewer than 6 digits that holds
// nothing the pii guard would report (an AWS key id used as a key, `AKIAIOSFODNN7EXAMPLE`).
// `form`: a form field name, which may also hold other printable ASCII (`h:X-Tag`,
// `Destination.ToAddresses.member.1`, `to[]`).
bool showable_name(std::string_view key, bool form) {
    std::size_t digits = 0;
    bool simple = !key.empty() && key.size() <= 64;
    for (const char c : key) {
        digits += c >= '0' && c <= '9';
        simple = simple && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' ||
                            (form && c > ' ' && c < 0x7f && c != '"' && c != '\\'));
    }
    constexpr auto every_kind = static_cast<std::uint8_t>(pii_kind::card) | static_cast<std::uint8_t>(pii_kind::ssn) |
                                static_cast<std::uint8_t>(pii_kind::iban) | static_cast<std::uint8_t>(pii_kind::secrets);
    return simple && digits < 6 && !detail::find_pii(every_kind, key, nullptr);
}

// A form field name for a finding: quoted, or `(a name not shown)`.
std::string field_name(std::string_view name) {
    return showable_name(name, true) ? cfg::quote(name) : std::string{"(a name not shown)"};
}

// `$.personalizations[0].to[1].email`. Keys that could carry personal data (an address, a
// long number) are not shown.
std::string render_path(std::span<const frame> f) {
    std::string out = "$";
    for (const auto& fr : f) {
        if (fr.array) {
            out += '[';
            out += std::to_string(fr.index);
            out += ']';
            continue;
        }
        if (showable_name(fr.key, false)) {
            out += '.';
            out += fr.key;
        } else {
            out += "['...']";
        }
    }
    return out;
}

// The arrays a value is in, as the duplicates guard pairs a recipient with its mail's subject
// and template: at[d] names the place of the first d + 1 array indices of its path (at most
// four; never -1, which is the message's own place). A subject belongs to its innermost place;
// a recipient's mail is the innermost of its places that has one, else the message's: a
// SendGrid `personalizations[2].to[5].email` takes `personalizations[2].subject`, an emailSimple
// in a composite request `compositeRequest[1].body.inputs[3].emailAddresses` takes
// `compositeRequest[1].body.inputs[3].emailSubject` (not another input's or subrequest's).
struct array_groups {
    std::array<std::int64_t, 4> at{};
    std::uint8_t n = 0;
    std::int64_t innermost() const { return n ? at[n - 1] : -1; }
};

enum class body_kind : std::uint8_t { json, form, text };

// Whether the content type says JSON (its media type only: `application/x-www-form-urlencoded;
// x=json` is a form).
bool labelled_json(const guard_input& in) {
    const std::string_view ct = in.req.content_type.substr(0, in.req.content_type.find(';'));
    if (ct.size() >= 4 && (ct[ct.size() - 4] | 0x20) == 'j' && (ct[ct.size() - 3] | 0x20) == 's' &&
        (ct[ct.size() - 2] | 0x20) == 'o' && (ct[ct.size() - 1] | 0x20) == 'n') {
        return true;  // application/json, application/vnd.api+json: the guards ask ~10 times a request
    }
    for (std::size_t i = 0; i + 4 <= ct.size(); ++i) {
        if ((ct[i] | 0x20) == 'j' && (ct[i + 1] | 0x20) == 's' && (ct[i + 2] | 0x20) == 'o' && (ct[i + 3] | 0x20) == 'n') {
            return true;
        }
    }
    return false;
}

// What a body labelled JSON that the walk cannot read is, when its bytes show nothing: the
// upstream may still read it (a UTF-16 body, nesting past ours, an escape the raw bytes hide:
// `\u0034111 1111 1111 1111`), so the scan did not see what it would send.
const char* const unreadable_json = "the body is labelled JSON but cannot be read as JSON (UTF-8, nesting up to 512)";

// Whether a body is empty or only blanks (after a UTF-8 byte order mark).
bool blank(std::string_view b) {
    if (b.starts_with(utf8_bom)) {
        b.remove_prefix(utf8_bom.size());
    }
    return b.find_first_not_of(" \t\r\n") == std::string_view::npos;
}

// Whether a body labelled JSON holds something to read: an empty body (a DELETE or GET that
// carries the header anyway, as some clients do on every call) or only blanks is no JSON.
bool holds_json(const guard_input& in) { return labelled_json(in) && !blank(in.req.body); }

body_kind kind_of(const guard_input& in) {
    if (in.query_fields) {
        return body_kind::form;
    }
    // A JSON label on a blank body holds no JSON (a GET or DELETE that carries the header
    // anyway, as some SDKs do on every call): fields read from the query string (as an
    // upstream that takes form fields there reads them) are what the request says, and
    // without any there is nothing to read.
    if (labelled_json(in) && holds_json(in)) {
        return body_kind::json;
    }
    if (in.form) {
        return body_kind::form;
    }
    std::string_view b = in.req.body;
    if (b.starts_with(utf8_bom)) {  // as the walker reads past it (and many JSON parsers do)
        b.remove_prefix(utf8_bom.size());
    }
    for (const char c : b) {
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
            continue;
        }
        return c == '{' || c == '[' ? body_kind::json : body_kind::text;
    }
    return body_kind::text;
}

// form:NAME names one field (rules/form.hpp: a '*' stands for a number, any ASCII case).
bool form_name_matches(const guard_field& f, std::string_view name) { return rules::form_name_matches(f.name, name); }

// The message in a form field's value: its base64 decoded into `buf` for a mime:base64:
// field (nullopt when it is not base64), else the value as written.
std::optional<std::string_view> form_message(const guard_field& f, std::string_view value, std::string& buf) {
    return form_field_message(value, f.base64, buf);
}

// The mime: form field of `fields` that names `name`, or null.
const guard_field* mime_form_field(const std::vector<guard_field>& fields, std::string_view name) {
    for (const auto& x : fields) {
        if (x.mime && x.form && form_name_matches(x, name)) {
            return &x;
        }
    }
    return nullptr;
}

bool form_selected(const std::vector<guard_field>& fields, std::string_view name) {
    for (const auto& f : fields) {
        if (f.form && !f.mime && form_name_matches(f, name)) {
            return true;
        }
    }
    return false;
}

struct scratch {
    std::string addr;
    std::string display;  // a sender's name as shown (the content guard's name: fields)
    // Recipients, subjects and templates of a duplicates guard: their texts in `chars`.
    struct valued {
        std::size_t off = 0;
        std::size_t len = 0;
        std::uint64_t hash = 0;
        // Its places: a subject's or template's own is the innermost; a recipient's mail's
        // subject and template may be at any of them.
        array_groups where;
        // Holds a reference Salesforce fills in from an earlier subrequest of a composite
        // request (`@{contact.Email}`): its text does not say who or what it is.
        bool reference = false;
    };
    std::string chars;
    std::vector<valued> recipients;
    std::vector<valued> subjects;
    std::vector<valued> templates;
    std::vector<std::pair<std::int64_t, std::size_t>> subject_groups;
    std::vector<std::pair<std::int64_t, std::size_t>> template_groups;
    std::vector<std::uint64_t> keys;
    std::vector<std::size_t> key_of;  // the recipient each key is for
    std::vector<std::pair<std::uint64_t, std::size_t>> sorted_keys;
    std::vector<std::uint8_t> repeat;
    // Recipients guard: the addresses that passed the domain checks, in `chars`.
    std::vector<std::pair<std::size_t, std::size_t>> spans;
    std::vector<std::string_view> views;
    // PII and content guards: where the raw messages they read start (their own walk passes over them).
    std::vector<std::size_t> mime_seen;
    std::string message;
    mime_content content;
    // Duplicates guard: a raw message's header values and the addresses in them.
    std::string header_scratch;
    std::vector<std::string_view> addresses;
};

scratch& local() {
    thread_local scratch s;
    return s;
}

// Frees what a large body left in a per-thread buffer (the next request may be small).
template <class T>
void trim(std::vector<T>& v, std::size_t keep = std::size_t{1} << 16) {
    if (v.capacity() > keep) {
        v = {};
    }
}

// The shared parse of the body when the caller has one (the engine: one per request),
// else a parse of this guard's own.
detail::parsed_body& doc_of(const guard_input& in) {
    if (in.body) {
        return in.body->parsed();
    }
    thread_local guard_body own;
    own.reset();
    return own.parsed();
}

guard_result violated(std::string finding) {
    guard_result r;
    r.outcome = guard_result::status::violated;
    r.finding = std::move(finding);
    return r;
}

guard_result invalid_body(std::string why = "body is not valid JSON") {
    guard_result r;
    r.outcome = guard_result::status::invalid_body;
    r.finding = std::move(why);
    return r;
}

// One large message does not pin its memory in a worker thread.
void release(scratch& s) {
    if (s.message.capacity() > (std::size_t{4} << 20)) {
        s.message = {};
    }
    if (s.header_scratch.capacity() > (std::size_t{1} << 20) || s.addresses.capacity() > 4096) {
        s.header_scratch = {};
        s.addresses = {};
    }
    std::size_t bytes = 0;
    for (const auto& t : s.content.texts) {
        bytes += t.text.capacity() + t.where.capacity() + sizeof t;
    }
    if (bytes > (std::size_t{4} << 20) || s.content.texts.capacity() > 4096) {
        s.content = {};
    }
}

// A JSON mime: string's message: its base64 decoded into s.message, nullopt when it is not base64.
std::optional<std::string_view> base64_message(std::string_view text, scratch& s) {
    if (!decode_base64(text, s.message)) {
        return std::nullopt;
    }
    return std::string_view{s.message};
}

// Where a raw message is, for a finding or a reason: at() for a finding, of() for "the raw
// message ... cannot be read". Computed only when asked (most messages find nothing).
struct raw_place {
    std::span<const frame> frames;          // a JSON string's
    const std::string* form_name = nullptr;  // or a form field's
    std::string at() const { return form_name ? "form field " + form_name->substr(0, 64) : render_path(frames); }
    std::string of() const {
        return form_name ? "in form field " + cfg::quote(form_name->substr(0, 64)) : "at " + render_path(frames);
    }
};

// Each raw message at `fields` (mime:; also the base64 files at attachment: fields, which
// are JSON paths only): visit(message, seen, place) -> true to stop.
// `message` is nullopt when one that must be base64 is not; `seen` is where its JSON string
// starts or its form field's index (for the guard's own walk to pass over). A form field's
// value is the message as written (mime:form:, Mailgun messages.mime) or its base64
// (mime:base64:form:, SES v1 RawMessage.Data): the field says which, as the API decides it
// (guessing from the value let a message read one way pass while the API read it the other).
template <class V>
void for_each_raw(const std::vector<guard_field>& fields, const guard_input& in, scratch& s, V&& visit) {
    if (fields.empty()) {
        return;
    }
    switch (kind_of(in)) {
        case body_kind::json: {
            detail::parsed_body& doc = doc_of(in);
            bool stop = false;
            for (const auto& field : fields) {
                if (field.form || stop) {
                    continue;
                }
                doc.strings_at(in.req.body, field.path, [&](std::span<const frame> fr, std::string_view text, std::size_t start) {
                    stop = visit(base64_message(text, s), start, raw_place{fr, nullptr});
                    return stop;
                });
            }
            break;
        }
        case body_kind::form:
            for (std::size_t i = 0; i < in.form->size(); ++i) {
                const auto& [name, value] = (*in.form)[i];
                const guard_field* field = mime_form_field(fields, name);
                if (field && visit(form_message(*field, value, s.message), i, raw_place{{}, &name})) {
                    break;
                }
            }
            break;
        case body_kind::text: break;
    }
    release(s);
}

// The To/Cc/Bcc of a raw message into s.addresses: empty when read, else why not.
std::string_view raw_recipients(std::optional<std::string_view> message, scratch& s) {
    s.addresses.clear();
    if (!message) {
        return "it is not base64";
    }
    if (!mime_recipients(*message, s.header_scratch, s.addresses)) {
        return "its To, Cc and Bcc cannot be read for certain";
    }
    return {};
}

// The raw messages at `fields`, each read as a mail client shows it (mime_content_of):
// f(piece, message, place) -> true when it found something. s.mime_seen gets where they
// are. unreadable: `why` says what could not be read (the first one; the others are still read).
enum class mime_outcome : std::uint8_t { clean, found, unreadable };

template <class F>
mime_outcome read_messages(const std::vector<guard_field>& fields, const guard_input& in, scratch& s, std::string& why,
                           F&& f) {
    s.mime_seen.clear();
    mime_outcome out = mime_outcome::clean;
    for_each_raw(fields, in, s, [&](std::optional<std::string_view> message, std::size_t seen, const raw_place& place) {
        s.mime_seen.push_back(seen);
        std::string w = "it is not base64";
        if (!message || !mime_content_of(*message, s.content, &w)) {
            if (out == mime_outcome::clean) {
                why = "the raw message " + place.of() + " cannot be read: " + w;
                out = mime_outcome::unreadable;
            }
            return false;
        }
        for (const auto& t : s.content.texts) {
            if (f(t, s.content, place)) {
                out = mime_outcome::found;
                return true;
            }
        }
        return false;
    });
    return out;
}

// read_messages' outcome as the pii and content guards report it: a finding, or nothing (an
// unreadable message goes to `unreadable`, reported if the guard finds nothing else).
std::optional<guard_result> message_finding(mime_outcome m, const detail::text_hit& hit, const std::string& where,
                                            std::string& why, std::string& unreadable) {
    if (m == mime_outcome::found) {
        return violated(hit.what + " at offset " + std::to_string(hit.offset) + " of " + where);
    }
    if (m == mime_outcome::unreadable) {
        unreadable = std::move(why);
    }
    return std::nullopt;
}

// Whether a JSON string (by where it starts) or a form field (by its index) was read as a message.
bool passed_over(const scratch& s, std::size_t start) {
    return !s.mime_seen.empty() && std::find(s.mime_seen.begin(), s.mime_seen.end(), start) != s.mime_seen.end();
}

// ---------------------------------------------------------------------------------------

// What the guard finds; a raw message it could not read goes to `unreadable` (the rest of
// the body is still read: a finding there wins over the unreadable message).
// Whether a key or form name is worth a PII scan: nine digits or more (an SSN has nine, a
// card twelve or more, an IBAN more). Every key of a body passes here; almost none scan.
constexpr std::size_t key_pii_min = 9;
bool key_may_hold_pii(std::string_view key) {
    if (key.size() < key_pii_min) {
        return false;
    }
    std::size_t digits = 0;
    for (const char c : key) {
        digits += c >= '0' && c <= '9';
    }
    return digits >= key_pii_min;
}

// A JSON number in exponent form (`4111111111111111e0`, `4.111111111111111E15`) as the whole
// number a template engine prints for it (JavaScript, Python: `4111111111111111`), so the
// scan sees the digits it would send. False for anything else: not such a number, not whole,
// below 1, or more than 24 digits (no card, SSN or account number then).
bool exponent_number_digits(std::string_view t, std::string& out) {
    // Any length: zeros pad a number as far as JSON lets them (0.000…04111111111111111e25,
    // 4111111.1111111110000…e9); they are dropped below, and what is left is bounded.
    if (t.size() < 3 || !(t[0] == '-' || (t[0] >= '0' && t[0] <= '9'))) {
        return false;
    }
    const auto e = t.find_first_of("eE");
    if (e == std::string_view::npos || e + 1 >= t.size()) {
        return false;
    }
    std::string digits;
    std::size_t point = std::string::npos;  // digits before the decimal point
    for (std::size_t i = t[0] == '-' ? 1 : 0; i < e; ++i) {
        if (t[i] == '.' && point == std::string::npos) {
            point = digits.size();
        } else if (t[i] >= '0' && t[i] <= '9') {
            digits += t[i];
        } else {
            return false;
        }
    }
    if (point == std::string::npos) {
        point = digits.size();
    }
    // Zeros before the first significant digit move the point; zeros after the last one
    // change nothing (the whole part is padded back below). Then at most 24 digits matter.
    const auto lead0 = digits.find_first_not_of('0');
    if (lead0 == std::string::npos) {
        return false;  // zero
    }
    const long shifted_point = static_cast<long>(point) - static_cast<long>(lead0);
    digits.erase(0, lead0);
    digits.erase(digits.find_last_not_of('0') + 1);
    if (digits.size() > 24) {
        return false;
    }
    std::size_t i = e + 1;
    const bool negative = t[i] == '-';
    if (t[i] == '-' || t[i] == '+') {
        ++i;
    }
    if (i == t.size()) {
        return false;
    }
    while (i + 1 < t.size() && t[i] == '0') {
        ++i;  // e0015 is e15 (JSON allows the zeros)
    }
    // Up to 18 digits (zeros around the mantissa move the point as far as the exponent
    // moves it back); the whole part is bounded below.
    if (t.size() - i > 18) {
        return false;
    }
    long long exp = 0;
    for (; i < t.size(); ++i) {
        if (t[i] < '0' || t[i] > '9') {
            return false;
        }
        exp = exp * 10 + (t[i] - '0');
    }
    const long long whole = shifted_point + (negative ? -exp : exp);  // digits before the point now
    if (whole <= 0 || whole > 24) {
        return false;
    }
    if (static_cast<std::size_t>(whole) < digits.size() &&
        digits.find_first_not_of('0', static_cast<std::size_t>(whole)) != std::string::npos) {
        return false;  // not whole
    }
    digits.resize(static_cast<std::size_t>(whole), '0');
    const auto lead = digits.find_first_not_of('0');
    if (lead == std::string::npos) {
        return false;
    }
    out.assign(digits, lead);
    return true;
}

// In a string that holds a JSON document (its first character past blanks `{` or `[`):
// the first number in exponent form that is whole and whose digits (in `out`) hit(out)
// accepts, by its offset in the string; nullopt when there is none. Linear; other strings
// are not looked into.
template <class Hit>
std::optional<std::size_t> embedded_exponent_number(std::string_view text, std::string& out, Hit&& hit) {
    const auto first = text.find_first_not_of(" \t\r\n");
    if (first == std::string_view::npos || (text[first] != '{' && text[first] != '[') ||
        text.find_first_of("eE") == std::string_view::npos) {
        return std::nullopt;
    }
    // Only a JSON number: not the text of the document's strings (printed as written: an id
    // `c0ffee42e14fab` is no number), and a token that starts and ends where a value does.
    auto digit = [](char c) { return c >= '0' && c <= '9'; };
    auto opens = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '[' || c == ',' || c == ':'; };
    auto closes = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ']' || c == ',' || c == '}'; };
    for (std::size_t i = first; i < text.size();) {
        if (text[i] == '"') {
            for (++i; i < text.size() && text[i] != '"'; ++i) {
                i += text[i] == '\\' ? 1 : 0;  // an escaped character, a quote perhaps
            }
            ++i;
            continue;
        }
        const bool starts = digit(text[i]) || (text[i] == '-' && i + 1 < text.size() && digit(text[i + 1]));
        if (!starts || (i > 0 && !opens(text[i - 1]))) {
            ++i;
            continue;
        }
        std::size_t j = i + 1;
        bool exponent = false;
        while (j < text.size() && (digit(text[j]) || text[j] == '.' || text[j] == 'e' || text[j] == 'E' ||
                                   text[j] == '+' || text[j] == '-')) {
            exponent = exponent || text[j] == 'e' || text[j] == 'E';
            ++j;
        }
        if (exponent && (j == text.size() || closes(text[j])) && exponent_number_digits(text.substr(i, j - i), out) &&
            hit(out)) {
            return i;
        }
        i = j;
    }
    return std::nullopt;
}

guard_result check_pii_fields(const pii_guard& g, const guard_input& in, std::string& unreadable) {
    const std::string_view body = in.req.body;
    detail::text_hit hit;
    const std::size_t min_length = detail::pii_min_length(g.kinds);
    // The digits a number in exponent form prints as, read like any text (into `hit`).
    auto pii_in_digits = [&](const std::string& digits) {
        return digits.size() >= min_length && detail::find_pii(g.kinds, digits, &hit);
    };
    scratch& s = local();
    {
        std::string why;
        std::string where;
        const auto m = read_messages(g.mime, in, s, why, [&](const mime_text& t, const mime_content&, const raw_place& at) {
            // (Text parts and headers are in UTF-8 by now, converted from their charsets.)
            const bool file = t.k == mime_text::kind::attachment;
            if (t.text.size() < min_length || !(file ? detail::find_pii_in_file(g.kinds, t.text, &hit)
                                                      : detail::find_pii(g.kinds, t.text, &hit))) {
                return false;
            }
            where = t.where + " of the raw message at " + at.at();
            return true;
        });
        if (auto r = message_finding(m, hit, where, why, unreadable)) {
            return std::move(*r);
        }
    }
    if (!g.attachments.empty() && kind_of(in) == body_kind::json) {
        // The base64 at each attachment: path, decoded as for_each_raw does a raw message's. A
        // string that is not base64 is no file the upstream would send; without `in` it is
        // read as written by the walk below like any other value.
        std::string where;
        for_each_raw(g.attachments, in, s, [&](std::optional<std::string_view> file, std::size_t, const raw_place& at) {
            if (!file || file->size() < min_length || !detail::find_pii_in_file(g.kinds, *file, &hit)) {
                return false;
            }
            where = at.at();
            return true;
        });
        if (!where.empty()) {
            return violated(hit.what + " at offset " + std::to_string(hit.offset) + " of the attachment at " + where +
                            " (decoded from base64)");
        }
    }
    switch (kind_of(in)) {
        case body_kind::json: {
            std::string where;
            std::size_t offset = 0;
            std::string shown;
            auto found = [&](std::string_view text, std::size_t start, bool escaped) {
                if (text.size() < 3 || passed_over(s, start)) {
                    return false;
                }
                if (text.size() >= min_length && detail::find_pii(g.kinds, text, &hit)) {
                    offset = escaped ? raw_offset(body, start, hit.offset) : start + hit.offset;
                    return true;
                }
                // A number in exponent form, as it would be printed: at the number's start.
                if (exponent_number_digits(text, shown) && shown.size() >= min_length &&
                    detail::find_pii(g.kinds, shown, &hit)) {
                    hit.what += " (a number written with an exponent)";
                    offset = start;
                    return true;
                }
                // The same inside a JSON document carried in a string (SES TemplateData,
                // ReplacementTemplateData): the API parses it and its template prints the
                // number whole, which the text scan above does not read as digits.
                if (const auto at = embedded_exponent_number(text, shown, pii_in_digits)) {
                    hit.what += " (a number written with an exponent, in JSON inside a string)";
                    offset = escaped ? raw_offset(body, start, *at) : start + *at;
                    return true;
                }
                return false;
            };
            detail::parsed_body& doc = doc_of(in);
            json_walker::result res;
            bool in_key = false;
            // A key with a long run of digits in it (`"X-Ref-4111111111111111": "1"` under
            // SendGrid's headers becomes a header of the mail; Handlebars prints keys too).
            auto found_key = [&](std::string_view key, std::size_t start) {
                if (!key_may_hold_pii(key) || !detail::find_pii(g.kinds, key, &hit)) {
                    return false;
                }
                in_key = true;
                offset = start;
                return true;
            };
            if (g.every_value) {
                // Every string and number: no paths to follow, a path only for a finding.
                res = doc.walk_values(body, found, key_pii_min, found_key);
                if (res == json_walker::result::stopped) {
                    where = render_path(doc.path_of_stop());
                }
            } else {
                path_tracker in_paths{g.in_index, g.in, nullptr, nullptr, &doc, body};
                res = doc.walk(body, [&](std::span<const frame> f, value_type t, std::string_view text, std::size_t start,
                                         bool escaped) {
                    in_paths.visit(f);
                    if (in_paths.dead()) {
                        return walk_next::skip;
                    }
                    if (is_container(t) || !in_paths.under() || !found(text, start, escaped)) {
                        return walk_next::go;
                    }
                    where = render_path(f);
                    return walk_next::stop;
                });
            }
            if (res == json_walker::result::stopped) {
                return violated(hit.what + (in_key ? " in the key of the value at body offset " : " at body offset ") +
                                std::to_string(offset) + " (" + where + ")");
            }
            if (res == json_walker::result::done) {
                return {};
            }
            if (holds_json(in) && unreadable.empty()) {
                unreadable = unreadable_json;
            }
            break;  // not JSON after all: scan the bytes
        }
        case body_kind::form: {
            for (std::size_t i = 0; i < in.form->size(); ++i) {
                const auto& [name, value] = (*in.form)[i];
                if ((!g.every_value && !form_selected(g.in, name)) || passed_over(s, i)) {
                    continue;
                }
                // (A multipart form's files are values: any value is read as UTF-16 too when it is.)
                if (detail::find_pii_in_file(g.kinds, value, &hit)) {
                    return violated(hit.what + " in form field " + field_name(name) + " at offset " +
                                    std::to_string(hit.offset));
                }
                // SES v1's TemplateData: JSON in a field, its numbers printed whole.
                std::string shown;
                if (const auto at = embedded_exponent_number(value, shown, pii_in_digits)) {
                    return violated(hit.what + " (a number written with an exponent, in JSON) in form field " +
                                    field_name(name) + " at offset " + std::to_string(*at));
                }
                // Its name too (Mailgun's `v:NAME` becomes a header of the mail).
                if (g.every_value && key_may_hold_pii(name) && detail::find_pii(g.kinds, name, &hit)) {
                    return violated(hit.what + " in the name of form field " + std::to_string(i));
                }
            }
            return {};
        }
        case body_kind::text: break;
    }
    if (detail::find_pii(g.kinds, body, &hit)) {
        return violated(hit.what + " at body offset " + std::to_string(hit.offset));
    }
    return {};
}

// Why an address is refused for its domain, or empty (suppression is checked after the walk).
std::string_view refuse_domain(const recipients_guard& g, std::string_view addr, detail::domain_memo& block,
                               detail::domain_memo& allow) {
    // `a@evil.com>x@example.com`: which of the two is the recipient depends on the parser
    // (we would take example.com); an address with a stray bracket or a second '@' is
    // refused rather than guessed at.
    // One pass (find_first_of("<>") calls memchr once per byte of the address).
    // So is one with a comment left in it (`Jane <ceo@evil.com (x)>`: Python's parser drops
    // it, and the domain read here would be `evil.com(x)`, in no list).
    std::size_t ats = 0;
    std::size_t at = 0;
    bool bracket = false;
    for (std::size_t i = 0; i < addr.size(); ++i) {
        const char c = addr[i];
        bracket |= c == '<' || c == '>' || c == '(' || c == ')';
        if (c == '@') {
            ++ats;
            at = i;
        }
    }
    // A Salesforce composite request's reference to an earlier subrequest's result
    // (`@{q.records[0].Email}`): the address it becomes is not known here, so no block or
    // suppression list can judge it (the duplicates guard books no such pair either).
    if (addr.find("@{") != std::string_view::npos) {
        return "recipient is a composite request's reference (@{...}) to another subrequest's result, which this "
               "guard cannot read";
    }
    if (bracket || ats != 1) {
        return "recipient address malformed";
    }
    const std::string_view domain = addr.substr(at + 1);
    if (!g.block.empty() && !domain.empty() && domain.front() == '[') {
        return "recipient domain is an address literal, which block_domains cannot judge";
    }
    if (!g.block.empty() && block.contains(domain)) {
        return "recipient domain blocked";
    }
    if (!g.allow.empty() && !allow.contains(domain)) {
        return "recipient domain not in allowlist";
    }
    return {};
}


// SendGrid v2's X-SMTPAPI form field: a JSON header whose `to` replaces the request's
// recipients and whose filters and substitutions add more. The recipients and duplicates
// guards do not read it, so a form that has one is an invalid body to them (fail closed).
bool smtpapi_field(std::string_view name) { return ieq(name, "x-smtpapi"); }
constexpr std::string_view smtpapi_unread =
    "form field x-smtpapi (SendGrid v2) names recipients of its own, which this guard does not read; send through "
    "/v3/mail/send";

// Calls f(address, where) for every recipient at `fields`; false if the body should be JSON
// and is not.
template <class F>
bool for_each_value(const std::vector<guard_field>& fields, const path_index& index, const guard_input& in,
                    bool split_lists, F&& f, std::string* why = nullptr) {
    switch (kind_of(in)) {
        case body_kind::json: {
            detail::parsed_body& doc = doc_of(in);
            path_tracker paths{index, fields, nullptr, nullptr, &doc, in.req.body};
            const bool any_mime =
                std::any_of(fields.begin(), fields.end(), [](const guard_field& x) { return x.mime && !x.form; });
            bool unreadable = false;
            auto res = doc.walk(in.req.body, [&](std::span<const frame> fr, value_type t, std::string_view text,
                                                 std::size_t, bool) {
                paths.visit(fr);
                if (paths.dead()) {
                    return walk_next::skip;
                }
                if (t != value_type::string || !paths.exact()) {
                    return walk_next::go;
                }
                if (any_mime && std::any_of(fields.begin(), fields.end(), [&](const guard_field& x) {
                        return x.mime && !x.form && path_matches(x.path, fr, false);
                    })) {
                    // A raw message (SES): its own To/Cc/Bcc headers are its recipients.
                    scratch& s = local();
                    if (const auto fault = raw_recipients(base64_message(text, s), s); !fault.empty()) {
                        unreadable = true;
                        if (why) {
                            *why = "the raw message at " + render_path(fr) + " cannot be read: " + std::string{fault};
                        }
                        return walk_next::stop;
                    }
                    for (const auto a : s.addresses) {
                        if (f(a, [fr] { return render_path(fr) + " (MIME header)"; })) {
                            return walk_next::stop;
                        }
                    }
                    return walk_next::go;
                }
                // (A plain loop: find_first_of calls memchr on its set for every byte.)
                if (split_lists && std::any_of(text.begin(), text.end(), [](char c) { return c == ',' || c == ';'; })) {
                    // `"ceo@competitor.com, Jane <jane@example.com>"`: an upstream that reads
                    // the string as an address list sends to both; each is checked, as in a
                    // form field, and a list that splits more than one way is refused.
                    bool stop = false;
                    const bool split = for_each_address(text, [&](std::string_view item) {
                        if (!stop) {
                            stop = f(item, [fr] { return render_path(fr); });
                        }
                    });
                    if (!split && !stop) {
                        // Still read as one address, as before (`x@evil.io (a,b)` is at
                        // evil.io): an invalid body may be let through (on_invalid_body), a
                        // blocked domain must not be.
                        stop = f(text, [fr] { return render_path(fr); });
                        if (!stop) {
                            unreadable = true;
                            if (why) {
                                *why = "the value at " + render_path(fr) + " " + std::string{unsplittable_list};
                            }
                        }
                    }
                    return stop || !split ? walk_next::stop : walk_next::go;
                }
                return f(text, [fr] { return render_path(fr); }) ? walk_next::stop : walk_next::go;
            });
            return res != json_walker::result::invalid && !unreadable;
        }
        case body_kind::form: {
            for (const auto& field : *in.form) {
                // (Named, not a structured binding: clang before 16 cannot capture those.)
                const std::string& name = field.first;
                const std::string& value = field.second;
                if (smtpapi_field(name)) {
                    if (why) {
                        *why = smtpapi_unread;
                    }
                    return false;
                }
                if (const guard_field* mf = mime_form_field(fields, name)) {
                    // A raw message (SES v1 SendRawEmail): its own To/Cc/Bcc headers.
                    scratch& s = local();
                    if (const auto fault = raw_recipients(form_message(*mf, value, s.message), s); !fault.empty()) {
                        if (why) {
                            *why = "the raw message in form field " + field_name(name) + " cannot be read: " +
                                   std::string{fault};
                        }
                        return false;
                    }
                    auto where = [&name] { return "form field " + name.substr(0, 64) + " (MIME header)"; };
                    for (const auto a : s.addresses) {
                        if (f(a, where)) {
                            return true;
                        }
                    }
                    continue;
                }
                if (!form_selected(fields, name)) {
                    continue;
                }
                bool stop = false;
                auto where = [&name] { return "form field " + name.substr(0, 64); };
                if (split_lists) {
                    const bool split = for_each_address(value, [&](std::string_view item) {
                        if (!stop) {
                            stop = f(item, where);
                        }
                    });
                    if (!split && !stop) {
                        if (why) {
                            *why = "form field " + field_name(name) + " " + std::string{unsplittable_list};
                        }
                        return false;
                    }
                } else {
                    stop = f(value, where);
                }
                if (stop) {
                    return true;
                }
            }
            return true;
        }
        case body_kind::text: return true;
    }
    return true;
}

// The path (or form field) of the k-th recipient item, for a finding found after the walk.
// A recipient value of only blanks (an optional Salesforce cc list left ""): nobody, to the
// recipients and duplicates guards alike.
bool blank_value(std::string_view v) { return v.find_first_not_of(" \t\r\n") == std::string_view::npos; }

std::string where_recipient(const recipients_guard& g, const guard_input& in, std::size_t k) {
    std::string out;
    std::size_t index = 0;
    for_each_value(g.fields, g.index, in, true, [&](std::string_view item, auto&& where) {
        if (blank_value(item)) {
            return false;  // not counted (check_recipients)
        }
        if (index++ == k) {
            out = where();
            return true;
        }
        return false;
    });
    return out;
}

// SendGrid's mail_settings.bypass_list_management, bypass_unsubscribe_management,
// bypass_spam_management and bypass_bounce_management with `"enable": true` send past
// SendGrid's own unsubscribe, spam-report and bounce lists. The setting's name, or "".
// Keys as Go folds them; every copy of a key given twice counts (fail closed). Call after a
// walk of the body (the parse notes whether it has a top-level mail_settings at all).
std::string_view suppression_bypass(const guard_input& in) {
    const std::string_view body = in.req.body;
    if (kind_of(in) != body_kind::json || !doc_of(in).may_have_mail_settings()) {
        return {};
    }
    using json_key::matches;
    static constexpr std::string_view names[] = {"bypass_list_management", "bypass_unsubscribe_management",
                                                 "bypass_spam_management", "bypass_bounce_management"};
    std::string_view found;
    doc_of(in).walk(body, [&](std::span<const frame> f, value_type t, std::string_view text, std::size_t, bool) {
        if (f.empty()) {
            return walk_next::go;
        }
        if (f[0].array || !matches(f[0].key, "mail_settings") || f.size() > 3) {
            return walk_next::skip;
        }
        if (f.size() == 2) {
            const bool bypass =
                !f[1].array && std::any_of(std::begin(names), std::end(names), [&](auto n) { return matches(f[1].key, n); });
            return bypass ? walk_next::go : walk_next::skip;
        }
        if (f.size() == 3 && !f[2].array && matches(f[2].key, "enable") && t == value_type::scalar && text == "true") {
            for (const auto n : names) {
                if (matches(f[1].key, n)) {
                    found = n;
                }
            }
            return walk_next::stop;
        }
        return walk_next::go;
    });
    return found;
}

// Recipients in order, each refused by the first of: blocked domain, domain not allowed,
// suppressed. The walk checks the domains and stops at the first refused one; the addresses
// before it are then looked up in the suppression list in order (so a suppressed recipient
// before a blocked one is still the one reported).
guard_result check_recipients(const recipients_guard& g, const guard_input& in) {
    scratch& s = local();
    guard_result refused;
    std::size_t index = 0;
    detail::domain_memo block{g.block};
    detail::domain_memo allow{g.allow};
    const bool suppression = g.suppressed && g.suppressed->size() > 0;
    if (s.chars.capacity() > (std::size_t{4} << 20)) {
        s.chars = {};  // one large body does not pin its memory
    }
    trim(s.spans);
    trim(s.views);
    s.chars.clear();
    s.spans.clear();
    std::string why = "body is not valid JSON";
    const bool ok = for_each_value(g.fields, g.index, in, true, [&](std::string_view item, auto&& where) {
        if (blank_value(item)) {
            return false;  // a blank value (an optional cc list left "") names nobody, as a blank list item
        }
        detail::normalize_address(item, s.addr);
        const std::string_view why = refuse_domain(g, s.addr, block, allow);
        if (!why.empty()) {
            refused = violated(std::string{why} + " #" + std::to_string(index) + " " + mask_address(s.addr) + " (" +
                               where() + ")");
            return true;
        }
        if (suppression) {
            s.spans.emplace_back(s.chars.size(), s.addr.size());
            s.chars += s.addr;
        }
        ++index;
        return false;
    }, &why);
    if (suppression && !s.spans.empty()) {
        s.views.clear();
        for (const auto& [off, len] : s.spans) {
            s.views.push_back(std::string_view{s.chars}.substr(off, len));
        }
        const std::size_t k = g.suppressed->first_of(s.views);
        if (k < s.views.size()) {
            return violated("suppressed recipient #" + std::to_string(k) + " " + mask_address(s.views[k]) + " (" +
                            where_recipient(g, in, k) + ")");
        }
    }
    if (refused.outcome != guard_result::status::clean) {
        return refused;
    }
    if (!ok) {
        return invalid_body(std::move(why));
    }
    if (g.refuse_bypass) {
        if (const auto setting = suppression_bypass(in); !setting.empty()) {
            return violated("the send asks the API to skip its suppression lists ($.mail_settings." +
                            std::string{setting} + ".enable)");
        }
    }
    // (The query's pass beside a JSON body adds what it holds; the body's pass judges.) A
    // blank body is a read (GET, HEAD, OPTIONS) or a DELETE, not judged, unless the method
    // writes: a POST, PUT or PATCH that takes no body sends to an audience defined elsewhere
    // (HubSpot's marketing email publish).
    const auto writes = [](std::string_view m) { return m == "POST" || m == "PUT" || m == "PATCH"; };
    if (g.require_recipients && index == 0 && !in.query_fields && (!blank(in.req.body) || writes(in.req.method))) {
        return violated("no recipient in the fields this guard reads (a send to a list or a segment, whose audience "
                        "cannot be checked here)");
    }
    return {};
}

// `list_unsubscribe_keys`: whether the body has a key List-Unsubscribe at all (the parse knows).
bool unsubscribe_setting(std::span<const frame> f, value_type t, std::string_view text, bool list_unsubscribe_keys) {
    const std::size_t d = f.size();
    // What satisfies the check is read no more leniently than its API reads it (matching
    // more here would pass a send with no unsubscribe): SendGrid's struct fields as Go folds
    // them, SES's key exactly, a header name in ASCII case only (Go does not fold map keys).
    using json_key::matches;
    if (d == 1 && !f[0].array && (matches(f[0].key, "asm") || f[0].key == "ListManagementOptions") &&
        t == value_type::object) {
        return true;
    }
    if (d == 3 && t == value_type::scalar && text == "true" && matches(f[0].key, "tracking_settings") &&
        matches(f[1].key, "subscription_tracking") && matches(f[2].key, "enable")) {
        return true;
    }
    // A header SendGrid sends ($.headers, $.personalizations[*].headers) with a value that
    // unsubscribes (not an empty one, nor one in dynamic_template_data).
    return list_unsubscribe_keys && t == value_type::string && (d == 2 || d == 4) && !f[d - 1].array &&
           !f[d - 2].array && ieq(f[d - 1].key, "List-Unsubscribe") && matches(f[d - 2].key, "headers") &&
           (d == 2 || (matches(f[0].key, "personalizations") && f[1].array)) && list_unsubscribe_value(text);
}

// Whether a value below this container (at `f`, not the root) could be one unsubscribe_setting
// accepts: $.tracking_settings.subscription_tracking.enable, or a List-Unsubscribe key under
// headers (the parse knows whether the body has such a key at all).
bool may_hold_unsubscribe_setting(const detail::parsed_body& doc, std::span<const frame> f) {
    return (!f[0].array && json_key::matches(f[0].key, "tracking_settings")) || doc.may_have_key_list_unsubscribe();
}

// A template id written as a JSON number (HubSpot's emailId), not true, false or null.
bool numeric_id(value_type t, std::string_view text) {
    return t == value_type::scalar && !text.empty() && (text[0] == '-' || (text[0] >= '0' && text[0] <= '9'));
}

// Whether a non-ASCII letter (or ideograph) starts at s[k]: a code point from U+00C0 on,
// but for × and ÷, the spaces, punctuation, symbols and arrows (U+2000-U+2BFF), CJK
// punctuation (U+3000-U+303F), variation selectors and small forms (U+FE00-U+FE6F), the
// full-width punctuation (U+FF00-U+FF20) and anything past the BMP's letters (emoji).
// An unsubscribe word must hold one, or an ASCII letter: `»»` or two no-break spaces would
// match any text.
bool word_letter_at(std::string_view s, std::size_t k) {
    const std::size_t n = utf8_sequence(s, k);
    if (n < 2) {
        return false;
    }
    const auto b = [&](std::size_t j) { return static_cast<std::uint32_t>(static_cast<unsigned char>(s[k + j])); };
    const std::uint32_t cp = n == 2   ? ((b(0) & 0x1F) << 6) | (b(1) & 0x3F)
                             : n == 3 ? ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F)
                                      : 0x10000;
    return cp >= 0xC0 && cp != 0xD7 && cp != 0xF7 && !(cp >= 0x2000 && cp <= 0x2BFF) && !(cp >= 0x3000 && cp <= 0x303F) &&
           !(cp >= 0xFE00 && cp <= 0xFE6F) && !(cp >= 0xFF00 && cp <= 0xFF20) && cp < 0x10000;
}

// An unsubscribe word as the scan reads it (has_unsubscribe_word): case-folded (fold_case), its
// words separated by single spaces (any run of blanks in the text matches one); nullopt
// unless it is 3 to 64 bytes so, with a letter and no control character.
std::optional<std::string> unsubscribe_word(std::string_view given) {
    std::string w;
    bool letter = false;
    bool control = false;
    for (std::size_t k = 0; k < given.size(); ++k) {
        const char c = given[k];
        const auto u = static_cast<unsigned char>(c);
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            if (!w.empty() && w.back() != ' ') {
                w += ' ';
            }
            continue;
        }
        control = control || u < 0x20 || u == 0x7f;
        letter = letter || ((u | 0x20) >= 'a' && (u | 0x20) <= 'z') || word_letter_at(given, k);
        w += c;
    }
    if (!w.empty() && w.back() == ' ') {
        w.pop_back();
    }
    if (w.size() < 3 || w.size() > 64 || control || !letter) {
        return std::nullopt;
    }
    return detail::fold_case(w);
}

// Whether the send names a template and every template it names is in the guard's
// unsubscribe_templates (their stored copies carry the unsubscribe link, as the operator
// says): SendGrid's template_id, SES's template name or ARN, HubSpot's emailId, Mailgun's
// template, Salesforce's emailTemplateId (the duplicates guard's template fields). A template
// named twice (a key given twice) must be listed both times; a body that cannot be read names
// none. Nor does a send that also carries content of its own, which the API sends as written
// instead (SES Content.Simple beside a template key of another API, an inline
// TemplateContent, a Salesforce input with its own emailBody: own_content_field; Mailgun html
// or text).
bool names_only_listed_templates(const content_guard& g, const guard_input& in) {
    bool named = false;
    bool unlisted = false;
    auto see = [&](std::string_view id) {
        named = true;
        unlisted = unlisted || std::find(g.unsubscribe_templates.begin(), g.unsubscribe_templates.end(), id) ==
                                   g.unsubscribe_templates.end();
        return unlisted;
    };
    switch (kind_of(in)) {
        case body_kind::json: {
            detail::parsed_body& doc = doc_of(in);
            path_tracker paths{g.template_index, g.template_fields, nullptr, nullptr, &doc, in.req.body};
            const auto res = doc.walk(in.req.body, [&](std::span<const frame> fr, value_type t, std::string_view text,
                                                        std::size_t, bool) {
                paths.visit(fr);
                if (paths.dead()) {
                    return walk_next::skip;
                }
                if ((t != value_type::string && !numeric_id(t, text)) || !paths.exact()) {
                    return walk_next::go;
                }
                return see(text) ? walk_next::stop : walk_next::go;
            });
            if (res == json_walker::result::invalid) {
                return false;
            }
            break;
        }
        case body_kind::form:
            for (const auto& [name, value] : *in.form) {
                if (form_selected(g.template_fields, name) && see(value)) {
                    return false;
                }
                if ((ieq(name, "html") || ieq(name, "text") || ieq(name, "amp-html")) && !blank(value)) {
                    return false;  // Mailgun's own content beside its template
                }
            }
            break;
        case body_kind::text: return false;
    }
    if (!named || unlisted) {
        return false;
    }
    // (SendGrid's `content` beside a legacy template goes into the template's <%body%>, inside
    // the frame that carries the footer: not content of its own here.)
    if (const auto own = own_content_field(in.req.content_type, in.req.body, in.req.query,
                                           in.req.upstream_path.empty() ? in.req.path : in.req.upstream_path);
        !own.empty() && own != "content") {
        return false;
    }
    return true;
}

// A sender's name as shown, searched for terms and links: a name is no unsubscribe link.
bool find_in_name(const content_guard& g, std::string_view shown, detail::text_hit& hit) {
    bool ignored = true;
    return detail::find_content(g, shown, ignored, &hit);
}

constexpr std::string_view unreadable_name =
    " cannot be read: an encoded word (=?charset?...?=) in it is in a charset not read here or does not decode, "
    "so what a mail client shows is unknown";

// What the guard finds; a raw message or a sender's name it could not read goes to
// `unreadable` (the rest of the body is still read: a finding there wins over it).
guard_result check_content_fields(const content_guard& g, const guard_input& in, std::string& unreadable) {
    const std::string_view body = in.req.body;
    bool unsubscribe = false;
    detail::text_hit hit;
    bool scan_raw = false;
    scratch& s = local();
    {
        std::string why;
        std::string where;
        const auto m = read_messages(g.mime, in, s, why, [&](const mime_text& t, const mime_content& msg, const raw_place& at) {
            if (msg.list_unsubscribe) {
                unsubscribe = true;
            }
            if (!t.sender.empty()) {
                // The message's own From: its sender's name shows (offsets in the name as shown).
                if (!find_in_name(g, t.sender, hit)) {
                    return false;
                }
                where = "the sender's name in the From header of the raw message at " + at.at();
                return true;
            }
            if (t.k == mime_text::kind::header || t.k == mime_text::kind::attachment ||
                !detail::find_content(g, t.text, unsubscribe, &hit)) {
                return false;
            }
            where = t.where + " of the raw message at " + at.at();
            return true;
        });
        if (auto r = message_finding(m, hit, where, why, unreadable)) {
            return std::move(*r);
        }
    }
    switch (kind_of(in)) {
        case body_kind::json: {
            std::string where;
            std::size_t offset = 0;
            detail::parsed_body& doc = doc_of(in);
            path_tracker paths{g.index, g.fields, &g.names, nullptr, &doc, body};
            // An unsubscribe in a value the upstream never reads (a key given twice, the
            // later copy without it) does not count; a few such copies are looked at, past
            // them the send counts as without one.
            int shadowed_left = 64;
            auto counts = [&] {
                if (!doc.current_shadowed()) {
                    return true;
                }
                --shadowed_left;
                return false;
            };
            auto res = doc.walk(body, [&](std::span<const frame> f, value_type t, std::string_view text,
                                          std::size_t start, bool escaped) {
                paths.visit(f);
                if (!unsubscribe && shadowed_left > 0 &&
                    unsubscribe_setting(f, t, text, doc.may_have_key_list_unsubscribe()) && counts()) {
                    unsubscribe = true;
                }
                if (paths.dead() && !f.empty() && (unsubscribe || !may_hold_unsubscribe_setting(doc, f))) {
                    return walk_next::skip;  // nothing under it is content or an unsubscribe setting
                }
                if (t != value_type::string || passed_over(s, start)) {
                    return walk_next::go;
                }
                if (!paths.under()) {
                    if (!paths.exact(1)) {
                        return walk_next::go;
                    }
                    // A name: field: the sender's name beside the address.
                    const sender_text read = sender_name_text(text, s.display);
                    const bool in_place = read != sender_text::decoded;
                    if (!find_in_name(g, s.display, hit)) {
                        if (read == sender_text::unreadable && unreadable.empty()) {
                            unreadable = "the sender's name at " + render_path(f) + std::string{unreadable_name};
                        }
                        return walk_next::go;
                    }
                    // (Decoded encoded words: the finding is at the value.)
                    offset = !in_place ? start : escaped ? raw_offset(body, start, hit.offset) : start + hit.offset;
                    where = render_path(f) + (in_place ? ", the sender's name" : ", the sender's name, in its encoded words");
                    return walk_next::stop;
                }
                bool found = unsubscribe || shadowed_left <= 0;
                const bool stop = detail::find_content(g, text, found, &hit);
                if (found && !unsubscribe && shadowed_left > 0 && counts()) {
                    unsubscribe = true;
                }
                if (!stop) {
                    return walk_next::go;
                }
                offset = escaped ? raw_offset(body, start, hit.offset) : start + hit.offset;
                where = render_path(f);
                return walk_next::stop;
            });
            if (res == json_walker::result::stopped) {
                return violated(hit.what + " at body offset " + std::to_string(offset) + " (" + where + ")");
            }
            scan_raw = res == json_walker::result::invalid;
            if (scan_raw && holds_json(in) && unreadable.empty()) {
                unreadable = unreadable_json;
            }
            break;
        }
        case body_kind::form:
            for (const auto& [name, value] : *in.form) {
                if (ieq(name, "h:List-Unsubscribe") && list_unsubscribe_value(value)) {
                    unsubscribe = true;
                }
                if (form_selected(g.fields, name)) {
                    if (detail::find_content(g, value, unsubscribe, &hit)) {
                        return violated(hit.what + " in form field " + field_name(name) + " at offset " +
                                        std::to_string(hit.offset));
                    }
                } else if (form_selected(g.names, name)) {
                    const sender_text read = sender_name_text(value, s.display);
                    if (find_in_name(g, s.display, hit)) {
                        return violated(hit.what + " in form field " + field_name(name) + " (the sender's name" +
                                        (read != sender_text::decoded ? ") at offset " + std::to_string(hit.offset)
                                                                      : ", in its encoded words)"));
                    }
                    if (read == sender_text::unreadable && unreadable.empty()) {
                        unreadable = "the sender's name in form field " + field_name(name) + std::string{unreadable_name};
                    }
                }
            }
            break;
        case body_kind::text: scan_raw = true; break;
    }
    if (scan_raw) {
        unsubscribe = false;
        if (detail::find_content(g, body, unsubscribe, &hit)) {
            return violated(hit.what + " at body offset " + std::to_string(hit.offset));
        }
    }
    // The query's fields beside a body are read for what they add (terms, links); the body
    // was judged for its unsubscribe link already.
    if (g.require_unsubscribe && !unsubscribe && !in.query_fields &&
        (g.unsubscribe_templates.empty() || !names_only_listed_templates(g, in))) {
        return violated(std::string{"missing unsubscribe link (no unsubscribe link or text"} +
                        (g.unsubscribe_words.empty() ? "" : ", none of unsubscribe_words") +
                        ", %unsubscribe_url%, asm group, subscription tracking or List-Unsubscribe header" +
                        (g.unsubscribe_templates.empty() ? "" : ", nor only templates in unsubscribe_templates without content of its own") + ")");
    }
    return {};
}

// Ordered: combine(combine(a, x), y) != combine(combine(a, y), x).
std::uint64_t combine(std::uint64_t h, std::uint64_t x) {
    return fmix64(h ^ (x + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2)));
}

array_groups array_groups_of(std::span<const frame> f) {
    array_groups g;
    std::uint64_t h = 0x6172'7261'7973ull;
    for (const auto& fr : f) {
        if (fr.array && g.n < g.at.size()) {
            h = combine(h, fr.index);
            g.at[g.n++] = static_cast<std::int64_t>(h >> 1);
        }
    }
    return g;
}

// The subject (template) that goes with a recipient: the one of the innermost of its places
// that has one (its own personalization's, its own emailSimple input's: array_groups), else
// the message's; nullopt if none has one (another personalization's subject is not this
// recipient's mail). Of several in one place (a key given twice, in any case) the last,
// as Go's encoding/json (SendGrid) and most parsers keep it. `by_group` holds (group, index)
// of every value, sorted, so this is a binary search (a body with a subject per
// personalization would make a scan quadratic). Null when there is none.
// Of `by_group` (a group's values' indexes, sorted by group), the last value's index in group
// `g`, or npos.
std::size_t last_in_group(const std::vector<std::pair<std::int64_t, std::size_t>>& by_group, std::int64_t g) {
    const auto it = std::upper_bound(by_group.begin(), by_group.end(),
                                     std::pair<std::int64_t, std::size_t>{g, std::numeric_limits<std::size_t>::max()});
    return it != by_group.begin() && std::prev(it)->first == g ? std::prev(it)->second : std::string::npos;
}

const scratch::valued* pick(const std::vector<scratch::valued>& v,
                            const std::vector<std::pair<std::int64_t, std::size_t>>& by_group, const array_groups& where) {
    auto last_of = [&](std::int64_t g) -> const scratch::valued* {
        const std::size_t i = last_in_group(by_group, g);
        return i == std::string::npos ? nullptr : &v[i];
    };
    for (std::size_t d = where.n; d-- > 0;) {
        if (const auto* own = last_of(where.at[d])) {
            return own;
        }
    }
    return last_of(-1);
}

// A subject as the duplicates guard compares it: case (ASCII), runs of blanks (a no-break
// space included) and blanks at either end do not make another mail ("Your invoice is
// ready" and "Your Invoice Is  Ready " are one subject to the reader). First 1 KiB.
void append_subject(std::string& out, std::string_view v) {
    v = v.substr(0, 1024);
    const std::size_t start = out.size();
    bool blank_before = false;
    for (std::size_t i = 0; i < v.size(); ++i) {
        const auto c = static_cast<unsigned char>(v[i]);
        bool blank = c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
        if (c == 0xC2 && i + 1 < v.size() && static_cast<unsigned char>(v[i + 1]) == 0xA0) {
            blank = true;
            ++i;
        }
        if (blank) {
            blank_before = out.size() > start;
            continue;
        }
        if (blank_before) {
            out += ' ';
            blank_before = false;
        }
        out += static_cast<char>(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
    }
}

guard_result check_duplicates(const duplicates_guard& g, const guard_input& in, time_point now,
                              duplicate_counter* counter, std::vector<guard_booking>* bookings) {
    scratch& s = local();
    if (s.chars.capacity() > (std::size_t{4} << 20)) {
        s.chars = {};  // one large body does not pin its memory
    }
    for (auto* v : {&s.recipients, &s.subjects, &s.templates}) {
        trim(*v);
    }
    trim(s.subject_groups);
    trim(s.template_groups);
    trim(s.keys);
    trim(s.key_of);
    trim(s.sorted_keys);
    trim(s.repeat);
    s.chars.clear();
    s.recipients.clear();
    s.subjects.clear();
    s.templates.clear();
    // One pass over the body collects recipients, subjects and templates together.
    enum class value_kind : std::uint8_t { address, subject, id };
    struct target {
        bool on;
        const std::vector<guard_field>* fields;
        std::vector<scratch::valued>* out;
        value_kind kind;
    };
    // Templates are read for a subject too: a templated send without a subject is told
    // apart by its template (welcome and receipt mails to one person are not one mail).
    // Recipients are read when not counted too: they say which mails the request sends (the
    // subject and template of each one's personalization or input).
    const target targets[] = {{true, &g.recipient_fields, &s.recipients, value_kind::address},
                              {g.by_subject || g.by_template, &g.subject_fields, &s.subjects, value_kind::subject},
                              {g.by_template || g.by_subject, &g.template_fields, &s.templates, value_kind::id}};
    auto add = [&s](const target& t, std::string_view v, const array_groups& where, bool in_composite = false) {
        if (t.out->size() >= 100'000 || (t.kind == value_kind::address && blank_value(v))) {
            return;  // (a blank recipient value is nobody, as to the recipients guard)
        }
        scratch::valued x;
        x.off = s.chars.size();
        if (t.kind == value_kind::address) {
            detail::normalize_address(v, s.addr);
            s.chars += s.addr;
        } else if (t.kind == value_kind::subject) {
            append_subject(s.chars, v);
        } else {
            s.chars.append(v.substr(0, 1024));
        }
        x.len = s.chars.size() - x.off;
        x.where = where;
        x.reference = in_composite && v.find("@{") != std::string_view::npos;
        t.out->push_back(x);
    };
    // Raw messages first: the message's own recipients and Subject, at the message's own place.
    std::size_t raw_recipient_count = 0;
    {
        bool read = true;
        for_each_raw(g.recipient_mime, in, s, [&](std::optional<std::string_view> m, std::size_t, const raw_place&) {
            read = raw_recipients(m, s).empty();
            for (const auto a : s.addresses) {
                add(targets[0], a, {});
            }
            return !read;
        });
        if (read && (g.by_subject || g.by_template)) {
            for_each_raw(g.subject_mime, in, s, [&](std::optional<std::string_view> m, std::size_t, const raw_place&) {
                const auto subject = m ? mime_subject(*m) : std::nullopt;
                if (subject) {
                    add(targets[1], *subject, {});
                }
                read = subject.has_value();
                return !read;
            });
        }
        if (!read) {
            return invalid_body("a raw message's recipients or subject cannot be read for certain");
        }
        raw_recipient_count = s.recipients.size();
    }
    switch (kind_of(in)) {
        case body_kind::json: {
            detail::parsed_body& doc = doc_of(in);
            path_tracker paths{g.index, g.recipient_fields,
                               targets[1].on ? &g.subject_fields : &no_fields(),
                               targets[2].on ? &g.template_fields : &no_fields(), &doc, in.req.body};
            auto res = doc.walk(in.req.body, [&](std::span<const frame> fr, value_type t, std::string_view text,
                                                     std::size_t, bool) {
                paths.visit(fr);
                if (paths.dead()) {
                    return walk_next::skip;
                }
                if (t == value_type::string) {
                    for (std::size_t k = 0; k < 3; ++k) {
                        if (!targets[k].on || !paths.exact(k)) {
                            continue;
                        }
                        // (References are filled in only inside composite and graph requests.)
                        const bool in_composite = !fr.empty() && (json_key::matches(fr[0].key, "compositerequest") ||
                                                                  json_key::matches(fr[0].key, "graphs"));
                        // A recipient string that is an address list: each address is a
                        // recipient, as the recipients guard reads it (one that does not split
                        // is one, as before). (A plain loop: find_first_of calls memchr per byte.)
                        if (targets[k].kind == value_kind::address &&
                            std::any_of(text.begin(), text.end(), [](char c) { return c == ',' || c == ';'; })) {
                            const std::size_t before = targets[k].out->size();
                            const std::size_t chars_before = s.chars.size();
                            const array_groups where = array_groups_of(fr);
                            if (for_each_address(text, [&](std::string_view item) {
                                    add(targets[k], item, where, in_composite);
                                })) {
                                continue;
                            }
                            targets[k].out->resize(before);
                            s.chars.resize(chars_before);
                        }
                        add(targets[k], text, array_groups_of(fr), in_composite);
                    }
                } else if (targets[2].on && paths.exact(2) && numeric_id(t, text)) {
                    add(targets[2], text, array_groups_of(fr));  // a numeric id (HubSpot's emailId)
                }
                return walk_next::go;
            });
            if (res == json_walker::result::invalid) {
                return invalid_body();
            }
            break;
        }
        case body_kind::form:
            for (const auto& [name, value] : *in.form) {
                if (smtpapi_field(name)) {
                    return invalid_body(std::string{smtpapi_unread});
                }
                for (const auto& tg : targets) {
                    if (!tg.on || !form_selected(*tg.fields, name)) {
                        continue;
                    }
                    if (tg.kind == value_kind::address) {
                        if (!for_each_address(value, [&](std::string_view item) { add(tg, item, {}); })) {
                            return invalid_body("form field " + field_name(name) + " " +
                                                std::string{unsplittable_list});
                        }
                    } else {
                        add(tg, value, {});
                    }
                }
            }
            break;
        case body_kind::text: break;
    }
    if (raw_recipient_count > 0 && s.recipients.size() > raw_recipient_count) {
        // The request names whom to send to beside a raw message (SES's Destination,
        // Mailgun's `to`): those are the mails sent; the message's To and Cc are only
        // headers then (`To: digest@company.com` to a thousand readers is no loop to it).
        s.recipients.erase(s.recipients.begin(),
                           s.recipients.begin() + static_cast<std::ptrdiff_t>(raw_recipient_count));
    }
    if (!counter) {
        return {};
    }
    const std::string_view chars = s.chars;
    auto text_of = [chars](const scratch::valued& v) { return chars.substr(v.off, v.len); };
    for (auto* list : {&s.recipients, &s.subjects, &s.templates}) {
        for (auto& v : *list) {
            v.hash = detail::bytes_hash(text_of(v));
        }
    }
    auto index_groups = [](const std::vector<scratch::valued>& v, std::vector<std::pair<std::int64_t, std::size_t>>& out) {
        out.clear();
        for (std::size_t i = 0; i < v.size(); ++i) {
            out.emplace_back(v[i].where.innermost(), i);
        }
        std::sort(out.begin(), out.end());
    };
    index_groups(s.subjects, s.subject_groups);
    index_groups(s.templates, s.template_groups);
    // Two different subjects (or templates) in a form (a field given twice): form readers
    // take different ones (Go's FormValue and Werkzeug the first, others the last), so a
    // loop varying the one not sent would never be counted. Refused as a body that reads two
    // ways, rather than counting one guess. (A JSON key given twice is read as the APIs'
    // JSON readers do, by the last: pick.)
    auto ambiguous = [](const std::vector<scratch::valued>& v, const std::vector<std::pair<std::int64_t, std::size_t>>& by) {
        for (std::size_t j = 1; j < by.size(); ++j) {
            if (by[j].first == by[j - 1].first && v[by[j].second].hash != v[by[j - 1].second].hash) {
                return true;
            }
        }
        return false;
    };
    const bool form = kind_of(in) == body_kind::form;
    if (form && g.by_subject && ambiguous(s.subjects, s.subject_groups)) {
        return invalid_body("two different subjects are given for one mail (a field or key given twice): upstreams "
                            "read different ones");
    }
    if (form && g.by_template && !g.by_subject && s.templates.empty() && ambiguous(s.subjects, s.subject_groups)) {
        return invalid_body("two different subjects are given for one mail without a template (a field or key given "
                            "twice): upstreams read different ones");
    }
    if (form && (g.by_template || g.by_subject) && ambiguous(s.templates, s.template_groups)) {
        return invalid_body("two different templates are given for one mail (a field or key given twice): upstreams "
                            "read different ones");
    }
    // One key per recipient: its mail's subject and template (those of its personalization or
    // input, else the message's), and itself unless `of` leaves recipients out (then each mail
    // the request sends counts once; one for the request when it names no recipient). A
    // recipient, subject or template that is a composite request's reference to another
    // subrequest's result is not known here: that mail is not booked (the reference's text is
    // the same whoever and whatever it stands for).
    s.keys.clear();
    s.key_of.clear();
    s.sorted_keys.clear();
    const std::uint64_t key_hash = detail::bytes_hash(in.key);
    // Which mail of the request a recipient's is: the innermost of its places with a subject
    // or template of its own (an emailSimple input), else the outermost of two or more places
    // (a personalization, a bulk entry: each is a mail of its own, whatever subject it takes
    // from the message), else the message. With recipients in `of`, the same key twice in
    // one mail is one send; in two mails, two (the same person in two personalizations gets
    // two copies).
    auto mail_of = [&](const array_groups& where) -> std::int64_t {
        for (std::size_t d = where.n; d-- > 0;) {
            if (last_in_group(s.subject_groups, where.at[d]) != std::string::npos ||
                last_in_group(s.template_groups, where.at[d]) != std::string::npos) {
                return where.at[d];
            }
        }
        return where.n >= 2 ? where.at[0] : -1;
    };
    auto book = [&](const scratch::valued* recipient, std::size_t i) {
        const array_groups where = recipient ? recipient->where : array_groups{};
        const scratch::valued* templ = pick(s.templates, s.template_groups, where);
        const scratch::valued* own =
            g.by_subject || (g.by_template && !templ) ? pick(s.subjects, s.subject_groups, where) : nullptr;
        if ((g.by_recipient && recipient && recipient->reference) || (templ && templ->reference) ||
            (own && own->reference)) {
            return;
        }
        // A mail without a template is told apart by its subject: all of a person's plain
        // mails are not "the same template".
        const std::uint64_t t = templ ? templ->hash : own ? combine(0x7375'626a'6563'74ull, own->hash) : 0;
        std::uint64_t subject = 0;
        if (g.by_subject) {
            // Without a subject of its own or the message's, a recipient's mail takes the
            // template's (SendGrid refuses one with neither): the template stands for it.
            subject = own ? own->hash : g.by_template ? 0 : combine(0x7465'6d70'6c61'7465ull, t);
        }
        std::uint64_t h = combine(key_hash, g.by_recipient && recipient ? recipient->hash : 0);
        h = combine(h, subject);
        h = combine(h, g.by_template ? t : 0);
        // (Without recipients in `of`, a request counts once per distinct key, however many
        // mails carry it: a bulk send of one template is one send of it.)
        s.sorted_keys.emplace_back(g.by_recipient ? combine(h, static_cast<std::uint64_t>(mail_of(where))) : h,
                                   s.keys.size());
        s.keys.push_back(h);
        s.key_of.push_back(i);
    };
    for (std::size_t i = 0; i < s.recipients.size(); ++i) {
        book(&s.recipients[i], i);
    }
    if (s.recipients.empty() && !g.by_recipient) {
        book(nullptr, 0);
    }
    // The same recipient twice in one mail is one send to it: only the first of equal keys
    // of one mail is booked (sorted, so linear after the sort whatever the number of
    // recipients). In two mails of the request it is booked twice.
    std::sort(s.sorted_keys.begin(), s.sorted_keys.end());
    s.repeat.assign(s.keys.size(), 0);
    for (std::size_t j = 1; j < s.sorted_keys.size(); ++j) {
        if (s.sorted_keys[j].first == s.sorted_keys[j - 1].first) {
            s.repeat[s.sorted_keys[j].second] = 1;
        }
    }
    const std::int64_t ms = std::chrono::duration_cast<milliseconds>(now.time_since_epoch()).count();
    const std::size_t first_booking = bookings ? bookings->size() : 0;
    for (std::size_t i = 0; i < s.keys.size(); ++i) {
        if (s.repeat[i]) {
            continue;
        }
        const std::uint32_t seen = counter->check_and_book(s.keys[i], ms);
        if (seen > 0) {
            if (bookings) {
                for (std::size_t b = first_booking; b < bookings->size(); ++b) {
                    counter->unbook((*bookings)[b].key, (*bookings)[b].ms);
                }
                bookings->resize(first_booking);
            }
            std::string what = "duplicate send: ";
            if (g.by_recipient) {
                const std::size_t r = s.key_of[i];
                what += "recipient #" + std::to_string(r) + " " + mask_address(text_of(s.recipients[r])) + " ";
            }
            what += "with the same ";
            what += g.by_subject && g.by_template ? "subject and template" : g.by_subject ? "subject" : g.by_template ? "template" : "content";
            what += " already sent " + std::to_string(seen) + " times in " + cfg::format_duration(g.window) +
                    " (max " + std::to_string(g.max) + ")";
            guard_result r = violated(std::move(what));
            r.count = seen;
            return r;
        }
        if (bookings) {
            bookings->push_back({s.keys[i], ms});
        }
    }
    return {};
}

// ---------------------------------------------------------------------------------------
// Config.

std::optional<guard_field> parse_field(std::string_view text, std::string* error) {
    guard_field f;
    f.text = std::string{text};
    if (text.starts_with("name:")) {
        f.display = true;
        text.remove_prefix(5);
        if (text.starts_with("mime:") || text.starts_with("attachment:") || text.starts_with("name:")) {
            *error = "a name: field is a JSON path or form:NAME (a raw message's From is read as such)";
            return std::nullopt;
        }
    }
    if (text.starts_with("form:")) {
        f.form = true;
        f.name = std::string{text.substr(5)};
        if (f.name.empty()) {
            *error = "missing form field name";
            return std::nullopt;
        }
        return f;
    }
    if (text.starts_with("attachment:")) {
        f.attachment = true;
        text.remove_prefix(11);
        if (text.starts_with("form:")) {
            *error = "an attachment: field is a JSON path (a form's files are read as they are sent)";
            return std::nullopt;
        }
    } else if (text.starts_with("mime:")) {
        f.mime = true;
        text.remove_prefix(5);
        if (text.starts_with("base64:form:")) {
            f.base64 = true;
            text.remove_prefix(7);
        }
        if (text.starts_with("form:")) {  // a form field holding a message (as written, or its base64)
            f.form = true;
            f.name = std::string{text.substr(5)};
            if (f.name.empty()) {
                *error = "missing form field name";
                return std::nullopt;
            }
            return f;
        }
    }
    auto p = parse_json_path(text, error);
    if (!p) {
        return std::nullopt;
    }
    // A guard reads its fields in one pass over the body, which cannot look ahead at a
    // sibling member; a filter there would silently read nothing.
    if (std::any_of(p->segments.begin(), p->segments.end(),
                    [](const path_segment& s) { return s.k == path_segment::kind::filter; })) {
        *error = "a filter ([?(...)]) is not supported in guardrail fields";
        return std::nullopt;
    }
    f.path = std::move(*p);
    return f;
}

std::vector<guard_field> default_fields(std::initializer_list<std::string_view> texts) {
    std::vector<guard_field> out;
    for (const auto t : texts) {
        std::string err;
        out.push_back(*parse_field(t, &err));
    }
    return out;
}

// The recipients and duplicates guards' recipients.
const std::vector<guard_field>& default_recipient_fields() {
    static const auto f = default_fields({
        "$.personalizations[*]['to','cc','bcc'][*].email",                     // SendGrid
        "$.Destination['ToAddresses','CcAddresses','BccAddresses'][*]",         // SES v2 SendEmail
        "$.BulkEmailEntries[*].Destination['ToAddresses','CcAddresses','BccAddresses'][*]",  // SES v2 bulk
        "mime:$.Content.Raw.Data",                                              // SES v2 raw messages' headers
        "mime:base64:form:RawMessage.Data", "form:Destinations.member.*",             // SES v1 SendRawEmail
        "form:Destination.ToAddresses.member.*", "form:Destination.CcAddresses.member.*",
        "form:Destination.BccAddresses.member.*",                               // SES v1 SendEmail
        "form:Destinations.member.*.Destination.ToAddresses.member.*",          // SES v1 SendBulkTemplatedEmail
        "form:Destinations.member.*.Destination.CcAddresses.member.*",
        "form:Destinations.member.*.Destination.BccAddresses.member.*",
        "$.message.to", "$.message['cc','bcc'][*]",                             // HubSpot single send
        "$.inputs[*]['emailAddresses','ccRecipientAddressList','bccRecipientAddressList']",  // Salesforce
        "$.inputs[*]['emailAddressesArray','ccRecipientAddressCollection','bccRecipientAddressCollection'][*]",  // emailSimple
        // ... inside composite, composite batch and composite graph requests
        "$.compositeRequest[*].body.inputs[*]['emailAddresses','ccRecipientAddressList','bccRecipientAddressList']",
        "$.compositeRequest[*].body.inputs[*]['emailAddressesArray','ccRecipientAddressCollection',"
        "'bccRecipientAddressCollection'][*]",
        "$.batchRequests[*].richInput.inputs[*]['emailAddresses','ccRecipientAddressList','bccRecipientAddressList']",
        "$.batchRequests[*].richInput.inputs[*]['emailAddressesArray','ccRecipientAddressCollection',"
        "'bccRecipientAddressCollection'][*]",
        "$.graphs[*].compositeRequest[*].body.inputs[*]['emailAddresses','ccRecipientAddressList',"
        "'bccRecipientAddressList']",
        "$.graphs[*].compositeRequest[*].body.inputs[*]['emailAddressesArray','ccRecipientAddressCollection',"
        "'bccRecipientAddressCollection'][*]",
        "form:to", "form:cc", "form:bcc",                                       // Mailgun
        "form:to[]", "form:cc[]", "form:bcc[]"});                               // SendGrid v2 mail.send.json
    return f;
}

const std::vector<guard_field>& default_content_fields() {
    static const auto f = default_fields({
        // (Members of one object in one path: the guards' paths share one 64-bit
        // classification per value, guardrails.cpp guard_paths, and each path takes a bit.)
        // SendGrid subject, content and sections; SES v2 Content, SendBulkEmail DefaultContent;
        // HubSpot single send's properties.
        "$['subject','content','sections','Content','DefaultContent','customProperties','contactProperties']",
        "$.personalizations[*]['subject','dynamic_template_data','substitutions']",  // SendGrid
        // The sender's name, which shows too: read as a name (no unsubscribe link; encoded
        // words decoded), written alone or beside the address in one value.
        "name:$.from.name", "name:$.personalizations[*].from.name",             // SendGrid
        "name:form:fromname",                                                   // SendGrid v2
        "name:$.FromEmailAddress",                                              // SES v2
        "name:$.message.from",                                                  // HubSpot single send
        "name:form:from", "name:form:Source",                                   // Mailgun, SES v1
        "name:$.inputs[*].senderDisplayName",                                   // Salesforce emailSimple
        "name:$.compositeRequest[*].body.inputs[*].senderDisplayName",
        "name:$.batchRequests[*].richInput.inputs[*].senderDisplayName",
        "name:$.graphs[*].compositeRequest[*].body.inputs[*].senderDisplayName",
        "$.mail_settings.footer",                                               // SendGrid: also in the mail
        "mime:$.Content.Raw.Data",                                              // SES v2 (raw messages read as such)
        "$.BulkEmailEntries[*]['ReplacementEmailContent','ReplacementHeaders']",  // SES v2 SendBulkEmail
        "$.message.subject",                                                    // HubSpot single send
        "form:subject", "form:text", "form:html", "form:amp-html",             // Mailgun
        "form:x-smtpapi",                                                       // SendGrid v2 (as text)
        "form:recipient-variables", "form:t:variables", "form:h:X-Mailgun-Variables",
        "form:v:{name}",  // Mailgun custom variables: a field each, what h:X-Mailgun-Variables holds whole
        "mime:form:message",                                                    // Mailgun messages.mime
        "mime:base64:form:RawMessage.Data",                                            // SES v1 SendRawEmail
        "form:Message.Subject.Data", "form:Message.Body.Text.Data", "form:Message.Body.Html.Data",  // SES v1
        "form:TemplateData", "form:DefaultTemplateData",                       // SES v1 templated sends
        "form:Destinations.member.*.ReplacementTemplateData",
        "$.inputs[*]['emailSubject','emailBody']",                             // Salesforce emailSimple
        "$.compositeRequest[*].body.inputs[*]['emailSubject','emailBody']",     // ... in composite requests
        "$.batchRequests[*].richInput.inputs[*]['emailSubject','emailBody']",
        "$.graphs[*].compositeRequest[*].body.inputs[*]['emailSubject','emailBody']"});
    return f;
}

// A pii guard without `in` reads every value, and the raw messages and attachments here.
const std::vector<guard_field>& default_pii_fields() {
    static const auto f = default_fields({"mime:$.Content.Raw.Data",           // SES v2 raw messages
                                          "mime:form:message",                 // Mailgun messages.mime
                                          "mime:base64:form:RawMessage.Data",  // SES v1 SendRawEmail
                                          "attachment:$.attachments[*].content",  // SendGrid
                                          // SES v2 SendEmail and SendBulkEmail, simple or templated
                                          "attachment:$['Content','DefaultContent']['Simple','Template']"
                                          ".Attachments[*].RawContent"});
    return f;
}

// Moves the fields `which` selects out of `fields` (into the list returned).
std::vector<guard_field> take_fields(std::vector<guard_field>& fields, bool guard_field::*which) {
    std::vector<guard_field> taken;
    std::copy_if(fields.begin(), fields.end(), std::back_inserter(taken), [&](const guard_field& f) { return f.*which; });
    std::erase_if(fields, [&](const guard_field& f) { return f.*which; });
    return taken;
}
std::vector<guard_field> take_mime(std::vector<guard_field>& fields) { return take_fields(fields, &guard_field::mime); }

const std::vector<guard_field>& default_subject_fields() {
    static const auto f = default_fields({"$.subject", "$.personalizations[*].subject",
                                          "$.Content.Simple.Subject.Data", "$.message.subject", "form:subject",
                                          "form:Message.Subject.Data", "mime:$.Content.Raw.Data",
                                          "mime:base64:form:RawMessage.Data", "mime:form:message",
                                          "$.inputs[*].emailSubject",  // Salesforce emailSimple, direct and composite
                                          "$.compositeRequest[*].body.inputs[*].emailSubject",
                                          "$.batchRequests[*].richInput.inputs[*].emailSubject",
                                          "$.graphs[*].compositeRequest[*].body.inputs[*].emailSubject"});
    return f;
}

const std::vector<guard_field>& default_template_fields() {
    static const auto f = default_fields({"$.template_id", "$.Content.Template.TemplateName",
                                          "$.Content.Template.TemplateArn", "$.DefaultContent.Template.TemplateName",
                                          "$.DefaultContent.Template.TemplateArn", "$.emailId", "form:template",
                                          "$.inputs[*].emailTemplateId",  // Salesforce emailSimple, direct and composite
                                          "$.compositeRequest[*].body.inputs[*].emailTemplateId",
                                          "$.batchRequests[*].richInput.inputs[*].emailTemplateId",
                                          "$.graphs[*].compositeRequest[*].body.inputs[*].emailTemplateId"});
    return f;
}

// The three default lists as the release before 0e9ae91 wrote them into a duplicates table's
// canonical form (frozen: only to read back the tables that release saved; see
// guardrail::canonical_legacy).
const std::vector<guard_field>& legacy_recipient_fields_v1() {
    static const auto f = default_fields({
        "$.personalizations[*]['to','cc','bcc'][*].email", "$.Destination['ToAddresses','CcAddresses','BccAddresses'][*]",
        "$.BulkEmailEntries[*].Destination['ToAddresses','CcAddresses','BccAddresses'][*]", "mime:$.Content.Raw.Data",
        "mime:base64:form:RawMessage.Data", "form:Destinations.member.*", "form:Destination.ToAddresses.member.*",
        "form:Destination.CcAddresses.member.*", "form:Destination.BccAddresses.member.*",
        "form:Destinations.member.*.Destination.ToAddresses.member.*",
        "form:Destinations.member.*.Destination.CcAddresses.member.*",
        "form:Destinations.member.*.Destination.BccAddresses.member.*", "$.message.to", "$.message['cc','bcc'][*]",
        "form:to", "form:cc", "form:bcc"});
    return f;
}
const std::vector<guard_field>& legacy_subject_fields_v1() {
    static const auto f = default_fields({"$.subject", "$.personalizations[*].subject", "$.Content.Simple.Subject.Data",
                                          "$.message.subject", "form:subject", "form:Message.Subject.Data",
                                          "mime:$.Content.Raw.Data", "mime:base64:form:RawMessage.Data",
                                          "mime:form:message"});
    return f;
}
const std::vector<guard_field>& legacy_template_fields_v1() {
    static const auto f = default_fields({"$.template_id", "$.Content.Template.TemplateName",
                                          "$.Content.Template.TemplateArn", "$.DefaultContent.Template.TemplateName",
                                          "$.DefaultContent.Template.TemplateArn", "$.emailId", "form:template"});
    return f;
}

// `mime_ok`: whether mime: fields are read where these fields go (the recipients, content and
// pii guards, a duplicates guard's recipients and subjects; elsewhere a mime: field is an
// error, and dropped from the defaults). attachment: fields are read by the pii guard only.
std::vector<guard_field> read_fields(cfg::object_reader& r, std::string_view key, const std::vector<guard_field>& dflt,
                                     bool mime_ok = false, bool attachment_ok = false, bool display_ok = false) {
    auto list = r.strings(key);
    if (!list) {
        if (mime_ok) {
            return dflt;
        }
        std::vector<guard_field> plain;
        std::copy_if(dflt.begin(), dflt.end(), std::back_inserter(plain), [](const guard_field& f) { return !f.mime; });
        return plain;
    }
    std::vector<guard_field> out;
    if (list->empty() || list->size() > max_fields) {
        r.errs().add(r.path_of(key), "needs 1 to " + std::to_string(max_fields) + " fields");
    }
    for (std::size_t i = 0; i < list->size(); ++i) {
        std::string err;
        if (auto f = parse_field((*list)[i], &err)) {
            if (f->mime && !mime_ok) {
                r.errs().add(cfg::child(r.path_of(key), i),
                             cfg::quote((*list)[i]) + ": a mime: field is not read here (only as recipients or subjects, "
                                                          "or by the recipients, content and pii guards)");
            }
            if (f->attachment && !attachment_ok) {
                r.errs().add(cfg::child(r.path_of(key), i),
                             cfg::quote((*list)[i]) + ": an attachment: field is read by the pii guard only");
            }
            if (f->display && !display_ok) {
                r.errs().add(cfg::child(r.path_of(key), i),
                             cfg::quote((*list)[i]) + ": a name: field is read by the content guard only");
            }
            out.push_back(std::move(*f));
        } else {
            r.errs().add(cfg::child(r.path_of(key), i),
                         cfg::quote((*list)[i]) + " is not a JSON path or form:NAME: " + err);
        }
    }
    return out;
}

void read_domains(cfg::object_reader& r, std::string_view key, domain_set& out) {
    auto list = r.strings(key);
    if (!list) {
        return;
    }
    if (list->size() > max_list) {
        r.errs().add(r.path_of(key), "at most " + std::to_string(max_list) + " domains");
        return;
    }
    for (std::size_t i = 0; i < list->size(); ++i) {
        const std::string& d = (*list)[i];
        if (d.empty() || d.size() > 253 || d.find_first_of("@/ :\t") != std::string::npos) {
            r.errs().add(cfg::child(r.path_of(key), i), cfg::quote(d) + " is not a domain");
            continue;
        }
        out.add(d);
    }
}

// gmail.com and googlemail.com are one set of mailboxes (`jane@googlemail.com` is
// `jane@gmail.com`), as the suppression list reads them: a recipients list that covers
// either domain covers the other too. Not for link domains: there they are two websites.
void add_gmail_twin(domain_set& s) {
    const bool gmail = s.contains("gmail.com");
    const bool googlemail = s.contains("googlemail.com");
    if (gmail && !googlemail) {
        s.add("googlemail.com");
    } else if (googlemail && !gmail) {
        s.add("gmail.com");
    }
}

std::string join_fields(const std::vector<guard_field>& fields) {
    std::string out;
    for (const auto& f : fields) {
        out += f.text;
        out += ',';
    }
    return out;
}

}  // namespace

bool split_addresses(std::string_view list, std::vector<std::string_view>& out) {
    return for_each_address(list, [&out](std::string_view item) { out.push_back(item); });
}

bool is_form_content_type(std::string_view ct) {
    constexpr std::string_view url = "application/x-www-form-urlencoded";
    constexpr std::string_view mp = "multipart/form-data";
    return (ct.size() >= url.size() && iequals(ct.substr(0, url.size()), url)) ||
           (ct.size() >= mp.size() && iequals(ct.substr(0, mp.size()), mp));
}

std::shared_ptr<guardrail> parse_guard(simdjson::dom::element e, const std::string& path, cfg::errors& errs) {
    auto g = std::make_shared<guardrail>();
    cfg::object_reader r{e, path, errs};
    if (!r.is_object()) {
        return g;
    }
    int kinds = 0;
    if (auto list = r.strings("pii")) {
        ++kinds;
        g->k = guardrail::kind::pii;
        g->canonical = "pii";
        if (list->empty()) {
            errs.add(r.path_of("pii"), "needs at least one of card, ssn, iban, secrets");
        }
        for (std::size_t i = 0; i < list->size(); ++i) {
            const std::string& k = (*list)[i];
            if (k == "card") {
                g->pii.kinds |= static_cast<std::uint8_t>(pii_kind::card);
            } else if (k == "ssn") {
                g->pii.kinds |= static_cast<std::uint8_t>(pii_kind::ssn);
            } else if (k == "iban") {
                g->pii.kinds |= static_cast<std::uint8_t>(pii_kind::iban);
            } else if (k == "secrets") {
                g->pii.kinds |= static_cast<std::uint8_t>(pii_kind::secrets);
            } else {
                errs.add(cfg::child(r.path_of("pii"), i), cfg::quote(k) + " is not a PII kind (card, ssn, iban, secrets)");
            }
        }
        g->pii.every_value = !r.has("in");
        g->pii.in = read_fields(r, "in", default_pii_fields(), true, true);
        g->pii.mime = take_mime(g->pii.in);
        g->pii.attachments = take_fields(g->pii.in, &guard_field::attachment);
        g->pii.in_index = path_index::of({&g->pii.in});
    } else if (r.has("in")) {
        r.value("in");
        errs.add(r.path_of("in"), "only applies to a pii guard");
    }

    if (auto o = r.object("recipients")) {
        ++kinds;
        g->k = guardrail::kind::recipients;
        g->canonical = "recipients";
        auto& rg = g->recipients;
        cfg::object_reader rr{*o, r.path_of("recipients"), errs};
        read_domains(rr, "allow_domains", rg.allow);
        read_domains(rr, "block_domains", rg.block);
        add_gmail_twin(rg.allow);
        add_gmail_twin(rg.block);
        std::size_t max_entries = 1'000'000;
        if (auto m = rr.integer("max_suppressed", false, 1, 10'000'000)) {
            max_entries = static_cast<std::size_t>(*m);
        }
        if (auto file = rr.string("suppression_file")) {
            rg.suppression_file = *file;
            std::string err;
            if (auto list = suppression_list::load_file(*file, max_entries, &err); list && list->size() == 0) {
                // Read while being rewritten (`>` truncates before it writes), it would make the
                // guard suppress nobody at the next reload, without a word.
                errs.add(rr.path_of("suppression_file"),
                         cfg::quote(*file) + " holds no address or digest: an empty list suppresses nobody (write a "
                                             "new list to another file and rename it into place; to suppress nobody, "
                                             "leave suppression_file out)");
            } else if (list) {
                rg.suppressed = std::make_shared<const suppression_list>(std::move(*list));
            } else {
                errs.add(rr.path_of("suppression_file"), cfg::quote(*file) + " " + err);
            }
        }
        rg.fields = read_fields(rr, "fields", default_recipient_fields(), true);
        rg.index = path_index::of({&rg.fields});
        if (auto req = rr.boolean("require_recipients")) {
            rg.require_recipients = *req;
        }
        if (auto b = rr.string("suppression_bypass")) {
            if (*b == "refuse" || *b == "allow") {
                rg.refuse_bypass = *b == "refuse";
            } else {
                errs.add(rr.path_of("suppression_bypass"), cfg::quote(*b) + " is not refuse or allow");
            }
        }
        if (rr.is_object() && rg.allow.empty() && rg.block.empty() && rg.suppression_file.empty()) {
            errs.add(rr.path(), "needs allow_domains, block_domains or suppression_file");
        }
        rr.finish();
    }

    if (auto o = r.object("content")) {
        ++kinds;
        g->k = guardrail::kind::content;
        g->canonical = "content";
        auto& cg = g->content;
        cfg::object_reader cr{*o, r.path_of("content"), errs};
        if (auto terms = cr.strings("blocked_terms")) {
            if (terms->size() > max_list) {
                errs.add(cr.path_of("blocked_terms"), "at most " + std::to_string(max_list) + " terms");
            } else {
                for (std::size_t i = 0; i < terms->size(); ++i) {
                    std::string err;
                    if ((*terms)[i].size() > max_term_bytes) {
                        errs.add(cfg::child(cr.path_of("blocked_terms"), i),
                                 "a term has at most " + std::to_string(max_term_bytes) + " bytes");
                    } else if (!cg.terms.add((*terms)[i], &err)) {
                        errs.add(cfg::child(cr.path_of("blocked_terms"), i), cfg::quote((*terms)[i]) + ": " + err);
                    }
                }
                cg.terms.build();
            }
        }
        if (cr.has("link_domains")) {
            cg.check_links = true;
            read_domains(cr, "link_domains", cg.link_domains);
        }
        if (auto ru = cr.boolean("require_unsubscribe")) {
            cg.require_unsubscribe = *ru;
        }
        if (auto words = cr.strings("unsubscribe_words")) {
            if (words->size() > 32) {
                errs.add(cr.path_of("unsubscribe_words"), "at most 32 words");
            } else {
                for (std::size_t i = 0; i < words->size(); ++i) {
                    if (auto w = unsubscribe_word((*words)[i])) {
                        cg.unsubscribe_words.push_back(std::move(*w));
                    } else {
                        errs.add(cfg::child(cr.path_of("unsubscribe_words"), i),
                                 cfg::quote((*words)[i]) +
                                     " must be 3 to 64 bytes with a letter and no control characters");
                    }
                }
            }
            if (!cg.require_unsubscribe) {
                errs.add(cr.path_of("unsubscribe_words"), "needs require_unsubscribe: true");
            }
        }
        if (auto ids = cr.strings("unsubscribe_templates")) {
            if (ids->size() > max_list) {
                errs.add(cr.path_of("unsubscribe_templates"), "at most " + std::to_string(max_list) + " templates");
            } else {
                for (std::size_t i = 0; i < ids->size(); ++i) {
                    if ((*ids)[i].empty() || (*ids)[i].size() > max_term_bytes) {
                        errs.add(cfg::child(cr.path_of("unsubscribe_templates"), i),
                                 "a template id has 1 to " + std::to_string(max_term_bytes) + " bytes");
                        continue;
                    }
                    cg.unsubscribe_templates.push_back((*ids)[i]);
                }
            }
            if (!cg.require_unsubscribe) {
                errs.add(cr.path_of("unsubscribe_templates"), "needs require_unsubscribe: true");
            }
            cg.template_fields = default_template_fields();
            cg.template_index = path_index::of({&cg.template_fields});
        }
        cg.fields = read_fields(cr, "fields", default_content_fields(), true, false, true);
        cg.mime = take_mime(cg.fields);
        cg.names = take_fields(cg.fields, &guard_field::display);
        cg.index = path_index::of({&cg.fields, &cg.names});
        if (cr.is_object() && cg.terms.empty() && !cg.check_links && !cg.require_unsubscribe) {
            errs.add(cr.path(), "needs blocked_terms, link_domains or require_unsubscribe");
        }
        cr.finish();
    }

    if (auto o = r.object("duplicates")) {
        ++kinds;
        g->k = guardrail::kind::duplicates;
        auto& dg = g->duplicates;
        cfg::object_reader dr{*o, r.path_of("duplicates"), errs};
        if (auto m = dr.integer("max", true, 1, 1000)) {
            dg.max = static_cast<std::uint32_t>(*m);
        }
        if (auto w = dr.duration("window", true, milliseconds{1})) {
            dg.window = *w;
        }
        std::vector<std::string> of{"recipient", "subject"};
        if (auto list = dr.strings("of")) {
            of = *list;
            if (of.empty()) {
                errs.add(dr.path_of("of"), "needs at least one of recipient, subject, template");
            }
        }
        for (std::size_t i = 0; i < of.size(); ++i) {
            if (of[i] == "recipient") {
                dg.by_recipient = true;
            } else if (of[i] == "subject") {
                dg.by_subject = true;
            } else if (of[i] == "template") {
                dg.by_template = true;
            } else {
                errs.add(cfg::child(dr.path_of("of"), i), cfg::quote(of[i]) + " is not recipient, subject or template");
            }
        }
        // The default lists are named as such in the canonical form (a release that reads one
        // more API's fields does not make a saved table look like another rule's and drop it).
        const bool default_recipients = !dr.has("recipient_fields");
        const bool default_subjects = !dr.has("subject_fields");
        const bool default_templates = !dr.has("template_fields");
        dg.recipient_fields = read_fields(dr, "recipient_fields", default_recipient_fields(), true);
        dg.subject_fields = read_fields(dr, "subject_fields", default_subject_fields(), true);
        const auto recipients_as_read = dg.recipient_fields;
        const auto subjects_as_read = dg.subject_fields;
        const auto named = [](bool dflt, const std::vector<guard_field>& f) {
            return dflt ? std::string{"default"} : join_fields(f);
        };
        const std::string raw_fields =
            named(default_recipients, dg.recipient_fields) + ";" + named(default_subjects, dg.subject_fields);
        dg.recipient_mime = take_mime(dg.recipient_fields);
        dg.subject_mime = take_mime(dg.subject_fields);
        dg.template_fields = read_fields(dr, "template_fields", default_template_fields());
        // Only the lists that are read (the others would keep parts of the body alive):
        // recipients always (they say which mails a request sends), templates for a subject too,
        // subjects for a template too (a mail without a template is told by its subject).
        dg.index = path_index::of({&dg.recipient_fields,
                                   dg.by_subject || dg.by_template ? &dg.subject_fields : &no_fields(),
                                   dg.by_template || dg.by_subject ? &dg.template_fields : &no_fields()});
        dr.finish();
        const auto canonical_form = [&](const std::string& r, const std::string& s, const std::string& t,
                                        const std::string& raw) {
            return "duplicates;max=" + std::to_string(dg.max) + ";window=" + std::to_string(dg.window.count()) +
                   ";of=" + std::to_string(dg.by_recipient) + std::to_string(dg.by_subject) +
                   std::to_string(dg.by_template) + ";r=" + r + ";s=" + s + ";t=" + t + ";raw=" + raw;
        };
        g->canonical = canonical_form(named(default_recipients, dg.recipient_fields),
                                      named(default_subjects, dg.subject_fields),
                                      named(default_templates, dg.template_fields), raw_fields);
        if (default_recipients || default_subjects || default_templates) {
            // The same as the release before wrote it, its default lists spelled out: a table
            // it saved is read back (parse.cpp counter_fingerprint_legacy).
            auto r_old = default_recipients ? legacy_recipient_fields_v1() : recipients_as_read;
            auto s_old = default_subjects ? legacy_subject_fields_v1() : subjects_as_read;
            const std::string raw_old = join_fields(r_old) + ";" + join_fields(s_old);
            take_mime(r_old);
            take_mime(s_old);
            g->canonical_legacy =
                canonical_form(join_fields(r_old), join_fields(s_old),
                               join_fields(default_templates ? legacy_template_fields_v1() : dg.template_fields), raw_old);
        }
    }

    if (kinds == 0) {
        errs.add(path, "needs one of pii, recipients, content or duplicates");
    } else if (kinds > 1) {
        errs.add(path, "give only one of pii, recipients, content or duplicates (use one rule each)");
    }
    r.finish();
    return g;
}

std::string_view to_string(guardrail::kind k) {
    switch (k) {
        case guardrail::kind::pii: return "pii";
        case guardrail::kind::recipients: return "recipients";
        case guardrail::kind::content: return "content";
        case guardrail::kind::duplicates: return "duplicates";
    }
    return "?";
}

// ---------------------------------------------------------------------------------------

duplicate_counter::duplicate_counter(std::uint32_t max, milliseconds window, std::size_t max_keys)
    : duplicate_counter(shared_table{}, max, window, max_keys, std::make_shared<table>()) {}

duplicate_counter::duplicate_counter(shared_table, std::uint32_t max, milliseconds window, std::size_t max_keys,
                                     std::shared_ptr<table> t)
    : max_keys_(max_keys),
      max_(std::max<std::uint32_t>(max, 1)),
      window_ms_(std::max<std::int64_t>(window.count(), 1)),
      per_shard_(std::max<std::size_t>((max_keys + shard_count - 1) / shard_count, 1)),
      probation_(per_shard_ >= 8 ? per_shard_ / 8 : per_shard_ > 1 ? 1 : 0),
      table_(std::move(t)),
      shards_(table_->shards) {
    for (std::int64_t kept = table_->keep_ms.load(); kept < window_ms_ && !table_->keep_ms.compare_exchange_weak(kept, window_ms_);) {
    }
}

void duplicate_counter::shard::unlink(std::uint32_t i) {
    slot& e = slots[i];
    const int l = e.probation ? 1 : 0;
    (e.newer == none ? newest[l] : slots[e.newer].older) = e.older;
    (e.older == none ? oldest[l] : slots[e.older].newer) = e.newer;
    e.newer = e.older = none;
    --count[l];
}

void duplicate_counter::shard::push_newest(std::uint32_t i) {
    slot& e = slots[i];
    const int l = e.probation ? 1 : 0;
    e.newer = none;
    e.older = newest[l];
    (newest[l] == none ? oldest[l] : slots[newest[l]].newer) = i;
    newest[l] = i;
    ++count[l];
}

void duplicate_counter::shard::forget(std::uint32_t i) {
    index.erase(slots[i].key);
    unlink(i);
    slots[i].times.clear();
    slots[i].head = 0;
    ++evictions;
}

std::size_t duplicate_counter::in_window(const slot& e, std::int64_t now_ms) const {
    std::size_t n = 0;
    for (std::size_t k = e.times.size(); k > e.head && e.times[k - 1] > now_ms - window_ms_; --k) {
        ++n;
    }
    return n;
}

std::uint32_t duplicate_counter::check_and_book(std::uint64_t key, std::int64_t now_ms) {
    shard& s = shard_of(key);
    std::lock_guard lock{s.mu};
    const std::size_t main_cap = per_shard_ - probation_;
    // A slot of part `l` for a new pair: a fresh one, or the one of the pair `victim` forgets.
    auto take = [&](std::uint32_t victim, bool probation) {
        std::uint32_t i;
        if (victim == none && !s.free.empty()) {
            i = s.free.back();
            s.free.pop_back();
        } else if (victim == none) {
            i = static_cast<std::uint32_t>(s.slots.size());
            s.slots.emplace_back();
        } else {
            i = victim;
            s.forget(i);
        }
        s.slots[i].refused_ms = std::numeric_limits<std::int64_t>::min();
        s.slots[i].key = key;
        s.slots[i].probation = probation;
        s.push_newest(i);
        s.index.emplace(key, i);
        return i;
    };
    auto stale = [&](std::uint32_t c) { return c != none && in_window(s.slots[c], now_ms) == 0; };
    std::uint32_t i;
    if (auto it = s.index.find(key); it != s.index.end()) {
        i = it->second;
        s.unlink(i);
        s.push_newest(i);
    } else if (s.count[0] < main_cap) {
        i = take(none, false);
    } else if (stale(s.oldest[0])) {
        i = take(s.oldest[0], false);  // nothing of it left in the window
    } else if (s.count[1] < probation_) {
        i = take(none, true);
    } else {
        // Probation: among its 16 least recently seen, the first sent at most once in the
        // window and not refused in it (a pair sent twice, or refused, is a loop and stays).
        std::uint32_t victim = none;
        std::uint32_t c = s.oldest[1];
        for (int looked = 0; c != none && looked < 16; ++looked, c = s.slots[c].newer) {
            if (in_window(s.slots[c], now_ms) <= 1 && s.slots[c].refused_ms <= now_ms - window_ms_) {
                victim = c;
                break;
            }
        }
        if (victim == none) {
            ++s.untracked;
            return 0;
        }
        i = take(victim, true);
    }
    slot& e = s.slots[i];
    // Skip what has left the window (now - window, now]; drop it once it is half the times.
    // (The longest window of the counters sharing the table: with_limits.)
    const std::int64_t keep = std::max(window_ms_, table_->keep_ms.load(std::memory_order_relaxed));
    std::size_t h = e.head;
    while (h < e.times.size() && e.times[h] <= now_ms - keep) {
        ++h;
    }
    if (h == e.times.size()) {
        e.times.clear();
        h = 0;
    } else if ((h >= 8 && 2 * h >= e.times.size()) || (h > 0 && e.times.size() == e.times.capacity())) {
        // Also before the vector would grow: it never holds more than the window needs
        // (inline for max <= 3, as before).
        e.times.erase(e.times.begin(), e.times.begin() + static_cast<std::ptrdiff_t>(h));
        h = 0;
    }
    e.head = static_cast<std::uint32_t>(h);
    std::size_t first = h;  // the first send in this counter's own window
    while (first < e.times.size() && e.times[first] <= now_ms - window_ms_) {
        ++first;
    }
    const std::size_t sent = e.times.size() - first;
    if (sent >= max_) {
        e.refused_ms = now_ms;
        return static_cast<std::uint32_t>(sent);
    }
    // In order: requests read their time before they parse, so one that read it earlier can
    // book after one that read it later (the window counts and the saved table rely on it).
    if (e.times.size() > h && e.times.back() > now_ms) {
        e.times.insert(std::upper_bound(e.times.begin() + static_cast<std::ptrdiff_t>(h), e.times.end(), now_ms),
                       now_ms);
    } else {
        e.times.push_back(now_ms);
    }
    if (e.probation && sent + 1 >= 2 && (s.count[0] < main_cap || stale(s.oldest[0]))) {
        // Sent twice: to the main part when it has room, or in place of its least recently
        // seen pair once nothing of that one is left in the window (else it stays, never
        // forgotten within its window all the same).
        if (s.count[0] >= main_cap) {
            const std::uint32_t v = s.oldest[0];
            s.forget(v);
            s.free.push_back(v);
        }
        s.unlink(i);
        s.slots[i].probation = false;
        s.push_newest(i);
    }
    return 0;
}

std::shared_ptr<duplicate_counter> duplicate_counter::with_limits(std::uint32_t max, milliseconds window) const {
    return std::shared_ptr<duplicate_counter>(new duplicate_counter(shared_table{}, max, window, max_keys_, table_));
}

std::shared_ptr<duplicate_counter> duplicate_counter::resized(std::uint32_t max, milliseconds window,
                                                               std::size_t max_keys) const {
    auto c = std::make_shared<duplicate_counter>(max, window, max_keys);
    std::int64_t latest = std::numeric_limits<std::int64_t>::min();
    for (auto& s : shards_) {
        std::lock_guard lock{s.mu};
        for (const slot& e : s.slots) {
            latest = std::max(latest, e.refused_ms);
            if (!e.times.empty()) {
                latest = std::max(latest, e.times.back());
            }
        }
    }
    if (latest == std::numeric_limits<std::int64_t>::min()) {
        return c;  // nothing was ever booked
    }
    std::string why;
    c->restore(encode(latest), 0, latest, &why);  // our own encoding: it reads
    return c;
}

// Saved tables: u8 format (1), u32 pairs, then per pair u64 key, u8 probation, i64 last
// refusal, u32 sends, i64 send times (oldest first). Little-endian, like saved meters.
namespace {

constexpr std::uint8_t counter_format = 1;

}  // namespace

std::string duplicate_counter::encode(std::int64_t now_ms) const {
    struct pair {
        std::uint64_t key;
        bool probation;
        std::int64_t refused_ms;
        std::int64_t last;  // latest send or refusal: the order they are saved in
        std::vector<std::int64_t> times;
    };
    std::vector<pair> pairs;
    std::vector<pair> slice_pairs;  // filled under the lock, moved out after it
    // A shard is copied a slice at a time, its lock let go between slices: the requests
    // checked against it wait for at most one slice, never for the whole table.
    constexpr std::size_t slice = 256;
    slice_pairs.reserve(slice);
    for (auto& s : shards_) {
        for (std::size_t from = 0;; from += slice) {
            {
                std::lock_guard lock{s.mu};
                if (from >= s.slots.size()) {
                    break;
                }
                const std::size_t to = std::min(s.slots.size(), from + slice);
                for (std::size_t i = from; i < to; ++i) {
                    const slot& e = s.slots[i];
                    const std::size_t sends = in_window(e, now_ms);
                    if (sends == 0 && e.refused_ms <= now_ms - window_ms_) {
                        continue;  // nothing of it counts any more
                    }
                    const auto it = s.index.find(e.key);
                    if (it == s.index.end() || it->second != i) {
                        continue;  // a slot that was let go (its pair forgotten)
                    }
                    pair p{e.key, e.probation, e.refused_ms, e.refused_ms, {}};
                    p.times.assign(e.times.end() - static_cast<std::ptrdiff_t>(sends), e.times.end());
                    if (!p.times.empty()) {
                        p.last = std::max(p.last, p.times.back());
                    }
                    slice_pairs.push_back(std::move(p));
                }
            }
            std::move(slice_pairs.begin(), slice_pairs.end(), std::back_inserter(pairs));
            slice_pairs.clear();
        }
    }
    if (pairs.empty()) {
        return {};
    }
    // A pair forgotten and taken up again in a later slot while the table was copied is in
    // the copy twice: its latest copy is the one that counts.
    std::sort(pairs.begin(), pairs.end(), [](const pair& a, const pair& b) {
        return a.key != b.key ? a.key < b.key : a.last > b.last;
    });
    pairs.erase(std::unique(pairs.begin(), pairs.end(), [](const pair& a, const pair& b) { return a.key == b.key; }),
                pairs.end());
    // Least recently seen first: restore() adds them in this order, so its recency lists
    // (which pair makes way for a new one) come back as they were, up to ties.
    std::stable_sort(pairs.begin(), pairs.end(), [](const pair& a, const pair& b) { return a.last < b.last; });
    std::string out;
    put_bytes<std::uint8_t>(out, counter_format);
    put_bytes<std::uint32_t>(out, static_cast<std::uint32_t>(pairs.size()));
    for (const auto& p : pairs) {
        put_bytes<std::uint64_t>(out, p.key);
        put_bytes<std::uint8_t>(out, p.probation ? 1 : 0);
        put_bytes<std::int64_t>(out, p.refused_ms);
        put_bytes<std::uint32_t>(out, static_cast<std::uint32_t>(p.times.size()));
        for (const std::int64_t t : p.times) {
            put_bytes<std::int64_t>(out, t);
        }
    }
    return out;
}

bool duplicate_counter::restore(std::string_view blob, std::int64_t shift_ms, std::int64_t now_ms, std::string* error) {
    struct pair {
        std::uint64_t key;
        bool probation;
        std::int64_t refused_ms;
        std::vector<std::int64_t> times;
    };
    auto fail = [&](const char* why) {
        if (error) {
            *error = why;
        }
        return false;
    };
    byte_reader in{blob};
    const auto format = in.get<std::uint8_t>();
    const auto count = in.get<std::uint32_t>();
    if (!in.ok || format != counter_format) {
        return fail("not a saved duplicates table of a format this breakerbox reads");
    }
    constexpr std::int64_t bound = std::int64_t{1} << 60;
    std::vector<pair> pairs;
    pairs.reserve(std::min<std::size_t>(count, blob.size() / 25));
    for (std::uint32_t i = 0; i < count; ++i) {
        pair p;
        p.key = in.get<std::uint64_t>();
        p.probation = in.get<std::uint8_t>() != 0;
        p.refused_ms = in.get<std::int64_t>();
        const auto sends = in.get<std::uint32_t>();
        if (!in.ok || sends > in.in.size() / sizeof(std::int64_t)) {
            return fail("saved duplicates table is truncated");
        }
        p.times.resize(sends);
        for (auto& t : p.times) {
            t = in.get<std::int64_t>();
            if (t < -bound || t > bound) {
                return fail("saved duplicates table has a send time outside any clock");
            }
        }
        // A table saved before sends were kept in order may hold two of them swapped (two
        // requests booking a pair a millisecond apart): put in order, never refused (a start
        // refused for it would stay down).
        if (!std::is_sorted(p.times.begin(), p.times.end())) {
            std::sort(p.times.begin(), p.times.end());
        }
        if (p.refused_ms != std::numeric_limits<std::int64_t>::min() && (p.refused_ms < -bound || p.refused_ms > bound)) {
            return fail("saved duplicates table has a refusal time outside any clock");
        }
        pairs.push_back(std::move(p));
    }
    if (!in.in.empty()) {
        return fail("saved duplicates table has trailing bytes");
    }
    if (shift_ms < -bound || shift_ms > bound || now_ms < -bound || now_ms > bound) {
        return fail("the saved duplicates table's clock cannot be mapped onto this one");
    }
    const std::size_t main_cap = per_shard_ - probation_;
    // A table smaller than the one saved (max_keys lowered, or a larger max whose default
    // max_keys follows it) keeps the most recently seen pairs of each shard's part, those
    // of a loop under way: the pairs come least recently seen first, so the last ones that
    // fit are taken, and then added in order (the recency lists as they were).
    {
        std::array<std::array<std::size_t, 2>, 16> room{};
        for (std::size_t i = 0; i < shards_.size(); ++i) {
            std::lock_guard lock{shards_[i].mu};
            room[i][0] = main_cap - std::min<std::size_t>(main_cap, shards_[i].count[0]);
            room[i][1] = probation_ - std::min<std::size_t>(probation_, shards_[i].count[1]);
        }
        std::vector<bool> keep(pairs.size(), false);
        for (std::size_t k = pairs.size(); k-- > 0;) {
            auto& r = room[shard_index(pairs[k].key)][pairs[k].probation ? 1 : 0];
            if (r > 0) {
                --r;
                keep[k] = true;
            }
        }
        std::size_t n = 0;
        for (std::size_t k = 0; k < pairs.size(); ++k) {
            if (keep[k]) {
                if (n != k) {
                    pairs[n] = std::move(pairs[k]);  // never onto itself: a vector moved onto itself is emptied
                }
                ++n;
            }
        }
        pairs.resize(n);
    }
    // Every time moves by the same shift; one that would land after now lands at now (a
    // wall clock set back while we were down), which keeps it for longer, never for less.
    auto moved = [&](std::int64_t t) { return std::min(t + shift_ms, now_ms); };
    for (auto& p : pairs) {
        shard& s = shard_of(p.key);
        std::lock_guard lock{s.mu};
        const int l = p.probation ? 1 : 0;
        if (s.index.contains(p.key) || s.count[l] >= (l == 0 ? main_cap : probation_)) {
            continue;
        }
        std::uint32_t i;
        if (!s.free.empty()) {
            i = s.free.back();
            s.free.pop_back();
        } else {
            i = static_cast<std::uint32_t>(s.slots.size());
            s.slots.emplace_back();
        }
        slot& e = s.slots[i];
        e.key = p.key;
        e.probation = p.probation;
        e.refused_ms = p.refused_ms == std::numeric_limits<std::int64_t>::min() ? p.refused_ms : moved(p.refused_ms);
        e.times.clear();
        for (const std::int64_t t : p.times) {
            e.times.push_back(moved(t));
        }
        e.head = 0;
        s.push_newest(i);
        s.index.emplace(p.key, i);
    }
    return true;
}

void duplicate_counter::unbook(std::uint64_t key, std::int64_t now_ms) {
    shard& s = shard_of(key);
    std::lock_guard lock{s.mu};
    auto it = s.index.find(key);
    if (it == s.index.end()) {
        return;
    }
    slot& e = s.slots[it->second];
    for (std::size_t k = e.times.size(); k > e.head; --k) {
        if (e.times[k - 1] == now_ms) {
            e.times.erase(e.times.begin() + static_cast<std::ptrdiff_t>(k - 1));
            return;
        }
    }
}

std::size_t duplicate_counter::keys() const {
    std::size_t n = 0;
    for (auto& s : shards_) {
        std::lock_guard lock{s.mu};
        n += s.index.size();
    }
    return n;
}

std::uint64_t duplicate_counter::total(std::uint64_t shard::*field) const {
    std::uint64_t n = 0;
    for (auto& s : shards_) {
        std::lock_guard lock{s.mu};
        n += s.*field;
    }
    return n;
}

std::uint64_t duplicate_counter::untracked() const { return total(&shard::untracked); }

std::uint64_t duplicate_counter::evictions() const { return total(&shard::evictions); }

guard_result check_pii(const pii_guard& g, const guard_input& in) {
    std::string unreadable;
    guard_result r = check_pii_fields(g, in, unreadable);
    return r.outcome == guard_result::status::clean && !unreadable.empty() ? invalid_body(std::move(unreadable)) : r;
}

guard_result check_content(const content_guard& g, const guard_input& in) {
    std::string unreadable;
    guard_result r = check_content_fields(g, in, unreadable);
    // A message that could not be read shows no unsubscribe link: a missing one is reported.
    return r.outcome == guard_result::status::clean && !unreadable.empty() ? invalid_body(std::move(unreadable)) : r;
}

void book_suspended_duplicates(duplicate_counter* dups, time_point now, std::vector<guard_booking>* bookings) {
    if (dups == nullptr) {
        return;
    }
    scratch& s = local();
    const std::int64_t ms = std::chrono::duration_cast<milliseconds>(now.time_since_epoch()).count();
    for (std::size_t i = 0; i < s.keys.size(); ++i) {
        if (i < s.repeat.size() && s.repeat[i]) {
            continue;
        }
        if (dups->check_and_book(s.keys[i], ms) == 0 && bookings) {
            bookings->push_back({s.keys[i], ms});
        }
    }
}

guard_result check_guard(const guardrail& g, const guard_input& in, time_point now, duplicate_counter* dups,
                         std::vector<guard_booking>* bookings) {
    switch (g.k) {
        case guardrail::kind::pii: return check_pii(g.pii, in);
        case guardrail::kind::recipients: return check_recipients(g.recipients, in);
        case guardrail::kind::content: return check_content(g.content, in);
        case guardrail::kind::duplicates: return check_duplicates(g.duplicates, in, now, dups, bookings);
    }
    return {};
}

}  // namespace bb::rules
