#pragma once
// Connections to one upstream, pooled per worker thread (no locks: a pool lives on one
// io_context and is only touched by coroutines running there).
//
// The exchange never retries a request that may have reached the upstream unless the
// method is idempotent (PRODUCT.md principle 1): the only retry is of an idempotent
// request whose *reused* keep-alive connection turned out to be dead.

#include "config/config.hpp"
#include "proxy/asio.hpp"
#include "proxy/resolve.hpp"

#include <boost/asio/ssl/context.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace bb::proxy {

enum class upstream_failure {
    none,
    pool_exhausted,     // max_connections in use on this worker         -> 503
    connect_failed,     // DNS failure, refused, unreachable              -> 502
    connect_timeout,    // no TCP/TLS connection within connect_timeout   -> 503
    tls_failed,         // handshake, certificate or name verification    -> 502
    failed_after_send,  // reset/EOF after (part of) the request was sent -> 502
    timeout,            // no complete response within the route timeout  -> 504
    bad_response,       // unparseable or ambiguously framed response     -> 502
    too_large,          // response body over limits.upstream_body_bytes  -> 502
    over_budget,        // a GET/HEAD/OPTIONS response past limits.upstream_buffered_bytes -> 503
    cancelled,          // the client went away
};

std::string_view to_string(upstream_failure f);
// Whether the exchange failed before any of the request went out (no connection, no TLS,
// no room in the pool): nothing reached the upstream.
inline bool nothing_sent(upstream_failure f) {
    return f == upstream_failure::pool_exhausted || f == upstream_failure::connect_failed ||
           f == upstream_failure::connect_timeout || f == upstream_failure::tls_failed;
}


// The upstream response bodies held in memory by the whole process (every response is read
// whole before it is relayed, for the response rules and for framing): bounded by
// limits.upstream_buffered_bytes. Without it, a thousand slow readers of 20 MiB exports
// would hold 20 GiB. Like an overload manager, it refuses what can be asked again: the
// response of a GET, HEAD or OPTIONS that would take it past the bound is dropped (503,
// retry-after); a write's response is read all the same (its request has acted, and the
// client must learn what happened), counted but never refused. Thread-safe.
class response_budget {
public:
    explicit response_budget(std::size_t limit) : limit_(limit) {}
    void set_limit(std::size_t limit) { limit_.store(limit, std::memory_order_relaxed); }
    std::size_t limit() const { return limit_.load(std::memory_order_relaxed); }
    std::size_t used() const { return used_.load(std::memory_order_relaxed); }
    std::uint64_t refused() const { return refused_.load(std::memory_order_relaxed); }

    // Takes `n` bytes; false (nothing taken) when that passes the limit and `refusable`.
    bool take(std::size_t n, bool refusable) {
        if (!refusable) {
            used_.fetch_add(n, std::memory_order_relaxed);
            return true;
        }
        auto cur = used_.load(std::memory_order_relaxed);
        do {
            if (cur + n > limit()) {
                refused_.fetch_add(1, std::memory_order_relaxed);
                return false;
            }
        } while (!used_.compare_exchange_weak(cur, cur + n, std::memory_order_relaxed));
        return true;
    }
    void give_back(std::size_t n) { used_.fetch_sub(n, std::memory_order_relaxed); }

private:
    std::atomic<std::size_t> limit_;
    std::atomic<std::size_t> used_{0};
    std::atomic<std::uint64_t> refused_{0};
};

// Bytes of a response_budget held by one response: given back when it goes (with the
// response, once it was relayed).
class budget_hold {
public:
    budget_hold() = default;
    budget_hold(const budget_hold&) = delete;
    budget_hold& operator=(const budget_hold&) = delete;
    budget_hold(budget_hold&& o) noexcept : budget_(std::move(o.budget_)), bytes_(std::exchange(o.bytes_, 0)) {}
    budget_hold& operator=(budget_hold&& o) noexcept {
        if (this != &o) {
            release();
            budget_ = std::move(o.budget_);
            bytes_ = std::exchange(o.bytes_, 0);
        }
        return *this;
    }
    ~budget_hold() { release(); }

    // Holds `total` bytes in all (taking what is more than held now); false when refused.
    bool grow_to(const std::shared_ptr<response_budget>& budget, std::size_t total, bool refusable) {
        if (!budget || total <= bytes_) {
            return true;
        }
        if (!budget->take(total - bytes_, refusable)) {
            return false;
        }
        budget_ = budget;
        bytes_ = total;
        return true;
    }
    std::size_t bytes() const { return bytes_; }
    void release() {
        if (budget_ && bytes_ > 0) {
            budget_->give_back(bytes_);
        }
        bytes_ = 0;
    }

private:
    std::shared_ptr<response_budget> budget_;
    std::size_t bytes_ = 0;
};

