// Name lookups bounded by a timeout (proxy/resolve.hpp).
#include "proxy/resolve.hpp"

#include "core/json_reader.hpp"

#include <boost/asio/ip/address.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include <netdb.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace bb::proxy {

namespace {
using error_code = boost::system::error_code;
inline constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
}  // namespace

namespace {

// One getaddrinfo on a detached thread (see resolve_bounded). The state lives as long
// as either side needs it; the thread only touches the state and libc, so a lookup that
// outlives its worker, or the process's shutdown, is harmless.
struct name_lookup {
    int event_fd = -1;  // written once, when the lookup is done
    std::mutex mu;
    bool finished = false;  // rc and endpoints are the lookup's (set before event_fd is written)
    std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
    int rc = 0;             // getaddrinfo's result
    std::vector<tcp::endpoint> endpoints;
    ~name_lookup() {
        if (event_fd >= 0) {
            ::close(event_fd);
        }
    }
};

// Bounds the threads a dead nameserver can pile up.
constexpr int max_lookups_in_flight = 64;
std::atomic<int> lookups_in_flight{0};

// Lookups in flight by "host:port": connects to one upstream share its lookup, so a burst
// of new connections (after a start or a reload, with an empty pool) is one getaddrinfo, not
// one each against the cap above. Nothing is cached past the lookup: the next connect asks
// again (the resolver's own TTLs apply). Waiters only wait on the eventfd (nobody reads it),
// so any number of them see its one write.
// A lookup is joined only while it is younger than the joiner's own timeout: one whose
// query was lost waits for the resolver's retry (5 s), and every connect after it would
// time out with it. The registry is never destroyed: a detached lookup thread may finish
// while the process's statics are going.
struct lookup_registry {
    std::mutex mu;
    std::unordered_map<std::string, std::weak_ptr<name_lookup>> running;
};
lookup_registry& shared_lookups() {
    static auto* r = new lookup_registry;
    return *r;
}

std::shared_ptr<name_lookup> start_name_lookup(const std::string& host, std::uint16_t port,
                                               std::chrono::milliseconds join_younger_than) {
    const std::string key = host + ":" + std::to_string(port);
    auto& reg = shared_lookups();
    std::lock_guard registry{reg.mu};
    if (const auto it = reg.running.find(key); it != reg.running.end()) {
        if (auto running = it->second.lock()) {
            std::lock_guard lock{running->mu};
            if (!running->finished && std::chrono::steady_clock::now() - running->started < join_younger_than) {
                return running;
            }
        }
        reg.running.erase(it);
    }
    if (lookups_in_flight.fetch_add(1) >= max_lookups_in_flight) {
        lookups_in_flight.fetch_sub(1);
        return nullptr;
    }
    auto st = std::make_shared<name_lookup>();
    st->event_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (st->event_fd < 0) {
        lookups_in_flight.fetch_sub(1);
        return nullptr;
    }
    try {
        std::thread{[st, host, port, key] {
            addrinfo hints{};
            hints.ai_family = AF_UNSPEC;
            hints.ai_socktype = SOCK_STREAM;
            hints.ai_protocol = IPPROTO_TCP;
            hints.ai_flags = AI_ADDRCONFIG;
            addrinfo* res = nullptr;
            const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
            std::vector<tcp::endpoint> eps;
            for (const addrinfo* a = res; rc == 0 && a != nullptr; a = a->ai_next) {
                // As Asio's resolver does: the socket address is copied as it is (port included).
                if ((a->ai_family == AF_INET || a->ai_family == AF_INET6) && a->ai_addrlen <= sizeof(sockaddr_in6)) {
                    tcp::endpoint ep;
                    std::memcpy(ep.data(), a->ai_addr, a->ai_addrlen);
                    ep.resize(a->ai_addrlen);
                    eps.push_back(ep);
                }
            }
            if (res != nullptr) {
                ::freeaddrinfo(res);
            }
            {
                std::lock_guard lock{st->mu};
                st->finished = true;
                st->rc = rc;
                st->endpoints = std::move(eps);
            }
            const std::uint64_t one = 1;
            [[maybe_unused]] const auto n = ::write(st->event_fd, &one, sizeof one);
            {
                auto& reg = shared_lookups();
                std::lock_guard registry{reg.mu};
                if (const auto it = reg.running.find(key); it != reg.running.end() && it->second.lock() == st) {
                    reg.running.erase(it);
                }
            }
            lookups_in_flight.fetch_sub(1);
        }}.detach();
    } catch (const std::system_error&) {
        lookups_in_flight.fetch_sub(1);
        return nullptr;
    }
    reg.running[key] = st;
    return st;
}

}  // namespace

