#pragma once
// The composition root of the data plane: worker threads (one io_context each), their
// listeners (SO_REUSEPORT, one acceptor per worker), upstream pools, the access log,
// signals (SIGTERM drain, SIGHUP reload) and config swaps.

#include "breakers/breaker.hpp"
#include "breakers/health.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "core/once_every.hpp"
#include "proxy/asio.hpp"
#include "proxy/forwarded_keys.hpp"
#include "rules/engine.hpp"

#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl/context.hpp>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <deque>
#include <limits>
#include <list>
#include <map>
#include <mutex>
#include <set>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace spdlog {
class logger;
}

namespace bb::alerts {
class dispatcher;
}

namespace bb::store {
class breaker_state_writer;
class database;
}

namespace bb::proxy {

class upstream_pool;
class response_budget;
class cert_minter;
class server;

// A listener's TLS material, built from files at start and rebuilt on SIGHUP/reload (new
// connections get the new one; open ones keep theirs).
struct listener_security {
    std::shared_ptr<asio::ssl::context> tls;            // TLS listener; null: plain TCP
    std::string tls_files_digest;                       // what tls was made from (tls_files_digest())
    std::shared_ptr<cert_minter> minter;                // forward proxy: mints interception leaves
    std::shared_ptr<asio::ssl::context> intercept_tls;  // forward proxy: leaf set per connection
};
class remediation;
class admin_server;

// Guards in front of one upstream, shared by every worker.
struct upstream_guard {
    std::string breaker;  // implicit health breaker "upstream/<name>"; "" when no health checks
    std::shared_ptr<breakers::health_tracker> health;  // null when no health checks
    std::shared_ptr<breakers::quota_pause> quota;      // always set
    // The host rules see on a route for any host (where the request goes, whatever Host the
    // client wrote): the upstream's, lower case, an IPv6 literal without brackets, no port.
    std::string rule_host;
};

// Everything a request consults, built once per config and swapped whole on reload. The
// engine's meters and the breaker registry survive reloads (adopted / carried over).
struct runtime {
    std::shared_ptr<const config> cfg;
    std::shared_ptr<rules::engine> engine;                 // null without rules
    std::shared_ptr<breakers::breaker_registry> breakers;  // always set (may hold no breaker)
    std::vector<upstream_guard> upstreams;                 // by upstream index
    std::vector<std::uint8_t> route_has_rules;             // by route index
    // Instances of breakers configured again, restored (from the store, or from what an
    // earlier reload dropped) by the reload that built this runtime, or only their breakers'
    // names (moved live from a retired registry): they page as at a start once it runs
    // (alert_restored_open).
    std::vector<breakers::instance_snapshot> configured_again;
    std::vector<std::uint8_t> route_has_response_rules;    // by route index
    std::vector<std::uint8_t> route_reads_response_body;   // by route index: a rule reads the response's JSON
};

// One per connection, registered with its worker so a drain can wake idle connections.
struct session_handle {
    tcp::socket* socket = nullptr;
    bool idle = false;  // waiting for the next request with nothing buffered
};

// Decisions in the order of PRODUCT.md's x-breakerbox-decision values.
inline constexpr std::array<std::string_view, 8> decision_names{"allowed",  "paused", "quarantined", "throttled",
                                                                "sandboxed", "denied", "rejected",    "unavailable"};
std::size_t decision_index(std::string_view decision);
// Upper bounds (seconds) of the latency histogram buckets; +Inf is implicit.
inline constexpr std::array<double, 13> latency_bounds{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                       0.25,  0.5,    1.0,   2.5,  5.0,   10.0};

struct histogram {
    std::array<std::uint64_t, latency_bounds.size() + 1> buckets{};  // last: +Inf
    double sum = 0;
    std::uint64_t count = 0;
    void observe(double seconds) {
        std::size_t i = 0;
        while (i < latency_bounds.size() && seconds > latency_bounds[i]) {
            ++i;
        }
        ++buckets[i];
        sum += seconds;
        ++count;
    }
    void add(const histogram& o) {
        for (std::size_t i = 0; i < buckets.size(); ++i) {
            buckets[i] += o.buckets[i];
        }
        sum += o.sum;
        count += o.count;
    }
};

// Per-thread statistics: plain counters, only touched on their worker's thread (scrapes
// read them there too), so no atomics on the hot path.
struct worker_stats {
    std::vector<std::array<std::uint64_t, decision_names.size()>> route_decisions;  // by route index; last: no route
    std::vector<histogram> upstream_latency;                                         // by upstream index
    // By agent id (bounded by the agents ever configured): requests an identified agent made.
    std::map<std::string, std::array<std::uint64_t, decision_names.size()>, std::less<>> agent_decisions;
    histogram hold_latency;                                                          // quarantine hold -> committed
    std::uint64_t requests = 0;
    std::uint64_t responses_by_class[6] = {};  // index status/100
    std::uint64_t generated = 0;                // answered by breakerbox itself
    std::uint64_t upstream_failures = 0;
    std::uint64_t client_aborts = 0;
    // TLS handshakes that failed: on a TLS listener, and intercepting a CONNECT (a client
    // that does not trust the forward proxy's CA fails here, after its CONNECT was answered).
    std::uint64_t listener_handshake_failures = 0;
    std::uint64_t interception_handshake_failures = 0;
};

class worker;

// Keeps the runtime a request started with alive until the request ends, without touching
// the shared_ptr's (cross-thread) reference count on every request: each worker counts
// in-flight requests per runtime generation in a plain integer, since only its own thread
// ever looks at it.
class runtime_lease {
public:
    runtime_lease(worker& w, std::size_t slot);
    ~runtime_lease();
    runtime_lease(const runtime_lease&) = delete;
    runtime_lease& operator=(const runtime_lease&) = delete;
    const runtime& get() const { return *rt_; }
    // The pool of upstream `i` of this runtime's config (indexes match get().cfg->upstreams,
    // which a reload may renumber: never index the worker's current pools with it).
    const std::shared_ptr<upstream_pool>& pool(std::size_t i) const { return (*pools_)[i]; }
    // True while this lease holds the worker's newest runtime.
    bool current() const;

private:
    worker& w_;
    std::size_t slot_;
    const runtime* rt_;
    const std::vector<std::shared_ptr<upstream_pool>>* pools_;
};

// Everything a session needs; lives on one thread. Not thread-safe: only touched from
// its own io_context, except where a member says otherwise.
class worker {
public:
    worker(server& owner, unsigned index, std::shared_ptr<const runtime> rt, spdlog::logger* access_log);
    ~worker();

