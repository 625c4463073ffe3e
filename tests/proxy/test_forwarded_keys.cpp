// Idempotency-Keys of requests sent live (proxy/forwarded_keys.hpp): remembered per key,
// route and agent, for a bounded time and number.
#include "proxy/forwarded_keys.hpp"

#include <gtest/gtest.h>

namespace bb::proxy {
namespace {

using namespace std::chrono_literals;

TEST(forwarded_keys, a_key_is_remembered_per_route_and_agent_for_its_memory) {
    forwarded_keys k{10, 1h};
    const std::int64_t t0 = 1'700'000'000'000;
    k.note("K", "mail-send", "agent-1", t0);
    EXPECT_EQ(k.sent_at("K", "mail-send", "agent-1", t0 + 1000), t0);
    EXPECT_FALSE(k.sent_at("K", "mail-send", "agent-2", t0));
    EXPECT_FALSE(k.sent_at("K", "crm", "agent-1", t0));
    EXPECT_FALSE(k.sent_at("K2", "mail-send", "agent-1", t0));
    // Key, route and agent are told apart, not run together.
    k.note("a", "bc", "", t0);
    EXPECT_FALSE(k.sent_at("ab", "c", "", t0));
    EXPECT_FALSE(k.sent_at("K", "mail-send", "agent-1", t0 + 3'600'001)) << "past its memory";
    // A note later keeps it from the time of that note on.
    k.note("K", "mail-send", "agent-1", t0 + 3'000'000);
    k.note("X", "mail-send", "", t0 + 3'700'000);  // expires the first note of K, not the second
    EXPECT_EQ(k.sent_at("K", "mail-send", "agent-1", t0 + 3'700'000), t0 + 3'000'000);
}

TEST(forwarded_keys, the_oldest_go_first_past_the_bound) {
    forwarded_keys k{3, 1h};
    for (int i = 0; i < 5; ++i) {
        k.note("k" + std::to_string(i), "r", "", 1000 + i);
    }
    EXPECT_EQ(k.size(), 3u);
    EXPECT_FALSE(k.sent_at("k0", "r", "", 2000));
    EXPECT_FALSE(k.sent_at("k1", "r", "", 2000));
    EXPECT_TRUE(k.sent_at("k4", "r", "", 2000));
}

}  // namespace
}  // namespace bb::proxy
