#include "core/fd_limit.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace bb {

std::uint64_t fds_needed(std::size_t max_connections, std::size_t admin_max_connections) {
    return 2 * static_cast<std::uint64_t>(max_connections) + admin_max_connections + 256;
}

fd_limit_result raise_fd_limit(std::uint64_t needed) {
    fd_limit_result r;
    rlimit lim{};
    if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) {
        r.error = std::strerror(errno);
        return r;
    }
    r.before = r.now = lim.rlim_cur;
    r.hard = lim.rlim_max;
    if (lim.rlim_cur == RLIM_INFINITY || lim.rlim_cur >= needed) {
        return r;
    }
    const rlim_t want = lim.rlim_max == RLIM_INFINITY ? static_cast<rlim_t>(needed)
                                                      : std::min<rlim_t>(static_cast<rlim_t>(needed), lim.rlim_max);
    if (want <= lim.rlim_cur) {
        return r;
    }
    rlimit raised = lim;
    raised.rlim_cur = want;
    if (::setrlimit(RLIMIT_NOFILE, &raised) != 0) {
        r.error = std::strerror(errno);
        return r;
    }
    r.now = want;
    return r;
}

}  // namespace bb
