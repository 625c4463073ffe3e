#include "breakers/health.hpp"

#include <algorithm>
#include <cstdio>
#include <string>

namespace bb::breakers {

namespace {

std::string format_ms(milliseconds d) {
    if (d.count() % 1000 == 0) {
        return std::to_string(d.count() / 1000) + "s";
    }
    return std::to_string(d.count()) + "ms";
}

std::string format_ratio(double r) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", r);
    return buf;
}

}  // namespace

health_tracker::health_tracker(health_config cfg)
    : cfg_(cfg),
      bucket_width_(std::max<duration>(std::chrono::duration_cast<duration>(cfg.window) / bucket_count,
                                       std::chrono::milliseconds{1})) {}

health_tracker::totals health_tracker::sum(std::int64_t epoch) const {
    totals t;
    for (const auto& b : ring_) {
        const auto e = b.epoch.load(std::memory_order_acquire);
        if (e > epoch - static_cast<std::int64_t>(bucket_count) && e <= epoch) {
            t.calls += b.calls.load(std::memory_order_relaxed);
            t.failures += b.failures.load(std::memory_order_relaxed);
            t.slow += b.slow.load(std::memory_order_relaxed);
            t.abandoned += b.abandoned.load(std::memory_order_relaxed);
        }
    }
    return t;
}

std::optional<trip_cause> health_tracker::check_ratio(std::atomic<bool>& over, double ratio, double threshold,
                                                      std::uint64_t calls, const char* what, const char* detail) {
    if (ratio < threshold) {
        over.store(false, std::memory_order_relaxed);
        return std::nullopt;
    }
    if (over.exchange(true, std::memory_order_relaxed)) {
        return std::nullopt;  // someone already reported this crossing
    }
    trip_cause c;
    c.kind = "upstream_health";
    c.value = ratio;
    c.limit = threshold;
    c.window = cfg_.window;
    c.reason = std::string{what} + " " + format_ratio(ratio) + " >= " + format_ratio(threshold) + " over " +
               format_ms(cfg_.window) + " (" + std::to_string(calls) + " calls" + detail + ")";
    return c;
}

std::optional<trip_cause> health_tracker::record(bool failure, std::chrono::microseconds latency, time_point now) {
    return record(failure, latency, now, false);
}

std::optional<trip_cause> health_tracker::record_abandoned(std::chrono::microseconds waited, time_point now) {
    if (cfg_.slow_call <= milliseconds{0} || waited < cfg_.slow_call) {
        return std::nullopt;
    }
    return record(false, waited, now, true);
}

std::optional<trip_cause> health_tracker::record(bool failure, std::chrono::microseconds latency, time_point now,
                                                 bool abandoned) {
    const bool slow = cfg_.slow_call > milliseconds{0} && latency >= cfg_.slow_call;

    std::optional<trip_cause> crossed;
    if (abandoned) {
        // No answer: neither a success that ends a run of failures nor a failure.
    } else if (!failure) {
        consecutive_.store(0, std::memory_order_relaxed);
    } else {
        // fetch_add hands every failure its own count, so exactly one result sees N.
        const auto n = consecutive_.fetch_add(1, std::memory_order_relaxed) + 1;
        if (cfg_.consecutive_failures != 0 && n == cfg_.consecutive_failures) {
            trip_cause c;
            c.kind = "upstream_health";
            c.value = n;
            c.limit = cfg_.consecutive_failures;
            c.reason = std::to_string(n) + " consecutive failures";
            crossed = std::move(c);
        }
    }

    const bool ratios = cfg_.failure_ratio > 0 || cfg_.slow_call > milliseconds{0};
    if (!ratios) {
        return crossed;
    }
    const auto epoch = epoch_of(now);
    auto& b = ring_[static_cast<std::size_t>(epoch) % bucket_count];
    auto seen = b.epoch.load(std::memory_order_acquire);
    // The first result of a new slice recycles the bucket. A result racing the recycle may
    // be wiped; a result older than the bucket's slice is counted in the newer one. Both
    // are within what a health ratio can tolerate, and neither needs a lock.
    if (seen < epoch && b.epoch.compare_exchange_strong(seen, epoch, std::memory_order_acq_rel)) {
        b.calls.store(0, std::memory_order_relaxed);
        b.failures.store(0, std::memory_order_relaxed);
        b.slow.store(0, std::memory_order_relaxed);
        b.abandoned.store(0, std::memory_order_relaxed);
    }
    b.calls.fetch_add(1, std::memory_order_relaxed);
    if (abandoned) {
        b.abandoned.fetch_add(1, std::memory_order_relaxed);
    }
    if (failure) {
        b.failures.fetch_add(1, std::memory_order_relaxed);
    }
    if (slow) {
        b.slow.fetch_add(1, std::memory_order_relaxed);
    }

    const auto t = sum(epoch);
    const auto min_volume = std::max<std::uint64_t>(cfg_.min_volume, 1);
    // The failure ratio is of answered calls: an abandoned call (no answer) is no success,
    // and counting it would dilute the failures (10 5xx among 22 calls, 12 of them abandoned,
    // would read 0.45, not 1.0). The slow-call ratio counts every call.
    const std::uint64_t answered = t.calls - std::min(t.abandoned, t.calls);
    if (answered < min_volume) {
        failure_over_.store(false, std::memory_order_relaxed);
    } else if (cfg_.failure_ratio > 0) {
        auto c = check_ratio(failure_over_, static_cast<double>(t.failures) / static_cast<double>(answered),
                             cfg_.failure_ratio, answered, "failure ratio", "");
        if (!crossed) {
            crossed = std::move(c);
        }
    }
    if (t.calls < min_volume) {
        slow_over_.store(false, std::memory_order_relaxed);
        return crossed;
    }
    const double calls = static_cast<double>(t.calls);
    if (cfg_.slow_call > milliseconds{0}) {
        const std::string detail = ", slow >= " + format_ms(cfg_.slow_call);
        auto c = check_ratio(slow_over_, static_cast<double>(t.slow) / calls, cfg_.slow_ratio, t.calls,
                             "slow-call ratio", detail.c_str());
        if (!crossed) {
            crossed = std::move(c);
        }
    }
    return crossed;
}

void health_tracker::reset(time_point now) {
    (void)now;  // every slice before now is dropped; slices after it start empty anyway
    consecutive_.store(0, std::memory_order_relaxed);
    failure_over_.store(false, std::memory_order_relaxed);
    slow_over_.store(false, std::memory_order_relaxed);
    for (auto& b : ring_) {
        b.epoch.store(-1, std::memory_order_release);
        b.calls.store(0, std::memory_order_relaxed);
        b.failures.store(0, std::memory_order_relaxed);
        b.slow.store(0, std::memory_order_relaxed);
        b.abandoned.store(0, std::memory_order_relaxed);
    }
}

void quota_pause::pause_until(time_point t) {
    const auto want = t.time_since_epoch().count();
    auto cur = until_.load(std::memory_order_relaxed);
    while (cur < want && !until_.compare_exchange_weak(cur, want, std::memory_order_relaxed)) {
    }
}

std::optional<milliseconds> quota_pause::remaining(time_point now) const {
    const time_point until{duration{until_.load(std::memory_order_relaxed)}};
    if (until <= now) {
        return std::nullopt;
    }
    return std::chrono::ceil<milliseconds>(until - now);
}

}  // namespace bb::breakers
