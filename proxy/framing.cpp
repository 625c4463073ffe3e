#include "proxy/framing.hpp"

#include "core/hex.hpp"
#include "core/http_token.hpp"
#include "core/method_override.hpp"
#include "core/read_limits.hpp"

#include <algorithm>
#include <cstring>

namespace bb::proxy {

namespace {

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

bool istarts_with(std::string_view s, std::string_view prefix) {
    return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

bool split_target(std::string_view target, target_parts& out) {
    if (target.empty()) {
        return false;
    }
    if (target.front() == '/') {
        out.origin_form = target;
    } else if (istarts_with(target, "http://") || istarts_with(target, "https://")) {
        const auto scheme_end = target.find("://") + 3;
        const auto slash = target.find('/', scheme_end);
        out.host = target.substr(scheme_end, slash == std::string_view::npos ? std::string_view::npos : slash - scheme_end);
        // No user information and nothing past the authority but a path: by RFC 3986,
        // `http://api.sendgrid.com:443@evil.example/` addresses evil.example, and
        // `http://a.example?x` a.example; parsers disagree on both, so neither is guessed.
        if (out.host.empty() || out.host.find_first_of("@?#\\") != std::string_view::npos) {
            return false;
        }
        out.origin_form = slash == std::string_view::npos ? std::string_view{"/"} : target.substr(slash);
    } else if (target == "*") {
        out.origin_form = target;
    } else {
        return false;
    }
    out.path = out.origin_form.substr(0, out.origin_form.find('?'));
    return true;
}

namespace {

// A query parameter that asks the upstream to act as another method, or "". `&`, `;` and
// `#` all separate parameters, as for redact_query: servers disagree on the last two
// (`?a=1;_HttpMethod=DELETE` is two parameters to some).
std::string_view override_parameter(std::string_view target) {
    const auto q = target.find('?');
    return q == std::string_view::npos ? std::string_view{} : method_override_name(target.substr(q + 1), "&;#");
}

}  // namespace

std::optional<std::string_view> path_under_base(std::string_view path, std::string_view base) {
    if (base.empty()) {
        return path;
    }
    if (!path.starts_with(base) || (path.size() != base.size() && path[base.size()] != '/')) {
        return std::nullopt;
    }
    return path.size() == base.size() ? std::string_view{"/"} : path.substr(base.size());
}

bool route_takes(const route_config& r, std::string_view method, std::string_view path) {
    const auto& m = r.match;
    const std::string_view trimmed = path.size() > 1 && path.back() == '/' ? path.substr(0, path.size() - 1) : path;
    if (!m.path.empty() && !iequals(path, m.path) && !iequals(trimmed, m.path)) {
        return false;
    }
    if (!m.path_prefix.empty() && !istarts_with(path, m.path_prefix)) {
        return false;
    }
    return m.methods.empty() || std::find(m.methods.begin(), m.methods.end(), method) != m.methods.end();
}

std::string subrequest_which(std::size_t index, std::string_view what) {
    return what.empty() ? " in subrequest #" + std::to_string(index) + " of this composite request"
                        : " (" + std::string{what} + ")";
}

std::string subrequest_refusal(const agent_scope& scope, std::size_t index, std::string_view method,
                               std::string_view url, std::string_view base, std::string_view upstream,
                               std::string_view what) {
    const std::string which = subrequest_which(index, what);
    const auto own = path_under_base(url, base);
    if (const auto amb = ambiguous_path(url); !amb.empty()) {
        return (what.empty() ? "subrequest #" + std::to_string(index) + " of this composite request"
                             : std::string{what}) +
               ": its URL contains " + std::string{amb};
    }
    if (!own) {
        return "path " + std::string{url.substr(0, 256)} + which + " (outside upstream " + std::string{upstream} +
               "'s base path " + std::string{base} + ")";
    }
    if (!scope.allows_method(method)) {
        return "method " + std::string{method.substr(0, 16)} + which;
    }
    if (!scope.allows_path(*own)) {
        return "path " + std::string{own->substr(0, 256)} + which;
    }
    return {};
}

std::string_view ambiguous_path(std::string_view path) {
    if (path == "*") {
        return {};
    }
    for (std::size_t i = 0; i < path.size(); ++i) {
        const char c = path[i];
        if (c == '\\') {
            return "a backslash";
        }
        if (c == '#') {
            // A fragment is never sent (RFC 9110 4.1); servers that get one end the path
            // there (/archive#x is /archive to them, a path our routes did not match).
            return "a fragment (#)";
        }
        if (c == ';') {
            // Path parameters (/archive;x): Jetty, Spring and others drop them, so the
            // upstream may serve a path our routes and rules did not match.
            return "a path parameter (;)";
        }
        if (c == '%' && i + 2 < path.size()) {
            const char a = path[i + 1];
            const char b = static_cast<char>(path[i + 2] | 0x20);
            if (a == '2' && b == 'f') {
                return "an encoded slash (%2F)";
            }
            if (a == '5' && b == 'c') {
                return "an encoded backslash (%5C)";
            }
            if (a == '0' && b == '0') {
                return "an encoded NUL (%00)";
            }
            if (a == '3' && b == 'b') {
                return "an encoded path parameter separator (%3B)";
            }
            // An unreserved character percent-encoded (/v3/mail/%73end, /v3/mg%2Eexample.com/
            // messages): RFC 3986 says it is the same path as the decoded one, so an upstream
            // may serve /v3/mail/send for it while our routes (and their rules) would not have
            // matched it.
            if (const int hi = hex_digit_value(path[i + 1]), lo = hex_digit_value(path[i + 2]); hi >= 0 && lo >= 0) {
                const char d = static_cast<char>(hi * 16 + lo);
                if ((d >= 'a' && d <= 'z') || (d >= 'A' && d <= 'Z') || (d >= '0' && d <= '9') || d == '-' ||
                    d == '.' || d == '_' || d == '~') {
                    return "a percent-encoded unreserved character (use the character itself)";
                }
            }
        }
    }
    // An empty segment: many servers merge slashes (nginx by default), so /v3//mail/send
    // would miss a /v3/mail/send route here (and its rules) yet reach that endpoint there.
    if (path.find("//") != std::string_view::npos) {
        return "an empty segment (//)";
    }
    // Segments that are "." or "..", literally or with the dots percent-encoded.
    std::size_t start = 0;
    while (start <= path.size()) {
        auto end = path.find('/', start);
        if (end == std::string_view::npos) {
            end = path.size();
        }
        std::string_view seg = path.substr(start, end - start);
        std::size_t dots = 0;
        bool only_dots = !seg.empty();
        for (std::size_t i = 0; i < seg.size() && only_dots;) {
            if (seg[i] == '.') {
                ++dots;
                ++i;
            } else if (seg[i] == '%' && i + 2 < seg.size() && seg[i + 1] == '2' && (seg[i + 2] | 0x20) == 'e') {
                ++dots;
                i += 3;
            } else {
                only_dots = false;
            }
        }
        if (only_dots && (dots == 1 || dots == 2)) {
            return "a dot segment (\".\" or \"..\")";
        }
        start = end + 1;
    }
    return {};
}

std::size_t find_head_end(std::string_view data, std::size_t from) {
    from = from >= 3 ? from - 3 : 0;
    const auto pos = data.find("\r\n\r\n", from);
    return pos == std::string_view::npos ? std::string_view::npos : pos + 4;
}

head_verdict check_request_head(std::string_view raw, std::size_t max_header_count) {
    // One pass per line. Every line ends in CRLF; a bare CR or LF, a NUL or another control
    // character is a framing ambiguity between parsers and is refused.
    const char* const begin = raw.data();
    const char* const end = begin + raw.size();
    const char* p = begin;
    auto next_line = [&](std::string_view& line) -> const char* {
        const auto* nl = static_cast<const char*>(std::memchr(p, '\n', static_cast<std::size_t>(end - p)));
        if (nl == nullptr) {
            return "the request head does not end in CRLF";
        }
        if (nl == p || nl[-1] != '\r') {
            return "bare LF in the request head (lines must end in CRLF)";
        }
        line = std::string_view{p, static_cast<std::size_t>(nl - 1 - p)};
        p = nl + 1;
        return nullptr;
    };

    std::string_view line;
    if (const char* why = next_line(line)) {
        return bad(why);
    }
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
    // Methods are case-sensitive (RFC 9110 9.1), and routes, agent scopes and rules match
    // them upper case; but some upstream frameworks read `post` as POST, so a lower-case
    // `delete` would pass every rule that counts DELETE. Every registered method is upper
    // case: one with a lower-case letter is refused.
    if (std::any_of(method.begin(), method.end(), [](char c) { return c >= 'a' && c <= 'z'; })) {
        return {400, "bad_request_line",
                "the method " + std::string{method.substr(0, 32)} +
                    " has lower-case letters: send it upper case (routes and rules match methods as registered)"};
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
        if (std::any_of(version.begin(), version.end(), [](char c) { return c == '\r' || c == '\0'; })) {
            return bad("control character in the request line");
        }
        return {400, "bad_request_line", "the HTTP version is malformed"};
    }

    if (const auto param = override_parameter(target); !param.empty()) {
        return {400, "method_override",
                "the query parameter " + std::string{param.substr(0, 32)} +
                    " is not accepted: routes, agent scopes and rules judge the request by its method, so send "
                    "the method itself"};
    }

    std::size_t count = 0;
    int hosts = 0;
    int content_lengths = 0;
    int transfer_encodings = 0;
    int content_types = 0;
    int content_encodings = 0;
    bool nonzero_length = false;
    const bool trace = method == "TRACE";  // methods are case-sensitive (RFC 9110 9.1)
    for (;;) {
        if (const char* why = next_line(line)) {
            return bad(why);
        }
        if (line.empty()) {
            break;  // the empty line that ends the head
        }
        if (line.front() == ' ' || line.front() == '\t') {
            return bad("obsolete line folding (a header line starting with whitespace) is not accepted");
        }
        // Beast stores a field's size in 16 bits and throws for a longer one, which would
        // drop the connection without an answer (core/read_limits.hpp): refused here, also
        // where limits.header_bytes allows a head larger than that.
        if (line.size() >= max_buffered_line) {
            return {431, "header_too_large",
                    "a header field is larger than " + std::to_string(max_buffered_line) + " bytes"};
        }
        if (++count > max_header_count) {
            return {431, "too_many_headers", "the request has more than " + std::to_string(max_header_count) + " header fields"};
        }
        const auto colon = line.find(':');
        if (colon == std::string_view::npos) {
            return bad("a header line has no colon");
        }
        const std::string_view name = line.substr(0, colon);
        if (!is_token(name)) {
            return bad("a header name is not a valid token (no whitespace before the colon)");
        }
        std::string_view value = line.substr(colon + 1);
        for (const char c : value) {
            const auto u = static_cast<unsigned char>(c);
            if ((u < 0x20 && u != '\t') || u == 0x7f) {
                return bad(u == '\r' ? "bare CR in the request head" : "a header value has control characters");
            }
        }
        // Only a few names matter for framing (and for how the body is read); compare by
        // length first.
        if (name.size() != 4 && name.size() != 12 && name.size() != 13 && name.size() != 14 && name.size() != 16 &&
            name.size() != 17 && name.size() != 22) {
            continue;
        }
        if (is_method_override_header(name)) {
            // The upstream may act as the method named there (a POST that deletes), while
            // routes, agent scopes and rules judged the method on the wire.
            return {400, "method_override",
                    std::string{name} + " is not accepted: routes, agent scopes and rules judge the request "
                                        "by its method, so send the method itself"};
        }
        value = trim(value);
        if (name.size() == 12 && iequals(name, "content-type")) {
            // Two types: the guards would read the body as the first, an upstream perhaps as
            // the last (JSON vs a Mailgun form).
            if (++content_types > 1) {
                return bad("Content-Type appears more than once");
            }
        } else if (name.size() == 16 && iequals(name, "content-encoding")) {
            if (++content_encodings > 1) {
                return bad("Content-Encoding appears more than once");
            }
        } else if (name.size() == 4 && iequals(name, "host")) {
            ++hosts;
            if (value.empty()) {
                return bad("Host is empty");
            }
        } else if (name.size() == 14 && iequals(name, "content-length")) {
            ++content_lengths;
            if (value.empty() || value.size() > 18 ||
                !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
                return bad("Content-Length must be a single decimal number");
            }
            nonzero_length = value.find_first_not_of('0') != std::string_view::npos;
        } else if (name.size() == 17 && iequals(name, "transfer-encoding")) {
            ++transfer_encodings;
            if (!iequals(value, "chunked")) {
                return bad("Transfer-Encoding other than exactly \"chunked\" is not accepted");
            }
        }
    }
    if (p != end) {
        return bad("bytes after the end of the request head");
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
    // RFC 9110 9.3.8: a TRACE has no content (Beast refuses to send one: no upstream would
    // get it, and the request would be metered and possibly held first).
    if (trace && (transfer_encodings > 0 || nonzero_length)) {
        return bad("a TRACE request cannot have a body");
    }
    // A GET or HEAD (body_may_be_read_as_a_request): no email or CRM API takes a body in one.
    if (body_may_be_read_as_a_request(method) && (transfer_encodings > 0 || nonzero_length)) {
        return bad("a " + std::string{method} + " request cannot have a body here (an upstream may read none, and "
                   "take its bytes for another request)");
    }
    // RFC 9110 9.3.6: a CONNECT has no content. Read as a body, its bytes would be the first
    // of the tunnel (a ClientHello) eaten: the two ends would disagree on where it starts.
    if (method == "CONNECT" && (transfer_encodings > 0 || nonzero_length)) {
        return bad("a CONNECT request cannot have a body");
    }
    return {};
}

}  // namespace bb::proxy
