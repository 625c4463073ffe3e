#include "proxy/server.hpp"

#include "core/fd_limit.hpp"
#include "core/file.hpp"
#include "core/host_name.hpp"
#include "core/utf8.hpp"

#include "proxy/responses.hpp"
#include "proxy/mint.hpp"
#include "proxy/session.hpp"
#include "proxy/tls.hpp"
#include "proxy/upstream.hpp"
#include "alerts/alerts.hpp"
#include "proxy/admin.hpp"
#include "proxy/remediation.hpp"
#include "store/breaker_state.hpp"
#include "store/database.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>

#include <simdjson.h>
#include <spdlog/async.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <set>

#include <sys/socket.h>

#include <condition_variable>
#include <filesystem>
#include <algorithm>
#include <future>
#include <stdexcept>
#include <unordered_set>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

namespace bb::proxy {

namespace {

// Runs a worker's `ioc` until it stops. Beast's std::length_error for a field of 64 KiB or
// more (core/read_limits.hpp: the reads cap their buffers below that, and this is the net
// behind them) would end the thread and std::terminate the process out of run(). Logged
// instead (at most every 10 s), and the loop goes on; the coroutine that waited on that read
// is destroyed with it (asio destroys an abandoned awaitable's frames), so only its
// connection closes. Anything else still ends the process: a worker's state after an
// unknown throw cannot be trusted.
void run_catching(asio::io_context& ioc) {
    static once_every logged{std::chrono::seconds{10}};
    for (;;) {
        try {
            ioc.run();
            return;
        } catch (const std::length_error& e) {
            if (logged.due(std::chrono::steady_clock::now())) {
                spdlog::error("worker: a read threw and was abandoned (its connection closed): {}", e.what());
            }
        }
    }
}

// A forward proxy's settings that need a restart (its CA and minted-leaf cache are built at
// the start): all but its passthrough list, which is read per CONNECT and per second of an
// open blind tunnel.
std::optional<forward_proxy_config> fixed_part(const std::optional<forward_proxy_config>& fp) {
    auto out = fp;
    if (out) {
        out->passthrough.clear();
    }
    return out;
}

// Whether the listeners' settings that need a restart are the same (require_agent and a
// forward proxy's passthrough apply at once: apply_config).
bool same_listeners(const config& a, const config& b) {
    if (a.listeners.size() != b.listeners.size() || a.workers != b.workers) {
        return false;
    }
    for (std::size_t i = 0; i < a.listeners.size(); ++i) {
        if (a.listeners[i].name != b.listeners[i].name || a.listeners[i].host != b.listeners[i].host ||
            a.listeners[i].port != b.listeners[i].port || a.listeners[i].tls != b.listeners[i].tls ||
            fixed_part(a.listeners[i].forward_proxy) != fixed_part(b.listeners[i].forward_proxy)) {
            return false;
        }
    }
    return true;
}

// Runs `f` on the worker's thread and waits for it: used for control actions (config
// swap, drain) that must have happened on every worker before the caller goes on.
template <class F>
void run_on(asio::io_context& ioc, F&& f) {
    std::promise<void> done;
    asio::post(ioc, [&] {
        f();
        done.set_value();
    });
    done.get_future().wait();
}

// One background thread does the writing for the access log and the operational log; the
// queue is bounded and a full queue drops the oldest line rather than blocking a worker (the
// data plane never waits on logging).
void ensure_log_thread() {
    if (!spdlog::thread_pool()) {
        spdlog::init_thread_pool(16384, 1);
    }
}

// The access log's last sink. Lines reach it after the file (the log thread runs each line
// through the sinks in order, and the queue in order), and it ignores them; a `trace` marker,
// which the file's own level filters out, tells drain() that everything logged before the
// marker has been written. spdlog's flush() only queues a flush, so a server stopping in
// process (tests read the file right after) needs this to know its lines are on disk.
class drain_marker_sink final : public spdlog::sinks::base_sink<std::mutex> {
public:
    void drain(spdlog::logger& log) {
        std::unique_lock lock{wait_mu_};
        const std::uint64_t before = markers_;
        lock.unlock();
        log.log(spdlog::level::trace, "drain marker");
        lock.lock();
        cv_.wait_for(lock, std::chrono::seconds{2}, [&] { return markers_ > before; });
    }

protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        if (msg.level == spdlog::level::trace) {
            // Notified under the lock: drain() returns, and its caller may destroy this
            // sink, only once the notify is over (ThreadSanitizer saw the destroy race it).
            std::lock_guard lock{wait_mu_};
            ++markers_;
            cv_.notify_all();
        }
    }
    void flush_() override {}

private:
    std::mutex wait_mu_;
    std::condition_variable cv_;
    std::uint64_t markers_ = 0;
};

// Writes out what is queued for the access log (see drain_marker_sink).
void drain_access_log(spdlog::logger& log) noexcept {
    if (!spdlog::thread_pool()) {
        return;  // the log thread is gone (spdlog::shutdown() ran): nothing can be written
    }
    try {
        for (const auto& s : log.sinks()) {
            if (auto m = std::dynamic_pointer_cast<drain_marker_sink>(s)) {
                m->drain(log);
                return;
            }
        }
        log.flush();
    } catch (const std::exception&) {
        // Called from the server's destructor: never throw from there.
    }
}

std::shared_ptr<spdlog::logger> make_access_log(const log_config& cfg) {
    if (cfg.access_log == "off") {
        return nullptr;
    }
    ensure_log_thread();
    spdlog::sink_ptr sink;
    if (cfg.access_log == "stdout") {
        sink = std::make_shared<spdlog::sinks::stdout_sink_mt>();
    } else if (cfg.access_log == "stderr") {
        sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    } else {
        sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(cfg.access_log);
    }
    sink->set_level(spdlog::level::info);
    spdlog::sinks_init_list sinks{sink, std::make_shared<drain_marker_sink>()};
    auto log = std::make_shared<spdlog::async_logger>("access", sinks, spdlog::thread_pool(),
                                                      spdlog::async_overflow_policy::overrun_oldest);
    log->set_pattern("%v");
    log->set_level(spdlog::level::trace);  // the sinks filter: the file takes info and up
    log->flush_on(spdlog::level::info);
    return log;
}

}  // namespace

std::size_t decision_index(std::string_view decision) {
    for (std::size_t i = 0; i < decision_names.size(); ++i) {
        if (decision_names[i] == decision) {
            return i;
        }
    }
    return decision_names.size() - 1;
}

void init_logging(const std::string& level) {
    // Asynchronous like the access log: a worker that logs (an upstream asking for a pause,
    // a breaker transition) never blocks on a slow stderr. main() drains it at exit.
    ensure_log_thread();
    auto log = std::make_shared<spdlog::async_logger>(
        "breakerbox", std::make_shared<spdlog::sinks::stderr_color_sink_mt>(), spdlog::thread_pool(),
        spdlog::async_overflow_policy::overrun_oldest);
    spdlog::set_default_logger(log);
    log->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ breakerbox: %v");
    log->set_level(spdlog::level::from_str(level));
    log->flush_on(spdlog::level::info);
}

// ---- worker --------------------------------------------------------------------------

worker::worker(server& owner, unsigned index, std::shared_ptr<const runtime> rt, spdlog::logger* access_log)
    : owner_(owner), index_(index), access_log_(access_log) {
    apply_runtime(std::move(rt));
}

worker::~worker() {
    // I/O objects must go before the io_context they belong to.
    sweep_timer_.reset();
    acceptors_.clear();
    pools_.clear();
}

std::list<session_handle>::iterator worker::register_session(tcp::socket* s) {
    sessions_.push_front(session_handle{s, false});
    return sessions_.begin();
}

void worker::unregister_session(std::list<session_handle>::iterator it) {
    sessions_.erase(it);
}

void worker::apply_runtime(std::shared_ptr<const runtime> rt) {
    const auto& cfg = rt->cfg;
    std::vector<std::shared_ptr<upstream_pool>> pools;
    pools.reserve(cfg->upstreams.size());
    for (const auto& u : cfg->upstreams) {
        std::shared_ptr<upstream_pool> keep;
        // An unchanged upstream keeps its warm connections across a reload.
        for (auto& old : pools_) {
            // (Its response limit too: a lowered limits.upstream_body_bytes applies now.)
            if (old && same_upstream(old->cfg(), u) && old->response_body_limit() == cfg->limits.upstream_body_bytes) {
                keep = old;
                break;
            }
        }
        if (!keep) {
            keep = std::make_shared<upstream_pool>(ioc_.get_executor(), u, cfg->limits.upstream_body_bytes,
                                                   owner_.response_memory());
        }
        pools.push_back(std::move(keep));
    }
    for (auto& old : pools_) {
        if (std::find(pools.begin(), pools.end(), old) == pools.end()) {
            old->retire();
        }
    }
    pools_ = pools;
    // The counters are by position: carried over by name, so a reload that inserts or
    // reorders routes or upstreams does not move one's counts under another's name (a
    // removed one's counts go; the no-route bucket stays last).
    {
        const config* before = rt_ ? rt_->cfg.get() : nullptr;
        auto& rd = stats_.route_decisions;
        std::vector<std::array<std::uint64_t, decision_names.size()>> routes(rt->cfg->routes.size() + 1);
        if (!rd.empty()) {
            routes.back() = rd.back();
        }
        auto& ul = stats_.upstream_latency;
        std::vector<histogram> upstreams(rt->cfg->upstreams.size());
        // next[i] = old[j] where the new item i and the old item j have one name.
        auto carry = [](const auto& new_items, const auto& old_items, auto& next, const auto& old) {
            for (std::size_t i = 0; i < new_items.size(); ++i) {
                for (std::size_t j = 0; j < old_items.size() && j < old.size(); ++j) {
                    if (old_items[j].name == new_items[i].name) {
                        next[i] = old[j];
                    }
                }
            }
        };
        if (before != nullptr) {
            carry(rt->cfg->routes, before->routes, routes, rd);
            carry(rt->cfg->upstreams, before->upstreams, upstreams, ul);
        }
        rd = std::move(routes);
        ul = std::move(upstreams);
    }
    runtimes_.push_back({rt, std::move(pools), 0});
    rt_ = std::move(rt);
    prune_runtimes();
}

runtime_lease worker::lease_runtime() {
    return runtime_lease{*this, runtimes_base_ + runtimes_.size() - 1};
}

void worker::prune_runtimes() {
    while (runtimes_.size() > 1 && runtimes_.front().inflight == 0) {
        runtimes_.pop_front();
        ++runtimes_base_;
    }
}

runtime_lease::runtime_lease(worker& w, std::size_t slot) : w_(w), slot_(slot) {
    auto& s = w_.runtimes_[slot_ - w_.runtimes_base_];
    ++s.inflight;
    rt_ = s.rt.get();
    pools_ = &s.pools;
}

bool runtime_lease::current() const {
    return slot_ == w_.runtimes_base_ + w_.runtimes_.size() - 1;
}

runtime_lease::~runtime_lease() {
    --w_.runtimes_[slot_ - w_.runtimes_base_].inflight;
    w_.prune_runtimes();
}

void worker::start_accepting(std::vector<std::shared_ptr<tcp::acceptor>> acceptors) {
    acceptors_ = std::move(acceptors);
    for (std::size_t i = 0; i < acceptors_.size(); ++i) {
        asio::co_spawn(ioc_, accept_loop(acceptors_[i], i), [](std::exception_ptr e) {
            if (e) {
                try {
                    std::rethrow_exception(e);
                } catch (const std::exception& ex) {
                    spdlog::error("accept loop ended: {}", ex.what());
                }
            }
        });
    }
    sweep_timer_ = std::make_unique<asio::steady_timer>(ioc_);
    asio::co_spawn(ioc_, sweep_loop(), asio::detached);
}

