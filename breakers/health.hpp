#pragma once
// Upstream health (like Envoy's outlier detection) and upstream quota pauses. Pure: results
// and `now` come in, a trip_cause comes out; the caller trips the upstream's breaker.
//
// Thread-safety: health_tracker and quota_pause are safe from any number of threads and
// take no lock (every worker reports results for the same upstream). The consecutive
// counter is exact; the windowed ratios are approximate under concurrency (a result that
// races a bucket being recycled may be dropped), which is fine for a health signal.

#include "breakers/breaker.hpp"
#include "core/clock.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>

namespace bb::breakers {

struct health_config {
    std::uint32_t consecutive_failures = 5;  // 0 off
    double failure_ratio = 0;                // 0 off
    milliseconds window{30'000};
    std::uint32_t min_volume = 20;           // calls in the window before a ratio may trip
    milliseconds slow_call{0};               // 0 off; a call at least this long is slow
    double slow_ratio = 0.5;
};

class health_tracker {
public:
    explicit health_tracker(health_config cfg);

    // One upstream result. Returns a trip_cause (kind "upstream_health", reason like
    // "5 consecutive failures" or "failure ratio 0.62 >= 0.50 over 30s (40 calls)") when
    // this result crosses a threshold: once per crossing, not for every result above it.
    // actor and key are left empty for the caller (the upstream's name).
    std::optional<trip_cause> record(bool failure, std::chrono::microseconds latency, time_point now);
    // A call its client gave up on after `waited`, before the upstream answered: no verdict
    // on failure (the consecutive count is left as it is), but a slow call when waited >=
    // slow_call, so an upstream that hangs until every client times out still shows in the
    // slow-call ratio. A shorter wait is not counted at all.
    std::optional<trip_cause> record_abandoned(std::chrono::microseconds waited, time_point now);

    // Forget everything (the breaker closed again after its probes); `now` starts afresh.
    void reset(time_point now);

    const health_config& config() const { return cfg_; }

private:
    static constexpr std::size_t bucket_count = 10;
    struct bucket {
        std::atomic<std::int64_t> epoch{-1};  // which slice of time the counts belong to
        std::atomic<std::uint32_t> calls{0};
        std::atomic<std::uint32_t> failures{0};
        std::atomic<std::uint32_t> slow{0};
        std::atomic<std::uint32_t> abandoned{0};  // of calls: no answer, so neither failure nor success
    };
    struct totals {
        std::uint64_t calls = 0;
        std::uint64_t failures = 0;
        std::uint64_t slow = 0;
        std::uint64_t abandoned = 0;
    };
    std::optional<trip_cause> record(bool failure, std::chrono::microseconds latency, time_point now, bool abandoned);
    std::int64_t epoch_of(time_point t) const { return (t.time_since_epoch() / bucket_width_); }
    totals sum(std::int64_t epoch) const;
    std::optional<trip_cause> check_ratio(std::atomic<bool>& over, double ratio, double threshold, std::uint64_t calls,
                                          const char* what, const char* detail);

    health_config cfg_;
    duration bucket_width_;
    std::array<bucket, bucket_count> ring_;
    std::atomic<std::uint32_t> consecutive_{0};
    // Above the threshold already: report the crossing once, re-arm when it falls below.
    std::atomic<bool> failure_over_{false};
    std::atomic<bool> slow_over_{false};
};

// Upstream 429/503 retry-after: the shared quota is exhausted; pause the upstream for all
// agents until the time it gave.
class quota_pause {
public:
    // Keeps the later of the current pause and `t`.
    void pause_until(time_point t);
    // nullopt when not paused.
    std::optional<milliseconds> remaining(time_point now) const;

private:
    std::atomic<duration::rep> until_{duration::min().count()};
};

}  // namespace bb::breakers
