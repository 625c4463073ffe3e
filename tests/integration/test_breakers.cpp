// Rules and breakers wired into the proxy, through real sockets (issue 4): exact caps under
// 64 concurrent connections, upstream health with half-open probes on a manual clock,
// operator modes, sandbox rewriting, upstream rate-limit pauses, durable state.
#include "tests/support/fake_upstream.hpp"
#include "tests/support/proxy_fixture.hpp"

#include "proxy/remediation.hpp"
#include "store/breaker_state.hpp"
#include "store/database.hpp"

#include <gtest/gtest.h>

#include <boost/beast/http/write.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <chrono>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <poll.h>

using namespace bb::test;
using namespace std::chrono_literals;
namespace http = boost::beast::http;

namespace {

std::string body_field(const response& r, const std::string& name) {
    const auto& b = r.body();
    const auto k = b.find("\"" + name + "\":\"");
    if (k == std::string::npos) {
        return {};
    }
    const auto start = k + name.size() + 4;
    return b.substr(start, b.find('"', start) - start);
}

std::string mail(int recipients, const std::string& campaign, const std::string& extra_json = "") {
    std::string to;
    for (int i = 0; i < recipients; ++i) {
        to += std::string{i ? "," : ""} + "{\"email\":\"r" + std::to_string(i) + "@example.com\"}";
    }
    const std::string body = "{\"personalizations\":[{\"to\":[" + to +
                             "]}],\"from\":{\"email\":\"news@example.com\"},\"subject\":\"Spring sale\","
                             "\"content\":[{\"type\":\"text/plain\",\"value\":\"hello\"}]" +
                             extra_json + "}";
    std::ostringstream ss;
    ss << "POST /v3/mail/send HTTP/1.1\r\nHost: api.sendgrid.test\r\nContent-Type: application/json\r\n"
       << "X-Campaign-Id: " << campaign << "\r\nContent-Length: " << body.size() << "\r\n\r\n"
       << body;
    return ss.str();
}

// A config with the mail-send route, one breaker and one recipients cap; `breaker` and
// `upstream_extra` are JSON fragments.
std::string guarded_config(std::uint16_t upstream_port, const std::string& dir, const std::string& breaker,
                           int limit = 1000, const std::string& upstream_extra = "", unsigned workers = 2) {
    return "{\"workers\": " + std::to_string(workers) +
           ", \"listeners\": [{\"name\": \"t\", \"address\": \"127.0.0.1:0\"}],"
           "\"limits\": {\"drain_timeout\": \"2s\"},"
           "\"store\": {\"path\": \"" +
           dir + "/bb.db\"},"
           "\"upstreams\": [{\"name\": \"sendgrid\", \"url\": \"http://127.0.0.1:" +
           std::to_string(upstream_port) + "\"" + (upstream_extra.empty() ? "" : ", " + upstream_extra) +
           "}],"
           "\"routes\": [{\"name\": \"mail-send\", \"match\": {\"path_prefix\": \"/v3/mail/send\", \"methods\": [\"POST\"]}, "
           "\"upstream\": \"sendgrid\"},"
           "{\"name\": \"other\", \"match\": {\"path_prefix\": \"/\"}, \"upstream\": \"sendgrid\"}],"
           "\"failure_modes\": [{\"id\": \"volume-spike\", \"title\": \"Send volume spike\", \"severity\": \"sev2\"}],"
           "\"breakers\": [" +
           breaker +
           "],"
           "\"rules\": [{\"id\": \"recipients-per-campaign\", \"route\": \"mail-send\", \"key\": [\"header:x-campaign-id\"],"
           "\"measure\": {\"sum\": \"count($.personalizations[*].to[*])\"}, \"window\": \"1h\", \"limit\": " +
           std::to_string(limit) +
           ", \"failure_mode\": \"volume-spike\", \"trips\": \"campaign-volume\"}],"
           "\"log\": {\"level\": \"warn\", \"access_log\": \"off\"}}";
}

// A webhook sink to a fake upstream's /alerts, for `severities` (a JSON list's items; none:
// every alert).
std::string webhook_sink(const std::string& name, std::uint16_t port, const std::string& severities = "") {
    return R"({"name": ")" + name + R"(", "type": "webhook", "url": "http://127.0.0.1:)" + std::to_string(port) +
           R"(/alerts")" + (severities.empty() ? "" : R"(, "severities": [)" + severities + "]") + "}";
}

// A guarded_config with an alerts section of these sinks (and `extra` settings).
std::string with_alerts(std::string cfg, const std::string& sinks, const std::string& extra = "") {
    cfg.insert(cfg.rfind('}'), R"(, "alerts": {"sinks": [)" + sinks + "]" + extra + "}");
    return cfg;
}

const std::string pause_manual = R"({"id": "campaign-volume", "action": "pause", "reset": "manual"})";

// One upstream and a catch-all route, one worker; `extra`: more top-level members, each
// followed by a comma (failure modes, breakers, rules).
std::string one_route_config(std::uint16_t upstream_port, const std::string& dir, const std::string& extra = "") {
    return "{\"workers\": 1, \"listeners\": [{\"name\": \"t\", \"address\": \"127.0.0.1:0\"}],"
           "\"limits\": {\"drain_timeout\": \"2s\"}, \"store\": {\"path\": \"" + dir + "/bb.db\"},"
           "\"upstreams\": [{\"name\": \"sendgrid\", \"url\": \"http://127.0.0.1:" + std::to_string(upstream_port) + "\"}],"
           "\"routes\": [{\"name\": \"mail-send\", \"match\": {\"path_prefix\": \"/\"}, \"upstream\": \"sendgrid\"}]," +
           extra + "\"log\": {\"level\": \"warn\", \"access_log\": \"off\"}}";
}

// A port nothing listens on (a fake upstream's, closed).
std::uint16_t dead_port() {
    fake_upstream gone;
    return gone.port();
}

}  // namespace

TEST(caps, exact_under_64_concurrent_connections) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir, pause_manual)};
    std::atomic<int> accepted{0};
    std::atomic<int> paused{0};
    std::atomic<int> other{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 64; ++t) {
        threads.emplace_back([&] {
            raw_client c{bb.port()};
            for (int i = 0; i < 4; ++i) {
                c.send(mail(10, "spring-sale"));
                auto res = c.read_response();
                if (res.result_int() == 202) {
                    ++accepted;
                } else if (res.result_int() == 503 && res["x-breakerbox-decision"] == "paused") {
                    ++paused;
                } else {
                    ++other;
                }
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    EXPECT_EQ(accepted.load(), 100) << "a cap of 1000 recipients admits exactly 100 ten-recipient mails";
    EXPECT_EQ(up.request_count(), 100u) << "the upstream sees exactly the admitted mails";
    EXPECT_EQ(paused.load(), 64 * 4 - 100);
    EXPECT_EQ(other.load(), 0);
    // Another campaign is a different key: unaffected.
    raw_client c{bb.port()};
    c.send(mail(10, "autumn"));
    EXPECT_EQ(c.read_response().result_int(), 202u);
    // The instance is open, persisted and explains itself.
    auto snap = bb.server().breakers()->get("campaign-volume/spring-sale", bb.server().now());
    ASSERT_TRUE(snap.has_value());
    EXPECT_EQ(snap->st, bb::breakers::state::open);
    ASSERT_TRUE(snap->last_trip);
    EXPECT_EQ(snap->last_trip->cause.rule, "recipients-per-campaign");
    EXPECT_EQ(snap->last_trip->cause.key, "spring-sale");
    EXPECT_EQ(snap->last_trip->cause.limit, 1000);
    EXPECT_FALSE(snap->last_trip->cause.request_id.empty());
}

TEST(caps, the_crossing_request_is_contained_and_explains_itself) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir, pause_manual, 25)};
    raw_client c{bb.port()};
    c.send(mail(10, "spring"));
    EXPECT_EQ(c.read_response().result_int(), 202u);
    c.send(mail(10, "spring"));
    EXPECT_EQ(c.read_response().result_int(), 202u);
    c.send(mail(10, "spring"));  // 30 > 25: this one crosses
    auto res = c.read_response();
    EXPECT_EQ(res.result_int(), 503u);
    EXPECT_EQ(res["x-breakerbox-decision"], "paused");
    EXPECT_FALSE(res[http::field::retry_after].empty());
    EXPECT_EQ(body_field(res, "rule"), "recipients-per-campaign");
    EXPECT_EQ(body_field(res, "breaker"), "campaign-volume/spring");
    EXPECT_EQ(body_field(res, "request_id"), std::string{res["x-request-id"]});
    EXPECT_EQ(up.request_count(), 2u);
    // The next one on any worker is refused too.
    for (int i = 0; i < 8; ++i) {
        auto again = http_request(bb.port(), http::verb::post, "/v3/mail/send",
                                  "{\"personalizations\":[{\"to\":[{\"email\":\"a@b.c\"}]}]}",
                                  {{"content-type", "application/json"}, {"x-campaign-id", "spring"}});
        EXPECT_EQ(again.result_int(), 503u);
    }
    EXPECT_EQ(up.request_count(), 2u);
}

// A request that two keyed rules of one breaker judge (a campaign key and an agent key) asks
// the breaker-wide instance once. With the wide instance half-open, the second ask used to
// refuse the request its own probe: contained, the probe given back, and the breaker stayed
// half-open, refusing everything, for good.
TEST(caps, two_keys_of_one_breaker_take_one_wide_probe) {
    fake_upstream up;
    bb::manual_clock clock;
    const auto dir = temp_dir();
    auto cfg = guarded_config(up.port(), dir, R"({"id": "campaign-volume", "action": "pause", "cooldown": "10s"})");
    const std::string tail = R"("trips": "campaign-volume"}],)";
    ASSERT_NE(cfg.find(tail), std::string::npos);
    cfg.replace(cfg.find(tail), tail.size(),
                R"("trips": "campaign-volume"}, {"id": "per-source", "route": "mail-send", "key": ["header:x-source"],)"
                R"j("measure": {"sum": "count($.personalizations[*].to[*])"}, "window": "1h", "limit": 1000,)j"
                R"("failure_mode": "volume-spike", "trips": "campaign-volume"}],)");
    proxy_instance bb{cfg, &clock};
    bb::breakers::trip_cause cause;
    cause.kind = "rule";
    cause.reason = "test";
    bb.server().breakers()->trip("campaign-volume", "", cause, bb.server().now());
    clock.advance(11s);  // half-open: one probe
    auto probe = http_request(bb.port(), http::verb::post, "/v3/mail/send",
                              R"({"personalizations":[{"to":[{"email":"a@example.com"}]}]})",
                              {{"content-type", "application/json"}, {"x-campaign-id", "spring"}, {"x-source", "crm"}});
    EXPECT_EQ(probe.result_int(), 200u) << probe.body();
    const auto wide = bb.server().breakers()->get("campaign-volume", bb.server().now());
    ASSERT_TRUE(wide);
    EXPECT_EQ(wide->st, bb::breakers::state::closed) << "the probe's success closes the breaker";
    EXPECT_EQ(up.request_count(), 1u);
}

TEST(caps, invalid_json_is_rejected_not_forwarded) {
    fake_upstream up;
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir, pause_manual)};
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", "{not json",
                            {{"content-type", "application/json"}, {"x-campaign-id", "c"}});
    EXPECT_EQ(res.result_int(), 400u);
    EXPECT_EQ(res["x-breakerbox-decision"], "rejected");
    EXPECT_EQ(body_field(res, "code"), "invalid_body");
    EXPECT_EQ(body_field(res, "rule"), "recipients-per-campaign");
    EXPECT_EQ(up.request_count(), 0u);
}

TEST(health, five_consecutive_5xx_open_the_upstream_breaker_then_a_probe_closes_it) {
    std::atomic<int> status{500};
    fake_upstream up{[&](const request&) { return respond(static_cast<unsigned>(status.load()), "{}"); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir, pause_manual, 1000000,
                                     R"("health": {"consecutive_failures": 5, "cooldown": "10s"})"),
                      &clock};
    for (int i = 0; i < 5; ++i) {
        EXPECT_EQ(http_request(bb.port(), http::verb::get, "/x").result_int(), 500u);
    }
    auto res = http_request(bb.port(), http::verb::get, "/x");
    EXPECT_EQ(res.result_int(), 503u);
    EXPECT_EQ(body_field(res, "code"), "upstream_unhealthy");
    EXPECT_EQ(body_field(res, "breaker"), "upstream/sendgrid");
    EXPECT_EQ(up.request_count(), 5u) << "the 6th request must never reach the upstream";

    clock.advance(11s);  // past the cooldown: half-open lets one probe through
    status = 200;
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/probe").result_int(), 200u);
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/after").result_int(), 200u);
    EXPECT_EQ(up.request_count(), 7u);
}

namespace {

// guarded_config with an upstream health of two consecutive failures, and responses over
// 2,048 bytes refused (limits.upstream_body_bytes).
std::string health_config_with_a_2048_byte_body_limit(std::uint16_t upstream_port, const std::string& dir) {
    auto cfg = guarded_config(upstream_port, dir, pause_manual, 1000000,
                              R"("health": {"consecutive_failures": 2, "cooldown": "10s"})");
    const std::string limits = R"("limits": {"drain_timeout": "2s")";
    EXPECT_NE(cfg.find(limits), std::string::npos);
    cfg.replace(cfg.find(limits), limits.size(), limits + R"(, "upstream_body_bytes": 2048)");
    return cfg;
}

}  // namespace

