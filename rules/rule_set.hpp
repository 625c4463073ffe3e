#pragma once
// The parsed `failure_modes` and `rules` sections: plain structs plus the route index the
// engine uses so that a request only pays for the rules of its own route.
//
// A rule_set is immutable once parse_rules() returns it and is shared as
// `std::shared_ptr<const rule_set>`; reading it from any number of threads is safe.

#include "core/json_reader.hpp"

#include <simdjson.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace bb::rules {

using std::chrono::milliseconds;

enum class severity : std::uint8_t { sev1 = 1, sev2 = 2, sev3 = 3, sev4 = 4 };
std::string_view to_string(severity s);

struct failure_mode {
    std::string id;
    std::string title;
    severity sev = severity::sev3;
    std::optional<milliseconds> ack_sla;
    std::optional<milliseconds> contain_sla;
    std::string owner;
    std::string runbook;  // text or URL
};

// A compiled JSON path: `$.personalizations[*]['to','cc','bcc'][*]`, `$.inputs[0].id`, `$.a.*`,
// `$.compositeRequest[?(@.method=='DELETE')].url`.
struct path_segment {
    // filter: the members of an array (or object) that are objects whose member names[0]
    // is the string `value`, compared without regard to ASCII case (`delete` is DELETE to
    // an upstream that reads it so: counting more is the safe side).
    enum class kind : std::uint8_t { names, index, wildcard, filter };
    kind k = kind::names;
    // One name, or a union `['to','cc']`; folded (core/json_key.hpp): a body's keys match
    // them the way Go's encoding/json matches keys, without regard to case.
    std::vector<std::string> names;
    std::size_t index = 0;
    std::string value;  // filter
};
struct json_path {
    std::string text;
    std::vector<path_segment> segments;
};

// Where a term reads its values from.
// mime: the recipients (To, Cc, Bcc) of the base64 MIME messages at a request JSON path
// (SES raw sends, rules/mime.hpp).
// url_ids: the records each URL at a request JSON path names: the comma-separated items of
// its `ids` query parameter (Salesforce sObject Collections), else 1 (Salesforce composite
// subrequests).
// sub_records: the records each subrequest object at a request JSON path writes: the items
// of every `records` array under its body (`body`, or `richInput` in a Composite Batch: a
// Collections create or update, an sObject Tree), a reference in their place as 200, else 1.
// addresses: the addresses of each string at a request JSON path, read as an address list
// as form fields are (Salesforce emailSimple's `"a@x.com, b@y.com"`), any other value 1.
enum class source_kind : std::uint8_t { request_json, response_json, form, query, mime, url_ids, sub_records, addresses };

enum class term_kind : std::uint8_t {
    constant,        // 3
    requests,        // 1 per request
    responses,       // 1 per response
    body_bytes,      // request body size
    csv_rows,        // data rows of a CSV request body (the lines after its header)
    bulk_batch_records,  // records of a Salesforce Bulk API 1.0 batch (CSV, XML or JSON, by Content-Type)
    response_bytes,  // response body size
    latency_ms,      // upstream latency
    status,          // 1 if the response status is in [status_lo, status_hi] ("status:5xx", "status:429")
    count,           // number of values at a source
    sum,             // sum of the numeric values at a source
    distinct,        // number of distinct values at a source (within one request)
};

struct term {
    term_kind kind = term_kind::requests;
    double constant = 0;
    source_kind source = source_kind::request_json;
    json_path path;     // request_json / response_json
    std::string field;  // form / query field name; for mime, a form field (`mime:form:message`)
    bool base64 = false;  // mime:base64:form:NAME: the field holds the message in base64
    int status_lo = 0;
    int status_hi = 0;
};

// `count($.personalizations[*].to[*]) + count(form:cc)`: the per-request amount of a measure.
struct expr {
    std::string text;
    std::vector<term> terms;
    bool response_side = false;  // reads the response (status, latency, response body)
    bool request_side = false;   // reads the request body, form or query
    bool needs_request_json = false;
    bool needs_response_json = false;
    bool needs_form = false;
};

enum class key_kind : std::uint8_t { header, agent, route, method, host, json, query, path_param };
struct key_part {
    key_kind kind = key_kind::route;
    std::string name;          // header / query name, path parameter name
    json_path path;            // json
    std::size_t param_index = 0;  // path_param: index into the match path template's parameters
};

// `/crm/v3/objects/{object}/batch/{op}`; a parameter may list its allowed values:
// `{op:create|update|archive}`. A parameter matches exactly one non-empty segment.
struct path_template {
    struct segment {
        bool param = false;
        std::string literal;
        std::string name;
        std::vector<std::string> allowed;  // empty: any value
    };
    std::string text;
    std::vector<segment> segments;
    std::size_t param_count = 0;
};

struct match_spec {
    std::vector<std::string> methods;  // upper case; empty: any
    std::optional<path_template> path;
    // The path is a preset's: the API's own path, so it also matches the path the upstream
    // is sent (request_view::upstream_path), the one that names the API call when the
    // upstream's URL carries part of it (`https://x.my.salesforce.com/services/data`).
    bool path_from_preset = false;
    std::string path_prefix;
    std::string host;
    std::vector<std::pair<std::string, std::string>> headers;  // lower-case name, value ("*" = present)
    bool empty() const { return methods.empty() && !path && path_prefix.empty() && host.empty() && headers.empty(); }
};

