// Name lookups bounded by a timeout (proxy/upstream.hpp resolve_bounded): addresses are
// answered as they are, names through getaddrinfo on a thread of its own.
#include "proxy/upstream.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

namespace bb::proxy {
namespace {

resolve_result resolve(const std::string& host, std::uint16_t port) {
    asio::io_context io;
    resolve_result out;
    bool finished = false;
    asio::co_spawn(io, resolve_bounded(io.get_executor(), host, port, std::chrono::seconds{10}),
                   [&](std::exception_ptr e, resolve_result r) {
                       EXPECT_FALSE(e);
                       out = std::move(r);
                       finished = true;
                   });
    io.run();
    EXPECT_TRUE(finished);
    return out;
}

TEST(resolve_bounded, an_address_is_its_own_answer) {
    const auto v4 = resolve("127.0.0.1", 8080);
    EXPECT_EQ(v4.error, "");
    ASSERT_EQ(v4.endpoints.size(), 1u);
    EXPECT_EQ(v4.endpoints[0], tcp::endpoint(asio::ip::make_address("127.0.0.1"), 8080));
    const auto v6 = resolve("::1", 443);
    EXPECT_EQ(v6.error, "");
    ASSERT_EQ(v6.endpoints.size(), 1u);
    EXPECT_EQ(v6.endpoints[0], tcp::endpoint(asio::ip::make_address("::1"), 443));
}

TEST(resolve_bounded, a_name_is_looked_up_and_carries_the_port) {
    // /etc/hosts names localhost on every machine the tests run on.
    const auto r = resolve("localhost", 8443);
    EXPECT_EQ(r.error, "");
    ASSERT_FALSE(r.endpoints.empty());
    for (const auto& ep : r.endpoints) {
        EXPECT_TRUE(ep.address().is_loopback()) << ep.address().to_string();
        EXPECT_EQ(ep.port(), 8443);
    }
}

}  // namespace
}  // namespace bb::proxy
