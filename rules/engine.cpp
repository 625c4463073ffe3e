#include "rules/engine.hpp"

#include "core/utf8.hpp"

#include "core/http_token.hpp"
#include "core/json_key.hpp"
#include "core/method_override.hpp"
#include "core/url_decode.hpp"

#include "rules/agent_constraints.hpp"
#include "rules/form.hpp"
#include "rules/guardrails.hpp"
#include "rules/mime.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdlib>
#include <cmath>
#include <unordered_map>

namespace bb::rules {

std::string lower(std::string_view s) {
    std::string out{s};
    for (auto& c : out) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return out;
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
        const auto x = static_cast<unsigned char>(a[i]);
        const auto y = static_cast<unsigned char>(b[i]);
        if (x != y && std::tolower(x) != std::tolower(y)) {
            return false;
        }
    }
    return true;
}

bool icontains(std::string_view text, std::string_view word) {
    for (std::size_t i = 0; i + word.size() <= text.size(); ++i) {
        if (iequals(text.substr(i, word.size()), word)) {
            return true;
        }
    }
    return false;
}

std::string_view to_string(verdict v) {
    switch (v) {
        case verdict::allow: return "allow";
        case verdict::violated: return "violated";
        case verdict::rejected: return "rejected";
    }
    return "?";
}

namespace {

constexpr std::size_t max_params = 32;

// ---------------------------------------------------------------------------------------
// Per-thread scratch, so the data path reuses its buffers instead of allocating.

using reservation = evaluation_receipt::meter_booking;
using guard_reservation = evaluation_receipt::guard_send;

struct scratch {
    simdjson::dom::parser request_parser;
    simdjson::dom::parser response_parser;
    std::vector<std::pair<std::string, std::string>> form;
    std::vector<std::pair<std::string, std::string>> query;
    std::vector<std::string> distinct;
    std::vector<reservation> reservations;
    std::size_t reservation_count = 0;
    std::vector<guard_booking> guard_bookings;
    std::vector<guard_reservation> guard_reservations;
    guard_body guard_doc;  // the request body parsed once for all its guard rules
    std::string key;
    std::string mime_message;  // a decoded raw MIME message (mime: terms)
    std::string mime_scratch;
    std::vector<std::string_view> mime_addresses;
    std::string url_decoded;  // url_ids: terms
    std::string number;       // sum(form:...): a value read as a number
};

scratch& local() {
    thread_local scratch s;
    return s;
}

// ---------------------------------------------------------------------------------------
// Decoding helpers.

// Parses `a=1&b=2` into `out`, reusing its strings.
void parse_urlencoded(std::string_view text, std::vector<std::pair<std::string, std::string>>& out) {
    std::size_t n = 0;
    while (!text.empty()) {
        const auto amp = text.find('&');
        const std::string_view pair = text.substr(0, amp);
        text = amp == std::string_view::npos ? std::string_view{} : text.substr(amp + 1);
        if (pair.empty()) {
            continue;
        }
        const auto eq = pair.find('=');
        if (n == out.size()) {
            out.emplace_back();
        }
        url_decode(pair.substr(0, eq), out[n].first);
        url_decode(eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1), out[n].second);
        ++n;
    }
    out.resize(n);
}

// The parameters of a header value (`multipart/form-data; boundary="abc"`,
// `form-data; name="to"`), read as RFC 9110 / RFC 2183 write them: whitespace (space or
// tab) around ';' and '=', quoted strings with backslash escapes. f(name, value) for each;
// false when the value is not well formed (the caller refuses the body rather than guess
// how an upstream would read it).
template <class F>
bool for_each_param(std::string_view v, F&& f, bool strict = true) {
    auto ws = [](char c) { return c == ' ' || c == '\t'; };
    std::size_t i = v.find(';');
    while (i != std::string_view::npos && i < v.size()) {
        ++i;  // past ';'
        while (i < v.size() && ws(v[i])) {
            ++i;
        }
        if (i == v.size()) {
            break;  // a trailing ';'
        }
        // A token, '=' right after it and the value right after that (RFC 9110 5.6.6):
        // readers that pick parameters out with a pattern (Werkzeug) read `name=to"x` as
        // `to`, and `filename ="; name=to"` as naming the part `to`.
        const std::size_t name_start = i;
        while (i < v.size() && (strict ? is_tchar(v[i]) : v[i] != '=' && v[i] != ';' && !ws(v[i]))) {
            ++i;
        }
        const std::string_view name = v.substr(name_start, i - name_start);
        while (!strict && i < v.size() && ws(v[i])) {
            ++i;
        }
        if (name.empty() || i == v.size() || v[i] != '=') {
            return false;
        }
        ++i;
        while (!strict && i < v.size() && ws(v[i])) {
            ++i;
        }
        std::string value;
        if (i < v.size() && v[i] == '"') {
            ++i;
            bool closed = false;
            while (i < v.size()) {
                if (v[i] == '\\' && i + 1 < v.size()) {
                    value += v[i + 1];
                    i += 2;
                } else if (v[i] == '"') {
                    closed = true;
                    ++i;
                    break;
                } else {
                    value += v[i++];
                }
            }
            if (!closed) {
                return false;
            }
        } else {
            const std::size_t vs = i;
            while (i < v.size() && (strict ? is_tchar(v[i]) : v[i] != ';' && !ws(v[i]))) {
                ++i;
            }
            if (strict && i == vs) {
                return false;  // an empty or non-token value (`name=`, `boundary=abc"x` stops at '"')
            }
            value.assign(v.substr(vs, i - vs));
        }
        while (i < v.size() && ws(v[i])) {
            ++i;
        }
        if (i < v.size() && v[i] != ';') {
            return false;
        }
        if (!f(name, std::move(value))) {
            return false;
        }
    }
    return true;
}

}  // namespace

// (rules/form.hpp) The body is refused when a parameter cannot be read for certain.
bool header_param(std::string_view header_value, std::string_view name, std::optional<std::string>* out, bool strict) {
    out->reset();
    bool twice = false;
    const bool ok = for_each_param(header_value, [&](std::string_view n, std::string value) {
        const bool extended = !n.empty() && n.back() == '*';
        if (extended) {
            n.remove_suffix(1);
        }
        if (n.size() == name.size() && iequals(n, name)) {
            twice = twice || out->has_value() || extended;
            *out = std::move(value);
        }
        return true;
    }, strict);
    return ok && !twice;
}

