#pragma once
// The process's limit on open file descriptors against what the config can need. Every
// client connection holds a descriptor and, while its request is forwarded, an upstream
// connection holds another; a soft limit of 1024 (the usual default for a shell or a
// container) would refuse connections far below limits.max_connections (10,000 by default)
// with EMFILE. Like HAProxy, which derives its descriptor limit from maxconn, breakerbox raises
// its soft limit towards the hard one at start, and says so when even the hard limit is short.

#include <cstddef>
#include <cstdint>
#include <string>

namespace bb {

// Descriptors the config can need at once: a client and an upstream connection per allowed
// client connection, the admin API's connections, and a reserve for the store, log files,
// listeners, alert sinks and DNS.
std::uint64_t fds_needed(std::size_t max_connections, std::size_t admin_max_connections);

struct fd_limit_result {
    std::uint64_t before = 0;  // the soft limit found
    std::uint64_t now = 0;     // the soft limit after (== before when not raised or not raisable)
    std::uint64_t hard = 0;
    std::string error;         // setrlimit's, when the raise failed
};

// Raises the soft RLIMIT_NOFILE to `needed`, or as far as the hard limit allows; never lowers it.
fd_limit_result raise_fd_limit(std::uint64_t needed);

}  // namespace bb
