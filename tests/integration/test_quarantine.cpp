// Quarantine and remediation through real sockets (issue 5): 202 + ticket only once the
// record is durable, release by filter at a set rate with idempotency keys, never twice,
// discard, limits, and a store that fails closed and recovers.
#include "tests/support/fake_upstream.hpp"
#include "tests/support/proxy_fixture.hpp"
#include "tests/support/sqlite_exec.hpp"

#include "core/sha256.hpp"
#include "proxy/forwarded_keys.hpp"
#include "proxy/framing.hpp"
#include "proxy/remediation.hpp"
#include "store/database.hpp"

#include <gtest/gtest.h>

#include <boost/beast/http/write.hpp>

#include <sqlite3.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

using namespace bb::test;
using namespace std::chrono_literals;
namespace http = boost::beast::http;

namespace {

std::string quarantine_config(std::uint16_t upstream_port, const std::string& dir, int limit,
                              const std::string& store_extra = "") {
    return "{\"workers\": 2, \"listeners\": [{\"name\": \"t\", \"address\": \"127.0.0.1:0\"}],"
           "\"limits\": {\"drain_timeout\": \"2s\"},"
           "\"store\": {\"path\": \"" + dir + "/bb.db\"" + (store_extra.empty() ? "" : ", " + store_extra) + "},"
           "\"upstreams\": [{\"name\": \"sendgrid\", \"url\": \"http://127.0.0.1:" + std::to_string(upstream_port) +
           "\"}],"
           "\"routes\": [{\"name\": \"mail-send\", \"match\": {\"path_prefix\": \"/v3/mail/send\"}, \"upstream\": \"sendgrid\"}],"
           "\"failure_modes\": [{\"id\": \"volume-spike\", \"title\": \"Send volume spike\", \"severity\": \"sev2\"}],"
           "\"breakers\": [{\"id\": \"campaign-volume\", \"action\": \"quarantine\", \"reset\": \"manual\"}],"
           "\"rules\": [{\"id\": \"recipients\", \"route\": \"mail-send\", \"key\": [\"header:x-campaign-id\"],"
           "\"measure\": {\"sum\": \"count($.to[*])\"}, \"window\": \"1h\", \"limit\": " + std::to_string(limit) +
           ", \"failure_mode\": \"volume-spike\", \"trips\": \"campaign-volume\"}],"
           "\"log\": {\"level\": \"warn\", \"access_log\": \"off\"}}";
}

// quarantine_config (limit 0) with one agent, "bot" (key "bot-key"), in sandbox mode or not.
std::string quarantine_config_with_agent(std::uint16_t upstream_port, const std::string& dir, bool sandbox) {
    std::string cfg = quarantine_config(upstream_port, dir, 0);
    cfg.insert(cfg.rfind('}'), ", \"agents\": [{\"id\": \"bot\", \"key_sha256\": [\"" + bb::sha256_hex("bot-key") +
                                   "\"], \"sandbox\": " + (sandbox ? "true" : "false") + "}]");
    return cfg;
}

response send_mail(std::uint16_t port, const std::string& campaign, const std::string& body,
                   const std::string& content_type = "application/json") {
    return http_request(port, http::verb::post, "/v3/mail/send?via=agent", body,
                        {{"content-type", content_type}, {"x-campaign-id", campaign}, {"x-trace", "t-1"}});
}

// Holds `n` requests of campaign "c" (bodies {"to":[1],"n":i}, told apart), appending their
// tickets; a request not held (not 202) fails the test there.
void hold_numbered(std::uint16_t port, int n, std::vector<std::string>& tickets) {
    for (int i = 0; i < n; ++i) {
        auto res = send_mail(port, "c", "{\"to\":[1],\"n\":" + std::to_string(i) + "}");
        ASSERT_EQ(res.result_int(), 202u);
        tickets.emplace_back(res["x-breakerbox-ticket"]);
    }
}

// A mail of campaign "c" with an Idempotency-Key, as the tests of keyed holds send it.
response send_keyed(std::uint16_t port, const std::string& key, const std::string& body,
                    http::verb method = http::verb::post) {
    return http_request(port, method, "/v3/mail/send?via=agent", body,
                        {{"content-type", "application/json"}, {"x-campaign-id", "c"}, {"idempotency-key", key}});
}

std::string field_of(const response& r, const std::string& name) {
    const auto& b = r.body();
    const auto k = b.find("\"" + name + "\":\"");
    if (k == std::string::npos) {
        return {};
    }
    const auto start = k + name.size() + 4;
    return b.substr(start, b.find('"', start) - start);
}

}  // namespace

TEST(quarantine, the_crossing_request_and_later_ones_are_held_with_a_ticket) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 3)};
    EXPECT_EQ(send_mail(bb.port(), "spring", R"({"to":[1,2]})").result_int(), 202u);
    EXPECT_EQ(up.request_count(), 1u);
    std::vector<std::string> tickets;
    for (int i = 0; i < 3; ++i) {
        auto res = send_mail(bb.port(), "spring", "{\"to\":[1,2],\"n\":" + std::to_string(i) + "}");
        ASSERT_EQ(res.result_int(), 202u);
        EXPECT_EQ(res["x-breakerbox-decision"], "quarantined");
        const std::string ticket{res["x-breakerbox-ticket"]};
        ASSERT_FALSE(ticket.empty());
        EXPECT_EQ(field_of(res, "ticket"), ticket);
        EXPECT_EQ(field_of(res, "breaker"), "campaign-volume/spring");
        tickets.push_back(ticket);
    }
    EXPECT_EQ(up.request_count(), 1u) << "held requests never reach the upstream";
    EXPECT_EQ(std::set<std::string>(tickets.begin(), tickets.end()).size(), 3u);
    auto* db = bb.server().db();
    ASSERT_NE(db, nullptr);
    auto rec = db->get(tickets[0]);
    ASSERT_TRUE(rec);
    EXPECT_EQ(rec->method, "POST");
    EXPECT_EQ(rec->target, "/v3/mail/send?via=agent");
    EXPECT_EQ(rec->body, "{\"to\":[1,2],\"n\":0}");
    EXPECT_EQ(rec->route, "mail-send");
    EXPECT_EQ(rec->upstream, "sendgrid");
    EXPECT_EQ(rec->rule, "recipients");
    EXPECT_EQ(rec->breaker_instance, "campaign-volume/spring");
    EXPECT_EQ(rec->failure_mode, "volume-spike");
    EXPECT_EQ(rec->state, bb::store::held_state::held);
    bool has_trace = false;
    for (const auto& [n, v] : rec->headers) {
        has_trace = has_trace || (n == "x-trace" && v == "t-1");
        EXPECT_NE(bb::proxy::iequals(n, "connection"), true);
    }
    EXPECT_TRUE(has_trace);
}

// A held HEAD is answered with the head alone: a body there would be read as the start of
// the next response on the connection.
TEST(quarantine, a_held_head_request_gets_no_body) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string cfg = quarantine_config(up.port(), dir, 0);
    const std::string measure = R"j("measure": {"sum": "count($.to[*])"})j";
    ASSERT_NE(cfg.find(measure), std::string::npos);
    cfg.replace(cfg.find(measure), measure.size(), R"("measure": "requests")");  // a HEAD counts too
    proxy_instance bb{cfg};
    EXPECT_EQ(send_mail(bb.port(), "spring", R"({"to":[1]})").result_int(), 202u);  // crosses: held, tripped
    raw_client c{bb.port()};
    c.send("HEAD /v3/mail/send HTTP/1.1\r\nHost: a\r\nX-Campaign-Id: spring\r\n\r\n");
    auto head = c.read_response(true);
    ASSERT_EQ(head.result_int(), 202u) << head;
    EXPECT_EQ(head["x-breakerbox-decision"], "quarantined");
    EXPECT_TRUE(head.body().empty());
    c.send("POST /v3/mail/send HTTP/1.1\r\nHost: a\r\nX-Campaign-Id: autumn\r\nContent-Type: application/json\r\n"
           "Content-Length: 2\r\n\r\n{}");
    auto next = c.read_response();
    EXPECT_EQ(next.result_int(), 202u) << next;
    // Read from its own first byte (limit 0: it is held too), its JSON whole.
    EXPECT_EQ(next["x-breakerbox-decision"], "quarantined");
    EXPECT_EQ(field_of(next, "ticket"), std::string{next["x-breakerbox-ticket"]});
}

TEST(quarantine, release_by_filter_is_paced_sends_each_once_with_its_key_and_never_again) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    std::vector<std::string> tickets;
    ASSERT_NO_FATAL_FAILURE(hold_numbered(bb.port(), 11, tickets));
    ASSERT_EQ(up.request_count(), 0u);
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    const auto t0 = std::chrono::steady_clock::now();
    auto sum = bb.server().remediation().release_matching(f, 20.0, "ops").get();
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    EXPECT_EQ(sum.released, 11u);
    // 11 releases at 20/s: the last starts 500 ms after the first. A loaded machine can only
    // make it slower, so the upper bound is loose: it catches a wrong rate (1/s would take
    // 10 s), not scheduling delays (it was 600 ms and failed under ctest -j2).
    EXPECT_GE(took.count(), 450);
    EXPECT_LE(took.count(), 5000);
    const auto reqs = up.requests();
    ASSERT_EQ(reqs.size(), 11u);
    std::set<std::string> keys;
    for (std::size_t i = 0; i < reqs.size(); ++i) {
        keys.insert(std::string{reqs[i].req["Idempotency-Key"]});
        EXPECT_EQ(reqs[i].req.body(), "{\"to\":[1],\"n\":" + std::to_string(i) + "}");
        EXPECT_EQ(reqs[i].req.target(), "/v3/mail/send?via=agent");
    }
    EXPECT_EQ(keys, std::set<std::string>(tickets.begin(), tickets.end()));
    // A released record can never be released again.
    auto again = bb.server().remediation().release(tickets[0], "ops").get();
    EXPECT_FALSE(again.ok);
    EXPECT_EQ(again.code, "invalid_state");
    auto sum2 = bb.server().remediation().release_matching(f, 0, "ops").get();
    EXPECT_EQ(sum2.matched, 0u);
    EXPECT_EQ(up.request_count(), 11u);
    EXPECT_EQ(bb.server().db()->get(tickets[3])->state, bb::store::held_state::released);
    EXPECT_EQ(bb.server().db()->get(tickets[3])->release_status, 202);
}

// A release by filter covers what was held when it began. While it runs the breaker may
// still be tripped and the misfire still arriving: those holds must not be replayed by it.
// `frozen`: a manual clock that does not move, so the requests held during the release carry
// the same millisecond as its start and only the id bound can leave them out.
void release_leaves_later_holds_alone(bool frozen) {
    std::atomic<std::uint16_t> proxy_port{0};
    std::atomic<int> replays{0};
    std::vector<std::string> late;
    std::mutex late_mu;
    fake_upstream up{[&](const request&) {
        if (replays++ == 0) {
            // The misfire goes on during the release: three more requests are held.
            for (int i = 0; i < 3; ++i) {
                auto res = send_mail(proxy_port.load(), "c", "{\"to\":[1],\"late\":" + std::to_string(i) + "}");
                std::lock_guard lock{late_mu};
                late.emplace_back(res["x-breakerbox-ticket"]);
            }
        }
        return respond(202, "");
    }};
    const auto dir = temp_dir();
    bb::manual_clock clock;
    proxy_instance bb{quarantine_config(up.port(), dir, 0), frozen ? &clock : nullptr};
    proxy_port = bb.port();
    for (int i = 0; i < 4; ++i) {
        ASSERT_EQ(send_mail(bb.port(), "c", "{\"to\":[1],\"n\":" + std::to_string(i) + "}").result_int(), 202u);
    }
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    auto sum = bb.server().remediation().release_matching(f, 0, "ops").get();
    EXPECT_EQ(sum.matched, 4u);
    EXPECT_EQ(sum.released, 4u);
    EXPECT_EQ(up.request_count(), 4u);
    std::lock_guard lock{late_mu};
    ASSERT_EQ(late.size(), 3u);
    for (const auto& t : late) {
        ASSERT_FALSE(t.empty());
        EXPECT_EQ(bb.server().db()->get(t)->state, bb::store::held_state::held) << t;
    }
    // The same for a discard by filter.
    auto d = bb.server().remediation().discard_matching(f, "ops", "misfire").get();
    EXPECT_EQ(d.discarded, 3u);
}

TEST(quarantine, a_release_by_filter_leaves_alone_what_is_held_while_it_runs) {
    release_leaves_later_holds_alone(false);
}

TEST(quarantine, a_release_by_filter_leaves_alone_what_is_held_in_the_same_millisecond) {
    release_leaves_later_holds_alone(true);
}

TEST(quarantine, a_bulk_limit_releases_or_discards_at_most_that_many) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    std::vector<std::string> tickets;
    ASSERT_NO_FATAL_FAILURE(hold_numbered(bb.port(), 5, tickets));
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    f.limit = 1;  // a canary
    auto sum = bb.server().remediation().release_matching(f, 0, "ops").get();
    EXPECT_EQ(sum.matched, 1u);
    EXPECT_EQ(sum.released, 1u);
    EXPECT_EQ(up.request_count(), 1u);
    EXPECT_EQ(bb.server().db()->get(tickets[0])->state, bb::store::held_state::released);
    f.limit = 2;
    auto d = bb.server().remediation().discard_matching(f, "ops", "canary went wrong").get();
    EXPECT_EQ(d.discarded, 2u);
    EXPECT_EQ(bb.server().db()->get(tickets[3])->state, bb::store::held_state::held);
    EXPECT_EQ(bb.server().db()->get(tickets[4])->state, bb::store::held_state::held);
}

