#pragma once
// The admin API (docs/admin-api.md): a separate listener on the control thread, bearer
// tokens checked against SHA-256 digests in constant time, roles viewer < operator <
// admin, every mutation audited in the store before it is answered. It never runs on a
// worker, and the data plane never waits on it.

#include "proxy/asio.hpp"

#include <openssl/types.h>  // SSL

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace boost::asio::ssl {
class context;
}

namespace bb::proxy {

class server;

class admin_server {
public:
    admin_server(asio::io_context& control, server& srv);
    ~admin_server();
    // Binds admin.address; throws std::runtime_error naming the address on failure.
    void start();
    void stop();
    std::uint16_t port() const { return port_; }

private:
    asio::awaitable<void> accept_loop();
    asio::awaitable<void> session(tcp::socket socket);
    // `client`: the operator a verified client certificate names (name, role), if any.
    template <class Stream>
    asio::awaitable<void> serve(Stream& stream, SSL* ssl);  // ssl: null for a plain listener

    asio::io_context& control_;
    server& srv_;
    std::unique_ptr<tcp::acceptor> acceptor_;
    std::shared_ptr<asio::ssl::context> tls_;
    std::uint16_t port_ = 0;
};

// Prometheus text exposition (format 0.0.4) of everything breakerbox measures.
std::string render_metrics(server& srv);

}  // namespace bb::proxy
