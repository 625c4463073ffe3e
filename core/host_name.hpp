#pragma once
// A host name as routes and rules compare it (proxy/session.cpp, rules/parse.cpp), one
// spelling per host: an IPv6 literal without its brackets, and without the root's trailing
// dot (`api.sendgrid.com.` is api.sendgrid.com to DNS and to the upstream: it must not miss
// the route or the rule that names the host). Case is the caller's (compare with iequals,
// or lower it).

#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>

namespace bb {

inline std::string_view unbracketed_host(std::string_view h) {
    return h.size() > 2 && h.front() == '[' && h.back() == ']' ? h.substr(1, h.size() - 2) : h;
}

inline std::string_view host_name(std::string_view h) {
    h = unbracketed_host(h);
    if (h.size() > 1 && h.back() == '.') {
        h.remove_suffix(1);
    }
    return h;
}

// Whether `host` is `domain` or a name under it (`api.eu.sendgrid.com` under `sendgrid.com`),
// without case and past the root's trailing dots.
inline bool host_is_or_under(std::string_view host, std::string_view domain) {
    while (!host.empty() && host.back() == '.') {
        host.remove_suffix(1);
    }
    auto same = [](std::string_view a, std::string_view b) {
        return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
                   return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
               });
    };
    return same(host, domain) || (host.size() > domain.size() && host[host.size() - domain.size() - 1] == '.' &&
                                  same(host.substr(host.size() - domain.size()), domain));
}

// A name a certificate can carry as a DNS SAN (lower case): letters, digits and '-' in
// labels of 1..63 separated by single dots; at most 253 in all. A last label of digits only
// is refused: "10.1.1" is a malformed address, not a name.
inline bool valid_dns_name(std::string_view name) {
    if (name.empty() || name.size() > 253) {
        return false;
    }
    auto dns_char = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; };
    std::size_t start = 0;
    std::string_view last;
    while (start <= name.size()) {
        const auto dot = std::min(name.find('.', start), name.size());
        last = name.substr(start, dot - start);
        if (last.empty() || last.size() > 63 || !std::all_of(last.begin(), last.end(), dns_char)) {
            return false;
        }
        start = dot + 1;
    }
    return !std::all_of(last.begin(), last.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// `host[:port]` or `[v6]:port` without the port.
inline std::string_view host_without_port(std::string_view host) {
    if (!host.empty() && host.front() == '[') {
        const auto close = host.find(']');
        return close == std::string_view::npos ? host : host.substr(0, close + 1);
    }
    const auto colon = host.rfind(':');
    return colon == std::string_view::npos ? host : host.substr(0, colon);
}

// The host of a request as rules see it (match.host, the "host" key): one spelling per
// host, lower case, so `API.SendGrid.com` and `api.sendgrid.com.` are not other hosts with
// caps of their own.
inline std::string canonical_host(std::string_view host_port) {
    std::string out{host_name(host_without_port(host_port))};
    std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

}  // namespace bb