// A bulk operation acts on a record only in the state it listed it in. A record another
// release sent meanwhile and saw fail (release_failed) is not sent again by a bulk release
// of `held` records, and one whose outcome became unknown is not dropped by a bulk discard.
TEST(quarantine, a_bulk_operation_leaves_alone_a_record_that_changed_since_it_was_listed) {
    std::atomic<int> status{202};
    fake_upstream up{[&](const request&) { return respond(static_cast<unsigned>(status.load()), "{}"); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    std::vector<std::string> tickets;
    ASSERT_NO_FATAL_FAILURE(hold_numbered(bb.port(), 3, tickets));
    auto* db = bb.server().db();
    auto done = [](std::promise<bb::store::result>& p) {
        return [&p](const bb::store::result& r) { p.set_value(r); };
    };
    // As a bulk release that listed tickets[0] as held would find it after another release
    // sent it and got 429: release_failed now.
    status = 429;
    ASSERT_EQ(bb.server().remediation().release(tickets[0], "alice").get().code, "release_failed");
    status = 202;
    std::promise<bb::store::result> p1;
    db->begin_release(tickets[0], "bulk", false, done(p1), bb::store::held_state::held);
    const auto r1 = p1.get_future().get();
    EXPECT_EQ(r1.code, "invalid_state");
    EXPECT_NE(r1.message.find("no longer held"), std::string::npos) << r1.message;
    EXPECT_EQ(db->get(tickets[0])->state, bb::store::held_state::release_failed);
    EXPECT_EQ(up.request_count(), 1u) << "sent again by a bulk release it was never meant for";
    // Listed as it is, it goes (an operator's bulk release of release_failed records).
    std::promise<bb::store::result> p2;
    db->begin_release(tickets[0], "bulk", false, done(p2), bb::store::held_state::release_failed);
    EXPECT_TRUE(p2.get_future().get().ok);
    // A bulk discard of held records does not drop one whose outcome became unknown.
    status = 502;
    ASSERT_EQ(bb.server().remediation().release(tickets[1], "alice").get().code, "outcome_unknown");
    std::promise<bb::store::result> p3;
    db->discard(tickets[1], "bulk", "cleanup", done(p3), bb::store::held_state::held);
    EXPECT_EQ(p3.get_future().get().code, "invalid_state");
    EXPECT_EQ(db->get(tickets[1])->state, bb::store::held_state::outcome_unknown);
    // Through the bulk release itself: the remaining held record goes, nothing else.
    status = 202;
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    f.state = bb::store::held_state::held;
    const auto before = up.request_count();
    auto sum = bb.server().remediation().release_matching(f, 0, "ops").get();
    EXPECT_EQ(sum.released, 1u);
    EXPECT_EQ(up.request_count(), before + 1);
    EXPECT_EQ(db->get(tickets[2])->state, bb::store::held_state::released);
}

// An upstream that answers a replay with 429 (or 503) asks to slow down: a bulk release
// stops there and leaves the rest held, instead of sending each one into the same limit and
// burning their attempts as release_failed.
TEST(quarantine, a_bulk_release_halts_at_a_429_and_leaves_the_rest_held) {
    std::atomic<int> status{202};
    fake_upstream up{[&](const request&) { return respond(static_cast<unsigned>(status.load()), "{}"); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    std::vector<std::string> tickets;
    ASSERT_NO_FATAL_FAILURE(hold_numbered(bb.port(), 4, tickets));
    status = 429;
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    auto sum = bb.server().remediation().release_matching(f, 0, "ops").get();
    EXPECT_EQ(sum.failed, 1u);
    EXPECT_EQ(up.request_count(), 1u) << "kept sending into the upstream's rate limit";
    EXPECT_NE(sum.halted.find("answered 429"), std::string::npos) << sum.halted;
    EXPECT_EQ(bb.server().db()->get(tickets[0])->state, bb::store::held_state::release_failed);
    for (std::size_t i = 1; i < tickets.size(); ++i) {
        EXPECT_EQ(bb.server().db()->get(tickets[i])->state, bb::store::held_state::held) << i;
    }
    // Once the limit resets, the rest goes.
    status = 202;
    f.state = bb::store::held_state::held;
    sum = bb.server().remediation().release_matching(f, 0, "ops").get();
    EXPECT_EQ(sum.released, 3u);
    EXPECT_TRUE(sum.halted.empty());
}

// An upstream that cannot be reached (refused here; a TLS failure after a reload broke its CA
// file, our own pool full): nothing of the replay went out, and the rest would meet the same.
// The run stops and leaves them held. It used to go on at full speed, turning every record
// release_failed, so a second run of the same filter (state held) found nothing to release.
TEST(quarantine, a_bulk_release_halts_when_the_upstream_cannot_be_reached) {
    const loopback_socket refusing{false};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(refusing.port(), dir, 0)};
    std::vector<std::string> tickets;
    ASSERT_NO_FATAL_FAILURE(hold_numbered(bb.port(), 3, tickets));
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    const auto sum = bb.server().remediation().release_matching(f, 0, "ops").get();
    EXPECT_EQ(sum.failed, 1u);
    EXPECT_NE(sum.halted.find("could not be reached"), std::string::npos) << sum.halted;
    EXPECT_EQ(bb.server().db()->get(tickets[0])->state, bb::store::held_state::release_failed);
    EXPECT_EQ(bb.server().db()->get(tickets[1])->state, bb::store::held_state::held);
    EXPECT_EQ(bb.server().db()->get(tickets[2])->state, bb::store::held_state::held);
}

// A halt at an upstream stops only that upstream's records: those bound to another upstream,
// reachable and answering, still go.
TEST(quarantine, a_bulk_release_halted_at_one_upstream_goes_on_with_the_others) {
    const loopback_socket refusing{false};
    fake_upstream healthy{[](const request&) { return respond(202, "{}"); }};
    const auto dir = temp_dir();
    std::string cfg = quarantine_config(refusing.port(), dir, 0);
    const std::string routes = R"("routes": [)";
    cfg.replace(cfg.find(routes), routes.size(),
                routes + R"({"name": "mg-send", "match": {"path_prefix": "/v3/mg"}, "upstream": "mailgun"},)");
    const std::string upstreams = R"("upstreams": [)";
    cfg.replace(cfg.find(upstreams), upstreams.size(),
                upstreams + R"({"name": "mailgun", "url": "http://127.0.0.1:)" + std::to_string(healthy.port()) + R"("},)");
    const std::string rules = R"("rules": [)";
    cfg.replace(cfg.find(rules), rules.size(),
                rules + R"({"id": "mg-recipients", "route": "mg-send", "key": ["header:x-campaign-id"],)"
                        R"j("measure": {"sum": "count($.to[*])"}, "window": "1h", "limit": 0,)j"
                        R"("failure_mode": "volume-spike", "trips": "campaign-volume"},)");
    proxy_instance bb{cfg};
    std::vector<std::string> tickets;  // sendgrid, mailgun, sendgrid, mailgun
    for (int i = 0; i < 4; ++i) {
        auto res = http_request(bb.port(), http::verb::post, i % 2 == 0 ? "/v3/mail/send" : "/v3/mg",
                                "{\"to\":[1],\"n\":" + std::to_string(i) + "}",
                                {{"content-type", "application/json"}, {"x-campaign-id", "c"}});
        ASSERT_EQ(res.result_int(), 202u) << i << res.body();
        tickets.emplace_back(res["x-breakerbox-ticket"]);
    }
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    const auto sum = bb.server().remediation().release_matching(f, 0, "ops").get();
    EXPECT_EQ(sum.failed, 1u);
    EXPECT_EQ(sum.released, 2u);
    EXPECT_NE(sum.halted.find("upstream sendgrid could not be reached"), std::string::npos) << sum.halted;
    EXPECT_EQ(healthy.request_count(), 2u);
    auto* db = bb.server().db();
    EXPECT_EQ(db->get(tickets[0])->state, bb::store::held_state::release_failed);
    EXPECT_EQ(db->get(tickets[1])->state, bb::store::held_state::released);
    EXPECT_EQ(db->get(tickets[2])->state, bb::store::held_state::held) << "sent after its upstream halted the run";
    EXPECT_EQ(db->get(tickets[3])->state, bb::store::held_state::released);
}

// A bare 503 (overload, or a gateway that lost the connection after sending), a gateway's
// 502 or 504, is of unknown outcome, and a bulk release stops there: the rest would meet the
// same, each left for an operator to decide on by hand.
TEST(quarantine, a_bulk_release_halts_at_any_unknown_outcome) {
    for (const unsigned status : {503u, 502u, 504u}) {
        fake_upstream up{[status](const request&) { return respond(status, "{}"); }};
        const auto dir = temp_dir();
        proxy_instance bb{quarantine_config(up.port(), dir, 0)};
        std::vector<std::string> tickets;
        ASSERT_NO_FATAL_FAILURE(hold_numbered(bb.port(), 3, tickets));
        bb::store::list_filter f;
        f.breaker = "campaign-volume";
        const auto sum = bb.server().remediation().release_matching(f, 0, "ops").get();
        EXPECT_EQ(sum.unknown, 1u) << status;
        EXPECT_EQ(up.request_count(), 1u) << status << ": kept sending after an outcome it could not know";
        EXPECT_NE(sum.halted.find("answered " + std::to_string(status)), std::string::npos) << sum.halted;
        EXPECT_EQ(bb.server().db()->get(tickets[0])->state, bb::store::held_state::outcome_unknown) << status;
        EXPECT_EQ(bb.server().db()->get(tickets[1])->state, bb::store::held_state::held) << status;
        EXPECT_EQ(bb.server().db()->get(tickets[2])->state, bb::store::held_state::held) << status;
    }
}

// A 2xx whose body is over limits.upstream_body_bytes was delivered: its status line says so
// before the body is dropped. Released, not left outcome_unknown for an operator to judge by
// hand; a 5xx over the limit stays unknown.
TEST(quarantine, a_release_answered_2xx_with_a_body_over_the_limit_is_released) {
    for (const unsigned status : {202u, 500u}) {
        fake_upstream up{[status](const request&) { return respond(status, std::string(4096, 'x')); }};
        const auto dir = temp_dir();
        std::string cfg = quarantine_config(up.port(), dir, 0);
        const std::string limits = R"("limits": {"drain_timeout": "2s")";
        cfg.replace(cfg.find(limits), limits.size(), limits + R"(, "upstream_body_bytes": 2048)");
        proxy_instance bb{cfg};
        std::vector<std::string> tickets;
        ASSERT_NO_FATAL_FAILURE(hold_numbered(bb.port(), 1, tickets));
        const auto r = bb.server().remediation().release(tickets[0], "alice").get();
        const auto rec = bb.server().db()->get(tickets[0]);
        ASSERT_TRUE(rec);
        if (status == 202u) {
            EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
            EXPECT_EQ(rec->state, bb::store::held_state::released);
        } else {
            EXPECT_EQ(r.code, "outcome_unknown") << r.message;
            EXPECT_EQ(rec->state, bb::store::held_state::outcome_unknown);
        }
        EXPECT_EQ(up.request_count(), 1u);
    }
}

// A forced release of a record whose outcome is unknown that then fails (429) leaves it of
// unknown outcome: the first attempt may have been delivered, so no release without force,
// and no bulk release of release_failed records, sends it again.
TEST(quarantine, a_failed_attempt_after_an_unknown_outcome_still_needs_force) {
    std::atomic<int> status{502};
    fake_upstream up{[&](const request&) { return respond(static_cast<unsigned>(status.load()), "{}"); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    auto res = send_mail(bb.port(), "c", R"({"to":[1]})");
    ASSERT_EQ(res.result_int(), 202u);
    const std::string ticket{res["x-breakerbox-ticket"]};
    auto& rem = bb.server().remediation();
    ASSERT_EQ(rem.release(ticket, "alice").get().code, "outcome_unknown");
    status = 429;
    const auto forced = rem.release(ticket, "alice", bb.server().db()->get(ticket)->release_attempts).get();
    EXPECT_EQ(forced.code, "outcome_unknown") << forced.message;
    EXPECT_NE(forced.message.find("earlier release attempt"), std::string::npos) << forced.message;
    EXPECT_EQ(bb.server().db()->get(ticket)->state, bb::store::held_state::outcome_unknown);
    EXPECT_EQ(up.request_count(), 2u);
    status = 202;
    EXPECT_EQ(rem.release(ticket, "bob").get().code, "invalid_state");
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    f.state = bb::store::held_state::release_failed;
    const auto sum = rem.release_matching(f, 0, "ops").get();
    EXPECT_EQ(sum.matched, 0u);
    EXPECT_EQ(up.request_count(), 2u) << "sent a third time without force";
}

// A bulk release sends a record only as it was listed: one that another release sent (and
// failed again) after the listing has more attempts and is left for an operator.
TEST(quarantine, a_bulk_release_skips_a_record_sent_again_after_it_was_listed) {
    std::atomic<int> status{429};
    std::atomic<bb::store::database*> db_of{nullptr};
    std::string second;
    std::atomic<bool> raced{false};
    fake_upstream up{[&](const request&) {
        if (status.load() == 202 && !raced.exchange(true)) {
            // While the bulk release waits for its first replay's answer, another release
            // sends the second record and it fails again (as an operator's would).
            auto* db = db_of.load();
            std::promise<bb::store::result> begun;
            db->begin_release(second, "alice", false, [&](const bb::store::result& r) { begun.set_value(r); });
            const auto b = begun.get_future().get();
            std::promise<bb::store::result> finished;
            db->finish_release(second, bb::store::release_outcome::failed, 429, "Too Many Requests",
                               [&](const bb::store::result& r) { finished.set_value(r); },
                               static_cast<std::uint32_t>(b.count));
            finished.get_future().get();
        }
        return respond(static_cast<unsigned>(status.load()), "{}");
    }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    db_of = bb.server().db();
    std::vector<std::string> tickets;
    ASSERT_NO_FATAL_FAILURE(hold_numbered(bb.port(), 2, tickets));
    second = tickets[1];
    auto& rem = bb.server().remediation();
    for (const auto& t : tickets) {
        ASSERT_EQ(rem.release(t, "alice").get().code, "release_failed");
    }
    status = 202;
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    f.state = bb::store::held_state::release_failed;
    const auto sum = rem.release_matching(f, 0, "ops").get();
    EXPECT_TRUE(raced.load());
    EXPECT_EQ(sum.released, 1u);
    EXPECT_EQ(sum.skipped, 1u);
    EXPECT_EQ(bb.server().db()->get(tickets[0])->state, bb::store::held_state::released);
    EXPECT_EQ(bb.server().db()->get(tickets[1])->state, bb::store::held_state::release_failed);
    EXPECT_EQ(bb.server().db()->get(tickets[1])->release_attempts, 2u);
    EXPECT_EQ(up.request_count(), 3u) << "the second record was sent again on a listing made before its last attempt";
}

// A record the store cannot read is a store error, not "not found", and nothing of it is
// sent; a bulk release skips it (with its error) and releases the rest.
TEST(quarantine, an_unreadable_record_is_a_store_error_and_is_skipped_by_a_bulk_release) {
    fake_upstream up{[](const request&) { return respond(202, "{}"); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    std::vector<std::string> tickets;
    ASSERT_NO_FATAL_FAILURE(hold_numbered(bb.port(), 3, tickets));
    // The first record's stored headers are damaged (a bad sector, a hand edit).
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open((dir + "/bb.db").c_str(), &raw), SQLITE_OK);
    sqlite3_busy_timeout(raw, 5000);
    const std::string sql = "UPDATE held_bodies SET headers = X'FFFFFFFF' WHERE id = (SELECT id FROM held_requests "
                            "WHERE ticket = '" + tickets[0] + "')";
    ASSERT_EQ(sqlite3_exec(raw, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(raw);
    sqlite3_close(raw);
    const auto one = bb.server().remediation().release(tickets[0], "ops").get();
    EXPECT_FALSE(one.ok);
    EXPECT_EQ(one.code, "store_unavailable") << one.message;
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    const auto sum = bb.server().remediation().release_matching(f, 0, "ops").get();
    EXPECT_EQ(sum.released, 2u);
    EXPECT_EQ(sum.skipped, 1u);
    EXPECT_TRUE(sum.halted.empty()) << sum.halted;
    ASSERT_FALSE(sum.results.empty());
    EXPECT_EQ(sum.results[0].code, "store_unavailable");
    EXPECT_EQ(up.request_count(), 2u);
    EXPECT_EQ(bb.server().db()->get(tickets[1])->state, bb::store::held_state::released);
}

// A released request carries the forwarding fields the live path would have sent, not the
// client's own: a client's X-Forwarded-Host or X-Forwarded-Proto never passes as ours.
TEST(quarantine, a_release_sends_our_forwarding_fields_not_the_clients) {
    fake_upstream up{[](const request&) { return respond(202, "{}"); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", R"({"to":[1]})",
                            {{"content-type", "application/json"}, {"x-campaign-id", "c"}, {"host", "api.sendgrid.test"},
                             {"x-forwarded-host", "evil.example"}, {"x-forwarded-proto", "https"}});
    ASSERT_EQ(res.result_int(), 202u);
    ASSERT_TRUE(bb.server().remediation().release(std::string{res["x-breakerbox-ticket"]}, "ops").get().ok);
    const auto reqs = up.requests();
    ASSERT_EQ(reqs.size(), 1u);
    const auto& r = reqs[0].req;
    EXPECT_EQ(r["x-forwarded-host"], "api.sendgrid.test");
    EXPECT_EQ(r["x-forwarded-proto"], "http");
    EXPECT_EQ(r["x-forwarded-for"], "127.0.0.1");
    EXPECT_NE(std::string{r["via"]}.find("breakerbox"), std::string::npos);
}

// A bulk `limit` bounds what is sent: a record skipped because it changed after it was
// listed (here: discarded by someone else while the first replay was in flight) does not use
// it up.
TEST(quarantine, a_bulk_limit_counts_what_is_sent_not_what_is_skipped) {
    std::vector<std::string> tickets;
    bb::store::database* db = nullptr;
    std::atomic<bool> discarded{false};
    fake_upstream up{[&](const request&) {
        if (!discarded.exchange(true)) {
            std::promise<bb::store::result> p;
            db->discard(tickets[1], "bob", "not this one", [&p](const bb::store::result& r) { p.set_value(r); });
            EXPECT_TRUE(p.get_future().get().ok);
        }
        return respond(202, "");
    }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    db = bb.server().db();
    ASSERT_NO_FATAL_FAILURE(hold_numbered(bb.port(), 4, tickets));
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    f.limit = 2;
    auto sum = bb.server().remediation().release_matching(f, 0, "ops").get();
    EXPECT_EQ(sum.released, 2u);
    EXPECT_EQ(sum.skipped, 1u);
    EXPECT_EQ(db->get(tickets[0])->state, bb::store::held_state::released);
    EXPECT_EQ(db->get(tickets[1])->state, bb::store::held_state::discarded);
    EXPECT_EQ(db->get(tickets[2])->state, bb::store::held_state::released);
    EXPECT_EQ(db->get(tickets[3])->state, bb::store::held_state::held);
}

// A client that retries a request it never got the 202 for (it timed out while the hold was
// committed) sends its Idempotency-Key again: the retry gets the first ticket and no second
// record, so the request is released once; the replay carries the client's key. Another
// request under the same key is refused (409), not held. Expect is for the live exchange only
// (breakerbox answered it then).
TEST(quarantine, a_retried_hold_gets_its_first_ticket_and_is_released_once) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    auto hold_with_key = [&](const std::string& body) {
        raw_client c{bb.port()};
        c.send("POST /v3/mail/send HTTP/1.1\r\nHost: api.sendgrid.com\r\nContent-Type: application/json\r\n"
               "X-Campaign-Id: c\r\nIdempotency-Key: client-key-1\r\nExpect: 100-continue\r\nContent-Length: " +
               std::to_string(body.size()) + "\r\n\r\n");
        EXPECT_EQ(c.read_response().result_int(), 100u);
        c.send(body);
        return c.read_response();
    };
    std::vector<std::string> tickets;
    for (int i = 0; i < 2; ++i) {
        auto res = hold_with_key(R"({"to":[1]})");
        ASSERT_EQ(res.result_int(), 202u);
        tickets.emplace_back(res["x-breakerbox-ticket"]);
    }
    EXPECT_EQ(tickets[0], tickets[1]) << "the retry is the same hold";
    auto other = hold_with_key(R"({"to":[9]})");
    EXPECT_EQ(other.result_int(), 409u);
    EXPECT_EQ(other["x-breakerbox-decision"], "rejected");
    EXPECT_NE(other.body().find("\"code\":\"idempotency_key_reused\""), std::string::npos) << other.body();
    EXPECT_NE(other.body().find(tickets[0]), std::string::npos) << other.body();
    auto plain = send_mail(bb.port(), "c", R"({"to":[2]})");
    ASSERT_EQ(plain.result_int(), 202u);
    // An empty key is no key: the ticket replaces it.
    auto empty_key = http_request(bb.port(), http::verb::post, "/v3/mail/send", R"({"to":[3]})",
                                  {{"content-type", "application/json"}, {"x-campaign-id", "c"}, {"idempotency-key", ""}});
    ASSERT_EQ(empty_key.result_int(), 202u);
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    auto sum = bb.server().remediation().release_matching(f, 0, "ops").get();
    EXPECT_EQ(sum.released, 3u);
    const auto reqs = up.requests();
    ASSERT_EQ(reqs.size(), 3u);
    EXPECT_EQ(reqs[0].req["Idempotency-Key"], "client-key-1");
    EXPECT_EQ(reqs[0].req.body(), R"({"to":[1]})");
    EXPECT_EQ(reqs[1].req["Idempotency-Key"], plain["x-breakerbox-ticket"]) << "no key of its own: the ticket";
    EXPECT_EQ(reqs[2].req["Idempotency-Key"], empty_key["x-breakerbox-ticket"]) << "an empty key: the ticket";
    EXPECT_EQ(reqs[2].req.count("Idempotency-Key"), 1u);
    for (const auto& r : reqs) {
        EXPECT_EQ(r.req.count(http::field::expect), 0u);
        EXPECT_EQ(r.req.body().size(), r.req.body().find('}') + 1);
    }
    // Retried after its release: still the same record, not a second send.
    auto late = hold_with_key(R"({"to":[1]})");
    ASSERT_EQ(late.result_int(), 202u);
    EXPECT_EQ(late["x-breakerbox-ticket"], tickets[0]);
    EXPECT_EQ(bb.server().remediation().release_matching(f, 0, "ops").get().released, 0u);
    EXPECT_EQ(up.requests().size(), 3u);
}

// The client never got the 202 for its hold (a timeout), the breaker was reset, and it
// retries with its Idempotency-Key: the retry goes live now, and must not be sent beside
// the release of the first (one request, one send). It gets the hold's ticket instead;
// another request under the key is refused; other keys and no key go out as usual.
TEST(quarantine, a_live_retry_of_a_held_request_is_not_sent_beside_its_release) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    auto send_with_key = [&](std::uint16_t port, const std::string& key, const std::string& body) {
        return send_keyed(port, key, body);
    };
    std::string ticket;
    {
        proxy_instance bb{quarantine_config(up.port(), dir, 1000)};
        ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume", "ops", "misfire", bb.server().now()));
        auto held = send_with_key(bb.port(), "k-1", R"({"to":[1]})");
        ASSERT_EQ(held.result_int(), 202u);
        ticket = std::string{held["x-breakerbox-ticket"]};
        ASSERT_TRUE(bb.server().breakers()->reset("campaign-volume", "ops", "fixed", bb.server().now()));

        auto retry = send_with_key(bb.port(), "k-1", R"({"to":[1]})");
        EXPECT_EQ(retry.result_int(), 202u);
        EXPECT_EQ(retry["x-breakerbox-ticket"], ticket);
        EXPECT_EQ(retry["x-breakerbox-decision"], "quarantined");
        EXPECT_EQ(up.request_count(), 0u) << "the retry was sent while its hold waits";
        auto reused = send_with_key(bb.port(), "k-1", R"({"to":[2]})");
        EXPECT_EQ(reused.result_int(), 409u);
        EXPECT_NE(reused.body().find("idempotency_key_reused"), std::string::npos) << reused.body();
        EXPECT_EQ(send_with_key(bb.port(), "k-2", R"({"to":[1]})").result_int(), 202u);
        EXPECT_EQ(send_mail(bb.port(), "c", R"({"to":[1]})").result_int(), 202u);
        EXPECT_EQ(up.request_count(), 2u) << "another key and no key go out";

        bb::store::list_filter f;
        f.breaker = "campaign-volume";
        EXPECT_EQ(bb.server().remediation().release_matching(f, 0, "ops").get().released, 1u);
        EXPECT_EQ(up.request_count(), 3u);
        EXPECT_EQ(send_with_key(bb.port(), "k-1", R"({"to":[1]})")["x-breakerbox-ticket"], ticket) << "after its release";

        // A retry of a request an operator discarded is told so (409), not 202 as if it
        // still waited for a release; nothing is sent.
        ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume", "ops", "again", bb.server().now()));
        auto misfire = send_with_key(bb.port(), "k-3", R"({"to":[3]})");
        ASSERT_EQ(misfire.result_int(), 202u);
        const std::string discarded{misfire["x-breakerbox-ticket"]};
        ASSERT_TRUE(bb.server().remediation().discard(discarded, "ops", "misfire").get().ok);
        auto held_again = send_with_key(bb.port(), "k-3", R"({"to":[3]})");  // while the breaker still holds
        EXPECT_EQ(held_again.result_int(), 409u) << held_again.body();
        EXPECT_NE(held_again.body().find("\"discarded\""), std::string::npos) << held_again.body();
        ASSERT_TRUE(bb.server().breakers()->reset("campaign-volume", "ops", "fixed", bb.server().now()));
        auto late = send_with_key(bb.port(), "k-3", R"({"to":[3]})");
        EXPECT_EQ(late.result_int(), 409u) << late.body();
        EXPECT_NE(late.body().find("\"discarded\""), std::string::npos) << late.body();
        EXPECT_NE(late.body().find(discarded), std::string::npos) << late.body();
        EXPECT_EQ(up.request_count(), 3u) << "the retry of a discarded request was sent";
    }
    // After a restart: the keys are read back from the store.
    proxy_instance bb{quarantine_config(up.port(), dir, 1000)};
    auto after_restart = send_with_key(bb.port(), "k-1", R"({"to":[1]})");
    EXPECT_EQ(after_restart.result_int(), 202u);
    EXPECT_EQ(after_restart["x-breakerbox-ticket"], ticket);
    EXPECT_EQ(up.request_count(), 3u);
}

// The other way round: a request sent live (the client gave up waiting; the upstream may
// have delivered it), then the breaker trips and the client retries with its
// Idempotency-Key. Held, a release would send it a second time: it is refused (409
// already_forwarded) and nothing is held. Another key, and no key, are held as usual.
TEST(quarantine, a_retry_of_a_request_sent_live_is_not_held) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 1000)};
    auto send_with_key = [&](const std::string& key, const std::string& body) {
        return send_keyed(bb.port(), key, body);
    };
    ASSERT_EQ(send_with_key("k-1", R"({"to":[1]})").result_int(), 202u);
    ASSERT_EQ(up.request_count(), 1u);
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume", "ops", "misfire", bb.server().now()));
    const auto retry = send_with_key("k-1", R"({"to":[1]})");
    EXPECT_EQ(retry.result_int(), 409u) << retry.body();
    EXPECT_NE(retry.body().find("already_forwarded"), std::string::npos) << retry.body();
    EXPECT_EQ(retry["x-breakerbox-decision"], "rejected");
    EXPECT_TRUE(retry["x-breakerbox-ticket"].empty());
    const auto other = send_with_key("k-2", R"({"to":[1]})");
    EXPECT_EQ(other.result_int(), 202u);
    EXPECT_FALSE(other["x-breakerbox-ticket"].empty());
    EXPECT_EQ(send_mail(bb.port(), "c", R"({"to":[1]})").result_int(), 202u);
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    EXPECT_EQ(bb.server().remediation().release_matching(f, 0, "ops").get().released, 2u);
    EXPECT_EQ(up.request_count(), 3u) << "k-1 sent a second time by a release";
}

// A retry while the first send of its key is still in flight (its client gave up sooner than
// the upstream answered, a proxy in front retried) is refused, 409 in_flight, not sent beside
// it: if the first is delivered, the retry would be a second mail. Once the first is
// answered, a retry goes again (whether to resend is the client's call, as before).
TEST(quarantine, a_retry_while_the_first_send_of_its_key_is_in_flight_is_refused) {
    std::promise<void> gate;
    std::shared_future<void> open = gate.get_future().share();
    std::atomic<int> arrived{0};
    fake_upstream up{[&](const request&) {
        if (arrived++ == 0) {
            open.wait();  // the first send stays in flight until the test lets it go
        }
        return respond(202, "");
    }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 1000)};
    response first;
    std::thread sender{[&] { first = send_keyed(bb.port(), "k-flight", R"({"to":[1]})"); }};
    bool opened = false;
    auto let_go = [&] {  // once, and also if an assertion below ends the test early
        if (!opened) {
            opened = true;
            gate.set_value();
            sender.join();
        }
    };
    struct on_exit {
        std::function<void()> f;
        ~on_exit() { f(); }
    } release_first{let_go};
    ASSERT_TRUE(wait_until([&] { return arrived.load() == 1; }, 5000)) << "the first send reached the upstream";
    const auto retry = send_keyed(bb.port(), "k-flight", R"({"to":[1]})");
    EXPECT_EQ(retry.result_int(), 409u) << retry.body();
    EXPECT_NE(retry.body().find("\"code\":\"in_flight\""), std::string::npos) << retry.body();
    EXPECT_EQ(retry["x-breakerbox-decision"], "rejected");
    EXPECT_EQ(arrived.load(), 1);
    let_go();
    EXPECT_EQ(first.result_int(), 202u) << first.body();
    const auto after = send_keyed(bb.port(), "k-flight", R"({"to":[1]})");
    EXPECT_EQ(after.result_int(), 202u) << after.body();
    EXPECT_EQ(arrived.load(), 2);
}

// A key is the agent's, whichever route carries it: an operator renaming a route (a reload)
// between a send and its retry must not make the retry a new request. Sent live under the
// old name, its retry under the new one is refused while the breaker quarantines (held, a
// release would send it twice); held under one name, its live retry under another gets the
// hold's ticket and is not sent beside the release.
TEST(quarantine, a_retry_after_its_route_was_renamed_is_still_the_same_request) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    const std::string config = quarantine_config(up.port(), dir, 1000);
    auto renamed = [&](const std::string& name) {
        std::string text = config;
        for (std::size_t at = 0; (at = text.find("\"mail-send\"", at)) != std::string::npos; at += name.size() + 2) {
            text.replace(at, 11, "\"" + name + "\"");
        }
        auto parsed = bb::parse_config(text);
        EXPECT_TRUE(parsed.errors.empty()) << parsed.errors.to_string();
        EXPECT_EQ(parsed.cfg->routes.at(0).name, name);
        return parsed.cfg;
    };
    proxy_instance bb{config};
    auto send_with_key = [&](const std::string& key, const std::string& body) {
        return send_keyed(bb.port(), key, body);
    };
    ASSERT_EQ(send_with_key("k-1", R"({"to":[1]})").result_int(), 202u);
    ASSERT_EQ(up.request_count(), 1u);
    bb.server().apply_config(renamed("mail-send-v2"));
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume", "ops", "misfire", bb.server().now()));
    const auto retry = send_with_key("k-1", R"({"to":[1]})");
    EXPECT_EQ(retry.result_int(), 409u) << retry.body();
    EXPECT_NE(retry.body().find("already_forwarded"), std::string::npos) << retry.body();

    const auto held = send_with_key("k-2", R"({"to":[2]})");
    ASSERT_EQ(held.result_int(), 202u) << held.body();
    const std::string ticket{held["x-breakerbox-ticket"]};
    ASSERT_FALSE(ticket.empty());
    bb.server().apply_config(renamed("mail-send-v3"));
    ASSERT_TRUE(bb.server().breakers()->reset("campaign-volume", "ops", "fixed", bb.server().now()));
    const auto live = send_with_key("k-2", R"({"to":[2]})");
    EXPECT_EQ(live.result_int(), 202u) << live.body();
    EXPECT_EQ(live["x-breakerbox-ticket"], ticket);
    EXPECT_EQ(live["x-breakerbox-decision"], "quarantined");
    EXPECT_EQ(up.request_count(), 1u) << "sent beside its hold";
    // (A release needs the route it was held on: which rules would judge it cannot be told
    // otherwise.)
    bb.server().apply_config(renamed("mail-send-v2"));
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    EXPECT_EQ(bb.server().remediation().release_matching(f, 0, "ops").get().released, 1u);
    EXPECT_EQ(up.request_count(), 2u);
}

// An Idempotency-Key given twice with different values reads two ways (a retry with the
// lines the other way round would be another request): refused, nothing sent or held.
TEST(quarantine, an_idempotency_key_given_twice_with_different_values_is_refused) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 1000)};
    auto send = [&](const std::string& a, const std::string& b) {
        raw_client c{bb.port()};
        c.send("POST /v3/mail/send HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nX-Campaign-Id: c\r\n"
               "Idempotency-Key: " + a + "\r\nidempotency-key: " + b + "\r\nContent-Length: 10\r\n\r\n{\"to\":[1]}");
        return c.read_response();
    };
    const auto two = send("k-1", "k-2");
    EXPECT_EQ(two.result_int(), 400u) << two.body();
    EXPECT_NE(two.body().find("ambiguous_idempotency_key"), std::string::npos) << two.body();
    EXPECT_EQ(up.request_count(), 0u);
    EXPECT_EQ(send("k-1", "k-1").result_int(), 202u) << "the same key twice reads one way";
    EXPECT_EQ(up.request_count(), 1u);
}

// A key names one of the agent's writes: a GET, HEAD or OPTIONS carrying a key a held POST
// has (on any route) is held, or sent, as a request of its own, never refused as another
// request under that key; held twice and released twice, a read is no second send.
TEST(quarantine, a_read_that_shares_a_held_writes_key_is_held_or_sent_as_its_own) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string config = quarantine_config(up.port(), dir, 1000);
    const std::string mode = "\"failure_mode\": \"volume-spike\", \"trips\"";
    config.insert(config.find(mode), "\"on_invalid_body\": \"zero\", ");  // a GET has no body to count
    proxy_instance bb{config};
    auto with_key = [&](http::verb method, const std::string& body) {
        return send_keyed(bb.port(), "k-5", body, method);
    };
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume", "ops", "misfire", bb.server().now()));
    const auto post = with_key(http::verb::post, R"({"to":[1]})");
    ASSERT_EQ(post.result_int(), 202u) << post.body();
    const auto get = with_key(http::verb::get, "");
    EXPECT_EQ(get.result_int(), 202u) << get.body();
    EXPECT_FALSE(get["x-breakerbox-ticket"].empty());
    EXPECT_NE(get["x-breakerbox-ticket"], post["x-breakerbox-ticket"]);
    ASSERT_TRUE(bb.server().breakers()->reset("campaign-volume", "ops", "fixed", bb.server().now()));
    const auto live = with_key(http::verb::get, "");
    EXPECT_EQ(live.result_int(), 202u) << live.body();
    EXPECT_TRUE(live["x-breakerbox-ticket"].empty()) << "held as the POST's retry";
    EXPECT_EQ(up.request_count(), 1u);
    const auto retry = with_key(http::verb::post, R"({"to":[1]})");
    EXPECT_EQ(retry["x-breakerbox-ticket"], post["x-breakerbox-ticket"]) << "the POST's retry is still its hold";
    EXPECT_EQ(up.request_count(), 1u);
}

// A GET with a body held before such requests were refused is not released: an upstream
// that reads no body in a GET would take it for another request.
TEST(quarantine, a_get_with_a_body_held_before_is_not_released) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 1000)};
    bb::store::held_request r;
    r.method = "GET";
    r.target = "/v3/mail/send";
    r.headers = {{"content-type", "application/json"}};
    r.body = "DELETE /v3/templates/1 HTTP/1.1\r\nHost: x\r\n\r\n";
    r.route = "mail-send";
    r.upstream = "sendgrid";
    r.rule = "recipients";
    r.breaker_instance = "campaign-volume";
    r.failure_mode = "volume-spike";
    r.request_id = "r-1";
    std::promise<bb::store::result> held;
    bb.server().db()->hold(r, [&](const bb::store::result& res) { held.set_value(res); });
    const auto ticket = held.get_future().get().ticket;
    ASSERT_FALSE(ticket.empty());
    const auto released = bb.server().remediation().release(ticket, "ops").get();
    EXPECT_FALSE(released.ok);
    EXPECT_NE(released.message.find("with a body"), std::string::npos) << released.message;
    EXPECT_EQ(up.request_count(), 0u);
}

