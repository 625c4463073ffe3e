#include "breakers/breaker.hpp"

#include <algorithm>
#include <deque>
#include <mutex>

namespace bb::breakers {

namespace {

constexpr milliseconds default_manual_retry{60'000};
// A request turned away while the probes are out: they finish within an upstream timeout.
constexpr milliseconds half_open_retry{1'000};

milliseconds until(time_point t, time_point now) {
    return t <= now ? milliseconds{0} : std::chrono::ceil<milliseconds>(t - now);
}

std::string format_ms(milliseconds d) {
    if (d.count() % 1000 == 0) {
        return std::to_string(d.count() / 1000) + "s";
    }
    return std::to_string(d.count()) + "ms";
}

std::atomic<std::uint64_t> changes_made{0};
std::atomic<std::uint64_t> throttle_admissions_made{0};

trip_cause cause_of(std::string kind, std::string actor, std::string reason) {
    trip_cause c;
    c.kind = std::move(kind);
    c.actor = std::move(actor);
    c.reason = std::move(reason);
    return c;
}

}  // namespace

std::uint64_t changes_so_far() { return changes_made.load(std::memory_order_acquire); }
std::uint64_t throttle_admissions_so_far() { return throttle_admissions_made.load(std::memory_order_relaxed); }

namespace detail {

// One instance's state machine. Every member after `mutex_` is guarded by it; the registry
// takes the lock, calls the operations below, unlocks, then calls deliver().
class instance {
public:
    instance(const breaker_config& cfg, std::string name, std::string key, bool keyed, bool report,
             std::atomic<std::int64_t>& active)
        : cfg_(cfg), name_(std::move(name)), key_(std::move(key)), keyed_(keyed), report_(report),
          active_(active), cooldown_(cfg.cooldown) {}

    const std::string& name() const { return name_; }
    const std::string& key() const { return key_; }
    bool keyed() const { return keyed_; }
    std::mutex& mutex() { return mutex_; }

    // --- the caller holds mutex() for everything below ---

    bool evicted() const { return evicted_; }
    // Handed over to a successor registry (a reload changed the breakers): its state now
    // lives there, and whoever finds it moved forwards the operation.
    bool moved() const { return moved_; }
    void mark_moved() { moved_ = true; }
    bool shadowing() const { return is_shadow(md_); }
    // Contained by an operator's hand: forced_open, or open since a manual trip (a breaker
    // reset by hand keeps the automatic mode when tripped).
    bool operator_contained() const {
        return md_ == mode::forced_open ||
               (st_ != state::closed && !is_shadow(md_) && last_trip_ && last_trip_->cause.kind == "manual");
    }

    // Not closed+automatic as of its last change (what the active counter counts).
    bool active() const { return counted_; }

    // Removal from the registry: only an idle instance with nothing left to report.
    bool evict_if_idle() {
        if (counted_ || delivering_ || !pending_.empty()) {
            return false;
        }
        evicted_ = true;
        return true;
    }

    // Whether an expiring mode gives an operator's trip back as forced_open (advance(); view()
    // reports the same before advance() has run, so a save in between keeps the trip held).
    bool hands_trip_back() const {
        return md_ != mode::forced_open && cfg_.reset == reset_policy::automatic && st_ != state::closed &&
               last_trip_ && last_trip_->cause.kind == "manual" && !auto_chosen_;
    }

    // Applies what time alone changes: mode expiry, then open -> half_open, then restarts
    // a half-open round whose probes never reported (a cancelled request must not wedge it).
    void advance(time_point now) {
        if (md_ != mode::automatic && mode_expires_ && now >= *mode_expires_) {
            const auto at = std::max(*mode_expires_, last_at_);
            const std::string reason = "mode " + std::string{to_string(md_)} + " expired";
            mode_expires_.reset();
            shadow_until_.reset();
            // A timed bypass (forced_closed, metrics_only) over an operator's trip of a
            // breaker that resets by itself gives the trip back as manual_trip held it:
            // forced_open until a reset. Under automatic its old cooldown would half-open it
            // at once and one probe would close what the operator opened. (A timed
            // forced_open that ends is the operator's choice of automatic.)
            const bool hand_trip_back = hands_trip_back();
            change(st_, hand_trip_back ? mode::forced_open : mode::automatic,
                   cause_of("expiry", "expiry", hand_trip_back ? reason + "; the operator's trip holds again" : reason),
                   at, false);
        }
        if (md_ == mode::automatic && st_ == state::open && cfg_.reset == reset_policy::automatic &&
            now >= opened_at_ + cooldown_) {
            const auto at = std::max(opened_at_ + cooldown_, last_at_);
            change(state::half_open, md_,
                   cause_of("cooldown", "cooldown",
                            "cooldown " + format_ms(cooldown_) + " elapsed; letting " +
                                std::to_string(probes()) + " probe(s) through"),
                   at, false);
        }
        if (md_ == mode::automatic && st_ == state::half_open && issued_ > succeeded_ &&
            now >= last_probe_at_ + cooldown_) {
            new_round();
        }
    }

    // The verdict for one request (advance() first). Takes a probe or a throttle slot.
    admission decide(time_point now) {
        admission a = base();
        switch (md_) {
        case mode::forced_closed:
        case mode::metrics_only:
            a.would_contain = would_contain(now);
            return a;
        case mode::forced_open:
            a.retry_after = mode_expires_ ? until(*mode_expires_, now) : manual_retry();
            return contain(a, now);
        case mode::automatic:
            break;
        }
        switch (st_) {
        case state::closed:
            return a;
        case state::open:
            a.retry_after = cfg_.reset == reset_policy::manual ? manual_retry() : until(opened_at_ + cooldown_, now);
            return contain(a, now);
        case state::half_open:
            if (issued_ < probes()) {
                // A probe of a throttle breaker takes a slot as any request it admits: R per
                // interval holds in half-open too (probes came on top of R). With no slot
                // free it waits as the others do. (R of 0 admits nothing, probes aside, or
                // the breaker could never close.)
                if (cfg_.act == action::throttle && cfg_.throttle.requests > 0) {
                    if (!take_throttle_slot(now, a.retry_after)) {
                        a.v = admission::verdict::contain;
                        return a;
                    }
                    a.slot_taken = true;
                }
                ++issued_;
                last_probe_at_ = now;
                a.v = admission::verdict::probe;
                a.probe_round = round_;
                return a;
            }
            a.retry_after = half_open_retry;
            return contain(a, now);
        }
        return a;
    }

    // What auto would do, without taking a probe or a throttle slot.
    bool would_contain(time_point now) const {
        if (md_ == mode::forced_open || (shadow_until_ && now < *shadow_until_)) {
            return true;
        }
        switch (st_) {
        case state::closed:
            return false;
        case state::open:
            return cfg_.reset == reset_policy::manual || now < opened_at_ + cooldown_;
        case state::half_open:
            return issued_ >= probes();
        }
        return false;
    }

    void cancel_probe(std::uint64_t round) {
        if (st_ == state::half_open && round == round_ && issued_ > 0) {
            --issued_;
        }
    }

    struct trip_outcome {
        bool opened = false;
        bool shadow = false;
    };
    // `shadow`: a breaker-wide bypass covers this instance even if its own mode is automatic.
    trip_outcome trip(trip_cause cause, time_point now, bool shadow) {
        if (shadow || is_shadow(md_)) {
            auto t = make(st_, state::open, md_, md_, std::move(cause), now);
            ++shadow_trips_;
            last_shadow_trip_ = std::move(t);
            shadow_until_ = cfg_.reset == reset_policy::manual ? time_point::max() : now + cooldown_;
            return {false, true};
        }
        shadow_until_.reset();  // enforced now; an earlier shadow trip says nothing more
        if (st_ == state::open) {
            return {};
        }
        if (st_ == state::half_open) {
            cooldown_ = backoff(cooldown_);  // it failed again right after the cooldown
        }
        opened_at_ = now;
        change(state::open, md_, std::move(cause), now, true);
        return {true, false};
    }

    void probe_result(bool success, time_point now, std::uint64_t round) {
        if (md_ != mode::automatic || st_ != state::half_open) {
            return;
        }
        // A probe of an earlier round of this half-open period (a new round began while it
        // was slow) counts as any probe: its failure is the upstream failing a probe, and
        // reopens (else a probe slower than the cooldown would let a new probe through every
        // cooldown, and never reopen), and its success is the upstream answering one (else
        // an upstream slower than the cooldown, every probe of it a success, would stay
        // half-open, refusing all other traffic, for as long as it is slow). One of an
        // earlier half-open period, before the breaker reopened, decides nothing now.
        // (Nor one numbered past this instance's rounds: a round of the instance a reload
        // handed this one over from, whose numbering this one did not carry on.)
        if (round != 0 && round != round_ && (round < period_round_ || round > round_)) {
            return;
        }
        if (success) {
            if (++succeeded_ >= probes()) {
                cooldown_ = cfg_.cooldown;
                change(state::closed, md_,
                       cause_of("probe", "probe", std::to_string(probes()) + " probe(s) succeeded"), now, false);
            }
            return;
        }
        cooldown_ = backoff(cooldown_);
        opened_at_ = now;
        change(state::open, md_, cause_of("probe", "probe", "probe failed; cooldown now " + format_ms(cooldown_)),
               now, false);
    }

    // An operator's trip is always enforced (a shadow mode gives way) and holds until an
    // operator resets it: a breaker that resets by itself is put in forced_open without an
    // expiry, else its cooldown would let a probe through and one success would close it
    // (an upstream/<name> breaker tripped for a vendor incident, say).
    void manual_trip(trip_cause cause, time_point now) {
        const bool hold = cfg_.reset == reset_policy::automatic;
        const mode to = hold ? mode::forced_open : is_shadow(md_) ? mode::automatic : md_;
        const bool opens = st_ != state::open;
        // Open already by a rule: the trip is still recorded as the operator's, so it holds
        // as one (a later bypass mode gives way to it, a changed reset policy keeps it).
        const bool by_hand = last_trip_ && last_trip_->cause.kind == "manual";
        if (!opens && to == md_ && !(hold && mode_expires_) && by_hand) {
            return;
        }
        if (to != md_ || hold) {
            mode_expires_.reset();
            shadow_until_.reset();
        }
        if (opens) {
            opened_at_ = now;
        }
        auto_chosen_ = false;  // a new hold
        change(state::open, to, std::move(cause), now, opens || !by_hand);
    }

    // Back to closed+automatic with the base cooldown: "make it normal again".
    void reset(trip_cause cause, time_point now) {
        shadow_until_.reset();
        auto_chosen_ = false;  // the incident is over: what the operator chose for it too
        mode_expires_.reset();
        cooldown_ = cfg_.cooldown;
        if (st_ != state::closed || md_ != mode::automatic) {
            change(state::closed, mode::automatic, std::move(cause), now, false);
        }
    }

    void set_mode(mode m, std::optional<milliseconds> expires_in, trip_cause cause, time_point now) {
        std::optional<time_point> expires;
        if (m != mode::automatic && expires_in) {
            expires = now + *expires_in;
        }
        if (m == md_ && expires == mode_expires_) {
            return;
        }
        if (!is_shadow(m)) {
            shadow_until_.reset();
        }
        mode_expires_ = expires;
        // The operator let the breaker recover by itself: a later timed bypass ending gives
        // back that choice, not the hold of the trip before it.
        if (m == mode::automatic) {
            auto_chosen_ = true;
        } else if (m == mode::forced_open) {
            auto_chosen_ = false;  // a new hold by hand
        }
        const bool trips = m == mode::forced_open && md_ != mode::forced_open;
        change(st_, m, std::move(cause), now, trips);
    }

    // forced_open landing on an instance that holds for others too (the overflow instance of
    // a full breaker): never shortens a forced_open already there. The later end wins, and
    // no end beats any.
    void force_open_at_least(std::optional<milliseconds> expires_in, trip_cause cause, time_point now) {
        if (md_ == mode::forced_open && (!mode_expires_ || (expires_in && now + *expires_in <= *mode_expires_))) {
            return;
        }
        set_mode(mode::forced_open, expires_in, std::move(cause), now);
    }

    // Several snapshots can land on one instance (keys folded together when a breaker's
    // scope changed from key to breaker, or past max_instances into the overflow instance):
    // they are merged so that the instance contains whatever any of them contained, now and
    // after an operator's mode expires.
    // `at_start`: restored from the store when the process starts (not handed over by a
    // reload).
    // A saved cooldown (backed off, perhaps) under this config: within what it allows now (a
    // reload that lowered max_cooldown from 1h to 5m must not leave an open instance waiting
    // the hour), and at least its cooldown now (an operator who raised it from 30s to 1h
    // while the breaker is open must not see it half-open after 30s).
    milliseconds restored_cooldown(const instance_snapshot& s) const {
        return s.cooldown > milliseconds{0}
                   ? std::min(std::max(s.cooldown, cfg_.cooldown), std::max(cfg_.max_cooldown, cfg_.cooldown))
                   : cfg_.cooldown;
    }
    static std::string restored_why(bool at_start) {
        return at_start ? "restored at start" : "carried over by a config change";
    }
    void restore(const instance_snapshot& s, time_point now, bool at_start) {
        if (s.at_rest()) {
            return;
        }
        if (counted_) {
            merge(s, now, at_start);
            return;
        }
        opened_at_ = std::min(s.opened_at, now);
        cooldown_ = restored_cooldown(s);
        trips_ = s.trips;
        last_trip_ = s.last_trip;
        shadow_trips_ = s.shadow_trips;
        last_shadow_trip_ = s.last_shadow_trip;
        mode_expires_ = s.md == mode::automatic ? std::nullopt : s.mode_expires;
        // A reload handing a throttling instance over (or a restart) keeps the admissions it
        // counted: no fresh budget (up to R more requests) on every reload or deploy.
        take_admissions(s, now);
        // A probe in flight died with the process: open again for a whole cooldown from now
        // (its result, which may have been a failure, is lost: a crash loop must not send a
        // fresh round of probes at every start). Handed over by a reload (the round comes
        // with it), the round goes on.
        // Also a half-open round handed to a breaker that now resets only by hand (a
        // reload changed its policy): no probe may close it.
        const bool probe_lost = s.st == state::half_open && (!s.probes || cfg_.reset == reset_policy::manual);
        const state st = probe_lost ? state::open : s.st;
        if (probe_lost || (at_start && s.st == state::open && opened_at_ + cooldown_ <= now)) {
            // Also an open instance whose cooldown ended before the start: a probe may have
            // gone out (and crashed the process, or its result been lost) before the
            // half-open state was saved; a crash loop must not probe at every start.
            opened_at_ = now;
        }
        // Under auto after an operator's trip on a breaker that resets by itself: the trip
        // held it forced_open, so auto was the operator's choice (set back, or a forced_open
        // that expired), which a later bypass's end keeps (hands_trip_back).
        auto_chosen_ = s.md == mode::automatic && !held_by_hand(s) && s.last_trip && s.last_trip->cause.kind == "manual";
        change(st, held_by_hand(s) ? mode::forced_open : s.md, cause_of("restore", "restore", restored_why(at_start)), now,
               false);
        if (st_ == state::half_open && s.probes) {
            round_ = s.probes->round;
            period_round_ = s.probes->period_round;
            issued_ = s.probes->issued;
            succeeded_ = s.probes->succeeded;
            last_probe_at_ = s.probes->last_probe_at;
        }
    }

    // An operator's trip saved open under the automatic mode by a breaker that reset by
    // hand then (or by one whose policy the store did not record), on a breaker that now
    // resets by itself: held as manual_trip holds it there, so a changed reset policy does
    // not let a probe close what an operator opened. Saved by a self-resetting breaker, the
    // automatic mode is the operator's own choice (set back to auto, or a forced_open that
    // expired): its probes decide, as before the restart.
    bool held_by_hand(const instance_snapshot& s) const {
        return cfg_.reset == reset_policy::automatic && s.reset != reset_policy::automatic &&
               s.md == mode::automatic && s.st != state::closed && s.last_trip && s.last_trip->cause.kind == "manual";
    }

    // The state and the mode merge separately. State: open over closed; of two open, the
    // later reopening. Mode: forced_open over everything (the latest expiry, or none); a
    // bypass mode (forced_closed, metrics_only) only while no snapshot's trip is enforced
    // under the automatic mode, so a key's bypass never lets another key's trip through.
    void merge(const instance_snapshot& s, time_point now, bool at_start) {
        const state got = s.st == state::half_open ? state::open : s.st;
        const milliseconds cooldown = restored_cooldown(s);
        // A half-open round does not survive a merge, nor, at a start, an ended cooldown: a
        // whole cooldown from now (see restore).
        const time_point opened = s.st == state::half_open || (at_start && s.st == state::open && s.opened_at + cooldown <= now)
                                      ? now
                                      : std::min(s.opened_at, now);
        const bool enforced_here = st_ != state::closed && md_ == mode::automatic;
        const bool enforced_there = got != state::closed && s.md == mode::automatic;
        state st = st_;
        // An operator's trip is enforced under a bypass of the breaker's wide instance (see
        // operator_contained()): folded with a rule's trip, it stays the trip of record
        // whichever reopened later, or the bypass would let the operator's key through.
        const auto manual = [](const std::shared_ptr<const transition>& t) {
            return t && t->cause.kind == "manual";
        };
        const bool manual_here = st_ != state::closed && manual(last_trip_);
        const bool manual_there = got != state::closed && manual(s.last_trip);
        if (got != state::closed && (st_ == state::closed || opened + cooldown > opened_at_ + cooldown_)) {
            st = got;
            opened_at_ = opened;
            cooldown_ = cooldown;
            if (manual_there || !manual_here) {
                last_trip_ = s.last_trip ? s.last_trip : last_trip_;
            }
        } else if (manual_there && !manual_here) {
            last_trip_ = s.last_trip;
        }
        trips_ += s.trips;
        take_admissions(s, now);  // several keys folded into one: their admissions together
        shadow_trips_ += s.shadow_trips;
        if (s.last_shadow_trip) {
            last_shadow_trip_ = s.last_shadow_trip;
        }
        const std::optional<time_point> got_expires = s.md == mode::automatic ? std::nullopt : s.mode_expires;
        mode md = md_;
        if (held_by_hand(s)) {
            md = mode::forced_open;
            mode_expires_.reset();
        } else if (md_ == mode::forced_open || s.md == mode::forced_open) {
            if (md_ != mode::forced_open) {
                mode_expires_ = got_expires;
            } else if (s.md == mode::forced_open) {
                mode_expires_ = mode_expires_ && got_expires
                                    ? std::optional<time_point>{std::max(*mode_expires_, *got_expires)}
                                    : std::nullopt;
            }
            md = mode::forced_open;
        } else if (enforced_here || enforced_there) {
            md = mode::automatic;
            mode_expires_.reset();
        } else if (is_shadow(md_) || is_shadow(s.md)) {
            // Both bypass, or one does and nothing else is open: the bypass that ends first.
            if (!is_shadow(md_)) {
                md = s.md;
                mode_expires_ = got_expires;
            } else if (is_shadow(s.md)) {
                md = md_ == mode::metrics_only || s.md == mode::metrics_only ? mode::metrics_only : md_;
                if (!mode_expires_ || (got_expires && *got_expires < *mode_expires_)) {
                    mode_expires_ = got_expires;
                }
            }
        }
        change(st, md, cause_of("restore", "restore", restored_why(at_start)), now, false);
    }

    // Adds a snapshot's throttle admissions to this instance's: the latest `requests` of
    // them all, oldest first, none after `now` (a wall clock behind the saved one after a
    // reboot would put them in the future and refuse everything for as long).
    void take_admissions(const instance_snapshot& s, time_point now) {
        if (cfg_.act != action::throttle || s.throttle_admissions.empty()) {
            return;
        }
        std::vector<time_point> all;
        all.reserve(slots_.size() + s.throttle_admissions.size());
        for (std::size_t i = 0; i < slots_.size(); ++i) {
            all.push_back(slots_[(oldest_ + i) % slots_.size()]);
        }
        for (const auto t : s.throttle_admissions) {
            all.push_back(std::min(t, now));
        }
        std::sort(all.begin(), all.end());
        const std::size_t limit = cfg_.throttle.requests;
        const std::size_t from = all.size() > limit ? all.size() - limit : 0;
        slots_.assign(all.begin() + static_cast<std::ptrdiff_t>(from), all.end());
        oldest_ = 0;
    }

    instance_snapshot view(time_point now) const {
        instance_snapshot s;
        s.instance = name_;
        s.breaker = cfg_.id;
        s.key = key_;
        s.st = st_;
        s.md = md_;
        s.mode_expires = mode_expires_;
        s.opened_at = opened_at_;
        s.cooldown = cooldown_;
        s.trips = trips_;
        s.last_trip = last_trip_;
        s.reset = cfg_.reset;
        s.shadow_trips = shadow_trips_;
        s.last_shadow_trip = last_shadow_trip_;
        // The admissions that may still count: those within an interval of now, and at least
        // of the last hour, since a reload (or a restart with a new config) may lengthen the
        // interval (5 per 10 s to 5 per 10 min) and the new instance judges them by its own;
        // filtered by the old interval, a tightened throttle granted R at once. Older ones
        // would only make every save bigger (at most R are kept in any case).
        const auto keep = std::max<duration>(cfg_.throttle.interval, std::chrono::hours{1});
        for (std::size_t i = 0; i < slots_.size(); ++i) {
            const auto t = slots_[(oldest_ + i) % slots_.size()];
            if (now - t < keep) {
                s.throttle_admissions.push_back(t);
            }
        }
        if (st_ == state::half_open) {
            s.probes = instance_snapshot::probe_round{round_, period_round_, issued_, succeeded_, last_probe_at_};
        }
        // What advance() would make of it, without reporting from a const reader.
        if (s.md != mode::automatic && s.mode_expires && now >= *s.mode_expires) {
            s.md = hands_trip_back() ? mode::forced_open : mode::automatic;
            s.mode_expires.reset();
        }
        if (s.md == mode::automatic && s.st == state::open && cfg_.reset == reset_policy::automatic &&
            now >= opened_at_ + cooldown_) {
            s.st = state::half_open;
        }
        return s;
    }

    // --- takes mutex() itself ---

    // Reports queued transitions in order, outside the lock. If another thread is already
    // reporting for this instance, it reports ours too (so order holds without holding a
    // lock across the callback); our caller may then return before its event is out.
    void deliver(const std::function<void(const transition&)>& fn) {
        std::unique_lock lock{mutex_};
        if (!report_ || delivering_) {
            return;
        }
        delivering_ = true;
        while (!pending_.empty()) {
            auto t = std::move(pending_.front());
            pending_.pop_front();
            lock.unlock();
            try {
                fn(*t);
            } catch (...) {
                lock.lock();
                delivering_ = false;
                throw;
            }
            lock.lock();
        }
        delivering_ = false;
    }

private:
    std::uint32_t probes() const { return std::max<std::uint32_t>(cfg_.half_open_probes, 1); }
    milliseconds manual_retry() const {
        return cfg_.retry_after > milliseconds{0} ? cfg_.retry_after : default_manual_retry;
    }
    milliseconds backoff(milliseconds c) const { return std::min(c * 2, std::max(cfg_.max_cooldown, cfg_.cooldown)); }

    admission base() const {
        admission a;
        a.act = cfg_.act;
        a.instance = name_;
        a.last_trip = last_trip_;
        a.change = change_;
        return a;
    }

    // Containment; for a throttle breaker that means "through if a slot is free". The slots
    // are the times of the last R admissions: a request gets one only if the oldest is at
    // least one interval old, so no interval-long span ever holds more than R admissions.
    admission contain(admission a, time_point now) {
        a.v = admission::verdict::contain;
        if (cfg_.act != action::throttle) {
            return a;
        }
        const std::size_t limit = cfg_.throttle.requests;
        const auto interval = cfg_.throttle.interval;
        if (limit == 0) {
            a.retry_after = interval;
            return a;
        }
        if (!take_throttle_slot(now, a.retry_after)) {
            return a;
        }
        a.v = admission::verdict::allow;
        a.throttled = true;
        a.retry_after = milliseconds{0};
        return a;
    }

    // One of the throttle's R slots of the interval, if one is free; else `retry_after` is
    // when the next one frees. (requests > 0.)
    bool take_throttle_slot(time_point now, milliseconds& retry_after) {
        const std::size_t limit = cfg_.throttle.requests;
        const auto interval = cfg_.throttle.interval;
        if (slots_.size() < limit) {
            slots_.push_back(now);
        } else if (now - slots_[oldest_] >= interval) {
            slots_[oldest_] = now;
            oldest_ = (oldest_ + 1) % limit;
        } else {
            retry_after = until(slots_[oldest_] + interval, now);
            return false;
        }
        throttle_admissions_made.fetch_add(1, std::memory_order_relaxed);  // at most R an interval
        return true;
    }

    void new_round() {
        ++round_;
        issued_ = 0;
        succeeded_ = 0;
    }

    std::shared_ptr<const transition> make(state from, state to, mode mfrom, mode mto, trip_cause cause,
                                           time_point at, bool trip = false) const {
        auto t = std::make_shared<transition>();
        t->trip = trip;
        t->instance = name_;
        t->breaker = cfg_.id;
        t->from = from;
        t->to = to;
        t->mode_from = mfrom;
        t->mode_to = mto;
        t->cause = std::move(cause);
        t->at = at;
        return t;
    }

    // Every state or mode change goes through here: the event, the active counter and the
    // per-state bookkeeping stay in step. `trips`: containment begins (rule, operator, force).
    void change(state to, mode mto, trip_cause cause, time_point at, bool trips) {
        const bool contained_before = containing(st_, md_);
        const bool opens = to == state::open && st_ != state::open;
        const bool forces = mto == mode::forced_open && md_ != mode::forced_open;
        auto t = make(st_, to, md_, mto, std::move(cause), at, trips);
        if (to == state::half_open && st_ != state::half_open) {
            new_round();
            period_round_ = round_;
        }
        st_ = to;
        md_ = mto;
        last_at_ = at;
        // A change that makes it contain (or contain anew: reopened, forced) is numbered,
        // under this instance's lock: a snapshot that locks it later and began after
        // changes_so_far() read n has every change numbered n or less. One that loosens it
        // (open -> half_open, a force run out) keeps the number: a restart that lost it
        // would only contain more.
        if (containing(st_, md_) && (!contained_before || opens || forces || trips)) {
            change_ = changes_made.fetch_add(1, std::memory_order_acq_rel) + 1;
        }
        if (trips) {
            ++trips_;
            last_trip_ = t;
        }
        const bool active = st_ != state::closed || md_ != mode::automatic;
        if (active != counted_) {
            counted_ = active;
            active_.fetch_add(active ? 1 : -1, std::memory_order_release);
        }
        if (!active) {
            // Throttle slots only matter while containing; give the memory back.
            std::vector<time_point>{}.swap(slots_);
            oldest_ = 0;
        }
        if (report_) {
            pending_.push_back(std::move(t));
        }
    }

    const breaker_config& cfg_;
    const std::string name_;
    const std::string key_;
    const bool keyed_;   // counts against max_instances (not the wide or overflow instance)
    const bool report_;  // someone listens to transitions
    std::atomic<std::int64_t>& active_;

    std::mutex mutex_;
    state st_ = state::closed;
    mode md_ = mode::automatic;
    std::optional<time_point> mode_expires_;
    time_point opened_at_{};
    milliseconds cooldown_;
    time_point last_at_{};
    std::uint64_t change_ = 0;  // the number of its last containing change (changes_so_far())
    // half_open: probes let through and succeeded in this round; the round tells a late
    // report from an earlier round apart.
    std::uint32_t issued_ = 0;
    std::uint32_t succeeded_ = 0;
    std::uint64_t round_ = 0;
    std::uint64_t period_round_ = 0;  // the first round of the current half-open period
    time_point last_probe_at_{};
    std::uint64_t trips_ = 0;
    std::shared_ptr<const transition> last_trip_;
    std::uint64_t shadow_trips_ = 0;
    std::shared_ptr<const transition> last_shadow_trip_;
    std::optional<time_point> shadow_until_;  // a shadow trip makes would_contain true until then
    // The operator set `auto` after their trip (hands_trip_back). Not saved: read back from
    // a saved auto mode (restore); one saved under a bypass holds the trip again when the
    // bypass ends, the safe side.
    bool auto_chosen_ = false;
    std::vector<time_point> slots_;           // throttle: times of the last R admissions (ring)
    std::size_t oldest_ = 0;
    bool counted_ = false;  // included in the registry's active counter
    bool evicted_ = false;
    bool moved_ = false;
    bool delivering_ = false;
    std::deque<std::shared_ptr<const transition>> pending_;
};

}  // namespace detail

std::string_view to_string(action a) {
    switch (a) {
    case action::pause: return "pause";
    case action::throttle: return "throttle";
    case action::sandbox: return "sandbox";
    case action::quarantine: return "quarantine";
    case action::deny: return "deny";
    }
    return "?";
}

std::string_view to_string(state s) {
    switch (s) {
    case state::closed: return "closed";
    case state::open: return "open";
    case state::half_open: return "half_open";
    }
    return "?";
}

std::string_view to_string(mode m) {
    switch (m) {
    case mode::automatic: return "auto";
    case mode::forced_open: return "forced_open";
    case mode::forced_closed: return "forced_closed";
    case mode::metrics_only: return "metrics_only";
    }
    return "?";
}

bool is_shadow(mode m) { return m == mode::forced_closed || m == mode::metrics_only; }

std::optional<mode> parse_mode(std::string_view s) {
    for (mode m : {mode::automatic, mode::forced_open, mode::forced_closed, mode::metrics_only}) {
        if (s == to_string(m)) {
            return m;
        }
    }
    return std::nullopt;
}

namespace {

using instance = detail::instance;

// Runs `op` on the instance `get()` yields, under its lock, then reports its transitions.
// An instance evicted between lookup and lock is idle and gone from the map: look again.
// Empty when the instance (or the registry) was handed over: the caller forwards.
template <class Get, class Op>
auto run(Get get, Op op, const std::function<void(const transition&)>& report)
    -> std::optional<decltype(op(std::declval<instance&>()))> {
    for (;;) {
        std::shared_ptr<instance> inst = get();
        if (!inst) {
            return std::nullopt;
        }
        std::unique_lock lock{inst->mutex()};
        if (inst->evicted()) {
            continue;
        }
        if (inst->moved()) {
            return std::nullopt;
        }
        auto result = op(*inst);
        lock.unlock();
        inst->deliver(report);
        return result;
    }
}

}  // namespace

breaker_registry::breaker_registry(std::vector<breaker_config> breakers,
                                   std::function<void(const transition&)> on_transition)
    : on_transition_(std::move(on_transition)) {
    for (auto& b : breakers) {
        std::string id = b.id;
        auto [it, added] = slots_.try_emplace(std::move(id));
        if (added) {
            it->second.cfg = std::move(b);
        }
    }
}

const breaker_config* breaker_registry::find(std::string_view breaker_id) const {
    const slot* s = find_slot(breaker_id);
    return s ? &s->cfg : nullptr;
}

std::string breaker_registry::instance_name(const breaker_config& b, std::string_view key) const {
    if (!b.per_key || key.empty()) {
        return b.id;
    }
    std::string name;
    name.reserve(b.id.size() + 1 + key.size());
    name.append(b.id).append("/").append(key);
    return name;
}

breaker_registry::slot* breaker_registry::find_slot(std::string_view breaker_id) const {
    auto it = slots_.find(breaker_id);
    return it == slots_.end() ? nullptr : &it->second;
}

std::pair<breaker_registry::slot*, std::string_view> breaker_registry::split(std::string_view instance) const {
    // Implicit breakers ("upstream/<name>", "agent/<id>") carry a '/' in their id and have
    // one instance named like the id: an exact id match wins over splitting off a key.
    if (slot* whole = find_slot(instance)) {
        return {whole, std::string_view{}};
    }
    const auto slash = instance.find('/');
    slot* s = find_slot(instance.substr(0, slash));
    std::string_view key = slash == std::string_view::npos ? std::string_view{} : instance.substr(slash + 1);
    if (s && !s->cfg.per_key) {
        key = {};
    }
    return {s, key};
}

breaker_registry::instance_ptr breaker_registry::exact(const slot& s, std::string_view key) const {
    auto it = s.instances.find(instance_name(s.cfg, key));
    return it == s.instances.end() ? nullptr : it->second;
}

breaker_registry::instance_ptr breaker_registry::lookup(const slot& s, std::string_view key) const {
    if (auto inst = exact(s, key)) {
        return inst;
    }
    if (key.empty()) {
        return nullptr;
    }
    // Fail closed: a key that has no instance of its own may be one that was tripped into
    // the overflow instance when the breaker was full.
    return exact(s, overflow_key);
}

breaker_registry::instance_ptr breaker_registry::overflowed(const slot& s, std::string_view key,
                                                           time_point now) const {
    if (key.empty() || key == overflow_key) {
        return nullptr;
    }
    instance_ptr over;
    {
        std::shared_lock lock{mutex_};
        if (exact(s, key)) {
            return nullptr;
        }
        over = exact(s, overflow_key);
    }
    if (!over) {
        return nullptr;
    }
    std::lock_guard lock{over->mutex()};
    return !over->evicted() && !over->moved() && !over->view(now).at_rest() ? over : nullptr;
}

breaker_registry::instance_ptr breaker_registry::get_or_create(slot& s, std::string_view key, bool restoring) {
    {
        std::shared_lock lock{mutex_};
        if (auto inst = exact(s, key); inst || s.handed_over.load(std::memory_order_relaxed)) {
            return inst;  // null once handed over: the caller forwards
        }
    }
    std::unique_lock lock{mutex_};
    if (s.handed_over.load(std::memory_order_relaxed)) {
        return nullptr;  // its state lives in the successor now: the caller forwards
    }
    if (auto inst = exact(s, key)) {
        return inst;
    }
    const bool keyed = !key.empty() && key != overflow_key;
    if (keyed && !restoring) {
        if (auto over = exact(s, overflow_key)) {
            // While the overflow instance contains, it contains every key without an instance
            // of its own (lookup), among them the ones tripped into it. An instance made now
            // would start closed and take that key out of it: an expiring forced_open, or a
            // trip absorbed elsewhere, would let it through. So the key stays with it.
            // Not while an operator lets it through (forced_closed, metrics_only): a new key's
            // trip there would be a shadow trip, and nothing new would be contained until the
            // mode ends; the key gets an instance of its own instead (or the overflow instance
            // once more, if the breaker is full of containing instances).
            std::lock_guard il{over->mutex()};  // map -> instance, the lock order
            if (!over->evicted() && !over->moved() && over->active() && !over->shadowing()) {
                return over;
            }
        }
    }
    if (keyed && s.keyed >= s.cfg.max_instances) {
        // Full: make room by dropping an idle (closed+automatic) instance. O(instances), but
        // only on a trip of a new key into a full breaker. Lock order is map -> instance,
        // and nobody waits on the map while holding an instance, so try_lock is courtesy.
        bool evicted = false;
        for (auto it = s.instances.begin(); it != s.instances.end(); ++it) {
            if (!it->second->keyed()) {
                continue;
            }
            std::unique_lock il{it->second->mutex(), std::try_to_lock};
            if (il.owns_lock() && it->second->evict_if_idle()) {
                il.unlock();
                s.instances.erase(it);
                --s.keyed;
                evicted = true;
                break;
            }
        }
        if (!evicted) {
            key = overflow_key;
            if (auto inst = exact(s, key)) {
                return inst;
            }
        }
    }
    const bool counts = !key.empty() && key != overflow_key;
    std::string name = instance_name(s.cfg, key);
    auto inst = std::make_shared<instance>(s.cfg, name, std::string{key}, counts, on_transition_ != nullptr, active_);
    s.instances.emplace(std::move(name), inst);
    if (counts) {
        ++s.keyed;
    }
    return inst;
}

admission breaker_registry::admit(std::string_view name, time_point now, bool with_wide) {
    auto [s, key] = split(name);
    if (!s) {
        // An instance we were never told about is our own fault: fail closed.
        admission a;
        a.v = admission::verdict::contain;
        a.retry_after = default_manual_retry;
        a.instance = std::string{name};
        return a;
    }
    if (s->handed_over.load(std::memory_order_acquire)) {
        return s->successor->admit(name, now, with_wide);
    }
    instance_ptr inst;
    instance_ptr wide;
    {
        std::shared_lock lock{mutex_};
        inst = lookup(*s, key);
        if (!key.empty()) {
            wide = exact(*s, {});
        }
    }
    admission none;
    none.act = s->cfg.act;
    none.instance = instance_name(s->cfg, key);
    if (!inst && !wide) {
        return none;
    }
    // The breaker-wide instance first: if it contains, the key's instance is not consulted
    // (and keeps its probes and throttle slots).
    admission w = none;
    if (wide) {
        std::unique_lock lock{wide->mutex()};
        if (wide->moved()) {
            lock.unlock();
            return s->successor->admit(name, now, with_wide);
        }
        wide->advance(now);
        const bool bypass = wide->shadowing();
        // A request's later keys (with_wide false) do not ask it again: its probe or throttle
        // slot is taken once. Only a breaker-wide bypass still applies to them.
        const bool ask = with_wide || bypass;
        if (ask) {
            w = wide->decide(now);
        }
        lock.unlock();
        wide->deliver(on_transition_);
        if (!ask) {
            wide = nullptr;
        } else if (bypass) {
            // Every key is bypassed (its rules checked, not enforced), except one an operator
            // tripped or forced open by its own name: an operator's trip is always enforced,
            // and the wide shadow mode (an apply with metrics_only, say) must not make a
            // trip that answered 200 let the traffic through. Else still say what the key's
            // own instance would do.
            if (inst) {
                std::unique_lock il{inst->mutex()};
                inst->advance(now);
                if (inst->operator_contained()) {
                    admission own = inst->decide(now);
                    il.unlock();
                    inst->deliver(on_transition_);
                    return own;
                }
                w.would_contain = w.would_contain || inst->would_contain(now);
                il.unlock();
                inst->deliver(on_transition_);
            }
            return w;
        }
        if (wide && (w.v == admission::verdict::contain || !inst)) {
            return w;
        }
    }
    if (!inst) {
        return none;
    }
    std::unique_lock lock{inst->mutex()};
    if (inst->moved()) {
        lock.unlock();
        if (wide && w.v == admission::verdict::probe) {
            // Through the registry: a reload that moved the key's instance has moved the wide
            // one too, and the probe must go back to the copy that now counts it.
            cancel_probe(wide->name(), w.probe_round);
        }
        return s->successor->admit(name, now, with_wide);
    }
    inst->advance(now);
    admission k = inst->decide(now);
    lock.unlock();
    inst->deliver(on_transition_);
    if (!wide) {
        return k;
    }
    if (k.v == admission::verdict::probe && w.v == admission::verdict::probe) {
        // Both half-open: the request goes upstream as the key's probe, so it is the wide
        // instance's probe too and both hear its result. (Handing the wide probe back here let
        // one request per half-open key through a wide instance that allows one probe.)
        k.wide_probe = w.instance;
        k.wide_probe_round = w.probe_round;
        return k;
    }
    if (k.v != admission::verdict::allow) {
        if (w.v == admission::verdict::probe) {
            // The request will not reach the upstream: hand the wide probe back (through the
            // registry, to whichever copy counts it now).
            cancel_probe(wide->name(), w.probe_round);
        }
        return k;
    }
    if (w.v == admission::verdict::probe || w.throttled) {
        w.would_contain = w.would_contain || k.would_contain;
        return w;
    }
    k.would_contain = k.would_contain || w.would_contain;
    return k;
}

breaker_registry::trip_result breaker_registry::trip(std::string_view breaker_id, std::string_view key,
                                                     trip_cause cause, time_point now, bool holds_slot) {
    trip_result r;
    slot* s = find_slot(breaker_id);
    if (!s) {
        r.adm.v = admission::verdict::contain;  // fail closed, as admit()
        r.adm.retry_after = default_manual_retry;
        r.adm.instance = std::string{breaker_id};
        return r;
    }
    if (s->handed_over.load(std::memory_order_acquire)) {
        return s->successor->trip(breaker_id, key, std::move(cause), now, holds_slot);
    }
    if (!s->cfg.per_key) {
        key = {};
    }
    // A breaker-wide forced_closed/metrics_only turns the key's trip into a shadow trip. The
    // mode read and the trip are one step for set_mode_if_at_rest (trip_mu).
    std::shared_lock<std::shared_mutex> trip_lock;
    bool wide_bypass = false;
    if (!key.empty()) {
        trip_lock = std::shared_lock{s->trip_mu};
        instance_ptr wide;
        {
            std::shared_lock lock{mutex_};
            wide = exact(*s, {});
        }
        if (wide) {
            std::unique_lock lock{wide->mutex()};
            wide->advance(now);
            wide_bypass = wide->shadowing();
            lock.unlock();
            wide->deliver(on_transition_);
        }
    }
    std::string name;
    const trip_cause kept = cause;  // for forwarding if the instance moves meanwhile
    const auto outcome = run([&] { return get_or_create(*s, key); },
                             [&](instance& in) {
                                 in.advance(now);
                                 name = in.name();
                                 return in.trip(std::move(cause), now, wide_bypass);
                             },
                             on_transition_);
    if (trip_lock.owns_lock()) {
        trip_lock.unlock();
    }
    if (!outcome) {
        return s->successor->trip(breaker_id, key, kept, now, holds_slot);
    }
    r.opened = outcome->opened;
    r.shadow = outcome->shadow;
    if (r.shadow) {
        r.adm.act = s->cfg.act;
        r.adm.instance = name;
        r.adm.would_contain = true;
        return r;
    }
    if (holds_slot && s->cfg.act == action::throttle) {
        // Through on the slot it took before the rules ran (a second one would halve the
        // rate while the rule stays broken, and refuse a request that had its slot): also
        // when its own violation reopened a half-open breaker (a probe, or a request
        // throttled there).
        r.adm.v = admission::verdict::allow;
        r.adm.act = action::throttle;
        r.adm.throttled = true;
        r.adm.instance = name;
        return r;
    }
    r.adm = admit(name, now);
    return r;
}

// For an instance that exists (never creates one): op(instance) under its lock, or
// forward(successor) when it (or its whole breaker) was handed over. False: no instance.
template <class Op, class Forward>
bool breaker_registry::on_existing(std::string_view name, Op&& op, Forward&& forward) {
    auto [s, key] = split(name);
    if (!s) {
        return false;
    }
    if (s->handed_over.load(std::memory_order_acquire)) {
        forward(*s->successor);
        return true;
    }
    instance_ptr inst;
    {
        std::shared_lock lock{mutex_};
        inst = exact(*s, key);
    }
    if (!inst) {
        return false;
    }
    std::unique_lock lock{inst->mutex()};
    if (inst->moved()) {
        lock.unlock();
        forward(*s->successor);
        return true;
    }
    op(*inst);
    lock.unlock();
    inst->deliver(on_transition_);
    return true;
}

void breaker_registry::probe_result(std::string_view name, bool success, time_point now, std::uint64_t round) {
    on_existing(
        name,
        [&](detail::instance& in) {
            in.advance(now);
            in.probe_result(success, now, round);
        },
        [&](breaker_registry& next) { next.probe_result(name, success, now, round); });
}

void breaker_registry::cancel_probe(std::string_view name, std::uint64_t round) {
    on_existing(
        name, [&](detail::instance& in) { in.cancel_probe(round); },
        [&](breaker_registry& next) { next.cancel_probe(name, round); });
}

bool breaker_registry::manual_trip(std::string_view name, std::string actor, std::string reason, time_point now) {
    auto [s, key] = split(name);
    if (!s) {
        return false;
    }
    if (s->handed_over.load(std::memory_order_acquire)) {
        return s->successor->manual_trip(name, std::move(actor), std::move(reason), now);
    }
    const auto done = run([this, s = s, key = key] { return get_or_create(*s, key); },  // (not [&]: clang < 16)
                          [&](instance& in) {
                              in.advance(now);
                              in.manual_trip(cause_of("manual", actor, reason), now);
                              return true;
                          },
                          on_transition_);
    if (!done) {
        return s->successor->manual_trip(name, std::move(actor), std::move(reason), now);
    }
    return true;
}

breaker_registry::op_result breaker_registry::reset(std::string_view name, std::string actor, std::string reason,
                                                    time_point now) {
    auto [s, key] = split(name);
    if (!s) {
        return {};
    }
    if (s->handed_over.load(std::memory_order_acquire)) {
        return s->successor->reset(name, std::move(actor), std::move(reason), now);
    }
    instance_ptr inst;
    {
        std::shared_lock lock{mutex_};
        inst = exact(*s, key);
    }
    if (!inst) {
        if (auto over = overflowed(*s, key, now)) {
            return {true, over->name()};  // still contained, by the overflow instance
        }
        return {true, {}};  // never tripped: already closed+automatic
    }
    std::unique_lock lock{inst->mutex()};
    if (inst->moved()) {
        lock.unlock();
        return s->successor->reset(name, std::move(actor), std::move(reason), now);
    }
    if (!inst->evicted()) {
        inst->advance(now);
        inst->reset(cause_of("manual", std::move(actor), std::move(reason)), now);
    }
    lock.unlock();
    inst->deliver(on_transition_);
    return {true, {}};
}

breaker_registry::op_result breaker_registry::set_mode(std::string_view name, mode m,
                                                       std::optional<milliseconds> expires_in, std::string actor,
                                                       std::string reason, time_point now) {
    auto [s, key] = split(name);
    if (!s) {
        return {};
    }
    if (s->handed_over.load(std::memory_order_acquire)) {
        return s->successor->set_mode(name, m, expires_in, std::move(actor), std::move(reason), now);
    }
    // forced_open only tightens: like a trip, it may land on the overflow instance.
    const bool tightens = m == mode::forced_open;
    if (!tightens) {
        if (auto over = overflowed(*s, key, now)) {
            return {true, over->name()};
        }
    }
    if (m == mode::automatic) {
        std::shared_lock lock{mutex_};
        if (!exact(*s, key) && !s->handed_over.load(std::memory_order_relaxed)) {
            return {true, {}};  // nothing to change, and no instance needed to say so
        }
    }
    // A full breaker hands a new key the overflow instance: a mode set there would hold for
    // every key that later overflows (forced_closed would let their trips through), so it is
    // refused rather than applied to the overflow instance.
    const bool own = key.empty() || key == overflow_key;
    const auto done = run([this, s = s, key = key] { return get_or_create(*s, key); },  // (not [&]: clang < 16)
                          [&](instance& in) {
                              if (!own && !tightens && in.key() == overflow_key) {
                                  return op_result{true, in.name()};
                              }
                              in.advance(now);
                              if (!own && in.key() == overflow_key) {
                                  // One key's forced_open must not cut short another's hold on
                                  // every key the overflow instance contains.
                                  in.force_open_at_least(expires_in, cause_of("manual", actor, reason), now);
                              } else {
                                  in.set_mode(m, expires_in, cause_of("manual", actor, reason), now);
                              }
                              return op_result{true, {}};
                          },
                          on_transition_);
    if (!done) {
        return s->successor->set_mode(name, m, expires_in, std::move(actor), std::move(reason), now);
    }
    return *done;
}

std::string breaker_registry::set_mode_if_at_rest(std::string_view breaker_id, mode m, std::string actor,
                                                  std::string reason, time_point now) {
    slot* s = find_slot(breaker_id);
    if (!s) {
        return "unknown breaker";
    }
    std::unique_lock trip_lock{s->trip_mu};  // no keyed trip runs until the mode is set
    if (s->handed_over.load(std::memory_order_acquire)) {
        trip_lock.unlock();
        return s->successor->set_mode_if_at_rest(breaker_id, m, std::move(actor), std::move(reason), now);
    }
    std::vector<instance_ptr> all;
    {
        std::shared_lock lock{mutex_};
        for (const auto& [name, inst] : s->instances) {
            all.push_back(inst);
        }
    }
    const auto wide_name = instance_name(s->cfg, {});
    for (const auto& inst : all) {
        if (inst->name() == wide_name) {
            continue;  // checked below, under the lock its mode is set under
        }
        std::lock_guard lock{inst->mutex()};
        if (inst->evicted() || inst->moved()) {
            continue;
        }
        if (const auto v = inst->view(now); !v.at_rest()) {
            return v.described();
        }
    }
    std::string busy;
    const auto done = run([&] { return get_or_create(*s, {}); },
                          [&](instance& in) {
                              in.advance(now);
                              if (const auto v = in.view(now); !v.at_rest()) {
                                  busy = v.described();
                                  return false;
                              }
                              in.set_mode(m, std::nullopt, cause_of("manual", actor, reason), now);
                              return true;
                          },
                          on_transition_);
    if (!done) {
        trip_lock.unlock();
        return s->successor->set_mode_if_at_rest(breaker_id, m, std::move(actor), std::move(reason), now);
    }
    return busy;
}

template <class Take>
std::vector<instance_snapshot> breaker_registry::views_of(time_point now, Take&& take) const {
    std::vector<instance_ptr> all;
    {
        std::shared_lock lock{mutex_};
        for (const auto& [id, s] : slots_) {
            if (!take(id, s)) {
                continue;
            }
            for (const auto& [name, inst] : s.instances) {
                all.push_back(inst);
            }
        }
    }
    std::vector<instance_snapshot> out;
    out.reserve(all.size());
    for (const auto& inst : all) {
        std::lock_guard lock{inst->mutex()};
        if (!inst->evicted() && !inst->moved()) {
            out.push_back(inst->view(now));
        }
    }
    return out;
}

std::vector<instance_snapshot> breaker_registry::snapshot(time_point now) const {
    auto out = views_of(now, [](const std::string&, const slot&) { return true; });
    // Handed over: the successor holds those breakers now. A snapshot taken through this
    // registry (the state writer may still see it as current during a swap) includes them,
    // so it never writes a state without them.
    std::vector<std::shared_ptr<breaker_registry>> next;
    {
        std::shared_lock lock{mutex_};
        next = successors_;
    }
    for (const auto& n : next) {
        for (auto& snap : n->snapshot(now)) {
            out.push_back(std::move(snap));
        }
    }
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.instance < b.instance; });
    // During a reload an instance can be seen in this registry and in its successor: one
    // row per instance (the store keys rows by it; two would fail the whole save).
    out.erase(std::unique(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.instance == b.instance; }),
              out.end());
    return out;
}

