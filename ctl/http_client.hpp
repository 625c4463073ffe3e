#pragma once
// A small synchronous HTTP/1.1 client for breakerctl: one request per connection, plain TCP
// or TLS (peer verification against the system store or --cacert, SNI, host-name check),
// one overall deadline covering resolve, connect, handshake, write and read.
//
// Not shared between threads; each call to send() owns its own io_context.

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bb::ctl {

// scheme://host[:port][/base/path]; no scheme means http.
struct admin_url {
    std::string scheme = "http";  // "http" or "https"
    std::string host;             // without brackets for IPv6 literals
    std::uint16_t port = 0;
    std::string base_path;        // "" or "/prefix" (no trailing slash)
    bool tls() const { return scheme == "https"; }
    // As the operator typed it, normalised: "http://127.0.0.1:9901".
    std::string to_string() const;
};

// nullopt with *why set when the text is not a usable admin URL.
std::optional<admin_url> parse_admin_url(std::string_view text, std::string* why = nullptr);

struct http_request {
    std::string method = "GET";  // "GET" or "POST"
    std::string target;          // path and query, relative to the admin URL's base path
    std::string body;            // JSON for POST; empty for GET
    bool operator==(const http_request&) const = default;
};

struct http_response {
    unsigned status = 0;
    std::string content_type;
    std::string body;
};

// Either a response (any status) or a transport failure described for a human
// ("Connection refused", "certificate verify failed", "timed out after 10s").
struct http_result {
    std::optional<http_response> response;
    std::string transport_error;
    bool ok() const { return response.has_value(); }
};

struct client_options {
    admin_url url;
    std::string token;  // sent as "Authorization: Bearer <token>" when not empty
    std::chrono::milliseconds timeout{10'000};
    std::string cacert;  // PEM file for https; empty: the system store
    std::string cert;    // client certificate (PEM) for an admin API that maps mTLS clients to operators
    std::string key;     // its private key (PEM)
};

// Sends one request and reads the whole response. Never throws for network errors.
http_result send(const client_options& opts, const http_request& req);

// Seam for tests: the commands talk to the admin API through this.
using transport = std::function<http_result(const http_request&)>;

// Percent-encodes everything outside RFC 3986 "unreserved", so a breaker instance
// "campaign-volume/spring-sale" stays one path segment.
std::string encode_component(std::string_view s);

}  // namespace bb::ctl
