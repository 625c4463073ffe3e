#include "proxy/admin.hpp"

#include "core/once_every.hpp"
#include "core/read_limits.hpp"
#include "core/utf8.hpp"
#include "proxy/redact.hpp"

#include "alerts/alerts.hpp"
#include "core/json_reader.hpp"
#include "core/sha256.hpp"
#include "core/url_decode.hpp"
#include "proxy/framing.hpp"
#include "proxy/remediation.hpp"
#include "proxy/server.hpp"
#include "proxy/tls.hpp"
#include "proxy/upstream.hpp"
#include "proxy/wire.hpp"
#include "rules/guardrails.hpp"
#include "rules/meter.hpp"
#include "store/codec.hpp"
#include "store/database.hpp"

#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>

#include <boost/asio/ssl/context.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <simdjson.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <list>
#include <map>
#include <set>
#include <sstream>

namespace bb::proxy {

namespace {

// A byte that would break a log line (a line break, an escape): ids, reasons and paths are
// logged as written.
bool control_char(char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }
bool has_control(std::string_view s) { return std::any_of(s.begin(), s.end(), control_char); }

// A page or bulk-action limit: 1 to 1000 in plain digits (not 0 read as "no limit", nor
// 5000 read as 1000); nullopt otherwise.
std::optional<std::size_t> one_to_thousand(std::string_view v) {
    if (v.empty() || v.size() > 4 || !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return std::nullopt;
    }
    std::size_t n = 0;
    std::from_chars(v.data(), v.data() + v.size(), n);
    return n >= 1 && n <= 1000 ? std::optional{n} : std::nullopt;
}

// An operator's reason: bounded (see body()), and not blank however written: ASCII blanks,
// and the Unicode spaces and invisible characters a form or a chat paste leaves (no-break
// and other spaces, zero-width characters and joiners, direction marks and embeddings, the
// soft hyphen, variation selectors, the Hangul fillers, the byte order mark). (The guards'
// own table, rules/guardrails_scan.cpp, reads text to scan it; this one only says blank.)
constexpr std::size_t max_reason_bytes = 2048;
bool blank_text(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c == ' ' || c == '\t') {
            ++i;
            continue;
        }
        auto at = [&](std::size_t k) { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0u; };
        if (c == 0xC2 && (at(1) == 0xA0 || at(1) == 0xAD)) {  // U+00A0, U+00AD
            i += 2;
            continue;
        }
        if ((c == 0xCD && at(1) == 0x8F) || (c == 0xD8 && at(1) == 0x9C)) {  // U+034F, U+061C
            i += 2;
            continue;
        }
        if (c == 0xE2 && at(1) == 0x80 && (at(2) <= 0x8F || (at(2) >= 0xA8 && at(2) <= 0xAF))) {
            i += 3;  // U+2000..U+200F (spaces, zero-width, marks), U+2028..U+202F (separators, embeddings)
            continue;
        }
        if ((c == 0xE2 && at(1) == 0x81 && at(2) >= 0x9F && at(2) <= 0xAF) ||  // U+205F..U+206F
            (c == 0xE1 && at(1) == 0x9A && at(2) == 0x80) ||                   // U+1680
            (c == 0xE1 && at(1) == 0xA0 && at(2) == 0x8E) ||                   // U+180E
            (c == 0xE3 && at(1) == 0x80 && at(2) == 0x80) ||                   // U+3000
            (c == 0xE3 && at(1) == 0x85 && at(2) == 0xA4) ||                   // U+3164 (Hangul filler)
            (c == 0xEF && at(1) == 0xB8 && at(2) >= 0x80 && at(2) <= 0x8F) ||  // U+FE00..U+FE0F
            (c == 0xEF && at(1) == 0xBE && at(2) == 0xA0) ||                   // U+FFA0 (half-width filler)
            (c == 0xEF && at(1) == 0xBB && at(2) == 0xBF)) {                   // U+FEFF
            i += 3;
            continue;
        }
        return false;
    }
    return true;
}

// ---- small JSON helpers ------------------------------------------------------------------

std::string q(std::string_view s) {
    return cfg::quote(s);
}

std::string num(double v) {
    std::ostringstream ss;
    ss.precision(15);
    ss << v;
    return ss.str();
}

// Appends to the audit log. The new chain head goes to the process log: an anchor kept
// outside the store file, so a log shipped elsewhere shows a later wipe or rewrite of the
// chain (with the head) that the store alone could not.
asio::awaitable<store::result> append_audit(store::database& db, store::audit_entry e) {
    auto r = co_await await_store([&](store::done_fn done) { db.append_audit(std::move(e), std::move(done)); });
    if (r.ok) {
        spdlog::info("audit: entry {} appended, chain head {}", r.count, r.hash);
        if (const auto problem = db.audit_tampering(); !problem.empty()) {
            spdlog::error("audit: the log was tampered with: {}", problem);
        }
    }
    co_return r;
}

std::int64_t to_wall_ms(time_point t, const clock& c) {
    const auto wall = c.wall_now() - std::chrono::duration_cast<std::chrono::system_clock::duration>(c.now() - t);
    return std::chrono::duration_cast<std::chrono::milliseconds>(wall.time_since_epoch()).count();
}

std::string breaker_json(const breakers::instance_snapshot& s, const config& cfg, const clock& c) {
    const auto* b = cfg.find_breaker(s.breaker);
    std::string o = "{";
    o += "\"instance\":" + q(s.instance);
    o += ",\"breaker\":" + q(s.breaker);
    o += ",\"key\":" + q(s.key);
    o += ",\"action\":" + q(b ? breakers::to_string(b->act) : std::string_view{"pause"});
    // PRODUCT.md's breaker view: its scope, as configured (`key`: one instance per key
    // value; `breaker`: one for all), so a client can tell which breakers take a key.
    o += ",\"scope\":" + q(b != nullptr && b->per_key ? "key" : "breaker");
    o += ",\"state\":" + q(breakers::to_string(s.st));
    o += ",\"mode\":" + q(breakers::to_string(s.md));
    o += ",\"mode_expires_at\":" + (s.mode_expires ? std::to_string(to_wall_ms(*s.mode_expires, c)) : "null");
    o += ",\"opened_at\":" +
         (s.st != breakers::state::closed ? std::to_string(to_wall_ms(s.opened_at, c)) : std::string{"null"});
    o += ",\"cooldown_ms\":" + std::to_string(s.cooldown.count());
    o += ",\"trips\":" + std::to_string(s.trips);
    o += ",\"last_trip\":";
    if (s.last_trip) {
        const auto& t = *s.last_trip;
        o += "{\"kind\":" + q(t.cause.kind) + ",\"actor\":" + q(t.cause.actor) + ",\"reason\":" + q(t.cause.reason) +
             ",\"rule\":" + q(t.cause.rule) + ",\"key\":" + q(t.cause.key) + ",\"value\":" + num(t.cause.value) +
             ",\"limit\":" + num(t.cause.limit) + ",\"window_ms\":" + std::to_string(t.cause.window.count()) +
             ",\"request_id\":" + q(t.cause.request_id) + ",\"at\":" + std::to_string(to_wall_ms(t.at, c)) + "}";
    } else {
        o += "null";
    }
    o += "}";
    return o;
}

std::string held_json(const store::held_request& h, bool full, const std::vector<store::history_entry>* history,
                      bool reveal_credentials = false, bool reveal_body = false) {
    std::string o = "{";
    o += "\"ticket\":" + q(h.ticket);
    o += ",\"state\":" + q(store::to_string(h.state));
    o += ",\"method\":" + q(h.method);
    // Credentials (header values, query parameters) are shown only to the admin role; the
    // held request will be replayed with them, from the store, never from this API.
    bool target_redacted = false;
    o += ",\"target\":" + q(reveal_credentials ? h.target : redact_query(h.target, &target_redacted));
    if (target_redacted) {
        o += ",\"target_redacted\":true";
    }
    o += ",\"route\":" + q(h.route);
    o += ",\"upstream\":" + q(h.upstream);
    o += ",\"agent\":" + q(h.agent);
    o += ",\"rule\":" + q(h.rule);
    o += ",\"breaker_instance\":" + q(h.breaker_instance);
    o += ",\"failure_mode\":" + q(h.failure_mode);
    o += ",\"sandboxed_by\":" + (h.sandboxed_by.empty() ? std::string{"null"} : q(h.sandboxed_by));
    o += ",\"request_id\":" + q(h.request_id);
    o += ",\"received_at\":" + std::to_string(h.received_ms);
    o += ",\"body_bytes\":" + std::to_string(h.body_bytes != 0 ? h.body_bytes : static_cast<std::int64_t>(h.body.size()));
    o += ",\"release_status\":" + (h.release_status ? std::to_string(*h.release_status) : std::string{"null"});
    o += ",\"release_attempts\":" + std::to_string(h.release_attempts);
    o += ",\"discard_reason\":" + q(h.discard_reason);
    if (full) {
        o += ",\"headers\":[";
        bool redacted = false;
        for (std::size_t i = 0; i < h.headers.size(); ++i) {
            const bool hide = !reveal_credentials && credential_name(h.headers[i].first);
            redacted = redacted || hide;
            o += (i ? "," : "") + std::string{"["} + q(h.headers[i].first) + "," +
                 (hide ? std::string{"\"[redacted]\""} : q(h.headers[i].second)) + "]";
        }
        o += "],\"headers_redacted\":" + std::string{redacted ? "true" : "false"};
        // The body is what the operator decides on (release or discard); it is also the
        // customers' data (addresses, names, message text), so a viewer sees only its size.
        if (reveal_body) {
            o += ",\"body_base64\":" + q(store::base64_encode(h.body));
        } else {
            o += ",\"body_redacted\":true";
        }
    }
    if (history != nullptr) {
        o += ",\"history\":[";
        for (std::size_t i = 0; i < history->size(); ++i) {
            const auto& e = (*history)[i];
            o += (i ? "," : "") + std::string{"{\"from\":"} + q(e.from) + ",\"to\":" + q(e.to) +
                 ",\"at\":" + std::to_string(e.at_ms) + ",\"actor\":" + q(e.actor) + ",\"detail\":" + q(e.detail) + "}";
        }
        o += "]";
    }
    o += "}";
    return o;
}

// `release`: a release's result, whose count is the upstream's status; a discard's count is
// the record's release attempts, which is no status and is left out.
std::string result_json(const store::result& r, bool release) {
    return "{\"ticket\":" + q(r.ticket) + ",\"ok\":" + (r.ok ? "true" : "false") + ",\"code\":" + q(r.code) +
           ",\"message\":" + q(r.message) + (release ? ",\"status\":" + std::to_string(r.count) : std::string{}) + "}";
}

// `twice`: the first parameter given more than once (which copy would count?), if any.
std::map<std::string, std::string> parse_query(std::string_view qs, std::string* twice) {
    std::map<std::string, std::string> out;
    while (!qs.empty()) {
        const auto amp = qs.find('&');
        const auto pair = qs.substr(0, amp);
        const auto eq = pair.find('=');
        if (!pair.empty()) {
            auto name = url_decode(pair.substr(0, eq));
            if (out.contains(name) && twice->empty()) {
                *twice = name;
            }
            out[std::move(name)] = eq == std::string_view::npos ? "" : url_decode(pair.substr(eq + 1));
        }
        qs = amp == std::string_view::npos ? std::string_view{} : qs.substr(amp + 1);
    }
    return out;
}

// ---- errors --------------------------------------------------------------------------------

struct api_error {
    api_error(http::status s, std::string c, std::string m, std::string f = {})
        : status(s), code(std::move(c)), message(std::move(m)), field(std::move(f)) {}
    http::status status;
    std::string code;
    std::string message;
    std::string field;
};

response json_response(http::status st, std::string body, unsigned version, bool keep_alive) {
    response res{st, version};
    res.set(http::field::server, "breakerbox-admin");
    res.set(http::field::content_type, "application/json");
    res.set(http::field::cache_control, "no-store");
    res.body() = std::move(body);
    res.body() += '\n';
    res.keep_alive(keep_alive);
    res.prepare_payload();
    return res;
}

std::string error_json(const api_error& e) {
    std::string o = "{\"error\":{\"code\":" + q(e.code) + ",\"message\":" + q(e.message);
    if (!e.field.empty()) {
        o += ",\"field\":" + q(e.field);
    }
    return o + "}}";
}

// ---- auth ----------------------------------------------------------------------------------

struct caller {
    std::string name;
    admin_role role = admin_role::viewer;
};

// An mTLS client certificate that maps to an operator; the handshake already verified it.
std::optional<caller> cert_caller(const config& cfg, SSL* ssl) {
    if (ssl == nullptr || SSL_get_verify_result(ssl) != X509_V_OK) {
        return std::nullopt;
    }
    X509* peer = SSL_get1_peer_certificate(ssl);
    if (peer == nullptr) {
        return std::nullopt;
    }
    const std::unique_ptr<X509, decltype(&X509_free)> owned{peer, X509_free};
    const auto cn = single_common_name(peer);
    if (!cn) {
        return std::nullopt;
    }
    std::array<unsigned char, 32> fingerprint{};
    unsigned int len = 0;
    const bool have_fingerprint =
        X509_digest(peer, EVP_sha256(), fingerprint.data(), &len) == 1 && len == fingerprint.size();
    for (const auto& c : cfg.admin.client_certs) {
        if (c.subject_cn != *cn) {
            continue;
        }
        if (c.cert_sha256 && (!have_fingerprint ||
                              CRYPTO_memcmp(c.cert_sha256->data(), fingerprint.data(), fingerprint.size()) != 0)) {
            continue;  // pinned to another certificate with the same CN
        }
        return caller{c.name, c.role};
    }
    return std::nullopt;
}

std::optional<caller> authenticate(const config& cfg, std::string_view authorization) {
    constexpr std::string_view prefix = "Bearer ";
    if (authorization.size() <= prefix.size() || !iequals(authorization.substr(0, prefix.size()), prefix)) {
        return std::nullopt;
    }
    const auto token = authorization.substr(prefix.size());
    const sha256_digest digest = sha256(token);
    // Compare against every configured digest, in constant time, without stopping early:
    // neither the match nor its position leaks through timing.
    std::optional<caller> found;
    for (const auto& t : cfg.admin.tokens) {
        const bool match = CRYPTO_memcmp(digest.data(), t.sha256.data(), digest.size()) == 0;
        if (match && !found) {
            found = caller{t.name, t.role};
        }
    }
    return found;
}

// ---- secrets in what viewers read ----------------------------------------------------------------

// Whether a config or request key names a secret: credential-like header and parameter
// names (Authorization, *token*, *secret*, api keys...) and PagerDuty's routing_key.
bool secret_key(std::string_view key) { return credential_name(key) || iequals(key, "routing_key"); }

// Also hidden from viewers: an alert sink's URL (a Slack incoming webhook's URL is its
// credential) and its headers' values (whatever their names: X-Hook-Key, X-Auth-Key are
// credentials no name rule catches), agents' key digests (unsalted SHA-256 of API keys)
// and private key paths.
bool hidden_key(std::string_view key, bool in_alerts) {
    return secret_key(key) || iequals(key, "key_sha256") || iequals(key, "key_file") || iequals(key, "ca_key_file") ||
           (in_alerts && (iequals(key, "url") || iequals(key, "webhook") || iequals(key, "headers")));
}

void redact_into(simdjson::dom::element e, std::string& out, bool hide, bool& redacted, bool in_alerts = false) {
    switch (e.type()) {
        case simdjson::dom::element_type::OBJECT: {
            out += '{';
            bool first = true;
            for (auto f : simdjson::dom::object(e)) {
                out += first ? "" : ",";
                first = false;
                out += q(f.key);
                out += ':';
                const bool alerts = in_alerts || iequals(f.key, "alerts");
                // Any URL that carries user info or a query (a config refused for it, kept in
                // the audit log): the credential may be there.
                std::string_view text;
                const bool url_secret = iequals(f.key, "url") && f.value.get(text) == simdjson::SUCCESS &&
                                        text.find_first_of("@?#") != std::string_view::npos;
                redact_into(f.value, out, hide || url_secret || hidden_key(f.key, alerts), redacted, alerts);
            }
            out += '}';
            return;
        }
        case simdjson::dom::element_type::ARRAY: {
            out += '[';
            bool first = true;
            for (auto v : simdjson::dom::array(e)) {
                out += first ? "" : ",";
                first = false;
                redact_into(v, out, hide, redacted, in_alerts);
            }
            out += ']';
            return;
        }
        case simdjson::dom::element_type::STRING:
            if (hide) {
                out += "\"[redacted]\"";
                redacted = true;
                return;
            }
            out += q(std::string_view{e});
            return;
        default: out += simdjson::minify(e); return;
    }
}

// JSON text with the values under secret keys replaced by "[redacted]" (for viewers:
// alert sinks' Authorization headers, routing keys, tokens in request bodies). Text
// that is not JSON (a body cut at 4 KiB) is hidden whole. nullopt: nothing to hide.
std::optional<std::string> redact_secrets(std::string_view json) {
    simdjson::dom::parser p;
    simdjson::dom::element root;
    if (p.parse(simdjson::padded_string{json}).get(root) != simdjson::SUCCESS) {
        return "[redacted: " + std::to_string(json.size()) + " bytes that are not JSON]";
    }
    std::string out;
    bool redacted = false;
    redact_into(root, out, false, redacted);
    if (!redacted) {
        return std::nullopt;
    }
    return out;
}

// ---- config diff (change control) ------------------------------------------------------------

struct config_diff {
    std::vector<std::string> lines;
    std::vector<std::string> loosening;  // changes that need the admin role
};