// A response over limits.upstream_body_bytes is breakerbox's own limit: the client gets its
// 502, but the upstream answered, so health counts no failure (a few large list GETs in a row
// used to open upstream/<name> and pause every write behind it).
TEST(health, a_response_over_our_body_limit_is_no_upstream_failure) {
    fake_upstream up{[](const request& r) { return respond(200, r.target() == "/big" ? std::string(4096, 'x') : "{}"); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    proxy_instance bb{health_config_with_a_2048_byte_body_limit(up.port(), dir), &clock};
    for (int i = 0; i < 3; ++i) {
        auto res = http_request(bb.port(), http::verb::get, "/big");
        EXPECT_EQ(res.result_int(), 502u);
        EXPECT_EQ(body_field(res, "code"), "upstream_response_too_large");
    }
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/small").result_int(), 200u)
        << "upstream/sendgrid must stay closed";
    EXPECT_EQ(up.request_count(), 4u);
}

// ...but a 5xx is the upstream failing, however large its error page: counted as one, so an
// upstream that answers every request with a big 503 page still opens its breaker.
TEST(health, a_5xx_over_our_body_limit_is_still_an_upstream_failure) {
    fake_upstream up{[](const request&) { return respond(503, std::string(4096, 'x')); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    proxy_instance bb{health_config_with_a_2048_byte_body_limit(up.port(), dir), &clock};
    for (int i = 0; i < 2; ++i) {
        auto res = http_request(bb.port(), http::verb::get, "/big");
        EXPECT_EQ(res.result_int(), 502u);
        EXPECT_EQ(body_field(res, "code"), "upstream_response_too_large");
    }
    auto res = http_request(bb.port(), http::verb::get, "/small");
    EXPECT_EQ(res.result_int(), 503u);
    EXPECT_EQ(body_field(res, "code"), "upstream_unhealthy");
    EXPECT_EQ(up.request_count(), 2u);
}

TEST(health, a_failed_probe_reopens_with_a_longer_cooldown) {
    fake_upstream up{[](const request&) { return respond(502, "{}"); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir, pause_manual, 1000000,
                                     R"("health": {"consecutive_failures": 2, "cooldown": "10s"})"),
                      &clock};
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/a").result_int(), 502u);
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/b").result_int(), 502u);
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/c").result_int(), 503u);
    clock.advance(11s);
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/probe").result_int(), 502u);  // the probe fails
    clock.advance(11s);  // the cooldown doubled to 20s: still open
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/d").result_int(), 503u);
    clock.advance(10s);
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/probe2").result_int(), 502u);
    EXPECT_EQ(up.request_count(), 4u);
}

// An upstream that hangs until every client gives up: a probe whose client left after
// waiting slow_call or longer fails, and the breaker reopens with its cooldown backed off
// (it used to be cancelled, so each next request took the probe, half-open for ever).
TEST(health, a_probe_abandoned_after_slow_call_fails) {
    std::atomic<bool> hang{false};
    fake_upstream up{[&](const request&) {
        auto b = respond(502, "{}");
        if (hang) {
            b.what = behaviour::kind::hang;
        }
        return b;
    }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir, pause_manual, 1000000,
                                     R"("health": {"consecutive_failures": 2, "cooldown": "10s", "slow_call": "1ms"})"),
                      &clock};
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/a").result_int(), 502u);
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/b").result_int(), 502u);
    clock.advance(11s);
    hang = true;
    {
        raw_client c{bb.port()};
        c.send("GET /probe HTTP/1.1\r\nHost: a\r\n\r\n");
        ASSERT_TRUE(up.wait_for([&] { return up.request_count() >= 3; }, 5s));
        pollfd none{};
        ::poll(&none, 0, 5);  // the wait itself is the condition: past slow_call (1 ms)
        c.close();
    }
    auto& reg = *bb.server().breakers();
    std::optional<bb::breakers::instance_snapshot> s;
    for (int i = 0; i < 500; ++i) {
        s = reg.get("upstream/sendgrid", clock.now());
        if (s && s->st == bb::breakers::state::open) {
            break;
        }
        pollfd none{};
        ::poll(&none, 0, 10);  // the worker notices the client's close on its own time: bounded polling
    }
    ASSERT_TRUE(s);
    EXPECT_EQ(s->st, bb::breakers::state::open) << "the abandoned probe gave no verdict";
    EXPECT_EQ(s->cooldown, 20s);
}

// The upstream breaker's probe slot went to a request that a campaign breaker then
// contained: the upstream said nothing, so its breaker stays half-open with the base
// cooldown and the next request probes (it used to reopen, cooldown doubled).
TEST(health, a_probe_contained_by_another_breaker_is_no_verdict_on_the_upstream) {
    std::atomic<int> status{502};
    fake_upstream up{[&](const request&) { return respond(static_cast<unsigned>(status.load()), "{}"); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir, pause_manual, 1000000,
                                     R"("health": {"consecutive_failures": 2, "cooldown": "10s"})"),
                      &clock};
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/a").result_int(), 502u);
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/b").result_int(), 502u);
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume/x", "ops", "misfire", clock.now()));
    clock.advance(11s);
    status = 200;
    raw_client c{bb.port()};
    c.send(mail(1, "x"));
    auto held = c.read_response();
    EXPECT_EQ(held.result_int(), 503u);
    EXPECT_EQ(body_field(held, "breaker"), "campaign-volume/x");
    auto upstream = bb.server().breakers()->get("upstream/sendgrid", clock.now());
    ASSERT_TRUE(upstream);
    EXPECT_EQ(upstream->st, bb::breakers::state::half_open);
    EXPECT_EQ(upstream->cooldown, 10s);
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/probe").result_int(), 200u) << "the next request probes";
    EXPECT_EQ(bb.server().breakers()->get("upstream/sendgrid", clock.now())->st, bb::breakers::state::closed);
}

namespace {

// Adds an upstream "sink" at `port` (a sandbox breaker's alternate upstream) to a
// guarded_config.
void add_sink_upstream(std::string& cfg, std::uint16_t port) {
    const std::string end_of_upstreams = "}],\"routes\"";
    cfg.replace(cfg.find(end_of_upstreams), end_of_upstreams.size(),
                "}, {\"name\": \"sink\", \"url\": \"http://127.0.0.1:" + std::to_string(port) + "\"}],\"routes\"");
}

}  // namespace

// The probe slot of a half-open upstream breaker went to a request a sandbox breaker sent to
// its sandbox upstream: the sandbox's 200 says nothing of the real upstream, whose breaker
// stays half-open (it used to close on it, letting real sends flood back to a down API).
TEST(health, a_probe_sent_to_the_sandbox_upstream_is_no_verdict_on_the_real_one) {
    std::atomic<int> status{502};
    fake_upstream up{[&](const request&) { return respond(static_cast<unsigned>(status.load()), "{}"); }};
    fake_upstream sink{[](const request&) { return respond(200, "{}"); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    std::string cfg = guarded_config(
        up.port(), dir, R"({"id": "campaign-volume", "action": "sandbox", "reset": "manual", "sandbox": {"upstream": "sink"}})",
        1000000, R"("health": {"consecutive_failures": 2, "cooldown": "10s"})");
    add_sink_upstream(cfg, sink.port());
    proxy_instance bb{cfg, &clock};
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/a").result_int(), 502u);
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/b").result_int(), 502u);
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume/x", "ops", "dry runs only", clock.now()));
    clock.advance(11s);
    raw_client c{bb.port()};
    c.send(mail(1, "x"));
    auto sandboxed = c.read_response();
    EXPECT_EQ(sandboxed.result_int(), 200u);
    EXPECT_EQ(sandboxed["x-breakerbox-decision"], "sandboxed");
    EXPECT_EQ(sink.request_count(), 1u);
    auto upstream = bb.server().breakers()->get("upstream/sendgrid", clock.now());
    ASSERT_TRUE(upstream);
    EXPECT_EQ(upstream->st, bb::breakers::state::half_open) << "the sandbox's answer closed the real upstream's breaker";
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/probe").result_int(), 502u) << "the next request probes";
    EXPECT_EQ(bb.server().breakers()->get("upstream/sendgrid", clock.now())->st, bb::breakers::state::open);
    EXPECT_EQ(up.request_count(), 3u);
}

// Nor is a dry run's answer a verdict on any other breaker's probe: a route breaker in
// half-open whose probe went out as a sandboxed request stays half-open (a fake that always
// answers 200 would close it, and every agent's real traffic would resume on no evidence).
TEST(health, a_sandboxed_request_settles_no_probe) {
    fake_upstream up{[](const request&) { return respond(202, "{}"); }};
    fake_upstream sink{[](const request&) { return respond(200, "{}"); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    std::string cfg = guarded_config(
        up.port(), dir,
        R"({"id": "campaign-volume", "action": "sandbox", "reset": "manual", "sandbox": {"upstream": "sink"}},)"
        R"({"id": "errors", "action": "pause", "reset": "auto", "cooldown": "10s"})");
    add_sink_upstream(cfg, sink.port());
    const std::string rules = "\"rules\": [";
    cfg.replace(cfg.find(rules), rules.size(),
                rules + R"({"id": "errs", "route": "mail-send", "measure": {"per_request": "requests"}, "limit": 1000000,)"
                        R"( "failure_mode": "volume-spike", "trips": "errors"},)");
    proxy_instance bb{cfg, &clock};
    auto& reg = *bb.server().breakers();
    bb::breakers::trip_cause cause;
    cause.kind = "rule";
    cause.reason = "5xx ratio";
    ASSERT_TRUE(reg.trip("errors", "", cause, clock.now()).opened);
    ASSERT_TRUE(reg.manual_trip("campaign-volume/x", "ops", "dry runs only", clock.now()));
    clock.advance(11s);
    raw_client c{bb.port()};
    c.send(mail(1, "x"));
    auto sandboxed = c.read_response();
    EXPECT_EQ(sandboxed.result_int(), 200u) << sandboxed.body();
    EXPECT_EQ(sandboxed["x-breakerbox-decision"], "sandboxed");
    EXPECT_EQ(sink.request_count(), 1u);
    EXPECT_EQ(reg.get("errors", clock.now())->st, bb::breakers::state::half_open)
        << "a dry run's 200 closed a breaker of the real traffic";
    EXPECT_EQ(up.request_count(), 0u);
}

// Campaign x sandboxed by a tripped breaker to the alternate upstream `sink`, not sent to `up`.
struct sandbox_to_sink {
    fake_upstream up{[](const request&) { return respond(202, "{}"); }};
    fake_upstream sink{[](const request&) { return respond(200, "{}"); }};
    bb::manual_clock clock;
    std::string dir = temp_dir();
    proxy_instance bb{config(), &clock};
    sandbox_to_sink() {
        EXPECT_TRUE(bb.server().breakers()->manual_trip("campaign-volume/x", "ops", "dry runs only", clock.now()));
    }
    std::string config() {
        std::string cfg = guarded_config(up.port(), dir,
                                         R"({"id": "campaign-volume", "action": "sandbox", "reset": "manual", "sandbox": {"upstream": "sink"}})");
        add_sink_upstream(cfg, sink.port());
        return cfg;
    }
};

// A sandbox upstream is a test fake or a capture server: the real API's credentials the
// client sent (its key, a token in the query, a cookie) do not go there; the body and the
// other fields do, as sent.
TEST(sandbox, an_alternate_upstream_gets_no_credentials) {
    sandbox_to_sink t;
    auto [up, sink, bb] = std::tie(t.up, t.sink, t.bb);  // (references)
    std::string m = mail(1, "x");
    const std::string head = "POST /v3/mail/send HTTP/1.1\r\n";
    m.replace(0, head.size(),
              "POST /v3/mail/send?api_key=SG.query-secret&page=2;access_token=t0k HTTP/1.1\r\n"
              "Authorization: Bearer SG.header-secret\r\nX-Api-Key: k3y\r\nCookie: session=s3ss\r\n"
              "Idempotency-Key: send-1\r\n");
    raw_client c{bb.port()};
    c.send(m);
    auto sandboxed = c.read_response();
    EXPECT_EQ(sandboxed.result_int(), 200u) << sandboxed.body();
    EXPECT_EQ(sandboxed["x-breakerbox-decision"], "sandboxed");
    ASSERT_EQ(sink.request_count(), 1u);
    const auto seen = sink.requests();
    const auto& got = seen[0].req;
    EXPECT_EQ(got.target(), "/v3/mail/send?page=2");
    EXPECT_EQ(got.count(http::field::authorization), 0u);
    EXPECT_EQ(got.count("x-api-key"), 0u);
    EXPECT_EQ(got.count(http::field::cookie), 0u);
    EXPECT_EQ(got["x-campaign-id"], "x");
    EXPECT_EQ(got["idempotency-key"], "send-1");
    EXPECT_NE(got.body().find("Spring sale"), std::string::npos);
    EXPECT_EQ(up.request_count(), 0u);
}

// Nor a body that carries one (SendGrid v2's api_key, a token endpoint's client_secret):
// such a request is sent nowhere (503), while a mail whose template has a `reset_token` goes.
TEST(sandbox, an_alternate_upstream_gets_no_body_that_carries_a_credential) {
    sandbox_to_sink t;
    auto [up, sink, bb] = std::tie(t.up, t.sink, t.bb);  // (references)
    raw_client c{bb.port()};
    c.send(mail(1, "x", R"(,"api_key":"SG.body-secret")"));
    auto kept = c.read_response();
    EXPECT_EQ(kept.result_int(), 503u) << kept.body();
    EXPECT_NE(kept.body().find("sandbox_failed"), std::string::npos) << kept.body();
    EXPECT_NE(kept.body().find("api_key"), std::string::npos) << kept.body();
    EXPECT_EQ(kept.body().find("SG.body-secret"), std::string::npos) << kept.body();
    EXPECT_EQ(sink.request_count(), 0u) << "the credential went to the sandbox upstream";
    raw_client d{bb.port()};
    d.send(mail(1, "x", R"(,"template_data":{"reset_token":"t-1"})"));
    auto sandboxed = d.read_response();
    EXPECT_EQ(sandboxed.result_int(), 200u) << sandboxed.body();
    EXPECT_EQ(sandboxed["x-breakerbox-decision"], "sandboxed");
    EXPECT_EQ(sink.request_count(), 1u);
    EXPECT_EQ(up.request_count(), 0u);
}

// The API's own sandbox mode answers from the real API: that answer is a verdict on the real
// upstream's probe (its breaker closes on it), though not on rule breakers' probes.
TEST(health, a_dry_run_through_the_real_api_settles_its_upstreams_probe) {
    std::atomic<int> status{502};
    fake_upstream up{[&](const request&) { return respond(static_cast<unsigned>(status.load()), "{}"); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir, R"({"id": "campaign-volume", "action": "sandbox", "reset": "manual"})",
                                     1000000, R"("sandbox_api": "sendgrid", "health": {"consecutive_failures": 2, "cooldown": "10s"})"),
                      &clock};
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/a").result_int(), 502u);
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/b").result_int(), 502u);
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume/x", "ops", "dry runs only", clock.now()));
    clock.advance(11s);
    status = 200;
    raw_client c{bb.port()};
    c.send(mail(1, "x"));
    auto sandboxed = c.read_response();
    EXPECT_EQ(sandboxed.result_int(), 200u) << sandboxed.body();
    EXPECT_EQ(sandboxed["x-breakerbox-decision"], "sandboxed");
    ASSERT_EQ(up.request_count(), 3u);
    EXPECT_NE(up.requests()[2].req.body().find("sandbox_mode"), std::string::npos);
    EXPECT_EQ(bb.server().breakers()->get("upstream/sendgrid", clock.now())->st, bb::breakers::state::closed)
        << "the real API's answer to the dry run was no verdict on its health probe";
}

// A rule that reads the response's JSON asks the upstream for it uncompressed: a client's
// Accept-Encoding: gzip (Go's default) made the upstream compress it, the rule read nothing,
// and its breaker never tripped.
TEST(health, a_rule_reading_the_response_gets_it_uncompressed) {
    fake_upstream up{[](const request& r) {
        if (r[http::field::accept_encoding].find("gzip") != std::string_view::npos) {
            auto b = respond(200, std::string{"\x1f\x8b\x08\x00 not json", 13});
            b.res.set(http::field::content_encoding, "gzip");
            return b;
        }
        return respond(200, R"({"errors":[1,2]})");
    }};
    proxy_instance bb{one_route_config(
        up.port(), temp_dir(),
        "\"failure_modes\": [{\"id\": \"crm\", \"title\": \"CRM errors\", \"severity\": \"sev2\"}],"
        "\"breakers\": [{\"id\": \"errors\", \"action\": \"pause\", \"reset\": \"manual\"}],"
        "\"rules\": [{\"id\": \"crm-errors\", \"route\": \"mail-send\", \"measure\": \"count(response:$.errors[*])\","
        " \"window\": \"1m\", \"limit\": 3, \"failure_mode\": \"crm\", \"trips\": \"errors\"}],")};
    for (int i = 0; i < 2; ++i) {
        raw_client c{bb.port()};
        std::string m = mail(1, "x");
        m.replace(m.find("Content-Type"), 0, "Accept-Encoding: gzip\r\n");
        c.send(m);
        ASSERT_EQ(c.read_response().result_int(), 200u) << i;
    }
    EXPECT_EQ(up.requests().back().req[http::field::accept_encoding], "identity");
    auto errors = bb.server().breakers()->get("errors", bb.server().now());
    ASSERT_TRUE(errors);
    EXPECT_EQ(errors->st, bb::breakers::state::open) << "2 + 2 errors > 3, read from the responses";
}

// An outage shows as refused connections and timeouts, not 5xx answers: those count as the
// 502/503/504 the clients get, so an error-ratio rule trips (they used to count as responses
// that were not errors, driving the ratio down).
TEST(health, refused_connections_count_as_errors_in_an_error_ratio_rule) {
    proxy_instance bb{one_route_config(
        dead_port(), temp_dir(),
        "\"failure_modes\": [{\"id\": \"outage\", \"title\": \"Upstream outage\", \"severity\": \"sev2\"}],"
        "\"breakers\": [{\"id\": \"errors\", \"action\": \"pause\", \"reset\": \"manual\"}],"
        "\"rules\": [{\"id\": \"error-ratio\", \"route\": \"mail-send\", \"measure\": \"status:5xx\", \"window\": \"5m\","
        "\"ratio\": {\"max\": 0.5, \"min_volume\": 4}, \"failure_mode\": \"outage\", \"trips\": \"errors\"}],")};
    for (int i = 0; i < 4; ++i) {
        raw_client c{bb.port()};
        c.send(mail(1, "x"));
        ASSERT_EQ(c.read_response().result_int(), 502u) << i;
    }
    auto errors = bb.server().breakers()->get("errors", bb.server().now());
    ASSERT_TRUE(errors);
    EXPECT_EQ(errors->st, bb::breakers::state::open) << "4 refused connections of 4 did not trip the error ratio";
    raw_client c{bb.port()};
    c.send(mail(1, "x"));
    EXPECT_EQ(c.read_response().result_int(), 503u);
}

// An error-ratio rule's breaker lets its probe through and, the probe answered, closes for
// good: the failures that opened it are forgotten when it goes half-open (as resilience4j
// starts a fresh window there). They used to stay in the window, so the probe, judged by
// the rule, found the ratio still over and reopened the breaker, every cooldown, until the
// failures aged out of the window (an hour here).
TEST(health, a_successful_probe_closes_an_error_ratio_breaker_for_good) {
    std::atomic<bool> failing{true};
    fake_upstream up{[&](const request&) { return failing ? respond(500, "{}") : respond(202, ""); }};
    bb::manual_clock clock;
    proxy_instance bb{one_route_config(
                          up.port(), temp_dir(),
                          "\"failure_modes\": [{\"id\": \"outage\", \"title\": \"Upstream outage\", \"severity\": \"sev2\"}],"
                          "\"breakers\": [{\"id\": \"errors\", \"action\": \"pause\", \"cooldown\": \"30s\"}],"
                          "\"rules\": [{\"id\": \"error-ratio\", \"route\": \"mail-send\", \"measure\": \"status:5xx\", "
                          "\"window\": \"1h\", \"ratio\": {\"max\": 0.5, \"min_volume\": 4}, \"failure_mode\": \"outage\", "
                          "\"trips\": \"errors\"}],"),
                      &clock};
    auto send = [&] {
        raw_client c{bb.port()};
        c.send(mail(1, "x"));
        return c.read_response().result_int();
    };
    auto state = [&] { return bb.server().breakers()->get("errors", bb.server().now())->st; };
    for (int i = 0; i < 4; ++i) {
        ASSERT_EQ(send(), 500u) << i;
    }
    ASSERT_EQ(state(), bb::breakers::state::open);
    EXPECT_EQ(send(), 503u);
    failing = false;  // the upstream recovers
    clock.advance(31s);
    EXPECT_EQ(send(), 202u) << "the probe";
    EXPECT_EQ(state(), bb::breakers::state::closed) << "reopened by the failures of before it opened";
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(send(), 202u) << i;
    }
    EXPECT_EQ(state(), bb::breakers::state::closed);
    EXPECT_EQ(bb.server().breakers()->get("errors", bb.server().now())->trips, 1u);
    // New failures count from the close: 4 of 8 is not over 0.5, 5 of 9 is.
    failing = true;
    for (int i = 0; i < 4; ++i) {
        EXPECT_EQ(send(), 500u) << i;
    }
    EXPECT_EQ(state(), bb::breakers::state::closed);
    EXPECT_EQ(send(), 500u);
    EXPECT_EQ(state(), bb::breakers::state::open);
}

// A duplicates guard that denies the second copy of a mail within an hour.
const std::string loop_guard_max_1 =
    "\"failure_modes\": [{\"id\": \"loop\", \"title\": \"Send loop\", \"severity\": \"sev2\"}],"
    "\"breakers\": [{\"id\": \"no-loops\", \"action\": \"deny\"}],"
    "\"rules\": [{\"id\": \"dups\", \"route\": \"mail-send\", \"guard\": {\"duplicates\": {\"max\": 1, \"window\": \"1h\"}},"
    "\"failure_mode\": \"loop\", \"trips\": \"no-loops\"}],";

// A request the upstream never received (connection refused) is taken off the rules'
// counters: its client's retry is not refused as a duplicate of a send that never happened,
// and it counts against no cap.
TEST(health, a_request_never_sent_is_no_duplicate_for_its_retry) {
    proxy_instance bb{one_route_config(dead_port(), temp_dir(), loop_guard_max_1)};
    for (int attempt = 0; attempt < 3; ++attempt) {
        raw_client c{bb.port()};
        c.send(mail(1, "x"));
        EXPECT_EQ(c.read_response().result_int(), 502u) << "attempt " << attempt << " refused as a duplicate";
    }
}

// A send the upstream answered it did not take (a 4xx) comes off the duplicates counters
// too: the client's corrected retry is no repeat of a mail that went out. What was taken is
// counted: the next copy is the loop.
TEST(health, a_send_the_upstream_refused_is_no_duplicate_for_its_retry) {
    std::atomic<int> answered{0};
    fake_upstream up{[&](const request&) {
        return answered++ == 0 ? respond(400, "{\"errors\":[{\"message\":\"bad from\"}]}") : respond(202, "");
    }};
    proxy_instance bb{one_route_config(up.port(), temp_dir(), loop_guard_max_1)};
    auto send = [&] {
        raw_client c{bb.port()};
        c.send(mail(1, "x"));
        return c.read_response().result_int();
    };
    EXPECT_EQ(send(), 400u);
    EXPECT_EQ(send(), 202u) << "the retry of a refused send was taken for a duplicate";
    EXPECT_NE(send(), 202u) << "a second copy of a mail that went out";
    EXPECT_EQ(up.request_count(), 2u);
}

TEST(rate_limit, upstream_429_with_retry_after_pauses_every_agent_then_resumes) {
    std::atomic<bool> limited{true};
    fake_upstream up{[&](const request&) {
        if (limited.exchange(false)) {
            auto b = respond(429, "{\"errors\":[{\"message\":\"too many requests\"}]}");
            b.res.set(http::field::retry_after, "30");
            return b;
        }
        return respond(202, "");
    }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir, pause_manual), &clock};
    auto first = http_request(bb.port(), http::verb::post, "/v3/mail/send", "{}",
                              {{"content-type", "application/json"}, {"x-campaign-id", "a"}});
    EXPECT_EQ(first.result_int(), 429u);  // the upstream's own answer is passed on
    auto paused = http_request(bb.port(), http::verb::get, "/other-route");
    EXPECT_EQ(paused.result_int(), 503u);
    EXPECT_EQ(body_field(paused, "code"), "upstream_rate_limited");
    EXPECT_EQ(paused[http::field::retry_after], "30");
    clock.advance(29s);
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/x").result_int(), 503u);
    clock.advance(2s);
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/x").result_int(), 202u);
    EXPECT_EQ(up.request_count(), 2u);
}

// A 429 whose error page is over limits.upstream_body_bytes still asks for its pause: the
// client gets breakerbox's 502 for the page, and the next request waits the Retry-After.
TEST(rate_limit, a_429_over_our_body_limit_still_pauses) {
    std::atomic<bool> limited{true};
    fake_upstream up{[&](const request&) {
        if (limited.exchange(false)) {
            auto b = respond(429, std::string(4096, 'x'));
            b.res.set(http::field::retry_after, "30");
            return b;
        }
        return respond(200, "{}");
    }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    proxy_instance bb{health_config_with_a_2048_byte_body_limit(up.port(), dir), &clock};
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/x").result_int(), 502u);
    auto paused = http_request(bb.port(), http::verb::get, "/x");
    EXPECT_EQ(paused.result_int(), 503u);
    EXPECT_EQ(body_field(paused, "code"), "upstream_rate_limited");
    clock.advance(31s);
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/x").result_int(), 200u);
    EXPECT_EQ(up.request_count(), 2u);
}

TEST(rate_limit, hubspot_remaining_zero_pauses_for_the_interval) {
    fake_upstream up{[](const request& r) {
        auto b = respond(200, "{}");
        if (r.target() == "/last") {
            b.res.set("X-HubSpot-RateLimit-Remaining", "0");
            b.res.set("X-HubSpot-RateLimit-Interval-Milliseconds", "10000");
        }
        return b;
    }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir, pause_manual), &clock};
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/last").result_int(), 200u);
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/x").result_int(), 503u);
    clock.advance(10001ms);
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/x").result_int(), 200u);
}

TEST(modes, forced_open_forced_closed_metrics_only_and_expiry) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir, pause_manual, 20), &clock};
    auto reg_ptr = bb.server().breakers();
    auto& reg = *reg_ptr;
    auto send = [&](const std::string& campaign) {
        raw_client c{bb.port()};
        c.send(mail(10, campaign));
        return c.read_response();
    };
    // forced_open: contains before any rule trips.
    ASSERT_TRUE(reg.set_mode("campaign-volume/launch", bb::breakers::mode::forced_open, 60000ms, "ops", "maintenance",
                             clock.now()));
    auto res = send("launch");
    EXPECT_EQ(res.result_int(), 503u);
    EXPECT_EQ(body_field(res, "breaker"), "campaign-volume/launch");
    // Expiry returns it to auto.
    clock.advance(61s);
    EXPECT_EQ(send("launch").result_int(), 202u);

    // metrics_only: the rule crosses but nothing is enforced.
    ASSERT_TRUE(reg.set_mode("campaign-volume/shadow", bb::breakers::mode::metrics_only, std::nullopt, "ops",
                             "trying the rule", clock.now()));
    for (int i = 0; i < 4; ++i) {
        EXPECT_EQ(send("shadow").result_int(), 202u) << i;
    }
    // forced_closed: bypass even when tripped.
    for (int i = 0; i < 3; ++i) {
        send("bypass");
    }
    ASSERT_EQ(send("bypass").result_int(), 503u);
    ASSERT_TRUE(reg.set_mode("campaign-volume/bypass", bb::breakers::mode::forced_closed, std::nullopt, "ops",
                             "known good", clock.now()));
    EXPECT_EQ(send("bypass").result_int(), 202u);
    // Back to auto: the manual-reset breaker is still open.
    ASSERT_TRUE(reg.set_mode("campaign-volume/bypass", bb::breakers::mode::automatic, std::nullopt, "ops", "done",
                             clock.now()));
    EXPECT_EQ(send("bypass").result_int(), 503u);
    // An operator reset closes it.
    ASSERT_TRUE(reg.reset("campaign-volume/bypass", "ops", "checked the segment", clock.now()));
    // The meter still holds the window's recipients, so the next big mail crosses again.
    EXPECT_EQ(send("bypass").result_int(), 503u);
}

// What an operator's metrics_only lets through over a cap still counts in the cap's window:
// set back to auto, the cap is judged against what was sent meanwhile, not against a window
// that missed it (here the sends before the shadow have left the window, the shadowed ones
// have not).
TEST(modes, sends_let_through_under_metrics_only_count_once_the_cap_is_enforced_again) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir, pause_manual, 20), &clock};
    auto reg_ptr = bb.server().breakers();
    auto send = [&] {
        raw_client c{bb.port()};
        c.send(mail(10, "s"));
        return c.read_response();
    };
    EXPECT_EQ(send().result_int(), 202u);
    EXPECT_EQ(send().result_int(), 202u);  // 20 of 20
    ASSERT_TRUE(reg_ptr->set_mode("campaign-volume/s", bb::breakers::mode::metrics_only, std::nullopt, "ops",
                                  "trying the rule", clock.now()));
    clock.advance(30min);
    EXPECT_EQ(send().result_int(), 202u);  // over the cap, let through
    EXPECT_EQ(send().result_int(), 202u);
    ASSERT_TRUE(reg_ptr->set_mode("campaign-volume/s", bb::breakers::mode::automatic, std::nullopt, "ops", "enforce",
                                  clock.now()));
    clock.advance(31min);  // the first 20 have left the 1h window; the 20 sent in shadow have not
    const auto res = send();
    EXPECT_EQ(res.result_int(), 503u) << "the window forgot the 20 sent under metrics_only";
    EXPECT_EQ(up.request_count(), 4u);
}

