#include "ctl/http_client.hpp"

#include "proxy/resolve.hpp"

#include "core/json_reader.hpp"
#include "core/tls_policy.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <charconv>
#include <optional>

namespace bb::ctl {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
// The largest answer we read: /metrics and /v1/config are the big ones.
constexpr std::uint64_t max_response_bytes = 64ull * 1024 * 1024;

bool is_ip_literal(const std::string& host) {
    error_code ec;
    asio::ip::make_address(host, ec);
    return !ec;
}

// Everything one exchange needs, owned outside the coroutine so the deadline timer's
// handler can never outlive what it cancels.
struct exchange {
    explicit exchange(const client_options& o) : opts(o) {}
    const client_options& opts;
    asio::io_context ioc;
    asio::steady_timer deadline{ioc};
    std::optional<asio::ssl::context> tls_ctx;
    std::optional<beast::tcp_stream> plain;
    std::optional<beast::ssl_stream<beast::tcp_stream>> tls;
    bool timed_out = false;

    beast::tcp_stream& lowest() { return tls ? beast::get_lowest_layer(*tls) : *plain; }

    http_result fail(std::string what) const {
        http_result r;
        r.transport_error = timed_out ? "timed out after " + cfg::format_duration(opts.timeout) : std::move(what);
        return r;
    }
};

template <class Stream>
asio::awaitable<http_result> round_trip(exchange& x, Stream& stream, const http_request& req) {
    http::request<http::string_body> msg{req.method == "POST" ? http::verb::post : http::verb::get,
                                         x.opts.url.base_path + req.target, 11};
    const auto& u = x.opts.url;
    const bool default_port = (u.tls() && u.port == 443) || (!u.tls() && u.port == 80);
    std::string host = u.host.find(':') != std::string::npos ? "[" + u.host + "]" : u.host;
    if (!default_port) {
        host += ":" + std::to_string(u.port);
    }
    msg.set(http::field::host, host);
    msg.set(http::field::user_agent, "breakerctl/0.1");
    msg.set(http::field::accept, "application/json");
    msg.set(http::field::connection, "close");
    if (!x.opts.token.empty()) {
        msg.set(http::field::authorization, "Bearer " + x.opts.token);
    }
    if (req.method == "POST") {
        msg.set(http::field::content_type, "application/json");
        msg.body() = req.body;
    }
    msg.prepare_payload();
    auto [wec, wn] = co_await http::async_write(stream, msg, use_tuple);
    if (wec) {
        co_return x.fail("cannot send the request: " + wec.message());
    }
    beast::flat_buffer buf;
    http::response_parser<http::string_body> parser;
    parser.body_limit(max_response_bytes);
    parser.header_limit(64 * 1024);
    auto [rec, rn] = co_await http::async_read(stream, buf, parser, use_tuple);
    if (rec) {
        co_return x.fail("cannot read the answer: " + rec.message());
    }
    auto res = parser.release();
    http_response out;
    out.status = res.result_int();
    out.content_type = std::string{res[http::field::content_type]};
    out.body = std::move(res.body());
    // No TLS close_notify: the answer is complete by its own framing, and a peer that
    // never answers the shutdown would only make us wait.
    co_return http_result{std::move(out), {}};
}

asio::awaitable<http_result> run(exchange& x, const http_request& req) {
    const auto& u = x.opts.url;
    // Named locals: GCC 12 mishandles temporaries inside a co_await operand.
    // Bounded by --timeout: Asio's resolver cannot interrupt getaddrinfo, and its io_context
    // would wait out a dead nameserver's own timeouts (proxy/resolve.hpp).
    const auto ex = x.ioc.get_executor();
    const auto found = co_await proxy::resolve_bounded(ex, u.host, u.port, x.opts.timeout);
    if (found.timed_out) {
        x.timed_out = true;
    }
    if (!found.error.empty() || found.endpoints.empty()) {
        co_return x.fail("cannot resolve " + u.host + ": " + (found.error.empty() ? "no address" : found.error));
    }
    const auto& endpoints = found.endpoints;
    if (u.tls()) {
        x.tls_ctx.emplace(asio::ssl::context::tls_client);
        x.tls_ctx->set_verify_mode(asio::ssl::verify_peer);
        error_code cec;
        if (!x.opts.cacert.empty()) {
            x.tls_ctx->load_verify_file(x.opts.cacert, cec);
            if (cec) {
                co_return x.fail("cannot read --cacert " + x.opts.cacert + ": " + cec.message());
            }
        } else {
            x.tls_ctx->set_default_verify_paths(cec);
        }
        if (!x.opts.cert.empty()) {
            x.tls_ctx->use_certificate_chain_file(x.opts.cert, cec);
            if (!cec) {
                x.tls_ctx->use_private_key_file(x.opts.key.empty() ? x.opts.cert : x.opts.key, asio::ssl::context::pem,
                                                cec);
            }
            if (cec) {
                co_return x.fail("cannot use --cert " + x.opts.cert + ": " + cec.message());
            }
        }
        x.tls.emplace(x.ioc, *x.tls_ctx);
    } else {
        x.plain.emplace(x.ioc);
    }
    auto [cec, ep] = co_await x.lowest().async_connect(endpoints, use_tuple);
    if (cec) {
        co_return x.fail(cec.message());
    }
    if (!x.tls) {
        co_return co_await round_trip(x, *x.plain, req);
    }
    if (!is_ip_literal(u.host)) {
        // SNI: a name, never an address (RFC 6066).
        SSL_set_tlsext_host_name(x.tls->native_handle(), u.host.c_str());
    }
    if (!expect_peer_name(x.tls->native_handle(), u.host)) {
        co_return x.fail("cannot check the certificate's name against " + u.host);
    }
    auto [hec] = co_await x.tls->async_handshake(asio::ssl::stream_base::client, use_tuple);
    if (hec) {
        std::string why = "TLS handshake failed: " + hec.message();
        const long vr = SSL_get_verify_result(x.tls->native_handle());
        if (vr != X509_V_OK) {
            why += std::string{" ("} + X509_verify_cert_error_string(vr) + ")";
        }
        co_return x.fail(why);
    }
    co_return co_await round_trip(x, *x.tls, req);
}

}  // namespace

