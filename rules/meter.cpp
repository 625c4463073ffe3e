#include "rules/meter.hpp"

#include "core/byte_codec.hpp"
#include "core/utf8.hpp"

#include <algorithm>
#include <array>
#include <cmath>

namespace bb::rules {

ring_window::ring_window(std::size_t buckets, std::size_t channels)
    : n_(std::max<std::size_t>(buckets, 1)), channels_(std::clamp<std::size_t>(channels, 1, 2)), values_(n_ * channels_, 0.0) {}

void ring_window::advance(std::int64_t epoch) {
    if (!started_) {
        started_ = true;
        head_ = epoch;
        return;
    }
    if (epoch <= head_) {
        return;
    }
    const auto n = static_cast<std::int64_t>(n_);
    if (epoch - head_ >= n) {
        std::fill(values_.begin(), values_.end(), 0.0);
        totals_[0] = totals_[1] = 0;
    } else {
        for (std::int64_t e = head_ + 1; e <= epoch; ++e) {
            for (std::size_t c = 0; c < channels_; ++c) {
                at(e, c) = 0;
            }
        }
        // Re-summing (rather than subtracting the expired buckets) keeps fractional sums
        // from drifting; it runs once per key per bucket, not per event.
        recompute_totals();
    }
    head_ = epoch;
}

void ring_window::recompute_totals() {
    for (std::size_t c = 0; c < channels_; ++c) {
        double t = 0;
        for (std::size_t i = 0; i < n_; ++i) {
            t += values_[i * channels_ + c];
        }
        totals_[c] = t;
    }
}

void ring_window::restart_at(std::int64_t head) {
    std::fill(values_.begin(), values_.end(), 0.0);
    totals_[0] = totals_[1] = 0;
    head_ = head;
    started_ = true;
}

void ring_window::add_to_bucket(std::int64_t epoch, std::size_t channel, double value) {
    if (epoch > head_ || epoch <= head_ - static_cast<std::int64_t>(n_) || channel >= channels_) {
        return;  // left the window (or a channel the rule does not have)
    }
    at(epoch, channel) += value;
    totals_[channel] += value;
}

std::int64_t ring_window::book_epoch(std::int64_t epoch) const {
    if (epoch > head_ || epoch <= head_ - static_cast<std::int64_t>(n_)) {
        return head_;
    }
    return epoch;
}

void ring_window::add(std::int64_t epoch, std::size_t channel, double amount) {
    at(book_epoch(epoch), channel) += amount;
    totals_[channel] += amount;
}

void ring_window::subtract(std::int64_t epoch, std::size_t channel, double amount) {
    if (epoch > head_ || epoch <= head_ - static_cast<std::int64_t>(n_)) {
        return;
    }
    at(epoch, channel) -= amount;
    totals_[channel] -= amount;
}

double ring_window::total_at(std::int64_t epoch, std::size_t channel) const {
    if (!started_) {
        return 0;
    }
    if (epoch <= head_) {
        return totals_[channel];
    }
    const auto n = static_cast<std::int64_t>(n_);
    double t = 0;
    for (std::int64_t e = std::max(head_ - n + 1, epoch - n + 1); e <= head_; ++e) {
        t += values_[static_cast<std::size_t>(((e % n) + n) % n) * channels_ + channel];
    }
    return t;
}

void baseline_state::fold(double x, double alpha) {
    if (s_.samples == 0) {
        s_.mean = x;
        s_.var = 0;
    } else {
        // Incremental EWMA of mean and variance (West 1979 / Finch 2009).
        const double d = x - s_.mean;
        s_.mean += alpha * d;
        s_.var = (1 - alpha) * (s_.var + alpha * d * d);
    }
    if (s_.samples < UINT32_MAX) {
        ++s_.samples;
    }
}

void baseline_state::roll(std::int64_t epoch, double alpha) {
    if (!s_.started) {
        s_.started = true;
        s_.bucket = epoch;
        s_.first_bucket = epoch;
        s_.current = 0;
        return;
    }
    if (epoch <= s_.bucket) {
        return;
    }
    fold(s_.current, alpha);
    // Quiet buckets in a gap are zeros; past a few hundred the EWMA has forgotten
    // everything anyway, so the loop is bounded.
    const std::int64_t gap = std::min<std::int64_t>(epoch - s_.bucket - 1, 512);
    for (std::int64_t i = 0; i < gap; ++i) {
        fold(0, alpha);
    }
    s_.bucket = epoch;
    s_.current = 0;
}

double baseline_state::stddev() const { return std::sqrt(std::max(s_.var, 0.0)); }

bool baseline_state::armed(std::int64_t epoch, const baseline_spec& spec, std::int64_t bucket_ms) const {
    return s_.started && s_.samples >= spec.min_samples && (epoch - s_.first_bucket) * bucket_ms >= spec.warmup.count();
}

double baseline_state::threshold(const baseline_spec& spec) const {
    double t = spec.min_value;
    if (spec.factor) {
        t = std::max(t, s_.mean * *spec.factor);
    }
    if (spec.sigma) {
        t = std::max(t, s_.mean + *spec.sigma * stddev());
    }
    return t;
}

rule_meter::rule_meter(const rule& r)
    : buckets_(r.condition == condition_kind::baseline ? 1 : std::max<std::size_t>(r.buckets, 1)),
      channels_(r.agg == aggregate::sum && r.condition != condition_kind::ratio ? 1 : 2),
      max_keys_(r.max_keys),
      keyed_(!r.key.empty()),
      baseline_(r.condition == condition_kind::baseline),
      // A baseline key forgets its history when evicted, so it must be quiet for longer.
      idle_epochs_(r.condition == condition_kind::baseline ? 64 : static_cast<std::int64_t>(buckets_)),
      single_(buckets_, channels_),
      overflow_(buckets_, channels_) {}

bool rule_meter::idle(const meter_slot& slot, std::int64_t epoch) const {
    return epoch - slot.last_epoch >= idle_epochs_;
}

std::size_t rule_meter::sweep(shard& s, std::int64_t epoch) {
    std::size_t dropped = 0;
    for (auto it = s.slots.begin(); it != s.slots.end();) {
        if (idle(*it->second, epoch)) {
            it = s.slots.erase(it);
            ++dropped;
        } else {
            ++it;
        }
    }
    if (dropped > 0) {
        keys_.fetch_sub(dropped, std::memory_order_relaxed);
        evictions_.fetch_add(dropped, std::memory_order_relaxed);
    }
    return dropped;
}

meter_stats rule_meter::stats() const {
    meter_stats st;
    st.keys = keyed_ ? keys_.load(std::memory_order_relaxed) : 1;
    st.overflow_events = overflow_events_.load(std::memory_order_relaxed);
    st.evictions = evictions_.load(std::memory_order_relaxed);
    return st;
}

std::size_t rule_meter::bytes_per_key(std::size_t key_len) const {
    // unordered_map node: next pointer + key + value + cached hash; plus one bucket pointer.
    const std::size_t node = sizeof(void*) + sizeof(std::string) + sizeof(std::unique_ptr<meter_slot>) + sizeof(std::size_t);
    const std::size_t key_heap = key_len > 15 ? key_len + 1 : 0;
    const std::size_t slot = sizeof(meter_slot) + buckets_ * channels_ * sizeof(double);
    return node + sizeof(void*) + key_heap + slot;
}

// ---------------------------------------------------------------------------------------
// Saved meters. A little-endian byte string (the store keeps it as a BLOB):
//   u8 format (1), u32 buckets, u8 channels, u32 slots, then per slot:
//   u8 kind (0 the unkeyed slot, 1 a key, 2 the overflow slot), u32 key length, key,
//   i64 last_epoch, u8 ring started, i64 ring head, u32 buckets saved, per bucket i64
//   epoch and `channels` f64, then the baseline: u8 started, i64 bucket, i64 first bucket,
//   f64 current, mean, variance, u32 samples.
// Binary rather than JSON: a meter may hold 100,000 keys of 60 buckets, saved every second,
// and doubles must come back bit for bit (core/byte_codec.hpp).

namespace {

constexpr std::uint8_t meter_format = 1;
enum : std::uint8_t { slot_single = 0, slot_key = 1, slot_overflow = 2 };

// Whether a slot carries anything over at `now_epoch`: counts inside its window then (its
// totals are as of its last booking), or a baseline's history.
bool worth_saving(const meter_slot& s, bool baseline, std::int64_t now_epoch) {
    if (baseline) {
        return s.base.started();
    }
    if (!s.ring.started()) {
        return false;
    }
    for (std::size_t c = 0; c < s.ring.channels(); ++c) {
        if (s.ring.total_at(std::max(now_epoch, s.ring.head()), c) != 0) {
            return true;
        }
    }
    return false;
}

void encode_slot(std::string& out, std::uint8_t kind, std::string_view key, const meter_slot& s) {
    put_bytes<std::uint8_t>(out, kind);
    put_bytes<std::uint32_t>(out, static_cast<std::uint32_t>(key.size()));
    out.append(key);
    put_bytes<std::int64_t>(out, s.last_epoch);
    put_bytes<std::uint8_t>(out, s.ring.started() ? 1 : 0);
    put_bytes<std::int64_t>(out, s.ring.head());
    const auto n = static_cast<std::int64_t>(s.ring.buckets());
    const std::size_t count_at = out.size();
    put_bytes<std::uint32_t>(out, 0);
    std::uint32_t saved = 0;
    if (s.ring.started()) {
        for (std::int64_t e = s.ring.head() - n + 1; e <= s.ring.head(); ++e) {
            bool any = false;
            for (std::size_t c = 0; c < s.ring.channels(); ++c) {
                any |= s.ring.bucket(e, c) != 0;
            }
            if (!any) {
                continue;
            }
            put_bytes<std::int64_t>(out, e);
            for (std::size_t c = 0; c < s.ring.channels(); ++c) {
                put_bytes<double>(out, s.ring.bucket(e, c));
            }
            ++saved;
        }
    }
    std::memcpy(out.data() + count_at, &saved, sizeof saved);
    const auto b = s.base.save();
    put_bytes<std::uint8_t>(out, b.started ? 1 : 0);
    put_bytes<std::int64_t>(out, b.bucket);
    put_bytes<std::int64_t>(out, b.first_bucket);
    put_bytes<double>(out, b.current);
    put_bytes<double>(out, b.mean);
    put_bytes<double>(out, b.var);
    put_bytes<std::uint32_t>(out, b.samples);
}

}  // namespace

std::string rule_meter::encode(std::int64_t now_epoch) {
    std::string body;
    std::uint32_t slots = 0;
    // Each slot is encoded into `one` under its locks and appended to `body` after them, so
    // a lock is never held while the whole body grows.
    std::string one;
    auto take = [&](std::uint8_t kind, std::string_view key, const meter_slot& s) {
        one.clear();
        if (worth_saving(s, baseline_, now_epoch)) {
            encode_slot(one, kind, key, s);
        }
    };
    auto keep = [&] {
        if (!one.empty()) {
            body += one;
            ++slots;
        }
    };
    if (!keyed_) {
        {
            std::lock_guard lock{single_.mu};
            take(slot_single, {}, single_);
        }
        keep();
    } else {
        // A key at a time, each under its shard's read lock and its own lock: a request that
        // adds a key to the shard (which needs the shard's write lock) waits for one key's
        // copy, or for the copy of the shard's key names, never for the whole shard.
        std::vector<std::string> keys;
        for (auto& sh : shards_) {
            keys.clear();
            {
                std::shared_lock read{sh.mu};
                keys.reserve(sh.slots.size());
                for (const auto& [key, slot] : sh.slots) {
                    keys.push_back(key);
                }
            }
            for (const auto& key : keys) {
                {
                    std::shared_lock read{sh.mu};
                    const auto it = sh.slots.find(key);
                    if (it == sh.slots.end()) {
                        continue;  // evicted meanwhile: idle, so nothing to carry over
                    }
                    std::lock_guard lock{it->second->mu};
                    take(slot_key, key, *it->second);
                }
                keep();
            }
        }
        if (overflow_events_.load(std::memory_order_relaxed) > 0) {
            {
                std::lock_guard lock{overflow_.mu};
                take(slot_overflow, {}, overflow_);
            }
            keep();
        }
    }
    if (slots == 0) {
        return {};
    }
    std::string out;
    out.reserve(body.size() + 16);
    put_bytes<std::uint8_t>(out, meter_format);
    put_bytes<std::uint32_t>(out, static_cast<std::uint32_t>(buckets_));
    put_bytes<std::uint8_t>(out, static_cast<std::uint8_t>(channels_));
    put_bytes<std::uint32_t>(out, slots);
    out += body;
    return out;
}

bool rule_meter::restore(std::string_view blob, std::int64_t shift, std::int64_t base_shift, std::int64_t now_epoch,
                         std::string* error) {
    auto fail = [&](std::string why) {
        if (error) {
            *error = std::move(why);
        }
        return false;
    };
    byte_reader r{blob};
    const auto format = r.get<std::uint8_t>();
    const auto buckets = r.get<std::uint32_t>();
    const auto channels = r.get<std::uint8_t>();
    const auto count = r.get<std::uint32_t>();
    if (!r.ok || format != meter_format) {
        return fail("not a saved meter of a format this breakerbox reads");
    }
    if (buckets != buckets_ || channels != channels_) {
        return fail("saved with " + std::to_string(buckets) + " buckets of " + std::to_string(channels) +
                    " channel(s), the rule has " + std::to_string(buckets_) + " of " + std::to_string(channels_));
    }
    // Read and check all of it before anything is restored.
    struct saved_slot {
        std::uint8_t kind;
        std::string key;
        std::int64_t last_epoch;
        bool ring_started;
        std::int64_t head;
        std::vector<std::pair<std::int64_t, std::array<double, 2>>> values;
        baseline_state::image base;
    };
    std::vector<saved_slot> slots;
    slots.reserve(std::min<std::size_t>(count, blob.size() / 40 + 1));
    for (std::uint32_t i = 0; i < count && r.ok; ++i) {
        saved_slot s;
        s.kind = r.get<std::uint8_t>();
        const auto len = r.get<std::uint32_t>();
        s.key = std::string{r.bytes(len)};
        // Saved before keys were written as people can type them back (rules/engine.cpp):
        // under the name the same requests map to now, or their counts would sit under a
        // key no request reaches, and the cap start again from zero.
        if (needs_escape(s.key)) {
            s.key = escape_unshowable(s.key, max_key_bytes);
        }
        s.last_epoch = r.get<std::int64_t>();
        s.ring_started = r.get<std::uint8_t>() != 0;
        s.head = r.get<std::int64_t>();
        const auto nb = r.get<std::uint32_t>();
        if (!r.ok || nb > buckets_ || s.kind > slot_overflow || (s.kind == slot_single) == keyed_) {
            return fail("saved meter slot " + std::to_string(i) + " is malformed");
        }
        for (std::uint32_t b = 0; b < nb && r.ok; ++b) {
            std::pair<std::int64_t, std::array<double, 2>> v{r.get<std::int64_t>(), {0, 0}};
            for (std::size_t c = 0; c < channels_; ++c) {
                v.second[c] = r.get<double>();
            }
            s.values.push_back(v);
        }
        s.base.started = r.get<std::uint8_t>() != 0;
        s.base.bucket = r.get<std::int64_t>();
        s.base.first_bucket = r.get<std::int64_t>();
        s.base.current = r.get<double>();
        s.base.mean = r.get<double>();
        s.base.var = r.get<double>();
        s.base.samples = r.get<std::uint32_t>();
        slots.push_back(std::move(s));
    }
    if (!r.ok || !r.in.empty()) {
        return fail("saved meter is truncated or has trailing bytes");
    }
    // Epochs far outside any clock (a damaged row) would overflow the shifts below.
    constexpr std::int64_t bound = std::int64_t{1} << 52;
    if (shift < -bound || shift > bound || base_shift < -bound || base_shift > bound || now_epoch < -bound ||
        now_epoch > bound) {
        return fail("the saved meter's clock cannot be mapped onto this one");
    }
    for (const auto& s : slots) {
        for (const std::int64_t e : {s.last_epoch, s.head, s.base.bucket, s.base.first_bucket}) {
            if (e < -bound || e > bound) {
                return fail("saved meter key " + s.key + " has an epoch outside any clock");
            }
        }
        for (const auto& [e, v] : s.values) {
            if (e < -bound || e > bound || e > s.head || e <= s.head - static_cast<std::int64_t>(buckets_) ||
                !std::isfinite(v[0]) || !std::isfinite(v[1])) {
                return fail("saved meter key " + s.key + " has a bucket outside its window or a value that is no number");
            }
        }
        if (!std::isfinite(s.base.current) || !std::isfinite(s.base.mean) || !std::isfinite(s.base.var)) {
            return fail("saved meter key " + s.key + " has a baseline that is no number");
        }
    }
    // Every epoch moves by the same rounded-up shift, so no count leaves the window before
    // it would have. The head of a slot saved in the bucket that was current may then be
    // the bucket after ours (the rounding): it stays there (the ring books the next events
    // in their own buckets behind it). Anything later (a wall clock set back while we were
    // down) lands there too, which keeps it for longer, never for less.
    const std::int64_t latest = now_epoch + 1;
    auto moved = [&](std::int64_t e) { return std::min(e + shift, latest); };
    auto apply = [&](const saved_slot& s, meter_slot& slot) {
        slot.last_epoch = std::min(moved(s.last_epoch), now_epoch);
        if (s.ring_started) {
            slot.ring.restart_at(moved(s.head));
            for (const auto& [e, v] : s.values) {
                for (std::size_t c = 0; c < channels_; ++c) {
                    slot.ring.add_to_bucket(moved(e), c, v[c]);
                }
            }
        }
        // A baseline moves as one (its warm-up keeps its length), by the shift rounded down,
        // and never past now: the counts of its current bucket and ours never span more
        // than one bucket of time (rounded up, they could span two: a false trip at twice
        // the usual rate).
        auto b = s.base;
        if (b.started) {
            const std::int64_t d = std::min(base_shift, now_epoch - b.bucket);
            b.bucket += d;
            b.first_bucket += d;
        }
        slot.base.load(b);
    };
    // A key the table has no room for (a snapshot taken while keys came and went can hold
    // more than max_keys): its counts go to the overflow slot, as its next events would.
    // Adds a saved key's counts to a slot that holds some already (locked by the caller).
    auto merge_into = [&](const saved_slot& s, meter_slot& slot) {
        if (s.ring_started) {
            if (!slot.ring.started()) {
                slot.ring.restart_at(moved(s.head));
            } else {
                slot.ring.advance(moved(s.head));
            }
            for (const auto& [e, v] : s.values) {
                for (std::size_t c = 0; c < channels_; ++c) {
                    slot.ring.add_to_bucket(std::min(moved(e), slot.ring.head()), c, v[c]);
                }
            }
        }
        slot.last_epoch = std::max(slot.last_epoch, std::min(moved(s.last_epoch), now_epoch));
    };
    auto merge_into_overflow = [&](const saved_slot& s) {
        std::lock_guard lock{overflow_.mu};
        merge_into(s, overflow_);
        overflow_events_.fetch_add(1, std::memory_order_relaxed);
    };
    // The overflow slot first: keys merged into it below add to it, and would be wiped by
    // restoring it after them.
    std::stable_partition(slots.begin(), slots.end(), [](const saved_slot& s) { return s.kind == slot_overflow; });
    for (const auto& s : slots) {
        if (s.kind == slot_single) {
            std::lock_guard lock{single_.mu};
            apply(s, single_);
        } else if (s.kind == slot_overflow) {
            std::lock_guard lock{overflow_.mu};
            apply(s, overflow_);
            overflow_events_.fetch_add(1, std::memory_order_relaxed);
        } else {
            shard& sh = shard_of(s.key);
            std::unique_lock write{sh.mu};
            auto it = sh.slots.find(s.key);
            if (it != sh.slots.end()) {
                // Two saved keys that are one now (a raw byte and its %XX, written as people
                // read keys since): the counts add up, none is lost.
                std::lock_guard lock{it->second->mu};
                merge_into(s, *it->second);
                continue;
            }
            if (keys_.load(std::memory_order_relaxed) >= max_keys_.load(std::memory_order_relaxed)) {
                write.unlock();
                merge_into_overflow(s);
                continue;
            }
            keys_.fetch_add(1, std::memory_order_relaxed);
            it = sh.slots.emplace(s.key, std::make_unique<meter_slot>(buckets_, channels_)).first;
            std::lock_guard lock{it->second->mu};
            apply(s, *it->second);
        }
    }
    return true;
}

}  // namespace bb::rules