// The first start after an upgrade from a version that scoped keys by route: the keys of
// requests it sent live (digests of key, route and agent) still refuse their retries while
// a breaker quarantines, under the routes configured now and those of the config versions
// in use before the upgrade (a route renamed by the same deploy), for the 24 hours they are
// remembered; from then on they are not looked for.
TEST(quarantine, a_retry_of_a_request_sent_live_before_the_upgrade_is_not_held) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    const std::string config = quarantine_config(up.port(), dir, 1000);
    { proxy_instance made{config}; }
    // As the version before left it: schema 12, keys sent live 5 s ago on mail-send and on
    // mail-send-old (a route of the config an hour ago).
    const auto by_route = [](const char* key, const char* route) {
        return std::to_string(static_cast<std::int64_t>(bb::proxy::forwarded_keys::digest_by_route(key, route, "")));
    };
    const auto wall_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    sqlite_exec(dir + "/bb.db",
                ("DELETE FROM schema_version WHERE version = 13; DROP INDEX held_requests_idem_agent; "
                 "CREATE INDEX held_requests_idem ON held_requests(idem_key, route, agent) WHERE idem_key != ''; "
                 "INSERT INTO forwarded_keys(digest, sent_ms) VALUES(" + by_route("k-9", "mail-send") + ", " +
                 std::to_string(wall_ms - 5000) + "), (" + by_route("k-8", "mail-send-old") + ", " +
                 std::to_string(wall_ms - 5000) + "); "
                 "INSERT INTO config_versions(at_ms, actor, reason, json) VALUES(" + std::to_string(wall_ms - 3'600'000) +
                 ", 'file', 'start', '{\"routes\": [{\"name\": \"mail-send-old\"}]}')").c_str());
    auto send_with_key = [&](std::uint16_t port, const std::string& key) {
        return send_keyed(port, key, R"({"to":[1]})");
    };
    {
        proxy_instance bb{config};
        ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume", "ops", "misfire", bb.server().now()));
        for (const char* key : {"k-9", "k-8"}) {
            const auto retry = send_with_key(bb.port(), key);
            EXPECT_EQ(retry.result_int(), 409u) << key << ": " << retry.body();
            EXPECT_NE(retry.body().find("already_forwarded"), std::string::npos) << retry.body();
        }
        EXPECT_EQ(send_with_key(bb.port(), "k-10").result_int(), 202u) << "another key is held as usual";
    }
    // An upgrade a day and an hour ago: those keys aged out, and are not looked for.
    sqlite_exec(dir + "/bb.db", "UPDATE schema_version SET applied_ms = applied_ms - 90000000 WHERE version = 13");
    proxy_instance bb{config};
    EXPECT_EQ(send_with_key(bb.port(), "k-9").result_int(), 202u);
    EXPECT_EQ(up.request_count(), 0u);
}

