// The sending side of alerts: one background thread running one io_context, one coroutine
// per sink. Per-sink sends are sequential, so a sink sees alerts in the order they were
// published; sinks never wait on each other.
//
// Locking: publish() runs on data-plane and control-plane threads, the sink coroutines on
// the alerts thread. Queues, flags and counters are shared between them and guarded by
// one mutex, held only for O(sinks) bookkeeping and never across I/O. Timers, TLS contexts
// and the random source are touched only on the alerts thread.
#include "alerts/alerts.hpp"
#include "core/url_decode.hpp"
#include "core/file.hpp"
#include "core/read_limits.hpp"
#include "core/tls_policy.hpp"
#include "proxy/resolve.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <algorithm>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <thread>

namespace bb::alerts {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using steady = std::chrono::steady_clock;

namespace {

// Network errors are values (STYLE.md): `auto [ec, n] = co_await op(..., use_tuple)`.
inline constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

constexpr std::size_t response_header_limit = 16 * 1024;
constexpr std::size_t response_body_limit = 64 * 1024;  // read only to quote it in last_error
constexpr std::size_t error_body_quote = 200;

// What of a receiver's error body goes into logs and stats: its first bytes, with this sink's
// secrets (a receiver or gateway may echo the request: its Authorization header, the routing
// key, the URL) cut out and control bytes shown as '?' (a body cannot forge log lines).
std::string quotable_body(const sink_config& cfg, std::string_view body) {
    // Only what can be quoted is read (with room for a secret that starts inside it).
    std::string out{body.substr(0, error_body_quote + 1024)};
    auto scrub = [&](std::string_view secret) {
        if (secret.size() < 4) {
            return;  // too short to be one, and would cut ordinary words
        }
        for (auto at = out.find(secret); at != std::string::npos; at = out.find(secret, at + 10)) {
            out.replace(at, secret.size(), "[redacted]");
        }
    };
    scrub(cfg.url);
    // A webhook's secret is often its path (Slack's /services/T/B/X), which a receiver's
    // "Cannot POST /services/..." echoes without the rest.
    if (const auto scheme = cfg.url.find("://"); scheme != std::string::npos) {
        if (const auto path = cfg.url.find('/', scheme + 3); path != std::string::npos && cfg.url.size() - path > 8) {
            scrub(std::string_view{cfg.url}.substr(path));
        }
    }
    // Its parts alone too: a receiver quotes what it judged, not the whole URL or header
    // ("invalid token s3cr3t" for ?token=s3cr3t, decoded; "abc" for `Token token=abc`),
    // and a JSON error body writes a path's slashes as \/. Only the parts that hold
    // credentials: a query's values, path segments that look like a key (a digit in them,
    // or 20 bytes and more: Slack's /services/T.../B.../XXXX), a header's value after its
    // scheme word; not words such as "alerts", "webhook" or "Bearer", which a receiver's
    // error message needs. Pieces under 6 bytes are left too.
    auto piece = [&](std::string_view p) {
        if (p.size() >= 6) {
            scrub(p);
        }
    };
    auto split = [](std::string_view text, std::string_view separators, auto&& f) {
        for (std::size_t start = 0, i = 0; start <= text.size(); ++i) {
            auto end = text.find_first_of(separators, start);
            if (end == std::string_view::npos) {
                end = text.size();
            }
            f(text.substr(start, end - start), i);
            start = end + 1;
        }
    };
    if (const auto scheme = cfg.url.find("://"); scheme != std::string::npos) {
        if (const auto path = cfg.url.find('/', scheme + 3); path != std::string::npos) {
            const std::string_view rest = std::string_view{cfg.url}.substr(path);
            std::string escaped;
            for (const char c : rest) {
                escaped += c == '/' ? std::string_view{"\\/"} : std::string_view{&c, 1};
            }
            if (rest.size() > 8) {
                scrub(escaped);
            }
            const auto q = rest.find_first_of("?#");
            split(rest.substr(0, q), "/;", [&](std::string_view seg, std::size_t) {
                if (seg.size() >= 20 || std::any_of(seg.begin(), seg.end(), [](char c) { return c >= '0' && c <= '9'; })) {
                    piece(seg);
                }
            });
            if (q != std::string_view::npos) {
                split(rest.substr(q + 1), "&#", [&](std::string_view pair, std::size_t) {
                    if (const auto eq = pair.find('='); eq != std::string_view::npos) {
                        piece(pair.substr(eq + 1));
                        piece(url_decode(pair.substr(eq + 1)));
                    }
                });
            }
        }
    }
    scrub(cfg.routing_key);
    for (const auto& [name, value] : cfg.headers) {
        scrub(value);
        // "Bearer T", "Token token=T": T alone too, not the scheme word before it.
        split(value, " =,;:\"", [&](std::string_view p, std::size_t i) {
            if (i > 0) {
                piece(p);
            }
        });
    }
    if (out.size() > error_body_quote) {
        out.resize(error_body_quote);
    }
    for (auto& c : out) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) {
            c = '?';
        }
    }
    return out;
}