namespace {

// What one value adds to a sum(...): a metered amount is never negative, so a negative value
// (or NaN) adds nothing rather than taking from the window (`{"qty": -1000000}` would make
// room for a million more), and a huge one (or +inf) adds a bound far above any limit, so
// a window total stays finite and a rollback of it exact (inf - inf is NaN, never above a
// limit).
double summable(double x) {
    constexpr double most = 1e15;
    return x > 0 ? std::min(x, most) : 0;
}

constexpr std::string_view unreadable_amount =
    "holds a value that is not a number as read here (digits, one sign, a point, an exponent, blanks around; "
    "'_' between digits), though a server may read one in it (Python takes 1_000 and other scripts' digits)";

// A form field's amount for sum(form:...), read as widely as the servers behind a form read
// one (Go's ParseFloat, Java, Python): blanks around it, a leading `+`, `_` between digits
// (Python), an exponent beyond a double's range (1e400: the bound, not 0), hex floats
// (more, the safe side); strtod in the C locale. A blank value is 0. Anything else is not
// read as a number here (nullopt: an invalid body), since some server may read one in it.
std::optional<double> form_number(const std::string& v, std::string& buf) {
    const auto first = v.find_first_not_of(" \t\r\n");
    if (first == std::string::npos) {
        return 0.0;
    }
    const auto last = v.find_last_not_of(" \t\r\n");
    buf.assign(v, first, last + 1 - first);
    const auto digit = [](char c) { return c >= '0' && c <= '9'; };
    for (std::size_t i = 1; i + 1 < buf.size(); ++i) {
        if (buf[i] == '_' && digit(buf[i - 1]) && digit(buf[i + 1])) {
            buf.erase(i, 1);
        }
    }
    char* end = nullptr;
    const double x = std::strtod(buf.c_str(), &end);
    if (end == buf.c_str() || end != buf.c_str() + buf.size()) {
        return std::nullopt;
    }
    return x;
}

// A form's (or a form part's) charset in which the guards' reading of the bytes is a
// reader's: every byte below 0x80 is that ASCII character, and no ASCII byte is part of
// another character. UTF-8, US-ASCII, the ISO 8859 family, the Windows 125x code pages
// (Apache HttpClient labels every text field ISO-8859-1), KOI8-R/U, and none given. Not the
// multi-byte sets whose second bytes include ASCII (Shift_JIS, Big5, GBK: `\x81\` is one
// character there, so a quote after it is not escaped, and their full-width letters are
// not read as ASCII here as UTF-8's are), nor UTF-7, UTF-16/32, ISO-2022, HZ or EBCDIC,
// which readers that honour them decode into other text.
bool form_charset_readable(std::string_view cs) {
    auto starts = [&](std::string_view p) { return cs.size() >= p.size() && iequals(cs.substr(0, p.size()), p); };
    return cs.empty() || iequals(cs, "utf-8") || iequals(cs, "utf8") || iequals(cs, "us-ascii") ||
           iequals(cs, "ascii") || starts("iso-8859-") || starts("iso8859-") || starts("iso_8859-") ||
           iequals(cs, "latin1") || iequals(cs, "latin-1") || starts("windows-125") || starts("cp125") ||
           iequals(cs, "koi8-r") || iequals(cs, "koi8-u");
}

// False when the body is malformed (see parse_form). Delimiters count only at the start of
// a line (RFC 2046 5.1.1): `x--B--` inside a value or the preamble is data, as every
// multipart parser an upstream runs reads it.
bool parse_multipart(std::string_view body, std::string_view boundary,
                     std::vector<std::pair<std::string, std::string>>& out) {
    std::size_t n = 0;
    out.clear();
    if (boundary.empty() || boundary.size() > 70) {
        return false;
    }
    std::string delim = "\r\n--";
    delim += boundary;
    // Where the delimiter at `at` (its "--", after the CRLF) ends: past "--" for the close
    // delimiter (*close), past padding and CRLF for another part; npos when what follows
    // "--boundary" makes it data (`--Bx`).
    auto delimiter_end = [&](std::size_t at, bool* close) -> std::size_t {
        std::size_t p = at + delim.size() - 2;
        if (body.substr(p, 2) == "--") {
            *close = true;
            return p + 2;
        }
        while (p < body.size() && (body[p] == ' ' || body[p] == '\t')) {
            ++p;  // transport padding
        }
        *close = false;
        return body.substr(p, 2) == "\r\n" ? p + 2 : std::string_view::npos;
    };
    // The next real delimiter at or after `from` (the position of its CRLF), or npos.
    auto next_delimiter = [&](std::size_t from, std::size_t* end, bool* close) {
        for (std::size_t at = body.find(delim, from); at != std::string_view::npos; at = body.find(delim, at + 1)) {
            if ((*end = delimiter_end(at + 2, close)) != std::string_view::npos) {
                return at;
            }
        }
        return std::string_view::npos;
    };
    // Where each delimiter we read starts (its "--boundary"): every other "--boundary" in
    // the body makes it malformed (below).
    std::vector<std::size_t> delimiters;
    bool close = false;
    std::size_t part = std::string_view::npos;  // where the current part's headers start
    // The first delimiter may open the body (no CRLF before it); the rest follow a CRLF.
    if (body.substr(0, delim.size() - 2) == std::string_view{delim}.substr(2)) {
        // delimiter_end() wants the position after the CRLF: the body's start.
        if (const auto e = delimiter_end(0, &close); e != std::string_view::npos) {
            part = e;
            delimiters.push_back(0);
        }
    }
    if (part == std::string_view::npos && !close) {
        std::size_t e = 0;
        const std::size_t first = next_delimiter(0, &e, &close);
        if (first == std::string_view::npos) {
            return false;
        }
        delimiters.push_back(first + 2);
        part = e;
    }
    bool ok = true;
    while (!close) {
        const auto head_end = body.find("\r\n\r\n", part - 2);  // a part may have no headers
        if (head_end == std::string_view::npos) {
            ok = false;
            break;
        }
        const std::string_view head = body.substr(part, head_end + 2 - part);
        const std::size_t value_start = head_end + 4;
        std::size_t after = 0;
        const std::size_t next = next_delimiter(head_end + 2, &after, &close);  // no body: CRLF--B right away
        if (next == std::string_view::npos) {
            ok = false;
            break;
        }
        delimiters.push_back(next + 2);
        // Find `Content-Disposition: form-data; name="to"` (any case, any whitespace).
        std::optional<std::string> name;
        bool has_disposition = false;
        bool odd_charset = false;  // a Content-Type charset that may not leave ASCII as it is
        bool is_file = false;      // a filename: an attachment, its text in its own charset
        std::size_t line_start = 0;
        while (line_start < head.size()) {
            auto line_end = head.find("\r\n", line_start);
            if (line_end == std::string_view::npos) {
                line_end = head.size();
            }
            const std::string_view line = head.substr(line_start, line_end - line_start);
            if (!line.empty() && (line.front() == ' ' || line.front() == '\t' || line.find(':') == std::string_view::npos)) {
                ok = false;  // a folded (continued) or broken header line: parsers disagree on it
            }
            if (const auto colon = line.find(':'); !line.empty() && colon != std::string_view::npos &&
                                                   (colon == 0 || !std::all_of(line.begin(), line.begin() + colon, is_tchar))) {
                // `Content-Disposition : ...` is that header to readers that trim the name
                // (Werkzeug, older Go), and no header to the checks below.
                ok = false;
            }
            if (line.find_first_of("\r\n") != std::string_view::npos) {
                ok = false;  // a bare CR or LF: a line end to some readers (Go's textproto), not to us
            }
            constexpr std::string_view cte = "content-transfer-encoding:";
            if (line.size() >= cte.size() && iequals(line.substr(0, cte.size()), cte)) {
                // Go's multipart decodes quoted-printable by itself: `a=40x.com` is a@x.com
                // there. Only encodings that leave the bytes as they are.
                std::string_view v = line.substr(cte.size());
                while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) {
                    v.remove_prefix(1);
                }
                while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) {
                    v.remove_suffix(1);
                }
                if (!iequals(v, "7bit") && !iequals(v, "8bit") && !iequals(v, "binary")) {
                    ok = false;
                }
            }
            constexpr std::string_view ct = "content-type:";
            if (line.size() > ct.size() && iequals(line.substr(0, ct.size()), ct)) {
                // A field's text in another charset (utf-7, utf-16) is decoded by readers that
                // honour it (Werkzeug before 2.3) into what we never see here: `a@+AGU-vil.com`
                // is a@evil.com there. Only charsets read here as a reader reads them
                // (form_charset_readable), for fields;
                // a file keeps its own (checked below, once the disposition is read).
                std::optional<std::string> charset;
                if (!header_param(line, "charset", &charset) || (charset && !form_charset_readable(*charset))) {
                    odd_charset = true;
                }
            }
            constexpr std::string_view cd = "content-disposition:";
            if (line.size() > cd.size() && iequals(line.substr(0, cd.size()), cd)) {
                if (has_disposition) {
                    ok = false;  // two dispositions: which name counts?
                }
                has_disposition = true;
                if (!header_param(line, "name", &name)) {
                    ok = false;  // a name we cannot read for certain (repeated, encoded, malformed)
                }
                // RFC 2231 continuations (`name*0="t"; name*1="o"`) are joined by some
                // readers into a name we would not see: no parameter of that kind is read.
                // And a filename (either form) makes the part a file.
                for_each_param(line, [&](std::string_view pn, const std::string&) {
                    is_file = is_file || iequals(pn, "filename") || iequals(pn, "filename*");
                    // `name*0`, `name*1*`; `filename*` (.NET sends it for every file) is fine.
                    if (const auto star = pn.find('*'); star != std::string_view::npos && iequals(pn.substr(0, star), "name")) {
                        ok = false;
                    }
                    return true;
                });
            }
            line_start = line_end + 2;
        }
        if (odd_charset && !is_file) {
            ok = false;
        }
        if (!name || name->empty()) {
            ok = false;  // a part we cannot name is one another reader may name (and read)
        } else {
            if (n == out.size()) {
                out.emplace_back();
            }
            out[n].first.assign(*name);
            out[n].second.assign(body.substr(value_start, next >= value_start ? next - value_start : 0));
            ++n;
        }
        part = after;
    }
    out.resize(n);
    // The boundary must not occur anywhere but in the delimiters (RFC 2046 5.1.1). Readers
    // disagree on what else makes one: a bare LF or CR before it or after it (Go, Werkzeug),
    // none at all before the first (Werkzeug), `--Bx` in a preamble. Any other "--boundary"
    // (a value, the preamble, the epilogue) is a part to some reader that we would skip.
    if (close && ok) {
        const std::string_view dash = std::string_view{delim}.substr(2);
        std::size_t k = 0;
        for (std::size_t at = body.find(dash); at != std::string_view::npos; at = body.find(dash, at + 1)) {
            while (k < delimiters.size() && delimiters[k] < at) {
                ++k;
            }
            if (k == delimiters.size() || delimiters[k] != at) {
                ok = false;
                break;
            }
        }
    }
    return close && ok;
}


// ---------------------------------------------------------------------------------------
// JSON paths over simdjson's DOM.

// A Salesforce reference (`@{ref.field}`) where record ids or records stand: filled in from
// an earlier subrequest, it may be a whole Collections call (200 records at most).
constexpr std::size_t referenced_records = 200;

// The records a subrequest URL names (url_ids:): the items of its `ids` query parameters,
// else 1. Read the widest way a server might: the URL percent-decoded first (an encoded
// `?` or `,` counts), parameters split at `&`, `;` and `#`, every `ids` in any case, items
// split at commas; an item that is a reference Salesforce fills in (`@{ref.field}`) may
// stand for a whole Collections delete: 200. A URL that names none is one record.
// Both ways a server may read it count: decoded first and then split (an encoded `?`
// counts), and split first with each name and value decoded after (an encoded `&` inside
// the list is part of it); the larger is taken.
std::size_t records_named(std::string_view url, std::string& decoded) {
    auto items_in = [](std::string_view items) {
        std::size_t n = 0;
        while (true) {
            const auto comma = items.find(',');
            const std::string_view item = items.substr(0, comma);
            if (item.find("@{") != std::string_view::npos) {
                n += referenced_records;
            } else if (item.find_first_not_of(" \t") != std::string_view::npos) {
                ++n;
            }
            if (comma == std::string_view::npos) {
                return n;
            }
            items.remove_prefix(comma + 1);
        }
    };
    // The ids of query `q` (after its '?'), its parameters split at & ; #, decoded or not.
    auto ids_in = [&](std::string_view q, bool decode_parts) {
        std::size_t n = 0;
        std::string name;
        std::string value;
        while (!q.empty()) {
            const auto cut = q.find_first_of("&;#");
            const std::string_view param = q.substr(0, cut);
            q = cut == std::string_view::npos ? std::string_view{} : q.substr(cut + 1);
            const auto eq = param.find('=');
            if (eq == std::string_view::npos) {
                continue;
            }
            if (decode_parts) {
                url_decode(param.substr(0, eq), name);
                url_decode(param.substr(eq + 1), value);
            } else {
                name.assign(param.substr(0, eq));
                value.assign(param.substr(eq + 1));
            }
            if (iequals(name, "ids")) {
                n += items_in(value);
            }
        }
        return n;
    };
    std::size_t ids = 0;
    if (const auto q = url.find('?'); q != std::string_view::npos) {
        ids = ids_in(url.substr(q + 1), true);
    }
    url_decode(url, decoded);
    if (const auto q = decoded.find('?'); q != std::string::npos) {
        ids = std::max(ids, ids_in(std::string_view{decoded}.substr(q + 1), false));
    }
    return std::max<std::size_t>(ids, 1);
}

bool holds_reference(simdjson::dom::element v) {
    std::string_view text;
    return v.get(text) == simdjson::SUCCESS && text.find("@{") != std::string_view::npos;
}

// The records under `v`, part of a subrequest's body: the items of every `records` array at
// any depth (a Collections write's records[], an sObject Tree's children under each record),
// a reference standing for a records array as referenced_records.
std::size_t records_under(simdjson::dom::element v) {
    std::size_t n = 0;
    simdjson::dom::object obj;
    simdjson::dom::array arr;
    if (v.get(obj) == simdjson::SUCCESS) {
        for (auto it = obj.begin(); it != obj.end(); ++it) {
            const simdjson::dom::element m = it.value();
            if (json_key::matches({it.key_c_str(), it.key_length()}, "records")) {
                if (m.get(arr) == simdjson::SUCCESS) {
                    n += arr.size();
                } else if (holds_reference(m)) {
                    n += referenced_records;
                }
            }
            n += records_under(m);
        }
    } else if (v.get(arr) == simdjson::SUCCESS) {
        for (const simdjson::dom::element item : arr) {
            n += records_under(item);
        }
    }
    return n;
}

// The records a subrequest object writes (sub_records:): those under its body (`body`;
// `richInput` in a Composite Batch), see records_under; a body that is a reference counts
// as referenced_records; a subrequest with none counts 1. Read the widest way: either body
// member in any spelling a key folds to, every one of them (duplicates included) summed.
std::size_t records_written(simdjson::dom::element sub) {
    simdjson::dom::object obj;
    if (sub.get(obj) != simdjson::SUCCESS) {
        return 1;
    }
    std::size_t n = 0;
    for (auto it = obj.begin(); it != obj.end(); ++it) {
        const std::string_view key{it.key_c_str(), it.key_length()};
        // json_key::matches takes the folded name: "richinput".
        if (json_key::matches(key, "body") || json_key::matches(key, "richinput")) {
            n += holds_reference(it.value()) ? referenced_records : records_under(it.value());
        }
    }
    return std::max<std::size_t>(n, 1);
}