    asio::io_context& ioc() { return ioc_; }
    unsigned index() const { return index_; }
    const std::shared_ptr<const config>& cfg() const { return rt_->cfg; }
    const std::shared_ptr<const runtime>& rt() const { return rt_; }
    runtime_lease lease_runtime();
    spdlog::logger* access_log() const { return access_log_; }
    bool draining() const { return draining_; }
    worker_stats& stats() { return stats_; }
    server& owner() { return owner_; }

    std::list<session_handle>::iterator register_session(tcp::socket* s);
    void unregister_session(std::list<session_handle>::iterator it);

    // Called on the worker's own thread (posted by the server).
    void apply_runtime(std::shared_ptr<const runtime> rt);
    void start_accepting(std::vector<std::shared_ptr<tcp::acceptor>> acceptors);
    void begin_drain();
    void shutdown();

private:
    asio::awaitable<void> accept_loop(std::shared_ptr<tcp::acceptor> acceptor, std::size_t listener);
    asio::awaitable<void> sweep_loop();
    void refuse(tcp::socket& s);

    server& owner_;
    unsigned index_;
    std::shared_ptr<const runtime> rt_;
    friend class runtime_lease;
    struct runtime_slot {
        std::shared_ptr<const runtime> rt;
        std::vector<std::shared_ptr<upstream_pool>> pools;  // by upstream index in rt->cfg
        std::size_t inflight = 0;
    };
    std::deque<runtime_slot> runtimes_;  // back() is current; older ones live while in use
    std::size_t runtimes_base_ = 0;      // generation number of runtimes_.front()
    void prune_runtimes();
    std::vector<std::shared_ptr<upstream_pool>> pools_;  // the newest runtime's, by upstream index
    std::vector<std::shared_ptr<tcp::acceptor>> acceptors_;
    std::list<session_handle> sessions_;
    spdlog::logger* access_log_ = nullptr;
    bool draining_ = false;
    bool stopped_ = false;
    worker_stats stats_;
    std::unique_ptr<asio::steady_timer> sweep_timer_;
    // Declared last so it is destroyed first: destroying it destroys the coroutine frames
    // of any sessions still pending, and those unregister from sessions_ above.
    // One thread runs it and every socket is only touched from that thread, so the
    // reactor's per-descriptor locking is switched off; the scheduler keeps its lock
    // because the control thread posts config swaps and drain requests.
    asio::io_context ioc_{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
};

struct server_options {
    std::string config_path;        // for SIGHUP reload; empty: reload disabled
    bool handle_signals = true;     // tests running in-process turn this off
    const clock* time = nullptr;    // null: the real clock; tests pass a manual_clock
    // How often the rule meters are saved for a restart (tests stretch it to see the save
    // at shutdown alone).
    std::chrono::milliseconds meter_save_every{1000};
    // How often the Idempotency-Keys of requests sent live are saved when some changed. What
    // changed since is in their journal (store/key_journal.hpp), which a crash leaves behind;
    // short, so that the journal stays small.
    std::chrono::milliseconds keys_save_every{50};
    // Not 0: the config runs from this stored version, not from the file at config_path,
    // which is unchanged since it was read as an earlier version (choose_startup_config).
    std::int64_t config_from_version = 0;
};

class server {
public:
    server(std::shared_ptr<const config> cfg, server_options opts = {});
    ~server();
    server(const server&) = delete;
    server& operator=(const server&) = delete;

