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
#include <iterator>
#include <list>
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

    // The request with this key, route and agent is being sent at `now_ms` (a steady
    // clock). Returns when it was last sent before, if remembered (for forget()).
    std::optional<std::int64_t> note(std::string_view key, std::string_view route, std::string_view agent,
                                     std::int64_t now_ms) {
        const std::uint64_t h = hash(key, route, agent);
        std::lock_guard lock{mu_};
        std::optional<std::int64_t> before;
        if (const auto it = at_.find(h); it != at_.end()) {
            before = it->second->second;
            it->second->second = now_ms;
            lru_.splice(lru_.end(), lru_, it->second);  // one entry per key: the bound counts keys
        } else {
            lru_.emplace_back(h, now_ms);
            at_.emplace(h, std::prev(lru_.end()));
        }
        expire(now_ms);
        return before;
    }

    // The send noted at `sent_ms` went nowhere (no connection): as if not noted, unless the
    // key was noted again since. `before`: what note() returned.
    void forget(std::string_view key, std::string_view route, std::string_view agent, std::int64_t sent_ms,
                std::optional<std::int64_t> before) {
        const std::uint64_t h = hash(key, route, agent);
        std::lock_guard lock{mu_};
        const auto it = at_.find(h);
        if (it == at_.end() || it->second->second != sent_ms) {
            return;
        }
        if (before) {
            it->second->second = *before;  // its place stays: it ages out by sent_at's check
        } else {
            lru_.erase(it->second);
            at_.erase(it);
        }
    }

    // When a request with this key, route and agent was last sent, if within the memory.
    std::optional<std::int64_t> sent_at(std::string_view key, std::string_view route, std::string_view agent,
                                        std::int64_t now_ms) const {
        const std::uint64_t h = hash(key, route, agent);
        std::lock_guard lock{mu_};
        const auto it = at_.find(h);
        if (it == at_.end() || now_ms - it->second->second > memory_ms_) {
            return std::nullopt;
        }
        return it->second->second;
    }

    std::size_t size() const {
        std::lock_guard lock{mu_};
        return at_.size();
    }
    // Keys dropped for the bound while younger than the memory (their retries would be held).
    std::uint64_t dropped_young() const {
        std::lock_guard lock{mu_};
        return dropped_young_;
    }

private:
    static std::uint64_t hash(std::string_view key, std::string_view route, std::string_view agent) {
        std::string s;
        s.reserve(key.size() + route.size() + agent.size() + 2);
        s.append(key).append(1, '\0').append(route).append(1, '\0').append(agent);
        return std::hash<std::string>{}(s);
    }

    // Least recently sent first: drops what is past the memory, and past `max_` keys the
    // least recently sent.
    void expire(std::int64_t now_ms) {
        while (!lru_.empty() && (lru_.size() > max_ || now_ms - lru_.front().second > memory_ms_)) {
            if (now_ms - lru_.front().second <= memory_ms_) {
                ++dropped_young_;
            }
            at_.erase(lru_.front().first);
            lru_.pop_front();
        }
    }

    const std::size_t max_;
    const std::int64_t memory_ms_;
    mutable std::mutex mu_;
    std::list<std::pair<std::uint64_t, std::int64_t>> lru_;
    std::unordered_map<std::uint64_t, std::list<std::pair<std::uint64_t, std::int64_t>>::iterator> at_;
    std::uint64_t dropped_young_ = 0;
};

}  // namespace bb::proxy
