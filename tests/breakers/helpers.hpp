#pragma once
// Shared fixture: a manual clock and a registry whose transitions are recorded in order.

#include <gtest/gtest.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "breakers/breaker.hpp"
#include "core/clock.hpp"

namespace bb::breakers::test {

using namespace std::chrono_literals;

inline breaker_config make_config(std::string id, action act = action::pause,
                                  reset_policy reset = reset_policy::automatic) {
    breaker_config b;
    b.id = std::move(id);
    b.act = act;
    b.reset = reset;
    return b;
}

inline trip_cause rule_cause(std::string rule = "recipients-per-campaign", std::string key = "spring-sale") {
    trip_cause c;
    c.kind = "rule";
    c.actor = "rule:" + rule;
    c.reason = "10001 recipients > 10000 in 1h";
    c.rule = std::move(rule);
    c.key = std::move(key);
    c.value = 10001;
    c.limit = 10000;
    c.window = std::chrono::hours{1};
    c.request_id = "req-1";
    return c;
}

class registry_test : public ::testing::Test {
protected:
    void make(std::vector<breaker_config> configs) {
        reg_ = std::make_unique<breaker_registry>(std::move(configs), [this](const transition& t) {
            std::lock_guard lock{mutex_};
            events_.push_back(t);
        });
    }
    std::vector<transition> events() {
        std::lock_guard lock{mutex_};
        return events_;
    }
    std::vector<transition> take_events() {
        std::lock_guard lock{mutex_};
        return std::exchange(events_, {});
    }
    time_point now() const { return clock_.now(); }
    breaker_registry& reg() { return *reg_; }
    // The saved state of breaker cv's instance for `key` ("": the breaker-wide one), opened
    // `ago` before now with a cooldown of 10 s, as restore() is handed it.
    instance_snapshot saved(std::string key, state st, mode md = mode::automatic,
                            std::chrono::milliseconds ago = std::chrono::hours{1}) const {
        instance_snapshot s;
        s.instance = key.empty() ? "cv" : "cv/" + key;
        s.breaker = "cv";
        s.key = std::move(key);
        s.st = st;
        s.md = md;
        s.opened_at = now() - ago;
        s.cooldown = std::chrono::seconds{10};
        return s;
    }

    manual_clock clock_;
    std::unique_ptr<breaker_registry> reg_;
    std::mutex mutex_;
    std::vector<transition> events_;
};

}  // namespace bb::breakers::test
