#include "rules/mime.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <utility>

#include <iconv.h>

#include "core/hex.hpp"
#include "core/utf8.hpp"
#include "rules/request.hpp"  // iequals, lower
#include "rules/form.hpp"

namespace bb::rules {

namespace {

constexpr std::array<std::int8_t, 256> base64_values = [] {
    std::array<std::int8_t, 256> t{};
    for (auto& v : t) {
        v = -1;
    }
    constexpr std::string_view alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (std::size_t i = 0; i < alphabet.size(); ++i) {
        t[static_cast<unsigned char>(alphabet[i])] = static_cast<std::int8_t>(i);
    }
    return t;
}();

bool is_wsp(char c) { return c == ' ' || c == '\t'; }

// One line of the header section: [begin, end) without its line break; `next` after it.
struct line {
    std::string_view text;
    std::size_t next = 0;
};

line line_at(std::string_view m, std::size_t at) {
    const auto nl = m.find('\n', at);
    std::size_t end = nl == std::string_view::npos ? m.size() : nl;
    const std::size_t next = nl == std::string_view::npos ? m.size() : nl + 1;
    if (end > at && m[end - 1] == '\r') {
        --end;
    }
    return {m.substr(at, end - at), next};
}

// Calls f(name, unfolded value) for each header field; false when a line of the header
// section is neither a field nor a continuation (not a message we can read for certain).
// `body_at`: where the body starts (after the empty line; m.size() when there is none).
template <class F>
bool for_each_field(std::string_view m, std::string& value, F&& f, std::size_t* body_at = nullptr) {
    std::size_t at = 0;
    if (body_at) {
        *body_at = m.size();
    }
    std::string_view name;
    bool open = false;
    while (at < m.size()) {
        const line l = line_at(m, at);
        at = l.next;
        if (l.text.empty()) {
            if (body_at) {
                *body_at = at;
            }
            break;  // the end of the header section
        }
        if (l.text.find('\r') != std::string_view::npos) {
            return false;  // a bare CR: some parsers break the line there, some do not
        }
        if (is_wsp(l.text.front())) {  // a folded continuation of the field before
            if (!open) {
                return false;
            }
            value += l.text;
            continue;
        }
        if (open) {
            f(name, std::string_view{value});
        }
        const auto colon = l.text.find(':');
        if (colon == 0 || colon == std::string_view::npos) {
            return false;
        }
        for (std::size_t i = 0; i < colon; ++i) {
            const auto c = static_cast<unsigned char>(l.text[i]);
            if (c < 33 || c > 126) {
                return false;
            }
        }
        name = l.text.substr(0, colon);
        value.assign(l.text.substr(colon + 1));
        open = true;
    }
    if (open) {
        f(name, std::string_view{value});
    }
    return at > 0;
}

// A group (`team: a@x.com, b@y.com;`) read as its members; surrounding blanks trimmed.
std::string_view member_of(std::string_view item) {
    bool quoted = false;
    for (std::size_t i = 0; i < item.size(); ++i) {
        const char c = item[i];
        if (c == '"') {
            quoted = !quoted;
        } else if (!quoted && (c == '<' || c == '@')) {
            break;
        } else if (!quoted && c == ':') {
            item.remove_prefix(i + 1);
            break;
        }
    }
    while (!item.empty() && (is_wsp(item.back()) || item.back() == ';')) {
        item.remove_suffix(1);
    }
    while (!item.empty() && is_wsp(item.front())) {
        item.remove_prefix(1);
    }
    return item;
}

// A comment (`bob@evil.com (<jane@example.com>)`) outside a quoted string: parsers that
// strip comments and ones that do not read different addresses from it.
bool has_comment(std::string_view value) {
    bool quoted = false;
    for (std::size_t i = 0; i < value.size(); ++i) {
        const char c = value[i];
        if (quoted && c == '\\') {
            ++i;
        } else if (c == '"') {
            quoted = !quoted;
        } else if (!quoted && (c == '(' || c == ')')) {
            return true;
        }
    }
    return false;
}

}  // namespace

bool decode_base64(std::string_view in, std::string& out) {
    out.clear();
    out.reserve(in.size() / 4 * 3 + 3);
    std::uint32_t acc = 0;
    int bits = 0;
    bool padded = false;
    for (const char c : in) {
        if (c == '\r' || c == '\n' || c == ' ' || c == '\t') {
            continue;
        }
        if (c == '=') {
            padded = true;
            continue;
        }
        const auto v = base64_values[static_cast<unsigned char>(c)];
        if (v < 0 || padded) {
            return false;  // not base64, or data after the padding
        }
        acc = (acc << 6) | static_cast<std::uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>((acc >> bits) & 0xFF);
        }
    }
    return bits < 6;  // one character alone in the last quantum is no byte
}

