// The dispatcher against a fake webhook receiver on 127.0.0.1:0. No sleeps: every wait is
// flush or the receiver's condition variable, each with a deadline.
#include "alerts/alerts.hpp"
#include "tests/alerts/fake_receiver.hpp"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <poll.h>

#include <atomic>
#include <thread>

namespace {

using namespace bb::alerts;
using namespace std::chrono_literals;
using bb::test::fake_receiver;
using bb::test::webhook_reply;
using bb::test::webhook_request;
using steady = std::chrono::steady_clock;

sink_config webhook_sink(const fake_receiver& r, std::string name = "hook") {
    sink_config s;
    s.name = std::move(name);
    s.kind = sink_kind::webhook;
    s.url = r.url();
    return s;
}

alerts_config quick(std::vector<sink_config> sinks) {
    alerts_config c;
    c.sinks = std::move(sinks);
    c.initial_backoff = 10ms;
    c.max_backoff = 100ms;
    c.timeout = 2s;
    c.max_attempts = 5;
    return c;
}

alert make_alert(std::string severity = "sev2", std::string summary = "breaker tripped") {
    alert a;
    a.event = "breaker_tripped";
    a.severity = std::move(severity);
    a.summary = std::move(summary);
    a.breaker = "campaign-volume/spring-sale";
    a.rule = "recipients-per-campaign";
    a.failure_mode = "volume-spike";
    return a;
}

std::string field(const std::string& body, std::string_view key) {
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    if (parser.parse(body).get(doc) != simdjson::SUCCESS) {
        return "<not json>";
    }
    std::string_view v;
    if (doc[key].get(v) != simdjson::SUCCESS) {
        return "<missing>";
    }
    return std::string{v};
}

TEST(AlertsDispatcher, WebhookDelivered) {
    fake_receiver rx{[](std::size_t, const webhook_request&) { return bb::test::reply(200); }};
    auto s = webhook_sink(rx);
    s.headers = {{"Authorization", "Bearer s3cret"}};
    dispatcher d{quick({s})};
    d.publish(make_alert());
    ASSERT_TRUE(d.flush(5s));
    ASSERT_EQ(rx.count(), 1u);
    const auto req = rx.requests()[0];
    EXPECT_EQ(req.method, "POST");
    EXPECT_EQ(req.target, "/hook");
    EXPECT_EQ(req.header("Content-Type"), "application/json");
    EXPECT_EQ(req.header("Authorization"), "Bearer s3cret");
    EXPECT_EQ(req.header("Host"), "127.0.0.1:" + std::to_string(rx.port()));
    EXPECT_EQ(field(req.body, "source"), "breakerbox");
    EXPECT_EQ(field(req.body, "breaker"), "campaign-volume/spring-sale");
    EXPECT_NE(field(req.body, "at"), "");  // publish() stamped the wall clock
    const auto st = d.stats();
    ASSERT_EQ(st.size(), 1u);
    EXPECT_EQ(st[0].name, "hook");
    EXPECT_EQ(st[0].sent, 1u);
    EXPECT_EQ(st[0].failed, 0u);
    EXPECT_EQ(st[0].retries, 0u);
    EXPECT_EQ(d.queued(), 0u);
}

TEST(AlertsDispatcher, PagerDutyAndSlackShapesOnTheWire) {
    fake_receiver rx{[](std::size_t, const webhook_request&) { return bb::test::reply(202); }};
    sink_config pd;
    pd.name = "pager";
    pd.kind = sink_kind::pagerduty;
    pd.url = rx.url("/v2/enqueue");
    pd.routing_key = "R0UT1NG";
    sink_config slack;
    slack.name = "chat";
    slack.kind = sink_kind::slack;
    slack.url = rx.url("/services/T/B/X");
    dispatcher d{quick({pd, slack})};
    d.publish(make_alert("sev1"));
    ASSERT_TRUE(d.flush(5s));
    ASSERT_EQ(rx.count(), 2u);
    for (const auto& r : rx.requests()) {
        if (r.target == "/v2/enqueue") {
            EXPECT_EQ(field(r.body, "routing_key"), "R0UT1NG");
            EXPECT_EQ(field(r.body, "event_action"), "trigger");
        } else {
            EXPECT_EQ(r.target, "/services/T/B/X");
            EXPECT_EQ(field(r.body, "text"), "breaker tripped");
        }
    }
}

TEST(AlertsDispatcher, RoutesBySeverity) {
    fake_receiver rx{[](std::size_t, const webhook_request&) { return bb::test::reply(200); }};
    auto pages = webhook_sink(rx, "pages");
    pages.url = rx.url("/pages");
    pages.severities = {"sev1"};
    auto all = webhook_sink(rx, "all");
    all.url = rx.url("/all");
    auto low = webhook_sink(rx, "low");
    low.url = rx.url("/low");
    low.severities = {"sev3", "sev4"};
    dispatcher d{quick({pages, all, low})};
    d.publish(make_alert("sev1"));
    d.publish(make_alert("sev2"));
    d.publish(make_alert("sev4"));
    ASSERT_TRUE(d.flush(5s));
    std::map<std::string, std::vector<std::string>> by_target;
    for (const auto& r : rx.requests()) {
        by_target[r.target].push_back(field(r.body, "severity"));
    }
    EXPECT_EQ(by_target["/pages"], (std::vector<std::string>{"sev1"}));
    EXPECT_EQ(by_target["/all"], (std::vector<std::string>{"sev1", "sev2", "sev4"}));  // in order
    EXPECT_EQ(by_target["/low"], (std::vector<std::string>{"sev4"}));
}

TEST(AlertsDispatcher, PerSinkOrderIsPreserved) {
    fake_receiver rx{[](std::size_t, const webhook_request&) { return bb::test::reply(200); }};
    dispatcher d{quick({webhook_sink(rx)})};
    for (int i = 0; i < 30; ++i) {
        d.publish(make_alert("sev3", "alert " + std::to_string(i)));
    }
    ASSERT_TRUE(d.flush(10s));
    const auto reqs = rx.requests();
    ASSERT_EQ(reqs.size(), 30u);
    for (int i = 0; i < 30; ++i) {
        EXPECT_EQ(field(reqs[i].body, "summary"), "alert " + std::to_string(i));
    }
    EXPECT_EQ(d.stats()[0].sent, 30u);
}

TEST(AlertsDispatcher, RetriesWithBackoffThenSucceeds) {
    fake_receiver rx{[](std::size_t i, const webhook_request&) {
        return i < 2 ? bb::test::reply(500, "busy") : bb::test::reply(200);
    }};
    auto cfg = quick({webhook_sink(rx)});
    cfg.initial_backoff = 40ms;
    cfg.max_backoff = 1s;
    dispatcher d{cfg};
    d.publish(make_alert());
    ASSERT_TRUE(d.flush(5s));
    const auto reqs = rx.requests();
    ASSERT_EQ(reqs.size(), 3u);
    // 40ms then 80ms, each with at most -20% jitter.
    EXPECT_GE(reqs[1].at - reqs[0].at, 32ms);
    EXPECT_GE(reqs[2].at - reqs[1].at, 64ms);
    EXPECT_EQ(reqs[0].body, reqs[2].body);  // the same alert each time
    const auto st = d.stats()[0];
    EXPECT_EQ(st.sent, 1u);
    EXPECT_EQ(st.retries, 2u);
    EXPECT_EQ(st.failed, 0u);
    EXPECT_EQ(st.last_error, "HTTP 500: busy");  // kept from the last failure
}

TEST(AlertsDispatcher, HonoursRetryAfterOn429) {
    fake_receiver rx{[](std::size_t i, const webhook_request&) {
        if (i == 0) {
            webhook_reply r = bb::test::reply(429, "slow down");
            r.headers = {{"Retry-After", "1"}};
            return r;
        }
        return bb::test::reply(200);
    }};
    auto cfg = quick({webhook_sink(rx)});
    cfg.initial_backoff = 10ms;
    // Below the receiver's Retry-After: it is a floor, not cut to max_backoff (a retry
    // before it would be refused again, spending an attempt).
    cfg.max_backoff = 100ms;
    dispatcher d{cfg};
    d.publish(make_alert());
    ASSERT_TRUE(d.flush(5s));
    const auto reqs = rx.requests();
    ASSERT_EQ(reqs.size(), 2u);
    EXPECT_GE(reqs[1].at - reqs[0].at, 1s);  // not the 10ms backoff, nor max_backoff
    EXPECT_EQ(d.stats()[0].sent, 1u);
    EXPECT_EQ(d.stats()[0].retries, 1u);
}

TEST(AlertsDispatcher, GivesUpAfterMaxAttempts) {
    fake_receiver rx{[](std::size_t, const webhook_request&) { return bb::test::reply(503, "down"); }};
    auto cfg = quick({webhook_sink(rx)});
    cfg.max_attempts = 3;
    dispatcher d{cfg};
    d.publish(make_alert());
    d.publish(make_alert());
    ASSERT_TRUE(d.flush(5s));
    EXPECT_EQ(rx.count(), 6u);
    const auto st = d.stats()[0];
    EXPECT_EQ(st.sent, 0u);
    EXPECT_EQ(st.failed, 2u);
    EXPECT_EQ(st.retries, 4u);
    EXPECT_EQ(st.last_error, "HTTP 503: down");
}

TEST(AlertsDispatcher, ClientErrorsAreNotRetried) {
    fake_receiver rx{[](std::size_t, const webhook_request&) {
        return bb::test::reply(400, R"({"status":"invalid event","message":"routing_key is invalid"})");
    }};
    dispatcher d{quick({webhook_sink(rx)})};
    d.publish(make_alert());
    ASSERT_TRUE(d.flush(5s));
    EXPECT_EQ(rx.count(), 1u);
    const auto st = d.stats()[0];
    EXPECT_EQ(st.failed, 1u);
    EXPECT_EQ(st.retries, 0u);
    EXPECT_NE(st.last_error.find("HTTP 400"), std::string::npos) << st.last_error;
    EXPECT_NE(st.last_error.find("routing_key is invalid"), std::string::npos) << st.last_error;
}

// A receiver (or a gateway before it) that echoes the request in its error body: what is
// quoted in the stats and the log has the sink's secrets cut out, and no control bytes.
TEST(AlertsDispatcher, AnEchoedSecretIsNotQuoted) {
    fake_receiver rx{[](std::size_t, const webhook_request&) {
        return bb::test::reply(400, "bad request\nAuthorization: Bearer HOOK-SECRET-1\r\nfake log line");
    }};
    auto sink = webhook_sink(rx);
    sink.headers.emplace_back("Authorization", "Bearer HOOK-SECRET-1");
    dispatcher d{quick({sink})};
    d.publish(make_alert());
    ASSERT_TRUE(d.flush(5s));
    const auto st = d.stats()[0];
    EXPECT_EQ(st.last_error.find("HOOK-SECRET-1"), std::string::npos) << st.last_error;
    EXPECT_EQ(st.last_error, "HTTP 400: bad request?Authorization: [redacted]??fake log line");
}

// ...also when it quotes a part of one: a query parameter's value, the credential of a
// header in its own syntax, a path with JSON's escaped slashes.
TEST(AlertsDispatcher, AnEchoedPartOfASecretIsNotQuoted) {
    fake_receiver rx{[](std::size_t, const webhook_request&) {
        return bb::test::reply(401, R"({"error":"invalid token s3cr3t-value","key":"abcdef123456",)"
                                    R"("path":"\/hooks\/T0001\/XXXXSECRET9PATH?token=s3cr3t-value","sig":"ab+cd/ef==",)"
                                    R"("hint":"Bearer hooks need a token"})");
    }};
    auto sink = webhook_sink(rx);
    sink.url += "hooks/T0001/XXXXSECRET9PATH?token=s3cr3t-value&sig=ab%2Bcd%2Fef%3D%3D";
    sink.headers.emplace_back("Authorization", "Token token=abcdef123456");
    dispatcher d{quick({sink})};
    d.publish(make_alert());
    ASSERT_TRUE(d.flush(5s));
    const auto st = d.stats()[0];
    for (const char* secret : {"s3cr3t-value", "abcdef123456", "XXXXSECRET9PATH", "ab+cd/ef=="}) {
        EXPECT_EQ(st.last_error.find(secret), std::string::npos) << secret << ": " << st.last_error;
    }
    EXPECT_NE(st.last_error.find("invalid token [redacted]"), std::string::npos) << st.last_error;
    // Words of the URL and the header's scheme are no secrets: the message stays readable.
    EXPECT_NE(st.last_error.find("Bearer hooks need a token"), std::string::npos) << st.last_error;
}

TEST(AlertsDispatcher, ConnectionRefusedIsRetriedThenFails) {
    std::uint16_t port = 0;
    {
        // A port that was just free: nothing listens on it once this closes.
        boost::asio::io_context io;
        boost::asio::ip::tcp::acceptor a{io, {boost::asio::ip::make_address("127.0.0.1"), 0}};
        port = a.local_endpoint().port();
    }
    sink_config s;
    s.name = "gone";
    s.url = "http://127.0.0.1:" + std::to_string(port) + "/";
    auto cfg = quick({s});
    cfg.max_attempts = 3;
    dispatcher d{cfg};
    d.publish(make_alert());
    ASSERT_TRUE(d.flush(5s));
    const auto st = d.stats()[0];
    EXPECT_EQ(st.failed, 1u);
    EXPECT_EQ(st.retries, 2u);
    EXPECT_NE(st.last_error.find("connecting to 127.0.0.1:"), std::string::npos) << st.last_error;
}

TEST(AlertsDispatcher, BoundedQueueDropsAndCounts) {
    fake_receiver rx{[](std::size_t, const webhook_request&) { return bb::test::hang(); }};
    auto cfg = quick({webhook_sink(rx)});
    cfg.queue_max = 5;
    cfg.timeout = 300ms;
    auto d = std::make_unique<dispatcher>(cfg);
    for (int i = 0; i < 20; ++i) {
        d->publish(make_alert());
    }
    // The worker may take one into flight at any moment, before the queue filled (then 14
    // are dropped) or after (then 4 wait): whatever is neither waiting nor in flight was
    // dropped, never queued beyond the bound.
    const auto queued = d->queued();
    const auto dropped = d->stats()[0].dropped;
    EXPECT_GE(queued, 4u);
    EXPECT_LE(queued, 5u);
    EXPECT_GE(dropped, 14u);
    EXPECT_LE(dropped, 15u);
    EXPECT_GE(queued + dropped, 19u);
    const auto t0 = steady::now();
    d.reset();
    EXPECT_LT(steady::now() - t0, 300ms + 500ms);
}

// A queue full of triggers still takes resolves (up to the bound again): the resolve of
// an incident paged before the storm is what closes it on the pager.
TEST(AlertsDispatcher, FullQueueStillTakesResolves) {
    fake_receiver rx{[](std::size_t, const webhook_request&) { return bb::test::hang(); }};
    auto cfg = quick({webhook_sink(rx)});
    cfg.queue_max = 5;
    cfg.timeout = 1s;  // the first alert hangs in flight meanwhile; the queue only grows
    auto d = std::make_unique<dispatcher>(cfg);
    d->publish(make_alert());
    for (int i = 0; i < 500 && rx.count() == 0; ++i) {
        ::poll(nullptr, 0, 10);  // bounded: until the receiver holds it
    }
    ASSERT_EQ(rx.count(), 1u);
    for (int i = 0; i < 19; ++i) {
        d->publish(make_alert());
    }
    const auto full = d->queued();
    ASSERT_EQ(full, cfg.queue_max);
    const auto dropped = d->stats()[0].dropped;
    auto resolve = make_alert();
    resolve.resolve = true;
    for (int i = 0; i < 3; ++i) {
        d->publish(resolve);
    }
    EXPECT_EQ(d->queued(), full + 3);
    EXPECT_EQ(d->stats()[0].dropped, dropped);
    for (int i = 0; i < 10; ++i) {
        d->publish(resolve);  // bounded all the same
    }
    EXPECT_EQ(d->queued(), 2 * cfg.queue_max);
    d->publish(make_alert());
    EXPECT_EQ(d->queued(), 2 * cfg.queue_max);
    d.reset();
}

TEST(AlertsDispatcher, HangingReceiverTimesOut) {
    fake_receiver rx{[](std::size_t, const webhook_request&) { return bb::test::hang(); }};
    auto cfg = quick({webhook_sink(rx)});
    cfg.timeout = 100ms;
    cfg.max_attempts = 2;
    dispatcher d{cfg};
    d.publish(make_alert());
    ASSERT_TRUE(d.flush(5s));
    // The receiver records a request on its own thread, maybe after the sender gave up on it.
    EXPECT_TRUE(rx.wait_for_count(2));
    EXPECT_EQ(rx.count(), 2u);
    const auto st = d.stats()[0];
    EXPECT_EQ(st.failed, 1u);
    EXPECT_EQ(st.retries, 1u);
    EXPECT_NE(st.last_error.find("timed out"), std::string::npos) << st.last_error;
}

TEST(AlertsDispatcher, DestructorReturnsPromptlyWhileReceiverHangs) {
    fake_receiver rx{[](std::size_t, const webhook_request&) { return bb::test::hang(); }};
    auto cfg = quick({webhook_sink(rx)});
    cfg.timeout = 300ms;
    auto d = std::make_unique<dispatcher>(cfg);
    d->publish(make_alert());
    ASSERT_TRUE(rx.wait_for_count(1));  // the send is in flight and hanging
    const auto t0 = steady::now();
    d.reset();
    EXPECT_LT(steady::now() - t0, 300ms + 500ms);
}

TEST(AlertsDispatcher, PublishNeverBlocks) {
    fake_receiver rx{[](std::size_t, const webhook_request&) { return bb::test::hang(); }};
    auto a = webhook_sink(rx, "a");
    auto b = webhook_sink(rx, "b");
    b.severities = {"sev1"};
    auto cfg = quick({a, b});
    cfg.queue_max = 100;
    cfg.timeout = 1s;
    auto d = std::make_unique<dispatcher>(cfg);
    constexpr int threads = 4;
    constexpr int per_thread = 10'000;
    std::atomic<std::int64_t> slowest_us{0};
    std::vector<std::thread> pool;
    const alert al = make_alert("sev1");
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&] {
            const auto t0 = steady::now();
            for (int i = 0; i < per_thread; ++i) {
                d->publish(al);
            }
            const auto us = std::chrono::duration_cast<std::chrono::microseconds>(steady::now() - t0).count();
            auto cur = slowest_us.load();
            while (us > cur && !slowest_us.compare_exchange_weak(cur, us)) {
            }
        });
    }
    for (auto& t : pool) {
        t.join();
    }
    // 10,000 publishes while the receiver hangs: no I/O, no waiting on the hung send. The
    // bound is generous for shared CI machines; typically it is a few milliseconds.
    EXPECT_LT(slowest_us.load(), 2'000'000);
    const auto st = d->stats();
    for (const auto& s : st) {
        EXPECT_GE(s.dropped, static_cast<std::uint64_t>(threads * per_thread - 101)) << s.name;
        EXPECT_EQ(s.sent, 0u);
    }
    // Each sink's queue is full (100) or one short: its sender may have taken the first alert
    // off the queue (and be hanging on it) before or after the last publish.
    EXPECT_GE(d->queued(), 198u);
    EXPECT_LE(d->queued(), 200u);
    const auto t0 = steady::now();
    d.reset();
    EXPECT_LT(steady::now() - t0, 1s + 500ms);
}

