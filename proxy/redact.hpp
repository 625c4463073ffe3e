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

#include "core/credential.hpp"
#include "core/url_decode.hpp"

namespace bb::proxy {

using bb::credential_name;

// Walks a query string's parameters in order: on_param(param, eq) for each, where `eq` is
// the place of its `=` when its name (percent-decoded, as the upstream reads it) is a
// credential's and npos otherwise; on_sep(c) for each separator between two (`&`, `;` and
// `#` all separate, since upstream servers disagree on the last two and a `#` in a
// request-target reaches them as sent).
template <class OnParam, class OnSep>
void each_query_param(std::string_view query, OnParam&& on_param, OnSep&& on_sep) {
    while (true) {
        const auto sep = query.find_first_of("&;#");
        const std::string_view param = query.substr(0, sep);
        const auto eq = param.find('=');
        const bool credential = eq != std::string_view::npos && credential_name(url_decode(param.substr(0, eq)));
        on_param(param, credential ? eq : std::string_view::npos);
        if (sep == std::string_view::npos) {
            return;
        }
        on_sep(query[sep]);
        query.remove_prefix(sep + 1);
    }
}

// The target with credentials replaced by `[redacted]`: the value of every credential query
// parameter (names percent-decoded as the upstream reads them, so `hap%69key` is `hapikey`;
// separated as each_query_param reads them), and the user information of an
// absolute-form or authority-form target (`http://user:pass@host/...`, `user:pass@host:443`). The path and the other parameters are
// untouched; *changed says whether anything was replaced.
inline std::string redact_query(std::string_view target, bool* changed = nullptr) {
    if (changed != nullptr) {
        *changed = false;
    }
    auto mark = [&] {
        if (changed != nullptr) {
            *changed = true;
        }
    };
    std::string out;
    out.reserve(target.size());
    // What follows an '@' that ends user information: a host and port (then a path, query or
    // fragment, or nothing).
    auto host_chars = [](std::string_view t) {
        return !t.empty() && std::all_of(t.begin(), t.end(), [](char c) {
            return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' || c == '[' ||
                   c == ']' || c == '_';
        });
    };
    auto host_port = [&](std::string_view t) { return host_chars(t.substr(0, t.find_first_of("/?#"))); };
    if (!target.empty() && target.front() != '/' && target.find("://") == std::string_view::npos) {
        // Authority-form (CONNECT `user:pass@host:443`): a proxy refuses user information
        // there, but the log shows the target it refused. Up to the last '@' when a host and
        // port follow it: a password may hold '/', '?' or '#' unencoded (`user:s3/cr#t@host:443`).
        const bool authority = target.find_first_of("/?#") == std::string_view::npos;
        if (const auto at = target.rfind('@'); at != std::string_view::npos) {
            mark();
            const auto tail = target.substr(at + 1);
            if (authority || host_chars(tail)) {
                return "[redacted]" + std::string{target.substr(at)};
            }
            if (!host_port(tail) || target.substr(0, at).find_first_of("?#") != std::string_view::npos) {
                // An '@' that may be a query's as well as user information's, in a target of
                // neither form (refused as a bad target): all of it hidden, rather than either.
                return "[redacted]";
            }
            out += "[redacted]";  // user information, then a host and its path and query (below)
            target.remove_prefix(at);
        } else if (authority) {
            return std::string{target};
        }
        // Neither form (`host/path?hapikey=...`, refused as a bad target): its parameters are
        // hidden as an origin-form target's are, below.
    }
    if (const auto scheme_end = target.find("://");
        scheme_end != std::string_view::npos && scheme_end > 0 && target.find_first_of("/?#") > scheme_end) {
        const std::size_t host_start = scheme_end + 3;
        const std::size_t authority_end = std::min(target.find_first_of("/?#", host_start), target.size());
        auto at = target.substr(0, authority_end).rfind('@');
        if (at == std::string_view::npos && host_start < target.size() && target[host_start] != '[') {
            // A password holding '/', '?' or '#' unencoded ends the authority early
            // (`http://user:s3/cr@host/`): a ':' not followed by a port, and an '@' later.
            // Up to the last '@' before the path that follows it (more rather than less).
            const auto colon = target.find(':', host_start);
            const auto after = colon < authority_end ? target.substr(colon + 1, authority_end - colon - 1)
                                                     : std::string_view{"0"};
            const bool port = std::all_of(after.begin(), after.end(), [](char c) { return c >= '0' && c <= '9'; });
            if (const auto first_at = target.find('@', authority_end); !port && first_at != std::string_view::npos) {
                const auto last_at = target.substr(0, target.find_first_of("/?#", first_at)).rfind('@');
                // Only an '@' a host follows, and none a query may hold (`/p?email=a@b.com&api_key=`):
                // a '?' or '#' between the cut and the '@' leaves it unclear, so all is hidden.
                if (host_port(target.substr(last_at + 1))) {
                    if (target.substr(authority_end + 1, last_at - authority_end - 1).find_first_of("?#") !=
                        std::string_view::npos) {
                        mark();
                        return std::string{target.substr(0, host_start)} + "[redacted]";
                    }
                    at = last_at;
                }
            }
        }
        out.append(target.substr(0, host_start));
        if (at != std::string_view::npos && at >= host_start) {
            out += "[redacted]";
            target.remove_prefix(at);
            mark();
        } else {
            target.remove_prefix(host_start);
        }
    }
    const auto qm = target.find('?');
    if (qm == std::string_view::npos) {
        out.append(target);
        return out;
    }
    out.append(target.substr(0, qm + 1));
    each_query_param(
        target.substr(qm + 1),
        [&](std::string_view param, std::size_t eq) {
            if (eq != std::string_view::npos && eq + 1 < param.size()) {
                out.append(param.substr(0, eq + 1));
                out += "[redacted]";
                mark();
            } else {
                out.append(param);
            }
        },
        [&](char sep) { out += sep; });
    return out;
}

// An origin-form target without its credential query parameters (named and separated as
// redact_query reads them: `&`, `;` and `#` separate, a parameter without `=` is kept), for
// a request that goes somewhere its credentials were not meant for (an alternate sandbox
// upstream). Each kept parameter keeps the separator before it; a target with none to drop
// is returned as it was, and a `?` left with nothing after it goes.
inline std::string without_credential_params(std::string_view target) {
    const auto qm = target.find('?');
    if (qm == std::string_view::npos) {
        return std::string{target};
    }
    std::string out{target.substr(0, qm + 1)};
    bool dropped = false;
    bool first = true;
    char before = 0;  // the separator in front of the parameter in hand
    each_query_param(
        target.substr(qm + 1),
        [&](std::string_view param, std::size_t eq) {
            if (eq != std::string_view::npos) {
                dropped = true;
                return;
            }
            if (!first) {
                out += before;
            }
            out.append(param);
            first = false;
        },
        [&](char sep) { before = sep; });
    if (!dropped) {
        return std::string{target};
    }
    if (first) {
        out.pop_back();  // the '?'
    }
    return out;
}

}  // namespace bb::proxy