bool breaker_registry::enforcement_suspended(std::string_view name, time_point now) const {
    auto bypass = [](const std::optional<instance_snapshot>& v) { return v && is_shadow(v->md); };
    if (bypass(get(name, now))) {
        return true;
    }
    auto [s, key] = split(name);
    return s != nullptr && !key.empty() && bypass(get(s->cfg.id, now));
}

bool breaker_registry::holds_back(std::string_view name, time_point now) const {
    auto holds = [](const std::optional<instance_snapshot>& v) {
        return v && (v->md == mode::forced_open || (v->st != state::closed && v->md == mode::automatic));
    };
    if (holds(get(name, now))) {
        return true;
    }
    auto [s, key] = split(name);
    return s != nullptr && !key.empty() && holds(get(s->cfg.id, now));
}

std::optional<instance_snapshot> breaker_registry::get(std::string_view name, time_point now) const {
    auto [s, key] = split(name);
    if (!s) {
        return std::nullopt;
    }
    if (s->handed_over.load(std::memory_order_acquire)) {
        return s->successor->get(name, now);
    }
    instance_ptr inst;
    {
        std::shared_lock lock{mutex_};
        inst = exact(*s, key);
    }
    if (inst) {
        std::lock_guard lock{inst->mutex()};
        if (!inst->evicted()) {
            return inst->view(now);
        }
    }
    if (auto over = overflowed(*s, key, now)) {
        std::lock_guard lock{over->mutex()};
        return over->view(now);
    }
    // Known breaker, no instance: it is closed+automatic.
    instance_snapshot v;
    v.instance = instance_name(s->cfg, key);
    v.breaker = s->cfg.id;
    v.key = std::string{key};
    v.cooldown = s->cfg.cooldown;
    return v;
}