// A filter step's test: `e` is an object with a member named seg.names[0] (any of them,
// duplicates included) whose value is the string seg.value, in any ASCII case.
bool passes_filter(simdjson::dom::element e, const path_segment& seg) {
    simdjson::dom::object obj;
    if (e.get(obj) != simdjson::SUCCESS) {
        return false;
    }
    for (auto it = obj.begin(); it != obj.end(); ++it) {
        const std::string_view key{it.key_c_str(), it.key_length()};
        std::string_view v;
        if (json_key::matches(key, seg.names[0]) && it.value().get(v) == simdjson::SUCCESS && iequals(v, seg.value)) {
            return true;
        }
    }
    return false;
}

template <class F>
void visit(simdjson::dom::element e, const path_segment* seg, const path_segment* end, F& f) {
    if (seg == end) {
        f(e);
        return;
    }
    switch (seg->k) {
        case path_segment::kind::names: {
            simdjson::dom::object obj;
            if (e.get(obj) != simdjson::SUCCESS) {
                return;
            }
            // Every field with a matching key, duplicates included: JSON parsers disagree on
            // which of two equal keys counts (simdjson's at_key finds the first, Go and
            // Jackson keep the last), so a cap counts them all rather than the one an
            // upstream may ignore.
            // Keys match as a case-insensitive upstream (Go) would match them, so {"TO": [...]}
            // counts as `to` (core/json_key.hpp).
            for (auto it = obj.begin(); it != obj.end(); ++it) {
                // From the tape inline (key() is an out-of-line call per field).
                const std::string_view key{it.key_c_str(), it.key_length()};
                for (const auto& name : seg->names) {
                    if (json_key::matches(key, name)) {
                        visit(it.value(), seg + 1, end, f);
                        break;
                    }
                }
            }
            return;
        }
        case path_segment::kind::index: {
            simdjson::dom::array arr;
            simdjson::dom::element c;
            if (e.get(arr) == simdjson::SUCCESS && arr.at(seg->index).get(c) == simdjson::SUCCESS) {
                visit(c, seg + 1, end, f);
            }
            return;
        }
        case path_segment::kind::wildcard:
        case path_segment::kind::filter: {
            const bool all = seg->k == path_segment::kind::wildcard;
            simdjson::dom::array arr;
            simdjson::dom::object obj;
            if (e.get(arr) == simdjson::SUCCESS) {
                for (auto c : arr) {
                    if (all || passes_filter(c, *seg)) {
                        visit(c, seg + 1, end, f);
                    }
                }
            } else if (e.get(obj) == simdjson::SUCCESS) {
                for (auto field : obj) {
                    if (all || passes_filter(field.value, *seg)) {
                        visit(field.value, seg + 1, end, f);
                    }
                }
            }
            return;
        }
    }
}

template <class F>
void for_each_match(simdjson::dom::element root, const json_path& p, F&& f) {
    visit(root, p.segments.data(), p.segments.data() + p.segments.size(), f);
}

// Text of a JSON value for keys and distinct(): strings unquoted, the rest minified.
void value_text(simdjson::dom::element e, std::string& out) {
    std::string_view s;
    if (e.get(s) == simdjson::SUCCESS) {
        out.assign(s);
    } else {
        out = simdjson::minify(e);
    }
}

// ---------------------------------------------------------------------------------------
// One request (and optionally its response) being looked at.

struct parsed_json {
    int state = 0;  // 0 not tried, 1 ok, 2 invalid
    simdjson::dom::element root;
    std::string error;
};

bool parse_json(std::string_view body, simdjson::dom::parser& parser, parsed_json& pj) {
    if (pj.state == 0) {
        if (body.empty()) {
            pj.state = 2;
            pj.error = "body is empty";
        } else {
            const std::string_view json = without_bom(body);  // as the guards and Jackson read it
            cfg::release_if_grown(parser, json.size());  // (an evaluation parses each body once)
            auto err = parser.parse(json.data(), json.size()).get(pj.root);
            if (err) {
                pj.state = 2;
                pj.error = std::string{"body is not valid JSON ("} + simdjson::error_message(err) + ")";
            } else {
                pj.state = 1;
            }
        }
    }
    return pj.state == 1;
}

struct context {
    const request_view& req;
    const response_view* resp = nullptr;
    scratch& s;
    parsed_json req_json;
    parsed_json resp_json;
    bool form_parsed = false;
    bool form_ok = true;  // false: a multipart body we cannot read for certain
    bool query_parsed = false;
    std::array<std::string_view, max_params> params{};
    // Request-side amounts already computed for this request, by expression text: many rules
    // meter the same thing (recipients per campaign, per agent, per hour, per request...),
    // and walking the JSON body once per expression instead of once per rule is most of
    // the cost of a route with many rules.
    struct memo {
        std::string_view text;
        invalid_body_policy policy;
        std::optional<double> value;
    };
    std::array<memo, 16> memos{};
    std::size_t memo_count = 0;

    bool request_json() { return parse_json(req.body, s.request_parser, req_json); }
    bool response_json() { return resp && parse_json(resp->body, s.response_parser, resp_json); }
    const std::vector<std::pair<std::string, std::string>>& form() {
        if (!form_parsed) {
            form_parsed = true;
            form_ok = parse_form_fields(req.content_type, req.body, req.query, s.form);
        }
        return s.form;
    }
    const std::vector<std::pair<std::string, std::string>>& query() {
        if (!query_parsed) {
            query_parsed = true;
            parse_urlencoded(req.query, s.query);
        }
        return s.query;
    }
    // Why the form's (body and query) or the query's fields read two ways ("" when they
    // do not): a raw ';', a form type on a JSON-looking body, a form type we do not parse.
    // Asked once each, by the first term that counts them.
    std::optional<std::string> form_unreadable_{};
    std::optional<std::string> query_unreadable_{};
    const std::string& fields_unreadable(bool form_source) {
        auto& memo = form_source ? form_unreadable_ : query_unreadable_;
        if (!memo) {
            memo = form_source ? unreadable_form(req.content_type, req.body, req.query)
                               : unreadable_form({}, {}, req.query);
        }
        return *memo;
    }
};

// Lenient where upstreams are: literal segments and a parameter's allowed values compare
// without case, one trailing slash is ignored (`.../batch/Archive/` reaches the same
// HubSpot endpoint, so it must meet the same rule; matching more is the safe side), and so
// is a format suffix on the last segment (without_format_suffix: `composite.json`).
bool match_path(const path_template& t, std::string_view path, std::array<std::string_view, max_params>& params) {
    if (path.empty() || path[0] != '/') {
        return false;
    }
    if (path.size() > 1 && path.back() == '/') {
        path.remove_suffix(1);
    }
    std::string_view rest = path.substr(1);
    std::size_t pi = 0;
    for (std::size_t i = 0; i < t.segments.size(); ++i) {
        const auto slash = rest.find('/');
        const bool last = i + 1 == t.segments.size();
        if (last != (slash == std::string_view::npos)) {
            return false;
        }
        const std::string_view seg = rest.substr(0, slash);
        const auto& ts = t.segments[i];
        if (ts.param) {
            if (seg.empty()) {
                return false;
            }
            if (!ts.allowed.empty() && std::none_of(ts.allowed.begin(), ts.allowed.end(),
                                                    [&](const std::string& a) { return iequals(a, seg); })) {
                return false;
            }
            if (pi < max_params) {
                params[pi++] = seg;
            }
        } else if (!iequals(seg, ts.literal) && !(last && iequals(without_format_suffix(seg), ts.literal))) {
            return false;
        }
        if (!last) {
            rest.remove_prefix(slash + 1);
        }
    }
    return true;
}

bool matches(const rule& r, context& ctx) {
    const auto& m = r.match;
    const auto& req = ctx.req;
    if (!m.methods.empty() && std::find(m.methods.begin(), m.methods.end(), req.method) == m.methods.end()) {
        return false;
    }
    if (!m.path_prefix.empty() && !istarts_with(req.path, m.path_prefix)) {
        return false;
    }
    if (m.path && !match_path(*m.path, req.path, ctx.params) &&
        !(m.path_from_preset && !req.upstream_path.empty() && match_path(*m.path, req.upstream_path, ctx.params))) {
        return false;
    }
    if (!m.host.empty() && !iequals(m.host, req.host)) {
        return false;
    }
    // (A header given twice matches when any of its lines does: the rule applies whichever
    // line the upstream reads.)
    for (const auto& [name, value] : m.headers) {
        if (value == "*") {
            if (!req.has_header(name)) {
                return false;
            }
        } else if (!req.has_header_value(name, value)) {
            return false;
        }
    }
    return true;
}

// Builds the key of `r` into ctx.s.key. False: the key needs the JSON body and it is invalid.
bool build_key(const rule& r, context& ctx) {
    std::string& k = ctx.s.key;
    k.clear();
    std::string part;
    for (std::size_t i = 0; i < r.key.size(); ++i) {
        if (i > 0) {
            k += '/';
        }
        const auto& kp = r.key[i];
        switch (kp.kind) {
            case key_kind::header:
            case key_kind::query: {
                // The first value; a second, different one reads two ways (the upstream or
                // whoever sets the key may take the last): a fresh first value each time would
                // step around a tripped key. Refused as an invalid body is, by the rule's policy.
                bool found = false;
                bool ambiguous = false;
                auto take = [&](std::string_view name, std::string_view value, bool header) {
                    if (!(header ? iequals(name, kp.name) : name == kp.name)) {
                        return;
                    }
                    if (!found) {
                        found = true;
                        part.assign(value);
                        k += value;
                    } else if (value != part) {
                        ambiguous = true;
                    }
                };
                if (kp.kind == key_kind::header) {
                    for (const auto& h : ctx.req.headers) {
                        take(h.name, h.value, true);
                    }
                } else {
                    for (const auto& [n, v] : ctx.query()) {
                        take(n, v, false);
                    }
                }
                if (ambiguous) {
                    ctx.req_json.error = std::string{kp.kind == key_kind::header ? "the header " : "the query field "} +
                                         kp.name + " of the key is given twice with different values";
                    if (r.on_invalid_body == invalid_body_policy::reject) {
                        return false;
                    }
                }
                break;
            }
            case key_kind::agent: k += ctx.req.agent; break;
            case key_kind::route: k += ctx.req.route; break;
            case key_kind::method: k += ctx.req.method; break;
            case key_kind::host: k += ctx.req.host; break;
            // As sent: lower-casing it would orphan the instances and meters saved under
            // mixed-case keys (`del-cap/Account`) at the upgrade; see the known issues.
            case key_kind::path_param: k += ctx.params[std::min(kp.param_index, max_params - 1)]; break;
            case key_kind::json: {
                if (!ctx.request_json()) {
                    if (r.on_invalid_body == invalid_body_policy::reject) {
                        return false;
                    }
                    break;
                }
                bool first = true;
                bool ambiguous = false;
                std::string other;
                for_each_match(ctx.req_json.root, kp.path, [&](simdjson::dom::element e) {
                    if (first) {
                        first = false;
                        value_text(e, part);
                        k += part;
                    } else if (!ambiguous) {
                        value_text(e, other);
                        ambiguous = other != part;
                    }
                });
                // A path without [*] matches twice only through duplicate keys: parsers
                // disagree on which one counts, so a key read from it could be the one an
                // upstream ignores (a tripped campaign stepped around).
                const bool single = std::none_of(kp.path.segments.begin(), kp.path.segments.end(), [](const path_segment& sg) {
                    return sg.k == path_segment::kind::wildcard || sg.k == path_segment::kind::filter ||
                           sg.names.size() > 1;
                });
                if (ambiguous && single) {
                    ctx.req_json.error = "the body has two different values for the key " + kp.path.text;
                    if (r.on_invalid_body == invalid_body_policy::reject) {
                        return false;
                    }
                }
                break;
            }
        }
        if (k.size() > max_key_bytes) {
            k.resize(max_key_bytes);
        }
    }
    // The key names a breaker instance in logs, alerts, breakerctl and the API, and an
    // operator types it back to reset that instance: a decoded query value or a JSON string
    // may hold a line break or an escape sequence (a request forging log lines, or driving
    // an operator's terminal), and a header in Latin-1 is shown as U+FFFD, a name no one can
    // type. Every byte of such a unit is written as %XX (`c1\n` -> `c1%0A`, `caf\xE9` ->
    // `caf%E9`), whole units only within the bound.
    if (needs_escape(k)) {
        k = escape_unshowable(k, max_key_bytes);
    }
    // A keyed rule's key names a per-key breaker instance, never one that contains every key:
    // the breaker-wide instance (the empty key: a request without the key's header, say) or
    // the overflow instance (`_overflow`, breakers/breaker.cpp). One client's traffic without
    // a campaign id, or with `x-campaign-id: _overflow`, used to trip them and pause every
    // campaign.
    if (!r.key.empty()) {
        if (k.empty()) {
            k = "(none)";
        } else if (k == "_overflow") {
            k = "(_overflow)";  // not %5F: the admin API decodes its path, and would name the real one
        }
    }
    return true;
}