TEST(AlertsDispatcher, NoSinksIsFine) {
    dispatcher d{alerts_config{}};
    d.publish(make_alert());
    EXPECT_TRUE(d.flush(1s));
    EXPECT_TRUE(d.stats().empty());
    EXPECT_EQ(d.queued(), 0u);
}

// A reload's sink removed while its alert is being retried: the alert still goes out, the
// sink gets nothing new, and its counts stay. Configured again, it is back (the sender
// thread runs on with no sink at all).
TEST(AlertsDispatcher, ReconfigureLetsARemovedSinkSendWhatItHad) {
    std::atomic<int> n{0};
    fake_receiver rx{[&](std::size_t, const webhook_request&) { return bb::test::reply(n++ == 0 ? 503 : 200); }};
    const auto cfg = quick({webhook_sink(rx)});
    dispatcher d{cfg};
    d.publish(make_alert("sev2", "first"));
    d.reconfigure(quick({}));
    d.publish(make_alert("sev2", "after the reload"));
    ASSERT_TRUE(d.flush(5s));
    ASSERT_EQ(rx.count(), 2u);
    EXPECT_EQ(field(rx.requests()[1].body, "summary"), "first");
    ASSERT_EQ(d.stats().size(), 1u);
    EXPECT_EQ(d.stats()[0].sent, 1u);
    EXPECT_EQ(d.stats()[0].retries, 1u);
    d.reconfigure(cfg);
    d.publish(make_alert("sev2", "configured again"));
    ASSERT_TRUE(d.flush(5s)) << "queued: " << d.queued();
    ASSERT_EQ(rx.count(), 3u);
    EXPECT_EQ(field(rx.requests()[2].body, "summary"), "configured again");
    ASSERT_EQ(d.stats().size(), 1u);
    EXPECT_EQ(d.stats()[0].sent, 2u) << "one name, one count";
}

