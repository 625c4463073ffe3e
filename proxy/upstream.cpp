#include "proxy/upstream.hpp"

#include "core/read_limits.hpp"
#include "core/tls_policy.hpp"
#include "proxy/framing.hpp"
#include "proxy/wire.hpp"

#include <boost/asio/ip/address.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/error.hpp>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include <limits>
#include <netdb.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

namespace bb::proxy {

using clock_type = std::chrono::steady_clock;

std::string_view to_string(upstream_failure f) {
    switch (f) {
        case upstream_failure::none: return "none";
        case upstream_failure::pool_exhausted: return "pool_exhausted";
        case upstream_failure::connect_failed: return "connect_failed";
        case upstream_failure::connect_timeout: return "connect_timeout";
        case upstream_failure::tls_failed: return "tls_failed";
        case upstream_failure::failed_after_send: return "failed_after_send";
        case upstream_failure::timeout: return "timeout";
        case upstream_failure::bad_response: return "bad_response";
        case upstream_failure::too_large: return "too_large";
        case upstream_failure::over_budget: return "over_budget";
        case upstream_failure::cancelled: return "cancelled";
    }
    return "unknown";
}

upstream_conn::upstream_conn(asio::any_io_executor ex, asio::ssl::context* tls)
    : stream_(tls ? std::variant<plain_stream, tls_stream>{std::in_place_index<1>, ex, *tls}
                  : std::variant<plain_stream, tls_stream>{std::in_place_index<0>, ex}) {}

beast::tcp_stream& upstream_conn::tcp() {
    if (auto* p = std::get_if<0>(&stream_)) {
        return *p;
    }
    return std::get<1>(stream_).next_layer();
}

bool upstream_conn::usable_for_reuse() {
    if (buffer.size() != 0) {
        return false;
    }
    if (is_tls()) {
        // Bytes the upstream sent past its response may already sit in the TLS layer (a
        // record OpenSSL has buffered, or ciphertext Asio handed to its BIO) where neither
        // our buffer nor a peek at the socket sees them; the next request would read them
        // as its response.
        SSL* ssl = tls().native_handle();
        if (SSL_has_pending(ssl) == 1 || BIO_ctrl_pending(SSL_get_rbio(ssl)) > 0) {
            return false;
        }
    }
    auto& sock = tcp().socket();
    if (!sock.is_open()) {
        return false;
    }
    // A pooled connection the upstream closed while idle reads as EOF (0) here; one that
    // is fine has nothing to read (EAGAIN). Checking costs one syscall and avoids sending
    // a request down a dead connection, which for a POST would mean "outcome unknown".
    char probe = 0;
    const auto n = ::recv(sock.native_handle(), &probe, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

void upstream_conn::close() {
    error_code ignored;
    tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
    tcp().close();
}

bool same_upstream(const upstream_config& a, const upstream_config& b) {
    return a.name == b.name && a.url == b.url && a.timeout == b.timeout && a.connect_timeout == b.connect_timeout &&
           a.max_connections == b.max_connections && a.idle_timeout == b.idle_timeout &&
           a.write_reuse_within == b.write_reuse_within && a.ca_file == b.ca_file &&
           a.ca_pem == b.ca_pem && a.verify == b.verify;
}

namespace {

// A CA bundle's contents into ctx's trust store, read as OpenSSL's file loader reads a file
// (PEM_X509_INFO_read_bio: `CERTIFICATE` and `TRUSTED CERTIFICATE` blocks, CRLs; other
// blocks skipped), all or nothing: a bundle with a block that cannot be read adds none of
// it, so a pool never trusts part of what the config names. False when nothing was added.
bool trust_pem(SSL_CTX* ctx, const std::string& pem) {
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    if (bio == nullptr) {
        return false;
    }
    STACK_OF(X509_INFO)* infos = PEM_X509_INFO_read_bio(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    if (infos == nullptr) {
        ERR_clear_error();
        return false;
    }
    X509_STORE* store = SSL_CTX_get_cert_store(ctx);
    int added = 0;
    for (int i = 0; i < sk_X509_INFO_num(infos); ++i) {
        const X509_INFO* info = sk_X509_INFO_value(infos, i);
        if (info->x509 != nullptr && X509_STORE_add_cert(store, info->x509) == 1) {
            ++added;
        }
        if (info->crl != nullptr) {
            X509_STORE_add_crl(store, info->crl);
        }
    }
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    return added > 0;
}

}  // namespace

upstream_pool::upstream_pool(asio::any_io_executor ex, upstream_config cfg, std::size_t response_body_limit,
                             std::shared_ptr<response_budget> budget)
    : ex_(std::move(ex)), cfg_(std::move(cfg)), response_body_limit_(response_body_limit), budget_(std::move(budget)) {
    error_code ec;
    {
        error_code not_literal;  // (a host name: not an error, and not the trust store's below)
        const auto addr = asio::ip::make_address(cfg_.host, not_literal);
        if (!not_literal) {
            literal_address_ = true;
            literal_endpoint_ = tcp::endpoint{addr, cfg_.port};
        }
    }
    if (cfg_.tls) {
        tls_ = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
        tls_->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                          asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                          asio::ssl::context::no_tlsv1_1);
        // Forward secrecy and AEAD only (core/tls_policy.hpp).
        SSL_CTX* native = tls_->native_handle();
        SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
        if (SSL_CTX_set_cipher_list(native, client_tls12_ciphers) != 1) {
            // OpenSSL's defaults would take RSA key exchange and CBC suites: nothing is sent.
            spdlog::error("upstream {}: cannot set the TLS cipher list; its connections will fail", cfg_.name);
            tls_setup_failed_ = true;
        }
        if (cfg_.verify) {
            tls_->set_verify_mode(asio::ssl::verify_peer);
            if (!cfg_.ca_file.empty()) {
                // The contents the config read (and a reload compares), not the file as it is
                // now: a bundle replaced on disk without a reload changes no pool's trust, and
                // pools made later (a release's) trust what the others do.
                if (!trust_pem(native, cfg_.ca_pem)) {
                    ec = asio::error::invalid_argument;  // (trust_pem added nothing)
                }
            } else {
                tls_->set_default_verify_paths(ec);
            }
            if (ec) {
                // Fails safe (nothing verifies, so nothing is sent), but says why.
                spdlog::error("upstream {}: cannot load {}: {}; its TLS connections will fail verification", cfg_.name,
                              cfg_.ca_file.empty() ? std::string{"the system trust store"} : cfg_.ca_file, ec.message());
            }
        } else {
            tls_->set_verify_mode(asio::ssl::verify_none);
        }
    }
}

upstream_pool::~upstream_pool() {
    close_idle();
}

void upstream_pool::close_idle() {
    for (auto& c : idle_) {
        c->close();
    }
    idle_.clear();
}

void upstream_pool::sweep(clock_type::time_point now) {
    std::erase_if(idle_, [&](std::unique_ptr<upstream_conn>& c) {
        if (now - c->idle_since >= cfg_.idle_timeout || !c->usable_for_reuse()) {
            c->close();
            return true;
        }
        return false;
    });
}

std::unique_ptr<upstream_conn> upstream_pool::take_idle(bool idempotent) {
    const auto now = clock_type::now();
    while (!idle_.empty()) {
        // Most recently used first: it is the least likely to have been closed by the peer.
        auto conn = std::move(idle_.back());
        idle_.pop_back();
        if (now - conn->idle_since < cfg_.idle_timeout && conn->usable_for_reuse()) {
            if (!idempotent && now - conn->idle_since >= cfg_.write_reuse_within) {
                // Too long idle for a request that is not retried (the peer may be closing it
                // now): a new connection instead. The older idle ones stay for the others.
                conn->close();
                return nullptr;
            }
            return conn;
        }
        conn->close();
    }
    return nullptr;
}

void upstream_pool::give_back(std::unique_ptr<upstream_conn> conn) {
    if (retired_ || idle_.size() + active_ >= cfg_.max_connections + 1) {
        conn->close();
        return;
    }
    conn->idle_since = clock_type::now();
    idle_.push_back(std::move(conn));
}

asio::awaitable<std::unique_ptr<upstream_conn>> upstream_pool::connect(exchange_result& out) {
    auto conn = std::make_unique<upstream_conn>(ex_, tls_.get());
    auto& tcp_stream = conn->tcp();
    tcp_stream.expires_after(cfg_.connect_timeout);
    error_code ec;
    if (literal_address_) {
        std::tie(ec) = co_await tcp_stream.async_connect(literal_endpoint_, use_tuple);
    } else {
        // Name resolution counts against connect_timeout too (getaddrinfo can hang on a
        // dead nameserver far longer than any timeout we promise). Nothing can interrupt a
        // getaddrinfo in flight, so it runs on a thread of its own that nobody waits for:
        // it signals an eventfd when done, and we wait for that or the timer, whichever is
        // first. Not Asio's resolver: its thread is joined when the io_context is destroyed,
        // so one lookup stuck on a dead nameserver held up shutdown for the resolver's whole
        // timeout (tests/integration/test_dns.cpp).
        resolve_result r = co_await resolve_bounded(ex_, cfg_.host, cfg_.port, cfg_.connect_timeout);
        if (r.cancelled) {
            out.failure = upstream_failure::cancelled;
            out.detail = std::move(r.error);
            co_return nullptr;
        }
        if (!r.error.empty()) {
            // Our own lookup cap is local overload, as a full pool is (503, and no verdict on
            // the upstream's health).
            out.failure = r.busy        ? upstream_failure::pool_exhausted
                          : r.timed_out ? upstream_failure::connect_timeout
                                        : upstream_failure::connect_failed;
            out.detail = std::move(r.error);
            co_return nullptr;
        }
        std::vector<tcp::endpoint> results = std::move(r.endpoints);
        tcp::endpoint ep;
        std::tie(ec, ep) = co_await tcp_stream.async_connect(results, use_tuple);
    }
    if (ec) {
        if (ec == beast::error::timeout) {
            out.failure = upstream_failure::connect_timeout;
            out.detail = "no connection to " + cfg_.authority + " within " + cfg::format_duration(cfg_.connect_timeout);
        } else if (ec == asio::error::operation_aborted) {
            out.failure = upstream_failure::cancelled;
        } else if (own_resource_limit(ec)) {
            // Our own limits (file descriptors, socket buffers), not the upstream's fault: as
            // a full pool, 503 and no verdict on its health (counted as a connect failure,
            // a process out of descriptors tripped upstream/<name> and paused every agent).
            out.failure = upstream_failure::pool_exhausted;
            out.detail = "breakerbox cannot open a connection to " + cfg_.authority + " (" + ec.message() +
                         "): its own limit, not the upstream's";
        } else {
            out.failure = upstream_failure::connect_failed;
            out.detail = "cannot connect to " + cfg_.authority + ": " + ec.message();
        }
        co_return nullptr;
    }
    error_code ignored;
    tcp_stream.socket().set_option(tcp::no_delay(true), ignored);
    if (conn->is_tls()) {
        auto& tls = conn->tls();
        if (tls_setup_failed_) {
            out.failure = upstream_failure::tls_failed;
            out.detail = "TLS to " + cfg_.authority + " is not set up (the cipher policy could not be set; see the log)";
            co_return nullptr;
        }
        if (!literal_address_) {
            // SNI: a name, never an address (RFC 6066).
            if (!SSL_set_tlsext_host_name(tls.native_handle(), cfg_.host.c_str())) {
                out.failure = upstream_failure::tls_failed;
                out.detail = "cannot set SNI for " + cfg_.host;
                co_return nullptr;
            }
        }
        if (cfg_.verify) {
            if (!expect_peer_name(tls.native_handle(), cfg_.host)) {
                out.failure = upstream_failure::tls_failed;
                out.detail = "cannot check the certificate's name against " + cfg_.host;
                co_return nullptr;
            }
        }
        auto [hec] = co_await tls.async_handshake(asio::ssl::stream_base::client, use_tuple);
        if (hec) {
            if (hec == beast::error::timeout) {
                out.failure = upstream_failure::connect_timeout;
                out.detail = "TLS handshake with " + cfg_.authority + " did not finish within " +
                             cfg::format_duration(cfg_.connect_timeout);
            } else if (hec == asio::error::operation_aborted) {
                out.failure = upstream_failure::cancelled;
            } else {
                out.failure = upstream_failure::tls_failed;
                out.detail = "TLS with " + cfg_.authority + " failed: " + hec.message();
                const long vr = SSL_get_verify_result(tls.native_handle());
                if (vr != X509_V_OK) {
                    out.detail += std::string{" ("} + X509_verify_cert_error_string(vr) + ")";
                }
            }
            co_return nullptr;
        }
    }
    tcp_stream.expires_never();
    co_return conn;
}

namespace {

// The upstream's framing must be unambiguous too: a response we might delimit differently
// from the upstream would poison the pooled connection for the next request.
std::string check_response_framing(const http::response_header<fields>& h) {
    const unsigned status = h.result_int();
    if (status < 100 || status > 599) {
        return "status " + std::to_string(status) + " is not a status (100-599)";
    }
    std::size_t cl = 0;
    std::size_t te = 0;
    for (const auto& f : h) {
        if (f.name() == http::field::content_length) {
            ++cl;
            const auto v = f.value();
            if (v.empty() || !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
                return "Content-Length is not a single number";
            }
        } else if (f.name() == http::field::transfer_encoding) {
            ++te;
            if (!iequals(f.value(), "chunked")) {
                return "Transfer-Encoding other than chunked";
            }
        }
    }
    if (cl > 1) {
        return "Content-Length appears more than once";
    }
    if (te > 1) {
        return "Transfer-Encoding appears more than once";
    }
    if (cl > 0 && te > 0) {
        return "Content-Length together with Transfer-Encoding";
    }
    return {};
}

// A response that is delivered but whose connection must not carry another: a 204 that
// announces a body (Beast reads it bodiless; what follows would answer the next request)
// and Transfer-Encoding in an HTTP/1.0 response (RFC 9112 6.1: close after it). The
// upstream has acted on the request, so the answer goes to the client (a 502 would invite
// a second send); only the connection is closed.
bool close_after(const http::response_header<fields>& h) {
    const bool te = h.find(http::field::transfer_encoding) != h.end();
    if (te && h.version() < 11) {
        return true;
    }
    // A 304 is bodiless (RFC 9110 15.4.5); its Content-Length describes the representation,
    // but chunks it announces and sends anyway would answer the next request, however late.
    if (h.result_int() == 304) {
        return te;
    }
    if (h.result_int() != 204) {
        return false;
    }
    const auto cl = h.find(http::field::content_length);
    return te || (cl != h.end() && cl->value().find_first_not_of('0') != std::string_view::npos);
}

// Counts responsibility so a pool never exceeds max_connections on its worker.
struct active_guard {
    std::size_t& n;
    explicit active_guard(std::size_t& count) : n(count) { ++n; }
    ~active_guard() { --n; }
    active_guard(const active_guard&) = delete;
    active_guard& operator=(const active_guard&) = delete;
};

}  // namespace

asio::awaitable<void> upstream_pool::exchange(request& req, std::chrono::milliseconds timeout, bool idempotent,
                                              bool head_request, exchange_result& out) {
    // Cancellation (the client left) must not throw out of this coroutine: it turns into
    // an error value on the pending operation and the connection is dropped.
    co_await asio::this_coro::throw_if_cancelled(false);
    out = exchange_result{};
    const auto started = clock_type::now();
    auto finish = [&] {
        out.elapsed = std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - started);
        if (out.failure != upstream_failure::none) {
            out.held.release();  // no body is kept: the room goes back now, not with the error's answer
        }
    };

    // One deadline for the whole exchange: the retry on a new connection after a stale one
    // does not start the route timeout again.
    const auto deadline = clock_type::now() + timeout;
    for (int attempt = 0; attempt < 2; ++attempt) {
        std::unique_ptr<upstream_conn> conn = attempt == 0 ? take_idle(idempotent) : nullptr;
        const bool reused = conn != nullptr;
        if (!conn) {
            if (active_ + idle_.size() >= cfg_.max_connections && attempt > 0 && !idle_.empty()) {
                // The retry wants a new connection; an idle one (maybe as stale as the one
                // that just failed) makes room rather than refusing the request.
                idle_.front()->close();
                idle_.erase(idle_.begin());
            }
            if (active_ + idle_.size() >= cfg_.max_connections) {
                out.failure = upstream_failure::pool_exhausted;
                out.detail = "all " + std::to_string(cfg_.max_connections) + " connections to upstream " + cfg_.name +
                             " are busy on this worker";
            } else {
                active_guard connecting{active_};
                conn = co_await connect(out);
            }
            if (!conn) {
                if (attempt > 0 && nothing_sent(out.failure)) {
                    // The first attempt wrote the request on the stale connection: not
                    // "nothing sent" (whoever books on that would take it off the caps).
                    out.detail = "upstream connection failed before a response, and a new connection failed: " +
                                 out.detail;
                    out.failure = upstream_failure::failed_after_send;
                }
                finish();
                co_return;
            }
        }
        active_guard busy{active_};
        out.reused_connection = reused;
        out.failure = upstream_failure::none;
        out.detail.clear();
        // A cancellation that arrived while the connect's completion was already queued is
        // recorded here but reached no operation: the client left, so send nothing.
        if ((co_await asio::this_coro::cancellation_state).cancelled() != asio::cancellation_type::none) {
            out.failure = upstream_failure::cancelled;
            out.detail = "the client went away before the request was sent";
            give_back(std::move(conn));  // unused: still good for the next request
            finish();
            co_return;
        }

        if (clock_type::now() >= deadline) {
            // The request's timeout ran out while its connection was made (a slow lookup,
            // connect or TLS handshake): written now, it could get no answer in time, and the
            // client would hear "outcome unknown" of a request the upstream may act on. Not
            // sent (on this connection: a retry's first attempt went out on a stale one).
            out.failure = attempt > 0 ? upstream_failure::failed_after_send : upstream_failure::connect_timeout;
            out.detail = attempt > 0 ? "upstream connection failed before a response, and a new connection was not "
                                       "ready within the request's timeout of " + cfg::format_duration(timeout)
                                     : "no connection to upstream " + cfg_.name +
                                           " was ready within the request's timeout of " +
                                           cfg::format_duration(timeout) + "; nothing was sent";
            give_back(std::move(conn));  // unused: still good for the next request
            finish();
            co_return;
        }
        conn->tcp().expires_at(deadline);
        out.sending = true;
        auto [wec, written] = co_await conn->visit([&](auto& s) { return write_message(s, req, conn->scratch); });
        bool got_response_bytes = false;
        error_code ec = wec;
        // An upstream may answer before it has read the whole body (a 401 or 413 to a large
        // upload; Go's server does past 256 KiB unread) and close: the write fails on the
        // reset, but its answer arrived ahead of it. It is read like any answer (delivered if
        // whole, the connection not reused); without one the request stays outcome unknown.
        const bool write_cut = wec == asio::error::broken_pipe || wec == asio::error::connection_reset;
        if (write_cut) {
            ec = {};
        }
        std::optional<response_parser> parser_slot;
        parser_slot.emplace();
        std::optional<http::response_header<fields>> head_copy;
        if (!ec) {
            for (;;) {
                auto& parser = *parser_slot;
                parser.body_limit(response_body_limit_);
                parser.header_limit(64 * 1024);
                if (head_request) {
                    parser.skip(true);
                }
                auto [hec, hn] = co_await conn->visit(
                    [&](auto& s) { return http::async_read_header(s, conn->buffer, parser, use_tuple); });
                ec = hec;
                got_response_bytes = got_response_bytes || hn > 0 || conn->buffer.size() > 0;
                if (ec) {
                    break;
                }
                const auto status = parser.get().result_int();
                if (status >= 100 && status < 200 && status != 101) {
                    // Interim responses are not forwarded: the client's 100-continue was
                    // answered by breakerbox itself.
                    parser_slot.emplace();
                    continue;
                }
                break;
            }
        }
        auto& parser = *parser_slot;
        if (!ec) {
            if (auto bad = check_response_framing(parser.get().base()); !bad.empty()) {
                conn->close();
                out.failure = upstream_failure::bad_response;
                out.detail = "upstream response framing: " + bad;
                finish();
                co_return;
            }
            if (parser.get().result_int() == 101) {
                conn->close();
                out.failure = upstream_failure::bad_response;
                out.detail = "upstream answered 101 Switching Protocols, which breakerbox does not proxy";
                finish();
                co_return;
            }
            if (!parser.is_done()) {
                // A chunked response may end in trailer fields, which Beast merges into the
                // head: they must not reach the client as headers (RFC 9110 6.5.2; a
                // Set-Cookie trailer would become a cookie). The head is kept as it came.
                if (parser.chunked()) {
                    head_copy.emplace(parser.get().base());
                }
                // Beast bounds neither chunk extensions nor trailer sections, which wait in
                // the buffer until their line ends: capped, as on the client side.
                // (Under 64 KiB: core/read_limits.hpp.)
                conn->buffer.max_size(std::max(conn->buffer.size(), max_buffered_line));
                // The body is held in the process's response budget as it is read (its
                // declared length up front): a read's response that does not fit is dropped
                // with the connection, not read on.
                const bool safe = req.method() == http::verb::get || req.method() == http::verb::head ||
                                  req.method() == http::verb::options;
                parser.eager(true);  // as http::async_read parses: every buffered element at once
                bool fits = out.held.grow_to(budget_, static_cast<std::size_t>(std::min<std::uint64_t>(
                                                          parser.content_length().value_or(0), response_body_limit_)),
                                             safe);
                while (fits && !parser.is_done()) {
                    auto [rec, rn] = co_await conn->visit(
                        [&](auto& s) { return http::async_read_some(s, conn->buffer, parser, use_tuple); });
                    if (rec) {
                        ec = rec;
                        break;
                    }
                    fits = out.held.grow_to(budget_, parser.get().body().size(), safe);
                }
                conn->buffer.max_size(std::numeric_limits<std::size_t>::max());
                if (!ec && !fits) {
                    conn->close();
                    out.held.release();
                    out.failure = upstream_failure::over_budget;
                    out.dropped_status = parser.get().result_int();
                    out.dropped_fields = parser.get().base();
                    out.detail = "upstream response bodies held in memory have reached limits.upstream_buffered_bytes (" +
                                 std::to_string(budget_->limit()) + " bytes): this response was dropped unread";
                    finish();
                    co_return;
                }
            }
        }
        if (ec) {
            conn->close();
            if (ec == asio::error::operation_aborted) {
                out.failure = upstream_failure::cancelled;
                finish();
                co_return;
            }
            if (ec == beast::error::timeout) {
                out.failure = upstream_failure::timeout;
                out.detail = "no complete response from upstream " + cfg_.name + " within " + cfg::format_duration(timeout);
                finish();
                co_return;
            }
            if (ec == http::error::body_limit) {
                out.failure = upstream_failure::too_large;
                // Over the limit by its Content-Length or by the bytes that came: either way
                // after the status line, which the parser has read.
                out.dropped_status = parser.get().result_int();
                out.dropped_fields = parser.get().base();
                out.detail = "upstream response body is larger than " + std::to_string(response_body_limit_) + " bytes";
                finish();
                co_return;
            }
            const bool transport = ec == http::error::end_of_stream || ec == asio::error::eof ||
                                   ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
                                   ec == http::error::partial_message || ec.category() == asio::error::get_ssl_category() ||
                                   ec == asio::ssl::error::stream_truncated;
            if (!transport) {
                out.failure = upstream_failure::bad_response;
                out.detail = "cannot parse the upstream response: " + ec.message();
                finish();
                co_return;
            }
            if (reused && !got_response_bytes && idempotent && attempt == 0) {
                continue;  // a stale keep-alive connection; safe to try once more on a new one
            }
            out.failure = upstream_failure::failed_after_send;
            out.detail = std::string{got_response_bytes ? "upstream connection failed mid-response: "
                                                        : "upstream connection failed before a response: "} +
                         (write_cut && !got_response_bytes ? wec.message() : ec.message());
            finish();
            co_return;
        }
        conn->tcp().expires_never();
        ++conn->requests;
        // The parser's keep_alive() also says no for a response delimited by the close (a
        // TLS peer that sent close_notify but keeps TCP open would pass the reuse peek).
        const bool reusable =
            !write_cut && parser.is_done() && parser.keep_alive() && !close_after(parser.get().base());
        out.res = parser.release();
        if (head_copy) {
            out.res.base() = std::move(*head_copy);
        }
        if (reusable) {
            give_back(std::move(conn));
        } else {
            conn->close();
        }
        finish();
        co_return;
    }
    finish();
    co_return;
}

}  // namespace bb::proxy
