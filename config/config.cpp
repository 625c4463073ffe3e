#include "config/config.hpp"

#include "core/file.hpp"
#include "core/pem.hpp"
#include "core/hex.hpp"
#include "core/host_name.hpp"
#include "core/http_token.hpp"

#include "rules/idna.hpp"
#include "rules/request.hpp"
#include "rules/rule_set.hpp"

#include <boost/url/parse.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <arpa/inet.h>

namespace bb {

namespace {

// `url` as it may be shown: user info, query and fragment replaced by "[redacted]".
std::string url_without_secrets(std::string_view url) {
    std::string out{url};
    // Everything up to the last '@' first (a password may hold '/', '?' or '#': this is the
    // text of URLs that fail to parse too), then the query and fragment.
    const auto scheme = out.find("://");
    const auto from = scheme == std::string::npos ? 0 : scheme + 3;
    if (const auto at = out.rfind('@'); at != std::string::npos && at >= from) {
        out.replace(from, at - from, "[redacted]");
    }
    if (const auto cut = out.find_first_of("?#", from); cut != std::string::npos) {
        out.replace(cut, std::string::npos, std::string{out[cut]} + "[redacted]");
    }
    return out;
}

bool valid_name(std::string_view s) {
    if (s.empty() || s.size() > 64) {
        return false;
    }
    return std::all_of(s.begin(), s.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
    });
}


template <class F>
void each_item(cfg::object_reader& r, std::string_view key, bool required, F&& f) {
    auto arr = r.array(key, required);
    if (!arr) {
        return;
    }
    std::size_t i = 0;
    for (auto item : *arr) {
        f(item, cfg::child(r.path_of(key), i));
        ++i;
    }
}

// A readable file named at `key` (errors name the path).
void readable_file(cfg::object_reader& r, std::string_view key, std::string& out, bool required) {
    if (auto v = r.string(key, required)) {
        out = *v;
        if (const file_error e = check_regular_file(*v); e != file_error::none) {
            r.errs().add(r.path_of(key), cfg::quote(*v) + " " + describe(e, 0));
        }
    }
}

tls_files parse_tls_files(simdjson::dom::element e, const std::string& path, cfg::errors& errs) {
    cfg::object_reader tr{e, path, errs};
    tls_files tls;
    readable_file(tr, "cert_file", tls.cert_file, true);
    readable_file(tr, "key_file", tls.key_file, true);
    readable_file(tr, "client_ca_file", tls.client_ca_file, false);
    if (auto v = tr.boolean("require_client_cert")) {
        tls.require_client_cert = *v;
        if (*v && tls.client_ca_file.empty()) {
            tr.errs().add(tr.path_of("require_client_cert"), "needs client_ca_file to verify client certificates");
        }
    }
    readable_file(tr, "client_crl_file", tls.client_crl_file, false);
    if (!tls.client_crl_file.empty() && tls.client_ca_file.empty()) {
        tr.errs().add(tr.path_of("client_crl_file"), "needs client_ca_file: it revokes client certificates verified against it");
    }
    if (auto v = tr.boolean("client_crl_leaf_only")) {
        tls.client_crl_leaf_only = *v;
        if (tls.client_crl_file.empty()) {
            tr.errs().add(tr.path_of("client_crl_leaf_only"), "needs client_crl_file");
        }
    }
    tr.finish();
    return tls;
}

forward_proxy_config parse_forward_proxy(simdjson::dom::element e, const std::string& path, cfg::errors& errs) {
    cfg::object_reader r{e, path, errs};
    forward_proxy_config f;
    readable_file(r, "ca_cert_file", f.ca_cert_file, true);
    readable_file(r, "ca_key_file", f.ca_key_file, true);
    if (auto v = r.strings("passthrough")) {
        for (std::size_t i = 0; i < v->size(); ++i) {
            if (auto e = passthrough_entry((*v)[i])) {
                f.passthrough.push_back(std::move(*e));
            } else {
                r.errs().add(cfg::child(r.path_of("passthrough"), i),
                             cfg::quote((*v)[i]) + " is not a host, host:port or [IPv6]:port");
            }
        }
    }
    if (auto v = r.integer("leaf_cache", false, 1, 1'000'000)) {
        f.leaf_cache = static_cast<std::size_t>(*v);
    }
    // At most 825 days: Apple's clients refuse any TLS server certificate valid for longer,
    // even one from a locally trusted CA (their rule since iOS 13 / macOS 10.15).
    if (auto v = r.duration("leaf_lifetime", false, milliseconds{3600 * 1000}, milliseconds{825LL * 24 * 3600 * 1000})) {
        f.leaf_lifetime = *v;
    }
    r.finish();
    return f;
}

void parse_listeners(cfg::object_reader& root, config& c) {
    std::set<std::string> names;
    each_item(root, "listeners", true, [&](simdjson::dom::element e, const std::string& path) {
        cfg::object_reader r{e, path, root.errs()};
        listener_config l;
        if (auto name = r.string("name", true)) {
            if (!valid_name(*name)) {
                r.errs().add(r.path_of("name"), cfg::quote(*name) + " is not a valid name (letters, digits, - _ .)");
            } else if (!names.insert(*name).second) {
                r.errs().add(r.path_of("name"), cfg::quote(*name) + " is used by another listener");
            }
            l.name = *name;
        }
        if (auto v = r.boolean("require_agent")) {
            l.require_agent = *v;
        }
        if (auto t = r.object("tls")) {
            l.tls = parse_tls_files(*t, r.path_of("tls"), root.errs());
        }
        if (auto f = r.object("forward_proxy")) {
            l.forward_proxy = parse_forward_proxy(*f, r.path_of("forward_proxy"), root.errs());
        }
        if (auto addr = r.string("address", true)) {
            if (auto hp = parse_address(*addr)) {
                l.host = hp->first;
                l.port = hp->second;
            } else {
                r.errs().add(r.path_of("address"), cfg::quote(*addr) + " is not an address (use \"127.0.0.1:8080\" or \"[::1]:8080\")");
            }
        }
        r.finish();
        c.listeners.push_back(std::move(l));
    });
    if (c.listeners.empty() && root.is_object() && root.has("listeners")) {
        root.errs().add("listeners", "needs at least one listener");
    }
}

void parse_limits(cfg::object_reader& root, config& c) {
    auto e = root.object("limits");
    if (!e) {
        return;
    }
    cfg::object_reader r{*e, "limits", root.errs()};
    auto& l = c.limits;
    auto size = [&](std::string_view key, std::size_t& out, std::int64_t min, std::int64_t max) {
        if (auto v = r.integer(key, false, min, max)) {
            out = static_cast<std::size_t>(*v);
        }
    };
    auto dur = [&](std::string_view key, milliseconds& out, milliseconds min) {
        if (auto v = r.duration(key, false, min)) {
            out = *v;
        }
    };
    size("header_bytes", l.header_bytes, 1024, 1 << 20);
    size("header_count", l.header_count, 8, 10'000);
    size("body_bytes", l.body_bytes, 0, std::int64_t{1} << 32);
    size("upstream_body_bytes", l.upstream_body_bytes, 1024, std::int64_t{1} << 32);
    const bool buffered_set = r.has("upstream_buffered_bytes");
    size("upstream_buffered_bytes", l.upstream_buffered_bytes, 1024, std::int64_t{1} << 40);
    size("max_connections", l.max_connections, 1, 1'000'000);
    size("max_requests_per_connection", l.max_requests_per_connection, 0, INT64_MAX);
    dur("header_timeout", l.header_timeout, milliseconds{1});
    dur("body_timeout", l.body_timeout, milliseconds{1});
    dur("idle_timeout", l.idle_timeout, milliseconds{1});
    dur("write_timeout", l.write_timeout, milliseconds{1});
    dur("drain_timeout", l.drain_timeout, milliseconds{0});
    r.finish();
    if (!buffered_set) {
        // Unset, it is at least one response of the largest size (a config from before it
        // existed, with upstream_body_bytes over 512 MiB, still starts).
        l.upstream_buffered_bytes = std::max(l.upstream_buffered_bytes, l.upstream_body_bytes);
    } else if (l.upstream_buffered_bytes < l.upstream_body_bytes) {
        root.errs().add("limits.upstream_buffered_bytes",
                        "must be at least limits.upstream_body_bytes (" + std::to_string(l.upstream_body_bytes) +
                            "): one response that size would never be read");
    }
}

void parse_upstreams(cfg::object_reader& root, config& c) {
    std::set<std::string> names;
    each_item(root, "upstreams", true, [&](simdjson::dom::element e, const std::string& path) {
        cfg::object_reader r{e, path, root.errs()};
        upstream_config u;
        if (auto name = r.string("name", true)) {
            if (!valid_name(*name)) {
                r.errs().add(r.path_of("name"), cfg::quote(*name) + " is not a valid name (letters, digits, - _ .)");
            } else if (!names.insert(*name).second) {
                r.errs().add(r.path_of("name"), cfg::quote(*name) + " is used by another upstream");
            }
            u.name = *name;
        }
        if (auto url = r.string("url", true)) {
            u.url = *url;
            auto parsed = boost::urls::parse_absolute_uri(*url);
            const std::string where = r.path_of("url");
            // Errors are logged and kept in the audit log, which viewers read: a URL is
            // quoted without what may be a credential (user info, the query and fragment).
            const std::string shown = url_without_secrets(*url);
            if (!parsed) {
                r.errs().add(where, cfg::quote(shown) + " is not an absolute URL");
            } else {
                const auto scheme = parsed->scheme();
                if (scheme == "https") {
                    u.tls = true;
                    u.port = 443;
                } else if (scheme == "http") {
                    u.port = 80;
                } else {
                    r.errs().add(where, cfg::quote(shown) + ": scheme must be http or https");
                }
                std::string host{parsed->encoded_host()};
                if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
                    host = host.substr(1, host.size() - 2);
                }
                if (host.empty()) {
                    r.errs().add(where, cfg::quote(shown) + " has no host");
                }
                u.host = host;
                if (parsed->has_port()) {
                    const auto p = parsed->port_number();
                    if (p == 0) {
                        r.errs().add(where, cfg::quote(shown) + " has an invalid port");
                    }
                    u.port = p;
                }
                u.authority = std::string{parsed->encoded_host_and_port()};
                std::string p{parsed->encoded_path()};
                while (!p.empty() && p.back() == '/') {
                    p.pop_back();
                }
                u.base_path = p;
                if (parsed->has_query() || parsed->has_fragment() || parsed->has_userinfo()) {
                    r.errs().add(where, cfg::quote(shown) + " must not carry a query, fragment or user info");
                }
            }
        }
        if (auto v = r.duration("timeout", false, milliseconds{1})) {
            u.timeout = *v;
        }
        if (auto v = r.duration("connect_timeout", false, milliseconds{1})) {
            u.connect_timeout = *v;
        }
        if (auto v = r.integer("max_connections", false, 1, 100'000)) {
            u.max_connections = static_cast<std::size_t>(*v);
        }
        if (auto v = r.duration("idle_timeout", false, milliseconds{1})) {
            u.idle_timeout = *v;
        }
        if (auto v = r.duration("write_reuse_within", false)) {
            u.write_reuse_within = *v;
        }
        if (auto v = r.string("ca_file")) {
            u.ca_file = *v;
            // A CA bundle (Debian's whole store is ~220 KiB); a larger file is a mistake.
            constexpr std::size_t max_bundle = std::size_t{16} << 20;
            file_error fe = file_error::none;
            if (auto text = read_regular_file(*v, max_bundle, &fe); !text) {
                r.errs().add(r.path_of("ca_file"), cfg::quote(*v) + " " + describe(fe, max_bundle));
            } else {
                // Kept so a reload notices new contents under the same name (a CA removed
                // from the bundle must stop being trusted without a restart).
                u.ca_pem = std::move(*text);
                // Read as the pool will read it: a block cut off or damaged would make it
                // trust nothing of the file, and every request to the upstream fail.
                if (const auto why = ca_bundle_problem(u.ca_pem); !why.empty()) {
                    r.errs().add(r.path_of("ca_file"), cfg::quote(*v) + " " + why);
                }
            }
        }
        if (auto v = r.boolean("verify")) {
            u.verify = *v;
        }
        if (auto h = r.object("health")) {
            cfg::object_reader hr{*h, r.path_of("health"), root.errs()};
            breakers::health_config hc;
            if (auto v = hr.integer("consecutive_failures", false, 0, 1'000'000)) {
                hc.consecutive_failures = static_cast<std::uint32_t>(*v);
            }
            if (auto v = hr.number("failure_ratio", false, 0.0, 1.0)) {
                hc.failure_ratio = *v;
            }
            if (auto v = hr.duration("window", false, milliseconds{100})) {
                hc.window = *v;
            }
            if (auto v = hr.integer("min_volume", false, 1, 1'000'000)) {
                hc.min_volume = static_cast<std::uint32_t>(*v);
            }
            if (auto v = hr.duration("slow_call", false, milliseconds{1})) {
                hc.slow_call = *v;
            }
            if (auto v = hr.number("slow_ratio", false, 0.0, 1.0)) {
                if (*v <= 0) {
                    // A ratio of 0 would be crossed by any volume at all: a healthy
                    // upstream tripped again after every probe. (Leave slow_call out instead.)
                    hr.errs().add(hr.path_of("slow_ratio"), "must be above 0 (to check no slow calls, leave slow_call out)");
                }
                hc.slow_ratio = *v;
            }
            if (auto v = hr.duration("cooldown", false, milliseconds{1})) {
                u.health_cooldown = *v;
            }
            if (auto v = hr.integer("half_open_probes", false, 1, 1000)) {
                u.health_probes = static_cast<std::uint32_t>(*v);
            }
            if (hc.consecutive_failures == 0 && hc.failure_ratio == 0 && hc.slow_call.count() == 0) {
                hr.errs().add(hr.path(), "enables no check: set consecutive_failures, failure_ratio or slow_call");
            }
            // Settings of a check that is off would silently do nothing.
            if (hr.has("slow_ratio") && hc.slow_call.count() == 0) {
                hr.errs().add_since_stored(hr.path_of("slow_ratio"), "needs slow_call (how long a call takes to be slow)");
            }
            for (const char* key : {"window", "min_volume"}) {
                if (hr.has(key) && hc.failure_ratio == 0 && hc.slow_call.count() == 0) {
                    hr.errs().add_since_stored(hr.path_of(key), "is used by failure_ratio and slow_call, and neither is set");
                }
            }
            hr.finish();
            u.health = hc;
        }
        if (auto v = r.duration("max_rate_limit_pause", false, milliseconds{1})) {
            u.max_rate_limit_pause = *v;
        }
        if (auto v = r.string("sandbox_api")) {
            if (*v != "sendgrid" && *v != "mailgun" && *v != "any" && *v != "none") {
                r.errs().add(r.path_of("sandbox_api"),
                             cfg::quote(*v) + " is not one of \"sendgrid\", \"mailgun\", \"any\", \"none\"");
            }
            u.sandbox_api = *v;
        }
        if (!u.tls && (r.has("ca_file"))) {
            r.errs().add(r.path_of("ca_file"), "is only meaningful for an https upstream");
        }
        r.finish();
        c.upstreams.push_back(std::move(u));
    });
}

void parse_routes(cfg::object_reader& root, config& c) {
    std::set<std::string> names;
    each_item(root, "routes", true, [&](simdjson::dom::element e, const std::string& path) {
        cfg::object_reader r{e, path, root.errs()};
        route_config rt;
        if (auto name = r.string("name", true)) {
            if (!valid_name(*name)) {
                r.errs().add(r.path_of("name"), cfg::quote(*name) + " is not a valid name (letters, digits, - _ .)");
            } else if (!names.insert(*name).second) {
                r.errs().add(r.path_of("name"), cfg::quote(*name) + " is used by another route");
            }
            rt.name = *name;
        }
        if (auto m = r.object("match", true)) {
            cfg::object_reader mr{*m, r.path_of("match"), root.errs()};
            if (auto v = mr.string("host")) {
                // One spelling, as requests are compared (core/host_name.hpp): lower case, an
                // IPv6 literal without brackets, no root dot; `API.SendGrid.com.` would
                // otherwise match requests but not be intercepted as a known destination.
                std::string h{host_name(*v)};
                std::transform(h.begin(), h.end(), h.begin(),
                               [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
                if (h.find_first_of("/@?# \t") != std::string::npos) {
                    mr.errs().add(mr.path_of("host"), cfg::quote(*v) + " is not a host name");
                } else if (std::count(h.begin(), h.end(), ':') == 1 || v->find("]:") != std::string::npos) {
                    mr.errs().add(mr.path_of("host"), cfg::quote(*v) +
                                                          " names a port: match.host is a host alone (requests match "
                                                          "whatever their port)");
                }
                rt.match.host = std::move(h);
            }
            if (auto v = mr.string("path")) {
                if (v->empty() || v->front() != '/') {
                    mr.errs().add(mr.path_of("path"), cfg::quote(*v) + " must start with /");
                }
                rt.match.path = *v;
            }
            if (auto v = mr.string("path_prefix")) {
                if (v->empty() || v->front() != '/') {
                    mr.errs().add(mr.path_of("path_prefix"), cfg::quote(*v) + " must start with /");
                }
                rt.match.path_prefix = *v;
            }
            if (auto v = mr.strings("methods")) {
                std::size_t i = 0;
                for (auto& m : *v) {
                    if (!is_token(m)) {
                        mr.errs().add(cfg::child(mr.path_of("methods"), i), cfg::quote(m) + " is not an HTTP method");
                    }
                    std::transform(m.begin(), m.end(), m.begin(), [](char ch) { return std::toupper(static_cast<unsigned char>(ch)); });
                    ++i;
                }
                rt.match.methods = std::move(*v);
            }
            if (!rt.match.path.empty() && !rt.match.path_prefix.empty()) {
                mr.errs().add(mr.path_of("path"), "give either path or path_prefix, not both");
            }
            if (rt.match.path.empty() && rt.match.path_prefix.empty()) {
                rt.match.path_prefix = "/";
            }
            mr.finish();
        }
        if (auto v = r.string("upstream", true)) {
            rt.upstream = *v;
            auto it = std::find_if(c.upstreams.begin(), c.upstreams.end(), [&](const upstream_config& u) { return u.name == *v; });
            if (it == c.upstreams.end()) {
                r.errs().add(r.path_of("upstream"), cfg::quote(*v) + " is not a configured upstream");
            } else {
                rt.upstream_index = static_cast<std::size_t>(it - c.upstreams.begin());
            }
        }
        if (auto v = r.duration("timeout", false, milliseconds{1})) {
            rt.timeout = *v;
        }
        r.finish();
        c.routes.push_back(std::move(rt));
    });
}

// Whether route `a`, listed before `b`, takes every request `b` would (the proxy takes the
// first route that matches, proxy/session.cpp match_route): then `b`, and every rule and
// agent scope naming it, is silently off. Judged conservatively: only when each condition of
// `a` is met by every request `b` takes. With a forward proxy, a route for any host never
// takes a forwarded request and a route for a host takes only its own upstream's
// destinations, so there `a` covers `b` only for the same host and upstream.
bool route_covers(const route_config& a, const route_config& b, bool forward_proxy) {
    const auto& am = a.match;
    const auto& bm = b.match;
    if (am.path.empty() && am.path_prefix.empty()) {
        return false;  // its match could not be read (an error of its own): it covers nothing
    }
    const bool same_host = rules::iequals(am.host, bm.host);
    if (!(am.host.empty() && !forward_proxy) && !(same_host && (!forward_proxy || a.upstream == b.upstream))) {
        return false;
    }
    if (!am.methods.empty() &&
        (bm.methods.empty() || !std::all_of(bm.methods.begin(), bm.methods.end(), [&](const std::string& m) {
            return std::find(am.methods.begin(), am.methods.end(), m) != am.methods.end();
        }))) {
        return false;
    }
    if (!am.path.empty()) {
        // An exact path takes the path and the path with one '/' more; a prefix takes more.
        return !bm.path.empty() && rules::iequals(am.path, bm.path);
    }
    return rules::istarts_with(bm.path.empty() ? bm.path_prefix : bm.path, am.path_prefix);
}

// RFC 1123 host name, lower case: dot-separated labels of letters, digits and inner hyphens.
bool valid_host_name(std::string_view h) {
    if (h.empty() || h.size() > 253) {
        return false;
    }
    std::size_t start = 0;
    while (start <= h.size()) {
        auto dot = h.find('.', start);
        if (dot == std::string_view::npos) {
            dot = h.size();
        }
        const std::string_view label = h.substr(start, dot - start);
        if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-' ||
            !std::all_of(label.begin(), label.end(), [](char ch) {
                return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-';
            })) {
            return false;
        }
        start = dot + 1;
    }
    return true;
}

// An agent's `"constraints"`: what its request bodies may say (rules/agent_constraints.hpp).
rules::body_constraints parse_body_constraints(simdjson::dom::element e, const std::string& path, cfg::errors& errs) {
    cfg::object_reader r{e, path, errs};
    rules::body_constraints bc;
    if (auto v = r.integer("max_recipients", false, 1)) {
        bc.max_recipients = static_cast<std::uint64_t>(*v);
    }
    // Lower-cased and checked; an internationalized one in its Unicode form.
    const auto fold_domains = [&](const char* key, std::vector<std::string>& v) {
        for (std::size_t i = 0; i < v.size(); ++i) {
            auto& d = v[i];
            std::transform(d.begin(), d.end(), d.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
            if (!valid_host_name(d)) {
                r.errs().add(cfg::child(r.path_of(key), i),
                             cfg::quote(d) + " is not a domain name" +
                                 (!d.starts_with("*.")                     ? ""
                                  : std::string_view{key} == "list_domains" ? " (no wildcards: a domain covers its subdomains)"
                                                                            : " (no wildcards: list each domain, matched exactly)"));
            } else if (rules::idna::may_have_other_form(d)) {
                // Compared in the Unicode form the guards read addresses in (rules/idna.hpp):
                // `xn--bcher-kva.de` allows mail from jane@bücher.de, however it is written.
                rules::idna::to_unicode(d, d);
            }
        }
    };
    const auto domains = [&](const char* key) -> std::vector<std::string> {
        auto v = r.strings(key);
        if (!v) {
            return {};
        }
        if (v->empty()) {
            r.errs().add(r.path_of(key), "needs at least one domain (leave it out to allow any)");
        }
        fold_domains(key, *v);
        return std::move(*v);
    };
    bc.from_domains = domains("from_domains");
    bc.reply_to_domains = domains("reply_to_domains");
    if (auto v = r.strings("list_domains")) {
        // (`[]` is allowed here: no address is a list, not even at a Mailgun sending domain.)
        fold_domains("list_domains", *v);
        bc.list_domains = std::move(*v);
        if (!bc.max_recipients) {
            r.errs().add(r.path_of("list_domains"), "needs max_recipients (mailing lists are refused for their size)");
        }
    }
    if (auto v = r.strings("template_ids")) {
        if (v->empty()) {
            r.errs().add(r.path_of("template_ids"), "needs at least one template id (leave it out to allow any)");
        }
        for (std::size_t i = 0; i < v->size(); ++i) {
            if ((*v)[i].empty()) {
                r.errs().add(cfg::child(r.path_of("template_ids"), i), "must not be empty");
            }
        }
        bc.template_ids = std::move(*v);
    }
    r.finish();
    return bc;
}

// A certificate name as compared: DNS names (and X.500 names, caseIgnoreMatch) ignore ASCII
// case, and `bot.agents.local.` is the same name fully qualified. Without the fold a SAN
// written with capitals named no agent: a 401 where identity is required, and where it is
// optional an anonymous client, unscoped and out of reach of the agent's kill switch.
std::string cert_name_fold(std::string_view n) {
    if (n.size() > 1 && n.back() == '.') {
        n.remove_suffix(1);
    }
    std::string out{n};
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char ch) { return ch >= 'A' && ch <= 'Z' ? static_cast<char>(ch + 32) : static_cast<char>(ch); });
    return out;
}

void parse_agents(cfg::object_reader& root, config& c) {
    std::set<std::string> ids;
    std::set<std::string> digests;
    std::set<std::string> cert_names;
    each_item(root, "agents", false, [&](simdjson::dom::element e, const std::string& path) {
        cfg::object_reader r{e, path, root.errs()};
        agent_config a;
        if (auto v = r.string("id", true)) {
            if (!valid_name(*v)) {
                r.errs().add(r.path_of("id"), cfg::quote(*v) + " is not a valid id (letters, digits, - _ .)");
            } else if (!ids.insert(*v).second) {
                r.errs().add(r.path_of("id"), cfg::quote(*v) + " is used by another agent");
            }
            a.id = *v;
        }
        if (auto names = r.strings("cert_names")) {
            for (std::size_t i = 0; i < names->size(); ++i) {
                if ((*names)[i].empty()) {
                    r.errs().add(cfg::child(r.path_of("cert_names"), i), "must not be empty");
                } else if (!cert_names.insert(cert_name_fold((*names)[i])).second) {
                    r.errs().add(cfg::child(r.path_of("cert_names"), i),
                                 cfg::quote((*names)[i]) + " already identifies another agent");
                }
            }
            a.cert_names = std::move(*names);
        }
        if (auto keys = r.strings("key_sha256", a.cert_names.empty())) {
            if (keys->empty() && a.cert_names.empty()) {
                // Nothing could identify the agent: its scope, kill switch and sandbox would
                // look in force while no request is ever its.
                r.errs().add_since_stored(r.path_of("key_sha256"),
                                          "must not be empty when the agent has no cert_names: nothing would identify it");
            }
            std::size_t i = 0;
            for (const auto& k : *keys) {
                std::array<unsigned char, 32> d{};
                const bool ok = hex_to_bytes(k, d.data(), d.size());
                const auto where = cfg::child(r.path_of("key_sha256"), i++);
                if (!ok) {
                    r.errs().add(where, "must be 64 hex digits: the SHA-256 of the API key, never the key");
                } else if (!digests.insert(std::string{reinterpret_cast<const char*>(d.data()), d.size()}).second) {
                    r.errs().add(where, "this key already belongs to another agent");
                } else {
                    a.key_sha256.push_back(d);
                }
            }
        }
        if (auto al = r.object("allow")) {
            cfg::object_reader ar{*al, r.path_of("allow"), root.errs()};
            // An empty list reads as "none", but would allow all (a missing list does):
            // refused, like constraints' empty lists.
            auto refuse_empty = [&](std::string_view key, const std::vector<std::string>& v, const char* what) {
                if (v.empty()) {
                    ar.errs().add_since_stored(ar.path_of(key), std::string{"needs at least one "} + what +
                                                       " (leave it out to allow any; to allow nothing, switch the "
                                                       "agent's kill switch or remove the agent)");
                }
            };
            if (auto v = ar.strings("routes")) {
                refuse_empty("routes", *v, "route");
                for (std::size_t i = 0; i < v->size(); ++i) {
                    if (c.find_route((*v)[i]) == nullptr) {
                        ar.errs().add(cfg::child(ar.path_of("routes"), i), cfg::quote((*v)[i]) + " is not a configured route");
                    }
                }
                a.allow.routes = std::move(*v);
            }
            if (auto v = ar.strings("methods")) {
                refuse_empty("methods", *v, "method");
                for (std::size_t i = 0; i < v->size(); ++i) {
                    auto& m = (*v)[i];
                    std::transform(m.begin(), m.end(), m.begin(), [](char ch) { return std::toupper(static_cast<unsigned char>(ch)); });
                    if (!is_token(m)) {
                        ar.errs().add_since_stored(cfg::child(ar.path_of("methods"), i), cfg::quote(m) + " is not an HTTP method");
                    }
                }
                a.allow.methods = std::move(*v);
            }
            if (auto v = ar.strings("paths")) {
                refuse_empty("paths", *v, "path");
                for (std::size_t i = 0; i < v->size(); ++i) {
                    const auto& p = (*v)[i];
                    if (p.empty() || p.front() != '/' || (p.find('*') != std::string::npos && p.find('*') != p.size() - 1)) {
                        ar.errs().add(cfg::child(ar.path_of("paths"), i),
                                      cfg::quote(p) + " must start with / and may only end in * (a prefix)");
                    }
                }
                a.allow.paths = std::move(*v);
            }
            // `{}` reads as "nothing allowed" and would allow all, as an empty list would.
            if (!ar.has("routes") && !ar.has("methods") && !ar.has("paths")) {
                ar.errs().add_since_stored(ar.path(), "allows no less than leaving it out: name routes, methods or "
                                                      "paths (leave it out to allow any; to allow nothing, switch "
                                                      "the agent's kill switch or remove the agent)");
            }
            ar.finish();
        }
        if (auto v = r.boolean("sandbox")) {
            a.sandbox = *v;
        }
        if (auto v = r.object("constraints")) {
            if (v->get_object().value_unsafe().size() == 0) {
                r.errs().add_since_stored(r.path_of("constraints"),
                                          "constrains nothing: name a constraint (max_recipients, from_domains, "
                                          "...), or leave it out");
            }
            a.constraints = parse_body_constraints(*v, r.path_of("constraints"), root.errs());
        }
        r.finish();
        c.agents.push_back(std::move(a));
    });
}

void parse_breakers(cfg::object_reader& root, config& c) {
    std::set<std::string> ids;
    each_item(root, "breakers", false, [&](simdjson::dom::element e, const std::string& path) {
        cfg::object_reader r{e, path, root.errs()};
        breakers::breaker_config b;
        if (auto id = r.string("id", true)) {
            if (!valid_name(*id) || id->find('/') != std::string::npos) {
                r.errs().add(r.path_of("id"), cfg::quote(*id) + " is not a valid id (letters, digits, - _ .)");
            } else if (*id == "agent" || *id == "upstream") {
                // Its keyed instances ("agent/<key>") would share names with the implicit
                // per-agent and per-upstream breakers, which admission checks instead.
                r.errs().add(r.path_of("id"), cfg::quote(*id) +
                                                  " is reserved (the implicit agent/<id> and upstream/<name> breakers)");
            } else if (!ids.insert(*id).second) {
                r.errs().add(r.path_of("id"), cfg::quote(*id) + " is used by another breaker");
            }
            b.id = *id;
        }
        bool action_known = false;
        if (auto a = r.string("action", true)) {
            action_known = true;
            if (*a == "pause") {
                b.act = breakers::action::pause;
            } else if (*a == "throttle") {
                b.act = breakers::action::throttle;
            } else if (*a == "sandbox") {
                b.act = breakers::action::sandbox;
            } else if (*a == "deny") {
                b.act = breakers::action::deny;
            } else if (*a == "quarantine") {
                b.act = breakers::action::quarantine;
            } else {
                action_known = false;
                r.errs().add(r.path_of("action"), cfg::quote(*a) + " is not an action (pause, throttle, sandbox, quarantine, deny)");
            }
        }
        if (auto v = r.string("reset")) {
            if (*v == "auto") {
                b.reset = breakers::reset_policy::automatic;
            } else if (*v == "manual") {
                b.reset = breakers::reset_policy::manual;
            } else {
                r.errs().add(r.path_of("reset"), cfg::quote(*v) + " is not a reset policy (auto, manual)");
            }
        }
        if (auto v = r.duration("cooldown", false, milliseconds{1})) {
            b.cooldown = *v;
        }
        if (auto v = r.duration("max_cooldown", false, milliseconds{1})) {
            b.max_cooldown = *v;
            if (b.max_cooldown < b.cooldown) {
                r.errs().add_since_stored(r.path_of("max_cooldown"), cfg::quote(cfg::format_duration(b.max_cooldown)) +
                                                            " is shorter than cooldown " +
                                                            cfg::quote(cfg::format_duration(b.cooldown)));
            }
        }
        if (b.max_cooldown < b.cooldown) {
            b.max_cooldown = b.cooldown;  // the default, below a longer cooldown given
        }
        if (auto v = r.integer("half_open_probes", false, 1, 1000)) {
            b.half_open_probes = static_cast<std::uint32_t>(*v);
        }
        if (auto v = r.duration("retry_after", false, milliseconds{1000})) {
            b.retry_after = *v;
        }
        if (auto v = r.integer("max_instances", false, 1, 1'000'000)) {
            b.max_instances = static_cast<std::size_t>(*v);
        }
        if (auto v = r.string("scope")) {
            if (*v == "key") {
                b.per_key = true;
            } else if (*v == "breaker") {
                b.per_key = false;
            } else {
                r.errs().add(r.path_of("scope"), cfg::quote(*v) + " is not a scope (key: one instance per key value; breaker: one for all)");
            }
        }
        // A throttle or sandbox under another action would do nothing: most likely the
        // action is the mistake, and a pause where a throttle was meant stops all traffic.
        if (action_known && r.has("throttle") && b.act != breakers::action::throttle) {
            r.errs().add_since_stored(r.path_of("throttle"), "applies only to action \"throttle\" (this breaker's action is " +
                                                    cfg::quote(breakers::to_string(b.act)) + ")");
        }
        if (action_known && r.has("sandbox") && b.act != breakers::action::sandbox) {
            r.errs().add_since_stored(r.path_of("sandbox"), "applies only to action \"sandbox\" (this breaker's action is " +
                                                   cfg::quote(breakers::to_string(b.act)) + ")");
        }
        if (auto t = r.object("throttle")) {
            cfg::object_reader tr{*t, r.path_of("throttle"), root.errs()};
            // At most 100,000: a throttling instance keeps the time of each admission in its
            // window (and saves them with the breaker state), per key.
            if (auto v = tr.integer("requests", true, 1, 100'000)) {
                b.throttle.requests = static_cast<std::uint32_t>(*v);
            }
            if (auto v = tr.duration("per", true, milliseconds{1})) {
                b.throttle.interval = *v;
            }
            tr.finish();
        } else if (b.act == breakers::action::throttle) {
            r.errs().add(r.path_of("throttle"), "is required for action \"throttle\" ({\"requests\": R, \"per\": \"1s\"})");
        }
        if (auto sb = r.object("sandbox")) {
            cfg::object_reader sr{*sb, r.path_of("sandbox"), root.errs()};
            if (auto v = sr.string("upstream")) {
                const auto known = std::find_if(c.upstreams.begin(), c.upstreams.end(),
                                                [&](const upstream_config& u) { return u.name == *v; });
                if (known == c.upstreams.end()) {
                    sr.errs().add(sr.path_of("upstream"), cfg::quote(*v) + " is not a configured upstream");
                } else {
                    // A sandbox that sends where a route sends (the route's own upstream, or
                    // another name for the same scheme, host and port) reaches the real API
                    // under a "sandboxed" label.
                    const auto& sandbox = *known;
                    auto same_place = [&](const upstream_config& u) {
                        return u.tls == sandbox.tls && u.port == sandbox.port &&
                               rules::iequals(host_name(u.host), host_name(sandbox.host));
                    };
                    // Nor may it be a real API by another name (SendGrid's EU host, a
                    // regional endpoint): the request goes there as the client sent it.
                    const std::string_view host = host_name(sandbox.host);
                    // (Not salesforce.com: a sandbox org is the natural target there, and it
                    // takes no production token; nor amazonaws.com, which hosts test fakes.)
                    for (const std::string_view domain :
                         {"sendgrid.com", "sendgrid.net", "mailgun.net", "mailgun.org", "hubapi.com", "hubspot.com"}) {
                        if (host_is_or_under(host, domain)) {
                            // An error for a stored version too: keeping it would leave real
                            // sends labelled sandboxed (a start falls back to the file, and
                            // refuses a file that has it).
                            sr.errs().add(sr.path_of("upstream"),
                                          cfg::quote(*v) + " sends to " + std::string{host} + ", a real API (" +
                                              std::string{domain} + "): a sandboxed request would be a real send "
                                              "(name a test fake or capture server)");
                            break;
                        }
                    }
                    for (const auto& rt : c.routes) {
                        const auto u = std::find_if(c.upstreams.begin(), c.upstreams.end(),
                                                    [&](const upstream_config& x) { return x.name == rt.upstream; });
                        if (u != c.upstreams.end() && same_place(*u)) {
                            sr.errs().add(sr.path_of("upstream"),
                                          cfg::quote(*v) + (u->name == *v ? " is" : " sends to the same place as") +
                                              " the upstream of route " + cfg::quote(rt.name) +
                                              ": a sandboxed request would reach the real API (name an upstream "
                                              "no route sends to)");
                            break;
                        }
                    }
                }
                b.sandbox_upstream = *v;
            }
            sr.finish();
        }
        r.finish();
        c.breakers.push_back(std::move(b));
    });
    // Implicit breakers: a kill switch per agent, which only an operator flips.
    for (const auto& a : c.agents) {
        breakers::breaker_config b;
        b.id = "agent/" + a.id;
        b.act = breakers::action::pause;
        b.reset = breakers::reset_policy::manual;
        b.per_key = false;
        c.breakers.push_back(std::move(b));
    }
    // Implicit breakers: one per upstream with health checks.
    for (const auto& u : c.upstreams) {
        if (!u.health) {
            continue;
        }
        breakers::breaker_config b;
        b.id = "upstream/" + u.name;  // user ids cannot contain '/', so no clash
        b.act = breakers::action::pause;
        b.cooldown = u.health_cooldown;
        b.max_cooldown = std::max(u.health_cooldown * 20, u.health_cooldown);
        b.half_open_probes = u.health_probes;
        b.per_key = false;
        c.breakers.push_back(std::move(b));
    }
}

// Whether two listening sockets would take the same connections: the same port (not 0, an
// ephemeral one) and the same address, or a wildcard (0.0.0.0, ::) on either side. Each
// acceptor sets SO_REUSEPORT, so both would bind and the kernel would split the traffic
// between them (half an agent listener's connections served without require_agent).
bool same_socket(const std::string& host_a, std::uint16_t port_a, const std::string& host_b, std::uint16_t port_b) {
    if (port_a == 0 || port_a != port_b) {
        return false;
    }
    auto bytes = [](const std::string& h) {
        std::array<unsigned char, 16> b{};
        in_addr v4{};
        if (inet_pton(AF_INET, h.c_str(), &v4) == 1) {
            b[10] = b[11] = 0xff;  // v4-mapped, as a dual-stack socket sees it
            std::memcpy(b.data() + 12, &v4, 4);
        } else if (inet_pton(AF_INET6, h.c_str(), b.data()) != 1) {
            return std::optional<std::array<unsigned char, 16>>{};
        }
        return std::optional<std::array<unsigned char, 16>>{b};
    };
    const auto a = bytes(host_a);
    const auto b = bytes(host_b);
    if (!a || !b) {
        return host_a == host_b;
    }
    auto wildcard = [](const std::array<unsigned char, 16>& x) {
        static const std::array<unsigned char, 16> any6{};
        std::array<unsigned char, 16> any4{};
        any4[10] = any4[11] = 0xff;
        return x == any6 || x == any4;
    };
    return *a == *b || wildcard(*a) || wildcard(*b);
}

bool is_loopback(const std::string& host) {
    return host == "::1" || host.rfind("127.", 0) == 0;
}

void parse_admin(cfg::object_reader& root, config& c) {
    auto e = root.object("admin");
    if (!e) {
        return;
    }
    cfg::object_reader r{*e, "admin", root.errs()};
    c.admin.enabled = true;
    if (auto t = r.object("tls")) {
        c.admin.tls = parse_tls_files(*t, r.path_of("tls"), root.errs());
    }
    if (auto v = r.string("address")) {
        if (auto hp = parse_address(*v)) {
            c.admin.host = hp->first;
            c.admin.port = hp->second;
            if (!is_loopback(c.admin.host) && !c.admin.tls) {
                // Bearer tokens over plain TCP on a network are a credential leak.
                r.errs().add(r.path_of("address"), cfg::quote(*v) +
                                                       " is not a loopback address; the admin API without TLS "
                                                       "only listens on 127.0.0.0/8 or ::1");
            }
        } else {
            r.errs().add(r.path_of("address"), cfg::quote(*v) + " is not an address (use \"127.0.0.1:9901\")");
        }
    }
    if (auto v = r.integer("max_connections", false, 1, 100'000)) {
        c.admin.max_connections = static_cast<std::size_t>(*v);
    }
    if (auto v = r.integer("max_body_bytes", false, 1024, 16 * 1024 * 1024)) {
        c.admin.max_body_bytes = static_cast<std::size_t>(*v);
    }
    // Names are the audit's actors (tokens and certificates alike); a credential given twice
    // would act with the first entry's role, whatever the second says.
    std::set<std::string> names;
    std::set<std::string> digests;
    std::set<std::pair<std::string, std::string>> certs;  // (subject_cn, pin or "")
    std::set<std::string> unpinned;                       // subject_cns with an entry that takes any certificate
    // A name is one actor with one role: several certificates (a rotation) or a token and a
    // certificate (a person's CLI and browser) may share it, with the same role.
    std::map<std::string, admin_role> roles;
    each_item(r, "tokens", !r.has("client_certs"), [&](simdjson::dom::element t, const std::string& path) {
        cfg::object_reader tr{t, path, root.errs()};
        admin_token tok;
        if (auto v = tr.string("name", true)) {
            if (v->empty() || !names.insert(*v).second) {
                tr.errs().add(tr.path_of("name"), cfg::quote(*v) + " is empty or used by another token");
            }
            tok.name = *v;
        }
        if (auto v = tr.string("sha256", true)) {
            if (!hex_to_bytes(*v, tok.sha256.data(), tok.sha256.size())) {
                tr.errs().add(tr.path_of("sha256"), "must be 64 hex digits: the SHA-256 of the token, never the token");
            } else if (!digests.emplace(reinterpret_cast<const char*>(tok.sha256.data()), tok.sha256.size()).second) {
                tr.errs().add_since_stored(tr.path_of("sha256"), "this token already belongs to another entry");
            }
        }
        if (auto v = tr.string("role", true)) {
            if (*v == "viewer") {
                tok.role = admin_role::viewer;
            } else if (*v == "operator") {
                tok.role = admin_role::operator_;
            } else if (*v == "admin") {
                tok.role = admin_role::admin;
            } else {
                tr.errs().add(tr.path_of("role"), cfg::quote(*v) + " is not a role (viewer, operator, admin)");
            }
        }
        roles.emplace(tok.name, tok.role);
        tr.finish();
        c.admin.tokens.push_back(std::move(tok));
    });
    each_item(r, "client_certs", false, [&](simdjson::dom::element t, const std::string& path) {
        cfg::object_reader cr{t, path, root.errs()};
        admin_client_cert cc;
        if (auto v = cr.string("name", true)) {
            if (v->empty()) {
                cr.errs().add_since_stored(cr.path_of("name"), "must not be empty (it names the actor in the audit log)");
            }
            cc.name = *v;
        }
        if (auto v = cr.string("subject_cn", true)) {
            cc.subject_cn = *v;
        }
        if (auto v = cr.string("cert_sha256", false)) {
            std::string hex;
            for (const char ch : *v) {
                if (ch != ':') {  // `openssl x509 -fingerprint -sha256` writes AB:CD:...
                    hex += ch;
                }
            }
            std::array<unsigned char, 32> d{};
            if (hex_to_bytes(hex, d.data(), d.size())) {
                cc.cert_sha256 = d;
            } else {
                cr.errs().add(cr.path_of("cert_sha256"), "must be the certificate's SHA-256: 64 hex digits (colons allowed)");
            }
        }
        if (auto v = cr.string("role", true)) {
            if (*v == "viewer") {
                cc.role = admin_role::viewer;
            } else if (*v == "operator") {
                cc.role = admin_role::operator_;
            } else if (*v == "admin") {
                cc.role = admin_role::admin;
            } else {
                cr.errs().add(cr.path_of("role"), cfg::quote(*v) + " is not a role (viewer, operator, admin)");
            }
        }
        if (auto [it, fresh] = roles.emplace(cc.name, cc.role); !fresh && it->second != cc.role) {
            cr.errs().add_since_stored(cr.path_of("name"),
                                       cfg::quote(cc.name) + " is used by an earlier token or certificate with another "
                                                             "role: the audit log could not tell which role acted");
        }
        std::string pin;
        if (cc.cert_sha256) {
            pin.assign(reinterpret_cast<const char*>(cc.cert_sha256->data()), cc.cert_sha256->size());
        }
        // The first entry that matches a certificate decides its role: an entry after one
        // without a pin for the same subject, or a second with the same pin, is never used.
        if (unpinned.count(cc.subject_cn) != 0) {
            cr.errs().add_since_stored(cr.path_of("subject_cn"),
                                       cfg::quote(cc.subject_cn) + " is already taken, with any certificate, by an "
                                                                   "earlier entry without cert_sha256: this one is "
                                                                   "never used (list pinned entries first)");
        } else if (!certs.emplace(cc.subject_cn, pin).second) {
            cr.errs().add_since_stored(cr.path_of("subject_cn"),
                                       cfg::quote(cc.subject_cn) + " is listed twice with the same cert_sha256");
        }
        if (pin.empty()) {
            unpinned.insert(cc.subject_cn);
        }
        cr.finish();
        c.admin.client_certs.push_back(std::move(cc));
    });
    if (!c.admin.client_certs.empty() && (!c.admin.tls || c.admin.tls->client_ca_file.empty())) {
        r.errs().add(r.path_of("client_certs"), "need tls.client_ca_file: client certificates are verified against it");
    }
    r.finish();
}

void parse_store(cfg::object_reader& root, config& c) {
    auto e = root.object("store");
    if (!e) {
        return;
    }
    cfg::object_reader r{*e, "store", root.errs()};
    if (auto v = r.string("path")) {
        if (v->empty()) {
            r.errs().add(r.path_of("path"), "must not be empty");
        }
        c.store.path = *v;
    }
    if (auto v = r.duration("retention", false, milliseconds{60'000})) {
        c.store.retention = *v;
    }
    auto count = [&](std::string_view key, std::uint64_t& out) {
        if (auto v = r.integer(key, false, 1, INT64_MAX)) {
            out = static_cast<std::uint64_t>(*v);
        }
    };
    count("max_held", c.store.max_held);
    count("max_held_bytes", c.store.max_held_bytes);
    count("per_breaker_max_held", c.store.per_breaker_max_held);
    count("per_breaker_max_held_bytes", c.store.per_breaker_max_held_bytes);
    if (auto v = r.boolean("group_commit")) {
        c.store.group_commit = *v;
    }
    // (About 100 bytes each in memory: 50 million is ~5 GiB.)
    if (auto v = r.integer("idempotency_keys", false, 1000, 50'000'000)) {
        c.store.idempotency_keys = static_cast<std::uint64_t>(*v);
    }
    if (auto v = r.string("idempotency_header")) {
        if (!is_token(*v)) {
            r.errs().add(r.path_of("idempotency_header"), cfg::quote(*v) + " is not a header name");
        }
        c.store.idempotency_header = *v;
    }
    r.finish();
}

void parse_log(cfg::object_reader& root, config& c) {
    auto e = root.object("log");
    if (!e) {
        return;
    }
    cfg::object_reader r{*e, "log", root.errs()};
    if (auto v = r.string("level")) {
        static constexpr std::string_view levels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
        if (std::find(std::begin(levels), std::end(levels), *v) == std::end(levels)) {
            r.errs().add(r.path_of("level"), cfg::quote(*v) + " is not a level (trace, debug, info, warn, error, critical, off)");
        }
        c.log.level = *v;
    }
    if (auto v = r.string("access_log")) {
        if (v->empty()) {
            r.errs().add(r.path_of("access_log"), "must be \"off\", \"stdout\", \"stderr\" or a file path");
        }
        c.log.access_log = *v;
    }
    r.finish();
}

}  // namespace

std::string_view to_string(admin_role r) {
    switch (r) {
        case admin_role::viewer: return "viewer";
        case admin_role::operator_: return "operator";
        case admin_role::admin: return "admin";
    }
    return "viewer";
}

std::string store_config::breaker_state_path() const {
    const auto slash = path.rfind('/');
    const auto dot = path.rfind('.');
    if (dot != std::string::npos && (slash == std::string::npos || dot > slash)) {
        return path.substr(0, dot) + ".breakers.json";
    }
    return path + ".breakers.json";
}

const breakers::breaker_config* config::find_breaker(std::string_view id) const {
    for (const auto& b : breakers) {
        if (b.id == id) {
            return &b;
        }
    }
    return nullptr;
}

const agent_config* config::agent_by_cert_names(const std::vector<std::string>& names, bool* ambiguous) const {
    const agent_config* found = nullptr;
    std::vector<std::string> folded;
    folded.reserve(names.size());
    for (const auto& n : names) {
        folded.push_back(cert_name_fold(n));
    }
    for (const auto& a : agents) {
        const bool named = std::any_of(a.cert_names.begin(), a.cert_names.end(), [&](const std::string& want) {
            return std::find(folded.begin(), folded.end(), cert_name_fold(want)) != folded.end();
        });
        if (named && found != nullptr) {
            // One certificate, two agents: neither, whatever their order in the config.
            if (ambiguous) {
                *ambiguous = true;
            }
            return nullptr;
        }
        if (named) {
            found = &a;
        }
    }
    return found;
}

const agent_config* config::agent_by_key_digest(std::string_view digest) const {
    // A handful of agents: a linear scan over 32-byte digests costs less than a map here.
    for (const auto& a : agents) {
        for (const auto& k : a.key_sha256) {
            if (digest.size() == k.size() && std::memcmp(digest.data(), k.data(), k.size()) == 0) {
                return &a;
            }
        }
    }
    return nullptr;
}

const route_config* config::find_route(std::string_view name) const {
    for (const auto& r : routes) {
        if (r.name == name) {
            return &r;
        }
    }
    return nullptr;
}

std::optional<std::pair<std::string, std::uint16_t>> passthrough_entry(std::string_view text) {
    std::optional<std::pair<std::string, std::uint16_t>> out;
    if (!text.empty() && text.front() == '[' && text.back() == ']') {
        out = std::pair{std::string{text.substr(1, text.size() - 2)}, std::uint16_t{443}};
    } else if (!text.empty() && text.front() == '[') {
        out = split_host_port(text);
    } else if (const auto colons = std::count(text.begin(), text.end(), ':'); colons == 1) {
        out = split_host_port(text);
    } else {  // a name, or a bare IPv6 literal: no port given
        out = std::pair{std::string{text}, std::uint16_t{443}};
    }
    if (!out || out->first.empty() || out->second == 0 ||
        out->first.find_first_of(" /*?#@[]") != std::string::npos) {
        return std::nullopt;
    }
    // One spelling per host (core/host_name.hpp): `api.example.com.` is api.example.com.
    out->first = std::string{host_name(out->first)};
    std::transform(out->first.begin(), out->first.end(), out->first.begin(),
                   [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    return out;
}

std::optional<std::pair<std::string, std::uint16_t>> split_host_port(std::string_view text) {
    std::string_view host;
    std::string_view port;
    if (!text.empty() && text.front() == '[') {
        const auto close = text.find(']');
        if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
            return std::nullopt;
        }
        host = text.substr(1, close - 1);
        port = text.substr(close + 2);
    } else {
        const auto colon = text.rfind(':');
        if (colon == std::string_view::npos) {
            return std::nullopt;
        }
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
        if (host.find(':') != std::string_view::npos) {
            return std::nullopt;
        }
    }
    if (host.empty() || port.empty()) {
        return std::nullopt;
    }
    unsigned p = 0;
    auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (ec != std::errc{} || ptr != port.data() + port.size() || p > 65535) {
        return std::nullopt;
    }
    return std::pair{std::string{host}, static_cast<std::uint16_t>(p)};
}

std::optional<std::pair<std::string, std::uint16_t>> parse_address(std::string_view text) {
    auto hp = split_host_port(text);
    // Only literal addresses: a listener never depends on DNS at start-up.
    if (!hp || (!boost::urls::parse_ipv4_address(hp->first) && !boost::urls::parse_ipv6_address(hp->first))) {
        return std::nullopt;
    }
    return hp;
}

namespace {

// Where a JSON text stops being valid, as " near line L, column C", or "" when that cannot
// be told (an error the structural pass finds: an unclosed string, bad UTF-8). The DOM
// parser says only what went wrong; the on-demand parser reads the text in order, so where
// it stands when it fails is close to the fault.
simdjson::error_code walk_json(simdjson::ondemand::value v) {
    simdjson::ondemand::json_type t;
    if (auto e = v.type().get(t)) {
        return e;
    }
    switch (t) {
    case simdjson::ondemand::json_type::object: {
        simdjson::ondemand::object o;
        if (auto e = v.get_object().get(o)) {
            return e;
        }
        for (auto f : o) {
            simdjson::ondemand::field field;
            std::string_view key;
            if (auto e = std::move(f).get(field)) {
                return e;
            }
            if (auto e = field.unescaped_key().get(key)) {
                return e;
            }
            if (auto e = walk_json(field.value())) {
                return e;
            }
        }
        return simdjson::SUCCESS;
    }
    case simdjson::ondemand::json_type::array: {
        simdjson::ondemand::array a;
        if (auto e = v.get_array().get(a)) {
            return e;
        }
        for (auto item : a) {
            simdjson::ondemand::value child;
            if (auto e = std::move(item).get(child)) {
                return e;
            }
            if (auto e = walk_json(child)) {
                return e;
            }
        }
        return simdjson::SUCCESS;
    }
    case simdjson::ondemand::json_type::string: return v.get_string().error();
    case simdjson::ondemand::json_type::number: return v.get_number().error();
    case simdjson::ondemand::json_type::boolean: return v.get_bool().error();
    case simdjson::ondemand::json_type::null: {
        bool is_null = false;
        if (auto e = v.is_null().get(is_null)) {
            return e;
        }
        return is_null ? simdjson::SUCCESS : simdjson::INCORRECT_TYPE;
    }
    }
    return simdjson::SUCCESS;
}

std::string json_error_location(std::string_view text) {
    simdjson::ondemand::parser parser;
    const simdjson::padded_string padded{text};
    simdjson::ondemand::document doc;
    if (parser.iterate(padded).get(doc) != simdjson::SUCCESS) {
        return {};
    }
    simdjson::ondemand::value root;
    auto e = doc.get_value().get(root);
    if (e == simdjson::SUCCESS) {
        e = walk_json(root);
    }
    const char* at = nullptr;
    if (e == simdjson::SUCCESS || doc.current_location().get(at) != simdjson::SUCCESS || at < padded.data() ||
        at > padded.data() + text.size()) {
        return {};
    }
    const auto offset = static_cast<std::size_t>(at - padded.data());
    const auto before = text.substr(0, offset);
    const auto line = 1 + std::count(before.begin(), before.end(), '\n');
    const auto last_nl = before.rfind('\n');
    const auto column = 1 + (last_nl == std::string_view::npos ? offset : offset - last_nl - 1);
    return " near line " + std::to_string(line) + ", column " + std::to_string(column);
}

}  // namespace

parse_result parse_config(std::string_view json_text, bool stored) {
    parse_result out;
    out.errors.set_lenient(stored);
    simdjson::dom::parser parser;
    simdjson::padded_string padded{json_text};
    simdjson::dom::element doc;
    if (auto err = parser.parse(padded).get(doc); err) {
        out.errors.add("", std::string{"the file is not valid JSON: "} + simdjson::error_message(err) +
                               json_error_location(json_text));
        return out;
    }
    auto c = std::make_shared<config>();
    cfg::object_reader root{doc, "", out.errors};
    if (!root.is_object()) {
        return out;
    }
    if (auto w = root.integer("workers", false, 0, 256)) {
        c->workers = static_cast<unsigned>(*w);
    }
    parse_listeners(root, *c);
    parse_limits(root, *c);
    parse_upstreams(root, *c);
    parse_routes(root, *c);
    parse_log(root, *c);
    parse_store(root, *c);
    parse_admin(root, *c);
    for (std::size_t i = 0; i < c->listeners.size(); ++i) {
        const auto& l = c->listeners[i];
        const std::string path = cfg::child(cfg::child("listeners", i), "address");
        for (std::size_t j = 0; j < i; ++j) {
            if (same_socket(l.host, l.port, c->listeners[j].host, c->listeners[j].port)) {
                out.errors.add(path, "takes the same connections as listeners[" + std::to_string(j) +
                                         "] (same port, same or wildcard address): the kernel would split them "
                                         "between the two listeners");
            }
        }
        if (c->admin.enabled && same_socket(l.host, l.port, c->admin.host, c->admin.port)) {
            out.errors.add(path, "takes the same connections as admin.address");
        }
    }
    {
        const bool forward = std::any_of(c->listeners.begin(), c->listeners.end(),
                                         [](const auto& l) { return l.forward_proxy.has_value(); });
        for (std::size_t i = 0; i < c->routes.size(); ++i) {
            for (std::size_t j = 0; j < i; ++j) {
                if (route_covers(c->routes[j], c->routes[i], forward)) {
                    out.errors.add_since_stored(cfg::child(cfg::child("routes", i), "match"),
                                   "route " + cfg::quote(c->routes[i].name) + " can never be chosen: routes[" +
                                       std::to_string(j) + "] (" + cfg::quote(c->routes[j].name) +
                                       "), listed before it, takes every request it would (the first route that "
                                       "matches is taken: list the narrower route first)");
                    break;
                }
            }
        }
    }
    // A passthrough entry that names an upstream's host and port (as written: names are not
    // resolved here): a blind tunnel there reaches the
    // API the routes meter, unmetered, around every rule (a route with no match.host does not
    // make it a forward proxy's destination, so the CONNECT would be blind).
    for (std::size_t i = 0; i < c->listeners.size(); ++i) {
        const auto& fp = c->listeners[i].forward_proxy;
        for (std::size_t k = 0; fp && k < fp->passthrough.size(); ++k) {
            const auto& [host, port] = fp->passthrough[k];
            for (const auto& u : c->upstreams) {
                if (u.port == port && rules::iequals(host_name(u.host), host)) {  // (host_name unbrackets)
                    out.errors.add_since_stored(
                        cfg::child(cfg::child(cfg::child(cfg::child("listeners", i), "forward_proxy"), "passthrough"), k),
                        "names upstream " + cfg::quote(u.name) + "'s host and port: a blind tunnel there would reach it "
                        "unmetered, around every rule of its routes (give a route for it a match.host, so that a "
                        "CONNECT there is inspected, and take it out of passthrough)");
                    break;
                }
            }
        }
    }
    parse_agents(root, *c);
    parse_breakers(root, *c);
    if (auto a = root.value("alerts")) {
        c->alerts = alerts::parse_alerts(&*a, out.errors);
    }

    std::vector<std::string> route_names;
    for (const auto& r : c->routes) {
        route_names.push_back(r.name);
    }
    auto fm = root.value("failure_modes");
    auto rl = root.value("rules");
    if (fm || rl) {
        c->rules = rules::parse_rules(fm ? &*fm : nullptr, rl ? &*rl : nullptr, route_names, out.errors);
        // Cross-check: every rule trips a declared breaker, and not an implicit one: an
        // agent's kill switch tripped by a rule that counts every caller's traffic would
        // switch that agent off for another's misfire and hold everyone's sends while it is
        // off; an upstream's health breaker is the health checks' alone.
        for (const auto& r : c->rules->rules) {
            if (r.trips.empty()) {
                continue;
            }
            if (r.trips.find('/') != std::string::npos && c->find_breaker(r.trips) != nullptr) {
                out.errors.add_since_stored(cfg::child(cfg::child("rules", r.index), "trips"),
                               cfg::quote(r.trips) +
                                   " is an implicit breaker (an agent's kill switch or an upstream's health), "
                                   "which only operators and health checks trip; declare a breaker in \"breakers\"");
            } else if (c->find_breaker(r.trips) == nullptr) {
                out.errors.add(cfg::child(cfg::child("rules", r.index), "trips"),
                               cfg::quote(r.trips) + " is not a declared breaker");
            }
        }
    }

    // A forward proxy intercepts CONNECTs to the routes' hosts with a certificate minted for
    // the host: a host no certificate can name (`my_api.internal`) is a destination whose
    // every CONNECT is refused. Said at load, as a warning: such a host still serves its
    // reverse-proxy and absolute-form requests (a docker-compose service name).
    if (std::any_of(c->listeners.begin(), c->listeners.end(), [](const auto& l) { return l.forward_proxy.has_value(); })) {
        for (std::size_t i = 0; i < c->routes.size(); ++i) {
            const std::string& h = c->routes[i].match.host;
            unsigned char addr[16];
            if (h.empty() || inet_pton(AF_INET, h.c_str(), addr) == 1 || inet_pton(AF_INET6, h.c_str(), addr) == 1 ||
                valid_dns_name(h)) {
                continue;
            }
            out.warnings.push_back(cfg::child(cfg::child(cfg::child("routes", i), "match"), "host") + ": " +
                                   cfg::quote(h) +
                                   " cannot be intercepted by a forward proxy (a certificate names a host of letters, "
                                   "digits, '-' and dots, IDNA's xn-- form for others, or an IP address): a CONNECT "
                                   "to it is refused (400 bad_target); requests through the proxy to http:// URLs "
                                   "and to the reverse-proxy listeners are served");
        }
    }

    // Sections of the product that this build does not implement yet are refused rather
    // than silently ignored: an operator who configures a breaker must not believe it is
    // guarding traffic when it is not.
    for (std::string_view section : {"cluster"}) {
        if (root.has(section)) {
            root.value(section);
            out.errors.add(std::string{section}, "is not supported by this build of breakerbox yet");
        }
    }
    root.finish();

    if (out.errors.empty()) {
        for (std::size_t i = 0; i < c->upstreams.size(); ++i) {
            if (c->upstreams[i].tls && !c->upstreams[i].verify) {
                out.warnings.push_back("upstreams[" + std::to_string(i) + "].verify: false: the certificate of " +
                                       c->upstreams[i].host + " is not verified, so anyone on the path can read and "
                                       "answer what is sent to it (the API keys included); for tests only");
            }
        }
        // Agents whose controls a caller can skip by sending no key at all.
        if (!c->agents.empty()) {
            for (std::size_t i = 0; i < c->listeners.size(); ++i) {
                if (!c->listeners[i].require_agent) {
                    out.warnings.push_back("listeners[" + std::to_string(i) + "].require_agent: agents are configured, but "
                                           "this listener also serves requests without an agent key; their scopes, "
                                           "kill switches, sandbox and body constraints do not apply to those "
                                           "(set require_agent: true to refuse them with 401)");
                }
            }
        }
        for (const auto& e : out.errors.relaxed()) {
            out.warnings.push_back(e.to_string() + " (kept: this config was written before the check; the next "
                                                   "config applied must mend it)");
        }
        c->source_json = std::string{json_text};
        out.cfg = std::move(c);
    }
    return out;
}

parse_result load_config_file(const std::string& path, std::optional<std::string>* text, bool at_start) {
    // SIGHUP reads it again on the control thread: a FIFO or a device there must not block
    // or exhaust it. Far above any real config (a thousand rules is well under 1 MiB).
    constexpr std::size_t max_config = std::size_t{64} << 20;
    file_error fe = file_error::none;
    std::optional<std::string> body = read_regular_file(path, max_config, &fe, at_start);
    if (!body) {
        parse_result out;
        out.errors.add("", fe == file_error::unreadable ? "cannot read config file " + cfg::quote(path)
                                                        : "config file " + cfg::quote(path) + " " + describe(fe, max_config));
        return out;
    }
    if (text != nullptr) {
        *text = *body;
    }
    return parse_config(*body);
}

}  // namespace bb
