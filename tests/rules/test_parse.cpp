#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "helpers.hpp"
#include "rules/presets/presets.hpp"

namespace bb::rules::test {
namespace {

using ::testing::HasSubstr;

std::vector<std::string> error_lines(std::string_view rules_json) {
    cfg::errors errs;
    load(config(rules_json), errs);
    std::vector<std::string> out;
    for (const auto& e : errs.list()) {
        out.push_back(e.to_string());
    }
    return out;
}

TEST(RulesParse, ProductSketchParses) {
    auto set = load_ok(config(R"j({"id": "recipients-per-campaign", "route": "mail-send",
        "key": ["header:x-campaign-id"], "measure": {"sum": "count($.personalizations[*].to[*])"},
        "window": "1h", "limit": 10000, "failure_mode": "volume-spike", "trips": "campaign-volume"})j"));
    ASSERT_EQ(set->rules.size(), 1u);
    const rule& r = set->rules[0];
    EXPECT_EQ(r.id, "recipients-per-campaign");
    EXPECT_EQ(r.window, std::chrono::hours{1});
    EXPECT_EQ(r.buckets, 60u);
    EXPECT_EQ(r.resolution, std::chrono::minutes{1});
    EXPECT_EQ(r.limit, 10000);
    EXPECT_EQ(r.trips, "campaign-volume");
    EXPECT_EQ(set->mode_of(r).sev, severity::sev2);
    ASSERT_EQ(r.key.size(), 1u);
    EXPECT_EQ(r.key[0].kind, key_kind::header);
    EXPECT_EQ(r.key[0].name, "x-campaign-id");
    EXPECT_TRUE(r.needs_request_json);
    EXPECT_EQ(set->failure_modes[0].ack_sla, std::chrono::minutes{15});
}

TEST(RulesParse, AbsentSectionsAreEmpty) {
    cfg::errors errs;
    auto set = parse_rules(nullptr, nullptr, {"a"}, errs);
    EXPECT_TRUE(errs.empty());
    EXPECT_TRUE(set->rules.empty());
    EXPECT_TRUE(set->rules_for("a").empty());
}

TEST(RulesParse, EveryErrorHasItsPath) {
    const auto lines = error_lines(R"j(
        {"id": "a", "route": "mail-send", "window": "1x", "limit": 5, "failure_mode": "volume-spike", "trips": "b"},
        {"id": "b", "route": "nope", "window": "1m", "limt": 5, "failure_mode": "ghost", "trips": ""},
        {"id": "a", "window": "1m", "limit": -1, "failure_mode": "volume-spike"},
        {"id": "d", "window": "1m", "limit": 1, "baseline": {"factor": 3}, "failure_mode": "volume-spike", "trips": "x"},
        {"id": "e", "measure": "count($.a[", "window": "1m", "limit": 1, "failure_mode": "volume-spike", "trips": "x"},
        {"id": "f", "key": ["header:x", "path:{op}", "cookie:y"], "window": "1m", "limit": 1,
         "failure_mode": "volume-spike", "trips": "x"},
        {"id": "g", "window": "1m", "resolution": "7s", "limit": 1, "failure_mode": "volume-spike", "trips": "x"},
        {"id": "h", "preset": "sendgrid.nope", "window": "1m", "limit": 1, "failure_mode": "volume-spike", "trips": "x"},
        {"id": "i", "window": "1m", "baseline": {"warmup": "1m"}, "failure_mode": "volume-spike", "trips": "x"},
        {"id": "j", "measure": "status:5xx + requests", "window": "1m", "limit": 1, "failure_mode": "volume-spike", "trips": "x"},
        {"id": "k", "measure": {"per_request": "count($.inputs[*])"}, "window": "1m", "limit": 1,
         "failure_mode": "volume-spike", "trips": "x"},
        {"id": "l", "limit": 1, "failure_mode": "volume-spike", "trips": "x", "on_invalid_body": "ignore"},
        {"id": "m", "key": ["header:Authorization", "query:hapikey"], "window": "1m", "limit": 1,
         "failure_mode": "volume-spike", "trips": "x"},
        {"id": "n", "match": {"headers": {"x-tenant": "a", "X-Tenant": "b"}}, "window": "1m", "limit": 1,
         "failure_mode": "volume-spike", "trips": "x"}
    )j");
    const std::vector<std::string> expected{
        R"j(rules[0].window: "1x" is not a duration (use a whole number with ms, s, m, h or d))j",
        R"j(rules[1].route: "nope" is not a configured route)j",
        R"j(rules[1]: needs a condition: limit, baseline or ratio)j",
        R"j(rules[1].failure_mode: "ghost" is not a known failure mode)j",
        R"j(rules[1].trips: must name a breaker)j",
        R"j(rules[1].limt: is not a known setting)j",
        R"j(rules[2].limit: is out of range)j",
        R"j(rules[2]: needs a condition: limit, baseline or ratio)j",
        R"j(rules[2].trips: is required)j",
        R"j(rules[2].id: duplicate rule id "a" (first at rules[0]))j",
        R"j(rules[3]: give only one of limit, baseline or ratio)j",
        R"j(rules[4].measure: "count($.a[": unbalanced brackets or quotes)j",
        R"j(rules[5].key[1]: "path:{op}" names no parameter of the rule's match.path (none set))j",
        R"j(rules[5].key[2]: "cookie:y" is not a key (use header:NAME, agent, route, method, host, json:$.path, query:NAME or path:{param}))j",
        R"j(rules[6].resolution: "7s" does not divide the window "1m")j",
        R"j(rules[7].preset: "sendgrid.nope" is not a preset (known: sendgrid.recipients, ses.send_email.destinations, ses.send_bulk_email.destinations, ses.v1.destinations, mailgun.recipients, hubspot.single_send.recipients, salesforce.email_simple.recipients, hubspot.batch.records, hubspot.batch.archive, hubspot.deletes, hubspot.gdpr_deletes, hubspot.merges, salesforce.collections.records, salesforce.collections.deletes, )j"
        R"j(salesforce.sobject.deletes, salesforce.collections.upserts, salesforce.sobject_external_id.deletes, )j"
        R"j(salesforce.ui_api.deletes, salesforce.bulk.records, salesforce.bulk.multipart_records, )j"
        R"j(salesforce.bulk_v1.records, salesforce.tree.records, )j"
        R"j(salesforce.composite.deletes, salesforce.composite_batch.deletes, salesforce.composite_graph.deletes, )j"
        R"j(salesforce.composite.records, salesforce.composite_batch.records, salesforce.composite_graph.records))j",
        R"j(rules[8].baseline: needs factor and/or sigma)j",
        R"j(rules[9].measure: "status:5xx + requests": mixes request and response measures; use one rule for each)j",
        R"j(rules[10].window: a per_request measure has no window)j",
        R"j(rules[11].window: is required (or use {"per_request": ...} as the measure))j",
        R"j(rules[11].on_invalid_body: "ignore" is not a policy (reject or zero))j",
        R"j(rules[12].key[0]: "header:Authorization" carries a credential: a key from it would show the secret in breaker names, logs and alerts (key by agent instead))j",
        R"j(rules[12].key[1]: "query:hapikey" carries a credential: a key from it would show the secret in breaker names, logs and alerts (key by agent instead))j",
        R"j(rules[13].match.headers.X-Tenant: is given twice (header names compare without case))j",
    };
    EXPECT_EQ(lines, expected);
}

TEST(RulesParse, FailureModeErrors) {
    cfg::errors errs;
    load(R"j({"failure_modes": [{"id": "x", "title": "X", "severity": "sev5", "ack_sla": "soon"},
                               {"id": "x", "severity": "sev1", "title": "Y", "pager": true}]})j",
         errs);
    std::vector<std::string> lines;
    for (const auto& e : errs.list()) {
        lines.push_back(e.to_string());
    }
    const std::vector<std::string> expected{
        R"j(failure_modes[0].severity: "sev5" is not a severity (sev1, sev2, sev3 or sev4))j",
        R"j(failure_modes[0].ack_sla: "soon" is not a duration (use a whole number with ms, s, m, h or d))j",
        R"j(failure_modes[1].pager: is not a known setting)j",
        R"j(failure_modes[1].id: duplicate failure mode id "x" (first at failure_modes[0]))j",
    };
    EXPECT_EQ(lines, expected);
}

TEST(RulesParse, SectionsMustBeArrays) {
    simdjson::dom::parser p;
    simdjson::dom::element e = p.parse(simdjson::padded_string{std::string_view{"{}"}}).value();
    cfg::errors errs;
    parse_rules(&e, &e, {}, errs);
    ASSERT_EQ(errs.size(), 2u);
    EXPECT_EQ(errs.list()[0].to_string(), "failure_modes: must be an array, not an object");
    EXPECT_EQ(errs.list()[1].to_string(), "rules: must be an array, not an object");
}

TEST(RulesParse, RouteIndexKeepsConfigOrderAndSkipsOtherRoutes) {
    auto set = load_ok(config(R"j(
        {"id": "r0", "route": "crm", "window": "1m", "limit": 1, "failure_mode": "volume-spike", "trips": "x"},
        {"id": "r1", "window": "1m", "limit": 1, "failure_mode": "volume-spike", "trips": "x"},
        {"id": "r2", "route": "mail-send", "window": "1m", "limit": 1, "failure_mode": "volume-spike", "trips": "x"},
        {"id": "r3", "route": "crm", "window": "1m", "limit": 1, "failure_mode": "volume-spike", "trips": "x"})j"));
    EXPECT_EQ(set->rules_for("crm"), (std::vector<std::uint32_t>{0, 1, 3}));
    EXPECT_EQ(set->rules_for("mail-send"), (std::vector<std::uint32_t>{1, 2}));
    EXPECT_EQ(set->rules_for("unknown-route"), (std::vector<std::uint32_t>{1}));
}

TEST(RulesParse, DefaultResolutionDividesTheWindow) {
    auto set = load_ok(config(R"j(
        {"id": "a", "window": "1s", "limit": 1, "failure_mode": "volume-spike", "trips": "x"},
        {"id": "b", "window": "7s", "limit": 1, "failure_mode": "volume-spike", "trips": "x"},
        {"id": "c", "window": "1h", "resolution": "1s", "limit": 1, "failure_mode": "volume-spike", "trips": "x"},
        {"id": "d", "window": "1m", "baseline": {"factor": 3}, "failure_mode": "volume-spike", "trips": "x"})j"));
    EXPECT_EQ(set->rules[0].buckets * static_cast<std::size_t>(set->rules[0].resolution.count()), 1000u);
    EXPECT_EQ(set->rules[0].buckets, 50u);
    EXPECT_EQ(set->rules[1].buckets, 56u);
    EXPECT_EQ(set->rules[2].buckets, 3600u);
    EXPECT_EQ(set->rules[3].buckets, 1u);  // baselines use tumbling windows
    EXPECT_EQ(set->rules[3].resolution, std::chrono::minutes{1});
}

TEST(RulesParse, FingerprintIgnoresThresholdsButNotMeterShape) {
    auto fp = [](std::string_view rule_json) { return load_ok(config(rule_json))->rules[0].fingerprint; };
    const auto base = fp(R"j({"id": "a", "key": "agent", "window": "1m", "limit": 10, "failure_mode": "volume-spike", "trips": "x"})j");
    EXPECT_EQ(base, fp(R"j({"id": "a", "key": "agent", "window": "1m", "limit": 99, "failure_mode": "upstream-trouble", "trips": "y"})j"));
    EXPECT_NE(base, fp(R"j({"id": "a", "key": "agent", "window": "2m", "limit": 10, "failure_mode": "volume-spike", "trips": "x"})j"));
    EXPECT_NE(base, fp(R"j({"id": "a", "key": "route", "window": "1m", "limit": 10, "failure_mode": "volume-spike", "trips": "x"})j"));
    EXPECT_NE(base, fp(R"j({"id": "a", "key": "agent", "measure": "body_bytes", "window": "1m", "limit": 10, "failure_mode": "volume-spike", "trips": "x"})j"));
}

TEST(RulesParse, JsonPaths) {
    std::string err;
    auto p = parse_json_path("$.personalizations[*]['to','cc', \"bcc\"][*].email", &err);
    ASSERT_TRUE(p) << err;
    ASSERT_EQ(p->segments.size(), 5u);
    EXPECT_EQ(p->segments[1].k, path_segment::kind::wildcard);
    EXPECT_EQ(p->segments[2].names, (std::vector<std::string>{"to", "cc", "bcc"}));
    auto q = parse_json_path("$.inputs[3].id", &err);
    ASSERT_TRUE(q);
    EXPECT_EQ(q->segments[1].k, path_segment::kind::index);
    EXPECT_EQ(q->segments[1].index, 3u);
    EXPECT_FALSE(parse_json_path("inputs[*]", &err));
    EXPECT_EQ(err, "a JSON path starts with \"$\"");
    EXPECT_FALSE(parse_json_path("$.a[x]", &err));
    EXPECT_FALSE(parse_json_path("$..a", &err));
    // Filters: the members that are objects whose `name` is that string.
    auto f = parse_json_path("$.compositeRequest[?(@.Method == \"DELETE\")].url", &err);
    ASSERT_TRUE(f) << err;
    ASSERT_EQ(f->segments.size(), 3u);
    EXPECT_EQ(f->segments[1].k, path_segment::kind::filter);
    EXPECT_EQ(f->segments[1].names, (std::vector<std::string>{"method"}));
    EXPECT_EQ(f->segments[1].value, "DELETE");
    ASSERT_TRUE(parse_json_path("$.a[?(@.m=='x y')]", &err)) << err;
    EXPECT_FALSE(parse_json_path("$.a[?(@.m='x')]", &err));
    EXPECT_EQ(err, "expected \"==\" at offset 9 (a filter is written [?(@.name=='value')])");
    EXPECT_FALSE(parse_json_path("$.a[?(@.m==x)]", &err));
    EXPECT_EQ(err, "expected a quoted string after \"==\" at offset 11");
    EXPECT_FALSE(parse_json_path("$.a[?(@.=='x')]", &err));
    EXPECT_FALSE(parse_json_path("$.a[?(@.m=='x']", &err));
    EXPECT_FALSE(parse_json_path("$.a[?(@.m=='x)]", &err));
    EXPECT_EQ(err, "unterminated quoted string in a filter");
    EXPECT_FALSE(parse_json_path("$.a[?@.m=='x']", &err));
}

// A filter picks the members of an array (or object) whose field has the value, in any
// case, duplicates of the field included; other members and non-objects are skipped.
TEST(RulesParse, FilteredPathsCountTheMembersThatMatch) {
    auto set = load_ok(config(R"j(
        {"id": "a", "route": "crm", "measure": {"per_request": "count($.ops[?(@.method=='DELETE')]) + count(url_ids:$.ops[?(@.method=='DELETE')].url)"},
         "limit": 0, "failure_mode": "volume-spike", "trips": "crm-mass-change"})j"));
    engine eng{set};
    request_view v;
    v.method = "POST";
    v.path = v.target = "/x";
    v.route = "crm";
    v.content_type = "application/json";
    const std::string body = R"j({"ops": [{"method": "DELETE", "url": "/a?ids=1,2"}, {"method": "GET", "url": "/b"},
        {"METHOD": "Delete"}, "DELETE", {"method": ["DELETE"]}, {"method": "GET", "method": "delete", "url": 7},
        {"x": {"method": "DELETE"}}]})j";
    v.body = body;
    manual_clock clock;
    const auto d = eng.evaluate(v, clock.now());
    // Members 0, 2 and 5 match (3); of their URLs, "/a?ids=1,2" names 2 records and the
    // number 7 one (member 2 has none to count): 3 more.
    EXPECT_FALSE(d.allowed());
    EXPECT_EQ(d.measured, 6);
    std::string err;
    EXPECT_FALSE(parse_expr("sum(url_ids:$.a[*].url)", &err));
    EXPECT_EQ(err, "url_ids: counts the records URLs name (use count)");
    for (const char* expr : {"distinct(sub_records:$.a[*])", "sum(sub_records:$.a[*])"}) {
        EXPECT_FALSE(parse_expr(expr, &err)) << expr;
        EXPECT_EQ(err, "sub_records: counts the records subrequests write (use count)");
    }
    EXPECT_FALSE(parse_expr("distinct(addresses:$.to)", &err));
    EXPECT_EQ(err, "addresses: counts the addresses of address lists (use count)");
    EXPECT_TRUE(parse_expr("count(addresses:$.message.to) + count($.x)", &err)) << err;
}

TEST(RulesParse, MimeFormSources) {
    std::string err;
    auto e = parse_expr("count(mime:base64:form:RawMessage.Data) + distinct(mime:form:message)", &err);
    ASSERT_TRUE(e) << err;
    EXPECT_EQ(e->terms[0].field, "RawMessage.Data");
    EXPECT_TRUE(e->terms[0].base64);
    EXPECT_EQ(e->terms[1].field, "message");
    EXPECT_FALSE(e->terms[1].base64);
    EXPECT_TRUE(e->needs_form);
    EXPECT_FALSE(e->needs_request_json) << "a form's messages need no JSON body";
    EXPECT_FALSE(parse_expr("count(mime:base64:$.Content.Raw.Data)", &err));
    EXPECT_EQ(err, "mime:base64: reads a form field: mime:base64:form:NAME (a JSON mime: path is base64 already)");
    EXPECT_FALSE(parse_expr("count(mime:form: )", &err));
    EXPECT_EQ(err, "missing field name in \"mime:form:\"");
    EXPECT_FALSE(parse_expr("sum(mime:form:message)", &err));
}

TEST(RulesParse, CsvRowsOfAFormField) {
    std::string err;
    auto e = parse_expr("csv_rows(form:content) + csv_rows", &err);
    ASSERT_TRUE(e) << err;
    EXPECT_EQ(e->terms[0].kind, term_kind::csv_rows);
    EXPECT_EQ(e->terms[0].field, "content");
    EXPECT_TRUE(e->terms[1].field.empty()) << "bare csv_rows: the whole body";
    EXPECT_TRUE(e->needs_form);
    EXPECT_FALSE(e->needs_request_json);
    for (const char* bad : {"csv_rows(query:ids)", "csv_rows($.records[*])", "csv_rows(form: )", "csv_rows()"}) {
        EXPECT_FALSE(parse_expr(bad, &err)) << bad;
        EXPECT_NE(err.find("csv_rows(form:NAME)"), std::string::npos) << err;
    }
}

TEST(RulesParse, BulkBatchRecords) {
    std::string err;
    auto e = parse_expr("bulk_batch_records", &err);
    ASSERT_TRUE(e) << err;
    EXPECT_EQ(e->terms[0].kind, term_kind::bulk_batch_records);
    EXPECT_TRUE(e->request_side);
    EXPECT_FALSE(parse_expr("bulk_batch_records + latency_ms", &err)) << "a request measure";
    EXPECT_FALSE(parse_expr("bulk_records", &err));
    EXPECT_NE(err.find("bulk_batch_records"), std::string::npos) << "the error lists it: " << err;
}

TEST(RulesParse, PathTemplates) {
    std::string err;
    auto t = parse_path_template("/crm/v3/objects/{object}/batch/{op:create|update}", &err);
    ASSERT_TRUE(t) << err;
    EXPECT_EQ(t->param_count, 2u);
    EXPECT_EQ(t->segments[5].allowed, (std::vector<std::string>{"create", "update"}));
    EXPECT_FALSE(parse_path_template("/a/x{b}", &err));
    EXPECT_FALSE(parse_path_template("/a/{b}/{b}", &err));
    EXPECT_EQ(err, "parameter {b} appears twice");
}

TEST(RulesParse, EveryPresetCompiles) {
    for (const auto& p : presets()) {
        std::string err;
        EXPECT_TRUE(parse_expr(p.measure, &err)) << p.name << ": " << err;
        EXPECT_TRUE(parse_path_template(p.path, &err)) << p.name << ": " << err;
    }
}

TEST(RulesParse, PresetFillsMatchAndMeasureAndRuleOverrides) {
    auto set = load_ok(config(R"j(
        {"id": "a", "route": "crm", "preset": "hubspot.batch.records", "key": ["path:{object}", "path:op"],
         "window": "1h", "limit": 5000, "failure_mode": "volume-spike", "trips": "crm-mass-change"},
        {"id": "b", "route": "crm", "preset": "hubspot.batch.records", "measure": {"per_request": "preset"},
         "limit": 100, "failure_mode": "volume-spike", "trips": "crm-mass-change"},
        {"id": "c", "route": "crm", "preset": "hubspot.batch.records", "match": {"methods": ["PUT"]},
         "window": "1h", "limit": 1, "failure_mode": "volume-spike", "trips": "x"})j"));
    const rule& a = set->rules[0];
    EXPECT_EQ(a.match.methods, (std::vector<std::string>{"POST"}));
    ASSERT_TRUE(a.match.path);
    EXPECT_EQ(a.measure.text, "count($.inputs[*])");
    EXPECT_EQ(a.key[0].param_index, 0u);
    EXPECT_EQ(a.key[1].param_index, 1u);
    EXPECT_EQ(set->rules[1].agg, aggregate::per_request);
    EXPECT_EQ(set->rules[1].measure.text, "count($.inputs[*])");
    EXPECT_EQ(set->rules[2].match.methods, (std::vector<std::string>{"PUT"}));
    EXPECT_TRUE(set->rules[2].match.path);
}

TEST(RulesParse, ResponseRules) {
    auto set = load_ok(config(R"j(
        {"id": "err-ratio", "route": "mail-send", "measure": "status:5xx", "window": "5m",
         "ratio": {"max": 0.2, "min_volume": 20}, "failure_mode": "upstream-trouble", "trips": "sendgrid-health"},
        {"id": "latency", "route": "mail-send", "measure": {"avg": "latency_ms"}, "window": "1m", "limit": 800,
         "min_volume": 10, "failure_mode": "upstream-trouble", "trips": "sendgrid-health"})j"));
    EXPECT_TRUE(set->rules[0].response_side);
    ASSERT_TRUE(set->rules[0].ratio_of);
    EXPECT_EQ(set->rules[0].ratio_of->text, "responses");
    EXPECT_EQ(set->rules[0].min_volume, 20);
    EXPECT_EQ(set->rules[1].agg, aggregate::avg);
    EXPECT_EQ(set->rules[1].min_volume, 10);
}

}  // namespace
}  // namespace bb::rules::test