    // Binds every listener (throws std::runtime_error naming the listener on failure) and
    // starts the worker threads. After it returns, bound_port() is valid.
    void start();
    // Blocks until stopped (signal or request_stop) and drained. Returns the exit code.
    int run();
    // Thread-safe: begins a graceful drain, like SIGTERM.
    void request_stop();
    // Thread-safe: swaps the config on every worker. Listener changes need a restart and
    // are reported in the returned warnings. The first breakers of a run started without
    // any open the store here; if it cannot be opened this throws std::runtime_error and
    // the running config stays.
    // `prepare`, when given, runs on the new breaker registry before any request can see it
    // (how a change applied as metrics_only never enforces, not even for a moment).
    std::vector<std::string> apply_config(std::shared_ptr<const config> cfg,
                                          const std::function<void(breakers::breaker_registry&)>& prepare = nullptr);
    // Counts apply_config() calls: a change judged against one config is installed only if
    // no other was installed meanwhile (admin apply re-checks it after its audit write).
    std::uint64_t config_generation() const { return config_generation_.load(std::memory_order_acquire); }
    // One config change (admin apply, SIGHUP reload) in flight at a time, from its judgement
    // to its stored version. Control thread only.
    bool config_change_busy() const { return config_change_busy_; }
    void set_config_change_busy(bool busy) { config_change_busy_ = busy; }

