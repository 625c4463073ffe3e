#pragma once
// The Idempotency-Keys of requests sent live (proxy/session.cpp, step 8), remembered for a
// while so that a retry of one that comes while a breaker quarantines its traffic is not
// held: the first may have been delivered (the client timed out, the upstream did not), and
// releasing the retry later would send it a second time. Bounded in number and age; the
// server writes what changed to the store every 50 ms (server_options::keys_save_every) and
// at shutdown, and reads it back at start (changes()/restore()), so a restart remembers them
// too. Between saves every change is also written to a journal (store/key_journal.hpp) before
// its request goes out, so a process that dies forgets none of them. Only a 64-bit digest of
// (key, agent) is kept, never the key.
// A key is the agent's, whichever route carries it (the store scopes held requests' keys
// the same way): a client's key names one operation, and renaming or reordering routes
// must not let the retry of a request sent live be held, and released, as if it never
// went out. Versions before scoped keys by route too; their digests are still looked up,
// under every route name in use then, until they age out (sent_at, by_route).
// Thread-safe.

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <list>
#include <memory>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "core/sha256.hpp"
#include "store/key_journal.hpp"

namespace bb::proxy {

class forwarded_keys {
public:
    static constexpr std::size_t default_max = 200'000;
    static constexpr std::chrono::milliseconds default_memory{std::chrono::hours{24}};

    explicit forwarded_keys(std::size_t max = default_max, std::chrono::milliseconds memory = default_memory)
        : max_(max), memory_ms_(memory.count()) {}

    std::size_t max() const { return max_; }

    // The request with this key and agent is being sent at `now_ms` (a steady clock).
    // Returns when it was last sent before, if remembered (for forget()).
    std::optional<std::int64_t> note(std::string_view key, std::string_view agent, std::int64_t now_ms) {
        const std::uint64_t h = digest(key, agent);
        std::lock_guard lock{mu_};
        return note_locked(h, now_ms);
    }

    // The two checks that keep a live send and a hold of one key apart, each made under the
    // lock the other takes, so they cannot interleave: a live send notes its key and then
    // asks whether a hold under it may exist (note_then: `may_hold()`); a hold asks whether
    // the key was sent and, if not, says a hold is coming (sent_at_then: `expect_hold()`).
    // Whichever comes second sees the first. Both callbacks must be quick and must not call
    // back into this object.
    template <class F>
    std::pair<std::optional<std::int64_t>, bool> note_then(std::string_view key, std::string_view agent,
                                                           std::int64_t now_ms, F&& may_hold) {
        const std::uint64_t h = digest(key, agent);
        std::lock_guard lock{mu_};
        auto before = note_locked(h, now_ms);
        const bool held = may_hold();
        return {before, held};
    }
    template <class F>
    std::optional<std::int64_t> sent_at_then(std::string_view key, std::string_view agent, std::int64_t now_ms,
                                             F&& expect_hold) {
        const auto digests = digests_of(key, agent, now_ms);
        std::lock_guard lock{mu_};
        if (const auto sent = sent_locked(digests, now_ms)) {
            return sent;
        }
        {
            // In flight, its note dropped for the bound meanwhile: sent as much.
            std::lock_guard flight{flight_mu_};
            if (in_flight_.contains(digests.front())) {  // digest(key, agent), digests_of's first
                return now_ms;
            }
        }
        expect_hold();
        return std::nullopt;
    }

    // The send noted at `sent_ms` went nowhere (no connection): as if not noted, unless the
    // key was noted again since. `before`: what note() returned.
    void forget(std::string_view key, std::string_view agent, std::int64_t sent_ms, std::optional<std::int64_t> before) {
        const std::uint64_t h = digest(key, agent);
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
        mark(h);
        journal(h, before ? *before : store::key_journal::forgotten, sent_ms);
    }

    // When a request with this key and agent was last sent, if within the memory (the
    // latest send when several digests are remembered: the digests by route a version
    // before wrote, under each name by_route gave, until then).
    std::optional<std::int64_t> sent_at(std::string_view key, std::string_view agent, std::int64_t now_ms) const {
        const auto digests = digests_of(key, agent, now_ms);
        std::lock_guard lock{mu_};
        return sent_locked(digests, now_ms);
    }
    // Digests by route, of a version before, may be remembered until `steady_ms` (a steady
    // clock: the store's keys_by_agent_since_ms plus the memory), under these route names
    // (the server gives those of the config now and of every config version kept). Asked
    // for each, one SHA-256 a name, only for requests a breaker quarantines, and only until
    // then.
    void by_route(std::int64_t steady_ms, std::vector<std::string> route_names) {
        std::sort(route_names.begin(), route_names.end());
        route_names.erase(std::unique(route_names.begin(), route_names.end()), route_names.end());
        std::lock_guard lock{mu_};
        by_route_until_ms_ = steady_ms;
        by_route_names_ = std::make_shared<const std::vector<std::string>>(std::move(route_names));
    }

