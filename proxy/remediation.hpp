#pragma once
// Remediation of quarantined requests: release (paced replay to the original upstream, each
// with an idempotency key equal to the ticket) or discard. Runs on the server's control
// io_context with its own upstream pools, never on a worker: the data plane does not wait
// on the control plane.
//
// Never send anything twice (PRODUCT.md principle 1): `releasing` is committed before the
// request is sent; an answer records released/release_failed; a send whose outcome is
// unknown (sent, no complete answer) becomes outcome_unknown and is not retried.
//
// Thread-safe: every public member may be called from any thread; work is posted to the
// control io_context and results come back through std::future.

#include "config/config.hpp"
#include "proxy/asio.hpp"
#include "store/database.hpp"

#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <vector>

namespace bb::proxy {

class upstream_pool;
class server;

struct remediation_summary {
    std::size_t matched = 0;
    std::size_t released = 0;
    std::size_t failed = 0;         // release_failed: the upstream refused or was not reached, or
                                    // a refusal of ours came once the release had begun
    std::size_t unknown = 0;        // outcome_unknown: sent, no complete answer
    std::size_t discarded = 0;
    std::size_t skipped = 0;        // not in a state that allows the action
    bool stopped = false;           // the server began to stop: the rest stays held
    std::string error;              // the store could not be read: the rest was not looked at
    // Why a bulk release stopped early with records left held (the upstream answered 429 or
    // 503: sending the rest would only burn their attempts and push its limit further; or a
    // replay's outcome is unknown: the rest would be left for an operator one by one).
    std::string halted;
    std::vector<store::result> results;  // one per ticket, in order
};

// One schedule per upstream for every bulk release at once: a release takes the next free
// slot and moves it 1/rate later, so two bulk releases at 5/s still send 5/s to that
// upstream, not 10. A slot is never earlier than now: time a release spent waiting on its
// upstream is not caught up with a burst. Not thread-safe (the control thread owns it).
class release_pacer {
public:
    using time_point = std::chrono::steady_clock::time_point;
    // When the next release to `upstream` may start, at `rate_per_s` (> 0).
    time_point reserve(const std::string& upstream, double rate_per_s, time_point now);
    std::size_t tracked() const { return next_.size(); }

private:
    std::map<std::string, time_point, std::less<>> next_;  // upstream -> first free slot
};

class remediation {
public:
    remediation(asio::io_context& control, store::database& db, server& srv);
    ~remediation();

    // `forced_attempts`: a forced release (of an outcome_unknown record), given with the
    // record's release attempts as the caller saw them; without it, no force.
    std::future<store::result> release(std::string ticket, std::string actor,
                                       std::optional<std::uint32_t> forced_attempts = std::nullopt);
    // Releases every record matching the filter (state defaults to held) that was held when
    // the call began (later holds are left alone), at most filter.limit of them (0: all), at
    // most rate_per_s per second (0: as fast as the upstream answers). The discards likewise.
    std::future<remediation_summary> release_matching(store::list_filter filter, double rate_per_s,
                                                      std::string actor);
    std::future<store::result> discard(std::string ticket, std::string actor, std::string reason);
    std::future<remediation_summary> discard_matching(store::list_filter filter, std::string actor,
                                                      std::string reason);

    // The same as coroutines, for callers already on the control io_context (the admin
    // API): waiting on the futures above from that thread would deadlock it.
    // `expected`: the state a bulk release listed the record in; `expected_attempts`: the
    // release attempts the operator saw (see database::begin_release), required with `force`.
    asio::awaitable<store::result> release_one(std::string ticket, std::string actor, bool force,
                                               std::optional<store::held_state> expected = std::nullopt,
                                               std::optional<std::uint32_t> expected_attempts = std::nullopt);
    asio::awaitable<remediation_summary> release_matching_impl(store::list_filter filter, double rate_per_s,
                                                               std::string actor);
    asio::awaitable<store::result> discard_one(std::string ticket, std::string actor, std::string reason);
    asio::awaitable<remediation_summary> discard_matching_impl(store::list_filter filter, std::string actor,
                                                               std::string reason);

    // The server is stopping (control thread): releases send nothing more (one whose request
    // is out finishes; one not begun yet, or begun and not sent, is refused, shutting_down),
    // bulk pacing waits end now, and what was not sent stays releasable.
    void stop();
    bool stopping() const { return stopping_.load(std::memory_order_relaxed); }  // thread-safe
    // Replays that went out whose result the store has not taken yet (tried again in the
    // background; their records stay `releasing` meanwhile). Thread-safe.
    std::size_t unrecorded() const { return unrecorded_count_.load(std::memory_order_relaxed); }
    // At shutdown, once the control loop has stopped (the store still open): one last try
    // for each result not recorded yet, blocking. Returns how many are still unrecorded
    // (the next start turns their records outcome_unknown).
    std::size_t record_left_over();

private:
    bool snapshot(store::list_filter& filter, std::string* error);
    // The next page after `after`; empty at the end, or with *error set when unreadable.
    std::vector<store::held_request> next_page(const store::list_filter& filter, std::int64_t& after,
                                               std::string* error);
    std::shared_ptr<upstream_pool> pool_for(const config& cfg, std::size_t upstream_index);
    // Records the results in unrecorded_ as the store takes them, backing off from 1 s to
    // 30 s, until none is left or the server stops.
    asio::awaitable<void> record_later();
    void start_recording_later();  // record_later() unless it runs

    // A replay's result the store refused for the few seconds release_one tried.
    struct unrecorded_result {
        std::string ticket;
        store::release_outcome outcome;
        int status;
        std::string detail;
        std::uint32_t attempts;  // begin_release's count: a later release is not overwritten
    };

    asio::io_context& control_;
    store::database& db_;
    server& srv_;
    std::map<std::string, std::shared_ptr<upstream_pool>> pools_;  // by upstream name; control thread only
    std::set<asio::steady_timer*> pacers_;  // waits stop() cancels (pacing, retries); control thread only
    release_pacer schedule_;                // bulk release pacing per upstream; control thread only
    std::atomic<bool> stopping_{false};     // set on the control thread
    std::vector<unrecorded_result> unrecorded_;  // control thread only
    bool recording_later_ = false;               // record_later() runs; control thread only
    std::atomic<std::size_t> unrecorded_count_{0};
};

// Completes on the calling coroutine's executor once the breaker state that includes every
// transition made so far is durable; false when the write failed.
asio::awaitable<bool> await_persist(server& srv);

// Awaits a store write's completion on the calling coroutine's executor.
// `op` by value: the coroutine starts when awaited, after a temporary passed here is gone.
template <class Op>
asio::awaitable<store::result> await_store(Op op) {
    co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(store::result)>(
        [op = std::move(op)](auto handler) mutable {
            auto ex = asio::get_associated_executor(handler);
            auto h = std::make_shared<decltype(handler)>(std::move(handler));
            op([ex, h](store::result r) mutable {
                asio::post(ex, [h, r = std::move(r)]() mutable { std::move(*h)(std::move(r)); });
            });
        },
        asio::use_awaitable);
}

}  // namespace bb::proxy