// A sink whose severities alone change is the same sink (its queue kept), routed anew.
TEST(AlertsDispatcher, ReconfigureChangesSeveritiesInPlace) {
    fake_receiver rx{[](std::size_t, const webhook_request&) { return bb::test::reply(200); }};
    auto s = webhook_sink(rx);
    s.severities = {"sev1"};
    dispatcher d{quick({s})};
    d.publish(make_alert("sev2", "not routed"));
    s.severities = {"sev2"};
    d.reconfigure(quick({s}));
    d.publish(make_alert("sev2", "routed"));
    d.publish(make_alert("sev1", "no longer routed"));
    ASSERT_TRUE(d.flush(5s));
    ASSERT_EQ(rx.count(), 1u);
    EXPECT_EQ(field(rx.requests()[0].body, "summary"), "routed");
}

// TLS: certificates from certs/make-dev-certs.sh, made at build time.
const std::string certs = BB_TEST_CERTS_DIR;

TEST(AlertsDispatcherTls, VerifiedWithCaFile) {
    fake_receiver rx{[](std::size_t, const webhook_request&) { return bb::test::reply(200); }, certs + "/server.pem",
                     certs + "/server.key"};
    sink_config s;
    s.name = "tls";
    s.url = "https://localhost:" + std::to_string(rx.port()) + "/hook";
    s.ca_file = certs + "/ca.pem";
    dispatcher d{quick({s})};
    d.publish(make_alert());
    ASSERT_TRUE(d.flush(5s));
    const auto st = d.stats()[0];
    EXPECT_EQ(st.sent, 1u) << st.last_error;
    ASSERT_EQ(rx.count(), 1u);
    EXPECT_EQ(rx.requests()[0].header("Host"), "localhost:" + std::to_string(rx.port()));
}

