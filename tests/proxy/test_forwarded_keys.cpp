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

TEST(forwarded_keys, the_least_recently_sent_go_first_past_the_bound) {
    forwarded_keys k{3, 1h};
    for (int i = 0; i < 5; ++i) {
        k.note("k" + std::to_string(i), "r", "", 1000 + i);
    }
    EXPECT_EQ(k.size(), 3u);
    EXPECT_EQ(k.dropped_young(), 2u);
    EXPECT_FALSE(k.sent_at("k0", "r", "", 2000));
    EXPECT_FALSE(k.sent_at("k1", "r", "", 2000));
    EXPECT_TRUE(k.sent_at("k4", "r", "", 2000));
    // One key sent again and again (an agent in a loop) is one key: it pushes nobody out.
    for (int i = 0; i < 100; ++i) {
        k.note("k4", "r", "", 3000 + i);
    }
    EXPECT_EQ(k.size(), 3u);
    EXPECT_TRUE(k.sent_at("k2", "r", "", 4000));
    EXPECT_TRUE(k.sent_at("k3", "r", "", 4000));
}

TEST(forwarded_keys, a_send_that_went_nowhere_is_forgotten) {
    forwarded_keys k{10, 1h};
    EXPECT_FALSE(k.note("K", "r", "", 1000));
    k.forget("K", "r", "", 1000, std::nullopt);
    EXPECT_FALSE(k.sent_at("K", "r", "", 1001));
    // Sent before: back to that send.
    k.note("K", "r", "", 2000);
    const auto before = k.note("K", "r", "", 3000);
    EXPECT_EQ(before, 2000);
    k.forget("K", "r", "", 3000, before);
    EXPECT_EQ(k.sent_at("K", "r", "", 3001), 2000);
    // Noted again meanwhile: that send stands.
    const auto b2 = k.note("K", "r", "", 4000);
    k.note("K", "r", "", 5000);
    k.forget("K", "r", "", 4000, b2);
    EXPECT_EQ(k.sent_at("K", "r", "", 5001), 5000);
}

}  // namespace
}  // namespace bb::proxy
