#include "proxy/responses.hpp"

#include "core/json_reader.hpp"

namespace bb::proxy {

namespace {
void field(std::string& out, std::string_view name, std::string_view value, bool comma = true) {
    out += cfg::quote(name);
    out += ':';
    if (value.empty()) {
        out += "null";
    } else {
        out += cfg::quote(value);
    }
    if (comma) {
        out += ',';
    }
}
}  // namespace

std::string error_body(const error_info& e, std::string_view request_id) {
    std::string out;
    out.reserve(256);
    out += "{\"error\":{";
    field(out, "code", e.code);
    field(out, "message", e.message);
    field(out, "rule", e.rule);
    field(out, "breaker", e.breaker);
    field(out, "incident", e.incident);
    field(out, "request_id", request_id, false);
    out += "}}\n";
    return out;
}

response make_error(const error_info& e, std::string_view request_id, unsigned version, bool keep_alive) {
    response res{e.status, version};
    res.set(http::field::server, "breakerbox");
    res.set(http::field::content_type, "application/json");
    res.set("x-breakerbox-decision", e.decision);
    res.set("x-request-id", request_id);
    // A 401 or 407 names the scheme that would be accepted (RFC 9110 §11.6.1, §11.7.1).
    if (e.status == http::status::unauthorized) {
        res.set(http::field::www_authenticate, R"(Bearer realm="breakerbox")");
    } else if (e.status == http::status::proxy_authentication_required) {
        // Basic too: what HTTP_PROXY=http://agent:KEY@host makes clients send (session.cpp).
        res.set(http::field::proxy_authenticate, R"(Bearer realm="breakerbox", Basic realm="breakerbox")");
    }
    if (e.retry_after_s != 0 || e.status == http::status::service_unavailable) {
        res.set(http::field::retry_after, std::to_string(e.retry_after_s == 0 ? 1 : e.retry_after_s));
    }
    res.body() = error_body(e, request_id);
    res.keep_alive(keep_alive);
    res.prepare_payload();
    return res;
}

response make_quarantined(std::string_view ticket, std::string_view breaker, std::string_view reason,
                          std::string_view request_id, unsigned version, bool keep_alive) {
    response res{http::status::accepted, version};
    res.set(http::field::server, "breakerbox");
    res.set(http::field::content_type, "application/json");
    res.set("x-breakerbox-decision", "quarantined");
    res.set("x-breakerbox-ticket", ticket);
    res.set("x-request-id", request_id);
    std::string body = "{\"quarantined\":{";
    field(body, "ticket", ticket);
    field(body, "breaker", breaker);
    field(body, "reason", reason);
    field(body, "request_id", request_id, false);
    body += "}}\n";
    res.body() = std::move(body);
    res.keep_alive(keep_alive);
    res.prepare_payload();
    return res;
}

std::string_view overload_response() {
    static constexpr std::string_view text =
        "HTTP/1.1 503 Service Unavailable\r\n"
        "server: breakerbox\r\n"
        "content-type: application/json\r\n"
        "x-breakerbox-decision: unavailable\r\n"
        "x-request-id: none\r\n"
        "retry-after: 1\r\n"
        "connection: close\r\n"
        "content-length: 155\r\n"
        "\r\n"
        "{\"error\":{\"code\":\"too_many_connections\",\"message\":\"breakerbox is at its connection limit\","
        "\"rule\":null,\"breaker\":null,\"incident\":null,\"request_id\":\"none\"}}\n";
    return text;
}

}  // namespace bb::proxy