void worker::refuse(tcp::socket& s) {
    // Over the connection limit (a plain listener): one non-blocking write of a canned 503,
    // then close. Closing with the client's request unread would send a reset instead of a
    // FIN, which some stacks let destroy the 503 before the client reads it (session.cpp's
    // close_connection lingers for that; this path may not wait): our side is shut first,
    // and what has arrived is read and dropped, without waiting, up to 64 KiB. Best effort:
    // a request that arrives after the close still meets a reset.
    const auto text = overload_response();
    const int fd = s.native_handle();
    ::send(fd, text.data(), text.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    ::shutdown(fd, SHUT_WR);
    char dropped[4096];
    for (int i = 0; i < 16 && ::recv(fd, dropped, sizeof dropped, MSG_DONTWAIT) > 0; ++i) {
    }
    error_code ignored;
    s.close(ignored);
}

asio::awaitable<void> worker::accept_loop(std::shared_ptr<tcp::acceptor> acceptor, std::size_t listener) {
    for (;;) {
        auto [ec, socket] = co_await acceptor->async_accept(use_tuple);
        if (ec) {
            if (ec == asio::error::operation_aborted || !acceptor->is_open()) {
                co_return;
            }
            // EMFILE/ENFILE and friends: back off briefly instead of spinning.
            spdlog::warn("accept failed on worker {}: {}", index_, ec.message());
            asio::steady_timer t{ioc_, std::chrono::milliseconds{50}};
            co_await t.async_wait(use_tuple);
            continue;
        }
        if (!owner_.try_admit()) {
            if (const auto sec = owner_.security(listener); sec && sec->tls) {
                // A TLS client would read plaintext bytes as a broken record ("wrong version
                // number"): closed without a word, which clients take as a connection to retry.
                error_code ignored;
                socket.close(ignored);
            } else {
                refuse(socket);
            }
            continue;
        }
        // The signal lives with the completion handler, which outlives the coroutine.
        auto cancel = std::make_shared<asio::cancellation_signal>();
        auto* signal = cancel.get();
        asio::co_spawn(ioc_, run_session(*this, std::move(socket), listener, signal),
                       asio::bind_cancellation_slot(signal->slot(), [cancel](std::exception_ptr e) {
            if (e) {
                try {
                    std::rethrow_exception(e);
                } catch (const std::exception& ex) {
                    spdlog::error("session ended with an exception: {}", ex.what());
                }
            }
        }));
    }
}

asio::awaitable<void> worker::sweep_loop() {
    while (!stopped_) {
        sweep_timer_->expires_after(std::chrono::seconds{1});
        auto [ec] = co_await sweep_timer_->async_wait(use_tuple);
        if (ec || stopped_) {
            co_return;
        }
        const auto now = std::chrono::steady_clock::now();
        for (auto& p : pools_) {
            p->sweep(now);
        }
    }
}

void worker::begin_drain() {
    draining_ = true;
    for (auto& a : acceptors_) {
        error_code ignored;
        a->close(ignored);
    }
    // Wake connections that are idle between requests; busy ones finish their request
    // and then close because draining_ is set.
    for (auto& s : sessions_) {
        if (s.idle) {
            error_code ignored;
            s.socket->cancel(ignored);
        }
    }
}

void worker::shutdown() {
    stopped_ = true;
    draining_ = true;
    for (auto& a : acceptors_) {
        error_code ignored;
        a->close(ignored);
    }
    for (auto& s : sessions_) {
        error_code ignored;
        s.socket->cancel(ignored);
        s.socket->close(ignored);
    }
    if (sweep_timer_) {
        sweep_timer_->cancel();
    }
    for (auto& p : pools_) {
        p->close_idle();
    }
}

// ---- server --------------------------------------------------------------------------

server::server(std::shared_ptr<const config> cfg, server_options opts)
    : cfg_(std::move(cfg)),
      opts_(std::move(opts)),
      forwarded_(static_cast<std::size_t>(cfg_->store.idempotency_keys)),
      response_memory_(std::make_shared<response_budget>(cfg_->limits.upstream_buffered_bytes)) {
    if (opts_.time != nullptr) {
        clock_ = opts_.time;
    }
    access_log_ = make_access_log(cfg_->log);
    if (!cfg_->alerts.sinks.empty()) {
        alerts_ = std::make_shared<alerts::dispatcher>(cfg_->alerts);
        alerts_routed_ = true;
    }
    rt_ = build_runtime(cfg_, nullptr);
    max_connections_ = cfg_->limits.max_connections;
    // Certificates that cannot be loaded are a reason not to start (never a plain-text
    // fallback on a listener configured for TLS).
    if (auto errors = reload_security(); !errors.empty()) {
        std::string all;
        for (const auto& e : errors) {
            all += (all.empty() ? "" : "; ") + e;
        }
        throw std::runtime_error(all);
    }
    // The store holds breaker state and quarantined requests, and the admin API's audit log
    // and config versions: an admin API without it could act unaudited. Without either it is
    // opened by the first reload that configures a breaker (apply_config).
    if (!cfg_->breakers.empty() || cfg_->admin.enabled) {
        open_store(cfg_->store);
    }
    if (db() && rt_->engine) {
        restore_meters(*rt_->engine, cfg_->store.path, nullptr);  // before the first request, as breaker state is
        meters_restored_ = true;
    }
    unsigned n = cfg_->workers;
    if (n == 0) {
        n = std::max(1u, std::thread::hardware_concurrency());
    }
    for (unsigned i = 0; i < n; ++i) {
        workers_.push_back(std::make_unique<worker>(*this, i, rt_, access_log_.get()));
    }
}

namespace {

store::store_limits store_limits_of(const store_config& sc) {
    store::store_limits l;
    l.max_held = sc.max_held;
    l.max_held_bytes = sc.max_held_bytes;
    l.per_breaker_max_held = sc.per_breaker_max_held;
    l.per_breaker_max_held_bytes = sc.per_breaker_max_held_bytes;
    return l;
}

// Appends the names of the routes of a config as stored (config_versions' JSON). False for
// a version that does not read so (it adds none).
bool add_route_names(const std::string& json, std::vector<std::string>& out) {
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    simdjson::dom::array routes;
    if (parser.parse(simdjson::padded_string{json}).get(doc) != simdjson::SUCCESS) {
        return false;
    }
    const auto field = doc["routes"];
    if (field.error() == simdjson::NO_SUCH_FIELD) {
        return true;  // no routes
    }
    if (field.get(routes) != simdjson::SUCCESS) {
        return false;
    }
    for (const auto route : routes) {
        std::string_view name;
        if (route["name"].get(name) == simdjson::SUCCESS) {
            out.emplace_back(name);
        }
    }
    return true;
}

}  // namespace

void server::open_store(const store_config& sc) {
    // A store that cannot be opened (locked by another process, unreadable), read or written
    // is a reason not to start, and not to apply a reload that needs it.
    store::store_options so;
    so.path = sc.path;
    so.limits = store_limits_of(sc);
    so.group_commit = sc.group_commit;
    std::string error;
    std::error_code exists_error;
    const bool existed = std::filesystem::exists(sc.path, exists_error) || exists_error;
    std::error_code size_error;
    // SQLite takes a file of zero bytes as an empty database: a truncated store, one made by
    // provisioning (`touch`), or a copy restored without its -wal all start with nothing.
    const bool empty_file = existed && !exists_error && std::filesystem::file_size(sc.path, size_error) == 0 && !size_error;
    auto db = store::database::open(so, *clock_, &error);
    if (!db) {
        throw std::runtime_error("cannot open the store " + sc.path + ": " + error);
    }
    if (!existed) {
        // Everything a restart must not forget lives in the store: a new one is a first
        // start, or store.path changed (then every breaker starts closed, and what the old
        // file holds is out of reach). Said, so the second is not silent.
        spdlog::warn("store {} did not exist and was created: no breaker state, quarantined requests, meters or "
                     "keys of requests sent live were restored (expected on a first start; if store.path changed, "
                     "stop, move the old store file and its -wal and .sent-keys.* files there, and start again)",
                     sc.path);
    } else if (empty_file) {
        spdlog::warn("store {} existed but was empty (zero bytes): no breaker state, quarantined requests, meters or "
                     "keys of requests sent live were restored (expected if it was made empty on purpose; if it is a "
                     "restored copy, stop and restore its -wal file beside it too, or the copy was cut short)",
                     sc.path);
    }
    {
        // Compare with the last "audit: entry N appended" line before the restart: a
        // lower N or another hash means the log was cut back, wiped or rewritten meanwhile.
        const auto [id, hash] = db->audit_anchor();
        spdlog::info("audit: {} entries at start, chain head {}", id, id > 0 ? hash : std::string{"(none)"});
    }
    if (db->recovered_at_open() > 0) {
        spdlog::warn("{} quarantined request(s) were being released when breakerbox stopped; they are now "
                     "outcome_unknown and wait for an operator (never re-sent automatically)",
                     db->recovered_at_open());
    }
    // Restore tripped and forced breakers before anything is served (principle 2). State
    // we cannot read is a reason not to start, never to start "all closed".
    auto saved = db->load_breaker_state(*clock_, &error);
    if (!saved) {
        throw std::runtime_error("cannot restore breaker state: " + error +
                                 " (refusing to start with every breaker closed)");
    }
    // The keys of requests sent live before the restart: a retry of one while a breaker
    // quarantines is refused, not held and released into a second send. Unreadable, they
    // are a reason not to start (as meters are): forgetting them is exactly that risk. Read
    // here, before anything needs undoing; restored once the store is in use (below).
    const auto steady_now_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock_->now().time_since_epoch()).count();
    std::vector<std::pair<std::uint64_t, std::int64_t>> saved_keys;
    // Changes to them since the store's last save, from the journal a crash leaves behind.
    std::vector<store::key_journal::entry> journalled_keys;
    std::unique_ptr<store::key_journal> keys_journal;
    const auto keys_wall_now =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock_->wall_now().time_since_epoch()).count();
    {
        auto keys = db->load_forwarded_keys(keys_wall_now - forwarded_.memory().count(), forwarded_.max(), &error);
        if (!keys) {
            throw std::runtime_error("cannot restore the keys of requests sent live: " + error +
                                     " (refusing to start: their retries could be held and released a second time)");
        }
        saved_keys.reserve(keys->size());
        for (const auto& k : *keys) {
            // On this process's steady clock; one "later" than now (the wall clock went back)
            // counts as now, once the journal was replayed over it (forwarded_keys::restore).
            saved_keys.emplace_back(k.digest, steady_now_ms - (keys_wall_now - *k.sent_wall_ms));
        }
        if (!saved_keys.empty()) {
            spdlog::info("restored the keys of {} request(s) sent live from {}", saved_keys.size(), sc.path);
        }
        keys_journal = store::key_journal::open(sc.path, &journalled_keys, &error);
        if (!keys_journal) {
            throw std::runtime_error("cannot open the journal of keys of requests sent live: " + error +
                                     " (refusing to start: their retries could be held and released a second time)");
        }
        if (!journalled_keys.empty()) {
            spdlog::info("replayed {} change(s) to the keys of requests sent live from {} (made after the store's "
                         "last save of them)",
                         journalled_keys.size(), sc.path + ".sent-keys.*");
        }
        if (keys_journal->skipped_at_open() > 0) {
            spdlog::warn("{} damaged entr(ies) in the journal of keys of requests sent live skipped (left by a crash "
                         "of the machine?); the keys they held are not remembered",
                         keys_journal->skipped_at_open());
        }
    }
    const auto legacy = sc.breaker_state_path();
    bool adopt = false;
    if (saved->empty() && std::filesystem::exists(legacy)) {
        // Written by an earlier build (before the SQLite store): adopted into a store that
        // never saved breaker state, once. "Nothing saved" is not "everything at rest": a
        // file left behind (a rename that failed or was lost in a crash) must not bring an
        // old trip or forced_closed back over what the store says now.
        const auto ever = db->breaker_state_saved(&error);
        if (!ever) {
            throw std::runtime_error("cannot restore breaker state: " + error +
                                     " (refusing to start with every breaker closed)");
        }
        adopt = !*ever;
        if (*ever) {
            spdlog::warn("{} was left by an earlier build, but this store has saved breaker state since: not "
                         "restored (move it aside)",
                         legacy);
        }
    }
    if (adopt) {
        auto from_file = store::load_breaker_state(legacy, *clock_, &error);
        if (!from_file) {
            throw std::runtime_error("cannot restore breaker state: " + error +
                                     " (refusing to start with every breaker closed; repair or move the file aside)");
        }
        saved = std::move(from_file);
    }
    // Saved before keys were written as people can type them back (rules/engine.cpp): under
    // the name the same requests map to now, or a tripped key would come back as an
    // instance no request reaches, and its traffic would go through a fresh, closed one.
    // Two that become one are merged by restore(), containing what either contained.
    // Of breakers the config lacks (kept aside, saved as they are), only the first of a name
    // is kept: the table has one row per instance.
    bool renamed = false;
    for (auto& s : *saved) {
        if (!s.key.empty() && needs_escape(s.key)) {
            s.key = escape_unshowable(s.key, rules::max_key_bytes);
            s.instance = s.breaker + "/" + s.key;
            renamed = true;
        }
    }
    if (renamed) {
        std::set<std::string> seen;
        std::erase_if(*saved, [&](const breakers::instance_snapshot& s) {
            const bool twice = !seen.insert(s.instance).second;
            if (twice && rt_->breakers->find(s.breaker) == nullptr) {
                spdlog::warn("breaker state: two saved instances of unconfigured breaker {} are both {} now; the "
                             "first is kept",
                             s.breaker, s.instance);
                return true;
            }
            return false;
        });
    }
    std::vector<breakers::instance_snapshot> known;
    std::vector<breakers::instance_snapshot> kept;
    std::set<std::string> missing;
    for (auto& s : *saved) {
        if (rt_->breakers->find(s.breaker) != nullptr) {
            known.push_back(std::move(s));
        } else {
            missing.insert(s.breaker);
            kept.push_back(std::move(s));
        }
    }
    // Before the first save below, which writes the registry's state: restored (in memory)
    // first. At a reload the running config has no breakers, so nothing is restored here.
    rt_->breakers->restore(known, clock_->now(), true);
    if (!known.empty()) {
        spdlog::warn("restored {} breaker instance(s) from {}", known.size(), sc.path);
    }
    alert_restored_open(known, "after a restart");
    if (!kept.empty()) {
        std::string names;
        for (const auto& m : missing) {
            names += (names.empty() ? "" : ", ") + m;
        }
        spdlog::warn("the store has the state of {} instance(s) of breakers this config does not have ({}): "
                     "kept, not enforced; restored when a reload configures them again",
                     kept.size(), names);
    }
    // From here a hold or a containment waits for the save of the change it reports.
    saved_through_.store(0, std::memory_order_release);
    auto writer = std::make_unique<store::breaker_state_writer>(
        sc.path,
        [this] {
            // Read before the snapshot, which then holds every change up to it; unless the
            // registry is handing over to a reload's, whose changes it may lack (the save
            // requested after the switch covers those).
            const auto change = breakers::changes_so_far();
            const auto rt = current_runtime();
            snapshot_change_ = rt->breakers->handed_over() ? 0 : change;
            auto all = rt->breakers->snapshot(clock_->now());
            std::lock_guard lock{orphans_mu_};
            fold_retired(clock_->now());  // after reading `change`: a trip numbered up to it is in
            if (orphans_.empty()) {
                return all;
            }
            // Not an orphan of a breaker the registry's snapshot has already: a reload that
            // configures a dropped breaker again restores its kept state into the successor,
            // which a snapshot through the handed-over registry includes, while the kept copy
            // waits in orphans_ until the publish. Written twice (under its own name, or
            // under the instance it folded into: a wider scope, the overflow), the save fails
            // or a crash restores it twice; the registry's copy is the live one.
            std::unordered_set<std::string> have;
            for (const auto& snap : all) {
                have.insert(snap.breaker);
            }
            for (const auto& o : orphans_) {
                if (rt->breakers->find(o.breaker) == nullptr && !have.contains(o.breaker)) {
                    all.push_back(o);
                }
            }
            return all;
        },
        [this, db = db.get()](std::vector<breakers::instance_snapshot> instances) {
            std::promise<store::result> done;
            auto f = done.get_future();
            db->save_breaker_state(std::move(instances), [&done](const store::result& r) { done.set_value(r); });
            const auto r = f.get();
            if (!r.ok) {
                return r.code + ": " + r.message;
            }
            saved_through_.store(std::max(saved_through_.load(std::memory_order_relaxed), snapshot_change_),
                                 std::memory_order_release);
            return std::string{};
        },
        *clock_);
    // A failed save is logged and alerted (sev1, at most once a minute): the writer keeps
    // trying, but until it succeeds a restart would come back without what changed.
    writer->on_failure([this](const std::string& err) {
        report_store_trouble(store_part::breaker_state, "breaker state not saved (" + err +
                             "); trying again: until a save succeeds, a restart would not see the trips and "
                             "operator actions since the last one");
    });
    writer->on_recovery([this] { store_writes_again(store_part::breaker_state); });
    // The state of breakers the running config lacks waits in orphans_ (the writer saves it
    // from there) until a reload configures them again.
    {
        std::lock_guard lock{orphans_mu_};
        orphans_.insert(orphans_.end(), kept.begin(), kept.end());
        for (const auto& k : kept) {
            orphans_from_store_.insert(k.instance);
        }
    }
    // Prove the store is writable now rather than at the first trip.
    writer->request();
    if (!writer->flush()) {
        const auto why = writer->last_error();
        writer.reset();
        saved_through_.store(~std::uint64_t{0}, std::memory_order_release);
        std::lock_guard lock{orphans_mu_};
        orphans_.resize(orphans_.size() - kept.size());
        for (const auto& k : kept) {
            orphans_from_store_.erase(k.instance);
        }
        throw std::runtime_error("cannot write breaker state: " + why);
    }

    if (adopt) {
        std::error_code ec;
        std::filesystem::rename(legacy, legacy + ".migrated", ec);
        if (ec) {
            spdlog::warn("could not rename {} after adopting it ({}); the store has its state now, so it is not "
                         "adopted again",
                         legacy, ec.message());
        }
    }
    forwarded_.restore(std::move(saved_keys), steady_now_ms, std::move(keys_journal), journalled_keys,
                       keys_wall_now);  // read above, with the breaker state
    // Keys sent live before the upgrade that scoped keys by agent alone were remembered by
    // route: looked up so, under the names of the routes configured now and in every config
    // version kept (a rename must not hide them), until they age out.
    const std::int64_t keys_by_agent_since = db->keys_by_agent_since_ms();
    const std::int64_t keys_memory = forwarded_.memory().count();
    if (keys_by_agent_since + keys_memory > keys_wall_now) {
        std::vector<std::string> route_names;
        for (const auto& r : current_config()->routes) {
            route_names.push_back(r.name);
        }
        std::string versions_error;
        if (const auto versions = db->config_version_texts(&versions_error)) {
            std::size_t unread = 0;
            for (const auto& json : *versions) {
                unread += add_route_names(json, route_names) ? 0 : 1;
            }
            if (unread > 0) {
                spdlog::warn("{} config version(s) in {} do not read as JSON: the keys of requests sent live before "
                             "the upgrade are not looked up under their routes",
                             unread, sc.path);
            }
        } else {
            spdlog::warn("{}: the keys of requests sent live before the upgrade are looked up under the routes "
                         "configured now only",
                         versions_error);
        }
        forwarded_.by_route(steady_now_ms + (keys_by_agent_since - keys_wall_now) + keys_memory, std::move(route_names));
    }
    db_ = std::move(db);
    state_writer_ = std::move(writer);
    remediation_ = std::make_unique<class remediation>(control_, *db_, *this);
    // Published last: a thread that sees the store sees all of the above.
    db_view_.store(db_.get(), std::memory_order_release);
}