bool mime_recipients(std::string_view message, std::string& scratch, std::vector<std::string_view>& out) {
    // First every value into scratch (offsets), then views: scratch does not move after.
    scratch.clear();
    std::vector<std::pair<std::size_t, std::size_t>> spans;
    std::string value;
    bool commented = false;
    const bool ok = for_each_field(message, value, [&](std::string_view name, std::string_view v) {
        if (iequals(name, "To") || iequals(name, "Cc") || iequals(name, "Bcc")) {
            if (has_comment(v)) {
                commented = true;
            }
            spans.emplace_back(scratch.size(), v.size());
            scratch += v;
        }
    });
    if (!ok || commented) {
        return false;
    }
    std::vector<std::string_view> items;
    for (const auto& [at, n] : spans) {
        items.clear();
        if (!split_addresses(std::string_view{scratch}.substr(at, n), items)) {
            return false;  // a list read otherwise elsewhere could hide a recipient
        }
        for (const auto item : items) {
            if (const auto member = member_of(item); !member.empty()) {
                out.push_back(member);
            }
        }
    }
    return true;
}

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (is_wsp(s.front()) || s.front() == '\r' || s.front() == '\n')) {
        s.remove_prefix(1);
    }
    while (!s.empty() && (is_wsp(s.back()) || s.back() == '\r' || s.back() == '\n')) {
        s.remove_suffix(1);
    }
    return s;
}

// Charsets in which ASCII text is written as ASCII bytes, with nothing a decoder drops or
// shifts between them: ASCII, UTF-8, the ISO 8859 and Windows single-byte sets, and the
// multi-byte sets whose ASCII range stays ASCII (Shift_JIS, EUC, GBK, Big5). Stateful ones
// are not (ISO-2022-*, HZ: an escape between two digits disappears when shown), nor UTF-7,
// UTF-16 and UTF-32, nor EBCDIC. A charset not known here is not read (the message is
// refused rather than guessed at).
bool ascii_compatible(std::string_view charset) {
    std::string c = lower(trim(charset));
    if (c.empty()) {
        return true;  // none given: US-ASCII
    }
    for (const std::string_view exact :
         {"us-ascii", "ascii", "us", "ansi_x3.4-1968", "iso646-us", "utf-8", "utf8", "latin1", "latin-1", "l1",
          "koi8-r", "koi8-u", "gb2312", "gbk", "gb18030", "cp936", "big5", "big5-hkscs", "shift_jis", "shift-jis",
          "sjis", "windows-31j", "cp932", "ms932", "euc-jp", "euc-kr", "euc-cn", "ks_c_5601-1987", "cp949",
          "tis-620", "windows-874", "cp874", "macintosh", "x-mac-roman", "cp437", "cp850", "ibm437", "ibm850"}) {
        if (c == exact) {
            return true;
        }
    }
    for (const std::string_view prefix : {"iso-8859-", "iso8859-", "iso_8859-", "windows-125", "cp125", "x-cp125"}) {
        if (c.starts_with(prefix)) {
            return true;
        }
    }
    return false;
}

// The converter name (glibc iconv) for a charset label, as mail clients read the label
// (the WHATWG encoding standard: ISO-8859-1 and US-ASCII labels are read as windows-1252,
// so 0x96 is a dash there too). "" for UTF-8: kept as it is.
std::string converter_for(std::string_view charset) {
    std::string c = lower(trim(charset));
    for (const std::string_view utf8 : {"utf-8", "utf8"}) {
        if (c == utf8) {
            return {};
        }
    }
    for (const std::string_view latin : {"", "us-ascii", "ascii", "us", "ansi_x3.4-1968", "iso646-us", "latin1", "latin-1",
                                         "l1", "iso-8859-1", "iso8859-1", "iso_8859-1"}) {
        if (c == latin) {
            return "WINDOWS-1252";
        }
    }
    if (c == "ks_c_5601-1987") {
        return "CP949";  // Outlook's label for Korean
    }
    if (c == "x-mac-roman") {
        return "MACINTOSH";
    }
    if (c.starts_with("x-cp")) {
        c = c.substr(2);
    }
    if (c.size() > 2 && c.starts_with("iso") && (c.ends_with("-i") || c.ends_with("-e"))) {
        c.resize(c.size() - 2);  // ISO-8859-8-I (logical order) converts as ISO-8859-8
    }
    return c;
}