// A mime: term (SES raw messages): adds the To/Cc/Bcc addresses of the base64 MIME messages
// at the term's path to `total` (count, or distinct addresses); false when one is not base64
// or not a message. Out of line: amount() stays as small as it was for every other term.
// The To, Cc and Bcc addresses of raw MIME messages, counted or collected for distinct():
// the base64 strings at a JSON path (SES v2 Content.Raw.Data), or form fields holding a
// message as written (Mailgun messages.mime) or in base64 (SES v1 RawMessage.Data). False
// when a message is not base64 or not a message (an invalid body: what it is sent to is
// unknown).
[[gnu::noinline]] bool mime_amount(const term& t, context& ctx,
                                   const std::vector<std::pair<std::string, std::string>>* form, double& total) {
    auto& s = ctx.s;
    auto& d = s.distinct;
    std::size_t dn = 0;
    bool readable = true;
    auto add = [&](std::string_view message) {
        s.mime_addresses.clear();
        if (!mime_recipients(message, s.mime_scratch, s.mime_addresses)) {
            readable = false;
            return;
        }
        for (const auto a : s.mime_addresses) {
            if (t.kind == term_kind::count) {
                total += 1;
                continue;
            }
            if (dn == d.size()) {
                d.emplace_back();
            }
            d[dn].assign(a);
            for (auto& c : d[dn]) {
                c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            }
            ++dn;
        }
    };
    if (form) {
        for (const auto& [n, v] : *form) {
            if (!readable || !form_name_matches(t.field, n)) {
                continue;
            }
            if (const auto message = form_field_message(v, t.base64, s.mime_message)) {
                add(*message);
            } else {
                readable = false;
            }
        }
    } else {
        for_each_match(ctx.req_json.root, t.path, [&](simdjson::dom::element v) {
            std::string_view b64;
            if (!readable || v.get(b64) != simdjson::SUCCESS || !decode_base64(b64, s.mime_message)) {
                readable = false;
                return;
            }
            add(s.mime_message);
        });
    }
    if (readable && t.kind == term_kind::distinct) {
        std::sort(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(dn));
        total += static_cast<double>(std::unique(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(dn)) - d.begin());
    }
    return readable;
}

std::optional<double> amount(const expr& e, context& ctx, invalid_body_policy policy);

// amount() for a request-side expression, computed once per request and text.
std::optional<double> request_amount(const expr& e, context& ctx, invalid_body_policy policy) {
    if (e.text.empty()) {
        return amount(e, ctx, policy);  // no text to tell expressions apart by
    }
    for (std::size_t i = 0; i < ctx.memo_count; ++i) {
        const auto& m = ctx.memos[i];
        if (m.policy == policy && m.text == e.text) {
            return m.value;
        }
    }
    auto v = amount(e, ctx, policy);
    if (ctx.memo_count < ctx.memos.size()) {
        ctx.memos[ctx.memo_count++] = {e.text, policy, v};
    }
    return v;
}

// The data rows of a CSV body (a Salesforce Bulk API 2.0 upload): its lines after the header.
// A line break inside a quoted field is part of the field; a blank line is no row; a last
// line without a line break is one. Whatever the column delimiter: only quotes, delimiters
// and line breaks tell rows. Two readings count, and the larger count is taken, so a stray
// quote cannot hide the rows after it: a quote opening a field only at its start (RFC 4180:
// `12" pipe` is text, `""` inside a quoted field is a quote), and a quote toggling anywhere.
// A reading that ends inside quotes counts every line instead.
std::size_t csv_data_rows(std::string_view body) {
    struct reading {
        bool quoted = false;
        bool blank = true;        // the line holds nothing but a CR so far
        bool field_start = true;  // at the start of a line or after a delimiter
        std::size_t lines = 0;
        void end_line() {
            lines += blank ? 0 : 1;
            blank = true;
            field_start = true;
        }
    };
    auto delimiter = [](char c) { return c == ',' || c == '\t' || c == '|' || c == ';' || c == '^' || c == '`'; };
    reading rfc;
    reading toggle;
    reading plain;  // no quotes at all: every line
    for (std::size_t i = 0; i < body.size(); ++i) {
        const char c = body[i];
        if (c == '\n') {
            plain.end_line();
        } else if (c != '\r') {
            plain.blank = false;
        }
        if (c == '"') {
            toggle.quoted = !toggle.quoted;
            toggle.blank = false;
        } else if (c == '\n' && !toggle.quoted) {
            toggle.end_line();
        } else if (c != '\r') {
            toggle.blank = false;
        }
        if (rfc.quoted) {
            if (c == '"') {
                if (i + 1 < body.size() && body[i + 1] == '"') {
                    ++i;  // a quote inside the field
                } else {
                    rfc.quoted = false;
                }
            }
        } else if (c == '\n') {
            rfc.end_line();
        } else if (c != '\r') {
            rfc.quoted = c == '"' && rfc.field_start;
            rfc.field_start = delimiter(c);
            rfc.blank = false;
        }
    }
    for (reading* r : {&rfc, &toggle, &plain}) {
        r->end_line();
    }
    const std::size_t lines = std::max(rfc.quoted ? plain.lines : rfc.lines, toggle.quoted ? plain.lines : toggle.lines);
    return lines > 0 ? lines - 1 : 0;
}

// csv_rows (the whole body) or csv_rows(form:NAME): the data rows of each form field NAME (a
// Bulk API 2.0 job created with its CSV in one multipart request, the part `content`). A
// form whose fields cannot be read for certain (a multipart body with LF line ends, as
// Salesforce's own example is often sent, or one a reader may split another way) is not
// refused: every line of the whole body a reading could take for a row counts instead, a
// dozen more than the data (the job's JSON, the part headers), never fewer.
std::size_t csv_rows(const term& t, context& ctx) {
    if (t.field.empty()) {
        return csv_data_rows(ctx.req.body);
    }
    const auto& fields = ctx.form();
    if (!ctx.form_ok || !ctx.fields_unreadable(true).empty()) {
        return csv_data_rows(ctx.req.body);
    }
    std::size_t rows = 0;
    for (const auto& [n, v] : fields) {
        if (form_name_matches(t.field, n)) {
            rows += csv_data_rows(v);
        }
    }
    return rows;
}

// A Content-Type's media type: before its parameters, without the blanks before them
// (header values reach here with none in front).
std::string_view media_type(std::string_view content_type) {
    std::string_view media = content_type.substr(0, content_type.find(';'));
    while (!media.empty() && (media.back() == ' ' || media.back() == '\t')) {
        media.remove_suffix(1);
    }
    return media;
}

// The elements named sObject (any namespace prefix, any case) of an XML body: the records
// of a Bulk API 1.0 XML batch (`<sObjects><sObject>...</sObject>...</sObjects>`). Not a
// full XML reader: a tag inside a comment or CDATA counts too, and so does an `<sObject>`
// nested in a record for a relationship; more than the records, never fewer.
std::size_t xml_sobjects(std::string_view body) {
    std::size_t n = 0;
    for (std::size_t at = body.find('<'); at != std::string_view::npos; at = body.find('<', at + 1)) {
        std::size_t end = at + 1;
        while (end < body.size() && body[end] != '>' && body[end] != '/' && body[end] != ' ' && body[end] != '\t' &&
               body[end] != '\r' && body[end] != '\n' && body[end] != '<') {
            ++end;
        }
        if (end == body.size()) {
            break;
        }
        std::string_view name = body.substr(at + 1, end - at - 1);
        if (const auto colon = name.rfind(':'); colon != std::string_view::npos) {
            name.remove_prefix(colon + 1);
        }
        n += iequals(name, "sobject") ? 1 : 0;
    }
    return n;
}

// A Bulk API 1.0 query job's batch is its SOQL (sent as text/csv, application/xml or
// application/json, as the job's content type says): it writes no record.
bool soql_query(std::string_view body) {
    body = without_bom(body);
    while (!body.empty() && (body[0] == ' ' || body[0] == '\t' || body[0] == '\r' || body[0] == '\n')) {
        body.remove_prefix(1);
    }
    constexpr std::string_view select = "select";
    return body.size() > select.size() && iequals(body.substr(0, select.size()), select) &&
           (body[select.size()] == ' ' || body[select.size()] == '\t' || body[select.size()] == '\r' ||
            body[select.size()] == '\n');
}

// bulk_batch_records: the records of a Salesforce Bulk API 1.0 batch (POST
// /services/async/{version}/job/{jobId}/batch), read as its Content-Type says: text/csv the
// CSV's data rows (csv_data_rows), application/xml or text/xml the sObject elements,
// application/json the items of the top-level array (an object alone 1). A query job's SOQL
// counts 0. A zipped batch (zip/csv, zip/xml, zip/json) is not read here: nullopt, an invalid
// body. Any other or no Content-Type counts the largest of the three readings.
std::optional<std::size_t> bulk_batch_records(context& ctx) {
    const std::string_view type = media_type(ctx.req.content_type);
    const std::string_view body = ctx.req.body;
    auto json_records = [&]() -> std::optional<std::size_t> {
        if (!ctx.request_json()) {
            return std::nullopt;
        }
        simdjson::dom::array items;
        if (ctx.req_json.root.get(items) == simdjson::SUCCESS) {
            return items.size();
        }
        return ctx.req_json.root.is_object() ? 1 : 0;
    };
    if (type.size() >= 4 && iequals(type.substr(0, 4), "zip/")) {
        ctx.req_json.error = "a zipped Bulk API batch (" + std::string{type} + ") cannot be read to count its records";
        return std::nullopt;
    }
    if (soql_query(body)) {
        return 0;
    }
    if (iequals(type, "text/csv")) {
        return csv_data_rows(body);
    }
    if (iequals(type, "application/xml") || iequals(type, "text/xml")) {
        return xml_sobjects(body);
    }
    if (iequals(type, "application/json")) {
        return json_records();
    }
    const auto json = json_records();
    return std::max({csv_data_rows(body), xml_sobjects(body), json.value_or(0)});
}

