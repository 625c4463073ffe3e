// Many threads trip, reset, force and probe the same few instances at random. Afterwards
// the active counter must equal the number of instances that are not closed+automatic,
// and each instance's events must chain (every event starts where the previous ended),
// which they only do if they were delivered in order.
#include "helpers.hpp"

#include <latch>
#include <map>
#include <random>
#include <thread>

namespace bb::breakers::test {
namespace {

using verdict = admission::verdict;

TEST(breaker_concurrency, active_counter_and_event_order_under_random_operations) {
    constexpr int threads = 8;
    constexpr int ops = 400;
    const std::vector<std::string> names = {"campaign-volume",    "campaign-volume/a", "campaign-volume/b",
                                            "campaign-volume/c",  "campaign-volume/d", "upstream",
                                            "campaign-volume/e",  "campaign-volume/f"};
    for (std::uint32_t seed = 1; seed <= 25; ++seed) {
        auto keyed = make_config("campaign-volume");
        keyed.cooldown = 3s;
        keyed.half_open_probes = 2;
        keyed.max_instances = 4;  // keys e and f compete for room: eviction and overflow
        auto single = make_config("upstream", action::throttle);
        single.per_key = false;
        single.cooldown = 2s;
        single.throttle.requests = 3;

        manual_clock clock;
        std::mutex events_mutex;
        std::map<std::string, std::vector<transition>> events;
        breaker_registry reg{{keyed, single}, [&](const transition& t) {
                                 std::lock_guard lock{events_mutex};
                                 events[t.instance].push_back(t);
                             }};

        std::latch start{threads};
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t) {
            pool.emplace_back([&, t] {
                std::mt19937 rng{seed * 100 + static_cast<std::uint32_t>(t)};
                std::uniform_int_distribution<std::size_t> pick(0, names.size() - 1);
                std::uniform_int_distribution<int> what(0, 9);
                start.arrive_and_wait();
                for (int i = 0; i < ops; ++i) {
                    const auto& name = names[pick(rng)];
                    const auto now = clock.now();
                    switch (what(rng)) {
                    case 0:
                    case 1: {
                        const auto slash = name.find('/');
                        const auto id = name.substr(0, slash);
                        const auto key = slash == std::string::npos ? std::string{} : name.substr(slash + 1);
                        reg.trip(id, key, rule_cause(), now);
                        break;
                    }
                    case 2:
                        reg.manual_trip(name, "op", "test", now);
                        break;
                    case 3:
                        reg.reset(name, "op", "test", now);
                        break;
                    case 4: {
                        static constexpr mode modes[] = {mode::automatic, mode::forced_open, mode::forced_closed,
                                                         mode::metrics_only};
                        reg.set_mode(name, modes[rng() % 4], std::nullopt, "op", "test", now);
                        break;
                    }
                    case 5:
                    case 6:
                    case 7: {
                        const auto a = reg.admit(name, now);
                        if (a.v == verdict::probe) {
                            reg.probe_result(a.instance, rng() % 3 != 0, now, a.probe_round);
                        }
                        break;
                    }
                    case 8:
                        if (t == 0) {
                            clock.advance(500ms);
                        }
                        break;
                    default:
                        reg.tick(now);
                        break;
                    }
                }
            });
        }
        for (auto& th : pool) {
            th.join();
        }

        // No expiries are used, so the stored state is the state the counter tracks.
        const auto snap = reg.snapshot(clock.now());
        std::int64_t active = 0;
        for (const auto& s : snap) {
            if (s.st != state::closed || s.md != mode::automatic) {
                ++active;
            }
        }
        ASSERT_EQ(reg.active_count(), active) << "seed " << seed;
        ASSERT_EQ(reg.any_active(), active != 0) << "seed " << seed;

        for (const auto& s : snap) {
            const auto it = events.find(s.instance);
            if (it == events.end()) {
                continue;
            }
            const auto& ev = it->second;
            // An evicted instance and its successor share a name; both start closed+auto.
            for (std::size_t i = 1; i < ev.size(); ++i) {
                const bool restart = ev[i].from == state::closed && ev[i].mode_from == mode::automatic &&
                                     ev[i - 1].to == state::closed && ev[i - 1].mode_to == mode::automatic;
                ASSERT_TRUE(restart || (ev[i].from == ev[i - 1].to && ev[i].mode_from == ev[i - 1].mode_to))
                    << "seed " << seed << " " << s.instance << " event " << i;
            }
            const auto& last = ev.back();
            // snapshot() shows a due half-open early; otherwise the last event is the state.
            const bool due_half_open = s.st == state::half_open && last.to == state::open;
            ASSERT_TRUE(due_half_open || last.to == s.st) << "seed " << seed << " " << s.instance;
            ASSERT_EQ(last.mode_to, s.md) << "seed " << seed << " " << s.instance;
        }

        for (const auto& s : snap) {
            reg.reset(s.instance, "op", "cleanup", clock.now());
        }
        ASSERT_FALSE(reg.any_active()) << "seed " << seed;
        ASSERT_EQ(reg.active_count(), 0) << "seed " << seed;
    }
}

}  // namespace
}  // namespace bb::breakers::test
