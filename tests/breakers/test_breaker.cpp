// The automatic state machine: closed -> open -> half_open -> closed/open, backoff, the
// manual reset policy, and the events every transition reports.
#include "helpers.hpp"

namespace bb::breakers::test {
namespace {

using verdict = admission::verdict;

TEST(breaker_names, instance_names_and_strings) {
    breaker_registry reg{{make_config("campaign-volume"), [] {
                              auto b = make_config("upstream-sendgrid");
                              b.per_key = false;
                              return b;
                          }()}};
    const auto* keyed = reg.find("campaign-volume");
    const auto* single = reg.find("upstream-sendgrid");
    ASSERT_NE(keyed, nullptr);
    ASSERT_NE(single, nullptr);
    EXPECT_EQ(reg.find("nope"), nullptr);
    EXPECT_EQ(reg.instance_name(*keyed, "spring-sale"), "campaign-volume/spring-sale");
    EXPECT_EQ(reg.instance_name(*keyed, ""), "campaign-volume");
    EXPECT_EQ(reg.instance_name(*single, "spring-sale"), "upstream-sendgrid");
    EXPECT_EQ(to_string(state::half_open), "half_open");
    EXPECT_EQ(to_string(mode::automatic), "auto");
    EXPECT_EQ(to_string(action::quarantine), "quarantine");
    EXPECT_EQ(parse_mode("auto"), mode::automatic);
    EXPECT_EQ(parse_mode("metrics_only"), mode::metrics_only);
    EXPECT_EQ(parse_mode("automatic"), std::nullopt);
}

TEST_F(registry_test, closed_by_default_and_nothing_active) {
    make({make_config("campaign-volume")});
    EXPECT_FALSE(reg().any_active());
    const auto a = reg().admit("campaign-volume/spring-sale", now());
    EXPECT_EQ(a.v, verdict::allow);
    EXPECT_FALSE(a.would_contain);
    EXPECT_EQ(a.instance, "campaign-volume/spring-sale");
    const auto g = reg().get("campaign-volume/spring-sale", now());
    ASSERT_TRUE(g);
    EXPECT_EQ(g->st, state::closed);
    EXPECT_TRUE(events().empty());
}

TEST_F(registry_test, unknown_breaker_fails_closed_and_operator_calls_say_false) {
    make({make_config("campaign-volume")});
    EXPECT_EQ(reg().admit("nope/x", now()).v, verdict::contain);
    EXPECT_EQ(reg().trip("nope", "x", rule_cause(), now()).adm.v, verdict::contain);
    EXPECT_FALSE(reg().manual_trip("nope", "alice", "why", now()));
    EXPECT_FALSE(reg().reset("nope/x", "alice", "why", now()));
    EXPECT_FALSE(reg().set_mode("nope", mode::forced_open, std::nullopt, "alice", "why", now()));
    EXPECT_FALSE(reg().get("nope", now()));
    EXPECT_FALSE(reg().any_active());
}

TEST_F(registry_test, rule_trip_opens_and_pauses_with_remaining_cooldown) {
    make({make_config("campaign-volume")});
    const auto t0 = now();
    const auto r = reg().trip("campaign-volume", "spring-sale", rule_cause(), t0);
    EXPECT_TRUE(r.opened);
    EXPECT_FALSE(r.shadow);
    EXPECT_EQ(r.adm.v, verdict::contain);
    EXPECT_EQ(r.adm.act, action::pause);
    EXPECT_EQ(r.adm.retry_after, 30s);
    EXPECT_EQ(r.adm.instance, "campaign-volume/spring-sale");
    EXPECT_TRUE(reg().any_active());

    const auto ev = events();
    ASSERT_EQ(ev.size(), 1u);
    EXPECT_EQ(ev[0].instance, "campaign-volume/spring-sale");
    EXPECT_EQ(ev[0].breaker, "campaign-volume");
    EXPECT_EQ(ev[0].from, state::closed);
    EXPECT_EQ(ev[0].to, state::open);
    EXPECT_EQ(ev[0].cause.kind, "rule");
    EXPECT_EQ(ev[0].cause.rule, "recipients-per-campaign");
    EXPECT_EQ(ev[0].cause.request_id, "req-1");
    EXPECT_EQ(ev[0].cause.value, 10001);
    EXPECT_EQ(ev[0].at, t0);

    clock_.advance(10s);
    const auto a = reg().admit("campaign-volume/spring-sale", now());
    EXPECT_EQ(a.v, verdict::contain);
    EXPECT_EQ(a.retry_after, 20s);
    ASSERT_TRUE(a.last_trip);
    EXPECT_EQ(a.last_trip->cause.rule, "recipients-per-campaign");
    // Other keys are untouched.
    EXPECT_EQ(reg().admit("campaign-volume/summer-sale", now()).v, verdict::allow);

    const auto snap = reg().get("campaign-volume/spring-sale", now());
    ASSERT_TRUE(snap);
    EXPECT_EQ(snap->st, state::open);
    EXPECT_EQ(snap->key, "spring-sale");
    EXPECT_EQ(snap->opened_at, t0);
    EXPECT_EQ(snap->cooldown, 30s);
    EXPECT_EQ(snap->trips, 1u);
}

TEST_F(registry_test, trip_while_open_changes_nothing) {
    make({make_config("b")});
    EXPECT_TRUE(reg().trip("b", "k", rule_cause(), now()).opened);
    clock_.advance(5s);
    const auto r = reg().trip("b", "k", rule_cause(), now());
    EXPECT_FALSE(r.opened);
    EXPECT_EQ(r.adm.v, verdict::contain);
    EXPECT_EQ(r.adm.retry_after, 25s);  // the cooldown is not restarted
    EXPECT_EQ(events().size(), 1u);
    EXPECT_EQ(reg().get("b/k", now())->trips, 1u);
}

TEST_F(registry_test, half_open_probe_success_closes) {
    make({make_config("b")});
    reg().trip("b", "k", rule_cause(), now());
    const auto opened = now();
    clock_.advance(30s);
    const auto p = reg().admit("b/k", now());
    EXPECT_EQ(p.v, verdict::probe);
    EXPECT_NE(p.probe_round, 0u);
    // The probe is out: everybody else waits for it.
    const auto w = reg().admit("b/k", now());
    EXPECT_EQ(w.v, verdict::contain);
    EXPECT_EQ(w.retry_after, 1s);
    EXPECT_EQ(reg().get("b/k", now())->st, state::half_open);

    reg().probe_result("b/k", true, now(), p.probe_round);
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::allow);
    EXPECT_FALSE(reg().any_active());