// An instance of `breaker` that contains something now (open, half-open, or in an
// operator's mode), as "instance is state/mode"; empty when the breaker is at rest.
std::string containing_instance(const std::vector<breakers::instance_snapshot>& live, std::string_view breaker) {
    const auto busy = std::find_if(live.begin(), live.end(), [&](const breakers::instance_snapshot& i) {
        return i.breaker == breaker && !i.at_rest();
    });
    return busy == live.end() ? std::string{} : busy->described();
}

// Whether two versions of a rule send the same requests to the same breaker instances
// (route, match and key unchanged). When they do not, instances the old version tripped may
// no longer be consulted by the traffic they were tripped for.
bool same_mapping(const rules::rule& a, const rules::rule& b) {
    auto path_text = [](const rules::match_spec& m) { return m.path ? m.path->text : std::string{}; };
    if (a.trips != b.trips || a.route != b.route || a.match.methods != b.match.methods ||
        path_text(a.match) != path_text(b.match) || a.match.path_from_preset != b.match.path_from_preset ||
        a.match.path_prefix != b.match.path_prefix ||
        a.match.host != b.match.host || a.match.headers != b.match.headers || a.key.size() != b.key.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.key.size(); ++i) {
        if (a.key[i].kind != b.key[i].kind || a.key[i].name != b.key[i].name || a.key[i].path.text != b.key[i].path.text) {
            return false;
        }
    }
    return true;
}

// The top-level sections other than the guards (rules, breakers, failure_modes, agents)
// whose JSON differs between two configs, as "a, b"; empty when none does.
std::string outside_guards(const std::string& a, const std::string& b) {
    auto sections = [](const std::string& text) {
        std::map<std::string, std::string> out;
        simdjson::dom::parser p;
        simdjson::dom::object o;
        if (p.parse(simdjson::padded_string{text}).get(o) != simdjson::SUCCESS) {
            out["(unreadable)"] = text;
            return out;
        }
        for (auto f : o) {
            const std::string key{f.key};
            if (key != "rules" && key != "breakers" && key != "failure_modes" && key != "agents") {
                out.emplace(key, simdjson::minify(f.value));  // the first copy, as the parser reads it
            }
        }
        return out;
    };
    const auto x = sections(a);
    const auto y = sections(b);
    std::string changed;
    for (const auto& [k, v] : x) {
        const auto it = y.find(k);
        if (it == y.end() || it->second != v) {
            changed += (changed.empty() ? "" : ", ") + k;
        }
    }
    for (const auto& [k, v] : y) {
        if (!x.count(k)) {
            changed += (changed.empty() ? "" : ", ") + k;
        }
    }
    return changed;
}

// Whether two JSON texts are the same document whatever their layout (a text that does not
// parse is compared as written).
bool same_json(const std::string& a, const std::string& b) {
    if (a == b) {
        return true;
    }
    auto minified = [](const std::string& text) {
        simdjson::dom::parser p;
        simdjson::dom::element e;
        return p.parse(simdjson::padded_string{text}).get(e) == simdjson::SUCCESS ? simdjson::minify(e) : text;
    };
    return minified(a) == minified(b);
}

// The items of a top-level array section (rules, breakers, agents, failure_modes) by their
// "id": each field's minified JSON (its first copy, as the parser reads it).
using item_fields = std::map<std::string, std::string>;
std::map<std::string, item_fields> section_items(const std::string& source, std::string_view section) {
    std::map<std::string, item_fields> out;
    simdjson::dom::parser p;
    simdjson::dom::element root;
    simdjson::dom::array items;
    if (p.parse(simdjson::padded_string{source}).get(root) != simdjson::SUCCESS ||
        root[section].get(items) != simdjson::SUCCESS) {
        return out;
    }
    for (auto item : items) {
        simdjson::dom::object o;
        std::string_view id;
        if (item.get(o) != simdjson::SUCCESS || o["id"].get(id) != simdjson::SUCCESS) {
            continue;
        }
        auto [it, added] = out.try_emplace(std::string{id});
        if (!added) {
            continue;
        }
        for (auto f : o) {
            it->second.emplace(std::string{f.key}, simdjson::minify(f.value));
        }
    }
    return out;
}

// The fields (other than `judged`, which their own checks compare) that differ, are added
// or are removed between two versions of an item, as "a, b".
std::string unjudged_changes(const item_fields& before, const item_fields& after, const std::set<std::string>& judged) {
    std::string out;
    auto note = [&](const std::string& k) {
        if (!judged.count(k) && out.find(k) == std::string::npos) {
            out += (out.empty() ? "" : ", ") + k;
        }
    };
    for (const auto& [k, v] : before) {
        const auto it = after.find(k);
        if (it == after.end() || it->second != v) {
            note(k);
        }
    }
    for (const auto& [k, v] : after) {
        if (!before.count(k)) {
            note(k);
        }
    }
    return out;
}

// For every item of `section` in both configs: a change to a field outside `judged` is a
// loosening (named "changes F of <noun> ID").
void judge_other_fields(config_diff& d, const config& a, const config& b, std::string_view section,
                        const std::string& noun, const std::set<std::string>& judged) {
    const auto before = section_items(a.source_json, section);
    const auto after = section_items(b.source_json, section);
    for (const auto& [id, f] : before) {
        const auto it = after.find(id);
        if (it == after.end()) {
            continue;  // removals are judged by each section's own checks
        }
        if (const auto other = unjudged_changes(f, it->second, judged); !other.empty()) {
            d.lines.push_back(std::string{section} + "[" + id + "]: " + other + " changed");
            d.loosening.push_back("changes " + other + " of " + noun + " " + id);
        }
    }
}

// A suppression list that lost entries (a file cut short while being written, an address
// taken off, a list replaced by another) lets mail through to addresses it held: a
// loosening, judged by the entries read, since the config names the same file either way.
void judge_suppression_list(config_diff& d, const std::string& id, const rules::rule& r, const rules::rule& n) {
    auto list = [](const rules::rule& x) -> const rules::suppression_list* {
        if (!x.guard || x.guard->k != rules::guardrail::kind::recipients) {
            return nullptr;
        }
        return x.guard->recipients.suppressed.get();
    };
    const auto* before = list(r);
    const auto* after = list(n);
    if (before == nullptr || after == nullptr || before == after) {
        return;
    }
    const std::size_t removed = before->missing_from(*after);
    if (before->size() != after->size() || removed > 0) {
        d.lines.push_back("rules[" + id + "].guard.recipients.suppression_file: " + std::to_string(before->size()) +
                          " -> " + std::to_string(after->size()) + " entries (" + std::to_string(removed) + " removed)");
    }
    if (removed > 0) {
        d.loosening.push_back("takes " + std::to_string(removed) + (removed == 1 ? " entry" : " entries") +
                              " off the suppression list of rule " + id +
                              " (" + std::to_string(before->size()) + " -> " + std::to_string(after->size()) +
                              " entries)");
    }
}

config_diff diff_configs(const config& a, const config& b) {
    config_diff d;
    // What the checks below do not judge field by field is judged as a loosening: an
    // operator's change that cannot be shown to tighten needs the admin role (a guard's
    // allow list, an aggregation, a baseline's factor, a sandbox upstream, a throttle rate,
    // a certificate name, a severity...). Fail closed: a new setting is covered from day one.
    const auto old_rule_src = section_items(a.source_json, "rules");
    const auto new_rule_src = section_items(b.source_json, "rules");
    std::map<std::string, const rules::rule*> old_rules;
    std::map<std::string, const rules::rule*> new_rules;
    if (a.rules) {
        for (const auto& r : a.rules->rules) {
            old_rules[r.id] = &r;
        }
    }
    if (b.rules) {
        for (const auto& r : b.rules->rules) {
            new_rules[r.id] = &r;
        }
    }
    for (const auto& [id, r] : old_rules) {
        auto it = new_rules.find(id);
        if (it == new_rules.end()) {
            d.lines.push_back("rules: - " + id);
            d.loosening.push_back("removes rule " + id);
            continue;
        }
        const auto* n = it->second;
        if (n->limit != r->limit) {
            d.lines.push_back("rules[" + id + "].limit: " + num(r->limit) + " -> " + num(n->limit));
            if (n->limit > r->limit) {
                d.loosening.push_back("raises the limit of rule " + id);
            }
        }
        if (n->window != r->window) {
            d.lines.push_back("rules[" + id + "].window: " + cfg::format_duration(r->window) + " -> " +
                              cfg::format_duration(n->window));
            // Either way the rule's counts start again from zero (a new meter): longer is
            // no tighter than shorter while the old counts are gone (9,999 of 10,000 an hour
            // becomes 0 of 10,000 in two).
            d.loosening.push_back((n->window < r->window ? "shortens the window of rule " : "changes the window of rule ") +
                                  id + " (its counts start again)");
        }
        if (n->measure.text != r->measure.text) {
            d.lines.push_back("rules[" + id + "].measure: " + q(r->measure.text) + " -> " + q(n->measure.text));
            d.loosening.push_back("changes what rule " + id + " measures");
        }
        if (n->on_invalid_body != r->on_invalid_body && n->on_invalid_body == rules::invalid_body_policy::zero) {
            d.lines.push_back("rules[" + id + "].on_invalid_body: reject -> zero");
            d.loosening.push_back("lets rule " + id + " count an unreadable body as zero");
        }
        if (!same_mapping(*r, *n)) {
            d.loosening.push_back("changes which requests rule " + id + " meets (its route, match, key or breaker)");
        }
        if (n->trips != r->trips) {
            d.lines.push_back("rules[" + id + "].trips: " + q(r->trips) + " -> " + q(n->trips));
        }
        judge_suppression_list(d, id, *r, *n);
        if (n->fingerprint != r->fingerprint && n->measure.text == r->measure.text && n->window == r->window) {
            d.lines.push_back("rules[" + id + "]: match or key changed");
        }
        if (const auto o = old_rule_src.find(id), nn = new_rule_src.find(id);
            o != old_rule_src.end() && nn != new_rule_src.end()) {
            // route, match, key and trips are compared as parsed (same_mapping): the same
            // match written in another key order or `"key": "h"` for `["h"]` is no change.
            std::set<std::string> judged{"id", "limit", "window", "on_invalid_body", "description",
                                         "route", "match", "key", "trips"};
            if (n->measure.text != r->measure.text) {
                judged.insert("measure");
            }
            if (const auto other = unjudged_changes(o->second, nn->second, judged); !other.empty()) {
                d.lines.push_back("rules[" + id + "]: " + other + " changed");
                d.loosening.push_back("changes " + other + " of rule " + id);
            }
        }
    }
    {
        // The engine reports the first rule a request violates: a new order can put a weaker
        // action first.
        std::vector<std::string> before;
        std::vector<std::string> after;
        if (a.rules && b.rules) {
            for (const auto& r : a.rules->rules) {
                if (new_rules.count(r.id)) {
                    before.push_back(r.id);
                }
            }
            for (const auto& r : b.rules->rules) {
                if (old_rules.count(r.id)) {
                    after.push_back(r.id);
                }
            }
        }
        if (before != after) {
            d.lines.push_back("rules: reordered");
            d.loosening.push_back("reorders rules");
        }
        // So can a new rule put before existing ones: appended, it only adds a check.
        if (b.rules) {
            bool existing_seen_after = false;
            for (auto it = b.rules->rules.rbegin(); it != b.rules->rules.rend(); ++it) {
                if (old_rules.count(it->id)) {
                    existing_seen_after = true;
                } else if (existing_seen_after) {
                    d.loosening.push_back("puts new rule " + it->id + " before existing rules");
                }
            }
        }
    }
    for (const auto& [id, r] : new_rules) {
        if (!old_rules.count(id)) {
            d.lines.push_back("rules: + " + id);
        }
    }
    std::map<std::string, const breakers::breaker_config*> old_b;
    std::map<std::string, const breakers::breaker_config*> new_b;
    for (const auto& x : a.breakers) {
        old_b[x.id] = &x;
    }
    for (const auto& x : b.breakers) {
        new_b[x.id] = &x;
    }
    for (const auto& [id, x] : old_b) {
        auto it = new_b.find(id);
        if (it == new_b.end()) {
            d.lines.push_back("breakers: - " + id);
            d.loosening.push_back("removes breaker " + id);
        } else {
            const auto& n = *it->second;
            if (n.act != x->act) {
                d.lines.push_back("breakers[" + id + "].action: " + std::string{breakers::to_string(x->act)} + " -> " +
                                  std::string{breakers::to_string(n.act)});
                d.loosening.push_back("changes the action of breaker " + id);
            }
            if (n.reset != x->reset) {
                d.lines.push_back("breakers[" + id + "].reset: " +
                                  (x->reset == breakers::reset_policy::manual ? "manual -> auto" : "auto -> manual"));
                if (n.reset == breakers::reset_policy::automatic) {
                    d.loosening.push_back("makes breaker " + id + " reset by itself");
                }
            }
            if (n.cooldown != x->cooldown) {
                d.lines.push_back("breakers[" + id + "].cooldown: " + cfg::format_duration(x->cooldown) + " -> " +
                                  cfg::format_duration(n.cooldown));
                if (n.cooldown < x->cooldown) {
                    d.loosening.push_back("shortens the cooldown of breaker " + id);
                }
            }
            if (n.per_key != x->per_key) {
                d.lines.push_back("breakers[" + id + "].scope: " + (x->per_key ? "key -> breaker" : "breaker -> key"));
            }
        }
    }
    judge_other_fields(d, a, b, "breakers", "breaker", {"id", "action", "reset", "cooldown"});
    for (const auto& [id, x] : new_b) {
        if (!old_b.count(id)) {
            d.lines.push_back("breakers: + " + id);
        }
    }
    // Agents: a wider allow list, a new key or leaving sandbox mode loosens a guard.
    auto widened = [](const std::vector<std::string>& before, const std::vector<std::string>& after) {
        if (before.empty()) {
            return false;  // it already allowed everything
        }
        if (after.empty()) {
            return true;   // now it allows everything
        }
        return std::any_of(after.begin(), after.end(),
                           [&](const std::string& x) { return std::find(before.begin(), before.end(), x) == before.end(); });
    };
    for (const auto& na : b.agents) {
        auto it = std::find_if(a.agents.begin(), a.agents.end(), [&](const agent_config& x) { return x.id == na.id; });
        if (it == a.agents.end()) {
            d.lines.push_back("agents: + " + na.id);
            d.loosening.push_back("adds agent " + na.id);
            continue;
        }
        if (widened(it->allow.routes, na.allow.routes) || widened(it->allow.methods, na.allow.methods) ||
            widened(it->allow.paths, na.allow.paths)) {
            d.lines.push_back("agents[" + na.id + "].allow: widened");
            d.loosening.push_back("widens the scope of agent " + na.id);
        } else if (it->allow.routes != na.allow.routes || it->allow.methods != na.allow.methods ||
                   it->allow.paths != na.allow.paths) {
            d.lines.push_back("agents[" + na.id + "].allow: narrowed");
        }
        for (const auto& k : na.key_sha256) {
            if (std::find(it->key_sha256.begin(), it->key_sha256.end(), k) == it->key_sha256.end()) {
                d.lines.push_back("agents[" + na.id + "].key_sha256: a key added");
                d.loosening.push_back("adds a key to agent " + na.id);
                break;
            }
        }
        if (it->sandbox && !na.sandbox) {
            d.lines.push_back("agents[" + na.id + "].sandbox: true -> false");
            d.loosening.push_back("takes agent " + na.id + " out of sandbox mode");
        }
    }
    for (const auto& oa : a.agents) {
        if (std::none_of(b.agents.begin(), b.agents.end(), [&](const agent_config& x) { return x.id == oa.id; })) {
            // Its traffic is then someone else's or no one's: identified by nothing, unscoped.
            d.lines.push_back("agents: - " + oa.id);
            d.loosening.push_back("removes agent " + oa.id);
        }
    }
    // allow, key_sha256 and sandbox are judged above (narrowing, removing a key and entering
    // sandbox mode tighten); everything else, cert_names included, loosens.
    judge_other_fields(d, a, b, "agents", "agent", {"id", "allow", "key_sha256", "sandbox"});
    // Failure modes: a lower severity or a longer SLA routes fewer pages; only the texts for
    // people are an operator's to edit.
    judge_other_fields(d, a, b, "failure_modes", "failure mode", {"id", "title", "owner", "runbook", "description"});
    std::set<std::string> old_routes;
    for (const auto& r : a.routes) {
        old_routes.insert(r.name);
    }
    for (const auto& r : b.routes) {
        if (!old_routes.count(r.name)) {
            d.lines.push_back("routes: + " + r.name);
        }
    }
    // Agents' body constraints: any change needs the admin role (a higher max_recipients or
    // another from domain loosens; telling which way a list moved is not worth the risk).
    for (const auto& na : b.agents) {
        const auto it = std::find_if(a.agents.begin(), a.agents.end(), [&](const agent_config& x) { return x.id == na.id; });
        if (it != a.agents.end() && !(it->constraints == na.constraints)) {
            d.lines.push_back("agents[" + na.id + "].constraints changed");
            d.loosening.push_back("changes the body constraints of agent " + na.id);
        }
    }
    // Everything outside rules, breakers, failure modes and agents (listeners, routes,
    // upstreams, limits, store, alerts, and the admin section with its tokens and roles) is
    // the admin role's: an operator who could edit admin.tokens could make itself admin, and
    // one who could move a route's match or an upstream's URL could disconnect every rule.
    if (const auto other = outside_guards(a.source_json, b.source_json); !other.empty()) {
        d.lines.push_back("changes " + other);
        d.loosening.push_back("changes " + other + " (outside rules and breakers)");
    } else if (d.lines.empty() && a.source_json != b.source_json) {
        d.lines.push_back("settings outside rules and breakers changed");
    }
    return d;
}

std::string strings_json(const std::vector<std::string>& v) {
    std::string o = "[";
    for (std::size_t i = 0; i < v.size(); ++i) {
        o += (i ? "," : "") + q(v[i]);
    }
    return o + "]";
}

// ---- the request handler -------------------------------------------------------------------

