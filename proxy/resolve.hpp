#pragma once
// Name lookups bounded by a timeout, for the upstream pools and the alert senders. No Beast:
// alerts/ uses it too.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace bb::proxy {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// A name lookup bounded by `timeout`: getaddrinfo on a detached thread of its own (it
// cannot be interrupted, and Asio's resolver joins its thread when the io_context goes, so
// one lookup stuck on a dead nameserver would hold up shutdown). `error` is empty on
// success; `timed_out`/`cancelled` say why it ended early.
struct resolve_result {
    std::vector<tcp::endpoint> endpoints;
    std::string error;
    bool timed_out = false;
    bool cancelled = false;
    bool busy = false;  // refused here: too many lookups in flight (local overload)
};
asio::awaitable<resolve_result> resolve_bounded(asio::any_io_executor ex, const std::string& host, std::uint16_t port,
                                                std::chrono::milliseconds timeout);

// Whether a failure to open a connection (or a lookup's descriptor) is breakerbox's own
// limit, file descriptors, socket buffers or memory, rather than the destination's fault:
// answered 503 with retry-after, and no verdict on the destination's health.
inline bool own_resource_limit(const boost::system::error_code& ec) {
    return ec == asio::error::no_descriptors || ec == boost::system::errc::too_many_files_open_in_system ||
           ec == asio::error::no_buffer_space || ec == asio::error::no_memory;
}

}  // namespace bb::proxy