    const auto ev = events();
    ASSERT_EQ(ev.size(), 3u);
    EXPECT_EQ(ev[1].from, state::open);
    EXPECT_EQ(ev[1].to, state::half_open);
    EXPECT_EQ(ev[1].cause.kind, "cooldown");
    EXPECT_EQ(ev[1].at, opened + 30s);
    EXPECT_EQ(ev[2].from, state::half_open);
    EXPECT_EQ(ev[2].to, state::closed);
    EXPECT_EQ(ev[2].cause.kind, "probe");
}

TEST_F(registry_test, every_probe_must_succeed) {
    auto b = make_config("b");
    b.half_open_probes = 3;
    make({b});
    reg().trip("b", "k", rule_cause(), now());
    clock_.advance(30s);
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(reg().admit("b/k", now()).v, verdict::probe) << i;
    }
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::contain);
    reg().probe_result("b/k", true, now());
    reg().probe_result("b/k", true, now());
    EXPECT_EQ(reg().get("b/k", now())->st, state::half_open);
    reg().probe_result("b/k", true, now());
    EXPECT_EQ(reg().get("b/k", now())->st, state::closed);
}

TEST_F(registry_test, probe_failure_reopens_with_doubled_cooldown_up_to_the_cap) {
    auto b = make_config("b");
    b.cooldown = 10s;
    b.max_cooldown = 35s;
    make({b});
    reg().trip("b", "k", rule_cause(), now());
    for (auto expected : {20s, 35s, 35s}) {
        clock_.advance(reg().get("b/k", now())->cooldown);
        ASSERT_EQ(reg().admit("b/k", now()).v, verdict::probe);
        reg().probe_result("b/k", false, now());
        const auto s = reg().get("b/k", now());
        EXPECT_EQ(s->st, state::open);
        EXPECT_EQ(s->cooldown, expected);
        EXPECT_EQ(reg().admit("b/k", now()).retry_after, expected);
        // Still open just before the new cooldown ends (a peek that changes nothing).
        EXPECT_EQ(reg().admit("b/k", now() + expected - 1ms).v, verdict::contain);
    }
    // Probe failures keep the rule as the explanation.
    EXPECT_EQ(reg().get("b/k", now())->trips, 1u);
    EXPECT_EQ(reg().get("b/k", now())->last_trip->cause.kind, "rule");

    clock_.advance(35s);
    ASSERT_EQ(reg().admit("b/k", now()).v, verdict::probe);
    reg().probe_result("b/k", true, now());
    EXPECT_EQ(reg().get("b/k", now())->st, state::closed);
    // Closed again: the next trip starts from the configured base.
    EXPECT_EQ(reg().trip("b", "k", rule_cause(), now()).adm.retry_after, 10s);
}

