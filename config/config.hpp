#pragma once
// The whole breakerbox config as plain structs. Parsed once (parse_config), every error
// reported with its JSON path, all cross-field checks in one place; shared read-only as
// std::shared_ptr<const config> and replaced whole on reload.

#include "alerts/alerts.hpp"
#include "breakers/breaker.hpp"
#include "breakers/health.hpp"
#include "core/json_reader.hpp"
#include "rules/agent_constraints.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bb {

namespace rules {
struct rule_set;
}

using std::chrono::milliseconds;

// A TLS server's certificate and, optionally, client-certificate verification (mTLS).
struct tls_files {
    std::string cert_file;       // PEM chain
    std::string key_file;        // PEM key
    std::string client_ca_file;  // when set, client certificates signed by it are verified (mTLS)
    bool require_client_cert = false;
    // PEM CRLs: a client certificate they revoke is refused at the handshake. Every
    // certificate of the client's chain is checked, so the file holds a CRL of each issuing
    // CA (of the leaf's issuer alone with client_crl_leaf_only).
    std::string client_crl_file;
    bool client_crl_leaf_only = false;
    bool operator==(const tls_files&) const = default;
};

// A listener in forward-proxy mode: agents set HTTP_PROXY/HTTPS_PROXY to it. CONNECT to a
// configured destination is intercepted with a leaf certificate minted for that host by the
// local CA below; other destinations are refused unless listed in `passthrough`.
struct forward_proxy_config {
    std::string ca_cert_file;
    std::string ca_key_file;
    // "host", "host:port", "[v6]:port": blind tunnels, not metered; read as passthrough_entry
    // reads them, once, at load.
    std::vector<std::pair<std::string, std::uint16_t>> passthrough;
    std::size_t leaf_cache = 1024;         // minted certificates kept (LRU)
    milliseconds leaf_lifetime{7LL * 24 * 3600 * 1000};
    bool operator==(const forward_proxy_config&) const = default;
};

struct listener_config {
    std::string name;
    std::string host;  // literal IP address
    std::uint16_t port = 0;
    bool require_agent = false;  // unknown or missing agent credentials -> 401
    std::optional<tls_files> tls;  // TLS 1.2/1.3 (Mozilla intermediate); reloaded on SIGHUP
    std::optional<forward_proxy_config> forward_proxy;
};

// Where an agent may go. An empty list allows everything of that kind.
struct agent_scope {
    std::vector<std::string> routes;
    std::vector<std::string> methods;  // upper case
    std::vector<std::string> paths;    // exact, or a prefix ending in "*"

    bool allows_route(std::string_view route) const {
        return routes.empty() || std::find(routes.begin(), routes.end(), route) != routes.end();
    }
    bool allows_method(std::string_view method) const {
        return methods.empty() || std::find(methods.begin(), methods.end(), method) != methods.end();
    }
    bool allows_path(std::string_view path) const {
        return paths.empty() || std::any_of(paths.begin(), paths.end(), [&](const std::string& p) {
                   return p.back() == '*' ? path.substr(0, p.size() - 1) == std::string_view{p}.substr(0, p.size() - 1)
                                          : path == p;
               });
    }
    // What of a request the list refuses, as an out_of_scope message names it ("route R",
    // "method M", "path P"), or "" when it allows all three.
    std::string refusal(std::string_view route, std::string_view method, std::string_view path) const {
        if (!allows_route(route)) {
            return "route " + std::string{route};
        }
        if (!allows_method(method)) {
            return "method " + std::string{method};
        }
        if (!allows_path(path)) {
            return "path " + std::string{path};
        }
        return {};
    }
    bool any() const { return !routes.empty() || !methods.empty() || !paths.empty(); }
};

struct agent_config {
    std::string id;
    std::vector<std::array<unsigned char, 32>> key_sha256;  // API keys, stored only as SHA-256
    std::vector<std::string> cert_names;  // mTLS: a verified client certificate's CN or DNS SAN
    agent_scope allow;
    bool sandbox = false;  // everything it sends goes out in the API's dry-run mode
    // What its request bodies may say (recipients, from domains, templates); empty: anything.
    rules::body_constraints constraints;
};