// Converts text (whole) from the iconv charset `from` to UTF-8; false when it is not valid in it.
bool convert(const std::string& from, std::string& text);

// Text in an ASCII-compatible charset other than UTF-8 is converted to UTF-8 before it is
// scanned, as a mail client converts it to show it: in ISO 8859 and Windows charsets 0xA0 is
// a no-break space, 0xAD a soft hyphen and 0x96 a dash, which the "as shown" reading knows
// only in UTF-8 (`4111\xA01111...`, `free\xA0money`); Shift_JIS and GBK have full-width
// digits. glibc's iconv does the converting (a well-kept converter for every charset
// ascii_compatible() takes). Text without a charset (US-ASCII) that has 8-bit bytes: UTF-8
// when it is valid UTF-8, else windows-1252, as clients guess. False when the charset is
// unknown to iconv or the text is not valid in it: it cannot be read for certain.
bool to_utf8(std::string_view charset, std::string& text) {
    if (std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) {
        return true;  // ASCII reads the same in all of them
    }
    const std::string from = converter_for(charset);
    if (from.empty()) {
        return true;
    }
    if (from == "WINDOWS-1252" && trim(charset).empty() && valid_utf8(text)) {
        return true;  // unlabelled, valid UTF-8: read as UTF-8
    }
    return convert(from, text);
}

bool convert(const std::string& from, std::string& text) {
    const iconv_t cd = iconv_open("UTF-8", from.c_str());
    if (cd == reinterpret_cast<iconv_t>(-1)) {
        return false;
    }
    std::string out(text.size() * 4 + 16, '\0');
    char* in_p = text.data();
    std::size_t in_left = text.size();
    char* out_p = out.data();
    std::size_t out_left = out.size();
    std::size_t rc = iconv(cd, &in_p, &in_left, &out_p, &out_left);
    if (rc != static_cast<std::size_t>(-1) && in_left == 0) {
        // The flush: some converters (windows-1255/1258) hold the last character back in
        // case a combining mark follows.
        rc = iconv(cd, nullptr, nullptr, &out_p, &out_left);
    }
    iconv_close(cd);
    if (rc == static_cast<std::size_t>(-1) || in_left != 0) {
        return false;
    }
    out.resize(out.size() - out_left);
    text = std::move(out);
    return true;
}

// Whether a body part's charset is UTF-16 or UTF-32 (Windows' "Unicode" text, an Excel
// export sent as text/plain): read by wide_to_utf8.
bool wide_charset(std::string_view charset) {
    const std::string c = lower(trim(charset));
    for (const std::string_view wide : {"utf-16", "utf-16le", "utf-16be", "utf-32", "utf-32le", "utf-32be"}) {
        if (c == wide) {
            return true;
        }
    }
    return false;
}

// Text in UTF-16 or UTF-32 to UTF-8, whole (no ASCII shortcut: its ASCII letters are not
// ASCII bytes). The byte order is a byte order mark's (dropped), else the label's (-le,
// -be), else little endian (what WHATWG reads `utf-16` as, and what Windows writes; glibc
// would take the machine's). A mark that contradicts the label is refused: a reader that
// trusts the label and one that trusts the mark show two different texts.
bool wide_to_utf8(std::string_view charset, std::string& text) {
    const std::string c = lower(trim(charset));
    const bool four = c.starts_with("utf-32");
    const std::string labelled = c.size() > 6 ? c.substr(6) : std::string{};  // "le", "be" or ""
    const std::string_view le_mark = four ? std::string_view{"\xFF\xFE\0\0", 4} : std::string_view{"\xFF\xFE", 2};
    const std::string_view be_mark = four ? std::string_view{"\0\0\xFE\xFF", 4} : std::string_view{"\xFE\xFF", 2};
    std::string marked;
    if (text.starts_with(le_mark)) {
        marked = "le";
    } else if (text.starts_with(be_mark)) {
        marked = "be";
    }
    if (!marked.empty() && !labelled.empty() && marked != labelled) {
        return false;
    }
    if (!marked.empty()) {
        text.erase(0, le_mark.size());
    }
    const std::string& order = !marked.empty() ? marked : !labelled.empty() ? labelled : std::string{"le"};
    return convert(std::string{four ? "UTF-32" : "UTF-16"} + (order == "le" ? "LE" : "BE"), text);
}