struct handled;
handled invalid_config(const cfg::errors& errors);

struct handled {
    http::status status = http::status::ok;
    std::string body;
    std::string allow;    // for 405
    std::string audit_target;
    std::string audit_result;
    std::string audit_diff;
    bool mutation = false;
    bool audit_unrecorded = false;  // the outcome's audit entry could not be written
};

// 400 with every error and its JSON path; the running config is untouched.
handled invalid_config(const cfg::errors& errors) {
    std::vector<std::string> lines;
    for (const auto& e : errors.list()) {
        lines.push_back(e.to_string());
    }
    handled h;
    h.mutation = true;
    h.audit_target = "config";
    h.status = http::status::bad_request;
    h.body = "{\"error\":{\"code\":\"invalid_config\",\"message\":" +
             q(std::to_string(lines.size()) + " error(s); the current config keeps serving") +
             "},\"errors\":" + strings_json(lines) + "}";
    h.audit_result = "invalid_config";
    return h;
}

class handler_context {
public:
    handler_context(server& srv, const request& req, const caller* who) : srv_(srv), req_(req), who_(who) {}

    asio::awaitable<handled> run();

private:
    handled fail(const api_error& e) {
        handled h;
        h.status = e.status;
        h.body = error_json(e);
        h.audit_result = e.code;
        return h;
    }
    handled method_not_allowed(std::string allow) {
        auto h = fail({http::status::method_not_allowed, "method_not_allowed",
                       std::string{req_.method_string()} + " is not allowed here; use " + allow});
        h.allow = std::move(allow);
        return h;
    }
    bool allowed(admin_role need) const { return who_ && static_cast<int>(who_->role) >= static_cast<int>(need); }
    handled forbidden(std::string_view what, admin_role need) {
        return fail({http::status::forbidden, "forbidden",
                     "role " + std::string{to_string(who_->role)} + " cannot " + std::string{what} + " (needs " +
                         std::string{to_string(need)} + ")"});
    }
    // Parses the JSON body of a mutation, `what` (a bulk release, ...) with the fields
    // `known`, and checks `reason`. A field it does not know, or one given twice (which
    // copy would count? the audit's reader may take the other), is refused, never acted on
    // as if absent. nullopt: *err says why.
    std::optional<simdjson::dom::element> body(std::optional<api_error>& err, std::string_view what,
                                               std::initializer_list<std::string_view> known) {
        auto r = parser_.parse(req_.body().data(), req_.body().size());
        if (r.error()) {
            err = api_error{http::status::bad_request, "bad_json",
                            std::string{"the body is not valid JSON: "} + simdjson::error_message(r.error())};
            return std::nullopt;
        }
        simdjson::dom::element e = r.value_unsafe();
        simdjson::dom::object fields;
        if (e.get(fields) != simdjson::SUCCESS) {
            err = api_error{http::status::bad_request, "bad_json", "the body must be a JSON object"};
            return std::nullopt;
        }
        std::vector<std::string_view> seen;
        for (auto field : fields) {
            if (std::find(known.begin(), known.end(), field.key) == known.end()) {
                std::string list;
                for (const auto k : known) {
                    list += (list.empty() ? "" : ", ") + std::string{k};
                }
                err = api_error{http::status::bad_request, "bad_field",
                                cfg::quote(field.key) + " is not a field of " + std::string{what} + " (" + list + ")",
                                std::string{field.key}};
                return std::nullopt;
            }
            if (std::find(seen.begin(), seen.end(), field.key) != seen.end()) {
                err = api_error{http::status::bad_request, "bad_field", cfg::quote(field.key) + " is given twice",
                                std::string{field.key}};
                return std::nullopt;
            }
            seen.push_back(field.key);
        }
        std::string_view reason;
        if (auto rv = e["reason"]; rv.error() != simdjson::NO_SUCH_FIELD && rv.get(reason) != simdjson::SUCCESS) {
            err = api_error{http::status::bad_request, "bad_field", "\"reason\" must be a string", "reason"};
            return std::nullopt;
        }
        if (e["reason"].get(reason) != simdjson::SUCCESS || blank_text(reason)) {
            err = api_error{http::status::bad_request, "missing_field", "every change needs a non-empty \"reason\"", "reason"};
            return std::nullopt;
        }
        // It is kept with every audit entry and a manual trip, and shown with the breaker:
        // a sentence or a ticket link, not a document.
        if (reason.size() > max_reason_bytes) {
            err = api_error{http::status::bad_request, "bad_field",
                            "\"reason\" is at most " + std::to_string(max_reason_bytes) + " bytes (it has " +
                                std::to_string(reason.size()) + ")",
                            "reason"};
            return std::nullopt;
        }
        // The reason goes into the log as written: a line break in it could forge lines
        // there (the audit chain's "entry N appended, chain head H" among them).
        if (has_control(reason)) {
            err = api_error{http::status::bad_request, "bad_field",
                            "\"reason\" is one line of text (no line breaks or other control characters)", "reason"};
            return std::nullopt;
        }
        reason_ = std::string{reason};
        return e;
    }

    // Write-ahead audit: before an act, its intent (who, what, reason, result "started") is
    // durable; false (answer 503, do nothing) when it cannot be. The outcome follows as a
    // second entry once the act is done, so a crash or a store failure in between can never
    // leave an act the log does not show.
    asio::awaitable<bool> record_intent(const std::string& target, const std::string& diff = {}) {
        auto* db = srv_.db();
        if (db == nullptr) {
            co_return true;
        }
        store::audit_entry e;
        e.actor = who_->name;
        e.role = std::string{to_string(who_->role)};
        e.method = std::string{req_.method_string()};
        e.path = path_;
        e.target = target;
        e.params = req_.body().size() <= 4096 ? req_.body() : req_.body().substr(0, 4096);
        e.reason = reason_;
        e.result = "started";
        e.diff = diff;
        auto r = co_await append_audit(*db, std::move(e));
        if (!r.ok) {
            spdlog::error("audit: cannot record the intent of {} {} by {}: {} (not acting)", req_.method_string(),
                          path_, who_->name, r.message);
        }
        co_return r.ok;
    }
    handled intent_unrecorded() {
        return fail({http::status::service_unavailable, "store_unavailable",
                     "the action was not taken: its audit record could not be written"});
    }

    asio::awaitable<handled> breakers_api(std::string_view rest);
    asio::awaitable<handled> quarantine_api(std::string_view rest);
    asio::awaitable<handled> config_api(std::string_view rest);
    asio::awaitable<handled> audit_api(std::string_view rest);
    // `config_warnings`: what parse_config said of `next` (answered and logged with the rest).
    asio::awaitable<handled> apply(std::shared_ptr<const config> next, bool dry_run, bool metrics_only,
                                   std::string file_sha256 = {}, std::vector<std::string> config_warnings = {});

    server& srv_;
    const request& req_;
    const caller* who_;
    simdjson::dom::parser parser_;
    std::map<std::string, std::string> query_;
    std::string path_;  // decoded

public:
    std::string reason_;
};

asio::awaitable<handled> handler_context::run() {
    target_parts tp;
    if (!split_target(req_.target(), tp)) {
        co_return fail({http::status::bad_request, "bad_target", "the request target is not a path"});
    }
    std::string path;
    url_decode(tp.path, path, false);
    // Ids in the path end up in logs, alerts and the store: a decoded line break or escape
    // (`%0A`) would forge a log line (an audit chain head, say). Refused before anything.
    if (has_control(path)) {
        co_return fail({http::status::bad_request, "bad_target", "the path has control characters (decoded)"});
    }
    path_ = path;
    const auto qpos = tp.origin_form.find('?');
    if (qpos != std::string_view::npos) {
        std::string twice;
        query_ = parse_query(tp.origin_form.substr(qpos + 1), &twice);
        if (!twice.empty()) {
            co_return fail({http::status::bad_request, "bad_field", cfg::quote(twice) + " is given twice", twice});
        }
    }
    const bool get = req_.method() == http::verb::get || req_.method() == http::verb::head;
    // A parameter where none is read is refused, not ignored: `?dry_run=1` on a bulk
    // release would release for real, `?expires_in=10m` on a mode would set it for ever.
    // Lists (breakers, quarantine, audit) and POST /v1/config (dry_run) read theirs.
    if (!query_.empty() && path != "/metrics") {
        const bool list = get && (path == "/v1/breakers" || path == "/v1/breakers/" || path == "/v1/quarantine" ||
                                  path == "/v1/quarantine/" || path == "/v1/audit" || path == "/v1/audit/");
        const bool apply = req_.method() == http::verb::post && (path == "/v1/config" || path == "/v1/config/");
        const bool own_check = path == "/v1/config/reload" || path == "/v1/config/rollback";  // they say why themselves
        if (!list && !apply && !own_check) {
            auto f = fail({http::status::bad_request, "bad_field",
                           cfg::quote(query_.begin()->first) + " is not a parameter of " +
                               std::string{req_.method_string()} + " " + path + " (it takes none)",
                           query_.begin()->first});
            f.mutation = req_.method() == http::verb::post;
            co_return f;
        }
    }
    if (path == "/metrics") {
        if (!get) {
            co_return method_not_allowed("GET");
        }
        handled h;
        h.body = render_metrics(srv_);
        co_return h;
    }
    if (path.rfind("/v1/breakers", 0) == 0 && (path.size() == 12 || path[12] == '/')) {
        co_return co_await breakers_api(std::string_view{path}.substr(12));
    }
    if (path.rfind("/v1/quarantine", 0) == 0 && (path.size() == 14 || path[14] == '/')) {
        co_return co_await quarantine_api(std::string_view{path}.substr(14));
    }
    if (path.rfind("/v1/config", 0) == 0 && (path.size() == 10 || path[10] == '/')) {
        co_return co_await config_api(std::string_view{path}.substr(10));
    }
    if (path.rfind("/v1/audit", 0) == 0 && (path.size() == 9 || path[9] == '/')) {
        co_return co_await audit_api(std::string_view{path}.substr(9));
    }
    co_return fail({http::status::not_found, "not_found", "no admin endpoint " + path});
}

asio::awaitable<handled> handler_context::breakers_api(std::string_view rest) {
    const auto reg_ptr = srv_.breakers();  // kept alive across the waits below
    auto& reg = *reg_ptr;
    const auto cfg = srv_.current_config();
    const auto now = srv_.now();
    const bool get = req_.method() == http::verb::get;
    if (rest.empty() || rest == "/") {
        if (!get) {
            co_return method_not_allowed("GET");
        }
        auto snaps = reg.snapshot(now);
        // Declared breakers without an instance yet show as closed, so operators see them all.
        std::set<std::string> seen;
        for (const auto& s : snaps) {
            seen.insert(s.instance);
        }
        for (const auto& b : cfg->breakers) {
            if (!seen.count(b.id)) {
                breakers::instance_snapshot s;
                s.instance = b.id;
                s.breaker = b.id;
                s.cooldown = b.cooldown;
                snaps.push_back(std::move(s));
            }
        }
        // Filters (an incident's open instances among thousands of keys) and a page: at most
        // `limit` (1 to 1000, default 1000) instances in name order after the `after`
        // instance; `next_after` names the last one listed when more match. `total` counts every
        // instance that matches. An unknown or unreadable parameter is refused, not ignored
        // (a misspelt `state` must not list everything as if it were the open ones).
        std::optional<breakers::state> want_state;
        std::optional<breakers::mode> want_mode;
        std::string want_breaker;
        std::string after;
        std::size_t limit = 1000;
        for (const auto& [k, v] : query_) {
            if (k == "state") {
                for (auto st : {breakers::state::closed, breakers::state::open, breakers::state::half_open}) {
                    want_state = breakers::to_string(st) == v ? std::optional{st} : want_state;
                }
                if (!want_state) {
                    co_return fail({http::status::bad_request, "bad_field",
                                    cfg::quote(v) + " is not a state (closed, open, half_open)", "state"});
                }
            } else if (k == "mode") {
                want_mode = breakers::parse_mode(v);
                if (!want_mode) {
                    co_return fail({http::status::bad_request, "bad_field",
                                    cfg::quote(v) + " is not a mode (auto, forced_open, forced_closed, metrics_only)",
                                    "mode"});
                }
            } else if (k == "breaker") {
                if (cfg->find_breaker(v) == nullptr) {
                    co_return fail({http::status::bad_request, "bad_field", cfg::quote(v) + " is not a configured breaker",
                                    "breaker"});
                }
                want_breaker = v;
            } else if (k == "after") {
                after = v;
            } else if (k == "limit") {
                const auto n = one_to_thousand(v);
                if (!n) {
                    co_return fail({http::status::bad_request, "bad_field", "\"limit\" is 1 to 1000", "limit"});
                }
                limit = *n;
            } else {
                co_return fail({http::status::bad_request, "bad_field",
                                "unknown query parameter " + cfg::quote(k) + " (state, mode, breaker, after, limit)", k});
            }
        }
        std::erase_if(snaps, [&](const breakers::instance_snapshot& s) {
            return (want_state && s.st != *want_state) || (want_mode && s.md != *want_mode) ||
                   (!want_breaker.empty() && s.breaker != want_breaker);
        });
        std::sort(snaps.begin(), snaps.end(), [](const auto& a, const auto& b) { return a.instance < b.instance; });
        const auto first = after.empty() ? snaps.begin()
                                         : std::upper_bound(snaps.begin(), snaps.end(), after,
                                                            [](const std::string& a, const auto& s) { return a < s.instance; });
        std::string o = "{\"breakers\":[";
        std::size_t n = 0;
        auto it = first;
        for (; it != snaps.end() && n < limit; ++it) {
            o += (n++ ? "," : "") + breaker_json(*it, *cfg, srv_.time());
        }
        o += "],\"total\":" + std::to_string(snaps.size());
        o += ",\"next_after\":" + (it != snaps.end() && n > 0 ? q(std::prev(it)->instance) : std::string{"null"}) + "}";
        handled h;
        h.body = std::move(o);
        co_return h;
    }
    std::string id{rest.substr(1)};
    // A breaker, or an instance of a per-key breaker (`breaker/key`, the key not empty): a
    // key on a breaker of one instance is no instance of it (acting on the whole breaker
    // for a script's stale per-key name would reopen every key), nor is an empty key.
    const auto known_id = [&](const std::string& name) {
        if (cfg->find_breaker(name) != nullptr) {
            return true;
        }
        const auto slash = name.find('/');
        const auto* b = slash == std::string::npos ? nullptr : cfg->find_breaker(name.substr(0, slash));
        return b != nullptr && b->per_key && slash + 1 < name.size();
    };
    std::string action;
    // (A GET of a breaker whose name ends like an action, `agent/mode` for an agent named
    // `mode`, reads that breaker: actions are POSTs. A GET of `b/key/trip` stays a 405.)
    if (!(get && cfg->find_breaker(id) != nullptr)) {
        for (std::string_view a : {"/trip", "/reset", "/mode"}) {
            if (id.size() > a.size() && id.compare(id.size() - a.size(), a.size(), a) == 0) {
                action = std::string{a.substr(1)};
                id.resize(id.size() - a.size());
                break;
            }
        }
    }
    if (!known_id(id)) {
        co_return fail({http::status::not_found, "not_found", "no breaker " + id});
    }
    // A key no rule produces names an instance no request consults: a reset of it would
    // answer "closed" while the real instance stays open, a trip would contain nothing.
    // Rules cut keys at rules::max_key_bytes and write bytes that are not printable UTF-8
    // as %XX, so a listed `caf%E9` is reached as `caf%25E9` in the URL, not `caf%E9`.
    if (cfg->find_breaker(id) == nullptr) {
        const std::string_view key = std::string_view{id}.substr(id.find('/') + 1);
        if (key.size() > rules::max_key_bytes || needs_escape(key)) {
            co_return fail({http::status::bad_request, "bad_field",
                            "the key " + cfg::quote(key) + " is no key a rule produces (keys are at most " +
                                std::to_string(rules::max_key_bytes) +
                                " bytes, and bytes that are not printable UTF-8 are written %XX: write a listed "
                                "key's % as %25 in the URL)",
                            "key"});
        }
    }
    if (action.empty()) {
        if (!get) {
            co_return method_not_allowed("GET");
        }
        auto s = reg.get(id, now);
        if (!s) {
            breakers::instance_snapshot closed;
            closed.instance = id;
            closed.breaker = id.substr(0, cfg->find_breaker(id) ? std::string::npos : id.find('/'));
            closed.key = cfg->find_breaker(id) ? "" : id.substr(id.find('/') + 1);
            s = closed;
        }
        handled h;
        h.body = "{\"breaker\":" + breaker_json(*s, *cfg, srv_.time()) + "}";
        co_return h;
    }
    if (req_.method() != http::verb::post) {
        co_return method_not_allowed("POST");
    }
    handled h;
    h.mutation = true;
    h.audit_target = id;
    if (!allowed(admin_role::operator_)) {
        co_return forbidden(action + " a breaker", admin_role::operator_);
    }
    std::optional<api_error> err;
    auto b = action == "mode" ? body(err, "a mode change", {"reason", "mode", "expires_in"})
                              : body(err, action == "trip" ? "a trip" : "a reset", {"reason"});
    if (!b) {
        co_return fail(*err);
    }
    breakers::breaker_registry::op_result done;
    if (action == "trip" || action == "reset") {
        if (!reg.find(id.substr(0, id.find('/'))) && !reg.find(id)) {
            co_return fail({http::status::not_found, "not_found", "no breaker " + id});
        }
        if (!co_await record_intent(id)) {
            co_return intent_unrecorded();
        }
    }
    if (action == "trip") {
        done.known = reg.manual_trip(id, who_->name, reason_, srv_.now());
    } else if (action == "reset") {
        done = reg.reset(id, who_->name, reason_, srv_.now());
    } else {
        std::string_view m;
        if (auto mv = (*b)["mode"]; mv.get(m) != simdjson::SUCCESS) {
            co_return mv.error() == simdjson::NO_SUCH_FIELD
                ? fail({http::status::bad_request, "missing_field", "\"mode\" is required", "mode"})
                : fail({http::status::bad_request, "bad_field", "\"mode\" must be a string", "mode"});
        }
        auto md = breakers::parse_mode(m);
        if (!md) {
            co_return fail({http::status::bad_request, "bad_field",
                            cfg::quote(m) + " is not a mode (forced_open, forced_closed, metrics_only, auto)", "mode"});
        }
        std::optional<std::chrono::milliseconds> expires;
        std::string_view ex;
        if (auto ev = (*b)["expires_in"]; ev.error() != simdjson::NO_SUCH_FIELD && ev.get(ex) != simdjson::SUCCESS) {
            // Never read as "no expiry".
            co_return fail({http::status::bad_request, "bad_field",
                            "\"expires_in\" must be a duration string such as \"15m\"", "expires_in"});
        }
        if ((*b)["expires_in"].get(ex) == simdjson::SUCCESS) {
            if (*md == breakers::mode::automatic) {
                // auto has no end: the expiry would be recorded in the audit and never be.
                co_return fail({http::status::bad_request, "bad_field",
                                "\"expires_in\" applies to forced_open, forced_closed and metrics_only, not auto",
                                "expires_in"});
            }
            expires = cfg::parse_duration(ex);
            if (!expires || expires->count() <= 0) {
                co_return fail({http::status::bad_request, "bad_field", cfg::quote(ex) + " is not a duration", "expires_in"});
            }
            // Bounded: a huge one would overflow the clock arithmetic (and a mode meant for
            // longer than a year is not a temporary mode; leave out expires_in).
            if (*expires > std::chrono::hours{24 * 366}) {
                co_return fail({http::status::bad_request, "bad_field",
                                cfg::quote(ex) + " is longer than a year (leave expires_in out for no expiry)", "expires_in"});
            }
        }
        if (!co_await record_intent(id)) {
            co_return intent_unrecorded();
        }
        // Now, after the audit write: a timed mode runs from when it is set, not from when
        // the call came in (the write can wait behind a flood of holds).
        done = reg.set_mode(id, *md, expires, who_->name, reason_, srv_.now());
    }
    if (!done.known) {
        co_return fail({http::status::not_found, "not_found", "no breaker " + id});
    }
    if (!done.overflow.empty()) {
        // Nothing changed; the outcome audit records the refusal by its code.
        co_return fail({http::status::conflict, "contained_by_overflow",
                        id + " has no instance of its own and the breaker is full (max_instances): its traffic "
                             "goes to " + done.overflow + ", which holds every such key, so " + action +
                             " here would change them all; " + action + " that instance by its name instead "
                             "(a trip or forced_open is taken, as it only contains more)"});
    }
    // Durable before the answer: a restart right after still sees the operator's act.
    if (!co_await await_persist(srv_)) {
        auto f = fail({http::status::service_unavailable, "store_unavailable",
                       "the change is in effect but could not be persisted"});
        // What happened, for whoever reads the audit log: done, only not durable.
        f.audit_result = "in effect, not persisted (store_unavailable)";
        co_return f;
    }
    auto s = reg.get(id, srv_.now());
    h.body = "{\"breaker\":" + (s ? breaker_json(*s, *cfg, srv_.time()) : std::string{"null"}) + "}";
    h.audit_result = "ok";
    co_return h;
}

