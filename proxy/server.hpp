#pragma once
// The composition root of the data plane: worker threads (one io_context each), their
// listeners (SO_REUSEPORT, one acceptor per worker), upstream pools, the access log,
// signals (SIGTERM drain, SIGHUP reload) and config swaps.

#include "config/config.hpp"
#include "proxy/asio.hpp"

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace spdlog {
class logger;
}

namespace bb::proxy {

class upstream_pool;
class server;

// One per connection, registered with its worker so a drain can wake idle connections.
struct session_handle {
    tcp::socket* socket = nullptr;
    bool idle = false;  // waiting for the next request with nothing buffered
};

// Per-thread statistics: plain counters, summed on scrape (no atomics on the hot path).
struct worker_stats {
    std::uint64_t requests = 0;
    std::uint64_t responses_by_class[6] = {};  // index status/100
    std::uint64_t generated = 0;                // answered by breakerbox itself
    std::uint64_t upstream_failures = 0;
    std::uint64_t client_aborts = 0;
};

// Everything a session needs; lives on one thread. Not thread-safe: only touched from
// its own io_context, except where a member says otherwise.
class worker {
public:
    worker(server& owner, unsigned index, std::shared_ptr<const config> cfg, spdlog::logger* access_log);
    ~worker();

    asio::io_context& ioc() { return ioc_; }
    unsigned index() const { return index_; }
    const std::shared_ptr<const config>& cfg() const { return cfg_; }
    std::shared_ptr<upstream_pool> pool(std::size_t upstream_index);
    spdlog::logger* access_log() const { return access_log_; }
    bool draining() const { return draining_; }
    worker_stats& stats() { return stats_; }
    server& owner() { return owner_; }

    std::list<session_handle>::iterator register_session(tcp::socket* s);
    void unregister_session(std::list<session_handle>::iterator it);

    // Called on the worker's own thread (posted by the server).
    void apply_config(std::shared_ptr<const config> cfg);
    void start_accepting(std::vector<std::shared_ptr<tcp::acceptor>> acceptors);
    void begin_drain();
    void shutdown();

private:
    asio::awaitable<void> accept_loop(std::shared_ptr<tcp::acceptor> acceptor);
    asio::awaitable<void> sweep_loop();
    void refuse(tcp::socket& s);

    server& owner_;
    unsigned index_;
    std::shared_ptr<const config> cfg_;
    std::vector<std::shared_ptr<upstream_pool>> pools_;  // by upstream index in cfg_
    std::vector<std::shared_ptr<tcp::acceptor>> acceptors_;
    std::list<session_handle> sessions_;
    spdlog::logger* access_log_ = nullptr;
    bool draining_ = false;
    bool stopped_ = false;
    worker_stats stats_;
    std::unique_ptr<asio::steady_timer> sweep_timer_;
    // Declared last so it is destroyed first: destroying it destroys the coroutine frames
    // of any sessions still pending, and those unregister from sessions_ above.
    asio::io_context ioc_{1};
};

struct server_options {
    std::string config_path;        // for SIGHUP reload; empty: reload disabled
    bool handle_signals = true;     // tests running in-process turn this off
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
    // are reported in the returned warnings.
    std::vector<std::string> apply_config(std::shared_ptr<const config> cfg);
    // Reloads from options().config_path. Returns the errors (empty on success).
    cfg::errors reload_from_file();

    std::uint16_t bound_port(std::size_t listener_index) const { return ports_.at(listener_index); }
    std::size_t active_connections() const { return connections_.load(std::memory_order_relaxed); }
    std::size_t worker_count() const { return workers_.size(); }
    std::shared_ptr<const config> current_config() const;

    // Connection admission, shared by every worker (exact: never above max_connections).
    bool try_admit();
    void release_connection();

private:
    std::shared_ptr<const config> cfg_;
    server_options opts_;
    std::vector<std::unique_ptr<worker>> workers_;
    std::vector<std::thread> threads_;
    std::vector<std::uint16_t> ports_;
    std::atomic<std::size_t> connections_{0};
    std::atomic<bool> stop_requested_{false};
    asio::io_context control_{1};
    std::shared_ptr<spdlog::logger> access_log_;
    mutable std::mutex cfg_mutex_;
    bool started_ = false;
};

// Sets up spdlog's default (operational) logger at `level` on stderr.
void init_logging(const std::string& level);

}  // namespace bb::proxy
