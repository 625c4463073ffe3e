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

#include <chrono>
#include <memory>
#include <string>
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
    cancelled,          // the client went away
};

std::string_view to_string(upstream_failure f);
// Whether the exchange failed before any of the request went out (no connection, no TLS,
// no room in the pool): nothing reached the upstream.
inline bool nothing_sent(upstream_failure f) {
    return f == upstream_failure::pool_exhausted || f == upstream_failure::connect_failed ||
           f == upstream_failure::connect_timeout || f == upstream_failure::tls_failed;
}


struct exchange_result {
    upstream_failure failure = upstream_failure::none;
    std::string detail;  // for logs and the error message; never contains secrets
    response res;
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
    upstream_pool(asio::any_io_executor ex, upstream_config cfg, std::size_t response_body_limit);
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
    std::unique_ptr<upstream_conn> take_idle();
    void give_back(std::unique_ptr<upstream_conn> conn);

    asio::any_io_executor ex_;
    upstream_config cfg_;
    std::size_t response_body_limit_;
    std::unique_ptr<asio::ssl::context> tls_;
    std::vector<std::unique_ptr<upstream_conn>> idle_;  // bounded by cfg_.max_connections
    std::size_t active_ = 0;
    bool retired_ = false;
    bool literal_address_ = false;
    bool tls_setup_failed_ = false;  // the cipher policy could not be set: nothing is sent
    tcp::endpoint literal_endpoint_;
};

}  // namespace bb::proxy