// A deny breaker's rule refuses single requests and trips nothing, but operators flip it
// like any other: forced_open (or a manual trip) refuses everything it covers, and
// forced_closed (e.g. a guardrail with false positives) lets violations through while the
// other rules still meter those requests: a suspended rule must not open a hole in a cap.
TEST(modes, operator_modes_on_a_deny_breaker_are_honoured_and_a_suspended_rule_hides_nothing) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string cfg = guarded_config(up.port(), dir, pause_manual + R"(, {"id": "no-pii", "action": "deny"})", 3);
    const std::string deny_rule =
        R"({"id": "no-cards", "route": "mail-send", "guard": {"pii": ["card"]}, "failure_mode": "volume-spike", "trips": "no-pii"},)";
    cfg.replace(cfg.find("\"rules\": [") + 10, 0, deny_rule);
    proxy_instance bb{cfg};
    auto& reg = *bb.server().breakers();
    const std::string card = R"(, "note": "card 4111 1111 1111 1111")";
    auto send = [&](const std::string& campaign, const std::string& extra) {
        raw_client c{bb.port()};
        c.send(mail(1, campaign, extra));
        return c.read_response();
    };
    EXPECT_EQ(send("a", card).result_int(), 403u);
    EXPECT_EQ(send("a", "").result_int(), 202u);  // 1 of 3 recipients

    // forced_closed: the card goes through, and still counts against the campaign's cap.
    ASSERT_TRUE(reg.set_mode("no-pii", bb::breakers::mode::forced_closed, std::nullopt, "ops", "false positives",
                             bb.server().now()));
    EXPECT_EQ(send("a", card).result_int(), 202u);
    EXPECT_EQ(send("a", card).result_int(), 202u);  // 3 of 3
    auto over = send("a", card);
    EXPECT_EQ(over.result_int(), 503u) << "the cap still sees requests the suspended rule let through";
    EXPECT_EQ(body_field(over, "breaker"), "campaign-volume/a");

    // forced_open: everything the deny breaker covers is refused, violation or not.
    ASSERT_TRUE(reg.set_mode("no-pii", bb::breakers::mode::forced_open, std::nullopt, "ops", "stop all mail",
                             bb.server().now()));
    auto refused = send("b", "");
    EXPECT_EQ(refused.result_int(), 403u);
    EXPECT_EQ(body_field(refused, "breaker"), "no-pii");
    ASSERT_TRUE(reg.reset("no-pii", "ops", "done", bb.server().now()));
    EXPECT_EQ(send("b", "").result_int(), 202u);
    ASSERT_TRUE(reg.manual_trip("no-pii", "ops", "again", bb.server().now()));
    EXPECT_EQ(send("b", "").result_int(), 403u);
}

// A path in another case reaches the same endpoint at most upstreams: it meets the same
// route and rules, not a catch-all route without them.
TEST(caps, a_path_in_another_case_meets_the_same_route_and_rules) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir, pause_manual, 5)};
    std::string big = mail(10, "caps");
    big.replace(big.find("/v3/mail/send"), 13, "/V3/Mail/Send");
    raw_client c{bb.port()};
    c.send(big);
    auto res = c.read_response();
    EXPECT_EQ(res.result_int(), 503u) << "10 recipients > 5 on mail-send";
    EXPECT_EQ(body_field(res, "rule"), "recipients-per-campaign");
    EXPECT_EQ(up.request_count(), 0u);
}

// The rules would read a compressed body as opaque bytes (and a guard would not see the
// card inside gzip): on a route with rules only identity bodies are accepted.
TEST(caps, a_compressed_body_on_a_route_with_rules_is_415) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir, pause_manual, 1000)};
    std::string gz = mail(1, "c");
    gz.replace(gz.find("Content-Type"), 0, "Content-Encoding: gzip\r\n");
    raw_client c{bb.port()};
    c.send(gz);
    auto res = c.read_response();
    EXPECT_EQ(res.result_int(), 415u);
    EXPECT_EQ(body_field(res, "code"), "unsupported_content_encoding");
    std::string identity = mail(1, "c");
    identity.replace(identity.find("Content-Type"), 0, "Content-Encoding: identity\r\n");
    c.send(identity);
    EXPECT_EQ(c.read_response().result_int(), 202u);
    // A route without rules forwards it as it is.
    raw_client other{bb.port()};
    other.send("POST /other HTTP/1.1\r\nHost: a\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc");
    EXPECT_EQ(other.read_response().result_int(), 202u);
    EXPECT_EQ(up.request_count(), 2u);
}

