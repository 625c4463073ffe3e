// Parsing of `failure_modes` and `rules` into a rule_set. Every cross-field check lives here so
// the engine can trust what it is given (STYLE: config is parsed once, with all errors).

#include <algorithm>
#include <cctype>
#include <charconv>
#include <set>

#include "core/credential.hpp"
#include "core/host_name.hpp"
#include "core/http_token.hpp"
#include "core/json_key.hpp"
#include "rules/agent_constraints.hpp"
#include "rules/guardrails.hpp"
#include "rules/presets/presets.hpp"
#include "rules/rule_set.hpp"

namespace bb::rules {

std::string_view to_string(severity s) {
    switch (s) {
        case severity::sev1: return "sev1";
        case severity::sev2: return "sev2";
        case severity::sev3: return "sev3";
        case severity::sev4: return "sev4";
    }
    return "sev?";
}

std::string_view to_string(condition_kind c) {
    switch (c) {
        case condition_kind::limit: return "limit";
        case condition_kind::baseline: return "baseline";
        case condition_kind::ratio: return "ratio";
        case condition_kind::guard: return "guard";
    }
    return "?";
}

const rule* rule_set::find_rule(std::string_view id) const {
    for (const auto& r : rules) {
        if (r.id == id) {
            return &r;
        }
    }
    return nullptr;
}

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) {
        s.remove_prefix(1);
    }
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) {
        s.remove_suffix(1);
    }
    return s;
}

bool valid_id(std::string_view id) {
    if (id.empty() || id.size() > 128) {
        return false;
    }
    return std::all_of(id.begin(), id.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == ':';
    });
}

bool name_char(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '@' || c == '$';
}

std::uint64_t fnv1a(std::string_view s) {
    std::uint64_t h = 1469598103934665603ull;
    for (const char c : s) {
        h ^= static_cast<unsigned char>(c);
        h *= 1099511628211ull;
    }
    return h;
}

bool fail(std::string* error, std::string message) {
    if (error) {
        *error = std::move(message);
    }
    return false;
}

void skip_spaces(std::string_view text, std::size_t& i) {
    while (i < text.size() && text[i] == ' ') {
        ++i;
    }
}

// The text between the quote at text[i] (' or ") and the next of the same; i goes past it.
// nullopt when it is not closed.
std::optional<std::string_view> quoted(std::string_view text, std::size_t& i) {
    const char q = text[i++];
    const std::size_t start = i;
    while (i < text.size() && text[i] != q) {
        ++i;
    }
    if (i >= text.size()) {
        return std::nullopt;
    }
    return text.substr(start, i++ - start);
}

// `?(@.name=='value')` at text[i] (inside the brackets); on success i is at the `]`.
bool parse_filter(std::string_view text, std::size_t& i, path_segment& seg, std::string* error) {
    auto expect = [&](std::string_view what) {
        skip_spaces(text, i);
        if (text.substr(i, what.size()) != what) {
            fail(error, "expected \"" + std::string{what} + "\" at offset " + std::to_string(i) +
                            " (a filter is written [?(@.name=='value')])");
            return false;
        }
        i += what.size();
        return true;
    };
    ++i;  // '?'
    if (!expect("(") || !expect("@.")) {
        return false;
    }
    const std::size_t start = i;
    while (i < text.size() && name_char(text[i])) {
        ++i;
    }
    if (i == start) {
        fail(error, "expected a name after \"@.\" at offset " + std::to_string(start));
        return false;
    }
    seg.names.push_back(json_key::fold(text.substr(start, i - start)));
    if (!expect("==")) {
        return false;
    }
    skip_spaces(text, i);
    if (i >= text.size() || (text[i] != '\'' && text[i] != '"')) {
        fail(error, "expected a quoted string after \"==\" at offset " + std::to_string(i));
        return false;
    }
    const auto value = quoted(text, i);
    if (!value) {
        fail(error, "unterminated quoted string in a filter");
        return false;
    }
    seg.value = std::string{*value};
    if (!expect(")")) {
        return false;
    }
    skip_spaces(text, i);
    seg.k = path_segment::kind::filter;
    return true;
}

}  // namespace

std::optional<json_path> parse_json_path(std::string_view text, std::string* error) {
    json_path p;
    p.text = std::string{text};
    if (text.empty() || text[0] != '$') {
        fail(error, "a JSON path starts with \"$\"");
        return std::nullopt;
    }
    std::size_t i = 1;
    while (i < text.size()) {
        path_segment seg;
        if (text[i] == '.') {
            ++i;
            if (i < text.size() && text[i] == '*') {
                seg.k = path_segment::kind::wildcard;
                ++i;
            } else {
                const std::size_t start = i;
                while (i < text.size() && name_char(text[i])) {
                    ++i;
                }
                if (i == start) {
                    fail(error, "expected a name after \".\" at offset " + std::to_string(start));
                    return std::nullopt;
                }
                seg.names.push_back(json_key::fold(text.substr(start, i - start)));
            }
        } else if (text[i] == '[') {
            ++i;
            if (i < text.size() && text[i] == '*') {
                ++i;
                seg.k = path_segment::kind::wildcard;
            } else if (i < text.size() && text[i] == '?') {
                if (!parse_filter(text, i, seg, error)) {
                    return std::nullopt;
                }
            } else if (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
                const std::size_t start = i;
                while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
                    ++i;
                }
                seg.k = path_segment::kind::index;
                if (i - start > 9) {
                    fail(error, "array index too large");
                    return std::nullopt;
                }
                std::from_chars(text.data() + start, text.data() + i, seg.index);
            } else {
                // ['a'] or ['to','cc','bcc'] (also double quotes).
                while (true) {
                    skip_spaces(text, i);
                    if (i >= text.size() || (text[i] != '\'' && text[i] != '"')) {
                        fail(error, "expected *, an index or a quoted name inside [] at offset " + std::to_string(i));
                        return std::nullopt;
                    }
                    const auto name = quoted(text, i);
                    if (!name) {
                        fail(error, "unterminated quoted name");
                        return std::nullopt;
                    }
                    seg.names.push_back(json_key::fold(*name));
                    skip_spaces(text, i);
                    if (i < text.size() && text[i] == ',') {
                        ++i;
                        continue;
                    }
                    break;
                }
            }
            if (i >= text.size() || text[i] != ']') {
                fail(error, "expected \"]\" at offset " + std::to_string(i));
                return std::nullopt;
            }
            ++i;
        } else {
            fail(error, std::string{"unexpected "} + text[i] + " at offset " + std::to_string(i));
            return std::nullopt;
        }
        p.segments.push_back(std::move(seg));
        if (p.segments.size() > 32) {
            fail(error, "a JSON path has at most 32 steps");
            return std::nullopt;
        }
    }
    return p;
}

