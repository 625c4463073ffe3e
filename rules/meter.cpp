#include "rules/meter.hpp"

#include <algorithm>
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
    if (samples_ == 0) {
        mean_ = x;
        var_ = 0;
    } else {
        // Incremental EWMA of mean and variance (West 1979 / Finch 2009).
        const double d = x - mean_;
        mean_ += alpha * d;
        var_ = (1 - alpha) * (var_ + alpha * d * d);
    }
    if (samples_ < UINT32_MAX) {
        ++samples_;
    }
}

void baseline_state::roll(std::int64_t epoch, double alpha) {
    if (!started_) {
        started_ = true;
        bucket_ = epoch;
        first_bucket_ = epoch;
        current_ = 0;
        return;
    }
    if (epoch <= bucket_) {
        return;
    }
    fold(current_, alpha);
    // Quiet buckets in a gap are zeros; past a few hundred the EWMA has forgotten
    // everything anyway, so the loop is bounded.
    const std::int64_t gap = std::min<std::int64_t>(epoch - bucket_ - 1, 512);
    for (std::int64_t i = 0; i < gap; ++i) {
        fold(0, alpha);
    }
    bucket_ = epoch;
    current_ = 0;
}

double baseline_state::stddev() const { return std::sqrt(std::max(var_, 0.0)); }

bool baseline_state::armed(std::int64_t epoch, const baseline_spec& spec, std::int64_t bucket_ms) const {
    return started_ && samples_ >= spec.min_samples && (epoch - first_bucket_) * bucket_ms >= spec.warmup.count();
}

double baseline_state::threshold(const baseline_spec& spec) const {
    double t = spec.min_value;
    if (spec.factor) {
        t = std::max(t, mean_ * *spec.factor);
    }
    if (spec.sigma) {
        t = std::max(t, mean_ + *spec.sigma * stddev());
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

}  // namespace bb::rules
