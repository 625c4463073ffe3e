#pragma once
// Form bodies and address lists (Mailgun), decoded one way for the engine, the guardrails and
// the agent body constraints. Pure functions; thread-safe.

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

// Whether a request is read as a form: a form content type, or no body but a query string
// (whose fields a form-based API may take as its parameters).
bool reads_as_form(std::string_view content_type, std::string_view body, std::string_view query);

// One parameter of a header value (`multipart/mixed; boundary="b"`) into *out, left empty
// when absent. False when the value is malformed (RFC 9110 / RFC 2183 syntax) or the
// parameter is given twice or in RFC 8187's encoded form (`name*=`): which one a reader
// would use is anyone's guess. Names compare without case.
bool header_param(std::string_view header_value, std::string_view name, std::optional<std::string>* out);

// Appends the items of an address list to `out`, split on commas outside quotes and angle
// brackets and trimmed: `"Doe, Jane" <jane@x.com>, bob@y.com` is two items. Views into `list`.
void split_addresses(std::string_view list, std::vector<std::string_view>& out);

}  // namespace bb::rules
