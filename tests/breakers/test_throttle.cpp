// Throttle: an open throttle breaker lets at most R requests through per interval (any
// interval-long span, not just aligned ones), exactly, under any concurrency.
#include "helpers.hpp"

#include <atomic>
#include <barrier>
#include <thread>

namespace bb::breakers::test {
namespace {

using verdict = admission::verdict;

breaker_config throttle_config_of(std::uint32_t r, milliseconds interval) {
    auto b = make_config("crm-writes", action::throttle, reset_policy::manual);
    b.per_key = false;
    b.throttle.requests = r;
    b.throttle.interval = interval;
    return b;
}

TEST_F(registry_test, closed_throttle_breaker_does_not_throttle) {
    make({throttle_config_of(1, 1s)});
    for (int i = 0; i < 10; ++i) {
        const auto a = reg().admit("crm-writes", now());
        EXPECT_EQ(a.v, verdict::allow);
        EXPECT_FALSE(a.throttled);
    }
}

TEST_F(registry_test, throttle_admits_r_then_refuses_with_time_to_next_slot) {
    make({throttle_config_of(3, 1s)});
    const auto r = reg().manual_trip("crm-writes", "alice", "slow down", now());
    EXPECT_TRUE(r);
    for (int i = 0; i < 3; ++i) {
        const auto a = reg().admit("crm-writes", now());
        EXPECT_EQ(a.v, verdict::allow) << i;
        EXPECT_TRUE(a.throttled);
        EXPECT_EQ(a.act, action::throttle);
    }
    auto a = reg().admit("crm-writes", now());
    EXPECT_EQ(a.v, verdict::contain);
    EXPECT_EQ(a.act, action::throttle);
    EXPECT_EQ(a.retry_after, 1s);
    clock_.advance(400ms);
    EXPECT_EQ(reg().admit("crm-writes", now()).retry_after, 600ms);
    clock_.advance(600ms);
    for (int i = 0; i < 3; ++i) {
        EXPECT_TRUE(reg().admit("crm-writes", now()).throttled) << i;
    }
    EXPECT_EQ(reg().admit("crm-writes", now()).v, verdict::contain);
}

// A reload that hands the breaker over keeps the admissions counted so far: it must not
// grant a fresh budget of R requests every time the config changes.
TEST_F(registry_test, a_hand_over_keeps_the_throttle_budget_already_used) {
    make({throttle_config_of(2, 10s)});
    ASSERT_TRUE(reg().manual_trip("crm-writes", "alice", "slow down", now()));
    EXPECT_TRUE(reg().admit("crm-writes", now()).throttled);
    clock_.advance(3s);
    EXPECT_TRUE(reg().admit("crm-writes", now()).throttled);
    auto next = std::make_shared<breaker_registry>(std::vector<breaker_config>{throttle_config_of(2, 10s)});
    reg().hand_over(next, now());
    const auto a = next->admit("crm-writes", now());
    EXPECT_EQ(a.v, verdict::contain) << "both slots are still taken";
    EXPECT_EQ(a.retry_after, 7s) << "the oldest admission frees its slot 10 s after it was made";
    clock_.advance(7s);
    EXPECT_TRUE(next->admit("crm-writes", now()).throttled);
    EXPECT_EQ(next->admit("crm-writes", now()).v, verdict::contain);
}

// A reload that lengthens the interval (2 per 10 s to 2 per 10 min, tightening it) judges the
// admissions made by the new interval: they used to be dropped at the hand-over as older than
// the old one, and the tightened throttle granted R at once.
TEST_F(registry_test, a_hand_over_that_lengthens_the_interval_keeps_the_admissions) {
    make({throttle_config_of(2, 10s)});
    ASSERT_TRUE(reg().manual_trip("crm-writes", "alice", "slow down", now()));
    EXPECT_TRUE(reg().admit("crm-writes", now()).throttled);
    EXPECT_TRUE(reg().admit("crm-writes", now()).throttled);
    clock_.advance(30s);
    auto next = std::make_shared<breaker_registry>(std::vector<breaker_config>{throttle_config_of(2, 10min)});
    reg().hand_over(next, now());
    const auto a = next->admit("crm-writes", now());
    EXPECT_EQ(a.v, verdict::contain) << "both admissions are within the new 10 min";
    EXPECT_EQ(a.retry_after, 9min + 30s);
}

TEST_F(registry_test, throttle_window_slides) {
    make({throttle_config_of(2, 1s)});
    reg().manual_trip("crm-writes", "alice", "slow down", now());
    const auto t0 = now();
    EXPECT_TRUE(reg().admit("crm-writes", t0).throttled);
    EXPECT_TRUE(reg().admit("crm-writes", t0 + 500ms).throttled);
    auto a = reg().admit("crm-writes", t0 + 900ms);
    EXPECT_EQ(a.v, verdict::contain);
    EXPECT_EQ(a.retry_after, 100ms);
    EXPECT_TRUE(reg().admit("crm-writes", t0 + 1s).throttled);  // the one at t0 left the window
    a = reg().admit("crm-writes", t0 + 1200ms);
    EXPECT_EQ(a.v, verdict::contain);  // 500ms and 1000ms are both within the last second
    EXPECT_EQ(a.retry_after, 300ms);
}

// A throttle breaker of `requests` a second that resets by itself, tripped: half-open once
// its 10 s cooldown is over.
class throttle_tripped : public registry_test {
protected:
    void trip_self_resetting(std::uint32_t requests) {
        auto b = throttle_config_of(requests, 1s);
        b.reset = reset_policy::automatic;
        b.cooldown = 10s;
        make({b});
        reg().trip("crm-writes", "", rule_cause(), now());
    }
};

TEST_F(throttle_tripped, throttle_in_half_open_probes_first) {
    trip_self_resetting(1);
    clock_.advance(10s);
    EXPECT_EQ(reg().admit("crm-writes", now()).v, verdict::probe);
    // The probe took the interval's one slot: R per interval holds in half-open too (it
    // used to let R more through beside the probes).
    const auto next = reg().admit("crm-writes", now());
    EXPECT_EQ(next.v, verdict::contain);
    EXPECT_EQ(next.retry_after, 1s);
    clock_.advance(1s);
    EXPECT_TRUE(reg().admit("crm-writes", now()).throttled);
}

// A probe whose own request breaks the rule again reopens the breaker and goes through on
// the slot it took, not on a second one (which would halve the rate while the rule stays
// broken, or refuse it with R of 1).
TEST_F(throttle_tripped, a_throttle_probe_that_reopens_the_breaker_uses_its_own_slot) {
    trip_self_resetting(2);
    clock_.advance(10s);
    const auto probe = reg().admit("crm-writes", now());
    ASSERT_EQ(probe.v, verdict::probe);
    EXPECT_TRUE(probe.slot_taken);
    const auto tr = reg().trip("crm-writes", "", rule_cause(), now(), true);
    EXPECT_TRUE(tr.opened);
    EXPECT_EQ(tr.adm.v, verdict::allow);
    EXPECT_TRUE(tr.adm.throttled);
    EXPECT_TRUE(reg().admit("crm-writes", now()).throttled) << "the second slot is still free";
    EXPECT_EQ(reg().admit("crm-writes", now()).v, verdict::contain);
}

// A probe finds no slot free (taken just before the cooldown ended): it waits as others do,
// and is let through, as the probe, once one frees.
TEST_F(throttle_tripped, throttle_in_half_open_probes_within_r) {
    trip_self_resetting(1);
    clock_.advance(9500ms);
    EXPECT_TRUE(reg().admit("crm-writes", now()).throttled) << "open: throttled";
    clock_.advance(500ms);
    const auto wait = reg().admit("crm-writes", now());
    EXPECT_EQ(wait.v, verdict::contain);
    EXPECT_EQ(wait.retry_after, 500ms);
    clock_.advance(500ms);
    EXPECT_EQ(reg().admit("crm-writes", now()).v, verdict::probe);
}

// 16 threads hammer one throttled instance; a barrier ends each round and moves the clock.
// Round by round, admissions must be exactly R when a full interval passed, and no two
// rounds half an interval apart may together exceed R.
TEST(throttle_concurrency, sixteen_threads_get_exactly_r_per_interval) {
    constexpr int threads = 16;
    constexpr int per_thread = 40;
    for (std::uint32_t r : {1u, 7u, 37u, 200u}) {
        for (auto step : {1000ms, 500ms}) {
            manual_clock clock;
            breaker_registry reg{{throttle_config_of(r, 1s)}};
            reg.manual_trip("crm-writes", "alice", "slow down", clock.now());
            constexpr int rounds = 12;
            std::vector<std::atomic<int>> admitted(rounds);
            std::barrier sync{threads, [&]() noexcept { clock.advance(step); }};
            std::vector<std::thread> pool;
            for (int t = 0; t < threads; ++t) {
                pool.emplace_back([&] {
                    for (int k = 0; k < rounds; ++k) {
                        for (int i = 0; i < per_thread; ++i) {
                            const auto a = reg.admit("crm-writes", clock.now());
                            if (a.v == verdict::allow) {
                                EXPECT_TRUE(a.throttled);
                                admitted[k].fetch_add(1);
                            }
                        }
                        sync.arrive_and_wait();
                    }
                });
            }
            for (auto& th : pool) {
                th.join();
            }
            const int expected = std::min<int>(static_cast<int>(r), threads * per_thread);
            for (int k = 0; k < rounds; ++k) {
                if (step == 1000ms) {
                    EXPECT_EQ(admitted[k].load(), expected) << "r=" << r << " round " << k;
                } else {
                    // Rounds at 0, 500, 1000ms...: R in even rounds, none in odd ones.
                    EXPECT_EQ(admitted[k].load(), k % 2 == 0 ? expected : 0) << "r=" << r << " round " << k;
                    if (k > 0) {
                        EXPECT_LE(admitted[k - 1].load() + admitted[k].load(), expected);
                    }
                }
            }
        }
    }
}

}  // namespace
}  // namespace bb::breakers::test