    std::uint16_t bound_port(std::size_t listener_index) const { return ports_.at(listener_index); }
    // A listener's TLS material; null for a plain listener. Thread-safe.
    std::shared_ptr<const listener_security> security(std::size_t listener) const;
    // Re-reads every listener's certificate, key and CA files. On any error nothing changes
    // and the errors are returned (the running certificates stay in use).
    std::vector<std::string> reload_security();
    // The TLS settings `next` changes from `current` (the admin API's certificate, key,
    // client CA or CRL paths and options, applied with the change; a listener's or a forward
    // proxy's CA, by listener name, which take effect at a restart), built once as they
    // would be: every one that cannot be is an error in `errs`, with its JSON path. A change
    // is refused whole when one fails (a CRL added to revoke a leaked certificate must not
    // leave it accepted under a change reported applied; a listener a restart could not
    // start is refused now). Settings that stay the same are not judged here: a renewal of
    // the same files that fails keeps what serves (a warning). A new log.access_log file
    // this process could not open (it is opened at the restart) is judged here too.
    // `--check-config` passes an empty `current`: everything a start would build is judged.
    static void check_tls_change(const config& current, const config& next, cfg::errors& errs);
    std::size_t active_connections() const { return connections_.load(std::memory_order_relaxed); }
    std::size_t worker_count() const { return workers_.size(); }
    std::shared_ptr<const config> current_config() const;
    std::shared_ptr<const runtime> current_runtime() const;
    time_point now() const { return clock_->now(); }
    const clock& time() const { return *clock_; }
    // The current registry; hold the pointer (not a reference to what it points at) across
    // any wait: a reload may replace it, and the old one then only forwards.
    std::shared_ptr<breakers::breaker_registry> breakers() { return current_runtime()->breakers; }

    // Asks for the breaker state to be written; `done(ok)` runs on the writer thread once
    // it is durable. Without breakers (nothing to keep) it completes at once.
    void persist_breakers(std::function<void(bool)> done);
    // Writes the breaker state as it is now and blocks until that is durable (tests,
    // shutdown).
    bool flush_breaker_state();
    // Whether the last save of breaker state failed (the writer is retrying).
    bool breaker_state_unsaved() const;
    // Whether the saved breaker state holds every change numbered up to `change`
    // (breakers::admission::change). True when no store keeps breaker state.
    bool breaker_state_saved_through(std::uint64_t change) const {
        return saved_through_.load(std::memory_order_acquire) >= change;
    }
    // Tests: while paused no breaker state save starts (persist_breakers waits).
    void pause_breaker_state_writes(bool on);
    // Saves the rule meters (the counts of caps and baselines) to the store, so a restart
    // carries them over: every second from the control thread (skipped when nothing changed
    // or a save is still on its way), and with `wait` at shutdown and in tests, blocking
    // until that save is durable. True when saved (or there is nothing to save).
    bool save_meters(bool wait);
    // Writes the keys of requests sent live that changed (forwarded_keys) to the store, as
    // save_meters does: every second and at shutdown (wait).
    bool save_forwarded_keys(bool wait);
    // Whether the last save of those keys failed.
    bool forwarded_keys_unsaved();
    // Whether the last save of the rule meters failed (saves go on every second).
    bool rule_meters_unsaved();

    // Runs `f(worker&)` on every worker's own thread, one after the other, and waits: how
    // the control thread reads per-thread statistics without racing the data plane.
    void for_each_worker(const std::function<void(worker&)>& f);
    bool draining() const { return stop_requested_.load(); }
    const std::string& config_path() const { return opts_.config_path; }
    std::int64_t config_from_version() const { return opts_.config_from_version; }
    std::uint16_t admin_port() const;
    // Alerts to on-call; null without sinks. Publishing never blocks.
    // The dispatcher of the current config (null without sinks); a reload that changes
    // `alerts` replaces it.
    std::shared_ptr<alerts::dispatcher> alerts() const;
    // Alert counts per sink name since this process started, for /metrics: the running
    // dispatcher's, plus those of every dispatcher a reload replaced (still sending what it
    // had queued, or gone), so a rotated webhook URL neither resets a counter nor hides the
    // failures of what the old dispatcher was still retrying.
    std::vector<alerts::sink_stats> alert_stats() const;
    // A deny rule refused a request (any thread): alerts on-call, the first at once, then at
    // most once a minute per rule with the count since.
    void report_denial(std::string_view rule, std::string_view breaker, std::string_view key,
                       std::string_view request_id, std::string_view reason);
    // What failed to write to the store, or wrote again: the breaker state, or a hold.
    enum class store_part : unsigned { breaker_state = 1, holds = 2 };
    // A write of `part` failed for a store reason: log, and page (sev1, at most once a
    // minute). Thread-safe.
    void report_store_trouble(store_part part, const std::string& message);
    // A write of `part` succeeded. Once every part that failed has written again, the page
    // (if one went out) is resolved. Thread-safe; one atomic load when nothing failed.
    void store_writes_again(store_part part);

