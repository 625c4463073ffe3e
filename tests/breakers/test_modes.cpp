// Operator modes: forced_open, forced_closed, metrics_only, their expiry, and the
// breaker-wide instance of a per-key breaker.
#include "helpers.hpp"

#include <atomic>
#include <thread>

namespace bb::breakers::test {
namespace {

using verdict = admission::verdict;

TEST_F(registry_test, forced_open_contains_everything_and_never_auto_closes) {
    make({make_config("b")});
    EXPECT_TRUE(reg().set_mode("b/k", mode::forced_open, std::nullopt, "alice", "investigating", now()));
    EXPECT_TRUE(reg().any_active());
    for (int i = 0; i < 3; ++i) {
        clock_.advance(std::chrono::hours{1});
        reg().tick(now());
        const auto a = reg().admit("b/k", now());
        EXPECT_EQ(a.v, verdict::contain);
        EXPECT_EQ(a.retry_after, 60s);
        ASSERT_TRUE(a.last_trip);
        EXPECT_EQ(a.last_trip->mode_to, mode::forced_open);
    }
    reg().probe_result("b/k", true, now());  // nothing to probe
    const auto s = reg().get("b/k", now());
    EXPECT_EQ(s->md, mode::forced_open);
    EXPECT_EQ(s->st, state::closed);  // the automatic state underneath
    ASSERT_EQ(events().size(), 1u);
    EXPECT_EQ(events()[0].mode_from, mode::automatic);
    EXPECT_EQ(events()[0].mode_to, mode::forced_open);
    EXPECT_EQ(events()[0].cause.actor, "alice");
}

TEST_F(registry_test, forced_open_expires_back_to_auto_with_an_expiry_transition) {
    make({make_config("b")});
    const auto t0 = now();
    reg().set_mode("b/k", mode::forced_open, 10min, "alice", "cool off", now());
    EXPECT_EQ(reg().get("b/k", now())->mode_expires, t0 + 10min);
    clock_.advance(4min);
    EXPECT_EQ(reg().admit("b/k", now()).retry_after, 6min);
    clock_.advance(7min);
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::allow);
    EXPECT_FALSE(reg().any_active());
    const auto ev = events();
    ASSERT_EQ(ev.size(), 2u);
    EXPECT_EQ(ev[1].cause.kind, "expiry");
    EXPECT_EQ(ev[1].mode_from, mode::forced_open);
    EXPECT_EQ(ev[1].mode_to, mode::automatic);
    EXPECT_EQ(ev[1].at, t0 + 10min);  // when it expired, not when somebody noticed
}

TEST_F(registry_test, a_rule_trip_during_forced_open_outlives_the_force) {
    make({make_config("b")});
    reg().set_mode("b/k", mode::forced_open, 1min, "alice", "hold", now());
    const auto r = reg().trip("b", "k", rule_cause(), now());
    EXPECT_TRUE(r.opened);
    EXPECT_EQ(r.adm.v, verdict::contain);
    clock_.advance(1min);
    // Mode expired, the rule's trip (30s cooldown, long gone) now half-opens.
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::probe);
    const auto ev = events();
    ASSERT_EQ(ev.size(), 4u);
    EXPECT_EQ(ev[2].cause.kind, "expiry");
    EXPECT_EQ(ev[3].cause.kind, "cooldown");
    EXPECT_EQ(ev[3].to, state::half_open);
}