// Whether text in this charset label can be read: ASCII-compatible and known to the
// converter (for the tests: every label ascii_compatible() takes must convert).
bool charset_readable(std::string_view charset) {
    if (!ascii_compatible(charset)) {
        return false;
    }
    const std::string from = converter_for(charset);
    if (from.empty()) {
        return true;
    }
    const iconv_t cd = iconv_open("UTF-8", from.c_str());
    if (cd == reinterpret_cast<iconv_t>(-1)) {
        return false;
    }
    iconv_close(cd);
    return true;
}

// How a reason names the entity `name` ("" for the message itself, "1.2" for a part).
std::string place_of(const std::string& name) { return name.empty() ? std::string{"the message"} : "part " + name; }

// `end` without the one line break (LF or CRLF) before it, not below `from`: the line break
// before a multipart delimiter belongs to the delimiter (RFC 2046 5.1.1).
std::size_t before_break(std::string_view body, std::size_t from, std::size_t end) {
    if (end > from && body[end - 1] == '\n') {
        --end;
        if (end > from && body[end - 1] == '\r') {
            --end;
        }
    }
    return end;
}

void decode_quoted_printable(std::string_view in, std::string& out) {
    out.clear();
    out.reserve(in.size());
    for (std::size_t i = 0; i < in.size(); ++i) {
        const char c = in[i];
        if (c != '=') {
            out += c;
            continue;
        }
        std::size_t j = i + 1;
        while (j < in.size() && is_wsp(in[j])) {  // transport padding before a soft break
            ++j;
        }
        if (j < in.size() && (in[j] == '\n' || (in[j] == '\r' && j + 1 < in.size() && in[j + 1] == '\n'))) {
            i = in[j] == '\r' ? j + 1 : j;  // a soft line break
            continue;
        }
        if (j == in.size()) {
            i = j;  // "=" at the very end: a soft break
            continue;
        }
        if (i + 2 < in.size() && hex_digit_value(in[i + 1]) >= 0 && hex_digit_value(in[i + 2]) >= 0) {
            out += static_cast<char>(hex_digit_value(in[i + 1]) * 16 + hex_digit_value(in[i + 2]));
            i += 2;
            continue;
        }
        out += '=';  // not an escape: kept as it is (what decoders do)
    }
}

// RFC 2047 encoded words (`=?utf-8?B?...?=`, `=?iso-8859-1?Q?...?=`) decoded; the blanks
// between two adjacent encoded words dropped (RFC 2047 6.2). A word that is not one is
// left as written; the text of each run of adjacent words in one charset converted to UTF-8
// together. False when a word's charset cannot be read (charset_readable), its base64 does
// not decode, or its text is not valid in its charset.
// Linear: the next "?=" is searched for once per position it can be at (a value of many
// "=?" openings without a close would otherwise be searched to its end from each).
bool decode_words(std::string_view v, std::string& out) {
    out.clear();
    std::size_t i = 0;
    std::size_t pending_blanks = 0;  // blanks after an encoded word, dropped if another follows
    bool after_word = false;
    std::string piece;
    // The decoded bytes of a run of adjacent words in one charset, converted together (a
    // multi-byte character may be split over two words; Python and Thunderbird join them).
    std::string run;
    std::string run_charset;
    auto flush = [&] {
        if (!run.empty() && !to_utf8(run_charset, run)) {
            return false;
        }
        out += run;
        run.clear();
        return true;
    };
    std::size_t close = 0;  // the first "?=" at or after close_from (npos: none)
    std::size_t close_from = std::string_view::npos;
    auto next_close = [&](std::size_t from) {
        if (close_from == std::string_view::npos || from < close_from || (close != std::string_view::npos && close < from)) {
            close = v.find("?=", from);
            close_from = from;
        }
        return close;
    };
    while (i < v.size()) {
        if (v[i] == '=' && i + 1 < v.size() && v[i + 1] == '?') {
            // =?charset?enc?text?=
            const auto q1 = v.find('?', i + 2);
            const bool shape = q1 != std::string_view::npos && q1 + 2 < v.size() && v[q1 + 2] == '?';
            const auto q2 = shape ? q1 + 2 : std::string_view::npos;
            const auto end = shape ? next_close(q2 + 1) : std::string_view::npos;
            if (end != std::string_view::npos) {
                std::string_view charset = v.substr(i + 2, q1 - i - 2);
                if (const auto star = charset.find('*'); star != std::string_view::npos) {
                    charset = charset.substr(0, star);  // RFC 2231 language suffix
                }
                const char enc = static_cast<char>(v[q1 + 1] | 0x20);
                const std::string_view text = v.substr(q2 + 1, end - q2 - 1);
                bool ok = enc == 'b' || enc == 'q';
                if (ok && !charset_readable(charset)) {
                    return false;  // checked before decoding: `=?utf-7?B?...!?=` is no way around it
                }
                if (ok && enc == 'b') {
                    ok = decode_base64(text, piece);
                    if (!ok) {
                        // Python's decoder drops what is not base64 and shows the rest
                        // (`ZnJlZSBt.b25leQ==` is "free money"): we cannot know what is shown.
                        return false;
                    }
                } else if (ok) {
                    std::string q{text};
                    for (auto& c : q) {
                        c = c == '_' ? ' ' : c;
                    }
                    decode_quoted_printable(q, piece);
                }
                if (ok) {
                    if (!after_word || !iequals(charset, run_charset)) {
                        if (!flush()) {
                            return false;
                        }
                        run_charset.assign(charset);
                    }
                    if (!after_word) {
                        out.append(v.substr(i - pending_blanks, pending_blanks));
                    }
                    run += piece;
                    after_word = true;
                    pending_blanks = 0;
                    i = end + 2;
                    continue;
                }
            }
        }
        if (is_wsp(v[i])) {
            ++pending_blanks;
            ++i;
            continue;
        }
        if (!flush()) {
            return false;
        }
        out.append(v.substr(i - pending_blanks, pending_blanks));
        pending_blanks = 0;
        after_word = false;
        out += v[i++];
    }
    if (!flush()) {
        return false;
    }
    out.append(v.substr(v.size() - pending_blanks, pending_blanks));
    return true;
}