namespace {

std::optional<term> parse_term(std::string_view t, std::string* error) {
    term out;
    t = trim(t);
    if (t.empty()) {
        fail(error, "empty term");
        return std::nullopt;
    }
    if (std::isdigit(static_cast<unsigned char>(t[0]))) {
        double v = 0;
        auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
        if (ec != std::errc{} || p != t.data() + t.size()) {
            fail(error, "\"" + std::string{t} + "\" is not a number");
            return std::nullopt;
        }
        out.kind = term_kind::constant;
        out.constant = v;
        return out;
    }
    static const std::pair<std::string_view, term_kind> words[] = {
        {"requests", term_kind::requests},   {"responses", term_kind::responses},
        {"body_bytes", term_kind::body_bytes}, {"csv_rows", term_kind::csv_rows},
        {"bulk_batch_records", term_kind::bulk_batch_records},
        {"response_bytes", term_kind::response_bytes},
        {"latency_ms", term_kind::latency_ms}};
    for (const auto& [w, k] : words) {
        if (t == w) {
            out.kind = k;
            return out;
        }
    }
    if (t.starts_with("status:")) {
        const std::string_view s = t.substr(7);
        out.kind = term_kind::status;
        if (s.size() == 3 && s[0] >= '1' && s[0] <= '5' && s[1] == 'x' && s[2] == 'x') {
            out.status_lo = (s[0] - '0') * 100;
            out.status_hi = out.status_lo + 99;
            return out;
        }
        int code = 0;
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), code);
        if (ec == std::errc{} && p == s.data() + s.size() && code >= 100 && code <= 599) {
            out.status_lo = out.status_hi = code;
            return out;
        }
        fail(error, "\"" + std::string{t} + "\" is not a status (use status:5xx or status:429)");
        return std::nullopt;
    }
    const auto open = t.find('(');
    if (open == std::string_view::npos || t.back() != ')') {
        fail(error, "unknown term \"" + std::string{t} +
                        "\" (use requests, responses, body_bytes, csv_rows, csv_rows(form:NAME), bulk_batch_records, "
                        "response_bytes, "
                        "latency_ms, status:5xx, count(...), sum(...), distinct(...) or a number)");
        return std::nullopt;
    }
    const std::string_view fn = trim(t.substr(0, open));
    const std::string_view arg = trim(t.substr(open + 1, t.size() - open - 2));
    if (fn == "csv_rows") {
        // The rows of the CSV in a form field: a Bulk API 2.0 job created with its data in
        // one multipart request (the part named `content`).
        out.kind = term_kind::csv_rows;
        out.source = source_kind::form;
        out.field = arg.starts_with("form:") ? std::string{trim(arg.substr(5))} : std::string{};
        if (!arg.starts_with("form:") || out.field.empty()) {
            fail(error, "csv_rows(...) takes a form field, csv_rows(form:NAME); \"" + std::string{arg} +
                            "\" is not one (bare csv_rows counts the whole body)");
            return std::nullopt;
        }
        return out;
    }
    if (fn == "count") {
        out.kind = term_kind::count;
    } else if (fn == "sum") {
        out.kind = term_kind::sum;
    } else if (fn == "distinct") {
        out.kind = term_kind::distinct;
    } else {
        fail(error, "unknown function \"" + std::string{fn} + "\" (use count, sum, distinct or csv_rows)");
        return std::nullopt;
    }
    std::string_view src = arg;
    if (src.starts_with("form:") || src.starts_with("query:")) {
        const bool form = src.starts_with("form:");
        out.source = form ? source_kind::form : source_kind::query;
        out.field = std::string{trim(src.substr(form ? 5 : 6))};
        if (out.field.empty()) {
            fail(error, "missing field name in \"" + std::string{arg} + "\"");
            return std::nullopt;
        }
        return out;
    }
    out.source = source_kind::request_json;
    if (src.starts_with("response:")) {
        out.source = source_kind::response_json;
        src = trim(src.substr(9));
    } else if (src.starts_with("mime:")) {
        if (out.kind == term_kind::sum) {
            fail(error, "sum(mime:...) is not defined: mime: reads addresses (use count or distinct)");
            return std::nullopt;
        }
        out.source = source_kind::mime;
        src = trim(src.substr(5));
        // The messages in form fields: as written (Mailgun messages.mime's `message`) or in
        // base64 (SES v1 SendRawEmail's `RawMessage.Data`).
        out.base64 = src.starts_with("base64:");
        if (out.base64 && !src.substr(7).starts_with("form:")) {
            fail(error, "mime:base64: reads a form field: mime:base64:form:NAME (a JSON mime: path is base64 already)");
            return std::nullopt;
        }
        if (const auto f = src.substr(out.base64 ? 7 : 0); f.starts_with("form:")) {
            out.field = std::string{trim(f.substr(5))};
            if (out.field.empty()) {
                fail(error, "missing field name in \"" + std::string{arg} + "\"");
                return std::nullopt;
            }
            return out;
        }
    } else {
        // Sources that only count: each value stands for some number of records.
        struct counting_source {
            std::string_view prefix;
            source_kind kind;
            std::string_view what;
        };
        static constexpr counting_source counting[] = {
            {"url_ids:", source_kind::url_ids, "counts the records URLs name"},
            {"sub_records:", source_kind::sub_records, "counts the records subrequests write"},
            {"addresses:", source_kind::addresses, "counts the addresses of address lists"},
        };
        for (const auto& c : counting) {
            if (src.starts_with(c.prefix)) {
                if (out.kind != term_kind::count) {
                    fail(error, std::string{c.prefix} + " " + std::string{c.what} + " (use count)");
                    return std::nullopt;
                }
                out.source = c.kind;
                src = trim(src.substr(c.prefix.size()));
                break;
            }
        }
    }
    std::string perr;
    auto p = parse_json_path(src, &perr);
    if (!p) {
        fail(error, "\"" + std::string{src} + "\": " + perr);
        return std::nullopt;
    }
    out.path = std::move(*p);
    return out;
}

}  // namespace