// Per-request amount of an expression; nullopt when it needs a JSON body that is invalid
// (the caller applies the rule's on_invalid_body policy).
std::optional<double> amount(const expr& e, context& ctx, invalid_body_policy policy) {
    double total = 0;
    for (const auto& t : e.terms) {
        switch (t.kind) {
            case term_kind::constant: total += t.constant; break;
            case term_kind::requests:
            case term_kind::responses: total += 1; break;
            case term_kind::body_bytes: total += static_cast<double>(ctx.req.body.size()); break;
            case term_kind::csv_rows: total += static_cast<double>(csv_rows(t, ctx)); break;
            case term_kind::bulk_batch_records: {
                const auto n = bulk_batch_records(ctx);
                if (!n) {
                    if (policy == invalid_body_policy::reject) {
                        return std::nullopt;
                    }
                    break;
                }
                total += static_cast<double>(*n);
                break;
            }
            case term_kind::response_bytes: total += ctx.resp ? static_cast<double>(ctx.resp->body.size()) : 0; break;
            case term_kind::latency_ms:
                total += ctx.resp ? std::chrono::duration<double, std::milli>(ctx.resp->latency).count() : 0;
                break;
            case term_kind::status:
                total += ctx.resp && ctx.resp->status >= t.status_lo && ctx.resp->status <= t.status_hi ? 1 : 0;
                break;
            case term_kind::count:
            case term_kind::sum:
            case term_kind::distinct: {
                if (t.source == source_kind::mime && t.field.empty()) [[unlikely]] {
                    if (!ctx.request_json() || !mime_amount(t, ctx, nullptr, total)) {
                        if (ctx.req_json.error.empty() || ctx.req_json.state == 1) {
                            ctx.req_json.error =
                                "a raw MIME message at " + t.path.text + " is not base64 or not a message";
                        }
                        if (policy == invalid_body_policy::reject) {
                            return std::nullopt;
                        }
                    }
                    break;
                }
                if (t.source == source_kind::form || t.source == source_kind::query || t.source == source_kind::mime) {
                    const bool form_source = t.source != source_kind::query;
                    const auto& fields = form_source ? ctx.form() : ctx.query();
                    if (form_source && !ctx.form_ok) {
                        // Read as far as it goes, a malformed multipart body would count what
                        // an upstream may read differently (or not at all): an invalid body.
                        ctx.req_json.error = "the multipart/form-data body is malformed";
                        if (policy == invalid_body_policy::reject) {
                            return std::nullopt;
                        }
                        break;
                    }
                    // Fields that read two ways (`o:tag=x;to=a@x.com,b@y.com` is no `to` here
                    // and two recipients to a server that splits at ';'): an invalid body, as
                    // the guards and the agents' constraints take it.
                    if (const auto& why = ctx.fields_unreadable(form_source); !why.empty()) {
                        ctx.req_json.error = why;
                        if (policy == invalid_body_policy::reject) {
                            return std::nullopt;
                        }
                        break;
                    }
                    if (t.source == source_kind::mime) {
                        if (!mime_amount(t, ctx, &fields, total)) {
                            ctx.req_json.error = "a raw MIME message in form field " + t.field + " is " +
                                                 (t.base64 ? "not base64 or " : "") + "not a message";
                            if (policy == invalid_body_policy::reject) {
                                return std::nullopt;
                            }
                        }
                        break;
                    }
                    auto& d = ctx.s.distinct;
                    std::size_t dn = 0;
                    bool split_ok = true;
                    for (const auto& [n, v] : fields) {
                        // Any case, `*` a number (form_name_matches): `To` may be `to` to the API.
                        if (!form_name_matches(t.field, n)) {
                            continue;
                        }
                        if (t.kind == term_kind::sum) {
                            if (const auto x = form_number(v, ctx.s.number)) {
                                total += summable(*x);
                            } else {
                                split_ok = false;  // not a number here, maybe one to the server
                            }
                            continue;
                        }
                        split_ok = for_each_address(v, [&](std::string_view item) {
                            if (t.kind == term_kind::count) {
                                total += 1;
                            } else {
                                if (dn == d.size()) {
                                    d.emplace_back();
                                }
                                d[dn++].assign(item);
                            }
                        }) && split_ok;
                    }
                    if (!split_ok) {
                        // Counted as far as it splits, a list another reader splits otherwise
                        // could hide recipients: an invalid body, like a malformed multipart.
                        // Likewise an amount that is not a number as read here.
                        ctx.req_json.error = "form field " + t.field + " " +
                                             (t.kind == term_kind::sum ? std::string{unreadable_amount}
                                                                       : std::string{unsplittable_list});
                        if (policy == invalid_body_policy::reject) {
                            return std::nullopt;
                        }
                    }
                    if (t.kind == term_kind::distinct) {
                        std::sort(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(dn));
                        total += static_cast<double>(std::unique(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(dn)) - d.begin());
                    }
                    break;
                }
                const bool response = t.source == source_kind::response_json;
                const bool ok = response ? ctx.response_json() : ctx.request_json();
                if (!ok) {
                    if (policy == invalid_body_policy::reject) {
                        return std::nullopt;
                    }
                    break;
                }
                const auto root = response ? ctx.resp_json.root : ctx.req_json.root;
                if (t.source == source_kind::url_ids) {
                    std::size_t n = 0;
                    for_each_match(root, t.path, [&](simdjson::dom::element v) {
                        std::string_view url;
                        n += v.get(url) == simdjson::SUCCESS ? records_named(url, ctx.s.url_decoded) : 1;
                    });
                    total += static_cast<double>(n);
                } else if (t.source == source_kind::sub_records) {
                    std::size_t n = 0;
                    for_each_match(root, t.path, [&](simdjson::dom::element v) { n += records_written(v); });
                    total += static_cast<double>(n);
                } else if (t.source == source_kind::addresses) {
                    std::size_t n = 0;
                    bool split_ok = true;
                    for_each_match(root, t.path, [&](simdjson::dom::element v) {
                        std::string_view list;
                        if (v.is_null()) {
                            return;  // an unset field (clients that write every field)
                        }
                        if (v.get(list) != simdjson::SUCCESS) {
                            n += 1;
                            return;
                        }
                        split_ok = for_each_address(list, [&](std::string_view) { ++n; }) && split_ok;
                    });
                    total += static_cast<double>(n);
                    if (!split_ok) {
                        // As a form field's list: counted as far as it splits, one another
                        // reader splits otherwise could hide recipients.
                        ctx.req_json.error = "a value at " + t.path.text + " " + std::string{unsplittable_list};
                        if (policy == invalid_body_policy::reject) {
                            return std::nullopt;
                        }
                    }
                } else if (t.kind == term_kind::count) {
                    std::size_t n = 0;
                    for_each_match(root, t.path, [&](simdjson::dom::element) { ++n; });
                    total += static_cast<double>(n);
                } else if (t.kind == term_kind::sum) {
                    for_each_match(root, t.path, [&](simdjson::dom::element v) {
                        double x = 0;
                        if (v.is_number() && v.get(x) == simdjson::SUCCESS) {
                            total += summable(x);
                        }
                    });
                } else {
                    auto& d = ctx.s.distinct;
                    std::size_t dn = 0;
                    for_each_match(root, t.path, [&](simdjson::dom::element v) {
                        if (dn == d.size()) {
                            d.emplace_back();
                        }
                        value_text(v, d[dn++]);
                    });
                    std::sort(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(dn));
                    total += static_cast<double>(std::unique(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(dn)) - d.begin());
                }
                break;
            }
        }
    }
    return total;
}

std::string num(double v) {
    char buf[64];
    if (std::fabs(v) < 1e15 && v == std::floor(v)) {
        auto [p, ec] = std::to_chars(buf, buf + sizeof buf, static_cast<long long>(v));
        return std::string{buf, p};
    }
    auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general, 4);
    return std::string{buf, p};
}

std::int64_t epoch_of(time_point now, milliseconds resolution) {
    const auto ms = std::chrono::duration_cast<milliseconds>(now.time_since_epoch()).count();
    const auto r = std::max<std::int64_t>(resolution.count(), 1);
    return ms >= 0 ? ms / r : (ms - r + 1) / r;
}

// What a check of one rule found.
struct verdict_detail {
    bool violated = false;
    double measured = 0;
    double limit = 0;
    double mean = 0;
    double stddev = 0;
    double volume = 0;
};

decision explain(const rule_set& set, const rule& r, verdict outcome, std::string_view key, bool overflow,
                 const verdict_detail& d, std::string_view extra) {
    decision out;
    out.outcome = outcome;
    out.rule = r.id;
    const auto& fm = set.mode_of(r);
    out.failure_mode = fm.id;
    out.failure_mode_title = fm.title;
    out.sev = fm.sev;
    out.condition = r.condition;
    // The request's own key even when it was metered in the overflow slot: the breaker
    // instance it trips is the one that key's later requests are admitted by (keys_for).
    out.key = std::string{key};
    out.overflow_key = overflow;
    out.measure = r.measure.text;
    out.measured = d.measured;
    out.limit = d.limit;
    out.baseline_mean = d.mean;
    out.baseline_stddev = d.stddev;
    out.volume = d.volume;
    out.window = r.window;
    out.trips = r.trips;
    out.breaker_instance = r.key.empty() ? r.trips : r.trips + "/" + out.key;

    std::string& why = out.reason;
    why = "rule " + r.id + " (" + fm.id + ", " + std::string{to_string(fm.sev)} + "): ";
    if (outcome == verdict::rejected) {
        why += (r.guard ? "cannot check " : "cannot measure ") + r.measure.text + ": " + std::string{extra};
        return out;
    }
    if (r.condition == condition_kind::guard) {
        // `extra` is the guard's finding; it names kind and position, never the value.
        why += extra;
        if (!r.key.empty()) {
            why += " for key " + cfg::quote(out.key);
        }
        return out;
    }
    const std::string key_text = r.key.empty() ? std::string{} : " for key " + cfg::quote(out.key);
    const std::string window_text = r.window.count() > 0 ? cfg::format_duration(r.window) : std::string{};
    switch (r.condition) {
        case condition_kind::limit:
            if (r.agg == aggregate::per_request) {
                why += r.measure.text + " is " + num(d.measured) + " in one request, limit " + num(d.limit);
            } else if (r.agg == aggregate::avg) {
                why += "average of " + r.measure.text + " would be " + num(d.measured) + " over " + window_text +
                       " (" + num(d.volume) + " events)" + key_text + ", limit " + num(d.limit);
            } else {
                why += r.measure.text + " would be " + num(d.measured) + " in " + window_text + key_text + ", limit " +
                       num(d.limit);
            }
            break;
        case condition_kind::ratio:
            why += r.measure.text + " / " + (r.ratio_of ? r.ratio_of->text : std::string{"requests"}) + " is " +
                   num(d.measured) + " over " + window_text + " (volume " + num(d.volume) + ")" + key_text + ", max " +
                   num(d.limit);
            break;
        case condition_kind::guard: break;
        case condition_kind::baseline:
            why += r.measure.text + " would be " + num(d.measured) + " in this " + window_text + key_text +
                   ", above its baseline (mean " + num(d.mean) + ", stddev " + num(d.stddev) + ", threshold " +
                   num(d.limit) + ")";
            break;
    }
    if (overflow) {
        why += "; key table full (max_keys " + std::to_string(r.max_keys) + "), metered in the overflow key";
    }
    if (!extra.empty()) {
        why += "; ";
        why += extra;
    }
    return out;
}

