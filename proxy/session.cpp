#include "proxy/session.hpp"

#include "core/read_limits.hpp"
#include "core/host_name.hpp"
#include "core/json_reader.hpp"
#include "core/sha256.hpp"
#include "proxy/framing.hpp"
#include "proxy/redact.hpp"
#include "proxy/mint.hpp"
#include "proxy/remediation.hpp"
#include "proxy/responses.hpp"
#include "proxy/sandbox.hpp"
#include "proxy/server.hpp"
#include "proxy/tls.hpp"
#include "proxy/upstream.hpp"
#include "proxy/wire.hpp"
#include "rules/agent_constraints.hpp"
#include "rules/form.hpp"
#include "rules/guardrails.hpp"
#include "rules/mime.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>

#include <spdlog/spdlog.h>


#include <poll.h>
#include <sys/socket.h>
#include <cerrno>

#include <array>
#include <ctime>
#include <chrono>
#include <random>

namespace bb::proxy {

namespace {

// The query string of an origin-form target, without its '?'.
std::string_view query_of(std::string_view origin_form) {
    const auto q = origin_form.find('?');
    return q == std::string_view::npos ? std::string_view{} : origin_form.substr(q + 1);
}

using namespace asio::experimental::awaitable_operators;  // tunnels: both pumps, or the watchdog
using clock_type = std::chrono::steady_clock;

// ---- small helpers -------------------------------------------------------------------

std::string new_request_id() {
    // Per-thread generator: request ids need uniqueness, not secrecy.
    thread_local std::mt19937_64 rng{std::random_device{}() ^ (std::uint64_t(std::random_device{}()) << 32)};
    static constexpr char hex[] = "0123456789abcdef";
    std::string id(32, '0');
    for (int half = 0; half < 2; ++half) {
        auto v = rng();
        for (int i = 0; i < 16; ++i) {
            id[half * 16 + i] = hex[v & 0xf];
            v >>= 4;
        }
    }
    return id;
}

bool acceptable_request_id(std::string_view id) {
    return !id.empty() && id.size() <= 128 && std::all_of(id.begin(), id.end(), [](char c) {
        return c > 0x20 && c < 0x7f && c != '"' && c != '\\';
    });
}

bool idempotent(http::verb v) {
    return v == http::verb::get || v == http::verb::head || v == http::verb::options;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
        s.remove_prefix(1);
    }
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
        s.remove_suffix(1);
    }
    return s;
}

// Calls fn(element) for each element of a list field over all its lines (RFC 9110 5.6.1:
// comma-separated, blanks around them trimmed, empty elements ignored).
template <class Fields, class F>
void each_list_element(const Fields& f, http::field name, F&& fn) {
    const auto [from, to] = f.equal_range(name);
    for (auto it = from; it != to; ++it) {
        std::string_view v = it->value();
        while (!v.empty()) {
            const auto comma = v.find(',');
            if (const auto element = trim(v.substr(0, comma)); !element.empty()) {
                fn(element);
            }
            v = comma == std::string_view::npos ? std::string_view{} : v.substr(comma + 1);
        }
    }
}

// RFC 9110 §7.6.1: Connection and the fields it names, plus the fixed hop-by-hop set,
// apply to one connection only and are never forwarded (in either direction).
template <class Fields>
void strip_hop_by_hop(Fields& f) {
    std::vector<std::string> named;
    each_list_element(f, http::field::connection, [&](std::string_view token) { named.emplace_back(token); });
    for (const auto& n : named) {
        f.erase(n);
    }
    for (auto fld : {http::field::connection, http::field::keep_alive, http::field::te, http::field::trailer,
                     http::field::transfer_encoding, http::field::upgrade}) {
        f.erase(fld);
    }
    for (auto it = f.begin(); it != f.end();) {
        if (istarts_with(it->name_string(), "proxy-")) {
            it = f.erase(it);
        } else {
            ++it;
        }
    }
}

template <class Message>
void append_list(Message& req, std::string_view name, std::string_view value) {
    auto it = req.find(name);
    if (it == req.end()) {
        req.set(name, value);
        return;
    }
    std::string joined{it->value()};
    // Several lines of the same list field are one list (RFC 9110 §5.3).
    for (auto next = std::next(it); next != req.end() && iequals(next->name_string(), name); ++next) {
        joined += ", ";
        joined += next->value();
    }
    joined += ", ";
    joined += value;
    req.set(name, joined);
}

// Whether route `r` serves a forward proxy's destination `host`:`port`: its match.host names
// the host, addressed at the default port of how it was addressed (443 for a CONNECT or an
// https:// URL, 80 for http://) or at its upstream's own port. Another port of the same host
// is another service (a staging API on 8443): inspecting it would send it, with the
// credentials meant for it, to the route's upstream.
// Whether route `r`'s upstream is `host`:`port` itself.
bool upstream_is(const config& cfg, const route_config& r, std::string_view host, std::uint16_t port) {
    return r.upstream_index < cfg.upstreams.size() && port == cfg.upstreams[r.upstream_index].port &&
           iequals(unbracketed_host(cfg.upstreams[r.upstream_index].host), unbracketed_host(host));
}

bool serves_destination(const config& cfg, const route_config& r, std::string_view host, std::uint16_t port,
                        std::uint16_t default_port) {
    // Addressed over TLS at the default port (a CONNECT to 443, an https:// URL), only a route
    // whose upstream speaks TLS serves it: the agent asked for its credentials to go encrypted.
    const bool tls_upstream = r.upstream_index < cfg.upstreams.size() && cfg.upstreams[r.upstream_index].tls;
    return !r.match.host.empty() && iequals(unbracketed_host(r.match.host), unbracketed_host(host)) &&
           ((port == default_port && (default_port != 443 || tls_upstream)) || upstream_is(cfg, r, host, port));
}

// `forwarded`: a forward proxy's request (absolute-form or inside an intercepted tunnel),
// whose destination is its host at `port` (`default_port` being how it was addressed):
// only a route serving that destination may take it (a route for any host, or for another
// port of the host, forwards to its own upstream, which is not the destination the agent
// addressed, with the credentials it meant for that one).
const route_config* match_route(const config& cfg, std::string_view method, std::string_view host,
                                std::string_view path, bool forwarded = false, std::uint16_t port = 0,
                                std::uint16_t default_port = 0) {
    const std::string_view bare_host = host_name(host_without_port(host));
    // Routes whose upstream is this very host and port are the destination's own: when one
    // exists, a route bound to another port of the host (a beta API on 8443, taking the
    // default port as its own) is not it.
    auto at_port = [&](const route_config& r) { return upstream_is(cfg, r, host_without_port(host), port); };
    const bool own_port_route =
        forwarded && std::any_of(cfg.routes.begin(), cfg.routes.end(), [&](const route_config& r) {
            return !r.match.host.empty() && iequals(host_name(r.match.host), bare_host) && at_port(r);
        });
    for (const auto& r : cfg.routes) {
        const auto& m = r.match;
        if (m.host.empty() ? forwarded : !iequals(host_name(m.host), bare_host)) {
            continue;
        }
        if (forwarded && (own_port_route ? !at_port(r)
                                         : !serves_destination(cfg, r, host_without_port(host), port, default_port))) {
            continue;
        }
        if (route_takes(r, method, path)) {
            return &r;
        }
    }
    return nullptr;
}

// ---- access log ----------------------------------------------------------------------

struct log_record {
    std::string_view request_id;
    std::string_view client;
    std::string method;
    std::string_view target;
    std::string_view route;
    std::string_view agent;
    std::size_t route_index = SIZE_MAX;  // SIZE_MAX: no route
    std::string_view upstream;
    unsigned status = 0;
    std::string_view decision;
    std::string_view code;
    std::size_t bytes_in = 0;
    std::size_t bytes_out = 0;
    clock_type::time_point started;
    std::chrono::microseconds upstream_time{0};
};

void write_access_log(worker& w, const log_record& r) {
    auto& by_route = w.stats().route_decisions;
    if (!by_route.empty()) {
        // route_index is the position in the config the request ran under: after a reload
        // meanwhile it is found again by name (a route removed since is not counted).
        std::size_t i = by_route.size() - 1;
        if (!r.route.empty()) {
            const auto& routes = w.cfg()->routes;
            if (r.route_index >= routes.size() || routes[r.route_index].name != r.route) {
                const auto it = std::find_if(routes.begin(), routes.end(), [&](const auto& rc) { return rc.name == r.route; });
                i = it == routes.end() ? by_route.size() : static_cast<std::size_t>(it - routes.begin());
            } else {
                i = r.route_index;
            }
        }
        if (i < by_route.size()) {
            ++by_route[i][decision_index(r.decision)];
        }
    }
    if (!r.agent.empty()) {
        auto& by_agent = w.stats().agent_decisions;
        auto it = by_agent.find(r.agent);
        if (it == by_agent.end()) {
            it = by_agent.emplace(std::string{r.agent}, std::array<std::uint64_t, decision_names.size()>{}).first;
        }
        ++it->second[decision_index(r.decision)];
    }
    auto* log = w.access_log();
    if (log == nullptr) {
        return;
    }
    const auto total = std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - r.started);
    const auto ts = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
    std::string line;
    line.reserve(320);
    line += "{\"ts_ms\":" + std::to_string(ts);
    line += ",\"request_id\":" + cfg::quote(r.request_id);
    line += ",\"client\":" + cfg::quote(r.client);
    line += ",\"method\":" + cfg::quote(std::string_view{r.method}.substr(0, 32));  // a client's token: bounded
    line += ",\"target\":" + cfg::quote(redact_query(r.target).substr(0, 2048));  // cut after: `user:<long>@host`
    line += ",\"route\":" + (r.route.empty() ? std::string{"null"} : cfg::quote(r.route));
    line += ",\"upstream\":" + (r.upstream.empty() ? std::string{"null"} : cfg::quote(r.upstream));
    line += ",\"agent\":" + (r.agent.empty() ? std::string{"null"} : cfg::quote(r.agent));
    line += ",\"status\":" + std::to_string(r.status);
    line += ",\"decision\":" + cfg::quote(r.decision);
    line += ",\"code\":" + (r.code.empty() ? std::string{"null"} : cfg::quote(r.code));
    line += ",\"bytes_in\":" + std::to_string(r.bytes_in);
    line += ",\"bytes_out\":" + std::to_string(r.bytes_out);
    line += ",\"duration_us\":" + std::to_string(total.count());
    line += ",\"upstream_us\":" + std::to_string(r.upstream_time.count());
    line += ",\"worker\":" + std::to_string(w.index());
    line += '}';
    log->info(line);
}

// ---- the client side -----------------------------------------------------------------

// A deadline that *cancels* the client socket's pending operation instead of closing the
// socket (which is what beast::tcp_stream's timeouts do), so that breakerbox can still
// answer 408 on a header or body timeout. One per session; generation-checked so a stale
// expiry can never cancel a later operation.
class deadline {
public:
    explicit deadline(tcp::socket& sock) : timer_(sock.get_executor()), state_(std::make_shared<state>()) {
        state_->sock = &sock;
    }
    ~deadline() { state_->sock = nullptr; }
    deadline(const deadline&) = delete;
    deadline& operator=(const deadline&) = delete;

    void arm(std::chrono::milliseconds d) {
        const auto gen = ++state_->generation;
        state_->fired = false;
        timer_.expires_after(d);
        timer_.async_wait([st = state_, gen](const error_code& ec) {
            if (ec || st->sock == nullptr || st->generation != gen) {
                return;
            }
            st->fired = true;
            error_code ignored;
            st->sock->cancel(ignored);
        });
    }
    void disarm() {
        ++state_->generation;
        state_->fired = false;
        timer_.cancel();
    }
    bool fired() const { return state_->fired; }

private:
    struct state {
        tcp::socket* sock = nullptr;
        std::uint64_t generation = 0;
        bool fired = false;
    };
    asio::steady_timer timer_;
    std::shared_ptr<state> state_;
};

enum class head_outcome { ok, closed, timeout, too_large };

// Reads until the end of a request head (CRLF CRLF) without ever buffering more than
// limits.header_bytes of head. `first`: the first request on the connection (its wait is
// header_timeout and ends in 408; later waits are idle_timeout and end silently).
using tls_stream = asio::ssl::stream<tcp::socket&>;
template <class Stream>
inline constexpr bool is_tls = std::is_same_v<Stream, tls_stream>;

template <class Stream>
asio::awaitable<std::pair<head_outcome, std::size_t>> read_head(Stream& sock, deadline& dl, beast::flat_buffer& buf,
                                                                 const limits_config& lim, bool first,
                                                                 session_handle& handle, const worker& w) {
    bool deadline_from_first_byte = buf.size() > 0 || first;
    dl.arm(deadline_from_first_byte ? lim.header_timeout : lim.idle_timeout);
    std::size_t searched = 0;
    for (;;) {
        std::string_view data{static_cast<const char*>(buf.data().data()), buf.size()};
        // RFC 9112 §2.2: ignore empty lines before a request line (bounded by header_bytes).
        std::size_t skip = 0;
        while (data.size() >= skip + 2 && data[skip] == '\r' && data[skip + 1] == '\n') {
            skip += 2;
        }
        if (skip > 0) {
            buf.consume(skip);
            data.remove_prefix(skip);
            searched = 0;
        }
        auto end = find_head_end(data, searched);
        // A bare LF, or a CR followed by anything but LF, may never be followed by CRLF CRLF
        // (a head ended "\r\r"); hand the head to the framing check now (it answers 400)
        // instead of waiting for the header timeout.
        if (end == std::string_view::npos) {
            for (std::size_t i = searched; i < data.size(); ++i) {
                const bool after_cr = i > 0 && data[i - 1] == '\r';
                if ((data[i] == '\n' && !after_cr) || (data[i] != '\n' && after_cr)) {
                    end = data.size();
                    break;
                }
            }
        }
        if (end != std::string_view::npos) {
            co_return std::pair{end > lim.header_bytes ? head_outcome::too_large : head_outcome::ok, end};
        }
        if (data.size() >= lim.header_bytes) {
            co_return std::pair{head_outcome::too_large, std::size_t{0}};
        }
        searched = data.size();
        // Nothing buffered: a drain may close this connection without losing a request (over
        // TLS, nor waiting in the TLS engine, decrypted or not: a pipelined request past a
        // short read; Asio's own input buffer cannot be seen).
        handle.idle = buf.size() == 0;
        if constexpr (is_tls<Stream>) {
            SSL* ssl = sock.native_handle();
            handle.idle = handle.idle && SSL_has_pending(ssl) != 1 && BIO_ctrl_pending(SSL_get_rbio(ssl)) == 0;
        }
        if (handle.idle && w.draining()) {
            co_return std::pair{head_outcome::closed, std::size_t{0}};
        }
        if constexpr (!is_tls<Stream>) {
            if (buf.size() == 0) {
                // Nothing buffered: wait for bytes holding no buffer. A keep-alive connection
                // idles for up to idle_timeout, and its buffer may have grown to 64 KiB for
                // the last body; HAProxy and nginx also free theirs while a connection idles.
                // (A TLS stream cannot: the TLS engine may hold decrypted bytes already.)
                buf.shrink_to_fit();
                auto [wec] = co_await sock.async_wait(tcp::socket::wait_read, use_tuple);
                handle.idle = false;  // bytes (or the end) are waiting: a drain lets it finish
                if (wec) {
                    co_return std::pair{dl.fired() && first ? head_outcome::timeout : head_outcome::closed,
                                        std::size_t{0}};
                }
            }
        }
        std::size_t want = std::min<std::size_t>(16 * 1024, lim.header_bytes + 4 - data.size());
        if constexpr (is_tls<Stream>) {
            if (buf.size() == 0) {
                // A TLS stream is waited on by reading it, into a buffer that is held while the
                // connection idles: a small one (the TLS engine keeps the rest of a record it
                // decrypted, and the next read takes it without waiting), so an idle agent's
                // connection holds 1 KiB here rather than the last request's 16 KiB or more.
                // (Asio's TLS stream keeps 68 KiB of its own record buffers per connection.)
                buf.shrink_to_fit();
                want = std::min<std::size_t>(want, 1024);
            }
        }
        auto [ec, n] = co_await sock.async_read_some(buf.prepare(want), use_tuple);
        handle.idle = false;
        if (ec) {
            if (dl.fired() && (buf.size() > 0 || first)) {
                co_return std::pair{head_outcome::timeout, std::size_t{0}};
            }
            co_return std::pair{head_outcome::closed, std::size_t{0}};
        }
        buf.commit(n);
        if (!deadline_from_first_byte) {
            deadline_from_first_byte = true;
            dl.arm(lim.header_timeout);
        }
    }
}

// Watches for the client going away while the upstream works, so a client that hangs up
// cancels the upstream request instead of leaving it running. Callbacks, not a coroutine
// raced against the exchange: that race (two spawned coroutines and a parallel group per
// request) cost ~2 us of CPU per request, about a tenth of the proxy's. One per connection;
// its state is shared with the callbacks, which check a generation (like `deadline`).
//
// Most exchanges end within a few milliseconds, and watching costs a syscall per request
// (Asio re-arms the descriptor with epoll_ctl for every wait for readiness), so the watch
// begins only after a grace period; a client that left meanwhile is noticed then (its EOF
// is waiting). Plain clients: bytes that arrive meanwhile (a pipelined next request) are
// kept in the session's buffer, up to `cap`; after that it stops reading. TLS clients:
// their bytes cannot be read without the TLS engine, so it peeks: EOF or an error means
// the client left; any bytes (a pipelined request, a close_notify) end the watch and the
// exchange simply finishes.
class client_watch {
public:
    static constexpr std::chrono::milliseconds grace{50};

