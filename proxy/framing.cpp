#include "proxy/framing.hpp"

#include <algorithm>

namespace bb::proxy {

namespace {

bool is_tchar(unsigned char c) {
    if (c >= '0' && c <= '9') {
        return true;
    }
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') {
        return true;
    }
    switch (c) {
        case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
        case '-': case '.': case '^': case '_': case '`': case '|': case '~':
            return true;
        default:
            return false;
    }
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
        s.remove_prefix(1);
    }
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
        s.remove_suffix(1);
    }
    return s;
}

head_verdict bad(std::string message) {
    return {400, "bad_framing", std::move(message)};
}

}  // namespace

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
        unsigned char x = static_cast<unsigned char>(a[i]);
        unsigned char y = static_cast<unsigned char>(b[i]);
        if (x >= 'A' && x <= 'Z') {
            x |= 0x20;
        }
        if (y >= 'A' && y <= 'Z') {
            y |= 0x20;
        }
        if (x != y) {
            return false;
        }
    }
    return true;
}

bool is_token(std::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return is_tchar(static_cast<unsigned char>(c)); });
}

std::size_t find_head_end(std::string_view data, std::size_t from) {
    from = from >= 3 ? from - 3 : 0;
    const auto pos = data.find("\r\n\r\n", from);
    return pos == std::string_view::npos ? std::string_view::npos : pos + 4;
}

head_verdict check_request_head(std::string_view raw, std::size_t max_header_count) {
    // Every line ends in CRLF; a bare CR or LF is a framing ambiguity between parsers.
    for (std::size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] == '\r') {
            if (i + 1 >= raw.size() || raw[i + 1] != '\n') {
                return bad("bare CR in the request head");
            }
            ++i;
        } else if (raw[i] == '\n') {
            return bad("bare LF in the request head (lines must end in CRLF)");
        } else if (raw[i] == '\0') {
            return bad("NUL byte in the request head");
        }
    }
    std::size_t pos = raw.find("\r\n");
    const std::string_view line = raw.substr(0, pos);
    // request-line = method SP request-target SP HTTP-version
    const auto sp1 = line.find(' ');
    const auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp1 == std::string_view::npos || sp2 == std::string_view::npos ||
        line.find(' ', sp2 + 1) != std::string_view::npos) {
        return {400, "bad_request_line", "the request line must be METHOD SP TARGET SP HTTP/1.x"};
    }
    const std::string_view method = line.substr(0, sp1);
    const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    const std::string_view version = line.substr(sp2 + 1);
    if (!is_token(method)) {
        return {400, "bad_request_line", "the method is not a valid token"};
    }
    if (target.empty() || std::any_of(target.begin(), target.end(), [](char c) {
            return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f;
        })) {
        return {400, "bad_request_line", "the request target is empty or has control characters"};
    }
    bool http10 = false;
    if (version == "HTTP/1.0") {
        http10 = true;
    } else if (version != "HTTP/1.1") {
        if (version.size() == 8 && version.substr(0, 5) == "HTTP/" && version[6] == '.') {
            return {505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are supported"};
        }
        return {400, "bad_request_line", "the HTTP version is malformed"};
    }

    std::size_t count = 0;
    int hosts = 0;
    int content_lengths = 0;
    int transfer_encodings = 0;
    bool chunked = false;
    pos += 2;
    while (pos < raw.size()) {
        const auto end = raw.find("\r\n", pos);
        const std::string_view field = raw.substr(pos, end - pos);
        pos = end + 2;
        if (field.empty()) {
            break;  // the empty line that ends the head
        }
        if (field.front() == ' ' || field.front() == '\t') {
            return bad("obsolete line folding (a header line starting with whitespace) is not accepted");
        }
        if (++count > max_header_count) {
            return {431, "too_many_headers", "the request has more than " + std::to_string(max_header_count) + " header fields"};
        }
        const auto colon = field.find(':');
        if (colon == std::string_view::npos) {
            return bad("a header line has no colon");
        }
        const std::string_view name = field.substr(0, colon);
        if (!is_token(name)) {
            return bad("a header name is not a valid token (no whitespace before the colon)");
        }
        const std::string_view value = trim(field.substr(colon + 1));
        if (std::any_of(value.begin(), value.end(), [](char c) {
                const auto u = static_cast<unsigned char>(c);
                return (u < 0x20 && u != '\t') || u == 0x7f;
            })) {
            return bad("a header value has control characters");
        }
        if (iequals(name, "host")) {
            ++hosts;
            if (value.empty()) {
                return bad("Host is empty");
            }
        } else if (iequals(name, "content-length")) {
            ++content_lengths;
            if (value.empty() || value.size() > 18 ||
                !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
                return bad("Content-Length must be a single decimal number");
            }
        } else if (iequals(name, "transfer-encoding")) {
            ++transfer_encodings;
            chunked = iequals(value, "chunked");
            if (!chunked) {
                return bad("Transfer-Encoding other than exactly \"chunked\" is not accepted");
            }
        }
    }
    if (content_lengths > 1) {
        return bad("Content-Length appears more than once");
    }
    if (transfer_encodings > 1) {
        return bad("Transfer-Encoding appears more than once");
    }
    if (transfer_encodings > 0 && http10) {
        return bad("Transfer-Encoding is not allowed in HTTP/1.0");
    }
    if (transfer_encodings > 0 && content_lengths > 0) {
        return bad("Content-Length together with Transfer-Encoding is ambiguous");
    }
    if (hosts > 1) {
        return bad("Host appears more than once");
    }
    if (hosts == 0 && !http10) {
        return bad("HTTP/1.1 requires a Host header");
    }
    return {};
}

}  // namespace bb::proxy
