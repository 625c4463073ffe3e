#pragma once
// Breakers: pure state machines, time passed in as `now` (no clock reads, no I/O, no
// logging). A breaker declared in config has one *instance* per key value when its rule
// has a key (`campaign-volume/spring-sale`), or one instance named by its id.
//
// Thread-safety: breaker_registry is safe from many threads at once. The data plane's
// common case, "no instance is anything but closed+auto", is one relaxed atomic load
// (`any_active()`); only when something is open does a request take a shared lock to
// look its instances up. A trip is visible to every worker as soon as trip() returns.
//
// Operator modes overlay the automatic state machine rather than replacing it: the
// automatic state (closed/open/half_open) is kept underneath, so a mode that expires hands
// back to whatever the rules last said. forced_open contains everything and never
// auto-closes (rule trips still open the state underneath); forced_closed and
// metrics_only let everything through and turn trips into *shadow* trips, which are
// recorded (instance_snapshot::shadow_trips) and make `would_contain` true for the
// cooldown, but change no state.
//
// A per-key breaker may also have a breaker-wide instance named by its bare id (an
// operator pausing "campaign-volume" as a whole). It applies to every key: when it
// contains, the key's instance is not consulted; when it is forced_closed/metrics_only,
// every key of that breaker is bypassed (would_contain still reports the key's state).

#include "core/clock.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace bb::breakers {

using std::chrono::milliseconds;

enum class action : std::uint8_t { pause, throttle, sandbox, quarantine, deny };
enum class reset_policy : std::uint8_t { automatic, manual };
enum class state : std::uint8_t { closed, open, half_open };
enum class mode : std::uint8_t { automatic, forced_open, forced_closed, metrics_only };

std::string_view to_string(action a);
std::string_view to_string(state s);
std::string_view to_string(mode m);
std::optional<mode> parse_mode(std::string_view s);  // "auto", "forced_open", ...
// forced_closed and metrics_only: an operator's bypass (trips are recorded, not enforced).
bool is_shadow(mode m);
// Whether an instance in this state and mode contains its traffic: held open by an operator,
// or open or half-open under its own judgement.
inline bool containing(state st, mode md) {
    return md == mode::forced_open || (md == mode::automatic && st != state::closed);
}

struct throttle_config {
    std::uint32_t requests = 1;       // at most this many requests ...
    milliseconds interval{1000};      // ... per interval, the rest are refused with retry-after
};

// The key of the instance that keys past max_instances share (`<breaker>/_overflow`).
inline constexpr std::string_view overflow_key = "_overflow";