// `prefix`: how a field is named in an error ("filter." in a bulk body, "" in a query).
store::list_filter filter_from(const std::map<std::string, std::string>& qy, std::optional<api_error>& err,
                               const std::string& prefix = "") {
    store::list_filter f;
    // A field we do not know is refused, not ignored: `{"breaker": "b", "agnet": "bot-7"}`
    // read without its misspelt agent would release every request the breaker holds.
    static constexpr std::string_view known[] = {"breaker", "agent", "rule", "state", "from", "to", "limit", "after"};
    for (const auto& [k, v] : qy) {
        if (std::find(std::begin(known), std::end(known), k) == std::end(known)) {
            err = api_error{http::status::bad_request, "bad_field",
                            cfg::quote(k) + " is not a filter field (breaker, agent, rule, state, from, to, limit, after)",
                            prefix + k};
            return f;
        }
    }
    // An empty value would match any: `{"breaker": "b", "agent": ""}` from a script whose
    // variable was unset would release every agent's held requests in b. Refused, naming it.
    for (const auto& [k, v] : qy) {
        if (v.empty() && k != "after") {  // an empty cursor is the first page
            err = api_error{http::status::bad_request, "bad_field",
                            cfg::quote(k) + " is empty: give a value, or leave the field out to match any", prefix + k};
            return f;
        }
    }
    auto get = [&](const char* k) -> std::string {
        auto it = qy.find(k);
        return it == qy.end() ? std::string{} : it->second;
    };
    f.breaker = get("breaker");
    f.agent = get("agent");
    f.rule = get("rule");
    if (auto s = get("state"); !s.empty()) {
        f.state = store::parse_held_state(s);
        if (!f.state) {
            err = api_error{http::status::bad_request, "bad_field", cfg::quote(s) + " is not a state", prefix + "state"};
        }
    }
    auto number = [&](const char* k) -> std::optional<std::int64_t> {
        auto s = get(k);
        if (s.empty()) {
            return std::nullopt;
        }
        if (!std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }) || s.size() > 18) {
            err = api_error{http::status::bad_request, "bad_field", cfg::quote(s) + " is not a number", prefix + k};
            return std::nullopt;
        }
        return std::stoll(s);
    };
    f.from_ms = number("from");
    f.to_ms = number("to");
    // Unix time in milliseconds: 13 digits (2001-09-09 to 2286). Fewer are nearly always
    // seconds, or 0 (a script's default), and more are microseconds: read as milliseconds
    // they are January 1970 or centuries ahead, so a bulk discard of what was held "since"
    // or "until" then takes every record.
    constexpr std::int64_t earliest_ms = 1'000'000'000'000;
    constexpr std::int64_t latest_ms = 9'999'999'999'999;
    for (const auto& [k, v] : {std::pair{"from", f.from_ms}, std::pair{"to", f.to_ms}}) {
        if (!err && v && (*v < earliest_ms || *v > latest_ms)) {
            err = api_error{http::status::bad_request, "bad_field",
                            std::to_string(*v) + " is not a time in milliseconds since the epoch (13 digits; "
                                                 "seconds have 10, microseconds 16)",
                            prefix + k};
        }
    }
    if (!err && f.from_ms && f.to_ms && *f.from_ms >= *f.to_ms) {
        err = api_error{http::status::bad_request, "bad_field",
                        "\"from\" is not before \"to\" (which is exclusive): nothing could match", prefix + "from"};
    }
    if (auto l = get("limit"); !l.empty() && !err) {
        // A bulk action's limit is what it may send: 0 is not "no limit", nor 5000 "1000".
        if (const auto n = one_to_thousand(l)) {
            f.limit = *n;
        } else {
            err = api_error{http::status::bad_request, "bad_field",
                            prefix.empty() ? cfg::quote(l) + " is not a limit (1 to 1000)"
                                           : "\"limit\" of a bulk action is 1 to 1000 (leave it out for every match)",
                            prefix + "limit"};
        }
    }
    f.after_ticket = get("after");
    return f;
}

store::list_filter filter_from_json(simdjson::dom::element e, std::optional<api_error>& err) {
    std::map<std::string, std::string> m;
    simdjson::dom::object o;
    if (e.get(o) == simdjson::SUCCESS) {
        for (auto f : o) {
            std::string_view s;
            std::int64_t n = 0;
            if (m.contains(std::string{f.key})) {
                err = api_error{http::status::bad_request, "bad_field", cfg::quote(f.key) + " is given twice",
                                "filter." + std::string{f.key}};
            } else if (f.value.get(s) == simdjson::SUCCESS) {
                m[std::string{f.key}] = std::string{s};
            } else if (f.value.get(n) == simdjson::SUCCESS) {
                m[std::string{f.key}] = std::to_string(n);
            } else {
                err = api_error{http::status::bad_request, "bad_field", "filter values are strings or numbers",
                                "filter." + std::string{f.key}};
            }
        }
    }
    if (err) {
        return {};
    }
    if (m.contains("after")) {
        // Paging is for a list; a bulk action takes every match (it would be ignored).
        err = api_error{http::status::bad_request, "bad_field",
                        "\"after\" pages a list; a bulk action acts on every match (use from/to or limit)",
                        "filter.after"};
        return {};
    }
    return filter_from(m, err, "filter.");
}

asio::awaitable<handled> handler_context::quarantine_api(std::string_view rest) {
    auto* db = srv_.db();
    if (db == nullptr) {
        co_return fail({http::status::not_found, "not_found", "no store: quarantine needs at least one breaker"});
    }
    const bool get = req_.method() == http::verb::get;
    if (rest.empty() || rest == "/") {
        if (!get) {
            co_return method_not_allowed("GET");
        }
        std::optional<api_error> err;
        auto f = filter_from(query_, err);
        if (err) {
            co_return fail(*err);
        }
        store::result rerr;
        const auto list = db->list(f, &rerr);
        if (!rerr.ok && rerr.code == "not_found") {
            // The cursor names no record (mistyped, or pruned by retention while paging):
            // the caller's input, not the store's trouble.
            co_return fail({http::status::bad_request, "bad_field",
                            rerr.message + " (\"after\" takes a next_after this list gave; start again without it)",
                            "after"});
        }
        if (!rerr.ok) {
            co_return fail({http::status::service_unavailable, rerr.code, rerr.message});
        }
        std::string o = "{\"requests\":[";
        for (std::size_t i = 0; i < list.size(); ++i) {
            o += (i ? "," : "") + held_json(list[i], false, nullptr);
        }
        const std::size_t page = f.limit == 0 ? 100 : f.limit;
        o += "],\"next_after\":" + (list.size() == page ? q(list.back().ticket) : std::string{"null"}) + "}";
        handled h;
        h.body = std::move(o);
        co_return h;
    }
    std::string_view tail = rest.substr(1);
    const bool bulk = tail == "release" || tail == "discard";
    std::string ticket;
    std::string action;
    if (bulk) {
        action = std::string{tail};
    } else {
        const auto slash = tail.find('/');
        ticket = std::string{tail.substr(0, slash)};
        if (ticket.empty()) {
            // (`/v1/quarantine//release`: before anything is written to the audit log.)
            co_return fail({http::status::not_found, "not_found", "no quarantined request with an empty ticket"});
        }
        if (slash != std::string_view::npos) {
            action = std::string{tail.substr(slash + 1)};
            if (action != "release" && action != "discard") {
                co_return fail({http::status::not_found, "not_found", "no admin endpoint for " + action});
            }
        }
    }
    if (action.empty()) {
        if (!get) {
            co_return method_not_allowed("GET");
        }
        store::result rerr;
        auto rec = db->get(ticket, &rerr);
        if (!rec) {
            const bool missing = rerr.code.empty() || rerr.code == "not_found";
            co_return fail({missing ? http::status::not_found : http::status::service_unavailable,
                            missing ? "not_found" : rerr.code,
                            missing ? "no quarantined request " + ticket
                                    : "quarantined request " + ticket + " cannot be read: " + rerr.message});
        }
        const auto hist = db->history(ticket);
        handled h;
        h.body = "{\"request\":" + held_json(*rec, true, &hist, allowed(admin_role::admin), allowed(admin_role::operator_)) + "}";
        co_return h;
    }
    if (req_.method() != http::verb::post) {
        co_return method_not_allowed("POST");
    }
    handled h;
    h.mutation = true;
    h.audit_target = bulk ? "quarantine" : ticket;
    if (!allowed(admin_role::operator_)) {
        co_return forbidden(action + " quarantined requests", admin_role::operator_);
    }
    std::optional<api_error> err;
    auto b = bulk ? (action == "release" ? body(err, "a bulk release", {"filter", "reason", "rate_per_s"})
                                         : body(err, "a bulk discard", {"filter", "reason"}))
                  : (action == "release" ? body(err, "a release", {"reason", "force", "attempts"})
                                         : body(err, "a discard", {"reason"}));
    if (!b) {
        co_return fail(*err);
    }
    auto& rem = srv_.remediation();
    if (!bulk) {
        // `force` (release only): absent is false; anything but a boolean is refused, never
        // read as "no force" (nor as force).
        bool force = false;
        if (auto fv = (*b)["force"]; fv.error() != simdjson::NO_SUCH_FIELD && action == "release" &&
                                     fv.get(force) != simdjson::SUCCESS) {
            co_return fail({http::status::bad_request, "bad_field", "\"force\" must be true or false", "force"});
        }
        // A force names the release attempts the operator saw: two operators forcing one
        // record of unknown outcome would otherwise each re-send it, the second on a decision
        // made before the first's replay.
        std::optional<std::uint32_t> attempts;
        if (!force && (*b)["attempts"].error() != simdjson::NO_SUCH_FIELD) {
            co_return fail({http::status::bad_request, "bad_field",
                            "\"attempts\" goes with \"force\": true (a release without force needs none)", "attempts"});
        }
        if (force) {
            std::uint64_t n = 0;
            auto av = (*b)["attempts"];
            if (av.error() == simdjson::NO_SUCH_FIELD) {
                co_return fail({http::status::bad_request, "missing_field",
                                "a forced release needs \"attempts\": the record's release_attempts as you saw "
                                "them, so a record another release re-sent meanwhile is not sent again",
                                "attempts"});
            }
            if (av.get(n) != simdjson::SUCCESS || n > 0xFFFF'FFFFu) {
                co_return fail({http::status::bad_request, "bad_field",
                                "\"attempts\" must be a non-negative integer (the record's release_attempts)",
                                "attempts"});
            }
            attempts = static_cast<std::uint32_t>(n);
        }
        if (!co_await record_intent(ticket)) {
            co_return intent_unrecorded();
        }
        store::result r;
        if (action == "release") {
            r = co_await rem.release_one(ticket, who_->name, force, std::nullopt, attempts);
        } else {
            r = co_await rem.discard_one(ticket, who_->name, reason_);
        }
        const bool refused_now = r.code == "invalid_state" || r.code == "agent_disabled" || r.code == "agent_sandboxed" ||
                                r.code == "sandboxed" || r.code == "out_of_scope";
        if (!r.ok && (r.code == "not_found" || refused_now || r.code == "store_unavailable" || r.code == "store_busy" ||
                      r.code == "shutting_down")) {
            co_return fail({r.code == "not_found" ? http::status::not_found
                            : refused_now         ? http::status::conflict
                                                  : http::status::service_unavailable,
                            r.code, r.message});
        }
        h.body = "{\"result\":" + result_json(r, action == "release") + "}";
        h.audit_result = r.ok ? "ok" : r.code;
        co_return h;
    }
    simdjson::dom::element fe;
    store::list_filter f;
    if (auto fv = (*b)["filter"]; fv.error() != simdjson::NO_SUCH_FIELD && fv.type() != simdjson::dom::element_type::OBJECT) {
        co_return fail({http::status::bad_request, "bad_field", "\"filter\" must be an object", "filter"});
    }
    if ((*b)["filter"].get(fe) == simdjson::SUCCESS) {
        f = filter_from_json(fe, err);
        if (err) {
            co_return fail(*err);
        }
    }
    if (f.breaker.empty() && f.agent.empty() && f.rule.empty() && !f.from_ms && !f.to_ms) {
        co_return fail({http::status::bad_request, "missing_field",
                        "a bulk action needs a filter (breaker, agent, rule or a time range)", "filter"});
    }
    remediation_summary sum;
    if (action == "release") {
        double rate = 0;
        if (auto rv = (*b)["rate_per_s"]; rv.error() != simdjson::NO_SUCH_FIELD && rv.get(rate) != simdjson::SUCCESS) {
            std::int64_t r = 0;
            if (rv.get(r) != simdjson::SUCCESS) {
                // Never read as "no pacing": that would send everything at once.
                co_return fail({http::status::bad_request, "bad_field", "rate_per_s must be a number", "rate_per_s"});
            }
            rate = static_cast<double>(r);
        }
        if (rate < 0) {
            co_return fail({http::status::bad_request, "bad_field", "rate_per_s must be positive", "rate_per_s"});
        }
        if (rate > 0 && rate < 0.01) {  // one release every 100 s; slower is a mistake (or an overflow)
            co_return fail({http::status::bad_request, "bad_field",
                            "rate_per_s must be at least 0.01 (or 0 for no pacing)", "rate_per_s"});
        }
        if (!co_await record_intent("quarantine")) {
            co_return intent_unrecorded();
        }
        sum = co_await rem.release_matching_impl(f, rate, who_->name);
    } else {
        if (!co_await record_intent("quarantine")) {
            co_return intent_unrecorded();
        }
        sum = co_await rem.discard_matching_impl(f, who_->name, reason_);
    }
    h.body = "{\"summary\":{\"matched\":" + std::to_string(sum.matched) + ",\"released\":" + std::to_string(sum.released) +
             ",\"failed\":" + std::to_string(sum.failed) + ",\"unknown\":" + std::to_string(sum.unknown) +
             ",\"discarded\":" + std::to_string(sum.discarded) + ",\"skipped\":" + std::to_string(sum.skipped) +
             (sum.stopped ? ",\"stopped\":true" : "") +
             (sum.halted.empty() ? std::string{} : ",\"halted\":" + q(sum.halted)) +
             (sum.error.empty() ? std::string{} : ",\"incomplete\":" + q("the store could not be read (" + sum.error +
                                                                           "): records past these were not looked at")) +
             "}}";
    // What happened, not just "ok": a release where every replay failed is not a success,
    // nor one that could not read every page.
    const std::size_t done = action == "release" ? sum.released : sum.discarded;
    h.audit_result = (!sum.error.empty()                                          ? "incomplete (" + sum.error + "): "
                      : (sum.matched > 0 && done == 0) || !sum.halted.empty() ? std::string{"failed: "}
                                                                               : std::string{"ok: "}) +
                     std::to_string(sum.matched) + " matched, " +
                     (action == "release" ? std::to_string(sum.released) + " released, " + std::to_string(sum.failed) +
                                                " release_failed, " + std::to_string(sum.unknown) + " outcome_unknown, "
                                          : std::to_string(sum.discarded) + " discarded, ") +
                     std::to_string(sum.skipped) + " skipped" + (sum.stopped ? ", stopped" : "") +
                     (sum.halted.empty() ? std::string{} : ", halted: " + sum.halted);
    co_return h;
}

