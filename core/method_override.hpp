#pragma once
// Fields that ask an upstream to act as another method than the one on the wire: Salesforce's
// `_HttpMethod=DELETE` on a POST, `_method` in Rails, Laravel and Symfony forms. Routes, agent
// scopes and rules judge the method on the wire, so the proxy refuses requests carrying one,
// in the query string (proxy/framing.cpp) or a form body (rules/form.hpp).

#include <cctype>
#include <string>
#include <string_view>

#include "core/url_decode.hpp"

namespace bb {

// Whether a decoded field name is one of them (any ASCII case).
inline bool is_method_override_name(std::string_view name) {
    auto same = [&](std::string_view want) {
        if (name.size() != want.size()) {
            return false;
        }
        for (std::size_t i = 0; i < name.size(); ++i) {
            if (std::tolower(static_cast<unsigned char>(name[i])) != std::tolower(static_cast<unsigned char>(want[i]))) {
                return false;
            }
        }
        return true;
    };
    return same("_method") || same("_HttpMethod");
}

// Whether a header name asks for another method (X-HTTP-Method-Override and its kin; any
// ASCII case): refused on a request (proxy/framing.cpp) and in a Salesforce composite
// subrequest's httpHeaders (rules/agent_constraints.cpp). An '_' counts as '-': CGI,
// FastCGI and the PHP stacks map both to one variable (HTTP_X_HTTP_METHOD_OVERRIDE).
inline bool is_method_override_header(std::string_view name) {
    auto same = [&](std::string_view want) {
        if (name.size() != want.size()) {
            return false;
        }
        for (std::size_t i = 0; i < name.size(); ++i) {
            const char c = name[i] == '_' ? '-' : static_cast<char>(std::tolower(static_cast<unsigned char>(name[i])));
            if (c != want[i]) {
                return false;
            }
        }
        return true;
    };
    return same("x-http-method-override") || same("x-http-method") || same("x-method-override");
}

// The first such field of a urlencoded list (a query string, a form body), its name as
// written, or "". Fields are split at any of `separators` (servers disagree on `;` and `#`);
// names are percent-decoded as the upstream decodes them (`%5FHttpMethod`).
inline std::string_view method_override_name(std::string_view fields, std::string_view separators) {
    std::string decoded;
    while (!fields.empty()) {
        const auto sep = fields.find_first_of(separators);
        const std::string_view pair = fields.substr(0, sep);
        fields = sep == std::string_view::npos ? std::string_view{} : fields.substr(sep + 1);
        const std::string_view raw = pair.substr(0, pair.find('='));
        if (raw.size() > 3 * 11) {
            continue;  // longer than `_HttpMethod` even fully percent-encoded
        }
        url_decode(raw, decoded);
        if (is_method_override_name(decoded)) {
            return raw;
        }
    }
    return {};
}

}  // namespace bb
