// Ring windows against a brute-force reference, baselines, bounded keys.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "helpers.hpp"
#include "rules/meter.hpp"

namespace bb::rules::test {
namespace {

using namespace std::chrono_literals;

// Brute-force model of one key: every event with the epoch it was booked under.
struct reference_key {
    std::vector<std::pair<std::int64_t, double>> events;
    std::int64_t head = INT64_MIN;
    void add(std::int64_t epoch, double amount, std::int64_t n) {
        if (head == INT64_MIN || epoch > head) {
            head = epoch;
        }
        // Same booking rule as ring_window: inside the window -> its own bucket, older -> head.
        const std::int64_t booked = epoch > head - n ? epoch : head;
        events.emplace_back(booked, amount);
    }
    double total_at(std::int64_t q, std::int64_t n) const {
        double t = 0;
        for (const auto& [e, a] : events) {
            if (e > q - n && e <= q) {
                t += a;
            }
        }
        return t;
    }
};

TEST(RingWindow, MatchesBruteForceOverRandomStreams) {
    for (std::uint32_t seed = 1; seed <= 300; ++seed) {
        std::mt19937_64 rng{seed};
        const std::int64_t n = 1 + static_cast<std::int64_t>(rng() % 20);
        ring_window ring{static_cast<std::size_t>(n), 2};
        reference_key ref0;
        reference_key ref1;
        std::int64_t t = 1000 + static_cast<std::int64_t>(rng() % 1000);
        for (int i = 0; i < 400; ++i) {
            // Mostly forward, sometimes big gaps, sometimes a little back (threads racing).
            const auto r = rng() % 100;
            std::int64_t e = t;
            if (r < 60) {
                t += static_cast<std::int64_t>(rng() % 2);
                e = t;
            } else if (r < 70) {
                t += static_cast<std::int64_t>(rng() % (3 * n + 1));
                e = t;
            } else {
                e = t - static_cast<std::int64_t>(rng() % (n + 3));
            }
            const double a = static_cast<double>(rng() % 50);
            const double b = static_cast<double>(rng() % 3);
            ring.advance(e);
            ring.add(e, 0, a);
            ring.add(e, 1, b);
            ref0.add(e, a, n);
            ref1.add(e, b, n);
            ASSERT_EQ(ring.total(0), ref0.total_at(ref0.head, n)) << "seed " << seed << " event " << i;
            ASSERT_EQ(ring.total(1), ref1.total_at(ref1.head, n)) << "seed " << seed << " event " << i;
            const std::int64_t q = ref0.head + static_cast<std::int64_t>(rng() % (n + 2));
            ASSERT_EQ(ring.total_at(q, 0), ref0.total_at(q, n)) << "seed " << seed << " query " << q;
        }
    }
}

// The same property through the engine: random keys, times and amounts with a manual clock.
TEST(RingWindow, EngineMetersMatchBruteForcePerKey) {
    auto set = load_ok(config(R"j({"id": "sum", "route": "mail-send", "key": "header:x-k", "measure": "sum($.n)",
        "window": "10s", "resolution": "500ms", "limit": 1e12, "failure_mode": "volume-spike", "trips": "x"})j"));
    const std::int64_t n = 20;
    for (std::uint32_t seed = 1; seed <= 40; ++seed) {
        engine eng{set};
        manual_clock clock;
        std::mt19937_64 rng{seed};
        std::map<std::string, reference_key> ref;
        std::int64_t last_epoch = 0;
        for (int i = 0; i < 500; ++i) {
            clock.advance(std::chrono::milliseconds{static_cast<long>(rng() % 1200)});
            const std::string key = "k" + std::to_string(rng() % 5);
            const int amount = static_cast<int>(rng() % 100);
            request req;
            req.header("x-k", key);
            req.body = R"j({"n": )j" + std::to_string(amount) + "}";
            ASSERT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
            const std::int64_t epoch =
                std::chrono::duration_cast<std::chrono::milliseconds>(clock.now().time_since_epoch()).count() / 500;
            ref[key].add(epoch, amount, n);
            last_epoch = epoch;
            for (const auto& [k, rk] : ref) {
                auto m = eng.read("sum", k, clock.now());
                ASSERT_TRUE(m);
                ASSERT_EQ(m->value, rk.total_at(last_epoch, n)) << "seed " << seed << " step " << i << " key " << k;
            }
        }
    }
}

std::string baseline_rule(std::string_view extra = "") {
    return config(R"j({"id": "spike", "route": "mail-send", "key": "header:x-campaign-id",
        "measure": "count($.personalizations[*].to[*])", "window": "1m",
        "baseline": {"factor": 3, "sigma": 6, "warmup": "10m", "min_samples": 10, "alpha": 0.2)j" +
                  std::string{extra} + R"j(}, "failure_mode": "volume-spike", "trips": "campaign-volume"})j");
}

TEST(Baseline, TripsOnTheFirstSpikeBucketAfterWarmup) {
    engine eng{load_ok(baseline_rule())};
    manual_clock clock;
    // Align to a bucket boundary so "bucket" below is exact.
    clock.set(time_point{std::chrono::minutes{60'000}});
    std::mt19937_64 rng{7};
    request req;
    req.header("x-campaign-id", "spring");
    req.body = sendgrid_body(10);
    // 30 steady buckets of 90..110 requests x 10 recipients (~1000 per minute).
    for (int bucket = 0; bucket < 30; ++bucket) {
        const int requests = 90 + static_cast<int>(rng() % 21);
        for (int i = 0; i < requests; ++i) {
            const auto d = eng.evaluate(req.view(), clock.now() + std::chrono::milliseconds{i * 50});
            ASSERT_TRUE(d.allowed()) << "steady bucket " << bucket << ": " << d.reason;
        }
        clock.advance(1min);
    }
    // Spike: 10x the rate. The trip must come inside this very bucket.
    int sent = 0;
    decision d;
    for (; sent < 1000; ++sent) {
        d = eng.evaluate(req.view(), clock.now() + std::chrono::milliseconds{sent * 5});
        if (!d.allowed()) {
            break;
        }
    }
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_LT(sent * 5, 60'000) << "tripped in the first spike bucket";
    EXPECT_EQ(d.rule, "spike");
    EXPECT_EQ(d.condition, condition_kind::baseline);
    EXPECT_NEAR(d.baseline_mean, 1000, 150);
    EXPECT_GT(d.measured, d.limit);
    EXPECT_LE(d.measured - 10, d.limit) << "the request that crosses is the one flagged";
    EXPECT_GE(d.limit, 3 * d.baseline_mean);
    EXPECT_EQ(d.breaker_instance, "campaign-volume/spring");
    EXPECT_NE(d.reason.find("above its baseline"), std::string::npos) << d.reason;
}

TEST(Baseline, SlowDriftDoesNotTrip) {
    engine eng{load_ok(baseline_rule())};
    manual_clock clock;
    clock.set(time_point{std::chrono::minutes{60'000}});
    request req;
    req.header("x-campaign-id", "growing");
    req.body = sendgrid_body(1);
    double rate = 100;
    // 300 buckets growing 3% each: 100/min to ~700k/min would be silly; cap the loop
    // by growing to ~7x over 66 buckets, then holding.
    for (int bucket = 0; bucket < 150; ++bucket) {
        const int requests = static_cast<int>(rate);
        for (int i = 0; i < requests; ++i) {
            const auto d = eng.evaluate(req.view(), clock.now());
            ASSERT_TRUE(d.allowed()) << "bucket " << bucket << " rate " << rate << ": " << d.reason;
        }
        if (bucket < 66) {
            rate *= 1.03;
        }
        clock.advance(1min);
    }
    auto m = eng.read("spike", "growing", clock.now() - 1min);
    ASSERT_TRUE(m);
    EXPECT_GT(m->baseline_mean, 600);
}

TEST(Baseline, NoTripDuringWarmup) {
    engine eng{load_ok(baseline_rule())};
    manual_clock clock;
    clock.set(time_point{std::chrono::minutes{60'000}});
    request req;
    req.header("x-campaign-id", "new");
    req.body = sendgrid_body(1);
    for (int bucket = 0; bucket < 8; ++bucket) {
        const int requests = bucket == 7 ? 5000 : 10;  // spike before warm-up is over
        for (int i = 0; i < requests; ++i) {
            ASSERT_TRUE(eng.evaluate(req.view(), clock.now()).allowed()) << "bucket " << bucket;
        }
        clock.advance(1min);
    }
}

// Raising max_keys while keys spill into the overflow (an operator's move mid-incident)
// keeps the counts: max_keys was part of the meter's fingerprint, so the reload gave every
// key a fresh cap.
TEST(BoundedKeys, AReloadThatChangesOnlyMaxKeysKeepsTheCounts) {
    auto rule = [](int max_keys) {
        return config(R"j({"id": "per-agent", "route": "mail-send", "key": "agent", "window": "1m",
            "limit": 3, "max_keys": )j" + std::to_string(max_keys) +
                      R"j(, "failure_mode": "volume-spike", "trips": "agent-volume"})j");
    };
    engine first{load_ok(rule(100))};
    manual_clock clock;
    request req;
    req.agent = "agent-1";
    for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(first.evaluate(req.view(), clock.now()).allowed());
    }
    engine raised{load_ok(rule(1000)), &first};
    EXPECT_EQ(raised.evaluate(req.view(), clock.now()).outcome, verdict::violated) << "its 3 are still counted";
    for (int i = 0; i < 150; ++i) {
        req.agent = "agent-x" + std::to_string(i);
        ASSERT_TRUE(raised.evaluate(req.view(), clock.now()).allowed());
    }
    EXPECT_EQ(raised.stats("per-agent")->keys, 151u) << "the new bound holds";
    EXPECT_EQ(raised.stats("per-agent")->overflow_events, 0u);
}

// A rule changed and changed back (a rollback), or removed and added back: the counts it had
// come back with it, instead of a fresh cap mid-misfire.
TEST(BoundedKeys, ARollbackFindsTheRulesCountsAgain) {
    auto rule = [](const char* window) {
        return config(std::string{R"j({"id": "per-agent", "route": "mail-send", "key": "agent", "window": ")j"} + window +
                      R"j(", "limit": 3, "failure_mode": "volume-spike", "trips": "agent-volume"})j");
    };
    engine v1{load_ok(rule("1h"))};
    manual_clock clock;
    request req;
    for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(v1.evaluate(req.view(), clock.now()).allowed());
    }
    engine v2{load_ok(rule("2h")), &v1};
    EXPECT_TRUE(v2.evaluate(req.view(), clock.now()).allowed()) << "another window: another meter";
    engine back{load_ok(rule("1h")), &v2};
    EXPECT_EQ(back.evaluate(req.view(), clock.now()).outcome, verdict::violated) << "v1's three are still counted";
}

TEST(BoundedKeys, NewKeysBeyondMaxKeysShareOneCappedOverflowKey) {
    engine eng{load_ok(config(R"j({"id": "per-agent", "route": "mail-send", "key": "agent", "window": "1m",
        "limit": 3, "max_keys": 100, "failure_mode": "volume-spike", "trips": "agent-volume"})j"))};
    manual_clock clock;
    request req;
    for (int i = 0; i < 100; ++i) {
        req.agent = "agent-" + std::to_string(i);
        ASSERT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    }
    EXPECT_EQ(eng.stats("per-agent")->keys, 100u);
    // Keys 100.. go to the overflow key, capped at 3 like any key.
    for (int i = 100; i < 103; ++i) {
        req.agent = "agent-" + std::to_string(i);
        ASSERT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    }
    req.agent = "agent-103";
    const auto d = eng.evaluate(req.view(), clock.now());
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_TRUE(d.overflow_key);
    // The request's own key: its breaker instance is the one its later requests are
    // admitted by (a trip of "agent-volume/(overflow)" contained nothing).
    EXPECT_EQ(d.key, "agent-103");
    EXPECT_EQ(d.breaker_instance, "agent-volume/agent-103");
    EXPECT_NE(d.reason.find("max_keys 100"), std::string::npos) << d.reason;
    EXPECT_EQ(eng.stats("per-agent")->keys, 100u);
    EXPECT_EQ(eng.stats("per-agent")->overflow_events, 4u);
    // Known keys keep their own meter.
    req.agent = "agent-5";
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    // Once the old keys are idle for a whole window they make room for new ones.
    clock.advance(2min);
    req.agent = "agent-new";
    const auto fresh = eng.evaluate(req.view(), clock.now());
    EXPECT_TRUE(fresh.allowed());
    EXPECT_TRUE(eng.read("per-agent", "agent-new", clock.now()));
    EXPECT_GT(eng.stats("per-agent")->evictions, 0u);
    EXPECT_LE(eng.stats("per-agent")->keys, 100u);
}

// A key booked in the overflow slot while the table was full, then given a slot of its own
// once idle keys made room: it starts from the overflow's window, not from zero, else it
// books its cap again while its first bookings are still in the window.
TEST(BoundedKeys, AKeyThatLeavesTheOverflowSlotKeepsItsBookingsInTheWindow) {
    engine eng{load_ok(config(R"j({"id": "cap", "route": "mail-send", "key": "header:x-k", "window": "10m",
        "limit": 3, "max_keys": 100, "failure_mode": "volume-spike", "trips": "b"})j"))};
    manual_clock clock;
    auto send = [&](const std::string& key) {
        request req;
        req.header("x-k", key);
        return eng.evaluate(req.view(), clock.now());
    };
    for (int i = 0; i < 100; ++i) {  // the table is full (keys in every shard, which sweeps alone)
        ASSERT_TRUE(send("k" + std::to_string(i)).allowed());
    }
    clock.advance(9min);
    for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(send("spring").allowed()) << i;  // in the overflow slot
    }
    ASSERT_FALSE(send("spring").allowed());
    clock.advance(2min);  // the others idle for a whole window: room for spring's own slot
    const auto d = send("spring");
    EXPECT_EQ(d.outcome, verdict::violated) << "a fresh slot: spring's cap booked twice in one window";
    EXPECT_TRUE(eng.read("cap", "spring", clock.now())) << "the premise: spring has a slot of its own now";
    clock.advance(10min);  // its bookings have left the window
    EXPECT_TRUE(send("spring").allowed());
}

// A key whose value is spelled like the overflow slot's name is a key like any other: its
// rollback undoes its own booking, never the overflow slot's (which would give every
// overflowed key room beyond the cap).
TEST(BoundedKeys, AKeySpelledLikeTheOverflowSlotIsAKeyLikeAnyOther) {
    engine eng{load_ok(config(R"j(
        {"id": "cap", "route": "mail-send", "key": "header:x-k", "window": "1m", "limit": 3, "max_keys": 2,
         "failure_mode": "volume-spike", "trips": "b"},
        {"id": "big", "route": "mail-send", "measure": {"per_request": "sum($.n)"}, "limit": 10,
         "failure_mode": "volume-spike", "trips": "b"})j"))};
    manual_clock clock;
    auto send = [&](const std::string& key, int n) {
        request req;
        req.header("x-k", key);
        req.body = "{\"n\": " + std::to_string(n) + "}";
        return eng.evaluate(req.view(), clock.now());
    };
    ASSERT_TRUE(send("(overflow)", 0).allowed());  // its own slot: 1
    ASSERT_TRUE(send("b", 0).allowed());           // the table is full
    ASSERT_TRUE(send("c", 0).allowed());           // overflow slot: 1
    ASSERT_TRUE(send("c", 0).allowed());           // overflow slot: 2
    // Booked in its own slot, then refused by the next rule: undone there.
    EXPECT_EQ(send("(overflow)", 11).rule, "big");
    EXPECT_TRUE(send("(overflow)", 0).allowed());  // 2
    EXPECT_TRUE(send("(overflow)", 0).allowed());  // 3
    EXPECT_EQ(send("(overflow)", 0).rule, "cap");
    EXPECT_TRUE(send("d", 0).allowed());           // overflow slot: 3
    EXPECT_EQ(send("e", 0).rule, "cap") << "the overflow slot lost a booking to another key's rollback";
}

// Response-side rules: a key the meter could not track had its responses booked in the
// overflow slot, so its requests are checked against that slot (they were let through).
TEST(BoundedKeys, AResponseRuleChecksAnUntrackedKeyAgainstTheOverflowSlot) {
    engine eng{load_ok(config(R"j({"id": "err-ratio", "route": "mail-send", "key": "agent", "measure": "status:5xx",
        "window": "5m", "max_keys": 1, "ratio": {"max": 0.2, "min_volume": 4}, "failure_mode": "upstream-trouble",
        "trips": "health"})j"))};
    manual_clock clock;
    request req;
    req.agent = "first";
    ASSERT_TRUE(eng.record_response(req.view(), {202, 40ms, "", ""}, clock.now()).allowed());
    req.agent = "second";  // the table is full: metered in the overflow slot
    for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(eng.record_response(req.view(), {503, 40ms, "", ""}, clock.now()).allowed());
    }
    const auto tripped = eng.record_response(req.view(), {503, 40ms, "", ""}, clock.now());
    ASSERT_EQ(tripped.outcome, verdict::violated);
    EXPECT_EQ(tripped.key, "second");
    const auto d = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(d.rule, "err-ratio") << "an overflowed key kept calling an erroring API";
    EXPECT_EQ(d.key, "second");
    req.agent = "first";
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
}

TEST(BoundedKeys, KeyValuesAreTruncated) {
    engine eng{load_ok(config(R"j({"id": "k", "route": "mail-send", "key": "header:x-k", "window": "1m",
        "limit": 1, "failure_mode": "volume-spike", "trips": "b"})j"))};
    manual_clock clock;
    request req;
    req.header("x-k", std::string(10'000, 'a'));
    ASSERT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    const auto d = eng.evaluate(req.view(), clock.now());
    ASSERT_FALSE(d.allowed());
    EXPECT_EQ(d.key.size(), 256u);
}

}  // namespace
}  // namespace bb::rules::test

namespace bb::rules::test {
namespace {

using namespace std::chrono_literals;

// Counts carried over a restart (engine::save_meters / restore_meters): a cap of 100 per
// campaign an hour, 90 booked before the restart, is a cap of 10 after it, not of 100.
const char* hourly_cap = R"j({"id": "cap", "route": "mail-send", "key": ["header:x-campaign-id"],
    "measure": {"sum": "count($.personalizations[*].to[*])"}, "window": "1h", "limit": 100,
    "failure_mode": "volume-spike", "trips": "campaign-volume"})j";

decision send(engine& eng, std::string_view campaign, int recipients, time_point now) {
    request req;
    req.header("x-campaign-id", std::string{campaign});
    req.body = sendgrid_body(recipients);
    return eng.evaluate(req.view(), now);
}

TEST(SavedMeters, ACapKeepsItsCountsAcrossARestart) {
    manual_clock clock;
    clock.set(time_point{std::chrono::minutes{60'000}});
    engine before{load_ok(config(hourly_cap))};
    for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(send(before, "spring", 30, clock.now()).allowed());
    }
    ASSERT_TRUE(send(before, "autumn", 5, clock.now()).allowed());
    const auto saved = before.save_meters(clock.now());
    ASSERT_EQ(saved.size(), 1u);
    EXPECT_EQ(saved[0].rule_id, "cap");

    // The same boot, 10 minutes later (the steady clock went on: offset 0).
    clock.advance(10min);
    engine after{load_ok(config(hourly_cap))};
    std::string error;
    const auto restored = after.restore_meters(saved, clock.now(), &error);
    ASSERT_TRUE(restored) << error;
    EXPECT_EQ(*restored, std::vector<std::string>{"cap"});
    EXPECT_EQ(after.read("cap", "spring", clock.now())->value, 90);
    EXPECT_EQ(after.read("cap", "autumn", clock.now())->value, 5);
    EXPECT_FALSE(send(after, "spring", 11, clock.now()).allowed());
    EXPECT_TRUE(send(after, "spring", 10, clock.now()).allowed());
    EXPECT_FALSE(send(after, "spring", 1, clock.now()).allowed());
    // The counts leave the window when they would have: an hour after they were booked.
    clock.advance(50min);
    EXPECT_TRUE(send(after, "spring", 30, clock.now()).allowed());
    EXPECT_EQ(after.read("cap", "spring", clock.now())->value, 40) << "the 10 booked after the restart are still in";
}

// A restart after a reload that changed only max_keys (raised while keys spilled into the
// overflow, say) brings the counts back, as the reload itself kept them; more keys than the
// new bound go to the overflow key. Rows saved under the full fingerprint (before meters
// were saved without max_keys) are still read.
TEST(SavedMeters, ARestartAfterAChangeOfOnlyMaxKeysKeepsTheCounts) {
    auto with_max_keys = [](int n) {
        std::string rule = hourly_cap;
        const std::string at = R"("window": "1h",)";
        rule.insert(rule.find(at) + at.size(), " \"max_keys\": " + std::to_string(n) + ",");
        return config(rule);
    };
    manual_clock clock;
    clock.set(time_point{std::chrono::minutes{60'000}});
    engine before{load_ok(with_max_keys(100))};
    ASSERT_TRUE(send(before, "spring", 90, clock.now()).allowed());
    ASSERT_TRUE(send(before, "autumn", 60, clock.now()).allowed());
    const auto saved = before.save_meters(clock.now());
    ASSERT_EQ(saved.size(), 1u);

    engine raised{load_ok(with_max_keys(1000))};
    std::string error;
    ASSERT_TRUE(raised.restore_meters(saved, clock.now(), &error)) << error;
    EXPECT_EQ(raised.read("cap", "spring", clock.now())->value, 90);
    EXPECT_FALSE(send(raised, "spring", 11, clock.now()).allowed());

    engine lowered{load_ok(with_max_keys(1))};
    ASSERT_TRUE(lowered.restore_meters(saved, clock.now(), &error)) << error;
    EXPECT_FALSE(send(lowered, "spring", 11, clock.now()).allowed()) << "spring's 90, or the overflow's 150";
    EXPECT_FALSE(send(lowered, "autumn", 41, clock.now()).allowed()) << "autumn's 60, or the overflow's 150";

    // A row an earlier version saved: under the fingerprint with max_keys.
    const auto set = load_ok(with_max_keys(100));
    auto legacy = saved;
    legacy[0].fingerprint = set->find_rule("cap")->fingerprint;
    engine upgraded{set};
    ASSERT_TRUE(upgraded.restore_meters(legacy, clock.now(), &error)) << error;
    EXPECT_EQ(upgraded.read("cap", "spring", clock.now())->value, 90);
    // ... but a rule changed in anything else starts from zero.
    engine other{load_ok(config(std::string{hourly_cap}.replace(std::string{hourly_cap}.find("1h"), 2, "2h")))};
    const auto none = other.restore_meters(saved, clock.now(), &error);
    ASSERT_TRUE(none) << error;
    EXPECT_TRUE(none->empty());
}

TEST(SavedMeters, AnotherBootMapsTheCountsThroughTheWallClockAndNeverIntoTheFuture) {
    manual_clock clock;
    clock.set(time_point{std::chrono::minutes{60'000}});
    engine before{load_ok(config(hourly_cap))};
    ASSERT_TRUE(send(before, "spring", 90, clock.now()).allowed());
    auto saved = before.save_meters(clock.now());
    // After a reboot the steady clock starts near zero: the saving process's time T is
    // T + offset here. 20 minutes passed: the counts have 40 minutes left.
    const time_point reboot_now{std::chrono::minutes{5}};
    const auto offset = std::chrono::duration_cast<std::chrono::milliseconds>(reboot_now - 20min - clock.now());
    saved[0].offset = offset;
    engine after{load_ok(config(hourly_cap))};
    std::string error;
    ASSERT_TRUE(after.restore_meters(saved, reboot_now, &error)) << error;
    EXPECT_FALSE(send(after, "spring", 11, reboot_now).allowed());
    EXPECT_FALSE(send(after, "spring", 11, reboot_now + 39min).allowed());
    EXPECT_TRUE(send(after, "spring", 11, reboot_now + 41min).allowed());

    // A wall clock set back while we were down would put the counts after now: they are
    // put at now instead (a full window more, the safe side), not in the future.
    engine skewed{load_ok(config(hourly_cap))};
    saved[0].offset = offset + 3h;
    ASSERT_TRUE(skewed.restore_meters(saved, reboot_now, &error)) << error;
    EXPECT_EQ(skewed.read("cap", "spring", reboot_now)->value, 90);
    EXPECT_FALSE(send(skewed, "spring", 11, reboot_now + 59min).allowed());
    EXPECT_TRUE(send(skewed, "spring", 11, reboot_now + 61min).allowed());
}

// After a reboot the offset is no whole number of buckets: a bucket straddles two of ours
// and goes to the later one, and the head, which would then lie after now, is now. No count
// leaves the window before it would have in the saving process.
TEST(SavedMeters, ABucketThatStraddlesTwoAfterARebootGoesToTheLaterOne) {
    manual_clock clock;
    const time_point t0{std::chrono::minutes{60'000} + 50s};  // 10 s before a bucket ends
    engine before{load_ok(config(hourly_cap))};
    ASSERT_TRUE(send(before, "spring", 45, t0).allowed());
    ASSERT_TRUE(send(before, "spring", 45, t0 + 15s).allowed());  // the next bucket
    auto saved = before.save_meters(t0 + 20s);
    ASSERT_EQ(saved.size(), 1u);
    // The saving process's time t is t + offset here: offset = -59,000 minutes + 10 s; back
    // up 30 s after the save.
    const auto offset = std::chrono::duration_cast<std::chrono::milliseconds>(-std::chrono::minutes{59'000} + 10s);
    saved[0].offset = offset;
    const time_point up = t0 + 20s + offset + 30s;
    engine after{load_ok(config(hourly_cap))};
    std::string error;
    ASSERT_TRUE(after.restore_meters(saved, up, &error)) << error;
    // The first 45 leave the old process's window at t0 + 59m 10s (its bucket ends 10 s
    // after t0, plus the hour); 5 s before that, all 90 count.
    const time_point just_before = t0 + offset + 59min + 5s;
    EXPECT_EQ(after.read("cap", "spring", just_before)->value, 90);
    EXPECT_FALSE(send(after, "spring", 11, just_before).allowed());
    // The second 45 leave the old window at t0 + 60m 10s: 5 s before, they count.
    EXPECT_FALSE(send(after, "spring", 56, t0 + offset + 60min + 5s).allowed());
    EXPECT_TRUE(send(after, "spring", 55, t0 + offset + 60min + 5s).allowed());
    // Kept a little longer (to the end of our bucket), never for less; gone after the hour.
    EXPECT_TRUE(send(after, "spring", 45, t0 + offset + 62min).allowed());
}

// A baseline's current bucket after a fractional reboot offset goes to the earlier of the two
// it straddles: the next bucket starts afresh on time, and the counts compared with the
// threshold never span two buckets (rounded up they did: 60 before the restart + 100 after
// it against a threshold of 150, a false trip at the usual rate).
TEST(SavedMeters, ABaselineAfterARebootComparesOneBucketOfTraffic) {
    const std::string rule = config(R"j({"id": "spike", "route": "mail-send", "key": "header:x-campaign-id",
        "measure": "count($.personalizations[*].to[*])", "window": "1m",
        "baseline": {"factor": 1.5, "warmup": "10m", "min_samples": 10, "alpha": 0.2},
        "failure_mode": "volume-spike", "trips": "campaign-volume"})j");
    const time_point start{std::chrono::minutes{60'000}};
    engine before{load_ok(rule)};
    for (int bucket = 0; bucket < 30; ++bucket) {
        for (int i = 0; i < 100; ++i) {
            ASSERT_TRUE(send(before, "spring", 1, start + std::chrono::minutes{bucket} + std::chrono::milliseconds{i * 500}).allowed());
        }
    }
    const time_point b30 = start + 30min;
    for (int i = 0; i < 60; ++i) {
        ASSERT_TRUE(send(before, "spring", 1, b30 + std::chrono::milliseconds{i * 500}).allowed());
    }
    auto saved = before.save_meters(b30 + 40s);
    const auto offset = std::chrono::duration_cast<std::chrono::milliseconds>(-std::chrono::minutes{59'000} + 30s);
    saved[0].offset = offset;
    const time_point up = b30 + 45s + offset;  // 15 s into our next bucket
    engine after{load_ok(rule)};
    std::string error;
    ASSERT_TRUE(after.restore_meters(saved, up, &error)) << error;
    for (int i = 0; i < 100; ++i) {
        const auto d = send(after, "spring", 1, up + std::chrono::milliseconds{i * 400});
        ASSERT_TRUE(d.allowed()) << i << ": " << d.reason;
    }
    // Still armed: a spike in that bucket trips.
    bool tripped = false;
    for (int i = 0; i < 100 && !tripped; ++i) {
        tripped = !send(after, "spring", 1, up + 41s).allowed();
    }
    EXPECT_TRUE(tripped);
}

TEST(SavedMeters, AChangedRuleStartsFromZeroAndADamagedOneIsAnError) {
    manual_clock clock;
    engine before{load_ok(config(hourly_cap))};
    ASSERT_TRUE(send(before, "spring", 90, clock.now()).allowed());
    auto saved = before.save_meters(clock.now());
    std::string error;
    // Another window is another meter (as a reload sees it): its counts start again. (A new
    // limit is not: the counts are judged by it, at a reload as at a restart.)
    std::string looser = hourly_cap;
    looser.replace(looser.find("\"window\": \"1h\""), 14, "\"window\": \"2h\"");
    engine changed{load_ok(config(looser))};
    const auto restored = changed.restore_meters(saved, clock.now(), &error);
    ASSERT_TRUE(restored) << error;
    EXPECT_TRUE(restored->empty());
    EXPECT_FALSE(changed.read("cap", "spring", clock.now()));
    // A damaged row: refused whole, with the rule named.
    for (const std::size_t cut : {std::size_t{1}, std::size_t{9}, saved[0].state.size() - 1}) {
        auto damaged = saved;
        damaged[0].state.resize(cut);
        engine fresh{load_ok(config(hourly_cap))};
        EXPECT_FALSE(fresh.restore_meters(damaged, clock.now(), &error)) << cut;
        EXPECT_NE(error.find("rule cap: "), std::string::npos) << error;
        EXPECT_FALSE(fresh.read("cap", "spring", clock.now())) << "nothing half-restored";
    }
    auto trailing = saved;
    trailing[0].state += "x";
    engine fresh{load_ok(config(hourly_cap))};
    EXPECT_FALSE(fresh.restore_meters(trailing, clock.now(), &error));
    // An idle meter saves nothing.
    engine idle{load_ok(config(hourly_cap))};
    EXPECT_TRUE(idle.save_meters(clock.now()).empty());
}

TEST(SavedMeters, ABaselineKeepsItsHistorySoARestartDoesNotStartItsWarmupAgain) {
    manual_clock clock;
    clock.set(time_point{std::chrono::minutes{60'000}});
    engine before{load_ok(baseline_rule())};
    request req;
    req.header("x-campaign-id", "spring");
    req.body = sendgrid_body(10);
    for (int bucket = 0; bucket < 30; ++bucket) {
        for (int i = 0; i < 100; ++i) {
            ASSERT_TRUE(before.evaluate(req.view(), clock.now() + std::chrono::milliseconds{i * 50}).allowed());
        }
        clock.advance(1min);
    }
    const auto saved = before.save_meters(clock.now());
    engine after{load_ok(baseline_rule())};
    std::string error;
    ASSERT_TRUE(after.restore_meters(saved, clock.now(), &error)) << error;
    // Armed at once: a 10x spike in the first bucket after the restart trips.
    int sent = 0;
    for (; sent < 1000; ++sent) {
        if (!after.evaluate(req.view(), clock.now() + std::chrono::milliseconds{sent * 5}).allowed()) {
            break;
        }
    }
    EXPECT_LT(sent, 400) << "a restored baseline is armed; a fresh one would let the spike through for 10 minutes";
    // A fresh engine lets the whole spike through (what the restore prevents).
    engine fresh{load_ok(baseline_rule())};
    for (int i = 0; i < 1000; ++i) {
        ASSERT_TRUE(fresh.evaluate(req.view(), clock.now() + std::chrono::milliseconds{i * 5}).allowed());
    }
}

}  // namespace
}  // namespace bb::rules::test
