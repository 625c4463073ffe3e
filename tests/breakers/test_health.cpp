// Upstream health: consecutive failures, failure and slow-call ratios over a sliding
// window with a minimum volume; and the upstream quota pause.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "breakers/health.hpp"

namespace bb::breakers::test {
namespace {

using namespace std::chrono_literals;
constexpr std::chrono::microseconds fast{10'000};

health_config only_consecutive(std::uint32_t n) {
    health_config c;
    c.consecutive_failures = n;
    return c;
}

health_config only_ratio(double ratio, std::uint32_t min_volume, milliseconds window = 30s) {
    health_config c;
    c.consecutive_failures = 0;
    c.failure_ratio = ratio;
    c.min_volume = min_volume;
    c.window = window;
    return c;
}

TEST(health, consecutive_failures_trip_on_exactly_the_nth) {
    manual_clock clock;
    health_tracker h{only_consecutive(5)};
    for (int i = 0; i < 4; ++i) {
        EXPECT_FALSE(h.record(true, fast, clock.now())) << i;
    }
    const auto c = h.record(true, fast, clock.now());
    ASSERT_TRUE(c);
    EXPECT_EQ(c->kind, "upstream_health");
    EXPECT_EQ(c->reason, "5 consecutive failures");
    EXPECT_EQ(c->value, 5);
    EXPECT_EQ(c->limit, 5);
    EXPECT_FALSE(h.record(true, fast, clock.now()));  // the 6th crosses nothing
    // A success breaks the run.
    EXPECT_FALSE(h.record(false, fast, clock.now()));
    for (int i = 0; i < 4; ++i) {
        EXPECT_FALSE(h.record(true, fast, clock.now())) << i;
    }
    EXPECT_TRUE(h.record(true, fast, clock.now()));
}

TEST(health, consecutive_threshold_is_crossed_once_under_concurrency) {
    manual_clock clock;
    health_tracker h{only_consecutive(100)};
    std::atomic<int> trips{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < 8; ++t) {
        pool.emplace_back([&] {
            for (int i = 0; i < 50; ++i) {
                if (h.record(true, fast, clock.now())) {
                    trips.fetch_add(1);
                }
            }
        });
    }
    for (auto& th : pool) {
        th.join();
    }
    EXPECT_EQ(trips.load(), 1);
}

TEST(health, failure_ratio_needs_min_volume) {
    manual_clock clock;
    health_tracker h{only_ratio(0.5, 20)};
    for (int i = 0; i < 19; ++i) {
        EXPECT_FALSE(h.record(true, fast, clock.now())) << i;  // 100% failures, too few calls
    }
    const auto c = h.record(true, fast, clock.now());
    ASSERT_TRUE(c);
    EXPECT_EQ(c->reason, "failure ratio 1.00 >= 0.50 over 30s (20 calls)");
    EXPECT_EQ(c->window, 30s);
}

TEST(health, failure_ratio_crossing_is_reported_once_and_rearms) {
    manual_clock clock;
    health_tracker h{only_ratio(0.5, 20)};
    for (int i = 0; i < 20; ++i) {
        EXPECT_FALSE(h.record(false, fast, clock.now()));
    }
    for (int i = 0; i < 19; ++i) {
        EXPECT_FALSE(h.record(true, fast, clock.now())) << i;
    }
    auto c = h.record(true, fast, clock.now());
    ASSERT_TRUE(c);
    EXPECT_EQ(c->reason, "failure ratio 0.50 >= 0.50 over 30s (40 calls)");
    EXPECT_DOUBLE_EQ(c->value, 0.5);
    EXPECT_FALSE(h.record(true, fast, clock.now()));  // still above: not a new crossing
    EXPECT_FALSE(h.record(false, fast, clock.now()));
    EXPECT_FALSE(h.record(false, fast, clock.now()));  // 21/43: below, re-armed
    EXPECT_TRUE(h.record(true, fast, clock.now()));    // 22/44
}

TEST(health, window_slides) {
    manual_clock clock;
    health_tracker h{only_ratio(0.5, 20, 10s)};
    for (int i = 0; i < 15; ++i) {
        EXPECT_FALSE(h.record(true, fast, clock.now()));
    }
    clock.advance(11s);  // those 15 have left the window
    for (int i = 0; i < 19; ++i) {
        EXPECT_FALSE(h.record(true, fast, clock.now())) << i;
    }
    EXPECT_TRUE(h.record(true, fast, clock.now()));

    // Spread over time: failures 5s ago still count, 12s ago do not.
    health_tracker g{only_ratio(0.5, 20, 10s)};
    for (int i = 0; i < 10; ++i) {
        g.record(true, fast, clock.now());
    }
    clock.advance(5s);
    for (int i = 0; i < 9; ++i) {
        EXPECT_FALSE(g.record(true, fast, clock.now()));
    }
    EXPECT_TRUE(g.record(true, fast, clock.now()));
}

// Calls the client gave up on: slow ones count in the slow-call ratio (an upstream hanging
// until every client times out trips), and none of them touches the consecutive count.
TEST(health, abandoned_calls_count_as_slow_only) {
    manual_clock clock;
    health_config c;
    c.consecutive_failures = 3;
    c.min_volume = 4;
    c.slow_call = 2s;
    c.slow_ratio = 0.5;
    health_tracker h{c};
    EXPECT_FALSE(h.record(true, fast, clock.now()));
    EXPECT_FALSE(h.record(true, fast, clock.now()));
    EXPECT_FALSE(h.record_abandoned(1s, clock.now())) << "shorter than slow_call: not counted";
    EXPECT_FALSE(h.record_abandoned(3s, clock.now())) << "3 calls so far, under min_volume";
    const auto third = h.record(true, fast, clock.now());
    ASSERT_TRUE(third) << "an abandoned call does not end a run of failures";
    EXPECT_EQ(third->reason, "3 consecutive failures");

    health_tracker g{c};
    g.record(false, fast, clock.now());
    g.record(false, fast, clock.now());
    EXPECT_FALSE(g.record_abandoned(5s, clock.now()));
    const auto cause = g.record_abandoned(5s, clock.now());
    ASSERT_TRUE(cause) << "2 of 4 calls slow";
    EXPECT_EQ(cause->reason, "slow-call ratio 0.50 >= 0.50 over 30s (4 calls, slow >= 2s)");

    c.slow_call = 0ms;
    health_tracker off{c};
    for (int i = 0; i < 10; ++i) {
        EXPECT_FALSE(off.record_abandoned(60s, clock.now())) << "no slow_call: no verdict at all";
    }
}

// The failure ratio is of answered calls: abandoned ones (no answer) do not dilute it.
TEST(health, abandoned_calls_do_not_dilute_the_failure_ratio) {
    manual_clock clock;
    health_config c;
    c.consecutive_failures = 0;
    c.failure_ratio = 0.5;
    c.min_volume = 10;
    c.slow_call = 2s;
    c.slow_ratio = 0.9;
    health_tracker h{c};
    for (int i = 0; i < 9; ++i) {
        EXPECT_FALSE(h.record(true, fast, clock.now())) << i << ": under min_volume of answered calls";
    }
    for (int i = 0; i < 12; ++i) {
        EXPECT_FALSE(h.record_abandoned(3s, clock.now())) << i << ": still 9 answered calls";
    }
    const auto cause = h.record(true, fast, clock.now());
    ASSERT_TRUE(cause) << "10 answered calls, all failures: 1.0, not 10/22";
    EXPECT_EQ(cause->reason, "failure ratio 1.00 >= 0.50 over 30s (10 calls)");
}

TEST(health, slow_call_ratio) {
    manual_clock clock;
    health_config c;
    c.consecutive_failures = 0;
    c.min_volume = 10;
    c.slow_call = 2s;
    c.slow_ratio = 0.5;
    health_tracker h{c};
    for (int i = 0; i < 5; ++i) {
        EXPECT_FALSE(h.record(false, fast, clock.now()));
    }
    for (int i = 0; i < 4; ++i) {
        EXPECT_FALSE(h.record(false, 2s, clock.now()));
    }
    const auto cause = h.record(false, 2500ms, clock.now());
    ASSERT_TRUE(cause);
    EXPECT_EQ(cause->reason, "slow-call ratio 0.50 >= 0.50 over 30s (10 calls, slow >= 2s)");
    // Failures alone do not make calls slow, and failure_ratio is off.
    health_tracker g{c};
    for (int i = 0; i < 30; ++i) {
        EXPECT_FALSE(g.record(true, fast, clock.now()));
    }
}

TEST(health, reset_forgets_everything) {
    manual_clock clock;
    health_config c = only_ratio(0.5, 10);
    c.consecutive_failures = 3;
    health_tracker h{c};
    h.record(true, fast, clock.now());
    h.record(true, fast, clock.now());
    for (int i = 0; i < 7; ++i) {
        h.record(false, fast, clock.now());
    }
    h.reset(clock.now());
    h.record(true, fast, clock.now());
    EXPECT_FALSE(h.record(true, fast, clock.now()));
    EXPECT_EQ(h.record(true, fast, clock.now())->reason, "3 consecutive failures");
}

TEST(quota, pause_keeps_the_later_time) {
    manual_clock clock;
    quota_pause q;
    EXPECT_FALSE(q.remaining(clock.now()));
    q.pause_until(clock.now() + 5s);
    EXPECT_EQ(q.remaining(clock.now()), 5s);
    q.pause_until(clock.now() + 2s);
    EXPECT_EQ(q.remaining(clock.now()), 5s);
    clock.advance(1500ms);
    EXPECT_EQ(q.remaining(clock.now()), 3500ms);
    clock.advance(3500ms);
    EXPECT_FALSE(q.remaining(clock.now()));
}

TEST(quota, concurrent_pauses_keep_the_latest) {
    manual_clock clock;
    quota_pause q;
    const auto t0 = clock.now();
    std::vector<std::thread> pool;
    for (int t = 0; t < 8; ++t) {
        pool.emplace_back([&, t] {
            for (int i = 0; i < 1000; ++i) {
                q.pause_until(t0 + milliseconds{(i * 8 + t) % 5000});
            }
        });
    }
    for (auto& th : pool) {
        th.join();
    }
    EXPECT_EQ(q.remaining(t0), 4999ms);
}

}  // namespace
}  // namespace bb::breakers::test