constexpr int max_mime_depth = 16;
constexpr std::size_t max_mime_parts = 1000;
constexpr std::size_t max_mime_fields = 10'000;  // header fields in the whole message

// `type/subtype`, both tokens (RFC 2045 5.1); anything else is read as the default type.
bool valid_type(std::string_view t) {
    const auto slash = t.find('/');
    if (slash == 0 || slash == std::string_view::npos || slash + 1 == t.size()) {
        return false;
    }
    for (std::size_t i = 0; i < t.size(); ++i) {
        const auto c = static_cast<unsigned char>(t[i]);
        if (i != slash && (c <= 32 || c >= 127 || std::string_view{"()<>@,;:\\\"/[]?="}.find(static_cast<char>(c)) != std::string_view::npos)) {
            return false;
        }
    }
    return true;
}

struct content_reader {
    mime_content& out;
    std::string* why;
    std::size_t parts = 0;
    std::size_t fields = 0;

    bool fail(std::string what) {
        if (why) {
            *why = std::move(what);
        }
        return false;
    }

    // One entity (a message or a body part) at `name` ("" for the message itself). `digest`:
    // a part of a multipart/digest, whose default type is message/rfc822 (RFC 2046 5.1.5).
    bool entity(std::string_view m, const std::string& name, int depth, bool top, bool digest = false) {
        if (depth > max_mime_depth) {
            return fail("more than " + std::to_string(max_mime_depth) + " levels of nested parts");
        }
        if (++parts > max_mime_parts) {
            return fail("more than " + std::to_string(max_mime_parts) + " parts");
        }
        if (m.empty()) {
            return true;  // an empty part: nothing to read
        }
        std::string value;
        std::size_t body_at = 0;
        int types = 0;
        int encodings = 0;
        std::string type_value;
        std::string encoding;
        bool bad_words = false;
        std::string decoded;
        const bool ok = for_each_field(
            m, value,
            [&](std::string_view n, std::string_view v) {
                if (++fields > max_mime_fields) {
                    return;
                }
                if (iequals(n, "Content-Type")) {
                    ++types;
                    type_value = v;
                } else if (iequals(n, "Content-Transfer-Encoding")) {
                    ++encodings;
                    encoding = lower(trim(v));
                } else if (top && iequals(n, "List-Unsubscribe") && list_unsubscribe_value(v)) {
                    out.list_unsubscribe = true;
                }
                if (!decode_words(trim(v), decoded)) {
                    bad_words = true;
                    return;
                }
                mime_text t;
                if (top && iequals(n, "From")) {
                    sender_name_text(trim(v), t.sender);
                }
                t.k = iequals(n, "Subject") ? mime_text::kind::subject : mime_text::kind::header;
                t.where = (name.empty() ? "" : "part " + name + " ") +
                          (t.k == mime_text::kind::subject ? std::string{"Subject"} : "header " + std::string{n.substr(0, 64)});
                t.text = std::move(decoded);
                out.texts.push_back(std::move(t));
            },
            &body_at);
        const std::string at = place_of(name);
        if (!ok) {
            return fail("the header section of " + at + " cannot be read");
        }
        if (fields > max_mime_fields) {
            return fail("more than " + std::to_string(max_mime_fields) + " header fields");
        }
        if (bad_words) {
            return fail("an encoded word in " + at + "'s header is in a charset that is not read (only ASCII-compatible "
                        "ones are) or is not valid base64");
        }
        if (types > 1 || encodings > 1) {
            return fail(at + " has more than one " + (types > 1 ? "Content-Type" : "Content-Transfer-Encoding"));
        }
        if (has_comment(type_value)) {
            // `multipart/mixed (x); boundary=b`: RFC 2045 allows the comment, but a reader that
            // does not strip it sees another type (and reads the parts as one text).
            return fail(at + " has a comment in its Content-Type, which parsers read differently");
        }
        // The type (its parameters read as the form fields' are: rules/form.hpp).
        std::string type = lower(trim(std::string_view{type_value}.substr(0, type_value.find(';'))));
        std::optional<std::string> charset;
        std::optional<std::string> boundary;
        // Parameters as RFC 2045 writes them (blanks around '=', any unquoted value up to ';'),
        // not the form parts' strict HTTP syntax.
        if (!header_param(type_value, "charset", &charset, false) || !header_param(type_value, "boundary", &boundary, false)) {
            return fail(at + " has a malformed Content-Type, or a charset or boundary given twice or RFC 2231-encoded");
        }
        if (types == 0 && digest) {
            type = "message/rfc822";  // a digest's default (RFC 2046 5.1.5)
        } else if (!valid_type(type)) {
            type = "";  // absent or invalid: text/plain (RFC 2045 5.2)
        }
        std::string_view body = m.substr(body_at);
        std::string unencoded;
        const bool attached = type == "message/rfc822" || type == "message/global";
        const bool identity = encoding.empty() || encoding == "7bit" || encoding == "8bit" || encoding == "binary";
        if ((attached || type.starts_with("multipart/")) && !identity) {
            // RFC 2045 6.4 / RFC 2046 5.2.1; so every byte is decoded at most once.
            return fail(at + " is a " + type.substr(0, 32) + " with the transfer encoding " + encoding.substr(0, 32));
        }
        if (encoding == "base64") {
            if (!decode_base64(body, unencoded)) {
                return fail(at + " is not base64");
            }
            body = unencoded;
        } else if (encoding == "quoted-printable") {
            decode_quoted_printable(body, unencoded);
            body = unencoded;
        } else if (!identity) {
            return fail(at + " has the transfer encoding " + encoding.substr(0, 32) + ", which is not read");
        }
        const std::string label = name.empty() ? std::string{"body"} : "part " + name;
        if (type.starts_with("multipart/")) {
            if (!boundary || boundary->empty() || boundary->size() > 200) {
                return fail(at + " is multipart without a boundary");
            }
            return multipart(body, *boundary, name, depth, type == "multipart/digest");
        }
        if (attached) {
            return entity(body, name.empty() ? "1" : name + ".1", depth + 1, false);
        }
        if (type.empty() || type.starts_with("text/")) {
            const bool wide = charset && wide_charset(*charset);
            if (charset && !wide && !charset_readable(*charset)) {
                return fail(at + " is in the charset " + charset->substr(0, 32) +
                            ", which is not read (only ASCII-compatible ones and UTF-16 and UTF-32 are)");
            }
            mime_text t;
            t.k = mime_text::kind::body;
            t.where = label + " (" + (type.empty() ? std::string{"text/plain"} : type.substr(0, 64)) + ")";
            // A decoded body is moved, not copied again.
            t.text = body.data() == unencoded.data() ? std::move(unencoded) : std::string{body};
            if (!(wide ? wide_to_utf8(*charset, t.text)
                       : to_utf8(charset ? std::string_view{*charset} : std::string_view{}, t.text))) {
                return fail(at + " is not valid text in its charset " + (charset ? charset->substr(0, 32) : "(none: windows-1252)"));
            }
            out.texts.push_back(std::move(t));
        } else if (!body.empty()) {
            // An attachment of another type: what it holds reaches the recipient all the same
            // (`application/octet-stream; name="customers.csv"`).
            mime_text t;
            t.k = mime_text::kind::attachment;
            t.where = label + " (" + type.substr(0, 64) + ", an attachment)";
            t.text = body.data() == unencoded.data() ? std::move(unencoded) : std::string{body};
            out.texts.push_back(std::move(t));
        }
        return true;
    }