// A client that gives up while its request still waits for the upstream's connection (a
// slow TLS handshake here): nothing went out, so nothing of it may stay behind. Its key was
// remembered as sent and its recipients booked: the retry, once the breaker trips, got 409
// already_forwarded (a client reads that as delivered: the mail was lost), and counted twice.
TEST(quarantine, a_request_its_client_left_before_it_was_sent_leaves_nothing_behind) {
    auto silent = std::make_unique<loopback_socket>(true);  // never answers the TLS handshake
    const auto dir = temp_dir();
    std::string cfg = quarantine_config(silent->port(), dir, 1);
    const std::string plain = "\"url\": \"http://127.0.0.1:";
    cfg.replace(cfg.find(plain), plain.size(), "\"connect_timeout\": \"30s\", \"url\": \"https://127.0.0.1:");
    // One worker: what it does once the handshake is dropped comes before the retry's turn.
    cfg.replace(cfg.find("\"workers\": 2"), 12, "\"workers\": 1");
    proxy_instance bb{cfg};
    const std::string body = R"({"to":[1]})";
    {
        raw_client c{bb.port()};
        c.send("POST /v3/mail/send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Campaign-Id: c\r\n"
               "Idempotency-Key: k-1\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
        const int conn = silent->accept();  // the request waits on this handshake now
        ASSERT_GE(conn, 0) << "breakerbox never connected to the upstream";
        c.close();  // the client gives up
        char buf[4096];
        while (::recv(conn, buf, sizeof buf, 0) > 0) {
        }  // until breakerbox drops the handshake it gave up on
        ::close(conn);
    }
    silent.reset();
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume", "ops", "misfire", bb.server().now()));
    auto send = [&](const std::string& key) {
        return http_request(bb.port(), http::verb::post, "/v3/mail/send", body,
                            {{"content-type", "application/json"}, {"x-campaign-id", "c"}, {"idempotency-key", key}});
    };
    auto recipients = [&] {
        const auto m = bb.server().current_runtime()->engine->read("recipients", "c", bb.server().now());
        return m ? m->value : -1;
    };
    EXPECT_EQ(send("k-2").result_int(), 202u);  // held: counts against the caps it would use
    EXPECT_EQ(recipients(), 1) << "the recipients of the request never sent still count";
    const auto retry = send("k-1");
    EXPECT_EQ(retry.result_int(), 202u) << "the first try never left: " << retry.body();
    EXPECT_FALSE(retry["x-breakerbox-ticket"].empty());
    EXPECT_EQ(recipients(), 2);
}

// A request whose rule trips a quarantine waits for the breaker state's save, then the other
// rules judge it and book what it sends. They read its headers through a list shared by the
// worker's requests, which another request refilled meanwhile: the count was booked under the
// other request's campaign (or read freed memory).
TEST(quarantine, the_rules_after_a_trip_read_this_requests_own_headers) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string cfg = quarantine_config(up.port(), dir, 0);
    cfg.replace(cfg.find("\"workers\": 2"), 12, "\"workers\": 1");  // both requests on one thread
    cfg.replace(cfg.find("\"breakers\": ["), 13, "\"breakers\": [{\"id\": \"other\", \"action\": \"pause\", \"reset\": \"manual\"}, ");
    cfg.replace(cfg.find("\"rules\": ["), 10,
                "\"rules\": [{\"id\": \"count\", \"route\": \"mail-send\", \"key\": [\"header:x-campaign-id\"], "
                "\"measure\": {\"sum\": \"count($.to[*])\"}, \"window\": \"1h\", \"limit\": 1000, "
                "\"failure_mode\": \"volume-spike\", \"trips\": \"other\"}, ");
    proxy_instance bb{cfg};
    bb.server().pause_breaker_state_writes(true);
    auto one = std::async(std::launch::async, [&] { return send_mail(bb.port(), "one", R"({"to":[1]})"); });
    EXPECT_EQ(one.wait_for(std::chrono::milliseconds{300}), std::future_status::timeout) << "held before its trip was saved";
    auto two = std::async(std::launch::async, [&] { return send_mail(bb.port(), "two", R"({"to":[1,2]})"); });
    EXPECT_EQ(two.wait_for(std::chrono::milliseconds{300}), std::future_status::timeout);
    bb.server().pause_breaker_state_writes(false);
    EXPECT_EQ(one.get().result_int(), 202u);
    EXPECT_EQ(two.get().result_int(), 202u);
    auto counted = [&](const char* campaign) {
        const auto m = bb.server().current_runtime()->engine->read("count", campaign, bb.server().now());
        return m ? m->value : 0;
    };
    EXPECT_EQ(counted("one"), 1) << "booked under another request's campaign";
    EXPECT_EQ(counted("two"), 2);
}