    // Admin API request counts by endpoint family and status (for /metrics). Thread-safe.
    void count_admin_action(std::string_view path, unsigned status);
    std::map<std::pair<std::string, unsigned>, std::uint64_t> admin_action_counts() const;
    // Trips of each breaker since this process started.
    std::map<std::string, std::uint64_t, std::less<>> trip_counts() const;

    // The durable store (quarantine, breaker state); null when the config has no breakers.
    // Any thread: the workers read it on every keyed send, while the reload that brings the
    // first breakers opens it on the control thread.
    store::database* db() const { return db_view_.load(std::memory_order_acquire); }
    // Release/discard of quarantined requests; throws std::logic_error without a store.
    class remediation& remediation();
    // Idempotency-Keys of requests sent live (see forwarded_keys.hpp).
    forwarded_keys& forwarded() { return forwarded_; }
    // Upstream response bodies in memory, all pools together (limits.upstream_buffered_bytes).
    const std::shared_ptr<response_budget>& response_memory() const { return response_memory_; }

    // Connection admission, shared by every worker (exact: never above max_connections).
    bool try_admit();
    void release_connection();

private:
    // Opens the store, restores the saved breaker state (what the running config lacks waits
    // in orphans_) and starts the state writer. Throws std::runtime_error, changing nothing
    // of the server's, if the store cannot be opened, read or written. Control thread.
    void open_store(const store_config& sc);
    // `restore`: called with the new rules engine before anything of the running runtime is
    // touched (the breakers' hand-over, kept state): what may throw goes there, so a throw
    // leaves the running config whole.
    std::shared_ptr<const runtime> build_runtime(std::shared_ptr<const config> cfg, const runtime* previous,
                                                 const std::function<void(breakers::breaker_registry&)>& prepare = nullptr,
                                                 const std::function<void(rules::engine&)>& restore = nullptr);
    void on_transition(const breakers::transition& t);
    // The severity a trip's alerts carry: its rule's failure mode's, sev2 for an upstream's
    // breaker, else sev3. `failure_mode` receives the mode's id when there is one.
    std::string trip_severity(const std::string& breaker, const std::string& rule, std::string* failure_mode) const;
    // At start (and a reload that configures a breaker again): pages the instances restored
    // containing (see server.cpp); `when` ends their summary ("after a restart").
    // An incident's alert went out with this severity (alert_severity_: its resolve goes to
    // the sinks of every severity it had).
    void note_alert_severity(const std::string& instance, const std::string& severity);
    void alert_restored_open(const std::vector<breakers::instance_snapshot>& restored, const std::string& when);

