#pragma once
// What the engine sees of a request and its response: plain views, owned by the caller and
// valid for the duration of one evaluate()/record_response() call.

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace bb::rules {

struct header_field {
    std::string_view name;
    std::string_view value;
};

bool iequals(std::string_view a, std::string_view b);
// Whether `s` starts with `prefix`, compared as iequals compares.
inline bool istarts_with(std::string_view s, std::string_view prefix) {
    return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}
// Whether `text` holds `word`, compared as iequals compares.
bool icontains(std::string_view text, std::string_view word);
// `s` in lower case (the same case mapping iequals compares with).
std::string lower(std::string_view s);

struct request_view {
    std::string_view method;        // "POST"
    std::string_view target;        // "/v3/mail/send?x=1" as received
    std::string_view path;          // "/v3/mail/send" (no query)
    // The path the upstream is sent, when its URL has a base path ("/services/data" +
    // path); empty: the same as path. Preset paths match either.
    std::string_view upstream_path;
    std::string_view query;         // "x=1" (no '?')
    std::string_view host;          // without port
    std::string_view route;         // name of the matched route; "" if none
    std::string_view agent;         // agent id, "" if anonymous
    std::string_view content_type;  // "application/json; charset=utf-8"
    std::string_view body;
    std::span<const header_field> headers;

    // First header with this name, case-insensitive; empty if absent.
    std::string_view header(std::string_view name) const {
        for (const auto& h : headers) {
            if (iequals(h.name, name)) {
                return h.value;
            }
        }
        return {};
    }
    // Whether any header line with this name has this value: a header repeated with other
    // values still has it (the upstream may read any of its lines).
    bool has_header_value(std::string_view name, std::string_view value) const {
        for (const auto& h : headers) {
            if (h.value == value && iequals(h.name, name)) {
                return true;
            }
        }
        return false;
    }
    bool has_header(std::string_view name) const {
        for (const auto& h : headers) {
            if (iequals(h.name, name)) {
                return true;
            }
        }
        return false;
    }
};

struct response_view {
    // The upstream's status; for a failed exchange (refused, reset, timed out) the status the
    // client is answered (502, 503, 504), so `status:5xx` counts it. 0: none given.
    int status = 0;
    std::chrono::nanoseconds latency{0};
    std::string_view content_type;
    std::string_view body;
};

}  // namespace bb::rules