// The same across a restart (a deploy between the client's timeout and its retry): the keys
// of requests sent live are saved to the store (what a failed save had goes with the next)
// and read back at start.
TEST(quarantine, a_retry_after_a_restart_of_a_request_sent_live_is_not_held) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    auto send_with_key = [&](std::uint16_t port, const std::string& key) {
        return send_keyed(port, key, R"({"to":[1]})");
    };
    {
        // Periodic saves stretched to an hour: only the test's own saves run.
        proxy_instance bb{quarantine_config(up.port(), dir, 1000), nullptr, std::chrono::hours{1}};
        ASSERT_EQ(send_with_key(bb.port(), "k-1").result_int(), 202u);
        // The store refuses the first save: k-1 goes with the next (as every second).
        bb.server().db()->inject_write_fault(SQLITE_IOERR, 1'000'000);
        EXPECT_FALSE(bb.server().save_forwarded_keys(true));
        bb.server().db()->inject_write_fault(SQLITE_IOERR, 0);
        ASSERT_TRUE(bb.server().save_forwarded_keys(true));
        EXPECT_TRUE(bb.server().save_forwarded_keys(true)) << "nothing changed since: nothing written";
        ASSERT_EQ(send_with_key(bb.port(), "k-2").result_int(), 202u);  // saved at shutdown
        ASSERT_EQ(up.request_count(), 2u);
        bb.stop();
        EXPECT_EQ(bb.exit_code(), 0);
    }
    proxy_instance bb{quarantine_config(up.port(), dir, 1000)};
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume", "ops", "misfire", bb.server().now()));
    for (const char* key : {"k-1", "k-2"}) {
        const auto retry = send_with_key(bb.port(), key);
        EXPECT_EQ(retry.result_int(), 409u) << key << ": " << retry.body();
        EXPECT_NE(retry.body().find("already_forwarded"), std::string::npos) << retry.body();
    }
    const auto other = send_with_key(bb.port(), "k-3");
    EXPECT_EQ(other.result_int(), 202u);
    EXPECT_FALSE(other["x-breakerbox-ticket"].empty());
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    EXPECT_EQ(bb.server().remediation().release_matching(f, 0, "ops").get().released, 1u);
    EXPECT_EQ(up.request_count(), 3u) << "k-1 or k-2 sent a second time by a release";
}

// ...and when the machine's wall clock was set back across the restart (a VM restored, a
// wrong clock corrected by NTP at boot): the keys' send times are then "in the future" of
// the new process. They are remembered as sent now, not dropped as unreadable or aged out.
TEST(quarantine, a_retry_after_a_restart_with_the_wall_clock_set_back_is_not_held) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    auto send_with_key = [&](std::uint16_t port, const std::string& key) {
        return send_keyed(port, key, R"({"to":[1]})");
    };
    {
        bb::manual_clock before;
        proxy_instance bb{quarantine_config(up.port(), dir, 1000), &before};
        ASSERT_EQ(send_with_key(bb.port(), "k-1").result_int(), 202u);
        bb.stop();
        EXPECT_EQ(bb.exit_code(), 0);
    }
    bb::manual_clock after;
    after.step_wall(-std::chrono::hours{2});
    proxy_instance bb{quarantine_config(up.port(), dir, 1000), &after};
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume", "ops", "misfire", bb.server().now()));
    const auto retry = send_with_key(bb.port(), "k-1");
    EXPECT_EQ(retry.result_int(), 409u) << retry.body();
    EXPECT_NE(retry.body().find("already_forwarded"), std::string::npos) << retry.body();
    // Remembered as sent at the restart: forgotten a day after it, like a key sent then.
    after.advance(std::chrono::hours{23});
    EXPECT_EQ(send_with_key(bb.port(), "k-1").result_int(), 409u);
    after.advance(std::chrono::hours{2});
    const auto late = send_with_key(bb.port(), "k-1");
    EXPECT_EQ(late.result_int(), 202u) << late.body();
    EXPECT_EQ(up.request_count(), 1u);
}

// The key of a request sent live reaches the store on its own short tick, while the request
// still waits for its answer: a crash that cuts it off (the request its client will retry)
// does not forget it. The periodic meter saves are stretched to an hour here, so nothing
// else writes it (before, the keys went with them, once a second).
TEST(quarantine, the_key_of_a_request_in_flight_is_saved_before_its_answer) {
    fake_upstream up{[](const request&) {
        behaviour b;
        b.what = behaviour::kind::hang;
        return b;
    }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 1000), nullptr, std::chrono::hours{1},
                      std::chrono::milliseconds{50}};
    raw_client c{bb.port()};
    const std::string body = R"({"to":[1]})";
    c.send("POST /v3/mail/send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-campaign-id: c\r\n"
           "Idempotency-Key: k-1\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    ASSERT_TRUE(up.wait_for([&] { return up.request_count() == 1; }));
    auto saved_keys = [&] { return sqlite_count(dir + "/bb.db", "forwarded_keys"); };
    for (int i = 0; i < 10'000 && saved_keys() < 1; ++i) {  // bounded: polls the store, never a time
        pollfd none{};
        ::poll(&none, 0, 1);
    }
    EXPECT_EQ(saved_keys(), 1) << "the key is in the store while its request is in flight";
    c.close();
}

// A send that went nowhere (no connection) is not remembered: its retry is held as usual.
TEST(quarantine, a_retry_of_a_request_that_reached_no_upstream_is_held) {
    std::uint16_t dead_port = 0;
    {
        fake_upstream gone;
        dead_port = gone.port();
    }
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(dead_port, dir, 1000)};
    auto send_with_key = [&](const std::string& key) {
        return send_keyed(bb.port(), key, R"({"to":[1]})");
    };
    const auto first = send_with_key("k-1");
    ASSERT_EQ(first.result_int(), 502u) << first.body();
    ASSERT_NE(first.body().find("upstream_connect_failed"), std::string::npos) << first.body();
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume", "ops", "misfire", bb.server().now()));
    const auto retry = send_with_key("k-1");
    EXPECT_EQ(retry.result_int(), 202u) << retry.body();
    EXPECT_FALSE(retry["x-breakerbox-ticket"].empty());
}

// The same while the hold is still queued for the store (the client gave up before its 202
// and the breaker was reset meanwhile): the retry's lookup waits behind the hold, finds it
// and is not sent.
TEST(quarantine, a_live_retry_while_its_hold_is_queued_waits_for_it_and_is_not_sent) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    // Periodic saves stretched to an hour: the store ops counted below are the requests' own.
    proxy_instance bb{quarantine_config(up.port(), dir, 1000), nullptr, std::chrono::hours{1}};
    auto* db = bb.server().db();
    auto send_with_key = [&] {
        return http_request(bb.port(), http::verb::post, "/v3/mail/send", R"({"to":[1]})",
                            {{"content-type", "application/json"}, {"x-campaign-id", "c"}, {"idempotency-key", "k-9"}});
    };
    auto wait_queued = [&](std::uint64_t n) {
        wait_until([&] { return db->stats().queued >= n; }, 5000);
        return db->stats().queued;
    };
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume", "ops", "misfire", bb.server().now()));
    ASSERT_TRUE(bb.server().flush_breaker_state());  // the trip's save is not the op waited for below
    db->flush();
    const auto queued_before = db->stats().queued;
    db->pause_writer(true);
    response held;
    std::thread first{[&] { held = send_with_key(); }};
    ASSERT_GT(wait_queued(queued_before + 1), queued_before) << "the hold is queued";
    const auto hold_queued = db->stats().queued;
    ASSERT_TRUE(bb.server().breakers()->reset("campaign-volume", "ops", "fixed", bb.server().now()));
    wait_until([&] { return db->stats().queued > hold_queued; }, 500);  // the reset's state save, queued too
    const auto queued_now = db->stats().queued;
    response retry;
    std::thread second{[&] { retry = send_with_key(); }};
    // Queued behind the hold (or, were it not looked up, already at the upstream).
    EXPECT_TRUE(wait_until([&] { return db->stats().queued > queued_now || up.request_count() > 0; }, 5000));
    db->pause_writer(false);
    first.join();
    second.join();
    ASSERT_EQ(held.result_int(), 202u) << held.body();
    EXPECT_EQ(retry.result_int(), 202u) << retry.body();
    EXPECT_EQ(retry["x-breakerbox-ticket"], held["x-breakerbox-ticket"]);
    EXPECT_EQ(up.request_count(), 0u) << "sent beside the hold that will be released";
    // The retry noted its key as about to be sent, then was not sent: the note is gone, so
    // once the breaker quarantines again a third try is the same hold, not "already sent".
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume", "ops", "again", bb.server().now()));
    const auto third = send_with_key();
    EXPECT_EQ(third.result_int(), 202u) << third.body();
    EXPECT_EQ(third["x-breakerbox-ticket"], held["x-breakerbox-ticket"]);
}

// A client that retries its held request (it never saw the 202) gets the first ticket, and
// the retry is not counted again: the held request's amount is in the windows once.
TEST(quarantine, a_retried_hold_is_counted_once) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 1000)};
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume/c", "ops", "misfire", bb.server().now()));
    auto send = [&] {
        return http_request(bb.port(), http::verb::post, "/v3/mail/send", R"({"to":[1,2,3,4,5]})",
                            {{"content-type", "application/json"}, {"x-campaign-id", "c"}, {"idempotency-key", "k-5"}});
    };
    auto counted = [&] {
        const auto m = bb.server().current_runtime()->engine->read("recipients", "c", bb.server().now());
        return m ? m->value : -1.0;
    };
    const auto first = send();
    ASSERT_EQ(first.result_int(), 202u) << first.body();
    const double once = counted();
    for (int i = 0; i < 2; ++i) {
        const auto retry = send();
        ASSERT_EQ(retry.result_int(), 202u) << retry.body();
        EXPECT_EQ(retry["x-breakerbox-ticket"], first["x-breakerbox-ticket"]);
    }
    EXPECT_EQ(counted(), once) << "each retry of the held request added its recipients again";
    EXPECT_EQ(up.request_count(), 0u);
}

// A live send waiting for its hold lookup, and a retry of it that a breaker quarantines
// meanwhile (here: another campaign's instance, tripped and saved before): the retry must
// see the live send (409 already_forwarded) rather than be held, or the lookup, queued
// before the hold, finds nothing, the first goes out, and a release sends the second.
TEST(quarantine, a_retry_held_while_a_live_send_waits_for_its_lookup_is_refused) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    // Periodic saves stretched to an hour: the store ops counted below are the requests' own.
    proxy_instance bb{quarantine_config(up.port(), dir, 1000), nullptr, std::chrono::hours{1}};
    auto* db = bb.server().db();
    auto send = [&](const std::string& campaign) {
        return http_request(bb.port(), http::verb::post, "/v3/mail/send", R"({"to":[1]})",
                            {{"content-type", "application/json"}, {"x-campaign-id", campaign}, {"idempotency-key", "k-7"}});
    };
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume/c2", "ops", "misfire", bb.server().now()));
    ASSERT_TRUE(bb.server().flush_breaker_state());
    // An earlier hold of k-7 that failed (quarantine_full, say) left its key behind: the
    // live send looks it up, and the lookup waits in the store's queue.
    db->expect_hold("k-7", "");
    db->flush();
    const auto queued_before = db->stats().queued;
    db->pause_writer(true);
    response live;
    std::thread first{[&] { live = send("c1"); }};
    ASSERT_TRUE(wait_until([&] { return db->stats().queued > queued_before; }, 5000)) << "the lookup is queued";
    const auto lookup_queued = db->stats().queued;
    std::atomic<bool> answered{false};
    response retry;
    std::thread second{[&] {
        retry = send("c2");
        answered = true;
    }};
    // Answered at once (refused), or queued behind the lookup (held: the defect).
    EXPECT_TRUE(wait_until([&] { return answered.load() || db->stats().queued > lookup_queued; }, 5000));
    db->pause_writer(false);
    first.join();
    second.join();
    EXPECT_EQ(live.result_int(), 202u) << live.body();
    EXPECT_EQ(up.request_count(), 1u);
    EXPECT_EQ(retry.result_int(), 409u) << retry.body();
    EXPECT_NE(retry.body().find("already_forwarded"), std::string::npos) << retry.body();
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    EXPECT_TRUE(db->list(f).empty()) << "held beside the live send: a release would send k-7 twice";
}