// Checks the slot's current state against the rule (response-side rules, and reads).
verdict_detail check_state(const rule& r, meter_slot& s, std::int64_t epoch) {
    verdict_detail d;
    if (r.condition == condition_kind::baseline) {
        if (!s.base.started()) {
            return d;
        }
        const bool same_bucket = s.base.bucket() == epoch;
        d.measured = same_bucket ? s.base.current() : 0;
        d.mean = s.base.mean();
        d.stddev = s.base.stddev();
        d.limit = s.base.threshold(r.baseline);
        d.violated = same_bucket && s.base.armed(epoch, r.baseline, r.window.count()) && d.measured > d.limit;
        return d;
    }
    const double a = s.ring.total_at(epoch, 0);
    d.limit = r.limit;
    if (r.agg == aggregate::sum && r.condition == condition_kind::limit) {
        d.measured = a;
        d.violated = a > r.limit;
        return d;
    }
    const double b = s.ring.total_at(epoch, 1);
    d.volume = b;
    d.measured = b > 0 ? a / b : 0;
    d.violated = b > 0 && b >= r.min_volume && d.measured > r.limit;
    return d;
}

}  // namespace

bool form_name_matches(std::string_view pattern, std::string_view name) {
    auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; };
    constexpr std::string_view any_name = "{name}";
    const bool named = pattern.ends_with(any_name);
    if (named) {
        pattern.remove_suffix(any_name.size());
    }
    std::size_t n = 0;
    for (const char pc : pattern) {
        if (pc != '*') {
            if (n >= name.size() || lower(name[n]) != lower(pc)) {
                return false;
            }
            ++n;
            continue;
        }
        const std::size_t digits = n;
        while (n < name.size() && name[n] >= '0' && name[n] <= '9') {
            ++n;
        }
        if (n == digits) {
            return false;
        }
    }
    return named ? n < name.size() : n == name.size();
}

bool parse_form(std::string_view content_type, std::string_view body,
                std::vector<std::pair<std::string, std::string>>& out) {
    constexpr std::string_view mp = "multipart/form-data";
    if (content_type.size() >= mp.size() && iequals(content_type.substr(0, mp.size()), mp)) {
        std::optional<std::string> boundary;  // none, or given twice: malformed
        if (!header_param(content_type, "boundary", &boundary) || !boundary) {
            out.clear();
            return false;
        }
        return parse_multipart(body, *boundary, out);
    }
    parse_urlencoded(body, out);
    return true;
}

namespace {
bool any_multipart(std::string_view content_type) {
    constexpr std::string_view multipart = "multipart/";
    return content_type.size() > multipart.size() && iequals(content_type.substr(0, multipart.size()), multipart);
}
}  // namespace

bool form_type_somewhere(std::string_view content_type) {
    return any_multipart(content_type) || is_form_content_type(content_type);
}

bool read_as_form_somewhere(std::string_view method, std::string_view content_type, std::string_view body) {
    // Rack also takes a POST body that names no type as urlencoded.
    if (form_type_somewhere(content_type)) {
        return true;
    }
    if (!content_type.empty() || method != "POST" || body.empty()) {
        return false;
    }
    const std::string_view text = without_bom(body);
    const auto first = text.find_first_not_of(" \t\r\n");
    return first == std::string_view::npos || (text[first] != '{' && text[first] != '[');
}

std::string method_override_field(std::string_view method, std::string_view content_type, std::string_view body) {
    if (!read_as_form_somewhere(method, content_type, body)) {
        return {};
    }
    if (any_multipart(content_type)) {
        // A part's name is written as is (maybe percent-encoded); a body without the word
        // anywhere has no such part, whatever its size.
        if (!icontains(body, "method")) {
            return {};
        }
        // Parts as form-data's (the boundary parameter read from the type as given).
        const auto params = content_type.find(';');
        const std::string as_form_data =
            "multipart/form-data" + std::string{params == std::string_view::npos ? std::string_view{} : content_type.substr(params)};
        thread_local std::vector<std::pair<std::string, std::string>> fields;
        const bool whole = parse_form(as_form_data, body, fields);  // malformed: the fields before the fault
        for (const auto& [name, value] : fields) {
            if (is_method_override_name(name) || is_method_override_name(url_decode(name))) {
                return name.substr(0, 32);
            }
        }
        // Past the fault a lenient reader may still find parts (Rack reads on where this
        // stops), and a name may be encoded in ways no list covers: a body that cannot be
        // read to its end and has the word anywhere (checked above) is refused.
        if (!whole) {
            return "_method (in a multipart body that cannot be read to its end)";
        }
        return {};
    }
    // Urlencoded: the names only, split as the widest reader splits them (`&` and `;`).
    return std::string{method_override_name(body, "&;")};
}

bool parse_form_fields(std::string_view content_type, std::string_view body, std::string_view query,
                       std::vector<std::pair<std::string, std::string>>& out) {
    const bool ok = parse_form(content_type, body, out);
    if (!query.empty()) {
        thread_local std::vector<std::pair<std::string, std::string>> from_query;
        parse_urlencoded(query, from_query);
        out.insert(out.end(), from_query.begin(), from_query.end());
    }
    return ok;
}

bool reads_as_form(std::string_view content_type, std::string_view body, std::string_view query) {
    return is_form_content_type(content_type) ||
           (!query.empty() && without_bom(body).find_first_not_of(" \t\r\n") == std::string_view::npos);
}

std::string unreadable_form(std::string_view content_type, std::string_view body, std::string_view query) {
    if (query.find(';') != std::string_view::npos) {
        // Its fields are read as a form's (Rails, Flask and PHP merge them with the body's),
        // and the same servers that split a body at ';' split a query there.
        return "a query string with a raw ';' reads two ways (some servers split fields at it too): "
               "percent-encode it as %3B";
    }
    const std::string_view media = media_type(content_type);
    if (is_form_content_type(media)) {
        // The form's own charset, as its parts' (parse_multipart): a server that honours
        // it (Java servlet containers do for urlencoded forms) reads `%00t%00o=...` in
        // UTF-16 as `to`, a field named otherwise here.
        std::optional<std::string> charset;
        const bool params_ok = header_param(content_type, "charset", &charset, false);
        if ((charset && !form_charset_readable(*charset)) || (!params_ok && icontains(content_type, "charset"))) {
            return "a form body in charset " + (charset ? cfg::quote(charset->substr(0, 32)) : std::string{"(unreadable)"}) +
                   " is in a charset that does not keep ASCII as it is or that is not read here, which servers that "
                   "honour it read as other text: send it in UTF-8";
        }
        const std::string_view json = without_bom(body);  // as a JSON reader past a BOM sees it
        const auto first = json.find_first_not_of(" \t\r\n");
        if (first != std::string_view::npos && (json[first] == '{' || json[first] == '[')) {
            return "a form body that starts like JSON reads two ways (as the form its content type says, and as "
                   "JSON): send it as application/json";
        }
        if (!icontains(media, "multipart") && body.find(';') != std::string_view::npos) {
            // Some servers (Python before 3.9.2, Rack before 2.x) also split fields at ';':
            // `to=a%40x.com;to=b%40y.com` is one field here and two there.
            return "a form body with a raw ';' reads two ways (some servers split fields at it too): "
                   "percent-encode it as %3B";
        }
        return {};
    }
    constexpr std::string_view json = "json";
    if (media.empty() || (media.size() >= json.size() && iequals(media.substr(media.size() - json.size()), json))) {
        return {};  // the usual case: no type, or a JSON one
    }
    constexpr std::string_view multipart = "multipart/";
    if ((media.size() >= multipart.size() && iequals(media.substr(0, multipart.size()), multipart)) ||
        icontains(media, "urlencoded") || icontains(media, "url-encoded")) {
        return "content type " + std::string{media.substr(0, 64)} +
               " is read as a form by some servers but not here: send application/x-www-form-urlencoded or "
               "multipart/form-data";
    }
    return {};
}

engine::engine(std::shared_ptr<const rule_set> rules, const engine* previous) : set_(std::move(rules)) {
    std::unordered_map<std::string_view, std::size_t> old;
    if (previous) {
        for (std::size_t i = 0; i < previous->set_->rules.size(); ++i) {
            old.emplace(previous->set_->rules[i].id, i);
        }
    }
    meters_.reserve(set_->rules.size());
    std::vector<bool> adopted(previous ? previous->meters_.size() : 0, false);
    if (previous) {
        kept_ = previous->kept_;
    }
    for (const auto& r : set_->rules) {
        auto it = old.find(r.id);
        const bool same = it != old.end() && previous->set_->rules[it->second].fingerprint == r.fingerprint;
        const auto kept = std::find_if(kept_.begin(), kept_.end(), [&](const kept_meter& k) {
            return k.id == r.id && k.fingerprint == r.fingerprint;
        });
        if (same) {
            meters_.push_back(previous->meters_[it->second]);
            adopted[it->second] = true;
        } else if (it != old.end() && previous->set_->rules[it->second].meter_fingerprint == r.meter_fingerprint) {
            // Only max_keys changed (raised while keys spill into the overflow, say): the
            // counts go on, under the new bound.
            meters_.push_back(previous->meters_[it->second]);
            meters_.back()->set_max_keys(r.max_keys);
            adopted[it->second] = true;
        } else if (kept != kept_.end()) {
            // This definition ran before (a rollback, a rule added back): its counts again.
            meters_.push_back(kept->meter);
            kept_.erase(kept);
        } else {
            meters_.push_back(std::make_shared<rule_meter>(r));
        }
        if (r.guard && r.guard->k == guardrail::kind::duplicates) {
            const auto& d = r.guard->duplicates;
            const std::shared_ptr<duplicate_counter> kept = it != old.end() ? previous->dups_[it->second] : nullptr;
            if (same && kept) {
                dups_.push_back(kept);
            } else if (kept && previous->set_->rules[it->second].counter_fingerprint == r.counter_fingerprint) {
                // Only max, window or max_keys changed (an operator tightening a rule
                // mid-incident; a max whose default max_keys follows it): the counts stay,
                // judged by the new limits, in a table of the new size.
                dups_.push_back(kept->max_keys() == d.max_keys ? kept->with_limits(d.max, d.window)
                                                               : kept->resized(d.max, d.window, d.max_keys));
            } else {
                dups_.push_back(std::make_shared<duplicate_counter>(d.max, d.window, d.max_keys));
            }
        } else {
            dups_.push_back(nullptr);
        }
    }
    // The previous engine's meters no rule adopted are kept aside, newest last.
    for (std::size_t i = 0; i < adopted.size(); ++i) {
        if (!adopted[i]) {
            const auto& r = previous->set_->rules[i];
            std::erase_if(kept_, [&](const kept_meter& k) { return k.id == r.id && k.fingerprint == r.fingerprint; });
            kept_.push_back({r.id, r.fingerprint, previous->meters_[i]});
        }
    }
    if (kept_.size() > kept_max) {
        kept_.erase(kept_.begin(), kept_.begin() + static_cast<std::ptrdiff_t>(kept_.size() - kept_max));
    }
}