    client_watch(tcp::socket& raw, beast::flat_buffer& buf, bool tls, asio::cancellation_signal* cancel)
        : st_(std::make_shared<state>(raw.get_executor())) {
        st_->sock = &raw;
        st_->buf = &buf;
        st_->tls = tls;
        st_->cancel = cancel;
    }
    ~client_watch() {
        st_->sock = nullptr;
        st_->buf = nullptr;
        ++st_->generation;
        st_->timer.cancel();
    }
    client_watch(const client_watch&) = delete;
    client_watch& operator=(const client_watch&) = delete;

    // From now until disarm(): a client that leaves aborts the exchange `ex` describes
    // while nothing of a non-idempotent request has gone out yet, or at any time for an
    // idempotent one. A POST already on its way is not cancelled: the upstream may act on it
    // anyway, and a client that only half-closed (shutdown of its sending side) still waits
    // for the answer; cancelling would lose it and invite a retry, a second send.
    void arm(std::size_t cap, const exchange_result& ex, bool idempotent) {
        if (st_->cancel == nullptr) {
            return;
        }
        const auto gen = ++st_->generation;
        st_->left = false;
        st_->cap = cap;
        st_->ex = &ex;
        st_->idempotent = idempotent;
        after_grace(st_, gen, &wait);
    }
    // Ends the watch; true when the client left (the exchange was aborted for it).
    bool disarm() {
        ++st_->generation;
        if (st_->cancel == nullptr) {
            return false;
        }
        st_->timer.cancel();
        if (st_->waiting) {
            error_code ignored;
            st_->sock->cancel(ignored);  // the only operation on the client socket now is ours
            st_->waiting = false;
        }
        return st_->left;
    }

private:
    struct state {
        explicit state(const asio::any_io_executor& ex) : timer(ex) {}
        asio::steady_timer timer;
        tcp::socket* sock = nullptr;
        beast::flat_buffer* buf = nullptr;
        asio::cancellation_signal* cancel = nullptr;
        std::uint64_t generation = 0;
        std::size_t cap = 0;
        const exchange_result* ex = nullptr;
        bool idempotent = false;
        bool tls = false;
        bool waiting = false;
        bool left = false;
    };
    using step = void (*)(const std::shared_ptr<state>&, std::uint64_t);

    static bool current(const state& st, std::uint64_t gen) { return st.sock != nullptr && st.generation == gen; }

    static void after_grace(const std::shared_ptr<state>& st, std::uint64_t gen, step next) {
        st->timer.expires_after(grace);
        st->timer.async_wait([st, gen, next](const error_code& ec) {
            if (!ec && current(*st, gen)) {
                next(st, gen);
            }
        });
    }

    static void wait(const std::shared_ptr<state>& st, std::uint64_t gen) {
        st->waiting = true;
        // Readiness rather than a read: async_read_some would first try a recv() that
        // almost always says EAGAIN, one wasted syscall.
        st->sock->async_wait(tcp::socket::wait_read, [st, gen](const error_code& ec) {
            if (!current(*st, gen)) {
                return;
            }
            st->waiting = false;
            if (ec) {
                return;
            }
            if (st->tls) {
                char c = 0;
                const auto n = ::recv(st->sock->native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                    leave(*st);
                } else if (n < 0) {
                    wait(st, gen);
                } else {
                    hang_up_check(st, gen);  // bytes (a pipelined request, a close_notify)
                }
                return;
            }
            if (st->buf->size() >= st->cap) {
                hang_up_check(st, gen);  // stop reading (back-pressure on the client)
                return;
            }
            error_code rec;
            const auto n = st->sock->read_some(st->buf->prepare(std::min<std::size_t>(4096, st->cap - st->buf->size())), rec);
            if (rec == asio::error::would_block) {
                wait(st, gen);
            } else if (rec) {
                leave(*st);  // EOF / reset: the client left
            } else {
                st->buf->commit(n);
                wait(st, gen);
            }
        });
    }

    // Unread bytes are waiting, so readiness says nothing more: ask the kernel whether the
    // client hung up behind them (a TLS client sends close_notify, then FIN), every grace.
    static void hang_up_check(const std::shared_ptr<state>& st, std::uint64_t gen) {
        pollfd p{st->sock->native_handle(), POLLRDHUP, 0};
        if (::poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
            leave(*st);
            return;
        }
        after_grace(st, gen, &hang_up_check);
    }

    static void leave(state& st) {
        if (!st.idempotent && st.ex != nullptr && st.ex->sending) {
            return;  // on its way: let it finish and try to deliver the answer
        }
        st.left = true;
        st.cancel->emit(asio::cancellation_type::terminal);
    }

    std::shared_ptr<state> st_;
};

// A response that reports a breaker's containment (a hold's 202, a 503 paused, ...) goes
// out only once the saved breaker state holds the change it reports (`change`,
// breakers::admission::change): a crash right after it finds the breaker as the response
// said. True when the request must wait for a save first (rare: within the moments after
// a trip). While saves fail the wait is for one more attempt; if that fails too the response
// goes out (logged; the writer alerts and keeps trying).
bool must_settle(const server& srv, std::uint64_t change) {
    return change != 0 && !srv.breaker_state_saved_through(change);
}

// The wait itself (after must_settle said so, or after a trip this request made): the
// response goes out either way, logged when the state could not be saved.
// (The result is read into a variable: GCC 12 miscompiles some co_await expressions used
// directly as a condition, and this one trapped at run time.)
asio::awaitable<void> persist_or_log(server& srv, std::string_view instance) {
    const bool durable = co_await await_persist(srv);
    if (!durable) {
        spdlog::error("breaker state for {} could not be persisted", instance);
    }
}

// Closing a socket with unread input makes the kernel send RST, which can destroy the
// error response we just wrote (a 413 while the client is still sending its body). Like
// nginx's lingering_close: after an error answer, stop sending, then read and discard for
// a bounded time. After a normal last response the client is not sending, so no linger.
template <class Stream>
asio::awaitable<void> close_connection(Stream& stream, tcp::socket& sock, deadline& dl, bool linger) {
    error_code ec;
    if constexpr (is_tls<Stream>) {
        // close_notify, so the client can tell our close from a truncation; bounded.
        dl.arm(std::chrono::milliseconds{500});
        co_await stream.async_shutdown(use_tuple);
        dl.disarm();
    }
    sock.shutdown(tcp::socket::shutdown_send, ec);
    if (!ec && linger) {
        dl.arm(std::chrono::seconds{2});
        std::array<char, 16 * 1024> sink;
        std::size_t discarded = 0;
        while (discarded < 4 * 1024 * 1024) {
            auto [rec, n] = co_await sock.async_read_some(asio::buffer(sink), use_tuple);
            if (rec) {
                break;
            }
            discarded += n;
        }
        dl.disarm();
    }
    sock.close(ec);
}