void breaker_registry::restore(const std::vector<instance_snapshot>& saved, time_point now, bool at_start) {
    for (const auto& snap : saved) {
        slot* s = find_slot(snap.breaker);
        std::string_view key = snap.key;
        if (!s) {
            std::tie(s, key) = split(snap.instance);
        }
        if (!s || snap.at_rest()) {
            continue;  // breaker gone from the config, or nothing to contain
        }
        if (!s->cfg.per_key) {
            key = {};
        }
        run([&] { return get_or_create(*s, key, true); },
            [&](instance& in) {
                if (in.name() == snap.instance || !is_shadow(snap.md)) {
                    in.restore(snap, now, at_start);
                    return true;
                }
                // A key's bypass (an operator's forced_closed or metrics_only for that key)
                // landing on another instance (keys folded when the scope became the whole
                // breaker, or past max_instances into the overflow) would exempt every key
                // there: only the state under it comes back, enforced. An operator's trip
                // under it on a breaker that resets by itself comes back as the bypass's end
                // would give it back (hands_trip_back): forced_open, held until reset, not
                // left to a probe.
                instance_snapshot enforced = snap;
                const bool operators_trip = s->cfg.reset == reset_policy::automatic && snap.st != state::closed &&
                                            snap.last_trip && snap.last_trip->cause.kind == "manual";
                enforced.md = operators_trip ? mode::forced_open : mode::automatic;
                enforced.mode_expires.reset();
                in.restore(enforced, now, at_start);
                return true;
            },
            on_transition_);
    }
}