// What a change from the running config to `next` does, and what of it loosens a guard.
config_diff judge_change(server& srv, const config& current, const config& next) {
    auto d = diff_configs(current, next);
    // Changing how a rule maps requests to instances (its route, match, key or breaker)
    // while its breaker contains traffic would strand those trips: the traffic they were
    // tripped for may no longer consult them. That is a loosening (admin only), and named.
    if (current.rules) {
        const auto live = srv.breakers()->snapshot(srv.now());
        for (const auto& r : current.rules->rules) {
            const auto* n = next.rules ? next.rules->find_rule(r.id) : nullptr;
            if (n != nullptr && same_mapping(r, *n)) {
                continue;
            }
            if (const auto busy = containing_instance(live, r.trips); !busy.empty()) {
                d.loosening.push_back("changes rule " + r.id + " (its route, match, key or breaker) while " + busy +
                                      ": what it contains may no longer reach it");
            }
        }
    }
    return d;
}

std::string diff_text_of(const config_diff& d) {
    std::string text;
    for (const auto& l : d.lines) {
        text += l + "\n";
    }
    return text;
}

// Holds the server's one-config-change-at-a-time flag (control thread) for a scope.
class config_change_slot {
public:
    explicit config_change_slot(server& srv) : srv_{srv} { srv_.set_config_change_busy(true); }
    ~config_change_slot() { srv_.set_config_change_busy(false); }
    config_change_slot(const config_change_slot&) = delete;
    config_change_slot& operator=(const config_change_slot&) = delete;

private:
    server& srv_;
};

asio::awaitable<handled> handler_context::apply(std::shared_ptr<const config> next, bool dry_run, bool metrics_only,
                                                std::string file_sha256, std::vector<std::string> config_warnings) {
    // One change at a time, judged against the config it replaces: a second apply while one
    // is between its judgement and its stored version would be judged against a base that
    // is about to go (and could undo the first one without the role that needs).
    std::optional<config_change_slot> slot;
    if (!dry_run) {
        if (srv_.config_change_busy()) {
            auto f = fail({http::status::conflict, "config_busy",
                           "another config change (an apply, reload, rollback or SIGHUP) is in progress; retry"});
            f.mutation = true;
            f.audit_target = "config";
            co_return f;
        }
        slot.emplace(srv_);
    }
    const auto generation = srv_.config_generation();
    const auto current = srv_.current_config();
    if (file_sha256.empty() && current->admin.enabled && !next->admin.enabled) {
        // Applied, it would take the tokens away from the running admin API (every call,
        // this one's revert included, 401) and, stored, the next start would have none.
        // (A reload of the file applies as SIGHUP does: the admin API runs on until restart.)
        auto f = fail({http::status::bad_request, "bad_field",
                       "config.admin: the config has no admin section; a change through the admin API cannot remove "
                       "the admin API (remove it in the file and restart)",
                       "config.admin"});
        f.mutation = true;
        f.audit_target = "config";
        co_return f;
    }
    const auto d = judge_change(srv_, *current, *next);
    handled h;
    h.mutation = true;
    h.audit_target = "config";
    const std::string diff_text = diff_text_of(d);
    h.audit_diff = diff_text;
    if (!d.loosening.empty() && !allowed(admin_role::admin)) {
        auto f = forbidden("apply a change that loosens a guard (" + d.loosening.front() + ")", admin_role::admin);
        f.mutation = true;
        f.audit_target = "config";
        f.audit_diff = diff_text;
        co_return f;
    }
    {
        // Changed TLS settings that cannot be built refuse the change whole (server.hpp): a
        // CRL added to revoke a leaked certificate, or a new client CA with the roles mapped
        // for it, applied over the old context would be reported applied and not be.
        cfg::errors tls_errors;
        srv_.check_tls_change(*current, *next, tls_errors);
        if (!tls_errors.empty()) {
            auto f = invalid_config(tls_errors);
            f.mutation = true;
            f.audit_target = "config";
            f.audit_diff = diff_text;
            co_return f;
        }
    }
    std::int64_t version = 0;
    std::vector<std::string> shadow_kept;
    std::vector<std::string> warnings;  // what was not applied (fixed until restart, TLS files)
    if (!dry_run) {
        if (!co_await record_intent("config", diff_text)) {
            co_return intent_unrecorded();
        }
        if (srv_.config_generation() != generation) {  // e.g. a reload that did not wait its turn
            auto f = fail({http::status::conflict, "config_changed",
                           "the running config changed while this change was being recorded; read it again and retry"});
            f.mutation = true;
            f.audit_target = "config";
            f.audit_diff = diff_text;
            co_return f;
        }
        // The version first: a change that runs without its stored version would leave
        // base_version checks and rollback numbering out of step with what runs.
        if (auto* db = srv_.db()) {
            auto r = co_await await_store([&](store::done_fn done) {
                db->save_config_version(next->source_json, who_->name, reason_, std::move(done), file_sha256);
            });
            if (!r.ok) {
                auto f = fail({http::status::service_unavailable, "store_unavailable",
                               "the new version could not be stored (" + r.message + "); nothing was applied"});
                f.mutation = true;
                f.audit_target = "config";
                f.audit_diff = diff_text;
                co_return f;
            }
            version = r.count;
        }
        // Shadow first: the breakers that new or changed rules trip only record what they
        // would have done until an operator sets them back to auto. The mode is set on the
        // new registry before any request runs under the new config.
        std::set<std::string> touched;
        std::set<std::string> changed_rules;
        if (metrics_only) {
            for (const auto& l : d.lines) {
                if (l.rfind("rules: + ", 0) == 0 || l.rfind("rules[", 0) == 0) {
                    const auto id = l.rfind("rules: + ", 0) == 0 ? l.substr(9) : l.substr(6, l.find(']') - 6);
                    if (next->rules) {
                        if (const auto* r = next->rules->find_rule(id)) {
                            touched.insert(r->trips);
                            changed_rules.insert(r->id);
                        }
                    }
                }
            }
        }
        // A breaker-wide metrics_only bypasses every rule that trips the breaker: one also
        // tripped by a rule this change leaves as it was keeps enforcing (shadowing the new
        // rule must not switch off the ones already guarding that traffic).
        auto unchanged_rule_of = [&](const std::string& breaker) -> std::string {
            if (next->rules) {
                for (const auto& r : next->rules->rules) {
                    if (r.trips == breaker && changed_rules.count(r.id) == 0) {
                        return r.id;
                    }
                }
            }
            return {};
        };
        const std::string shadow_reason = "applied as metrics_only: " + reason_;
        const auto at = srv_.now();
        // A breaker-wide metrics_only lets every key through. A breaker that contains
        // something now (an instance open, half-open or in an operator's mode, e.g. a
        // forced_open kill switch) keeps enforcing: shadowing the new rule must not
        // silently undo a trip or an operator's decision.
        std::vector<std::string> kept;
        // The registry may be live (requests trip it meanwhile): "at rest" is checked and the
        // mode set in one step, so a key tripped meanwhile is never left unenforced.
        auto shadow = [&](breakers::breaker_registry& reg) {
            for (const auto& b : touched) {
                if (const auto other = unchanged_rule_of(b); !other.empty()) {
                    kept.push_back(b + " (also tripped by unchanged rule " + other + ")");
                    continue;
                }
                if (const auto busy =
                        reg.set_mode_if_at_rest(b, breakers::mode::metrics_only, who_->name, shadow_reason, at);
                    !busy.empty()) {
                    kept.push_back(b + " (" + busy + ")");
                }
            }
        };
        std::string refused;
        try {
            warnings = srv_.apply_config(next, shadow);
        } catch (const std::exception& e) {  // the store cannot be opened, or the rules' saved counts read
            refused = e.what();
        }
        if (!refused.empty()) {
            // Nothing was applied, but the version is stored: a restart would run it. The
            // running config is stored again after it, so what a restart runs is what runs
            // now (a change read from the file keeps the file's mark: the file is what the
            // operator wants, and a SIGHUP tries it again).
            std::string restored;
            if (auto* db = srv_.db(); db != nullptr && version > 0 && file_sha256.empty()) {
                const auto running = srv_.current_config();
                auto r = co_await await_store([&](store::done_fn done) {
                    db->save_config_version(running->source_json, who_->name,
                                            "version " + std::to_string(version) + " could not be applied (" + refused +
                                                "): the running config recorded again",
                                            std::move(done));
                });
                restored = r.ok ? "; the running config is stored again as version " + std::to_string(r.count)
                                : "; storing the running config again failed too (" + r.message +
                                      "): a restart would run version " + std::to_string(version);
            }
            spdlog::error("config apply: version {} not applied: {}", version, refused);
            auto f = fail({http::status::service_unavailable, "apply_failed",
                           "version " + std::to_string(version) + " was not applied, the running config is unchanged: " +
                               refused + restored});
            f.mutation = true;
            f.audit_target = "config";
            f.audit_diff = diff_text;
            co_return f;
        }
        // Renewed certificates and a rotated client CA (same files, new contents) too, as
        // SIGHUP does: an API reload must not leave the old ones serving.
        for (const auto& e : srv_.reload_security()) {
            warnings.push_back("TLS files not reloaded, the previous certificates stay in use: " + e);
        }
        for (const auto& w : config_warnings) {
            spdlog::warn("config: {}", w);
        }
        for (const auto& w : warnings) {
            spdlog::warn("config apply: {}", w);
        }
        for (const auto& k : kept) {
            spdlog::warn("config apply with metrics_only: breaker {} keeps enforcing", k);
        }
        shadow_kept = std::move(kept);
        // Durable before the answer, as an operator's mode change is: the version is stored,
        // so a restart runs it, and without the saved metrics_only modes its rules would
        // enforce at once although the caller was told they only record.
        if (!touched.empty() && !co_await await_persist(srv_)) {
            auto f = fail({http::status::service_unavailable, "store_unavailable",
                           "version " + std::to_string(version) +
                               " is in effect with metrics_only, but the breakers' modes could not be persisted: "
                               "a restart now would enforce its rules"});
            f.mutation = true;
            f.audit_target = "config";
            f.audit_diff = diff_text;
            f.audit_result = "applied version " + std::to_string(version) +
                             "; its metrics_only modes not persisted (store_unavailable)";
            co_return f;
        }
    }
    h.body = "{\"version\":" + std::to_string(version) + ",\"applied\":" + (dry_run ? "false" : "true") +
             ",\"loosening\":" + strings_json(d.loosening) + ",\"diff\":" + strings_json(d.lines) +
             (shadow_kept.empty() ? "" : ",\"still_enforcing\":" + strings_json(shadow_kept)) +
             (warnings.empty() ? "" : ",\"warnings\":" + strings_json(warnings)) +
             (config_warnings.empty() ? "" : ",\"config_warnings\":" + strings_json(config_warnings)) + "}";
    h.audit_result = dry_run ? "dry_run" : "applied version " + std::to_string(version);
    co_return h;
}

asio::awaitable<handled> handler_context::config_api(std::string_view rest) {
    const bool get = req_.method() == http::verb::get;
    if (rest.empty() || rest == "/") {
        if (get) {
            const auto cfg = srv_.current_config();
            std::int64_t version = 0;
            if (auto* db = srv_.db()) {
                if (auto v = db->config_version(0)) {
                    // The latest stored version is written just before it is applied: read
                    // in between, it is not what runs. Paired with the old config it would
                    // let a change made from it pass base_version and undo the new one, so
                    // the version is given only when it is the running config (else 0, which
                    // no base_version check accepts while a version is stored).
                    if (same_json(v->second, cfg->source_json)) {
                        version = v->first;
                    }
                }
            }
            handled h;
            std::string shown = cfg->source_json.empty() ? std::string{"null"} : cfg->source_json;
            // Operators read it whole (they send it back changed); a viewer sees no secret.
            if (!allowed(admin_role::operator_) && !cfg->source_json.empty()) {
                if (auto r = redact_secrets(cfg->source_json)) {
                    shown = std::move(*r);
                }
            }
            h.body = "{\"version\":" + std::to_string(version) + ",\"config\":" + shown + "}";
            co_return h;
        }
        if (req_.method() != http::verb::post) {
            co_return method_not_allowed("GET, POST");
        }
        if (!allowed(admin_role::operator_)) {
            auto f = forbidden("change the config", admin_role::operator_);
            f.mutation = true;
            co_return f;
        }
        std::optional<api_error> err;
        // A field it does not know is refused, never applied without: a misspelt
        // "dry_run" in the body would apply for real, "metricsOnly" enforce at once,
        // "baseVersion" skip the version check.
        auto b = body(err, "a config change (dry_run is a query parameter)",
                      {"config", "reason", "metrics_only", "base_version"});
        if (!b) {
            auto f = fail(*err);
            f.mutation = true;
            co_return f;
        }
        simdjson::dom::element ce;
        if ((*b)["config"].get(ce) != simdjson::SUCCESS || ce.type() != simdjson::dom::element_type::OBJECT) {
            const bool missing = (*b)["config"].error() == simdjson::NO_SUCH_FIELD;
            auto f = fail({http::status::bad_request, missing ? "missing_field" : "bad_field",
                           missing ? "\"config\" (an object) is required" : "\"config\" must be an object (the config itself)",
                           "config"});
            f.mutation = true;
            co_return f;
        }
        // Like dry_run: a metrics_only that cannot be read ("true" as a string) must not
        // make the change enforce at once.
        bool metrics_only = false;
        if (simdjson::dom::element m; (*b)["metrics_only"].get(m) == simdjson::SUCCESS &&
                                      m.get(metrics_only) != simdjson::SUCCESS) {
            auto f = fail({http::status::bad_request, "bad_field", "metrics_only is true or false", "metrics_only"});
            f.mutation = true;
            co_return f;
        }
        // A misspelt or unreadable dry_run must not apply a change meant to be tried.
        for (const auto& [k, v] : query_) {
            if (k != "dry_run") {
                auto f = fail({http::status::bad_request, "bad_field", "unknown query parameter " + cfg::quote(k), k});
                f.mutation = true;
                co_return f;
            }
        }
        bool dry_run = false;
        if (const auto it = query_.find("dry_run"); it != query_.end()) {
            if (it->second.empty() || it->second == "1" || it->second == "true") {
                dry_run = true;
            } else if (it->second != "0" && it->second != "false") {
                auto f = fail({http::status::bad_request, "bad_field",
                               "dry_run is 1, true, 0 or false, not " + cfg::quote(it->second), "dry_run"});
                f.mutation = true;
                co_return f;
            }
        }
        // Optimistic concurrency: `base_version`, the version the change was made from (as
        // GET /v1/config gave it); a change made from an older one would undo what came
        // between, so it is refused rather than applied over it.
        if (auto bv = (*b)["base_version"]; bv.error() != simdjson::NO_SUCH_FIELD) {
            std::int64_t base = 0;
            if (bv.get(base) != simdjson::SUCCESS || base < 0) {
                auto f = fail({http::status::bad_request, "bad_field",
                               "\"base_version\" must be a version number (0: none stored yet)", "base_version"});
                f.mutation = true;
                co_return f;
            }
            const auto* db = srv_.db();
            const auto latest = db ? db->config_version(0) : std::nullopt;
            const std::int64_t now_version = latest ? latest->first : 0;
            if (base != now_version) {
                auto f = fail({http::status::conflict, "version_conflict",
                               "the change was made from version " + std::to_string(base) + ", but version " +
                                   std::to_string(now_version) + " is current; read it again and redo the change",
                               "base_version"});
                f.mutation = true;
                f.audit_target = "config";
                co_return f;
            }
        }
        auto parsed = parse_config(simdjson::minify(ce));
        if (!parsed.errors.empty()) {
            co_return invalid_config(parsed.errors);
        }
        co_return co_await apply(parsed.cfg, dry_run, metrics_only, {}, std::move(parsed.warnings));
    }
    if (req_.method() != http::verb::post) {
        co_return method_not_allowed("POST");
    }
    if (rest != "/reload" && rest != "/rollback") {
        co_return fail({http::status::not_found, "not_found", "no admin endpoint /v1/config" + std::string{rest}});
    }
    if (!allowed(rest == "/rollback" ? admin_role::admin : admin_role::operator_)) {
        auto f = forbidden(rest == "/rollback" ? "roll the config back" : "reload the config",
                           rest == "/rollback" ? admin_role::admin : admin_role::operator_);
        f.mutation = true;
        co_return f;
    }
    // Neither takes a query parameter: `?dry_run=1` would be a preview here that applies
    // for real (POST /v1/config has the dry run).
    if (!query_.empty()) {
        auto f = fail({http::status::bad_request, "bad_field",
                       cfg::quote(query_.begin()->first) + " is not a parameter of /v1/config" + std::string{rest} +
                           " (it takes none; a dry run is POST /v1/config?dry_run=1)",
                       query_.begin()->first});
        f.mutation = true;
        co_return f;
    }
    std::optional<api_error> err;
    auto b = rest == "/reload" ? body(err, "a reload", {"reason"}) : body(err, "a rollback", {"version", "reason"});
    if (!b) {
        auto f = fail(*err);
        f.mutation = true;
        co_return f;
    }
    parse_result parsed;
    if (rest == "/reload") {
        if (srv_.config_path().empty()) {
            co_return fail({http::status::conflict, "invalid_state", "breakerbox was not started from a config file"});
        }
        parsed = load_config_file(srv_.config_path());
    } else {
        std::int64_t version = 0;
        if (auto vv = (*b)["version"]; vv.get(version) != simdjson::SUCCESS || version <= 0) {
            auto f = vv.error() == simdjson::NO_SUCH_FIELD
                         ? fail({http::status::bad_request, "missing_field", "\"version\" (a positive number) is required",
                                 "version"})
                         : fail({http::status::bad_request, "bad_field", "\"version\" must be a positive number", "version"});
            f.mutation = true;
            co_return f;
        }
        auto* db = srv_.db();
        auto v = db ? db->config_version(version) : std::nullopt;
        if (!v) {
            co_return fail({http::status::not_found, "not_found", "no config version " + std::to_string(version)});
        }
        parsed = parse_config(v->second);  // a rollback is a new apply: every check holds
    }
    if (!parsed.errors.empty()) {
        co_return invalid_config(parsed.errors);
    }
    // A reload from the file marks the file as read (a later SIGHUP or start compares with it).
    // (A named local: GCC 12 mishandles a conditional's temporary inside a co_await.)
    std::string file_sha;
    if (rest == "/reload") {
        file_sha = sha256_hex(parsed.cfg->source_json);
    }
    co_return co_await apply(parsed.cfg, false, false, std::move(file_sha), std::move(parsed.warnings));
}