std::optional<expr> parse_expr(std::string_view text, std::string* error) {
    expr e;
    e.text = std::string{trim(text)};
    // Split on '+' outside parentheses and quotes.
    int depth = 0;
    char quote_char = 0;
    std::size_t start = 0;
    std::vector<std::string_view> parts;
    for (std::size_t i = 0; i <= text.size(); ++i) {
        const char c = i < text.size() ? text[i] : '+';
        if (quote_char) {
            if (c == quote_char) {
                quote_char = 0;
            }
            if (i < text.size()) {
                continue;
            }
        }
        if (c == '\'' || c == '"') {
            quote_char = c;
        } else if (c == '(' || c == '[') {
            ++depth;
        } else if (c == ')' || c == ']') {
            --depth;
        } else if (c == '+' && depth == 0) {
            parts.push_back(text.substr(start, i - start));
            start = i + 1;
        }
    }
    if (depth != 0 || quote_char) {
        fail(error, "unbalanced brackets or quotes");
        return std::nullopt;
    }
    if (parts.size() > 16) {
        fail(error, "at most 16 terms");
        return std::nullopt;
    }
    for (auto part : parts) {
        auto t = parse_term(part, error);
        if (!t) {
            return std::nullopt;
        }
        switch (t->kind) {
            case term_kind::constant: break;
            case term_kind::requests:
            case term_kind::body_bytes: e.request_side = true; break;
            case term_kind::csv_rows:
                e.request_side = true;
                e.needs_form |= !t->field.empty();
                break;
            case term_kind::bulk_batch_records: e.request_side = true; break;
            case term_kind::responses:
            case term_kind::response_bytes:
            case term_kind::latency_ms:
            case term_kind::status: e.response_side = true; break;
            case term_kind::count:
            case term_kind::sum:
            case term_kind::distinct:
                if (t->source == source_kind::response_json) {
                    e.response_side = true;
                    e.needs_response_json = true;
                } else {
                    e.request_side = true;
                    const bool mime_form = t->source == source_kind::mime && !t->field.empty();
                    e.needs_request_json |= t->source == source_kind::request_json ||
                                            (t->source == source_kind::mime && !mime_form) ||
                                            t->source == source_kind::url_ids || t->source == source_kind::sub_records ||
                                            t->source == source_kind::addresses;
                    e.needs_form |= t->source == source_kind::form || mime_form;
                }
                break;
        }
        e.terms.push_back(std::move(*t));
    }
    if (e.request_side && e.response_side) {
        fail(error, "mixes request and response measures; use one rule for each");
        return std::nullopt;
    }
    return e;
}

std::optional<path_template> parse_path_template(std::string_view text, std::string* error) {
    path_template t;
    t.text = std::string{text};
    if (text.empty() || text[0] != '/') {
        fail(error, "a path template starts with \"/\"");
        return std::nullopt;
    }
    std::string_view rest = text.substr(1);
    std::set<std::string, std::less<>> names;
    while (true) {
        const auto slash = rest.find('/');
        const std::string_view seg = rest.substr(0, slash);
        path_template::segment s;
        if (seg.size() >= 2 && seg.front() == '{' && seg.back() == '}') {
            std::string_view inner = seg.substr(1, seg.size() - 2);
            const auto colon = inner.find(':');
            s.param = true;
            s.name = std::string{inner.substr(0, colon)};
            if (!valid_id(s.name)) {
                fail(error, "bad parameter name in \"" + std::string{seg} + "\"");
                return std::nullopt;
            }
            if (!names.insert(s.name).second) {
                fail(error, "parameter {" + s.name + "} appears twice");
                return std::nullopt;
            }
            if (colon != std::string_view::npos) {
                std::string_view alts = inner.substr(colon + 1);
                while (true) {
                    const auto bar = alts.find('|');
                    const auto alt = alts.substr(0, bar);
                    if (alt.empty()) {
                        fail(error, "empty alternative in \"" + std::string{seg} + "\"");
                        return std::nullopt;
                    }
                    s.allowed.emplace_back(alt);
                    if (bar == std::string_view::npos) {
                        break;
                    }
                    alts.remove_prefix(bar + 1);
                }
            }
            ++t.param_count;
        } else if (seg.find_first_of("{}") != std::string_view::npos) {
            fail(error, "a parameter must be a whole segment: \"" + std::string{seg} + "\"");
            return std::nullopt;
        } else {
            s.literal = std::string{seg};
        }
        t.segments.push_back(std::move(s));
        if (t.segments.size() > 32) {
            fail(error, "at most 32 segments");
            return std::nullopt;
        }
        if (slash == std::string_view::npos) {
            break;
        }
        rest.remove_prefix(slash + 1);
    }
    return t;
}

