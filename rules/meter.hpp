#pragma once
// Meters: sliding windows as bucketed rings, EWMA baselines, and the per-rule keyed store
// that bounds how many keys a rule may track.
//
// Thread-safety: ring_window and baseline_state are plain values, not thread-safe; they
// live inside a meter_slot and are only touched with the slot's mutex held. rule_meter is
// safe from any number of threads.

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "rules/rule_set.hpp"

namespace bb::rules {

// A rule key's bound in bytes (keys are stored per meter and name breaker instances).
inline constexpr std::size_t max_key_bytes = 256;

// Bucket epoch: time / resolution. The window at head epoch h covers epochs (h - n, h].
// An event older than the window is counted in the head bucket (late events never vanish,
// which errs towards tripping); an event inside the window goes to its own bucket.
class ring_window {
public:
    ring_window(std::size_t buckets, std::size_t channels);

    // Moves the head forward to `epoch` (no-op if not ahead), clearing expired buckets.
    void advance(std::int64_t epoch);
    // The epoch an event at `epoch` is booked under, once advance(epoch) has run.
    std::int64_t book_epoch(std::int64_t epoch) const;
    void add(std::int64_t epoch, std::size_t channel, double amount);
    // Undo of add(); ignored if the bucket has expired meanwhile.
    void subtract(std::int64_t epoch, std::size_t channel, double amount);
    // Total over the window at the current head.
    double total(std::size_t channel) const { return totals_[channel]; }
    // Total over the window as it would be at `epoch` (>= head), without moving the head.
    double total_at(std::int64_t epoch, std::size_t channel) const;
    bool started() const { return started_; }
    std::int64_t head() const { return head_; }
    std::size_t buckets() const { return n_; }
    std::size_t channels() const { return channels_; }
    // The value of bucket `epoch` (inside the window at the head) on `channel`.
    double bucket(std::int64_t epoch, std::size_t channel) const {
        const auto n = static_cast<std::int64_t>(n_);
        return values_[static_cast<std::size_t>(((epoch % n) + n) % n) * channels_ + channel];
    }
    // A restored window (rule_meter::restore): head at `head`, every bucket empty.
    void restart_at(std::int64_t head);
    // Adds `value` to bucket `epoch` on `channel` (nothing when the bucket is outside the
    // window at the head); totals follow.
    void add_to_bucket(std::int64_t epoch, std::size_t channel, double value);
    std::size_t memory_bytes() const { return sizeof(*this) + values_.capacity() * sizeof(double); }

private:
    double& at(std::int64_t epoch, std::size_t channel) {
        return values_[static_cast<std::size_t>(((epoch % static_cast<std::int64_t>(n_)) + static_cast<std::int64_t>(n_)) %
                                                static_cast<std::int64_t>(n_)) * channels_ + channel];
    }
    void recompute_totals();

    std::size_t n_;
    std::size_t channels_;
    std::vector<double> values_;  // n_ * channels_, bucket-major
    double totals_[2] = {0, 0};
    std::int64_t head_ = 0;
    bool started_ = false;
};

// EWMA of per-bucket totals (tumbling buckets of the rule's window). The current bucket is
// compared against the mean/variance of the buckets before it.
class baseline_state {
public:
    // Everything the baseline is, and all a restart must carry over (rule_meter::encode/restore).
    struct image {
        std::int64_t bucket = 0;
        std::int64_t first_bucket = 0;
        double current = 0;
        double mean = 0;
        double var = 0;
        std::uint32_t samples = 0;
        bool started = false;
    };

    // Folds completed buckets (and empty buckets in a gap, as zeros) into the EWMA.
    void roll(std::int64_t epoch, double alpha);
    double current() const { return s_.current; }
    void add(double amount) { s_.current += amount; }
    void subtract(std::int64_t epoch, double amount) {
        if (epoch == s_.bucket) {
            s_.current -= amount;
        }
    }
    double mean() const { return s_.mean; }
    double stddev() const;
    std::uint32_t samples() const { return s_.samples; }
    // Whether the baseline may trip at `epoch` and above which bucket total.
    bool armed(std::int64_t epoch, const baseline_spec& spec, std::int64_t bucket_ms) const;
    double threshold(const baseline_spec& spec) const;
    std::int64_t bucket() const { return s_.bucket; }
    bool started() const { return s_.started; }

    const image& save() const { return s_; }
    void load(const image& i) { s_ = i; }

private:
    void fold(double x, double alpha);

