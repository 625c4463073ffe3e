#pragma once
// The rules engine: per request, meters what the request does and says whether it crosses a
// line. Pure: no sockets, no logging, no clock reads (`now` is a parameter).
//
// Thread-safety: engine::evaluate, record_response, read and stats are safe from any number
// of threads at once. Caps are exact under concurrency: each (rule, key) is checked and
// reserved in one step under that key's lock (see meter_slot), so a cap of N admits exactly
// N units. Meter state lives in rule_meter objects shared by reference count; a new engine
// built with `previous` adopts the meters of every rule whose definition is unchanged, so a
// config reload never resets them, and both engines stay exact while requests on the old
// config drain.

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/clock.hpp"
#include "rules/meter.hpp"
#include "rules/request.hpp"
#include "rules/rule_set.hpp"

namespace bb::rules {

class duplicate_counter;  // rules/guardrails.hpp

enum class verdict : std::uint8_t {
    allow,     // no rule violated
    violated,  // a rule's condition is crossed: trip `trips`
    rejected,  // the request is malformed for a rule that must read it (body not JSON)
};
std::string_view to_string(verdict v);

// Everything needed to explain a decision. Strings are only filled when outcome != allow,
// so the allow path does not allocate.
struct decision {
    verdict outcome = verdict::allow;
    std::string rule;                // rule id
    std::string failure_mode;        // failure mode id
    std::string failure_mode_title;
    severity sev = severity::sev4;
    condition_kind condition = condition_kind::limit;
    std::string key;                 // key value ("" for an unkeyed rule; past max_keys: see overflow_key)
    bool overflow_key = false;
    std::string measure;             // the measure expression, e.g. "count($.inputs[*])"
    double measured = 0;             // value that crossed: window total incl. this request, ratio, avg, bucket total
    double limit = 0;                // limit, ratio max, or the baseline threshold
    double baseline_mean = 0;        // baseline rules
    double baseline_stddev = 0;
    double volume = 0;               // ratio/avg denominator
    std::chrono::milliseconds window{0};
    std::string trips;               // breaker id
    std::string breaker_instance;    // "trips/key" for keyed rules, else "trips"
    std::string reason;              // one line for people and for the x-breakerbox JSON error

    bool allowed() const { return outcome == verdict::allow; }
};

// What evaluate() booked for a request it allowed: the amounts in the meters and the
// duplicates guards' sends, so that a request that then never reaches the upstream (its
// connection refused, the pool full, the sandbox switch impossible, the hold refused) can
// be taken off again (engine::release). Reused across requests: evaluate() refills it.
struct evaluation_receipt {
    struct meter_booking {
        std::uint32_t rule = 0;
        std::string key;
        std::int64_t epoch = 0;  // bucket the amount was booked in
        double a = 0;
        double b = 0;
        bool overflow = false;
    };
    struct guard_send {  // a duplicates guard's booking (rules/guardrails.hpp guard_booking)
        std::uint32_t rule = 0;
        std::uint64_t key = 0;
        std::int64_t ms = 0;
    };
    std::vector<meter_booking> meters;
    std::size_t meter_count = 0;  // meters[0, meter_count) (the rest is kept for reuse)
    std::vector<guard_send> guards;
    bool empty() const { return meter_count == 0 && guards.empty(); }
    void clear() {
        meter_count = 0;
        guards.clear();
    }
};

// Current state of one key of one rule, for the admin API and tests.
struct meter_reading {
    double value = 0;        // what the condition compares: window sum, avg, ratio, current bucket
    double numerator = 0;    // window total of the measure
    double denominator = 0;  // avg/ratio denominator
    double baseline_mean = 0;
    double baseline_stddev = 0;
    std::uint32_t baseline_samples = 0;
};

class engine {
public:
    // `previous`: the engine being replaced on reload; meters of unchanged rules (same id
    // and fingerprint) are adopted from it. It may keep serving while this one starts.
    explicit engine(std::shared_ptr<const rule_set> rules, const engine* previous = nullptr);

    // Checks every rule of the request's route, in config order, reserving the request's
    // amount on each windowed rule. Returns allow, or the first violated/rejected rule;
    // then nothing of this request stays booked on any rule (earlier reservations are
    // undone).
    decision evaluate(const request_view& req, time_point now);

    // The same, where some rules' breakers may be suspended by an operator (forced_closed or
    // metrics_only): a violation for which suspended(d) says true is not enforced. It goes
    // to *shadowed (the first one) and the other rules still check and book the request, as
    // if the suspended rule were not there; a shadowed rule must not let the request past
    // every later cap. suspended may be null (nothing is suspended).
    // `receipt` (if given) is cleared, and filled with what an allowed request booked.
    decision evaluate(const request_view& req, time_point now, const std::function<bool(const decision&)>* suspended,
                      decision* shadowed, evaluation_receipt* receipt = nullptr);
    // Takes off what evaluate() booked for a request that was then never sent (so it does not
    // count against caps, and its client's retry is no duplicate), and clears the receipt.
    // Call on the engine that evaluated it. Amounts whose bucket has left the window are gone.
    void release(evaluation_receipt& receipt);
    // Takes off only the duplicates guards' sends: the upstream answered that it did not take
    // the request (a 4xx: rate limited, refused), so its client's retry is no repeat of a
    // mail that went out. The caps keep their amounts (an agent retrying without end is
    // still held to them).
    void release_guard_sends(evaluation_receipt& receipt);

