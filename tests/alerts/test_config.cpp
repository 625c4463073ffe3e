#include "alerts/alerts.hpp"

#include <gtest/gtest.h>

#include <algorithm>

namespace {

using namespace bb::alerts;

struct parsed {
    alerts_config cfg;
    bb::cfg::errors errs;
};

parsed parse(const std::string& json) {
    static simdjson::dom::parser parser;  // one per test binary; tests run sequentially
    parsed out;
    simdjson::dom::element doc;
    EXPECT_EQ(parser.parse(json).get(doc), simdjson::SUCCESS) << json;
    out.cfg = parse_alerts(&doc, out.errs);
    return out;
}

bool has_error(const bb::cfg::errors& errs, std::string_view path, std::string_view fragment = {}) {
    return std::any_of(errs.list().begin(), errs.list().end(), [&](const bb::cfg::error& e) {
        return e.path == path && e.message.find(fragment) != std::string::npos;
    });
}

// No section: no alerts. A section that is null is a mistake (a template that renders null
// would silence every page), refused rather than read as "none".
TEST(AlertsConfig, MissingSectionIsEmptyAndNullIsRefused) {
    bb::cfg::errors errs;
    auto cfg = parse_alerts(nullptr, errs);
    EXPECT_TRUE(errs.empty());
    EXPECT_TRUE(cfg.sinks.empty());
    EXPECT_EQ(cfg.queue_max, 1000u);
    EXPECT_EQ(cfg.max_attempts, 10u);  // about two minutes of retries from the defaults

    auto p = parse("null");
    EXPECT_NE(p.errs.to_string().find("alerts: must be an object, not null"), std::string::npos) << p.errs.to_string();
}

TEST(AlertsConfig, FullConfig) {
    const std::string ca = std::string{BB_TEST_CERTS_DIR} + "/ca.pem";
    auto p = parse(R"({
      "sinks": [
        {"name": "hooks", "type": "webhook", "url": "http://127.0.0.1:9000/alerts?x=1",
         "headers": {"Authorization": "Bearer abc", "X-Team": "ops"}},
        {"name": "chat", "type": "slack", "url": "https://hooks.slack.example/services/T/B/X",
         "severities": ["sev1", "sev2"]},
        {"name": "pager", "type": "pagerduty", "url": "https://events.pagerduty.example/v2/enqueue",
         "routing_key": "R0UT1NG", "ca_file": ")" + ca + R"(", "severities": ["sev1"]}
      ],
      "queue_max": 50, "max_attempts": 3, "initial_backoff": "10ms", "max_backoff": "2s", "timeout": "1s"
    })");
    ASSERT_TRUE(p.errs.empty()) << p.errs.to_string();
    ASSERT_EQ(p.cfg.sinks.size(), 3u);
    EXPECT_EQ(p.cfg.sinks[0].kind, sink_kind::webhook);
    ASSERT_EQ(p.cfg.sinks[0].headers.size(), 2u);
    EXPECT_EQ(p.cfg.sinks[0].headers[0].first, "Authorization");
    EXPECT_EQ(p.cfg.sinks[0].headers[0].second, "Bearer abc");
    EXPECT_EQ(p.cfg.sinks[1].kind, sink_kind::slack);
    EXPECT_EQ(p.cfg.sinks[1].severities, (std::vector<std::string>{"sev1", "sev2"}));
    EXPECT_EQ(p.cfg.sinks[2].kind, sink_kind::pagerduty);
    EXPECT_EQ(p.cfg.sinks[2].routing_key, "R0UT1NG");
    EXPECT_EQ(p.cfg.sinks[2].ca_file, ca);
    EXPECT_EQ(p.cfg.queue_max, 50u);
    EXPECT_EQ(p.cfg.max_attempts, 3u);
    EXPECT_EQ(p.cfg.initial_backoff, std::chrono::milliseconds{10});
    EXPECT_EQ(p.cfg.max_backoff, std::chrono::milliseconds{2000});
    EXPECT_EQ(p.cfg.timeout, std::chrono::milliseconds{1000});
}

