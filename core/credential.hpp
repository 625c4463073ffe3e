#pragma once
// Names that carry credentials: hidden wherever breakerbox shows a request to people
// (proxy/redact.hpp), and refused as rule keys (a key becomes a breaker instance name, in
// logs, the admin API, metrics and alerts).

#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>

namespace bb {

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

}  // namespace bb