// Holds the breaker state writer back until the returned handle is reset, and then (or
// however the test ends) resumes it and joins `client`.
std::shared_ptr<void> hold_state_writes(proxy_instance& bb, std::thread& client) {
    bb.server().pause_breaker_state_writes(true);
    return {nullptr, [&bb, &client](void*) {
                bb.server().pause_breaker_state_writes(false);
                if (client.joinable()) {
                    client.join();
                }
            }};
}

// A hold's 202 says the breaker quarantines this traffic; it goes out only once the saved
// breaker state holds that trip, so a crash right after the 202 finds the breaker tripped
// (PRODUCT.md principle 2). Here the trip is not saved yet when the hold commits (the
// breaker state writer is held back): the 202 waits for the save. The same for a 503 of
// a paused breaker.
TEST(quarantine, a_hold_is_answered_only_once_the_trip_it_reports_is_saved) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 1000)};
    auto* db = bb.server().db();
    ASSERT_NE(db, nullptr);
    auto saved_open = [&] {
        std::string err;
        const auto saved = db->load_breaker_state(bb.server().time(), &err);
        EXPECT_TRUE(saved) << err;
        return saved && std::any_of(saved->begin(), saved->end(), [](const auto& s) {
                   return s.instance == "campaign-volume" && s.st == bb::breakers::state::open;
               });
    };
    std::thread client;
    auto resume = hold_state_writes(bb, client);
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume", "ops", "misfire", bb.server().now()));
    std::promise<response> answer;
    auto answered = answer.get_future();
    client = std::thread{[&] { answer.set_value(send_mail(bb.port(), "c", R"({"to":[1]})")); }};
    ASSERT_TRUE(wait_until([&] { return db->counts().held_count == 1; }, 5000)) << "the hold commits";
    EXPECT_EQ(answered.wait_for(300ms), std::future_status::timeout)
        << "answered 202 while the trip it reports is not saved";
    EXPECT_FALSE(saved_open());
    resume.reset();
    const auto res = answered.get();
    EXPECT_EQ(res.result_int(), 202u) << res.body();
    EXPECT_EQ(res["x-breakerbox-decision"], "quarantined");
    EXPECT_TRUE(saved_open());
    EXPECT_EQ(up.request_count(), 0u);
}

// The same for a pause breaker's 503.
TEST(quarantine, a_paused_answer_waits_for_the_trip_it_reports_to_be_saved) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string cfg = quarantine_config(up.port(), dir, 1000);
    const std::string quarantine = R"("action": "quarantine")";
    cfg.replace(cfg.find(quarantine), quarantine.size(), R"("action": "pause")");
    proxy_instance bb{cfg};
    std::thread client;
    auto resume = hold_state_writes(bb, client);
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume", "ops", "misfire", bb.server().now()));
    std::promise<response> refused;
    auto refused_answer = refused.get_future();
    client = std::thread{[&] { refused.set_value(send_mail(bb.port(), "c", R"({"to":[1]})")); }};
    EXPECT_EQ(refused_answer.wait_for(300ms), std::future_status::timeout)
        << "answered 503 while the trip it reports is not saved";
    resume.reset();
    EXPECT_EQ(refused_answer.get().result_int(), 503u);
    EXPECT_EQ(up.request_count(), 0u);
}

// And for a sandbox breaker's dry run: its answer (x-breakerbox-decision: sandboxed) tells the
// client its traffic is switched; the dry run is sent only once that trip is saved, so a
// crash right after it does not come back with the traffic going live. (It used to go
// straight out: the one containing answer that did not wait.)
TEST(quarantine, a_sandboxed_answer_waits_for_the_trip_it_reports_to_be_saved) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    fake_upstream sink{[](const request&) { return respond(200, "{}"); }};
    const auto dir = temp_dir();
    std::string cfg = quarantine_config(up.port(), dir, 1000);
    const std::string quarantine = R"("action": "quarantine")";
    cfg.replace(cfg.find(quarantine), quarantine.size(), R"("action": "sandbox", "sandbox": {"upstream": "sink"})");
    const std::string upstreams_end = "\"}],\"routes\"";
    cfg.replace(cfg.find(upstreams_end), upstreams_end.size(),
                "\"}, {\"name\": \"sink\", \"url\": \"http://127.0.0.1:" + std::to_string(sink.port()) +
                    "\"}],\"routes\"");
    proxy_instance bb{cfg};
    std::thread client;
    auto resume = hold_state_writes(bb, client);
    ASSERT_TRUE(bb.server().breakers()->manual_trip("campaign-volume", "ops", "misfire", bb.server().now()));
    std::promise<response> sandboxed;
    auto sandboxed_answer = sandboxed.get_future();
    client = std::thread{[&] { sandboxed.set_value(send_mail(bb.port(), "c", R"({"to":[1]})")); }};
    EXPECT_EQ(sandboxed_answer.wait_for(300ms), std::future_status::timeout)
        << "answered as sandboxed while the trip it reports is not saved";
    EXPECT_EQ(sink.request_count(), 0u);
    resume.reset();
    const auto res = sandboxed_answer.get();
    EXPECT_EQ(res.result_int(), 200u) << res.body();
    EXPECT_EQ(res["x-breakerbox-decision"], "sandboxed");
    EXPECT_EQ(sink.request_count(), 1u);
    EXPECT_EQ(up.request_count(), 0u);
}

// The upstream took the replay but the store could not record it, and kept failing for
// the few seconds the result is tried again: that is an unknown outcome, not "nothing was
// saved" (which would invite a second release).
TEST(quarantine, a_replay_whose_result_cannot_be_recorded_is_reported_as_sent) {
    std::atomic<bb::store::database*> db{nullptr};
    fake_upstream up{[&](const request&) {
        db.load()->inject_write_fault(SQLITE_FULL, 1000, bb::store::fault_point::first_write);
        return respond(202, "");
    }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    db = bb.server().db();
    std::vector<std::string> tickets;
    ASSERT_NO_FATAL_FAILURE(hold_numbered(bb.port(), 2, tickets));
    auto r = bb.server().remediation().release(tickets[0], "ops").get();
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.code, "outcome_unknown");
    EXPECT_EQ(r.count, 202);
    EXPECT_NE(r.message.find("could not be recorded"), std::string::npos) << r.message;
    EXPECT_EQ(bb.server().db()->get(tickets[0])->state, bb::store::held_state::releasing);
    bb.server().db()->inject_write_fault(SQLITE_FULL, 0);  // the store recovers
    auto again = bb.server().remediation().release(tickets[0], "ops").get();
    EXPECT_EQ(again.code, "invalid_state") << "never sent twice";
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    auto sum = bb.server().remediation().release_matching(f, 0, "ops").get();
    EXPECT_EQ(sum.matched, 1u);
    EXPECT_EQ(sum.unknown, 1u) << "counted as sent with an unknown outcome, not skipped";
    EXPECT_EQ(sum.skipped, 0u);
    EXPECT_EQ(up.request_count(), 2u);
    bb.server().db()->inject_write_fault(SQLITE_FULL, 0);
}

// One request held behind a proxy whose upstream, on every request it gets, makes the
// store refuse its next `faults` writes (the replay's result among them).
struct refused_result {
    std::atomic<bb::store::database*> db{nullptr};
    fake_upstream up;
    std::string dir = temp_dir();
    std::optional<proxy_instance> proxy;
    std::string ticket;

    explicit refused_result(int faults)
        : up{[this, faults](const request&) {
              db.load()->inject_write_fault(SQLITE_FULL, faults, bb::store::fault_point::first_write);
              return respond(202, "");
          }} {
        proxy.emplace(quarantine_config(up.port(), dir, 0));
        db = proxy->server().db();
        auto res = send_mail(proxy->port(), "c", R"({"to":[1]})");
        EXPECT_EQ(res.result_int(), 202u);
        ticket = std::string{res["x-breakerbox-ticket"]};
    }
    bb::store::result release() { return proxy->server().remediation().release(ticket, "ops").get(); }
};

// The store refused a replay's result for longer than the release waited (a full disk
// freed later): the record is not left `releasing` until a restart turns it
// outcome_unknown, the known result is recorded in the background once the store takes it.
TEST(quarantine, a_replay_result_the_store_refused_is_recorded_once_it_recovers) {
    refused_result t{1000};
    EXPECT_EQ(t.release().code, "outcome_unknown");
    auto& rem = t.proxy->server().remediation();
    EXPECT_EQ(rem.unrecorded(), 1u);
    EXPECT_EQ(t.db.load()->get(t.ticket)->state, bb::store::held_state::releasing);
    t.db.load()->inject_write_fault(SQLITE_FULL, 0);  // the store recovers
    for (int i = 0; i < 15'000 && rem.unrecorded() > 0; ++i) {  // bounded poll
        pollfd none{};
        ::poll(&none, 0, 1);
    }
    EXPECT_EQ(rem.unrecorded(), 0u);
    const auto rec = t.db.load()->get(t.ticket);
    ASSERT_TRUE(rec);
    EXPECT_EQ(rec->state, bb::store::held_state::released) << "the upstream's 202, recorded late";
    EXPECT_EQ(t.up.request_count(), 1u);
}

// The same when the server stops before the background retry: the result is recorded at
// shutdown, so the record is released after the restart, not outcome_unknown.
TEST(quarantine, a_replay_result_the_store_refused_is_recorded_at_shutdown) {
    refused_result t{1000};
    EXPECT_EQ(t.release().code, "outcome_unknown");
    t.db.load()->inject_write_fault(SQLITE_FULL, 0);  // recovers; stopped before the first retry (1 s)
    t.proxy->stop();
    EXPECT_EQ(t.proxy->exit_code(), 0);
    t.proxy.reset();
    proxy_instance again{quarantine_config(t.up.port(), t.dir, 0)};
    const auto rec = again.server().db()->get(t.ticket);
    ASSERT_TRUE(rec);
    EXPECT_EQ(rec->state, bb::store::held_state::released);
    EXPECT_EQ(t.up.request_count(), 1u);
}

// A passing store failure while the result of a replay is recorded (two refused writes):
// recorded on a later try, released, sent once.
TEST(quarantine, a_replay_result_is_recorded_after_a_passing_store_failure) {
    refused_result t{2};
    const auto r = t.release();
    EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
    EXPECT_EQ(t.db.load()->get(t.ticket)->state, bb::store::held_state::released);
    EXPECT_EQ(t.up.request_count(), 1u);
}

// SIGTERM while a release waits for its begin to be recorded: it is not sent (a kill at the end
// of the drain would cut it mid-exchange, outcome_unknown), and can be released again.
TEST(quarantine, a_release_begun_as_the_server_stops_sends_nothing) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    std::vector<std::string> tickets;
    ASSERT_NO_FATAL_FAILURE(hold_numbered(bb.port(), 1, tickets));
    auto* db = bb.server().db();
    db->flush();
    const auto queued_before = db->stats().queued;
    db->pause_writer(true);
    auto release = bb.server().remediation().release(tickets[0], "ops");
    ASSERT_TRUE(wait_until([&] { return db->stats().queued > queued_before; }, 5000))
        << "the begin of the release waits for the store";
    bb.server().request_stop();
    ASSERT_TRUE(wait_until([&] { return bb.server().remediation().stopping(); }, 5000));
    db->pause_writer(false);
    const auto refused = release.get();
    EXPECT_FALSE(refused.ok);
    EXPECT_EQ(refused.code, "shutting_down") << refused.message;
    EXPECT_NE(refused.message.find("nothing was sent"), std::string::npos) << refused.message;
    bb.stop();
    EXPECT_EQ(up.request_count(), 0u) << "sent while the server stopped";
    const auto rec = bb.server().db()->get(tickets[0]);
    ASSERT_TRUE(rec);
    EXPECT_EQ(rec->state, bb::store::held_state::release_failed) << "an attempt, nothing sent: releasable again";
}

// SIGTERM (request_stop) during a paced release: nothing more is sent, the rest stays held,
// and the release does not hold up the exit.
TEST(quarantine, a_paced_release_stops_sending_when_the_server_stops) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    std::vector<std::string> tickets;
    ASSERT_NO_FATAL_FAILURE(hold_numbered(bb.port(), 6, tickets));
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    auto pending = bb.server().remediation().release_matching(f, 2.0, "ops");  // 2.5 s for all six
    ASSERT_TRUE(up.wait_for([&] { return up.request_count() >= 1; }));
    bb.server().request_stop();
    ASSERT_EQ(pending.wait_for(std::chrono::seconds{5}), std::future_status::ready);
    const auto sum = pending.get();
    EXPECT_TRUE(sum.stopped);
    EXPECT_LE(sum.released, 2u);
    bb.stop();
    const auto sent = up.request_count();
    EXPECT_LE(sent, 2u);
    std::size_t held = 0;
    for (const auto& t : tickets) {
        held += bb.server().db()->get(t)->state == bb::store::held_state::held ? 1 : 0;
    }
    EXPECT_EQ(held, tickets.size() - sent);
}

TEST(quarantine, a_release_whose_outcome_is_unknown_is_not_sent_again) {
    std::atomic<int> calls{0};
    fake_upstream up{[&](const request&) {
        ++calls;
        behaviour b;
        b.what = behaviour::kind::reset_before_headers;
        return b;
    }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    auto res = send_mail(bb.port(), "c", R"({"to":[1]})");
    ASSERT_EQ(res.result_int(), 202u);
    const std::string ticket{res["x-breakerbox-ticket"]};
    auto r = bb.server().remediation().release(ticket, "ops").get();
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.code, "outcome_unknown");
    EXPECT_EQ(bb.server().db()->get(ticket)->state, bb::store::held_state::outcome_unknown);
    bb::store::list_filter f;
    auto sum = bb.server().remediation().release_matching(f, 0, "ops").get();
    EXPECT_EQ(sum.matched, 0u);
    EXPECT_EQ(calls.load(), 1);
    // Discard is the operator's other choice.
    auto d = bb.server().remediation().discard(ticket, "ops", "customer already emailed").get();
    EXPECT_TRUE(d.ok) << d.message;
    EXPECT_EQ(bb.server().db()->get(ticket)->discard_reason, "customer already emailed");
}