    real_clock real_clock_;
    const clock* clock_ = &real_clock_;
    std::shared_ptr<const config> cfg_;
    std::shared_ptr<const runtime> rt_;
    server_options opts_;
    std::vector<std::unique_ptr<worker>> workers_;
    std::vector<std::thread> threads_;
    std::vector<std::uint16_t> ports_;
    std::atomic<std::size_t> connections_{0};
    std::atomic<std::size_t> max_connections_{0};  // cfg_->limits.max_connections, readable without the lock
    std::atomic<bool> stop_requested_{false};
    asio::steady_timer* control_tick_ = nullptr;  // run()'s control tick; control thread only
    asio::io_context control_{1};
    std::optional<asio::signal_set> signals_;
    std::shared_ptr<spdlog::logger> access_log_;
    mutable std::mutex cfg_mutex_;
    mutable std::mutex security_mutex_;
    std::vector<std::shared_ptr<const listener_security>> security_;  // by listener index
    // Serializes whole config swaps (admin apply, SIGHUP, rollback): each builds on the
    // runtime the previous one installed, and a registry is handed over only once.
    std::mutex apply_mutex_;
    std::atomic<std::uint64_t> config_generation_{0};
    bool config_change_busy_ = false;  // control thread only
    bool started_ = false;
    // save_meters(): one save at a time; per rule, the hash of what the store has, to write
    // only what changed; whether the last save failed (logged once per failing run).
    // Declared before db_, so they outlive the store's writer thread, which completes saves.
    std::mutex meters_mu_;
    std::condition_variable meters_cv_;
    bool meters_saving_ = false;
    std::map<std::string, std::size_t> meters_saved_;
    bool meters_failing_ = false;
    // Before db_ too (a save's completion hands failed keys back).
    forwarded_keys forwarded_;
    std::shared_ptr<response_budget> response_memory_;
    std::atomic<std::uint64_t> journal_failures_logged_{0};  // forwarded_.journal_failures() last logged
    // save_forwarded_keys(): one save at a time; whether the last one failed.
    std::mutex forwarded_mu_;
    std::condition_variable forwarded_cv_;
    bool forwarded_saving_ = false;
    bool forwarded_failing_ = false;
    // Before `engine` books anything (a start, or the reload that opens the store).
    // `running`: the engine serving meanwhile (a reload), whose meters are left alone.
    void restore_meters(rules::engine& engine, const std::string& path, const rules::engine* running);
    // Declared after the workers so they are destroyed first (in reverse order): their
    // last completions post to the workers' io_contexts, which must still exist.
    std::unique_ptr<store::database> db_;  // written once, by open_store(); read through db()
    std::atomic<store::database*> db_view_{nullptr};
    std::unique_ptr<store::breaker_state_writer> state_writer_;
    // The last change (breakers::changes_so_far()) the saved state holds; all of them
    // until a store keeps breaker state. snapshot_change_: the writer thread's own.
    std::atomic<std::uint64_t> saved_through_{~std::uint64_t{0}};
    std::uint64_t snapshot_change_ = 0;
    std::uint64_t throttle_admissions_saved_ = 0;  // control thread: when the state was last asked for
    // Saved state of breakers this config does not have (e.g. a restart with an older config
    // file): kept in the store rather than erased, and restored when a reload configures the
    // breaker again. Not enforced meanwhile (nothing can consult a breaker no rule names).
    mutable std::mutex orphans_mu_;
    std::vector<breakers::instance_snapshot> orphans_;
    // Those of orphans_ (by instance) read from the store and not live since this process
    // started: restored as at a start (an open one whose cooldown ended gets a fresh one).
    std::unordered_set<std::string> orphans_from_store_;
    // Registries a reload replaced that still hold breakers it dropped (guarded by
    // orphans_mu_). Requests finishing on the old config can still trip or reset those, so
    // their copies in orphans_ are taken again from there (fold_retired) until the last such
    // request is gone, and a reload that configures them again takes them over live.
    std::vector<std::shared_ptr<breakers::breaker_registry>> retired_registries_;
    // orphans_ := the current state of every breaker a retired registry holds; drops the
    // registries nothing else uses any more (their state just read is final). Returns the
    // breakers the registries it keeps still hold (live: requests may change them). Holds
    // orphans_mu_.
    std::set<std::string, std::less<>> fold_retired(time_point now);
    // Whether the store's saved rule counts have gone into an engine (at the start, or at the
    // first apply that brings rules): a refused apply leaves it false, so the next one does.
    bool meters_restored_ = false;
    std::unique_ptr<class remediation> remediation_;
    // report_denial(): per deny rule, when it last alerted, the denials since and the last
    // of them (the control tick reports those a minute on: report_denials()).
    struct denial_alerts {
        std::optional<time_point> alerted;
        std::uint64_t count = 0;
        std::string breaker, key, request_id, reason;
    };
    std::mutex denials_mu_;
    std::map<std::string, denial_alerts> denials_;
    // The alert of `count` denials of `rule` (its last: st); publish outside denials_mu_.
    alerts::alert denial_alert(const std::string& rule, const denial_alerts& st, std::uint64_t count);
    void report_denials(bool at_exit = false);
    // on_transition()/report_storms(): per breaker, the trips paged one by one in the current
    // minute, those beyond (told as one alert by the tick) and the instances whose trip was
    // not paged (their resolve is not sent either).
    static constexpr std::size_t storm_alerts = 10;
    struct storm {
        std::optional<time_point> window;
        std::size_t paged = 0;
        std::uint64_t suppressed = 0;  // in the current window
        std::string worst, last_reason;
        // Of windows that ended with trips not yet told (a storm that goes on across the
        // minute): the tick tells them at once.
        std::uint64_t due = 0;
        std::string due_worst;
        std::unordered_set<std::string> unpaged;
        // Instances restored open at the start beyond the ones paged one by one (counted in
        // one alert): their resolves go to no chat sink (alerts::alert::not_to_chat).
        std::unordered_set<std::string> counted_at_start;

