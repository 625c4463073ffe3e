// Guardrails: config parsing, the JSON walk that finds the values to look at (with their
// paths and byte offsets), the per-kind checks and the duplicate counter.

#include "rules/guardrails.hpp"

#include <algorithm>
#include <cstring>

#include "rules/form.hpp"
#include "rules/guardrails_scan.hpp"

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
    std::string_view key;
    std::string key_buf;  // decoded key when it had escapes
};

enum class value_type : std::uint8_t { string, scalar, object, array };

// First '"' or '\\' at or after p, or end.
const char* find_quote_or_escape(const char* p, const char* end) {
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

int hexv(char c) {
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

bool hex4(std::string_view s, std::size_t at, unsigned& out) {
    if (at + 4 > s.size()) {
        return false;
    }
    out = 0;
    for (std::size_t i = 0; i < 4; ++i) {
        const int h = hexv(s[at + i]);
        if (h < 0) {
            return false;
        }
        out = out * 16 + static_cast<unsigned>(h);
    }
    return true;
}

void put_utf8(unsigned cp, std::string& out) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

// Decodes the escape at s[at] == '\\'; appends to out; returns raw bytes consumed, 0 if invalid.
std::size_t decode_escape(std::string_view s, std::size_t at, std::string& out) {
    if (at + 1 >= s.size()) {
        return 0;
    }
    switch (s[at + 1]) {
        case '"': out += '"'; return 2;
        case '\\': out += '\\'; return 2;
        case '/': out += '/'; return 2;
        case 'b': out += '\b'; return 2;
        case 'f': out += '\f'; return 2;
        case 'n': out += '\n'; return 2;
        case 'r': out += '\r'; return 2;
        case 't': out += '\t'; return 2;
        case 'u': {
            unsigned cp = 0;
            if (!hex4(s, at + 2, cp)) {
                return 0;
            }
            if (cp >= 0xD800 && cp < 0xDC00 && at + 12 <= s.size() && s[at + 6] == '\\' && s[at + 7] == 'u') {
                unsigned lo = 0;
                if (hex4(s, at + 8, lo) && lo >= 0xDC00 && lo < 0xE000) {
                    put_utf8(0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00), out);
                    return 12;
                }
            }
            put_utf8(cp >= 0xD800 && cp < 0xE000 ? 0xFFFD : cp, out);
            return 6;
        }
        default: return 0;
    }
}

// Body offset of decoded byte `idx` of the string whose raw text starts at raw_start.
std::size_t raw_offset(std::string_view body, std::size_t raw_start, std::size_t idx) {
    std::size_t decoded = 0;
    std::size_t i = raw_start;
    std::string tmp;
    while (i < body.size() && body[i] != '"') {
        std::size_t raw = 1;
        std::size_t produced = 1;
        if (body[i] == '\\') {
            tmp.clear();
            raw = decode_escape(body, i, tmp);
            produced = tmp.size();
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

class json_walker {
public:
    enum class result : std::uint8_t { done, stopped, invalid };

    // visit(frames, type, text, raw_start, escaped) -> true to stop.
    template <class V>
    result run(std::string_view body, V&& visit) {
        frames_.clear();
        depth_ = 0;
        const std::size_t n = body.size();
        std::size_t pos = skip_ws(body, 0);
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
                        if (!read_string(body, pos, buf_, text, escaped)) {
                            return result::invalid;
                        }
                        if (visit(frames(), value_type::string, text, start, escaped)) {
                            return result::stopped;
                        }
                        s = st::after;
                        break;
                    }
                    const std::size_t start = pos;
                    while (pos < n && body[pos] != ',' && body[pos] != ']' && body[pos] != '}' && body[pos] != ' ' &&
                           body[pos] != '\n' && body[pos] != '\r' && body[pos] != '\t') {
                        ++pos;
                    }
                    if (pos == start || std::strchr("-0123456789tfn", c) == nullptr) {
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
                    if (!read_string(body, pos, f.key_buf, f.key, escaped)) {
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

private:
    static std::size_t skip_ws(std::string_view b, std::size_t pos) {
        while (pos < b.size() && (b[pos] == ' ' || b[pos] == '\n' || b[pos] == '\r' || b[pos] == '\t')) {
            ++pos;
        }
        return pos;
    }

    void push(bool array) {
        if (frames_.size() == depth_) {
            frames_.emplace_back();
        }
        frame& f = frames_[depth_++];
        f.array = array;
        f.index = 0;
        f.key = {};
    }

    // body[pos] == '"'; on success pos is just past the closing quote. text views the body
    // when the string has no escapes, else `buf`.
    static bool read_string(std::string_view body, std::size_t& pos, std::string& buf, std::string_view& text,
                            bool& escaped) {
        const char* const begin = body.data();
        const char* const end = begin + body.size();
        const std::size_t start = pos + 1;
        const char* p = find_quote_or_escape(begin + start, end);
        if (p == end) {
            return false;
        }
        if (*p == '"') {
            text = body.substr(start, static_cast<std::size_t>(p - begin) - start);
            pos = static_cast<std::size_t>(p - begin) + 1;
            escaped = false;
            return true;
        }
        escaped = true;
        buf.assign(begin + start, p);
        std::size_t i = static_cast<std::size_t>(p - begin);
        while (true) {
            const std::size_t used = decode_escape(body, i, buf);
            if (used == 0) {
                return false;
            }
            i += used;
            const char* q = find_quote_or_escape(begin + i, end);
            if (q == end) {
                return false;
            }
            buf.append(begin + i, q);
            i = static_cast<std::size_t>(q - begin);
            if (*q == '"') {
                break;
            }
        }
        text = buf;
        pos = i + 1;
        return true;
    }

    std::vector<frame> frames_;
    std::size_t depth_ = 0;
    std::string buf_;
};

bool path_matches(const json_path& p, std::span<const frame> f, bool prefix) {
    if (p.segments.size() > f.size() || (!prefix && p.segments.size() != f.size())) {
        return false;
    }
    for (std::size_t i = 0; i < p.segments.size(); ++i) {
        const auto& seg = p.segments[i];
        switch (seg.k) {
            case path_segment::kind::names:
                if (f[i].array || std::find(seg.names.begin(), seg.names.end(), f[i].key) == seg.names.end()) {
                    return false;
                }
                break;
            case path_segment::kind::index:
                if (!f[i].array || f[i].index != seg.index) {
                    return false;
                }
                break;
            case path_segment::kind::wildcard: break;
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
        std::size_t digits = 0;
        bool simple = !fr.key.empty() && fr.key.size() <= 64;
        for (const char c : fr.key) {
            digits += c >= '0' && c <= '9';
            simple = simple && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-');
        }
        if (simple && digits < 6) {
            out += '.';
            out += fr.key;
        } else {
            out += "['...']";
        }
    }
    return out;
}

// Index of the first array in the path (a SendGrid personalization), -1 if none.
std::int64_t group_of(std::span<const frame> f) {
    for (const auto& fr : f) {
        if (fr.array) {
            return static_cast<std::int64_t>(fr.index);
        }
    }
    return -1;
}

enum class body_kind : std::uint8_t { json, form, text };

body_kind kind_of(const guard_input& in) {
    const std::string_view ct = in.req.content_type;
    for (std::size_t i = 0; i + 4 <= ct.size(); ++i) {
        if (ieq(ct.substr(i, 4), "json")) {
            return body_kind::json;
        }
    }
    if (in.form) {
        return body_kind::form;
    }
    for (const char c : in.req.body) {
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
            continue;
        }
        return c == '{' || c == '[' ? body_kind::json : body_kind::text;
    }
    return body_kind::text;
}

bool form_selected(const std::vector<guard_field>& fields, std::string_view name) {
    for (const auto& f : fields) {
        if (f.form && f.name == name) {
            return true;
        }
    }
    return false;
}

struct scratch {
    json_walker walker;
    std::string addr;
    struct valued {
        std::string text;
        std::int64_t group = -1;
    };
    std::vector<valued> recipients;
    std::vector<valued> subjects;
    std::vector<valued> templates;
    std::vector<std::uint64_t> keys;
};

scratch& local() {
    thread_local scratch s;
    return s;
}

guard_result violated(std::string finding) {
    guard_result r;
    r.outcome = guard_result::status::violated;
    r.finding = std::move(finding);
    return r;
}

guard_result invalid_body() {
    guard_result r;
    r.outcome = guard_result::status::invalid_body;
    r.finding = "body is not valid JSON";
    return r;
}

// ---------------------------------------------------------------------------------------

guard_result check_pii(const pii_guard& g, const guard_input& in) {
    const std::string_view body = in.req.body;
    detail::text_hit hit;
    switch (kind_of(in)) {
        case body_kind::json: {
            std::string where;
            std::size_t offset = 0;
            auto res = local().walker.run(body, [&](std::span<const frame> f, value_type t, std::string_view text,
                                                    std::size_t start, bool escaped) {
                if (t != value_type::string && t != value_type::scalar) {
                    return false;
                }
                if (!g.in.empty() && !any_path(g.in, f, true)) {
                    return false;
                }
                if (!detail::scan_pii(g.kinds, text, &hit)) {
                    return false;
                }
                offset = escaped ? raw_offset(body, start, hit.offset) : start + hit.offset;
                where = render_path(f);
                return true;
            });
            if (res == json_walker::result::stopped) {
                return violated(hit.what + " at body offset " + std::to_string(offset) + " (" + where + ")");
            }
            if (res == json_walker::result::done) {
                return {};
            }
            break;  // not JSON after all: scan the bytes
        }
        case body_kind::form: {
            for (const auto& [name, value] : *in.form) {
                if (!g.in.empty() && !form_selected(g.in, name)) {
                    continue;
                }
                if (detail::scan_pii(g.kinds, value, &hit)) {
                    return violated(hit.what + " in form field " + cfg::quote(name.substr(0, 64)) + " at offset " +
                                    std::to_string(hit.offset));
                }
            }
            return {};
        }
        case body_kind::text: break;
    }
    if (detail::scan_pii(g.kinds, body, &hit)) {
        return violated(hit.what + " at body offset " + std::to_string(hit.offset));
    }
    return {};
}

// Why an address is refused, or empty.
std::string_view refuse_recipient(const recipients_guard& g, std::string_view addr) {
    const auto at = addr.rfind('@');
    const std::string_view domain = at == std::string_view::npos ? std::string_view{} : addr.substr(at + 1);
    if (!g.block.empty() && g.block.contains(domain)) {
        return "recipient domain blocked";
    }
    if (!g.allow.empty() && !g.allow.contains(domain)) {
        return "recipient domain not in allowlist";
    }
    if (g.suppressed && g.suppressed->contains(addr)) {
        return "suppressed recipient";
    }
    return {};
}

template <class F>
void for_each_item(std::string_view list, F&& f) {
    bool quoted = false;
    int angle = 0;
    std::size_t start = 0;
    for (std::size_t i = 0; i <= list.size(); ++i) {
        const char c = i < list.size() ? list[i] : ',';
        if (c == '"') {
            quoted = !quoted;
        } else if (!quoted && c == '<') {
            ++angle;
        } else if (!quoted && c == '>' && angle > 0) {
            --angle;
        } else if (c == ',' && ((!quoted && angle == 0) || i == list.size())) {
            std::string_view item = list.substr(start, i - start);
            while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) {
                item.remove_prefix(1);
            }
            if (!item.empty()) {
                f(item);
            }
            start = i + 1;
        }
    }
}

// Calls f(address, group, where) for every recipient at `fields`; false if the body should
// be JSON and is not.
template <class F>
bool for_each_value(const std::vector<guard_field>& fields, const guard_input& in, bool split_lists, F&& f) {
    scratch& s = local();
    switch (kind_of(in)) {
        case body_kind::json: {
            auto res = s.walker.run(in.req.body, [&](std::span<const frame> fr, value_type t, std::string_view text,
                                                     std::size_t, bool) {
                if (t != value_type::string || !any_path(fields, fr, false)) {
                    return false;
                }
                return f(text, group_of(fr), [fr] { return render_path(fr); });
            });
            return res != json_walker::result::invalid;
        }
        case body_kind::form: {
            for (const auto& [name, value] : *in.form) {
                if (!form_selected(fields, name)) {
                    continue;
                }
                bool stop = false;
                auto where = [&name] { return "form field " + name.substr(0, 64); };
                if (split_lists) {
                    for_each_item(value, [&](std::string_view item) {
                        if (!stop) {
                            stop = f(item, -1, where);
                        }
                    });
                } else {
                    stop = f(value, -1, where);
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

guard_result check_recipients(const recipients_guard& g, const guard_input& in) {
    scratch& s = local();
    guard_result out;
    std::size_t index = 0;
    const bool ok = for_each_value(g.fields, in, true, [&](std::string_view item, std::int64_t, auto&& where) {
        detail::normalize_address(item, s.addr);
        const std::string_view why = refuse_recipient(g, s.addr);
        if (!why.empty()) {
            out = violated(std::string{why} + " #" + std::to_string(index) + " " + mask_address(s.addr) + " (" +
                           where() + ")");
            return true;
        }
        ++index;
        return false;
    });
    if (!ok) {
        return invalid_body();
    }
    return out;
}

bool unsubscribe_setting(std::span<const frame> f, value_type t, std::string_view text) {
    const std::size_t d = f.size();
    if (d == 1 && !f[0].array && (f[0].key == "asm" || f[0].key == "ListManagementOptions") && t == value_type::object) {
        return true;
    }
    if (d == 3 && t == value_type::scalar && text == "true" && f[0].key == "tracking_settings" &&
        f[1].key == "subscription_tracking" && f[2].key == "enable") {
        return true;
    }
    return d >= 2 && !f[d - 1].array && !f[d - 2].array && ieq(f[d - 1].key, "List-Unsubscribe") &&
           ieq(f[d - 2].key, "headers");
}

guard_result check_content(const content_guard& g, const guard_input& in) {
    const std::string_view body = in.req.body;
    bool unsubscribe = false;
    detail::text_hit hit;
    bool scan_raw = false;
    switch (kind_of(in)) {
        case body_kind::json: {
            std::string where;
            std::size_t offset = 0;
            auto res = local().walker.run(body, [&](std::span<const frame> f, value_type t, std::string_view text,
                                                    std::size_t start, bool escaped) {
                if (!unsubscribe && unsubscribe_setting(f, t, text)) {
                    unsubscribe = true;
                }
                if (t != value_type::string || !any_path(g.fields, f, true)) {
                    return false;
                }
                if (!detail::scan_content(g, text, unsubscribe, &hit)) {
                    return false;
                }
                offset = escaped ? raw_offset(body, start, hit.offset) : start + hit.offset;
                where = render_path(f);
                return true;
            });
            if (res == json_walker::result::stopped) {
                return violated(hit.what + " at body offset " + std::to_string(offset) + " (" + where + ")");
            }
            scan_raw = res == json_walker::result::invalid;
            break;
        }
        case body_kind::form:
            for (const auto& [name, value] : *in.form) {
                if (ieq(name, "h:List-Unsubscribe")) {
                    unsubscribe = true;
                }
                if (!form_selected(g.fields, name)) {
                    continue;
                }
                if (detail::scan_content(g, value, unsubscribe, &hit)) {
                    return violated(hit.what + " in form field " + cfg::quote(name.substr(0, 64)) + " at offset " +
                                    std::to_string(hit.offset));
                }
            }
            break;
        case body_kind::text: scan_raw = true; break;
    }
    if (scan_raw) {
        unsubscribe = false;
        if (detail::scan_content(g, body, unsubscribe, &hit)) {
            return violated(hit.what + " at body offset " + std::to_string(hit.offset));
        }
    }
    if (g.require_unsubscribe && !unsubscribe) {
        return violated("missing unsubscribe link (no unsubscribe link or text, %unsubscribe_url%, asm group, "
                        "subscription tracking or List-Unsubscribe header)");
    }
    return {};
}

std::uint64_t mix(std::uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

std::uint64_t fnv(std::uint64_t h, std::string_view s) {
    for (const char c : s) {
        h ^= static_cast<unsigned char>(c);
        h *= 1099511628211ull;
    }
    h ^= 0x1f;  // field separator
    h *= 1099511628211ull;
    return h;
}

// The subject (template) that goes with a recipient: the one of its own personalization,
// else the message's, else the first one found.
std::string_view pick(const std::vector<scratch::valued>& v, std::int64_t group) {
    const scratch::valued* top = nullptr;
    for (const auto& x : v) {
        if (x.group == group) {
            return x.text;
        }
        if (x.group == -1 && !top) {
            top = &x;
        }
    }
    if (top) {
        return top->text;
    }
    return v.empty() ? std::string_view{} : std::string_view{v.front().text};
}

guard_result check_duplicates(const duplicates_guard& g, const guard_input& in, time_point now,
                              duplicate_counter* counter, std::vector<guard_booking>* bookings) {
    scratch& s = local();
    s.recipients.clear();
    s.subjects.clear();
    s.templates.clear();
    // One pass over the body collects recipients, subjects and templates together.
    struct target {
        bool on;
        const std::vector<guard_field>* fields;
        std::vector<scratch::valued>* out;
        bool address;
    };
    const target targets[] = {{g.by_recipient, &g.recipient_fields, &s.recipients, true},
                              {g.by_subject, &g.subject_fields, &s.subjects, false},
                              {g.by_template, &g.template_fields, &s.templates, false}};
    auto add = [](const target& t, std::string_view v, std::int64_t group) {
        if (t.out->size() >= 100'000) {
            return;
        }
        t.out->emplace_back();
        if (t.address) {
            detail::normalize_address(v, t.out->back().text);
        } else {
            t.out->back().text.assign(v.substr(0, 1024));
        }
        t.out->back().group = group;
    };
    switch (kind_of(in)) {
        case body_kind::json: {
            auto res = s.walker.run(in.req.body, [&](std::span<const frame> fr, value_type t, std::string_view text,
                                                     std::size_t, bool) {
                if (t != value_type::string) {
                    return false;
                }
                for (const auto& tg : targets) {
                    if (tg.on && any_path(*tg.fields, fr, false)) {
                        add(tg, text, group_of(fr));
                    }
                }
                return false;
            });
            if (res == json_walker::result::invalid) {
                return invalid_body();
            }
            break;
        }
        case body_kind::form:
            for (const auto& [name, value] : *in.form) {
                for (const auto& tg : targets) {
                    if (!tg.on || !form_selected(*tg.fields, name)) {
                        continue;
                    }
                    if (tg.address) {
                        for_each_item(value, [&](std::string_view item) { add(tg, item, -1); });
                    } else {
                        add(tg, value, -1);
                    }
                }
            }
            break;
        case body_kind::text: break;
    }
    if (!counter) {
        return {};
    }
    // One key per recipient (or one for the request when recipients are not part of it).
    s.keys.clear();
    const std::size_t n = g.by_recipient ? s.recipients.size() : 1;
    for (std::size_t i = 0; i < n; ++i) {
        const std::int64_t group = g.by_recipient ? s.recipients[i].group : -1;
        std::uint64_t h = fnv(1469598103934665603ull, in.key);
        h = fnv(h, g.by_recipient ? std::string_view{s.recipients[i].text} : std::string_view{});
        h = fnv(h, g.by_subject ? pick(s.subjects, group) : std::string_view{});
        h = fnv(h, g.by_template ? pick(s.templates, group) : std::string_view{});
        s.keys.push_back(mix(h));
    }
    const std::int64_t ms = std::chrono::duration_cast<milliseconds>(now.time_since_epoch()).count();
    const std::size_t first_booking = bookings ? bookings->size() : 0;
    for (std::size_t i = 0; i < s.keys.size(); ++i) {
        // The same recipient twice in one request is one send to it.
        if (std::find(s.keys.begin(), s.keys.begin() + static_cast<std::ptrdiff_t>(i), s.keys[i]) !=
            s.keys.begin() + static_cast<std::ptrdiff_t>(i)) {
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
                what += "recipient #" + std::to_string(i) + " " + mask_address(s.recipients[i].text) + " ";
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
    if (text.starts_with("form:")) {
        f.form = true;
        f.name = std::string{text.substr(5)};
        if (f.name.empty()) {
            *error = "missing form field name";
            return std::nullopt;
        }
        return f;
    }
    auto p = parse_json_path(text, error);
    if (!p) {
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

const std::vector<guard_field>& default_recipient_fields() {
    static const auto f = default_fields({
        "$.personalizations[*]['to','cc','bcc'][*].email",                     // SendGrid
        "$.Destination['ToAddresses','CcAddresses','BccAddresses'][*]",         // SES v2 SendEmail
        "$.BulkEmailEntries[*].Destination['ToAddresses','CcAddresses','BccAddresses'][*]",  // SES v2 bulk
        "$.message.to", "$.message['cc','bcc'][*]",                             // HubSpot single send
        "form:to", "form:cc", "form:bcc"});                                     // Mailgun
    return f;
}

const std::vector<guard_field>& default_content_fields() {
    static const auto f = default_fields({
        "$.subject", "$.content", "$.personalizations[*].subject",             // SendGrid
        "$.personalizations[*].dynamic_template_data", "$.personalizations[*].substitutions",
        "$.Content",                                                            // SES v2
        "$.message.subject", "$.customProperties",                             // HubSpot single send
        "form:subject", "form:text", "form:html", "form:amp-html"});           // Mailgun
    return f;
}

const std::vector<guard_field>& default_subject_fields() {
    static const auto f = default_fields({"$.subject", "$.personalizations[*].subject",
                                          "$.Content.Simple.Subject.Data", "$.message.subject", "form:subject"});
    return f;
}

const std::vector<guard_field>& default_template_fields() {
    static const auto f = default_fields({"$.template_id", "$.Content.Template.TemplateName",
                                          "$.Content.Template.TemplateArn", "$.emailId", "form:template"});
    return f;
}

std::vector<guard_field> read_fields(cfg::object_reader& r, std::string_view key, const std::vector<guard_field>& dflt) {
    auto list = r.strings(key);
    if (!list) {
        return dflt;
    }
    std::vector<guard_field> out;
    if (list->empty() || list->size() > max_fields) {
        r.errs().add(r.path_of(key), "needs 1 to " + std::to_string(max_fields) + " fields");
    }
    for (std::size_t i = 0; i < list->size(); ++i) {
        std::string err;
        if (auto f = parse_field((*list)[i], &err)) {
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

std::string join_fields(const std::vector<guard_field>& fields) {
    std::string out;
    for (const auto& f : fields) {
        out += f.text;
        out += ',';
    }
    return out;
}

}  // namespace

void split_addresses(std::string_view list, std::vector<std::string_view>& out) {
    for_each_item(list, [&out](std::string_view item) {
        while (item.back() == ' ' || item.back() == '\t') {  // not empty, and starts with neither
            item.remove_suffix(1);
        }
        out.push_back(item);
    });
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
        g->pii.in = read_fields(r, "in", {});
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
        std::size_t max_entries = 1'000'000;
        if (auto m = rr.integer("max_suppressed", false, 1, 10'000'000)) {
            max_entries = static_cast<std::size_t>(*m);
        }
        if (auto file = rr.string("suppression_file")) {
            rg.suppression_file = *file;
            std::string err;
            if (auto list = suppression_list::load_file(*file, max_entries, &err)) {
                rg.suppressed = std::make_shared<const suppression_list>(std::move(*list));
            } else {
                errs.add(rr.path_of("suppression_file"), cfg::quote(*file) + " " + err);
            }
        }
        rg.fields = read_fields(rr, "fields", default_recipient_fields());
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
        cg.fields = read_fields(cr, "fields", default_content_fields());
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
        dg.recipient_fields = read_fields(dr, "recipient_fields", default_recipient_fields());
        dg.subject_fields = read_fields(dr, "subject_fields", default_subject_fields());
        dg.template_fields = read_fields(dr, "template_fields", default_template_fields());
        dr.finish();
        g->canonical = "duplicates;max=" + std::to_string(dg.max) + ";window=" + std::to_string(dg.window.count()) +
                       ";of=" + std::to_string(dg.by_recipient) + std::to_string(dg.by_subject) +
                       std::to_string(dg.by_template) + ";r=" + join_fields(dg.recipient_fields) +
                       ";s=" + join_fields(dg.subject_fields) + ";t=" + join_fields(dg.template_fields);
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
    : max_(std::max<std::uint32_t>(max, 1)),
      window_ms_(std::max<std::int64_t>(window.count(), 1)),
      per_shard_(std::max<std::size_t>((max_keys + shards_.size() - 1) / shards_.size(), 1)) {}

std::uint32_t duplicate_counter::check_and_book(std::uint64_t key, std::int64_t now_ms) {
    shard& s = shard_of(key);
    std::lock_guard lock{s.mu};
    auto it = s.index.find(key);
    if (it == s.index.end()) {
        if (s.index.size() >= per_shard_) {
            // Evict the pair seen least recently (see the class comment for why this is safe).
            s.index.erase(s.lru.back().key);
            s.lru.pop_back();
            ++s.evictions;
        }
        s.lru.push_front(entry{key, {}});
        s.lru.front().times.reserve(max_);
        it = s.index.emplace(key, s.lru.begin()).first;
    } else if (it->second != s.lru.begin()) {
        s.lru.splice(s.lru.begin(), s.lru, it->second);
    }
    auto& times = it->second->times;
    // Drop what has left the window (now - window, now].
    const auto expired = std::find_if(times.begin(), times.end(), [&](std::int64_t t) { return t > now_ms - window_ms_; });
    times.erase(times.begin(), expired);
    if (times.size() >= max_) {
        return static_cast<std::uint32_t>(times.size());
    }
    times.push_back(now_ms);
    return 0;
}

void duplicate_counter::unbook(std::uint64_t key, std::int64_t now_ms) {
    shard& s = shard_of(key);
    std::lock_guard lock{s.mu};
    auto it = s.index.find(key);
    if (it == s.index.end()) {
        return;
    }
    auto& times = it->second->times;
    for (auto t = times.rbegin(); t != times.rend(); ++t) {
        if (*t == now_ms) {
            times.erase(std::next(t).base());
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

std::uint64_t duplicate_counter::evictions() const {
    std::uint64_t n = 0;
    for (auto& s : shards_) {
        std::lock_guard lock{s.mu};
        n += s.evictions;
    }
    return n;
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