struct exchange_result {
    upstream_failure failure = upstream_failure::none;
    std::string detail;  // for logs and the error message; never contains secrets
    response res;
    budget_hold held;  // res's body in the process's response_budget
    // too_large, over_budget: the status the upstream answered before its body was dropped
    // for our own limit (a 5xx still says the upstream is failing), and its header fields (a
    // 429's Retry-After still asks for a pause).
    unsigned dropped_status = 0;
    fields dropped_fields;
    std::chrono::microseconds elapsed{0};
    bool reused_connection = false;
    // Set as the request starts to go out (readable while the exchange runs, on the same
    // thread): from then on the upstream may act on it, and cancelling only loses its answer.
    bool sending = false;
};

class upstream_conn {
public:
    using plain_stream = beast::tcp_stream;
    using tls_stream = beast::ssl_stream<beast::tcp_stream>;

    upstream_conn(asio::any_io_executor ex, asio::ssl::context* tls);
    beast::tcp_stream& tcp();
    bool is_tls() const { return stream_.index() == 1; }
    tls_stream& tls() { return std::get<1>(stream_); }
    // False when the peer has closed, or sent bytes nobody asked for: such a pooled
    // connection must not carry the next request.
    bool usable_for_reuse();
    void close();

    template <class F>
    auto visit(F&& f) {
        return std::visit(std::forward<F>(f), stream_);
    }

    beast::flat_buffer buffer;
    std::string scratch;  // serialized request heads, reused
    std::chrono::steady_clock::time_point idle_since{};
    std::uint64_t requests = 0;

private:
    std::variant<plain_stream, tls_stream> stream_;
};

// Whether a pool made for `a` serves `b` as it is (a reload that changes any of these, the
// CA file's contents included, gets a new pool: a removed CA is never trusted again).
bool same_upstream(const upstream_config& a, const upstream_config& b);

// Thread-compatible, not thread-safe: owned by one worker.
class upstream_pool : public std::enable_shared_from_this<upstream_pool> {
public:
    // `budget`: the process's bound on response bodies in memory (null: none).
    upstream_pool(asio::any_io_executor ex, upstream_config cfg, std::size_t response_body_limit,
                  std::shared_ptr<response_budget> budget = nullptr);
    ~upstream_pool();

    const upstream_config& cfg() const { return cfg_; }
    std::size_t response_body_limit() const { return response_body_limit_; }

    // Sends `req` (already rewritten for the upstream) and reads the whole response.
    // `idempotent`: whether a retry on a fresh connection is allowed after a reused
    // connection fails. Cancellation (the client left) closes the connection in use.
    // The result is written to `out` (not returned: a response is costly to move through
    // the coroutine machinery and the race with the client watcher).
    asio::awaitable<void> exchange(request& req, std::chrono::milliseconds timeout, bool idempotent, bool head_request,
                                   exchange_result& out);

    // Closes idle connections older than idle_timeout.
    void sweep(std::chrono::steady_clock::time_point now);
    void close_idle();
    std::size_t idle_count() const { return idle_.size(); }
    std::size_t active_count() const { return active_; }
    // A retired pool (its upstream was changed by a reload) keeps serving the requests
    // already using it but pools nothing more.
    void retire() {
        retired_ = true;
        close_idle();
    }

private:
    asio::awaitable<std::unique_ptr<upstream_conn>> connect(exchange_result& out);
    // The most recently used idle connection still usable, or null; for a request that is not
    // retried (`idempotent` false) only one used within cfg.write_reuse_within.
    std::unique_ptr<upstream_conn> take_idle(bool idempotent);
    void give_back(std::unique_ptr<upstream_conn> conn);

    asio::any_io_executor ex_;
    upstream_config cfg_;
    std::size_t response_body_limit_;
    std::shared_ptr<response_budget> budget_;
    std::unique_ptr<asio::ssl::context> tls_;
    std::vector<std::unique_ptr<upstream_conn>> idle_;  // bounded by cfg_.max_connections
    std::size_t active_ = 0;
    bool retired_ = false;
    bool literal_address_ = false;
    bool tls_setup_failed_ = false;  // the cipher policy could not be set: nothing is sent
    tcp::endpoint literal_endpoint_;
};

}  // namespace bb::proxy