TEST_F(registry_test, rule_trip_in_half_open_reopens_with_backoff) {
    auto b = make_config("b");
    b.cooldown = 10s;
    make({b});
    reg().trip("b", "k", rule_cause(), now());
    clock_.advance(10s);
    ASSERT_EQ(reg().admit("b/k", now()).v, verdict::probe);
    const auto r = reg().trip("b", "k", rule_cause(), now());
    EXPECT_TRUE(r.opened);
    EXPECT_EQ(r.adm.retry_after, 20s);
    EXPECT_EQ(reg().get("b/k", now())->trips, 2u);
}

TEST_F(registry_test, late_probe_from_an_earlier_round_is_ignored) {
    auto b = make_config("b");
    b.cooldown = 10s;
    make({b});
    reg().trip("b", "k", rule_cause(), now());
    clock_.advance(10s);
    const auto first = reg().admit("b/k", now());
    ASSERT_EQ(first.v, verdict::probe);
    reg().trip("b", "k", rule_cause(), now());  // reopened meanwhile (20s)
    clock_.advance(20s);
    const auto second = reg().admit("b/k", now());
    ASSERT_EQ(second.v, verdict::probe);
    ASSERT_NE(first.probe_round, second.probe_round);
    reg().probe_result("b/k", true, now(), first.probe_round);
    EXPECT_EQ(reg().get("b/k", now())->st, state::half_open);
    reg().probe_result("b/k", true, now(), second.probe_round);
    EXPECT_EQ(reg().get("b/k", now())->st, state::closed);
}

// A probe slower than the cooldown: a new round lets another probe through, and the slow
// one's failure, when it comes, still reopens the breaker (it was dropped as stale, so a
// hanging upstream got a probe every cooldown and the breaker never reopened).
TEST_F(registry_test, a_slow_probes_failure_reopens_even_after_a_new_round) {
    auto b = make_config("b");
    b.cooldown = 10s;
    make({b});
    reg().trip("b", "k", rule_cause(), now());
    clock_.advance(10s);
    const auto slow = reg().admit("b/k", now());
    ASSERT_EQ(slow.v, verdict::probe);
    clock_.advance(10s);  // no answer within a cooldown: a new round
    const auto next = reg().admit("b/k", now());
    ASSERT_EQ(next.v, verdict::probe);
    ASSERT_NE(next.probe_round, slow.probe_round);
    reg().probe_result("b/k", false, now(), slow.probe_round);
    const auto after = reg().get("b/k", now());
    EXPECT_EQ(after->st, state::open);
    EXPECT_EQ(after->cooldown, 20s);
    // A late success of an earlier round still decides nothing.
    clock_.advance(20s);
    const auto third = reg().admit("b/k", now());
    ASSERT_EQ(third.v, verdict::probe);
    reg().probe_result("b/k", true, now(), next.probe_round);
    EXPECT_EQ(reg().get("b/k", now())->st, state::half_open);
    reg().probe_result("b/k", true, now(), third.probe_round);
    EXPECT_EQ(reg().get("b/k", now())->st, state::closed);
}