// A duplicates guard's table goes on across a change of only its max or window (as at a
// reload): it is saved under the fingerprint without them. A meter goes on across a change
// of only max_keys (as at a reload): it is saved under the fingerprint without that.
std::uint64_t engine::saved_fingerprint(std::size_t i) const {
    return dups_[i] ? set_->rules[i].counter_fingerprint : set_->rules[i].meter_fingerprint;
}

std::vector<engine::saved_meter> engine::save_meters(time_point now) const {
    std::vector<saved_meter> out;
    const std::int64_t now_ms = std::chrono::duration_cast<milliseconds>(now.time_since_epoch()).count();
    for (std::size_t i = 0; i < meters_.size(); ++i) {
        const rule& r = set_->rules[i];
        // A duplicates guard counts in its table (its meter books nothing).
        std::string state = dups_[i] ? dups_[i]->encode(now_ms) : meters_[i]->encode(epoch_of(now, r.resolution));
        if (!state.empty()) {
            out.push_back({r.id, saved_fingerprint(i), std::move(state)});
        }
    }
    return out;
}

std::optional<std::vector<std::string>> engine::restore_meters(const std::vector<saved_meter>& saved, time_point now,
                                                               std::string* error) {
    std::vector<std::string> restored;
    const std::int64_t now_ms = std::chrono::duration_cast<milliseconds>(now.time_since_epoch()).count();
    for (const auto& m : saved) {
        const rule* r = set_->find_rule(m.rule_id);
        // Rows saved before meters were saved without max_keys carry the full fingerprint,
        // and duplicates tables saved before that their fingerprint with max_keys.
        // Duplicates tables saved before default field lists were named carry those lists.
        if (!r || (saved_fingerprint(r->index) != m.fingerprint &&
                   (dups_[r->index] ? r->counter_fingerprint_with_keys != m.fingerprint &&
                                          (r->counter_fingerprint_legacy == 0 || r->counter_fingerprint_legacy != m.fingerprint)
                                    : r->fingerprint != m.fingerprint))) {
            continue;  // removed or changed since: starts from zero, as a reload starts it
        }
        std::string why;
        bool ok = false;
        if (dups_[r->index]) {
            ok = dups_[r->index]->restore(m.state, m.offset.count(), now_ms, &why);
        } else {
            const std::int64_t res = std::max<std::int64_t>(r->resolution.count(), 1);
            // A window's bucket that straddles two of ours goes to the later one (rounded up),
            // so its counts stay in the window for a little longer, never for less. A
            // baseline's current bucket goes to the earlier one (rounded down), so the counts
            // it compares with its threshold never span more than one bucket of time.
            const std::int64_t off = m.offset.count();
            const std::int64_t down = off >= 0 ? off / res : -((-off + res - 1) / res);
            const std::int64_t up = off % res == 0 ? down : down + 1;
            ok = meters_[r->index]->restore(m.state, up, down, epoch_of(now, r->resolution), &why);
        }
        if (!ok) {
            if (error) {
                *error = "rule " + m.rule_id + ": " + why;
            }
            return std::nullopt;
        }
        restored.push_back(m.rule_id);
    }
    return restored;
}

bool engine::shares_meter_with(const engine& other, std::string_view rule_id) const {
    const rule* a = set_->find_rule(rule_id);
    const rule* b = other.set_->find_rule(rule_id);
    if (!a || !b) {
        return false;
    }
    return meters_[a->index] == other.meters_[b->index];
}

void engine::keys_for(const request_view& req, std::vector<rule_key>& out) const {
    out.clear();
    scratch& s = local();
    context ctx{req, nullptr, s, {}, {}, false, false, {}};
    for (const std::uint32_t idx : set_->rules_for(req.route)) {
        const rule& r = set_->rules[idx];
        if (r.trips.empty() || !matches(r, ctx) || !build_key(r, ctx)) {
            continue;
        }
        out.push_back({idx, s.key});
    }
}

decision engine::evaluate(const request_view& req, time_point now) { return evaluate(req, now, nullptr, nullptr); }

decision engine::evaluate(const request_view& req, time_point now, const std::function<bool(const decision&)>* suspended,
                          decision* shadowed, evaluation_receipt* receipt) {
    scratch& s = local();
    context ctx{req, nullptr, s, {}, {}, false, false, {}};
    s.reservation_count = 0;
    s.guard_reservations.clear();
    s.guard_doc.reset(set_->shared_paths.get());
    const auto& list = set_->rules_for(req.route);

    if (receipt != nullptr) {
        receipt->clear();
    }
    auto rollback = [&] {
        undo(std::span{s.reservations.data(), s.reservation_count}, s.guard_reservations);
        s.reservation_count = 0;
        s.guard_reservations.clear();
    };
    // A violation an operator suspended is kept aside (the first one) and the walk goes on.
    auto enforced = [&](const decision& d) {
        if (suspended == nullptr || !(*suspended)(d)) {
            return true;
        }
        if (shadowed != nullptr && shadowed->allowed()) {
            *shadowed = d;
        }
        return false;
    };

    // Whether the body reads one way as a form: asked once, by the first guard rule.
    std::optional<std::string> unreadable;

    for (const std::uint32_t idx : list) {
        const rule& r = set_->rules[idx];
        if (!matches(r, ctx)) {
            continue;
        }
        if (!build_key(r, ctx)) {
            rollback();
            return explain(*set_, r, verdict::rejected, {}, false, {}, ctx.req_json.error);
        }
        if (r.condition == condition_kind::guard) {
            const bool form = reads_as_form(req.content_type, req.body, req.query);
            if (!unreadable) {
                // The query only where its fields are read (a form's, or no body at all).
                unreadable = unreadable_form(req.content_type, req.body, form ? req.query : std::string_view{});
            }
            const guard_input in{req, form ? &ctx.form() : nullptr, s.key, &s.guard_doc};
            s.guard_bookings.clear();
            guard_result g;
            if (form && !ctx.form_ok) {
                g.outcome = guard_result::status::invalid_body;  // the guard cannot see what an upstream would
                g.finding = "the multipart/form-data body is malformed";
            } else if (!unreadable->empty()) {
                g.outcome = guard_result::status::invalid_body;
                g.finding = *unreadable;
            } else {
                g = check_guard(*r.guard, in, now, dups_[idx].get(), &s.guard_bookings);
                // A body that is not a form (JSON, say) with fields in the query string: an
                // upstream that merges query and form fields (Go's FormValue, PHP's
                // $_REQUEST) reads recipients, text and secrets there too, as the agents'
                // body constraints do. (Not the duplicates guard: its bookings are the body's.)
                // A raw ';' there reads two ways (`?x=1;bcc=...` is one field here, two to a
                // server that splits at it): an invalid body, as for a form's query.
                if (!form && !req.query.empty() && g.outcome == guard_result::status::clean &&
                    r.guard->k != guardrail::kind::duplicates && !ctx.query().empty()) {
                    if (const auto& why = ctx.fields_unreadable(false); !why.empty()) {
                        g.outcome = guard_result::status::invalid_body;
                        g.finding = why;
                    } else {
                        guard_input qin{req, &ctx.query(), s.key, nullptr};
                        qin.query_fields = true;
                        g = check_guard(*r.guard, qin, now, dups_[idx].get(), &s.guard_bookings);
                        if (g.outcome == guard_result::status::violated) {
                            g.finding += " (in the query string)";
                        }
                    }
                }
            }
            if (g.outcome == guard_result::status::invalid_body && r.on_invalid_body == invalid_body_policy::reject) {
                rollback();
                return explain(*set_, r, verdict::rejected, s.key, false, {}, g.finding);
            }
            if (g.outcome == guard_result::status::violated) {
                verdict_detail d;
                d.violated = true;
                d.measured = g.count > 0 ? g.count + 1.0 : 1.0;
                d.limit = r.guard->k == guardrail::kind::duplicates ? r.guard->duplicates.max : 0;
                auto v = explain(*set_, r, verdict::violated, s.key, false, d, g.finding);
                if (enforced(v)) {
                    rollback();
                    return v;
                }
                // Suspended: the request goes out, so its pairs count as sent (a violated
                // duplicates guard booked nothing): the loop is still counted when the
                // operator turns enforcement back on.
                if (r.guard->k == guardrail::kind::duplicates) {
                    s.guard_bookings.clear();
                    book_suspended_duplicates(dups_[idx].get(), now, &s.guard_bookings);
                    for (const auto& b : s.guard_bookings) {
                        s.guard_reservations.push_back({idx, b.key, b.ms});
                    }
                }
                continue;
            }
            for (const auto& b : s.guard_bookings) {
                s.guard_reservations.push_back({idx, b.key, b.ms});
            }
            continue;
        }
        const std::int64_t epoch = epoch_of(now, r.resolution);
        rule_meter& meter = *meters_[idx];

        if (r.response_side) {
            // Read-only: the responses already booked may have put this key over its line.
            verdict_detail d;
            bool overflow = false;
            auto check = [&](meter_slot& slot, bool ovf) {
                d = check_state(r, slot, epoch);
                overflow = ovf;
            };
            // A key the meter does not track had its responses booked in the overflow slot
            // (the key table was full): that slot's state is its state.
            if (!meter.with_existing_slot(s.key, check)) {
                meter.with_overflow_slot(check);
            }
            if (d.violated) {
                auto v = explain(*set_, r, verdict::violated, s.key, overflow, d, {});
                if (enforced(v)) {
                    rollback();
                    return v;
                }
            }
            continue;
        }

        const auto a = request_amount(r.measure, ctx, r.on_invalid_body);
        std::optional<double> b = 1.0;
        if (r.ratio_of) {
            b = request_amount(*r.ratio_of, ctx, r.on_invalid_body);
        }
        if (!a || !b) {
            rollback();
            return explain(*set_, r, verdict::rejected, s.key, false, {}, ctx.req_json.error);
        }

        if (r.agg == aggregate::per_request) {
            if (*a > r.limit) {
                verdict_detail d;
                d.violated = true;
                d.measured = *a;
                d.limit = r.limit;
                auto v = explain(*set_, r, verdict::violated, s.key, false, d, {});
                if (enforced(v)) {
                    rollback();
                    return v;
                }
            }
            continue;
        }

        verdict_detail d;
        std::int64_t booked = 0;
        // Books the request's amounts in the window (the slot locked, advanced to epoch).
        auto book = [&](meter_slot& slot) {
            booked = slot.ring.book_epoch(epoch);
            slot.ring.add(booked, 0, *a);
            if (meter.channels() > 1) {
                slot.ring.add(booked, 1, *b);
            }
        };
        // The check and the booking happen under the key's lock in one step: this is what
        // makes caps exact when many threads hit the same key.
        bool overflow = meter.with_slot(s.key, epoch, [&](meter_slot& slot, bool ovf) {
            slot.last_epoch = std::max(slot.last_epoch, epoch);
            if (r.condition == condition_kind::baseline) {
                slot.base.roll(epoch, r.baseline.alpha);
                const double next = slot.base.current() + *a;
                d.measured = next;
                d.mean = slot.base.mean();
                d.stddev = slot.base.stddev();
                d.limit = slot.base.threshold(r.baseline);
                d.violated = slot.base.armed(epoch, r.baseline, r.window.count()) && next > d.limit;
                if (!d.violated) {
                    slot.base.add(*a);
                    booked = slot.base.bucket();
                }
                return ovf;
            }
            slot.ring.advance(epoch);
            const double next_a = slot.ring.total(0) + *a;
            d.limit = r.limit;
            if (r.agg == aggregate::sum && r.condition == condition_kind::limit) {
                d.measured = next_a;
                d.violated = next_a > r.limit;
            } else {
                const double next_b = slot.ring.total(1) + *b;
                d.volume = next_b;
                d.measured = next_b > 0 ? next_a / next_b : 0;
                d.violated = next_b > 0 && next_b >= r.min_volume && d.measured > r.limit;
            }
            if (!d.violated) {
                book(slot);
            }
            return ovf;
        });
        if (d.violated) {
            auto v = explain(*set_, r, verdict::violated, s.key, overflow, d, {});
            if (enforced(v)) {
                rollback();
                return v;
            }
            if (r.condition == condition_kind::baseline) {
                continue;  // not booked: a spike let through must not raise the baseline that judges the next
            }
            // Let through over this rule (an operator's metrics_only or forced_closed, a
            // throttle slot, a hold, a sandbox): what it sends still counts in the window, so
            // that once the rule is enforced again the cap is judged against what was sent,
            // not against a window that missed it (as the duplicates guard books its sends).
            // Taken off again with the rest if the request is then not sent (release()).
            overflow = meter.with_slot(s.key, epoch, [&](meter_slot& slot, bool ovf) {
                slot.last_epoch = std::max(slot.last_epoch, epoch);
                slot.ring.advance(epoch);
                book(slot);
                return ovf;
            });
        }
        if (s.reservation_count == s.reservations.size()) {
            s.reservations.emplace_back();
        }
        auto& res = s.reservations[s.reservation_count++];
        res.rule = idx;
        res.key.assign(s.key);
        res.epoch = booked;
        res.a = *a;
        res.b = *b;
        res.overflow = overflow;
    }
    if (receipt != nullptr) {
        if (receipt->meters.size() < s.reservation_count) {
            receipt->meters.resize(s.reservation_count);
        }
        // Element-wise: the receipt's key strings keep their capacity from request to request.
        std::copy_n(s.reservations.begin(), s.reservation_count, receipt->meters.begin());
        receipt->meter_count = s.reservation_count;
        receipt->guards.assign(s.guard_reservations.begin(), s.guard_reservations.end());
    }
    s.reservation_count = 0;
    s.guard_reservations.clear();
    return {};
}

