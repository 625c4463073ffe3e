#pragma once
// Form bodies and address lists (Mailgun), decoded one way for the engine, the guardrails and
// the agent body constraints. Pure functions; thread-safe.

#include "rules/request.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bb::rules {

// Decodes an application/x-www-form-urlencoded or, by content_type, multipart/form-data body
// into `out` (reusing its strings; repeated names stay repeated, in order). Returns false when
// a multipart body is malformed: no usable boundary, a part without its blank line, or no
// closing delimiter; `out` then holds the fields read before the fault. A urlencoded body
// always decodes.
bool parse_form(std::string_view content_type, std::string_view body,
                std::vector<std::pair<std::string, std::string>>& out);

// The fields a form-based API (Mailgun) may read: the body's (parse_form), then the query
// string's. Many form frameworks merge the two (Flask's request.values, PHP's $_REQUEST,
// Rails' params) and nothing says Mailgun does not, so a `to` in the query string counts and
// is checked like one in the body. Returns parse_form's answer.
bool parse_form_fields(std::string_view content_type, std::string_view body, std::string_view query,
                       std::vector<std::pair<std::string, std::string>>& out);

// Whether a form field's name matches `pattern`, in any ASCII case (an API that reads `To` as
// `to` is not ruled out: fail closed). A '*' in the pattern stands for a number, as SES v1's
// list members are written: `Destinations.member.*` is `Destinations.member.1`, `.2`, ...,
// not `Destinations.member.1.ReplacementTemplateData`. A pattern ending in `{name}` stands for
// any field whose name goes on from there (Mailgun's `v:{name}` custom variables). Used by
// the engine's form: and query:
// sources and by the guardrails' form fields.
bool form_name_matches(std::string_view pattern, std::string_view name);

// Whether a request is read as a form: a form content type, or no body but a query string
// (whose fields a form-based API may take as its parameters).
bool reads_as_form(std::string_view content_type, std::string_view body, std::string_view query);

// Why a body cannot be read one way as a form, or empty: a content type some servers read
// as a form and we do not parse (`application/x-url-encoded`, which Werkzeug takes; a
// multipart other than form-data), or a form content type on a body that starts like JSON
// (`{` or `[` after white space: an API that ignores the type reads JSON, the rules' JSON
// measures count it, and no real form starts so). Whoever checks recipients or fields
// refuses such a body.
// A `query` (its fields are read beside the body's) with a raw ';' is unreadable too.
std::string unreadable_form(std::string_view content_type, std::string_view body, std::string_view query = {});

// The name of a form field that asks the upstream to act as another method (`_method`,
// as Rails, Laravel and Symfony read it from a form body; Salesforce's `_HttpMethod`), as
// written (at most 32 bytes), or "" (also for a body that is not a form). Routes, agent
// scopes and rules judge the method on the wire, so the proxy refuses such a body.
std::string method_override_field(std::string_view method, std::string_view content_type, std::string_view body);

// Whether some server-side reader takes this body as a form, as Rack does: a form type
// (form_type_somewhere), and for a POST a body with no type at all that does not start like
// JSON (`{` or `[` after white space). What method_override_field reads.
bool read_as_form_somewhere(std::string_view method, std::string_view content_type, std::string_view body);
// A type some reader takes as a form: urlencoded or any multipart/* (Rack parses
// multipart/mixed and multipart/related as form-data). Such a body must not come
// compressed: its fields could not be read.
bool form_type_somewhere(std::string_view content_type);

// One parameter of a header value (`multipart/mixed; boundary="b"`) into *out, left empty
// when absent. False when the value is malformed (RFC 9110 / RFC 2183 syntax) or the
// parameter is given twice or in RFC 8187's encoded form (`name*=`): which one a reader
// would use is anyone's guess. Names compare without case.
// `strict` (HTTP, RFC 9110: form parts): a token, '=' and a token or quoted string with no
// blanks; otherwise (MIME, RFC 2045 as mailers write it) blanks around '=' and an unquoted
// value up to ';' or a blank.
bool header_param(std::string_view header_value, std::string_view name, std::optional<std::string>* out,
                  bool strict = true);

