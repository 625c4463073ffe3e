#pragma once
// The Idempotency-Keys of requests sent live (proxy/session.cpp, step 8), remembered for a
// while so that a retry of one that comes while a breaker quarantines its traffic is not
// held: the first may have been delivered (the client timed out, the upstream did not), and
// releasing the retry later would send it a second time. Held requests are remembered by
// the store; these only in memory (a restart forgets them), bounded in number and age.
// Thread-safe.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace bb::proxy {

class forwarded_keys {
public:
    static constexpr std::size_t default_max = 200'000;
    static constexpr std::chrono::milliseconds default_memory{std::chrono::hours{24}};

    explicit forwarded_keys(std::size_t max = default_max, std::chrono::milliseconds memory = default_memory)
        : max_(max), memory_ms_(memory.count()) {}

    // The request with this key, route and agent is being sent at `now_ms` (wall clock).
    void note(std::string_view key, std::string_view route, std::string_view agent, std::int64_t now_ms) {
        const std::uint64_t h = hash(key, route, agent);
        std::lock_guard lock{mu_};
        at_[h] = now_ms;
        order_.emplace_back(h, now_ms);
        expire(now_ms);
    }

    // When a request with this key, route and agent was last sent, if within the memory.
    std::optional<std::int64_t> sent_at(std::string_view key, std::string_view route, std::string_view agent,
                                        std::int64_t now_ms) const {
        const std::uint64_t h = hash(key, route, agent);
        std::lock_guard lock{mu_};
        const auto it = at_.find(h);
        if (it == at_.end() || now_ms - it->second > memory_ms_) {
            return std::nullopt;
        }
        return it->second;
    }

    std::size_t size() const {
        std::lock_guard lock{mu_};
        return at_.size();
    }

private:
    static std::uint64_t hash(std::string_view key, std::string_view route, std::string_view agent) {
        std::string s;
        s.reserve(key.size() + route.size() + agent.size() + 2);
        s.append(key).append(1, '\0').append(route).append(1, '\0').append(agent);
        return std::hash<std::string>{}(s);
    }

    // Drops what is past the memory, and the oldest past `max_` (a newer note of the same
    // key keeps it: only the entry's own last note removes it).
    void expire(std::int64_t now_ms) {
        while (!order_.empty() && (order_.size() > max_ || now_ms - order_.front().second > memory_ms_)) {
            const auto [h, at] = order_.front();
            order_.pop_front();
            if (const auto it = at_.find(h); it != at_.end() && it->second == at) {
                at_.erase(it);
            }
        }
    }

    const std::size_t max_;
    const std::int64_t memory_ms_;
    mutable std::mutex mu_;
    std::unordered_map<std::uint64_t, std::int64_t> at_;
    std::deque<std::pair<std::uint64_t, std::int64_t>> order_;
};

}  // namespace bb::proxy
