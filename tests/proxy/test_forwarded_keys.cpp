// Idempotency-Keys of requests sent live (proxy/forwarded_keys.hpp): remembered per key and
// agent, whichever route carried them, for a bounded time and number.
#include "proxy/forwarded_keys.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <map>

namespace bb::proxy {
namespace {

using namespace std::chrono_literals;

TEST(forwarded_keys, a_key_is_remembered_per_agent_whichever_route_for_its_memory) {
    forwarded_keys k{10, 1h};
    const std::int64_t t0 = 1'700'000'000'000;
    k.note("K", "agent-1", t0);
    EXPECT_EQ(k.sent_at("K", "agent-1", t0 + 1000), t0);
    EXPECT_FALSE(k.sent_at("K", "agent-2", t0));
    EXPECT_FALSE(k.sent_at("K2", "agent-1", t0));
    // Key and agent are told apart, not run together.
    k.note("a", "bc", t0);
    EXPECT_FALSE(k.sent_at("ab", "c", t0));
    EXPECT_FALSE(k.sent_at("K", "agent-1", t0 + 3'600'001)) << "past its memory";
    // A note later keeps it from the time of that note on.
    k.note("K", "agent-1", t0 + 3'000'000);
    k.note("X", "", t0 + 3'700'000);  // expires the first note of K, not the second
    EXPECT_EQ(k.sent_at("K", "agent-1", t0 + 3'700'000), t0 + 3'000'000);
}

// A store written by a version that scoped keys by route too: its digests are found under
// any of the route names in use then (a route renamed or reordered since, the retry comes
// on another), until they age out (by_route); not before that is set (a store that never
// had them), not after.
TEST(forwarded_keys, digests_by_route_from_before_are_found_under_every_route_until_they_age_out) {
    forwarded_keys k{10, 1h};
    const std::int64_t now = 1'000'000;
    k.restore({{forwarded_keys::digest_by_route("K", "mail-send", "agent-1"), now - 5000},
               {forwarded_keys::digest_by_route("L", "mail-send", "agent-1"), now - 100}},
              now);
    EXPECT_FALSE(k.sent_at("K", "agent-1", now)) << "no digests by route were announced";
    k.by_route(now + 3'600'000, {"crm", "mail-send", "crm"});
    EXPECT_EQ(k.sent_at("K", "agent-1", now), now - 5000);
    int announced = 0;
    EXPECT_EQ(k.sent_at_then("K", "agent-1", now, [&] { ++announced; }), now - 5000);
    EXPECT_EQ(announced, 0);
    EXPECT_FALSE(k.sent_at("K", "agent-2", now));
    // Sent again since the upgrade: the latest of the sends.
    k.note("K", "agent-1", now - 10);
    EXPECT_EQ(k.sent_at("K", "agent-1", now), now - 10);
    k.note("L", "agent-1", now - 9000);  // (a clock from before: the one by route is later)
    EXPECT_EQ(k.sent_at("L", "agent-1", now), now - 100);
    // Not under a name that was not in use then.
    k.by_route(now + 3'600'000, {"crm"});
    EXPECT_EQ(k.sent_at("L", "agent-1", now), now - 9000);
    // Past the time they age out by, digests by route are not asked any more.
    k.by_route(now - 1, {"crm", "mail-send"});
    EXPECT_EQ(k.sent_at("L", "agent-1", now), now - 9000);
}

// The two checks that keep a live send and a hold of one key apart: each asks its question
// of the other side after making its own mark, under one lock.
TEST(forwarded_keys, a_send_notes_before_it_asks_and_a_hold_announces_only_when_unsent) {
    forwarded_keys k{10, 1h};
    const std::int64_t t0 = 1'700'000'000'000;
    bool asked = false;
    const auto [before, held] = k.note_then("K", "a", t0, [&] {
        asked = true;
        return true;
    });
    EXPECT_TRUE(asked);
    EXPECT_TRUE(held) << "what may_hold() said";
    EXPECT_FALSE(before);
    int announced = 0;
    EXPECT_EQ(k.sent_at_then("K", "a", t0 + 5, [&] { ++announced; }), t0) << "the send is seen";
    EXPECT_EQ(announced, 0) << "no hold is announced for a key sent";
    EXPECT_FALSE(k.sent_at_then("K2", "a", t0 + 5, [&] { ++announced; }));
    EXPECT_EQ(announced, 1);
    // Forgotten (not sent after all): the next hold is announced.
    k.forget("K", "a", t0, before);
    EXPECT_FALSE(k.sent_at_then("K", "a", t0 + 6, [&] { ++announced; }));
    EXPECT_EQ(announced, 2);
}

TEST(forwarded_keys, the_least_recently_sent_go_first_past_the_bound) {
    forwarded_keys k{3, 1h};
    for (int i = 0; i < 5; ++i) {
        k.note("k" + std::to_string(i), "", 1000 + i);
    }
    EXPECT_EQ(k.size(), 3u);
    EXPECT_EQ(k.dropped_young(), 2u);
    EXPECT_FALSE(k.sent_at("k0", "", 2000));
    EXPECT_FALSE(k.sent_at("k1", "", 2000));
    EXPECT_TRUE(k.sent_at("k4", "", 2000));
    // One key sent again and again (an agent in a loop) is one key: it pushes nobody out.
    for (int i = 0; i < 100; ++i) {
        k.note("k4", "", 3000 + i);
    }
    EXPECT_EQ(k.size(), 3u);
    EXPECT_TRUE(k.sent_at("k2", "", 4000));
    EXPECT_TRUE(k.sent_at("k3", "", 4000));
}

// One send of a key at a time: a second begins only once the first's exchange is over, per
// agent. A hold of a key in flight is refused even when its note was dropped for the bound.
TEST(forwarded_keys, a_key_in_flight_is_one_send_and_no_hold) {
    forwarded_keys k{1, 1h};
    const auto first = k.begin_flight("k", "a");
    ASSERT_TRUE(first);
    EXPECT_FALSE(k.begin_flight("k", "a")) << "a second send beside the first";
    const auto other_agent = k.begin_flight("k", "b");
    EXPECT_TRUE(other_agent);
    k.note("k", "a", 1000);
    k.note("pushes-k-out", "", 1001);  // the bound is 1: k's note goes
    EXPECT_FALSE(k.sent_at("k", "a", 1002));
    bool expected_hold = false;
    EXPECT_TRUE(k.sent_at_then("k", "a", 1002, [&] { expected_hold = true; })) << "in flight: as good as sent";
    EXPECT_FALSE(expected_hold);
    k.end_flight(*first);
    EXPECT_FALSE(k.sent_at_then("k", "a", 1003, [&] { expected_hold = true; }));
    EXPECT_TRUE(expected_hold);
    EXPECT_TRUE(k.begin_flight("k", "a")) << "over: the next send may begin";
    k.end_flight(*other_agent);
}

TEST(forwarded_keys, a_send_that_went_nowhere_is_forgotten) {
    forwarded_keys k{10, 1h};
    EXPECT_FALSE(k.note("K", "", 1000));
    k.forget("K", "", 1000, std::nullopt);
    EXPECT_FALSE(k.sent_at("K", "", 1001));
    // Sent before: back to that send.
    k.note("K", "", 2000);
    const auto before = k.note("K", "", 3000);
    EXPECT_EQ(before, 2000);
    k.forget("K", "", 3000, before);
    EXPECT_EQ(k.sent_at("K", "", 3001), 2000);
    // Noted again meanwhile: that send stands.
    const auto b2 = k.note("K", "", 4000);
    k.note("K", "", 5000);
    k.forget("K", "", 4000, b2);
    EXPECT_EQ(k.sent_at("K", "", 5001), 5000);
}

// What the store is handed: every key noted, dropped or forgotten since the last changes(),
// as it stands then; a failed write hands them back for the next.
TEST(forwarded_keys, changes_carry_what_the_store_must_write) {
    forwarded_keys k{2, 1h};
    k.restore({}, 0);  // a store keeps them from here
    k.note("a", "", 1000);
    k.note("b", "", 1001);
    auto c = k.changes();
    ASSERT_EQ(c.size(), 2u);
    for (const auto& ch : c) {
        ASSERT_TRUE(ch.sent_ms);
        EXPECT_EQ(*ch.sent_ms, ch.digest == forwarded_keys::digest("a", "") ? 1000 : 1001);
    }
    EXPECT_TRUE(k.changes().empty()) << "nothing changed since";
    k.note("c", "", 1002);  // drops "a" (the bound): its row goes
    k.note("b", "", 1003);
    const auto before = k.note("d", "", 1004);  // drops "c"
    k.forget("d", "", 1004, before);  // went nowhere: its row goes
    c = k.changes();
    std::map<std::uint64_t, std::optional<std::int64_t>> got;
    for (const auto& ch : c) {
        got[ch.digest] = ch.sent_ms;
    }
    ASSERT_EQ(got.size(), 4u);
    EXPECT_EQ(got.at(forwarded_keys::digest("a", "")), std::nullopt);
    EXPECT_EQ(got.at(forwarded_keys::digest("b", "")), 1003);
    EXPECT_EQ(got.at(forwarded_keys::digest("c", "")), std::nullopt);
    EXPECT_EQ(got.at(forwarded_keys::digest("d", "")), std::nullopt);
    // A write that failed: the same keys again, as they stand at the next changes().
    k.retry(c);
    k.note("b", "", 1005);
    const auto again = k.changes();
    EXPECT_EQ(again.size(), 4u);
    for (const auto& ch : again) {
        if (ch.digest == forwarded_keys::digest("b", "")) {
            EXPECT_EQ(ch.sent_ms, 1005);
        }
    }
}

// At start: what the store had comes back, least recently sent dropped past the bound or
// the memory, and is not written back as a change.
TEST(forwarded_keys, restored_keys_are_remembered_within_their_bounds) {
    forwarded_keys k{2, 1h};
    const auto h = [](const char* key) { return forwarded_keys::digest(key, "agent"); };
    k.restore({{h("new"), 10'000'000}, {h("aged"), 10'000'000 - 3'600'001}, {h("mid"), 9'000'000}, {h("old"), 8'000'000}},
              10'000'000);
    EXPECT_EQ(k.sent_at("new", "agent", 10'000'000), 10'000'000);
    EXPECT_EQ(k.sent_at("mid", "agent", 10'000'000), 9'000'000);
    EXPECT_FALSE(k.sent_at("old", "agent", 10'000'000)) << "past the bound of 2";
    EXPECT_FALSE(k.sent_at("aged", "agent", 10'000'000)) << "past the memory";
    for (const auto& c : k.changes()) {
        EXPECT_FALSE(c.sent_ms) << "only the rows dropped for the bound are changes";
    }
}

// Without a store nothing is tracked for one (no set growing for the process's life); the
// store opened later (a reload) gets what was noted meanwhile, in the order of the sends.
TEST(forwarded_keys, keys_noted_before_a_store_opens_join_it_in_order) {
    forwarded_keys k{3, 1h};
    for (int i = 0; i < 100; ++i) {
        k.note("pre" + std::to_string(i), "", 5000 + i);
    }
    EXPECT_TRUE(k.changes().empty());
    EXPECT_EQ(k.size(), 3u);  // pre97..pre99
    // Saved ones are older (4000) and newer (6000) than those noted meanwhile.
    k.restore({{forwarded_keys::digest("old", ""), 4000}, {forwarded_keys::digest("new", ""), 6000}}, 6000);
    EXPECT_EQ(k.size(), 3u);
    EXPECT_TRUE(k.sent_at("new", "", 6000));
    EXPECT_TRUE(k.sent_at("pre99", "", 6000));
    EXPECT_TRUE(k.sent_at("pre98", "", 6000));
    EXPECT_FALSE(k.sent_at("pre97", "", 6000)) << "the least recently sent go first";
    EXPECT_FALSE(k.sent_at("old", "", 6000));
    std::size_t remembered = 0;
    for (const auto& c : k.changes()) {
        remembered += c.sent_ms.has_value();
    }
    EXPECT_EQ(remembered, 2u) << "pre98 and pre99 were never in the store";
}

// A process that dies between two saves: what its journal holds is replayed over the store's
// rows at the next start, each change as it was made (a forgotten send stays forgotten), and
// written to the store with the next save.
TEST(forwarded_keys, a_restart_after_a_crash_replays_the_journal_over_the_stores_rows) {
    const auto dir = std::filesystem::temp_directory_path() / ("bb_fkeys_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    const std::string base = (dir / "bb.db").string();
    const std::int64_t wall0 = 1'700'000'000'000;  // wall clock = steady + wall0 in the first process
    auto journal = [&](std::vector<store::key_journal::entry>* replay) {
        std::string error;
        auto j = store::key_journal::open(base, replay, &error);
        EXPECT_TRUE(j) << error;
        return j;
    };
    const auto h = [](const char* key) { return forwarded_keys::digest(key, ""); };
    {
        forwarded_keys k{10, 1h};
        std::vector<store::key_journal::entry> none;
        k.restore({}, 0, journal(&none), none, wall0);
        k.note("saved", "", 1000);
        int file = -1;
        ASSERT_EQ(k.changes(&file).size(), 1u);
        k.saved(file);  // "saved" is in the store now (the rows given below)
        k.note("a", "", 2000);
        const auto before = k.note("gone", "", 2001);
        k.note("saved", "", 2002);
        k.forget("gone", "", 2001, before);  // went nowhere
        // The process dies here: no save.
    }
    std::vector<store::key_journal::entry> replay;
    auto j = journal(&replay);
    ASSERT_EQ(replay.size(), 4u) << "the saved file was emptied; the four changes after it are left";
    forwarded_keys k{10, 1h};
    // The second process: its steady clock starts at 0, the wall clock 10 s on.
    const std::int64_t now = 5000;
    k.restore({{h("saved"), now - 9000}}, now, std::move(j), replay, wall0 + 10'000);
    EXPECT_EQ(k.sent_at("a", "", now), now - 8000) << "sent 8 s before the restart";
    EXPECT_EQ(k.sent_at("saved", "", now), now - 7998) << "the journal's later send";
    EXPECT_FALSE(k.sent_at("gone", "", now)) << "forgotten, as it was before the crash";
    std::map<std::uint64_t, std::optional<std::int64_t>> got;
    for (const auto& c : k.changes()) {
        got[c.digest] = c.sent_ms;
    }
    EXPECT_EQ(got.size(), 3u) << "what the journal changed goes to the store with the next save";
    EXPECT_EQ(got.at(h("a")), now - 8000);
    EXPECT_EQ(got.at(h("gone")), std::nullopt);
    std::filesystem::remove_all(dir);
}

// A send taken back in the journal (it went nowhere) is taken back only while it is the
// key's last: the store may hold a later send of the key whose own journal entry was lost (a
// full disk), and forgetting that one would let its retry be held and released a second time.
// Nor does an older send in the journal move the store's later one back.
TEST(forwarded_keys, a_replayed_take_back_never_forgets_a_later_send) {
    const std::int64_t wall_now = 1'700'000'100'000;
    const std::int64_t now = 50'000;  // steady; steady = now - (wall_now - wall)
    const auto h = [](const char* key) { return forwarded_keys::digest(key, ""); };
    const auto wall_of = [&](std::int64_t steady) { return wall_now - (now - steady); };
    std::vector<store::key_journal::entry> replay{
        {1, h("k"), wall_of(10'000), 0},                                             // sent at 10 s
        {2, h("k"), store::key_journal::forgotten, wall_of(10'000)},                 // went nowhere
        {3, h("gone"), wall_of(11'000), 0},
        {4, h("gone"), store::key_journal::forgotten, wall_of(11'000)},              // went nowhere
        {5, h("back"), wall_of(12'000), 0},
        {6, h("back"), wall_of(13'000), 0},
        {7, h("back"), wall_of(12'000), wall_of(13'000)},                            // 13 s taken back
    };
    forwarded_keys k{10, 1h};
    // The store has k sent again at 20 s (that send's entry never reached the journal).
    k.restore({{h("k"), 20'000}}, now, nullptr, replay, wall_now);
    EXPECT_EQ(k.sent_at("k", "", now), 20'000) << "the later send stays";
    EXPECT_FALSE(k.sent_at("gone", "", now));
    EXPECT_EQ(k.sent_at("back", "", now), 12'000) << "back to the send before the one taken back";
}

// A wall clock stepped against the steady one (NTP, a suspended VM) moves the offset the store
// and journal use, and every key is written again: rows on the old offset would age by the step.
TEST(forwarded_keys, a_clock_step_rewrites_every_key_at_the_new_offset) {
    forwarded_keys k{10, 1h};
    k.restore({}, 1000, nullptr, {}, 1'700'000'000'000);
    EXPECT_EQ(k.wall_offset(), 1'700'000'000'000 - 1000);
    k.note("a", "", 1000);
    k.note("b", "", 1001);
    EXPECT_EQ(k.changes(nullptr, k.wall_offset() + 400).size(), 2u);
    EXPECT_EQ(k.wall_offset(), 1'700'000'000'000 - 1000) << "under a second: left alone";
    EXPECT_TRUE(k.changes(nullptr, k.wall_offset() + 400).empty());
    const auto stepped = k.wall_offset() + 26 * 3'600'000LL;
    EXPECT_EQ(k.changes(nullptr, stepped).size(), 2u) << "every key again";
    EXPECT_EQ(k.wall_offset(), stepped);
}

// The same when the wall clock went back before the restart, so both sends look "later" than
// now: they are told apart before they are counted as now.
TEST(forwarded_keys, a_replayed_take_back_tells_sends_apart_after_the_wall_clock_went_back) {
    const std::int64_t wall_now = 1'700'000'100'000;
    const std::int64_t now = 50'000;
    const auto h = [](const char* key) { return forwarded_keys::digest(key, ""); };
    const auto wall_of = [&](std::int64_t steady) { return wall_now - (now - steady); };
    std::vector<store::key_journal::entry> replay{
        {1, h("k"), wall_of(55'000), 0},
        {2, h("k"), store::key_journal::forgotten, wall_of(55'000)},
    };
    forwarded_keys k{10, 1h};
    k.restore({{h("k"), 60'000}}, now, nullptr, replay, wall_now);  // the store's later send, 10 s "ahead"
    EXPECT_EQ(k.sent_at("k", "", now), now) << "the later send stays (counted as now)";
}

// Keys noted before the store opened (a reload that adds the first breaker opens it) go into
// the journal when it comes, so a crash before the first save does not forget them.
TEST(forwarded_keys, keys_noted_before_the_store_opens_are_journalled_when_it_does) {
    const auto dir = std::filesystem::temp_directory_path() / ("bb_fkeys_pre_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    const std::string base = (dir / "bb.db").string();
    {
        forwarded_keys k{10, 1h};
        k.note("early", "", 1000);
        std::vector<store::key_journal::entry> none;
        std::string error;
        auto j = store::key_journal::open(base, &none, &error);
        ASSERT_TRUE(j) << error;
        k.restore({}, 2000, std::move(j), none, 1'700'000'000'000);
        // The process dies before any save.
    }
    std::vector<store::key_journal::entry> replay;
    std::string error;
    auto j = store::key_journal::open(base, &replay, &error);
    ASSERT_TRUE(j) << error;
    ASSERT_EQ(replay.size(), 1u);
    EXPECT_EQ(replay[0].digest, forwarded_keys::digest("early", ""));
    EXPECT_EQ(replay[0].wall_ms, 1'700'000'000'000 - 1000);
    std::filesystem::remove_all(dir);
}

// The digest is what the store keeps across versions: the first 8 bytes of SHA-256 of
// key NUL NUL agent (of key NUL route NUL agent before keys were the agent's alone), not a
// hash that may change with the standard library.
TEST(forwarded_keys, the_digest_is_the_same_in_every_build) {
    EXPECT_EQ(forwarded_keys::digest("k", "a"), 0x679302841f5bbdabull);  // printf 'k\0\0a' | sha256sum
    EXPECT_EQ(forwarded_keys::digest_by_route("k", "r", "a"), 0xcf984c12d75afafeull);  // printf 'k\0r\0a' | sha256sum
}

}  // namespace
}  // namespace bb::proxy