// 503 and every 4xx (401/403: credentials expired while held; 404: a base_path a reload got
// wrong; 400: never taken) say the upstream did not take the request (retry allowed, the
// record stays, never reported as delivered); a 500 or a gateway's 502/504 may follow a
// partial send: outcome unknown, never re-sent by a filter; a 2xx is delivered.
TEST(quarantine, replay_answers_decide_between_release_failed_and_outcome_unknown) {
    // 1503: a 503 with Retry-After.
    std::atomic<int> status{503};
    fake_upstream up{[&](const request&) {
        if (status.load() == 1503) {
            auto r = respond(503, "{}");
            r.res.set(http::field::retry_after, "30");
            return r;
        }
        return respond(static_cast<unsigned>(status.load()), "{}");
    }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    std::map<int, std::string> tickets;
    // A redirect that keeps the method (a moved endpoint) did not take it either, nor a 503
    // asking to come back later.
    const std::set<int> not_taken{307, 308, 400, 401, 403, 404, 408, 409, 422, 425, 429, 1503};
    // 303 See Other answers a POST that was processed, and so, as often, do 301 and 302
    // (post/redirect/get); a 3xx no RFC defines may have been too: unknown (a
    // release_failed record is released again without force). So may a bare 503 (a
    // gateway's answer to a connection reset after the request went out).
    for (int s : {503, 1503, 429, 401, 403, 408, 409, 425, 500, 502, 504, 400, 404, 422, 202, 200, 301, 302, 307, 308, 303, 399}) {
        auto res = send_mail(bb.port(), "c", R"({"to":[1]})");
        ASSERT_EQ(res.result_int(), 202u);
        tickets[s] = std::string{res["x-breakerbox-ticket"]};
    }
    for (const auto& [s, ticket] : tickets) {
        status = s;
        auto r = bb.server().remediation().release(ticket, "ops").get();
        const auto state = bb.server().db()->get(ticket)->state;
        if (not_taken.count(s) != 0) {
            EXPECT_EQ(r.code, "release_failed") << s;
            EXPECT_EQ(state, bb::store::held_state::release_failed) << s;
        } else if (s >= 500 || s == 301 || s == 302 || s == 303 || s == 399) {
            EXPECT_EQ(r.code, "outcome_unknown") << s;
            EXPECT_EQ(state, bb::store::held_state::outcome_unknown) << s;
        } else {
            EXPECT_TRUE(r.ok) << s;
            EXPECT_EQ(state, bb::store::held_state::released) << s;
        }
    }
}

TEST(quarantine, large_binary_bodies_round_trip_byte_identical) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    // The cap rule reads JSON; a binary body would be rejected by it, so trip by hand and
    // send on a campaign key the rule never needs the body for... it does: use a JSON body
    // with a 5 MiB binary-ish string instead.
    std::string big = "{\"to\":[1],\"blob\":\"";
    for (int i = 0; i < 5 * 1024 * 1024; ++i) {
        big += static_cast<char>('a' + (i * 7) % 26);
    }
    big += "\"}";
    auto res = send_mail(bb.port(), "big", big);
    ASSERT_EQ(res.result_int(), 202u);
    const std::string ticket{res["x-breakerbox-ticket"]};
    EXPECT_EQ(bb.server().db()->get(ticket)->body, big);
    auto r = bb.server().remediation().release(ticket, "ops").get();
    EXPECT_TRUE(r.ok) << r.message;
    ASSERT_EQ(up.request_count(), 1u);
    EXPECT_EQ(up.requests()[0].req.body(), big);
}

TEST(quarantine, limits_answer_503_quarantine_full) {
    fake_upstream up;
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0, "\"per_breaker_max_held\": 2")};
    EXPECT_EQ(send_mail(bb.port(), "c", R"({"to":[1]})").result_int(), 202u);
    EXPECT_EQ(send_mail(bb.port(), "c", R"({"to":[1]})").result_int(), 202u);
    auto full = send_mail(bb.port(), "c", R"({"to":[1]})");
    EXPECT_EQ(full.result_int(), 503u);
    EXPECT_EQ(field_of(full, "code"), "quarantine_full");
    EXPECT_EQ(up.request_count(), 0u);
    // A reload's new limits hold from the next request (they were reported applied and
    // never enforced): raised, the breaker takes more; lowered, it refuses again.
    auto raised = bb::parse_config(quarantine_config(up.port(), dir, 0, "\"per_breaker_max_held\": 3"));
    ASSERT_TRUE(raised.errors.empty()) << raised.errors.to_string();
    bb.server().apply_config(raised.cfg);
    EXPECT_EQ(send_mail(bb.port(), "c", R"({"to":[1]})").result_int(), 202u);
    EXPECT_EQ(send_mail(bb.port(), "c", R"({"to":[1]})").result_int(), 503u);
    auto lowered = bb::parse_config(quarantine_config(up.port(), dir, 0, "\"max_held\": 1"));
    ASSERT_TRUE(lowered.errors.empty()) << lowered.errors.to_string();
    bb.server().apply_config(lowered.cfg);
    auto global = send_mail(bb.port(), "other", R"({"to":[1]})");
    EXPECT_EQ(global.result_int(), 503u);
    EXPECT_NE(global.body().find("limit 1"), std::string::npos) << global.body();
}

TEST(quarantine, a_failing_store_answers_503_never_202_and_recovers_by_itself) {
    fake_upstream up;
    const auto dir = temp_dir();
    proxy_instance bb{quarantine_config(up.port(), dir, 0)};
    auto first = send_mail(bb.port(), "c", R"({"to":[1],"n":"before"})");
    ASSERT_EQ(first.result_int(), 202u);
    bb.server().db()->inject_write_fault(SQLITE_FULL, 1);
    auto failed = send_mail(bb.port(), "c", R"({"to":[1],"n":"during"})");
    EXPECT_EQ(failed.result_int(), 503u);
    EXPECT_EQ(field_of(failed, "code"), "store_unavailable");
    EXPECT_TRUE(failed["x-breakerbox-ticket"].empty());
    auto after = send_mail(bb.port(), "c", R"({"to":[1],"n":"after"})");
    EXPECT_EQ(after.result_int(), 202u);
    EXPECT_EQ(up.request_count(), 0u) << "a request that cannot be held is never forwarded";
    EXPECT_EQ(bb.server().db()->get(std::string{first["x-breakerbox-ticket"]})->body, R"({"to":[1],"n":"before"})");
}

// A CA taken out of the upstream's ca_file stops being trusted for releases too (held mail
// and API credentials), at the reload, not at the next restart: the release pools are
// remade on any change of the upstream, the file's contents included.
TEST(quarantine, a_release_after_a_reload_that_removed_the_ca_is_not_sent) {
    fake_upstream up{[](const request&) { return respond(202, ""); }, std::string{BB_TEST_CERTS_DIR} + "/server.pem",
                     std::string{BB_TEST_CERTS_DIR} + "/server.key"};
    const auto dir = temp_dir();
    const std::string ca = dir + "/ca.pem";
    std::filesystem::copy_file(std::string{BB_TEST_CERTS_DIR} + "/ca.pem", ca);
    std::string cfg = quarantine_config(up.port(), dir, 0);
    const std::string http_url = "\"url\": \"http://127.0.0.1:" + std::to_string(up.port()) + "\"";
    cfg.replace(cfg.find(http_url), http_url.size(),
                "\"url\": \"https://localhost:" + std::to_string(up.port()) + "\", \"ca_file\": \"" + ca + "\"");
    proxy_instance bb{cfg};
    std::vector<std::string> tickets;
    for (int i = 0; i < 2; ++i) {
        auto res = send_mail(bb.port(), "c", R"({"to":[1]})");
        ASSERT_EQ(res.result_int(), 202u) << res.body();
        tickets.emplace_back(res["x-breakerbox-ticket"]);
    }
    auto first = bb.server().remediation().release(tickets[0], "ops").get();
    ASSERT_TRUE(first.ok) << first.message;
    ASSERT_EQ(up.request_count(), 1u);
    std::filesystem::copy_file(std::string{BB_TEST_CERTS_DIR} + "/self-signed.pem", ca,
                               std::filesystem::copy_options::overwrite_existing);
    auto next = bb::parse_config(cfg);
    ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
    bb.server().apply_config(next.cfg);
    auto second = bb.server().remediation().release(tickets[1], "ops").get();
    EXPECT_FALSE(second.ok);
    EXPECT_EQ(second.code, "release_failed") << second.message;
    EXPECT_EQ(up.request_count(), 1u) << "sent under the CA the reload removed";
}

// A switched-off agent sends nothing, its held requests included: a release (one, or a bulk
// one by breaker) is refused while agent/<id> is tripped, and goes once it is reset.
TEST(quarantine, a_switched_off_agents_held_requests_are_not_released) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    std::string cfg = quarantine_config(up.port(), dir, 0);
    cfg.insert(cfg.rfind('}'), ", \"agents\": [{\"id\": \"bot\", \"key_sha256\": [\"" + bb::sha256_hex("bot-key") + "\"]}]");
    proxy_instance bb{cfg};
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", R"({"to":[1]})",
                            {{"content-type", "application/json"}, {"x-campaign-id", "c"}, {"x-breakerbox-key", "bot-key"}});
    ASSERT_EQ(res.result_int(), 202u) << res.body();
    const std::string ticket{res["x-breakerbox-ticket"]};
    ASSERT_EQ(bb.server().db()->get(ticket)->agent, "bot");
    ASSERT_TRUE(bb.server().breakers()->manual_trip("agent/bot", "ops", "runaway", bb.server().now()));
    auto refused = bb.server().remediation().release(ticket, "ops").get();
    EXPECT_FALSE(refused.ok);
    EXPECT_EQ(refused.code, "agent_disabled") << refused.message;
    EXPECT_EQ(bb.server().db()->get(ticket)->state, bb::store::held_state::held);
    EXPECT_EQ(up.request_count(), 0u);
    ASSERT_TRUE(bb.server().breakers()->reset("agent/bot", "ops", "fixed", bb.server().now()));
    EXPECT_TRUE(bb.server().remediation().release(ticket, "ops").get().ok);
    EXPECT_EQ(up.request_count(), 1u);
}

// A release is judged again once it is begun: the begin waits for the store (seconds behind
// a flood of holds), and an agent put in sandbox mode meanwhile sends nothing; the attempt
// is recorded failed with the reason, and the request can be released once mended.
TEST(quarantine, a_release_is_judged_again_once_the_store_has_begun_it) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    auto with_agent = [&](bool sandbox) { return quarantine_config_with_agent(up.port(), dir, sandbox); };
    // Periodic saves stretched to an hour: the store ops counted below are the release's own.
    proxy_instance bb{with_agent(false), nullptr, std::chrono::hours{1}};
    auto reload = [&](bool sandbox) {
        auto parsed = bb::parse_config(with_agent(sandbox));
        ASSERT_TRUE(parsed.errors.empty()) << parsed.errors.to_string();
        bb.server().apply_config(parsed.cfg);
    };
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", R"({"to":[1]})",
                            {{"content-type", "application/json"}, {"x-campaign-id", "c"}, {"x-breakerbox-key", "bot-key"}});
    ASSERT_EQ(res.result_int(), 202u) << res.body();
    const std::string ticket{res["x-breakerbox-ticket"]};
    auto* db = bb.server().db();
    db->flush();
    const auto queued_before = db->stats().queued;
    db->pause_writer(true);
    auto release = bb.server().remediation().release(ticket, "ops");
    for (const auto until = std::chrono::steady_clock::now() + std::chrono::seconds{5};
         db->stats().queued == queued_before && std::chrono::steady_clock::now() < until;) {
        std::this_thread::yield();
    }
    ASSERT_GT(db->stats().queued, queued_before) << "the begin of the release waits for the store";
    reload(true);
    db->pause_writer(false);
    const auto refused = release.get();
    EXPECT_FALSE(refused.ok);
    EXPECT_EQ(refused.code, "agent_sandboxed") << refused.message;
    EXPECT_EQ(up.request_count(), 0u) << "sent by an agent put in sandbox mode while its release began";
    const auto rec = db->get(ticket);
    ASSERT_TRUE(rec);
    EXPECT_EQ(rec->state, bb::store::held_state::release_failed);
    EXPECT_NE(rec->detail.find("nothing was sent"), std::string::npos) << rec->detail;
    reload(false);
    EXPECT_TRUE(bb.server().remediation().release(ticket, "ops").get().ok);
    EXPECT_EQ(up.request_count(), 1u);

    // The same in a bulk release: counted failed (the record is release_failed now, not
    // among the held ones a rerun lists), not skipped.
    res = http_request(bb.port(), http::verb::post, "/v3/mail/send", R"({"to":[2]})",
                       {{"content-type", "application/json"}, {"x-campaign-id", "c"}, {"x-breakerbox-key", "bot-key"}});
    ASSERT_EQ(res.result_int(), 202u) << res.body();
    const std::string second{res["x-breakerbox-ticket"]};
    db->flush();
    const auto queued_then = db->stats().queued;
    db->pause_writer(true);
    bb::store::list_filter f;
    f.breaker = "campaign-volume";
    auto bulk = bb.server().remediation().release_matching(f, 0, "ops");
    for (const auto until = std::chrono::steady_clock::now() + std::chrono::seconds{5};
         db->stats().queued == queued_then && std::chrono::steady_clock::now() < until;) {
        std::this_thread::yield();
    }
    ASSERT_GT(db->stats().queued, queued_then);
    reload(true);
    db->pause_writer(false);
    const auto sum = bulk.get();
    EXPECT_EQ(sum.failed, 1u);
    EXPECT_EQ(sum.skipped, 0u);
    EXPECT_EQ(up.request_count(), 1u);
    EXPECT_EQ(db->get(second)->state, bb::store::held_state::release_failed);
}

