#pragma once
// An in-process HTTP/1.1 (optionally TLS) upstream on 127.0.0.1:0 for tests. Each request
// is answered by a programmable behaviour: a normal response, raw bytes, a delay, a reset
// before the headers or in the middle of the body, or no answer at all. It records what
// it received so tests can assert on exactly what breakerbox forwarded.
//
// Thread-safe: the server runs on its own thread; accessors lock.

#include "proxy/asio.hpp"

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace bb::test {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using bb::proxy::request;
using bb::proxy::response;

struct behaviour {
    enum class kind { respond, raw, reset_before_headers, reset_mid_body, hang, close_after_request };
    kind what = kind::respond;
    response res;                       // for respond
    std::string raw;                    // for raw / reset_mid_body (bytes written before the reset)
    bool close_after = false;           // close the connection after answering
    std::chrono::milliseconds delay{0}; // before answering
};

behaviour respond(unsigned status, std::string body = {}, std::string content_type = "application/json");
behaviour respond_raw(std::string bytes, bool close_after = true);

struct received {
    request req;
    std::uint64_t connection = 0;  // which accepted connection carried it (1-based)
};

class fake_upstream {
public:
    using handler = std::function<behaviour(const request&)>;

    // tls_cert/tls_key: PEM files; empty for plain HTTP.
    explicit fake_upstream(handler h = nullptr, std::string tls_cert = {}, std::string tls_key = {});
    // TLS: at most this many plaintext bytes per record (OpenSSL's minimum is 512), so one
    // write can put several records on the wire at once. Before the first connection.
    void max_tls_record(std::size_t bytes);
    // TLS: offer TLS 1.2 alone with these cipher suites (OpenSSL names). Before the first
    // connection.
    void tls12_ciphers(const std::string& list);
    ~fake_upstream();

    std::uint16_t port() const { return port_; }
    void set_handler(handler h);

    std::vector<received> requests() const;
    std::size_t request_count() const;
    std::uint64_t connections_accepted() const;
    // Connections on which the fake saw the peer (breakerbox) close or reset.
    std::uint64_t connections_closed_by_peer() const;
    // Waits (with a deadline, no sleeping) until pred() holds; false on timeout.
    bool wait_for(const std::function<bool()>& pred, std::chrono::milliseconds deadline = std::chrono::seconds{5}) const;
    // Closes every idle keep-alive connection from the server side.
    void close_idle_connections();

private:
    struct impl;
    std::unique_ptr<impl> impl_;
    std::uint16_t port_ = 0;
};

// A blocking client for raw bytes, so tests can send exactly the malformed requests they
// mean to. Reads use a receive timeout, never a sleep.
class raw_client {
public:
    explicit raw_client(std::uint16_t port, std::chrono::milliseconds timeout = std::chrono::seconds{5});
    ~raw_client();
    void send(std::string_view bytes);
    // Reads one response; status 0 when the connection closed or timed out first.
    response read_response(bool head_request = false);
    // True when the server closed the connection (read returns EOF) within the timeout.
    bool closed_by_server();
    void shutdown_write();
    void close();
    int fd() const { return fd_; }
    std::string& buffer() { return buf_; }

private:
    int fd_ = -1;
    std::string buf_;
};

// One request through a fresh connection; convenience for the common case.
response http_request(std::uint16_t port, http::verb method, std::string target, std::string body = {},
                      std::vector<std::pair<std::string, std::string>> headers = {});

std::string temp_dir();  // a fresh directory under the build tree's test scratch space

// A TCP socket on 127.0.0.1 at a port of the kernel's choosing. Listening (`listening`):
// connections complete in the kernel and wait there until accept(), which gives up after
// 10 s, as recv() on what it accepts does (the test's own bound). Not listening: connections
// to it are refused, and no other test can take its port meanwhile. Closes with the object.
class loopback_socket {
public:
    explicit loopback_socket(bool listening);
    ~loopback_socket();
    loopback_socket(const loopback_socket&) = delete;
    loopback_socket& operator=(const loopback_socket&) = delete;
    int fd() const { return fd_; }
    std::uint16_t port() const { return port_; }
    int accept() const;  // -1 after 10 s without a connection

private:
    int fd_ = -1;
    std::uint16_t port_ = 0;
};

}  // namespace bb::test