    // Books response-side facts (status classes, latency, response JSON) for the request's
    // rules. Returns the first response-side rule the response pushed over its line, else allow.
    decision record_response(const request_view& req, const response_view& resp, time_point now);

    // A breaker instance going half-open, or reset by an operator: the response-side rules
    // that trip `breaker` forget what they counted for it, as resilience4j starts a fresh
    // window. Otherwise the failures that opened it are still in the window, and its probe,
    // judged by them, reopens it at once, every cooldown, until they age out. `key`: the instance's key,
    // or nullopt for an instance that any key of those rules could have tripped (the
    // breaker-wide one, the one keys past max_instances share): every key is cleared.
    // Request-side rules keep their counts: a cap is a budget, not a health record.
    void forget_response_counts(std::string_view breaker, std::optional<std::string_view> key);

    // The breakers this request maps to: for every rule of its route that matches it and
    // trips a breaker, the rule index and its key value. Reads no meter and books nothing;
    // the data plane calls it only while some breaker instance is active. A rule whose key
    // needs a body that is not valid JSON is skipped (evaluate() rejects that request).
    struct rule_key {
        std::uint32_t rule = 0;
        std::string key;
    };
    void keys_for(const request_view& req, std::vector<rule_key>& out) const;

    // nullopt if the rule is unknown or the key is not tracked.
    std::optional<meter_reading> read(std::string_view rule_id, std::string_view key, time_point now) const;
    std::optional<meter_stats> stats(std::string_view rule_id) const;
    // A duplicates guard rule's table: pairs tracked, pairs forgotten to make room, and new
    // pairs not tracked at all because every slot of their shard was in its window (a
    // max_keys too small for the traffic: a loop among them goes uncaught). nullopt for other
    // rules.
    struct duplicates_stats {
        std::size_t pairs = 0;
        std::uint64_t evictions = 0;
        std::uint64_t untracked = 0;
    };
    std::optional<duplicates_stats> guard_table_stats(std::string_view rule_id) const;
    // The `n` keys of a windowed limit rule with the highest current window totals, highest
    // first (for /metrics: bounded however many keys the rule tracks).
    std::vector<std::pair<std::string, double>> top_values(std::string_view rule_id, std::size_t n,
                                                           time_point now) const;
    // Approximate memory one active key of the rule costs (for capacity planning).
    std::optional<std::size_t> bytes_per_key(std::string_view rule_id, std::size_t key_len = 16) const;

    const rule_set& rules() const { return *set_; }
    const std::shared_ptr<const rule_set>& rules_ptr() const { return set_; }
    // Rule meters across a restart (store: rule_meters). save_meters(): one entry per rule
    // whose meter holds anything (rule::fingerprint says which definition it belongs to), or
    // whose duplicates table holds a send in its window at `now` (rule::counter_fingerprint).
    struct saved_meter {
        std::string rule_id;
        std::uint64_t fingerprint = 0;
        std::string state;  // rule_meter::encode() or duplicate_counter::encode()
        // restore_meters(): what to add to a steady-clock time of the process that saved it
        // to get one of this process's (the store works it out from the clocks of the save).
        std::chrono::milliseconds offset{0};
    };
    std::vector<saved_meter> save_meters(time_point now) const;
    // Before the first request: restores every saved meter whose rule is here with the same
    // fingerprint (a changed rule starts from zero, as a reload would start it). Returns
    // the ids of the rules restored; a saved meter that cannot be read is an error (*error
    // names the rule) and the caller must not start (caps would start from zero).
    std::optional<std::vector<std::string>> restore_meters(const std::vector<saved_meter>& saved, time_point now,
                                                           std::string* error);

    // Whether this engine shares the meter of `rule_id` with `other` (reload adoption).
    bool shares_meter_with(const engine& other, std::string_view rule_id) const;

private:
    // The fingerprint a rule's saved counts are kept under (save_meters/restore_meters).
    std::uint64_t saved_fingerprint(std::size_t rule_index) const;
    // Takes bookings off the meters and the duplicates counters (rollback, release).
    void undo(std::span<const evaluation_receipt::meter_booking> meters,
              const std::vector<evaluation_receipt::guard_send>& guards);

    std::shared_ptr<const rule_set> set_;
    std::vector<std::shared_ptr<rule_meter>> meters_;  // parallel to set_->rules
    // Duplicates guards' counters, parallel to set_->rules (null for other rules); adopted
    // on reload like meters.
    std::vector<std::shared_ptr<duplicate_counter>> dups_;
    // Meters of rules a reload removed or changed, by rule id and fingerprint, newest last
    // (at most kept_max): a rollback, or a rule removed and added back, finds its counts
    // again instead of a fresh cap. Their windows go on expiring as time passes.
    struct kept_meter {
        std::string id;
        std::uint64_t fingerprint = 0;
        std::shared_ptr<rule_meter> meter;
    };
    static constexpr std::size_t kept_max = 64;
    std::vector<kept_meter> kept_;
};

}  // namespace bb::rules
