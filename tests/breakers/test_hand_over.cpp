// A reload that changes the breakers builds a new registry and hands the old one's state
// over. Requests still finishing on the old config keep calling the old registry; none of
// what they (or operators) do may be lost to the swap.
#include "helpers.hpp"

#include <atomic>
#include <latch>
#include <map>
#include <random>
#include <thread>

namespace bb::breakers::test {
namespace {

using verdict = admission::verdict;

TEST_F(registry_test, hand_over_moves_state_and_forwards_later_operations) {
    make({make_config("campaign-volume"), make_config("gone")});
    reg().trip("campaign-volume", "spring-sale", rule_cause(), now());
    reg().set_mode("campaign-volume/autumn", mode::forced_open, std::nullopt, "alice", "hold it", now());
    reg().trip("gone", "k", rule_cause(), now());

    auto next = std::make_shared<breaker_registry>(std::vector<breaker_config>{make_config("campaign-volume")});
    reg().hand_over(next, now());

    // The state is in the successor...
    auto open = next->get("campaign-volume/spring-sale", now());
    ASSERT_TRUE(open);
    EXPECT_EQ(open->st, state::open);
    EXPECT_EQ(next->get("campaign-volume/autumn", now())->md, mode::forced_open);
    // ...and what the old registry is asked about that breaker is answered from there.
    EXPECT_EQ(reg().admit("campaign-volume/spring-sale", now()).v, verdict::contain);
    EXPECT_TRUE(reg().reset("campaign-volume/spring-sale", "bob", "false alarm", now()));
    EXPECT_EQ(next->get("campaign-volume/spring-sale", now())->st, state::closed);
    const auto r = reg().trip("campaign-volume", "new-key", rule_cause(), now());
    EXPECT_TRUE(r.opened);
    EXPECT_EQ(r.adm.v, verdict::contain);
    EXPECT_EQ(next->get("campaign-volume/new-key", now())->st, state::open);
    EXPECT_TRUE(reg().manual_trip("campaign-volume/x", "bob", "stop", now()));
    EXPECT_EQ(next->get("campaign-volume/x", now())->st, state::open);
    EXPECT_TRUE(reg().set_mode("campaign-volume/x", mode::metrics_only, std::nullopt, "bob", "shadow", now()));
    EXPECT_EQ(next->get("campaign-volume/x", now())->md, mode::metrics_only);
    EXPECT_EQ(reg().get("campaign-volume/new-key", now())->st, state::open);

    // A breaker the new config dropped stays with the old registry (and goes with it).
    EXPECT_EQ(next->get("gone/k", now()), std::nullopt);
    EXPECT_EQ(reg().admit("gone/k", now()).v, verdict::contain);
    EXPECT_TRUE(reg().reset("gone/k", "bob", "done", now()));
    EXPECT_EQ(reg().admit("gone/k", now()).v, verdict::allow);
}

// A breaker one reload dropped and a later one configures again: the old registry, still
// used by requests on the oldest config, says what it holds (kept), then hands it over to the
// later registry, live, and forwards what those requests do to it from then on.
TEST_F(registry_test, a_kept_breaker_moves_to_the_registry_that_configures_it_again) {
    make({make_config("campaign-volume"), make_config("gone")});
    auto without = std::make_shared<breaker_registry>(std::vector<breaker_config>{make_config("campaign-volume")});
    reg().hand_over(without, now());
    reg().trip("gone", "k", rule_cause(), now());  // a request on the oldest config, after the swap
    reg().manual_trip("gone/ops", "bob", "stop", now());
    reg().reset("gone/ops", "bob", "false alarm", now());
    auto kept = reg().kept(now());
    ASSERT_EQ(kept.breakers, std::vector<std::string>{"gone"});
    ASSERT_EQ(kept.instances.size(), 2u);
    std::map<std::string, instance_snapshot> by_name;
    for (const auto& i : kept.instances) {
        by_name[i.instance] = i;
    }
    EXPECT_EQ(by_name.at("gone/k").st, state::open);
    EXPECT_TRUE(by_name.at("gone/ops").at_rest()) << "the reset since is what it holds";

    auto again = std::make_shared<breaker_registry>(
        std::vector<breaker_config>{make_config("campaign-volume"), make_config("gone")});
    without->hand_over(again, now());
    reg().hand_over(again, now());
    EXPECT_TRUE(reg().kept(now()).breakers.empty());
    EXPECT_EQ(again->get("gone/k", now())->st, state::open);
    EXPECT_TRUE(reg().reset("gone/k", "bob", "done", now()));
    EXPECT_EQ(again->get("gone/k", now())->st, state::closed) << "the oldest config's reset was not forwarded";
    reg().trip("gone", "k2", rule_cause(), now());
    EXPECT_EQ(again->get("gone/k2", now())->st, state::open) << "the oldest config's trip was not forwarded";
    // A snapshot through the oldest registry sees both successors.
    bool saw = false;
    for (const auto& snap : reg().snapshot(now())) {
        saw = saw || snap.instance == "gone/k2";
    }
    EXPECT_TRUE(saw);
    // Handed over already: a second hand-over moves nothing again.
    auto last = std::make_shared<breaker_registry>(std::vector<breaker_config>{make_config("gone")});
    reg().hand_over(last, now());
    EXPECT_EQ(last->get("gone/k2", now())->st, state::closed);
    EXPECT_EQ(reg().get("gone/k2", now())->st, state::open) << "answered by the registry it moved to first";
}

// Breaker b (one half-open probe) tripped for key k, its probe out, then handed over to a
// registry of the same config (or as changed by next_config): the new registry and the
// probe's admission.
class half_open_hand_over : public registry_test {
protected:
    virtual void next_config(breaker_config&) {}
    void SetUp() override {
        auto b = make_config("b");
        b.cooldown = 10s;
        b.half_open_probes = 1;
        make({b});
        reg().trip("b", "k", rule_cause(), now());
        clock_.advance(11s);
        probe = reg().admit("b/k", now());
        ASSERT_EQ(probe.v, verdict::probe);
        next_config(b);
        next = std::make_shared<breaker_registry>(std::vector<breaker_config>{b});
        reg().hand_over(next, now());
    }
    admission probe;
    std::shared_ptr<breaker_registry> next;
};

// A reload that makes the half-open breaker reset only by hand: its round ends there, and
// neither a new probe nor the one in flight can close it.
class half_open_hand_over_to_manual : public half_open_hand_over {
protected:
    void next_config(breaker_config& b) override { b.reset = reset_policy::manual; }
};

TEST_F(half_open_hand_over_to_manual, ends_the_round) {
    EXPECT_EQ(next->get("b/k", now())->st, state::open);
    reg().probe_result("b/k", true, now(), probe.probe_round);
    EXPECT_EQ(next->get("b/k", now())->st, state::open);
    clock_.advance(1h);
    next->tick(now());
    EXPECT_EQ(next->admit("b/k", now()).v, verdict::contain);
}

TEST_F(half_open_hand_over, keeps_a_half_open_probe_report) {
    // The probe's request finishes on the old config: its failure must reopen the breaker
    // where the state now lives, not vanish.
    reg().probe_result("b/k", false, now(), 0);
    const auto after = next->get("b/k", now());
    ASSERT_TRUE(after);
    EXPECT_NE(after->st, state::closed);
    EXPECT_EQ(next->admit("b/k", now()).v, verdict::contain);
}

// A reload while a probe is out keeps the round: no second budget of probes goes out in the
// new registry, and the probe's late success, reported with its round, closes the breaker
// there (a stale round's report would have freed a slot for one probe too many).
TEST_F(half_open_hand_over, keeps_the_half_open_round_and_its_probes) {
    EXPECT_EQ(next->admit("b/k", now()).v, verdict::contain) << "the one probe is still out";
    reg().probe_result("b/k", true, now(), probe.probe_round);
    EXPECT_EQ(next->get("b/k", now())->st, state::closed);
    EXPECT_EQ(next->admit("b/k", now()).v, verdict::allow);
}

// Threads trip distinct keys on the old registry while the hand-over happens: every key
// whose trip returned must be open in the successor, whichever side of the swap it fell on.
TEST(breaker_hand_over, no_trip_is_lost_to_a_concurrent_hand_over) {
    constexpr int threads = 4;
    constexpr int per_thread = 200;
    for (std::uint32_t seed = 1; seed <= 20; ++seed) {
        auto b = make_config("campaign-volume");
        b.max_instances = threads * per_thread + 10;
        manual_clock clock;
        breaker_registry old{{b}};
        auto next = std::make_shared<breaker_registry>(std::vector<breaker_config>{b});
        std::latch go{threads + 1};
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t) {
            pool.emplace_back([&, t] {
                go.arrive_and_wait();
                for (int i = 0; i < per_thread; ++i) {
                    old.trip("campaign-volume", "k" + std::to_string(t) + "-" + std::to_string(i), rule_cause(),
                             clock.now());
                }
            });
        }
        std::mt19937 rng{seed};
        go.arrive_and_wait();
        // Let the threads get somewhere first, by a seed-dependent amount of work.
        volatile std::uint64_t spin = 0;
        for (std::uint32_t i = 0, n = rng() % 200'000; i < n; ++i) {
            spin = spin + i;
        }
        old.hand_over(next, clock.now());
        for (auto& th : pool) {
            th.join();
        }
        int open = 0;
        for (int t = 0; t < threads; ++t) {
            for (int i = 0; i < per_thread; ++i) {
                const auto g = next->get("campaign-volume/k" + std::to_string(t) + "-" + std::to_string(i), clock.now());
                open += g && g->st == state::open ? 1 : 0;
            }
        }
        EXPECT_EQ(open, threads * per_thread) << "seed " << seed;
    }
}

}  // namespace
}  // namespace bb::breakers::test