void breaker_registry::hand_over(std::shared_ptr<breaker_registry> next, time_point now) {
    // Exclusive: no instance is created or found meanwhile. Each instance is restored into
    // `next` and only then marked moved, under its own lock: an operation either finished
    // on it before (and is in what was restored) or finds it moved afterwards and forwards to
    // a successor that already holds its state. Lock order: this map -> this instance ->
    // next's map -> next's instance; forwarding never holds a lock of this registry.
    std::unique_lock lock{mutex_};
    // The first successor always (a snapshot through this registry, current until the swap
    // is published, includes what is set on it meanwhile); a later one only when a breaker
    // moves to it (a registry kept for a dropped breaker must not hold every later one).
    bool moves = successors_.empty();
    for (auto& [id, s] : slots_) {
        moves = moves || (next->find(id) != nullptr && !s.handed_over.load(std::memory_order_relaxed));
    }
    if (!moves) {
        return;
    }
    successors_.push_back(next);
    forwarding_.store(true, std::memory_order_release);
    for (auto& [id, s] : slots_) {
        if (next->find(id) == nullptr || s.handed_over.load(std::memory_order_relaxed)) {
            continue;
        }
        s.successor = next;
        for (auto& [iname, inst] : s.instances) {
            std::unique_lock il{inst->mutex()};
            if (!inst->evicted() && !inst->moved()) {
                inst->advance(now);
                next->restore({inst->view(now)}, now);
                inst->mark_moved();
            }
        }
        s.handed_over.store(true, std::memory_order_release);
    }
    lock.unlock();
    // Transitions advance() produced just now are reported by this registry's callback.
    tick(now);
}

breaker_registry::kept_state breaker_registry::kept(time_point now) const {
    kept_state out;
    out.instances = views_of(now, [&](const std::string& id, const slot& s) {
        if (s.handed_over.load(std::memory_order_relaxed)) {
            return false;
        }
        out.breakers.push_back(id);
        return true;
    });
    return out;
}

void breaker_registry::tick(time_point now) {
    std::vector<instance_ptr> all;
    {
        std::shared_lock lock{mutex_};
        for (const auto& [id, s] : slots_) {
            for (const auto& [name, inst] : s.instances) {
                all.push_back(inst);
            }
        }
    }
    for (const auto& inst : all) {
        std::unique_lock lock{inst->mutex()};
        if (!inst->evicted() && !inst->moved()) {
            inst->advance(now);
        }
        lock.unlock();
        inst->deliver(on_transition_);
    }
}

}  // namespace bb::breakers