void engine::undo(std::span<const evaluation_receipt::meter_booking> meters,
                  const std::vector<evaluation_receipt::guard_send>& guards) {
    for (const auto& res : meters) {
        const rule& r = set_->rules[res.rule];
        auto take_off = [&](meter_slot& slot, bool) {
            if (r.condition == condition_kind::baseline) {
                slot.base.subtract(res.epoch, res.a);
            } else {
                slot.ring.subtract(res.epoch, 0, res.a);
                if (slot.ring.buckets() > 0 && meters_[res.rule]->channels() > 1) {
                    slot.ring.subtract(res.epoch, 1, res.b);
                }
            }
        };
        auto& meter = *meters_[res.rule];
        if (res.overflow) {
            meter.with_overflow_slot(take_off);
        } else {
            meter.with_existing_slot(res.key, take_off);
        }
    }
    for (const auto& g : guards) {
        dups_[g.rule]->unbook(g.key, g.ms);
    }
}

void engine::release(evaluation_receipt& receipt) {
    undo(std::span{receipt.meters.data(), receipt.meter_count}, receipt.guards);
    receipt.clear();
}

void engine::release_guard_sends(evaluation_receipt& receipt) {
    undo({}, receipt.guards);
    receipt.guards.clear();
}

decision engine::record_response(const request_view& req, const response_view& resp, time_point now) {
    scratch& s = local();
    context ctx{req, &resp, s, {}, {}, false, false, {}};
    decision first;
    for (const std::uint32_t idx : set_->rules_for(req.route)) {
        const rule& r = set_->rules[idx];
        if (!r.response_side || !matches(r, ctx)) {
            continue;
        }
        if (!build_key(r, ctx)) {
            if (first.allowed()) {
                first = explain(*set_, r, verdict::rejected, {}, false, {}, ctx.req_json.error);
            }
            continue;
        }
        const auto a = amount(r.measure, ctx, r.on_invalid_body);
        std::optional<double> b = 1.0;
        if (r.ratio_of) {
            b = amount(*r.ratio_of, ctx, r.on_invalid_body);
        }
        if (!a || !b) {
            if (first.allowed()) {
                first = explain(*set_, r, verdict::rejected, s.key, false, {}, ctx.resp_json.error);
            }
            continue;
        }
        const std::int64_t epoch = epoch_of(now, r.resolution);
        rule_meter& meter = *meters_[idx];
        verdict_detail d;
        const bool overflow = meter.with_slot(s.key, epoch, [&](meter_slot& slot, bool ovf) {
            slot.last_epoch = std::max(slot.last_epoch, epoch);
            if (r.condition == condition_kind::baseline) {
                slot.base.roll(epoch, r.baseline.alpha);
                slot.base.add(*a);
            } else {
                slot.ring.advance(epoch);
                slot.ring.add(epoch, 0, *a);
                if (meter.channels() > 1) {
                    slot.ring.add(epoch, 1, *b);
                }
            }
            d = check_state(r, slot, std::max(epoch, r.condition == condition_kind::baseline ? slot.base.bucket()
                                                                                              : slot.ring.head()));
            return ovf;
        });
        if (d.violated && first.allowed()) {
            first = explain(*set_, r, verdict::violated, s.key, overflow, d, {});
        }
    }
    return first;
}

void engine::forget_response_counts(std::string_view breaker, std::optional<std::string_view> key) {
    for (const rule& r : set_->rules) {
        if (!r.response_side || r.trips != breaker) {
            continue;
        }
        auto clear = [&](meter_slot& slot) {
            if (r.condition == condition_kind::baseline) {
                // The bucket under way: the history (mean, deviation) is the upstream's normal.
                if (slot.base.started()) {
                    slot.base.subtract(slot.base.bucket(), slot.base.current());
                }
            } else if (slot.ring.started()) {
                slot.ring.restart_at(slot.ring.head());
            }
        };
        rule_meter& meter = *meters_[r.index];
        if (!key) {
            meter.for_each_slot([&](std::string_view, meter_slot& slot) { clear(slot); });
        } else if (!meter.with_existing_slot(*key, [&](meter_slot& slot, bool) { clear(slot); })) {
            // A key past max_keys is counted in the overflow slot (and a slot made for it
            // later starts as a copy of that one): what tripped this instance is there.
            meter.with_overflow_slot([&](meter_slot& slot, bool) { clear(slot); });
        }
    }
}

std::optional<meter_reading> engine::read(std::string_view rule_id, std::string_view key, time_point now) const {
    const rule* r = set_->find_rule(rule_id);
    if (!r) {
        return std::nullopt;
    }
    std::optional<meter_reading> out;
    const std::int64_t epoch = epoch_of(now, r->resolution);
    meters_[r->index]->with_existing_slot(key, [&](meter_slot& slot, bool) {
        meter_reading m;
        if (r->condition == condition_kind::baseline) {
            m.value = slot.base.started() && slot.base.bucket() == epoch ? slot.base.current() : 0;
            m.numerator = m.value;
            m.baseline_mean = slot.base.mean();
            m.baseline_stddev = slot.base.stddev();
            m.baseline_samples = slot.base.samples();
        } else {
            m.numerator = slot.ring.total_at(epoch, 0);
            if (meters_[r->index]->channels() > 1) {
                m.denominator = slot.ring.total_at(epoch, 1);
                m.value = m.denominator > 0 ? m.numerator / m.denominator : 0;
            } else {
                m.value = m.numerator;
            }
        }
        out = m;
    });
    return out;
}

std::vector<std::pair<std::string, double>> engine::top_values(std::string_view rule_id, std::size_t n,
                                                               time_point now) const {
    std::vector<std::pair<std::string, double>> out;
    const rule* r = set_->find_rule(rule_id);
    if (!r || r->condition != condition_kind::limit || r->agg == aggregate::per_request || n == 0) {
        return out;
    }
    const std::int64_t epoch = epoch_of(now, r->resolution);
    auto smaller = [](const auto& a, const auto& b) { return a.second > b.second; };  // min-heap on value
    meters_[r->index]->for_each_slot([&](std::string_view key, meter_slot& slot) {
        const double v = slot.ring.total_at(epoch, 0);
        if (out.size() < n) {
            out.emplace_back(std::string{key}, v);
            std::push_heap(out.begin(), out.end(), smaller);
        } else if (v > out.front().second) {
            std::pop_heap(out.begin(), out.end(), smaller);
            out.back() = {std::string{key}, v};
            std::push_heap(out.begin(), out.end(), smaller);
        }
    });
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    return out;
}

std::optional<meter_stats> engine::stats(std::string_view rule_id) const {
    const rule* r = set_->find_rule(rule_id);
    if (!r) {
        return std::nullopt;
    }
    return meters_[r->index]->stats();
}

std::optional<engine::duplicates_stats> engine::guard_table_stats(std::string_view rule_id) const {
    const rule* r = set_->find_rule(rule_id);
    if (!r || !dups_[r->index]) {
        return std::nullopt;
    }
    const auto& d = *dups_[r->index];
    return duplicates_stats{d.keys(), d.evictions(), d.untracked()};
}

std::optional<std::size_t> engine::bytes_per_key(std::string_view rule_id, std::size_t key_len) const {
    const rule* r = set_->find_rule(rule_id);
    if (!r) {
        return std::nullopt;
    }
    return meters_[r->index]->bytes_per_key(key_len);
}

}  // namespace bb::rules