asio::awaitable<handled> handler_context::audit_api(std::string_view rest) {
    if (req_.method() != http::verb::get) {
        co_return method_not_allowed("GET");
    }
    auto* db = srv_.db();
    if (db == nullptr) {
        co_return fail({http::status::not_found, "not_found", "no store: the audit log lives in the store"});
    }
    if (rest == "/verify") {
        // A page at a time, letting the control thread's other work (admin calls, breaker
        // ticks) run between pages: 100,000 entries take most of a second.
        store::database::audit_verifier verifier{*db};
        while (!verifier.step()) {
            co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
        }
        const auto& v = verifier.result();
        handled h;
        h.body = "{\"ok\":" + std::string{v.ok ? "true" : "false"} + ",\"entries\":" + std::to_string(v.entries) +
                 (v.ok ? std::string{} : ",\"first_bad\":" + std::to_string(v.first_bad) + ",\"problem\":" + q(v.problem)) +
                 "}";
        co_return h;
    }
    if (!rest.empty() && rest != "/") {
        co_return fail({http::status::not_found, "not_found", "no admin endpoint /v1/audit" + std::string{rest}});
    }
    std::int64_t after = 0;
    std::size_t limit = 100;
    // A page asked for wrongly is refused, not read as another page (`limit=abc` was 1).
    auto count = [](const std::string& v) {
        return !v.empty() && v.size() <= 18 && std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; });
    };
    for (const auto& [k, v] : query_) {
        if (k != "after" && k != "limit") {
            co_return fail({http::status::bad_request, "bad_field", cfg::quote(k) + " is not a parameter (after, limit)", k});
        }
        if (!count(v)) {
            co_return fail({http::status::bad_request, "bad_field", cfg::quote(v) + " is not a count", k});
        }
    }
    if (auto it = query_.find("after"); it != query_.end()) {
        after = std::atoll(it->second.c_str());
    }
    if (auto it = query_.find("limit"); it != query_.end()) {
        const auto n = one_to_thousand(it->second);
        if (!n) {
            co_return fail({http::status::bad_request, "bad_field", cfg::quote(it->second) + " is not a limit (1 to 1000)",
                            "limit"});
        }
        limit = *n;
    }
    std::string read_error;
    const auto entries = db->list_audit(after, limit, &read_error);
    if (!read_error.empty()) {
        co_return fail({http::status::service_unavailable, "store_unavailable", read_error});
    }
    const bool reveal = allowed(admin_role::operator_);
    std::string o = "{\"entries\":[";
    for (std::size_t i = 0; i < entries.size(); ++i) {
        auto e = entries[i];
        if (!reveal && !e.params.empty()) {
            if (auto r = redact_secrets(e.params)) {
                e.params = std::move(*r);  // kept as stored for the hash chain; shown redacted to viewers
            }
        }
        o += (i ? "," : "") + std::string{"{\"id\":"} + std::to_string(e.id) + ",\"at\":" + std::to_string(e.at_ms) +
             ",\"actor\":" + q(e.actor) + ",\"role\":" + q(e.role) + ",\"method\":" + q(e.method) +
             ",\"path\":" + q(e.path) + ",\"target\":" + q(e.target) + ",\"params\":" + q(e.params) +
             ",\"reason\":" + q(e.reason) + ",\"result\":" + q(e.result) + ",\"diff\":" + q(e.diff) +
             ",\"prev_hash\":" + q(e.prev_hash) + ",\"hash\":" + q(e.hash) + "}";
    }
    // Oldest first: a full page has more after it (`?after=next_after`).
    o += "],\"next_after\":" + (entries.size() == limit ? std::to_string(entries.back().id) : std::string{"null"}) + "}";
    handled h;
    h.body = std::move(o);
    co_return h;
}

// An audit entry for a change that no admin request made (a signal, a start). False when
// the store cannot write it; true without a store (nothing to write to).
asio::awaitable<bool> audit_local(server& srv, std::string actor, std::string method, std::string params,
                                  std::string reason, std::string result, std::string diff) {
    auto* db = srv.db();
    if (db == nullptr) {
        co_return true;
    }
    store::audit_entry e;
    e.actor = std::move(actor);
    e.role = "local";
    e.method = std::move(method);
    e.path = srv.config_path();
    e.target = "config";
    e.params = std::move(params);
    e.reason = std::move(reason);
    e.result = std::move(result);
    e.diff = std::move(diff);
    auto r = co_await append_audit(*db, std::move(e));
    if (!r.ok) {
        spdlog::error("audit: cannot record a config change from {}: {}", srv.config_path(), r.message);
    }
    co_return r.ok;
}

// Re-reads every listener's TLS files (server::reload_security), logging, after `who`, each
// listener whose files could not be: "; TLS files not reloaded: ..." for each, to append to
// an audit result ("" when all were read).
std::string reload_tls_files(server& srv, std::string_view who) {
    std::string failed;
    for (const auto& e : srv.reload_security()) {
        spdlog::error("{}: TLS files not reloaded, the previous certificates stay in use: {}", who, e);
        failed += "; TLS files not reloaded: " + e;
    }
    return failed;
}

// A SIGHUP whose reload was refused before it could be audited (the store cannot take the
// record): a certificate-renewal hook signals once, and an expiring certificate must not keep
// serving because the disk is full. Logged; there is no record to write it to.
void reload_tls_files_anyway(server& srv) {
    if (reload_tls_files(srv, "SIGHUP").empty()) {
        spdlog::warn("SIGHUP: the running config's certificate files re-read (not in the audit log: it cannot be "
                     "written)");
    }
}

// The audit params of a change read from a file: the file and the SHA-256 of what was read.
std::string file_params(const std::string& path, const std::optional<std::string>& text) {
    return "{\"file\":" + cfg::quote(path) + (text ? ",\"sha256\":\"" + sha256_hex(*text) + "\"" : std::string{}) +
           "}";
}

}  // namespace

asio::awaitable<void> reload_on_signal(server& srv) {
    // One change at a time: wait for an admin apply in flight to store its version.
    if (srv.config_change_busy()) {
        spdlog::info("SIGHUP: waiting for the config change in progress");
        asio::steady_timer wait{co_await asio::this_coro::executor};
        while (srv.config_change_busy() && !srv.draining()) {
            wait.expires_after(std::chrono::milliseconds{20});
            co_await wait.async_wait(asio::use_awaitable);
        }
    }
    if (srv.draining()) {
        spdlog::warn("SIGHUP: not reloaded: the server is stopping");
        co_return;
    }
    config_change_slot slot{srv};
    const std::string& path = srv.config_path();
    const std::string actor = "signal:SIGHUP";
    std::string reason = "SIGHUP: reload " + path;
    std::optional<std::string> text;
    auto parsed = load_config_file(path, &text);
    const std::string params = file_params(path, text);
    // A file unchanged since it was last read, while what runs differs from it: a config was
    // applied through the API (or rolled back to) after that read. Applying the file would
    // undo it without anyone having asked (a certificate-renewal hook signals without
    // editing the file); what runs is re-applied instead, which re-reads its certificates
    // and suppression lists. An edited file, or POST /v1/config/reload, applies the file.
    std::optional<std::pair<std::int64_t, std::int64_t>> kept;  // (running version, file's version)
    const std::string file_sha = text ? sha256_hex(*text) : std::string{};
    if (auto* db = srv.db(); db != nullptr && text) {
        std::string store_error;
        const auto mark = db->config_file(&store_error);
        const auto running = srv.current_config();
        const auto latest =
            mark && mark->sha256 == file_sha ? db->config_version(0, &store_error) : std::nullopt;
        if (!store_error.empty()) {
            // Whether the file would undo a config applied through the API since it was read
            // cannot be told: nothing changes (fail closed), as for a file with errors. The
            // running config's certificate files are re-read all the same.
            spdlog::error("SIGHUP: not reloaded: {}; the running config keeps serving", store_error);
            const std::string result = "store_unavailable: " + store_error + reload_tls_files(srv, "SIGHUP");
            co_await audit_local(srv, actor, "SIGHUP", params, reason, result, "");
            co_return;
        }
        // Only a version stored after the file's, and the one running: a mark written with a
        // version whose apply then failed is no reason to keep what runs.
        if (latest && latest->first > mark->version && same_json(latest->second, running->source_json) &&
            !same_json(*text, running->source_json)) {
            kept.emplace(latest->first, mark->version);
            reason = "SIGHUP: " + path + " unchanged since version " + std::to_string(mark->version) +
                     "; re-apply the running version " + std::to_string(kept->first);
            parsed = parse_config(running->source_json, true);
        }
    }
    if (parsed.errors.empty() && parsed.cfg) {
        // Changed TLS settings that cannot be built refuse the reload whole (server.hpp).
        srv.check_tls_change(*srv.current_config(), *parsed.cfg, parsed.errors);
    }
    if (!parsed.errors.empty()) {
        spdlog::error("SIGHUP: the new configuration has {} error(s); the old one keeps serving", parsed.errors.size());
        std::string listed;
        for (const auto& e : parsed.errors.list()) {
            spdlog::error("  {}", e.to_string());
            listed += e.to_string() + "\n";
        }
        // A certificate renewal hook signals too: the running config's TLS files are re-read
        // whatever the file now says (an unrelated mistake there must not keep an expiring
        // certificate serving).
        const std::string tls_failed = reload_tls_files(srv, "SIGHUP");
        if (tls_failed.empty()) {
            spdlog::info("SIGHUP: the running config's certificate files re-read");
        }
        const std::string result =
            "invalid_config: " + std::to_string(parsed.errors.size()) + " error(s)" + tls_failed;
        co_await audit_local(srv, actor, "SIGHUP", params, reason, result, listed);
        co_return;
    }
    if (kept) {
        // The same JSON as runs, so no new version; a suppression file that no longer parses
        // was refused above, as for any reload. The files re-read may still loosen a guard (a
        // suppression list that lost entries): said out loud and written down, as below.
        const auto d = judge_change(srv, *srv.current_config(), *parsed.cfg);
        std::string diff;
        for (const auto& l : d.loosening) {
            diff += "loosens: " + l + "\n";
            spdlog::warn("SIGHUP: the re-read files loosen a guard: {}", l);
        }
        if (!co_await audit_local(srv, actor, "SIGHUP", params, reason, "started", diff)) {
            spdlog::error("SIGHUP: not reloaded: its audit record could not be written; the config keeps serving");
            reload_tls_files_anyway(srv);
            co_return;
        }
        std::string result = "kept version " + std::to_string(kept->first) + ": the file is unchanged since it was " +
                             "read as version " + std::to_string(kept->second) + "; files re-read";
        try {
            for (const auto& w : srv.apply_config(parsed.cfg)) {
                spdlog::warn("reload: {}", w);
            }
        } catch (const std::exception& e) {
            result = std::string{"not applied: "} + e.what();
        }
        result += reload_tls_files(srv, "reload");
        co_await audit_local(srv, actor, "SIGHUP", params, reason, result, "");
        spdlog::warn("SIGHUP: {} is unchanged since it was read as version {}; version {}, applied after it through "
                     "the admin API, keeps running (its certificate and list files re-read). Edit the file, or POST "
                     "/v1/config/reload, to run the file",
                     path, kept->second, kept->first);
        co_return;
    }
    // Whoever can signal the process can edit its file, so a loosening is not refused here;
    // it is written down, first, and said out loud.
    const auto d = judge_change(srv, *srv.current_config(), *parsed.cfg);
    std::string diff = diff_text_of(d);
    for (const auto& l : d.loosening) {
        diff += "loosens: " + l + "\n";
        spdlog::warn("SIGHUP: the reloaded config loosens a guard: {}", l);
    }
    if (!co_await audit_local(srv, actor, "SIGHUP", params, reason, "started", diff)) {
        spdlog::error("SIGHUP: not reloaded: its audit record could not be written; the old config keeps serving");
        reload_tls_files_anyway(srv);
        co_return;
    }
    // The version first, as for the API: a change that runs without its stored version would
    // let a client holding the previous version number (base_version) undo it.
    std::int64_t version = 0;
    bool stored = false;
    if (auto* db = srv.db()) {
        auto r = co_await await_store([&](store::done_fn done) {
            db->save_config_version(parsed.cfg->source_json, actor, reason, std::move(done), file_sha);
        });
        if (!r.ok) {
            spdlog::error("SIGHUP: not reloaded: its version could not be stored ({}); the old config keeps serving",
                          r.message);
            co_await audit_local(srv, actor, "SIGHUP", params, reason,
                                 "not applied: version not stored: " + r.message + reload_tls_files(srv, "SIGHUP"),
                                 diff);
            co_return;
        }
        version = r.count;
        stored = true;
    }
    std::vector<std::string> warnings = parsed.warnings;  // what the config's reading warned of, first
    std::string refused;
    try {
        for (auto& w : srv.apply_config(parsed.cfg)) {
            warnings.push_back(std::move(w));
        }
    } catch (const std::exception& e) {  // the first breakers of the run, and a store that cannot be opened
        refused = e.what();
    }
    if (!refused.empty()) {
        spdlog::error("SIGHUP: not reloaded, the old config keeps serving: {}", refused);
        co_await audit_local(srv, actor, "SIGHUP", params, reason, "not applied: " + refused + reload_tls_files(srv, "SIGHUP"),
                             diff);
        co_return;
    }
    for (const auto& w : warnings) {
        spdlog::warn("reload: {}", w);
    }
    std::string result = "applied";
    std::string tls_failed;
    for (const auto& e : srv.reload_security()) {  // renewed certificates (same files, new contents)
        spdlog::error("reload: TLS files not reloaded, the previous certificates stay in use: {}", e);
        tls_failed += (tls_failed.empty() ? "" : "; ") + e;  // every one, as the admin API's apply lists them
    }
    if (!tls_failed.empty()) {
        result += "; TLS files not reloaded: " + tls_failed;
    }
    if (auto* db = srv.db(); db != nullptr && !stored) {
        // The store was opened by this reload (its first breakers): the version goes after.
        auto r = co_await await_store([&](store::done_fn done) {
            db->save_config_version(parsed.cfg->source_json, actor, reason, std::move(done), file_sha);
        });
        version = r.ok ? r.count : 0;
    }
    co_await audit_local(srv, actor, "SIGHUP", params, reason, result + " (version " + std::to_string(version) + ")",
                         diff);
    spdlog::info("SIGHUP: configuration reloaded from {} (version {})", path, version);
}

asio::awaitable<void> record_startup_config(server& srv) {
    auto* db = srv.db();
    const auto cfg = srv.current_config();
    if (db == nullptr || srv.config_path().empty() || cfg->source_json.empty()) {
        co_return;
    }
    if (srv.config_change_busy()) {
        co_return;  // (it runs before the admin API and signals are served; never, then)
    }
    const auto last = db->config_version(0);
    if (const auto v = srv.config_from_version(); v != 0) {
        // choose_startup_config ran the latest version rather than the unchanged file.
        const auto mark = db->config_file();
        const std::string why = "started from version " + std::to_string(v) + ", applied after the file was read as " +
                                "version " + std::to_string(mark ? mark->version : 0) + "; the file is unchanged";
        co_await audit_local(srv, "startup", "START", file_params(srv.config_path(), std::nullopt),
                             "started from " + srv.config_path(), why, "");
        co_return;
    }
    const std::string file_sha = sha256_hex(cfg->source_json);  // the file's text as read
    // The same config whatever its layout: the API stores what it applied minified.
    if (last && same_json(last->second, cfg->source_json)) {
        auto r = co_await await_store(
            [&](store::done_fn done) { db->mark_config_file(file_sha, last->first, std::move(done)); });
        if (!r.ok) {
            spdlog::error("config: cannot record {} as read ({}); a config applied through the API later may be "
                          "undone by a SIGHUP or restart that finds this file unchanged",
                          srv.config_path(), r.message);
        }
        co_return;
    }
    config_change_slot slot{srv};
    std::string diff;
    std::string result = "first start from this file";
    if (last) {
        // Most often a config applied through the API (which does not write the file back)
        // and then a restart: whatever it changed is gone now. Said, not silently dropped.
        result = "started from the file, which differs from the last applied version " + std::to_string(last->first);
        spdlog::warn("config: {} differs from version {}, the last one applied (through the admin API, a reload or a "
                     "rollback); it is what runs now: see the audit log for what changed",
                     srv.config_path(), last->first);
        auto before = parse_config(last->second, true);
        if (before.errors.empty()) {
            // As for SIGHUP: whoever edits the file may loosen a guard; written down and said.
            const auto d = diff_configs(*before.cfg, *cfg);
            diff = diff_text_of(d);
            for (const auto& l : d.loosening) {
                diff += "loosens: " + l + "\n";
                spdlog::warn("config: the file loosens a guard of version {}: {}", last->first, l);
            }
        }
    }
    auto r = co_await await_store([&](store::done_fn done) {
        db->save_config_version(cfg->source_json, "startup", "started from " + srv.config_path(), std::move(done),
                                file_sha);
    });
    co_await audit_local(srv, "startup", "START", file_params(srv.config_path(), cfg->source_json),
                         "started from " + srv.config_path(),
                         result + " (version " + std::to_string(r.ok ? r.count : 0) + ")", diff);
}