bool server::save_forwarded_keys(bool wait) {
    if (!db()) {
        return true;
    }
    {
        std::unique_lock lock{forwarded_mu_};
        if (wait) {
            forwarded_cv_.wait(lock, [&] { return !forwarded_saving_; });
        } else if (forwarded_saving_) {
            return true;  // the next tick takes what changed meanwhile
        }
        forwarded_saving_ = true;
    }
    // `journal_file`: the journal file the changes' save covers (forwarded_keys::changes()).
    auto finish = [this](const std::vector<forwarded_keys::change>* failed, const store::result* r,
                         int journal_file) {
        if (failed != nullptr) {
            forwarded_.retry(*failed);  // with the next save
        } else if (r != nullptr && r->ok) {
            forwarded_.saved(journal_file);  // its entries are in the store now
        }
        if (const auto lost = forwarded_.journal_failures(); lost != journal_failures_logged_.exchange(lost)) {
            spdlog::warn("{} change(s) to the keys of requests sent live could not be written to their journal "
                         "(disk full?) since the start: a crash before the next save of them forgets them",
                         lost);
        }
        std::lock_guard lock{forwarded_mu_};
        forwarded_saving_ = false;
        if (r != nullptr && !r->ok && !forwarded_failing_) {
            spdlog::warn("keys of requests sent live not saved ({}: {}); trying again at the next tick: until a "
                         "save succeeds, a restart forgets the keys sent since the last one",
                         r->code, r->message);
        } else if (r != nullptr && r->ok && forwarded_failing_) {
            spdlog::info("keys of requests sent live saved again");
        }
        if (r != nullptr) {
            forwarded_failing_ = !r->ok;
        }
        forwarded_cv_.notify_all();  // under the lock: a waiter that returns may destroy us
    };
    std::vector<forwarded_keys::change> changes;
    int journal_file = -1;
    std::future<bool> saved;
    try {
        // Steady times of this process onto the wall clock by one offset, as the journal writes
        // them (forwarded_keys::wall_offset; moved, and every key rewritten, after a clock step).
        const auto steady_now =
            std::chrono::duration_cast<std::chrono::milliseconds>(clock_->now().time_since_epoch()).count();
        const auto wall_now =
            std::chrono::duration_cast<std::chrono::milliseconds>(clock_->wall_now().time_since_epoch()).count();
        changes = forwarded_.changes(&journal_file, wall_now - steady_now);
        const auto offset = forwarded_.wall_offset();
        if (changes.empty()) {
            finish(nullptr, nullptr, -1);  // aged rows go with the next save that writes something
            return true;
        }
        std::vector<store::database::forwarded_key> rows;
        rows.reserve(changes.size());
        for (const auto& c : changes) {
            rows.push_back({c.digest, c.sent_ms ? std::optional{*c.sent_ms + offset} : std::nullopt});
        }
        auto done = std::make_shared<std::promise<bool>>();
        saved = done->get_future();
        db()->save_forwarded_keys(std::move(rows), steady_now + offset - forwarded_.memory().count(),
                                  [finish, changes, done, journal_file](const store::result& r) {
                                      finish(r.ok ? nullptr : &changes, &r, journal_file);
                                      done->set_value(r.ok);
                                  });
    } catch (const std::exception& e) {
        // Not queued (the store queues an operation whole or not at all).
        const store::result failed = store::result::failure("save_failed", e.what());
        finish(&changes, &failed, -1);
        return false;
    }
    return !wait || saved.get();
}