TEST(AlertsConfig, EveryErrorWithItsPath) {
    auto p = parse(R"({
      "sinks": [
        {"name": "a", "type": "email", "url": "http://x"},
        {"name": "b", "type": "webhook", "url": "ftp://x/y", "severities": ["sev1", "sev9", "sev1"]},
        {"name": "c", "type": "pagerduty", "url": "https://x"},
        {"name": "a", "type": "slack", "url": "http://x:0/", "routing_key": "k", "ca_file": "/ca.pem"},
        {"type": "webhook", "url": "http://x", "headers": {"Content-Type": "text/plain", "X-Bad": "a\r\nb", "bad name": "v", "X-Num": 1, "X-Team": "a", "x-team": "b"}},
        {"name": "d", "type": "webhook", "url": "https://user:pw@x/", "severity": ["sev1"]},
        "nope",
        {"name": "e", "type": "webhook", "url": "https://x/", "ca_file": "/dev/zero"},
        {"name": "f", "type": "webhook", "url": "https://x/", "ca_file": "/nonexistent/ca.pem"},
        {"name": "g", "type": "webhook", "url": "https://x/", "ca_file": ")" + std::string{BB_TEST_CERTS_DIR} + R"(/server.key"}
      ],
      "queue_max": 0, "max_attempts": 1000, "initial_backoff": "1x", "timeout": 5, "extra": true
    })");
    const auto& e = p.errs;
    EXPECT_TRUE(has_error(e, "alerts.sinks[0].type", "\"email\" is not a sink type")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[1].url", "http:// or https://")) << e.to_string();
    // The URL itself is never repeated (a webhook's URL can be its credential; errors reach
    // logs and the audit log).
    EXPECT_EQ(e.to_string().find("user:pw"), std::string::npos) << e.to_string();
    EXPECT_EQ(e.to_string().find("ftp://x/y"), std::string::npos) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[1].severities[1]", "\"sev9\" is not a severity")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[1].severities[2]", "listed twice")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[2].routing_key", "required for pagerduty")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[3].name", "used by another sink")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[3].url", "invalid port")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[3].routing_key", "only for pagerduty")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[3].ca_file", "only for https")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[4].name", "is required")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[4].headers.Content-Type", "set by breakerbox")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[4].headers.X-Bad", "control characters")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[4].headers.bad name", "not a valid header name")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[4].headers.X-Num", "must be a string")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[4].headers.x-team", "is given twice")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[5].url", "credentials")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[5].severity", "not a known setting")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[6]", "must be an object")) << e.to_string();
    // Checked at apply, not at the first alert: a device would grow memory, a FIFO block the
    // alert thread, a missing file lose the first page.
    EXPECT_TRUE(has_error(e, "alerts.sinks[7].ca_file", "\"/dev/zero\" is not a regular file")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.sinks[8].ca_file", "\"/nonexistent/ca.pem\" cannot be read")) << e.to_string();
    // Read as the sink will load it (a key file given for the CA, say): no page lost to it.
    EXPECT_TRUE(has_error(e, "alerts.sinks[9].ca_file", "holds no PEM certificate")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.queue_max", "out of range")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.max_attempts", "out of range")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.initial_backoff", "not a duration")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.timeout", "duration string")) << e.to_string();
    EXPECT_TRUE(has_error(e, "alerts.extra", "not a known setting")) << e.to_string();
    EXPECT_TRUE(p.cfg.sinks.empty());  // no sink here is usable
}

TEST(AlertsConfig, BackoffOrderAndSectionType) {
    auto p = parse(R"({"initial_backoff": "5s", "max_backoff": "1s", "timeout": "0ms"})");
    EXPECT_TRUE(has_error(p.errs, "alerts.max_backoff", "shorter than initial_backoff")) << p.errs.to_string();
    EXPECT_TRUE(has_error(p.errs, "alerts.timeout", "too short")) << p.errs.to_string();

    auto q = parse(R"([1, 2])");
    EXPECT_TRUE(has_error(q.errs, "alerts", "must be an object")) << q.errs.to_string();
}

TEST(AlertsConfig, ParseUrl) {
    auto u = parse_url("https://hooks.example:8443/a/b?c=d#frag");
    ASSERT_TRUE(u);
    EXPECT_TRUE(u->tls);
    EXPECT_EQ(u->host, "hooks.example");
    EXPECT_EQ(u->port, 8443);
    EXPECT_EQ(u->target, "/a/b?c=d");

    u = parse_url("http://[::1]:9000");
    ASSERT_TRUE(u);
    EXPECT_EQ(u->host, "::1");
    EXPECT_EQ(u->port, 9000);
    EXPECT_EQ(u->target, "/");

    u = parse_url("https://x.example?q=1");
    ASSERT_TRUE(u);
    EXPECT_EQ(u->port, 443);
    EXPECT_EQ(u->target, "/?q=1");

    std::string why;
    EXPECT_FALSE(parse_url("http://", &why));
    EXPECT_EQ(why, "has no host");
    EXPECT_FALSE(parse_url("http://x:99999/", &why));
    EXPECT_FALSE(parse_url("http://x:/", &why));
    EXPECT_FALSE(parse_url("http://x y/", &why));
    EXPECT_FALSE(parse_url("mailto:x@y", &why));
}

TEST(AlertsConfig, BackoffDelay) {
    using ms = std::chrono::milliseconds;
    EXPECT_EQ(backoff_delay(1, ms{500}, ms{30000}, 1.0), ms{500});
    EXPECT_EQ(backoff_delay(2, ms{500}, ms{30000}, 1.0), ms{1000});
    EXPECT_EQ(backoff_delay(3, ms{500}, ms{30000}, 1.0), ms{2000});
    EXPECT_EQ(backoff_delay(10, ms{500}, ms{30000}, 1.0), ms{30000});
    EXPECT_EQ(backoff_delay(1000, ms{500}, ms{30000}, 1.0), ms{30000});  // no overflow
    EXPECT_EQ(backoff_delay(1, ms{500}, ms{30000}, 0.8), ms{400});
    EXPECT_EQ(backoff_delay(1, ms{500}, ms{30000}, 1.2), ms{600});
    EXPECT_EQ(backoff_delay(10, ms{500}, ms{30000}, 1.2), ms{30000});  // jitter never exceeds the cap
}

}  // namespace
