#include "tests/alerts/fake_receiver.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <openssl/ssl.h>

#include <algorithm>
#include <thread>

namespace bb::test {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

namespace {
inline constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

bool iequal(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}
}  // namespace

std::string webhook_request::header(std::string_view name) const {
    for (const auto& [k, v] : headers) {
        if (iequal(k, name)) {
            return v;
        }
    }
    return {};
}

struct fake_receiver::impl {
    asio::io_context io{1};
    tcp::acceptor acceptor{io};
    std::unique_ptr<asio::ssl::context> tls;
    mutable std::mutex mu;
    mutable std::condition_variable cv;
    handler h;
    std::vector<webhook_request> reqs;
    std::thread thread;

    asio::awaitable<void> accept_loop() {
        for (;;) {
            auto [ec, sock] = co_await acceptor.async_accept(use_tuple);
            if (ec) {
                co_return;
            }
            asio::co_spawn(io, session(std::move(sock)), [](std::exception_ptr) {});
        }
    }

    asio::awaitable<void> session(tcp::socket sock) {
        if (!tls) {
            co_await serve(sock);
            co_return;
        }
        asio::ssl::stream<tcp::socket> s{std::move(sock), *tls};
        auto [ec] = co_await s.async_handshake(asio::ssl::stream_base::server, use_tuple);
        if (ec) {
            co_return;
        }
        co_await serve(s);
    }

    template <class Stream>
    asio::awaitable<void> serve(Stream& s) {
        beast::flat_buffer buf;
        http::request<http::string_body> req;
        auto [ec, n] = co_await http::async_read(s, buf, req, use_tuple);
        if (ec) {
            co_return;
        }
        webhook_request rec;
        rec.method = std::string{req.method_string()};
        rec.target = std::string{req.target()};
        for (const auto& f : req) {
            rec.headers.emplace_back(std::string{f.name_string()}, std::string{f.value()});
        }
        rec.body = req.body();
        rec.at = std::chrono::steady_clock::now();
        webhook_reply r;
        {
            std::lock_guard lk{mu};
            const auto index = reqs.size();
            reqs.push_back(rec);
            if (h) {
                r = h(index, rec);
            }
        }
        cv.notify_all();
        if (r.hang) {
            // Answer nothing; return when the client gives up and closes.
            char c = 0;
            co_await s.async_read_some(asio::buffer(&c, 1), use_tuple);
            co_return;
        }
        http::response<http::string_body> res{static_cast<http::status>(r.status), 11};
        for (const auto& [k, v] : r.headers) {
            res.set(k, v);
        }
        res.body() = r.body;
        res.keep_alive(false);
        res.prepare_payload();
        co_await http::async_write(s, res, use_tuple);
        error_code ignored;
        beast::get_lowest_layer(s).shutdown(tcp::socket::shutdown_send, ignored);
        // Let the client close first so it never sees a reset instead of the answer.
        char c = 0;
        co_await s.async_read_some(asio::buffer(&c, 1), use_tuple);
    }
};

fake_receiver::fake_receiver(handler h, std::string tls_cert, std::string tls_key) : impl_(std::make_unique<impl>()) {
    impl_->h = std::move(h);
    if (!tls_cert.empty()) {
        impl_->tls = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_server);
        impl_->tls->use_certificate_chain_file(tls_cert);
        impl_->tls->use_private_key_file(tls_key, asio::ssl::context::pem);
    }
    const tcp::endpoint ep{asio::ip::make_address("127.0.0.1"), 0};
    impl_->acceptor.open(ep.protocol());
    impl_->acceptor.set_option(tcp::acceptor::reuse_address(true));
    impl_->acceptor.bind(ep);
    impl_->acceptor.listen();
    port_ = impl_->acceptor.local_endpoint().port();
    asio::co_spawn(impl_->io, impl_->accept_loop(), [](std::exception_ptr) {});
    impl_->thread = std::thread{[this] { impl_->io.run(); }};
}

void fake_receiver::tls12_ciphers(const std::string& list) {
    if (impl_->tls) {
        SSL_CTX_set_max_proto_version(impl_->tls->native_handle(), TLS1_2_VERSION);
        SSL_CTX_set_cipher_list(impl_->tls->native_handle(), list.c_str());
    }
}

fake_receiver::~fake_receiver() {
    impl_->io.stop();
    impl_->thread.join();
}

std::string fake_receiver::url(std::string_view path) const {
    return std::string{impl_->tls ? "https" : "http"} + "://127.0.0.1:" + std::to_string(port_) + std::string{path};
}

void fake_receiver::set_handler(handler h) {
    std::lock_guard lk{impl_->mu};
    impl_->h = std::move(h);
}

std::vector<webhook_request> fake_receiver::requests() const {
    std::lock_guard lk{impl_->mu};
    return impl_->reqs;
}

std::size_t fake_receiver::count() const {
    std::lock_guard lk{impl_->mu};
    return impl_->reqs.size();
}

bool fake_receiver::wait_for_count(std::size_t n, std::chrono::milliseconds deadline) const {
    std::unique_lock lk{impl_->mu};
    return impl_->cv.wait_for(lk, deadline, [&] { return impl_->reqs.size() >= n; });
}

}  // namespace bb::test