TEST_F(registry_test, forced_closed_bypasses_and_says_what_auto_would_do) {
    make({make_config("b")});
    reg().trip("b", "k", rule_cause(), now());
    clock_.advance(10s);
    reg().set_mode("b/k", mode::forced_closed, std::nullopt, "alice", "false positive", now());
    auto a = reg().admit("b/k", now());
    EXPECT_EQ(a.v, verdict::allow);
    EXPECT_TRUE(a.would_contain);
    EXPECT_TRUE(reg().any_active());  // forced_closed is not closed+automatic

    // A trip is a shadow trip: recorded, not enforced, state unchanged.
    const auto r = reg().trip("b", "k", rule_cause(), now());
    EXPECT_TRUE(r.shadow);
    EXPECT_FALSE(r.opened);
    EXPECT_EQ(r.adm.v, verdict::allow);
    EXPECT_TRUE(r.adm.would_contain);
    const auto s = reg().get("b/k", now());
    EXPECT_EQ(s->shadow_trips, 1u);
    ASSERT_TRUE(s->last_shadow_trip);
    EXPECT_EQ(s->last_shadow_trip->cause.rule, "recipients-per-campaign");
    EXPECT_EQ(s->trips, 1u);

    // Past the shadow trip's cooldown auto would let it through.
    clock_.advance(31s);
    a = reg().admit("b/k", now());
    EXPECT_EQ(a.v, verdict::allow);
    EXPECT_FALSE(a.would_contain);
    EXPECT_EQ(events().size(), 2u);  // trip, mode; shadow trips are not transitions
}

TEST_F(registry_test, metrics_only_records_would_trip_without_enforcing) {
    make({make_config("b", action::pause, reset_policy::manual)});
    reg().set_mode("b", mode::metrics_only, 1h, "alice", "trying a new rule", now());
    // The mode is set on the breaker-wide instance; keys are evaluated in its shadow.
    for (int i = 0; i < 3; ++i) {
        const auto r = reg().trip("b", "k" + std::to_string(i), rule_cause(), now());
        EXPECT_TRUE(r.shadow);
        EXPECT_EQ(r.adm.v, verdict::allow);
    }
    const auto a = reg().admit("b/k0", now());
    EXPECT_EQ(a.v, verdict::allow);
    EXPECT_TRUE(a.would_contain);  // manual reset: auto would still be holding it
    EXPECT_EQ(reg().admit("b/other", now()).would_contain, false);
    EXPECT_EQ(reg().get("b/k0", now())->st, state::closed);
    EXPECT_EQ(reg().get("b/k0", now())->shadow_trips, 1u);
    EXPECT_EQ(reg().active_count(), 1);  // only the wide instance (its mode)

    clock_.advance(1h);
    EXPECT_EQ(reg().admit("b/k0", now()).v, verdict::allow);
    EXPECT_FALSE(reg().any_active());
    const auto ev = events();
    ASSERT_EQ(ev.size(), 2u);
    EXPECT_EQ(ev[1].instance, "b");
    EXPECT_EQ(ev[1].cause.kind, "expiry");
    // Back in auto a trip is real.
    EXPECT_TRUE(reg().trip("b", "k0", rule_cause(), now()).opened);
}

// What a config change applied as metrics_only uses: the breaker-wide bypass is set only
// while nothing of the breaker contains, in one step with respect to trips.
TEST_F(registry_test, a_bypass_set_only_at_rest_is_refused_while_a_key_is_open) {
    make({make_config("b", action::pause, reset_policy::manual)});
    ASSERT_TRUE(reg().trip("b", "k", rule_cause(), now()).opened);
    EXPECT_EQ(reg().set_mode_if_at_rest("b", mode::metrics_only, "alice", "shadow", now()), "b/k is open/auto");
    EXPECT_EQ(reg().get("b", now())->md, mode::automatic);
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::contain);
    ASSERT_TRUE(reg().reset("b/k", "alice", "done", now()));
    EXPECT_EQ(reg().set_mode_if_at_rest("b", mode::metrics_only, "alice", "shadow", now()), "");
    EXPECT_EQ(reg().get("b", now())->md, mode::metrics_only);
    EXPECT_TRUE(reg().trip("b", "k", rule_cause(), now()).shadow);
    // The wide instance itself in a mode (an operator's forced_open) is not at rest either.
    reg().set_mode("b", mode::forced_open, std::nullopt, "bob", "kill", now());
    EXPECT_EQ(reg().set_mode_if_at_rest("b", mode::metrics_only, "alice", "shadow", now()), "b is closed/forced_open");
    EXPECT_EQ(reg().get("b", now())->md, mode::forced_open);
    EXPECT_EQ(reg().set_mode_if_at_rest("nope", mode::metrics_only, "alice", "shadow", now()), "unknown breaker");
}