struct breaker_config {
    std::string id;
    action act = action::pause;
    reset_policy reset = reset_policy::automatic;
    milliseconds cooldown{30'000};          // open -> half_open after this (automatic reset)
    milliseconds max_cooldown{600'000};     // cap of the exponential backoff
    std::uint32_t half_open_probes = 1;     // probes let through in half_open; all must succeed to close
    milliseconds retry_after{0};            // manual breakers: retry-after to advertise; 0 -> 60s
    std::size_t max_instances = 10'000;     // beyond it, new keys share one overflow instance
    throttle_config throttle;
    std::string sandbox_upstream;           // sandbox action: alternate upstream ("" -> API dry-run switch)
    bool per_key = true;                    // false: one instance for every key ("scope": "breaker")
};

// Why an instance changed state: enough to explain it to a person and to build an incident.
struct trip_cause {
    std::string kind;          // "rule", "manual", "probe", "cooldown" (open -> half_open), "expiry",
                               // "upstream_health", "upstream_rate_limit", "restore"
    std::string actor;         // "rule:<id>" or an operator name
    std::string reason;
    std::string rule;          // rule id when kind == "rule"
    std::string key;           // the key value that crossed
    double value = 0;          // measured value
    double limit = 0;          // limit or threshold
    milliseconds window{0};
    std::string request_id;    // the request that crossed
    time_point onset{};        // first request in the tripping window, when known
};

struct transition {
    std::string instance;      // "campaign-volume/spring-sale"
    std::string breaker;       // "campaign-volume"
    state from = state::closed;
    state to = state::closed;
    mode mode_from = mode::automatic;
    mode mode_to = mode::automatic;
    trip_cause cause;
    time_point at{};
    bool trip = false;  // containment begins (a rule's trip, a reopening, an operator's trip or force)
};

// What the data plane must do with a request that maps to an instance.
struct admission {
    enum class verdict : std::uint8_t {
        allow,        // closed, forced_closed or metrics_only (would_contain tells the shadow verdict)
        probe,        // half_open: this request is a probe; report its result with probe_result()
        contain,      // apply the breaker's action
    };
    verdict v = verdict::allow;
    action act = action::pause;
    bool would_contain = false;         // forced_closed / metrics_only: what auto would have done
    milliseconds retry_after{0};        // for pause (remaining cooldown) and throttle (next slot)
    bool throttled = false;             // allow only because a throttle slot was taken (act == throttle)
    bool slot_taken = false;            // probe of a throttle breaker: it took one of the R slots (pass
                                        // holds_slot to trip(), as for `throttled`)
    std::uint64_t probe_round = 0;      // probe: pass back to probe_result() so a late report from
                                        // an earlier half-open round is not counted
    // probe of a key whose breaker-wide instance is half-open too: the request is the wide
    // instance's probe as well (report to both; its name and round).
    std::string wide_probe;
    std::uint64_t wide_probe_round = 0;
    std::string instance;
    std::shared_ptr<const transition> last_trip;  // the trip that opened it (null if none)
    // The number of the change that made the instance contain as it does (changes_so_far()):
    // a response that reports this containment waits until the saved state holds it (a 202
    // for a hold must not outlive a trip that a crash could lose).
    std::uint64_t change = 0;
};

// Every change of a breaker instance in this process that makes it contain (a trip, a
// reopening, a force, a restore) takes the next number of one counter; this is the last
// number taken. A snapshot() begun after it returned n holds every change numbered n or
// less.
std::uint64_t changes_so_far();
// How many requests throttling instances in this process have let through: the state is
// saved again when it moved (admissions change no state, and a restart must not grant a
// fresh budget).
std::uint64_t throttle_admissions_so_far();

// A point-in-time view of one instance for operators and persistence.
struct instance_snapshot {
    std::string instance;
    std::string breaker;
    std::string key;
    state st = state::closed;
    mode md = mode::automatic;
    std::optional<time_point> mode_expires;
    time_point opened_at{};
    milliseconds cooldown{0};  // current (after backoff)
    std::uint64_t trips = 0;
    std::shared_ptr<const transition> last_trip;
    // The breaker's reset policy when the snapshot was taken; null when not known (a store
    // written before it was saved). An operator's trip left open under the automatic mode
    // is restored held (forced_open) unless it was saved by a self-resetting breaker.
    std::optional<reset_policy> reset;
    std::uint64_t shadow_trips = 0;                      // trips turned away by forced_closed/metrics_only
    std::shared_ptr<const transition> last_shadow_trip;  // what that trip would have done
    // Throttle: the times of the last admissions, oldest first (kept by a reload's hand-over
    // and by the store: a restart after a SIGTERM goes on with the same budget; after a
    // crash, with the admissions of the last save).
    std::vector<time_point> throttle_admissions;
    // Half-open: the probe round under way. In-process only: a reload's hand-over keeps
    // the probes out and their round (one answered after the reload still counts, and no
    // second budget of probes goes out); a restart opens again.
    struct probe_round {
        std::uint64_t round = 0;
        std::uint64_t period_round = 0;
        std::uint32_t issued = 0;
        std::uint32_t succeeded = 0;
        time_point last_probe_at{};
    };
    std::optional<probe_round> probes;

    // Closed and in automatic mode: nothing to contain, nothing to keep.
    bool at_rest() const { return st == state::closed && md == mode::automatic; }
    bool containing() const { return breakers::containing(st, md); }
    // "instance is state/mode", for messages.
    std::string described() const {
        return instance + " is " + std::string{to_string(st)} + "/" + std::string{to_string(md)};
    }
};

namespace detail {
class instance;  // one instance's state machine (breaker.cpp)
}

class breaker_registry {
public:
    // `on_transition` is called for every transition, in order per instance, outside the
    // instance's own lock but not outside every lock: a keyed trip runs it under its
    // breaker's trip lock (shared; set_mode_if_at_rest takes it exclusively), and
    // hand_over under this registry's map lock. So it must not call back into a registry,
    // and must not block or throw (the data plane may be the caller). When two
    // threads change one instance at once, the thread already reporting for it reports
    // both, so a call may return just before its own event has been delivered.
    explicit breaker_registry(std::vector<breaker_config> breakers,
                              std::function<void(const transition&)> on_transition = nullptr);

    const breaker_config* find(std::string_view breaker_id) const;

    // The instance name for a breaker and a key value ("" -> the breaker id itself).
    std::string instance_name(const breaker_config& b, std::string_view key) const;

    // True when any instance is not closed+automatic. One relaxed load.
    // Also true once handed over: the state then lives in the successor, which only
    // admit() (forwarding) can consult.
    bool any_active() const {
        return active_.load(std::memory_order_relaxed) != 0 || forwarding_.load(std::memory_order_relaxed);
    }
    // Whether hand_over() has begun: the successor holds what changes from then on.
    bool handed_over() const { return forwarding_.load(std::memory_order_acquire); }
    // How many instances are not closed+automatic (a gauge for /metrics).
    std::int64_t active_count() const { return active_.load(std::memory_order_relaxed); }

    // What to do with a request mapping to `instance`. Advances time-based state: expiry of
    // operator modes, open -> half_open after the cooldown. Takes a throttle token when the
    // instance throttles. An unknown breaker id is our own fault: contain (fail closed).
    // A keyed instance's breaker-wide instance is consulted too, unless `with_wide` is false:
    // a request that maps to several keys of one breaker asks the wide instance once (a
    // second ask would take a second half-open probe or throttle slot, and with one probe
    // allowed the request would be contained by its own probe every time).
    admission admit(std::string_view instance, time_point now, bool with_wide = true);

    // A rule crossed a line: open the instance (closed/half_open -> open). In forced_closed
    // or metrics_only mode nothing changes and the result says `shadow`.
    struct trip_result {
        bool opened = false;   // this call opened it
        bool shadow = false;   // mode prevented enforcement (would have tripped)
        admission adm;         // how to treat the crossing request itself
    };
    // `holds_slot`: the request already took a throttle slot of this instance (admit() said
    // `throttled`); a trip that finds it still open then lets it through on that slot
    // instead of taking a second one.
    trip_result trip(std::string_view breaker_id, std::string_view key, trip_cause cause, time_point now,
                     bool holds_slot = false);

    // A half-open probe finished. Success closes the instance once every probe succeeded;
    // a failure reopens it with the cooldown doubled (capped at max_cooldown).
    // `round` is admission::probe_round (0: count the report whatever the round).
    void probe_result(std::string_view instance, bool success, time_point now, std::uint64_t round = 0);
    // A probe that never reached the upstream (another breaker contained the request, it was
    // held, the client left, our own pool was full) says nothing either way: its slot goes
    // back and the next request probes instead. A stale `round` is ignored.
    void cancel_probe(std::string_view instance, std::uint64_t round);

    // What reset or set_mode did. False when the breaker id is unknown, or when the key has
    // no instance of its own because the breaker was full and its traffic goes to the
    // overflow instance: then `overflow` names that instance and nothing changed, since
    // resetting or setting the mode of the overflow instance would do it for every key in it.
    struct op_result {
        bool known = false;
        std::string overflow;
        explicit operator bool() const { return known && overflow.empty(); }
    };

    // Operator actions. Return false when the breaker id is unknown. `instance` is an
    // instance name or a bare breaker id (the breaker-wide instance of a per-key breaker).
    // manual_trip enforces: it ends forced_closed/metrics_only; a key of a full breaker
    // trips the overflow instance (fail closed). reset returns the instance to
    // closed+automatic with the base cooldown, whatever its mode.
    bool manual_trip(std::string_view instance, std::string actor, std::string reason, time_point now);
    op_result reset(std::string_view instance, std::string actor, std::string reason, time_point now);
    op_result set_mode(std::string_view instance, mode m, std::optional<milliseconds> expires_in, std::string actor,
                       std::string reason, time_point now);

    // For a change applied as metrics_only: sets bypass mode `m` (forced_closed or
    // metrics_only) on the breaker-wide instance of `breaker_id` only while every instance of
    // the breaker is at rest, atomically with respect to trips: a trip is either seen here
    // (nothing is set) or made after the mode is set (a shadow trip). A check of snapshot()
    // followed by set_mode() lets a key tripped between the two go unenforced under the
    // breaker-wide bypass. Returns "" when set, else "instance is state/mode" (the instance
    // that contains), or "unknown breaker".
    std::string set_mode_if_at_rest(std::string_view breaker_id, mode m, std::string actor, std::string reason,
                                    time_point now);

    // Whether an operator suspended enforcement for `instance`: its mode, or its breaker-wide
    // instance's, is forced_closed or metrics_only. For breakers whose rule acts by itself
    // (deny) rather than through admit().
    bool enforcement_suspended(std::string_view instance, time_point now) const;

    // Whether `instance` holds traffic back now, read only (no probe taken, nothing
    // advanced): it, the overflow instance deciding for it (as get() says), or its
    // breaker-wide instance is forced open, or open or half-open under automatic mode. A
    // bypass of the wide instance is not read as letting it through: for a caller that must
    // fail closed (a release of what a sandbox held). False for an unknown breaker.
    bool holds_back(std::string_view instance, time_point now) const;

    std::vector<instance_snapshot> snapshot(time_point now) const;
    // The instance that decides for `instance`: its own, or, for a key without one while the
    // overflow instance contains, the overflow instance (as admit() sees it).
    std::optional<instance_snapshot> get(std::string_view instance, time_point now) const;

    // Restores persisted instances at start, before the first request (no transitions
    // are reported for them except kind "restore").
    // Snapshots hold steady_clock time points, which mean nothing in another process: the
    // persistence layer must rebase opened_at/mode_expires onto this process's clock
    // (opened_at later than `now` is clamped to `now`).
    // `at_start`: from the store as the process starts (an open instance whose cooldown
    // ended meanwhile waits a whole cooldown more: a probe may have gone out unsaved), not
    // a reload's hand-over or kept state.
    void restore(const std::vector<instance_snapshot>& saved, time_point now, bool at_start = false);

    // A reload changed the breakers and built `next`: every instance of a breaker that
    // `next` also has moves there (its state restored into `next`), atomically with respect
    // to concurrent operations. From then on every operation on such a breaker made through
    // this registry (requests still finishing on the old config) is forwarded to `next`, so
    // no trip, reset or probe result is lost to the swap. Breakers `next` lacks stay here
    // (kept() reads them) until a later reload configures them again and this registry is
    // handed over to that one's too: call again with each later registry, and only breakers
    // still here move.
    void hand_over(std::shared_ptr<breaker_registry> next, time_point now);

    // The breakers this registry still holds itself (no hand_over() took them) and the state
    // of their instances, at rest ones included: after a hand-over, the breakers a reload
    // dropped, which requests still finishing on the old config can trip or reset.
    struct kept_state {
        std::vector<std::string> breakers;
        std::vector<instance_snapshot> instances;
    };
    kept_state kept(time_point now) const;

    // Applies every due time-based change (mode expiry, open -> half_open) to every
    // instance, so their transitions are reported on time even when no request arrives.
    // admit() does the same lazily for the instance it looks at. Call from a timer.
    void tick(time_point now);

private:
    using instance_ptr = std::shared_ptr<detail::instance>;
    struct string_hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
    };
    // A configured breaker and its instances.
    struct slot {
        breaker_config cfg;
        // Guarded by mutex_. Keyed by the instance name; holds the keyed instances, the
        // breaker-wide instance (named by the id) and the overflow instance.
        std::unordered_map<std::string, instance_ptr, string_hash, std::equal_to<>> instances;
        std::size_t keyed = 0;  // keyed instances (the bound); wide and overflow not counted
        // Set (under mutex_, exclusively) when hand_over moved this breaker to `successor`,
        // which is set first and never changes after.
        std::atomic<bool> handed_over{false};
        std::shared_ptr<breaker_registry> successor;
        // A keyed trip holds it shared from reading the breaker-wide mode to its own
        // transition; set_mode_if_at_rest holds it exclusively. Taken before mutex_ and the
        // instances' mutexes, never while holding them.
        mutable std::shared_mutex trip_mu;
    };

    slot* find_slot(std::string_view breaker_id) const;
    // "id/key" -> (slot or null for an unknown id, key as given; "" for a bare id).
    std::pair<slot*, std::string_view> split(std::string_view instance) const;
    // Callers hold mutex_ (shared is enough). exact: the key's own instance or null;
    // lookup: for an unknown key, the overflow instance when there is one.
    instance_ptr exact(const slot& s, std::string_view key) const;
    instance_ptr lookup(const slot& s, std::string_view key) const;
    // The overflow instance when `key` has no instance of its own and the overflow instance
    // is not at rest (so admit() sends the key there). Takes the map lock itself.
    instance_ptr overflowed(const slot& s, std::string_view key, time_point now) const;
    // Creates the instance if needed; at max_instances evicts an idle one or falls back
    // to the overflow instance.
    // `restoring`: a saved instance comes back as it was, even beside an active overflow
    // instance (which otherwise keeps every key without an instance of its own).
    instance_ptr get_or_create(slot& s, std::string_view key, bool restoring = false);
    template <class Op, class Forward>
    bool on_existing(std::string_view name, Op&& op, Forward&& forward);
    // The views of the instances of every slot `take(id, slot)` accepts (called under the
    // map lock), evicted and moved ones left out.
    template <class Take>
    std::vector<instance_snapshot> views_of(time_point now, Take&& take) const;

    // Configured breakers; the map itself never changes after construction, so it is read
    // without a lock (std::map nodes are stable, instances keep a reference to their config).
    mutable std::map<std::string, slot, std::less<>> slots_;
    // Guards only the *set* of instances of every slot. Each instance's state has its own
    // mutex: a request for one key never waits on another key's trip, and a shared lock is
    // enough to find an instance. We lock rather than go lock-free because a transition
    // touches several fields that must change together (state, cooldown, probes, counter),
    // and exactness (probes, throttle slots, the active counter) matters more than speed.
    mutable std::shared_mutex mutex_;
    std::function<void(const transition&)> on_transition_;
    // Every registry hand_over() was called with, in order (guarded by mutex_): a snapshot
    // through this one includes theirs.
    std::vector<std::shared_ptr<breaker_registry>> successors_;
    std::atomic<bool> forwarding_{false};  // hand_over has begun
    // Instances that are not closed+automatic; changed under the instance's mutex on every
    // transition that crosses that line, so at rest it is exact.
    std::atomic<std::int64_t> active_{0};
};

}  // namespace bb::breakers