TEST(sandbox, sendgrid_body_is_rewritten_to_sandbox_mode) {
    fake_upstream up{[](const request&) { return respond(200, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir,
                                     R"({"id": "campaign-volume", "action": "sandbox", "reset": "manual"})", 10,
                                     R"("sandbox_api": "sendgrid")")};
    raw_client c{bb.port()};
    c.send(mail(10, "s"));
    EXPECT_EQ(c.read_response().result_int(), 200u);
    c.send(mail(5, "s", R"(,"mail_settings":{"footer":{"enable":true}})"));  // crosses: sandboxed
    auto res = c.read_response();
    EXPECT_EQ(res.result_int(), 200u);
    EXPECT_EQ(res["x-breakerbox-decision"], "sandboxed");
    ASSERT_EQ(up.request_count(), 2u);
    const auto reqs = up.requests();
    EXPECT_EQ(reqs[0].req.body().find("sandbox_mode"), std::string::npos);
    const auto& body = reqs[1].req.body();
    EXPECT_NE(body.find("\"mail_settings\":{\"footer\":{\"enable\":true},\"sandbox_mode\":{\"enable\":true}}"),
              std::string::npos)
        << body;
    EXPECT_EQ(reqs[1].req[http::field::content_length], std::to_string(body.size()));
}

// The mail the release tests hold: sent with `headers` beside its content type, it must be
// answered 202; its ticket ("" when it was not held, which the caller asserts against).
const std::string held_mail = R"({"personalizations":[{"to":[{"email":"a@example.com"}]}],"subject":"hi"})";
std::string hold_mail(proxy_instance& bb, std::vector<std::pair<std::string, std::string>> headers = {}) {
    headers.insert(headers.begin(), {"content-type", "application/json"});
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", held_mail, headers);
    EXPECT_EQ(res.result_int(), 202u) << res.body();
    return std::string{res["x-breakerbox-ticket"]};
}

// A request covered by an open quarantine breaker and an open sandbox breaker is held in
// its dry-run version whichever rule comes first (it was held as sent, to be released for
// real, when the quarantine's rule came first); an open pause breaker wins over a hold.
// A request both a quarantine and a sandbox apply to is held as sent, naming the sandbox:
// holding the dry run would let a release after the incident "deliver" a dry run (the mail
// lost, the record saying released). A release waits until that sandbox is over.
TEST(sandbox, quarantine_and_sandbox_together_hold_the_request_as_sent_whatever_the_order) {
    for (const bool quarantine_first : {true, false}) {
        fake_upstream up{[](const request&) { return respond(202, ""); }};
        const auto dir = temp_dir();
        const std::string q_rule =
            R"({"id": "q", "route": "mail-send", "measure": {"sum": "requests"}, "window": "1h", "limit": 1000, "failure_mode": "fm", "trips": "hold"})";
        const std::string s_rule =
            R"({"id": "s", "route": "mail-send", "measure": {"sum": "requests"}, "window": "1h", "limit": 1000, "failure_mode": "fm", "trips": "dry"})";
        const std::string p_rule =
            R"({"id": "p", "route": "mail-send", "measure": {"sum": "requests"}, "window": "1h", "limit": 1000, "failure_mode": "fm", "trips": "stop"})";
        proxy_instance bb{one_route_config(
            up.port(), dir,
            R"("failure_modes": [{"id": "fm", "title": "x", "severity": "sev2"}],)"
            R"("breakers": [{"id": "hold", "action": "quarantine", "reset": "manual"},)"
            R"({"id": "dry", "action": "sandbox", "reset": "manual"}, {"id": "stop", "action": "pause", "reset": "manual"}],)"
            R"("rules": [)" + (quarantine_first ? q_rule + "," + s_rule : s_rule + "," + q_rule) + "," + p_rule + "],")};
        auto& reg = *bb.server().breakers();
        ASSERT_TRUE(reg.manual_trip("hold", "ops", "held for review", bb.server().now()));
        ASSERT_TRUE(reg.manual_trip("dry", "ops", "dry runs only", bb.server().now()));
        const std::string& body = held_mail;
        auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", body, {{"content-type", "application/json"}});
        ASSERT_EQ(res.result_int(), 202u) << quarantine_first << res.body();
        const std::string ticket{res["x-breakerbox-ticket"]};
        ASSERT_FALSE(ticket.empty()) << quarantine_first;
        const auto held = bb.server().db()->get(ticket);
        ASSERT_TRUE(held);
        EXPECT_EQ(held->body, body) << "quarantine first: " << quarantine_first;
        EXPECT_EQ(held->sandboxed_by, "dry") << quarantine_first;
        // While the sandbox applies, a release sends nothing (a bulk release skips it).
        auto refused = bb.server().remediation().release(ticket, "ops").get();
        EXPECT_EQ(refused.code, "sandboxed") << refused.message;
        bb::store::list_filter all;
        EXPECT_EQ(bb.server().remediation().release_matching(all, 0, "ops").get().skipped, 1u);
        EXPECT_EQ(bb.server().db()->get(ticket)->state, bb::store::held_state::held);
        // With the pause breaker open too, nothing is held: 503.
        ASSERT_TRUE(reg.manual_trip("stop", "ops", "stop everything", bb.server().now()));
        auto paused = http_request(bb.port(), http::verb::post, "/v3/mail/send", body, {{"content-type", "application/json"}});
        EXPECT_EQ(paused.result_int(), 503u) << quarantine_first << paused.body();
        EXPECT_TRUE(paused["x-breakerbox-ticket"].empty());
        EXPECT_EQ(up.request_count(), 0u);
        // The sandbox over, the release is the real send, as the client sent it.
        ASSERT_TRUE(reg.reset("dry", "ops", "dry runs over", bb.server().now()));
        auto released = bb.server().remediation().release(ticket, "ops").get();
        EXPECT_TRUE(released.ok) << released.code << ": " << released.message;
        ASSERT_EQ(up.request_count(), 1u);
        EXPECT_EQ(up.requests()[0].req.body(), body);
    }
}

// A quarantine breaker "hold" and a sandbox breaker "dry" keyed by `sandbox_key`, each
// tripped by a rule of the one route that nothing crosses (an operator trips them).
std::string hold_and_sandbox_config(std::uint16_t upstream_port, const std::string& dir, const std::string& sandbox_key) {
    return one_route_config(
        upstream_port, dir,
        R"("failure_modes": [{"id": "fm", "title": "x", "severity": "sev2"}],)"
        R"("breakers": [{"id": "hold", "action": "quarantine", "reset": "manual"},)"
        R"({"id": "dry", "action": "sandbox", "reset": "manual"}],)"
        R"("rules": [{"id": "q", "route": "mail-send", "measure": {"sum": "requests"}, "window": "1h", "limit": 1000, "failure_mode": "fm", "trips": "hold"},)"
        R"({"id": "s", "route": "mail-send", "key": [")" + sandbox_key +
            R"("], "measure": {"sum": "requests"}, "window": "1h", "limit": 1000, "failure_mode": "fm", "trips": "dry"}],)");
}

// A hold that names a key's sandbox instance is not released while the breaker-wide instance
// still sandboxes the key's traffic (the key itself reset meanwhile): the live path would
// still send it as a dry run.
TEST(sandbox, a_release_waits_while_the_breaker_wide_sandbox_still_applies) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{hold_and_sandbox_config(up.port(), dir, "header:x-campaign-id")};
    auto& reg = *bb.server().breakers();
    ASSERT_TRUE(reg.manual_trip("hold", "ops", "held for review", bb.server().now()));
    ASSERT_TRUE(reg.manual_trip("dry/spring", "ops", "dry runs only", bb.server().now()));
    const std::string ticket = hold_mail(bb, {{"x-campaign-id", "spring"}});
    ASSERT_FALSE(ticket.empty());
    ASSERT_EQ(bb.server().db()->get(ticket)->sandboxed_by, "dry/spring");
    // The whole breaker forced open, the key's own trip reset: still a dry run live.
    ASSERT_TRUE(reg.set_mode("dry", bb::breakers::mode::forced_open, std::nullopt, "ops", "all dry", bb.server().now()));
    ASSERT_TRUE(reg.reset("dry/spring", "ops", "key done", bb.server().now()));
    auto refused = bb.server().remediation().release(ticket, "ops").get();
    EXPECT_EQ(refused.code, "sandboxed") << refused.message;
    EXPECT_EQ(up.request_count(), 0u) << "a real send while the breaker still sandboxes the key's traffic";
    EXPECT_EQ(bb.server().db()->get(ticket)->state, bb::store::held_state::held);
    ASSERT_TRUE(reg.set_mode("dry", bb::breakers::mode::automatic, std::nullopt, "ops", "over", bb.server().now()));
    auto released = bb.server().remediation().release(ticket, "ops").get();
    EXPECT_TRUE(released.ok) << released.code << ": " << released.message;
    EXPECT_EQ(up.request_count(), 1u);
}

// A sandbox that begins after the hold (forced open, or tripped, since) keeps the release
// from being a real send as much as one that applied at the hold: the live path would send
// the request as a dry run now. Per key too: the key's own instance, as the rules map it.
TEST(sandbox, a_release_waits_for_a_sandbox_that_began_after_the_hold) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{hold_and_sandbox_config(up.port(), dir, "header:x-campaign-id")};
    auto& reg = *bb.server().breakers();
    ASSERT_TRUE(reg.manual_trip("hold", "ops", "held for review", bb.server().now()));
    const std::string ticket = hold_mail(bb, {{"x-campaign-id", "spring"}});
    ASSERT_FALSE(ticket.empty());
    ASSERT_EQ(bb.server().db()->get(ticket)->sandboxed_by, "");
    ASSERT_TRUE(reg.manual_trip("dry/spring", "ops", "dry runs only", bb.server().now()));
    auto refused = bb.server().remediation().release(ticket, "ops").get();
    EXPECT_EQ(refused.code, "sandboxed") << refused.message;
    EXPECT_NE(refused.message.find("dry/spring"), std::string::npos) << refused.message;
    bb::store::list_filter all;
    EXPECT_EQ(bb.server().remediation().release_matching(all, 0, "ops").get().skipped, 1u);
    EXPECT_EQ(up.request_count(), 0u) << "a real send while a sandbox covers the traffic";
    // Another key's sandbox is not this request's.
    ASSERT_TRUE(reg.reset("dry/spring", "ops", "over", bb.server().now()));
    ASSERT_TRUE(reg.manual_trip("dry/autumn", "ops", "dry runs only", bb.server().now()));
    auto released = bb.server().remediation().release(ticket, "ops").get();
    EXPECT_TRUE(released.ok) << released.code << ": " << released.message;
    EXPECT_EQ(up.request_count(), 1u);
}

// The release maps the held request to breakers with the host the live path gives rules: a
// route for any host sees its upstream's host, whatever Host the client wrote.
TEST(sandbox, a_release_reads_the_host_as_the_live_path_does) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{hold_and_sandbox_config(up.port(), dir, "host")};
    auto& reg = *bb.server().breakers();
    ASSERT_TRUE(reg.manual_trip("hold", "ops", "held for review", bb.server().now()));
    const std::string ticket = hold_mail(bb, {{"host", "API.Example.com"}});
    ASSERT_FALSE(ticket.empty());
    // Live, this route's requests are keyed by its upstream's host.
    ASSERT_TRUE(reg.manual_trip("dry/127.0.0.1", "ops", "dry runs only", bb.server().now()));
    auto refused = bb.server().remediation().release(ticket, "ops").get();
    EXPECT_EQ(refused.code, "sandboxed") << refused.message;
    EXPECT_EQ(up.request_count(), 0u);
}

// And the X-Forwarded-For the live path's rules saw: the client's own, not the list with
// our element appended at the hold.
TEST(sandbox, a_release_reads_the_clients_forwarded_for) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{hold_and_sandbox_config(up.port(), dir, "header:x-forwarded-for")};
    auto& reg = *bb.server().breakers();
    ASSERT_TRUE(reg.manual_trip("hold", "ops", "held for review", bb.server().now()));
    const std::string ticket = hold_mail(bb, {{"x-forwarded-for", "10.0.0.7"}});
    ASSERT_FALSE(ticket.empty());
    ASSERT_TRUE(reg.manual_trip("dry/10.0.0.7", "ops", "dry runs only", bb.server().now()));
    auto refused = bb.server().remediation().release(ticket, "ops").get();
    EXPECT_EQ(refused.code, "sandboxed") << refused.message;
    EXPECT_EQ(up.request_count(), 0u);
}

// A hold recorded under a sandbox instance whose key had raw bytes (before keys were escaped)
// waits for that instance by its escaped name; and a hold whose route a reload removed is not
// released at all, since which sandboxes would judge it cannot be told (fail closed).
TEST(sandbox, a_release_finds_its_sandbox_by_the_escaped_name_and_needs_its_route) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    const auto cfg = hold_and_sandbox_config(up.port(), dir, "header:x-campaign-id");
    proxy_instance bb{cfg};
    auto& reg = *bb.server().breakers();
    ASSERT_TRUE(reg.manual_trip("dry/caf%E9", "ops", "dry runs only", bb.server().now()));
    bb::store::held_request held;
    held.method = "POST";
    held.target = "/v3/mail/send";
    held.headers = {{"content-type", "application/json"}};  // no key: only sandboxed_by can tell
    held.body = "{}";
    held.route = "mail-send";
    held.upstream = "sendgrid";
    held.breaker_instance = "hold";
    held.sandboxed_by = "dry/caf\xE9";
    std::promise<bb::store::result> stored;
    bb.server().db()->hold(held, [&](const bb::store::result& r) { stored.set_value(r); });
    const auto h = stored.get_future().get();
    ASSERT_TRUE(h.ok) << h.message;
    auto refused = bb.server().remediation().release(h.ticket, "ops").get();
    EXPECT_EQ(refused.code, "sandboxed") << refused.message;
    EXPECT_EQ(up.request_count(), 0u);
    ASSERT_TRUE(reg.reset("dry/caf%E9", "ops", "over", bb.server().now()));
    // The route renamed by a reload.
    std::string renamed = cfg;
    for (std::size_t at = 0; (at = renamed.find("\"mail-send\"", at)) != std::string::npos; at += 13) {
        renamed.replace(at, 11, "\"mail-sends\"");
    }
    auto next = bb::parse_config(renamed);
    ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
    bb.server().apply_config(next.cfg);
    auto gone = bb.server().remediation().release(h.ticket, "ops").get();
    EXPECT_EQ(gone.code, "invalid_state") << gone.message;
    EXPECT_NE(gone.message.find("route mail-send"), std::string::npos) << gone.message;
    EXPECT_EQ(up.request_count(), 0u);
}

// Two sandboxes applied to a held request: it names both, and a release waits until neither
// applies (the one that applied last reset first is not enough).
TEST(sandbox, a_hold_names_every_sandbox_that_applied_and_a_release_waits_for_all) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    auto rule = [](const char* id, const char* breaker) {
        return std::string{R"({"id": ")"} + id + R"(", "route": "mail-send", "measure": {"sum": "requests"}, "window": "1h", "limit": 1000, "failure_mode": "fm", "trips": ")" + breaker + R"("})";
    };
    proxy_instance bb{one_route_config(
        up.port(), dir,
        R"("failure_modes": [{"id": "fm", "title": "x", "severity": "sev2"}],)"
        R"("breakers": [{"id": "hold", "action": "quarantine", "reset": "manual"},)"
        R"({"id": "dry-a", "action": "sandbox", "reset": "manual"}, {"id": "dry-b", "action": "sandbox", "reset": "manual"}],)"
        R"("rules": [)" + rule("q", "hold") + "," + rule("a", "dry-a") + "," + rule("b", "dry-b") + "],")};
    auto& reg = *bb.server().breakers();
    for (const char* b : {"hold", "dry-a", "dry-b"}) {
        ASSERT_TRUE(reg.manual_trip(b, "ops", "test", bb.server().now()));
    }
    const std::string ticket = hold_mail(bb);
    ASSERT_FALSE(ticket.empty());
    EXPECT_EQ(bb.server().db()->get(ticket)->sandboxed_by, "dry-a\ndry-b");
    ASSERT_TRUE(reg.reset("dry-b", "ops", "b over", bb.server().now()));
    auto refused = bb.server().remediation().release(ticket, "ops").get();
    EXPECT_EQ(refused.code, "sandboxed") << refused.message;
    EXPECT_NE(refused.message.find("dry-a"), std::string::npos) << refused.message;
    EXPECT_EQ(up.request_count(), 0u) << "sent for real while dry-a still sandboxes it";
    ASSERT_TRUE(reg.reset("dry-a", "ops", "a over", bb.server().now()));
    auto released = bb.server().remediation().release(ticket, "ops").get();
    EXPECT_TRUE(released.ok) << released.code << ": " << released.message;
    EXPECT_EQ(up.request_count(), 1u);
}

TEST(sandbox, a_body_that_cannot_be_switched_to_dry_run_is_not_forwarded) {
    fake_upstream up;
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir,
                                     R"({"id": "campaign-volume", "action": "sandbox", "reset": "manual"})", 0)};
    auto reg_ptr = bb.server().breakers();
    auto& reg = *reg_ptr;
    ASSERT_TRUE(reg.manual_trip("campaign-volume/x", "ops", "test", bb.server().now()));
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", "plain text",
                            {{"content-type", "text/plain"}, {"x-campaign-id", "x"}});
    EXPECT_GE(res.result_int(), 400u) << res;
    EXPECT_NE(res["x-breakerbox-decision"], "sandboxed");
    EXPECT_EQ(up.request_count(), 0u);
}

TEST(throttle, open_throttle_breaker_lets_r_per_interval_through) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir,
                                     R"({"id": "campaign-volume", "action": "throttle", "reset": "manual",
                                         "throttle": {"requests": 2, "per": "1m"}})",
                                     0),
                      &clock};
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume/t", "ops", "slow down", clock.now()));
    int ok = 0;
    int throttled = 0;
    for (int i = 0; i < 6; ++i) {
        raw_client c{bb.port()};
        c.send(mail(0, "t"));
        auto res = c.read_response();
        if (res.result_int() == 202) {
            ++ok;
        } else if (res.result_int() == 429) {
            ++throttled;
            EXPECT_EQ(res["x-breakerbox-decision"], "throttled");
            EXPECT_FALSE(res[http::field::retry_after].empty());
        }
    }
    EXPECT_EQ(ok, 2);
    EXPECT_EQ(throttled, 4);
}

// A restart (a deploy) does not grant a throttling breaker a fresh budget: the admissions
// of the interval are saved with its state, so R in the interval stays R.
TEST(throttle, a_restart_keeps_the_admissions_of_the_interval) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    const auto cfg = guarded_config(up.port(), dir,
                                    R"({"id": "campaign-volume", "action": "throttle", "reset": "manual",
                                        "throttle": {"requests": 2, "per": "1m"}})",
                                    0);
    auto send = [&](proxy_instance& bb) {
        raw_client c{bb.port()};
        c.send(mail(0, "t"));
        return c.read_response().result_int();
    };
    {
        proxy_instance bb{cfg, &clock};
        ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume/t", "ops", "slow down", clock.now()));
        EXPECT_EQ(send(bb), 202u);
        EXPECT_EQ(send(bb), 202u);
        EXPECT_EQ(send(bb), 429u);
        // Saved within about a second, before any shutdown (a kill at the end of a drain's
        // grace period must not lose them): bounded poll of the store.
        auto saved_admissions = [&] {
            std::string err;
            const auto saved = bb.server().db()->load_breaker_state(clock, &err);
            for (const auto& i : saved ? *saved : std::vector<bb::breakers::instance_snapshot>{}) {
                if (i.instance == "campaign-volume/t") {
                    return i.throttle_admissions.size();
                }
            }
            return std::size_t{0};
        };
        for (int i = 0; i < 5000 && saved_admissions() < 2; i += 20) {
            pollfd none{};
            ::poll(&none, 0, 20);
        }
        EXPECT_EQ(saved_admissions(), 2u) << "not saved until the shutdown";
        bb.stop();
        ASSERT_EQ(bb.exit_code(), 0);
    }
    clock.advance(std::chrono::seconds{20});
    proxy_instance again{cfg, &clock};
    EXPECT_EQ(send(again), 429u) << "a fresh budget after the restart";
    clock.advance(std::chrono::seconds{41});  // a minute after the first admissions
    EXPECT_EQ(send(again), 202u);
    EXPECT_EQ(up.request_count(), 3u);
}