// A key tripped while the bypass is being set is either seen (nothing set) or shadowed (no
// instance open): never open under a breaker-wide bypass, where admit() would let it through.
// Bounded: 300 races of two threads.
TEST_F(registry_test, a_trip_racing_a_bypass_set_at_rest_is_never_left_unenforced) {
    make({make_config("b", action::pause, reset_policy::manual)});
    int seen = 0;
    int shadowed = 0;
    for (int round = 0; round < 300; ++round) {
        const std::string key = "k" + std::to_string(round);
        std::atomic<bool> go{false};
        breaker_registry::trip_result tripped;
        std::thread t{[&] {
            while (!go.load()) {
            }
            tripped = reg().trip("b", key, rule_cause(), now());
        }};
        go.store(true);
        const auto busy = reg().set_mode_if_at_rest("b", mode::metrics_only, "alice", "shadow", now());
        t.join();
        const auto wide = reg().get("b", now());
        const auto k = reg().get("b/" + key, now());
        ASSERT_TRUE(wide && k);
        if (wide->md == mode::metrics_only) {
            ASSERT_EQ(k->st, state::closed) << "round " << round << ": a key opened under the bypass";
            ASSERT_TRUE(tripped.shadow);
            ++shadowed;
        } else {
            ASSERT_EQ(busy, "b/" + key + " is open/auto") << "round " << round;
            ASSERT_EQ(reg().admit("b/" + key, now()).v, verdict::contain);
            ++seen;
        }
        ASSERT_TRUE(reg().reset("b/" + key, "alice", "next", now()));
        ASSERT_TRUE(reg().set_mode("b", mode::automatic, std::nullopt, "alice", "next", now()));
    }
    EXPECT_EQ(seen + shadowed, 300);
}

TEST_F(registry_test, metrics_only_on_one_instance) {
    make({make_config("b")});
    reg().set_mode("b/k", mode::metrics_only, std::nullopt, "alice", "shadow", now());
    const auto r = reg().trip("b", "k", rule_cause(), now());
    EXPECT_TRUE(r.shadow);
    EXPECT_TRUE(reg().admit("b/k", now()).would_contain);
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::allow);
    EXPECT_TRUE(reg().trip("b", "other", rule_cause(), now()).opened);
    // Back to auto without expiry: no leftover shadow.
    reg().set_mode("b/k", mode::automatic, std::nullopt, "alice", "done", now());
    const auto a = reg().admit("b/k", now());
    EXPECT_EQ(a.v, verdict::allow);
    EXPECT_FALSE(a.would_contain);
}

TEST_F(registry_test, manual_trip_overrides_a_shadow_mode) {
    auto manual = make_config("m");
    manual.reset = reset_policy::manual;
    make({make_config("b"), manual});
    reg().set_mode("b/k", mode::forced_closed, 1h, "alice", "bypass", now());
    reg().manual_trip("b/k", "bob", "stop it now", now());
    const auto s = reg().get("b/k", now());
    EXPECT_EQ(s->md, mode::forced_open) << "it resets by itself: held open until an operator resets it";
    EXPECT_EQ(s->st, state::open);
    EXPECT_FALSE(s->mode_expires);
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::contain);
    // A breaker that only an operator resets stays in its automatic mode, open.
    reg().set_mode("m/k", mode::metrics_only, 1h, "alice", "bypass", now());
    reg().manual_trip("m/k", "bob", "stop it now", now());
    EXPECT_EQ(reg().get("m/k", now())->md, mode::automatic);
    EXPECT_EQ(reg().get("m/k", now())->st, state::open);
}