// A release of `ticket`, one by one and then in bulk (`all`), refused as out_of_scope for
// `why`: nothing sent, the record still held. Returns the bulk run's summary. (`label` names
// the case in failures.)
bb::proxy::remediation_summary expect_release_refused(proxy_instance& bb, const fake_upstream& up,
                                                      const std::string& ticket, const bb::store::list_filter& all,
                                                      const std::string& why, const std::string& label) {
    const auto refused = bb.server().remediation().release(ticket, "ops").get();
    EXPECT_FALSE(refused.ok) << label;
    EXPECT_EQ(refused.code, "out_of_scope") << refused.message;
    EXPECT_NE(refused.message.find(why), std::string::npos) << refused.message;
    EXPECT_NE(refused.message.find("nothing was sent"), std::string::npos) << refused.message;
    EXPECT_EQ(bb.server().db()->get(ticket)->state, bb::store::held_state::held);
    const auto bulk = bb.server().remediation().release_matching(all, 0, "ops").get();
    EXPECT_EQ(bulk.released, 0u) << label;
    EXPECT_EQ(up.request_count(), 0u) << label;
    return bulk;
}

// An agent's allow list or constraints narrowed after its request was held (it misfired):
// a release, one by one or in bulk, sends nothing they would refuse live now.
TEST(quarantine, a_release_is_held_to_the_agents_scope_and_constraints_as_they_are_now) {
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    auto json = [&](const std::string& agent_fields) {
        std::string cfg = quarantine_config(up.port(), dir, 0);
        cfg.insert(cfg.rfind('}'), ", \"agents\": [{\"id\": \"bot\", \"key_sha256\": [\"" + bb::sha256_hex("bot-key") +
                                       "\"]" + agent_fields + "}]");
        return cfg;
    };
    auto with = [&](const std::string& agent_fields) {
        auto parsed = bb::parse_config(json(agent_fields));
        EXPECT_TRUE(parsed.errors.empty()) << parsed.errors.to_string();
        return parsed.cfg;
    };
    const std::string as_held = R"(, "allow": {"methods": ["POST"], "paths": ["/v3/*"]}, "constraints": {"max_recipients": 5})";
    proxy_instance bb{json(as_held)};
    // (`to` is what the test config's rule counts, to hold it.)
    const std::string two = R"({"to":[1],"personalizations":[{"to":[{"email":"a@example.com"},{"email":"b@example.com"}]}],)"
                            R"("from":{"email":"news@example.com"},"subject":"s","content":[{"type":"text/plain","value":"v"}]})";
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", two,
                            {{"content-type", "application/json"}, {"x-campaign-id", "c"}, {"x-breakerbox-key", "bot-key"}});
    ASSERT_EQ(res.result_int(), 202u) << res.body();
    const std::string ticket{res["x-breakerbox-ticket"]};
    ASSERT_FALSE(ticket.empty()) << "held";
    bb::store::list_filter all;
    for (const auto& [fields, why] : std::vector<std::pair<std::string, std::string>>{
             {R"(, "allow": {"methods": ["GET"]})", "method POST"},
             {R"(, "allow": {"paths": ["/v2/*"]})", "path /v3/mail/send"},
             {R"(, "constraints": {"max_recipients": 1})", "recipients"}}) {
        bb.server().apply_config(with(fields));
        const auto bulk = expect_release_refused(bb, up, ticket, all, why, fields);
        EXPECT_EQ(bulk.skipped, 1u) << fields;
    }
    // Widened again (as it was when held): released.
    bb.server().apply_config(with(as_held));
    EXPECT_TRUE(bb.server().remediation().release(ticket, "ops").get().ok);
    EXPECT_EQ(up.request_count(), 1u);
}

// The routes a held composite request's subrequests take are judged again at its release:
// an agent whose allow list lost the route one of them takes sends nothing through it.
TEST(quarantine, a_release_holds_composite_subrequests_to_the_routes_the_agent_may_use_now) {
    fake_upstream up{[](const request&) { return respond(200, "{}"); }};
    const auto dir = temp_dir();
    auto json = [&](const std::string& routes, const std::string& extra_route = "") {
        return "{\"workers\": 2, \"listeners\": [{\"name\": \"t\", \"address\": \"127.0.0.1:0\"}],"
               "\"store\": {\"path\": \"" + dir + "/bb.db\"},"
               "\"upstreams\": [{\"name\": \"salesforce\", \"url\": \"http://127.0.0.1:" + std::to_string(up.port()) + "\"},"
               "{\"name\": \"other\", \"url\": \"http://127.0.0.1:" + std::to_string(up.port()) + "/x\"}],"
               "\"routes\": [" + extra_route +
               "{\"name\": \"sf-composite\", \"match\": {\"path\": \"/services/data/v59.0/composite\"}, \"upstream\": \"salesforce\"},"
               "{\"name\": \"sf-accounts\", \"match\": {\"path_prefix\": \"/services/data/v59.0/sobjects/Account\"}, \"upstream\": \"salesforce\"},"
               "{\"name\": \"sf-any\", \"match\": {\"path_prefix\": \"/services/data/\"}, \"upstream\": \"salesforce\"}],"
               "\"failure_modes\": [{\"id\": \"writes\", \"title\": \"CRM writes\", \"severity\": \"sev2\"}],"
               "\"breakers\": [{\"id\": \"crm-writes\", \"action\": \"quarantine\", \"reset\": \"manual\"}],"
               "\"rules\": [{\"id\": \"subrequests\", \"route\": \"sf-composite\", \"key\": [\"header:x-campaign-id\"],"
               "\"measure\": {\"sum\": \"count($.compositeRequest[*])\"}, \"window\": \"1h\", \"limit\": 0,"
               "\"failure_mode\": \"writes\", \"trips\": \"crm-writes\"}],"
               "\"agents\": [{\"id\": \"bot\", \"key_sha256\": [\"" + bb::sha256_hex("bot-key") + "\"],"
               "\"allow\": {\"routes\": [" + routes + "]}}],"
               "\"log\": {\"level\": \"warn\", \"access_log\": \"off\"}}";
    };
    auto with = [&](const std::string& routes, const std::string& extra_route = "") {
        auto parsed = bb::parse_config(json(routes, extra_route));
        EXPECT_TRUE(parsed.errors.empty()) << parsed.errors.to_string();
        return parsed.cfg;
    };
    const std::string as_held = R"("sf-composite", "sf-accounts")";
    proxy_instance bb{json(as_held)};
    const std::string body = R"({"compositeRequest": [{"method": "PATCH", "referenceId": "a",)"
                             R"( "url": "/services/data/v59.0/sobjects/Account/001xx", "body": {"Name": "X"}}]})";
    const std::vector<std::pair<std::string, std::string>> headers{
        {"content-type", "application/json"}, {"x-campaign-id", "c"}, {"x-breakerbox-key", "bot-key"}};
    auto res = http_request(bb.port(), http::verb::post, "/services/data/v59.0/composite", body, headers);
    ASSERT_EQ(res.result_int(), 202u) << res.body();
    const std::string ticket{res["x-breakerbox-ticket"]};
    ASSERT_FALSE(ticket.empty()) << "held";
    bb::store::list_filter all;
    for (const auto& [routes, extra, why] : std::vector<std::tuple<std::string, std::string, std::string>>{
             {R"("sf-composite")", "", "route sf-accounts in subrequest #0 of this composite request"},
             {R"("sf-composite", "sf-accounts")",
              R"({"name": "sf-new", "match": {"path_prefix": "/services/data/v59.0/sobjects/Account/"}, "upstream": "salesforce"},)",
              "route sf-new in subrequest #0"},
             {R"("sf-composite", "sf-accounts", "sf-elsewhere")",
              R"({"name": "sf-elsewhere", "match": {"path_prefix": "/services/data/v59.0/sobjects/Account/001"}, "upstream": "other"},)",
              "route (sf-elsewhere, of upstream other, takes PATCH"}}) {
        bb.server().apply_config(with(routes, extra));
        expect_release_refused(bb, up, ticket, all, why, routes);
        // As the live path judges the same request now.
        const auto live = http_request(bb.port(), http::verb::post, "/services/data/v59.0/composite", body, headers);
        EXPECT_EQ(live.result_int(), 403u) << live.body();
    }
    // As it was when held: released.
    bb.server().apply_config(with(as_held));
    EXPECT_TRUE(bb.server().remediation().release(ticket, "ops").get().ok);
    EXPECT_EQ(up.request_count(), 1u);
}

// A held Salesforce Bulk API job is judged at its release as the request it stands for, as
// the live path judges it: an agent that lost DELETE since deletes no records through a job.
TEST(quarantine, a_release_judges_a_bulk_api_job_as_the_request_it_stands_for) {
    fake_upstream up{[](const request&) { return respond(200, "{}"); }};
    const auto dir = temp_dir();
    auto json = [&](const std::string& methods) {
        return "{\"workers\": 2, \"listeners\": [{\"name\": \"t\", \"address\": \"127.0.0.1:0\"}],"
               "\"store\": {\"path\": \"" + dir + "/bb.db\"},"
               "\"upstreams\": [{\"name\": \"salesforce\", \"url\": \"http://127.0.0.1:" + std::to_string(up.port()) + "\"}],"
               "\"routes\": [{\"name\": \"sf-any\", \"match\": {\"path_prefix\": \"/services/data/\"}, \"upstream\": \"salesforce\"}],"
               "\"failure_modes\": [{\"id\": \"writes\", \"title\": \"CRM writes\", \"severity\": \"sev2\"}],"
               "\"breakers\": [{\"id\": \"crm-writes\", \"action\": \"quarantine\", \"reset\": \"manual\"}],"
               "\"rules\": [{\"id\": \"jobs\", \"route\": \"sf-any\", \"key\": [\"header:x-campaign-id\"],"
               "\"measure\": \"requests\", \"window\": \"1h\", \"limit\": 0,"
               "\"failure_mode\": \"writes\", \"trips\": \"crm-writes\"}],"
               "\"agents\": [{\"id\": \"bot\", \"key_sha256\": [\"" + bb::sha256_hex("bot-key") + "\"],"
               "\"allow\": {\"methods\": [" + methods + "], \"paths\": [\"/services/data/*\"]}}],"
               "\"log\": {\"level\": \"warn\", \"access_log\": \"off\"}}";
    };
    auto with = [&](const std::string& methods) {
        auto parsed = bb::parse_config(json(methods));
        EXPECT_TRUE(parsed.errors.empty()) << parsed.errors.to_string();
        return parsed.cfg;
    };
    const std::string as_held = R"("POST", "DELETE")";
    proxy_instance bb{json(as_held)};
    const std::string job = R"({"object": "Contact", "contentType": "CSV", "operation": "hardDelete"})";
    const std::vector<std::pair<std::string, std::string>> headers{
        {"content-type", "application/json"}, {"x-campaign-id", "c"}, {"x-breakerbox-key", "bot-key"}};
    auto res = http_request(bb.port(), http::verb::post, "/services/data/v59.0/jobs/ingest", job, headers);
    ASSERT_EQ(res.result_int(), 202u) << res.body();
    const std::string ticket{res["x-breakerbox-ticket"]};
    ASSERT_FALSE(ticket.empty()) << "held";
    bb.server().apply_config(with(R"("POST")"));
    bb::store::list_filter all;
    const auto bulk = expect_release_refused(bb, up, ticket, all, "method DELETE (the Bulk API job's operation hardDelete)",
                                             "POST only");
    EXPECT_EQ(bulk.skipped, 1u);
    const auto live = http_request(bb.port(), http::verb::post, "/services/data/v59.0/jobs/ingest", job, headers);
    EXPECT_EQ(live.result_int(), 403u) << live.body();
    bb.server().apply_config(with(as_held));
    EXPECT_TRUE(bb.server().remediation().release(ticket, "ops").get().ok);
    EXPECT_EQ(up.request_count(), 1u);
}

TEST(quarantine, a_sandboxed_agents_held_requests_are_not_released) {
    // Held while the agent could send for real; the operator then put it in sandbox mode: a
    // release would be a real send of an agent that must not reach customers.
    fake_upstream up{[](const request&) { return respond(202, ""); }};
    const auto dir = temp_dir();
    auto with_agent = [&](bool sandbox) { return quarantine_config_with_agent(up.port(), dir, sandbox); };
    proxy_instance bb{with_agent(false)};
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", R"({"to":[1]})",
                            {{"content-type", "application/json"}, {"x-campaign-id", "c"}, {"x-breakerbox-key", "bot-key"}});
    ASSERT_EQ(res.result_int(), 202u) << res.body();
    const std::string ticket{res["x-breakerbox-ticket"]};
    auto sandboxed = bb::parse_config(with_agent(true));
    ASSERT_TRUE(sandboxed.errors.empty()) << sandboxed.errors.to_string();
    bb.server().apply_config(sandboxed.cfg);
    auto refused = bb.server().remediation().release(ticket, "ops").get();
    EXPECT_FALSE(refused.ok);
    EXPECT_EQ(refused.code, "agent_sandboxed") << refused.message;
    EXPECT_EQ(bb.server().db()->get(ticket)->state, bb::store::held_state::held);
    bb::store::list_filter all;
    const auto bulk = bb.server().remediation().release_matching(all, 0, "ops").get();
    EXPECT_EQ(bulk.released, 0u);
    EXPECT_EQ(bulk.skipped, 1u);
    EXPECT_EQ(up.request_count(), 0u);
    // Removed by a reload (its sandbox and kill switch with it): nothing can be checked, so
    // nothing is sent, one by one or in bulk.
    auto removed = bb::parse_config(quarantine_config(up.port(), dir, 0));
    ASSERT_TRUE(removed.errors.empty()) << removed.errors.to_string();
    bb.server().apply_config(removed.cfg);
    auto gone = bb.server().remediation().release(ticket, "ops").get();
    EXPECT_FALSE(gone.ok);
    EXPECT_EQ(gone.code, "invalid_state") << gone.message;
    EXPECT_NE(gone.message.find("agent bot of " + ticket + " is no longer configured"), std::string::npos) << gone.message;
    EXPECT_EQ(bb.server().remediation().release_matching(all, 0, "ops").get().released, 0u);
    EXPECT_EQ(bb.server().db()->get(ticket)->state, bb::store::held_state::held);
    EXPECT_EQ(up.request_count(), 0u);
    auto live = bb::parse_config(with_agent(false));
    bb.server().apply_config(live.cfg);
    EXPECT_TRUE(bb.server().remediation().release(ticket, "ops").get().ok);
    EXPECT_EQ(up.request_count(), 1u);
}