struct attempt_result {
    enum class outcome { ok, retry, give_up };
    outcome what = outcome::give_up;
    std::string error;
    std::optional<std::chrono::milliseconds> retry_after;
};

attempt_result ok() { return {attempt_result::outcome::ok, {}, {}}; }
attempt_result retry(std::string e) { return {attempt_result::outcome::retry, std::move(e), {}}; }
attempt_result give_up(std::string e) { return {attempt_result::outcome::give_up, std::move(e), {}}; }

std::string describe(const error_code& ec, std::string_view doing, std::chrono::milliseconds timeout) {
    if (ec == beast::error::timeout || ec == asio::error::operation_aborted) {
        return std::string{doing} + ": timed out (timeout " + cfg::format_duration(timeout) + ")";
    }
    return std::string{doing} + ": " + ec.message();
}

// Retry-After as delay-seconds (RFC 9110 §10.2.3); HTTP-dates are ignored (backoff applies).
std::optional<std::chrono::milliseconds> parse_retry_after(std::string_view v) {
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) {
        v.remove_prefix(1);
    }
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) {
        v.remove_suffix(1);
    }
    std::uint64_t secs = 0;
    const auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), secs);
    if (v.empty() || ec != std::errc{} || p != v.data() + v.size()) {
        return std::nullopt;
    }
    return std::chrono::milliseconds{std::min<std::uint64_t>(secs, 86'400) * 1000};
}

bool is_ip_literal(const std::string& host) {
    error_code ec;
    asio::ip::make_address(host, ec);
    return !ec;
}

}  // namespace

// What a sink's ca_file holds now ("" without one): a reload keeps a sink only while it is
// the same, so a private CA rotated in place (same path) is read again.
std::string ca_digest(const sink_config& s) {
    return s.ca_file.empty() ? std::string{} : file_sha256(s.ca_file).value_or("unreadable");
}

// Whether a reload keeps the running sink for `b`: everything but its severities (which only
// route what comes next) unchanged.
bool same_receiver(const sink_config& a, const sink_config& b) {
    return a.name == b.name && a.kind == b.kind && a.url == b.url && a.routing_key == b.routing_key &&
           a.ca_file == b.ca_file && a.headers == b.headers;
}

struct dispatcher::impl {
    struct sink {
        sink_config cfg;  // its severities as first configured: see `severities`
        std::string ca;   // ca_digest(cfg) as the TLS context was built
        std::optional<url_parts> url;
        std::string host_header;
        std::string setup_error;                   // unusable URL or TLS setup: every alert fails
        std::unique_ptr<asio::ssl::context> tls;  // alerts thread only (after construction)
        std::unique_ptr<asio::steady_timer> wake;     // alerts thread only
        std::unique_ptr<asio::steady_timer> backoff;  // alerts thread only