// An operator's trip of a breaker that resets by itself (every upstream/<name> breaker does)
// must not be undone by its cooldown: one successful probe would close it.
TEST_F(registry_test, a_manual_trip_holds_past_the_cooldown_until_a_reset) {
    make({make_config("b")});
    reg().set_mode("b/k", mode::forced_open, 1min, "alice", "hold a minute", now());
    ASSERT_TRUE(reg().manual_trip("b/k", "bob", "vendor incident", now()));
    EXPECT_FALSE(reg().get("b/k", now())->mode_expires) << "the trip holds past the timed hold";
    clock_.advance(1h);
    reg().tick(now());
    const auto a = reg().admit("b/k", now());
    EXPECT_EQ(a.v, verdict::contain) << "no probe after the cooldown";
    EXPECT_EQ(reg().get("b/k", now())->st, state::open);
    ASSERT_TRUE(reg().reset("b/k", "bob", "vendor fixed", now()));
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::allow);
    EXPECT_EQ(reg().get("b/k", now())->md, mode::automatic);
    // A rule's trip still recovers by itself.
    reg().trip("b", "k", rule_cause(), now());
    clock_.advance(31s);
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::probe);
}

// A key a rule opened, then tripped by an operator: the trip is the operator's (a rule's
// trip would give way to a breaker-wide bypass; an operator's never does).
TEST_F(registry_test, a_manual_trip_of_a_key_a_rule_opened_is_the_operators) {
    make({make_config("m", action::pause, reset_policy::manual)});
    ASSERT_TRUE(reg().trip("m", "k", rule_cause(), now()).opened);
    ASSERT_TRUE(reg().manual_trip("m/k", "bob", "stop it", now()));
    const auto s = reg().get("m/k", now());
    ASSERT_TRUE(s && s->last_trip);
    EXPECT_EQ(s->last_trip->cause.kind, "manual");
    EXPECT_EQ(s->trips, 2u);
    reg().set_mode("m", mode::forced_closed, std::nullopt, "alice", "let the rest through", now());
    EXPECT_EQ(reg().admit("m/k", now()).v, verdict::contain);
    EXPECT_EQ(reg().admit("m/other", now()).v, verdict::allow);
}

// A timed bypass over an operator's trip of a breaker that resets by itself: when it ends,
// the trip holds again (forced_open), rather than half-opening on its old cooldown.
TEST_F(registry_test, a_timed_bypass_over_a_manual_trip_gives_the_trip_back) {
    make({make_config("b")});
    ASSERT_TRUE(reg().manual_trip("b/k", "bob", "vendor incident", now()));
    clock_.advance(1h);
    ASSERT_TRUE(reg().set_mode("b/k", mode::forced_closed, 15min, "alice", "one batch through", now()));
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::allow);
    clock_.advance(15min);
    // Before any tick: a snapshot (a state save, GET /v1/breakers) already says what the
    // expiry makes of it. It said automatic, and a crash right after that save restored an
    // operator's trip that one probe would close.
    for (const auto& snap : reg().snapshot(now())) {
        if (snap.instance == "b/k") {
            EXPECT_EQ(snap.md, mode::forced_open) << "the snapshot before the tick";
        }
    }
    reg().tick(now());
    const auto s = reg().get("b/k", now());
    EXPECT_EQ(s->md, mode::forced_open);
    EXPECT_FALSE(s->mode_expires);
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::contain);
    clock_.advance(1h);
    reg().tick(now());
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::contain) << "no probe: held until a reset";
    // The same for metrics_only; and a timed forced_open that ends is the operator's choice
    // of automatic, as before.
    ASSERT_TRUE(reg().set_mode("b/k", mode::metrics_only, 1min, "alice", "watch", now()));
    clock_.advance(1min);
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::contain);
    ASSERT_TRUE(reg().set_mode("b/k", mode::forced_open, 1min, "alice", "one more minute", now()));
    clock_.advance(1min);
    reg().tick(now());
    EXPECT_EQ(reg().get("b/k", now())->md, mode::automatic);
}