        // `worst` becomes `sev` when that is more severe ("sev1" < "sev2"; "" is none).
        static void keep_most_severe(std::string& worst, const std::string& sev) {
            if (!sev.empty() && (worst.empty() || sev < worst)) {
                worst = sev;
            }
        }
        // The current window ends: what it held back is due to be told.
        void close_window() {
            due += suppressed;
            keep_most_severe(due_worst, worst);
            suppressed = 0;
            worst.clear();
        }
    };
    std::mutex storms_mu_;
    std::map<std::string, storm> storms_;
    void report_storms(bool at_exit = false);
    // apply_config(): resolves the incidents of instances the new registry no longer has.
    void resolve_gone_incidents(const breakers::breaker_registry& registry);
    // report_alert_losses() (control thread): the dispatcher it counts for and, per sink,
    // the failed and dropped counts already logged.
    void report_alert_losses();
    std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> alert_losses_seen_;
    // Per instance with an open incident, the severities its alerts went out with, most
    // severe first (on_transition): its resolve goes out with each, its alerts without a
    // rule of their own with the first. Gone once the instance closes.
    std::mutex alert_severity_mu_;
    // Trips per breaker id since this process started (on_transition): a counter for
    // /metrics that a reload's rebuilt registry or an evicted instance cannot lower.
    mutable std::mutex trips_mu_;
    std::map<std::string, std::uint64_t, std::less<>> trips_;
    // Per open incident, the severities its alerts went out with (sorted); an instance
    // restored open at the start has unknown_severity first: what paged before is not known.
    std::unordered_map<std::string, std::vector<std::string>> alert_severity_;
    static constexpr std::string_view unknown_severity = "?";
    static const std::string* most_severe_known(const std::vector<std::string>& sent_as);
    mutable std::mutex alerts_mu_;
    // The dispatcher, once a config had sinks. While the config has none it is kept (what its
    // last sinks had queued still goes out, and a reload that adds sinks takes it back), but
    // alerts() is null: nothing is routed to it.
    std::shared_ptr<alerts::dispatcher> alerts_;
    bool alerts_routed_ = false;
    void replace_alerts(const alerts::alerts_config& next);
    // The store_trouble alert: at most once a minute (by now()), the first at once. A
    // resolve does not restart that minute, so a flapping store pages at most once a minute.
    once_every store_alerted_{std::chrono::minutes{1}};
    std::atomic<unsigned> store_failing_{0};  // store_part bits whose last write failed
    std::mutex store_page_mu_;
    bool store_paged_ = false;  // a store_trouble trigger went out and was not resolved; under store_page_mu_
    // A failure held back by the minute while nothing was paged (the last page resolved):
    // the control tick pages it once due if the store still fails (report_held_store_trouble).
    std::string store_page_held_;  // under store_page_mu_
    void report_held_store_trouble();
    // Under store_page_mu_.
    void page_store_trouble(alerts::dispatcher& dispatcher, const std::string& message);
    std::unique_ptr<class admin_server> admin_;
    mutable std::mutex admin_counts_mu_;
    std::map<std::pair<std::string, unsigned>, std::uint64_t> admin_counts_;
};

// Sets up spdlog's default (operational) logger at `level` on stderr.
void init_logging(const std::string& level);

}  // namespace bb::proxy
