#include "proxy/sandbox.hpp"

#include "core/credential.hpp"
#include "core/host_name.hpp"
#include "core/json_reader.hpp"
#include "core/json_key.hpp"
#include "core/url_decode.hpp"
#include "core/utf8.hpp"
#include "proxy/framing.hpp"
#include "rules/form.hpp"
#include "rules/request.hpp"

#include <simdjson.h>

#include <algorithm>
#include <vector>

namespace bb::proxy {

namespace {

std::string_view media_type(std::string_view ct) {
    const auto semi = ct.find(';');
    auto t = ct.substr(0, semi);
    while (!t.empty() && t.back() == ' ') {
        t.remove_suffix(1);
    }
    return t;
}

std::string boundary_of(std::string_view ct) {
    for (std::size_t pos = ct.find(';'); pos != std::string_view::npos; pos = ct.find(';', pos + 1)) {
        auto param = ct.substr(pos + 1);
        while (!param.empty() && param.front() == ' ') {
            param.remove_prefix(1);
        }
        if (istarts_with(param, "boundary=")) {
            auto v = param.substr(9);
            v = v.substr(0, v.find(';'));
            if (v.size() >= 2 && v.front() == '"' && v.back() == '"') {
                v = v.substr(1, v.size() - 2);
            }
            return std::string{v};
        }
    }
    return {};
}

}  // namespace

std::optional<sandbox_api> detect_sandbox_api(std::string_view content_type) {
    const auto mt = media_type(content_type);
    if (iequals(mt, "application/json") || (mt.size() > 5 && iequals(mt.substr(mt.size() - 5), "+json"))) {
        return sandbox_api::sendgrid;
    }
    if (iequals(mt, "application/x-www-form-urlencoded") || iequals(mt, "multipart/form-data")) {
        return sandbox_api::mailgun;
    }
    return std::nullopt;
}

namespace {

// `a=1&b=2` (pieces `name=value`, names of no blanks or controls): what a form reader takes.
bool looks_like_form(std::string_view text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) {
        text.remove_suffix(1);
    }
    if (text.empty()) {
        return false;
    }
    for (std::string_view rest = text;;) {
        const auto amp = rest.find('&');
        const std::string_view piece = rest.substr(0, amp);
        const auto eq = piece.find('=');
        if (eq == std::string_view::npos || eq == 0 ||
            std::any_of(piece.begin(), piece.begin() + static_cast<std::ptrdiff_t>(eq),
                        [](unsigned char c) { return c <= ' ' || c == 0x7f; })) {
            return false;
        }
        if (amp == std::string_view::npos) {
            return true;
        }
        rest = rest.substr(amp + 1);
    }
}

}  // namespace

std::string credential_in_body(std::string_view body, std::string_view content_type) {
    auto kind = detect_sandbox_api(content_type);
    const std::string_view text = without_bom(body);
    const auto first = text.find_first_not_of(" \t\r\n");
    if (first == std::string_view::npos) {
        return {};
    }
    if (!kind) {
        // No type, or one that is neither JSON nor a form (text/plain, text/json): read as
        // what it looks like, as a lenient API would: JSON when it starts like JSON and has
        // no type or a JSON-ish one; a urlencoded form when every piece is `name=value` with
        // a name of no blanks (prose, a CSV or a log line is no form: it goes as sent).
        const bool jsonish = content_type.find_first_not_of(" \t") == std::string_view::npos ||
                             rules::lower(content_type).find("json") != std::string::npos;
        if (jsonish && (text[first] == '{' || text[first] == '[')) {
            kind = sandbox_api::sendgrid;
            content_type = "application/json";
        } else if (looks_like_form(text)) {
            kind = sandbox_api::mailgun;
            content_type = "application/x-www-form-urlencoded";
        } else {
            return {};
        }
        body = text;
    }
    auto named = [](std::string_view name) {
        return "its body has a field named like a credential (" + std::string{name.substr(0, 64)} + ")";
    };
    if (*kind == sandbox_api::mailgun) {
        std::vector<std::pair<std::string, std::string>> fields;
        if (!rules::parse_form(content_type, body, fields)) {
            return "its form body cannot be read to check it for credentials";
        }
        for (const auto& [name, value] : fields) {
            const bool mail_field =
                name.size() > 2 && name[1] == ':' && std::string_view{"vhtoVHTO"}.find(name[0]) != std::string_view::npos;
            if (!mail_field && credential_name(name)) {
                return named(name);
            }
        }
        return {};
    }
    simdjson::dom::parser parser;
    simdjson::padded_string padded{body};
    simdjson::dom::element doc;
    if (parser.parse(padded).get(doc) != simdjson::SUCCESS) {
        return "its JSON body cannot be read to check it for credentials";
    }
    simdjson::dom::object top;
    if (doc.get(top) == simdjson::SUCCESS) {
        for (auto field : top) {
            if (credential_name(field.key)) {
                return named(field.key);
            }
        }
    }
    return {};
}

