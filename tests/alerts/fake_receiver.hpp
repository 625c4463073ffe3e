#pragma once
// A tiny webhook receiver for alert tests: Beast on 127.0.0.1:0 (plain or TLS), its own
// thread. Each request is recorded and answered by a programmable reply: a status with
// headers and body, or a hang (read the request, never answer).
//
// Thread-safe: the server runs on its own thread; accessors lock.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace bb::test {

struct webhook_reply {
    unsigned status = 200;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    bool hang = false;
};

inline webhook_reply reply(unsigned status, std::string body = {}) {
    webhook_reply r;
    r.status = status;
    r.body = std::move(body);
    return r;
}
inline webhook_reply hang() {
    webhook_reply r;
    r.hang = true;
    return r;
}

struct webhook_request {
    std::string method;
    std::string target;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    std::chrono::steady_clock::time_point at;
    std::string header(std::string_view name) const;  // "" when absent; case-insensitive
};

class fake_receiver {
public:
    // index: 0-based number of the request.
    using handler = std::function<webhook_reply(std::size_t index, const webhook_request&)>;

    explicit fake_receiver(handler h = nullptr, std::string tls_cert = {}, std::string tls_key = {});
    ~fake_receiver();
    fake_receiver(const fake_receiver&) = delete;
    fake_receiver& operator=(const fake_receiver&) = delete;

    std::uint16_t port() const { return port_; }
    std::string url(std::string_view path = "/hook") const;
    void set_handler(handler h);
    // TLS: offer at most TLS 1.2 with only these suites (OpenSSL list syntax). Before use.
    void tls12_ciphers(const std::string& list);
    std::vector<webhook_request> requests() const;
    std::size_t count() const;
    // Waits (condition variable, no sleeping) until at least n requests arrived.
    bool wait_for_count(std::size_t n, std::chrono::milliseconds deadline = std::chrono::seconds{5}) const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
    std::uint16_t port_ = 0;
};

}  // namespace bb::test
