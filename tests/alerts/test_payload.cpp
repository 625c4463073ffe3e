#include "alerts/alerts.hpp"

#include <gtest/gtest.h>

namespace {

using namespace bb::alerts;

alert sample() {
    alert a;
    a.event = "breaker_tripped";
    a.severity = "sev2";
    a.summary = "campaign-volume/spring-sale tripped: 10001 recipients in 1h (limit 10000)";
    a.breaker = "campaign-volume/spring-sale";
    a.rule = "recipients-per-campaign";
    a.failure_mode = "volume-spike";
    a.key = "spring-sale";
    a.actor = "rule";
    a.reason = "limit exceeded";
    a.request_id = "req-123";
    a.at_ms = 1714564800123;  // 2024-05-01T12:00:00.123Z
    return a;
}

sink_config pd_sink() {
    sink_config s;
    s.name = "pager";
    s.kind = sink_kind::pagerduty;
    s.url = "https://events.pagerduty.example/v2/enqueue";
    s.routing_key = "R0UT1NG";
    return s;
}

std::string str(simdjson::dom::element e, std::string_view key) {
    std::string_view v;
    EXPECT_EQ(e[key].get(v), simdjson::SUCCESS) << key;
    return std::string{v};
}

TEST(AlertsPayload, Iso8601) {
    EXPECT_EQ(iso8601(1714564800123), "2024-05-01T12:00:00.123Z");
    EXPECT_EQ(iso8601(0), "1970-01-01T00:00:00.000Z");
}

TEST(AlertsPayload, WebhookIsFlatObjectOfAllFields) {
    simdjson::dom::parser parser;
    const auto body = render_payload(sink_kind::webhook, sample(), sink_config{});
    simdjson::dom::element doc;
    ASSERT_EQ(parser.parse(body).get(doc), simdjson::SUCCESS) << body;
    EXPECT_EQ(str(doc, "source"), "breakerbox");
    EXPECT_EQ(str(doc, "event"), "breaker_tripped");
    EXPECT_EQ(str(doc, "severity"), "sev2");
    EXPECT_EQ(str(doc, "breaker"), "campaign-volume/spring-sale");
    EXPECT_EQ(str(doc, "rule"), "recipients-per-campaign");
    EXPECT_EQ(str(doc, "failure_mode"), "volume-spike");
    EXPECT_EQ(str(doc, "key"), "spring-sale");
    EXPECT_EQ(str(doc, "actor"), "rule");
    EXPECT_EQ(str(doc, "reason"), "limit exceeded");
    EXPECT_EQ(str(doc, "request_id"), "req-123");
    EXPECT_EQ(str(doc, "at"), "2024-05-01T12:00:00.123Z");
    std::int64_t at = 0;
    ASSERT_EQ(doc["at_ms"].get(at), simdjson::SUCCESS);
    EXPECT_EQ(at, 1714564800123);
    bool resolve = true;
    ASSERT_EQ(doc["resolve"].get(resolve), simdjson::SUCCESS);
    EXPECT_FALSE(resolve);
    simdjson::dom::object obj;
    ASSERT_EQ(doc.get(obj), simdjson::SUCCESS);
    for (auto field : obj) {  // flat: no nested objects
        EXPECT_NE(field.value.type(), simdjson::dom::element_type::OBJECT) << field.key;
    }
}

TEST(AlertsPayload, StringsAreEscapedAndValidUtf8) {
    simdjson::dom::parser parser;
    alert a = sample();
    a.reason = "quote \" backslash \\ newline \n tab \t ctl \x01 bad utf8 \xff\xfe end";
    a.actor = "ops-oncall \xc3\xa9";  // valid é stays
    for (auto kind : {sink_kind::webhook, sink_kind::slack, sink_kind::pagerduty}) {
        const auto body = render_payload(kind, a, pd_sink());
        simdjson::dom::element doc;
        ASSERT_EQ(parser.parse(body).get(doc), simdjson::SUCCESS) << to_string(kind) << ": " << body;
    }
    simdjson::dom::element doc;
    const auto body = render_payload(sink_kind::webhook, a, sink_config{});
    ASSERT_EQ(parser.parse(body).get(doc), simdjson::SUCCESS);
    EXPECT_EQ(str(doc, "reason"),
              "quote \" backslash \\ newline \n tab \t ctl \x01 bad utf8 \xEF\xBF\xBD\xEF\xBF\xBD end");
    EXPECT_EQ(str(doc, "actor"), "ops-oncall \xc3\xa9");
}

TEST(AlertsPayload, SlackTextAndBlocks) {
    simdjson::dom::parser parser;
    alert a = sample();
    a.reason = "<!channel> & friends";
    const auto body = render_payload(sink_kind::slack, a, sink_config{});
    simdjson::dom::element doc;
    ASSERT_EQ(parser.parse(body).get(doc), simdjson::SUCCESS) << body;
    EXPECT_EQ(str(doc, "text"), a.summary);
    simdjson::dom::array blocks;
    ASSERT_EQ(doc["blocks"].get(blocks), simdjson::SUCCESS);
    ASSERT_GE(blocks.size(), 1u);
    simdjson::dom::element section = blocks.at(0).value();
    EXPECT_EQ(str(section, "type"), "section");
    EXPECT_EQ(str(section["text"].value(), "type"), "mrkdwn");
    const auto text = str(section["text"].value(), "text");
    EXPECT_NE(text.find("*Breaker:* campaign-volume/spring-sale"), std::string::npos) << text;
    EXPECT_NE(text.find("*Rule:* recipients-per-campaign"), std::string::npos) << text;
    EXPECT_NE(text.find("*Failure mode:* volume-spike"), std::string::npos) << text;
    EXPECT_NE(text.find("*Severity:* sev2"), std::string::npos) << text;
    EXPECT_NE(text.find("*Actor:* rule"), std::string::npos) << text;
    // Slack control sequences are neutralised: no channel ping from alert text.
    EXPECT_NE(text.find("*Reason:* &lt;!channel&gt; &amp; friends"), std::string::npos) << text;
    EXPECT_EQ(text.find("<!channel>"), std::string::npos);
}

TEST(AlertsPayload, PagerDutyEventsV2Trigger) {
    simdjson::dom::parser parser;
    const auto body = render_payload(sink_kind::pagerduty, sample(), pd_sink());
    simdjson::dom::element doc;
    ASSERT_EQ(parser.parse(body).get(doc), simdjson::SUCCESS) << body;
    EXPECT_EQ(str(doc, "routing_key"), "R0UT1NG");
    EXPECT_EQ(str(doc, "event_action"), "trigger");
    EXPECT_EQ(str(doc, "dedup_key"), "campaign-volume/spring-sale");  // defaults to the breaker
    simdjson::dom::element p = doc["payload"].value();
    EXPECT_EQ(str(p, "summary"), sample().summary);
    EXPECT_EQ(str(p, "source"), "breakerbox");
    EXPECT_EQ(str(p, "severity"), "error");
    EXPECT_EQ(str(p, "timestamp"), "2024-05-01T12:00:00.123Z");
    EXPECT_EQ(str(p, "component"), "campaign-volume/spring-sale");
    EXPECT_EQ(str(p, "group"), "volume-spike");
    EXPECT_EQ(str(p, "class"), "breaker_tripped");
    simdjson::dom::element d = p["custom_details"].value();
    EXPECT_EQ(str(d, "rule"), "recipients-per-campaign");
    EXPECT_EQ(str(d, "actor"), "rule");
    EXPECT_EQ(str(d, "request_id"), "req-123");
}

TEST(AlertsPayload, PagerDutySeverityMapAndResolve) {
    simdjson::dom::parser parser;
    const std::pair<const char*, const char*> map[] = {
        {"sev1", "critical"}, {"sev2", "error"}, {"sev3", "warning"}, {"sev4", "info"}};
    for (const auto& [sev, pd] : map) {
        alert a = sample();
        a.severity = sev;
        const auto body = render_payload(sink_kind::pagerduty, a, pd_sink());
        simdjson::dom::element doc;
        ASSERT_EQ(parser.parse(body).get(doc), simdjson::SUCCESS);
        EXPECT_EQ(str(doc["payload"].value(), "severity"), pd) << sev;
    }
    alert r = sample();
    r.event = "breaker_reset";
    r.resolve = true;
    r.dedup_key = "bb:campaign-volume/spring-sale";
    const auto body = render_payload(sink_kind::pagerduty, r, pd_sink());
    simdjson::dom::element doc;
    ASSERT_EQ(parser.parse(body).get(doc), simdjson::SUCCESS);
    EXPECT_EQ(str(doc, "event_action"), "resolve");
    EXPECT_EQ(str(doc, "dedup_key"), "bb:campaign-volume/spring-sale");
}

TEST(AlertsPayload, PagerDutyLimits) {
    simdjson::dom::parser parser;
    alert a = sample();
    a.summary = std::string(5000, 'x');
    a.dedup_key = std::string(400, 'k');
    const auto body = render_payload(sink_kind::pagerduty, a, pd_sink());
    simdjson::dom::element doc;
    ASSERT_EQ(parser.parse(body).get(doc), simdjson::SUCCESS);
    EXPECT_EQ(str(doc, "dedup_key").size(), 255u);
    EXPECT_EQ(str(doc["payload"].value(), "summary").size(), 1024u);
    // Two instances whose names share their first 255 bytes are two incidents: the head of
    // the name, then the SHA-256 of the whole.
    a.dedup_key = "campaign-volume/" + std::string(300, 'k') + "1";
    alert b = a;
    b.dedup_key = "campaign-volume/" + std::string(300, 'k') + "2";
    ASSERT_EQ(parser.parse(render_payload(sink_kind::pagerduty, a, pd_sink())).get(doc), simdjson::SUCCESS);
    const std::string key_a{str(doc, "dedup_key")};
    ASSERT_EQ(parser.parse(render_payload(sink_kind::pagerduty, b, pd_sink())).get(doc), simdjson::SUCCESS);
    const std::string key_b{str(doc, "dedup_key")};
    EXPECT_NE(key_a, key_b);
    EXPECT_LE(key_a.size(), 255u);
    EXPECT_EQ(key_a.rfind("campaign-volume/kkk", 0), 0u) << key_a;
    // One of 255 bytes or fewer is unchanged (an incident opened before stays correlated).
    a.dedup_key = "campaign-volume/" + std::string(239, 'k');
    ASSERT_EQ(parser.parse(render_payload(sink_kind::pagerduty, a, pd_sink())).get(doc), simdjson::SUCCESS);
    EXPECT_EQ(str(doc, "dedup_key"), a.dedup_key);
}

}  // namespace