std::shared_ptr<const config> choose_startup_config(const std::string& path, std::shared_ptr<const config> from_file,
                                                    std::int64_t* version) {
    *version = 0;
    // The store is opened (and so holds versions) only with breakers or an admin API.
    if (from_file->breakers.empty() && !from_file->admin.enabled) {
        return from_file;
    }
    std::string error;
    const auto view = store::database::peek_config(from_file->store.path, &error);
    if (!view) {
        if (!error.empty()) {
            // Starting from the file could undo a config applied after it, for good (the start
            // stores the file as the latest version): not started, as for unreadable state.
            throw std::runtime_error("cannot read the config versions in " + from_file->store.path + " (" + error +
                                     "), so whether a config applied through the admin API should run instead of " +
                                     path + " is unknown");
        }
        return from_file;
    }
    if (view->file.sha256 != sha256_hex(from_file->source_json)) {
        return from_file;  // edited since it was last read (or never read): the file runs
    }
    if (view->latest <= view->file.version || same_json(view->latest_json, from_file->source_json)) {
        return from_file;  // nothing applied after the file
    }
    auto stored = parse_config(view->latest_json, true);
    if (!stored.errors.empty()) {
        spdlog::error("config: version {} (applied after {} was read as version {}) no longer parses ({}); "
                      "starting from the file instead, which undoes it",
                      view->latest, path, view->file.version, stored.errors.list().front().to_string());
        return from_file;
    }
    if (stored.cfg->store.path != from_file->store.path) {
        spdlog::error("config: version {} (applied after {} was read as version {}) names another store ({}); "
                      "starting from the file instead, which undoes it: write the change to the file",
                      view->latest, path, view->file.version, stored.cfg->store.path);
        return from_file;
    }
    spdlog::warn("config: {} is unchanged since it was read as version {}; version {}, applied after it through the "
                 "admin API, runs (edit the file, or POST /v1/config/reload, to run the file)",
                 path, view->file.version, view->latest);
    for (const auto& w : stored.warnings) {
        spdlog::warn("config: {}", w);
    }
    *version = view->latest;
    return stored.cfg;
}

admin_server::admin_server(asio::io_context& control, server& srv) : control_(control), srv_(srv) {}

admin_server::~admin_server() = default;

void admin_server::start() {
    const auto& a = srv_.current_config()->admin;
    acceptor_ = std::make_unique<tcp::acceptor>(control_);
    error_code ec;
    const tcp::endpoint ep{asio::ip::make_address(a.host), a.port};
    acceptor_->open(ep.protocol(), ec);
    if (!ec) {
        acceptor_->set_option(asio::socket_base::reuse_address(true), ec);
    }
    if (!ec) {
        acceptor_->bind(ep, ec);
    }
    if (!ec) {
        acceptor_->listen(64, ec);
    }
    if (ec) {
        throw std::runtime_error("admin: cannot listen on " + a.host + ":" + std::to_string(a.port) + ": " + ec.message());
    }
    port_ = acceptor_->local_endpoint().port();
    if (a.tls) {
        try {
            std::lock_guard lock{tls_mu_};
            tls_ = make_server_tls(&*a.tls);
        } catch (const std::exception& e) {
            throw std::runtime_error(std::string{"admin: "} + e.what());
        }
    }
    asio::co_spawn(control_, accept_loop(), asio::detached);
}

std::string admin_server::reload_tls(const config& cfg) {
    std::shared_ptr<asio::ssl::context> next;
    {
        std::lock_guard lock{tls_mu_};
        if (!tls_ || !cfg.admin.tls) {
            return {};  // plain, or switched on/off: fixed until restart (apply_config warns)
        }
    }
    try {
        next = make_server_tls(&*cfg.admin.tls);
    } catch (const std::exception& e) {
        return e.what();
    }
    std::lock_guard lock{tls_mu_};
    tls_ = std::move(next);
    return {};
}

void admin_server::stop() {
    stopped_ = true;
    error_code ignored;
    if (acceptor_) {
        acceptor_->close(ignored);
    }
    for (auto* s : reading_) {
        s->cancel(ignored);
    }
}

asio::awaitable<void> admin_server::accept_loop() {
    for (;;) {
        auto [ec, socket] = co_await acceptor_->async_accept(use_tuple);
        if (ec == asio::error::operation_aborted || !acceptor_->is_open()) {
            co_return;  // stop()
        }
        if (ec) {
            // EMFILE and friends: the admin API is what operators need during an incident,
            // so it backs off and keeps accepting rather than ending for good.
            spdlog::warn("admin accept failed: {}", ec.message());
            asio::steady_timer t{control_, std::chrono::milliseconds{50}};
            co_await t.async_wait(use_tuple);
            continue;
        }
        if (sessions_ >= srv_.current_config()->admin.max_connections) {
            if (!refusing_) {
                spdlog::warn("admin: {} connections being served (admin.max_connections): closing new ones until one "
                             "ends",
                             sessions_);
                refusing_ = true;
            }
            error_code ignored;
            socket.close(ignored);
            continue;
        }
        refusing_ = false;
        ++sessions_;  // before the session starts: the accepts queued behind this one see it
        asio::co_spawn(control_, session(std::move(socket)), asio::detached);
    }
}

asio::awaitable<void> admin_server::session(tcp::socket socket) {
    // Counted by accept_loop before the handshake (admin.max_connections); uncounted here.
    struct count_down {
        std::size_t& n;
        ~count_down() { --n; }
    } counted{sessions_};
    // Arguments are named locals: GCC 12 mishandles temporaries inside a co_await operand.
    SSL* no_tls = nullptr;
    const std::shared_ptr<asio::ssl::context> tls = current_tls();  // this connection's, even if a reload replaces it
    if (!tls) {
        beast::tcp_stream stream{std::move(socket)};
        co_await serve(stream, no_tls, nullptr);
        co_return;
    }
    beast::ssl_stream<beast::tcp_stream> stream{std::move(socket), *tls};
    stream.next_layer().expires_after(std::chrono::seconds{10});
    auto [ec] = co_await stream.async_handshake(asio::ssl::stream_base::server, use_tuple);
    if (ec) {
        spdlog::info("admin: TLS handshake failed: {}", ec.message());
        co_return;
    }
    SSL* ssl = stream.native_handle();
    co_await serve(stream, ssl, tls);
    error_code ignored;
    stream.next_layer().socket().shutdown(tcp::socket::shutdown_both, ignored);
}

template <class Stream>
asio::awaitable<void> admin_server::serve(Stream& stream, SSL* ssl,
                                         std::shared_ptr<asio::ssl::context> verified_under) {
    beast::flat_buffer buf;
    std::string scratch;
    // When the client certificate (or one of its chain) expires: from then on it identifies
    // nobody on this connection, as a new handshake would refuse it.
    auto cert_expires = ssl != nullptr ? verified_chain_expiry(ssl) : std::nullopt;
    for (;;) {
        const auto cfg = srv_.current_config();
        request_parser parser;
        parser.body_limit(cfg->admin.max_body_bytes);
        parser.header_limit(16 * 1024);
        beast::get_lowest_layer(stream).expires_after(std::chrono::seconds{30});
        buf.max_size(std::max(buf.size(), max_buffered_line));  // core/read_limits.hpp
        if (stopped_) {
            co_return;
        }
        error_code ec;
        {
            // Known to stop() while it waits, so a shutdown need not wait out the idle timeout.
            auto* sock = &beast::get_lowest_layer(stream).socket();
            reading_.insert(sock);
            struct unmark {
                std::set<tcp::socket*>& reading;
                tcp::socket* sock;
                ~unmark() { reading.erase(sock); }
            } unmarked{reading_, sock};
            std::size_t ignored_bytes = 0;
            std::tie(ec, ignored_bytes) = co_await http::async_read(stream, buf, parser, use_tuple);
        }
        if (ec) {
            // Counted like any answer but the health checks' (the family from the target,
            // when the head was read).
            const std::string counted_path =
                parser.is_header_done() ? std::string{parser.get().target().substr(0, parser.get().target().find('?'))}
                                        : std::string{};
            const bool counted = counted_path != "/healthz" && counted_path != "/readyz";
            if (ec == http::error::body_limit) {
                if (counted) {
                    srv_.count_admin_action(counted_path, 413);
                }
                auto res = json_response(http::status::payload_too_large,
                                         error_json({http::status::payload_too_large, "body_too_large",
                                                     "admin request bodies are limited to " +
                                                         std::to_string(cfg->admin.max_body_bytes) + " bytes"}),
                                         11, false);
                co_await write_message(stream, res, scratch);
            } else if (ec != http::error::end_of_stream && ec != beast::error::timeout && ec != asio::error::eof &&
                       ec != asio::error::connection_reset && ec != asio::error::operation_aborted) {
                if (counted) {
                    srv_.count_admin_action(counted_path, 400);
                }
                auto res = json_response(http::status::bad_request,
                                         error_json({http::status::bad_request, "bad_request", ec.message()}), 11, false);
                co_await write_message(stream, res, scratch);
            }
            co_return;
        }
        request req = parser.release();
        const bool keep_alive = req.keep_alive() && !srv_.draining();
        response res;
        std::string path{req.target().substr(0, req.target().find('?'))};
        if (path == "/healthz") {
            res = json_response(http::status::ok, "{\"status\":\"ok\"}", req.version(), keep_alive);
        } else if (path == "/readyz") {
            res = srv_.draining() ? json_response(http::status::service_unavailable, "{\"status\":\"draining\"}",
                                                  req.version(), keep_alive)
                                  : json_response(http::status::ok, "{\"status\":\"ready\"}", req.version(), keep_alive);
        } else {
            // A verified client certificate that maps to an operator identifies the caller;
            // otherwise the bearer token does. Looked up per request against the current
            // config: a mapping removed meanwhile ends that identity on an open connection too.
            // (Read again here: the read above may have waited 30 s for this request.)
            const auto now_cfg = srv_.current_config();
            // A client certificate is judged again once the TLS files were reloaded (a CRL
            // that revokes it, a CA no longer trusted): refused, it identifies nobody on this
            // connection from then on (a bearer token still may).
            if (ssl != nullptr) {
                auto now_tls = current_tls();
                if (now_tls != verified_under) {
                    std::string why;
                    if (reverify_peer(ssl, now_tls.get(), &why, &cert_expires) != peer_verdict::still_ok) {
                        spdlog::info("admin: a connection's client certificate no longer identifies it since the TLS "
                                     "files were reloaded{}", why.empty() ? "" : " (" + why + ")");
                        ssl = nullptr;
                    }
                    verified_under = std::move(now_tls);
                }
            }
            if (ssl != nullptr && cert_expires &&
                std::chrono::floor<std::chrono::seconds>(srv_.time().wall_now()) > *cert_expires) {
                spdlog::info("admin: a connection's client certificate expired while it was open: it identifies "
                             "nobody there from now on");
                ssl = nullptr;
            }
            std::optional<caller> who = ssl != nullptr ? cert_caller(*now_cfg, ssl) : std::nullopt;
            if (!who) {
                who = authenticate(*now_cfg, req[http::field::authorization]);
            }
            if (!who) {
                // Counted (breakerbox_admin_actions_total{status="401"}) and logged at most every
                // 10 s: a token being guessed, or a revoked one still tried, shows.
                srv_.count_admin_action(path, 401);
                static once_every logged{std::chrono::seconds{10}};
                if (logged.due(srv_.now())) {
                    spdlog::warn("admin: a request to {} was refused: {} (logged at most every 10 s; "
                                 "breakerbox_admin_actions_total counts them all)",
                                 redact_query(path),
                                 req[http::field::authorization].empty() ? "no credentials" : "a token not known");
                }
                res = json_response(http::status::unauthorized,
                                    error_json({http::status::unauthorized, "unauthorized",
                                                req[http::field::authorization].empty()
                                                    ? "an Authorization: Bearer token is required"
                                                    : "the token is not valid"}),
                                    req.version(), keep_alive);
                res.set(http::field::www_authenticate, "Bearer realm=\"breakerbox-admin\"");
            } else {
                handler_context ctx{srv_, req, &*who};
                handled h = co_await ctx.run();
                // Every POST is a mutation attempt: refused and failed ones are audited too.
                h.mutation = h.mutation || req.method() == http::verb::post;
                if (h.audit_target.empty()) {
                    h.audit_target = path;
                }
                if (h.mutation) {
                    // The record of who did what is durable before the answer goes out.
                    if (auto* db = srv_.db()) {
                        store::audit_entry e;
                        e.actor = who->name;
                        e.role = std::string{to_string(who->role)};
                        e.method = std::string{req.method_string()};
                        // As the handler read it ('+' is itself); a path refused for control
                        // characters is kept as sent (encoded), never decoded into the record.
                        url_decode(path, e.path, false);
                        if (has_control(e.path)) {
                            e.path = std::string{path};
                        }
                        e.target = h.audit_target;
                        e.params = req.body().size() <= 4096 ? req.body() : req.body().substr(0, 4096);
                        e.reason = ctx.reason_;
                        e.result = h.audit_result.empty() ? std::to_string(static_cast<unsigned>(h.status)) : h.audit_result;
                        e.diff = h.audit_diff;
                        auto r = co_await append_audit(*db, std::move(e));
                        if (!r.ok) {
                            // The act is done (its intent was written ahead); only its outcome
                            // record failed. Replacing the answer with a 503 would hide what
                            // was done (a release that went out) and invite doing it again:
                            // the answer stays, and says the record is missing.
                            spdlog::error("audit: cannot record the outcome of {} {} by {}: {}", req.method_string(),
                                          path, who->name, r.message);
                            const std::string note = "\"audit_unrecorded\":" +
                                                     q("the outcome could not be written to the audit log (" +
                                                                r.message + "); the action itself was taken as answered");
                            if (h.body.size() >= 2 && h.body.front() == '{' && h.body.back() == '}') {
                                h.body.insert(h.body.size() - 1, (h.body.size() > 2 ? "," : "") + note);
                            }
                            h.audit_unrecorded = true;
                        }
                    }
                    std::string shown_path{path.substr(0, 256)};
                    for (auto& c : shown_path) {  // decoded: %0A would break the line
                        c = control_char(c) ? '?' : c;
                    }
                    spdlog::info("admin: {} {} by {} ({}): {} -> {}", req.method_string(), shown_path, who->name,
                                 to_string(who->role), ctx.reason_, static_cast<unsigned>(h.status));
                }
                const bool prom = path == "/metrics" && h.status == http::status::ok;
                res = json_response(h.status, std::move(h.body), req.version(), keep_alive);
                if (prom) {
                    res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
                    res.body().pop_back();  // the exposition already ends in a newline
                    res.prepare_payload();
                }
                if (!h.allow.empty()) {
                    res.set(http::field::allow, h.allow);
                }
                if (h.audit_unrecorded) {
                    res.set("x-breakerbox-audit", "unrecorded");
                }
                srv_.count_admin_action(path, static_cast<unsigned>(h.status));
            }
        }
        if (req.method() == http::verb::head) {
            // The head of the GET, without its body (RFC 9110 9.3.2): a body sent would be
            // read as the start of the next response on a kept-alive connection.
            const auto length = res.body().size();
            res.body().clear();
            res.content_length(length);
        }
        beast::get_lowest_layer(stream).expires_after(std::chrono::seconds{30});
        auto [wec, wn] = co_await write_message(stream, res, scratch);
        if (wec || !keep_alive) {
            co_return;
        }
    }
}

// ---- metrics ---------------------------------------------------------------------------------