// A receiver (or a man in the middle) that offers only CBC suites gets no page (OpenSSL's
// default list takes them): the dispatcher speaks forward-secret AEAD suites only, as to
// upstreams. The same receiver with an ECDHE-GCM suite gets it. (The test certificate is
// ECDSA, so every suite it can use has forward secrecy.)
TEST(AlertsDispatcherTls, CbcOnlyReceiverIsRefused) {
    for (const auto& [suite, delivered] : std::vector<std::pair<std::string, bool>>{
             {"ECDHE-ECDSA-AES128-SHA256", false},
             {"ECDHE-ECDSA-AES256-SHA", false},
             {"ECDHE-ECDSA-AES128-GCM-SHA256", true}}) {
        fake_receiver rx{[](std::size_t, const webhook_request&) { return bb::test::reply(200); },
                         certs + "/server.pem", certs + "/server.key"};
        rx.tls12_ciphers(suite);
        sink_config s;
        s.name = "tls";
        s.url = rx.url();
        s.ca_file = certs + "/ca.pem";
        auto cfg = quick({s});
        cfg.max_attempts = 1;
        dispatcher d{cfg};
        d.publish(make_alert());
        ASSERT_TRUE(d.flush(5s));
        const auto st = d.stats()[0];
        EXPECT_EQ(st.sent, delivered ? 1u : 0u) << suite << ": " << st.last_error;
        EXPECT_EQ(rx.count(), delivered ? 1u : 0u) << suite;
    }
}

