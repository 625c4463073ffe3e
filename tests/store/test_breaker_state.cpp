#include "store/breaker_state.hpp"

#include "tests/support/fake_upstream.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>

using namespace std::chrono_literals;

namespace {

bb::breakers::instance_snapshot open_instance(const bb::clock& c) {
    bb::breakers::instance_snapshot s;
    s.instance = "campaign-volume/spring \"sale\"";
    s.breaker = "campaign-volume";
    s.key = "spring \"sale\"";
    s.st = bb::breakers::state::open;
    s.md = bb::breakers::mode::automatic;
    s.opened_at = c.now() - 5s;
    s.cooldown = 30s;
    s.trips = 3;
    auto t = std::make_shared<bb::breakers::transition>();
    t->instance = s.instance;
    t->breaker = s.breaker;
    t->to = bb::breakers::state::open;
    t->cause.kind = "rule";
    t->cause.actor = "rule:recipients";
    t->cause.reason = "1010 > 1000";
    t->cause.rule = "recipients";
    t->cause.key = s.key;
    t->cause.value = 1010;
    t->cause.limit = 1000;
    t->cause.window = 1h;
    t->cause.request_id = "abc";
    t->at = s.opened_at;
    s.last_trip = t;
    return s;
}

}  // namespace

TEST(breaker_state, round_trips_through_json_and_skips_closed_instances) {
    bb::manual_clock c;
    auto s = open_instance(c);
    bb::breakers::instance_snapshot closed;
    closed.instance = closed.breaker = "idle";
    bb::breakers::instance_snapshot forced;
    forced.instance = forced.breaker = "manual";
    forced.md = bb::breakers::mode::forced_open;
    forced.mode_expires = c.now() + 10min;
    const auto json = bb::store::breaker_state_to_json({s, closed, forced}, c);
    std::string err;
    auto back = bb::store::breaker_state_from_json(json, c, &err);
    ASSERT_TRUE(back) << err;
    ASSERT_EQ(back->size(), 2u);
    const auto& r = (*back)[0];
    EXPECT_EQ(r.instance, s.instance);
    EXPECT_EQ(r.key, s.key);
    EXPECT_EQ(r.st, bb::breakers::state::open);
    EXPECT_EQ(r.cooldown, 30s);
    EXPECT_EQ(r.trips, 3u);
    EXPECT_LE(std::chrono::abs(r.opened_at - s.opened_at), 1ms);
    ASSERT_TRUE(r.last_trip);
    EXPECT_EQ(r.last_trip->cause.rule, "recipients");
    EXPECT_EQ(r.last_trip->cause.value, 1010);
    EXPECT_EQ(r.last_trip->cause.window, 1h);
    EXPECT_EQ((*back)[1].md, bb::breakers::mode::forced_open);
    ASSERT_TRUE((*back)[1].mode_expires);
    EXPECT_LE(std::chrono::abs(*(*back)[1].mode_expires - (c.now() + 10min)), 1ms);
}

TEST(breaker_state, corrupt_file_is_an_error_and_a_missing_one_is_empty) {
    bb::manual_clock c;
    const auto dir = bb::test::temp_dir();
    std::string err;
    auto missing = bb::store::load_breaker_state(dir + "/none.json", c, &err);
    ASSERT_TRUE(missing);
    EXPECT_TRUE(missing->empty());
    std::ofstream{dir + "/bad.json"} << "{\"instances\": [";
    EXPECT_FALSE(bb::store::load_breaker_state(dir + "/bad.json", c, &err));
    EXPECT_NE(err.find("bad.json"), std::string::npos);
}

TEST(breaker_state, writer_coalesces_and_completes_after_the_write) {
    bb::manual_clock c;
    const auto dir = bb::test::temp_dir();
    std::atomic<int> calls{0};
    bb::store::breaker_state_writer w{dir + "/state.json", [&] {
                                          ++calls;
                                          return std::vector<bb::breakers::instance_snapshot>{open_instance(c)};
                                      },
                                      c};
    std::atomic<int> done{0};
    for (int i = 0; i < 50; ++i) {
        w.request([&](bool ok) {
            EXPECT_TRUE(ok);
            ++done;
        });
    }
    EXPECT_TRUE(w.flush());
    EXPECT_EQ(done.load(), 50);
    EXPECT_LE(w.writes(), 50u);
    std::string err;
    auto back = bb::store::load_breaker_state(dir + "/state.json", c, &err);
    ASSERT_TRUE(back) << err;
    EXPECT_EQ(back->size(), 1u);
    EXPECT_FALSE(std::filesystem::exists(dir + "/state.json.tmp"));
}

TEST(breaker_state, write_failure_is_reported) {
    bb::manual_clock c;
    bb::store::breaker_state_writer w{"/proc/breakerbox-cannot-write-here/state.json",
                                      [] { return std::vector<bb::breakers::instance_snapshot>{}; }, c};
    bool result = true;
    w.request([&](bool ok) { result = ok; });
    EXPECT_FALSE(w.flush());
    EXPECT_FALSE(result);
    EXPECT_NE(w.last_error().find("cannot"), std::string::npos);
}

// A failed write leaves stale state on disk: the writer retries by itself (backing off),
// without waiting for the next transition to ask.
TEST(breaker_state, a_failed_write_is_retried_until_it_succeeds) {
    bb::manual_clock c;
    std::atomic<int> attempts{0};
    std::mutex m;
    std::condition_variable cv;
    bb::store::breaker_state_writer w{
        "unused", [&] { return std::vector<bb::breakers::instance_snapshot>{open_instance(c)}; },
        [&](std::vector<bb::breakers::instance_snapshot> instances) -> std::string {
            EXPECT_EQ(instances.size(), 1u);
            const int n = ++attempts;
            cv.notify_all();
            return n <= 3 ? "disk I/O error (injected)" : "";
        },
        c};
    // Every failure is reported (the server logs and alerts it), never silent.
    std::atomic<int> reported{0};
    w.on_failure([&](const std::string& err) {
        EXPECT_EQ(err, "disk I/O error (injected)");
        ++reported;
    });
    // And so is the first write that succeeds again (the server resolves its page).
    std::atomic<int> recovered{0};
    w.on_recovery([&] { ++recovered; });
    w.request();
    EXPECT_FALSE(w.flush());  // the first attempt failed
    EXPECT_TRUE(w.failing());
    std::unique_lock lock{m};
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds{10}, [&] { return attempts.load() >= 4; }))
        << "no retry after a failed write (attempts: " << attempts.load() << ")";
    lock.unlock();
    EXPECT_TRUE(w.flush());
    EXPECT_FALSE(w.failing());
    EXPECT_EQ(w.last_error(), "");
    EXPECT_EQ(attempts.load(), 4) << "no more writes once one succeeded";
    EXPECT_EQ(reported.load(), 3);
    EXPECT_EQ(recovered.load(), 1);
    w.request();
    EXPECT_TRUE(w.flush());
    EXPECT_EQ(recovered.load(), 1) << "a write after a good one is no recovery";
}