upstream_sandbox upstream_sandbox_of(std::string_view configured, std::string_view host) {
    if (configured == "sendgrid") {
        return upstream_sandbox::sendgrid;
    }
    if (configured == "mailgun") {
        return upstream_sandbox::mailgun;
    }
    if (configured == "none") {
        return upstream_sandbox::none;
    }
    if (configured == "any") {
        return upstream_sandbox::any;
    }
    if (host_is_or_under(host, "sendgrid.com") || host_is_or_under(host, "sendgrid.net")) {
        return upstream_sandbox::sendgrid;
    }
    if (host_is_or_under(host, "mailgun.net")) {
        return upstream_sandbox::mailgun;
    }
    // Any other host, loopback included: a sidecar's egress relay (Envoy, stunnel) on
    // 127.0.0.1 may front any API, and Mailgun's `o:testmode` on another API's `.../messages`
    // form (Twilio Conversations) would send for real under a "sandboxed" label. A relay or a
    // test fake says what it is (`sandbox_api`).
    return upstream_sandbox::none;
}

std::optional<sandbox_api> sandbox_api_for(std::string_view method, std::string_view path,
                                           std::string_view content_type, upstream_sandbox upstream) {
    const auto api = detect_sandbox_api(content_type);
    if (!api || method != "POST" || upstream == upstream_sandbox::none ||
        (upstream == upstream_sandbox::sendgrid && *api != sandbox_api::sendgrid) ||
        (upstream == upstream_sandbox::mailgun && *api != sandbox_api::mailgun)) {
        return std::nullopt;
    }
    auto ends_with = [&](std::string_view suffix) {
        return path.size() >= suffix.size() && iequals(path.substr(path.size() - suffix.size()), suffix);
    };
    if (*api == sandbox_api::sendgrid && ends_with("/mail/send")) {
        return api;
    }
    if (*api == sandbox_api::mailgun && ends_with("/messages")) {
        return api;
    }
    return std::nullopt;
}

std::optional<std::string> sendgrid_sandbox(std::string_view json_body, std::string* error) {
    simdjson::dom::parser parser;
    simdjson::padded_string padded{json_body};
    simdjson::dom::element doc;
    if (auto err = parser.parse(padded).get(doc); err) {
        *error = std::string{"the body is not valid JSON: "} + simdjson::error_message(err);
        return std::nullopt;
    }
    simdjson::dom::object top;
    if (doc.get(top) != simdjson::SUCCESS) {
        *error = "the body is not a JSON object";
        return std::nullopt;
    }
    // Every value is re-emitted through simdjson's minifier (exact, whitespace removed);
    // only mail_settings.sandbox_mode is replaced. Keys are matched as a case-insensitive
    // upstream (Go) matches them (core/json_key.hpp), so a "Mail_Settings" or "SANDBOX_MODE"
    // that such an upstream would read cannot carry "enable": false past the rewrite; and an
    // exact `mail_settings` is always there for an upstream that compares bytes.
    std::string out = "{";
    bool merged = false;
    for (auto field : top) {
        if (out.size() > 1) {
            out += ',';
        }
        out += cfg::quote(field.key);
        out += ':';
        if (!json_key::matches(field.key, "mail_settings")) {
            out += simdjson::minify(field.value);
            continue;
        }
        simdjson::dom::object ms;
        if (field.value.get(ms) != simdjson::SUCCESS) {
            *error = "mail_settings is not an object";
            return std::nullopt;
        }
        out += '{';
        for (auto f : ms) {
            if (json_key::matches(f.key, "sandbox_mode")) {
                continue;
            }
            out += cfg::quote(f.key);
            out += ':';
            out += simdjson::minify(f.value);
            out += ',';
        }
        out += "\"sandbox_mode\":{\"enable\":true}}";
        merged = merged || field.key == "mail_settings";
    }
    if (!merged) {
        if (out.size() > 1) {
            out += ',';
        }
        out += "\"mail_settings\":{\"sandbox_mode\":{\"enable\":true}}";
    }
    out += '}';
    return out;
}