struct limits_config {
    std::size_t header_bytes = 32 * 1024;        // request line + headers -> 431
    std::size_t header_count = 100;              // -> 431
    std::size_t body_bytes = 10 * 1024 * 1024;   // request body -> 413
    std::size_t upstream_body_bytes = 64 * 1024 * 1024;  // upstream response body -> 502
    // Upstream response bodies held in memory at once, by all connections together (each is
    // read whole before it is relayed): past it a GET/HEAD/OPTIONS is answered 503, a write's
    // response is still relayed (its request has acted). At least upstream_body_bytes.
    std::size_t upstream_buffered_bytes = std::size_t{512} * 1024 * 1024;
    milliseconds header_timeout{10'000};         // whole request head -> 408, close
    milliseconds body_timeout{30'000};           // whole request body -> 408, close
    milliseconds idle_timeout{60'000};           // keep-alive wait for the next request
    milliseconds write_timeout{30'000};          // writing a response to a client
    std::size_t max_connections = 10'000;        // per process, over it: refuse fast
    std::size_t max_requests_per_connection = 0; // 0: unlimited
    milliseconds drain_timeout{30'000};          // SIGTERM grace period
};

struct upstream_config {
    std::string name;
    std::string url;
    bool tls = false;
    std::string host;       // host name or address to connect to; also SNI and Host header
    std::uint16_t port = 0;
    std::string base_path;  // prefixed to every request target ("" or "/base")
    std::string authority;  // Host header value sent upstream ("api.sendgrid.com", "127.0.0.1:9000")
    milliseconds timeout{15'000};         // default response timeout for routes
    milliseconds connect_timeout{5'000};  // TCP connect + TLS handshake
    std::size_t max_connections = 1024;   // per worker thread
    milliseconds idle_timeout{30'000};    // idle pooled connection lifetime
    // A request that is never retried (any method but GET, HEAD, OPTIONS) goes out on a
    // pooled connection only if it was last used within this long, else on a new one: an
    // upstream (or a load balancer) that closes idle connections can close one just as such
    // a request is written to it, and its outcome is then unknown. 0: always a new one.
    milliseconds write_reuse_within{2'000};
    std::string ca_file;    // empty: the system trust store
    std::string ca_pem;     // ca_file's contents when the config was read
    bool verify = true;     // TLS certificate + name verification; false only for tests
    // Outlier detection: when set, an implicit breaker "upstream/<name>" (action pause,
    // 503 upstream_unhealthy) trips on these thresholds and probes in half-open.
    std::optional<breakers::health_config> health;
    milliseconds health_cooldown{30'000};
    std::uint32_t health_probes = 1;
    // Upstream 429/503 with retry-after (and HubSpot's X-HubSpot-RateLimit-Remaining: 0)
    // pause this upstream for every agent; retry-after is capped at this.
    milliseconds max_rate_limit_pause{300'000};
    // Which dry-run switch the sandbox action may use on it: "sendgrid", "mailgun", "any"
    // (read from the request: a test fake, a relay to both), "none", or "" (from the host:
    // SendGrid's and Mailgun's API hosts take theirs, any other host or address, loopback
    // included, has none).
    std::string sandbox_api;
};

struct route_match {
    std::string host;         // "" any; otherwise exact (case-insensitive, port ignored)
    std::string path;         // exact path, "" none
    std::string path_prefix;  // prefix, "" none
    std::vector<std::string> methods;  // empty: any
};

struct route_config {
    std::string name;
    route_match match;
    std::string upstream;
    std::size_t upstream_index = 0;
    milliseconds timeout{0};  // response timeout; 0 -> the upstream's
};

enum class admin_role : std::uint8_t { viewer = 1, operator_ = 2, admin = 3 };
std::string_view to_string(admin_role r);

struct admin_token {
    std::string name;                  // who: recorded in the audit log
    std::array<unsigned char, 32> sha256{};  // SHA-256 of the bearer token; the token itself is never stored
    admin_role role = admin_role::viewer;
};

// An mTLS client certificate that identifies an operator (matched on the subject CN).
struct admin_client_cert {
    std::string name;         // who: recorded in the audit log
    std::string subject_cn;   // the certificate's subject common name (exactly one CN)
    // Optional pin: the SHA-256 of the certificate (DER). With it, only that certificate is
    // this operator, not any other the CA issues with the same CN (an agent's, say).
    std::optional<std::array<unsigned char, 32>> cert_sha256;
    admin_role role = admin_role::viewer;
};

using admin_tls = tls_files;

struct admin_config {
    bool enabled = false;              // the section is present
    std::string host = "127.0.0.1";
    std::uint16_t port = 9901;
    std::vector<admin_token> tokens;
    std::optional<admin_tls> tls;
    std::vector<admin_client_cert> client_certs;
    std::size_t max_body_bytes = 64 * 1024;
    // Connections served at once (TLS handshakes included); more are closed at accept, so a
    // flood of idle or handshaking connections cannot take the process's descriptors or the
    // control thread that also runs breaker expiries and saves.
    std::size_t max_connections = 64;
};

struct store_config {
    std::string path = "var/breakerbox.db";
    milliseconds retention{30LL * 24 * 3600 * 1000};  // resolved quarantine records kept this long
    std::uint64_t max_held = 100'000;                   // quarantine limits; over them: 503 quarantine_full
    std::uint64_t max_held_bytes = 2ull << 30;
    std::uint64_t per_breaker_max_held = 10'000;
    std::uint64_t per_breaker_max_held_bytes = 512ull << 20;
    std::string idempotency_header = "Idempotency-Key";  // set to the ticket on every replay
    // Keys of requests sent live remembered (proxy/forwarded_keys.hpp): past this many in
    // 24 h the least recently sent are forgotten, and a retry of one is no longer refused.
    std::uint64_t idempotency_keys = 200'000;
    bool group_commit = true;  // false: one transaction per write (only to measure group commit)
    // Where breaker states and operator modes are kept until the SQLite store lands:
    // derived from path ("var/breakerbox.db" -> "var/breakerbox.breakers.json").
    std::string breaker_state_path() const;
};

struct log_config {
    std::string level = "info";       // trace, debug, info, warn, error, critical, off
    std::string access_log = "stdout";  // "off", "stdout", "stderr", or a file path
};

struct config {
    unsigned workers = 0;  // 0: one per core
    std::vector<listener_config> listeners;
    limits_config limits;
    std::vector<upstream_config> upstreams;
    std::vector<route_config> routes;
    log_config log;
    admin_config admin;
    store_config store;
    alerts::alerts_config alerts;
    std::string source_json;  // the config text as given (for GET /v1/config and versions)
    std::vector<agent_config> agents;
    std::vector<breakers::breaker_config> breakers;  // declared + implicit (upstream/<name>, agent/<id>)
    std::shared_ptr<const rules::rule_set> rules;  // may be null when no rules

    const breakers::breaker_config* find_breaker(std::string_view id) const;
    // The agent whose API key hashes to `digest` (32 bytes), or null.
    const agent_config* agent_by_key_digest(std::string_view digest) const;
    // The agent a verified client certificate names (any of its names: its DNS SANs, or its
    // CN when it has none), or null; null and *ambiguous set when it names two agents.
    const agent_config* agent_by_cert_names(const std::vector<std::string>& names, bool* ambiguous = nullptr) const;

    const route_config* find_route(std::string_view name) const;
};

struct parse_result {
    std::shared_ptr<const config> cfg;  // null when errors is not empty
    cfg::errors errors;
    // Valid but probably not what was meant ("path: message"); --check-config and the
    // start print them.
    std::vector<std::string> warnings;
};

// Parses JSON text; never throws. Every problem is in `errors`, each with its path.
// `stored`: the text is a version read back from the store (written by an earlier release,
// perhaps): checks added since are warnings there, not errors (cfg::errors::add_since_stored).
parse_result parse_config(std::string_view json_text, bool stored = false);
// Reads and parses a file; an unreadable file is one error at path "".
// `text`, when given, receives the bytes read (nullopt when the file cannot be read): what a
// reload records the digest of, whether or not they parse.
// `at_start`: read once as the process starts (or --check-config), where a FIFO or
// /dev/stdin is allowed; a reload (SIGHUP, the admin API) reads regular files only.
parse_result load_config_file(const std::string& path, std::optional<std::string>* text = nullptr,
                              bool at_start = false);

// "127.0.0.1:8080", "[::1]:8080" -> host, port. nullopt when malformed.
// "host:port" or "[v6]:port" split, the port 0-65535; nothing else is checked.
std::optional<std::pair<std::string, std::uint16_t>> split_host_port(std::string_view text);

// A forward proxy's passthrough entry as (host, port): `host:port`, `[v6]:port`, or a host
// alone (`host`, `[v6]`, a bare `fd00::1`), which means port 443. The host comes back
// lower-cased, without brackets or the root's trailing dot; nullopt when it is none of these.
std::optional<std::pair<std::string, std::uint16_t>> passthrough_entry(std::string_view text);
std::optional<std::pair<std::string, std::uint16_t>> parse_address(std::string_view text);

}  // namespace bb