std::string render_metrics(server& srv) {
    const auto cfg = srv.current_config();
    const auto rt = srv.current_runtime();
    // Sum the per-thread counters, each read on its own worker thread.
    std::vector<std::array<std::uint64_t, decision_names.size()>> by_route(cfg->routes.size() + 1);
    std::vector<histogram> latency(cfg->upstreams.size());
    std::map<std::string, std::array<std::uint64_t, decision_names.size()>> by_agent;
    histogram hold;
    std::uint64_t client_aborts = 0;
    std::uint64_t upstream_failures = 0;
    std::uint64_t listener_handshakes_failed = 0;
    std::uint64_t interception_handshakes_failed = 0;
    srv.for_each_worker([&](worker& w) {
        const auto& st = w.stats();
        for (std::size_t r = 0; r < by_route.size() && r < st.route_decisions.size(); ++r) {
            for (std::size_t d = 0; d < decision_names.size(); ++d) {
                by_route[r][d] += st.route_decisions[r][d];
            }
        }
        for (std::size_t u = 0; u < latency.size() && u < st.upstream_latency.size(); ++u) {
            latency[u].add(st.upstream_latency[u]);
        }
        for (const auto& [agent, counts] : st.agent_decisions) {
            auto& sum = by_agent[agent];
            for (std::size_t d = 0; d < decision_names.size(); ++d) {
                sum[d] += counts[d];
            }
        }
        hold.add(st.hold_latency);
        client_aborts += st.client_aborts;
        upstream_failures += st.upstream_failures;
        listener_handshakes_failed += st.listener_handshake_failures;
        interception_handshakes_failed += st.interception_handshake_failures;
    });
    std::string o;
    o.reserve(16 * 1024);
    // A label value is UTF-8 in the text format, and Prometheus refuses a whole scrape over
    // one invalid byte: rule keys come from clients (`x-campaign-id: caf\xE9`, a percent-
    // decoded query value, a key cut at 256 bytes inside a character), so a byte that starts
    // no well-formed sequence is written as U+FFFD, as the access log writes it.
    auto label = [](std::string_view v) {
        std::string s;
        for (std::size_t i = 0; i < v.size();) {
            const char c = v[i];
            if (c == '\\' || c == '"') {
                s += '\\';
                s += c;
            } else if (c == '\n') {
                s += "\\n";
            } else if (const auto n = utf8_sequence(v, i); n == 0) {
                s += "\xEF\xBF\xBD";
            } else {
                s.append(v.substr(i, n));
                i += n;
                continue;
            }
            ++i;
        }
        return s;
    };
    o += "# HELP breakerbox_requests_total Requests answered, by route and decision.\n";
    o += "# TYPE breakerbox_requests_total counter\n";
    for (std::size_t r = 0; r < by_route.size(); ++r) {
        const std::string route = r < cfg->routes.size() ? cfg->routes[r].name : "";
        for (std::size_t d = 0; d < decision_names.size(); ++d) {
            if (by_route[r][d] == 0 && r == cfg->routes.size()) {
                continue;
            }
            o += "breakerbox_requests_total{route=\"" + label(route) + "\",decision=\"" + std::string{decision_names[d]} +
                 "\"} " + std::to_string(by_route[r][d]) + "\n";
        }
    }
    o += "# HELP breakerbox_agent_requests_total Requests by identified agents, by decision.\n";
    o += "# TYPE breakerbox_agent_requests_total counter\n";
    for (const auto& [agent, counts] : by_agent) {
        for (std::size_t d = 0; d < decision_names.size(); ++d) {
            if (counts[d] != 0) {
                o += "breakerbox_agent_requests_total{agent=\"" + label(agent) + "\",decision=\"" +
                     std::string{decision_names[d]} + "\"} " + std::to_string(counts[d]) + "\n";
            }
        }
    }
    auto hist = [&](const std::string& name, const std::string& labels, const histogram& h) {
        std::uint64_t cumulative = 0;
        for (std::size_t i = 0; i < latency_bounds.size(); ++i) {
            cumulative += h.buckets[i];
            o += name + "_bucket{" + labels + (labels.empty() ? "" : ",") + "le=\"" + num(latency_bounds[i]) + "\"} " +
                 std::to_string(cumulative) + "\n";
        }
        cumulative += h.buckets.back();
        o += name + "_bucket{" + labels + (labels.empty() ? "" : ",") + "le=\"+Inf\"} " + std::to_string(cumulative) + "\n";
        o += name + "_sum" + (labels.empty() ? "" : "{" + labels + "}") + " " + num(h.sum) + "\n";
        o += name + "_count" + (labels.empty() ? "" : "{" + labels + "}") + " " + std::to_string(h.count) + "\n";
    };
    o += "# HELP breakerbox_upstream_latency_seconds Time from sending to a complete upstream response.\n";
    o += "# TYPE breakerbox_upstream_latency_seconds histogram\n";
    for (std::size_t u = 0; u < latency.size(); ++u) {
        hist("breakerbox_upstream_latency_seconds", "upstream=\"" + label(cfg->upstreams[u].name) + "\"", latency[u]);
    }
    o += "# HELP breakerbox_upstream_failures_total Upstream exchanges that failed (connect, reset, timeout, framing).\n";
    o += "# TYPE breakerbox_upstream_failures_total counter\n";
    o += "breakerbox_upstream_failures_total " + std::to_string(upstream_failures) + "\n";
    o += "# HELP breakerbox_client_aborts_total Requests whose client left before the answer.\n";
    o += "# TYPE breakerbox_client_aborts_total counter\n";
    o += "breakerbox_client_aborts_total " + std::to_string(client_aborts) + "\n";
    o += "# HELP breakerbox_tls_handshake_failures_total TLS handshakes with clients that failed: on a TLS listener, "
         "or intercepting a CONNECT (a client that does not trust the forward proxy's CA).\n";
    o += "# TYPE breakerbox_tls_handshake_failures_total counter\n";
    o += "breakerbox_tls_handshake_failures_total{kind=\"listener\"} " + std::to_string(listener_handshakes_failed) + "\n";
    o += "breakerbox_tls_handshake_failures_total{kind=\"interception\"} " +
         std::to_string(interception_handshakes_failed) + "\n";
    o += "# HELP breakerbox_connections Client connections open now.\n";
    o += "# TYPE breakerbox_connections gauge\n";
    o += "breakerbox_connections " + std::to_string(srv.active_connections()) + "\n";

    const auto snaps = rt->breakers->snapshot(srv.now());
    o += "# HELP breakerbox_breaker_state Breaker instance state: 0 closed, 1 open, 2 half_open (every breaker-wide "
         "instance; then keyed instances that contain or are held in a mode, then closed keyed ones, up to 1000 in "
         "all; breakerbox_breaker_instances_by_state counts every one).\n";
    o += "# TYPE breakerbox_breaker_state gauge\n";
    // What an alert is written against comes first: the breaker-wide instances
    // (upstream/<name>, agent/<id>, a breaker without keys), then keyed instances that
    // contain or are in an operator's mode. Closed keyed instances stay in memory until their breaker is full, and
    // listing them first let a thousand old campaign keys push upstream/sendgrid out.
    std::size_t listed = 0;
    auto state_line = [&](const breakers::instance_snapshot& s) {
        o += "breakerbox_breaker_state{breaker=\"" + label(s.breaker) + "\",instance=\"" + label(s.instance) +
             "\",mode=\"" + std::string{breakers::to_string(s.md)} + "\"} " + std::to_string(static_cast<int>(s.st)) +
             "\n";
        ++listed;
    };
    auto at_rest = [](const breakers::instance_snapshot& s) {
        return s.st == breakers::state::closed && s.md == breakers::mode::automatic && !s.key.empty();
    };
    // Keyed instances come from clients' keys: an agent looping over fresh campaign ids on a
    // breaker that resets by hand opens up to max_instances of them, so they are bounded
    // too (the counts below cover every one).
    constexpr std::size_t max_listed = 1000;
    for (const auto& s : snaps) {
        if (s.key.empty()) {
            state_line(s);
        }
    }
    for (const auto& s : snaps) {
        if (listed < max_listed && !s.key.empty() && !at_rest(s)) {
            state_line(s);
        }
    }
    for (const auto& s : snaps) {
        if (listed < max_listed && at_rest(s)) {
            state_line(s);
        }
    }
    o += "# HELP breakerbox_breaker_instances Breaker instances that exist now.\n";
    o += "# TYPE breakerbox_breaker_instances gauge\n";
    o += "breakerbox_breaker_instances " + std::to_string(snaps.size()) + "\n";
    {
        std::map<std::string, std::array<std::size_t, 3>, std::less<>> by_state;
        for (const auto& b : cfg->breakers) {
            by_state[b.id];
        }
        for (const auto& s : snaps) {
            ++by_state[s.breaker][std::min<std::size_t>(static_cast<std::size_t>(s.st), 2)];
        }
        o += "# HELP breakerbox_breaker_instances_by_state Instances of each breaker by state, listed or not.\n";
        o += "# TYPE breakerbox_breaker_instances_by_state gauge\n";
        for (const auto& [breaker, n] : by_state) {
            for (std::size_t st = 0; st < 3; ++st) {
                o += "breakerbox_breaker_instances_by_state{breaker=\"" + label(breaker) + "\",state=\"" +
                     std::string{breakers::to_string(static_cast<breakers::state>(st))} + "\"} " +
                     std::to_string(n[st]) + "\n";
            }
        }
    }
    o += "# HELP breakerbox_breaker_trips_total Trips per breaker since this process started.\n";
    o += "# TYPE breakerbox_breaker_trips_total counter\n";
    const auto trips = srv.trip_counts();
    for (const auto& b : cfg->breakers) {
        const auto t = trips.find(b.id);
        o += "breakerbox_breaker_trips_total{breaker=\"" + label(b.id) + "\"} " +
             std::to_string(t == trips.end() ? 0 : t->second) + "\n";
    }
    if (rt->engine) {
        o += "# HELP breakerbox_rule_keys Keys metered per rule (bounded by max_keys).\n";
        o += "# TYPE breakerbox_rule_keys gauge\n";
        std::string overflow;
        for (const auto& r : rt->engine->rules().rules) {
            if (auto st = rt->engine->stats(r.id)) {
                o += "breakerbox_rule_keys{rule=\"" + label(r.id) + "\"} " + std::to_string(st->keys) + "\n";
                overflow += "breakerbox_rule_overflow_events_total{rule=\"" + label(r.id) + "\"} " +
                            std::to_string(st->overflow_events) + "\n";
            }
        }
        o += "# HELP breakerbox_rule_overflow_events_total Events booked to a rule's overflow key (max_keys reached).\n";
        o += "# TYPE breakerbox_rule_overflow_events_total counter\n" + overflow;
        std::string pairs;
        std::string evicted;
        std::string untracked;
        for (const auto& r : rt->engine->rules().rules) {
            if (auto st = rt->engine->guard_table_stats(r.id)) {
                const std::string l = "{rule=\"" + label(r.id) + "\"} ";
                pairs += "breakerbox_duplicates_pairs" + l + std::to_string(st->pairs) + "\n";
                evicted += "breakerbox_duplicates_evictions_total" + l + std::to_string(st->evictions) + "\n";
                untracked += "breakerbox_duplicates_untracked_total" + l + std::to_string(st->untracked) + "\n";
            }
        }
        if (!pairs.empty()) {
            o += "# HELP breakerbox_duplicates_pairs (recipient, subject/template) pairs a duplicates guard tracks "
                 "(bounded by its max_keys).\n# TYPE breakerbox_duplicates_pairs gauge\n" + pairs;
            o += "# HELP breakerbox_duplicates_evictions_total Pairs a duplicates guard forgot to make room (sent once, "
                 "least recently seen).\n# TYPE breakerbox_duplicates_evictions_total counter\n" + evicted;
            o += "# HELP breakerbox_duplicates_untracked_total New pairs a duplicates guard could not track, every slot "
                 "being in its window: raise max_keys (a loop among them is not caught).\n"
                 "# TYPE breakerbox_duplicates_untracked_total counter\n" + untracked;
        }
        o += "# HELP breakerbox_rule_meter_value Current window total of a capped rule, for its 10 fullest keys.\n";
        o += "# TYPE breakerbox_rule_meter_value gauge\n";
        for (const auto& r : rt->engine->rules().rules) {
            for (const auto& [key, value] : rt->engine->top_values(r.id, 10, srv.now())) {
                o += "breakerbox_rule_meter_value{rule=\"" + label(r.id) + "\",key=\"" + label(key) + "\"} " + num(value) +
                     "\n";
            }
        }
        o += "# HELP breakerbox_rule_limit Configured cap of each limit rule.\n";
        o += "# TYPE breakerbox_rule_limit gauge\n";
        for (const auto& r : rt->engine->rules().rules) {
            if (r.condition == rules::condition_kind::limit) {
                o += "breakerbox_rule_limit{rule=\"" + label(r.id) + "\"} " + num(r.limit) + "\n";
            }
        }
    }
    if (auto* db = srv.db()) {
        const auto c = db->counts();
        const auto ws = db->stats();
        o += "# HELP breakerbox_quarantine_held Quarantined requests not yet resolved.\n";
        o += "# TYPE breakerbox_quarantine_held gauge\n";
        o += "breakerbox_quarantine_held " + std::to_string(c.held_count) + "\n";
        o += "# HELP breakerbox_quarantine_held_bytes Bytes of quarantined requests not yet resolved.\n";
        o += "# TYPE breakerbox_quarantine_held_bytes gauge\n";
        o += "breakerbox_quarantine_held_bytes " + std::to_string(c.held_bytes) + "\n";
        o += "# HELP breakerbox_audit_entries The last audit entry this process wrote or found at start; lower "
             "after a restart than before it: entries were removed while it was down.\n";
        o += "# TYPE breakerbox_audit_entries gauge\n";
        o += "breakerbox_audit_entries " + std::to_string(db->audit_anchor().first) + "\n";
        o += "# HELP breakerbox_store_transactions_total Write transactions committed by the store.\n";
        o += "# TYPE breakerbox_store_transactions_total counter\n";
        o += "breakerbox_store_transactions_total " + std::to_string(ws.transactions) + "\n";
        o += "# HELP breakerbox_store_failed_batches_total Write transactions rolled back for an I/O error.\n";
        o += "# TYPE breakerbox_store_failed_batches_total counter\n";
        o += "breakerbox_store_failed_batches_total " + std::to_string(ws.batches_failed) + "\n";
        o += "# HELP breakerbox_breaker_state_unsaved 1 while the last save of breaker state failed (a restart would "
             "not see what changed since the last save).\n";
        o += "# TYPE breakerbox_breaker_state_unsaved gauge\n";
        o += "breakerbox_breaker_state_unsaved " + std::string{srv.breaker_state_unsaved() ? "1" : "0"} + "\n";
        o += "# HELP breakerbox_rule_meters_unsaved 1 while the last save of the rules' counts failed (a restart "
             "would go on from the counts of the last save that succeeded).\n";
        o += "# TYPE breakerbox_rule_meters_unsaved gauge\n";
        o += "breakerbox_rule_meters_unsaved " + std::string{srv.rule_meters_unsaved() ? "1" : "0"} + "\n";
        o += "# HELP breakerbox_forwarded_keys Idempotency-Keys of requests sent live remembered (a retry of one "
             "while a breaker quarantines is refused, not held).\n";
        o += "# TYPE breakerbox_forwarded_keys gauge\n";
        o += "breakerbox_forwarded_keys " + std::to_string(srv.forwarded().size()) + "\n";
        o += "# HELP breakerbox_forwarded_keys_dropped_young_total Keys of requests sent live forgotten within their "
             "24 hours for their bound, store.idempotency_keys (a retry of one could be held).\n";
        o += "# TYPE breakerbox_forwarded_keys_dropped_young_total counter\n";
        o += "breakerbox_forwarded_keys_dropped_young_total " + std::to_string(srv.forwarded().dropped_young()) + "\n";
        o += "# HELP breakerbox_upstream_response_bytes_buffered Upstream response bodies held in memory now, all "
             "connections together (bounded by limits.upstream_buffered_bytes).\n";
        o += "# TYPE breakerbox_upstream_response_bytes_buffered gauge\n";
        o += "breakerbox_upstream_response_bytes_buffered " + std::to_string(srv.response_memory()->used()) + "\n";
        o += "# HELP breakerbox_upstream_responses_dropped_for_memory_total GET, HEAD and OPTIONS responses dropped "
             "unread (503 response_buffers_full) because limits.upstream_buffered_bytes was reached.\n";
        o += "# TYPE breakerbox_upstream_responses_dropped_for_memory_total counter\n";
        o += "breakerbox_upstream_responses_dropped_for_memory_total " +
             std::to_string(srv.response_memory()->refused()) + "\n";
        o += "# HELP breakerbox_forwarded_keys_journal_failures_total Changes to the keys of requests sent live "
             "that their journal could not take (a crash before the next save of them to the store forgets them).\n";
        o += "# TYPE breakerbox_forwarded_keys_journal_failures_total counter\n";
        o += "breakerbox_forwarded_keys_journal_failures_total " + std::to_string(srv.forwarded().journal_failures()) +
             "\n";
        o += "# HELP breakerbox_forwarded_keys_unsaved 1 while the last save of the keys of requests sent live "
             "failed (those sent since the last save are kept in the journal next to the store meanwhile).\n";
        o += "# TYPE breakerbox_forwarded_keys_unsaved gauge\n";
        o += "breakerbox_forwarded_keys_unsaved " + std::string{srv.forwarded_keys_unsaved() ? "1" : "0"} + "\n";
        o += "# HELP breakerbox_release_results_unrecorded Released requests that went out whose result the store "
             "has not taken yet (their records stay releasing; tried again in the background).\n";
        o += "# TYPE breakerbox_release_results_unrecorded gauge\n";
        o += "breakerbox_release_results_unrecorded " + std::to_string(srv.remediation().unrecorded()) + "\n";
        o += "# HELP breakerbox_store_hold_seconds Time from receiving a quarantined request to its durable commit.\n";
        o += "# TYPE breakerbox_store_hold_seconds histogram\n";
        hist("breakerbox_store_hold_seconds", "", hold);
    }
    if (const auto sinks = srv.alert_stats(); !sinks.empty()) {
        o += "# HELP breakerbox_alerts_total Alerts per sink by outcome (sent, failed after retries, dropped, retries).\n";
        o += "# TYPE breakerbox_alerts_total counter\n";
        for (const auto& st : sinks) {
            for (const auto& [outcome, v] : {std::pair{"sent", st.sent}, std::pair{"failed", st.failed},
                                             std::pair{"dropped", st.dropped}, std::pair{"retry", st.retries}}) {
                o += "breakerbox_alerts_total{sink=\"" + label(st.name) + "\",outcome=\"" + outcome + "\"} " +
                     std::to_string(v) + "\n";
            }
        }
    }
    o += "# HELP breakerbox_admin_actions_total Admin API requests, by endpoint family and status.\n";
    o += "# TYPE breakerbox_admin_actions_total counter\n";
    for (const auto& [k, v] : srv.admin_action_counts()) {
        o += "breakerbox_admin_actions_total{endpoint=\"" + label(k.first) + "\",status=\"" + std::to_string(k.second) +
             "\"} " + std::to_string(v) + "\n";
    }
    return o;
}

}  // namespace bb::proxy
