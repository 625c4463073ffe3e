#pragma once
// A host name as routes and rules compare it (proxy/session.cpp, rules/parse.cpp), one
// spelling per host: an IPv6 literal without its brackets, and without the root's trailing
// dot (`api.sendgrid.com.` is api.sendgrid.com to DNS and to the upstream: it must not miss
// the route or the rule that names the host). Case is the caller's (compare with iequals,
// or lower it).

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

}  // namespace bb
