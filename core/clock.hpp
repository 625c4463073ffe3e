#pragma once
// Time is injected (Envoy TimeSource, Seastar manual_clock): rules and breakers take `now`
// as a parameter, and whatever needs to *read* the time holds a `clock&`. Tests use
// `manual_clock` and advance it by hand; nothing time-based in tests sleeps.

#include <atomic>
#include <chrono>

namespace bb {

using time_point = std::chrono::steady_clock::time_point;
using duration = std::chrono::steady_clock::duration;

// Thread-safe: implementations may be read from any thread.
class clock {
public:
    virtual ~clock() = default;
    virtual time_point now() const = 0;
    // Wall-clock time for timestamps shown to people (incidents, audit, tickets).
    virtual std::chrono::system_clock::time_point wall_now() const = 0;
};

class real_clock final : public clock {
public:
    time_point now() const override { return std::chrono::steady_clock::now(); }
    std::chrono::system_clock::time_point wall_now() const override { return std::chrono::system_clock::now(); }
};

// Starts at an arbitrary fixed point; only moves when told to. Thread-safe.
class manual_clock final : public clock {
public:
    manual_clock() = default;
    time_point now() const override { return time_point{duration{ticks_.load(std::memory_order_acquire)}}; }
    std::chrono::system_clock::time_point wall_now() const override {
        return std::chrono::system_clock::time_point{
            std::chrono::duration_cast<std::chrono::system_clock::duration>(
                duration{ticks_.load(std::memory_order_acquire)}) +
            std::chrono::hours{24 * 365 * 56}};
    }
    void advance(duration d) { ticks_.fetch_add(d.count(), std::memory_order_acq_rel); }
    void set(time_point t) { ticks_.store(t.time_since_epoch().count(), std::memory_order_release); }

private:
    // Start well away from zero so "now - window" never underflows in tests.
    std::atomic<duration::rep> ticks_{std::chrono::duration_cast<duration>(std::chrono::hours{1000}).count()};
};

}  // namespace bb
