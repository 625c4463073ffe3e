#pragma once
// Responses that breakerbox generates itself. Every one carries `x-breakerbox-decision`,
// `x-request-id` and a JSON body naming the code, rule, breaker, incident and request id
// (PRODUCT.md: "every decision explains itself").

#include "proxy/asio.hpp"

#include <string>
#include <string_view>

namespace bb::proxy {

struct error_info {
    error_info() = default;
    error_info(http::status s, std::string_view d, std::string_view c, std::string m)
        : status(s), decision(d), code(c), message(std::move(m)) {}

    http::status status = http::status::internal_server_error;
    std::string_view decision = "unavailable";  // allowed, paused, quarantined, throttled, sandboxed, denied, rejected, unavailable
    std::string_view code;                      // e.g. "no_route"
    std::string message;
    std::string_view rule;       // empty -> null
    std::string_view breaker;    // empty -> null
    std::string_view incident;   // empty -> null
    unsigned retry_after_s = 0;  // 0 -> default for 503 (1s), none for others
};

// JSON body: {"error": {"code", "message", "rule", "breaker", "incident", "request_id"}}
std::string error_body(const error_info& e, std::string_view request_id);

// version: the client's (10 or 11); keep_alive false adds Connection: close.
response make_error(const error_info& e, std::string_view request_id, unsigned version, bool keep_alive);

// 202 for a request held durably in quarantine:
// body {"quarantined": {"ticket", "breaker", "reason", "request_id"}}, header x-breakerbox-ticket.
response make_quarantined(std::string_view ticket, std::string_view breaker, std::string_view reason,
                          std::string_view request_id, unsigned version, bool keep_alive);

// A fixed 503 for connections refused over the connection limit: written with one
// non-blocking send, no parsing, no allocation per refusal beyond the socket itself.
std::string_view overload_response();

}  // namespace bb::proxy