namespace {

std::optional<std::string> mailgun_testmode_rewrite(std::string_view body, std::string_view content_type,
                                                    std::string* error) {
    const auto mt = media_type(content_type);
    if (iequals(mt, "application/x-www-form-urlencoded")) {
        if (body.find(';') != std::string_view::npos) {
            // `a=b;o%3Atestmode=no`: one field here, two where ';' also separates fields.
            *error = "a raw ';' in the form reads two ways (some servers split fields at it too)";
            return std::nullopt;
        }
        std::string out;
        std::string_view rest = body;
        while (!rest.empty()) {
            const auto amp = rest.find('&');
            const auto pair = rest.substr(0, amp);
            const auto eq = pair.find('=');
            if (!iequals(url_decode(pair.substr(0, eq)), "o:testmode") && !pair.empty()) {
                if (!out.empty()) {
                    out += '&';
                }
                out += pair;
            }
            rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
        }
        if (!out.empty()) {
            out += '&';
        }
        out += "o%3Atestmode=yes";
        return out;
    }
    if (iequals(mt, "multipart/form-data")) {
        const std::string boundary = boundary_of(content_type);
        if (boundary.empty()) {
            *error = "multipart body without a boundary";
            return std::nullopt;
        }
        const std::string delim = "--" + boundary;
        // Drop any o:testmode part the client sent, then add ours before the closing delimiter.
        std::string out;
        std::size_t pos = body.find(delim);
        if (pos == std::string_view::npos) {
            *error = "multipart body has no part";
            return std::nullopt;
        }
        out.append(body.substr(0, pos));  // preamble
        for (;;) {
            const auto after = pos + delim.size();
            if (body.substr(after, 2) == "--") {
                out += "--" + boundary + "\r\nContent-Disposition: form-data; name=\"o:testmode\"\r\n\r\nyes\r\n";
                out.append(body.substr(pos));  // closing delimiter and epilogue
                return out;
            }
            const auto next = body.find("\r\n" + delim, after);
            if (next == std::string_view::npos) {
                *error = "multipart body is not terminated";
                return std::nullopt;
            }
            const auto part = body.substr(pos, next + 2 - pos);
            const auto head_end = part.find("\r\n\r\n");
            const auto head = part.substr(0, head_end);
            const bool is_testmode = head.find("name=\"o:testmode\"") != std::string_view::npos;
            if (!is_testmode) {
                out.append(part);
            }
            pos = next + 2;
        }
    }
    *error = "Mailgun test mode needs a form-encoded or multipart body";
    return std::nullopt;
}

}  // namespace

// The rewrite, then a check of what it wrote with the parser the guards use (which reads
// as upstream parsers do): every field of the request is still there, and o:testmode is
// there exactly once, as "yes". A body where that cannot be made certain (a part written
// `Name="o:testmode"`, a malformed body) is not forwarded.
std::optional<std::string> mailgun_testmode(std::string_view body, std::string_view content_type, std::string* error,
                                            std::string_view query) {
    // The name in any case: an API that folds it would read a second switch.
    auto is_testmode = [](const auto& field) { return iequals(field.first, "o:testmode"); };
    if (query.find(';') != std::string_view::npos) {
        *error = "a raw ';' in the query string reads two ways (some servers split fields at it too)";
        return std::nullopt;
    }
    std::vector<std::pair<std::string, std::string>> in_query;
    rules::parse_form("application/x-www-form-urlencoded", query, in_query);
    if (std::any_of(in_query.begin(), in_query.end(), is_testmode)) {
        *error = "o:testmode is in the query string, where the body's cannot override it with certainty";
        return std::nullopt;
    }
    // A body a server may read as another form (its charset one that does not keep ASCII,
    // where an encoded `o:testmode=no` is not the field this rewrite replaces): not forwarded.
    if (auto why = rules::unreadable_form(content_type, body); !why.empty()) {
        *error = std::move(why);
        return std::nullopt;
    }
    auto out = mailgun_testmode_rewrite(body, content_type, error);
    if (!out) {
        return out;
    }
    std::vector<std::pair<std::string, std::string>> before;
    std::vector<std::pair<std::string, std::string>> after;
    if (!rules::parse_form(content_type, body, before) || !rules::parse_form(content_type, *out, after)) {
        *error = "the form body is malformed";
        return std::nullopt;
    }
    const auto testmode = std::find_if(after.begin(), after.end(), is_testmode);
    const bool exactly_yes = testmode != after.end() && testmode->second == "yes" &&
                             std::count_if(after.begin(), after.end(), is_testmode) == 1;
    const bool all_kept = after.size() - 1 == before.size() - static_cast<std::size_t>(std::count_if(
                                                                 before.begin(), before.end(), is_testmode));
    if (!exactly_yes || !all_kept) {
        *error = "its o:testmode field cannot be replaced with certainty";
        return std::nullopt;
    }
    return out;
}

}  // namespace bb::proxy