    image s_;
};

// State of one key of one rule.
struct meter_slot {
    meter_slot(std::size_t buckets, std::size_t channels) : ring(buckets, channels) {}
    // Per-key lock: the check-and-add of a cap must be one atomic step over the whole
    // window (advance, compare total + amount with the limit, add). A lock-free version
    // would need a CAS over a multi-bucket snapshot; a per-key mutex is exact, uncontended
    // across keys, and held for well under a microsecond.
    std::mutex mu;
    ring_window ring;
    baseline_state base;
    std::int64_t last_epoch = 0;
};

struct meter_stats {
    std::size_t keys = 0;              // live keys (excluding the overflow key)
    std::uint64_t overflow_events = 0; // events booked to the overflow key
    std::uint64_t evictions = 0;       // idle keys dropped to make room
};

// Keyed slots of one rule. Keys beyond max_keys go to a single overflow slot which is metered
// (and capped) like any other key; idle keys are evicted to make room, so memory is bounded
// by max_keys * slot size.
class rule_meter {
public:
    explicit rule_meter(const rule& r);
    rule_meter(const rule_meter&) = delete;
    rule_meter& operator=(const rule_meter&) = delete;

    static constexpr std::string_view overflow_key = "(overflow)";

    // Runs f(slot&, bool overflow) with the slot's mutex held, creating the key if needed.
    // `epoch` is used to find idle keys to evict. Thread-safe.
    template <class F>
    auto with_slot(std::string_view key, std::int64_t epoch, F&& f);
    // Same, but never creates a key: returns false if the key is not tracked. Never the
    // overflow slot (a key spelled like overflow_key is a key like any other).
    template <class F>
    bool with_existing_slot(std::string_view key, F&& f);
    // f(overflow slot, true) if a key was ever metered there; false otherwise.
    template <class F>
    bool with_overflow_slot(F&& f);

    meter_stats stats() const;
    // A reload that changes only a rule's max_keys keeps its meter with the new bound (a
    // raise while keys spill into the overflow must not reset every count mid-misfire). A
    // lower bound evicts nothing: new keys wait until idle ones go.
    void set_max_keys(std::size_t n) { max_keys_.store(n, std::memory_order_relaxed); }

    // Carrying the counts over a restart (PRODUCT.md principle 4: a cap is no fresh cap
    // after a deploy). encode() is every key that holds something at `now_epoch` (counts
    // inside its window, or a baseline's history), with its epochs as they are; "" when
    // none does. Thread-safe: each slot is copied under its lock, as a scrape reads it.
    std::string encode(std::int64_t now_epoch);
    // Into a meter that has booked nothing yet: the keys of `blob` (encode() of a meter of
    // the same rule), every epoch moved by `shift` (in units of the rule's resolution: the
    // saving process's clock onto this one's) and never past the bucket after `now_epoch`
    // (where the rounding may put a head; a wall clock set back while we were down must not
    // put counts further in the future, where they would stay for longer than the window).
    // Counts that have left the window at `now_epoch` go at the next booking, as they would
    // have. Keys beyond max_keys go to the overflow slot. False + *error if the blob is not
    // one of this meter's (nothing restored then).
    // `base_shift`: the same shift rounded down, for a baseline's buckets (never past now).
    bool restore(std::string_view blob, std::int64_t shift, std::int64_t base_shift, std::int64_t now_epoch,
                 std::string* error);

    // Visits every tracked key (the overflow key as rule_meter::overflow_key) with its
    // slot locked. For scrapes: it takes each shard's lock shared, one at a time.
    template <class F>
    void for_each_slot(F&& f);
    // Approximate bytes held by one key (slot, ring, map node, key string of `key_len`).
    std::size_t bytes_per_key(std::size_t key_len) const;
    std::size_t channels() const { return channels_; }

private:
    static constexpr std::size_t shard_count = 16;
    struct shard {
        mutable std::shared_mutex mu;
        std::unordered_map<std::string, std::unique_ptr<meter_slot>, string_hash, std::equal_to<>> slots;
        std::int64_t last_sweep = INT64_MIN;
    };
    shard& shard_of(std::string_view key) { return shards_[string_hash{}(key) % shard_count]; }
    // With the shard exclusively locked: drops slots idle at `epoch`. Returns how many.
    std::size_t sweep(shard& s, std::int64_t epoch);
    bool idle(const meter_slot& slot, std::int64_t epoch) const;