// How the per-request amount is aggregated.
enum class aggregate : std::uint8_t {
    per_request,  // the amount of this one request (batch size caps); no window
    sum,          // sum over the sliding window
    avg,          // sum / number of events over the sliding window
};

enum class condition_kind : std::uint8_t { limit, baseline, ratio, guard };
std::string_view to_string(condition_kind c);

struct baseline_spec {
    std::optional<double> factor;  // trip above mean * factor
    std::optional<double> sigma;   // trip above mean + sigma * stddev (both given: above both)
    milliseconds warmup{0};        // no trip before this much time since the key's first bucket
    std::uint32_t min_samples = 5; // completed buckets folded into the EWMA before any trip
    double alpha = 0.1;            // EWMA weight of the newest bucket
    double min_value = 0;          // never trip at or below this bucket total
};

enum class invalid_body_policy : std::uint8_t { reject, zero };

struct guardrail;    // rules/guardrails.hpp
struct guard_paths;  // rules/guardrails.hpp

struct rule {
    std::string id;
    std::size_t index = 0;  // position in rules[]
    std::string route;      // empty: any route
    match_spec match;
    std::string preset;

    std::vector<key_part> key;  // empty: one meter for the whole rule
    expr measure;
    aggregate agg = aggregate::sum;
    std::optional<expr> ratio_of;  // ratio denominator

    milliseconds window{0};       // 0 for per_request
    milliseconds resolution{0};   // bucket width; baseline rules: == window (tumbling buckets)
    std::size_t buckets = 0;

    condition_kind condition = condition_kind::limit;
    double limit = 0;  // limit, or the ratio's max
    baseline_spec baseline;
    double min_volume = 0;
    // condition guard: a content/audience guardrail (rules/guardrails.hpp); the rule is
    // violated when it finds something. Immutable, shared with copies of the rule.
    std::shared_ptr<const guardrail> guard;  // ratio / avg: denominator needed before the rule can trip

    std::string failure_mode;
    std::size_t failure_mode_index = 0;
    std::string trips;  // breaker id

    std::size_t max_keys = 10'000;
    invalid_body_policy on_invalid_body = invalid_body_policy::reject;

    // Response-side rules are metered by record_response(); evaluate() only reads them.
    bool response_side = false;
    bool needs_request_json = false;  // measure or key reads the request JSON
    // Hash of everything that gives meter state its meaning (match, key, measure, window,
    // resolution, condition kind, EWMA alpha, max_keys) but not thresholds, failure mode
    // or breaker: a reload that only changes a limit keeps the meter.
    std::uint64_t fingerprint = 0;
    // The fingerprint without max_keys: a reload that changes only that keeps the meter
    // (rule_meter::set_max_keys).
    std::uint64_t meter_fingerprint = 0;
    // Duplicates guards: the fingerprint without the guard's max and window (its table's
    // counts keep their meaning when only those change); 0 otherwise.
    std::uint64_t counter_fingerprint = 0;
    std::uint64_t counter_fingerprint_with_keys = 0;  // as saved before max_keys left it (restore reads both)
    std::uint64_t counter_fingerprint_legacy = 0;     // as saved before default field lists were named (0: none)
};

struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

struct rule_set {
    std::vector<failure_mode> failure_modes;
    std::vector<rule> rules;

    // Indexes of the rules a request on `route` must check, in config order: the route's
    // own rules and the rules without a route. Unknown routes get only the latter.
    const std::vector<std::uint32_t>& rules_for(std::string_view route) const {
        auto it = by_route.find(route);
        return it == by_route.end() ? unrouted : it->second;
    }
    const rule* find_rule(std::string_view id) const;
    const failure_mode& mode_of(const rule& r) const { return failure_modes[r.failure_mode_index]; }

    std::unordered_map<std::string, std::vector<std::uint32_t>, string_hash, std::equal_to<>> by_route;
    std::vector<std::uint32_t> unrouted;
    // The JSON paths of the guard rules, classified once per parsed body (null: none).
    std::shared_ptr<const guard_paths> shared_paths;
};

// Parses the top-level `failure_modes` and `rules` arrays (either may be null -> empty).
// route_names: names of configured routes, so `rules[i].route` can be checked.
// Every error goes into errs with its JSON path; never throws. The result is always
// non-null, but only meaningful when errs gained no entries.
std::shared_ptr<const rule_set> parse_rules(const simdjson::dom::element* failure_modes,
                                            const simdjson::dom::element* rules,
                                            const std::vector<std::string>& route_names,
                                            cfg::errors& errs);

// Building blocks of parse_rules, exposed for tests and presets. Each returns nullopt and
// explains why in *error when the text is malformed.
std::optional<json_path> parse_json_path(std::string_view text, std::string* error);
std::optional<expr> parse_expr(std::string_view text, std::string* error);
std::optional<path_template> parse_path_template(std::string_view text, std::string* error);

}  // namespace bb::rules