namespace {

// Parses a measure value: "EXPR" (sum) or {"sum"|"avg"|"per_request": "EXPR"}. "preset" as the
// expression stands for the preset's measure.
struct measure_text {
    aggregate agg = aggregate::sum;
    std::string text;
};

std::optional<measure_text> read_measure(simdjson::dom::element e, const std::string& path, cfg::errors& errs) {
    std::string_view s;
    if (e.get(s) == simdjson::SUCCESS) {
        return measure_text{aggregate::sum, std::string{s}};
    }
    if (e.type() != simdjson::dom::element_type::OBJECT) {
        errs.add(path, "must be an expression string or an object such as {\"sum\": \"count($.inputs[*])\"}");
        return std::nullopt;
    }
    cfg::object_reader r{e, path, errs};
    std::optional<measure_text> out;
    int found = 0;
    for (const auto& [name, agg] : {std::pair{"sum", aggregate::sum}, std::pair{"avg", aggregate::avg},
                                    std::pair{"per_request", aggregate::per_request}}) {
        if (auto v = r.string(name)) {
            ++found;
            out = measure_text{agg, *v};
        }
    }
    r.finish();
    if (found != 1) {
        if (found > 1) {
            errs.add(path, "give exactly one of sum, avg or per_request");
        } else {
            errs.add(path, "needs one of sum, avg or per_request");
        }
        return std::nullopt;
    }
    return out;
}

std::optional<key_part> parse_key_part(std::string_view text, std::string* error) {
    key_part k;
    if (text == "agent") {
        k.kind = key_kind::agent;
    } else if (text == "route") {
        k.kind = key_kind::route;
    } else if (text == "method") {
        k.kind = key_kind::method;
    } else if (text == "host") {
        k.kind = key_kind::host;
    } else if (text.starts_with("header:") && text.size() > 7) {
        k.kind = key_kind::header;
        k.name = lower(text.substr(7));
    } else if (text.starts_with("query:") && text.size() > 6) {
        k.kind = key_kind::query;
        k.name = std::string{text.substr(6)};
    } else if (text.starts_with("json:")) {
        k.kind = key_kind::json;
        auto p = parse_json_path(text.substr(5), error);
        if (!p) {
            return std::nullopt;
        }
        k.path = std::move(*p);
    } else if (text.starts_with("path:") && text.size() > 5) {
        k.kind = key_kind::path_param;
        std::string_view name = text.substr(5);
        if (name.size() >= 2 && name.front() == '{' && name.back() == '}') {
            name = name.substr(1, name.size() - 2);
        }
        k.name = std::string{name};
    } else {
        fail(error, "\"" + std::string{text} +
                        "\" is not a key (use header:NAME, agent, route, method, host, json:$.path, query:NAME or "
                        "path:{param})");
        return std::nullopt;
    }
    if ((k.kind == key_kind::header || k.kind == key_kind::query) && credential_name(k.name)) {
        // Its value would become a breaker instance name: in logs, the admin API, metrics
        // and alerts (Slack, PagerDuty), in clear.
        fail(error, "\"" + std::string{text} +
                        "\" carries a credential: a key from it would show the secret in breaker names, logs and "
                        "alerts (key by agent instead)");
        return std::nullopt;
    }
    return k;
}

// Whether some path that `t` matches (as engine.cpp's match_path reads it: literals and
// allowed values without case, one trailing slash, a format suffix on the last segment)
// starts with `prefix`. Errs towards yes: only a prefix that certainly excludes every such
// path is refused (a template narrowed by a prefix, `/crm/v3/objects/{object}/...` under
// `/crm/v3/objects/contacts`, is a rule's way to pick one object).
bool prefix_can_hold(const path_template& t, std::string_view prefix) {
    if (prefix.empty() || prefix.front() != '/') {
        return true;  // refused on its own
    }
    std::string_view rest = prefix.substr(1);
    for (std::size_t i = 0;; ++i) {
        const auto slash = rest.find('/');
        const bool whole = slash != std::string_view::npos;  // a segment the path must end with '/' after
        const std::string_view seg = rest.substr(0, slash);
        if (i >= t.segments.size()) {
            return !whole && seg.empty();  // only the one trailing slash
        }
        const auto& ts = t.segments[i];
        const bool last = i + 1 == t.segments.size();
        auto fits = [&](std::string_view value) {
            if (!whole) {
                return istarts_with(value, seg) || (last && istarts_with(seg, value));
            }
            return iequals(seg, value) || (last && iequals(without_format_suffix(seg), value));
        };
        if (ts.param) {
            if ((whole && seg.empty()) ||
                (!ts.allowed.empty() && std::none_of(ts.allowed.begin(), ts.allowed.end(), fits))) {
                return false;
            }
        } else if (!fits(ts.literal)) {
            return false;
        }
        if (!whole) {
            return true;
        }
        rest.remove_prefix(slash + 1);
    }
}

void parse_match(simdjson::dom::element e, const std::string& path, match_spec& m, cfg::errors& errs) {
    cfg::object_reader r{e, path, errs};
    // As a route's match is checked (config.cpp): a rule whose match can never match is
    // a rule, or a guard, silently off.
    if (auto methods = r.strings("methods")) {
        for (std::size_t i = 0; i < methods->size(); ++i) {
            const auto& mth = (*methods)[i];
            if (!is_token(mth)) {
                errs.add_since_stored(cfg::child(r.path_of("methods"), i), cfg::quote(mth) + " is not an HTTP method");
            }
            std::string up = mth;
            for (auto& c : up) {
                c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
            }
            m.methods.push_back(std::move(up));
        }
    }
    if (auto p = r.string("path")) {
        std::string err;
        auto t = parse_path_template(*p, &err);
        if (t) {
            m.path = std::move(*t);
        } else {
            errs.add(r.path_of("path"), cfg::quote(*p) + " is not a path template: " + err);
        }
    }
    if (auto p = r.string("path_prefix")) {
        if (p->empty() || p->front() != '/') {
            errs.add_since_stored(r.path_of("path_prefix"), cfg::quote(*p) + " must start with / (request paths do)");
        }
        m.path_prefix = *p;
        if (m.path && !prefix_can_hold(*m.path, m.path_prefix)) {
            // Both must hold (engine.cpp): a rule, or a guard, silently off.
            errs.add_since_stored(r.path_of("path_prefix"), cfg::quote(*p) + " starts no path that " +
                                                                cfg::quote(m.path->text) +
                                                                " matches: the rule could never apply");
        }
    }
    if (auto h = r.string("host")) {
        // As the proxy hands hosts to rules (lower case, core/host_name.hpp): a rule naming
        // "[::1]" or "api.sendgrid.com." still matches. Without a port: rules see none.
        m.host = lower(host_name(*h));
        if (m.host.find_first_of("/@?# \t") != std::string::npos) {
            errs.add_since_stored(r.path_of("host"), cfg::quote(*h) + " is not a host name");
        } else if (std::count(m.host.begin(), m.host.end(), ':') == 1 || h->find("]:") != std::string::npos) {
            errs.add_since_stored(r.path_of("host"), cfg::quote(*h) + " names a port: match.host is a host alone (rules see "
                                                         "the host without its port)");
        }
    }
    if (auto hs = r.object("headers")) {
        simdjson::dom::object obj = hs->get_object().value_unsafe();
        for (auto field : obj) {
            std::string_view v;
            if (field.value.get(v) != simdjson::SUCCESS) {
                errs.add(cfg::child(r.path_of("headers"), field.key), "must be a string (\"*\" for any value)");
                continue;
            }
            // A name given twice (in any case) is two conditions on one header, which no
            // request meets when their values differ: refused as any key given twice is
            // (a version stored before this check is read as it was).
            const std::string name = lower(field.key);
            if (std::any_of(m.headers.begin(), m.headers.end(), [&](const auto& h) { return h.first == name; })) {
                errs.add_since_stored(cfg::child(r.path_of("headers"), field.key),
                                      "is given twice (header names compare without case)");
            }
            m.headers.emplace_back(name, std::string{v});
        }
    }
    r.finish();
}

// `with_max_keys` false: the meter_fingerprint's text (a change of max_keys alone keeps the
// meter, under the new bound).
std::string canonical(const rule& r, bool with_max_keys = true) {
    std::string c;
    c += "route=" + r.route;
    c += ";methods=";
    for (const auto& m : r.match.methods) {
        c += m + ",";
    }
    // Not path_from_preset: a preset's path matching the upstream's path too counts requests
    // that were missed, it does not change what the meter means (and a changed fingerprint
    // would drop every preset rule's saved meters and baselines at the upgrade).
    c += ";path=" + (r.match.path ? r.match.path->text : std::string{});
    c += ";prefix=" + r.match.path_prefix + ";host=" + r.match.host + ";headers=";
    for (const auto& [n, v] : r.match.headers) {
        c += n + "=" + v + ",";
    }
    c += ";key=";
    for (const auto& k : r.key) {
        c += std::to_string(static_cast<int>(k.kind)) + ":" + k.name + k.path.text + ",";
    }
    c += ";agg=" + std::to_string(static_cast<int>(r.agg));
    c += ";measure=" + r.measure.text;
    c += ";of=" + (r.ratio_of ? r.ratio_of->text : std::string{});
    c += ";window=" + std::to_string(r.window.count()) + ";res=" + std::to_string(r.resolution.count());
    c += ";cond=" + std::string{to_string(r.condition)};
    c += ";alpha=" + std::to_string(r.baseline.alpha);
    if (with_max_keys) {
        c += ";max_keys=" + std::to_string(r.max_keys);
    }
    if (r.guard) {
        c += ";guard=" + r.guard->canonical;
    }
    return c;
}

failure_mode parse_failure_mode(simdjson::dom::element e, const std::string& path, cfg::errors& errs) {
    failure_mode fm;
    cfg::object_reader r{e, path, errs};
    if (auto id = r.string("id", true)) {
        if (!valid_id(*id)) {
            errs.add(r.path_of("id"), cfg::quote(*id) + " is not a valid id (letters, digits, - _ . :, at most 128)");
        }
        fm.id = *id;
    }
    if (auto t = r.string("title", true)) {
        fm.title = *t;
    }
    if (auto s = r.string("severity", true)) {
        if (*s == "sev1") {
            fm.sev = severity::sev1;
        } else if (*s == "sev2") {
            fm.sev = severity::sev2;
        } else if (*s == "sev3") {
            fm.sev = severity::sev3;
        } else if (*s == "sev4") {
            fm.sev = severity::sev4;
        } else {
            errs.add(r.path_of("severity"), cfg::quote(*s) + " is not a severity (sev1, sev2, sev3 or sev4)");
        }
    }
    fm.ack_sla = r.duration("ack_sla", false, milliseconds{1});
    fm.contain_sla = r.duration("contain_sla", false, milliseconds{1});
    if (auto o = r.string("owner")) {
        fm.owner = *o;
    }
    if (auto rb = r.string("runbook")) {
        fm.runbook = *rb;
    }
    r.string("description");
    r.finish();
    return fm;
}

// Default resolution: window/60 when that is whole milliseconds, else the largest bucket
// count up to 60 that divides the window.
std::size_t default_buckets(milliseconds window) {
    for (std::int64_t b = 60; b > 1; --b) {
        if (window.count() % b == 0) {
            return static_cast<std::size_t>(b);
        }
    }
    return 1;
}

void parse_rule(simdjson::dom::element e, const std::string& path, rule& out,
                const std::vector<failure_mode>& modes, const std::vector<std::string>& route_names,
                cfg::errors& errs) {
    cfg::object_reader r{e, path, errs};
    if (!r.is_object()) {
        return;
    }
    if (auto id = r.string("id", true)) {
        if (!valid_id(*id)) {
            errs.add(r.path_of("id"), cfg::quote(*id) + " is not a valid id (letters, digits, - _ . :, at most 128)");
        }
        out.id = *id;
    }
    r.string("description");
    if (auto route = r.string("route")) {
        if (std::find(route_names.begin(), route_names.end(), *route) == route_names.end()) {
            errs.add(r.path_of("route"), cfg::quote(*route) + " is not a configured route");
        }
        out.route = *route;
    }
    if (auto m = r.object("match")) {
        parse_match(*m, r.path_of("match"), out.match, errs);
    }

    // Preset: fills what the rule's match and measure leave open.
    const preset* pre = nullptr;
    if (auto p = r.string("preset")) {
        pre = find_preset(*p);
        if (!pre) {
            std::string names;
            for (const auto& known : presets()) {
                names += names.empty() ? "" : ", ";
                names += known.name;
            }
            errs.add(r.path_of("preset"), cfg::quote(*p) + " is not a preset (known: " + names + ")");
        } else {
            out.preset = *p;
            if (out.match.methods.empty()) {
                std::string_view ms = pre->methods;
                while (!ms.empty()) {
                    const auto comma = ms.find(',');
                    out.match.methods.emplace_back(ms.substr(0, comma));
                    ms = comma == std::string_view::npos ? std::string_view{} : ms.substr(comma + 1);
                }
            }
            if (!out.match.path && out.match.path_prefix.empty()) {
                out.match.path = parse_path_template(pre->path, nullptr);
                out.match.path_from_preset = true;
            }
        }
    }

    // A guard rule has no measure or window of its own (a duplicates guard has its window
    // inside the guard).
    const bool has_guard = r.has("guard");
    if (has_guard && r.has("measure")) {
        errs.add(r.path_of("measure"), "a guard rule has no measure");
    }
    if (has_guard && r.has("window")) {
        errs.add(r.path_of("window"), "a guard rule has no window (duplicates take theirs inside the guard)");
    }

    // Measure.
    measure_text mt{aggregate::sum, "requests"};
    bool measure_ok = true;
    if (auto m = r.value("measure")) {
        if (auto parsed = read_measure(*m, r.path_of("measure"), errs)) {
            mt = *parsed;
        } else {
            measure_ok = false;
        }
    } else if (pre && !has_guard) {
        mt.text = std::string{pre->measure};
    }
    if (measure_ok && mt.text == "preset") {
        if (pre) {
            mt.text = std::string{pre->measure};
        } else {
            errs.add(r.path_of("measure"), "\"preset\" needs the rule to name a preset");
            measure_ok = false;
        }
    }
    if (measure_ok) {
        std::string err;
        if (auto ex = parse_expr(mt.text, &err)) {
            out.measure = std::move(*ex);
            out.agg = mt.agg;
        } else {
            errs.add(r.path_of("measure"), cfg::quote(mt.text) + ": " + err);
            measure_ok = false;
        }
    }
    out.response_side = out.measure.response_side;

    // Key.
    if (auto kv = r.value("key")) {
        std::vector<std::pair<std::string, std::string>> texts;  // text, path
        std::string_view one;
        simdjson::dom::array arr;
        if (kv->get(one) == simdjson::SUCCESS) {
            texts.emplace_back(std::string{one}, r.path_of("key"));
        } else if (kv->get(arr) == simdjson::SUCCESS) {
            std::size_t i = 0;
            for (auto item : arr) {
                std::string_view s;
                if (item.get(s) != simdjson::SUCCESS) {
                    errs.add(cfg::child(r.path_of("key"), i), "must be a string");
                } else {
                    texts.emplace_back(std::string{s}, cfg::child(r.path_of("key"), i));
                }
                ++i;
            }
            if (i == 0 || i > 4) {
                errs.add(r.path_of("key"), "needs 1 to 4 parts");
            }
        } else {
            errs.add(r.path_of("key"), "must be a string or an array of strings");
        }
        for (const auto& [text, kpath] : texts) {
            std::string err;
            auto k = parse_key_part(text, &err);
            if (!k) {
                errs.add(kpath, err);
                continue;
            }
            if (k->kind == key_kind::path_param) {
                bool found = false;
                if (out.match.path) {
                    std::size_t pi = 0;
                    for (const auto& seg : out.match.path->segments) {
                        if (seg.param) {
                            if (seg.name == k->name) {
                                k->param_index = pi;
                                found = true;
                            }
                            ++pi;
                        }
                    }
                }
                if (!found) {
                    errs.add(kpath, cfg::quote(text) + " names no parameter of the rule's match.path" +
                                        (out.match.path ? " " + cfg::quote(out.match.path->text) : std::string{" (none set)"}));
                    continue;
                }
            }
            out.needs_request_json |= k->kind == key_kind::json;
            out.key.push_back(std::move(*k));
        }
    }
    out.needs_request_json |= out.measure.needs_request_json;

    // Window.
    const auto window = r.duration("window", false, milliseconds{1});
    const auto resolution = r.duration("resolution", false, milliseconds{1});
    if (measure_ok && out.agg == aggregate::per_request) {
        if (window) {
            errs.add(r.path_of("window"), "a per_request measure has no window");
        }
        if (out.response_side) {
            errs.add(r.path_of("measure"), "response measures need a window (use sum or avg)");
        }
    } else if (window) {
        out.window = *window;
        if (resolution) {
            if (window->count() % resolution->count() != 0) {
                errs.add(r.path_of("resolution"), cfg::quote(cfg::format_duration(*resolution)) +
                                                      " does not divide the window " + cfg::quote(cfg::format_duration(*window)));
            } else if (window->count() / resolution->count() > 3600) {
                errs.add(r.path_of("resolution"), "too fine: at most 3600 buckets per window");
            } else {
                out.resolution = *resolution;
                out.buckets = static_cast<std::size_t>(window->count() / resolution->count());
            }
        } else {
            out.buckets = default_buckets(*window);
            out.resolution = milliseconds{window->count() / static_cast<std::int64_t>(out.buckets)};
        }
    } else if (measure_ok && !r.has("window") && !has_guard) {
        errs.add(r.path_of("window"), "is required (or use {\"per_request\": ...} as the measure)");
    }

    // Condition: exactly one of limit, baseline, ratio.
    int conditions = 0;
    if (auto l = r.number("limit", false, 0)) {
        ++conditions;
        out.condition = condition_kind::limit;
        out.limit = *l;
    }
    if (auto b = r.object("baseline")) {
        ++conditions;
        out.condition = condition_kind::baseline;
        cfg::object_reader br{*b, r.path_of("baseline"), errs};
        out.baseline.factor = br.number("factor", false, 1.0);
        out.baseline.sigma = br.number("sigma", false, 0.0);
        if (auto w = br.duration("warmup")) {
            out.baseline.warmup = *w;
        }
        if (auto ms = br.integer("min_samples", false, 1, 100000)) {
            out.baseline.min_samples = static_cast<std::uint32_t>(*ms);
        }
        if (auto a = br.number("alpha", false, 0.0001, 1.0)) {
            out.baseline.alpha = *a;
        }
        if (auto mv = br.number("min_value", false, 0.0)) {
            out.baseline.min_value = *mv;
        }
        if (!out.baseline.factor && !out.baseline.sigma && br.is_object()) {
            errs.add(r.path_of("baseline"), "needs factor and/or sigma");
        }
        br.finish();
        if (out.agg != aggregate::sum) {
            errs.add(r.path_of("measure"), "a baseline needs a summed measure");
        }
        if (resolution) {
            errs.add(r.path_of("resolution"), "a baseline compares whole windows; it takes no resolution");
        }
        if (out.window.count() > 0) {
            out.resolution = out.window;
            out.buckets = 1;
        }
    }
    if (auto ra = r.object("ratio")) {
        ++conditions;
        out.condition = condition_kind::ratio;
        cfg::object_reader rr{*ra, r.path_of("ratio"), errs};
        if (auto mx = rr.number("max", true, 0.0)) {
            out.limit = *mx;
        }
        std::string of_text = out.response_side ? "responses" : "requests";
        if (auto of = rr.string("of")) {
            of_text = *of;
        }
        std::string err;
        if (auto ex = parse_expr(of_text, &err)) {
            if (measure_ok && ((ex->response_side && out.measure.request_side) || (ex->request_side && out.response_side))) {
                errs.add(rr.path_of("of"), "must measure the same side (request or response) as the measure");
            }
            out.needs_request_json |= ex->needs_request_json;
            out.ratio_of = std::move(*ex);
        } else {
            errs.add(rr.path_of("of"), cfg::quote(of_text) + ": " + err);
        }
        if (auto mv = rr.integer("min_volume", false, 0)) {
            out.min_volume = static_cast<double>(*mv);
        } else {
            out.min_volume = 1;
        }
        rr.finish();
        if (out.agg != aggregate::sum) {
            errs.add(r.path_of("measure"), "a ratio needs a summed measure");
        }
    }
    std::shared_ptr<guardrail> guard;
    if (auto g = r.value("guard")) {
        ++conditions;
        out.condition = condition_kind::guard;
        guard = parse_guard(*g, r.path_of("guard"), errs);
        out.measure.text = "guard(" + std::string{to_string(guard->k)} + ")";
    }
    if (auto mv = r.integer("min_volume", false, 0)) {
        if (out.agg != aggregate::avg) {
            errs.add(r.path_of("min_volume"), "only applies to an avg measure (a ratio has its own)");
        }
        out.min_volume = static_cast<double>(*mv);
    }
    if (conditions == 0) {
        errs.add(path, "needs a condition: limit, baseline or ratio");
    } else if (conditions > 1) {
        errs.add(path, "give only one of limit, baseline or ratio");
    }
    if (out.agg == aggregate::per_request && out.condition != condition_kind::limit && conditions == 1) {
        errs.add(r.path_of("measure"), "a per_request measure works with a limit only");
    }

    if (auto fm = r.string("failure_mode", true)) {
        out.failure_mode = *fm;
        auto it = std::find_if(modes.begin(), modes.end(), [&](const failure_mode& m) { return m.id == *fm; });
        if (it == modes.end()) {
            errs.add(r.path_of("failure_mode"), cfg::quote(*fm) + " is not a known failure mode");
        } else {
            out.failure_mode_index = static_cast<std::size_t>(it - modes.begin());
        }
    }
    if (auto t = r.string("trips", true)) {
        if (t->empty()) {
            errs.add(r.path_of("trips"), "must name a breaker");
        }
        out.trips = *t;
    }
    if (auto mk = r.integer("max_keys", false, 1, 1'000'000)) {
        out.max_keys = static_cast<std::size_t>(*mk);
        if (guard) {
            guard->duplicates.max_keys = out.max_keys;
        }
    } else if (guard && guard->k == guardrail::kind::duplicates) {
        // Default: 100,000 pairs, fewer for a large max so the table stays within its bound.
        guard->duplicates.max_keys = std::min<std::size_t>(100'000, 20'000'000 / guard->duplicates.max);
    }
    if (guard && guard->k == guardrail::kind::duplicates &&
        guard->duplicates.max_keys * guard->duplicates.max > 20'000'000) {
        errs.add(r.path_of("max_keys"), "max_keys * guard.duplicates.max must stay within 20000000 (memory bound)");
    }
    if (guard) {
        guard->canonical += ";keys=" + std::to_string(guard->duplicates.max_keys);
        if (!guard->canonical_legacy.empty()) {
            guard->canonical_legacy += ";keys=" + std::to_string(guard->duplicates.max_keys);
        }
        out.guard = std::move(guard);
    }
    if (auto ib = r.string("on_invalid_body")) {
        if (*ib == "reject") {
            out.on_invalid_body = invalid_body_policy::reject;
        } else if (*ib == "zero") {
            out.on_invalid_body = invalid_body_policy::zero;
        } else {
            errs.add(r.path_of("on_invalid_body"), cfg::quote(*ib) + " is not a policy (reject or zero)");
        }
    }
    r.finish();
    std::string c = canonical(out);
    out.fingerprint = fnv1a(c);
    out.meter_fingerprint = fnv1a(canonical(out, false));
    if (out.guard && out.guard->k == guardrail::kind::duplicates) {
        // What a duplicate table's state means, without the limits that only judge it (max,
        // window): a reload that tightens them keeps the counts (engine.cpp).
        constexpr std::string_view head = ";guard=duplicates;";
        auto without_limits = [&](std::string t) {
            if (const auto at = t.find(head); at != std::string::npos) {
                if (const auto of = t.find(";of=", at); of != std::string::npos) {
                    t.erase(at + head.size(), of - (at + head.size()));
                }
            }
            return t;
        };
        out.counter_fingerprint_with_keys = fnv1a(without_limits(c));
        // Nor its size (max_keys, the rule's and the guard's): a table carries over into one
        // of another size (engine.cpp).
        auto unsized = [&](std::string t) {
            t = without_limits(std::move(t));
            if (const auto at = t.find(head); at != std::string::npos) {
                if (const auto keys = t.find(";keys=", at); keys != std::string::npos) {
                    const auto end = t.find_first_not_of("0123456789", keys + 6);
                    t.erase(keys, (end == std::string::npos ? t.size() : end) - keys);
                }
            }
            return t;
        };
        const std::string base = canonical(out, false);
        out.counter_fingerprint = fnv1a(unsized(base));
        // As the release before wrote it, its default field lists spelled out.
        if (const auto& legacy = out.guard->canonical_legacy; !legacy.empty()) {
            if (const auto at = base.find(out.guard->canonical); at != std::string::npos) {
                std::string old = base;
                old.replace(at, out.guard->canonical.size(), legacy);
                out.counter_fingerprint_legacy = fnv1a(unsized(std::move(old)));
            }
        }
    }
}

}  // namespace

std::shared_ptr<const rule_set> parse_rules(const simdjson::dom::element* failure_modes,
                                            const simdjson::dom::element* rules,
                                            const std::vector<std::string>& route_names,
                                            cfg::errors& errs) {
    auto set = std::make_shared<rule_set>();
    auto read_array = [&](const simdjson::dom::element* e, const char* name) -> std::optional<simdjson::dom::array> {
        if (!e) {
            return std::nullopt;
        }
        simdjson::dom::array a;
        if (e->get(a) != simdjson::SUCCESS) {
            // null too: a template that renders null would silently remove every rule.
            const std::string why = std::string{"must be an array, not "} + std::string{cfg::type_name(e->type())} +
                                    (e->is_null() ? " (leave it out for none)" : "");
            if (e->is_null()) {
                errs.add_since_stored(name, why);
            } else {
                errs.add(name, why);
            }
            return std::nullopt;
        }
        return a;
    };

    if (auto arr = read_array(failure_modes, "failure_modes")) {
        std::size_t i = 0;
        for (auto item : *arr) {
            const std::string path = cfg::child("failure_modes", i);
            auto fm = parse_failure_mode(item, path, errs);
            for (std::size_t j = 0; j < set->failure_modes.size(); ++j) {
                if (!fm.id.empty() && set->failure_modes[j].id == fm.id) {
                    errs.add(cfg::child(path, "id"), "duplicate failure mode id " + cfg::quote(fm.id) + " (first at " +
                                                         cfg::child("failure_modes", j) + ")");
                }
            }
            set->failure_modes.push_back(std::move(fm));
            ++i;
        }
    }
    if (auto arr = read_array(rules, "rules")) {
        std::size_t i = 0;
        for (auto item : *arr) {
            const std::string path = cfg::child("rules", i);
            rule r;
            r.index = i;
            parse_rule(item, path, r, set->failure_modes, route_names, errs);
            for (std::size_t j = 0; j < set->rules.size(); ++j) {
                if (!r.id.empty() && set->rules[j].id == r.id) {
                    errs.add(cfg::child(path, "id"),
                             "duplicate rule id " + cfg::quote(r.id) + " (first at " + cfg::child("rules", j) + ")");
                }
            }
            set->rules.push_back(std::move(r));
            ++i;
        }
    }

    // Route index: each route's list is its own rules merged with the unrouted ones, in
    // config order, so "first violated rule" means the same thing on every route.
    for (std::uint32_t i = 0; i < set->rules.size(); ++i) {
        if (set->rules[i].route.empty()) {
            set->unrouted.push_back(i);
        }
    }
    for (const auto& name : route_names) {
        std::vector<std::uint32_t> list;
        for (std::uint32_t i = 0; i < set->rules.size(); ++i) {
            if (set->rules[i].route.empty() || set->rules[i].route == name) {
                list.push_back(i);
            }
        }
        set->by_route.emplace(name, std::move(list));
    }
    std::vector<const guardrail*> guards;
    for (const auto& r : set->rules) {
        if (r.guard) {
            guards.push_back(r.guard.get());
        }
    }
    set->shared_paths = guard_paths::of(guards);
    return set;
}

}  // namespace bb::rules
