// Exact caps under concurrency: 64 threads hammer one key; over many seeds a cap of N admits
// exactly N units, and a request is refused only if it would have crossed the cap.
#include <gtest/gtest.h>

#include <atomic>
#include <latch>
#include <random>
#include <thread>

#include "helpers.hpp"

namespace bb::rules::test {
namespace {

constexpr int thread_count = 64;

struct outcome {
    std::vector<double> admitted;  // amounts
    std::vector<double> refused;
    std::vector<std::string> refused_by;
};

// Runs `attempts` requests per thread, each with its own recipient count from `amount_of`.
template <class AmountFn>
std::vector<outcome> hammer(engine& eng, manual_clock& clock, std::uint32_t seed, int attempts, AmountFn amount_of) {
    std::vector<outcome> results(thread_count);
    std::latch start{thread_count};
    std::vector<std::thread> threads;
    threads.reserve(thread_count);
    for (int t = 0; t < thread_count; ++t) {
        threads.emplace_back([&, t] {
            std::mt19937 rng{seed * 1000 + static_cast<std::uint32_t>(t)};
            // Build the bodies first so the race is over the engine, not over string building.
            std::vector<std::pair<int, std::string>> bodies;
            for (int i = 0; i < attempts; ++i) {
                const int n = amount_of(rng);
                bodies.emplace_back(n, sendgrid_body(n));
            }
            request req;
            req.agent = "agent-" + std::to_string(t);
            req.header("x-campaign-id", "spring-sale");
            start.arrive_and_wait();
            for (auto& [n, body] : bodies) {
                req.body = body;
                if (t == 0) {
                    clock.advance(std::chrono::seconds{1});  // buckets move under the other threads' feet
                }
                const auto d = eng.evaluate(req.view(), clock.now());
                if (d.allowed()) {
                    results[t].admitted.push_back(n);
                } else {
                    results[t].refused.push_back(n);
                    results[t].refused_by.push_back(d.rule);
                }
            }
        });
    }
    for (auto& th : threads) {
        th.join();
    }
    return results;
}

const char* cap_rule(int limit) {
    static thread_local std::string s;
    s = config(R"j({"id": "cap", "route": "mail-send", "key": "header:x-campaign-id",
        "measure": "count($.personalizations[*].to[*])", "window": "1h", "limit": )j" +
               std::to_string(limit) + R"j(, "failure_mode": "volume-spike", "trips": "campaign-volume"})j");
    return s.c_str();
}

TEST(ExactCap, SixtyFourThreadsUnitRequestsAdmitExactlyN) {
    for (std::uint32_t seed = 1; seed <= 30; ++seed) {
        const int limit = 500 + static_cast<int>(seed * 37 % 1500);
        engine eng{load_ok(cap_rule(limit))};
        manual_clock clock;
        // Twice the capacity in attempts, so the cap is certainly reached.
        const int attempts = 2 * limit / thread_count + 2;
        auto results = hammer(eng, clock, seed, attempts, [](std::mt19937&) { return 1; });
        double admitted = 0;
        std::size_t refused = 0;
        for (const auto& r : results) {
            for (double a : r.admitted) {
                admitted += a;
            }
            refused += r.refused.size();
        }
        ASSERT_EQ(admitted, limit) << "seed " << seed;
        ASSERT_EQ(refused, static_cast<std::size_t>(attempts * thread_count - limit)) << "seed " << seed;
        ASSERT_EQ(eng.read("cap", "spring-sale", clock.now())->value, limit) << "seed " << seed;
    }
}

TEST(ExactCap, SixtyFourThreadsRandomAmountsNeverCrossAndOnlyCrossersAreRefused) {
    for (std::uint32_t seed = 1; seed <= 30; ++seed) {
        const int limit = 2000 + static_cast<int>(seed * 131 % 3000);
        engine eng{load_ok(cap_rule(limit))};
        manual_clock clock;
        const int attempts = 2 * limit / (thread_count * 5) + 2;
        auto results = hammer(eng, clock, seed, attempts, [](std::mt19937& rng) { return 1 + static_cast<int>(rng() % 10); });
        double admitted = 0;
        double smallest_refused = 1e9;
        for (const auto& r : results) {
            for (double a : r.admitted) {
                admitted += a;
            }
            for (double a : r.refused) {
                smallest_refused = std::min(smallest_refused, a);
            }
        }
        ASSERT_LE(admitted, limit) << "seed " << seed;
        // The window total only grows during the run, so every refused request would still
        // cross at the end: none was refused that fit.
        ASSERT_GT(admitted + smallest_refused, limit) << "seed " << seed;
        ASSERT_EQ(eng.read("cap", "spring-sale", clock.now())->value, admitted) << "seed " << seed;
    }
}

TEST(ExactCap, RefusalByALaterRuleGivesTheReservationBack) {
    for (std::uint32_t seed = 1; seed <= 20; ++seed) {
        engine eng{load_ok(config(R"j(
            {"id": "campaign", "route": "mail-send", "key": "header:x-campaign-id",
             "measure": "count($.personalizations[*].to[*])", "window": "1h", "limit": 3000,
             "failure_mode": "volume-spike", "trips": "campaign-volume"},
            {"id": "per-agent", "route": "mail-send", "key": "agent",
             "measure": "count($.personalizations[*].to[*])", "window": "1h", "limit": 40,
             "failure_mode": "volume-spike", "trips": "agent-volume"})j"))};
        manual_clock clock;
        auto results = hammer(eng, clock, seed, 20, [](std::mt19937& rng) { return 1 + static_cast<int>(rng() % 6); });
        double admitted = 0;
        for (int t = 0; t < thread_count; ++t) {
            double mine = 0;
            for (double a : results[t].admitted) {
                mine += a;
            }
            ASSERT_LE(mine, 40) << "seed " << seed;
            const auto reading = eng.read("per-agent", "agent-" + std::to_string(t), clock.now());
            ASSERT_EQ(reading ? reading->value : 0, mine) << "seed " << seed << " agent " << t;
            admitted += mine;
        }
        ASSERT_LE(admitted, 3000);
        // Nothing refused stays booked on the first rule.
        ASSERT_EQ(eng.read("campaign", "spring-sale", clock.now())->value, admitted) << "seed " << seed;
    }
}

}  // namespace
}  // namespace bb::rules::test