std::shared_ptr<const runtime> server::build_runtime(std::shared_ptr<const config> cfg, const runtime* previous,
                                                     const std::function<void(breakers::breaker_registry&)>& prepare,
                                                     const std::function<void(rules::engine&)>& restore) {
    auto rt = std::make_shared<runtime>();
    rt->cfg = cfg;
    if (cfg->rules && !cfg->rules->rules.empty()) {
        rt->engine = std::make_shared<rules::engine>(cfg->rules, previous ? previous->engine.get() : nullptr);
        if (restore) {
            restore(*rt->engine);  // may throw: nothing of `previous` is changed yet
        }
    }
    // The registry keeps breaker state across reloads: reuse it when the breakers did not
    // change; otherwise carry every instance of a breaker that still exists over.
    auto same_breakers = [&] {
        if (!previous || previous->cfg->breakers.size() != cfg->breakers.size()) {
            return false;
        }
        for (std::size_t i = 0; i < cfg->breakers.size(); ++i) {
            const auto& a = cfg->breakers[i];
            const auto& b = previous->cfg->breakers[i];
            if (a.id != b.id || a.act != b.act || a.reset != b.reset || a.cooldown != b.cooldown ||
                a.max_cooldown != b.max_cooldown || a.half_open_probes != b.half_open_probes ||
                a.retry_after != b.retry_after || a.max_instances != b.max_instances ||
                a.throttle.requests != b.throttle.requests || a.throttle.interval != b.throttle.interval ||
                a.sandbox_upstream != b.sandbox_upstream || a.per_key != b.per_key) {
                return false;
            }
        }
        return true;
    };
    if (previous && same_breakers()) {
        rt->breakers = previous->breakers;
    } else {
        rt->breakers = std::make_shared<breakers::breaker_registry>(
            cfg->breakers, [this](const breakers::transition& t) { on_transition(t); });
        std::set<std::string, std::less<>> taken_live;  // breakers a retired registry handed over
        if (previous) {
            // Every instance of a breaker that still exists moves to the new registry, and
            // requests still finishing on the old config forward their trips and probe
            // results there: nothing tripped during the swap is lost.
            // The state of a breaker this config drops is kept as well (it comes back with
            // the breaker), like the state of one missing at a start.
            std::size_t dropped = 0;
            bool dropped_breakers = false;
            for (const auto& b : previous->cfg->breakers) {
                dropped_breakers = dropped_breakers || rt->breakers->find(b.id) == nullptr;
            }
            for (auto& snap : previous->breakers->snapshot(clock_->now())) {
                if (rt->breakers->find(snap.breaker) == nullptr && !snap.at_rest()) {
                    std::lock_guard lock{orphans_mu_};
                    orphans_from_store_.erase(snap.instance);
                    // One copy per instance: the state save writes them under one key.
                    std::erase_if(orphans_, [&](const auto& o) { return o.instance == snap.instance; });
                    orphans_.push_back(std::move(snap));
                    ++dropped;
                }
            }
            if (dropped > 0) {
                spdlog::warn("the new config drops breakers with {} instance(s) not closed: their state is kept, "
                             "not enforced, and restored if they are configured again",
                             dropped);
            }
            previous->breakers->hand_over(rt->breakers, clock_->now());
            // A breaker an earlier reload dropped, still held by a registry that requests on
            // an older config use, moves here live like the rest (its copy in orphans_ is not
            // restored: it may be older than what those requests did since).
            std::vector<std::shared_ptr<breakers::breaker_registry>> retired;
            {
                std::lock_guard lock{orphans_mu_};
                for (const auto& b : fold_retired(clock_->now())) {
                    if (rt->breakers->find(b) != nullptr) {
                        taken_live.insert(b);
                    }
                }
                retired = retired_registries_;
                if (dropped_breakers) {
                    retired_registries_.push_back(previous->breakers);
                }
            }
            for (const auto& r : retired) {
                r->hand_over(rt->breakers, clock_->now());
            }
        }
        // A breaker configured again gets the state the store kept for it. The kept copy
        // stays in orphans_ until the new runtime is published (apply_config): a state write
        // in between still takes it from there, so the store never lacks it.
        // One read from the store and not live since the start is restored as at a start:
        // an open one whose cooldown ended while breakerbox was down (a probe may have gone
        // out and its result been lost) gets a fresh cooldown, not a probe at once.
        std::vector<breakers::instance_snapshot> back;
        std::vector<breakers::instance_snapshot> back_from_store;
        {
            std::lock_guard lock{orphans_mu_};
            for (const auto& o : orphans_) {
                if (rt->breakers->find(o.breaker) != nullptr && !taken_live.contains(o.breaker)) {
                    (orphans_from_store_.contains(o.instance) ? back_from_store : back).push_back(o);
                }
            }
        }
        if (!back.empty() || !back_from_store.empty()) {
            rt->breakers->restore(back_from_store, clock_->now(), true);
            rt->breakers->restore(back, clock_->now());
            spdlog::warn("restored the kept state of {} instance(s) of breakers configured again",
                         back.size() + back_from_store.size());
            // Paged once this runtime runs: what the store kept and what an earlier reload
            // dropped from this very process alike (that reload resolved their incidents).
            rt->configured_again = std::move(back_from_store);
            rt->configured_again.insert(rt->configured_again.end(), back.begin(), back.end());
        }
        // So are those that came back live from a retired registry (their names suffice:
        // the page reads each instance as it is now).
        for (const auto& name : taken_live) {
            breakers::instance_snapshot s;
            s.breaker = name;
            rt->configured_again.push_back(std::move(s));
        }
    }
    // Before any request runs the new rules (only requests on the old config, with the old
    // rules, can reach the registry until the workers switch).
    if (prepare) {
        prepare(*rt->breakers);
    }
    for (const auto& u : cfg->upstreams) {
        upstream_guard g;
        g.rule_host = std::string{host_name(u.host)};
        std::transform(g.rule_host.begin(), g.rule_host.end(), g.rule_host.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        if (previous) {
            for (std::size_t i = 0; i < previous->cfg->upstreams.size(); ++i) {
                const auto& pu = previous->cfg->upstreams[i];
                if (pu.name == u.name) {
                    g.quota = previous->upstreams[i].quota;
                    if (u.health && pu.health && pu.health->consecutive_failures == u.health->consecutive_failures &&
                        pu.health->failure_ratio == u.health->failure_ratio && pu.health->window == u.health->window &&
                        pu.health->min_volume == u.health->min_volume && pu.health->slow_call == u.health->slow_call &&
                        pu.health->slow_ratio == u.health->slow_ratio) {
                        g.health = previous->upstreams[i].health;
                    }
                }
            }
        }
        if (!g.quota) {
            g.quota = std::make_shared<breakers::quota_pause>();
        }
        if (u.health) {
            g.breaker = "upstream/" + u.name;
            if (!g.health) {
                g.health = std::make_shared<breakers::health_tracker>(*u.health);
            }
        }
        rt->upstreams.push_back(std::move(g));
    }
    for (const auto& r : cfg->routes) {
        bool any = false;
        bool response = false;
        bool response_body = false;
        if (rt->engine) {
            for (const auto idx : cfg->rules->rules_for(r.name)) {
                const auto& rule = cfg->rules->rules[idx];
                any = true;
                response = response || rule.response_side;
                response_body = response_body || rule.measure.needs_response_json ||
                                (rule.ratio_of && rule.ratio_of->needs_response_json);
            }
        }
        rt->route_has_rules.push_back(any ? 1 : 0);
        rt->route_has_response_rules.push_back(response ? 1 : 0);
        rt->route_reads_response_body.push_back(response_body ? 1 : 0);
    }
    return rt;
}

// The most severe severity an incident's alerts went out with (the list is kept sorted),
// past the marker of an instance restored open; nullptr when none is known.
const std::string* server::most_severe_known(const std::vector<std::string>& sent_as) {
    for (const auto& sev : sent_as) {
        if (sev != unknown_severity) {
            return &sev;
        }
    }
    return nullptr;
}

std::map<std::string, std::uint64_t, std::less<>> server::trip_counts() const {
    std::lock_guard lock{trips_mu_};
    return trips_;
}

std::string server::trip_severity(const std::string& breaker, const std::string& rule, std::string* failure_mode) const {
    // A rule's trip has its failure mode's severity; an upstream's breaker sev2; the rest
    // (an operator's act) sev3.
    if (!rule.empty()) {
        if (const auto rt = current_runtime(); rt->engine) {
            if (const auto* r = rt->engine->rules().find_rule(rule)) {
                const auto& fm = rt->engine->rules().mode_of(*r);
                *failure_mode = fm.id;
                return std::string{rules::to_string(fm.sev)};
            }
        }
        return "sev3";
    }
    return breaker.starts_with("upstream/") ? "sev2" : "sev3";
}

void server::note_alert_severity(const std::string& instance, const std::string& severity) {
    std::lock_guard lock{alert_severity_mu_};
    auto& sevs = alert_severity_[instance];  // kept sorted
    if (std::find(sevs.begin(), sevs.end(), severity) == sevs.end()) {
        sevs.insert(std::lower_bound(sevs.begin(), sevs.end(), severity), severity);
    }
}

void server::alert_restored_open(const std::vector<breakers::instance_snapshot>& restored, const std::string& when) {
    // An instance that comes back containing (open or half-open under its own judgement, or
    // held open by an operator) pages again under its own dedup key: the page of its trip may
    // never have gone out (a crash right after the trip, or a sink down until the restart
    // dropped the queue), and the traffic it contains would otherwise be held or refused with
    // nobody told. A page that did go out takes it in (PagerDuty folds a trigger into the open
    // incident of the same dedup key); chat sinks get a line saying what is still open after
    // the restart. Judged on the instances as restored (a mode that expired meanwhile, a key
    // saved under an older spelling, an instance folded into the overflow one), not on the
    // saved rows. Per-key instances page one by one up to storm_alerts per breaker; the rest
    // are counted in one alert per breaker at once (a crash loop must not leave them unsaid
    // for want of a minute's tick), and none of them takes the first minute's room of new trips.
    const auto dispatcher = alerts();
    if (!dispatcher || restored.empty()) {
        return;
    }
    std::set<std::string> names;
    for (const auto& s : restored) {
        names.insert(s.breaker);
    }
    const auto rt = current_runtime();
    struct held_back {
        std::size_t count = 0;
        std::string worst;
    };
    std::map<std::string, std::size_t> paged;
    std::map<std::string, held_back> rest;
    for (const auto& s : rt->breakers->snapshot(clock_->now())) {
        if (!s.containing() || !names.contains(s.breaker)) {
            continue;
        }
        alerts::alert a;
        a.event = "breaker_restored_open";
        a.breaker = s.instance;
        a.dedup_key = s.instance;
        a.key = s.key;
        if (s.last_trip) {
            a.rule = s.last_trip->cause.rule;
            a.actor = s.last_trip->cause.actor;
            a.reason = s.last_trip->cause.reason;
            a.request_id = s.last_trip->cause.request_id;
        }
        a.severity = trip_severity(s.breaker, a.rule, &a.failure_mode);
        if (s.instance != s.breaker && paged[s.breaker]++ >= storm_alerts) {
            auto& r = rest[s.breaker];
            ++r.count;
            storm::keep_most_severe(r.worst, a.severity);
            std::lock_guard lock{storms_mu_};
            storms_[s.breaker].counted_at_start.insert(s.instance);
            continue;
        }
        a.summary = "breaker " + s.instance + " is still " +
                    (s.md == breakers::mode::forced_open ? std::string{"held open by an operator"}
                                                         : std::string{breakers::to_string(s.st)}) +
                    " " + when + (a.reason.empty() ? "" : " (tripped: " + a.reason + ")");
        dispatcher->publish(a);
        note_alert_severity(s.instance, a.severity);
    }
    for (const auto& [breaker, r] : rest) {
        alerts::alert a;
        a.event = "breaker_storm";
        a.breaker = breaker;
        a.dedup_key = "storm:" + breaker;
        a.severity = r.worst;
        a.summary = "breaker " + breaker + ": " + std::to_string(r.count) + " more instance(s) still open " + when +
                    ", beyond " + std::to_string(storm_alerts) +
                    " alerted one by one (GET /v1/breakers lists them)";
        dispatcher->publish(a);
    }
}

void server::on_transition(const breakers::transition& t) {
    // Called on whichever thread made the transition (a worker, or the control thread):
    // the log is asynchronous and persistence is only requested, never waited on here.
    spdlog::warn("breaker {}: {}/{} -> {}/{} by {} ({}){}", t.instance, breakers::to_string(t.from),
                 breakers::to_string(t.mode_from), breakers::to_string(t.to), breakers::to_string(t.mode_to),
                 t.cause.actor.empty() ? t.cause.kind : t.cause.actor, t.cause.kind,
                 t.cause.reason.empty() ? std::string{} : ": " + t.cause.reason);
    if (state_writer_) {
        state_writer_->request();
    }
    if (t.trip) {
        std::lock_guard lock{trips_mu_};
        ++trips_[t.breaker];
    }
    if (t.cause.kind == "restore" &&
        !(t.to == breakers::state::closed && t.mode_to == breakers::mode::automatic)) {
        // Open (or held by an operator) when the process stopped: its incident may have paged
        // sinks whose severities this process never knew (they are kept in memory). Marked
        // unknown, its resolve goes to every sink, not only to those of a later alert's
        // severity (a failed probe's re-trip is sev3), which would leave a sev1 page open.
        std::lock_guard lock{alert_severity_mu_};
        auto& sevs = alert_severity_[t.instance];
        if (std::find(sevs.begin(), sevs.end(), unknown_severity) == sevs.end()) {
            sevs.insert(sevs.begin(), std::string{unknown_severity});
        }
    }
    if (const auto dispatcher = alerts(); dispatcher && t.cause.kind != "restore") {
        alerts::alert a;
        a.breaker = t.instance;
        a.dedup_key = t.instance;
        a.rule = t.cause.rule;
        a.key = t.cause.key;
        a.actor = t.cause.actor;
        a.reason = t.cause.reason;
        a.request_id = t.cause.request_id;
        a.severity = trip_severity(t.breaker, t.cause.rule, &a.failure_mode);
        // An incident's later alerts (its resolve, a failed probe's re-trip, an operator's
        // mode change) carry the severity it opened with: a pager sink that takes sev1 and
        // sev2 only must get the resolve of what it paged, or the incident stays open and
        // later trips fold into it under the same dedup key without paging.
        std::vector<std::string> sent_as;  // the severities the incident's alerts went out with
        {
            std::lock_guard lock{alert_severity_mu_};
            if (const auto it = alert_severity_.find(t.instance); it != alert_severity_.end()) {
                sent_as = it->second;
            }
        }
        const bool severity_unknown =
            std::find(sent_as.begin(), sent_as.end(), unknown_severity) != sent_as.end();
        if (const std::string* known = most_severe_known(sent_as); t.cause.rule.empty() && known != nullptr) {
            a.severity = *known;
        }
        const bool opened = t.from != breakers::state::open && t.to == breakers::state::open;
        const bool normal_before = t.from == breakers::state::closed && t.mode_from == breakers::mode::automatic;
        const bool normal_after = t.to == breakers::state::closed && t.mode_to == breakers::mode::automatic;
        if (!normal_before && normal_after) {
            // Traffic flows again under the breaker's own judgement, whatever brought it back
            // (a reset, a probe, an operator's mode expiring: forced_open leaves the state
            // closed, so its end is a mode change alone): resolves the page. First, since
            // resetting a manual trip on a self-resetting breaker also ends its forced_open
            // (a mode change, which paged again under the same dedup key).
            a.event = "breaker_reset";
            a.resolve = true;
        } else if (t.cause.kind == "manual" && t.mode_from != t.mode_to) {
            a.event = "breaker_mode";
        } else if (t.cause.kind == "manual" && opened) {
            a.event = "breaker_manual_trip";
        } else if (opened) {
            a.event = "breaker_tripped";
        }
        // A storm (one misfire opening hundreds of per-key instances): each breaker's trips
        // page one by one up to storm_alerts a minute; the rest are summed up by the
        // control tick (report_storms), and their resolves, of pages never sent, are not sent.
        // An instance with an incident open (a failed probe's re-trip) is not limited: its
        // alert folds into the page already sent, and counting it would hold back first trips.
        if (!a.event.empty() && t.instance != t.breaker && (a.event == "breaker_tripped" || a.resolve)) {
            std::lock_guard lock{storms_mu_};
            auto& st = storms_[t.breaker];
            if (a.resolve) {
                // Not sent only when nothing of the incident was: a trip held back, never
                // paged later (re-trips, operators' mode changes) either.
                if (st.unpaged.erase(t.instance) > 0 && sent_as.empty()) {
                    a.event.clear();
                }
                // Restored open and only counted at the start, not paged since: whether its
                // trip paged before the restart is not known. A storm of them closing sends
                // chat sinks no line each.
                if (st.counted_at_start.erase(t.instance) > 0 && most_severe_known(sent_as) == nullptr) {
                    a.not_to_chat = true;
                }
            } else if (sent_as.empty()) {
                const auto now = clock_->now();
                if (!st.window || now - *st.window >= std::chrono::minutes{1}) {
                    st.close_window();  // what it held back is told by the next tick
                    st.window = now;
                    st.paged = 0;
                }
                if (st.paged >= storm_alerts) {
                    ++st.suppressed;
                    st.unpaged.insert(t.instance);
                    storm::keep_most_severe(st.worst, a.severity);
                    st.last_reason = a.reason;
                    a.event.clear();
                } else {
                    ++st.paged;
                    st.unpaged.erase(t.instance);
                }
            } else {
                st.unpaged.erase(t.instance);  // paged now: its resolve goes out
            }
        }
        if (!a.event.empty()) {
            a.summary = "breaker " + t.instance + ": " + std::string{breakers::to_string(t.from)} + " -> " +
                        std::string{breakers::to_string(t.to)} +
                        (t.mode_from != t.mode_to ? " (mode " + std::string{breakers::to_string(t.mode_to)} + ")" : "") +
                        (t.cause.reason.empty() ? "" : ": " + t.cause.reason);
            if (a.resolve) {
                // Once per severity the incident's alerts had: every sink that got one of
                // them gets the resolve (a sink taking several gets it more than once;
                // PagerDuty folds those by dedup key). Not known (they are kept in memory:
                // a restart since the trip): once to every sink, so that a pager sink taking
                // sev1 and sev2 only gets the resolve of what it paged before the restart.
                a.every_sink = sent_as.empty() || severity_unknown;
                if (a.every_sink) {
                    dispatcher->publish(a);
                } else {
                    for (const auto& sev : sent_as) {
                        a.severity = sev;
                        dispatcher->publish(a);
                    }
                }
            } else {
                dispatcher->publish(a);
                if (!a.resolve) {
                    note_alert_severity(t.instance, a.severity);
                }
            }
        }
    }
    if (t.to == breakers::state::closed && t.mode_to == breakers::mode::automatic) {
        std::lock_guard lock{alert_severity_mu_};
        alert_severity_.erase(t.instance);  // the incident is over
    }
    // Likewise a rule's breaker going half-open or closed: its response-side rules forget
    // the failures that opened it (engine::forget_response_counts), or the probe, judged by
    // them, would reopen it at once, every cooldown, until they age out of the window.
    if (t.from != breakers::state::closed && t.to != breakers::state::open && t.from != t.to &&
        !t.breaker.starts_with("upstream/") && !t.breaker.starts_with("agent/")) {
        if (const auto rt = current_runtime(); rt->engine) {
            const std::string_view instance = t.instance;
            std::optional<std::string_view> key;
            if (instance.size() > t.breaker.size() + 1 && instance.substr(t.breaker.size() + 1) != breakers::overflow_key) {
                key = instance.substr(t.breaker.size() + 1);
            }
            rt->engine->forget_response_counts(t.breaker, key);
        }
    }
    // A recovered upstream starts with a clean health record, or the failures that opened
    // the breaker would count against it again right away.
    if (t.to == breakers::state::closed && t.breaker.starts_with("upstream/")) {
        const auto rt = current_runtime();
        for (const auto& g : rt->upstreams) {
            if (g.breaker == t.breaker && g.health) {
                g.health->reset(clock_->now());
            }
        }
    }
}

void server::report_store_trouble(store_part part, const std::string& message) {
    spdlog::error("store trouble: {}", message);
    std::lock_guard lock{store_page_mu_};
    store_failing_.fetch_or(static_cast<unsigned>(part));
    const auto dispatcher = alerts();
    if (!dispatcher) {
        return;
    }
    if (!store_alerted_.due(now())) {
        // One alert a minute is enough to wake someone; the log has every failure. But one
        // after a resolve in the same minute is a new incident: held for the tick to page
        // once due, or on-call sees it resolved while holds are refused.
        if (!store_paged_) {
            store_page_held_ = message;
        }
        return;
    }
    page_store_trouble(*dispatcher, message);
}

void server::page_store_trouble(alerts::dispatcher& dispatcher, const std::string& message) {
    store_page_held_.clear();
    alerts::alert a;
    a.event = "store_trouble";
    a.severity = "sev1";
    const auto store_path = current_config()->store.path;
    a.summary = "breakerbox cannot write its store (" + store_path + "): " + message;
    a.dedup_key = "store:" + store_path;
    a.reason = message;
    dispatcher.publish(a);
    store_paged_ = true;
}

void server::report_held_store_trouble() {
    std::lock_guard lock{store_page_mu_};
    if (store_page_held_.empty()) {
        return;
    }
    if (store_failing_.load(std::memory_order_relaxed) == 0 || store_paged_) {
        store_page_held_.clear();  // it writes again, or a page went out since
        return;
    }
    const auto dispatcher = alerts();
    if (dispatcher && store_alerted_.due(now())) {
        page_store_trouble(*dispatcher, std::string{store_page_held_});
    }
}

void server::store_writes_again(store_part part) {
    const auto bit = static_cast<unsigned>(part);
    if ((store_failing_.load(std::memory_order_relaxed) & bit) == 0) {
        return;
    }
    std::lock_guard lock{store_page_mu_};
    if ((store_failing_.fetch_and(~bit) & ~bit) != 0) {
        return;  // another part still fails
    }
    const auto store_path = current_config()->store.path;
    spdlog::info("store writes again ({})", store_path);
    if (!store_paged_) {
        return;
    }
    store_paged_ = false;
    // To the dispatcher running now; one a reload replaced after the trigger still has it
    // (or sent it), to sinks this one may not have (known: a removed sink keeps the page).
    if (const auto dispatcher = alerts()) {
        alerts::alert a;
        a.event = "store_trouble";
        a.severity = "sev1";
        a.summary = "breakerbox writes its store again (" + store_path + ")";
        a.dedup_key = "store:" + store_path;
        a.resolve = true;
        dispatcher->publish(a);
    }
}

void server::persist_breakers(std::function<void(bool)> done) {
    if (!state_writer_) {
        done(true);
        return;
    }
    state_writer_->request(std::move(done));
}

void server::for_each_worker(const std::function<void(worker&)>& f) {
    for (auto& w : workers_) {
        run_on(w->ioc(), [&] { f(*w); });
    }
}

void server::count_admin_action(std::string_view path, unsigned status) {
    // Families, not raw paths: ids in paths would make the label set unbounded.
    std::string family = "other";
    for (std::string_view f : {"/metrics", "/v1/breakers", "/v1/quarantine", "/v1/config", "/v1/audit"}) {
        if (path.substr(0, f.size()) == f) {
            family = std::string{f};
        }
    }
    std::lock_guard lock{admin_counts_mu_};
    ++admin_counts_[{family, status}];
}

std::map<std::pair<std::string, unsigned>, std::uint64_t> server::admin_action_counts() const {
    std::lock_guard lock{admin_counts_mu_};
    return admin_counts_;
}

std::uint16_t server::admin_port() const {
    return admin_ ? admin_->port() : 0;
}

remediation& server::remediation() {
    if (!remediation_) {
        throw std::logic_error("remediation needs the store (configure at least one breaker)");
    }
    return *remediation_;
}

void server::restore_meters(rules::engine& engine, const std::string& path, const rules::engine* running) {
    // A cap must not come back from a restart as a fresh one (PRODUCT.md principle 4):
    // counts that cannot be read are a reason not to start, as breaker state is.
    std::string error;
    auto loaded = db()->load_meters(*clock_, &error);
    if (!loaded) {
        throw std::runtime_error("cannot restore rule meters: " + error + " (refusing to start with every cap at zero)");
    }
    std::vector<rules::engine::saved_meter> saved;
    saved.reserve(loaded->size());
    for (auto& m : *loaded) {
        if (running && engine.shares_meter_with(*running, m.rule_id)) {
            continue;
        }
        saved.push_back({std::move(m.rule_id), m.fingerprint, std::move(m.state), m.offset});
    }
    const auto restored = engine.restore_meters(saved, clock_->now(), &error);
    if (!restored) {
        throw std::runtime_error("cannot restore rule meters: store " + path + ": " + error +
                                 " (refusing to start with every cap at zero; deleting the rule's row from the "
                                 "rule_meters table starts it from zero)");
    }
    std::string started_over;
    for (const auto& m : saved) {
        if (std::find(restored->begin(), restored->end(), m.rule_id) == restored->end()) {
            started_over += (started_over.empty() ? "" : ", ") + m.rule_id;
        }
    }
    if (!restored->empty()) {
        spdlog::info("restored the counts of {} rule(s) from {}", restored->size(), path);
    }
    if (!started_over.empty()) {
        spdlog::warn("rule(s) {} changed or were removed since their counts were saved: they start from zero", started_over);
    }
}

bool server::save_meters(bool wait) {
    if (!db()) {
        return true;
    }
    {
        std::unique_lock lock{meters_mu_};
        if (wait) {
            meters_cv_.wait(lock, [&] { return !meters_saving_; });
        } else if (meters_saving_) {
            return true;  // the one on its way carries nearly as much; the next tick the rest
        }
        meters_saving_ = true;
    }
    // Whatever happens before the store takes the save (an allocation that fails on a huge
    // snapshot), the next save must not find one "on its way" for ever.
    auto finish = [this](std::optional<std::map<std::string, std::size_t>> saved, const store::result* r) {
        std::lock_guard lock{meters_mu_};
        meters_saving_ = false;
        if (saved) {
            meters_saved_ = std::move(*saved);
            if (meters_failing_) {
                spdlog::info("rule meters saved again");
            }
            meters_failing_ = false;
        } else if (r != nullptr && !meters_failing_) {
            meters_failing_ = true;
            spdlog::warn("rule meters not saved ({}: {}); trying again every second: until a save succeeds, a "
                         "restart would bring back the counts of the last one",
                         r->code, r->message);
        }
        meters_cv_.notify_all();  // under the lock: a waiter that returns may destroy us
    };
    // Only the rules whose counts changed since the last save are written (a meter of
    // 10,000 keys is a few hundred KiB); the rows of rules that hold nothing now go.
    std::map<std::string, std::size_t> hashes;
    std::vector<store::database::saved_meter> changed;
    std::vector<std::string> keep;
    try {
        // meters_saved_ changes only when a save completes, and this is the only save on
        // its way: read without the lock (the snapshot takes every slot's lock in turn).
        const auto rt = current_runtime();
        if (rt->engine) {
            for (auto& m : rt->engine->save_meters(clock_->now())) {
                const std::size_t h = std::hash<std::string_view>{}(m.state) * 31 + m.fingerprint;
                hashes.emplace(m.rule_id, h);
                keep.push_back(m.rule_id);
                const auto it = meters_saved_.find(m.rule_id);
                if (it == meters_saved_.end() || it->second != h) {
                    changed.push_back({std::move(m.rule_id), m.fingerprint, std::move(m.state)});
                }
            }
        }
    } catch (const std::exception& e) {
        const store::result failed = store::result::failure("snapshot_failed", e.what());
        finish(std::nullopt, &failed);
        return false;
    }
    if (changed.empty() && hashes.size() == meters_saved_.size()) {
        finish(std::move(hashes), nullptr);
        return true;  // the store has all of it
    }
    std::future<bool> saved;
    try {
        auto done = std::make_shared<std::promise<bool>>();
        saved = done->get_future();
        db()->save_meters(std::move(changed), std::move(keep),
                          [finish, hashes = std::move(hashes), done](const store::result& r) mutable {
                              finish(r.ok ? std::optional{std::move(hashes)} : std::nullopt, &r);
                              done->set_value(r.ok);
                          });
    } catch (const std::exception& e) {
        // Not queued (the store queues an operation whole or not at all).
        const store::result failed = store::result::failure("save_failed", e.what());
        finish(std::nullopt, &failed);
        return false;
    }
    return !wait || saved.get();
}

bool server::forwarded_keys_unsaved() {
    std::lock_guard lock{forwarded_mu_};
    return forwarded_failing_;
}

bool server::rule_meters_unsaved() {
    std::lock_guard lock{meters_mu_};
    return meters_failing_;
}

bool server::flush_breaker_state() {
    if (!state_writer_) {
        return true;
    }
    // A write of the state as it is now, not only of the last transition: a throttle's
    // admissions change without one.
    state_writer_->request();
    return state_writer_->flush();
}

void server::pause_breaker_state_writes(bool on) {
    if (state_writer_) {
        state_writer_->pause(on);
    }
}

bool server::breaker_state_unsaved() const { return state_writer_ && state_writer_->failing(); }

std::shared_ptr<const runtime> server::current_runtime() const {
    std::lock_guard lock{cfg_mutex_};
    return rt_;
}

std::set<std::string, std::less<>> server::fold_retired(time_point now) {
    std::set<std::string, std::less<>> live;
    std::erase_if(retired_registries_, [&](const std::shared_ptr<breakers::breaker_registry>& r) {
        // Read first: a user that lets go after this read leaves it for the next fold.
        const bool last = r.use_count() == 1;
        auto kept = r->kept(now);
        for (const auto& b : kept.breakers) {
            // It holds every instance of the breaker: it restored the kept ones when it was
            // built, and one at rest now (reset since) must not come back from an old copy.
            std::erase_if(orphans_, [&](const breakers::instance_snapshot& o) {
                if (o.breaker != b) {
                    return false;
                }
                orphans_from_store_.erase(o.instance);
                return true;
            });
        }
        for (auto& snap : kept.instances) {
            if (!snap.at_rest()) {
                orphans_.push_back(std::move(snap));
            }
        }
        if (last || kept.breakers.empty()) {
            return true;
        }
        live.insert(kept.breakers.begin(), kept.breakers.end());
        return false;
    });
    return live;
}

server::~server() {
    if (!threads_.empty()) {
        for (auto& w : workers_) {
            w->ioc().stop();
        }
        for (auto& t : threads_) {
            if (t.joinable()) {
                t.join();
            }
        }
    }
    if (access_log_) {
        drain_access_log(*access_log_);
    }
    // Now, while what its last save and its failure report use (the runtime, orphans_,
    // alerts_) still exists: members are destroyed in reverse order, and those come after it.
    state_writer_.reset();
    // A trip just before shutdown is alerted now or never: a restart restores the trip
    // without alerting it again (run() queued the storm and denial counts last). Bounded, so
    // a dead sink cannot hold the exit for long.
    {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds{2};
        auto left = [&] {
            return std::max(std::chrono::milliseconds{0}, std::chrono::duration_cast<std::chrono::milliseconds>(
                                                              deadline - std::chrono::steady_clock::now()));
        };
        std::shared_ptr<alerts::dispatcher> d;
        {
            std::lock_guard lock{alerts_mu_};
            d = alerts_;
        }
        if (d && !d->flush(left())) {
            spdlog::warn("shutdown: alerts still queued after 2s were not sent");
        }
        // What failed meanwhile (a sink refusing the last storm or denial counts, which live
        // nowhere else) is logged as the control tick would have: it has stopped.
        report_alert_losses();
    }
    // The workers last, while every other member still exists: destroying a worker's
    // io_context destroys the sessions still suspended in it (an upstream exchange that
    // outlived the drain), and their destructors reach the server (forwarded_'s key notes
    // and flights, declared after workers_, would otherwise be gone by then). The store's
    // writer first completes what is queued (as its own destruction would): a session
    // waiting on it is resumed by a post to its worker, which must still exist then.
    if (db_) {
        db_->flush();
    }
    workers_.clear();
}

void server::report_denial(std::string_view rule, std::string_view breaker, std::string_view key,
                           std::string_view request_id, std::string_view reason) {
    // A deny rule trips nothing, so no breaker transition would tell on-call: an agent that
    // keeps trying to mail card numbers is refused with 403 and nobody hears of it. The
    // first denial of a rule alerts at once; those after it at most once a minute, with how
    // many there were (the control tick sends them when no later denial does:
    // report_denials). One incident per rule (its dedup key), resolved by on-call.
    if (!alerts()) {
        return;
    }
    const auto now = clock_->now();
    std::optional<alerts::alert> a;
    {
        std::lock_guard lock{denials_mu_};
        auto& st = denials_[std::string{rule}];
        ++st.count;
        st.breaker = breaker;
        st.key = key;
        st.request_id = request_id;
        st.reason = reason;
        if (!st.alerted || now - *st.alerted >= std::chrono::minutes{1}) {
            a = denial_alert(std::string{rule}, st, st.count);
            st.count = 0;
            st.alerted = now;
        }
    }
    if (a) {
        if (const auto d = alerts()) {
            d->publish(*a);
        }
    }
}

void server::report_storms(bool at_exit) {
    // Control thread: per breaker, the trips not paged one by one in the last minute, as one
    // alert (its dedup key: one incident per breaker's storm, resolved by on-call). At exit,
    // the current window's too: they live in memory only.
    const auto d = alerts();
    if (!d) {
        return;
    }
    const auto now = clock_->now();
    std::vector<alerts::alert> due;
    {
        std::lock_guard lock{storms_mu_};
        for (auto& [breaker, st] : storms_) {
            // A window a minute old, or ended by the trips of the next one.
            if (st.window && (at_exit || now - *st.window >= std::chrono::minutes{1})) {
                st.close_window();
            }
            const std::uint64_t count = st.due;
            if (count == 0) {
                continue;
            }
            alerts::alert a;
            a.event = "breaker_storm";
            a.severity = st.due_worst.empty() ? "sev3" : st.due_worst;
            a.breaker = breaker;
            // Not `<breaker>/storm`: that is the instance of the key "storm", which a
            // request chooses (x-campaign-id: storm); its trip would fold into the storm
            // without paging and its reset resolve it. A breaker id holds no ':'.
            a.dedup_key = "storm:" + breaker;
            a.reason = st.last_reason;
            a.summary = "breaker " + breaker + ": " + std::to_string(count) +
                        " more instance(s) opened, beyond " + std::to_string(storm_alerts) +
                        " alerted one by one a minute (GET /v1/breakers lists them)" +
                        (st.last_reason.empty() ? "" : "; the last: " + st.last_reason);
            due.push_back(std::move(a));
            st.due = 0;
            st.due_worst.clear();
        }
    }
    for (const auto& a : due) {
        d->publish(a);
    }
}

void server::report_denials(bool at_exit) {
    // Control thread: the denials counted since a rule's last alert, once it is a minute old
    // (at exit: all of them, or they would be lost).
    const auto d = alerts();
    if (!d) {
        return;
    }
    const auto now = clock_->now();
    std::vector<alerts::alert> due;
    {
        std::lock_guard lock{denials_mu_};
        for (auto& [rule, st] : denials_) {
            if (st.count > 0 && st.alerted && (at_exit || now - *st.alerted >= std::chrono::minutes{1})) {
                due.push_back(denial_alert(rule, st, st.count));
                st.count = 0;
                st.alerted = now;
            }
        }
    }
    for (const auto& a : due) {
        d->publish(a);
    }
}

alerts::alert server::denial_alert(const std::string& rule, const denial_alerts& st, std::uint64_t count) {
    alerts::alert a;
    a.event = "rule_denied";
    a.severity = "sev3";
    a.rule = rule;
    a.breaker = st.breaker;
    a.key = st.key;
    a.reason = st.reason;
    a.request_id = st.request_id;
    a.dedup_key = "denied:" + rule;  // no instance is named so (ids hold no ':')
    if (const auto rt = current_runtime(); rt->engine) {
        if (const auto* r = rt->engine->rules().find_rule(rule)) {
            const auto& fm = rt->engine->rules().mode_of(*r);
            a.failure_mode = fm.id;
            a.severity = std::string{rules::to_string(fm.sev)};
        }
    }
    a.summary = "rule " + rule + " denied " + std::to_string(count) + " request(s)" +
                (st.alerted ? " since its last alert" : "") +
                (a.reason.empty() ? "" : (st.alerted ? "; the last: " : ": ") + a.reason);
    return a;
}

void server::report_alert_losses() {
    // Control thread only. An alert that never reached on-call is logged (its sink, how many
    // and why: the sink's last error, which names at most a host, never a URL or key), at
    // most once a second per sink, so a page lost to a wrong routing key or a full queue is
    // seen in the log, not only in a counter.
    // Summed by sink name over every dispatcher, the ones a reload replaced included (what
    // they still had queued fails or is dropped after the reload): the sums only grow.
    for (const auto& st : alert_stats()) {
        auto& [failed, dropped] = alert_losses_seen_[st.name];
        if (st.failed > failed) {
            spdlog::error("alerts: {} alert(s) to sink {} failed ({} so far): {}", st.failed - failed, st.name,
                          st.failed, st.last_error.empty() ? std::string{"no detail"} : st.last_error);
        }
        if (st.dropped > dropped) {
            spdlog::error("alerts: {} alert(s) to sink {} dropped, its queue full ({} so far)", st.dropped - dropped,
                          st.name, st.dropped);
        }
        failed = st.failed;
        dropped = st.dropped;
    }
}

std::shared_ptr<alerts::dispatcher> server::alerts() const {
    std::lock_guard lock{alerts_mu_};
    return alerts_routed_ ? alerts_ : nullptr;
}

void server::replace_alerts(const alerts::alerts_config& next) {
    // One dispatcher for the process, changed in place (alerts::dispatcher::reconfigure): a
    // sink configured again keeps its queue, so a resolve never overtakes its trigger; a
    // rotated webhook URL (a leaked one, say) gets nothing new, and what it had queued still
    // goes out. While the config has no sinks it is kept aside (alerts() is null), still
    // sending what its last sinks had queued. Control thread only; the sinks are built (CA
    // files read) without the lock that workers take to publish.
    std::shared_ptr<alerts::dispatcher> d;
    {
        std::lock_guard lock{alerts_mu_};
        d = alerts_;
    }
    if (d) {
        d->reconfigure(next);
    } else if (!next.sinks.empty()) {
        d = std::make_shared<alerts::dispatcher>(next);
    }
    std::lock_guard lock{alerts_mu_};
    alerts_ = std::move(d);
    alerts_routed_ = !next.sinks.empty();
}

std::vector<alerts::sink_stats> server::alert_stats() const {
    std::lock_guard lock{alerts_mu_};
    auto out = alerts_ ? alerts_->stats() : std::vector<alerts::sink_stats>{};
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    return out;
}

std::shared_ptr<const config> server::current_config() const {
    std::lock_guard lock{cfg_mutex_};
    return cfg_;
}

bool server::try_admit() {
    // cfg_ itself is swapped under cfg_mutex_ by a reload; the limit is mirrored in an atomic.
    const auto max = max_connections_.load(std::memory_order_relaxed);
    auto cur = connections_.load(std::memory_order_relaxed);
    do {
        if (cur >= max) {
            return false;
        }
    } while (!connections_.compare_exchange_weak(cur, cur + 1, std::memory_order_relaxed));
    return true;
}

void server::release_connection() {
    connections_.fetch_sub(1, std::memory_order_relaxed);
}

namespace {

std::uint64_t fds_needed_by(const config& c) {
    return fds_needed(c.limits.max_connections, c.admin.enabled ? c.admin.max_connections : 0);
}

// Raises the process's descriptor limit for what `c` can need (core/fd_limit.hpp), and says
// when it cannot be raised far enough: past it, connections are refused or answered 503.
void ensure_fd_limit(const config& c) {
    const auto needed = fds_needed_by(c);
    const auto r = raise_fd_limit(needed);
    if (r.now > r.before) {
        spdlog::info("open file limit raised from {} to {} (limits.max_connections {} needs about {})", r.before,
                     r.now, c.limits.max_connections, needed);
    }
    if (r.now < needed) {
        spdlog::warn("open file limit {} (hard limit {}{}) is below the about {} that limits.max_connections {} "
                     "needs (two a connection, the admin API's and a reserve): once the files run out, new "
                     "connections are refused or answered 503 before max_connections is reached. Raise the hard "
                     "limit (LimitNOFILE= in systemd, ulimit -Hn, docker --ulimit nofile=) or lower "
                     "limits.max_connections",
                     r.now, r.hard, r.error.empty() ? "" : "; raising failed: " + r.error, needed,
                     c.limits.max_connections);
    }
}

}  // namespace

void server::start() {
    ensure_fd_limit(*cfg_);
    if (opts_.handle_signals && !signals_) {
        // Registered before any listener exists: a SIGTERM that arrives while we start is
        // queued for run() instead of killing the process with requests in flight.
        signals_.emplace(control_, SIGINT, SIGTERM, SIGHUP);
    }
    // One acceptor per worker per listener, all bound to the same port with SO_REUSEPORT:
    // the kernel spreads connections across workers and no accept ever crosses threads.
    std::vector<std::vector<std::shared_ptr<tcp::acceptor>>> per_worker(workers_.size());
    for (const auto& l : cfg_->listeners) {
        std::uint16_t port = l.port;
        for (std::size_t i = 0; i < workers_.size(); ++i) {
            auto acc = std::make_shared<tcp::acceptor>(workers_[i]->ioc());
            error_code ec;
            const tcp::endpoint ep{asio::ip::make_address(l.host), port};
            acc->open(ep.protocol(), ec);
            if (!ec) {
                acc->set_option(asio::socket_base::reuse_address(true), ec);
            }
            if (!ec) {
                const int one = 1;
                if (::setsockopt(acc->native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
                    ec = error_code{errno, boost::system::system_category()};
                }
            }
            if (!ec) {
                acc->bind(ep, ec);
            }
            if (!ec) {
                acc->listen(asio::socket_base::max_listen_connections, ec);
            }
            if (ec) {
                throw std::runtime_error("listener " + l.name + ": cannot listen on " + l.host + ":" +
                                         std::to_string(port) + ": " + ec.message());
            }
            port = acc->local_endpoint().port();
            per_worker[i].push_back(std::move(acc));
        }
        ports_.push_back(port);
    }
    if (cfg_->admin.enabled) {
        admin_ = std::make_unique<admin_server>(control_, *this);
        admin_->start();
    }
    for (std::size_t i = 0; i < workers_.size(); ++i) {
        auto* w = workers_[i].get();
        w->start_accepting(std::move(per_worker[i]));
        threads_.emplace_back([w] {
            // Until run() ends it with ioc().stop(): a worker with nothing left to do (shut
            // down at the end of a drain) must still run what the control thread posts to it
            // (run_on), or the control thread would wait for ever.
            const auto busy = asio::make_work_guard(w->ioc());
            run_catching(w->ioc());
        });
    }
    started_ = true;
}

std::vector<std::string> server::apply_config(std::shared_ptr<const config> cfg,
                                              const std::function<void(breakers::breaker_registry&)>& prepare) {
    std::lock_guard serial{apply_mutex_};
    std::vector<std::string> warnings;
    std::shared_ptr<const config> effective = cfg;
    std::shared_ptr<const runtime> rt;
    const auto before = current_config();
    {
        std::lock_guard lock{cfg_mutex_};
        // Only what needs a restart keeps its running value; the rest of a section applies.
        std::shared_ptr<config> patched;
        auto patch = [&] {
            if (!patched) {
                patched = std::make_shared<config>(*cfg);
            }
            return patched.get();
        };
        if (!same_listeners(*cfg_, *cfg)) {
            warnings.push_back("listeners (other than require_agent and forward_proxy.passthrough) and workers are "
                               "fixed until restart; the new settings for them were not applied");
            patch()->listeners = cfg_->listeners;
            patch()->workers = cfg_->workers;
            // require_agent is read per request, a passthrough list per CONNECT and per
            // second of an open blind tunnel: a tightening applies now (an entry taken out
            // during an incident ends its tunnels, blind_tunnel_refusal in session.cpp).
            for (auto& l : patched->listeners) {
                for (const auto& n : cfg->listeners) {
                    if (n.name == l.name) {
                        l.require_agent = n.require_agent;
                        if (l.forward_proxy && n.forward_proxy) {
                            l.forward_proxy->passthrough = n.forward_proxy->passthrough;
                        }
                    }
                }
            }
        }
        // (The Idempotency-Key header too: held requests and remembered live sends are found
        // by its value, and a retry read under another name would be sent live beside its hold.)
        if (cfg_->store.path != cfg->store.path || cfg_->store.group_commit != cfg->store.group_commit ||
            cfg_->store.idempotency_header != cfg->store.idempotency_header ||
            cfg_->store.idempotency_keys != cfg->store.idempotency_keys) {
            warnings.push_back("store.path, store.group_commit, store.idempotency_header and store.idempotency_keys are "
                               "fixed until restart; the new values were not applied (the other store settings were)");
            if (cfg_->store.path != cfg->store.path) {
                warnings.push_back("store.path changed to " + cfg->store.path + ", not applied: a start that runs "
                                   "with it opens that store, not " + cfg_->store.path + ", and restores nothing from "
                                   "this one (breaker state, quarantined requests, meters, keys of requests sent "
                                   "live); to move the store, stop breakerbox, move its files, and name the new "
                                   "path in the config file");
            }
            patch()->store.path = cfg_->store.path;
            patch()->store.group_commit = cfg_->store.group_commit;
            patch()->store.idempotency_header = cfg_->store.idempotency_header;
            patch()->store.idempotency_keys = cfg_->store.idempotency_keys;
        }
        if (cfg_->admin.enabled && !cfg->admin.enabled) {
            // The admin API keeps running until restart: with the section gone its tokens
            // would be, and every call (a revert included) would be refused.
            warnings.push_back("the admin section was removed: the admin API runs on with its settings, tokens and "
                               "client certificates included, until restart");
            patch()->admin = cfg_->admin;
        } else if (cfg_->admin.enabled != cfg->admin.enabled || cfg_->admin.host != cfg->admin.host ||
                   cfg_->admin.port != cfg->admin.port || cfg_->admin.tls.has_value() != cfg->admin.tls.has_value()) {
            warnings.push_back("admin.address and whether the admin API uses TLS are fixed until restart; the new "
                               "values were not applied (its tokens, client certificates and TLS files were)");
            // The running config says what runs: the address it listens on, and its TLS
            // settings while it serves TLS (a SIGHUP re-reads those files), or none.
            auto& a = patch()->admin;
            a.enabled = cfg_->admin.enabled;
            a.host = cfg_->admin.host;
            a.port = cfg_->admin.port;
            if (cfg_->admin.tls.has_value() != cfg->admin.tls.has_value()) {
                a.tls = cfg_->admin.tls;
            }
        }
        if (cfg_->log.level != cfg->log.level || cfg_->log.access_log != cfg->log.access_log) {
            warnings.push_back("log.level and log.access_log are fixed until restart; the new values were not applied");
            patch()->log.level = cfg_->log.level;
            patch()->log.access_log = cfg_->log.access_log;
        }
        if (patched) {
            effective = patched;
        }
    }
    const bool opened = !db() && !effective->breakers.empty();
    if (opened) {
        // The first breakers of this run: their state must be saved, and what the store kept
        // of them (a trip, an operator's forced_open from an earlier run) must hold now, as at
        // a start. Throws, with nothing applied, if the store cannot be opened.
        open_store(effective->store);
    }
    // So must the counts it kept: at the first apply that brings rules, whether it opened the
    // store or found it open (the admin API opens it at the start), and again after an apply
    // refused here. (Nothing of this engine is booked yet; a meter it shares with the running
    // engine holds this run's counts and is left alone.) Before the running breakers are
    // handed over to the new registry: a refusal here must leave them where they are, or
    // the next apply would hand them over again, from a registry that no longer holds them,
    // and an operator's forced_open or a trip would be lost.
    const bool restore = db() && !meters_restored_;
    const auto running = current_runtime();
    rt = build_runtime(effective, running.get(), prepare, [&](rules::engine& engine) {
        if (restore) {
            restore_meters(engine, effective->store.path, running->engine.get());
        }
    });
    if (restore && rt->engine) {
        meters_restored_ = true;
    }
    {
        std::lock_guard lock{cfg_mutex_};
        cfg_ = effective;
        rt_ = rt;
        max_connections_ = effective->limits.max_connections;
        response_memory_->set_limit(effective->limits.upstream_buffered_bytes);
        config_generation_.fetch_add(1, std::memory_order_acq_rel);
    }
    if (started_ && fds_needed_by(*effective) != fds_needed_by(*before)) {
        ensure_fd_limit(*effective);
    }
    if (db()) {
        // The hold limits apply from the next hold (store.path alone needs a restart); only
        // once the config is published: an apply refused above leaves the running limits.
        db()->set_limits(store_limits_of(effective->store));
    }
    // Sinks added, removed or changed (a rotated URL), or a ca_file's contents (a rotated
    // private CA at the same path: re-read at a reload, as listeners' certificates are; the
    // dispatcher compares them).
    replace_alerts(effective->alerts);
    if (!rt->configured_again.empty()) {
        // Kept (in the store, or in memory since a reload dropped it), configured again:
        // paged to the sinks of this config.
        alert_restored_open(rt->configured_again, "after a reload configured it again");
    }
    {
        // Published: the breakers configured again now hold their kept state themselves.
        std::lock_guard lock{orphans_mu_};
        std::erase_if(orphans_, [&](const breakers::instance_snapshot& o) {
            if (rt->breakers->find(o.breaker) == nullptr) {
                return false;
            }
            orphans_from_store_.erase(o.instance);
            return true;
        });
    }
    for (auto& w : workers_) {
        run_on(w->ioc(), [&] { w->apply_runtime(rt); });
    }
    if (state_writer_) {
        state_writer_->request();  // the durable state now comes from the new registry
    }
    resolve_gone_incidents(*rt->breakers);
    return warnings;
}

void server::resolve_gone_incidents(const breakers::breaker_registry& registry) {
    // An incident paged for an instance the new config no longer has (its breaker dropped,
    // its key merged into another instance: per_key off, fewer max_instances) would never
    // see a transition again, so never resolve: its page would stay open for good. Resolved
    // here, saying why, at the severities it went out with.
    const auto now = clock_->now();
    std::vector<std::string> paged;
    {
        std::lock_guard lock{alert_severity_mu_};
        for (const auto& [instance, sevs] : alert_severity_) {
            paged.push_back(instance);
        }
    }
    // The registry is asked outside alert_severity_mu_: on_transition takes that lock while
    // the registry reports a transition.
    std::vector<std::string> missing;
    for (const auto& instance : paged) {
        const auto snap = registry.get(instance, now);
        if (!snap || snap->instance != instance) {
            missing.push_back(instance);
        }
    }
    std::vector<std::pair<std::string, std::vector<std::string>>> gone;
    {
        std::lock_guard lock{alert_severity_mu_};
        for (const auto& instance : missing) {
            if (auto it = alert_severity_.find(instance); it != alert_severity_.end()) {
                gone.emplace_back(instance, std::move(it->second));
                alert_severity_.erase(it);
            }
        }
    }
    const auto d = alerts();
    for (const auto& [instance, sevs] : gone) {
        const auto slash = instance.find('/');
        const std::string breaker = instance.substr(0, slash);
        const bool dropped = registry.find(breaker) == nullptr && registry.find(instance) == nullptr;
        bool counted_at_start = false;
        {
            std::lock_guard lock{storms_mu_};
            if (auto it = storms_.find(breaker); it != storms_.end()) {
                it->second.unpaged.erase(instance);
                counted_at_start = it->second.counted_at_start.erase(instance) > 0;
            }
        }
        if (!d) {
            continue;
        }
        alerts::alert a;
        a.event = "breaker_reset";
        a.resolve = true;
        a.breaker = instance;
        a.dedup_key = instance;
        a.actor = "config";
        a.reason = dropped ? "its breaker was removed by a config change (its state is kept, not enforced)"
                           : "a config change merged its key into another instance, which carries its state";
        a.summary = "breaker " + instance + ": " + a.reason;
        if (std::find(sevs.begin(), sevs.end(), unknown_severity) != sevs.end()) {
            a.every_sink = true;  // restored open: what it paged before the restart is not known
            const std::string* known = most_severe_known(sevs);
            a.severity = known != nullptr ? *known : "sev3";
            // As its close would (on_transition): one of a storm counted in one alert at the
            // start, not paged since, sends chat sinks no line each (500 instances of a
            // dropped per-key breaker would flood the channel and queue its next sev1).
            a.not_to_chat = counted_at_start && known == nullptr;
            d->publish(a);
            continue;
        }
        for (const auto& sev : sevs) {
            a.severity = sev;
            d->publish(a);
        }
    }
}

std::shared_ptr<const listener_security> server::security(std::size_t listener) const {
    std::lock_guard lock{security_mutex_};
    return listener < security_.size() ? security_[listener] : nullptr;
}

namespace {

// The settings and the contents of a TLS listener's files: equal, the running context serves
// on (its session cache and ticket keys with it: a reload for another reason does not send
// every client through a full handshake). "" when a file cannot be read (built anew, and
// refused there with the reason).
std::string tls_files_digest(const tls_files& t) {
    std::string out = t.cert_file + "\n" + t.key_file + "\n" + t.client_ca_file + "\n" + t.client_crl_file + "\n" +
                      (t.require_client_cert ? "1" : "0") + (t.client_crl_leaf_only ? "1" : "0");
    for (const std::string* f : {&t.cert_file, &t.key_file, &t.client_ca_file, &t.client_crl_file}) {
        if (f->empty()) {
            continue;
        }
        const auto digest = file_sha256(*f);
        if (!digest) {
            return "";
        }
        out += "\n" + *digest;
    }
    return out;
}

// Why this process could not open `path` for appending (spdlog's file sink creates missing
// directories), or "" when it could. Judged by faccessat(2), for the process's own user: a file
// that exists must be writable, else its nearest existing directory must be (a dangling
// symbolic link is refused).
std::string cannot_append_to(const std::string& path) {
    std::error_code ec;
    std::filesystem::path p{path};
    if (std::filesystem::is_symlink(std::filesystem::symlink_status(p, ec)) && !std::filesystem::exists(p, ec)) {
        return "is a symbolic link to nothing";
    }
    // Effective IDs and capabilities, as open(2) judges (access(2) uses the real ones).
    const auto writable = [](const std::filesystem::path& f, int mode) {
        return ::faccessat(AT_FDCWD, f.c_str(), mode, AT_EACCESS) == 0;
    };
    if (std::filesystem::exists(p, ec)) {
        if (std::filesystem::is_directory(p, ec)) {
            return "is a directory";
        }
        return writable(p, W_OK) ? std::string{} : "cannot be written: " + std::string{std::strerror(errno)};
    }
    for (auto dir = p.parent_path(); ; dir = dir.parent_path()) {
        if (dir.empty()) {
            dir = ".";
        }
        if (std::filesystem::exists(dir, ec)) {
            if (!std::filesystem::is_directory(dir, ec)) {
                return "cannot be created: " + dir.string() + " is not a directory";
            }
            return writable(dir, W_OK | X_OK) ? std::string{}
                                              : "cannot be created in " + dir.string() + ": " + std::strerror(errno);
        }
        if (dir == dir.parent_path() || dir == ".") {
            return "cannot be created: no directory of it exists";
        }
    }
}

}  // namespace

void server::check_tls_change(const config& current, const config& next, cfg::errors& errs) {
    // Listeners by name, against the running ones: their settings take effect at a restart,
    // so this checks what a restart would build (a change it could not start with is
    // refused now, not at the restart).
    for (std::size_t i = 0; i < next.listeners.size(); ++i) {
        const auto& l = next.listeners[i];
        const auto running = std::find_if(current.listeners.begin(), current.listeners.end(),
                                          [&](const listener_config& c) { return c.name == l.name; });
        const listener_config* was = running != current.listeners.end() ? &*running : nullptr;
        const std::string at = "listeners[" + std::to_string(i) + "]";
        if (l.tls && (was == nullptr || was->tls != l.tls)) {
            try {
                make_server_tls(&*l.tls);
            } catch (const std::exception& e) {
                errs.add(at + ".tls", e.what());
            }
        }
        if (l.forward_proxy && (was == nullptr || was->forward_proxy != l.forward_proxy)) {
            try {
                cert_minter{l.forward_proxy->ca_cert_file, l.forward_proxy->ca_key_file, l.forward_proxy->leaf_cache,
                            l.forward_proxy->leaf_lifetime};
            } catch (const std::exception& e) {
                errs.add(at + ".forward_proxy", e.what());
            }
        }
    }
    // The access log file is opened at the next start (log.access_log is fixed until
    // restart): one this process cannot write would stop that start, found only then.
    if (const auto& path = next.log.access_log;
        path != current.log.access_log && path != "off" && path != "stdout" && path != "stderr") {
        if (const auto why = cannot_append_to(path); !why.empty()) {
            errs.add("log.access_log", cfg::quote(path) + " " + why);
        }
    }
    if (next.admin.tls && (!current.admin.tls || next.admin.tls != current.admin.tls)) {
        // (Added to an admin API running without TLS too: it takes effect at the restart, which
        // must not be the first to find it cannot be built.)
        try {
            make_server_tls(&*next.admin.tls);
        } catch (const std::exception& e) {
            errs.add("admin.tls", e.what());
        }
    }
}

std::vector<std::string> server::reload_security() {
    std::vector<std::string> errors;
    std::vector<std::shared_ptr<const listener_security>> next;
    std::vector<bool> failed;
    const auto cfg = current_config();
    for (const auto& l : cfg->listeners) {
        const auto running = security(next.size());
        failed.push_back(false);
        if (!l.tls && !l.forward_proxy) {
            next.push_back(nullptr);
            continue;
        }
        auto sec = std::make_shared<listener_security>();
        try {
            if (l.tls) {
                const std::string digest = tls_files_digest(*l.tls);
                if (running && running->tls && !digest.empty() && running->tls_files_digest == digest) {
                    check_client_crl_times(*running->tls, *l.tls);  // unchanged, but time has passed
                    sec->tls = running->tls;  // the same files, read again: its sessions stay
                    sec->tls_files_digest = digest;
                } else {
                    sec->tls = make_server_tls(&*l.tls);
                    // Read again after the build: a file that changed in between leaves no
                    // digest, so the next reload builds anew rather than keep what it cannot name.
                    sec->tls_files_digest = tls_files_digest(*l.tls) == digest ? digest : std::string{};
                }
            }
            if (l.forward_proxy) {
                sec->minter = std::make_shared<cert_minter>(l.forward_proxy->ca_cert_file, l.forward_proxy->ca_key_file,
                                                            l.forward_proxy->leaf_cache, l.forward_proxy->leaf_lifetime);
                if (running && running->minter && running->minter->same_as(*sec->minter)) {
                    sec->minter = running->minter;  // read and checked again, unchanged: its leaves stay
                }
                sec->intercept_tls = make_server_tls(nullptr);
            }
        } catch (const std::exception& e) {
            errors.push_back("listener " + l.name + ": " + e.what());
            failed.back() = true;
        }
        next.push_back(std::move(sec));
    }
    {
        // Each listener on its own: a forward proxy whose CA expired must not keep the
        // renewed certificate of another listener from being served. One that failed keeps
        // what it had; at the start (nothing yet) any failure is the caller's to refuse.
        std::lock_guard lock{security_mutex_};
        if (security_.size() == next.size()) {
            for (std::size_t i = 0; i < next.size(); ++i) {
                if (failed[i]) {
                    next[i] = security_[i];
                }
            }
            security_ = std::move(next);
        } else if (errors.empty()) {
            security_ = std::move(next);
        }
    }
    if (admin_) {
        if (auto e = admin_->reload_tls(*cfg); !e.empty()) {
            errors.push_back("admin: " + e);
        }
    }
    return errors;
}

void server::request_stop() {
    if (stop_requested_.exchange(true)) {
        return;
    }
    // Wake the control loop now rather than at its next tick.
    asio::post(control_, [this] {
        if (control_tick_ != nullptr) {
            control_tick_->cancel();
        }
    });
}

int server::run() {
    if (!started_) {
        start();
    }
    auto& signals = signals_;
    bool stopping = false;
    std::function<void()> wait_signal;
    if (opts_.handle_signals) {
        wait_signal = [&] {
            signals->async_wait([&](const error_code& ec, int sig) {
                if (ec) {
                    return;
                }
                if (sig == SIGHUP) {
                    if (opts_.config_path.empty()) {
                        spdlog::warn("SIGHUP: no config file to reload");
                    } else {
                        // Audited and judged like an API apply, one change at a time.
                        asio::co_spawn(control_, reload_on_signal(*this), asio::detached);
                    }
                    wait_signal();
                    return;
                }
                spdlog::info("signal {}: draining (grace period {})", sig,
                             cfg::format_duration(current_config()->limits.drain_timeout));
                request_stop();
            });
        };
        wait_signal();
    }
    if (db() && !opts_.config_path.empty()) {
        asio::co_spawn(control_, record_startup_config(*this), asio::detached);
    }
    // The control thread ticks once a second (breaker expiries, retention) and every 20 ms
    // while draining; request_stop() wakes it at once. It never touches the data plane.
    asio::steady_timer tick{control_};
    control_tick_ = &tick;
    std::chrono::steady_clock::time_point drain_deadline{};
    std::chrono::steady_clock::time_point next_breaker_tick{};
    std::chrono::steady_clock::time_point next_meter_save = std::chrono::steady_clock::now() + opts_.meter_save_every;
    std::chrono::steady_clock::time_point next_prune = std::chrono::steady_clock::now() + std::chrono::seconds{10};
    // Set (by the writer thread) when a prune took its whole batch: more are due at once, or
    // resolving records faster than a batch a minute (bulk discards of a misfire) would grow
    // the backlog without bound.
    auto prune_more = std::make_shared<std::atomic<bool>>(false);
    // The keys of requests sent live, on their own shorter tick (keys_save_every): a save
    // that finds nothing changed writes nothing, and one still running is not doubled (the
    // next tick takes what changed meanwhile). A failure is logged; the keys go with the next.
    asio::steady_timer keys_tick{control_};
    bool keys_stopped = false;  // a wait that completed before cancel() must not re-arm
    bool workers_shut = false;  // at the end of the drain (below)
    std::function<void()> keys_poll = [&] {
        keys_tick.expires_after(opts_.keys_save_every);
        keys_tick.async_wait([&](const error_code& ec) {
            if (ec || keys_stopped) {
                return;  // the loop below is over: the shutdown saves them
            }
            if (db()) {
                save_forwarded_keys(false);
            }
            keys_poll();
        });
    };
    keys_poll();
    // A save of the meters that does not wait for the store (a failure is logged and shown
    // by the gauge).
    auto save_meters_now = [this] {
        try {
            save_meters(false);
        } catch (const std::exception& e) {
            spdlog::error("rule meters not saved: {}", e.what());
        }
    };
    std::function<void()> poll = [&] {
        tick.expires_after(stopping ? std::chrono::milliseconds{20} : std::chrono::milliseconds{1000});
        tick.async_wait([&](const error_code& ec) {
            // operation_aborted: request_stop() woke us.
            if (ec && ec != asio::error::operation_aborted) {
                return;
            }
            // Mode expiries and cooldowns take effect (and are logged and persisted) on
            // time even when no request touches the breaker.
            if (std::chrono::steady_clock::now() >= next_breaker_tick) {
                next_breaker_tick = std::chrono::steady_clock::now() + std::chrono::seconds{1};
                current_runtime()->breakers->tick(clock_->now());
                // A throttling breaker's admissions, for a restart (no transition saves
                // them): at most a second behind, also while draining.
                if (state_writer_ && breakers::throttle_admissions_so_far() != throttle_admissions_saved_) {
                    throttle_admissions_saved_ = breakers::throttle_admissions_so_far();
                    state_writer_->request();
                }
                report_alert_losses();
                report_denials();
                report_storms();
                report_held_store_trouble();
            }
            // The counts of caps and baselines, for a restart (at most a second behind; also
            // while draining: a supervisor's kill at the end of its grace period must not
            // lose what the drain booked).
            if (db() && std::chrono::steady_clock::now() >= next_meter_save) {
                next_meter_save = std::chrono::steady_clock::now() + opts_.meter_save_every;
                save_meters_now();
            }
            // Retention: resolved quarantine records older than store.retention go away.
            if (db() && (std::chrono::steady_clock::now() >= next_prune || prune_more->exchange(false))) {
                next_prune = std::chrono::steady_clock::now() + std::chrono::minutes{1};
                const auto cutoff = std::chrono::duration_cast<std::chrono::milliseconds>(
                                        (clock_->wall_now() - current_config()->store.retention).time_since_epoch())
                                        .count();
                constexpr std::size_t batch = 10'000;
                db()->prune(cutoff, [prune_more](const store::result& r) {
                    if (r.ok && r.count > 0) {
                        spdlog::info("retention: pruned {} resolved quarantine record(s)", r.count);
                    }
                    if (r.ok && r.count >= static_cast<std::int64_t>(batch)) {
                        prune_more->store(true);
                    }
                }, batch);
            }
            if (stop_requested_ && !stopping) {
                stopping = true;
                drain_deadline = std::chrono::steady_clock::now() + current_config()->limits.drain_timeout;
                if (remediation_) {
                    remediation_->stop();  // bulk releases send nothing more; the rest stays held
                }
                for (auto& w : workers_) {
                    run_on(w->ioc(), [&] { w->begin_drain(); });
                }
            }
            if (stopping && (connections_.load() == 0 || std::chrono::steady_clock::now() >= drain_deadline)) {
                if (connections_.load() != 0) {
                    spdlog::warn("drain grace period over; closing {} connection(s)", connections_.load());
                }
                if (signals) {
                    signals->cancel();
                }
                if (admin_) {
                    admin_->stop();
                }
                keys_stopped = true;
                keys_tick.cancel();
                // Nothing is served past the grace period: the connections left close now,
                // not once the control thread's own work ends (a release in flight waits for
                // its upstream), and what they booked and sent is saved at once, because a
                // supervisor's kill at the end of its grace period (commonly drain_timeout
                // itself) must not find it unsaved. The saves after the run wait for theirs.
                for (auto& w : workers_) {
                    run_on(w->ioc(), [&] { w->shutdown(); });
                }
                workers_shut = true;
                if (db()) {
                    save_forwarded_keys(false);
                    save_meters_now();
                }
                return;
            }
            poll();
        });
    };
    poll();
    control_.run();
    control_tick_ = nullptr;
    if (!workers_shut) {
        for (auto& w : workers_) {
            run_on(w->ioc(), [&] { w->shutdown(); });
        }
    }
    for (auto& w : workers_) {
        w->ioc().stop();
    }
    for (auto& t : threads_) {
        t.join();
    }
    threads_.clear();
    if (access_log_) {
        drain_access_log(*access_log_);
    }
    if (remediation_) {
        remediation_->record_left_over();  // release results the store refused until now
    }
    // Storm and denial counts not alerted yet live in memory only: queued now, once nothing
    // is served any more, and sent as the server goes (~server flushes the alerts).
    report_storms(true);
    report_denials(true);
    // The counts as they stand once nothing is served any more: a restart goes on from them.
    const bool meters_saved = save_meters(true);
    if (!meters_saved) {
        spdlog::error("rule meters not saved at shutdown: a restart goes on from the counts of the last save that "
                      "succeeded, and what was booked since is not in them");
    }
    const bool keys_saved = save_forwarded_keys(true);
    if (!keys_saved) {
        spdlog::error("keys of requests sent live not saved at shutdown: a restart forgets those sent since the "
                      "last save, and a retry of one while a breaker quarantines could be held");
    }
    if (!flush_breaker_state()) {
        // Exit non-zero so a supervisor sees it: a restart reads the state last saved, and
        // what was tripped or set since is not in it.
        spdlog::error("breaker state not saved at shutdown ({}): trips and operator actions since the last save "
                      "are lost at the next start",
                      state_writer_->last_error());
        return 1;
    }
    return meters_saved && keys_saved ? 0 : 1;  // a supervisor sees it as it sees unsaved breaker state
}

}  // namespace bb::proxy
