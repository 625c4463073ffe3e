#pragma once
// "At most once per interval", shared by threads: for a log line or an alert that a flood
// of the same event must not repeat. due(now) is true at the first call, then at the first
// call at least `every` after the last one that was. It starts before any clock reading: a
// steady clock counts from the host's boot, and an event in its first moments is due too.

#include "core/clock.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>

namespace bb {

class once_every {
public:
    explicit once_every(std::chrono::milliseconds every) : every_ms_(every.count()) {}

    bool due(time_point now) {
        const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
        auto last = last_ms_.load();
        return now_ms - last >= every_ms_ && last_ms_.compare_exchange_strong(last, now_ms);
    }

private:
    std::int64_t every_ms_;
    std::atomic<std::int64_t> last_ms_{std::numeric_limits<std::int64_t>::min() / 2};
};

}  // namespace bb