TEST(throttle, a_rule_that_stays_broken_does_not_take_a_second_slot_per_request) {
    // Tripped by its rule, which every request keeps breaking (each is over the cap and so
    // not counted): each request takes one slot, not one before the rules and one at the trip.
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir,
                                     R"({"id": "campaign-volume", "action": "throttle", "reset": "manual",
                                         "throttle": {"requests": 2, "per": "1m"}})",
                                     3),
                      &clock};
    std::vector<unsigned> codes;
    for (int i = 0; i < 5; ++i) {
        raw_client c{bb.port()};
        c.send(mail(5, "t"));
        codes.push_back(c.read_response().result_int());
    }
    EXPECT_EQ(codes, (std::vector<unsigned>{202, 202, 429, 429, 429}));
    EXPECT_EQ(up.request_count(), 2u);
    clock.advance(std::chrono::minutes{1});
    raw_client again{bb.port()};
    again.send(mail(5, "t"));
    EXPECT_EQ(again.read_response().result_int(), 202u) << "a new interval has its slots";
}

// A request let through on a throttle slot over its own violation is still judged by the
// other rules and counted by them: here 10-recipient mails break a per-request cap of 5
// (throttle: 10 a minute), and a campaign cap of 25 an hour behind it must still pause the
// third. (evaluate() stops at the first violation and books nothing; the request went out
// uncounted and unchecked by every later rule.)
TEST(throttle, a_request_let_through_over_its_violation_is_judged_by_the_other_rules) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    auto cfg = guarded_config(up.port(), dir,
                              R"({"id": "campaign-volume", "action": "pause", "reset": "manual"},
                                 {"id": "big-mails", "action": "throttle", "reset": "manual",
                                  "throttle": {"requests": 10, "per": "1m"}})",
                              25);
    const std::string rules = "\"rules\": [";
    ASSERT_NE(cfg.find(rules), std::string::npos);
    cfg.insert(cfg.find(rules) + rules.size(),
               R"j({"id": "recipients-per-mail", "route": "mail-send", "key": ["header:x-campaign-id"],
                   "measure": {"per_request": "count($.personalizations[*].to[*])"}, "limit": 5,
                   "failure_mode": "volume-spike", "trips": "big-mails"},)j");
    proxy_instance bb{cfg, &clock};
    std::vector<unsigned> codes;
    for (int i = 0; i < 4; ++i) {
        raw_client c{bb.port()};
        c.send(mail(10, "spring"));
        codes.push_back(c.read_response().result_int());
    }
    EXPECT_EQ(codes, (std::vector<unsigned>{202, 202, 503, 503}));
    EXPECT_EQ(up.request_count(), 2u) << "the campaign cap of 25 never saw the mails the throttle let through";
    EXPECT_EQ(bb.server().breakers()->get("campaign-volume/spring", clock.now())->st, bb::breakers::state::open);
}

TEST(durability, a_new_server_on_the_same_store_starts_with_the_breaker_open) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    {
        proxy_instance bb{guarded_config(up.port(), dir, pause_manual, 5)};
        raw_client c{bb.port()};
        c.send(mail(10, "persist"));
        ASSERT_EQ(c.read_response().result_int(), 503u);
    }
    // A new server on the same store starts with the instance still open.
    proxy_instance again{guarded_config(up.port(), dir, pause_manual, 1000000)};
    raw_client c{again.port()};
    c.send(mail(1, "persist"));
    EXPECT_EQ(c.read_response().result_int(), 503u);
    EXPECT_EQ(up.request_count(), 0u);
}

// A state file of a build before the SQLite store is adopted once, into a store that never
// saved breaker state. One left behind later (its rename failed or was lost in a crash) must
// not bring back a trip an operator reset since.
TEST(durability, a_state_file_left_behind_does_not_reopen_a_reset_breaker) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    {
        proxy_instance bb{guarded_config(up.port(), dir, pause_manual, 5)};
        raw_client c{bb.port()};
        c.send(mail(10, "stale"));
        ASSERT_EQ(c.read_response().result_int(), 503u);
        // The file an earlier build would have written at this moment.
        const auto open_now = bb.server().breakers()->snapshot(bb.server().now());
        ASSERT_EQ(open_now.size(), 1u);
        std::ofstream{dir + "/bb.breakers.json"} << bb::store::breaker_state_to_json(open_now, bb.server().time());
        ASSERT_TRUE(bb.server().breakers()->reset("campaign-volume/stale", "ops", "false alarm", bb.server().now()));
    }
    proxy_instance again{guarded_config(up.port(), dir, pause_manual, 1000000)};
    raw_client c{again.port()};
    c.send(mail(1, "stale"));
    EXPECT_EQ(c.read_response().result_int(), 202u) << "the reset breaker was reopened from the old file";
}

// A pager sink takes sev1 and sev2 only: the reset that resolves a sev2 trip goes out as
// sev2 too (without a rule of its own it would be sev3, filtered out, and the page would
// stay open, later trips folding into it under the same dedup key).
TEST(alerts, a_trip_and_a_manual_reset_reach_the_webhook_off_the_data_path) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    fake_upstream hook{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    std::string cfg = guarded_config(up.port(), dir, pause_manual, 5);
    fake_upstream low{[](const request&) { return respond(200, "ok"); }};  // sev3 only
    cfg = with_alerts(cfg, webhook_sink("hook", hook.port(), R"("sev1", "sev2")") + "," +
                               webhook_sink("low", low.port(), R"("sev3")"),
                      R"(, "initial_backoff": "10ms")");
    proxy_instance bb{cfg};
    raw_client c{bb.port()};
    c.send(mail(10, "loud"));
    ASSERT_EQ(c.read_response().result_int(), 503u);
    ASSERT_TRUE(hook.wait_for([&] { return hook.request_count() >= 1; }, 5s));
    auto reqs = hook.requests();
    EXPECT_EQ(reqs[0].req.target(), "/alerts");
    const auto& body = reqs[0].req.body();
    EXPECT_NE(body.find("\"event\":\"breaker_tripped\""), std::string::npos) << body;
    EXPECT_NE(body.find("\"severity\":\"sev2\""), std::string::npos) << body;
    EXPECT_NE(body.find("campaign-volume/loud"), std::string::npos) << body;
    EXPECT_NE(body.find("\"failure_mode\":\"volume-spike\""), std::string::npos) << body;
    ASSERT_TRUE(bb.server().breakers()->reset("campaign-volume/loud", "ops", "false alarm", bb.server().now()));
    ASSERT_TRUE(hook.wait_for([&] { return hook.request_count() >= 2; }, 5s));
    reqs = hook.requests();
    EXPECT_NE(reqs[1].req.body().find("\"event\":\"breaker_reset\""), std::string::npos) << reqs[1].req.body();
    EXPECT_NE(reqs[1].req.body().find("\"severity\":\"sev2\""), std::string::npos) << reqs[1].req.body();
    EXPECT_NE(reqs[1].req.body().find("\"resolve\":true"), std::string::npos) << reqs[1].req.body();
    // An operator's trip is sev3: its sink gets the trip and the resolve, the pager neither.
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume/quiet", "ops", "look", bb.server().now()));
    ASSERT_TRUE(bb.server().breakers()->reset("campaign-volume/quiet", "ops", "fine", bb.server().now()));
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    EXPECT_EQ(hook.request_count(), 2u);
    const auto lows = low.requests();
    ASSERT_EQ(lows.size(), 2u) << "the sev2 incident reached the sev3 sink";
    EXPECT_NE(lows[1].req.body().find("\"resolve\":true"), std::string::npos) << lows[1].req.body();
}

// A deny rule `no-cards` (card numbers in the body are refused, 403) and a webhook sink for
// sev1 and sev2 on `hook_port`.
std::string deny_cards_config(std::uint16_t upstream_port, std::uint16_t hook_port, const std::string& dir) {
    std::string cfg = guarded_config(upstream_port, dir, pause_manual + R"(, {"id": "no-pii", "action": "deny"})");
    cfg.replace(cfg.find("\"rules\": [") + 10, 0,
                R"({"id": "no-cards", "route": "mail-send", "guard": {"pii": ["card"]}, "failure_mode": "volume-spike", "trips": "no-pii"},)");
    return with_alerts(cfg, webhook_sink("pager", hook_port, R"("sev1", "sev2")"));
}

// A deny rule trips nothing, yet on-call hears of it: the first denial alerts at once (at
// the failure mode's severity, masked reason), later ones at most once a minute per rule,
// with the count since.
TEST(alerts, a_deny_rule_alerts_at_its_first_denial_and_then_once_a_minute) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    fake_upstream hook{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    bb::manual_clock clock;
    proxy_instance bb{deny_cards_config(up.port(), hook.port(), dir), &clock};
    auto send_card = [&] {
        raw_client c{bb.port()};
        c.send(mail(1, "a", R"(, "note": "card 4111 1111 1111 1111")"));
        return c.read_response().result_int();
    };
    EXPECT_EQ(send_card(), 403u);
    EXPECT_EQ(send_card(), 403u);
    EXPECT_EQ(send_card(), 403u);
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    auto reqs = hook.requests();
    ASSERT_EQ(reqs.size(), 1u) << "one alert for the first minute";
    const auto& first = reqs[0].req.body();
    EXPECT_NE(first.find("\"event\":\"rule_denied\""), std::string::npos) << first;
    EXPECT_NE(first.find("\"severity\":\"sev2\""), std::string::npos) << first;
    EXPECT_NE(first.find("rule no-cards denied 1 request(s)"), std::string::npos) << first;
    EXPECT_NE(first.find("\"dedup_key\":\"denied:no-cards\""), std::string::npos) << first;
    EXPECT_EQ(first.find("4111 1111 1111 1111"), std::string::npos) << "never the card in clear: " << first;
    // A minute on, the first denial alerts at once with the count since, or the control tick
    // tells the two before it first (whichever comes first); denials with none after them are
    // told by the tick a minute on. Either way every denial is counted once, at most one
    // alert a minute.
    auto denied = [&] {
        std::uint64_t n = 0;
        for (const auto& r : hook.requests()) {
            std::smatch m;
            const std::string body{r.req.body()};
            if (std::regex_search(body, m, std::regex{R"(denied (\d+) request)"})) {
                n += std::stoull(m[1].str());
            }
        }
        return n;
    };
    clock.advance(61s);
    EXPECT_EQ(send_card(), 403u);
    EXPECT_EQ(send_card(), 403u);
    EXPECT_EQ(send_card(), 403u);
    clock.advance(61s);
    ASSERT_TRUE(hook.wait_for([&] { return denied() >= 6; }, 5s)) << denied();
    EXPECT_EQ(denied(), 6u);
    EXPECT_EQ(hook.request_count(), 3u);
    reqs = hook.requests();
    EXPECT_NE(reqs[1].req.body().find("since its last alert"), std::string::npos) << reqs[1].req.body();
}

// Denials counted since a rule's last alert are in memory only: a shutdown alerts them
// rather than losing them.
// An instance saved under a key as it was written before keys were escaped (a raw Latin-1
// byte) comes back under the name its traffic maps to now, and still contains it.
TEST(durability, an_instance_saved_under_a_raw_key_still_contains_after_the_upgrade) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    const auto cfg = guarded_config(up.port(), dir, pause_manual);
    {
        proxy_instance before{cfg};
        // As an older version tripped it: the registry takes the name as given.
        ASSERT_TRUE(before.server().breakers()->manual_trip("campaign-volume/caf\xE9", "ops", "misfire",
                                                             before.server().now()));
    }
    proxy_instance bb{cfg};
    const auto s = bb.server().breakers()->get("campaign-volume/caf%E9", bb.server().now());
    ASSERT_TRUE(s);
    EXPECT_EQ(s->instance, "campaign-volume/caf%E9");
    EXPECT_EQ(s->st, bb::breakers::state::open);
    raw_client c{bb.port()};
    c.send("POST /v3/mail/send HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nx-campaign-id: caf\xE9\r\n"
           "Content-Length: 2\r\n\r\n{}");
    auto res = c.read_response();
    EXPECT_EQ(res.result_int(), 503u) << res.body();
    EXPECT_EQ(up.request_count(), 0u);
}

TEST(alerts, denials_not_alerted_yet_are_alerted_at_shutdown) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    fake_upstream hook{[](const request&) { return respond(200, "ok"); }};
    bb::manual_clock clock;
    proxy_instance bb{deny_cards_config(up.port(), hook.port(), temp_dir()), &clock};
    for (int i = 0; i < 3; ++i) {
        raw_client c{bb.port()};
        c.send(mail(1, "a", R"(, "note": "card 4111 1111 1111 1111")"));
        ASSERT_EQ(c.read_response().result_int(), 403u);
    }
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    ASSERT_EQ(hook.request_count(), 1u) << "the first denial, at once";
    bb.stop();
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    ASSERT_EQ(hook.request_count(), 2u) << "the two denials after it were lost at shutdown";
    EXPECT_NE(hook.requests()[1].req.body().find("denied 2 request(s)"), std::string::npos)
        << hook.requests()[1].req.body();
}

namespace {

// Per-key instances that trip at 5 recipients (pause, manual reset), a webhook sink for
// every alert, a manual clock.
struct storm_setup {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    fake_upstream hook{[](const request&) { return respond(200, "ok"); }};
    bb::manual_clock clock;
    proxy_instance bb{with_alerts(guarded_config(up.port(), temp_dir(), pause_manual, 5), webhook_sink("pager", hook.port())),
                      &clock};

    // A 10-recipient mail of this campaign: its instance trips (503).
    unsigned trip(const std::string& campaign) {
        raw_client c{bb.port()};
        c.send(mail(10, campaign));
        return c.read_response().result_int();
    }
};

}  // namespace

// A storm (one misfire opening many per-key instances) pages one by one up to 10 trips of a
// breaker a minute; the rest come as one `breaker_storm` alert from the control tick, and the
// resolves of trips never paged are not sent either.
TEST(alerts, a_storm_of_trips_pages_ten_a_minute_and_sums_up_the_rest) {
    storm_setup st;
    auto& [up, hook, clock, bb] = st;
    for (int i = 0; i < 13; ++i) {
        ASSERT_EQ(st.trip("c" + std::to_string(i)), 503u) << i;
    }
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    EXPECT_EQ(hook.request_count(), 10u);
    clock.advance(61s);
    ASSERT_TRUE(hook.wait_for([&] { return hook.request_count() >= 11; }, 5s));
    const auto storm = hook.requests()[10].req.body();
    EXPECT_NE(storm.find("\"event\":\"breaker_storm\""), std::string::npos) << storm;
    EXPECT_NE(storm.find("3 more instance(s) opened"), std::string::npos) << storm;
    // Its incident is no instance's: campaign-volume/storm is the instance of the campaign a
    // request names "storm", whose trip must page and whose reset must not resolve this.
    EXPECT_NE(storm.find("\"dedup_key\":\"storm:campaign-volume\""), std::string::npos) << storm;
    EXPECT_NE(storm.find("\"severity\":\"sev2\""), std::string::npos) << storm;
    // A trip never paged resolves silently; one paged resolves as usual; so does one held
    // back whose incident paged later (an operator's mode change).
    auto& reg = *bb.server().breakers();
    ASSERT_TRUE(reg.reset("campaign-volume/c12", "ops", "fine", bb.server().now()));
    ASSERT_TRUE(reg.reset("campaign-volume/c0", "ops", "fine", bb.server().now()));
    ASSERT_TRUE(reg.set_mode("campaign-volume/c11", bb::breakers::mode::forced_open, std::nullopt, "ops", "hold it",
                             bb.server().now()));
    ASSERT_TRUE(reg.reset("campaign-volume/c11", "ops", "fine", bb.server().now()));
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    const auto all = hook.requests();
    ASSERT_EQ(all.size(), 14u);
    EXPECT_NE(all[11].req.body().find("campaign-volume/c0"), std::string::npos) << all[11].req.body();
    EXPECT_NE(all[11].req.body().find("\"resolve\":true"), std::string::npos) << all[11].req.body();
    EXPECT_NE(all[12].req.body().find("\"event\":\"breaker_mode\""), std::string::npos) << all[12].req.body();
    EXPECT_NE(all[13].req.body().find("campaign-volume/c11"), std::string::npos) << all[13].req.body();
    EXPECT_NE(all[13].req.body().find("\"resolve\":true"), std::string::npos) << all[13].req.body();
}