// An upstream slower than the cooldown: each probe's answer comes after a new round began.
// Its success closes the breaker (it was dropped as stale, so a breaker whose every probe
// succeeded stayed half-open, refusing everything else, for as long as the upstream was slow).
TEST_F(registry_test, a_slow_probes_success_closes_even_after_a_new_round) {
    auto b = make_config("b");
    b.cooldown = 5s;
    make({b});
    reg().trip("b", "k", rule_cause(), now());
    clock_.advance(5s);
    const auto slow = reg().admit("b/k", now());
    ASSERT_EQ(slow.v, verdict::probe);
    clock_.advance(5s);  // a new round: another probe goes
    const auto next = reg().admit("b/k", now());
    ASSERT_EQ(next.v, verdict::probe);
    ASSERT_NE(next.probe_round, slow.probe_round);
    clock_.advance(3s);  // the first answers after 8 s
    reg().probe_result("b/k", true, now(), slow.probe_round);
    const auto after = reg().get("b/k", now());
    EXPECT_EQ(after->st, state::closed);
    EXPECT_EQ(after->cooldown, 5s);
    // The other probe's answer, after the close, changes nothing.
    reg().probe_result("b/k", false, now(), next.probe_round);
    EXPECT_EQ(reg().get("b/k", now())->st, state::closed);
}

// A probe whose request never reached the upstream (another breaker contained it) gives
// its slot back: no verdict, no reopening with a doubled cooldown, and the next request
// probes. A cancel from an earlier round changes nothing.
TEST_F(registry_test, a_cancelled_probe_gives_its_slot_back_without_a_verdict) {
    auto b = make_config("b");
    b.cooldown = 10s;
    make({b});
    reg().trip("b", "k", rule_cause(), now());
    clock_.advance(10s);
    const auto first = reg().admit("b/k", now());
    ASSERT_EQ(first.v, verdict::probe);
    ASSERT_EQ(reg().admit("b/k", now()).v, verdict::contain) << "one probe at a time";
    reg().cancel_probe("b/k", first.probe_round);
    EXPECT_EQ(reg().get("b/k", now())->st, state::half_open);
    EXPECT_EQ(reg().get("b/k", now())->cooldown, 10s) << "no backoff: nothing failed";
    const auto second = reg().admit("b/k", now());
    ASSERT_EQ(second.v, verdict::probe);
    EXPECT_EQ(second.probe_round, first.probe_round);
    reg().cancel_probe("b/k", first.probe_round + 7);  // not this round: ignored
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::contain);
    reg().probe_result("b/k", true, now(), second.probe_round);
    EXPECT_EQ(reg().get("b/k", now())->st, state::closed);
    reg().cancel_probe("b/k", second.probe_round);  // closed: nothing to give back
    reg().cancel_probe("nope/k", 1);                // unknown: nothing happens
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::allow);
}

TEST_F(registry_test, a_probe_that_never_reports_is_replaced_after_a_cooldown) {
    auto b = make_config("b");
    b.cooldown = 10s;
    make({b});
    reg().trip("b", "k", rule_cause(), now());
    clock_.advance(10s);
    ASSERT_EQ(reg().admit("b/k", now()).v, verdict::probe);
    clock_.advance(9s);
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::contain);
    clock_.advance(1s);
    EXPECT_EQ(reg().admit("b/k", now()).v, verdict::probe);
}

