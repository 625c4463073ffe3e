#pragma once
// Time is injected (Envoy TimeSource, Seastar manual_clock): rules and breakers take `now`
// as a parameter, and whatever needs to *read* the time holds a `clock&`. Tests use
// `manual_clock` and advance it by hand; nothing time-based in tests sleeps.

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>

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
    // Names the span over which now() readings mean the same thing to every process: on
    // Linux steady_clock is CLOCK_MONOTONIC, which counts from boot, so a saved reading is
    // still exact after a restart of the process within the same boot (the kernel's random
    // boot id), whatever the wall clock did meanwhile. Empty: unknown (then only the wall
    // clock links a saved time to now).
    virtual std::string boot_id() const = 0;
};

class real_clock final : public clock {
public:
    time_point now() const override { return std::chrono::steady_clock::now(); }
    std::chrono::system_clock::time_point wall_now() const override { return std::chrono::system_clock::now(); }
    std::string boot_id() const override;  // /proc/sys/kernel/random/boot_id, read once
};

// Starts at an arbitrary fixed point; only moves when told to. Thread-safe.
class manual_clock final : public clock {
public:
    manual_clock() = default;
    time_point now() const override { return time_point{duration{ticks_.load(std::memory_order_acquire)}}; }
    std::chrono::system_clock::time_point wall_now() const override {
        return std::chrono::system_clock::time_point{
            std::chrono::duration_cast<std::chrono::system_clock::duration>(
                duration{ticks_.load(std::memory_order_acquire) + wall_step_.load(std::memory_order_acquire)}) +
            std::chrono::hours{24 * 365 * 56}};
    }
    std::string boot_id() const override {
        std::lock_guard lock{boot_mu_};
        return boot_;
    }
    void advance(duration d) { ticks_.fetch_add(d.count(), std::memory_order_acq_rel); }
    void set(time_point t) { ticks_.store(t.time_since_epoch().count(), std::memory_order_release); }
    // The wall clock alone jumps (an NTP step, an operator's `date -s`); now() does not.
    void step_wall(duration d) { wall_step_.fetch_add(d.count(), std::memory_order_acq_rel); }
    // Another boot: now() readings of the old one mean nothing in the new one.
    void set_boot_id(std::string id) {
        std::lock_guard lock{boot_mu_};
        boot_ = std::move(id);
    }

private:
    std::atomic<duration::rep> wall_step_{0};
    mutable std::mutex boot_mu_;
    std::string boot_ = "manual-clock-boot";
    // Start well away from zero so "now - window" never underflows in tests.
    std::atomic<duration::rep> ticks_{std::chrono::duration_cast<duration>(std::chrono::hours{1000}).count()};
};

}  // namespace bb
