// The per-thread recycling allocator behind request and response headers.

#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include "proxy/asio.hpp"
#include "proxy/field_alloc.hpp"

namespace {

using bb::proxy::field_allocator;
namespace detail = bb::proxy::detail;

TEST(FieldAlloc, AFreedBlockServesAnySizeOfItsClass) {
    field_allocator<char> a;
    char* p = a.allocate(10);
    std::memset(p, 'x', 10);
    a.deallocate(p, 10);
    // Same 64-byte class, larger request: the freed block comes back, whole.
    char* q = a.allocate(64);
    EXPECT_EQ(q, p);
    std::memset(q, 'y', 64);
    a.deallocate(q, 64);
    // Another class does not take it.
    char* r = a.allocate(65);
    EXPECT_NE(r, p);
    a.deallocate(r, 65);
}

TEST(FieldAlloc, LargeBlocksAndZeroBytesBypassTheCache) {
    field_allocator<char> a;
    const auto counts = [] {
        // (Element by element: GCC 12's UBSan takes std::begin of a thread_local's array
        // member, before the thread's first use of it, for a null pointer.)
        const detail::field_block_cache& fc = detail::field_blocks;
        std::vector<std::uint32_t> c;
        for (const auto n : fc.count) {
            c.push_back(n);
        }
        return c;
    };
    const auto before = counts();
    char* big = a.allocate(4096);
    std::memset(big, 0, 4096);
    a.deallocate(big, 4096);
    char* edge = a.allocate(513);
    a.deallocate(edge, 513);
    char* none = a.allocate(0);
    a.deallocate(none, 0);
    EXPECT_EQ(counts(), before) << "a block outside the classes was cached";
}

TEST(FieldAlloc, TheCacheIsBounded) {
    field_allocator<char> a;
    std::vector<char*> blocks;
    for (int i = 0; i < 2000; ++i) {
        blocks.push_back(a.allocate(100));
    }
    for (char* b : blocks) {
        a.deallocate(b, 100);
    }
    EXPECT_EQ(detail::field_blocks.count[1], detail::field_block_cache::max_free);
}

TEST(FieldAlloc, BlocksMayBeFreedOnAnotherThreadAndThreadsCleanUp) {
    field_allocator<char> a;
    std::vector<char*> made_there;
    std::thread t{[&] {
        field_allocator<char> b;
        for (int i = 0; i < 100; ++i) {
            made_there.push_back(b.allocate(200));
        }
        b.deallocate(b.allocate(30), 30);  // this thread's cache holds a block at exit
    }};
    t.join();
    const auto before = detail::field_blocks.count[3];
    for (char* p : made_there) {
        std::memset(p, 1, 200);
        a.deallocate(p, 200);
    }
    EXPECT_GE(detail::field_blocks.count[3], std::min<std::uint32_t>(before + 100, detail::field_block_cache::max_free));
}

TEST(FieldAlloc, BeastMessagesUseIt) {
    bb::proxy::request req{boost::beast::http::verb::post, "/v3/mail/send", 11};
    req.set("x-request-id", std::string(300, 'a'));
    req.set(boost::beast::http::field::host, "api.sendgrid.com");
    bb::proxy::request copy = req;
    req.erase("x-request-id");
    EXPECT_EQ(copy["x-request-id"].size(), 300u);
    EXPECT_EQ(copy.target(), "/v3/mail/send");
    std::set<std::string> names;
    for (const auto& f : copy) {
        names.insert(std::string{f.name_string()});
    }
    EXPECT_EQ(names, (std::set<std::string>{"x-request-id", "Host"}));
}

}  // namespace