std::string admin_url::to_string() const {
    std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    const bool default_port = (tls() && port == 443) || (!tls() && port == 80);
    return scheme + "://" + h + (default_port ? std::string{} : ":" + std::to_string(port)) + base_path;
}

std::optional<admin_url> parse_admin_url(std::string_view text, std::string* why) {
    auto bad = [&](std::string m) -> std::optional<admin_url> {
        if (why != nullptr) {
            *why = cfg::quote(text) + " is not an admin URL: " + std::move(m);
        }
        return std::nullopt;
    };
    admin_url u;
    std::string_view rest = text;
    if (const auto p = rest.find("://"); p != std::string_view::npos) {
        std::string scheme{rest.substr(0, p)};
        for (auto& c : scheme) {
            c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        }
        if (scheme != "http" && scheme != "https") {
            return bad("the scheme must be http or https");
        }
        u.scheme = scheme;
        rest = rest.substr(p + 3);
    }
    const auto slash = rest.find('/');
    std::string_view authority = rest.substr(0, slash);
    if (slash != std::string_view::npos) {
        std::string_view path = rest.substr(slash);
        if (path.find_first_of("?#") != std::string_view::npos) {
            return bad("no query or fragment");
        }
        while (!path.empty() && path.back() == '/') {
            path.remove_suffix(1);
        }
        u.base_path = std::string{path};
    }
    if (authority.find('@') != std::string_view::npos) {
        return bad("no user information (use --token)");
    }
    std::string_view port_text;
    if (!authority.empty() && authority.front() == '[') {
        const auto close = authority.find(']');
        if (close == std::string_view::npos) {
            return bad("unclosed [");
        }
        u.host = std::string{authority.substr(1, close - 1)};
        const auto after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') {
                return bad("expected :port after ]");
            }
            port_text = after.substr(1);
            if (port_text.empty()) {
                return bad("empty port");
            }
        }
    } else {
        const auto colon = authority.rfind(':');
        u.host = std::string{authority.substr(0, colon)};
        if (colon != std::string_view::npos) {
            port_text = authority.substr(colon + 1);
            if (port_text.empty()) {
                return bad("empty port");
            }
        }
    }
    if (u.host.empty()) {
        return bad("no host");
    }
    if (port_text.empty()) {
        u.port = u.tls() ? 443 : 80;
    } else {
        unsigned p = 0;
        const auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), p);
        if (ec != std::errc{} || ptr != port_text.data() + port_text.size() || p == 0 || p > 65535) {
            return bad("the port must be 1-65535");
        }
        u.port = static_cast<std::uint16_t>(p);
    }
    return u;
}

std::string encode_component(std::string_view s) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(s.size());
    for (unsigned char c : s) {
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
            c == '_' || c == '~') {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

namespace {

// A loopback address written as one (or localhost): the only place a bearer token may go
// over plain HTTP (the admin listener itself needs TLS anywhere else).
bool loopback_host(const std::string& host) {
    if (host == "localhost") {
        return true;
    }
    error_code ec;
    const auto a = asio::ip::make_address(host, ec);
    return !ec && a.is_loopback();
}

}  // namespace

http_result send(const client_options& opts, const http_request& req) {
    if (!opts.url.tls() && !loopback_host(opts.url.host) && (!opts.token.empty() || !opts.cert.empty())) {
        // Before any connection: the token would cross the network in clear text.
        return http_result{std::nullopt, "refusing to send credentials over plain HTTP to " + opts.url.host +
                                             ": use https:// (the admin API needs TLS off loopback)"};
    }
    exchange x{opts};
    x.deadline.expires_after(opts.timeout);
    x.deadline.async_wait([&x](error_code ec) {
        if (ec) {
            return;  // cancelled: the exchange finished first, or the deadline moved
        }
        x.timed_out = true;
        if (x.plain || x.tls) {
            error_code ignored;
            x.lowest().socket().close(ignored);
        }
    });
    std::optional<http_result> out;
    asio::co_spawn(x.ioc, run(x, req), [&](std::exception_ptr e, http_result r) {
        if (e) {
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& ex) {
                r = http_result{std::nullopt, ex.what()};
            }
        }
        out = std::move(r);
        x.deadline.cancel();
    });
    x.ioc.run();
    if (!out) {
        return http_result{std::nullopt, "the exchange did not complete"};
    }
    return std::move(*out);
}

}  // namespace bb::ctl