    // The parts between `--boundary` lines; the text before the first and after the closing
    // one (preamble, epilogue) read as plain text. A missing closing line ends the last part
    // at the end of the body.
    bool multipart(std::string_view body, const std::string& boundary, const std::string& name, int depth, bool digest) {
        // A bare CR: some parsers end a line there (and find delimiters we would not).
        for (auto cr = body.find('\r'); cr != std::string_view::npos; cr = body.find('\r', cr + 1)) {
            if (cr + 1 == body.size() || body[cr + 1] != '\n') {
                return fail("the body of " + place_of(name) +
                            " has a bare CR");
            }
        }
        const std::string dash = "--" + boundary;
        std::size_t at = 0;
        std::size_t part_start = std::string::npos;  // after the delimiter line of the open part
        std::size_t preamble_end = std::string::npos;
        int index = 0;
        bool closed = false;
        auto add_plain = [&](std::string_view text, std::string where) {
            if (!trim(text).empty()) {
                mime_text t;
                t.k = mime_text::kind::body;
                t.where = std::move(where);
                t.text = std::string{text};
                out.texts.push_back(std::move(t));
            }
        };
        const std::string prefix = name.empty() ? "" : name + ".";
        auto close_part = [&](std::size_t end) {
            end = before_break(body, part_start, end);
            return entity(body.substr(part_start, end - part_start), prefix + std::to_string(index),
                          depth + 1, false, digest);
        };
        while (at < body.size()) {
            const auto nl = body.find('\n', at);
            const std::size_t next = nl == std::string_view::npos ? body.size() : nl + 1;
            std::string_view l = body.substr(at, next - at);
            if (l.starts_with(dash)) {
                std::string_view rest = l.substr(dash.size());
                const bool close = rest.starts_with("--");
                if (close) {
                    rest.remove_prefix(2);
                }
                if (trim(rest).empty()) {
                    if (preamble_end == std::string::npos) {
                        preamble_end = at;
                    } else if (!close_part(at)) {
                        return false;
                    }
                    if (close) {
                        closed = true;
                        add_plain(body.substr(next), "epilogue of " + place_of(name));
                        break;
                    }
                    ++index;
                    part_start = next;
                }
            }
            at = next;
        }
        if (preamble_end == std::string::npos) {
            add_plain(body, "body of " + place_of(name) + " (no parts)");
            return true;
        }
        add_plain(body.substr(0, before_break(body, 0, preamble_end)), "preamble of " + place_of(name));
        if (!closed && part_start != std::string::npos && !close_part(body.size())) {
            return false;
        }
        return true;
    }
};

}  // namespace