    // A live send under (key, agent) begins: its digest, or nullopt when one is still in
    // flight (a retry beside it would be a second send if the first is delivered; its answer
    // says whether a retry is needed at all). end_flight(digest) once its exchange is over.
    std::optional<std::uint64_t> begin_flight(std::string_view key, std::string_view agent) {
        const std::uint64_t h = digest(key, agent);
        std::lock_guard lock{flight_mu_};
        if (!in_flight_.insert(h).second) {
            return std::nullopt;
        }
        return h;
    }
    void end_flight(std::uint64_t h) {
        std::lock_guard lock{flight_mu_};
        in_flight_.erase(h);
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

    // --- across a restart ---
    // A key as the store keeps it: its digest and when it was last sent (steady ms), or
    // nullopt when it is remembered no more (forgotten, or dropped for the bound).
    struct change {
        std::uint64_t digest = 0;
        std::optional<std::int64_t> sent_ms;
    };
    // What changed since the last call, as it stands now; the caller writes it to the store
    // and hands it back with retry() if the write failed, or calls saved(*journal_file) once
    // it is in the store (-1: no journal).
    // `wall_minus_steady_ms`, when given: the clocks' offset read now. When the wall clock
    // moved more than a second against the steady one (an NTP step, a suspended VM), every
    // key is written again at the new offset: rows on the old one would age by the step.
    std::vector<change> changes(int* journal_file = nullptr, std::optional<std::int64_t> wall_minus_steady_ms = {}) {
        std::lock_guard lock{mu_};
        if (journal_file != nullptr) {
            *journal_file = journal_ ? journal_->retire() : -1;
        }
        if (wall_minus_steady_ms && persisted_ && std::abs(*wall_minus_steady_ms - wall_offset_ms_) > 1000) {
            wall_offset_ms_ = *wall_minus_steady_ms;
            for (const auto& [h, sent] : lru_) {
                dirty_.insert(h);
            }
        }
        std::vector<change> out;
        out.reserve(dirty_.size());
        for (const std::uint64_t h : dirty_) {
            const auto it = at_.find(h);
            out.push_back({h, it == at_.end() ? std::nullopt : std::optional{it->second->second}});
        }
        dirty_.clear();
        return out;
    }
    // A write of changes() failed: they go with the next (as they stand then).
    void retry(const std::vector<change>& failed) {
        std::lock_guard lock{mu_};
        for (const auto& c : failed) {
            mark(c.digest);
        }
    }
    // The changes() that named this journal file are in the store: the file is emptied
    // (truncated outside the lock: nothing writes to a retired file until it is emptied, and
    // saves run one at a time).
    void saved(int journal_file) {
        std::shared_ptr<store::key_journal> j;
        {
            std::lock_guard lock{mu_};
            if (!journal_ || journal_file < 0 || !journal_->may_empty(journal_file)) {
                return;
            }
            j = journal_;
        }
        const bool ok = ::ftruncate(j->fd(journal_file), 0) == 0;
        std::lock_guard lock{mu_};
        if (!ok) {
            ++journal_failures_;
        } else if (j == journal_) {
            j->emptied(journal_file);
        }
    }
    // Wall-clock ms minus this process's steady ms, as read when the store opened (or when
    // changes() found the clocks a second apart from it): the store and the journal both
    // record sends on the wall clock with it, so that a take-back in the journal names
    // exactly the time the store has (a fresh reading per save would move by a millisecond
    // now and then, and the replay compares for equality).
    std::int64_t wall_offset() const {
        std::lock_guard lock{mu_};
        return wall_offset_ms_;
    }
    // Changes the journal could not take (a full disk): those are forgotten by a crash
    // before the next save, as they all were before there was a journal.
    std::uint64_t journal_failures() const {
        std::lock_guard lock{mu_};
        return journal_failures_;
    }
    // When the store opens (at start, or the reload that opens it): the keys it had (steady
    // ms on this process's clock), then what its journal holds (changes made after them, or
    // saved too: `replay`, oldest first, wall-clock ms, read with `log`), join those noted
    // meanwhile, in the order they were sent; beyond the bound the least recently sent go.
    // From here on changes are tracked for it, and journalled in `log` when given.
    void restore(std::vector<std::pair<std::uint64_t, std::int64_t>> saved, std::int64_t now_ms,
                 std::unique_ptr<store::key_journal> log = nullptr,
                 const std::vector<store::key_journal::entry>& replay = {}, std::int64_t wall_now_ms = 0) {
        std::lock_guard lock{mu_};
        if (!replay.empty()) {
            // The journal's changes over the store's rows, oldest first; the store has not
            // seen them all: written with the next save. A key's sends only move forward, so
            // a send counts when it is later than what the store has; a send taken back
            // (it went nowhere) is taken back only when it is still the key's last: the
            // store may hold a later send whose own entry was lost (a full disk), and that
            // one must not be forgotten.
            // Unclamped here (a send "later" than now, after the wall clock went back, keeps its
            // order and its identity for the comparison below); clamped to now below.
            const auto steady = [&](std::int64_t wall) { return now_ms - (wall_now_ms - wall); };
            std::unordered_map<std::uint64_t, std::int64_t> last;
            for (const auto& [h, sent] : saved) {
                auto [it, added] = last.emplace(h, sent);
                if (!added) {
                    it->second = std::max(it->second, sent);
                }
            }
            for (const auto& e : replay) {
                const auto it = last.find(e.digest);
                if (e.undoes_ms == 0) {
                    const auto sent = steady(e.wall_ms);
                    if (it == last.end()) {
                        last.emplace(e.digest, sent);
                    } else {
                        it->second = std::max(it->second, sent);
                    }
                } else if (it != last.end() && it->second == steady(e.undoes_ms)) {
                    if (e.wall_ms == store::key_journal::forgotten) {
                        last.erase(it);
                    } else {
                        it->second = steady(e.wall_ms);
                    }
                }
                dirty_.insert(e.digest);
            }
            saved.assign(last.begin(), last.end());
        }
        for (auto& [h, sent] : saved) {
            sent = std::min(sent, now_ms);  // a send "later" than now (the wall clock went back) counts as now
        }
        journal_ = std::move(log);
        wall_offset_ms_ = wall_now_ms - now_ms;
        for (const auto& [h, sent] : lru_) {
            journal(h, sent, 0);  // noted before the store opened: in the journal from now too
            saved.emplace_back(h, sent);
            dirty_.insert(h);  // noted without a store: not in it yet
        }
        std::sort(saved.begin(), saved.end(), [](const auto& a, const auto& b) { return a.second < b.second; });
        lru_.clear();
        at_.clear();
        for (const auto& [h, sent] : saved) {
            if (const auto it = at_.find(h); it != at_.end()) {
                it->second->second = sent;  // sorted: the later send
                lru_.splice(lru_.end(), lru_, it->second);
            } else {
                lru_.emplace_back(h, sent);
                at_.emplace(h, std::prev(lru_.end()));
            }
        }
        persisted_ = true;
        expire(now_ms);
    }
    std::chrono::milliseconds memory() const { return std::chrono::milliseconds{memory_ms_}; }

    // The digest of (key, agent): the first 8 bytes of a SHA-256 of key NUL NUL agent, the
    // same in every build (the store keeps it across versions). It is digest_by_route's
    // encoding with no route: a route's name is never empty, so neither kind of digest is
    // ever the other's.
    static std::uint64_t digest(std::string_view key, std::string_view agent) { return digest_by_route(key, "", agent); }
    // The digest versions before wrote: of key NUL route NUL agent.
    static std::uint64_t digest_by_route(std::string_view key, std::string_view route, std::string_view agent) {
        std::string s;
        s.reserve(key.size() + route.size() + agent.size() + 2);
        s.append(key).append(1, '\0').append(route).append(1, '\0').append(agent);
        const auto d = sha256(s);
        std::uint64_t h = 0;
        for (int i = 0; i < 8; ++i) {
            h = h << 8 | d[i];
        }
        return h;
    }

private:
    // The digest of (key, agent), then those by route while they may be remembered
    // (computed outside the lock).
    std::vector<std::uint64_t> digests_of(std::string_view key, std::string_view agent, std::int64_t now_ms) const {
        std::vector<std::uint64_t> out{digest(key, agent)};
        std::shared_ptr<const std::vector<std::string>> routes;
        {
            std::lock_guard lock{mu_};
            if (now_ms <= by_route_until_ms_) {
                routes = by_route_names_;
            }
        }
        if (routes) {
            for (const auto& route : *routes) {
                out.push_back(digest_by_route(key, route, agent));
            }
        }
        return out;
    }
    // With mu_ held: when any of `digests` was last sent, if within the memory.
    std::optional<std::int64_t> sent_locked(const std::vector<std::uint64_t>& digests, std::int64_t now_ms) const {
        std::optional<std::int64_t> last;
        for (const std::uint64_t d : digests) {
            const auto it = at_.find(d);
            if (it != at_.end() && now_ms - it->second->second <= memory_ms_) {
                last = std::max(last.value_or(it->second->second), it->second->second);
            }
        }
        return last;
    }
    std::optional<std::int64_t> note_locked(std::uint64_t h, std::int64_t now_ms) {
        std::optional<std::int64_t> before;
        if (const auto it = at_.find(h); it != at_.end()) {
            before = it->second->second;
            it->second->second = now_ms;
            // One entry per digest: the bound counts keys (a key sent both before and after an
            // upgrade that scoped keys by agent alone: two, until the first ages out).
            lru_.splice(lru_.end(), lru_, it->second);
        } else {
            lru_.emplace_back(h, now_ms);
            at_.emplace(h, std::prev(lru_.end()));
        }
        mark(h);
        journal(h, now_ms, 0);
        expire(now_ms);
        return before;
    }

    // With mu_ held: this change goes to the journal before its request goes out. Steady
    // times; `sent_ms` key_journal::forgotten: remembered no more; `undoes_ms` not 0: the
    // send at that time is taken back.
    void journal(std::uint64_t h, std::int64_t sent_ms, std::int64_t undoes_ms) {
        if (!journal_) {
            return;
        }
        const std::int64_t wall =
            sent_ms == store::key_journal::forgotten ? store::key_journal::forgotten : sent_ms + wall_offset_ms_;
        if (!journal_->append(h, wall, undoes_ms == 0 ? 0 : undoes_ms + wall_offset_ms_)) {
            ++journal_failures_;
        }
    }

    // Least recently sent first: drops what is past the memory, and past `max_` keys the
    // least recently sent.
    void expire(std::int64_t now_ms) {
        while (!lru_.empty() && (lru_.size() > max_ || now_ms - lru_.front().second > memory_ms_)) {
            if (now_ms - lru_.front().second <= memory_ms_) {
                ++dropped_young_;
                // Its row goes too (an aged one goes by its time).
                mark(lru_.front().first);
            }
            at_.erase(lru_.front().first);
            lru_.pop_front();
        }
    }

    // A change the store must see. Only once a store keeps them (restore()). Bounded: a key
    // remembered is in at most once, and of those remembered no more (rows to delete), at
    // most 2 x max_ wait; past that, while the store refuses every write, the rest age out
    // of it by their time instead.
    void mark(std::uint64_t h) {
        if (persisted_ && (at_.contains(h) || dirty_.size() < 2 * max_)) {
            dirty_.insert(h);
        }
    }

    const std::size_t max_;
    const std::int64_t memory_ms_;
    mutable std::mutex mu_;
    std::mutex flight_mu_;                     // apart from mu_: a flight is not a remembered send
    std::unordered_set<std::uint64_t> in_flight_;  // digests of (key, agent) being sent live now
    std::list<std::pair<std::uint64_t, std::int64_t>> lru_;
    std::unordered_map<std::uint64_t, std::list<std::pair<std::uint64_t, std::int64_t>>::iterator> at_;
    std::uint64_t dropped_young_ = 0;
    std::unordered_set<std::uint64_t> dirty_;  // digests changed since changes()
    bool persisted_ = false;                    // a store keeps them (restore() ran)
    std::shared_ptr<store::key_journal> journal_;  // null: no store, or none given
    std::int64_t wall_offset_ms_ = 0;
    // Until when digests by route (a version before) may be remembered: none by default.
    std::int64_t by_route_until_ms_ = std::numeric_limits<std::int64_t>::min();
    std::shared_ptr<const std::vector<std::string>> by_route_names_;
    std::uint64_t journal_failures_ = 0;
};

}  // namespace bb::proxy