    std::size_t buckets_;
    std::size_t channels_;
    std::atomic<std::size_t> max_keys_;
    bool keyed_;
    bool baseline_;
    std::int64_t idle_epochs_;
    std::atomic<std::size_t> keys_{0};
    std::atomic<std::uint64_t> overflow_events_{0};
    std::atomic<std::uint64_t> evictions_{0};
    meter_slot single_;    // unkeyed rules
    meter_slot overflow_;  // keys beyond max_keys
    shard shards_[shard_count];
};

template <class F>
auto rule_meter::with_slot(std::string_view key, std::int64_t epoch, F&& f) {
    if (!keyed_) {
        std::lock_guard lock{single_.mu};
        return f(single_, false);
    }
    shard& s = shard_of(key);
    {
        // Readers hold the shard lock shared while they use a slot, so eviction (which takes
        // it exclusively) can never free a slot in use.
        std::shared_lock read{s.mu};
        auto it = s.slots.find(key);
        if (it != s.slots.end()) {
            std::lock_guard lock{it->second->mu};
            return f(*it->second, false);
        }
    }
    std::unique_lock write{s.mu};
    auto it = s.slots.find(key);
    if (it == s.slots.end()) {
        bool room = keys_.load(std::memory_order_relaxed) < max_keys_.load(std::memory_order_relaxed);
        if (!room && s.last_sweep != epoch) {
            // At most one sweep per shard per bucket, so a full meter costs O(1) amortised.
            s.last_sweep = epoch;
            room = sweep(s, epoch) > 0 && keys_.load(std::memory_order_relaxed) < max_keys_.load(std::memory_order_relaxed);
        }
        if (room && keys_.fetch_add(1, std::memory_order_relaxed) < max_keys_.load(std::memory_order_relaxed)) {
            auto slot = std::make_unique<meter_slot>(buckets_, channels_);
            if (overflow_events_.load(std::memory_order_relaxed) > 0) {
                // This key may have been booked in the overflow slot while the table was full
                // (which keys were is not kept: that is the overflow's point). It starts from
                // the overflow's window, not from zero, or it could book its cap again while
                // its first bookings are still in the window: counted with every overflowed
                // key until they leave it (the safe side). Not the baseline: a higher history
                // would hide a spike. (Lock order: shard, then overflow; nothing takes them the
                // other way round.)
                std::lock_guard lock{overflow_.mu};
                slot->ring = overflow_.ring;
                slot->last_epoch = overflow_.last_epoch;
            }
            it = s.slots.emplace(std::string{key}, std::move(slot)).first;
        } else {
            if (room) {
                keys_.fetch_sub(1, std::memory_order_relaxed);
            }
            // The overflow slot is taken before the shard is let go: a request for this key
            // that finds room right after (a sweep elsewhere, a larger max_keys) creates the
            // key's slot from the overflow's window only once this booking is in it, and
            // starts from it at all (overflow_events_), or the key could book its cap again.
            overflow_events_.fetch_add(1, std::memory_order_relaxed);
            std::lock_guard lock{overflow_.mu};
            write.unlock();
            return f(overflow_, true);
        }
    }
    std::lock_guard lock{it->second->mu};
    return f(*it->second, false);
}

template <class F>
void rule_meter::for_each_slot(F&& f) {
    if (!keyed_) {
        std::lock_guard lock{single_.mu};
        f(std::string_view{}, single_);
        return;
    }
    for (auto& s : shards_) {
        std::shared_lock read{s.mu};
        for (auto& [key, slot] : s.slots) {
            std::lock_guard lock{slot->mu};
            f(std::string_view{key}, *slot);
        }
    }
    if (overflow_events_.load(std::memory_order_relaxed) > 0) {
        std::lock_guard lock{overflow_.mu};
        f(overflow_key, overflow_);
    }
}

template <class F>
bool rule_meter::with_overflow_slot(F&& f) {
    if (!keyed_ || overflow_events_.load(std::memory_order_relaxed) == 0) {
        return false;
    }
    std::lock_guard lock{overflow_.mu};
    f(overflow_, true);
    return true;
}

template <class F>
bool rule_meter::with_existing_slot(std::string_view key, F&& f) {
    if (!keyed_) {
        std::lock_guard lock{single_.mu};
        f(single_, false);
        return true;
    }
    shard& s = shard_of(key);
    std::shared_lock read{s.mu};
    auto it = s.slots.find(key);
    if (it == s.slots.end()) {
        return false;
    }
    std::lock_guard lock{it->second->mu};
    f(*it->second, false);
    return true;
}

}  // namespace bb::rules