// The trips a storm held back in its current minute live in memory only: a shutdown tells
// them rather than losing them (a restart brings the trips back without alerting them).
TEST(alerts, a_storms_held_back_trips_are_told_at_shutdown) {
    storm_setup st;
    auto& [up, hook, clock, bb] = st;
    for (int i = 0; i < 13; ++i) {
        ASSERT_EQ(st.trip("c" + std::to_string(i)), 503u) << i;
    }
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    ASSERT_EQ(hook.request_count(), 10u);
    bb.stop();
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    ASSERT_EQ(hook.request_count(), 11u) << "the three trips held back were lost at shutdown";
    EXPECT_NE(hook.requests()[10].req.body().find("3 more instance(s) opened"), std::string::npos)
        << hook.requests()[10].req.body();
}

// A storm that goes on across the minute: the trips held back in a minute are told by the
// next tick even though trips of the next minute keep coming (the summary used to wait for a
// quiet minute).
TEST(alerts, a_storm_that_goes_on_is_summed_up_every_minute) {
    storm_setup st;
    auto& [up, hook, clock, bb] = st;
    auto trip = [&](const std::string& campaign) { return st.trip(campaign); };
    for (int i = 0; i < 13; ++i) {
        ASSERT_EQ(trip("a" + std::to_string(i)), 503u) << i;
    }
    auto storms = [&] {
        std::vector<std::string> out;
        for (const auto& r : hook.requests()) {
            if (r.req.body().find("\"event\":\"breaker_storm\"") != std::string::npos) {
                out.push_back(std::string{r.req.body()});
            }
        }
        return out;
    };
    // Each following minute opens 11 more (at its start here): the minute before is told by
    // the next tick whether that tick comes before or after them.
    std::size_t told = 0;
    for (const char* expected : {"3 more instance(s) opened", "1 more instance(s) opened"}) {
        clock.advance(61s);
        for (int i = 0; i < 11; ++i) {
            ASSERT_EQ(trip("m" + std::to_string(told) + "-" + std::to_string(i)), 503u) << i;
        }
        ASSERT_TRUE(hook.wait_for([&] { return storms().size() > told; }, 5s)) << expected;
        EXPECT_NE(storms()[told].find(expected), std::string::npos) << storms()[told];
        ++told;
    }
    clock.advance(61s);  // the storm is over: its last minute is told
    ASSERT_TRUE(hook.wait_for([&] { return storms().size() > told; }, 5s));
    EXPECT_NE(storms()[told].find("1 more instance(s) opened"), std::string::npos) << storms()[told];
}

// A reload that merges a paged per-key instance into another (scope: breaker) leaves no
// instance that could ever resolve that page: the reload resolves it, saying why.
// Rotating a sink's webhook URL replaces the sink: the alert counts go on from where they
// were (they used to restart at 0, a counter reset to Prometheus), the old URL's counts
// included.
TEST(alerts, a_rotated_webhook_url_keeps_the_sinks_counts) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    fake_upstream hook{[](const request&) { return respond(200, "ok"); }};
    fake_upstream rotated{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    const std::string cfg = with_alerts(guarded_config(up.port(), dir, pause_manual, 5), webhook_sink("pager", hook.port()));
    proxy_instance bb{cfg};
    auto sent = [&] {
        for (const auto& st : bb.server().alert_stats()) {
            if (st.name == "pager") {
                return st.sent;
            }
        }
        return std::uint64_t{999};
    };
    raw_client c{bb.port()};
    c.send(mail(10, "c1"));
    ASSERT_EQ(c.read_response().result_int(), 503u);
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    EXPECT_EQ(sent(), 1u);
    auto next = bb::parse_config(with_alerts(guarded_config(up.port(), dir, pause_manual, 5),
                                             webhook_sink("pager", rotated.port())));
    ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
    bb.server().apply_config(next.cfg);
    EXPECT_EQ(sent(), 1u) << "the old dispatcher's count is kept";
    c.send(mail(10, "c2"));
    ASSERT_EQ(c.read_response().result_int(), 503u);
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    EXPECT_EQ(rotated.request_count(), 1u);
    EXPECT_EQ(sent(), 2u);
    // Once idle, a replaced sink goes at the next reload; its counts stay.
    bb.server().apply_config(bb::parse_config(cfg).cfg);
    bb.server().apply_config(next.cfg);
    EXPECT_EQ(sent(), 2u);
}

// A sink's private CA rotated in place (same ca_file path, new contents) is read again at a
// reload, as a listener's certificate files are: a page the old CA could not verify goes out
// once the file holds the receiver's CA.
TEST(alerts, a_reload_rereads_a_sinks_ca_file_when_its_contents_changed) {
    const std::string certs = BB_TEST_CERTS_DIR;
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    fake_upstream hook{[](const request&) { return respond(200, "ok"); }, certs + "/server.pem", certs + "/server.key"};
    const auto dir = temp_dir();
    const std::string ca = dir + "/hooks-ca.pem";
    std::filesystem::copy_file(certs + "/self-signed.pem", ca);
    const std::string cfg = with_alerts(guarded_config(up.port(), dir, pause_manual, 5),
                                        R"({"name": "pager", "type": "webhook", "url": "https://127.0.0.1:)" +
                                            std::to_string(hook.port()) + R"(/alerts", "ca_file": ")" + ca + R"("})");
    proxy_instance bb{cfg};
    auto pager = [&] {
        for (const auto& st : bb.server().alert_stats()) {
            if (st.name == "pager") {
                return st;
            }
        }
        return bb::alerts::sink_stats{};
    };
    raw_client c{bb.port()};
    c.send(mail(10, "c1"));
    ASSERT_EQ(c.read_response().result_int(), 503u);
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    EXPECT_EQ(pager().failed, 1u);
    EXPECT_NE(pager().last_error.find("not trusted"), std::string::npos) << pager().last_error;
    std::filesystem::copy_file(certs + "/ca.pem", ca, std::filesystem::copy_options::overwrite_existing);
    bb.server().apply_config(bb::parse_config(cfg).cfg);
    c.send(mail(10, "c2"));
    ASSERT_EQ(c.read_response().result_int(), 503u);
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    EXPECT_EQ(pager().sent, 1u) << "the rotated CA was not read again: " << pager().last_error;
    EXPECT_EQ(hook.request_count(), 1u);
}

// A reload that changes the alerts section (a sink added) keeps each unchanged sink's queue:
// a trigger still being retried when the breaker is reset goes out before its resolve. (A
// dispatcher built afresh by the reload sent the resolve at once while the old one retried
// the trigger, and PagerDuty kept the incident open.)
TEST(alerts, a_reload_never_lets_a_resolve_overtake_its_trigger) {
    fake_upstream up;
    std::atomic<int> seen{0};
    fake_upstream hook{[&](const request&) { return respond(seen++ == 0 ? 503 : 200, "ok"); }};
    fake_upstream chat{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    auto config_with = [&](const std::string& extra) {
        return one_route_config(up.port(), dir,
                                R"("breakers": [{"id": "a", "action": "pause", "reset": "manual"}],)"
                                R"("alerts": {"initial_backoff": "300ms", "max_backoff": "300ms", "sinks": [)"
                                R"({"name": "hook", "type": "webhook", "url": "http://127.0.0.1:)" +
                                    std::to_string(hook.port()) + R"(/hook"})" + extra + "]},");
    };
    proxy_instance bb{config_with("")};
    ASSERT_TRUE(bb.server().breakers()->manual_trip("a", "ops", "looks wrong", bb.server().now()));
    auto next = bb::parse_config(config_with(R"(, {"name": "chat", "type": "webhook", "url": "http://127.0.0.1:)" +
                                             std::to_string(chat.port()) + R"(/chat"})"));
    ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
    bb.server().apply_config(next.cfg);
    ASSERT_TRUE(bb.server().breakers()->reset("a", "ops", "false alarm", bb.server().now()));
    ASSERT_TRUE(hook.wait_for([&] { return hook.request_count() >= 3; }));
    const auto got = hook.requests();
    EXPECT_NE(got[0].req.body().find(R"("resolve":false)"), std::string::npos) << got[0].req.body();
    EXPECT_NE(got[1].req.body().find(R"("resolve":false)"), std::string::npos) << "the resolve overtook the trigger";
    EXPECT_NE(got[2].req.body().find(R"("resolve":true)"), std::string::npos) << got[2].req.body();
    ASSERT_TRUE(chat.wait_for([&] { return chat.request_count() >= 1; }));
    EXPECT_NE(chat.requests()[0].req.body().find(R"("resolve":true)"), std::string::npos)
        << "the sink added by the reload gets what comes after it";
}

TEST(alerts, a_reload_that_merges_a_paged_instance_resolves_its_page) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    fake_upstream hook{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    const std::string cfg = with_alerts(guarded_config(up.port(), dir, pause_manual, 5), webhook_sink("pager", hook.port()));
    proxy_instance bb{cfg};
    raw_client c{bb.port()};
    c.send(mail(10, "c1"));
    ASSERT_EQ(c.read_response().result_int(), 503u);
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    ASSERT_EQ(hook.request_count(), 1u);
    std::string merged = cfg;
    merged.replace(merged.find(R"("reset": "manual")"), 17, R"("reset": "manual", "scope": "breaker")");
    auto next = bb::parse_config(merged);
    ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
    bb.server().apply_config(next.cfg);
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    const auto reqs = hook.requests();
    ASSERT_EQ(reqs.size(), 2u);
    const std::string body{reqs[1].req.body()};
    EXPECT_NE(body.find("campaign-volume/c1"), std::string::npos) << body;
    EXPECT_NE(body.find("\"resolve\":true"), std::string::npos) << body;
    EXPECT_NE(body.find("merged its key"), std::string::npos) << body;
}

// An operator's forced_open leaves the state closed; its end (here: the mode expiring) is a
// mode change alone, and resolves the page it sent.
TEST(alerts, a_forced_open_that_expires_resolves_its_page) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    fake_upstream hook{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    bb::manual_clock clock;
    std::string cfg = guarded_config(up.port(), dir, pause_manual);
    cfg = with_alerts(cfg, webhook_sink("pager", hook.port()));
    proxy_instance bb{cfg, &clock};
    auto& reg = *bb.server().breakers();
    ASSERT_TRUE(reg.set_mode("campaign-volume/launch", bb::breakers::mode::forced_open, 60000ms, "ops", "maintenance",
                             clock.now()));
    clock.advance(61s);
    ASSERT_TRUE(hook.wait_for([&] { return hook.request_count() >= 2; }, 5s)) << hook.request_count();
    const auto reqs = hook.requests();
    EXPECT_NE(reqs[0].req.body().find("\"event\":\"breaker_mode\""), std::string::npos) << reqs[0].req.body();
    EXPECT_NE(reqs[1].req.body().find("\"resolve\":true"), std::string::npos) << reqs[1].req.body();
    EXPECT_NE(reqs[1].req.body().find("campaign-volume/launch"), std::string::npos) << reqs[1].req.body();
}

// The store failing is paged at once, then at most once a minute: also in the first minute of
// the clock (the steady clock starts at the host's boot: a breakerbox started with it).
TEST(alerts, store_trouble_is_paged_at_once_and_then_once_a_minute) {
    fake_upstream up;
    fake_upstream hook{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    bb::manual_clock clock;
    clock.set(bb::time_point{});  // at the steady clock's start: a host just booted
    proxy_instance bb{one_route_config(up.port(), dir,
                                       R"("alerts": {"sinks": [{"name": "hook", "type": "webhook", "url": "http://127.0.0.1:)" +
                                           std::to_string(hook.port()) + R"(/hook"}]},)"),
                      &clock};
    bb.server().report_store_trouble(bb::proxy::server::store_part::holds, "disk full");
    clock.advance(30s);
    bb.server().report_store_trouble(bb::proxy::server::store_part::holds, "disk still full");
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    ASSERT_EQ(hook.request_count(), 1u);
    EXPECT_NE(hook.requests()[0].req.body().find("\"event\":\"store_trouble\""), std::string::npos)
        << hook.requests()[0].req.body();
    EXPECT_NE(hook.requests()[0].req.body().find("disk full"), std::string::npos) << hook.requests()[0].req.body();
    clock.advance(31s);
    bb.server().report_store_trouble(bb::proxy::server::store_part::holds, "disk full again");
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    EXPECT_EQ(hook.request_count(), 2u);
}

// The page is resolved once every part of the store that failed writes again; a store that
// fails again at once is not paged again within the minute (a flapping disk pages once a
// minute, not once a write).
TEST(alerts, store_trouble_is_resolved_when_every_failed_part_writes_again) {
    using part = bb::proxy::server::store_part;
    fake_upstream up;
    fake_upstream hook{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    bb::manual_clock clock;
    proxy_instance bb{one_route_config(up.port(), dir,
                                       R"("alerts": {"sinks": [{"name": "hook", "type": "webhook", "url": "http://127.0.0.1:)" +
                                           std::to_string(hook.port()) + R"(/hook"}]},)"),
                      &clock};
    auto& srv = bb.server();
    srv.store_writes_again(part::holds);  // nothing failed: nothing to resolve
    srv.report_store_trouble(part::holds, "disk full");
    srv.report_store_trouble(part::breaker_state, "disk full");
    srv.store_writes_again(part::holds);
    ASSERT_TRUE(srv.alerts()->flush(5s));
    ASSERT_EQ(hook.request_count(), 1u) << "resolved while the breaker state still fails to save";
    srv.store_writes_again(part::breaker_state);
    srv.store_writes_again(part::breaker_state);  // once
    ASSERT_TRUE(srv.alerts()->flush(5s));
    auto reqs = hook.requests();
    ASSERT_EQ(reqs.size(), 2u);
    const std::string resolve{reqs[1].req.body()};
    EXPECT_NE(resolve.find("\"event\":\"store_trouble\""), std::string::npos) << resolve;
    EXPECT_NE(resolve.find("\"resolve\":true"), std::string::npos) << resolve;
    EXPECT_NE(resolve.find("\"dedup_key\":\"store:"), std::string::npos) << resolve;
    srv.report_store_trouble(part::holds, "disk full again");
    srv.store_writes_again(part::holds);
    ASSERT_TRUE(srv.alerts()->flush(5s));
    EXPECT_EQ(hook.request_count(), 2u) << "paged again within the minute";
    clock.advance(61s);
    srv.report_store_trouble(part::holds, "disk full once more");
    ASSERT_TRUE(srv.alerts()->flush(5s));
    reqs = hook.requests();
    ASSERT_EQ(reqs.size(), 3u);
    EXPECT_NE(reqs[2].req.body().find("disk full once more"), std::string::npos) << reqs[2].req.body();
    EXPECT_EQ(reqs[2].req.body().find("\"resolve\":true"), std::string::npos) << reqs[2].req.body();
    // Resolved, then failing again within the minute with no write since: a new incident,
    // paged by the control tick once the minute is up (it was never paged: on-call saw it
    // resolved while holds were refused).
    srv.store_writes_again(part::holds);
    ASSERT_TRUE(srv.alerts()->flush(5s));
    ASSERT_EQ(hook.request_count(), 4u) << "the resolve";
    clock.advance(5s);
    srv.report_store_trouble(part::holds, "disk full at last");
    ASSERT_TRUE(srv.alerts()->flush(5s));
    EXPECT_EQ(hook.request_count(), 4u) << "held by the minute";
    clock.advance(61s);
    EXPECT_TRUE(bb::test::wait_until([&] { return hook.request_count() >= 5u; }, 3000)) << "never paged";
    ASSERT_TRUE(srv.alerts()->flush(5s));
    reqs = hook.requests();
    ASSERT_EQ(reqs.size(), 5u);
    EXPECT_NE(reqs[4].req.body().find("disk full at last"), std::string::npos) << reqs[4].req.body();
    EXPECT_EQ(reqs[4].req.body().find("\"resolve\":true"), std::string::npos) << reqs[4].req.body();
}

// An operator's trip of a breaker that resets by itself holds as forced_open; its reset ends
// that mode too, and must resolve the page (it was sent as a mode change: a second page under
// the same dedup key).
TEST(alerts, resetting_a_manual_trip_of_a_self_resetting_breaker_resolves) {
    fake_upstream up;
    fake_upstream hook{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    proxy_instance bb{one_route_config(
        up.port(), dir,
        R"("breakers": [{"id": "auto", "action": "pause", "reset": "auto", "cooldown": "1m"}],)"
        R"("alerts": {"sinks": [{"name": "hook", "type": "webhook", "url": "http://127.0.0.1:)" +
            std::to_string(hook.port()) + R"(/hook"}]},)")};
    auto& reg = *bb.server().breakers();
    ASSERT_TRUE(reg.manual_trip("auto", "ops", "vendor incident", bb.server().now()));
    ASSERT_TRUE(reg.reset("auto", "ops", "vendor recovered", bb.server().now()));
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    const auto reqs = hook.requests();
    ASSERT_EQ(reqs.size(), 2u);
    EXPECT_NE(reqs[0].req.body().find("\"event\":\"breaker_mode\""), std::string::npos) << reqs[0].req.body();
    EXPECT_NE(reqs[0].req.body().find("\"resolve\":false"), std::string::npos) << reqs[0].req.body();
    EXPECT_NE(reqs[1].req.body().find("\"event\":\"breaker_reset\""), std::string::npos) << reqs[1].req.body();
    EXPECT_NE(reqs[1].req.body().find("\"resolve\":true"), std::string::npos) << reqs[1].req.body();
}