TEST_F(registry_test, manual_reset_policy_never_closes_by_itself) {
    auto b = make_config("campaign-volume", action::quarantine, reset_policy::manual);
    make({b});
    reg().trip("campaign-volume", "spring-sale", rule_cause(), now());
    for (int i = 0; i < 5; ++i) {
        clock_.advance(std::chrono::hours{24});
        reg().tick(now());
        const auto a = reg().admit("campaign-volume/spring-sale", now());
        EXPECT_EQ(a.v, verdict::contain);
        EXPECT_EQ(a.act, action::quarantine);
        EXPECT_EQ(a.retry_after, 60s);
    }
    EXPECT_EQ(reg().get("campaign-volume/spring-sale", now())->st, state::open);
    EXPECT_EQ(events().size(), 1u);  // no half-open, ever

    EXPECT_TRUE(reg().reset("campaign-volume/spring-sale", "alice", "segment fixed", now()));
    EXPECT_EQ(reg().admit("campaign-volume/spring-sale", now()).v, verdict::allow);
    EXPECT_FALSE(reg().any_active());
    const auto ev = events();
    ASSERT_EQ(ev.size(), 2u);
    EXPECT_EQ(ev[1].to, state::closed);
    EXPECT_EQ(ev[1].cause.kind, "manual");
    EXPECT_EQ(ev[1].cause.actor, "alice");
    EXPECT_EQ(ev[1].cause.reason, "segment fixed");
}

TEST_F(registry_test, manual_retry_after_is_configurable) {
    auto b = make_config("b", action::pause, reset_policy::manual);
    b.retry_after = 5min;
    make({b});
    reg().trip("b", "k", rule_cause(), now());
    EXPECT_EQ(reg().admit("b/k", now()).retry_after, 5min);
}

TEST_F(registry_test, manual_trip_by_hand_and_reset) {
    auto b = make_config("upstream-sendgrid");
    b.per_key = false;
    make({b});
    EXPECT_TRUE(reg().manual_trip("upstream-sendgrid", "bob", "vendor incident", now()));
    const auto a = reg().admit("upstream-sendgrid", now());
    EXPECT_EQ(a.v, verdict::contain);
    ASSERT_TRUE(a.last_trip);
    EXPECT_EQ(a.last_trip->cause.kind, "manual");
    EXPECT_EQ(a.last_trip->cause.actor, "bob");
    // A key given for a single-instance breaker lands on its one instance.
    EXPECT_EQ(reg().admit("upstream-sendgrid/whatever", now()).v, verdict::contain);
    EXPECT_TRUE(reg().reset("upstream-sendgrid", "bob", "vendor fixed", now()));
    EXPECT_EQ(reg().admit("upstream-sendgrid", now()).v, verdict::allow);
    // Resetting what was never tripped is fine.
    EXPECT_TRUE(reg().reset("upstream-sendgrid", "bob", "again", now()));
    EXPECT_EQ(events().size(), 2u);
}

