#pragma once
// Credentials a request carries to its upstream, hidden wherever breakerbox shows a request
// to people: header values in the quarantine API below the admin role, and query parameters
// (HubSpot's legacy `hapikey`, `api_key`, `access_token`, presigned `X-Amz-Signature`, ...)
// there and in the access log. The held request itself keeps them: a release replays it
// from the store as it was.

#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>

namespace bb::proxy {

// A header or query parameter name that names a credential (case-insensitive).
inline bool credential_name(std::string_view name) {
    std::string n{name};
    std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (n == "authorization" || n == "proxy-authorization" || n == "cookie" || n == "key" || n == "sig" ||
        n == "code" || n == "auth") {
        return true;
    }
    for (const char* part : {"api-key", "apikey", "api_key", "access_key", "accesskey", "token", "secret", "password",
                             "passwd", "signature", "credential", "x-amz-"}) {
        if (n.find(part) != std::string_view::npos) {
            return true;
        }
    }
    return false;
}

// The target with the value of every credential query parameter replaced by `[redacted]`
// (path and other parameters untouched); *changed says whether anything was.
inline std::string redact_query(std::string_view target, bool* changed = nullptr) {
    if (changed != nullptr) {
        *changed = false;
    }
    const auto qm = target.find('?');
    if (qm == std::string_view::npos) {
        return std::string{target};
    }
    std::string out{target.substr(0, qm + 1)};
    std::string_view query = target.substr(qm + 1);
    std::string_view fragment;
    if (const auto hash = query.find('#'); hash != std::string_view::npos) {
        fragment = query.substr(hash);
        query = query.substr(0, hash);
    }
    bool first = true;
    while (true) {
        const auto amp = query.find('&');
        const std::string_view param = query.substr(0, amp);
        const auto eq = param.find('=');
        if (!first) {
            out += '&';
        }
        first = false;
        if (eq != std::string_view::npos && eq + 1 < param.size() && credential_name(param.substr(0, eq))) {
            out.append(param.substr(0, eq + 1));
            out += "[redacted]";
            if (changed != nullptr) {
                *changed = true;
            }
        } else {
            out.append(param);
        }
        if (amp == std::string_view::npos) {
            break;
        }
        query.remove_prefix(amp + 1);
    }
    out.append(fragment);
    return out;
}

}  // namespace bb::proxy
