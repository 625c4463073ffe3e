#pragma once
// Runs a breakerbox server in-process on 127.0.0.1:0 for a test, in front of whatever
// upstreams the test starts. Signals are left alone (tests of signals run the binary).

#include "config/config.hpp"
#include "proxy/server.hpp"

#include <gtest/gtest.h>

#include <poll.h>

#include <memory>
#include <optional>
#include <string>
#include <thread>

namespace bb::test {

class proxy_instance {
public:
    explicit proxy_instance(const std::string& json, const clock* time = nullptr,
                            std::chrono::milliseconds meter_save_every = std::chrono::seconds{1},
                            std::optional<std::chrono::milliseconds> keys_save_every = std::nullopt) {
        auto parsed = parse_config(json);
        if (!parsed.errors.empty()) {
            ADD_FAILURE() << "test config has errors:\n" << parsed.errors.to_string() << json;
            throw std::runtime_error("bad test config");
        }
        cfg_ = parsed.cfg;
        proxy::server_options opts{"", false, time, meter_save_every};
        if (keys_save_every) {
            opts.keys_save_every = *keys_save_every;
        } else if (meter_save_every != std::chrono::seconds{1}) {
            opts.keys_save_every = meter_save_every;  // a test that stretches the periodic saves stretches both
        }
        srv_ = std::make_unique<proxy::server>(cfg_, opts);
        srv_->start();
        port_ = srv_->bound_port(0);
        thread_ = std::thread{[this] { exit_code_ = srv_->run(); }};
    }
    ~proxy_instance() { stop(); }
    void stop() {
        if (thread_.joinable()) {
            srv_->request_stop();
            thread_.join();
        }
    }
    std::uint16_t port() const { return port_; }
    // What run() returned (after stop()).
    int exit_code() const { return exit_code_; }
    proxy::server& server() { return *srv_; }
    const std::shared_ptr<const config>& cfg() const { return cfg_; }

private:
    std::shared_ptr<const config> cfg_;
    std::unique_ptr<proxy::server> srv_;
    std::thread thread_;
    std::uint16_t port_ = 0;
    int exit_code_ = -1;
};

// A config with one listener on port 0, one upstream and one catch-all route "all" (plus
// "mail-send" for POST /v3/mail/send). `limits`, `upstream_extra` and `route_extra` are JSON
// fragments spliced in ("\"timeout\": \"300ms\"").
inline std::string make_config(const std::string& upstream_url, const std::string& limits = "",
                               const std::string& upstream_extra = "", const std::string& route_extra = "",
                               unsigned workers = 2) {
    std::string j = "{\"workers\": " + std::to_string(workers) +
                    ", \"listeners\": [{\"name\": \"test\", \"address\": \"127.0.0.1:0\"}],"
                    "\"limits\": {\"drain_timeout\": \"2s\"" +
                    (limits.empty() ? "" : ", " + limits) +
                    "},"
                    "\"upstreams\": [{\"name\": \"up\", \"url\": \"" +
                    upstream_url + "\"" + (upstream_extra.empty() ? "" : ", " + upstream_extra) +
                    "}],"
                    "\"routes\": [{\"name\": \"mail-send\", \"match\": {\"path_prefix\": \"/v3/mail/send\", "
                    "\"methods\": [\"POST\"]}, \"upstream\": \"up\"" +
                    (route_extra.empty() ? "" : ", " + route_extra) +
                    "},"
                    "{\"name\": \"all\", \"match\": {\"path_prefix\": \"/\"}, \"upstream\": \"up\"" +
                    (route_extra.empty() ? "" : ", " + route_extra) +
                    "}],"
                    "\"log\": {\"level\": \"warn\", \"access_log\": \"off\"}}";
    return j;
}

inline std::string local_url(std::uint16_t port) {
    return "http://127.0.0.1:" + std::to_string(port);
}

// Whether `done()` holds within about `ms` milliseconds: polls the condition, never waits
// for a time to pass when it holds (for what a server's own 1 s control tick does).
template <class Done>
bool wait_until(Done&& done, int ms) {
    for (int i = 0; i < ms && !done(); ++i) {
        pollfd none{};
        ::poll(&none, 0, 1);
    }
    return done();
}

}  // namespace bb::test