// An operator trips a self-resetting breaker (held forced_open), then sets it back to auto
// to let it recover, then bypasses it for five minutes: the bypass ending gives back the
// auto they chose, not the hold of their trip (which held the breaker for good).
TEST_F(registry_test, a_bypass_ending_keeps_the_auto_an_operator_chose_after_their_trip) {
    auto b = make_config("b");
    b.per_key = false;
    b.reset = reset_policy::automatic;
    b.cooldown = 10s;
    make({b});
    ASSERT_TRUE(reg().manual_trip("b", "bob", "vendor incident", now()));
    EXPECT_EQ(reg().get("b", now())->md, mode::forced_open);
    ASSERT_TRUE(reg().set_mode("b", mode::automatic, std::nullopt, "bob", "let it recover", now()));
    ASSERT_TRUE(reg().set_mode("b", mode::forced_closed, 5min, "bob", "one batch", now()));
    clock_.advance(5min);
    const auto after = reg().get("b", now());
    EXPECT_EQ(after->md, mode::automatic) << "held forced_open again";
    // A new trip by hand is a new hold: a bypass over it gives it back.
    ASSERT_TRUE(reg().manual_trip("b", "bob", "again", now()));
    ASSERT_TRUE(reg().set_mode("b", mode::forced_closed, 5min, "bob", "one batch", now()));
    clock_.advance(5min);
    EXPECT_EQ(reg().get("b", now())->md, mode::forced_open);
    // So is a hold set as a mode, after auto was chosen once more.
    ASSERT_TRUE(reg().set_mode("b", mode::automatic, std::nullopt, "bob", "recover", now()));
    ASSERT_TRUE(reg().set_mode("b", mode::forced_open, std::nullopt, "bob", "hold", now()));
    ASSERT_TRUE(reg().set_mode("b", mode::forced_closed, 5min, "bob", "one batch", now()));
    clock_.advance(5min);
    EXPECT_EQ(reg().get("b", now())->md, mode::forced_open) << "the operator's later hold was let go";
}

TEST_F(registry_test, tick_reports_due_transitions_without_traffic) {
    make({make_config("b")});
    reg().trip("b", "k", rule_cause(), now());
    clock_.advance(31s);
    reg().tick(now());
    const auto ev = events();
    ASSERT_EQ(ev.size(), 2u);
    EXPECT_EQ(ev[1].to, state::half_open);
}

TEST_F(registry_test, callback_may_reenter_the_registry) {
    std::vector<state> seen;
    breaker_registry* self = nullptr;
    breaker_registry reg{{make_config("b")}, [&](const transition& t) {
                             // Delivered outside every lock: reading back must not deadlock.
                             seen.push_back(self->get(t.instance, t.at)->st);
                         }};
    self = &reg;
    reg.trip("b", "k", rule_cause(), now());
    reg.reset("b/k", "alice", "ok", now());
    EXPECT_EQ(seen, (std::vector<state>{state::open, state::closed}));
}

// The number an admission carries (the response that reports it waits until the saved
// state holds it): taken by each change that makes an instance contain, kept by changes
// that loosen it, so those make no response wait for a save.
TEST_F(registry_test, containing_changes_are_numbered_and_loosening_ones_keep_the_number) {
    auto b = make_config("b");
    b.cooldown = 30s;
    make({b});
    const auto before = changes_so_far();
    EXPECT_EQ(reg().admit("b/k", now()).change, 0u) << "closed: nothing to wait for";
    reg().trip("b", "k", rule_cause(), now());
    const auto tripped = reg().admit("b/k", now());
    EXPECT_EQ(tripped.v, verdict::contain);
    EXPECT_GT(tripped.change, before);
    EXPECT_LE(tripped.change, changes_so_far());
    clock_.advance(30s);
    const auto probe = reg().admit("b/k", now());  // open -> half_open: loosens
    EXPECT_EQ(probe.v, verdict::probe);
    const auto waiting = reg().admit("b/k", now());  // turned away while the probe is out
    EXPECT_EQ(waiting.v, verdict::contain);
    EXPECT_EQ(waiting.change, tripped.change);
    reg().probe_result("b/k", false, now(), probe.probe_round);  // reopens: contains anew
    const auto reopened = reg().admit("b/k", now());
    EXPECT_GT(reopened.change, tripped.change);
    reg().set_mode("b/k", mode::forced_open, 1min, "alice", "hold", now());
    const auto forced = reg().admit("b/k", now());
    EXPECT_GT(forced.change, reopened.change);
    clock_.advance(1min);  // the force runs out (still open by the rule's trip): loosens
    EXPECT_EQ(reg().admit("b/k", now()).change, forced.change);
}

}  // namespace
}  // namespace bb::breakers::test