// A client's field that would read upstream as what its proxy asserts about the client or
// the connection: Forwarded (RFC 7239), X-Real-IP, Front-End-Https, every X-Forwarded-* but
// the hyphen spellings of For, Host and Proto (breakerbox's own, set or appended to when the
// request goes out; Rack reads X-Forwarded-Ssl and -Scheme for the scheme), and any of these
// spelled with underscores (X_Forwarded_For: CGI maps both spellings to one variable).
bool claims_to_be_forwarding(std::string_view name) {
    std::string n;
    n.reserve(name.size());
    for (const char c : name) {
        n += c == '_' ? '-' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    if (n == "forwarded" || n == "x-real-ip" || n == "front-end-https") {
        return true;
    }
    if (n.rfind("x-forwarded-", 0) != 0) {
        return false;
    }
    return name.find('_') != std::string_view::npos ||
           (n != "x-forwarded-for" && n != "x-forwarded-host" && n != "x-forwarded-proto");
}

// Why a rule opened a breaker: everything an operator and the incident need.
breakers::trip_cause rule_cause(const rules::decision& d, const std::string& request_id) {
    breakers::trip_cause cause;
    cause.kind = "rule";
    cause.actor = "rule:" + d.rule;
    cause.reason = d.reason;
    cause.rule = d.rule;
    cause.key = d.key;
    cause.value = d.measured;
    cause.limit = d.limit;
    cause.window = d.window;
    cause.request_id = request_id;
    return cause;
}

// An Idempotency-Key noted as sent before the request is (forwarded_keys::note_then): kept
// when the request goes out (keep(), for step 8's bookkeeping), forgotten when it does not
// (any way out of the request before that), so a retry is not refused for a send that
// never was.
// A live send under an Idempotency-Key while it is in flight (forwarded_keys::begin_flight):
// until its exchange is over, a retry with the same key and agent is refused, 409 in_flight.
class key_flight {
public:
    key_flight(forwarded_keys& keys, std::string_view key, std::string_view agent)
        : keys_(keys), digest_(keys.begin_flight(key, agent)) {}
    key_flight(const key_flight&) = delete;
    key_flight& operator=(const key_flight&) = delete;
    ~key_flight() {
        if (digest_) {
            keys_.end_flight(*digest_);
        }
    }
    bool taken() const { return digest_.has_value(); }

private:
    forwarded_keys& keys_;
    std::optional<std::uint64_t> digest_;
};

class pending_send {
public:
    pending_send(forwarded_keys& keys, std::string_view key, std::string_view agent, time_point now)
        : keys_(keys), key_(key), agent_(agent),
          ms_(std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count()) {}
    pending_send(const pending_send&) = delete;
    pending_send& operator=(const pending_send&) = delete;
    ~pending_send() {
        if (noted_ && !kept_) {
            keys_.forget(key_, agent_, ms_, before_);
        }
    }
    // Notes the key, then returns may_hold() (asked under the same lock).
    template <class F>
    bool note(F&& may_hold) {
        auto [before, held] = keys_.note_then(key_, agent_, ms_, std::forward<F>(may_hold));
        before_ = before;
        noted_ = true;
        return held;
    }
    const std::string& key() const { return key_; }
    // The request is being sent: the note stays. (when noted, what was noted before)
    std::pair<std::int64_t, std::optional<std::int64_t>> keep() {
        kept_ = true;
        return {ms_, before_};
    }

private:
    forwarded_keys& keys_;
    std::string key_;
    std::string agent_;
    std::int64_t ms_ = 0;
    std::optional<std::int64_t> before_;
    bool noted_ = false;
    bool kept_ = false;
};

// A half-open probe this request carries; its result is reported when the request ends.
struct probe_ticket {
    std::string instance;
    std::uint64_t round = 0;
};

// Retry-After: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).
std::optional<std::chrono::milliseconds> parse_retry_after(std::string_view v, std::chrono::system_clock::time_point wall_now) {
    v = trim(v);
    if (v.empty()) {
        return std::nullopt;
    }
    if (std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        if (v.size() > 9) {
            return std::chrono::milliseconds{std::chrono::hours{24 * 365}};
        }
        return std::chrono::seconds{std::stoll(std::string{v})};
    }
    std::tm tm{};
    const std::string text{v};
    if (::strptime(text.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm) == nullptr) {
        return std::nullopt;
    }
    const auto when = std::chrono::system_clock::from_time_t(::timegm(&tm));
    if (when <= wall_now) {
        return std::chrono::milliseconds{0};
    }
    return std::chrono::duration_cast<std::chrono::milliseconds>(when - wall_now);
}

// The status breakerbox answers a client whose exchange failed.
http::status failure_status(upstream_failure f) {
    switch (f) {
        case upstream_failure::pool_exhausted:
        case upstream_failure::over_budget:
        case upstream_failure::connect_timeout: return http::status::service_unavailable;
        case upstream_failure::timeout: return http::status::gateway_timeout;
        default: return http::status::bad_gateway;
    }
}

// After the upstream answered (or failed): probe results, upstream health, the upstream's
// own rate-limit signals, and response-side rules.
template <class FillView>
void observe_upstream(worker& w, const runtime& rt, std::size_t upstream_index, const exchange_result& ex,
                      const std::vector<probe_ticket>& probes, bool response_rules, rules::request_view& view,
                      FillView& fill_view, const std::string& request_id) {
    auto& registry = *rt.breakers;
    const auto now = w.owner().now();
    if (ex.failure == upstream_failure::cancelled || ex.failure == upstream_failure::pool_exhausted) {
        for (const auto& p : probes) {
            registry.cancel_probe(p.instance, p.round);  // the upstream gave no verdict
        }
        return;
    }
    const bool failed = ex.failure != upstream_failure::none;
    const unsigned status = failed ? 0 : ex.res.result_int();
    // A response over limits.upstream_body_bytes (or past upstream_buffered_bytes) is our own limit, not the upstream failing
    // (a few large list GETs in a row must not open upstream/<name> and pause every write):
    // no verdict for probes or health. Unless its status was a 5xx: the upstream failed,
    // whatever the size of its error page.
    const bool dropped_5xx = ex.dropped_status >= 500 && ex.dropped_status < 600;
    const bool our_limit = (ex.failure == upstream_failure::too_large || ex.failure == upstream_failure::over_budget) &&
                           !dropped_5xx;
    const bool bad = failed || status >= 500;
    for (const auto& p : probes) {
        if (our_limit) {
            registry.cancel_probe(p.instance, p.round);
        } else {
            registry.probe_result(p.instance, !bad && status != 429, now, p.round);
        }
    }
    const auto& ug = rt.upstreams[upstream_index];
    const auto& up = rt.cfg->upstreams[upstream_index];
    if (rt.cfg == w.cfg() && upstream_index < w.stats().upstream_latency.size()) {  // not across a reload
        w.stats().upstream_latency[upstream_index].observe(static_cast<double>(ex.elapsed.count()) / 1e6);
    }
    if (ug.health && !our_limit) {
        if (auto cause = ug.health->record(bad, ex.elapsed, now)) {
            cause->request_id = request_id;
            registry.trip(ug.breaker, "", std::move(*cause), now);
        }
    }
    // The upstream's rate-limit signals, from its answer whether or not its body came (a 429
    // with a large error page asks for its pause all the same).
    if (!failed || ex.dropped_status != 0) {
        const unsigned answered = failed ? ex.dropped_status : status;
        const fields& said = failed ? ex.dropped_fields : static_cast<const fields&>(ex.res.base());
        std::optional<std::chrono::milliseconds> pause;
        if (answered == 429 || answered == 503) {
            pause = parse_retry_after(said[http::field::retry_after], w.owner().time().wall_now());
        }
        // HubSpot says "0 left in this interval" on the last allowed call.
        if (trim(said["x-hubspot-ratelimit-remaining"]) == "0") {
            std::chrono::milliseconds interval{1000};
            const auto iv = trim(said["x-hubspot-ratelimit-interval-milliseconds"]);
            if (!iv.empty() && iv.size() < 10 && std::all_of(iv.begin(), iv.end(), [](char c) { return c >= '0' && c <= '9'; })) {
                interval = std::chrono::milliseconds{std::stoll(std::string{iv})};
            }
            pause = std::max(pause.value_or(std::chrono::milliseconds{0}), interval);
        }
        if (pause && pause->count() > 0) {
            const auto capped = std::min(*pause, up.max_rate_limit_pause);
            ug.quota->pause_until(now + capped);
            spdlog::warn("upstream {} asked for a pause of {}: paused for every agent", up.name,
                         cfg::format_duration(capped));
        }
    }
    // Nor is an answer of our own limits (a response over upstream_body_bytes, or dropped for
    // the memory bound) a response of the upstream's: counted as a 502 or 503 it would raise
    // `status:5xx` ratios and trip breakers over healthy upstreams. (A dropped 5xx counts as
    // the upstream's own status, without its body.)
    if (response_rules && rt.engine && !our_limit) {
        fill_view();
        rules::response_view rv;
        // A failed exchange counts as what the client is answered (502, 503 or 504), so an
        // outage of refused connections and timeouts raises a `status:5xx` ratio instead of
        // diluting it as "responses" that are not errors.
        rv.status = dropped_5xx ? static_cast<int>(ex.dropped_status)
                    : failed    ? static_cast<int>(failure_status(ex.failure))
                                : static_cast<int>(status);
        rv.latency = ex.elapsed;
        if (!failed) {
            rv.content_type = ex.res[http::field::content_type];
            rv.body = ex.res.body();
        }
        const auto d = rt.engine->record_response(view, rv, now);
        if (d.outcome == rules::verdict::violated) {
            const auto* b = rt.cfg->find_breaker(d.trips);
            if (b != nullptr && b->act != breakers::action::deny) {
                registry.trip(d.trips, d.key, rule_cause(d, request_id), now);
            }
        }
    }
}

struct session_guard {
    worker& w;
    std::list<session_handle>::iterator it;
    // Bound to the session coroutine's cancellation slot: emitting it aborts whatever the
    // session is waiting for (the client watch uses it on the upstream exchange).
    asio::cancellation_signal* cancel = nullptr;
    session_guard(worker& wk, tcp::socket* s) : w(wk), it(wk.register_session(s)) {}
    ~session_guard() {
        w.unregister_session(it);
        w.owner().release_connection();
    }
    session_guard(const session_guard&) = delete;
    session_guard& operator=(const session_guard&) = delete;
};

// Who is on the other end of a client connection.
struct client_info {
    std::string ip;
    bool tls = false;
    std::vector<std::string> cert_names;  // a verified client certificate's DNS SANs (or CN without SANs)
    std::string ignored_cn;               // its CN when it has SANs (which alone identify it)
    std::string tunnel_host;              // inside an intercepted CONNECT: its destination
    std::uint16_t tunnel_port = 0;
    std::string tunnel_agent;             // the agent the CONNECT's credentials named
    std::string tunnel_key_digest;        // SHA-256 of the CONNECT's key, when a key named it
    // A client certificate verified at the handshake: the connection and the TLS files it
    // was verified under (reverify_peer when a reload replaced them).
    SSL* ssl = nullptr;
    std::shared_ptr<const listener_security> verified_under;
    // When that certificate (or a certificate of its chain) stops being valid.
    std::optional<std::chrono::sys_seconds> cert_expires;
    // That certificate is verified under the listener's files as they are now (whether or
    // not it names anything an agent could be named by).
    bool cert_verified = false;
};

// The agent key a request presents, as the SHA-256 of it (bytes): x-breakerbox-key, else
// Proxy-Authorization as a forward proxy's clients send it: `Bearer KEY`, or `Basic` with
// base64 of `user:password`, which every HTTP_PROXY client (curl, Python, Go, Node) sends
// for HTTP_PROXY=http://agent:KEY@host: the password is the key, or the user when there is
// no password (http://KEY@host). A credential that names no key (another scheme, bad
// base64, an empty token) is `unreadable`: refused with the reason, never read as no
// credential (unscoped where identity is optional, out of reach of the agent's kill switch).
struct presented_key {
    std::string digest;      // empty: no key
    std::string unreadable;  // why the credential presented names no key
    // With x-breakerbox-key, a Proxy-Authorization too: its key's digest, or why it names none.
    // Both must name the same agent (two identities, neither wins).
    std::string proxy_digest;
    std::string proxy_unreadable;
    bool any() const { return !digest.empty() || !unreadable.empty(); }
};

// The key a Proxy-Authorization value names (into `decoded` when Basic), or why it names none.
std::string_view proxy_authorization_key(std::string_view pa, std::string& decoded, std::string& unreadable) {
    const std::size_t sp = pa.find(' ');
    const std::string_view scheme = pa.substr(0, sp);
    const std::string_view rest = sp == std::string_view::npos ? std::string_view{} : trim(pa.substr(sp + 1));
    std::string_view key;
    if (iequals(scheme, "bearer")) {
        key = rest;
    } else if (iequals(scheme, "basic")) {
        std::size_t colon = std::string_view::npos;
        if (rest.empty() || !rules::decode_base64(rest, decoded) || (colon = decoded.find(':')) == std::string::npos) {
            unreadable = "the Proxy-Authorization Basic credentials are not base64 of user:password";
            return {};
        }
        const std::string_view user = std::string_view{decoded}.substr(0, colon);
        const std::string_view password = std::string_view{decoded}.substr(colon + 1);
        key = password.empty() ? user : password;
    } else {
        unreadable = "Proxy-Authorization uses a scheme other than Bearer or Basic";
        return {};
    }
    if (key.empty()) {
        unreadable = "the Proxy-Authorization credentials hold no agent key";
    }
    return key;
}

std::string digest_bytes(std::string_view key) {
    const sha256_digest digest = sha256(key);
    return std::string{reinterpret_cast<const char*>(digest.data()), digest.size()};
}

presented_key read_key(const request& req) {
    presented_key out;
    std::string decoded;
    const std::string_view pa = trim(req[http::field::proxy_authorization]);
    if (const auto [first, last] = req.equal_range(http::field::proxy_authorization);
        first != last && std::next(first) != last) {
        // Two lines, perhaps two keys: neither is read as the credential.
        out.unreadable = "Proxy-Authorization is given more than once";
        return out;
    }
    // Present but empty (an unset variable in the agent's client) is a credential that names
    // no key, as is a second line: refused, not read as no key or as the first line's.
    if (const auto [first, last] = req.equal_range("x-breakerbox-key"); first != last) {
        const std::string_view key = trim(first->value());
        if (std::next(first) != last) {
            out.unreadable = "x-breakerbox-key is given more than once";
            return out;
        }
        if (key.empty()) {
            out.unreadable = "x-breakerbox-key is empty";
            return out;
        }
        out.digest = digest_bytes(key);
        if (!pa.empty()) {
            const std::string_view other = proxy_authorization_key(pa, decoded, out.proxy_unreadable);
            if (out.proxy_unreadable.empty()) {
                out.proxy_digest = digest_bytes(other);
            }
        }
        return out;
    }
    if (pa.empty()) {
        return out;
    }
    const std::string_view key = proxy_authorization_key(pa, decoded, out.unreadable);
    if (out.unreadable.empty()) {
        out.digest = digest_bytes(key);
    }
    return out;
}

std::string key_digest(const request& req) {
    return read_key(req).digest;
}

// "host:port" of a CONNECT target (host may be a bracketed IPv6 literal), host lower-cased.
std::optional<std::pair<std::string, std::uint16_t>> parse_authority(std::string_view t) {
    auto hp = split_host_port(t);
    if (!hp || hp->second == 0 || hp->first.find_first_of("/@ ") != std::string::npos) {
        return std::nullopt;
    }
    std::transform(hp->first.begin(), hp->first.end(), hp->first.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return hp;
}

// A forward proxy intercepts destinations its routes name by host; nothing else.
// (An IPv6 literal with or without brackets; a trailing dot is not stripped here: such a
// destination is refused, closed.)
// Whether a forward proxy's destination is a route's (serves_destination); else it is
// unknown, or a passthrough entry's.
bool known_destination(const config& cfg, std::string_view host, std::uint16_t port, std::uint16_t default_port) {
    return std::any_of(cfg.routes.begin(), cfg.routes.end(),
                       [&](const route_config& r) { return serves_destination(cfg, r, host, port, default_port); });
}

// The port of an absolute-form URL's authority, `default_port` when it names none (`host`,
// `host:`, `[v6]`); 0 when what follows the colon is not a port.
std::uint16_t authority_port(std::string_view authority, std::uint16_t default_port) {
    if (authority.empty() || authority.back() == ']' || authority.back() == ':' ||
        authority.find(':') == std::string_view::npos) {
        return default_port;
    }
    const auto hp = split_host_port(authority);
    return hp ? hp->second : 0;
}

// An entry is host:port, or a host alone, which means its port 443 (HTTPS_PROXY tunnels
// TLS): a host-only entry does not open every port of that host (SMTP on 25, say).
// Compared as (host, port), never as text: "fd00::1:25" is the host fd00::1:25 on 443, not
// fd00::1 on port 25.
// Entries are stored without the root's trailing dot (passthrough_entry), and a destination
// is compared the same way.
bool passthrough_allowed(const forward_proxy_config& fp, std::string_view host, std::uint16_t port) {
    const std::string_view name = host_name(host);
    return std::any_of(fp.passthrough.begin(), fp.passthrough.end(),
                       [&](const auto& e) { return e.second == port && iequals(e.first, name); });
}

// Copies bytes one way until EOF or an error, then half-closes the other side.
// `moved`: the bytes it passed on, for the tunnel's closing log line.
asio::awaitable<void> pump(tcp::socket& from, tcp::socket& to,
                           std::shared_ptr<std::chrono::steady_clock::time_point> last_activity, std::uint64_t& moved) {
    co_await asio::this_coro::throw_if_cancelled(false);
    std::array<char, 16 * 1024> chunk;
    for (;;) {
        auto [rec, n] = co_await from.async_read_some(asio::buffer(chunk), use_tuple);
        if (rec) {
            break;
        }
        *last_activity = std::chrono::steady_clock::now();
        auto [wec, wn] = co_await asio::async_write(to, asio::buffer(chunk.data(), n), use_tuple);
        moved += wn;
        if (wec) {
            break;
        }
    }
    error_code ignored;
    to.shutdown(tcp::socket::shutdown_send, ignored);
}

// Whether an operator has switched the agent off (its kill switch agent/<id> is open or
// forced open), in the worker's current config.
bool agent_switched_off(worker& w, const std::string& agent_id) {
    const runtime_lease lease = w.lease_runtime();
    const auto& registry = *lease.get().breakers;
    if (!registry.any_active()) {
        return false;
    }
    const auto snap = registry.get("agent/" + agent_id, w.owner().now());
    return snap && (snap->md == breakers::mode::forced_open ||
                    (snap->md == breakers::mode::automatic && snap->st == breakers::state::open));
}

// What an open blind tunnel opened under an earlier config is no longer allowed under the
// worker's current one ("": it still is). A reload that takes the destination out of
// passthrough (or makes it a route's, intercepted from now on), revokes the key that opened
// it, removes its agent (and with it the kill switch agent/<id>), holds that agent to an
// allow list, body constraints or the sandbox, or requires an agent on the listener, ends it,
// as it would refuse the CONNECT now.
std::string blind_tunnel_refusal(worker& w, std::size_t listener, const std::string& host, std::uint16_t port,
                                 const std::string& agent_id, const std::string& digest) {
    const auto cfg = w.cfg();
    const listener_config* l = listener < cfg->listeners.size() ? &cfg->listeners[listener] : nullptr;
    if (l == nullptr || !l->forward_proxy || !passthrough_allowed(*l->forward_proxy, host, port)) {
        return "no longer in forward_proxy.passthrough";
    }
    if (known_destination(*cfg, host_name(host), port, 443)) {
        return "now a route's destination (inspected and metered: open a new tunnel)";
    }
    if (agent_id.empty()) {
        return l->require_agent ? "the listener now requires an agent" : "";
    }
    const agent_config* a = digest.empty() ? nullptr : cfg->agent_by_key_digest(digest);
    if (a == nullptr || a->id != agent_id) {
        return "the key that opened it no longer names agent " + agent_id + " (key revoked or agent removed)";
    }
    if (a->sandbox || !a->constraints.empty() || !a->allow.routes.empty() || !a->allow.methods.empty() ||
        !a->allow.paths.empty()) {
        return "agent " + agent_id + " now has an allow list, body constraints or the sandbox";
    }
    return "";
}

// Ends a tunnel that has been quiet for `idle`, or (every second) whose agent an operator
// has switched off or that the current config no longer allows (`refusal`, for a blind
// tunnel): closes both sockets (which ends the pumps), and says why in `closed_for`.
asio::awaitable<void> tunnel_watchdog(worker& w, tcp::socket& a, tcp::socket& b,
                                      std::shared_ptr<std::chrono::steady_clock::time_point> last_activity,
                                      std::chrono::milliseconds idle, std::string agent_id,
                                      std::function<std::string()> refusal, std::string& closed_for) {
    co_await asio::this_coro::throw_if_cancelled(false);
    static constexpr std::chrono::seconds kill_switch_check{1};
    asio::steady_timer timer{a.get_executor()};
    for (;;) {
        auto at = *last_activity + idle;
        if (!agent_id.empty() || refusal) {
            at = std::min(at, std::chrono::steady_clock::now() + kill_switch_check);
        }
        timer.expires_at(at);
        auto [ec] = co_await timer.async_wait(use_tuple);
        if (ec) {
            co_return;  // the tunnel ended by itself
        }
        const bool idle_out = std::chrono::steady_clock::now() - *last_activity >= idle;
        const bool switched_off = !idle_out && !agent_id.empty() && agent_switched_off(w, agent_id);
        const std::string refused = !idle_out && !switched_off && refusal ? refusal() : std::string{};
        if (idle_out || switched_off || !refused.empty()) {
            closed_for = idle_out       ? "idle for " + cfg::format_duration(idle)
                         : switched_off ? "agent/" + agent_id + " is switched off"
                                        : "a config change: " + refused;
            if (switched_off) {
                spdlog::warn("tunnel of agent {} closed: agent/{} is switched off", agent_id, agent_id);
            } else if (!refused.empty()) {
                spdlog::warn("tunnel of agent {} closed by a config change: {}", agent_id.empty() ? "-" : agent_id,
                             refused);
            }
            error_code ignored;
            a.close(ignored);
            b.close(ignored);
            co_return;
        }
    }
}

// The answer that opens a tunnel, with breakerbox's decision and the CONNECT's request id
// like any answer of its own (no length: RFC 9110 forbids one on a 2xx to CONNECT).
std::string connect_established(std::string_view request_id) {
    std::string out = "HTTP/1.1 200 Connection established\r\nx-breakerbox-decision: allowed\r\nx-request-id: ";
    out += request_id;
    out += "\r\n\r\n";
    return out;
}

// A blind tunnel for a passthrough destination: not inspected, not metered, logged.
// `agent_id`: who opened it (empty: nobody identified); its kill switch closes the tunnel.
asio::awaitable<void> blind_tunnel(worker& w, tcp::socket& client, beast::flat_buffer& buf, std::size_t listener,
                                   const std::string& host, std::uint16_t port, const client_info& ci, std::string agent_id,
                                   std::string digest, const std::string& request_id) {
    co_await asio::this_coro::throw_if_cancelled(false);
    // A copy: the tunnel outlives any runtime lease, and a reload may free this config.
    const auto idle_timeout = w.cfg()->limits.idle_timeout;
    auto ex = client.get_executor();
    tcp::socket out{ex};
    // 10 s for the lookup and the connect together. The lookup is bounded like an
    // upstream's (Asio's resolver cannot be interrupted mid-lookup: a dead nameserver would
    // hold the CONNECT, and every other lookup of the worker, far longer).
    const auto started = std::chrono::steady_clock::now();
    constexpr std::chrono::milliseconds connect_budget{10'000};
    auto resolved = co_await resolve_bounded(ex, host, port, connect_budget);
    std::string failure = resolved.error;
    // Our own limits (the lookup cap, file descriptors, socket buffers) are not the
    // destination's fault: 503 with retry-after, as for a route's upstream.
    bool ours = resolved.busy;
    if (failure.empty()) {
        asio::steady_timer timer{ex};
        timer.expires_at(started + connect_budget);
        // Shared with the timer's handler: one already queued when the connect ends runs
        // later (after this block, perhaps after this coroutine) and must find it.
        auto settled = std::make_shared<bool>(false);
        timer.async_wait([&out, settled](const error_code& ec) {
            if (!ec && !*settled) {  // the connect is still pending, so `out` still exists
                error_code ignored;
                out.close(ignored);
            }
        });
        auto [cec, ep] = co_await asio::async_connect(out, resolved.endpoints, use_tuple);
        *settled = true;
        timer.cancel();
        if (cec) {
            failure = cec == asio::error::operation_aborted ? "no connection within 10s" : cec.message();
            ours = own_resource_limit(cec);
            if (ours) {
                failure = "breakerbox cannot open a connection (" + cec.message() + "): its own limit";
            }
        }
    }
    // Out of time (the lookup or the connect) or out of our own resources: 503 with
    // retry-after, as a route's upstream (failure_status); refused or unknown: 502.
    const bool timed_out = resolved.timed_out || failure == "no connection within 10s";
    // The CONNECT in the access log and the decision counters, as any request (its id the
    // one the session gave it: the client's own x-request-id when it sent one).
    const std::string target = host + ":" + std::to_string(port);
    log_record rec{};
    rec.started = started;
    rec.client = ci.ip;
    rec.method = "CONNECT";
    rec.target = target;
    rec.agent = agent_id;
    rec.request_id = request_id;
    if (!failure.empty()) {
        spdlog::info("tunnel {} (agent {}) -> {}:{} failed: {} (request {})", ci.ip, agent_id.empty() ? "-" : agent_id,
                     host, port, failure, request_id);
        const char* code = ours ? "upstream_overloaded" : timed_out ? "connect_timeout" : "connect_failed";
        error_info e{timed_out || ours ? http::status::service_unavailable : http::status::bad_gateway, "unavailable",
                     code,
                     "the passthrough destination " + host + ":" + std::to_string(port) + " cannot be reached: " + failure};
        auto res = make_error(e, request_id, 11, false);  // a 503 carries retry-after
        auto [wec, wn] = co_await http::async_write(client, res, use_tuple);
        rec.status = res.result_int();
        rec.decision = "unavailable";
        rec.code = code;
        rec.bytes_out = wn;
        write_access_log(w, rec);
        co_return;
    }
    spdlog::info("tunnel {} (agent {}) -> {}:{} (passthrough: not inspected)", ci.ip,
                 agent_id.empty() ? "-" : agent_id, host, port);
    const std::string ok = connect_established(request_id);
    auto [wec, wn] = co_await asio::async_write(client, asio::buffer(ok), use_tuple);
    rec.status = 200;
    rec.decision = "allowed";
    rec.code = "blind_tunnel";  // not inspected, not metered
    rec.bytes_out = wn;
    write_access_log(w, rec);
    if (wec) {
        co_return;
    }
    const auto opened = std::chrono::steady_clock::now();
    std::uint64_t from_client = 0;
    if (buf.size() > 0) {  // bytes the client sent right after its CONNECT
        auto [bec, bn] = co_await asio::async_write(out, buf.data(), use_tuple);
        buf.consume(buf.size());
        from_client += bn;
        if (bec) {
            co_return;
        }
    }
    // Bounded like any connection: idle for limits.idle_timeout in both directions, or one
    // direction done and the other idle that long, and both sides are closed.
    auto last_activity = std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
    auto refusal = [&w, listener, host, port, agent_id, digest] {
        return blind_tunnel_refusal(w, listener, host, port, agent_id, digest);
    };
    // What went through, not inspected: logged when it ends, as the opening was.
    std::uint64_t to_client = 0;
    std::string closed_for = "its ends closed it";
    co_await ((pump(client, out, last_activity, from_client) && pump(out, client, last_activity, to_client)) ||
              tunnel_watchdog(w, client, out, last_activity, idle_timeout, agent_id, refusal, closed_for));
    const auto lasted = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - opened);
    spdlog::info("tunnel {} (agent {}) -> {}:{} closed after {}: {} bytes from the client, {} to it; {} (request {})",
                 ci.ip, agent_id.empty() ? "-" : agent_id, host, port, cfg::format_duration(lasted), from_client,
                 to_client, closed_for, request_id);
}

asio::awaitable<void> serve_tls(worker& w, tcp::socket& raw, session_guard& guard, deadline& dl, std::size_t listener,
                                client_info ci, asio::ssl::context& ctx, beast::flat_buffer& buf,
                                const cert_minter::leaf* leaf);

template <class Stream>
asio::awaitable<void> serve(worker& w, Stream& sock, tcp::socket& raw, session_guard& guard, deadline& dl,
                            std::size_t listener, client_info ci, beast::flat_buffer& buf) {
    const std::string& client_ip = ci.ip;
    client_watch watch{raw, buf, is_tls<Stream>, guard.cancel};
    // A CONNECT that opens a tunnel ends the request loop; the tunnel runs after it.
    struct tunnel_plan {
        enum { none, intercept, blind } kind = none;
        client_info inner;                                // intercept: who is inside
        std::shared_ptr<const listener_security> sec;     // intercept
        cert_minter::leaf leaf;                           // intercept
        std::string host;                                 // blind
        std::uint16_t port = 0;                           // blind
        std::string agent;                                // blind: who opened it (kill switch)
        std::string key_digest;                           // blind: the key it opened with
        std::string request_id;                           // blind: the CONNECT's
    } tunnel;
    std::string scratch;  // serialized response heads, reused
    std::uint64_t served = 0;
    bool linger = false;  // set when we answer an error and close: input may still be coming
    // What the rules booked for the request in hand, taken off again when it is not sent.
    // The session's own (a worker's sessions interleave at every co_await), reused.
    rules::evaluation_receipt booked;
    // The request's header fields as the rules read them (fill_view), the session's own for
    // the same reason: the view holds them across the waits between rule passes.
    std::vector<rules::header_field> header_scratch;

    // What a request leaves the connection to do.
    enum class after_request { next, close, end };
    // One request, from its head in `buf` to its answer. A coroutine of its own, so that its
    // locals (a frame of ~17 KB: GCC gives every local of a coroutine its own slot) exist
    // only while a request is in hand, not while the connection idles between requests.
    auto one_request = [&](head_outcome outcome, std::size_t head_len) -> asio::awaitable<after_request> {
        // Hold the runtime current when the request arrived: a reload may swap the worker's
        // pointer meanwhile; this request finishes on the one it started with (its config,
        // its upstream indexes and the pools they name).
        const runtime_lease lease = w.lease_runtime();
        const runtime& rt = lease.get();
        const config* cfg = rt.cfg.get();
        const limits_config& lim = cfg->limits;
        const auto started = clock_type::now();
        std::string request_id = new_request_id();
        log_record rec{};
        rec.started = started;
        rec.client = client_ip;

        bool head_request = false;  // a HEAD gets the head of the error only (RFC 9110 §9.3.2)
        // Sends a response generated by breakerbox; false when the write failed.
        auto reply = [&](const error_info& e, bool keep_alive) -> asio::awaitable<bool> {
            auto res = make_error(e, request_id, 11, keep_alive);
            if (head_request) {
                res.body().clear();  // Content-Length still says what a GET would get
            }
            linger = !keep_alive;
            dl.arm(lim.write_timeout);
            auto [ec, n] = co_await write_message(sock, res, scratch);
            ++w.stats().generated;
            ++w.stats().responses_by_class[std::min(5u, res.result_int() / 100)];
            rec.status = res.result_int();
            rec.decision = e.decision;
            rec.code = e.code;
            rec.bytes_out = n;
            rec.request_id = request_id;
            write_access_log(w, rec);
            co_return !ec;
        };
        // The client left before it was answered: 499 client_closed, a line of its own.
        // `decision`: what the request was (before anything was forwarded, mid-body or when a
        // write of ours to it failed: not forwarded, rejected).
        auto log_client_left = [&](std::string_view decision = "rejected") {
            ++w.stats().client_aborts;
            rec.status = 499;
            rec.decision = decision;
            rec.code = "client_closed";
            rec.request_id = request_id;
            write_access_log(w, rec);
        };

        if (outcome == head_outcome::closed) {
            co_return after_request::end;
        }
        // A HEAD refused before Beast names its method (a framing error, a body too large, a
        // head that timed out) gets the head of the error alone too: read off the raw line.
        head_request = std::string_view{static_cast<const char*>(buf.data().data()), buf.size()}.starts_with("HEAD ");
        if (outcome == head_outcome::timeout) {
            co_await reply({http::status::request_timeout, "rejected", "header_timeout",
                            "the request head did not arrive within " + cfg::format_duration(lim.header_timeout)},
                           false);
            co_return after_request::close;
        }
        if (outcome == head_outcome::too_large) {
            co_await reply({http::status::request_header_fields_too_large, "rejected", "headers_too_large",
                            "the request head is larger than " + std::to_string(lim.header_bytes) + " bytes"},
                           false);
            co_return after_request::close;
        }
        ++w.stats().requests;

        // 2. Strict framing on the raw bytes, then Beast parses the same bytes.
        const std::string_view raw_head{static_cast<const char*>(buf.data().data()), head_len};
        if (auto verdict = check_request_head(raw_head, lim.header_count); !verdict.ok()) {
            co_await reply({static_cast<http::status>(verdict.status), "rejected", verdict.code, verdict.message}, false);
            co_return after_request::close;
        }
        request_parser parser;
        parser.header_limit(static_cast<std::uint32_t>(lim.header_bytes + 4));
        parser.body_limit(lim.body_bytes);
        beast::error_code pec;
        parser.put(asio::buffer(buf.data().data(), head_len), pec);
        buf.consume(head_len);
        if (pec == http::error::body_limit) {
            co_await reply({http::status::payload_too_large, "rejected", "body_too_large",
                            "the request body is larger than " + std::to_string(lim.body_bytes) + " bytes"},
                           false);
            co_return after_request::close;
        }
        if (pec || !parser.is_header_done()) {
            co_await reply({http::status::bad_request, "rejected", "bad_request",
                            "the request head cannot be parsed: " + (pec ? pec.message() : std::string{"incomplete"})},
                           false);
            co_return after_request::close;
        }
        // 2b. Who is calling, decided on the head: an agent's API key in x-breakerbox-key (or,
        //     as a forward proxy sees it, Proxy-Authorization: Bearer; only its SHA-256 is
        //     compared), a verified client certificate, or the CONNECT that opened this
        //     tunnel. An unknown or (where required) missing identity is refused before any
        //     body is read or 100-continue is sent.
        // A client certificate is judged again once the listener's TLS files were reloaded
        // (a CRL that revokes it, a CA no longer trusted): a keep-alive connection does not
        // keep a trust the files withdrew. Refused: 401 and the connection closes.
        std::string cert_refused;  // why the connection's certificate is refused now
        if (ci.ssl != nullptr && ci.verified_under != nullptr) {
            // (The same TLS context under a new listener_security, a reload whose files are
            // unchanged, verifies nothing differently: not judged again.)
            if (auto now = w.owner().security(listener);
                (now ? now->tls : nullptr) != ci.verified_under->tls) {
                std::string why;
                const auto verdict = reverify_peer(ci.ssl, now ? now->tls.get() : nullptr, &why, &ci.cert_expires);
                if (verdict == peer_verdict::refused) {
                    cert_refused = "the client certificate is no longer accepted since the TLS files were reloaded (" +
                                   why + "): it identifies nobody on this connection";
                } else if (verdict == peer_verdict::not_verified) {
                    ci.cert_names.clear();  // verified against nothing now: it names no agent
                    ci.ignored_cn.clear();
                    ci.cert_verified = false;
                    ci.cert_expires.reset();  // nor is it held to its dates
                }
                ci.verified_under = std::move(now);
            }
        }
        // Nor does it outlive the certificate: the handshake's verification is not repeated per
        // request, so a certificate (or an intermediate) that expires during a keep-alive
        // connection would go on naming its agent. Refused as a new handshake would be.
        if (cert_refused.empty() && ci.ssl != nullptr && ci.cert_expires &&
            std::chrono::floor<std::chrono::seconds>(w.owner().time().wall_now()) > *ci.cert_expires) {
            cert_refused = "the client certificate (or a certificate of its chain) expired during this "
                           "connection: it identifies nobody now; connect again with a renewed certificate";
        }
        if (!cert_refused.empty()) {
            rec.method = std::string{parser.get().method_string()};
            rec.target = parser.get().target();
            head_request = parser.get().method() == http::verb::head;
            co_await reply({http::status::unauthorized, "denied", "unauthenticated", cert_refused}, false);
            co_return after_request::close;
        }
        const agent_config* agent = nullptr;
        const listener_config* lc = listener < cfg->listeners.size() ? &cfg->listeners[listener] : nullptr;
        const bool identity_required = lc != nullptr && lc->require_agent;
        // (A tunnel opened by an agent is judged again even when a reload removed every
        // agent: it must not go on as nobody, unscoped.)
        if (!cfg->agents.empty() || identity_required || !ci.tunnel_agent.empty()) {
            bool ambiguous_cert = false;
            const presented_key key = read_key(parser.get());
            const bool had_key = key.any();
            agent = key.digest.empty() ? nullptr : cfg->agent_by_key_digest(key.digest);
            if (agent == nullptr && !had_key && !ci.cert_names.empty()) {
                agent = cfg->agent_by_cert_names(ci.cert_names, &ambiguous_cert);
            }
            std::string refused;  // why the caller gets no identity: 401
            // x-breakerbox-key and Proxy-Authorization (HTTP_PROXY's user:password) naming two
            // identities, or one naming none: neither wins, as with a certificate.
            const agent_config* by_proxy = key.proxy_digest.empty() ? nullptr : cfg->agent_by_key_digest(key.proxy_digest);
            if (!key.proxy_unreadable.empty() || (!key.proxy_digest.empty() && by_proxy != agent)) {
                refused = !key.proxy_unreadable.empty()
                              ? key.proxy_unreadable + ", beside x-breakerbox-key: present one identity"
                              : "x-breakerbox-key names " + (agent ? "agent " + agent->id : std::string{"no known agent"}) +
                                    " but Proxy-Authorization names " +
                                    (by_proxy ? "agent " + by_proxy->id : std::string{"no known agent"}) +
                                    ": present one identity";
            } else if (had_key && agent != nullptr && !ci.cert_names.empty()) {
                // Two credentials naming two agents: neither wins (a leaked key must not
                // lift a certificate's holder to the key's wider scope, nor the reverse).
                bool ambiguous = false;
                const agent_config* by_cert = cfg->agent_by_cert_names(ci.cert_names, &ambiguous);
                if (ambiguous) {
                    refused = "the client certificate names more than one agent";
                } else if (by_cert != nullptr && by_cert != agent) {
                    refused = "the agent key names agent " + agent->id + " but the client certificate names agent " +
                              by_cert->id + ": present one identity";
                }
            } else if (agent != nullptr && !ci.tunnel_agent.empty() && agent->id != ci.tunnel_agent) {
                // The CONNECT's credentials name the agent of the whole tunnel: a request in it
                // with a key of another agent presents two identities, and neither wins.
                refused = "the agent key names agent " + agent->id + " but this tunnel was opened by agent " +
                          ci.tunnel_agent + ": present one identity";
            } else if (ambiguous_cert) {
                refused = "the client certificate names more than one agent";
            } else if (agent == nullptr && !had_key && !ci.ignored_cn.empty()) {
                // An agent named by the CN of a certificate that has SANs: before, it was that
                // agent; silently becoming nobody (unscoped where identity is optional) would
                // fail open, so it is refused with the reason.
                if (const auto* by_cn = cfg->agent_by_cert_names({ci.ignored_cn})) {
                    refused = "the client certificate's CN names agent " + by_cn->id +
                              ", but a certificate with subject alternative names is identified by its DNS names "
                              "alone: list one of them in that agent's cert_names";
                }
            }
            if (refused.empty() && agent == nullptr && !had_key && (!ci.cert_names.empty() || ci.cert_verified) &&
                std::any_of(cfg->agents.begin(), cfg->agents.end(),
                            [](const agent_config& a) { return !a.cert_names.empty(); })) {
                // A verified certificate is a credential, like a key: one that names no agent
                // where agents are named by certificates (an agent removed, a name changed, or
                // a certificate with no name an agent can have: only URI or IP SANs) is
                // refused as an unknown key is, never taken as nobody (unscoped where identity
                // is optional).
                std::string names;
                for (const auto& n : ci.cert_names) {
                    names += (names.empty() ? "" : ", ") + n;
                }
                refused = ci.cert_names.empty()
                              ? std::string{"the client certificate has no DNS name (nor a single CN without "
                                            "subject alternative names) to name an agent by: connect without it, or "
                                            "with a certificate an agent's cert_names lists"}
                              : "the client certificate (" + names +
                                    ") names no agent: list one of its names in an agent's cert_names, or connect "
                                    "without it";
            }
            if (refused.empty() && agent == nullptr && !had_key && !ci.tunnel_agent.empty()) {
                // The CONNECT's credentials are judged again on every request of the tunnel
                // (the config may have changed since): a key revoked, or the agent removed, by
                // a reload ends the tunnel's identity; it never goes on as that agent, nor as
                // nobody (unscoped where identity is optional).
                const agent_config* again =
                    ci.tunnel_key_digest.empty() ? nullptr : cfg->agent_by_key_digest(ci.tunnel_key_digest);
                if (again != nullptr && again->id == ci.tunnel_agent) {
                    agent = again;
                } else {
                    refused = "the credentials that opened this tunnel no longer name agent " + ci.tunnel_agent +
                              " (key revoked or agent removed): open a new tunnel";
                }
            }
            if (refused.empty() && agent == nullptr && (had_key || identity_required)) {
                refused = !key.unreadable.empty() ? key.unreadable
                          : had_key               ? "the agent key is not known"
                                                  : "this listener needs an agent key (x-breakerbox-key) or client certificate";
            }
            if (!refused.empty()) {
                head_request = parser.get().method() == http::verb::head;
                // Said to a client that talks to breakerbox as its proxy (a CONNECT, or an
                // absolute-form request on a forward proxy, outside any tunnel): 407 with
                // Proxy-Authenticate, which HTTP_PROXY clients answer with their proxy
                // credentials (RFC 9110 §15.5.8); to anyone else 401 with WWW-Authenticate.
                // (Not for a refusal a proxy credential cannot mend, a client certificate's;
                // nor a CONNECT inside TLS, refused as such below; nor `OPTIONS *`.)
                const auto& h = parser.get();
                // The access log says what was refused (the target redacted as always).
                rec.method = std::string{h.method_string()};
                rec.target = h.target();
                const bool as_proxy = lc != nullptr && lc->forward_proxy && ci.tunnel_host.empty() &&
                                      ci.cert_names.empty() && ci.ignored_cn.empty() &&
                                      (h.method() == http::verb::connect ? !ci.tls
                                                                         : !h.target().starts_with('/') && h.target() != "*");
                co_await reply({as_proxy ? http::status::proxy_authentication_required : http::status::unauthorized,
                                "denied", "unauthenticated", std::move(refused)},
                               false);
                co_return after_request::close;
            }
        }
        // The agent is in the access log and its metrics from here on: a request refused
        // before its scope is judged (no route, a method override, an unknown destination,
        // a blind tunnel it may not open) is still that agent's.
        if (agent != nullptr) {
            rec.agent = agent->id;
        }
        {
            auto& h = parser.get();
            head_request = h.method() == http::verb::head;
            if (auto id = h["x-request-id"]; acceptable_request_id(id)) {
                request_id.assign(id.data(), id.size());
            }
            rec.method = std::string{h.method_string()};
            rec.target = h.target();
            // Expect: only 100-continue is defined; answer it ourselves once limits allow.
            // Every element of every Expect line must be 100-continue (a second line with
            // another expectation is still one we cannot meet); an Expect of nothing but empty
            // elements asks nothing.
            bool only_continue = true;
            bool asks = false;
            each_list_element(h, http::field::expect, [&](std::string_view element) {
                asks = true;
                only_continue = only_continue && iequals(element, "100-continue");
            });
            if (asks) {
                if (!only_continue) {
                    co_await reply({http::status::expectation_failed, "rejected", "bad_expect",
                                    "only Expect: 100-continue is supported"},
                                   false);
                    co_return after_request::close;
                }
                // RFC 9110 10.1.1: a 100-continue expectation in an HTTP/1.0 request is
                // ignored (such a client cannot read an interim response); it sends its body.
                if (!parser.is_done() && h.version() >= 11) {
                    static constexpr std::string_view cont = "HTTP/1.1 100 Continue\r\n\r\n";
                    dl.arm(lim.write_timeout);
                    auto [ec, n] = co_await asio::async_write(sock, asio::buffer(cont), use_tuple);
                    if (ec) {
                        log_client_left();
                        co_return after_request::end;
                    }
                }
            }
        }

        // 3. The body: bounded in bytes and time. A chunked body may end in trailer fields,
        //    which Beast appends to the head's; they are dropped below (never forwarded as
        //    headers the rules and scopes did not see in the head).
        //    (Beast may insert a trailer next to a head field of the same name, so the head is
        //    restored from a copy rather than trimmed by position.)
        std::optional<http::request_header<fields>> head_copy;
        if (parser.chunked()) {
            head_copy.emplace(parser.get().base());
        }
        if (!parser.is_done()) {
            dl.arm(lim.body_timeout);
            // Chunk extensions and trailer fields wait in `buf` until their line (section)
            // ends, and Beast bounds neither: without a cap here one unterminated chunk line
            // grows the buffer by whatever the client sends until the body timeout.
            // Under 64 KiB as well (core/read_limits.hpp): here a longer line is refused, 431.
            const std::size_t buf_cap = std::max(buf.size(), max_buffered_line);
            buf.max_size(buf_cap);
            auto [ec, n] = co_await http::async_read(sock, buf, parser, use_tuple);
            buf.max_size(std::numeric_limits<std::size_t>::max());
            // The trailers are what the head gained during the body read.
            auto size_of = [](const auto& fs) {
                std::pair<std::size_t, std::size_t> bytes_count{0, 0};
                for (const auto& f : fs) {
                    bytes_count.first += f.name_string().size() + f.value().size() + 4;
                    ++bytes_count.second;
                }
                return bytes_count;
            };
            std::size_t trailer_bytes = 0;
            std::size_t trailer_count = 0;
            if (!ec && head_copy) {
                const auto [all_bytes, all_count] = size_of(parser.get().base());
                const auto [head_bytes, head_count] = size_of(*head_copy);
                trailer_bytes = all_bytes > head_bytes ? all_bytes - head_bytes : 0;
                trailer_count = all_count > head_count ? all_count - head_count : 0;
            }
            if (ec == http::error::buffer_overflow || trailer_bytes > lim.header_bytes ||
                trailer_count > lim.header_count) {
                co_await reply({http::status::request_header_fields_too_large, "rejected", "chunk_metadata_too_large",
                                "a chunk extension or the trailer section of the body is larger than the header limits (" +
                                    std::to_string(lim.header_bytes) + " bytes, " + std::to_string(lim.header_count) +
                                    " fields)"},
                               false);
                co_return after_request::close;
            }
            if (ec == http::error::body_limit) {
                co_await reply({http::status::payload_too_large, "rejected", "body_too_large",
                                "the request body is larger than " + std::to_string(lim.body_bytes) + " bytes"},
                               false);
                co_return after_request::close;
            }
            if (ec && dl.fired()) {
                co_await reply({http::status::request_timeout, "rejected", "body_timeout",
                                "the request body did not arrive within " + cfg::format_duration(lim.body_timeout)},
                               false);
                co_return after_request::close;
            }
            if (ec == http::error::end_of_stream || ec == http::error::partial_message || ec == asio::error::eof ||
                ec == asio::error::connection_reset || ec == asio::error::operation_aborted) {
                log_client_left();
                co_return after_request::end;  // the client left mid-body: nothing to answer, nothing forwarded
            }
            if (ec) {
                co_await reply({http::status::bad_request, "rejected", "bad_body",
                                "the request body is malformed: " + ec.message()},
                               false);
                co_return after_request::close;
            }
        }
        dl.disarm();  // nothing may cancel the client socket while the upstream works
        request req = parser.release();
        if (head_copy) {
            req.base() = std::move(*head_copy);
        }
        // Fields an upstream takes as its proxy's word that breakerbox does not write, and
        // underscore spellings of those it does (claims_to_be_forwarding): dropped before
        // anything reads the request, so rules, holds and releases see what is forwarded.
        for (auto it = req.begin(); it != req.end();) {
            it = claims_to_be_forwarding(it->name_string()) ? req.erase(it) : std::next(it);
        }
        ++served;
        bool keep_alive = req.keep_alive() && !w.draining() &&
                          (lim.max_requests_per_connection == 0 || served < lim.max_requests_per_connection);
        const unsigned client_version = req.version();
        rec.target = req.target();
        rec.bytes_in = head_len + req.body().size();

        // CONNECT: a forward proxy's agent opens a tunnel. Configured destinations are
        // intercepted (TLS terminated with a certificate minted for the host, then every
        // request inspected and metered like any other); passthrough ones are blind tunnels;
        // anything else is refused.
        const forward_proxy_config* fp = lc != nullptr && lc->forward_proxy ? &*lc->forward_proxy : nullptr;
        if (req.method() == http::verb::connect) {
            if constexpr (is_tls<Stream>) {
                co_await reply({http::status::method_not_allowed, "rejected", "connect_not_allowed",
                                "CONNECT inside a TLS connection is not supported"},
                               false);
                co_return after_request::close;
            } else {
                if (fp == nullptr) {
                    co_await reply({http::status::method_not_allowed, "rejected", "connect_not_allowed",
                                    "this listener is not a forward proxy (listeners[].forward_proxy)"},
                                   false);
                    co_return after_request::close;
                }
                if (!ci.tunnel_host.empty()) {
                    co_await reply({http::status::method_not_allowed, "rejected", "connect_not_allowed",
                                    "CONNECT inside a tunnel is not supported"},
                                   false);
                    co_return after_request::close;
                }
                if (w.draining()) {
                    // A tunnel opened now would be cut at the end of the drain, its first
                    // request unanswered: the client opens it again elsewhere.
                    co_await reply({http::status::service_unavailable, "unavailable", "draining",
                                    "breakerbox is shutting down: open the tunnel again"},
                                   false);
                    co_return after_request::close;
                }
                const auto dest = parse_authority(req.target());
                if (!dest) {
                    co_await reply({http::status::bad_request, "rejected", "bad_target", "CONNECT needs host:port"}, false);
                    co_return after_request::close;
                }
                const agent_config* tunnel_agent = agent;  // named by the CONNECT's credentials (2b)
                if (ci.tunnel_host.empty() && known_destination(*cfg, dest->first, dest->second, 443)) {
                    const auto sec = w.owner().security(listener);
                    cert_minter::leaf leaf;
                    std::optional<error_info> failed;
                    try {
                        leaf = sec->minter->get(dest->first);
                    } catch (const std::invalid_argument& e) {
                        failed = error_info{http::status::bad_request, "rejected", "bad_target",
                                            "cannot intercept " + dest->first + ": " + e.what()};
                    } catch (const std::exception& e) {
                        // Our own fault (the CA expired while running, OpenSSL): closed, and
                        // the detail goes to the log, not to the client.
                        spdlog::error("minting a certificate for {}: {}", dest->first, e.what());
                        failed = error_info{http::status::service_unavailable, "unavailable", "interception_failed",
                                            "cannot intercept " + dest->first +
                                                ": breakerbox could not make its certificate (see its log)"};
                    }
                    if (failed) {
                        co_await reply(*failed, false);
                        co_return after_request::close;
                    }
                    const std::string established = connect_established(request_id);
                    dl.arm(lim.write_timeout);
                    auto [cec, cn] = co_await asio::async_write(raw, asio::buffer(established), use_tuple);
                    dl.disarm();
                    // The CONNECT itself in the access log and the decision counters (each
                    // request inside the tunnel gets its own line).
                    rec.agent = tunnel_agent != nullptr ? std::string_view{tunnel_agent->id} : std::string_view{};
                    if (cec) {
                        log_client_left();
                        co_return after_request::end;
                    }
                    rec.status = 200;
                    rec.decision = "allowed";
                    rec.code = "tunnel_intercepted";
                    rec.bytes_out = cn;
                    rec.request_id = request_id;
                    write_access_log(w, rec);
                    // The tunnel runs after this loop, once this request's runtime lease is
                    // released: a long-lived tunnel must not pin an old config.
                    tunnel.kind = tunnel_plan::intercept;
                    tunnel.inner = ci;
                    tunnel.inner.tunnel_host = dest->first;
                    tunnel.inner.tunnel_port = dest->second;
                    tunnel.inner.tunnel_agent = tunnel_agent != nullptr ? tunnel_agent->id : std::string{};
                    tunnel.inner.tunnel_key_digest = tunnel_agent != nullptr ? key_digest(req) : std::string{};
                    tunnel.sec = sec;
                    tunnel.leaf = std::move(leaf);
                    co_return after_request::close;
                }
                // A configured destination spelled another way (`api.sendgrid.com.`, the root's
                // trailing dot) is that destination to DNS and to the API: never a blind tunnel
                // around its routes, whatever the passthrough list says. Refused: a certificate
                // minted for the dotted name is one no client checks against the plain one.
                if (const std::string_view plain = host_name(dest->first);
                    plain.size() != dest->first.size() && known_destination(*cfg, plain, dest->second, 443)) {
                    co_await reply({http::status::forbidden, "denied", "unknown_destination",
                                    dest->first + ":" + std::to_string(dest->second) + " is " + std::string{plain} +
                                        ", a configured destination, spelled with the root's trailing dot: open "
                                        "the tunnel to " + std::string{plain} + " to be inspected"},
                                   false);
                    co_return after_request::close;
                }
                if (passthrough_allowed(*fp, dest->first, dest->second)) {
                    // Nothing inside a blind tunnel can be judged: an agent held to an allow
                    // list, body constraints or the sandbox would be free of them there.
                    if (tunnel_agent != nullptr &&
                        (tunnel_agent->sandbox || !tunnel_agent->constraints.empty() ||
                         !tunnel_agent->allow.routes.empty() || !tunnel_agent->allow.methods.empty() ||
                         !tunnel_agent->allow.paths.empty())) {
                        error_info e{http::status::forbidden, "denied", "out_of_scope",
                                     "agent " + tunnel_agent->id + " may not open a blind tunnel to " + dest->first +
                                         ": its " +
                                         (tunnel_agent->sandbox ? std::string{"sandbox"}
                                          : !tunnel_agent->constraints.empty() ? std::string{"body constraints"}
                                                                               : std::string{"allow list"}) +
                                         " cannot be applied inside one (forward_proxy.passthrough)"};
                        e.rule = "scope";
                        co_await reply(e, false);
                        co_return after_request::close;
                    }
                    // Not metered, but an agent an operator switched off opens nothing (and
                    // its open tunnels close: see tunnel_watchdog).
                    if (tunnel_agent != nullptr && rt.breakers->any_active()) {
                        const std::string kill_switch = "agent/" + tunnel_agent->id;
                        const auto adm = rt.breakers->admit(kill_switch, w.owner().now());
                        if (adm.v == breakers::admission::verdict::contain) {
                            error_info e{http::status::service_unavailable, "paused", "agent_disabled",
                                         "agent " + tunnel_agent->id + " is switched off by an operator (breaker agent/" +
                                             tunnel_agent->id + ")"};
                            e.retry_after_s = std::max(1u, static_cast<unsigned>((adm.retry_after.count() + 999) / 1000));
                            e.breaker = kill_switch;
                            // As any containment: told only once the saved state holds the
                            // operator's switch-off (a crash then finds it so).
                            if (must_settle(w.owner(), adm.change)) {
                                co_await persist_or_log(w.owner(), kill_switch);
                            }
                            co_await reply(e, false);
                            co_return after_request::close;
                        }
                    }
                    tunnel.agent = tunnel_agent != nullptr ? tunnel_agent->id : std::string{};
                    tunnel.key_digest = tunnel_agent != nullptr ? key_digest(req) : std::string{};
                    tunnel.kind = tunnel_plan::blind;
                    tunnel.host = dest->first;
                    tunnel.port = dest->second;
                    tunnel.request_id = request_id;
                    co_return after_request::close;
                }
                co_await reply({http::status::forbidden, "denied", "unknown_destination",
                                dest->first + ":" + std::to_string(dest->second) +
                                    " is neither a configured destination (a route's match.host, at port 443 or its "
                                    "upstream's port) nor in forward_proxy.passthrough"},
                               false);
                co_return after_request::close;
            }
        }

        // Hop-by-hop fields go before anything judges the request: a field the client names
        // in Connection (`Connection: content-type`) never reaches the upstream, so the
        // scope, the guards and the rules must not read it either.
        strip_hop_by_hop(req);

        // An Idempotency-Key given twice with different values reads two ways: which one the
        // upstream goes by cannot be told, and a retry with the lines the other way round
        // would be another request to the holds and the keys sent live (a second send).
        {
            std::optional<std::string_view> first_key;
            bool ambiguous_key = false;
            for (const auto& f : req) {
                if (iequals(f.name_string(), cfg->store.idempotency_header)) {
                    ambiguous_key = ambiguous_key || (first_key && *first_key != f.value());
                    first_key = first_key.value_or(f.value());
                }
            }
            if (ambiguous_key) {
                if (!co_await reply({http::status::bad_request, "rejected", "ambiguous_idempotency_key",
                                     cfg->store.idempotency_header +
                                         " is given twice with different values: send one key a request"},
                                    keep_alive) ||
                    !keep_alive) {
                    co_return after_request::close;
                }
                co_return after_request::next;
            }
        }

        // A form field asking the upstream for another method (`_method=DELETE`): the route,
        // the agent's scope and the rules would judge a POST that acts as a DELETE. The query
        // and the headers were refused in 2.
        if (const auto field = rules::method_override_field(req.method_string(), req[http::field::content_type], req.body());
            !field.empty()) {
            if (!co_await reply({http::status::bad_request, "rejected", "method_override",
                                 "the form field " + field +
                                     " is not accepted: routes, agent scopes and rules judge the request by its "
                                     "method, so send the method itself"},
                                keep_alive) ||
                !keep_alive) {
                co_return after_request::close;
            }
            co_return after_request::next;
        }

        // A compressed form hides its fields from that check (an upstream that inflates
        // request bodies would read `_method` in it): a form is accepted uncompressed only.
        if (const auto enc = req[http::field::content_encoding];
            !enc.empty() && !iequals(enc, "identity") && !req.body().empty() &&
            rules::form_type_somewhere(req[http::field::content_type])) {
            if (!co_await reply({http::status::unsupported_media_type, "rejected", "unsupported_content_encoding",
                                 "Content-Encoding " + std::string{enc.substr(0, 32)} +
                                     " is not accepted on a form body: its fields (a method override among them) "
                                     "cannot be read, so send it uncompressed"},
                                keep_alive) ||
                !keep_alive) {
                co_return after_request::close;
            }
            co_return after_request::next;
        }

        // 4. Route.
        target_parts tp;
        if (!split_target(req.target(), tp)) {
            co_await reply({http::status::bad_request, "rejected", "bad_target",
                            "the request target must be an absolute path or an absolute URL (with a host, without "
                            "user information)"},
                           false);
            co_return after_request::close;
        }
        if (const auto why = ambiguous_path(tp.path); !why.empty()) {
            co_await reply({http::status::bad_request, "rejected", "ambiguous_path",
                            "the request path contains " + std::string{why} +
                                ", which the upstream may resolve differently from breakerbox's routes"},
                           false);
            co_return after_request::close;
        }
        // Inside an intercepted tunnel the destination is the CONNECT host, whatever Host says.
        // (An IPv6 tunnel host is kept without brackets; as a Host it has them.)
        const std::string original_host = !ci.tunnel_host.empty()
                                              ? (ci.tunnel_host.find(':') != std::string::npos ? "[" + ci.tunnel_host + "]"
                                                                                               : ci.tunnel_host)
                                              : std::string{tp.host.empty() ? std::string_view{req[http::field::host]}
                                                                            : tp.host};
        const bool forwarded = fp != nullptr && (!ci.tunnel_host.empty() || !tp.host.empty());
        const std::string request_host = canonical_host(original_host);
        const std::uint16_t url_default_port = istarts_with(req.target(), "https://") ? 443 : 80;
        // The destination's port, and the default port of how it was addressed.
        const std::uint16_t dest_default_port = !ci.tunnel_host.empty() ? 443 : url_default_port;
        const std::uint16_t dest_port =
            !ci.tunnel_host.empty() ? ci.tunnel_port : authority_port(tp.host, url_default_port);
        if (fp != nullptr && ci.tunnel_host.empty() && !tp.host.empty() &&
            !known_destination(*cfg, host_without_port(original_host), dest_port, dest_default_port)) {
            if (!co_await reply({http::status::forbidden, "denied", "unknown_destination",
                                 std::string{tp.host} +
                                     " is not a configured destination (a route's match.host, at the URL's default "
                                     "port or its upstream's)"},
                                keep_alive) ||
                !keep_alive) {
                co_return after_request::close;
            }
            co_return after_request::next;
        }
        const route_config* route =
            match_route(*cfg, req.method_string(), original_host, tp.path, forwarded, dest_port, dest_default_port);
        if (route == nullptr) {
            // (Built outside the co_await: GCC 12 frees a conditional's temporaries inside
            // one wrongly.)
            std::string why = "no route matches " + std::string{req.method_string()} + " " + std::string{tp.path};
            if (forwarded) {
                why += " on " + request_host + " (a forward proxy's request takes only routes whose match.host names its host)";
            }
            if (!co_await reply({http::status::not_found, "rejected", "no_route", std::move(why)}, keep_alive) ||
                !keep_alive) {
                co_return after_request::close;
            }
            co_return after_request::next;
        }
        rec.route = route->name;
        const std::size_t route_index = static_cast<std::size_t>(route - cfg->routes.data());
        rec.route_index = route_index;
        std::size_t upstream_index = route->upstream_index;
        // Copies: the rewrite below replaces the target these views point into.
        const std::string original_target{req.target()};
        const std::string origin_form{tp.origin_form};
        const std::string req_path{tp.path};
        // The path the upstream is sent (its base path first): what tells a Salesforce
        // composite request, whatever path the client used for it.
        const std::string upstream_path = cfg->upstreams[upstream_index].base_path + req_path;
        const std::string_view agent_id = agent != nullptr ? std::string_view{agent->id} : std::string_view{};
        rec.target = original_target;

        // A compressed body would reach the guards, the rules and the agent's body
        // constraints as opaque bytes (a card number inside gzip is not a card number to
        // them) and be let through. Where anything reads bodies, only identity is accepted.
        if (const auto enc = req[http::field::content_encoding]; !enc.empty() && !iequals(enc, "identity") &&
            !req.body().empty() &&
            ((rt.engine && rt.route_has_rules[route_index]) || (agent != nullptr && !agent->constraints.empty()))) {
            if (!co_await reply({http::status::unsupported_media_type, "rejected", "unsupported_content_encoding",
                                 "Content-Encoding " + std::string{enc.substr(0, 32)} +
                                     " is not accepted on route " + route->name +
                                     ": its rules read the body, so send it uncompressed"},
                                keep_alive) ||
                !keep_alive) {
                co_return after_request::close;
            }
            co_return after_request::next;
        }

        // 5. The caller (identified in 2b) is held to its scope; breakerbox's own key header
        //    never reaches an upstream.
        req.erase("x-breakerbox-key");
        bool subrequests_read = false;  // a scoped agent's composite POST, read whole in 5
        // What it read (when subrequests_read): thread-local, so used only before this
        // request's next co_await (the body constraints below take it, none between).
        thread_local std::vector<rules::subrequest> subs;
        if (agent != nullptr) {
            const auto& scope = agent->allow;
            std::string why = scope.refusal(route->name, req.method_string(), req_path);
            if (why.empty() && scope.any()) {
                // A Salesforce composite request carries requests of its own: each is held to
                // the same allow list (a POST allowed on /services/data/* must not DELETE), its
                // routes too: an agent allowed only the route for POST must not reach the
                // route for DELETE through one. A subrequest's URL is the upstream's path:
                // without the upstream's base path it is the path the agent would have sent.
                const std::string& base = cfg->upstreams[upstream_index].base_path;
                // (A Bulk API job names what it will do in its body: judged as that request.)
                subs.clear();
                subrequests_read = req.method() == http::verb::post;
                if (subrequests_read) {
                    why = rules::scoped_subrequests(upstream_path, req[http::field::content_type], req.body(), subs);
                }
                for (std::size_t i = 0; i < subs.size() && why.empty(); ++i) {
                    const auto& sub = subs[i];
                    why = subrequest_refusal(scope, i, sub.method, sub.path, base, cfg->upstreams[upstream_index].name,
                                             sub.what);
                    if (!why.empty() || scope.routes.empty()) {
                        continue;
                    }
                    // Its route, matched as if it were sent by itself (its path under the base).
                    const std::string_view own_path = *path_under_base(sub.path, base);
                    const route_config* sub_route = match_route(*cfg, sub.method, original_host, own_path, forwarded,
                                                                dest_port, dest_default_port);
                    if (sub_route == nullptr || sub_route->upstream_index != upstream_index ||
                        !scope.allows_route(sub_route->name)) {
                        why = (sub_route != nullptr && sub_route->upstream_index == upstream_index
                                   ? "route " + sub_route->name
                                   : "route (none of upstream " + cfg->upstreams[upstream_index].name + " takes " +
                                         sub.method.substr(0, 16) + " " + std::string{own_path.substr(0, 256)} + ")") +
                              subrequest_which(i, sub.what);
                    }
                }
            }
            if (!why.empty()) {
                error_info e{http::status::forbidden, "denied", "out_of_scope",
                             "agent " + agent->id + " may not use " + why + " (its allow list in the config)"};
                e.rule = "scope";
                if (!co_await reply(e, keep_alive) || !keep_alive) {
                    co_return after_request::close;
                }
                co_return after_request::next;
            }
            // What the body may say: recipients per request, from domains, templates.
            if (!agent->constraints.empty()) {
                auto broken = req.method() == http::verb::post
                                  ? rules::constrained_subrequests(upstream_path, req.body(), &ambiguous_path,
                                                                   subrequests_read ? &subs : nullptr)
                                  : std::string{};
                if (broken.empty()) {
                    broken = rules::check_body_constraints(agent->constraints, req[http::field::content_type],
                                                           req.body(), query_of(origin_form), upstream_path,
                                                           req.method_string());
                }
                if (!broken.empty()) {
                    // A body that cannot be read is a bad request; one that reads is refused.
                    const bool unreadable = rules::body_unreadable(broken);
                    error_info e{unreadable ? http::status::bad_request : http::status::forbidden,
                                 unreadable ? "rejected" : "denied", unreadable ? "bad_body" : "constraint_violated",
                                 "agent " + agent->id + ": " + broken + " (its constraints in the config)"};
                    e.rule = "constraints";
                    if (!co_await reply(e, keep_alive) || !keep_alive) {
                        co_return after_request::close;
                    }
                    co_return after_request::next;
                }
            }
        }

        // A method override inside a Salesforce composite request: a subrequest POST asking for
        // DELETE would pass every delete cap (they count DELETE subrequests), whoever sends it.
        // (A scoped agent's were read in 5: what is refused here was refused there, as out of
        // scope, so its body is not parsed again.)
        if (req.method() == http::verb::post && !subrequests_read) {
            if (auto refused = rules::salesforce_subrequest_refusal(upstream_path, req.body()); !refused.code.empty()) {
                if (!co_await reply({http::status::bad_request, "rejected", refused.code,
                                     std::move(refused.message)},
                                    keep_alive) ||
                    !keep_alive) {
                    co_return after_request::close;
                }
                co_return after_request::next;
            }
        }

        // 6. Guards. The common case (no rules on the route, no breaker active, upstream not
        //    paused) costs a few relaxed atomic loads and no lock.
        const auto now = w.owner().now();
        auto& registry = *rt.breakers;
        std::vector<probe_ticket> probes;  // half-open instances this request probes
        const char* forwarded_decision = "allowed";
        // Every sandbox breaker instance that applied (a hold names them all: a release
        // waits until none does).
        std::string sandbox_instances;
        // The breaker change a sandbox admission saw: its dry run's answer waits until it is
        // saved, as every containing answer does (a restart must not find the breaker closed
        // that this answer said was switched).
        std::uint64_t sandbox_change = 0;
        std::string contained_rule;
        std::string contained_breaker;
        std::optional<error_info> contained;
        std::string contained_code;       // storage for codes that do not outlive their source
        std::string quarantine_instance;  // set when a quarantine breaker holds this request
        std::string quarantine_rule;
        std::string quarantine_reason;
        // The last breaker change the containment reported reflects (must_settle).
        std::uint64_t contained_change = 0;
        std::uint64_t quarantine_change = 0;
        auto contain = [&](const breakers::admission& adm, std::string_view rule, std::string reason) {
            contained_rule = std::string{rule};
            contained_breaker = adm.instance;
            contained_change = std::max(contained_change, adm.change);
            if (reason.empty() && adm.last_trip) {
                reason = adm.last_trip->cause.reason;
            }
            // (At most a day: a long cooldown, backed off, must not wrap the header.)
            const auto secs = static_cast<unsigned>(
                std::min<std::int64_t>((adm.retry_after.count() + 999) / 1000, std::int64_t{86'400}));
            switch (adm.act) {
                case breakers::action::throttle:
                    contained = error_info{http::status::too_many_requests, "throttled", "throttled",
                                           "breaker " + adm.instance + " is throttling this traffic" +
                                               (reason.empty() ? "" : ": " + reason)};
                    contained->retry_after_s = std::max(1u, secs);
                    break;
                case breakers::action::deny:
                    contained = error_info{http::status::forbidden, "denied", "denied",
                                           "denied by breaker " + adm.instance + (reason.empty() ? "" : ": " + reason)};
                    break;
                case breakers::action::pause:
                case breakers::action::sandbox:
                case breakers::action::quarantine:
                    contained = error_info{http::status::service_unavailable, "paused", "breaker_open",
                                           "breaker " + adm.instance + " is open" + (reason.empty() ? "" : ": " + reason)};
                    contained->retry_after_s = std::max(1u, secs);
                    break;
            }
        };
        // Applies an admission: true when the request may go on (allowed, probe, sandboxed).
        auto admit = [&](const breakers::admission& adm, std::string_view rule) {
            if (adm.v == breakers::admission::verdict::probe) {
                probes.push_back({adm.instance, adm.probe_round});
                if (!adm.wide_probe.empty()) {
                    probes.push_back({adm.wide_probe, adm.wide_probe_round});
                }
                return true;
            }
            if (adm.v == breakers::admission::verdict::allow) {
                if (adm.would_contain) {
                    spdlog::info("breaker {} would have contained request {} (mode {})", adm.instance, request_id,
                                 "shadow");
                }
                return true;
            }
            if (adm.act == breakers::action::quarantine) {
                quarantine_change = std::max(quarantine_change, adm.change);
                if (quarantine_instance.empty()) {
                    quarantine_instance = adm.instance;
                    quarantine_rule = std::string{rule};
                    quarantine_reason = adm.last_trip ? adm.last_trip->cause.reason : std::string{};
                }
                // The breakers after it are still asked, so the outcome does not depend on the
                // rules' order: a pause or deny there wins (nothing is held), a sandbox there
                // is named on the hold (a release waits until it no longer applies), as when
                // the sandbox came first.
                return true;
            }
            if (adm.act == breakers::action::sandbox) {
                forwarded_decision = "sandboxed";
                sandbox_change = std::max(sandbox_change, adm.change);
                contained_breaker = adm.instance;
                // Instance names hold no control bytes (rules keys are %XX-escaped): a line
                // break separates them.
                sandbox_instances += (sandbox_instances.empty() ? "" : "\n") + adm.instance;
                contained_rule = std::string{rule};
                return true;
            }
            contain(adm, rule, {});
            return false;
        };

        // The per-agent kill switch and the per-agent sandbox come first.
        if (agent != nullptr && registry.any_active()) {
            auto adm = registry.admit("agent/" + agent->id, now);
            if (adm.v == breakers::admission::verdict::contain) {
                contain(adm, {}, "agent " + agent->id + " is switched off by an operator");
                contained->code = "agent_disabled";
            }
        }
        if (agent != nullptr && agent->sandbox && !contained) {
            forwarded_decision = "sandboxed";
            contained_breaker = "agent/" + agent->id;
        }
        const upstream_guard& ug = rt.upstreams[upstream_index];
        if (contained) {
            // Already decided.
        } else if (auto remaining = ug.quota->remaining(now)) {
            // The upstream told us its quota is spent: waiting is the only thing that helps,
            // for every agent sharing it.
            contained_breaker = "upstream/" + cfg->upstreams[upstream_index].name;
            contained = error_info{http::status::service_unavailable, "paused", "upstream_rate_limited",
                                   "upstream " + cfg->upstreams[upstream_index].name +
                                       " asked for a pause (429/503 with retry-after or quota exhausted)"};
            contained->retry_after_s = std::max(1u, static_cast<unsigned>((remaining->count() + 999) / 1000));
        } else if (!ug.breaker.empty() && registry.any_active()) {
            auto adm = registry.admit(ug.breaker, now);
            if (adm.v == breakers::admission::verdict::contain) {
                contain(adm, {}, {});
                contained->code = "upstream_unhealthy";
                contained->decision = "unavailable";
            } else if (adm.v == breakers::admission::verdict::probe) {
                probes.push_back({adm.instance, adm.probe_round});
            }
        }

        thread_local std::vector<rules::engine::rule_key> key_scratch;
        rules::request_view view;
        auto fill_view = [&] {
            header_scratch.clear();
            for (const auto& f : req) {
                header_scratch.push_back({f.name_string(), f.value()});
            }
            view.method = req.method_string();
            view.target = original_target;
            view.path = req_path;
            view.upstream_path = upstream_path.size() != req_path.size() ? std::string_view{upstream_path} : std::string_view{};
            view.query = query_of(origin_form);
            // The host rules see is where the request goes: a route for any host sends to its
            // own upstream whatever Host the client wrote, so a Host of the client's choosing
            // must not step past a rule's match.host or split a budget keyed by host.
            // The route's own upstream, not a sandbox it was switched to (built once per config).
            view.host = route->match.host.empty() ? std::string_view{rt.upstreams[route->upstream_index].rule_host}
                                                  : std::string_view{request_host};
            view.route = route->name;
            view.agent = agent_id;
            view.content_type = req[http::field::content_type];
            view.body = req.body();
            view.headers = header_scratch;
        };
        // Forwarding fields as the upstream sees them, for a request forwarded now or held
        // and replayed later (step 7 and the quarantine).
        auto add_forwarding_fields = [&] {
            req.erase("x-forwarded-host");  // the client's own never passes as ours (HTTP/1.0 without Host)
            if (!original_host.empty()) {
                req.set("x-forwarded-host", original_host);
            }
            append_list(req, "x-forwarded-for", client_ip);
            req.set("x-forwarded-proto", ci.tls ? "https" : "http");
            append_list(req, "via", client_version == 10 ? "1.0 breakerbox" : "1.1 breakerbox");
        };
        const bool has_rules = rt.engine && rt.route_has_rules[route_index];
        std::vector<std::string> throttle_slots;  // throttle instances this request took a slot of
        if (!contained && has_rules) {
            fill_view();
            if (registry.any_active()) {
                rt.engine->keys_for(view, key_scratch);
                // Each instance is asked once per request, however many rules trip it: a
                // second admit would take a second half-open probe (with one allowed, the
                // request is contained by its own probe, every time) or a second throttle slot.
                thread_local std::vector<std::string> asked;
                asked.clear();
                // Breakers whose breaker-wide instance this request has asked already (with two
                // keys of one breaker, the second must not take a second wide probe or slot).
                thread_local std::vector<std::string_view> asked_wide;
                asked_wide.clear();
                for (const auto& k : key_scratch) {
                    const auto& r = rt.engine->rules().rules[k.rule];
                    const auto* b = cfg->find_breaker(r.trips);
                    if (b == nullptr) {
                        continue;
                    }
                    std::string instance = registry.instance_name(*b, k.key);
                    if (std::find(asked.begin(), asked.end(), instance) != asked.end()) {
                        continue;
                    }
                    asked.push_back(std::move(instance));
                    // A deny breaker is never tripped by its rule (the rule refuses the one
                    // request), but an operator's trip or forced_open refuses everything it
                    // covers: admit() says so like for any other breaker.
                    const bool wide_asked = std::find(asked_wide.begin(), asked_wide.end(), b->id) != asked_wide.end();
                    if (!wide_asked) {
                        asked_wide.push_back(b->id);
                    }
                    auto adm = registry.admit(asked.back(), now, !wide_asked);
                    if (adm.throttled || adm.slot_taken) {
                        throttle_slots.push_back(adm.instance);
                    }
                    if (!admit(adm, r.id)) {
                        break;
                    }
                }
            }
            if (!contained) {
                // Rules whose breaker an operator suspended (forced_closed, metrics_only) are
                // checked, not enforced, and do not hide the request from the other rules.
                // So are those whose breaker let this request through over its own violation
                // (a throttle slot, a quarantine hold, a sandbox): evaluate() stops at the
                // first violation and books nothing, so the request is evaluated again with
                // that breaker passed, and the other rules check it and book what it sends.
                std::vector<std::string> let_through;
                struct suspension {
                    const config* cfg;
                    breakers::breaker_registry* registry;
                    decltype(now) at;
                    const std::vector<std::string>* let_through;
                } const sus{cfg, &registry, now, &let_through};
                // One pointer captured: std::function keeps it inline, no allocation.
                const std::function<bool(const rules::decision&)> suspended = [p = &sus](const rules::decision& v) {
                    const auto* b = p->cfg->find_breaker(v.trips);
                    if (b == nullptr) {
                        return false;
                    }
                    const auto instance = p->registry->instance_name(*b, v.key);
                    return std::find(p->let_through->begin(), p->let_through->end(), instance) != p->let_through->end() ||
                           p->registry->enforcement_suspended(instance, p->at);
                };
                // Bounded: each pass lets one more breaker through. Shadow trips are counted
                // once per request, whatever the passes.
                std::vector<std::string> shadow_reported;
                bool settled = false;
                for (std::size_t pass = 0; pass < 64 && !contained; ++pass) {
                    rules::decision shadowed;
                    const auto d = rt.engine->evaluate(view, now,
                                                       registry.any_active() || !let_through.empty() ? &suspended : nullptr,
                                                       &shadowed, &booked);
                    if (shadowed.outcome == rules::verdict::violated) {
                        const auto* b = cfg->find_breaker(shadowed.trips);
                        const auto instance = b != nullptr ? registry.instance_name(*b, shadowed.key) : shadowed.trips;
                        if (std::find(let_through.begin(), let_through.end(), instance) == let_through.end() &&
                            std::find(shadow_reported.begin(), shadow_reported.end(), instance) ==
                                shadow_reported.end()) {
                            shadow_reported.push_back(instance);
                            if (b != nullptr && b->act != breakers::action::deny) {
                                registry.trip(shadowed.trips, shadowed.key, rule_cause(shadowed, request_id),
                                              now);  // counted as a shadow trip
                            }
                            spdlog::info("rule {} would have {} request {} ({} in shadow mode): {}", shadowed.rule,
                                         b != nullptr && b->act == breakers::action::deny ? "denied" : "contained",
                                         request_id, instance, shadowed.reason);
                        }
                    }
                    if (d.outcome == rules::verdict::rejected) {
                        contained_rule = d.rule;
                        contained = error_info{http::status::bad_request, "rejected", "invalid_body", d.reason};
                    } else if (d.outcome == rules::verdict::violated) {
                        const auto* b = cfg->find_breaker(d.trips);
                        if (b != nullptr && b->act == breakers::action::deny) {
                            // Guardrail-style: refuse this request, trip nothing.
                            contained_rule = d.rule;
                            contained_breaker = b->id;
                            contained = error_info{http::status::forbidden, "denied", "rule_violated", d.reason};
                            w.owner().report_denial(d.rule, b->id, d.key, request_id, d.reason);
                        } else if (b != nullptr) {
                            const auto instance = registry.instance_name(*b, d.key);
                            auto tr = registry.trip(d.trips, d.key, rule_cause(d, request_id), now,
                                                    std::find(throttle_slots.begin(), throttle_slots.end(), instance) !=
                                                        throttle_slots.end());
                            if (tr.shadow) {
                                spdlog::info("rule {} would have tripped {} on request {} (shadow mode): {}", d.rule,
                                             tr.adm.instance, request_id, d.reason);
                                // An operator's metrics_only or forced_closed came between the
                                // check and the trip: evaluate() undid every booking when it
                                // returned the violation, so the request is judged again with
                                // this breaker passed, and the rules book what it sends.
                                if (std::find(let_through.begin(), let_through.end(), instance) == let_through.end()) {
                                    let_through.push_back(instance);
                                    continue;
                                }
                            } else {
                                if (tr.opened) {
                                    // The response that reports a trip goes out only once the trip
                                    // is durable: a restart right after it still finds it tripped.
                                    co_await persist_or_log(w.owner(), tr.adm.instance);
                                }
                                if (!quarantine_instance.empty() && quarantine_reason.empty()) {
                                    quarantine_reason = d.reason;
                                }
                                if (!admit(tr.adm, d.rule)) {
                                    if (contained) {
                                        contained->message = d.reason.empty()
                                                                 ? contained->message
                                                                 : "breaker " + tr.adm.instance + " tripped: " + d.reason;
                                    }
                                } else if (std::find(let_through.begin(), let_through.end(), instance) == let_through.end()) {
                                    let_through.push_back(instance);
                                    continue;  // let through over this rule: the others judge it too
                                }
                            }
                        }
                    }
                    settled = true;
                    break;
                }
                if (!settled && !contained) {
                    // 64 breakers let it through one after another and the rules were not done
                    // with it: it is not sent unjudged (and uncounted).
                    contained = error_info{http::status::service_unavailable, "unavailable", "rules_unsettled",
                                           "the rules could not finish judging this request"};
                }
            }
        }

        // Sandbox: the API's own dry-run switch, or an alternate upstream. Not for a request
        // a quarantine holds: it is held as sent, with the sandbox named (a release waits
        // until that sandbox no longer applies). Holding the dry run would let a release
        // after the incident "deliver" a dry run: the mail lost, the record saying released.
        std::string sandboxed_by;
        bool to_sandbox_upstream = false;  // to the breaker's alternate upstream, not the route's
        if (!contained && std::string_view{forwarded_decision} == "sandboxed" && must_settle(w.owner(), sandbox_change)) {
            // Before the dry run goes (its answer tells the client the traffic is switched).
            co_await persist_or_log(w.owner(), contained_breaker);
        }
        if (!contained && std::string_view{forwarded_decision} == "sandboxed" && !quarantine_instance.empty()) {
            sandboxed_by = sandbox_instances.empty() ? contained_breaker : sandbox_instances;
        } else if (!contained && std::string_view{forwarded_decision} == "sandboxed") {
            const auto name = contained_breaker.substr(0, contained_breaker.find('/'));
            const auto* b = cfg->find_breaker(name);
            if (b != nullptr && !b->sandbox_upstream.empty()) {
                // A sandbox upstream is sent none of the client's credentials (see the send):
                // its headers and query parameters named like one stay behind, and a body that
                // carries one (a token endpoint's client_secret) is not sent there at all.
                const auto enc = req[http::field::content_encoding];
                const std::string kept_back = !enc.empty() && !iequals(enc, "identity") && !req.body().empty()
                                                  ? "its body is Content-Encoding " + std::string{enc.substr(0, 32)} +
                                                        ", which cannot be checked for credentials"
                                                  : credential_in_body(req.body(), req[http::field::content_type]);
                if (!kept_back.empty()) {
                    contained = error_info{http::status::service_unavailable, "unavailable", "sandbox_failed",
                                           "breaker " + contained_breaker + " sends this traffic to upstream " +
                                               b->sandbox_upstream + ", but not this request: " + kept_back +
                                               " (a sandbox upstream is sent none of the client's credentials)"};
                } else {
                    // The real upstream's health probe, if this request carried it, is given
                    // back: the sandbox's answer says nothing of the real upstream's health.
                    const std::string& real_breaker = rt.upstreams[upstream_index].breaker;
                    std::erase_if(probes, [&](const probe_ticket& p) {
                        if (real_breaker.empty() || p.instance != real_breaker) {
                            return false;
                        }
                        registry.cancel_probe(p.instance, p.round);
                        return true;
                    });
                    for (std::size_t i = 0; i < cfg->upstreams.size(); ++i) {
                        if (cfg->upstreams[i].name == b->sandbox_upstream) {
                            upstream_index = i;
                        }
                    }
                    to_sandbox_upstream = true;
                }
            } else {
                std::string why;
                std::optional<std::string> body;
                const auto& real = cfg->upstreams[upstream_index];
                const auto api = sandbox_api_for(req.method_string(), req_path, req[http::field::content_type],
                                                 upstream_sandbox_of(real.sandbox_api, real.host));
                const auto enc = req[http::field::content_encoding];
                if (!enc.empty() && !iequals(enc, "identity")) {
                    // The rewrite reads the body as written: switching a compressed one would
                    // append the switch to gzip bytes (a form "decodes" whatever it is), and an
                    // API that inflates the body would never see it.
                    why = "its body is Content-Encoding " + std::string{enc.substr(0, 32)} +
                          ", which the dry-run rewrite cannot read";
                } else if (api == sandbox_api::sendgrid) {
                    body = sendgrid_sandbox(req.body(), &why);
                } else if (api == sandbox_api::mailgun) {
                    body = mailgun_testmode(req.body(), req[http::field::content_type], &why, query_of(origin_form));
                } else {
                    why = "no dry-run switch is known for " + std::string{req.method_string()} + " " + req_path +
                          " with content type \"" + std::string{req[http::field::content_type].substr(0, 64)} +
                          "\" on upstream " + real.name +
                          " (only a SendGrid mail send or a Mailgun message can be sandboxed, on an upstream whose "
                          "sandbox_api allows it)";
                }
                if (body) {
                    req.body() = std::move(*body);
                } else {
                    // Fail closed: a request meant for the sandbox never reaches the real API.
                    contained = error_info{http::status::service_unavailable, "unavailable", "sandbox_failed",
                                           "breaker " + contained_breaker + " sandboxes this traffic, but the request " +
                                               "cannot be switched to dry-run: " + why};
                }
            }
        }

        // 202 + ticket for a request held (now or before): false when the write failed.
        auto reply_quarantined = [&](std::string_view ticket, std::string_view breaker,
                                     std::string_view reason) -> asio::awaitable<bool> {
            auto res = make_quarantined(ticket, breaker, reason, request_id, client_version, keep_alive);
            if (head_request) {
                res.body().clear();  // a HEAD answer is the head alone; its length stays
            }
            dl.arm(lim.write_timeout);
            auto [qec, qn] = co_await write_message(sock, res, scratch);
            ++w.stats().generated;
            ++w.stats().responses_by_class[2];
            rec.status = 202;
            rec.decision = "quarantined";
            rec.code = {};
            rec.bytes_out = qn;
            rec.request_id = request_id;
            write_access_log(w, rec);
            co_return !qec;
        };

        // A retry of a request sent live (its Idempotency-Key and agent, whichever route) is not held:
        // the first may have been delivered (the client gave up waiting, the upstream did
        // not), and releasing the retry would send it a second time. Refused, nothing held.
        // Asked here for an early answer, and again as the hold is queued (below).
        const auto already_forwarded = [&](std::int64_t now_ms, std::int64_t sent_ms) {
            contained = error_info{http::status::conflict, "rejected", "already_forwarded",
                                   "a request with this " + cfg->store.idempotency_header + " was sent to the upstream " +
                                       std::to_string(std::max<std::int64_t>((now_ms - sent_ms) / 1000, 0)) +
                                       " s ago; this one, its retry or another request under the same key, is not "
                                       "quarantined (a release of a retry would send it a second time): if it did "
                                       "not arrive, send it again with a new key once " +
                                       quarantine_instance + " closes"};
            contained_breaker = quarantine_instance;
            contained_rule = quarantine_rule;
            contained_change = std::max(contained_change, quarantine_change);  // named: saved first
        };
        // (A GET, HEAD or OPTIONS is held whatever its key: held twice and released twice,
        // it is no second send; its key is not one of the agent's operations.)
        const std::string hold_key = idempotent(req.method()) ? std::string{} : std::string{req[cfg->store.idempotency_header]};
        if (!contained && !quarantine_instance.empty()) {
            const std::string_view key = hold_key;
            const auto now_ms =
                std::chrono::duration_cast<std::chrono::milliseconds>(w.owner().now().time_since_epoch()).count();
            if (const auto sent = key.empty() ? std::nullopt : w.owner().forwarded().sent_at(key, agent_id, now_ms)) {
                already_forwarded(now_ms, *sent);
            }
        }

        // Quarantine: hold the request durably; 202 + ticket only once it is committed.
        if (!contained && !quarantine_instance.empty()) {
            store::database* db = w.owner().db();
            if (db == nullptr) {
                contained = error_info{http::status::service_unavailable, "unavailable", "store_unavailable",
                                       "breaker " + quarantine_instance + " quarantines this traffic but no store is open"};
            } else {
                strip_hop_by_hop(req);
                req.erase("x-breakerbox-key");
                // Held as the live path would have sent it: a release replays these fields,
                // so the client's own X-Forwarded-* never pass as ours there either.
                add_forwarding_fields();
                store::held_request held;
                held.method = std::string{req.method_string()};
                held.target = original_target;
                for (const auto& f : req) {
                    held.headers.emplace_back(std::string{f.name_string()}, std::string{f.value()});
                }
                held.body = req.body();
                held.route = route->name;
                held.agent = agent != nullptr ? agent->id : std::string{};
                held.upstream = cfg->upstreams[upstream_index].name;
                held.rule = quarantine_rule;
                held.breaker_instance = quarantine_instance;
                if (rt.engine != nullptr) {
                    if (const auto* r = rt.engine->rules().find_rule(quarantine_rule)) {
                        held.failure_mode = r->failure_mode;
                    }
                }
                held.request_id = request_id;
                held.idempotency_key = hold_key;
                held.sandboxed_by = sandboxed_by;
                held.received_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                       w.owner().time().wall_now().time_since_epoch())
                                       .count();
                const auto hold_started = std::chrono::steady_clock::now();
                // Queued in one step with the question whether the key was sent live, under
                // the lock a live send takes to note its key and then ask whether a hold may
                // exist (pending_send): whichever comes second sees the first, so a hold and
                // a live send of one key never both go ahead. The costly part (the body's
                // fingerprint) is done before, outside that lock.
                const std::string& key = hold_key;
                const auto queued_ms =
                    std::chrono::duration_cast<std::chrono::milliseconds>(w.owner().now().time_since_epoch()).count();
                std::optional<std::int64_t> sent_meanwhile;
                auto prepared = db->prepare_hold(std::move(held));
                const auto stored = co_await await_store([&](store::done_fn done) {
                    if (key.empty()) {
                        db->queue_hold(std::move(prepared), std::move(done));
                        return;
                    }
                    sent_meanwhile = w.owner().forwarded().sent_at_then(key, agent_id, queued_ms, [&] {
                        db->queue_hold(std::move(prepared), std::move(done));
                    });
                    if (sent_meanwhile) {
                        done(store::result::failure("already_forwarded", "sent live meanwhile"));
                    }
                });
                w.stats().hold_latency.observe(
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - hold_started).count());
                for (const auto& p : probes) {
                    registry.cancel_probe(p.instance, p.round);  // held: it never reached the upstream
                }
                probes.clear();  // given back once (a failed hold is contained below)
                if (stored.ok) {
                    w.owner().store_writes_again(server::store_part::holds);
                    if (stored.duplicate) {
                        spdlog::info("request {}: {}", request_id, stored.message);
                        // A retry of the held request, not a second one: its amount is in the
                        // windows once already, booked with the first hold.
                        if (!booked.empty()) {
                            rt.engine->release(booked);
                        }
                    }
                    if (must_settle(w.owner(), quarantine_change)) {
                        co_await persist_or_log(w.owner(), quarantine_instance);
                    }
                    // A retry names the breaker its first hold is under (another route's, say).
                    const std::string_view held_by =
                        stored.duplicate && !stored.breaker.empty() ? std::string_view{stored.breaker}
                                                                    : std::string_view{quarantine_instance};
                    const std::string_view why = held_by == quarantine_instance ? std::string_view{quarantine_reason}
                                                                                : std::string_view{stored.message};
                    if (!co_await reply_quarantined(stored.ticket, held_by, why) || !keep_alive) {
                        co_return after_request::close;
                    }
                    co_return after_request::next;
                }
                if (sent_meanwhile) {
                    already_forwarded(queued_ms, *sent_meanwhile);  // nothing was queued
                } else {
                    // Never 202 without a durable record, never forward: fail closed.
                    contained_code = stored.code.empty() ? std::string{"store_unavailable"} : stored.code;
                    if (contained_code == "store_unavailable" || contained_code == "store_busy") {
                        w.owner().report_store_trouble(server::store_part::holds, stored.message +
                                                       "; quarantined requests are refused with 503 until it recovers");
                    }
                    contained = contained_code == "idempotency_key_reused" || contained_code == "discarded"
                                    ? error_info{http::status::conflict, "rejected", contained_code,
                                                 "the request was not quarantined: " + stored.message}
                                    : error_info{http::status::service_unavailable, "unavailable", contained_code,
                                                 "the request could not be quarantined: " + stored.message};
                    contained_breaker = quarantine_instance;
                    contained_rule = quarantine_rule;
                    contained_change = std::max(contained_change, quarantine_change);
                }
            }
        }

        // A live send that repeats a held request (its Idempotency-Key and agent): the
        // client never got the 202 for its hold, the breaker closed, and it retries. The
        // retry is answered with the first hold's ticket and not sent: the hold is released
        // (or discarded) by an operator, once. (A sandboxed request sends nothing real.)
        // A request that will be sent live notes its key first and then asks whether a hold
        // under it may exist, in one step against the hold's own check (sent_at_then above):
        // a retry held meanwhile, on another worker, either sees this send (409
        // already_forwarded) or is seen here. The note stands for the send below and goes
        // again if the request is not sent after all.
        std::optional<key_flight> flight;  // taken before the hold lookup, dropped as the exchange ends
        bool key_busy = false;             // another request of this key holds the flight
        std::optional<pending_send> noted_send;
        if (!contained && quarantine_instance.empty() && std::string_view{forwarded_decision} != "sandboxed") {
            const std::string_view key = req[cfg->store.idempotency_header];
            store::database* db = w.owner().db();
            std::optional<store::result> found;
            bool may_hold = false;
            // (A GET, HEAD or OPTIONS goes out whatever is held under its key: it is no second
            // send, and a read that shares a held write's key, on any route, is not refused.)
            // One request of a key at a time: a retry while the first is still being handled
            // (sent upstream: its client gave up sooner than the upstream answered, a proxy in
            // front retried; or looked up against a held one) is refused below, 409 in_flight,
            // and notes nothing. Most email APIs do not deduplicate by the key themselves.
            if (!key.empty() && !idempotent(req.method())) {
                if (!flight.emplace(w.owner().forwarded(), key, agent_id).taken()) {
                    key_busy = true;
                } else {
                    noted_send.emplace(w.owner().forwarded(), key, agent_id, w.owner().now());
                    may_hold = noted_send->note([&] { return db != nullptr && db->may_hold_key(key, agent_id); });
                }
            }
            if (may_hold) {
                // Rare (a key held before): the lookup queues behind any hold of it on the
                // store's writer, and this request waits for it without blocking the worker.
                found = co_await await_store([&](store::done_fn done) {
                    db->earlier_hold(std::string{key}, std::string{agent_id}, req.method_string(),
                                     original_target, req.body(), std::move(done));
                });
            }
            const store::result* earlier = found && !found->ticket.empty() ? &*found : nullptr;
            if (found) {
                if (!found->ok && found->code != "idempotency_key_reused") {
                    // Fail closed: sending it could be the second send of a held request.
                    contained = error_info{http::status::service_unavailable, "unavailable", "store_unavailable",
                                           "the request carries " + cfg->store.idempotency_header +
                                               ", and whether a request held under it exists cannot be read: " +
                                               found->message};
                } else if (earlier && !earlier->duplicate) {
                    contained = error_info{http::status::conflict, "rejected", "idempotency_key_reused",
                                           "another request (method, target or body differ) was quarantined with this "
                                           "key as ticket " + earlier->ticket +
                                               "; a retry must repeat the request exactly, a new request needs a new key"};
                } else if (earlier && earlier->message.rfind("discarded", 0) == 0) {
                    // Not a 202 as if it still waited for an operator: one discarded it.
                    contained = error_info{http::status::conflict, "rejected", "discarded",
                                           "the request held as " + earlier->ticket + " under this " +
                                               cfg->store.idempotency_header + " was discarded (" +
                                               earlier->message + "); it is not sent"};
                    contained_breaker = earlier->breaker;
                } else if (earlier) {
                    for (const auto& p : probes) {
                        registry.cancel_probe(p.instance, p.round);  // never reached the upstream
                    }
                    probes.clear();
                    if (!booked.empty()) {
                        rt.engine->release(booked);  // not sent: counts against no cap
                    }
                    const std::string why = "a retry of the request held as " + earlier->ticket + " (" +
                                            earlier->message +
                                            "): not sent, the held request is released or discarded by an operator";
                    spdlog::info("request {}: {}", request_id, why);
                    // Not sent: its note goes before the answer does, not after it is written
                    // (a client's next try, quarantined, would see a send that never was: 409).
                    noted_send.reset();
                    if (!co_await reply_quarantined(earlier->ticket, earlier->breaker, why) || !keep_alive) {
                        co_return after_request::close;
                    }
                    co_return after_request::next;
                }
            }
        }

        if (!contained && key_busy) {
            contained = error_info{http::status::conflict, "rejected", "in_flight",
                                   "another request with this " + cfg->store.idempotency_header +
                                       " is still being handled (sent upstream, or looked up against a held one); "
                                       "its answer says whether it went through: retry after it, not beside it"};
        }
        if (contained) {
            noted_send.reset();  // not sent (see above)
            for (const auto& p : probes) {
                registry.cancel_probe(p.instance, p.round);  // contained here: it never reached the upstream
            }
            if (!booked.empty()) {
                // Allowed by the rules, then stopped here (the sandbox switch, the hold): it
                // counts against no cap, and its retry is no duplicate.
                rt.engine->release(booked);
            }
            contained->rule = contained_rule;
            contained->breaker = contained_breaker;
            if (must_settle(w.owner(), contained_change)) {
                co_await persist_or_log(w.owner(), contained_breaker);
            }
            if (!co_await reply(*contained, keep_alive) || !keep_alive) {
                co_return after_request::close;
            }
            co_return after_request::next;
        }

        const upstream_config& up = cfg->upstreams[upstream_index];
        rec.upstream = up.name;

        // 7. Rewrite for the upstream: hop-by-hop fields out, forwarding fields in.
        strip_hop_by_hop(req);
        if (rt.route_reads_response_body[route_index] != 0) {
            // A rule reads the response's JSON: a compressed one (the client's gzip, which
            // Go's HTTP client asks for by default) would be unreadable, and the rule blind.
            req.set(http::field::accept_encoding, "identity");
        }
        req.erase(http::field::expect);
        req.erase(http::field::host);
        req.set(http::field::host, up.authority);
        add_forwarding_fields();
        req.set("x-request-id", request_id);
        std::string sent_form = origin_form;
        if (to_sandbox_upstream) {
            // The client's credentials are the real API's (a SendGrid key, a HubSpot token,
            // an AWS signature): a test fake or capture server is no place for them. Every
            // header and query parameter named like a credential stays behind (redact.hpp's
            // names; what the dry run is judged by, the body, goes as sent).
            std::vector<std::string> names;
            for (const auto& f : req) {
                if (credential_name(f.name_string())) {
                    names.emplace_back(f.name_string());
                }
            }
            for (const auto& n : names) {
                req.erase(n);
            }
            sent_form = without_credential_params(origin_form);
        }
        if (up.base_path.empty() || sent_form == "*") {
            req.target(sent_form);
        } else {
            req.target(up.base_path + sent_form);
        }
        req.version(11);
        req.keep_alive(true);
        req.prepare_payload();

        // 8. Forward, watching the client meanwhile: a client that hangs up cancels the
        //    upstream request instead of leaving it running (client_watch).
        const bool is_head = req.method() == http::verb::head;
        const auto timeout = route->timeout.count() > 0 ? route->timeout : up.timeout;
        const auto& pool = lease.pool(upstream_index);
        exchange_result ex;
        // Remembered before it goes (a retry while it is in flight is as much a second send),
        // forgotten again if nothing went out.
        const std::string sent_key = !idempotent(req.method()) && std::string_view{forwarded_decision} != "sandboxed"
                                         ? std::string{req[cfg->store.idempotency_header]}
                                         : std::string{};
        auto sent_ms = std::chrono::duration_cast<std::chrono::milliseconds>(w.owner().now().time_since_epoch()).count();
        std::optional<std::int64_t> sent_before;
        if (!sent_key.empty() && noted_send && noted_send->key() == sent_key) {
            std::tie(sent_ms, sent_before) = noted_send->keep();  // noted before the hold lookup: this send
        } else if (!sent_key.empty()) {
            sent_before = w.owner().forwarded().note(sent_key, agent_id, sent_ms);
        }
        watch.arm(lim.header_bytes, ex, idempotent(req.method()));
        co_await pool->exchange(req, timeout, idempotent(req.method()), is_head, ex);
        flight.reset();  // the exchange is over: a retry from now on is the client's call
        // Nothing of it went out: no connection, or the client left before its first byte
        // was written (a POST is cancelled only then; a GET's cancel may come later).
        const bool unsent = nothing_sent(ex.failure) || (ex.failure == upstream_failure::cancelled && !ex.sending);
        if (!sent_key.empty() && unsent) {
            w.owner().forwarded().forget(sent_key, agent_id, sent_ms, sent_before);
        }
        if (watch.disarm()) {
            // The client left: no verdict from the upstream, except on its own health probe
            // once the wait reached slow_call. An upstream that hangs until every client
            // gives up would otherwise hand each next request the probe for ever: half-open,
            // never reopened, its cooldown never backed off.
            const auto& real = rt.upstreams[upstream_index];
            const bool hung = real.health && real.health->config().slow_call > std::chrono::milliseconds{0} &&
                              ex.elapsed >= real.health->config().slow_call;
            for (const auto& p : probes) {
                if (hung && p.instance == real.breaker) {
                    registry.probe_result(p.instance, false, w.owner().now(), p.round);
                } else {
                    registry.cancel_probe(p.instance, p.round);
                }
            }
            if (unsent && !booked.empty()) {
                // Off the caps and the duplicates counters: its retry is the first send.
                rt.engine->release(booked);
            }
            // Still a slow call if it waited that long: an upstream that hangs until every
            // client gives up must not look healthy for it.
            if (const auto& ug = rt.upstreams[upstream_index]; ug.health) {
                if (auto cause = ug.health->record_abandoned(ex.elapsed, w.owner().now())) {
                    cause->request_id = request_id;
                    registry.trip(ug.breaker, "", std::move(*cause), w.owner().now());
                }
            }
            log_client_left(forwarded_decision);  // a dry run the client left is still one
            co_return after_request::end;
        }
        keep_alive = keep_alive && !w.draining();  // a drain may have begun meanwhile
        rec.upstream_time = ex.elapsed;
        // A dry run's answer (the API's sandbox mode, or an alternate upstream) is no verdict
        // on a rule breaker's probe, and no response of the route for its response rules: a
        // fake that always answers 200 would close a half-open breaker of the real traffic,
        // and dilute its 5xx ratios. It is one on the health of the upstream it reached:
        // that upstream's own probe stays (the API's sandbox mode answers from the real API;
        // an alternate upstream's switch gave the real one's probe back already).
        const bool dry_run = std::string_view{forwarded_decision} == "sandboxed";
        if (dry_run) {
            const std::string& reached = rt.upstreams[upstream_index].breaker;
            std::erase_if(probes, [&](const probe_ticket& p) {
                if (!reached.empty() && p.instance == reached) {
                    return false;
                }
                registry.cancel_probe(p.instance, p.round);
                return true;
            });
        }
        observe_upstream(w, rt, upstream_index, ex, probes,
                         !dry_run && has_rules && rt.route_has_response_rules[route_index], view, fill_view, request_id);
        if (ex.failure == upstream_failure::none && !booked.guards.empty()) {
            // The upstream answered that it did not take the request (a 4xx, a 503 asking to
            // come back: what a release counts as not delivered): the duplicates guards'
            // sends come off, so the client's retry (after a 429, say) is judged as the first
            // try was, not as a repeat of a mail that never went out.
            const unsigned status = ex.res.result_int();
            if ((status >= 400 && status < 500) ||
                (status == 503 && ex.res.find(http::field::retry_after) != ex.res.end())) {
                rt.engine->release_guard_sends(booked);
            }
        }
        if (ex.failure != upstream_failure::none) {
            ++w.stats().upstream_failures;
            if (!booked.empty() && nothing_sent(ex.failure)) {
                // Nothing was sent: off the caps and the duplicates counters, so the client's
                // retry is judged like the first try. (After a send began it stays booked.)
                rt.engine->release(booked);
            }
            error_info e{failure_status(ex.failure), "unavailable", "", ex.detail};
            switch (ex.failure) {
                case upstream_failure::pool_exhausted:
                    e.code = "upstream_overloaded";
                    break;
                case upstream_failure::connect_failed:
                    e.code = "upstream_connect_failed";
                    break;
                case upstream_failure::connect_timeout:
                    e.code = "upstream_connect_timeout";
                    break;
                case upstream_failure::tls_failed:
                    e.code = "upstream_tls_error";
                    break;
                case upstream_failure::failed_after_send:
                    if (idempotent(req.method())) {
                        e.code = "upstream_reset";
                    } else {
                        e.code = "upstream_outcome_unknown";
                        e.message += "; the request may have reached the upstream and was not retried";
                    }
                    break;
                case upstream_failure::timeout:
                    // A POST that timed out may have been carried out: the code says so (a
                    // client that retries on upstream_timeout would send the mail twice).
                    e.code = idempotent(req.method()) ? "upstream_timeout" : "upstream_outcome_unknown";
                    if (!idempotent(req.method())) {
                        e.message += "; the request may have reached the upstream and was not retried";
                    }
                    break;
                case upstream_failure::too_large:
                    e.code = "upstream_response_too_large";
                    break;
                case upstream_failure::over_budget:
                    e.code = "response_buffers_full";
                    break;
                case upstream_failure::bad_response:
                case upstream_failure::cancelled:
                case upstream_failure::none:
                    e.code = "upstream_bad_response";
                    break;
            }
            if (!idempotent(req.method()) && ex.failure == upstream_failure::too_large && ex.dropped_status >= 200 &&
                ex.dropped_status < 300) {
                // Its status says it was carried out (only the body is over our limit): saying
                // "unknown" would invite the client's retry, a second send.
                e.code = "upstream_succeeded_response_too_large";
                e.message += "; the upstream answered " + std::to_string(ex.dropped_status) +
                             ", so the request was carried out: do not send it again";
            } else if (!idempotent(req.method()) &&
                       (ex.failure == upstream_failure::too_large || ex.failure == upstream_failure::bad_response)) {
                // The whole request went out and the upstream answered: it may well have
                // sent the email. A plain 502 code invites the client's retry, a second send.
                e.code = "upstream_outcome_unknown";
                e.message += "; the upstream answered" +
                             (ex.dropped_status != 0 ? " " + std::to_string(ex.dropped_status) : std::string{}) +
                             ", so the request may have been carried out; it was not retried";
            }
            if (!co_await reply(e, keep_alive) || !keep_alive) {
                co_return after_request::close;
            }
            co_return after_request::next;
        }

        // 9. The response, faithfully: status, headers and body, minus hop-by-hop fields.
        response& res = ex.res;
        strip_hop_by_hop(res);
        append_list(res, "via", res.version() == 10 ? "1.0 breakerbox" : "1.1 breakerbox");  // every hop's line kept
        if (res.find("x-request-id") == res.end()) {
            res.set("x-request-id", request_id);
        }
        res.set("x-breakerbox-decision", forwarded_decision);
        res.version(client_version);
        res.keep_alive(keep_alive);
        const unsigned status = res.result_int();
        const bool bodyless = is_head || status == 204 || status == 304 || (status >= 100 && status < 200);
        if (!bodyless) {
            res.prepare_payload();
        } else if (status == 204 || (status >= 100 && status < 200)) {
            res.erase(http::field::content_length);
        }
        dl.arm(lim.write_timeout);
        // A HEAD answer keeps the upstream's Content-Length and has an empty body, so the
        // serializer writes the header only.
        auto [wec, written] = co_await write_message(sock, res, scratch);
        ++w.stats().responses_by_class[std::min(5u, status / 100)];
        rec.status = status;
        rec.decision = forwarded_decision;
        rec.bytes_out = written;
        rec.request_id = request_id;
        write_access_log(w, rec);
        if (wec || !keep_alive) {
            // Requests pipelined behind this one (a drain, max_requests_per_connection, a
            // client's own close): closing over unread input sends RST, which can destroy
            // the response still in the kernel's buffers. Linger as after an error. (Not
            // for every close we chose: a drain would wait on clients that keep the socket.)
            error_code aec;
            linger = linger || (!wec && (buf.size() > 0 || raw.available(aec) > 0));
            co_return after_request::close;
        }
        co_return after_request::next;
    };

    for (;;) {
        booked.clear();
        // 1. The request head: bounded in bytes and time. The limits are copied: a reload
        //    while this connection idles may retire the config they came from.
        const limits_config head_limits = w.cfg()->limits;
        auto [outcome, head_len] = co_await read_head(sock, dl, buf, head_limits, served == 0, *guard.it, w);
        const after_request after = co_await one_request(outcome, head_len);
        if (after == after_request::close) {
            break;
        }
        if (after == after_request::end) {
            co_return;
        }
    }
    if constexpr (!is_tls<Stream>) {
        if (tunnel.kind == tunnel_plan::intercept) {
            // TLS inside the tunnel (an https:// URL), or plain HTTP (curl -p with an http://
            // URL, a client that tunnels everything): a TLS connection starts with a
            // handshake record, 0x16; any other first byte is served as plain HTTP, inspected
            // and metered the same, instead of failing every request as a bad handshake.
            bool tls_inside = true;
            if (buf.size() > 0) {
                tls_inside = *static_cast<const unsigned char*>(buf.data().data()) == 0x16;
            } else {
                dl.arm(w.cfg()->limits.header_timeout);
                auto [wec] = co_await raw.async_wait(tcp::socket::wait_read, use_tuple);
                dl.disarm();
                unsigned char first = 0;
                if (wec || ::recv(raw.native_handle(), &first, 1, MSG_PEEK | MSG_DONTWAIT) != 1) {
                    co_await close_connection(sock, raw, dl, false);  // quiet, gone, or nothing to read
                    co_return;
                }
                tls_inside = first == 0x16;
            }
            if (tls_inside) {
                co_await serve_tls(w, raw, guard, dl, listener, std::move(tunnel.inner), *tunnel.sec->intercept_tls,
                                   buf, &tunnel.leaf);
            } else {
                co_await serve(w, raw, raw, guard, dl, listener, std::move(tunnel.inner), buf);
            }
            co_return;
        }
        if (tunnel.kind == tunnel_plan::blind) {
            co_await blind_tunnel(w, raw, buf, listener, tunnel.host, tunnel.port, ci, std::move(tunnel.agent),
                                  std::move(tunnel.key_digest), tunnel.request_id);
            co_return;
        }
    }
    co_await close_connection(sock, raw, dl, linger);
}

asio::awaitable<void> serve_tls(worker& w, tcp::socket& raw, session_guard& guard, deadline& dl, std::size_t listener,
                                client_info ci, asio::ssl::context& ctx, beast::flat_buffer& buf,
                                const cert_minter::leaf* leaf) {
    tls_stream stream{raw, ctx};
    if (leaf != nullptr) {
        std::string error;
        if (!cert_minter::apply(stream.native_handle(), *leaf, &error)) {
            spdlog::error("interception for {}: {}", ci.tunnel_host, error);
            co_return;
        }
    }
    dl.arm(w.cfg()->limits.header_timeout);
    // Bytes already read (a ClientHello sent right behind a CONNECT) go to the handshake.
    auto [hec, used] = co_await stream.async_handshake(asio::ssl::stream_base::server, buf.data(), use_tuple);
    dl.disarm();
    buf.consume(buf.size());
    if (hec) {
        if (leaf != nullptr) {
            // Its CONNECT was answered 200 and logged: only this says the client could not go
            // on (mostly one that does not trust the local CA).
            ++w.stats().interception_handshake_failures;
            static once_every logged{std::chrono::seconds{10}};
            if (logged.due(w.owner().now())) {
                spdlog::warn("TLS interception of {} for {} failed: {} (does the client trust the forward proxy's "
                             "CA? breakerbox_tls_handshake_failures_total{{kind=\"interception\"}} counts them all)",
                             ci.tunnel_host, ci.ip, hec.message());
            }
        } else {
            ++w.stats().listener_handshake_failures;
            spdlog::debug("TLS handshake with {} failed: {}", ci.ip, hec.message());
        }
        const auto e = static_cast<unsigned long>(hec.value());
        if (hec.category() == asio::error::get_ssl_category() && ERR_GET_LIB(e) == ERR_LIB_SSL &&
            (ERR_GET_REASON(e) == SSL_R_HTTP_REQUEST || ERR_GET_REASON(e) == SSL_R_HTTPS_PROXY_REQUEST)) {
            // Plain HTTP to a TLS port (http:// for https://): OpenSSL recognised the request
            // line. A client can read a plain answer that says so (nginx's "plain HTTP request
            // was sent to HTTPS port"), where a bare close leaves it guessing.
            auto res = make_error({http::status::bad_request, "rejected", "plain_http_on_tls_listener",
                                   "this listener speaks TLS: send the request with https://"},
                                  new_request_id(), 11, false);
            dl.arm(w.cfg()->limits.write_timeout);
            co_await http::async_write(raw, res, use_tuple);
            dl.disarm();
            co_await close_connection(raw, raw, dl, true);
        }
        co_return;
    }
    ci.tls = true;
    ci.cert_names = verified_peer_names(stream.native_handle(), &ci.ignored_cn);
    if (leaf == nullptr && ci.verified_under != nullptr && SSL_get0_peer_certificate(stream.native_handle()) != nullptr &&
        SSL_get_verify_result(stream.native_handle()) == X509_V_OK) {
        ci.ssl = stream.native_handle();  // verified under the files the caller handshook with (ci.verified_under)
        ci.cert_expires = verified_chain_expiry(ci.ssl);
        ci.cert_verified = true;
    } else {
        ci.ssl = nullptr;
        ci.verified_under = nullptr;
    }
    beast::flat_buffer inner;
    co_await serve(w, stream, raw, guard, dl, listener, ci, inner);
}

}  // namespace

asio::awaitable<void> run_session(worker& w, tcp::socket socket, std::size_t listener,
                                  asio::cancellation_signal* cancel) {
    co_await asio::this_coro::throw_if_cancelled(false);
    tcp::socket raw{std::move(socket)};
    session_guard guard{w, &raw};
    guard.cancel = cancel;
    deadline dl{raw};
    error_code ignored;
    raw.set_option(tcp::no_delay(true), ignored);
    // client_watch reads synchronously after readiness; it must never block the worker.
    raw.non_blocking(true, ignored);
    client_info ci;
    ci.ip = raw.remote_endpoint(ignored).address().to_string();
    beast::flat_buffer buf;
    const auto sec = w.owner().security(listener);
    if (sec && sec->tls) {
        // The files this handshake verifies a client certificate under: a reload that lands
        // while it runs is judged against on the connection's first request.
        ci.verified_under = sec;
        co_await serve_tls(w, raw, guard, dl, listener, std::move(ci), *sec->tls, buf, nullptr);
    } else {
        co_await serve(w, raw, raw, guard, dl, listener, ci, buf);
    }
}

}  // namespace bb::proxy
