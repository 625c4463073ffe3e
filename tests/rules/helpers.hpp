#pragma once
// Shared test helpers: load a rules config from JSON text, build requests.

#include <simdjson.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/clock.hpp"
#include "rules/engine.hpp"
#include "rules/rule_set.hpp"

namespace bb::rules::test {

inline const std::vector<std::string>& default_routes() {
    static const std::vector<std::string> r{"mail-send", "crm", "mailgun", "ses", "salesforce", "other"};
    return r;
}

// Parses `{"failure_modes": [...], "rules": [...]}`; errors land in errs.
inline std::shared_ptr<const rule_set> load(std::string_view json, cfg::errors& errs,
                                            const std::vector<std::string>& routes = default_routes()) {
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    if (auto err = parser.parse(simdjson::padded_string{json}).get(doc)) {
        errs.add("", std::string{"test config is not JSON: "} + simdjson::error_message(err));
        return std::make_shared<rule_set>();
    }
    simdjson::dom::element fm;
    simdjson::dom::element rules;
    const bool has_fm = doc["failure_modes"].get(fm) == simdjson::SUCCESS;
    const bool has_rules = doc["rules"].get(rules) == simdjson::SUCCESS;
    return parse_rules(has_fm ? &fm : nullptr, has_rules ? &rules : nullptr, routes, errs);
}

// Loads and requires no errors.
inline std::shared_ptr<const rule_set> load_ok(std::string_view json) {
    cfg::errors errs;
    auto set = load(json, errs);
    if (!errs.empty()) {
        throw std::runtime_error("unexpected config errors:\n" + errs.to_string());
    }
    return set;
}

// The failure mode every test config uses.
inline std::string modes() {
    return R"("failure_modes": [
        {"id": "volume-spike", "title": "Send volume spike", "severity": "sev2", "ack_sla": "15m",
         "contain_sla": "5m", "owner": "marketing-ops", "runbook": "https://runbooks.example/volume"},
        {"id": "upstream-trouble", "title": "Upstream errors", "severity": "sev3", "owner": "infra",
         "runbook": "Check the provider status page."}])";
}

inline std::string config(std::string_view rules_json) {
    // Appended piecewise: GCC 12 warns (-Wrestrict, a false positive) on "literal" + string.
    std::string out{"{"};
    out += modes();
    out += ", \"rules\": [";
    out += rules_json;
    out += "]}";
    return out;
}

struct request {
    std::string method = "POST";
    std::string path = "/v3/mail/send";
    std::string upstream_path;  // request_view::upstream_path (empty: the same as path)
    std::string query;
    std::string host = "api.sendgrid.com";
    std::string route = "mail-send";
    std::string agent = "agent-1";
    std::string content_type = "application/json";
    std::string body = "{}";
    std::vector<std::pair<std::string, std::string>> headers;

    request& header(std::string name, std::string value) {
        headers.emplace_back(std::move(name), std::move(value));
        return *this;
    }
    // Valid until this object changes.
    request_view view() {
        fields_.clear();
        for (const auto& [n, v] : headers) {
            fields_.push_back({n, v});
        }
        request_view v;
        v.method = method;
        v.path = path;
        v.upstream_path = upstream_path;
        v.query = query;
        v.target = path;
        v.host = host;
        v.route = route;
        v.agent = agent;
        v.content_type = content_type;
        v.body = body;
        v.headers = fields_;
        return v;
    }

private:
    std::vector<header_field> fields_;
};

// SendGrid body with `n` recipients in `to` of one personalization.
inline std::string sendgrid_body(int n) {
    std::string b = R"({"personalizations":[{"to":[)";
    for (int i = 0; i < n; ++i) {
        b += (i ? "," : "");
        b += R"({"email":"user)" + std::to_string(i) + R"(@example.com"})";
    }
    b += R"(]}],"from":{"email":"news@example.com"},"subject":"Hi","content":[{"type":"text/plain","value":"Hello"}]})";
    return b;
}

}  // namespace bb::rules::test