TEST_F(registry_test, reset_clears_mode_and_state) {
    make({make_config("b")});
    reg().trip("b", "k", rule_cause(), now());
    reg().set_mode("b/k", mode::forced_open, std::nullopt, "alice", "hold", now());
    EXPECT_EQ(reg().active_count(), 1);
    reg().reset("b/k", "alice", "all clear", now());
    const auto s = reg().get("b/k", now());
    EXPECT_EQ(s->st, state::closed);
    EXPECT_EQ(s->md, mode::automatic);
    EXPECT_FALSE(reg().any_active());
    const auto ev = events();
    ASSERT_EQ(ev.size(), 3u);
    EXPECT_EQ(ev[2].from, state::open);
    EXPECT_EQ(ev[2].mode_from, mode::forced_open);
}

TEST_F(registry_test, setting_the_same_mode_twice_reports_once) {
    make({make_config("b")});
    reg().set_mode("b/k", mode::forced_open, std::nullopt, "alice", "hold", now());
    reg().set_mode("b/k", mode::forced_open, std::nullopt, "alice", "hold", now());
    EXPECT_EQ(events().size(), 1u);
    reg().set_mode("b/k", mode::forced_open, 5min, "alice", "now with an end", now());
    EXPECT_EQ(events().size(), 2u);
    // auto on an instance that does not exist changes nothing and creates nothing.
    EXPECT_TRUE(reg().set_mode("b/never", mode::automatic, std::nullopt, "alice", "noop", now()));
    EXPECT_EQ(reg().snapshot(now()).size(), 1u);
}

TEST_F(registry_test, wide_instance_contains_every_key) {
    make({make_config("campaign-volume")});
    reg().trip("campaign-volume", "spring-sale", rule_cause(), now());
    EXPECT_TRUE(reg().manual_trip("campaign-volume", "alice", "pause all campaigns", now()));
    for (auto key : {"spring-sale", "summer-sale", "never-seen"}) {
        const auto a = reg().admit(std::string{"campaign-volume/"} + key, now());
        EXPECT_EQ(a.v, verdict::contain) << key;
        EXPECT_EQ(a.instance, "campaign-volume") << key;
    }
    reg().reset("campaign-volume", "alice", "resume", now());
    EXPECT_EQ(reg().admit("campaign-volume/summer-sale", now()).v, verdict::allow);
    EXPECT_EQ(reg().admit("campaign-volume/spring-sale", now()).instance, "campaign-volume/spring-sale");
    EXPECT_EQ(reg().admit("campaign-volume/spring-sale", now()).v, verdict::contain);
}

TEST_F(registry_test, wide_forced_closed_bypasses_every_key) {
    make({make_config("campaign-volume")});
    reg().trip("campaign-volume", "spring-sale", rule_cause(), now());
    reg().set_mode("campaign-volume", mode::forced_closed, std::nullopt, "alice", "bypass", now());
    const auto a = reg().admit("campaign-volume/spring-sale", now());
    EXPECT_EQ(a.v, verdict::allow);
    EXPECT_TRUE(a.would_contain);
    const auto b = reg().admit("campaign-volume/summer-sale", now());
    EXPECT_EQ(b.v, verdict::allow);
    EXPECT_FALSE(b.would_contain);
    EXPECT_TRUE(reg().trip("campaign-volume", "summer-sale", rule_cause(), now()).shadow);
}

TEST_F(registry_test, wide_probe_is_handed_back_when_the_key_contains) {
    make({make_config("campaign-volume")});
    reg().manual_trip("campaign-volume", "alice", "pause all", now());
    // Back to automatic: the trip now recovers by its cooldown.
    reg().set_mode("campaign-volume", mode::automatic, std::nullopt, "alice", "let it recover", now());
    clock_.advance(30s);
    reg().trip("campaign-volume", "spring-sale", rule_cause(), now());
    // The wide instance is half-open, but this key is open: no probe is used up.
    EXPECT_EQ(reg().admit("campaign-volume/spring-sale", now()).v, verdict::contain);
    const auto p = reg().admit("campaign-volume/summer-sale", now());
    EXPECT_EQ(p.v, verdict::probe);
    EXPECT_EQ(p.instance, "campaign-volume");
    reg().probe_result(p.instance, true, now(), p.probe_round);
    EXPECT_EQ(reg().get("campaign-volume", now())->st, state::closed);
}

}  // namespace
}  // namespace bb::breakers::test