// Calls f(item) for every item of an address list: split on ',' and ';' outside quoted
// strings, comments and angle brackets, trimmed of blanks (space, tab, CR, LF), empty items
// left out: `"Doe, Jane" <jane@x.com>, bob@y.com` is two items. A quoted string honours
// backslash escapes (`"\"" <a@x.com>, b@y.com` is two items, as RFC 5322 reads it). ';'
// splits too (some readers take it as a separator), and a group's name is left out
// (`team: a@x.com, b@y.com;` is a@x.com and b@y.com). A comment `(EU)` may stand where a
// blank may, outside angle brackets, when it holds none of `( ) @ < > , ; " \`.
//
// Returns false, after calling f for the items before the fault, for a list that another
// reader could split otherwise: an unterminated quoted string, comment or angle bracket, a
// comment holding one of those characters, '<' inside angle brackets or after an item's
// '>', a separator inside angle brackets, text after an item's '>', more than one '@' in
// the angle brackets or, without them, in the item (`a@x.com b@y.com`), or an '@' in a
// display name that is not the address itself (`a@x.com <a@x.com>` is fine). Whoever checks
// addresses then refuses the list.
template <class F>
bool for_each_address(std::string_view list, F&& f) {
    auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
    auto trim = [&](std::string_view v) {
        while (!v.empty() && blank(v.front())) {
            v.remove_prefix(1);
        }
        while (!v.empty() && blank(v.back())) {
            v.remove_suffix(1);
        }
        return v;
    };
    bool quoted = false;
    bool escaped = false;
    bool comment = false;
    bool angle = false;
    bool closed = false;  // this item's '>' was seen
    int ats = 0;          // '@' outside quotes, comments and angle brackets
    int angle_ats = 0;
    std::size_t start = 0;
    std::size_t lt = 0;
    std::size_t gt = 0;
    for (std::size_t i = 0; i <= list.size(); ++i) {
        const bool end = i == list.size();
        const char c = end ? ',' : list[i];
        if (quoted) {
            if (end) {
                return false;
            }
            if (escaped) {
                escaped = false;
            } else if (c == '\\') {
                escaped = true;
            } else if (c == '"') {
                quoted = false;
            }
            continue;
        }
        if (comment) {
            if (end || c == '(' || c == '@' || c == '<' || c == '>' || c == ',' || c == ';' || c == '"' || c == '\\') {
                return false;
            }
            comment = c != ')';
            continue;
        }
        switch (c) {
            case '"':
                if (closed) {
                    return false;
                }
                quoted = true;
                break;
            case '(':
                if (angle) {
                    return false;
                }
                comment = true;
                break;
            case ')':
                return false;
            case '<':
                if (angle || closed) {
                    return false;
                }
                angle = true;
                lt = i;
                break;
            case '>':
                if (!angle) {
                    return false;
                }
                angle = false;
                closed = true;
                gt = i;
                break;
            case '@':
                if (closed || (angle ? ++angle_ats : ++ats) > 1) {
                    return false;
                }
                break;
            case ':':
                if (!angle && !closed && ats == 0) {
                    start = i + 1;  // a group's name, then its members
                }
                break;
            case ',':
            case ';': {
                if (angle) {
                    return false;
                }
                if (closed && ats > 0 && !iequals(trim(list.substr(start, lt - start)), trim(list.substr(lt + 1, gt - lt - 1)))) {
                    return false;  // an address in the display name other than the one in <...>
                }
                const std::string_view item = trim(list.substr(start, i - start));
                if (!item.empty()) {
                    f(item);
                }
                start = i + 1;
                ats = 0;
                angle_ats = 0;
                closed = false;
                break;
            }
            default:
                if (!blank(c) && closed) {
                    return false;
                }
        }
    }
    return true;
}

// How a list for_each_address refuses is described, after what holds it ("form field to ").
inline constexpr std::string_view unsplittable_list =
    "is not an address list that reads one way only (an open quote, comment or bracket, a comment holding a "
    "separator, '@' or quote, text after '>', two '@' in one address, or another address as its display name)";

// Appends the items of an address list to `out` (for_each_address; views into `list`).
// Returns for_each_address's answer.
bool split_addresses(std::string_view list, std::vector<std::string_view>& out);

}  // namespace bb::rules