// A reload that changes the breakers must leave the durable state whole: the writer may
// snapshot the outgoing registry while its instances move to the new one.
// A restart with a config that lacks a breaker (an older file, a typo) must not erase that
// breaker's saved state: the kill switch comes back with the breaker, at the next start or
// at a reload that configures it again.
TEST(breakers_durable, the_state_of_a_breaker_missing_from_the_config_is_kept_until_it_returns) {
    fake_upstream up;
    const auto dir = temp_dir();
    const std::string with_extra = pause_manual + R"(, {"id": "extra", "action": "pause", "reset": "manual"})";
    {
        proxy_instance bb{guarded_config(up.port(), dir, with_extra)};
        ASSERT_TRUE(bb.server().breakers()->set_mode("extra", bb::breakers::mode::forced_open, std::nullopt, "ops",
                                                     "switched off", bb.server().now()));
        ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume/spring", "ops", "hold", bb.server().now()));
        ASSERT_TRUE(bb.server().flush_breaker_state());
    }
    {
        proxy_instance bb{guarded_config(up.port(), dir, pause_manual)};  // no "extra"
        ASSERT_TRUE(bb.server().flush_breaker_state());
        EXPECT_EQ(bb.server().breakers()->admit("campaign-volume/spring", bb.server().now()).v,
                  bb::breakers::admission::verdict::contain);
        // A reload that configures it again brings its state back at once.
        auto next = bb::parse_config(guarded_config(up.port(), dir, with_extra));
        ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
        bb.server().apply_config(next.cfg);
        auto extra = bb.server().breakers()->get("extra", bb.server().now());
        ASSERT_TRUE(extra);
        EXPECT_EQ(extra->md, bb::breakers::mode::forced_open);
        EXPECT_EQ(bb.server().breakers()->admit("extra", bb.server().now()).v,
                  bb::breakers::admission::verdict::contain);
        // And back without it: still kept.
        auto without = bb::parse_config(guarded_config(up.port(), dir, pause_manual));
        ASSERT_TRUE(without.errors.empty());
        bb.server().apply_config(without.cfg);
        ASSERT_TRUE(bb.server().flush_breaker_state());
    }
    proxy_instance again{guarded_config(up.port(), dir, with_extra)};
    auto extra = again.server().breakers()->get("extra", again.server().now());
    ASSERT_TRUE(extra) << "the kill switch was erased by a start without its breaker";
    EXPECT_EQ(extra->md, bb::breakers::mode::forced_open);
    EXPECT_EQ(again.server().breakers()->admit("extra", again.server().now()).v,
              bb::breakers::admission::verdict::contain);
}

// A run whose config has no breaker (and no admin API) does not open the store. A reload
// that brings breakers opens it then: what the store kept of them from an earlier run (an
// operator's trip) holds at once, not "all closed", and new trips are saved.
TEST(breakers_durable, the_first_breakers_of_a_run_come_with_their_saved_state) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    {
        proxy_instance bb{guarded_config(up.port(), dir, pause_manual)};
        ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume/spring", "ops", "hold", bb.server().now()));
        ASSERT_TRUE(bb.server().flush_breaker_state());
    }
    const std::string plain = one_route_config(up.port(), dir);  // no breaker, no admin API
    proxy_instance bb{plain};
    ASSERT_EQ(bb.server().db(), nullptr) << "the premise: a run without breakers opens no store";
    {
        raw_client c{bb.port()};
        c.send(mail(1, "spring"));
        ASSERT_EQ(c.read_response().result_int(), 202u);
    }
    auto next = bb::parse_config(guarded_config(up.port(), dir, pause_manual));
    ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
    bb.server().apply_config(next.cfg);
    ASSERT_NE(bb.server().db(), nullptr);
    EXPECT_EQ(bb.server().breakers()->admit("campaign-volume/spring", bb.server().now()).v,
              bb::breakers::admission::verdict::contain)
        << "the operator's trip from the earlier run was lost: the breaker reopened";
    {
        raw_client c{bb.port()};
        c.send(mail(1, "spring"));
        EXPECT_EQ(c.read_response().result_int(), 503u);
    }
    const auto before = up.request_count();
    // A trip now is saved like any other.
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume/autumn", "ops", "hold", bb.server().now()));
    ASSERT_TRUE(bb.server().flush_breaker_state());
    std::string err;
    auto saved = bb.server().db()->load_breaker_state(bb.server().time(), &err);
    ASSERT_TRUE(saved) << err;
    std::set<std::string> names;
    for (const auto& s : *saved) {
        names.insert(s.instance);
    }
    EXPECT_TRUE(names.count("campaign-volume/spring"));
    EXPECT_TRUE(names.count("campaign-volume/autumn"));
    EXPECT_EQ(up.request_count(), before);
}

// A run whose store is open from the start (the admin API's) but whose config has no rules:
// the reload that brings the rules also brings the counts the store kept of them. It used to
// restore them only when that reload opened the store itself, so here every cap started at 0.
TEST(breakers_durable, the_first_rules_of_a_run_come_with_their_saved_counts) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    {
        proxy_instance bb{guarded_config(up.port(), dir, pause_manual, 5)};
        raw_client c{bb.port()};
        c.send(mail(4, "spring"));
        ASSERT_EQ(c.read_response().result_int(), 202u);
    }  // stopping saves the counts
    const std::string admin = R"("admin": {"address": "127.0.0.1:0", "tokens": [{"name": "ada", "sha256": ")" +
                              bb::sha256_hex("admin-token") + R"(", "role": "admin"}]},)";
    proxy_instance bb{one_route_config(up.port(), dir, admin)};
    ASSERT_NE(bb.server().db(), nullptr) << "the premise: the admin API opens the store at the start";
    std::string with_rules = guarded_config(up.port(), dir, pause_manual, 5);
    with_rules.insert(1, admin);
    auto next = bb::parse_config(with_rules);
    ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
    bb.server().apply_config(next.cfg);
    raw_client c{bb.port()};
    c.send(mail(2, "spring"));
    EXPECT_EQ(c.read_response().result_int(), 503u) << "4 + 2 recipients > 5: the earlier run's 4 were lost";
}

// An instance a rule opened, whose cooldown ended while breakerbox ran without its breaker,
// is restored by the reload that brings it as at a start: a whole cooldown from then, not a
// probe at once (a probe may have gone out just before the earlier run stopped).
TEST(breakers_durable, the_first_breakers_of_a_run_get_a_fresh_cooldown_as_at_a_start) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    const std::string pause_auto = R"({"id": "campaign-volume", "action": "pause", "cooldown": "30s"})";
    {
        proxy_instance bb{guarded_config(up.port(), dir, pause_auto, 25), &clock};
        raw_client c{bb.port()};
        for (int i = 0; i < 3; ++i) {
            c.send(mail(10, "spring"));
            ASSERT_EQ(c.read_response().result_int(), i < 2 ? 202u : 503u) << i;
        }
        ASSERT_TRUE(bb.server().flush_breaker_state());
    }
    proxy_instance bb{one_route_config(up.port(), dir), &clock};
    ASSERT_EQ(bb.server().db(), nullptr);
    clock.advance(1min);
    auto next = bb::parse_config(guarded_config(up.port(), dir, pause_auto, 25));
    ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
    bb.server().apply_config(next.cfg);
    auto& reg = *bb.server().breakers();
    EXPECT_EQ(reg.admit("campaign-volume/spring", bb.server().now()).v, bb::breakers::admission::verdict::contain)
        << "probed at once: the cooldown that ended while it was not running was taken as served";
    clock.advance(31s);
    reg.tick(bb.server().now());
    EXPECT_EQ(reg.admit("campaign-volume/spring", bb.server().now()).v, bb::breakers::admission::verdict::probe);
}

// If that store cannot be opened (here: another process holds it), the reload is refused
// whole: no breaker runs unsaved and without what the store kept.
TEST(breakers_durable, a_reload_whose_first_breakers_cannot_open_the_store_is_refused) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    const std::string plain = one_route_config(up.port(), dir);  // no breaker, no admin API
    proxy_instance bb{plain};
    bb::real_clock clock;
    std::string error;
    bb::store::store_options so;
    so.path = dir + "/bb.db";
    auto holder = bb::store::database::open(so, clock, &error);
    ASSERT_TRUE(holder) << error;
    auto next = bb::parse_config(guarded_config(up.port(), dir, pause_manual));
    ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
    EXPECT_THROW(bb.server().apply_config(next.cfg), std::runtime_error);
    EXPECT_EQ(bb.server().db(), nullptr);
    EXPECT_TRUE(bb.server().current_config()->breakers.empty()) << "applied without its store";
    holder.reset();
    // Once the store is free the same reload goes through.
    bb.server().apply_config(next.cfg);
    EXPECT_NE(bb.server().db(), nullptr);
    EXPECT_FALSE(bb.server().current_config()->breakers.empty());
}

// Requests still finishing on the config a reload replaced can trip or reset a breaker that
// reload dropped (an operator's call can race it too). What they do is the breaker's state:
// saved, and what a later reload that configures the breaker again (a rollback) finds. It
// used to be lost: the kept copy was taken at the reload, and the old registry's later
// changes went with it, so a reset came back tripped and a trip came back closed.
TEST(breakers_durable, a_dropped_breaker_keeps_what_requests_on_the_old_config_do) {
    fake_upstream up;
    const auto dir = temp_dir();
    const std::string with_extra = pause_manual + R"(, {"id": "extra", "action": "pause", "reset": "manual"})";
    proxy_instance bb{guarded_config(up.port(), dir, with_extra)};
    auto saved_names = [&] {
        EXPECT_TRUE(bb.server().flush_breaker_state());
        std::string err;
        auto saved = bb.server().db()->load_breaker_state(bb.server().time(), &err);
        EXPECT_TRUE(saved) << err;
        std::set<std::string> names;
        for (const auto& s : saved.value_or(std::vector<bb::breakers::instance_snapshot>{})) {
            names.insert(s.instance);
        }
        return names;
    };
    auto apply = [&](const std::string& breakers) {
        auto next = bb::parse_config(guarded_config(up.port(), dir, breakers));
        ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
        bb.server().apply_config(next.cfg);
    };
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume/spring", "ops", "hold", bb.server().now()));
    {
        auto old = bb.server().breakers();  // what a request on this config holds
        apply(pause_manual);                // drops "extra"
        ASSERT_TRUE(old->manual_trip("extra", "ops", "stop the agent", bb.server().now()));
        EXPECT_TRUE(saved_names().count("extra")) << "a trip made after the reload was not saved";
        EXPECT_TRUE(old->reset("extra", "ops", "false alarm", bb.server().now()));
        EXPECT_FALSE(saved_names().count("extra")) << "the reset was lost: the copy taken at the reload was saved";
        ASSERT_TRUE(old->manual_trip("extra", "ops", "stop it after all", bb.server().now()));
        // A rollback configures it again while that request still runs: it gets the trip, and
        // what the old request does from then on reaches it.
        apply(with_extra);
        EXPECT_EQ(bb.server().breakers()->admit("extra", bb.server().now()).v,
                  bb::breakers::admission::verdict::contain)
            << "the trip made after the first reload was lost";
        EXPECT_TRUE(old->reset("extra", "ops", "done", bb.server().now()));
        EXPECT_EQ(bb.server().breakers()->admit("extra", bb.server().now()).v,
                  bb::breakers::admission::verdict::allow)
            << "the old request's reset did not reach the breaker configured again";
        ASSERT_TRUE(old->manual_trip("extra", "ops", "once more", bb.server().now()));
        apply(pause_manual);  // dropped again, while the oldest request still runs
    }
    // That request is gone: what it left is kept, and comes back with the breaker.
    const auto names = saved_names();
    EXPECT_TRUE(names.count("extra"));
    EXPECT_TRUE(names.count("campaign-volume/spring"));
    apply(with_extra);
    EXPECT_EQ(bb.server().breakers()->admit("extra", bb.server().now()).v, bb::breakers::admission::verdict::contain);
}

TEST(breakers_durable, a_reload_that_changes_breakers_keeps_tripped_ones_on_disk) {
    fake_upstream up;
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir, pause_manual)};
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume/spring", "ops", "hold it", bb.server().now()));
    ASSERT_TRUE(bb.server().breakers()->set_mode("campaign-volume/autumn", bb::breakers::mode::forced_open, std::nullopt,
                                                 "ops", "hold that too", bb.server().now()));
    ASSERT_TRUE(bb.server().flush_breaker_state());
    // Same breaker with another cooldown, plus a new one: a new registry takes over.
    auto next = bb::parse_config(guarded_config(
        up.port(), dir, R"({"id": "campaign-volume", "action": "pause", "reset": "manual", "cooldown": "45s"}, {"id": "extra", "action": "pause"})"));
    ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
    bb.server().apply_config(next.cfg);
    ASSERT_TRUE(bb.server().flush_breaker_state());
    std::string err;
    auto saved = bb.server().db()->load_breaker_state(bb.server().time(), &err);
    ASSERT_TRUE(saved) << err;
    std::set<std::string> names;
    for (const auto& s : *saved) {
        names.insert(s.instance);
    }
    EXPECT_TRUE(names.count("campaign-volume/spring")) << "tripped breaker lost from the store by a reload";
    EXPECT_TRUE(names.count("campaign-volume/autumn"));
    EXPECT_EQ(bb.server().breakers()->admit("campaign-volume/spring", bb.server().now()).v,
              bb::breakers::admission::verdict::contain);
}

// A reload that changes `alerts` (a rotated webhook URL, say) takes effect: the next trip's
// alert goes to the new sink, none to the old one (the dispatcher was built once, at start).
TEST(alerts, a_reload_that_changes_the_sinks_takes_effect) {
    fake_upstream up;
    fake_upstream old_hook{[](const request&) { return respond(200, "ok"); }};
    fake_upstream new_hook{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    auto config_with = [&](const fake_upstream& hook) {
        return one_route_config(up.port(), dir,
                                R"("breakers": [{"id": "a", "action": "pause", "reset": "manual"},)"
                                R"({"id": "b", "action": "pause", "reset": "manual"}],)"
                                R"("alerts": {"sinks": [{"name": "hook", "type": "webhook", "url": "http://127.0.0.1:)" +
                                    std::to_string(hook.port()) + R"(/hook"}]},)");
    };
    proxy_instance bb{config_with(old_hook)};
    ASSERT_TRUE(bb.server().breakers()->manual_trip("a", "ops", "first", bb.server().now()));
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    EXPECT_EQ(old_hook.request_count(), 1u);
    auto next = bb::parse_config(config_with(new_hook));
    ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
    bb.server().apply_config(next.cfg);
    ASSERT_TRUE(bb.server().breakers()->manual_trip("b", "ops", "second", bb.server().now()));
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    ASSERT_EQ(new_hook.request_count(), 1u);
    EXPECT_NE(new_hook.requests()[0].req.body().find("second"), std::string::npos);
    EXPECT_EQ(old_hook.request_count(), 1u) << "the old URL got the new trip";
    // Without sinks, nothing is dispatched.
    auto none = bb::parse_config(one_route_config(up.port(), dir,
                                                  R"("breakers": [{"id": "a", "action": "pause", "reset": "manual"},)"
                                                  R"({"id": "b", "action": "pause", "reset": "manual"}],)"));
    ASSERT_TRUE(none.errors.empty()) << none.errors.to_string();
    bb.server().apply_config(none.cfg);
    EXPECT_EQ(bb.server().alerts(), nullptr);
}

// A trip right before shutdown is alerted before the process goes (a restart restores the
// trip without alerting it again): the receiver's first answer is a 503, and the retry
// still happens while the server shuts down.
TEST(alerts, a_trip_right_before_shutdown_is_still_delivered) {
    fake_upstream up;
    std::atomic<int> seen{0};
    fake_upstream hook{[&](const request&) { return respond(seen++ == 0 ? 503 : 200, "ok"); }};
    const auto dir = temp_dir();
    {
        proxy_instance bb{one_route_config(
            up.port(), dir,
            R"("breakers": [{"id": "a", "action": "pause", "reset": "manual"}],)"
            R"("alerts": {"sinks": [{"name": "hook", "type": "webhook", "url": "http://127.0.0.1:)" +
                std::to_string(hook.port()) + R"(/hook"}], "initial_backoff": "10ms"},)")};
        ASSERT_TRUE(bb.server().breakers()->manual_trip("a", "ops", "just before the deploy", bb.server().now()));
    }
    EXPECT_EQ(hook.request_count(), 2u) << "the retry was dropped at shutdown";
}