bool mime_content_of(std::string_view message, mime_content& out, std::string* why) {
    out.texts.clear();
    out.list_unsubscribe = false;
    content_reader r{out, why};
    return r.entity(message, "", 0, true);
}

std::optional<std::string> mime_subject(std::string_view message) {
    std::string value;
    std::string subject;
    bool seen = false;
    bool bad = false;
    const bool ok = for_each_field(message, value, [&](std::string_view name, std::string_view v) {
        if (!seen && iequals(name, "Subject")) {
            seen = true;
            bad = !decode_words(trim(v), subject);
        }
    });
    if (!ok || bad) {
        return std::nullopt;
    }
    return subject;
}

namespace {

// The values of every header field named one of `names`, unfolded and joined by ", ";
// nullopt when one holds a comment or the header section cannot be read.
std::optional<std::string> address_fields(std::string_view message, std::initializer_list<std::string_view> names) {
    std::string value;
    std::string joined;
    bool comment = false;
    const bool ok = for_each_field(message, value, [&](std::string_view name, std::string_view v) {
        if (std::any_of(names.begin(), names.end(), [&](std::string_view n) { return iequals(name, n); })) {
            comment |= has_comment(v);
            joined += joined.empty() ? "" : ", ";
            joined += v;
        }
    });
    if (!ok || comment) {
        return std::nullopt;
    }
    return joined;
}

}  // namespace