        // Guarded by impl::mu.
        std::vector<std::string> severities;  // a reload may change them in place
        std::deque<std::shared_ptr<const alert>> queue;
        bool waiting = false;    // the coroutine is parked on `wake`
        bool in_flight = false;  // an alert was taken off the queue and is being delivered
        // Taken out by a reload (removed, or its URL, key, headers or CA changed): it gets
        // nothing new, sends what it has queued, and its coroutine ends.
        // A reload that configures it again before it ended takes it back.
        bool retired = false;
        bool ending = false;    // its coroutine has decided to end: it takes nothing more
        bool finished = false;  // its coroutine ended (the sink may go)
        sink_stats stats;

        bool wants(std::string_view severity) const {
            return severities.empty() || std::find(severities.begin(), severities.end(), severity) != severities.end();
        }
    };

    // Declared first so it is destroyed last: the timers and sockets below belong to it.
    asio::io_context io{1};
    // The thread runs until stop(), with or without sinks: a reload may take out every sink
    // (their coroutines end) and add one after.
    asio::executor_work_guard<asio::io_context::executor_type> keep_running{io.get_executor()};
    std::minstd_rand rng{std::random_device{}()};  // alerts thread only

    mutable std::mutex mu;
    std::condition_variable cv;
    // Guarded by mu. The settings (cfg.sinks is left empty: the sinks are below) and the sinks,
    // in the order they were made; a reload changes both (reconfigure).
    alerts_config cfg;
    std::vector<std::unique_ptr<sink>> sinks;
    // The counts of retired sinks whose coroutine ended, by name (stats()).
    std::vector<sink_stats> folded;
    bool stopping = false;
    std::size_t running = 0; // sink coroutines not yet finished
    std::thread thread;

    explicit impl(alerts_config c) {
        for (const auto& sc : c.sinks) {
            sinks.push_back(make_sink(sc));
        }
        c.sinks.clear();
        cfg = std::move(c);
    }

    // The settings an attempt runs under (a reload may change them between two alerts).
    alerts_config settings() const {
        std::lock_guard lk{mu};
        return cfg;
    }

    std::unique_ptr<sink> make_sink(const sink_config& sc) {
        auto s = std::make_unique<sink>();
        s->cfg = sc;
        s->severities = sc.severities;
        s->ca = ca_digest(sc);
        s->stats.name = sc.name;
        s->wake = std::make_unique<asio::steady_timer>(io);
        s->backoff = std::make_unique<asio::steady_timer>(io);
        std::string why;
        s->url = parse_url(sc.url, &why);
        if (!s->url) {
            s->setup_error = "url " + cfg::quote(sc.url) + " " + why;
        } else {
            const auto& u = *s->url;
            const bool v6 = u.host.find(':') != std::string::npos;
            s->host_header = v6 ? "[" + u.host + "]" : u.host;
            if (u.port != (u.tls ? 443 : 80)) {
                s->host_header += ":" + std::to_string(u.port);
            }
            if (u.tls) {
                setup_tls(*s);
            }
        }
        return s;
    }

