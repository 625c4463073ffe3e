// Instances: one per key, bounded with an overflow instance, idle ones evicted; restore().
#include "helpers.hpp"

namespace bb::breakers::test {
namespace {

using verdict = admission::verdict;

TEST_F(registry_test, scope_breaker_has_one_instance_for_every_key) {
    auto b = make_config("upstream-sendgrid");
    b.per_key = false;
    make({b});
    const auto r = reg().trip("upstream-sendgrid", "a", rule_cause(), now());
    EXPECT_EQ(r.adm.instance, "upstream-sendgrid");
    EXPECT_FALSE(reg().trip("upstream-sendgrid", "b", rule_cause(), now()).opened);
    EXPECT_EQ(reg().snapshot(now()).size(), 1u);
    EXPECT_EQ(reg().snapshot(now())[0].key, "");
}

TEST_F(registry_test, instances_are_bounded_with_one_overflow_instance) {
    auto b = make_config("campaign-volume");
    b.max_instances = 2;
    make({b});
    EXPECT_EQ(reg().trip("campaign-volume", "k1", rule_cause(), now()).adm.instance, "campaign-volume/k1");
    EXPECT_EQ(reg().trip("campaign-volume", "k2", rule_cause(), now()).adm.instance, "campaign-volume/k2");
    const auto r = reg().trip("campaign-volume", "k3", rule_cause("r", "k3"), now());
    EXPECT_TRUE(r.opened);
    EXPECT_EQ(r.adm.instance, "campaign-volume/_overflow");
    EXPECT_FALSE(reg().trip("campaign-volume", "k4", rule_cause("r", "k4"), now()).opened);  // same overflow

    // Keys without an instance of their own may be the ones that overflowed: fail closed.
    const auto a = reg().admit("campaign-volume/k4", now());
    EXPECT_EQ(a.v, verdict::contain);
    EXPECT_EQ(a.instance, "campaign-volume/_overflow");
    EXPECT_EQ(reg().admit("campaign-volume/k1", now()).instance, "campaign-volume/k1");

    const auto snap = reg().snapshot(now());
    ASSERT_EQ(snap.size(), 3u);
    EXPECT_EQ(snap[0].instance, "campaign-volume/_overflow");
    EXPECT_EQ(snap[0].last_trip->cause.key, "k3");
    EXPECT_EQ(reg().active_count(), 3);

    // A key contained by the overflow instance shows it, and cannot be reset or moved to
    // another mode by its own name: that would say "closed" while nothing changed, or
    // change every key in the overflow instance.
    const auto shown = reg().get("campaign-volume/k4", now());
    ASSERT_TRUE(shown);
    EXPECT_EQ(shown->instance, "campaign-volume/_overflow");
    EXPECT_EQ(shown->st, state::open);
    const auto r4 = reg().reset("campaign-volume/k4", "alice", "checked", now());
    EXPECT_FALSE(r4);
    EXPECT_TRUE(r4.known);
    EXPECT_EQ(r4.overflow, "campaign-volume/_overflow");
    const auto m4 = reg().set_mode("campaign-volume/k4", mode::forced_closed, std::nullopt, "alice", "let it", now());
    EXPECT_FALSE(m4);
    EXPECT_EQ(m4.overflow, "campaign-volume/_overflow");
    EXPECT_EQ(reg().admit("campaign-volume/k4", now()).v, verdict::contain);
    EXPECT_EQ(reg().admit("campaign-volume/k3", now()).v, verdict::contain);

    // The overflow instance is operated like any other.
    EXPECT_TRUE(reg().reset("campaign-volume/_overflow", "alice", "checked", now()));
    EXPECT_TRUE(reg().reset("campaign-volume/k4", "alice", "nothing left", now()));
    EXPECT_EQ(reg().get("campaign-volume/k4", now())->instance, "campaign-volume/k4");
    EXPECT_EQ(reg().admit("campaign-volume/k4", now()).v, verdict::allow);
    EXPECT_EQ(reg().active_count(), 2);
}

TEST_F(registry_test, a_mode_for_a_new_key_of_a_full_breaker_is_refused_not_given_to_the_overflow_instance) {
    auto b = make_config("campaign-volume");
    b.max_instances = 2;
    make({b});
    reg().trip("campaign-volume", "k1", rule_cause(), now());
    reg().trip("campaign-volume", "k2", rule_cause(), now());
    // Full of open instances: k3 would get the overflow instance, and forced_closed there
    // would let every later overflowing trip through.
    const auto m = reg().set_mode("campaign-volume/k3", mode::forced_closed, std::nullopt, "alice", "allow", now());
    EXPECT_FALSE(m);
    EXPECT_EQ(m.overflow, "campaign-volume/_overflow");
    const auto r = reg().trip("campaign-volume", "k5", rule_cause("r", "k5"), now());
    EXPECT_TRUE(r.opened);
    EXPECT_EQ(reg().admit("campaign-volume/k5", now()).v, verdict::contain);
    // forced_open only contains more: taken, on the overflow instance, as a trip would be.
    EXPECT_TRUE(reg().set_mode("campaign-volume/k6", mode::forced_open, std::nullopt, "alice", "kill", now()));
    EXPECT_EQ(reg().get("campaign-volume/_overflow", now())->md, mode::forced_open);
}

// A key tripped into the overflow instance (the breaker was full) stays contained by it
// even once there is room again: an operator's timed forced_open of that key used to make it
// an instance of its own, closed underneath, that let it through when the mode expired.
TEST_F(registry_test, a_key_in_the_open_overflow_instance_does_not_escape_it_when_room_frees) {
    auto b = make_config("campaign-volume");
    b.max_instances = 1;
    make({b});
    reg().trip("campaign-volume", "k1", rule_cause(), now());
    EXPECT_EQ(reg().trip("campaign-volume", "k2", rule_cause("r", "k2"), now()).adm.instance,
              "campaign-volume/_overflow");
    ASSERT_TRUE(reg().reset("campaign-volume/k1", "alice", "ok", now()));  // idle: room for a key
    ASSERT_TRUE(reg().set_mode("campaign-volume/k2", mode::forced_open, milliseconds{1000}, "alice", "stop it", now()));
    clock_.advance(2s);  // the mode expires
    const auto a = reg().admit("campaign-volume/k2", now());
    EXPECT_EQ(a.v, verdict::contain) << a.instance;
    EXPECT_EQ(a.instance, "campaign-volume/_overflow");
    // Once the overflow instance is reset, new keys get instances of their own again.
    ASSERT_TRUE(reg().reset("campaign-volume/_overflow", "alice", "checked", now()));
    EXPECT_EQ(reg().trip("campaign-volume", "k3", rule_cause(), now()).adm.instance, "campaign-volume/k3");
}

// An operator's hold on the overflow instance (every key of a full breaker) is not cut short
// by another operator's timed forced_open of one new key, which lands there too.
TEST_F(registry_test, a_forced_open_of_one_key_does_not_shorten_the_overflow_instances_hold) {
    auto b = make_config("campaign-volume");
    b.max_instances = 2;
    b.cooldown = 1s;
    make({b});
    reg().trip("campaign-volume", "k1", rule_cause(), now());
    reg().trip("campaign-volume", "k2", rule_cause(), now());
    ASSERT_TRUE(reg().manual_trip("campaign-volume/_overflow", "alice", "hold them all", now()));
    ASSERT_TRUE(reg().set_mode("campaign-volume/k9", mode::forced_open, milliseconds{600'000}, "bob", "k9", now()));
    auto over = reg().get("campaign-volume/_overflow", now());
    ASSERT_TRUE(over);
    EXPECT_EQ(over->md, mode::forced_open);
    EXPECT_FALSE(over->mode_expires) << "alice's hold has no end; bob's ten minutes gave it one";
    clock_.advance(std::chrono::minutes{11});
    EXPECT_EQ(reg().admit("campaign-volume/k7", now()).v, verdict::contain);
    // A timed hold there is lengthened by a longer one, never shortened by a shorter one.
    auto c = make_config("cv2");
    c.max_instances = 1;
    make({c});
    reg().trip("cv2", "k1", rule_cause(), now());
    ASSERT_TRUE(reg().set_mode("cv2/k2", mode::forced_open, milliseconds{600'000}, "alice", "", now()));
    ASSERT_TRUE(reg().set_mode("cv2/k3", mode::forced_open, milliseconds{60'000}, "bob", "", now()));
    EXPECT_EQ(reg().get("cv2/_overflow", now())->mode_expires, now() + milliseconds{600'000});
    ASSERT_TRUE(reg().set_mode("cv2/k4", mode::forced_open, milliseconds{1'200'000}, "carol", "", now()));
    EXPECT_EQ(reg().get("cv2/_overflow", now())->mode_expires, now() + milliseconds{1'200'000});
}

// While an operator lets the overflow instance through (forced_closed), a new key's trip is
// no shadow trip there: it gets an instance of its own (room permitting) and is contained.
TEST_F(registry_test, a_new_keys_trip_is_not_absorbed_by_an_overflow_instance_let_through) {
    auto b = make_config("campaign-volume", action::pause, reset_policy::manual);
    b.max_instances = 2;
    make({b});
    reg().trip("campaign-volume", "k1", rule_cause(), now());
    reg().trip("campaign-volume", "k2", rule_cause(), now());
    EXPECT_EQ(reg().trip("campaign-volume", "k3", rule_cause("r", "k3"), now()).adm.instance,
              "campaign-volume/_overflow");
    ASSERT_TRUE(reg().set_mode("campaign-volume/_overflow", mode::forced_closed, milliseconds{3'600'000}, "alice",
                               "let the overflowed keys through", now()));
    ASSERT_TRUE(reg().reset("campaign-volume/k1", "alice", "ok", now()));  // room for one key
    const auto r = reg().trip("campaign-volume", "k4", rule_cause("r", "k4"), now());
    EXPECT_TRUE(r.opened);
    EXPECT_EQ(r.adm.instance, "campaign-volume/k4");
    EXPECT_EQ(reg().admit("campaign-volume/k4", now()).v, verdict::contain);
}

TEST_F(registry_test, idle_instances_make_room_for_new_keys) {
    auto b = make_config("campaign-volume");
    b.max_instances = 2;
    make({b});
    reg().trip("campaign-volume", "k1", rule_cause(), now());
    reg().trip("campaign-volume", "k2", rule_cause(), now());
    reg().reset("campaign-volume/k1", "alice", "ok", now());
    EXPECT_EQ(reg().trip("campaign-volume", "k3", rule_cause(), now()).adm.instance, "campaign-volume/k3");
    const auto snap = reg().snapshot(now());
    ASSERT_EQ(snap.size(), 2u);
    EXPECT_EQ(snap[0].instance, "campaign-volume/k2");
    EXPECT_EQ(snap[1].instance, "campaign-volume/k3");
    // The wide instance does not count against the bound.
    reg().manual_trip("campaign-volume", "alice", "all", now());
    EXPECT_EQ(reg().snapshot(now()).size(), 3u);
}

// A cooldown backed off under an earlier config is held within what the config allows now: a
// reload that lowers max_cooldown from an hour to 30 s does not leave the instance an hour.
TEST_F(registry_test, a_restored_cooldown_is_held_within_the_configs_maximum) {
    auto b = make_config("cv");
    b.cooldown = 10s;
    b.max_cooldown = 30s;
    make({b});
    auto s = saved("k", state::open, mode::automatic, 0ms);
    s.cooldown = std::chrono::hours{1};
    reg().restore({s}, now());
    clock_.advance(29s);
    EXPECT_EQ(reg().admit("cv/k", now()).v, verdict::contain);
    clock_.advance(2s);
    EXPECT_EQ(reg().admit("cv/k", now()).v, verdict::probe);
}

// And at least the cooldown the config has now: an operator who raises a 30 s cooldown to an
// hour while the breaker is open (a tightening) does not see it half-open after 30 s.
TEST_F(registry_test, a_restored_cooldown_is_at_least_the_configs_cooldown) {
    auto b = make_config("cv");
    b.cooldown = std::chrono::hours{1};
    make({b});
    auto s = saved("k", state::open, mode::automatic, 0ms);
    s.cooldown = 30s;  // tripped under the config before
    reg().restore({s}, now());
    clock_.advance(31s);
    EXPECT_EQ(reg().admit("cv/k", now()).v, verdict::contain);
    clock_.advance(std::chrono::hours{1});
    EXPECT_EQ(reg().admit("cv/k", now()).v, verdict::probe);
}

TEST_F(registry_test, restore_recreates_open_instances_and_modes) {
    auto b = make_config("campaign-volume");
    b.cooldown = 10s;
    make({b, make_config("other", action::pause, reset_policy::manual)});

    const auto t0 = now();
    auto trip = std::make_shared<transition>();
    trip->instance = "campaign-volume/spring-sale";
    trip->to = state::open;
    trip->cause = rule_cause();

    std::vector<instance_snapshot> saved(5);
    saved[0].instance = "campaign-volume/spring-sale";
    saved[0].breaker = "campaign-volume";
    saved[0].key = "spring-sale";
    saved[0].st = state::open;
    saved[0].opened_at = t0 - 30s;
    saved[0].cooldown = 40s;  // after backoff
    saved[0].trips = 3;
    saved[0].last_trip = trip;
    saved[1].instance = "campaign-volume/summer-sale";
    saved[1].breaker = "campaign-volume";
    saved[1].key = "summer-sale";
    saved[1].md = mode::forced_open;
    saved[1].mode_expires = t0 + 5min;
    saved[2].instance = "gone/x";  // breaker removed from the config
    saved[2].breaker = "gone";
    saved[2].key = "x";
    saved[2].st = state::open;
    saved[3].instance = "other";
    saved[3].breaker = "other";
    saved[3].st = state::half_open;  // its probe died with the process
    saved[3].opened_at = t0 - 1h;
    saved[4].instance = "campaign-volume/idle";
    saved[4].breaker = "campaign-volume";
    saved[4].key = "idle";

    reg().restore(saved, now());
    const auto ev = events();
    ASSERT_EQ(ev.size(), 3u);
    for (const auto& e : ev) {
        EXPECT_EQ(e.cause.kind, "restore");
        EXPECT_EQ(e.from, state::closed);
        EXPECT_EQ(e.mode_from, mode::automatic);
    }
    EXPECT_EQ(reg().active_count(), 3);
    EXPECT_EQ(reg().snapshot(now()).size(), 3u);  // nothing for the idle or the unknown one

    auto a = reg().admit("campaign-volume/spring-sale", now());
    EXPECT_EQ(a.v, verdict::contain);
    EXPECT_EQ(a.retry_after, 10s);  // 40s cooldown from t0-30s
    ASSERT_TRUE(a.last_trip);
    EXPECT_EQ(a.last_trip->cause.rule, "recipients-per-campaign");
    EXPECT_EQ(reg().get("campaign-volume/spring-sale", now())->trips, 3u);

    EXPECT_EQ(reg().admit("campaign-volume/summer-sale", now()).retry_after, 5min);
    a = reg().admit("other", now());
    EXPECT_EQ(a.v, verdict::contain);
    EXPECT_EQ(reg().get("other", now())->st, state::open);

    clock_.advance(10s);
    EXPECT_EQ(reg().admit("campaign-volume/spring-sale", now()).v, verdict::probe);
    clock_.advance(5min);
    EXPECT_EQ(reg().admit("campaign-volume/summer-sale", now()).v, verdict::allow);
}

// An operator's trip of one key folded with a rule's trip of another (max_instances lowered,
// or the scope changed) stays the trip of record, whichever reopened later: under a bypass of
// the breaker (metrics_only, forced_closed) an operator's trip is still enforced, and the
// rule's trip taking its place let that key's traffic through.
TEST_F(registry_test, folding_keeps_an_operators_trip_over_a_later_rule_trip) {
    auto b = make_config("cv");
    b.per_key = false;
    b.reset = reset_policy::manual;
    for (const bool manual_first : {false, true}) {
        make({b});
        auto by_hand = saved("k", state::open, mode::automatic, 5s);
        transition hand;
        hand.instance = "cv/k";
        hand.breaker = "cv";
        hand.to = state::open;
        hand.cause.kind = "manual";
        hand.cause.actor = "alice";
        hand.trip = true;
        by_hand.last_trip = std::make_shared<const transition>(hand);
        auto by_rule = saved("j", state::open, mode::automatic, 1s);
        transition rule = hand;
        rule.instance = "cv/j";
        rule.cause.kind = "rule";
        rule.cause.actor = "rule:recipients";
        by_rule.last_trip = std::make_shared<const transition>(rule);
        reg().restore(manual_first ? std::vector{by_hand, by_rule} : std::vector{by_rule, by_hand}, now());
        const auto got = reg().get("cv", now());
        ASSERT_TRUE(got && got->last_trip) << manual_first;
        EXPECT_EQ(got->last_trip->cause.kind, "manual") << "manual first: " << manual_first;
        EXPECT_EQ(got->opened_at, now() - 1s) << "the later reopening still sets the times";
    }
}

// Keys folded into one instance (scope changed from key to breaker): the snapshot that
// contains the most wins, whatever the order; a key's bypass never opens the others.
TEST_F(registry_test, restore_folding_several_keys_into_one_instance_keeps_the_strictest) {
    auto b = make_config("cv");
    b.per_key = false;
    b.cooldown = 10s;
    make({b});
    auto snap = [&](std::string key, state st, mode md, std::chrono::seconds ago = 0s) {
        return saved(std::move(key), st, md, ago);
    };
    reg().restore({snap("a", state::closed, mode::forced_closed), snap("b", state::open, mode::automatic, 2s)}, now());
    EXPECT_EQ(reg().admit("cv", now()).v, verdict::contain) << "b's trip is not let through by a's forced_closed";
    EXPECT_EQ(reg().get("cv", now())->md, mode::automatic);

    make({b});
    reg().restore({snap("a", state::open, mode::automatic, 8s), snap("b", state::open, mode::automatic, 1s),
                   snap("c", state::closed, mode::metrics_only)},
                  now());
    EXPECT_EQ(reg().get("cv", now())->opened_at, now() - 1s) << "the later reopening";
    clock_.advance(3s);
    EXPECT_EQ(reg().admit("cv", now()).v, verdict::contain) << "a's cooldown would be over, b's is not";

    make({b});
    reg().restore({snap("a", state::open, mode::automatic, 1s), snap("b", state::closed, mode::forced_open)}, now());
    EXPECT_EQ(reg().get("cv", now())->md, mode::forced_open);

    // A key's timed forced_open wins for now; when it ends, the other key's trip is still
    // there (it resets only by hand), in either order.
    b.reset = reset_policy::manual;
    for (const bool forced_first : {false, true}) {
        make({b});
        auto timed = snap("b", state::closed, mode::forced_open);
        timed.mode_expires = now() + 1min;
        auto tripped = snap("a", state::open, mode::automatic, 1s);
        reg().restore(forced_first ? std::vector{timed, tripped} : std::vector{tripped, timed}, now());
        EXPECT_EQ(reg().get("cv", now())->md, mode::forced_open);
        clock_.advance(2min);
        EXPECT_EQ(reg().admit("cv", now()).v, verdict::contain) << "forced first: " << forced_first;
        EXPECT_EQ(reg().get("cv", now())->st, state::open);
        EXPECT_EQ(reg().get("cv", now())->md, mode::automatic);
    }

    // A key's bypass (an operator exempting that key) is not every key's once they fold:
    // alone it leaves the instance enforced, and the trip under a bypass is enforced now.
    make({b});
    reg().restore({snap("vip", state::closed, mode::forced_closed)}, now());
    EXPECT_EQ(reg().get("cv", now())->md, mode::automatic);
    make({b});
    auto long_bypass = snap("a", state::open, mode::forced_closed, 1s);
    auto short_bypass = snap("b", state::closed, mode::metrics_only);
    short_bypass.mode_expires = now() + 1min;
    reg().restore({long_bypass, short_bypass}, now());
    EXPECT_EQ(reg().get("cv", now())->md, mode::automatic);
    EXPECT_EQ(reg().admit("cv", now()).v, verdict::contain);

    // Two timed forced_open: the later expiry.
    make({b});
    auto f1 = snap("a", state::closed, mode::forced_open);
    f1.mode_expires = now() + 5min;
    auto f2 = snap("b", state::closed, mode::forced_open);
    f2.mode_expires = now() + 1min;
    reg().restore({f1, f2}, now());
    EXPECT_EQ(reg().get("cv", now())->mode_expires, now() + 5min);
}

// A half-open instance saved without its probe round (a crash, a restart: the probes in
// flight died with the process, their results lost) waits a whole cooldown from the start
// before it probes again, and so does, at a start, an open one whose cooldown ended: a
// crash loop does not send a fresh round at every start.
TEST_F(registry_test, an_instance_restored_without_its_probe_round_waits_a_whole_cooldown) {
    auto b = make_config("cv");
    b.cooldown = 10s;
    make({b});
    instance_snapshot s = saved("", state::half_open);
    reg().restore({s}, now());
    EXPECT_EQ(reg().get("cv", now())->st, state::open);
    EXPECT_EQ(reg().admit("cv", now()).v, verdict::contain) << "probed at once after the restart";
    clock_.advance(9s);
    EXPECT_EQ(reg().admit("cv", now()).v, verdict::contain);
    clock_.advance(2s);
    EXPECT_EQ(reg().admit("cv", now()).v, verdict::probe);

    // Saved open, its cooldown over before the start: a probe may have gone out before the
    // half-open state was saved (and crashed the process): a whole cooldown too, at a start.
    s.st = state::open;
    make({b});
    reg().restore({s}, now(), true);
    EXPECT_EQ(reg().admit("cv", now()).v, verdict::contain) << "probed at once after the restart";
    clock_.advance(11s);
    EXPECT_EQ(reg().admit("cv", now()).v, verdict::probe);
    // Not at a start (a reload's kept state): as saved.
    make({b});
    reg().restore({s}, now());
    EXPECT_EQ(reg().admit("cv", now()).v, verdict::probe);
}

// On a breaker that resets by itself, an operator's trip of a key under that key's timed
// bypass is given back as forced_open when the bypass ends. Folded into another instance by
// a reload or restart (the bypass does not come along), it comes back so at once: held until
// reset, not closed by the first probe after its cooldown.
TEST_F(registry_test, an_operators_trip_under_a_keys_bypass_stays_held_when_keys_fold) {
    auto b = make_config("cv", action::pause, reset_policy::automatic);
    b.cooldown = 10s;
    make({b});
    ASSERT_TRUE(reg().manual_trip("cv/k", "alice", "runaway", now()));
    ASSERT_TRUE(reg().set_mode("cv/k", mode::forced_closed, 15min, "alice", "let one through", now()));
    const auto saved = reg().snapshot(now());
    ASSERT_EQ(saved.size(), 1u);
    auto folded = b;
    folded.per_key = false;
    breaker_registry again{{folded}};
    again.restore(saved, now());
    EXPECT_EQ(again.get("cv", now())->md, mode::forced_open);
    clock_.advance(1min);
    EXPECT_EQ(again.admit("cv", now()).v, verdict::contain) << "no probe after the cooldown";
    // A rule's trip under the bypass recovers by itself, as it would have unfolded.
    auto by_rule = saved;
    auto t = std::make_shared<transition>(*by_rule[0].last_trip);
    t->cause.kind = "rule";
    by_rule[0].last_trip = t;
    breaker_registry rule_tripped{{folded}};
    rule_tripped.restore(by_rule, now());
    EXPECT_EQ(rule_tripped.get("cv", now())->md, mode::automatic);
}

// An operator's trip saved on a breaker that reset by hand then, restored where it now
// resets by itself, holds as manual_trip holds there: no probe closes it.
TEST_F(registry_test, an_operators_trip_stays_held_when_the_breaker_now_resets_by_itself) {
    auto b = make_config("cv", action::pause, reset_policy::automatic);
    b.cooldown = 10s;
    make({b});
    instance_snapshot s = saved("", state::open);
    auto t = std::make_shared<transition>();
    t->instance = "cv";
    t->to = state::open;
    t->cause.kind = "manual";
    t->cause.actor = "alice";
    s.last_trip = t;
    reg().restore({s}, now());
    EXPECT_EQ(reg().get("cv", now())->md, mode::forced_open);
    clock_.advance(1min);
    EXPECT_EQ(reg().admit("cv", now()).v, verdict::contain) << "no probe after the cooldown";
    // A rule's trip recovers by itself under the new policy, as the admin chose.
    make({b});
    t->cause.kind = "rule";
    reg().restore({s}, now());
    EXPECT_EQ(reg().get("cv", now())->md, mode::automatic);
}

// On a breaker that resets by itself an operator's trip is held (forced_open); set back to
// auto by the operator (or a timed forced_open run out), its probes decide. A restart keeps
// that choice: the snapshot says the breaker reset by itself when it was taken, so it is
// not mistaken for a trip saved under a manual reset and held again with no end.
TEST_F(registry_test, an_operators_trip_set_back_to_auto_is_not_held_again_after_a_restart) {
    auto b = make_config("cv", action::pause, reset_policy::automatic);
    b.cooldown = 10s;
    make({b});
    ASSERT_TRUE(reg().manual_trip("cv", "alice", "vendor incident", now()));
    ASSERT_EQ(reg().get("cv", now())->md, mode::forced_open);
    ASSERT_TRUE(reg().set_mode("cv", mode::automatic, std::nullopt, "alice", "let it recover", now()));
    const auto saved = reg().snapshot(now());
    ASSERT_EQ(saved.size(), 1u);
    EXPECT_EQ(saved[0].reset, reset_policy::automatic);

    breaker_registry again{{b}};
    again.restore(saved, now());
    EXPECT_EQ(again.get("cv", now())->md, mode::automatic);
    EXPECT_EQ(again.admit("cv", now()).v, verdict::contain) << "still open for its cooldown";
    clock_.advance(10s);
    EXPECT_EQ(again.admit("cv", now()).v, verdict::probe) << "its probes decide, as before the restart";

    // Saved without the policy (a store from before it was kept): held, as it was.
    auto unknown = saved;
    unknown[0].reset.reset();
    breaker_registry older{{b}};
    older.restore(unknown, now());
    EXPECT_EQ(older.get("cv", now())->md, mode::forced_open);
}

// Saved throttle admissions come back as a budget already spent: never after now (a wall
// clock behind the saved one after a reboot must not refuse everything for as long), and
// of several keys folded into one instance, the latest R of them all.
TEST_F(registry_test, restored_throttle_admissions_are_clamped_to_now_and_merged) {
    auto b = make_config("cv", action::throttle, reset_policy::manual);
    b.per_key = false;
    b.throttle.requests = 2;
    b.throttle.interval = 1min;
    make({b});
    auto snap = [&](std::string key, std::vector<time_point> admitted) {
        instance_snapshot s;
        s.instance = "cv/" + key;
        s.breaker = "cv";
        s.key = std::move(key);
        s.st = state::open;
        s.opened_at = now() - 1h;
        s.throttle_admissions = std::move(admitted);
        return s;
    };
    reg().restore({snap("a", {now() + 5h, now() + 6h})}, now());
    auto a = reg().admit("cv", now());
    EXPECT_EQ(a.v, verdict::contain);
    EXPECT_EQ(a.retry_after, 1min) << "as if both were admitted now, not in five hours";
    clock_.advance(1min);
    EXPECT_EQ(reg().admit("cv", now()).v, verdict::allow);

    // Key a admitted nothing lately, key b twice in the last 10 s: folded, the budget is spent.
    make({b});
    reg().restore({snap("a", {}), snap("b", {now() - 10s, now() - 5s})}, now());
    EXPECT_EQ(reg().admit("cv", now()).v, verdict::contain);
    clock_.advance(50s);
    EXPECT_EQ(reg().admit("cv", now()).v, verdict::allow) << "b's first admission is a minute old";
    EXPECT_EQ(reg().admit("cv", now()).v, verdict::contain);

    // Only admissions within the interval, and at least of the last hour, are saved (a new
    // config may lengthen the interval: test_throttle.cpp).
    clock_.advance(2min);
    EXPECT_EQ(reg().get("cv", now())->throttle_admissions.size(), 2u);
    clock_.advance(1h);
    EXPECT_TRUE(reg().get("cv", now())->throttle_admissions.empty());
}

TEST_F(registry_test, snapshot_round_trips_through_restore) {
    auto b = make_config("campaign-volume");
    b.max_instances = 1;
    make({b});
    reg().trip("campaign-volume", "k1", rule_cause(), now());
    reg().trip("campaign-volume", "k2", rule_cause(), now());  // overflow
    reg().set_mode("campaign-volume", mode::forced_closed, 1h, "alice", "bypass", now());
    clock_.advance(5s);
    const auto before = reg().snapshot(now());

    breaker_registry again{{b}};
    again.restore(before, now());
    const auto after = again.snapshot(now());
    ASSERT_EQ(after.size(), before.size());
    for (std::size_t i = 0; i < before.size(); ++i) {
        EXPECT_EQ(after[i].instance, before[i].instance);
        EXPECT_EQ(after[i].st, before[i].st);
        EXPECT_EQ(after[i].md, before[i].md);
        EXPECT_EQ(after[i].mode_expires, before[i].mode_expires);
        EXPECT_EQ(after[i].opened_at, before[i].opened_at);
        EXPECT_EQ(after[i].cooldown, before[i].cooldown);
    }
    EXPECT_EQ(again.active_count(), reg().active_count());
    EXPECT_EQ(again.admit("campaign-volume/k9", now()).would_contain, true);  // overflow, bypassed
}

}  // namespace
// The breaker-wide instance and keys all half-open (an operator's trip of the breaker set back
// to auto, keys opened by their rules before): one request probes the wide instance and its
// key together and both hear its result. The wide probe used to be handed back whenever the
// key's own verdict was a probe, so one request per half-open key, then every closed key's,
// went through a wide instance that allows one probe.
TEST_F(registry_test, a_half_open_wide_instance_lets_one_probe_through_with_half_open_keys) {
    auto b = make_config("cv");
    b.cooldown = 10s;
    make({b});
    for (const char* key : {"a", "b", "c"}) {
        reg().trip("cv", key, rule_cause("r", key), now());
    }
    reg().trip("cv", "", rule_cause("r", ""), now());
    clock_.advance(11s);
    const auto first = reg().admit("cv/a", now());
    ASSERT_EQ(first.v, verdict::probe);
    EXPECT_EQ(first.instance, "cv/a");
    EXPECT_EQ(first.wide_probe, "cv") << "the request is the wide instance's probe too";
    EXPECT_EQ(reg().admit("cv/b", now()).v, verdict::contain) << "the wide instance's one probe is out";
    EXPECT_EQ(reg().admit("cv/c", now()).v, verdict::contain);
    EXPECT_EQ(reg().admit("cv/closed-key", now()).v, verdict::contain);
    reg().probe_result(first.instance, true, now(), first.probe_round);
    reg().probe_result(first.wide_probe, true, now(), first.wide_probe_round);
    EXPECT_EQ(reg().get("cv", now())->st, state::closed);
    EXPECT_EQ(reg().get("cv/a", now())->st, state::closed);
    EXPECT_EQ(reg().admit("cv/b", now()).v, verdict::probe) << "b probes for itself now";
    EXPECT_EQ(reg().admit("cv/closed-key", now()).v, verdict::allow);
}

// A request with two keys of one breaker asks the breaker-wide instance once: with its one
// half-open probe taken by the first key, the second ask used to contain the request, give
// the probe back, and leave the wide instance half-open for good.
TEST_F(registry_test, a_second_key_of_one_request_does_not_ask_the_wide_instance_again) {
    auto b = make_config("cv");
    b.cooldown = 10s;
    make({b});
    reg().trip("cv", "", rule_cause("r", ""), now());
    clock_.advance(11s);
    const auto campaign = reg().admit("cv/spring", now());
    ASSERT_EQ(campaign.v, verdict::probe);
    EXPECT_EQ(campaign.instance, "cv");
    EXPECT_EQ(reg().admit("cv/agent-7", now(), /*with_wide=*/false).v, verdict::allow);
    reg().probe_result(campaign.instance, true, now(), campaign.probe_round);
    EXPECT_EQ(reg().get("cv", now())->st, state::closed);

    // A breaker-wide bypass (an operator's forced_closed) still reaches the later keys: their
    // rules' own trips are bypassed as the first key's are.
    reg().trip("cv", "agent-7", rule_cause("r", "agent-7"), now());
    ASSERT_TRUE(reg().set_mode("cv", mode::forced_closed, std::nullopt, "alice", "let it through", now()));
    EXPECT_EQ(reg().admit("cv/spring", now()).v, verdict::allow);
    const auto second = reg().admit("cv/agent-7", now(), /*with_wide=*/false);
    EXPECT_EQ(second.v, verdict::allow) << "bypassed by the breaker-wide forced_closed";
    EXPECT_TRUE(second.would_contain);
}

}  // namespace bb::breakers::test