namespace {

// The end of the angle-addr that starts at v[lt] == '<': past its '>' outside quotes (when
// `quotes` open them), or the end of the value.
std::size_t angle_addr_end(std::string_view v, std::size_t lt, bool quotes, bool& open_quote) {
    bool quoted = false;
    for (std::size_t j = lt + 1; j < v.size(); ++j) {
        if (quoted && v[j] == '\\') {
            ++j;
        } else if (v[j] == '"' && quotes) {
            quoted = !quoted;
        } else if (!quoted && v[j] == '>') {
            return j + 1;
        }
    }
    open_quote = open_quote || quoted;
    return v.size();
}

// address_display_text; `quotes`, `comments`: whether '"' and '(' open what they open (off
// in the pass after one that found it unterminated).
void blank_addresses(std::string_view v, std::string& out, bool quotes, bool comments) {
    out.assign(v);
    auto blank_out = [&](std::size_t from, std::size_t to) {
        std::fill(out.begin() + static_cast<std::ptrdiff_t>(from), out.begin() + static_cast<std::ptrdiff_t>(to), ' ');
    };
    bool quoted = false;
    bool open_quote = false;  // one inside an angle-addr that never closed
    std::size_t quote_start = 0;
    int comment = 0;
    std::size_t token = std::string_view::npos;  // start of the bare word being read
    bool token_at = false;                         // it holds an '@': an addr-spec
    auto end_token = [&](std::size_t end) {
        if (token != std::string_view::npos && token_at) {
            blank_out(token, end);
        }
        token = std::string_view::npos;
        token_at = false;
    };
    for (std::size_t i = 0; i < v.size(); ++i) {
        const char c = v[i];
        if (quoted) {
            if (c == '\\') {
                ++i;  // a quoted-pair
            } else if (c == '"') {
                quoted = false;
                if (i + 1 < v.size() && v[i + 1] == '@') {
                    token = quote_start;  // a quoted local part: "jane doe"@x.com
                    token_at = true;
                }
            }
            continue;
        }
        if (comment > 0) {
            if (c == '\\') {
                ++i;
            } else if (c == '(') {
                ++comment;
            } else if (c == ')') {
                --comment;
            }
            continue;
        }
        if (c == '"' && quotes) {
            end_token(i);
            quoted = true;
            quote_start = i;
        } else if (c == '(' && comments) {
            end_token(i);
            comment = 1;
        } else if (c == '<') {
            end_token(i);
            const std::size_t end = angle_addr_end(v, i, quotes, open_quote);  // no word of it shows as a name
            blank_out(i, end);
            i = end - 1;
        } else if (c == ',' || c == ';' || c == ':' || c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            end_token(i);
        } else {
            if (token == std::string_view::npos) {
                token = i;
            }
            token_at = token_at || c == '@';
        }
    }
    end_token(v.size());
    if ((quoted || open_quote) && quotes) {
        blank_addresses(v, out, false, comments);  // an unterminated quote quotes nothing
    } else if (comment > 0 && comments) {
        blank_addresses(v, out, quotes, false);  // nor an unterminated comment
    }
}

}  // namespace

std::string_view address_display_text(std::string_view value, std::string& out) {
    blank_addresses(value, out, true, true);
    return out;
}

sender_text sender_name_text(std::string_view value, std::string& out) {
    address_display_text(value, out);
    if (out.find("=?") == std::string::npos) {
        return sender_text::as_written;
    }
    std::string decoded;
    if (!decode_words(out, decoded)) {
        return sender_text::unreadable;
    }
    if (decoded == out) {
        return sender_text::as_written;
    }
    out = std::move(decoded);
    return sender_text::decoded;
}

std::string mime_from(std::string_view message) {
    // Every From, and Sender: a second From (or a Sender) is what some clients and relays
    // show or send as, so each address of each is checked, not only the first field's.
    return address_fields(message, {"From", "Sender"}).value_or(std::string{});
}

std::optional<std::string> mime_reply_to(std::string_view message) { return address_fields(message, {"Reply-To"}); }

bool list_unsubscribe_value(std::string_view value) {
    for (std::size_t lt = value.find('<'); lt != std::string_view::npos; lt = value.find('<', lt + 1)) {
        const std::string_view rest = value.substr(lt + 1);
        for (const std::string_view scheme : {"https:", "http:", "mailto:"}) {
            if (rest.size() > scheme.size() + 1 && iequals(rest.substr(0, scheme.size()), scheme) &&
                rest.find('>') != std::string_view::npos && rest.find('>') > scheme.size()) {
                return true;
            }
        }
    }
    return false;
}

}  // namespace bb::rules