asio::awaitable<resolve_result> resolve_bounded(asio::any_io_executor ex, const std::string& host, std::uint16_t port,
                                                std::chrono::milliseconds timeout) {
    resolve_result out;
    // An address needs no lookup (and no thread). Not one with a zone (`fe80::1%eth0`):
    // Asio reads an unknown zone name as a number where getaddrinfo refuses it.
    if (host.find('%') == std::string::npos) {
        error_code literal_ec;
        const auto literal = asio::ip::make_address(host, literal_ec);
        if (!literal_ec) {
            out.endpoints.emplace_back(literal, port);
            co_return out;
        }
    }
    auto lookup = start_name_lookup(host, port, timeout);
    if (!lookup) {
        out.error = "cannot resolve " + host + ": too many name lookups in flight";
        out.busy = true;
        co_return out;
    }
    struct wait_state {
        explicit wait_state(const asio::any_io_executor& ex, int fd) : done_fd(ex, fd), timer(ex) {}
        asio::posix::stream_descriptor done_fd;
        asio::steady_timer timer;
        bool done = false;
    };
    const int fd = ::dup(lookup->event_fd);
    if (fd < 0) {
        const int err = errno;  // (before anything else can change it)
        out.error = "cannot resolve " + host + ": " + std::strerror(err);
        out.busy = own_resource_limit({err, boost::system::system_category()});  // our own limit, not the name's
        co_return out;
    }
    auto st = std::make_shared<wait_state>(ex, fd);
    st->timer.expires_after(timeout);
    int rc = 0;
    // The lookup's answer, once it has one. The eventfd's readiness alone is not taken for
    // it: a lookup once answered "no address" for 127.0.0.1 in CI (rc 0 and no endpoints,
    // the defaults: woken before the thread's write, cause not found), so a wake-up without
    // the answer is waited past. The wait is armed before the answer is looked at, so a
    // write landing in between is seen either way (the reactor is edge-triggered).
    const auto take_answer = [&] {
        std::lock_guard lock{lookup->mu};
        if (!lookup->finished) {
            return false;
        }
        rc = lookup->rc;
        out.endpoints = lookup->endpoints;
        return true;
    };
    bool answered = false;
    for (int wakes = 0; !answered; ++wakes) {
        if (wakes == 16) {  // never seen: a signal that keeps firing unanswered is not waited on forever
            out.error = "cannot resolve " + host + ": the lookup signalled completion without an answer";
            co_return out;
        }
        if (wakes > 0) {
            spdlog::warn("name lookup of {}: woken before its answer; waiting on", host);
        }
        st->done = false;
        st->done_fd.async_wait(asio::posix::stream_descriptor::wait_read, [st](const error_code& e) {
            if (!e) {
                st->done = true;
                st->timer.cancel();
            }
        });
        if (take_answer()) {  // answered already (a fast lookup, or the write after a stray wake-up)
            st->done_fd.cancel();
            break;
        }
        auto [tec] = co_await st->timer.async_wait(use_tuple);
        st->done_fd.cancel();
        if (!st->done) {
            out.cancelled = tec == asio::error::operation_aborted;
            out.timed_out = !out.cancelled;
            out.error = "cannot resolve " + host + " within " + cfg::format_duration(timeout);
            co_return out;
        }
        answered = take_answer();
    }
    if (rc != 0 || out.endpoints.empty()) {
        out.error = "cannot resolve " + host + ": " + (rc != 0 ? ::gai_strerror(rc) : "no address");
    }
    co_return out;
}

}  // namespace bb::proxy
