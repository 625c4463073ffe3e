// Bulk releases share one schedule per upstream (proxy/remediation.hpp).
#include "proxy/remediation.hpp"

#include <gtest/gtest.h>

namespace bb::proxy {
namespace {

using namespace std::chrono_literals;
using time_point = release_pacer::time_point;

TEST(release_pacer, two_bulk_releases_to_one_upstream_share_its_rate) {
    release_pacer p;
    const time_point t0{1h};
    // Two releases at 5/s interleaved, as two concurrent bulk calls would ask: 5/s in all.
    EXPECT_EQ(p.reserve("sendgrid", 5, t0), t0);
    EXPECT_EQ(p.reserve("sendgrid", 5, t0), t0 + 200ms);
    EXPECT_EQ(p.reserve("sendgrid", 5, t0 + 1ms), t0 + 400ms);
    EXPECT_EQ(p.reserve("sendgrid", 5, t0 + 2ms), t0 + 600ms);
    // Another upstream has its own schedule.
    EXPECT_EQ(p.reserve("mailgun", 5, t0 + 2ms), t0 + 2ms);
    EXPECT_EQ(p.reserve("mailgun", 5, t0 + 3ms), t0 + 202ms);
}

TEST(release_pacer, time_lost_waiting_on_the_upstream_is_not_caught_up_in_a_burst) {
    release_pacer p;
    const time_point t0{1h};
    EXPECT_EQ(p.reserve("sendgrid", 10, t0), t0);
    // The release took 2 s to answer: the next starts now, the one after 100 ms later.
    EXPECT_EQ(p.reserve("sendgrid", 10, t0 + 2s), t0 + 2s);
    EXPECT_EQ(p.reserve("sendgrid", 10, t0 + 2s), t0 + 2100ms);
}

TEST(release_pacer, each_release_spaces_the_next_by_its_own_rate) {
    release_pacer p;
    const time_point t0{1h};
    EXPECT_EQ(p.reserve("sendgrid", 1, t0), t0);            // slow call: the next slot 1 s later
    EXPECT_EQ(p.reserve("sendgrid", 100, t0), t0 + 1s);     // a fast call waits its turn
    EXPECT_EQ(p.reserve("sendgrid", 100, t0), t0 + 1010ms);
}

TEST(release_pacer, forgets_upstreams_whose_schedule_is_past) {
    release_pacer p;
    const time_point t0{1h};
    for (int i = 0; i < 100; ++i) {
        p.reserve("upstream-" + std::to_string(i), 10, t0);
    }
    EXPECT_EQ(p.tracked(), 100u);
    EXPECT_EQ(p.reserve("sendgrid", 10, t0 + 1s), t0 + 1s);
    EXPECT_EQ(p.tracked(), 1u);
}

}  // namespace
}  // namespace bb::proxy