TEST(AlertsDispatcherTls, IpAddressVerifiedAgainstSan) {
    fake_receiver rx{[](std::size_t, const webhook_request&) { return bb::test::reply(200); }, certs + "/server.pem",
                     certs + "/server.key"};
    sink_config s;
    s.name = "tls";
    s.url = rx.url();  // https://127.0.0.1:port
    s.ca_file = certs + "/ca.pem";
    dispatcher d{quick({s})};
    d.publish(make_alert());
    ASSERT_TRUE(d.flush(5s));
    EXPECT_EQ(d.stats()[0].sent, 1u) << d.stats()[0].last_error;
}

TEST(AlertsDispatcherTls, WrongNameIsRefusedWithoutRetry) {
    fake_receiver rx{[](std::size_t, const webhook_request&) { return bb::test::reply(200); },
                     certs + "/wrong-name.pem", certs + "/wrong-name.key"};
    sink_config s;
    s.name = "tls";
    s.url = "https://localhost:" + std::to_string(rx.port()) + "/hook";
    s.ca_file = certs + "/ca.pem";
    dispatcher d{quick({s})};
    d.publish(make_alert());
    ASSERT_TRUE(d.flush(5s));
    const auto st = d.stats()[0];
    EXPECT_EQ(st.sent, 0u);
    EXPECT_EQ(st.failed, 1u);
    EXPECT_EQ(st.retries, 0u);
    EXPECT_NE(st.last_error.find("certificate"), std::string::npos) << st.last_error;
    EXPECT_EQ(rx.count(), 0u);  // nothing was sent to an unverified peer
}

TEST(AlertsDispatcherTls, SelfSignedIsRefusedBySystemStore) {
    fake_receiver rx{[](std::size_t, const webhook_request&) { return bb::test::reply(200); },
                     certs + "/self-signed.pem", certs + "/self-signed.key"};
    sink_config s;
    s.name = "tls";
    s.url = "https://localhost:" + std::to_string(rx.port()) + "/hook";
    dispatcher d{quick({s})};
    d.publish(make_alert());
    ASSERT_TRUE(d.flush(5s));
    const auto st = d.stats()[0];
    EXPECT_EQ(st.failed, 1u);
    EXPECT_EQ(rx.count(), 0u);
}

TEST(AlertsDispatcherTls, MissingCaFileFailsVisibly) {
    sink_config s;
    s.name = "tls";
    s.url = "https://localhost:1/hook";
    s.ca_file = certs + "/does-not-exist.pem";
    dispatcher d{quick({s})};
    d.publish(make_alert());
    ASSERT_TRUE(d.flush(5s));
    const auto st = d.stats()[0];
    EXPECT_EQ(st.failed, 1u);
    EXPECT_NE(st.last_error.find("cannot load ca_file"), std::string::npos) << st.last_error;
}

}  // namespace
