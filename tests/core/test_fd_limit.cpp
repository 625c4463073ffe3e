// The descriptor limit raised at start for what limits.max_connections needs (core/fd_limit.hpp).
#include "core/fd_limit.hpp"

#include <gtest/gtest.h>

#include <sys/resource.h>

namespace {

// Puts the soft limit back as it was, whatever the test did.
struct soft_limit_restored {
    rlimit was{};
    soft_limit_restored() { ::getrlimit(RLIMIT_NOFILE, &was); }
    ~soft_limit_restored() { ::setrlimit(RLIMIT_NOFILE, &was); }
};

rlim_t soft_limit() {
    rlimit r{};
    ::getrlimit(RLIMIT_NOFILE, &r);
    return r.rlim_cur;
}

TEST(fd_limit, the_default_config_needs_two_descriptors_a_connection_and_a_reserve) {
    EXPECT_EQ(bb::fds_needed(10'000, 64), 20'000u + 64 + 256);
    EXPECT_EQ(bb::fds_needed(1, 0), 2u + 256);
}

// A soft limit of 1024 (a shell's or a container's default) is raised to what is needed,
// as far as the hard limit allows, and never lowered.
TEST(fd_limit, the_soft_limit_is_raised_towards_the_hard_one_and_never_lowered) {
    soft_limit_restored guard;
    const rlim_t hard = guard.was.rlim_max;
    if (hard != RLIM_INFINITY && hard < 2048) {
        GTEST_SKIP() << "hard limit " << hard << " leaves nothing to raise";
    }
    rlimit low = guard.was;
    low.rlim_cur = 1024;
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);

    auto r = bb::raise_fd_limit(2000);
    EXPECT_TRUE(r.error.empty()) << r.error;
    EXPECT_EQ(r.before, 1024u);
    EXPECT_EQ(r.now, 2000u);
    EXPECT_EQ(soft_limit(), 2000u);

    r = bb::raise_fd_limit(1500);  // less than it is: left alone
    EXPECT_EQ(r.before, 2000u);
    EXPECT_EQ(r.now, 2000u);
    EXPECT_EQ(soft_limit(), 2000u);

    if (hard != RLIM_INFINITY) {
        r = bb::raise_fd_limit(static_cast<std::uint64_t>(hard) + 1000);  // more than the hard limit allows
        EXPECT_EQ(r.now, hard);
        EXPECT_EQ(r.hard, hard);
        EXPECT_EQ(soft_limit(), hard);
    }
}

}  // namespace
