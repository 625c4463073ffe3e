#pragma once
// Names that carry credentials: hidden wherever breakerbox shows a request to people
// (proxy/redact.hpp), and refused as rule keys (a key becomes a breaker instance name, in
// logs, the admin API, metrics and alerts).

#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>

namespace bb {

// A header or query parameter name that names a credential (case-insensitive). Read whole,
// then word by word (words split at '-', '_', '.'): vendors name their keys freely
// (X-Auth-Key, Ocp-Apim-Subscription-Key, X-Functions-Key, X-Authorization, jwt,
// sessionid), and a name hidden that was none costs an operator one value, while a key
// shown costs the key. The Idempotency-Key is no credential: it is what an operator
// matches a retry by.
inline bool credential_name(std::string_view name) {
    std::string n{name};
    std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (n == "cookie" || n == "sig" || n == "code") {
        return true;
    }
    if (n.find("idempotency") != std::string::npos) {
        return false;
    }
    for (const char* part : {"apikey", "accesskey", "token", "secret", "password", "passwd", "signature", "credential",
                             "x-amz-", "authoriz", "authent", "session", "cookie", "assertion"}) {
        if (n.find(part) != std::string::npos) {
            return true;
        }
    }
    std::size_t start = 0;
    while (start <= n.size()) {
        const auto end = std::min(n.find_first_of("-_.", start), n.size());
        const std::string_view word = std::string_view{n}.substr(start, end - start);
        if (word == "key" || word == "auth" || word == "jwt" || word == "bearer" || word == "hmac" ||
            word == "private" || word == "sid" || word == "pin" || word == "otp") {
            return true;
        }
        start = end + 1;
    }
    return false;
}

}  // namespace bb