// An incident open across a restart paged sinks this process never knew of (the severities
// are kept in memory): its resolve goes to every sink, also after a later alert of its own
// (an operator's mode change is sev3), or a pager taking sev2 only kept its page open.
TEST(alerts, an_incident_open_across_a_restart_resolves_on_every_sink) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    fake_upstream pager{[](const request&) { return respond(200, "ok"); }};
    fake_upstream chat{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    const std::string cfg = with_alerts(guarded_config(up.port(), dir, pause_manual, 5),
                                        webhook_sink("pager", pager.port(), R"("sev2")") + "," +
                                            webhook_sink("chat", chat.port()));
    {
        proxy_instance bb{cfg};
        raw_client c{bb.port()};
        c.send(mail(10, "spring"));
        ASSERT_EQ(c.read_response().result_int(), 503u);
        ASSERT_TRUE(bb.server().alerts()->flush(5s));
        ASSERT_EQ(pager.request_count(), 1u) << "the sev2 trip paged";
    }
    proxy_instance bb{cfg};
    auto& reg = *bb.server().breakers();
    const std::string instance = "campaign-volume/spring";
    ASSERT_TRUE(reg.set_mode(instance, bb::breakers::mode::metrics_only, std::nullopt, "ops", "look", bb.server().now()));
    ASSERT_TRUE(reg.set_mode(instance, bb::breakers::mode::automatic, std::nullopt, "ops", "done", bb.server().now()));
    ASSERT_TRUE(reg.reset(instance, "ops", "fixed", bb.server().now()));
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    const auto paged = pager.requests();
    ASSERT_GE(paged.size(), 3u);
    // At start the instance restored open pages again (the page before the restart may never
    // have gone out); PagerDuty folds it into the open incident by its dedup key.
    EXPECT_NE(paged[1].req.body().find("\"event\":\"breaker_restored_open\""), std::string::npos)
        << paged[1].req.body();
    EXPECT_NE(paged[1].req.body().find("\"dedup_key\":\"campaign-volume/spring\""), std::string::npos)
        << paged[1].req.body();
    EXPECT_NE(paged.back().req.body().find("\"event\":\"breaker_reset\""), std::string::npos)
        << "the pager got no resolve of what it paged before the restart: " << paged.back().req.body();
    EXPECT_GE(chat.request_count(), 3u);
}

// A trip whose page never went out (the process died first, or the sink was down until the
// restart dropped its queue) is paged at the next start, while the breaker is still open:
// the traffic it holds back is not contained with nobody told. Per-key instances page one by
// one up to ten per breaker; the rest come as the breaker's storm alert.
TEST(alerts, a_breaker_restored_open_pages_again_at_start) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    fake_upstream pager{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    {
        // No sinks: the trips page nobody (as if the pages were lost).
        proxy_instance bb{guarded_config(up.port(), dir, pause_manual, 5)};
        for (int i = 0; i < 12; ++i) {
            raw_client c{bb.port()};
            c.send(mail(10, "campaign-" + std::to_string(i)));
            ASSERT_EQ(c.read_response().result_int(), 503u) << i;
        }
    }
    proxy_instance bb{with_alerts(guarded_config(up.port(), dir, pause_manual, 5),
                                  webhook_sink("pager", pager.port(), R"("sev2")"))};
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    const auto paged = pager.requests();
    ASSERT_EQ(paged.size(), 11u) << "ten one by one, and at once one alert for the other two";
    for (std::size_t i = 0; i < 10; ++i) {
        const auto& body = paged[i].req.body();
        EXPECT_NE(body.find("\"event\":\"breaker_restored_open\""), std::string::npos) << body;
        EXPECT_NE(body.find("\"severity\":\"sev2\""), std::string::npos) << "the rule's failure mode";
        EXPECT_NE(body.find("still open after a restart"), std::string::npos) << body;
    }
    const auto& storm = paged[10].req.body();
    EXPECT_NE(storm.find("\"event\":\"breaker_storm\""), std::string::npos) << storm;
    EXPECT_NE(storm.find("2 more instance(s) still open after a restart"), std::string::npos) << storm;
    // The restored pages take none of the first minute's room: a new trip pages at once.
    raw_client c{bb.port()};
    c.send(mail(10, "fresh"));
    ASSERT_EQ(c.read_response().result_int(), 503u);
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    ASSERT_EQ(pager.request_count(), 12u);
    EXPECT_NE(pager.requests()[11].req.body().find("\"event\":\"breaker_tripped\""), std::string::npos);
}

// Fourteen per-key instances tripped by a process with no sinks, then restored open by a
// start with a webhook and a chat sink: ten told one by one, four in one storm alert.
struct restored_storm {
    static constexpr int instances = 14;
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    fake_upstream hook{[](const request&) { return respond(200, "ok"); }};
    fake_upstream chat{[](const request&) { return respond(200, "ok"); }};
    const std::string dir = temp_dir();
    const std::string sinks = webhook_sink("hook", hook.port()) +
                              R"(, {"name": "chat", "type": "slack", "url": "http://127.0.0.1:)" +
                              std::to_string(chat.port()) + R"(/chat"})";
    std::unique_ptr<proxy_instance> bb;

    restored_storm() {
        {
            proxy_instance first{guarded_config(up.port(), dir, pause_manual, 5)};
            for (int i = 0; i < instances; ++i) {
                raw_client c{first.port()};
                c.send(mail(10, "campaign-" + std::to_string(i)));
                EXPECT_EQ(c.read_response().result_int(), 503u) << i;
            }
        }
        bb = std::make_unique<proxy_instance>(with_alerts(guarded_config(up.port(), dir, pause_manual, 5), sinks));
        EXPECT_TRUE(bb->server().alerts()->flush(5s));
        EXPECT_EQ(chat.request_count(), 11u) << "ten one by one, one for the other four";
    }
};

// A storm restored open closes: every instance's resolve goes to the webhook (an incident
// its trip opened before the restart may still be open there), but a chat sink gets a line
// only for the instances it was told of one by one at the start, not one per instance of
// the storm counted in one alert.
TEST(alerts, a_restored_storm_closing_does_not_flood_chat) {
    restored_storm s;
    auto& srv = s.bb->server();
    for (const auto& b : srv.breakers()->snapshot(srv.now())) {
        if (b.instance != b.breaker && b.containing()) {
            ASSERT_TRUE(srv.breakers()->reset(b.instance, "ops", "false alarm", srv.now())) << b.instance;
        }
    }
    ASSERT_TRUE(srv.alerts()->flush(5s));
    EXPECT_EQ(s.hook.request_count(), 11u + restored_storm::instances) << "a resolve per instance";
    EXPECT_EQ(s.chat.request_count(), 11u + 10u) << "a line per instance told of one by one, none for the rest";
}

// The same storm's breaker dropped by a reload: its instances' resolves follow the same
// rule (they went to every chat sink, one line each, behind which a sev1 would wait).
TEST(alerts, a_restored_storm_dropped_by_a_reload_does_not_flood_chat) {
    restored_storm s;
    std::string renamed = with_alerts(guarded_config(s.up.port(), s.dir, pause_manual, 5), s.sinks);
    for (auto at = renamed.find("\"campaign-volume\""); at != std::string::npos; at = renamed.find("\"campaign-volume\"")) {
        renamed.replace(at, 17, "\"campaign-volume-2\"");
    }
    auto next = bb::parse_config(renamed);
    ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
    auto& srv = s.bb->server();
    srv.apply_config(next.cfg);
    ASSERT_TRUE(srv.alerts()->flush(5s));
    EXPECT_EQ(s.hook.request_count(), 11u + restored_storm::instances) << "a resolve per instance";
    EXPECT_EQ(s.chat.request_count(), 11u + 10u) << "a line per instance told of one by one, none for the rest";
}

// A breaker the running config lacks keeps its state in the store, not enforced; the reload
// that configures it again restores it, and pages it then, to the sinks of that config (here
// the first sink arrives with the same reload).
TEST(alerts, a_breaker_configured_again_by_a_reload_pages_what_it_restored_open) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    fake_upstream pager{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    {
        proxy_instance bb{guarded_config(up.port(), dir, pause_manual, 5)};
        raw_client c{bb.port()};
        c.send(mail(10, "spring"));
        ASSERT_EQ(c.read_response().result_int(), 503u);
    }
    proxy_instance bb{one_route_config(up.port(), dir)};  // no breakers, no sinks
    const auto again = bb::parse_config(with_alerts(guarded_config(up.port(), dir, pause_manual, 5),
                                                    webhook_sink("pager", pager.port())));
    ASSERT_TRUE(again.errors.empty()) << again.errors.to_string();
    bb.server().apply_config(again.cfg);
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    ASSERT_EQ(pager.request_count(), 1u);
    const auto body = pager.requests()[0].req.body();
    EXPECT_NE(body.find("\"event\":\"breaker_restored_open\""), std::string::npos) << body;
    EXPECT_NE(body.find("campaign-volume/spring is still open after a reload configured it again"), std::string::npos)
        << body;
}

// Within one process: a reload that drops a tripped breaker resolves its incident (its state
// kept, not enforced); the reload that configures it again brings it back open and pages it
// again, or traffic is contained with on-call believing it resolved.
TEST(alerts, a_breaker_dropped_and_configured_again_pages_what_comes_back_open) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    fake_upstream pager{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    const std::string with = with_alerts(guarded_config(up.port(), dir, pause_manual, 5), webhook_sink("pager", pager.port()));
    proxy_instance bb{with};
    raw_client c{bb.port()};
    c.send(mail(10, "spring"));
    ASSERT_EQ(c.read_response().result_int(), 503u);
    const auto without = bb::parse_config(with_alerts(one_route_config(up.port(), dir), webhook_sink("pager", pager.port())));
    ASSERT_TRUE(without.errors.empty()) << without.errors.to_string();
    bb.server().apply_config(without.cfg);
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    const auto before = pager.request_count();
    ASSERT_GE(before, 2u) << "the trip, and its resolve when the reload dropped the breaker";
    const auto again = bb::parse_config(with);
    ASSERT_TRUE(again.errors.empty()) << again.errors.to_string();
    bb.server().apply_config(again.cfg);
    ASSERT_TRUE(bb.server().alerts()->flush(5s));
    ASSERT_EQ(pager.request_count(), before + 1) << "nobody was paged of the breaker back open";
    const auto body = pager.requests().back().req.body();
    EXPECT_NE(body.find("\"event\":\"breaker_restored_open\""), std::string::npos) << body;
    EXPECT_NE(body.find("campaign-volume/spring is still open after a reload configured it again"), std::string::npos)
        << body;
    raw_client d{bb.port()};
    d.send(mail(1, "spring"));
    EXPECT_EQ(d.read_response().result_int(), 503u) << "back open, enforced";
}

// A rule that names a host (however the config spells it), or is keyed by it, sees one host
// however the client spells it:
// `API.SendGrid.com`, `api.sendgrid.com.` and `api.sendgrid.com:443` are api.sendgrid.com
// to DNS and to the upstream (the route took them all), so none slips past the rule or
// gets a cap of its own. On a route for any host the rule sees the route's upstream, where
// the request goes, whatever Host the client wrote: a Host of its choosing does not step
// past the rule or open a budget of its own.
TEST(breakers, a_rule_on_a_host_sees_every_spelling_of_it) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto rule = [](const std::string& match) {
        return "\"failure_modes\": [{\"id\": \"volume-spike\", \"title\": \"Send volume spike\", \"severity\": \"sev2\"}],"
               "\"breakers\": [{\"id\": \"per-host\", \"action\": \"deny\"}],"
               "\"rules\": [{\"id\": \"per-host\", \"route\": \"mail-send\"" + match + ","
               " \"key\": [\"host\"], \"measure\": {\"sum\": \"count($.to[*])\"}, \"window\": \"1h\", \"limit\": 2,"
               " \"failure_mode\": \"volume-spike\", \"trips\": \"per-host\"}],";
    };
    auto send_as = [&](std::uint16_t port, const std::string& host) {
        raw_client c{port};
        const std::string body = R"({"to":[1]})";
        c.send("POST /v3/mail/send HTTP/1.1\r\nHost: " + host + "\r\nContent-Type: application/json\r\nContent-Length: " +
               std::to_string(body.size()) + "\r\n\r\n" + body);
        return c.read_response().result_int();
    };
    {
        std::string cfg = one_route_config(up.port(), temp_dir(), rule(R"(, "match": {"host": "API.SendGrid.com."})"));
        cfg.replace(cfg.find(R"("match": {"path_prefix": "/"})"), 29,
                    R"("match": {"host": "api.sendgrid.com", "path_prefix": "/"})");
        proxy_instance bb{cfg};
        EXPECT_EQ(send_as(bb.port(), "API.SendGrid.com"), 202u);
        EXPECT_EQ(send_as(bb.port(), "api.sendgrid.com."), 202u);
        EXPECT_EQ(send_as(bb.port(), "api.sendgrid.com:443"), 403u) << "the third recipient to one host crosses the limit of 2";
        EXPECT_EQ(send_as(bb.port(), "Api.Sendgrid.Com.:443"), 403u);
        EXPECT_EQ(send_as(bb.port(), "other.example"), 404u) << "no route takes another host";
        EXPECT_EQ(up.request_count(), 2u);
    }
    // A route for any host: every Host is the upstream's (127.0.0.1 here), one budget.
    proxy_instance bb{one_route_config(up.port(), temp_dir(), rule(""))};
    EXPECT_EQ(send_as(bb.port(), "a.example"), 202u);
    EXPECT_EQ(send_as(bb.port(), "b.example"), 202u);
    EXPECT_EQ(send_as(bb.port(), "c.example"), 403u) << "a Host of the client's own opened a budget of its own";
    EXPECT_EQ(up.request_count(), 4u);
}

// Two rules trip one breaker: a request asks that breaker once. Asked once per rule, the
// half-open breaker's one probe went to the first ask and the second contained the request
// (its own probe), every time: the breaker never closed.
TEST(breakers, a_breaker_two_rules_trip_is_asked_once_per_request) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    bb::manual_clock clock;
    const auto dir = temp_dir();
    proxy_instance bb{one_route_config(
        up.port(), dir,
        "\"failure_modes\": [{\"id\": \"volume-spike\", \"title\": \"Send volume spike\", \"severity\": \"sev2\"}],"
        "\"breakers\": [{\"id\": \"shared\", \"action\": \"pause\", \"reset\": \"auto\", \"cooldown\": \"10s\", \"scope\": \"breaker\","
        " \"half_open_probes\": 1}],"
        "\"rules\": [{\"id\": \"per-campaign\", \"route\": \"mail-send\", \"key\": [\"header:x-campaign-id\"],"
        " \"measure\": {\"sum\": \"count($.to[*])\"}, \"window\": \"1h\", \"limit\": 2,"
        " \"failure_mode\": \"volume-spike\", \"trips\": \"shared\"},"
        "{\"id\": \"overall\", \"route\": \"mail-send\", \"measure\": {\"sum\": \"count($.to[*])\"}, \"window\": \"1h\","
        " \"limit\": 1000, \"failure_mode\": \"volume-spike\", \"trips\": \"shared\"}],"),
        &clock};
    auto send = [&](const std::string& campaign) {
        return http_request(bb.port(), http::verb::post, "/v3/mail/send", R"({"to":[1]})",
                            {{"content-type", "application/json"}, {"x-campaign-id", campaign}})
            .result_int();
    };
    EXPECT_EQ(send("a"), 202u);
    EXPECT_EQ(send("a"), 202u);
    EXPECT_EQ(send("a"), 503u) << "crosses per-campaign: shared opens";
    EXPECT_EQ(send("b"), 503u);
    clock.advance(11s);
    EXPECT_EQ(send("b"), 202u) << "the half-open probe goes";
    EXPECT_EQ(send("b"), 202u) << "and closed the breaker";
    EXPECT_EQ(up.request_count(), 4u);
}

// An operator's trip of one key is enforced while the whole breaker is in a shadow mode
// (an apply with metrics_only left it there, say): the trip answered 200 and named the key
// open, so its traffic must stop; the other keys stay shadowed.
TEST(breakers, a_keys_manual_trip_is_enforced_under_a_breaker_wide_shadow_mode) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{guarded_config(up.port(), dir,
                                     R"({"id": "campaign-volume", "action": "pause", "reset": "manual", "scope": "key"})")};
    auto& reg = *bb.server().breakers();
    auto send = [&](const std::string& campaign) {
        return http_request(bb.port(), http::verb::post, "/v3/mail/send",
                            R"({"personalizations":[{"to":[{"email":"a@example.com"}]}]})",
                            {{"content-type", "application/json"}, {"x-campaign-id", campaign}})
            .result_int();
    };
    ASSERT_TRUE(reg.set_mode("campaign-volume", bb::breakers::mode::metrics_only, std::nullopt, "ops", "trial",
                             bb.server().now())
                    .known);
    ASSERT_TRUE(reg.manual_trip("campaign-volume/spring", "ops", "runaway", bb.server().now()));
    EXPECT_EQ(send("spring"), 503u) << "the operator's trip of the key";
    EXPECT_EQ(send("summer"), 202u);
    ASSERT_TRUE(reg.set_mode("campaign-volume/autumn", bb::breakers::mode::forced_open, std::nullopt, "ops", "hold",
                             bb.server().now())
                    .known);
    EXPECT_EQ(send("autumn"), 503u);
    EXPECT_EQ(up.request_count(), 1u);
}
