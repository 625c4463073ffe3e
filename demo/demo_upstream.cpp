// A stand-in for the email/CRM APIs, so the demo runs with no internet: answers like
// SendGrid's `POST /v3/mail/send` (202, empty body) and a generic JSON 200 elsewhere, and
// prints one line per request it receives so you can see what breakerbox forwarded.
//
// usage: breakerbox-demo-upstream [ADDRESS:PORT]   (default 127.0.0.1:9000)
#include "proxy/asio.hpp"

#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/asio/detached.hpp>

#include <cstdio>
#include <iostream>
#include <string>

using namespace bb::proxy;

static asio::awaitable<void> serve(tcp::socket socket) {
    beast::tcp_stream stream{std::move(socket)};
    beast::flat_buffer buf;
    for (;;) {
        request req;
        stream.expires_after(std::chrono::seconds{60});
        auto [ec, n] = co_await http::async_read(stream, buf, req, use_tuple);
        if (ec) {
            co_return;
        }
        std::printf("demo-upstream: %s %s (%zu body bytes, x-request-id %s)\n", std::string{req.method_string()}.c_str(),
                    std::string{req.target()}.c_str(), req.body().size(), std::string{req["x-request-id"]}.c_str());
        std::fflush(stdout);
        response res{http::status::ok, req.version()};
        res.set(http::field::server, "demo-upstream");
        if (req.method() == http::verb::post && req.target().starts_with("/v3/mail/send")) {
            res.result(http::status::accepted);  // SendGrid: 202 Accepted, no body
            res.set("x-message-id", "demo-" + std::string{req["x-request-id"]});
        } else {
            res.set(http::field::content_type, "application/json");
            res.body() = "{\"status\":\"ok\",\"demo\":true}\n";
        }
        res.keep_alive(req.keep_alive());
        res.prepare_payload();
        auto [wec, wn] = co_await http::async_write(stream, res, use_tuple);
        if (wec || !req.keep_alive()) {
            co_return;
        }
    }
}

static asio::awaitable<void> listen(tcp::acceptor& acceptor) {
    for (;;) {
        auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
        if (ec) {
            co_return;
        }
        asio::co_spawn(acceptor.get_executor(), serve(std::move(socket)), asio::detached);
    }
}

int main(int argc, char** argv) {
    std::string addr = argc > 1 ? argv[1] : "127.0.0.1:9000";
    const auto colon = addr.rfind(':');
    asio::io_context ioc{1};
    tcp::acceptor acceptor{ioc};
    try {
        const tcp::endpoint ep{asio::ip::make_address(addr.substr(0, colon)),
                               static_cast<unsigned short>(std::stoi(addr.substr(colon + 1)))};
        acceptor.open(ep.protocol());
        acceptor.set_option(asio::socket_base::reuse_address(true));
        acceptor.bind(ep);
        acceptor.listen();
    } catch (const std::exception& e) {
        std::cerr << "demo-upstream: cannot listen on " << addr << ": " << e.what() << '\n';
        return 1;
    }
    std::printf("demo-upstream: listening on http://%s\n", addr.c_str());
    std::fflush(stdout);
    asio::co_spawn(ioc, listen(acceptor), asio::detached);
    ioc.run();
}
