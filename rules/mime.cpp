#include "rules/mime.hpp"

#include <array>
#include <cstdint>
#include <utility>

#include "rules/request.hpp"  // iequals
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
template <class F>
bool for_each_field(std::string_view m, std::string& value, F&& f) {
    std::size_t at = 0;
    std::string_view name;
    bool open = false;
    while (at < m.size()) {
        const line l = line_at(m, at);
        at = l.next;
        if (l.text.empty()) {
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
        split_addresses(std::string_view{scratch}.substr(at, n), items);
        for (const auto item : items) {
            if (const auto member = member_of(item); !member.empty()) {
                out.push_back(member);
            }
        }
    }
    return true;
}

std::string mime_from(std::string_view message) {
    std::string value;
    std::string from;
    bool seen = false;
    const bool ok = for_each_field(message, value, [&](std::string_view name, std::string_view v) {
        if (!seen && iequals(name, "From")) {
            seen = true;
            from = has_comment(v) ? std::string{} : std::string{v};
        }
    });
    return ok ? from : std::string{};
}

}  // namespace bb::rules
