// Name resolution counts against an upstream's connect_timeout: a resolver that never
// answers costs that timeout and a 503, not the resolver's own 10 s, and does not hold up
// shutdown. Runs only through dns_sandbox.sh (see tests/integration/CMakeLists.txt).

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include "alerts/alerts.hpp"
#include "ctl/http_client.hpp"
#include "proxy/upstream.hpp"
#include "tests/alerts/fake_receiver.hpp"
#include "tests/support/fake_upstream.hpp"
#include "tests/support/proxy_fixture.hpp"

namespace {

using namespace bb::test;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

// UDP 127.0.0.1:53, held open and never read: queries arrive and go unanswered (a closed
// port would fail the lookup at once with "connection refused").
class silent_nameserver {
public:
    silent_nameserver() {
        fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(53);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        bound_ = fd_ >= 0 && ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    }
    ~silent_nameserver() {
        if (fd_ >= 0) {
            ::close(fd_);
        }
    }
    bool bound() const { return bound_; }
    bool got_a_query() const {
        char buf[512];
        return ::recv(fd_, buf, sizeof buf, MSG_PEEK) > 12;  // a DNS header is 12 bytes
    }

private:
    int fd_ = -1;
    bool bound_ = false;
};

TEST(dns, a_resolver_that_never_answers_costs_connect_timeout_then_503) {
    ASSERT_NE(std::getenv("BB_DNS_SANDBOX"), nullptr) << "run this binary through dns_sandbox.sh";
    silent_nameserver ns;
    ASSERT_TRUE(ns.bound()) << "cannot hold UDP 127.0.0.1:53";

    auto bb = std::make_unique<proxy_instance>(
        make_config("http://upstream.breakerbox.test:8080", "", "\"connect_timeout\": \"400ms\""));
    const auto t0 = clock_type::now();
    const auto res = http_request(bb->port(), http::verb::post, "/v3/mail/send", R"({"a":1})");
    const auto took = clock_type::now() - t0;
    EXPECT_EQ(res.result_int(), 503u) << res.body();
    EXPECT_NE(res.body().find("upstream_connect_timeout"), std::string::npos) << res.body();
    EXPECT_NE(res.body().find("cannot resolve upstream.breakerbox.test within 400ms"), std::string::npos) << res.body();
    EXPECT_GE(took, 360ms);
    EXPECT_LT(took, 2s) << "the lookup was not bounded by connect_timeout";
    EXPECT_TRUE(ns.got_a_query()) << "the lookup never reached the silent nameserver";

    // The lookup is still in flight inside getaddrinfo (the resolver's own timeout here is
    // 2 x 5 s); neither stopping nor tearing down may wait for it.
    const auto s0 = clock_type::now();
    bb->stop();
    bb.reset();
    EXPECT_LT(clock_type::now() - s0, 3s) << "shutdown waited for a hung name lookup";
}

// A burst of connects to one upstream (a start or a reload, with an empty pool) shares one
// name lookup. They used to start one each against a process-wide cap of 64: past it a
// connect failed at once as "too many name lookups in flight", a 502 counted against the
// upstream's health (so 100 concurrent requests to a slow resolver could open a healthy
// upstream's breaker). Each waiter still gets its own timeout.
TEST(dns, concurrent_lookups_of_one_name_share_one_lookup) {
    ASSERT_NE(std::getenv("BB_DNS_SANDBOX"), nullptr) << "run this binary through dns_sandbox.sh";
    silent_nameserver ns;
    ASSERT_TRUE(ns.bound()) << "cannot hold UDP 127.0.0.1:53";
    asio::io_context io;
    std::vector<bb::proxy::resolve_result> results;
    const std::string host = "burst.breakerbox.test";  // the coroutines keep a reference
    for (int i = 0; i < 100; ++i) {
        asio::co_spawn(io, bb::proxy::resolve_bounded(io.get_executor(), host, 443, 300ms),
                       [&](std::exception_ptr e, bb::proxy::resolve_result r) {
                           EXPECT_FALSE(e);
                           results.push_back(std::move(r));
                       });
    }
    const auto t0 = clock_type::now();
    io.run();
    EXPECT_LT(clock_type::now() - t0, 3s);
    ASSERT_EQ(results.size(), 100u);
    for (const auto& r : results) {
        EXPECT_FALSE(r.busy) << r.error;
        EXPECT_TRUE(r.timed_out) << r.error;
        EXPECT_EQ(r.error, "cannot resolve burst.breakerbox.test within 300ms");
    }
}

// An alert sink whose host's lookup hangs on a dead nameserver does not hold up another
// sink's alert (a sev1 trip to PagerDuty behind a mistyped webhook host): each lookup runs on
// a thread of its own. Asio's resolver ran them one at a time, so the other sink's lookup,
// even of a name /etc/hosts answers, waited for the stuck one's whole timeout (2 x 5 s here).
TEST(dns, an_alert_sinks_stuck_lookup_does_not_hold_up_the_others) {
    ASSERT_NE(std::getenv("BB_DNS_SANDBOX"), nullptr) << "run this binary through dns_sandbox.sh";
    silent_nameserver ns;
    ASSERT_TRUE(ns.bound()) << "cannot hold UDP 127.0.0.1:53";
    bb::test::fake_receiver rx{[](std::size_t, const bb::test::webhook_request&) { return bb::test::reply(200); }};
    bb::alerts::sink_config stuck;
    stuck.name = "stuck";
    stuck.kind = bb::alerts::sink_kind::webhook;
    stuck.url = "http://hooks.breakerbox.test:9/hook";
    bb::alerts::sink_config reachable;
    reachable.name = "reachable";
    reachable.kind = bb::alerts::sink_kind::webhook;
    reachable.url = "http://localhost:" + std::to_string(rx.port()) + "/hook";  // /etc/hosts, no DNS
    bb::alerts::alerts_config c;
    c.sinks = {stuck, reachable};
    c.timeout = 4500ms;  // the stuck attempt's deadline: the dispatcher's teardown waits for it
    c.max_attempts = 1;
    bb::alerts::dispatcher d{c};
    bb::alerts::alert a;
    a.event = "breaker_tripped";
    a.severity = "sev1";
    a.summary = "campaign-volume tripped";
    d.publish(a);
    EXPECT_TRUE(rx.wait_for_count(1, 3s)) << "the reachable sink's alert waited behind the stuck lookup";
    EXPECT_TRUE(ns.got_a_query()) << "the stuck sink's lookup never reached the silent nameserver";
}

// breakerctl's --timeout covers the admin host's name lookup too: a dead nameserver costs
// the timeout, not the resolver's own (5 s x 2 attempts here).
TEST(dns, breakerctl_gives_up_on_a_stuck_lookup_at_its_timeout) {
    ASSERT_NE(std::getenv("BB_DNS_SANDBOX"), nullptr) << "run this binary through dns_sandbox.sh";
    silent_nameserver ns;
    ASSERT_TRUE(ns.bound()) << "cannot hold UDP 127.0.0.1:53";
    bb::ctl::client_options opts;
    opts.url = *bb::ctl::parse_admin_url("http://admin.breakerbox.test:9901");
    opts.timeout = 500ms;
    const auto started = clock_type::now();
    const auto r = bb::ctl::send(opts, bb::ctl::http_request{"GET", "/v1/breakers", ""});
    const auto took = clock_type::now() - started;
    EXPECT_FALSE(r.ok());
    EXPECT_EQ(r.transport_error, "timed out after 500ms");
    EXPECT_LT(took, 4s) << "waited for the resolver's own timeout";
    EXPECT_TRUE(ns.got_a_query());
}

}  // namespace