    void setup_tls(sink& s) {
        s.tls = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
        s.tls->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                           asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                           asio::ssl::context::no_tlsv1_1);
        // A page carries incident details: forward secrecy and AEAD only, as to upstreams.
        SSL_CTX_set_min_proto_version(s.tls->native_handle(), TLS1_2_VERSION);
        if (SSL_CTX_set_cipher_list(s.tls->native_handle(), client_tls12_ciphers) != 1) {
            s.setup_error = "cannot set the TLS cipher list";
        }
        s.tls->set_verify_mode(asio::ssl::verify_peer);
        error_code ec;
        if (!s.cfg.ca_file.empty()) {
            s.tls->load_verify_file(s.cfg.ca_file, ec);
            if (ec) {
                s.setup_error = "cannot load ca_file " + s.cfg.ca_file + ": " + ec.message();
            }
        } else {
            s.tls->set_default_verify_paths(ec);
            if (ec) {
                s.setup_error = "cannot load the system certificate store: " + ec.message();
            }
        }
    }

    // Under mu.
    void spawn(sink& s) {
        ++running;
        asio::co_spawn(io, run_sink(s), [this, sp = &s](std::exception_ptr e) {
            std::lock_guard lk{mu};
            if (e) {
                // Not expected (errors are values); make it visible rather than silent.
                try {
                    std::rethrow_exception(e);
                } catch (const std::exception& ex) {
                    sp->stats.last_error = std::string{"alerts sender stopped: "} + ex.what();
                } catch (...) {
                    sp->stats.last_error = "alerts sender stopped";
                }
            }
            sp->in_flight = false;
            sp->finished = true;
            --running;
            cv.notify_all();
        });
    }

    void start() {
        {
            std::lock_guard lk{mu};
            for (auto& s : sinks) {
                spawn(*s);
            }
        }
        thread = std::thread{[this] { io.run(); }};
    }

    // Under mu: wakes a sink's coroutine parked on an empty queue (one post per idle-to-busy
    // transition, not per alert).
    void wake(sink& s) {
        if (s.waiting) {
            s.waiting = false;
            asio::post(io, [sp = &s] { sp->wake->cancel(); });
        }
    }

    void reconfigure(alerts_config next) {
        // Only the control thread calls this, one call at a time, and only this changes
        // `sinks`: what is read here without mu stays as read.
        std::vector<sink*> kept(next.sinks.size(), nullptr);
        {
            std::lock_guard lk{mu};
            for (std::size_t i = 0; i < next.sinks.size(); ++i) {
                for (auto& s : sinks) {
                    if (!s->ending && std::find(kept.begin(), kept.end(), s.get()) == kept.end() &&
                        same_receiver(s->cfg, next.sinks[i])) {
                        kept[i] = s.get();
                        break;
                    }
                }
            }
        }
        // New sinks are built (a CA file read, a TLS context) before the lock is taken, and a
        // kept one whose CA file changed is replaced.
        std::vector<std::unique_ptr<sink>> made;
        for (std::size_t i = 0; i < next.sinks.size(); ++i) {
            if (kept[i] != nullptr && kept[i]->ca != ca_digest(next.sinks[i])) {
                kept[i] = nullptr;
            }
            if (kept[i] == nullptr) {
                made.push_back(make_sink(next.sinks[i]));
            }
        }
        std::lock_guard lk{mu};
        if (stopping) {
            return;
        }
        for (std::size_t i = 0; i < next.sinks.size(); ++i) {
            if (kept[i] != nullptr && kept[i]->ending) {
                // Its coroutine ended since the match above: a new sink takes its place.
                // (Rare; built under the lock.)
                kept[i] = nullptr;
                made.push_back(make_sink(next.sinks[i]));
            } else if (kept[i] != nullptr) {
                kept[i]->severities = next.sinks[i].severities;
                kept[i]->retired = false;
            }
        }
        for (auto& s : sinks) {
            if (!s->retired && std::find(kept.begin(), kept.end(), s.get()) == kept.end()) {
                s->retired = true;
                wake(*s);  // to see it is retired, if it is parked
            }
        }
        // Retired sinks that have sent their queue go; their counts stay (stats()).
        std::erase_if(sinks, [&](const std::unique_ptr<sink>& s) {
            if (!s->retired || !s->finished) {
                return false;
            }
            fold(folded, s->stats);
            return true;
        });
        for (auto& s : made) {
            sinks.push_back(std::move(s));
            spawn(*sinks.back());
        }
        next.sinks.clear();
        cfg = std::move(next);
    }

    // Adds `st` to the entry of its name in `into` (appended when there is none). The last
    // error is the newest: `st` is newer than what `into` holds.
    static void fold(std::vector<sink_stats>& into, const sink_stats& st) {
        auto it = std::find_if(into.begin(), into.end(), [&](const sink_stats& f) { return f.name == st.name; });
        if (it == into.end()) {
            into.push_back(st);
            return;
        }
        it->sent += st.sent;
        it->failed += st.failed;
        it->retries += st.retries;
        it->dropped += st.dropped;
        if (!st.last_error.empty()) {
            it->last_error = st.last_error;
        }
    }

    void stop() {
        std::chrono::milliseconds grace{};
        {
            std::lock_guard lk{mu};
            stopping = true;
            grace = cfg.timeout;
        }
        try {
            asio::post(io, [this] {
                std::lock_guard lk{mu};
                for (auto& s : sinks) {
                    s->wake->cancel();
                    s->backoff->cancel();
                }
            });
        } catch (...) {
            // Without the post the parked coroutines are simply destroyed with the io_context.
        }
        {
            // An attempt in flight ends by its own deadline (cfg.timeout), so this wait is
            // the "up to cfg.timeout" grace; a little slack covers scheduling.
            std::unique_lock lk{mu};
            cv.wait_for(lk, grace + std::chrono::milliseconds{50}, [&] { return running == 0; });
        }
        io.stop();
        if (thread.joinable()) {
            thread.join();
        }
    }

    asio::awaitable<void> run_sink(sink& s) {
        for (;;) {
            std::shared_ptr<const alert> a;
            {
                std::lock_guard lk{mu};
                if (stopping) {
                    co_return;
                }
                if (s.queue.empty() && s.retired) {
                    s.ending = true;  // a reload took it out, and it has sent what it had
                    co_return;
                }
                if (s.queue.empty()) {
                    s.waiting = true;
                } else {
                    a = std::move(s.queue.front());
                    s.queue.pop_front();
                    s.in_flight = true;
                }
            }
            if (!a) {
                // publish() posts a cancel of this timer when it finds `waiting`; the post can
                // only run once this coroutine is suspended here (one thread).
                s.wake->expires_at(steady::time_point::max());
                co_await s.wake->async_wait(use_tuple);
                continue;
            }
            co_await deliver(s, *a);
            {
                std::lock_guard lk{mu};
                s.in_flight = false;
            }
            cv.notify_all();
        }
    }

    asio::awaitable<void> deliver(sink& s, const alert& a) {
        if (!s.setup_error.empty()) {
            std::lock_guard lk{mu};
            ++s.stats.failed;
            s.stats.last_error = s.setup_error;
            co_return;
        }
        const std::string body = render_payload(s.cfg.kind, a, s.cfg);
        const alerts_config set = settings();
        for (std::uint32_t attempt = 1;; ++attempt) {
            attempt_result r;
            try {
                r = co_await send_once(s, body, set.timeout);
            } catch (const std::exception& e) {
                r = give_up(std::string{"internal error: "} + e.what());
            }
            if (r.what == attempt_result::outcome::ok) {
                std::lock_guard lk{mu};
                ++s.stats.sent;
                co_return;
            }
            {
                std::lock_guard lk{mu};
                s.stats.last_error = r.error;
                if (r.what == attempt_result::outcome::give_up || attempt >= set.max_attempts || stopping) {
                    ++s.stats.failed;
                    co_return;
                }
            }
            // A receiver's Retry-After is a floor, not cut to max_backoff (a retry before it is
            // refused again, spending an attempt), up to a minute: the sink's later alerts (a
            // sev1 trip) wait behind this one.
            const std::chrono::milliseconds backoff = backoff_delay(attempt, set.initial_backoff, set.max_backoff,
                                                                    std::uniform_real_distribution<double>{0.8, 1.2}(rng));
            const std::chrono::milliseconds delay =
                r.retry_after ? std::max(std::min(*r.retry_after, std::max(set.max_backoff, std::chrono::milliseconds{60'000})), backoff) : backoff;
            s.backoff->expires_after(delay);
            co_await s.backoff->async_wait(use_tuple);
            std::lock_guard lk{mu};
            if (stopping) {
                ++s.stats.failed;
                s.stats.last_error = r.error + " (shut down before retrying)";
                co_return;
            }
            ++s.stats.retries;
        }
    }

    // One POST: resolve, connect, TLS, write, read the answer; every step under one
    // deadline of cfg.timeout. One connection per send: alerts are rare.
    asio::awaitable<attempt_result> send_once(sink& s, const std::string& body, std::chrono::milliseconds timeout) {
        const auto& u = *s.url;
        const auto deadline = steady::now() + timeout;
        auto ex = co_await asio::this_coro::executor;

        // Not Asio's resolver: its lookups run one at a time on one thread, so one sink's
        // host stuck on a dead nameserver held every other sink's alert behind it for the
        // resolver's whole timeout (and its cancel cannot interrupt a getaddrinfo). Each
        // lookup runs on a thread of its own, bounded by the deadline (proxy/resolve.hpp).
        const auto left =
            std::max(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()),
                     std::chrono::milliseconds{1});
        const auto resolved = co_await proxy::resolve_bounded(ex, u.host, u.port, left);
        if (!resolved.error.empty()) {
            co_return retry(resolved.timed_out ? "resolving " + u.host + ": timed out (timeout " +
                                                     cfg::format_duration(timeout) + ")"
                                               : resolved.error);
        }
        const std::vector<tcp::endpoint>& endpoints = resolved.endpoints;

        beast::tcp_stream stream{ex};
        stream.expires_at(deadline);
        auto [cec, ep] = co_await stream.async_connect(endpoints, use_tuple);
        if (cec) {
            co_return retry(describe(cec, "connecting to " + s.host_header, timeout));
        }
        if (!u.tls) {
            co_return co_await exchange(s, stream, stream, body, deadline, timeout);
        }
        asio::ssl::stream<beast::tcp_stream> tls{std::move(stream), *s.tls};
        tls.next_layer().expires_at(deadline);
        // SNI carries a name, never an address (RFC 6066).
        if (!is_ip_literal(u.host) && !SSL_set_tlsext_host_name(tls.native_handle(), u.host.c_str())) {
            co_return give_up("cannot set SNI for " + u.host);
        }
        if (!expect_peer_name(tls.native_handle(), u.host)) {
            co_return give_up("cannot check the certificate's name against " + u.host);
        }
        auto [hec] = co_await tls.async_handshake(asio::ssl::stream_base::client, use_tuple);
        if (hec) {
            const long vr = SSL_get_verify_result(tls.native_handle());
            if (vr != X509_V_OK) {
                // A certificate that does not verify will not verify on the next try either.
                co_return give_up("TLS with " + s.host_header + ": certificate not trusted (" +
                                  X509_verify_cert_error_string(vr) + ")");
            }
            co_return retry(describe(hec, "TLS handshake with " + s.host_header, timeout));
        }
        co_return co_await exchange(s, tls, tls.next_layer(), body, deadline, timeout);
    }

    template <class Stream>
    asio::awaitable<attempt_result> exchange(sink& s, Stream& stream, beast::tcp_stream& tcp_layer,
                                             const std::string& body, steady::time_point deadline,
                                             std::chrono::milliseconds timeout) {
        http::request<http::string_body> req{http::verb::post, s.url->target, 11};
        req.set(http::field::host, s.host_header);
        req.set(http::field::user_agent, "breakerbox-alerts");
        req.set(http::field::content_type, "application/json");
        req.set(http::field::connection, "close");
        for (const auto& [name, value] : s.cfg.headers) {
            req.set(name, value);
        }
        req.body() = body;
        req.prepare_payload();

        tcp_layer.expires_at(deadline);
        auto [wec, wn] = co_await http::async_write(stream, req, use_tuple);
        if (wec) {
            co_return retry(describe(wec, "sending to " + s.host_header, timeout));
        }
        beast::flat_buffer buf{max_buffered_line};  // core/read_limits.hpp
        http::response_parser<http::string_body> parser;
        parser.header_limit(response_header_limit);
        parser.body_limit(response_body_limit);
        auto [rec, rn] = co_await http::async_read_header(stream, buf, parser, use_tuple);
        if (rec) {
            co_return retry(describe(rec, "reading the answer from " + s.host_header, timeout));
        }
        const unsigned status = parser.get().result_int();
        if (status >= 200 && status < 300) {
            error_code ignored;
            tcp_layer.socket().shutdown(tcp::socket::shutdown_both, ignored);
            co_return ok();
        }
        std::optional<std::chrono::milliseconds> retry_after;
        if (auto it = parser.get().find(http::field::retry_after); it != parser.get().end()) {
            retry_after = parse_retry_after(it->value());
        }
        // The body only makes the error readable ("invalid routing_key"); its errors do not matter.
        co_await http::async_read(stream, buf, parser, use_tuple);
        std::string message = "HTTP " + std::to_string(status);
        if (const auto& b = parser.get().body(); !b.empty()) {
            message += ": " + quotable_body(s.cfg, b);
        }
        error_code ignored;
        tcp_layer.socket().shutdown(tcp::socket::shutdown_both, ignored);
        if (status == 429 || (status >= 500 && status < 600)) {
            attempt_result r = retry(std::move(message));
            r.retry_after = retry_after;
            co_return r;
        }
        co_return give_up(std::move(message));
    }
};

dispatcher::dispatcher(alerts_config cfg) : impl_(std::make_unique<impl>(std::move(cfg))) {
    impl_->start();
}

dispatcher::~dispatcher() {
    impl_->stop();
}

void dispatcher::publish(const alert& a) {
    auto& m = *impl_;
    try {
        std::shared_ptr<alert> copy;
        std::lock_guard lk{m.mu};
        for (auto& s : m.sinks) {
            if (s->retired || (!a.every_sink && !s->wants(a.severity)) ||
                (a.not_to_chat && s->cfg.kind == sink_kind::slack)) {
                continue;
            }
            // A resolve has room of its own past the bound: a queue filled by a storm of
            // triggers would otherwise drop the resolve of one it already sent, and that
            // incident would stay open on the pager for ever. (Each trigger has at most one
            // resolve per severity, so this doubles the bound at worst.)
            if (m.stopping || s->queue.size() >= (a.resolve ? 2 * m.cfg.queue_max : m.cfg.queue_max)) {
                ++s->stats.dropped;
                continue;
            }
            if (!copy) {
                copy = std::make_shared<alert>(a);
                if (copy->at_ms == 0) {
                    copy->at_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                      std::chrono::system_clock::now().time_since_epoch())
                                      .count();
                }
            }
            s->queue.push_back(copy);
            m.wake(*s);
        }
    } catch (...) {
        // Out of memory: the alert is lost, but the caller (maybe the data plane) is not.
    }
}

std::vector<sink_stats> dispatcher::stats() const {
    std::lock_guard lk{impl_->mu};
    std::vector<sink_stats> out = impl_->folded;
    for (const auto& s : impl_->sinks) {
        impl::fold(out, s->stats);  // oldest first: the last error shown is the newest sink's
    }
    return out;
}

void dispatcher::reconfigure(alerts_config next) {
    impl_->reconfigure(std::move(next));
}

std::size_t dispatcher::queued() const {
    std::lock_guard lk{impl_->mu};
    std::size_t n = 0;
    for (const auto& s : impl_->sinks) {
        n += s->queue.size();
    }
    return n;
}

bool dispatcher::flush(std::chrono::milliseconds deadline) {
    auto& m = *impl_;
    std::unique_lock lk{m.mu};
    return m.cv.wait_for(lk, deadline, [&] {
        return std::all_of(m.sinks.begin(), m.sinks.end(),
                           [](const auto& s) { return s->queue.empty() && !s->in_flight; });
    });
}

}  // namespace bb::alerts
