#include "store/database.hpp"

#include "core/sha256.hpp"
#include "tests/support/sqlite_exec.hpp"

#include <gtest/gtest.h>
#include <simdjson.h>
#include <sqlite3.h>

#include <atomic>
#include <csignal>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <set>
#include <poll.h>
#include <sstream>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using bb::store::database;
using bb::store::held_request;
using bb::store::held_state;
using bb::store::result;

namespace {

// A fresh directory per test, removed afterwards.
class store_db : public ::testing::Test {
protected:
    void SetUp() override {
        static std::atomic<int> n{0};
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        dir_ = fs::temp_directory_path() /
               ("bb_store_" + std::to_string(::getpid()) + "_" + std::to_string(n++) + "_" + info->name());
        fs::remove_all(dir_);
    }
    void TearDown() override {
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }

    bb::store::store_options options() const {
        bb::store::store_options o;
        o.path = (dir_ / "sub" / "breakerbox.db").string();
        return o;
    }

    std::unique_ptr<database> open(bb::store::store_options o) {
        std::string err;
        auto db = database::open(std::move(o), clock_, &err);
        EXPECT_TRUE(db) << err;
        return db;
    }
    std::unique_ptr<database> open() { return open(options()); }

    fs::path dir_;
    bb::manual_clock clock_;
};

// Starts an async store operation and waits (with a deadline) for its completion.
template <typename Start>
result wait_done(Start&& start) {
    auto p = std::make_shared<std::promise<result>>();
    auto f = p->get_future();
    start([p](const result& r) { p->set_value(r); });
    if (f.wait_for(20s) != std::future_status::ready) {
        ADD_FAILURE() << "store operation did not complete";
        return result::failure("timeout", "timeout");
    }
    return f.get();
}

held_request sample(std::string breaker_instance = "campaign-volume/spring", std::string body = "{\"to\":1}") {
    held_request r;
    r.method = "POST";
    r.target = "/v3/mail/send?x=1";
    r.headers = {{"content-type", "application/json"}, {"x-campaign-id", "spring"}};
    r.body = std::move(body);
    r.route = "mail-send";
    r.upstream = "sendgrid";
    r.agent = "agent-one";
    r.rule = "recipients-per-campaign";
    r.breaker_instance = std::move(breaker_instance);
    r.failure_mode = "volume-spike";
    r.request_id = "req-1";
    return r;
}

result hold(database& db, held_request r) {
    return wait_done([&](bb::store::done_fn d) { db.hold(std::move(r), std::move(d)); });
}
// n holds queued while the writer is paused, so they reach it together; their results.
std::vector<result> hold_together(database& db, const held_request& r, int n) {
    db.pause_writer(true);
    std::vector<std::future<result>> futures;
    for (int i = 0; i < n; ++i) {
        auto p = std::make_shared<std::promise<result>>();
        futures.push_back(p->get_future());
        db.hold(r, [p](const result& res) { p->set_value(res); });
    }
    db.pause_writer(false);
    std::vector<result> out;
    for (auto& f : futures) {
        if (f.wait_for(20s) != std::future_status::ready) {
            ADD_FAILURE() << "a hold never completed";
            return out;
        }
        out.push_back(f.get());
    }
    return out;
}
result begin(database& db, const std::string& t, bool force = false) {
    return wait_done([&](bb::store::done_fn d) { db.begin_release(t, "alice", force, std::move(d)); });
}
result finish(database& db, const std::string& t, bb::store::release_outcome o, int status = 202) {
    return wait_done([&](bb::store::done_fn d) { db.finish_release(t, o, status, "detail", std::move(d)); });
}
result discard(database& db, const std::string& t) {
    return wait_done([&](bb::store::done_fn d) { db.discard(t, "bob", "wrong segment", std::move(d)); });
}

held_state state_of(database& db, const std::string& t) {
    auto r = db.get(t);
    EXPECT_TRUE(r);
    return r ? r->state : held_state::held;
}

std::string random_bytes(std::size_t n, unsigned seed) {
    std::mt19937 rng{seed};
    std::string s(n, '\0');
    for (auto& c : s) {
        c = static_cast<char>(rng());
    }
    return s;
}

}  // namespace

TEST_F(store_db, opens_in_wal_mode_at_the_latest_schema_version) {
    auto db = open();
    ASSERT_TRUE(db);
    EXPECT_EQ(db->schema_version(), 13);  // 1: quarantine and breaker state, 2: audit and config versions, 3: hold keys,
                                          // 4: the clocks of the breaker state, 5: keys of pruned records, 6: rule meters,
                                          // 7: the reset policy of saved breaker state, 8: throttle admissions,
                                          // 9: keys of requests sent live, 10: the config file as last read,
                                          // 11: the sandbox a request was held under, 12: the floor of record ids,
                                          // 13: keys scoped by agent alone
    EXPECT_EQ(db->keys_by_agent_since_ms(),
              std::chrono::duration_cast<std::chrono::milliseconds>(clock_.wall_now().time_since_epoch()).count());
    EXPECT_TRUE(fs::exists(dir_ / "sub" / "breakerbox.db"));
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open_v2(db->path().c_str(), &raw, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
    sqlite3_stmt* s = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(raw, "PRAGMA journal_mode", -1, &s, nullptr), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(s), SQLITE_ROW);
    EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(s, 0)), "wal");
    sqlite3_finalize(s);
    sqlite3_close(raw);
}

// A hold with the client key and agent of an earlier one is a retry: the earlier ticket,
// nothing stored (within one group commit too). On another route too: a renamed route must
// not make a retry a second hold (and a second send). The same key of another agent, or no
// key, is another request.
TEST_F(store_db, a_retried_hold_with_the_same_key_is_the_first_hold) {
    auto db = open();
    auto keyed = sample();
    keyed.idempotency_key = "k-1";
    const auto first = hold(*db, keyed);
    ASSERT_TRUE(first.ok) << first.message;
    EXPECT_FALSE(first.duplicate);
    const auto again = hold(*db, keyed);
    ASSERT_TRUE(again.ok) << again.message;
    EXPECT_TRUE(again.duplicate);
    EXPECT_EQ(again.ticket, first.ticket);
    EXPECT_EQ(db->counts().held_count, 1u);
    auto changed = keyed;
    changed.body = "{\"to\":2}";
    const auto reused = hold(*db, changed);
    EXPECT_FALSE(reused.ok);
    EXPECT_EQ(reused.code, "idempotency_key_reused");
    EXPECT_NE(reused.message.find(first.ticket), std::string::npos) << reused.message;
    auto other_route = keyed;
    other_route.route = "mail-send-v2";
    const auto renamed = hold(*db, other_route);
    ASSERT_TRUE(renamed.ok) << renamed.message;
    EXPECT_TRUE(renamed.duplicate);
    EXPECT_EQ(renamed.ticket, first.ticket);
    EXPECT_EQ(renamed.breaker, "campaign-volume/spring") << "the breaker its first hold is under";
    auto other_agent = keyed;
    other_agent.agent = "agent-two";
    auto other_key = keyed;
    other_key.idempotency_key = "k-2";
    for (const auto& r : {other_agent, other_key, sample(), sample()}) {
        const auto res = hold(*db, r);
        ASSERT_TRUE(res.ok) << res.message;
        EXPECT_FALSE(res.duplicate);
    }
    EXPECT_EQ(db->counts().held_count, 5u);
    // Two copies in one batch: the second sees the first.
    keyed.idempotency_key = "k-3";
    const auto together = hold_together(*db, keyed, 3);
    ASSERT_EQ(together.size(), 3u);
    EXPECT_FALSE(together[0].duplicate);
    EXPECT_TRUE(together[1].duplicate && together[2].duplicate);
    EXPECT_EQ(together[2].ticket, together[0].ticket);
    EXPECT_EQ(db->counts().held_count, 6u);
    // Released, then retried: still the record that was sent, not a new hold.
    ASSERT_TRUE(begin(*db, first.ticket).ok);
    ASSERT_TRUE(finish(*db, first.ticket, bb::store::release_outcome::released).ok);
    keyed.idempotency_key = "k-1";
    const auto late = hold(*db, keyed);
    EXPECT_TRUE(late.duplicate);
    EXPECT_EQ(late.ticket, first.ticket);
    EXPECT_EQ(state_of(*db, first.ticket), held_state::released);
}

// A store from a version that scoped keys by route too may hold one key of one agent on
// two routes, as two requests. A retry of either is that one, not the other (which would
// refuse it as another request under the key), and a live send of either finds its own.
TEST_F(store_db, a_key_held_on_two_routes_before_keys_were_the_agents_finds_the_same_request) {
    auto a = sample();
    a.idempotency_key = "k-a";
    auto b = sample("campaign-volume/spring", "{\"to\":2}");
    b.route = "mail-batch";
    b.idempotency_key = "k-b";
    std::string ta, tb;
    {
        auto db = open();
        ta = hold(*db, a).ticket;
        tb = hold(*db, b).ticket;
        ASSERT_FALSE(ta.empty());
        ASSERT_FALSE(tb.empty());
        db->flush();
        sqlite3* raw = nullptr;
        ASSERT_EQ(sqlite3_open_v2(db->path().c_str(), &raw, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
        sqlite3_busy_timeout(raw, 5000);
        char* err = nullptr;
        const std::string sql = "UPDATE held_requests SET idem_key = 'k-a' WHERE ticket = '" + tb + "'";
        EXPECT_EQ(sqlite3_exec(raw, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
        sqlite3_free(err);
        sqlite3_close(raw);
    }
    auto db = open();
    b.idempotency_key = "k-a";
    for (const auto& [r, ticket] : {std::pair{a, ta}, std::pair{b, tb}}) {
        const auto again = hold(*db, r);
        ASSERT_TRUE(again.ok) << again.message;
        EXPECT_TRUE(again.duplicate);
        EXPECT_EQ(again.ticket, ticket);
        ASSERT_TRUE(db->may_hold_key("k-a", r.agent));
        const auto live = wait_done([&](bb::store::done_fn d) {
            db->earlier_hold("k-a", r.agent, r.method, r.target, r.body, std::move(d));
        });
        ASSERT_TRUE(live.ok) << live.message;
        EXPECT_TRUE(live.duplicate);
        EXPECT_EQ(live.ticket, ticket);
    }
    EXPECT_EQ(db->counts().held_count, 2u);
    // The first released and pruned: its retry still finds its tombstone, not the other's record.
    ASSERT_TRUE(begin(*db, ta).ok);
    ASSERT_TRUE(finish(*db, ta, bb::store::release_outcome::released).ok);
    clock_.advance(std::chrono::minutes{2});
    const auto now_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock_.wall_now().time_since_epoch()).count();
    const auto pruned = wait_done([&](bb::store::done_fn d) { db->prune(now_ms - 60'000, d); });
    ASSERT_TRUE(pruned.ok) << pruned.message;
    ASSERT_EQ(pruned.count, 1);
    const auto late = hold(*db, a);
    ASSERT_TRUE(late.ok) << late.message;
    EXPECT_TRUE(late.duplicate);
    EXPECT_EQ(late.ticket, ta);
    EXPECT_NE(late.message.find("pruned"), std::string::npos) << late.message;
    EXPECT_EQ(db->counts().held_count, 1u);
}

// A retry on a renamed route was held as a second record of the same request by versions
// before keys were the agent's: once one of the two is being sent, the other is refused.
TEST_F(store_db, a_request_held_twice_before_keys_were_the_agents_is_released_once) {
    auto db = open();
    auto first = sample();
    first.idempotency_key = "k-a";
    auto second = first;
    second.route = "mail-send-v2";
    second.idempotency_key = "k-z";
    const auto t1 = hold(*db, first).ticket;
    const auto t2 = hold(*db, second).ticket;
    ASSERT_FALSE(t1.empty());
    ASSERT_FALSE(t2.empty());
    db->flush();
    bb::test::sqlite_exec(db->path(), ("UPDATE held_requests SET idem_key = 'k-a' WHERE ticket = '" + t2 + "'").c_str());
    ASSERT_TRUE(begin(*db, t1).ok);
    auto twin = begin(*db, t2);
    EXPECT_FALSE(twin.ok);
    EXPECT_EQ(twin.code, "invalid_state");
    EXPECT_NE(twin.message.find(t1), std::string::npos) << twin.message;
    ASSERT_TRUE(finish(*db, t1, bb::store::release_outcome::released).ok);
    EXPECT_FALSE(begin(*db, t2, true).ok) << "not even forced";
    EXPECT_EQ(state_of(*db, t2), held_state::held);
    // Pruned, the first leaves its tombstone: still refused.
    clock_.advance(std::chrono::minutes{2});
    const auto now_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock_.wall_now().time_since_epoch()).count();
    ASSERT_EQ(wait_done([&](bb::store::done_fn d) { db->prune(now_ms - 60'000, d); }).count, 1);
    twin = begin(*db, t2);
    EXPECT_FALSE(twin.ok);
    EXPECT_NE(twin.message.find(t1), std::string::npos) << twin.message;
    // Past the tombstones' 7 days too: kept while the twin is held.
    clock_.advance(std::chrono::hours{24 * 8});
    const auto later_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock_.wall_now().time_since_epoch()).count();
    ASSERT_TRUE(wait_done([&](bb::store::done_fn d) { db->prune(later_ms - 60'000, d); }).ok);
    twin = begin(*db, t2);
    EXPECT_FALSE(twin.ok) << "released a second time once the first's tombstone went";
    EXPECT_NE(twin.message.find(t1), std::string::npos) << twin.message;
    // A retry finds the twin that was sent, not one discarded (which would tell the client
    // "not sent").
    EXPECT_TRUE(discard(*db, t2).ok);
    const auto retry = hold(*db, first);
    EXPECT_TRUE(retry.duplicate);
    EXPECT_EQ(retry.ticket, t1) << retry.message;
    // Another body under the key (refused when held now) is another request.
    auto other = sample("campaign-volume/spring", "{\"to\":3}");
    other.idempotency_key = "k-c";
    const auto t3 = hold(*db, other).ticket;
    ASSERT_FALSE(t3.empty());
    db->flush();
    bb::test::sqlite_exec(db->path(), ("UPDATE held_requests SET idem_key = 'k-a' WHERE ticket = '" + t3 + "'").c_str());
    EXPECT_TRUE(begin(*db, t3).ok);
}

// A read held with a key by a version before schema 13 keeps none after the upgrade: reads do
// not use their keys, and one would refuse a write under its key on any route.
TEST_F(store_db, a_read_held_with_a_key_before_schema_13_keeps_none) {
    auto read = sample();
    read.method = "GET";
    read.body.clear();
    read.route = "status";
    read.idempotency_key = "k-r";
    {
        auto db = open();
        ASSERT_TRUE(hold(*db, read).ok);
        db->flush();
        bb::test::sqlite_exec(db->path(),
                              "DELETE FROM schema_version WHERE version = 13; DROP INDEX held_requests_idem_agent; "
                              "CREATE INDEX held_requests_idem ON held_requests(idem_key, route, agent) "
                              "WHERE idem_key != ''");
    }
    auto db = open();
    EXPECT_EQ(db->schema_version(), 13);
    EXPECT_FALSE(db->may_hold_key("k-r", read.agent));
    auto write = sample();
    write.idempotency_key = "k-r";
    const auto held = hold(*db, write);
    ASSERT_TRUE(held.ok) << held.message;
    EXPECT_FALSE(held.duplicate);
}

// A retry that comes after its record was released and pruned (retention may be a minute,
// a platform's back-off hours) is still the first hold: nothing held, nothing sent again.
// The key is remembered 7 days after the prune.
TEST_F(store_db, a_retried_hold_after_its_record_was_pruned_is_still_the_first_hold) {
    auto db = open();
    auto keyed = sample();
    keyed.idempotency_key = "k-1";
    const auto first = hold(*db, keyed);
    ASSERT_TRUE(first.ok) << first.message;
    ASSERT_TRUE(begin(*db, first.ticket).ok);
    ASSERT_TRUE(finish(*db, first.ticket, bb::store::release_outcome::released).ok);
    auto now_ms = [&] {
        return std::chrono::duration_cast<std::chrono::milliseconds>(clock_.wall_now().time_since_epoch()).count();
    };
    clock_.advance(std::chrono::minutes{2});
    auto r = wait_done([&](bb::store::done_fn d) { db->prune(now_ms() - 60'000, d); });
    ASSERT_TRUE(r.ok) << r.message;
    ASSERT_EQ(r.count, 1);
    ASSERT_FALSE(db->get(first.ticket));
    const auto retry = hold(*db, keyed);
    ASSERT_TRUE(retry.ok) << retry.message;
    EXPECT_TRUE(retry.duplicate);
    EXPECT_EQ(retry.ticket, first.ticket);
    EXPECT_NE(retry.message.find("pruned"), std::string::npos) << retry.message;
    EXPECT_EQ(db->counts().held_count, 0u);
    auto changed = keyed;
    changed.body = "{\"to\":2}";
    const auto reused = hold(*db, changed);
    EXPECT_FALSE(reused.ok);
    EXPECT_EQ(reused.code, "idempotency_key_reused");
    // On a renamed route too.
    auto other_route = keyed;
    other_route.route = "mail-send-v2";
    const auto renamed = hold(*db, other_route);
    EXPECT_TRUE(renamed.duplicate);
    EXPECT_EQ(renamed.ticket, first.ticket);
    // After 7 days the key is free again.
    clock_.advance(std::chrono::hours{24 * 7} + std::chrono::minutes{1});
    r = wait_done([&](bb::store::done_fn d) { db->prune(now_ms() - 60'000, d); });
    ASSERT_TRUE(r.ok) << r.message;
    const auto fresh = hold(*db, keyed);
    ASSERT_TRUE(fresh.ok) << fresh.message;
    EXPECT_FALSE(fresh.duplicate);
    EXPECT_NE(fresh.ticket, first.ticket);
}

// A pruned newest record's id is never given again: a bulk release bounded by the ids it saw
// at its start must not take in a request held after it under a reused id.
TEST_F(store_db, a_pruned_records_id_is_never_given_again) {
    auto db = open();
    const auto kept = hold(*db, sample());
    const auto newest = hold(*db, sample());
    ASSERT_TRUE(kept.ok && newest.ok);
    bb::store::list_filter all;
    auto ids = [&] {
        std::map<std::string, std::int64_t> out;
        for (const auto& r : db->list(all)) {
            out[r.ticket] = r.id;
        }
        return out;
    };
    const auto newest_id = ids().at(newest.ticket);
    ASSERT_TRUE(discard(*db, newest.ticket).ok);
    clock_.advance(std::chrono::hours{24 * 8});
    const auto cutoff = std::chrono::duration_cast<std::chrono::milliseconds>(clock_.wall_now().time_since_epoch()).count();
    auto r = wait_done([&](bb::store::done_fn d) { db->prune(cutoff, d); });
    ASSERT_TRUE(r.ok) << r.message;
    ASSERT_EQ(r.count, 1);
    const auto later = hold(*db, sample());
    ASSERT_TRUE(later.ok);
    EXPECT_GT(ids().at(later.ticket), newest_id) << "the pruned record's id was given again";
    // Across a reopen too.
    db.reset();
    db = open();
    const auto after = hold(*db, sample());
    ASSERT_TRUE(after.ok);
    EXPECT_GT(ids().at(after.ticket), ids().at(later.ticket));
}

TEST_F(store_db, five_mib_binary_body_and_headers_round_trip_byte_identical) {
    auto db = open();
    auto req = sample("campaign-volume/spring", random_bytes(5 << 20, 7));
    req.body[0] = '\0';
    req.headers.emplace_back("x-dup", "1");
    req.headers.emplace_back("x-dup", std::string{"\0\xff\r\n", 4});
    req.received_ms = 1'700'000'000'123;
    const auto copy = req;
    const auto r = hold(*db, std::move(req));
    ASSERT_TRUE(r.ok) << r.message;
    ASSERT_EQ(r.ticket.size(), bb::store::ticket_length);
    db.reset();
    db = open();  // from disk, not from a cache
    auto back = db->get(r.ticket);
    ASSERT_TRUE(back);
    EXPECT_TRUE(back->body == copy.body);
    EXPECT_EQ(back->body_bytes, 5 << 20);
    EXPECT_EQ(back->headers, copy.headers);
    EXPECT_EQ(back->method, copy.method);
    EXPECT_EQ(back->target, copy.target);
    EXPECT_EQ(back->route, copy.route);
    EXPECT_EQ(back->upstream, copy.upstream);
    EXPECT_EQ(back->agent, copy.agent);
    EXPECT_EQ(back->rule, copy.rule);
    EXPECT_EQ(back->breaker, "campaign-volume");
    EXPECT_EQ(back->breaker_instance, copy.breaker_instance);
    EXPECT_EQ(back->failure_mode, copy.failure_mode);
    EXPECT_EQ(back->request_id, copy.request_id);
    EXPECT_EQ(back->received_ms, copy.received_ms);
    EXPECT_EQ(back->state, held_state::held);
    auto h = db->history(r.ticket);
    ASSERT_EQ(h.size(), 1u);
    EXPECT_EQ(h[0].from, "");
    EXPECT_EQ(h[0].to, "held");
}

TEST_F(store_db, concurrent_holds_from_16_threads_commit_in_fewer_transactions) {
    auto db = open();
    constexpr int threads = 16;
    constexpr int per_thread = 64;
    std::mutex mu;
    std::set<std::string> tickets;
    std::atomic<int> failures{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            std::vector<std::future<result>> futures;
            for (int i = 0; i < per_thread; ++i) {
                auto p = std::make_shared<std::promise<result>>();
                futures.push_back(p->get_future());
                std::string instance = "b";
                instance += std::to_string(t % 4);
                instance += "/k";
                auto req = sample(std::move(instance), std::string(2048, 'x'));
                db->hold(std::move(req), [p](const result& r) { p->set_value(r); });
            }
            for (auto& f : futures) {
                if (f.wait_for(30s) != std::future_status::ready) {
                    ++failures;
                    continue;
                }
                const auto r = f.get();
                if (!r.ok) {
                    ++failures;
                    continue;
                }
                std::lock_guard lock{mu};
                tickets.insert(r.ticket);
            }
        });
    }
    for (auto& th : pool) {
        th.join();
    }
    EXPECT_EQ(failures.load(), 0);
    EXPECT_EQ(tickets.size(), std::size_t{threads * per_thread});
    const auto st = db->stats();
    EXPECT_EQ(st.ops_committed, std::uint64_t{threads * per_thread});
    EXPECT_LT(st.transactions, std::uint64_t{threads * per_thread});
    EXPECT_EQ(db->counts().held_count, std::uint64_t{threads * per_thread});
    bb::store::list_filter f;
    f.limit = 1000;
    EXPECT_EQ(db->list(f).size(), 1000u);
}

TEST_F(store_db, everything_queued_while_the_writer_is_busy_commits_in_one_transaction) {
    auto db = open();
    db->pause_writer(true);
    std::vector<std::future<result>> futures;
    for (int i = 0; i < 100; ++i) {
        auto p = std::make_shared<std::promise<result>>();
        futures.push_back(p->get_future());
        db->hold(sample(), [p](const result& r) { p->set_value(r); });
    }
    const auto before = db->stats().transactions;
    db->pause_writer(false);
    for (auto& f : futures) {
        ASSERT_EQ(f.wait_for(20s), std::future_status::ready);
        EXPECT_TRUE(f.get().ok);
    }
    EXPECT_EQ(db->stats().transactions - before, 1u);
    EXPECT_EQ(db->stats().largest_batch, 100u);
}

TEST_F(store_db, one_transaction_per_operation_without_group_commit) {
    auto o = options();
    o.group_commit = false;
    auto db = open(o);
    const auto results = hold_together(*db, sample(), 10);
    ASSERT_EQ(results.size(), 10u);
    for (const auto& r : results) {
        EXPECT_TRUE(r.ok);
    }
    EXPECT_EQ(db->stats().transactions, 10u);
}

TEST_F(store_db, a_refused_operation_does_not_fail_the_rest_of_its_batch) {
    auto db = open();
    const auto t = hold(*db, sample()).ticket;
    db->pause_writer(true);
    std::vector<std::future<result>> futures;
    auto add = [&](auto start) {
        auto p = std::make_shared<std::promise<result>>();
        futures.push_back(p->get_future());
        start([p](const result& r) { p->set_value(r); });
    };
    add([&](auto d) { db->hold(sample(), d); });
    add([&](auto d) { db->finish_release(t, 200, true, "", d); });  // not releasing: refused
    add([&](auto d) { db->discard("q_nosuchticket", "bob", "x", d); });
    add([&](auto d) { db->hold(sample(), d); });
    db->pause_writer(false);
    std::vector<result> rs;
    for (auto& f : futures) {
        ASSERT_EQ(f.wait_for(20s), std::future_status::ready);
        rs.push_back(f.get());
    }
    EXPECT_TRUE(rs[0].ok);
    EXPECT_EQ(rs[1].code, "invalid_state");
    EXPECT_EQ(rs[2].code, "not_found");
    EXPECT_TRUE(rs[3].ok);
    EXPECT_TRUE(db->get(rs[0].ticket));
    EXPECT_TRUE(db->get(rs[3].ticket));
    EXPECT_EQ(state_of(*db, t), held_state::held);
    EXPECT_EQ(db->history(t).size(), 1u);
}

// Ops run without a savepoint each; one that fails after it has written rows (here its
// history insert is refused by a trigger a test adds) makes the batch run again with a
// savepoint per op: that hold leaves nothing behind and the rest of the batch commits.
TEST_F(store_db, an_operation_failing_after_it_wrote_is_undone_alone) {
    auto db = open();
    ASSERT_TRUE(hold(*db, sample()).ok);
    {
        sqlite3* raw = nullptr;
        ASSERT_EQ(sqlite3_open(db->path().c_str(), &raw), SQLITE_OK);
        sqlite3_busy_timeout(raw, 5000);
        char* err = nullptr;
        EXPECT_EQ(sqlite3_exec(raw,
                               "CREATE TRIGGER poison BEFORE INSERT ON quarantine_history "
                               "WHEN NEW.detail = 'held by poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
                               nullptr, nullptr, &err),
                  SQLITE_OK)
            << (err ? err : "");
        sqlite3_free(err);
        sqlite3_close(raw);
    }
    db->pause_writer(true);
    std::vector<std::future<result>> futures;
    for (const char* instance : {"a", "poison", "b"}) {
        auto p = std::make_shared<std::promise<result>>();
        futures.push_back(p->get_future());
        db->hold(sample(instance), [p](const result& r) { p->set_value(r); });
    }
    db->pause_writer(false);
    std::vector<result> rs;
    for (auto& f : futures) {
        ASSERT_EQ(f.wait_for(20s), std::future_status::ready);
        rs.push_back(f.get());
    }
    EXPECT_TRUE(rs[0].ok);
    EXPECT_FALSE(rs[1].ok);
    EXPECT_EQ(rs[1].code, "store_unavailable");
    EXPECT_TRUE(rs[2].ok);
    EXPECT_EQ(db->stats().batches_rerun, 1u);
    EXPECT_TRUE(db->get(rs[0].ticket));
    EXPECT_TRUE(db->get(rs[2].ticket));
    EXPECT_EQ(db->history(rs[0].ticket).size(), 1u);
    // Nothing of the poisoned hold: three records in all, counted as three.
    bb::store::list_filter all;
    EXPECT_EQ(db->list(all).size(), 3u);
    EXPECT_EQ(db->counts().held_count, 3u);
}

// Every (state, action) pair: allowed ones change state and append history, refused ones
// change nothing.
TEST_F(store_db, every_transition_is_allowed_or_refused_as_specified) {
    auto db = open();
    using bb::store::release_outcome;
    auto make = [&](held_state s) {
        const auto t = hold(*db, sample()).ticket;
        switch (s) {
            case held_state::held: break;
            case held_state::releasing: EXPECT_TRUE(begin(*db, t).ok); break;
            case held_state::released:
                EXPECT_TRUE(begin(*db, t).ok);
                EXPECT_TRUE(finish(*db, t, release_outcome::released).ok);
                break;
            case held_state::release_failed:
                EXPECT_TRUE(begin(*db, t).ok);
                EXPECT_TRUE(finish(*db, t, release_outcome::failed, 500).ok);
                break;
            case held_state::discarded: EXPECT_TRUE(discard(*db, t).ok); break;
            case held_state::outcome_unknown:
                EXPECT_TRUE(begin(*db, t).ok);
                EXPECT_TRUE(finish(*db, t, release_outcome::unknown, 0).ok);
                break;
        }
        EXPECT_EQ(state_of(*db, t), s);
        return t;
    };
    struct action {
        const char* name;
        held_state to;
        bool force;
        std::function<result(const std::string&)> run;
    };
    const std::vector<action> actions = {
        {"release", held_state::releasing, false, [&](const std::string& t) { return begin(*db, t); }},
        {"release --force", held_state::releasing, true, [&](const std::string& t) { return begin(*db, t, true); }},
        {"finish ok", held_state::released, false,
         [&](const std::string& t) { return finish(*db, t, release_outcome::released); }},
        {"finish failed", held_state::release_failed, false,
         [&](const std::string& t) { return finish(*db, t, release_outcome::failed, 503); }},
        {"finish unknown", held_state::outcome_unknown, false,
         [&](const std::string& t) { return finish(*db, t, release_outcome::unknown, 0); }},
        {"discard", held_state::discarded, false, [&](const std::string& t) { return discard(*db, t); }},
    };
    const held_state all[] = {held_state::held,      held_state::releasing,       held_state::released,
                              held_state::release_failed, held_state::discarded, held_state::outcome_unknown};
    int allowed = 0;
    for (auto from : all) {
        for (const auto& a : actions) {
            const auto t = make(from);
            const auto hist = db->history(t).size();
            const bool expect = bb::store::transition_allowed(from, a.to, a.force);
            const auto r = a.run(t);
            const std::string what = std::string{bb::store::to_string(from)} + " + " + a.name;
            if (expect) {
                ++allowed;
                EXPECT_TRUE(r.ok) << what << ": " << r.message;
                EXPECT_EQ(state_of(*db, t), a.to) << what;
                EXPECT_EQ(db->history(t).size(), hist + 1) << what;
                const auto h = db->history(t).back();
                EXPECT_EQ(h.from, bb::store::to_string(from)) << what;
                EXPECT_EQ(h.to, bb::store::to_string(a.to)) << what;
            } else {
                EXPECT_FALSE(r.ok) << what;
                EXPECT_EQ(r.code, "invalid_state") << what;
                EXPECT_FALSE(r.message.empty());
                EXPECT_EQ(state_of(*db, t), from) << what;
                EXPECT_EQ(db->history(t).size(), hist) << what;
            }
        }
    }
    // held: release(x2), discard; releasing: 3 finishes; release_failed: release(x2), discard;
    // outcome_unknown: release --force, discard.
    EXPECT_EQ(allowed, 11);
    EXPECT_FALSE(bb::store::transition_allowed(held_state::outcome_unknown, held_state::releasing, false));
}

TEST_F(store_db, a_released_request_is_never_released_again) {
    auto db = open();
    const auto t = hold(*db, sample()).ticket;
    ASSERT_TRUE(begin(*db, t).ok);
    ASSERT_TRUE(finish(*db, t, bb::store::release_outcome::released, 202).ok);
    for (bool force : {false, true}) {
        const auto r = begin(*db, t, force);
        EXPECT_EQ(r.code, "invalid_state");
        EXPECT_NE(r.message.find("never released again"), std::string::npos) << r.message;
    }
    auto rec = db->get(t);
    ASSERT_TRUE(rec);
    EXPECT_EQ(rec->release_attempts, 1u);
    EXPECT_EQ(rec->release_status, 202);
    EXPECT_TRUE(rec->released_ms);
    const auto path = db->path();
    db.reset();
    // The database itself refuses it too, whatever code writes to it.
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
    const std::string sql = "UPDATE held_requests SET state = 'releasing' WHERE ticket = '" + t + "'";
    EXPECT_EQ(sqlite3_exec(raw, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_CONSTRAINT);
    sqlite3_close(raw);
}

// A release's result recorded late (the store refused it for a while) names the attempt it
// belongs to: it never lands on a later release of the same record, whose replay may have
// been delivered (a "failed" there would make it releasable again).
TEST_F(store_db, a_late_result_lands_only_on_its_own_release_attempt) {
    auto db = open();
    const auto t = hold(*db, sample()).ticket;
    const auto first = begin(*db, t);
    ASSERT_TRUE(first.ok);
    EXPECT_EQ(first.count, 1);
    ASSERT_TRUE(finish(*db, t, bb::store::release_outcome::failed, 500).ok);
    ASSERT_TRUE(begin(*db, t).ok);  // released again: attempt 2, under way
    auto late = wait_done([&](bb::store::done_fn d) {
        db->finish_release(t, bb::store::release_outcome::failed, 500, "late", std::move(d), 1);
    });
    EXPECT_EQ(late.code, "invalid_state") << "attempt 1's result on attempt 2";
    EXPECT_EQ(db->get(t)->state, held_state::releasing);
    auto own = wait_done([&](bb::store::done_fn d) {
        db->finish_release(t, bb::store::release_outcome::released, 202, "", std::move(d), 2);
    });
    EXPECT_TRUE(own.ok) << own.message;
    EXPECT_EQ(db->get(t)->state, held_state::released);
}

// A record that was ever of unknown outcome stays so when a later attempt fails: the store
// decides on its own history, whatever state the releasing caller read before (a result
// recorded late can turn a `releasing` record outcome_unknown between that read and the
// next attempt).
TEST_F(store_db, a_failure_after_an_unknown_outcome_is_recorded_as_unknown) {
    auto db = open();
    const auto t = hold(*db, sample()).ticket;
    ASSERT_TRUE(begin(*db, t).ok);
    const auto unknown = finish(*db, t, bb::store::release_outcome::unknown, 0);
    ASSERT_TRUE(unknown.ok);
    EXPECT_EQ(unknown.code, "outcome_unknown");
    ASSERT_TRUE(wait_done([&](bb::store::done_fn d) { db->begin_release(t, "alice", true, std::move(d), std::nullopt, 1); }).ok);
    const auto failed = finish(*db, t, bb::store::release_outcome::failed, 429);
    ASSERT_TRUE(failed.ok) << failed.message;
    EXPECT_EQ(failed.code, "outcome_unknown");
    EXPECT_NE(failed.message.find("earlier release attempt"), std::string::npos) << failed.message;
    EXPECT_EQ(db->get(t)->state, held_state::outcome_unknown);
    EXPECT_EQ(begin(*db, t).code, "invalid_state") << "released again without force";
    // A record never of unknown outcome fails as it did.
    const auto t2 = hold(*db, sample()).ticket;
    ASSERT_TRUE(begin(*db, t2).ok);
    EXPECT_EQ(finish(*db, t2, bb::store::release_outcome::failed, 429).code, "release_failed");
    EXPECT_EQ(db->get(t2)->state, held_state::release_failed);
}

// Two operators look at a record of unknown outcome (1 attempt) and both force it: the first
// re-sends it and its outcome is unknown again; the second, decided on the 1 attempt it saw,
// must not send it a third time.
TEST_F(store_db, a_force_names_the_attempts_seen_and_a_stale_one_sends_nothing) {
    auto db = open();
    const auto t = hold(*db, sample()).ticket;
    ASSERT_TRUE(begin(*db, t).ok);
    ASSERT_TRUE(finish(*db, t, bb::store::release_outcome::unknown, 0).ok);
    auto force_seen = [&](std::uint32_t seen) {
        return wait_done([&](bb::store::done_fn d) {
            db->begin_release(t, "alice", true, std::move(d), std::nullopt, seen);
        });
    };
    EXPECT_EQ(force_seen(0).code, "invalid_state");  // fewer than there are: as stale
    ASSERT_TRUE(force_seen(1).ok);                  // operator A
    ASSERT_TRUE(finish(*db, t, bb::store::release_outcome::unknown, 0).ok);
    const auto second = force_seen(1);              // operator B, on what it saw before A
    EXPECT_EQ(second.code, "invalid_state");
    EXPECT_NE(second.message.find("has had 2 release attempts, not 1"), std::string::npos) << second.message;
    auto rec = db->get(t);
    ASSERT_TRUE(rec);
    EXPECT_EQ(rec->state, held_state::outcome_unknown);
    EXPECT_EQ(rec->release_attempts, 2u);
    EXPECT_TRUE(force_seen(2).ok);  // looked again: it is the operator's call
    EXPECT_EQ(db->get(t)->release_attempts, 3u);
}

TEST_F(store_db, releasing_found_at_open_becomes_outcome_unknown_and_needs_force) {
    std::string t;
    std::string kept;
    {
        auto db = open();
        t = hold(*db, sample()).ticket;
        kept = hold(*db, sample()).ticket;
        ASSERT_TRUE(begin(*db, t).ok);
        EXPECT_EQ(db->recovered_at_open(), 0u);
        // Closed without finish_release: as if the process died while the replay was out.
    }
    auto db = open();
    EXPECT_EQ(db->recovered_at_open(), 1u);
    EXPECT_EQ(state_of(*db, t), held_state::outcome_unknown);
    EXPECT_EQ(state_of(*db, kept), held_state::held);
    const auto h = db->history(t);
    ASSERT_EQ(h.size(), 3u);
    EXPECT_EQ(h[2].from, "releasing");
    EXPECT_EQ(h[2].to, "outcome_unknown");
    EXPECT_EQ(h[2].actor, "breakerbox");
    EXPECT_EQ(begin(*db, t).code, "invalid_state");
    EXPECT_TRUE(begin(*db, t, true).ok);
    EXPECT_EQ(db->get(t)->release_attempts, 2u);
    EXPECT_EQ(db->counts().held_count, 2u);
}

TEST_F(store_db, a_second_open_of_the_same_file_fails_at_once_with_a_clear_error) {
    auto db = open();
    std::string err;
    auto second = database::open(options(), clock_, &err);
    EXPECT_FALSE(second);
    EXPECT_NE(err.find("already in use"), std::string::npos) << err;
    EXPECT_NE(err.find("pid " + std::to_string(::getpid())), std::string::npos) << err;
    EXPECT_NE(err.find(db->path()), std::string::npos) << err;

    // And from another process, as a second breakerbox would (it prints and exits 1).
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        ::close(fds[0]);
        std::string why;
        auto other = database::open(options(), clock_, &why);
        if (!why.empty()) {
            (void)!::write(fds[1], why.data(), why.size());
        }
        ::_exit(other ? 0 : 1);
    }
    ::close(fds[1]);
    std::string child_err;
    char buf[512];
    for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) {
        child_err.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fds[0]);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 1);
    EXPECT_NE(child_err.find("already in use"), std::string::npos) << child_err;

    db.reset();  // the lock goes with the store
    EXPECT_TRUE(open());
}

// A lock file deleted by hand (it holds a pid, like a pidfile) does not let a second
// breakerbox in: the database file itself is locked too.
TEST_F(store_db, a_deleted_lock_file_does_not_let_a_second_open_in) {
    auto db = open();
    ASSERT_TRUE(std::filesystem::remove(db->path() + ".lock"));
    std::string err;
    EXPECT_FALSE(database::open(options(), clock_, &err));
    EXPECT_NE(err.find("already in use"), std::string::npos) << err;
    EXPECT_NE(err.find("deleted or replaced"), std::string::npos) << err;
    // Another process (a second breakerbox) finds the database file itself locked.
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        const int fd = ::open(db->path().c_str(), O_RDWR | O_CLOEXEC);
        ::_exit(fd >= 0 && ::flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0) << "the database file is not locked: a second process could open the store";
    // The first store still writes (the refused opens took none of its locks).
    EXPECT_TRUE(hold(*db, sample()).ok);
    db.reset();
    EXPECT_TRUE(open());
}

// SQLite in WAL mode writes on into a file that was renamed or deleted under it: every hold
// would be answered 202 into a file the next start cannot find. The store refuses instead,
// and takes writes again once the file is back at its path.
TEST_F(store_db, a_store_whose_file_was_moved_or_deleted_takes_no_more_writes) {
    auto db = open();
    const auto first = hold(*db, sample());
    ASSERT_TRUE(first.ok) << first.message;
    const std::string path = db->path();
    std::filesystem::rename(path, path + ".moved");
    const auto refused = hold(*db, sample());
    EXPECT_FALSE(refused.ok);
    EXPECT_EQ(refused.code, "store_unavailable");
    EXPECT_NE(refused.message.find("deleted, moved or replaced"), std::string::npos) << refused.message;
    EXPECT_EQ(db->counts().held_count, 1u) << "nothing was counted for the refused hold";
    std::filesystem::rename(path + ".moved", path);
    EXPECT_TRUE(hold(*db, sample()).ok) << "the same file back at its path";
    // Deleted (a cleanup job, `rm -rf var/`): the same.
    std::filesystem::copy_file(path, path + ".copy");
    std::filesystem::remove(path);
    const auto lost = hold(*db, sample());
    EXPECT_EQ(lost.code, "store_unavailable") << lost.message;
    db.reset();
    std::filesystem::rename(path + ".copy", path);
}

TEST_F(store_db, injected_disk_full_fails_the_batch_keeps_old_records_and_recovers) {
    auto db = open();
    const auto first = hold(*db, sample());
    ASSERT_TRUE(first.ok);
    for (auto where : {bb::store::fault_point::commit, bb::store::fault_point::first_write}) {
        for (int code : {SQLITE_FULL, SQLITE_IOERR_WRITE}) {
            db->inject_write_fault(code, 1, where);
            db->pause_writer(true);
            std::vector<std::future<result>> futures;
            auto add = [&](auto start) {
                auto p = std::make_shared<std::promise<result>>();
                futures.push_back(p->get_future());
                start([p](const result& r) { p->set_value(r); });
            };
            add([&](auto d) { db->hold(sample(), d); });
            add([&](auto d) { db->hold(sample(), d); });
            add([&](auto d) { db->begin_release(first.ticket, "alice", false, d); });
            db->pause_writer(false);
            for (auto& f : futures) {
                ASSERT_EQ(f.wait_for(20s), std::future_status::ready);
                const auto r = f.get();
                EXPECT_EQ(r.code, "store_unavailable") << r.message;
            }
            // Nothing half-written: the old record is intact, the counters did not move.
            EXPECT_EQ(state_of(*db, first.ticket), held_state::held);
            EXPECT_EQ(db->history(first.ticket).size(), 1u);
            EXPECT_EQ(db->counts().held_count, 1u);
            bb::store::list_filter f;
            EXPECT_EQ(db->list(f).size(), 1u);
        }
    }
    EXPECT_EQ(db->stats().batches_failed, 4u);
    // The fault is gone: writes succeed again without anyone intervening.
    const auto later = hold(*db, sample());
    EXPECT_TRUE(later.ok) << later.message;
    EXPECT_TRUE(begin(*db, first.ticket).ok);
    EXPECT_EQ(db->counts().held_count, 2u);
}

// A batch that fails (a flood of large holds on a nearly full disk) must not take the breaker
// state and the audit entry queued with it down too: they run again on their own, while the
// holds stay failed (503, fail closed). (The case where they must not run again, a failed
// commit whose seal failed too, so that it could come back, cannot be injected here.)
TEST_F(store_db, a_failed_batch_still_saves_its_breaker_state_and_audit_entry) {
    auto db = open();
    for (auto where : {bb::store::fault_point::first_write, bb::store::fault_point::commit}) {
        db->inject_write_fault(SQLITE_FULL, 1, where);
        db->pause_writer(true);
        std::vector<std::future<result>> holds;
        auto add = [&](std::vector<std::future<result>>& to, auto start) {
            auto p = std::make_shared<std::promise<result>>();
            to.push_back(p->get_future());
            start([p](const result& r) { p->set_value(r); });
        };
        add(holds, [&](auto d) { db->hold(sample(), d); });
        std::vector<std::future<result>> essential;
        bb::breakers::instance_snapshot open;
        open.instance = open.breaker = "campaign-volume";
        open.st = bb::breakers::state::open;
        open.opened_at = clock_.now();
        add(essential, [&](auto d) { db->save_breaker_state({open}, d); });
        add(holds, [&](auto d) { db->hold(sample(), d); });
        bb::store::audit_entry e;
        e.actor = "oncall";
        e.method = "POST";
        e.path = "/v1/breakers/campaign-volume/trip";
        e.target = "campaign-volume";
        add(essential, [&](auto d) { db->append_audit(e, d); });
        db->pause_writer(false);
        for (auto& f : holds) {
            ASSERT_EQ(f.wait_for(20s), std::future_status::ready);
            EXPECT_EQ(f.get().code, "store_unavailable");
        }
        for (auto& f : essential) {
            ASSERT_EQ(f.wait_for(20s), std::future_status::ready);
            const auto r = f.get();
            EXPECT_TRUE(r.ok) << r.code << ": " << r.message;
        }
        bb::store::list_filter all;
        EXPECT_EQ(db->list(all).size(), 0u) << "a hold of the failed batch was saved";
        std::string err;
        const auto back = db->load_breaker_state(clock_, &err);
        ASSERT_TRUE(back) << err;
        ASSERT_EQ(back->size(), 1u);
        EXPECT_EQ((*back)[0].instance, "campaign-volume");
        db->save_breaker_state({}, [](const result&) {});
    }
    EXPECT_EQ(db->stats().batches_failed, 2u);
}

// SQLite rolls a transaction back by itself on some errors; an op that ignored such an error
// must not leave the rest of its batch committing statement by statement.
TEST_F(store_db, a_transaction_rolled_back_under_an_op_loses_the_whole_batch_not_part_of_it) {
    auto db = open();
    const auto first = hold(*db, sample());
    ASSERT_TRUE(first.ok);
    db->inject_write_fault(SQLITE_FULL, 1, bb::store::fault_point::silent_rollback);
    const auto results = hold_together(*db, sample(), 3);
    ASSERT_EQ(results.size(), 3u);
    for (const auto& r : results) {
        EXPECT_EQ(r.code, "store_unavailable");
    }
    bb::store::list_filter f;
    EXPECT_EQ(db->list(f).size(), 1u) << "a hold of the lost batch was committed on its own";
    EXPECT_EQ(db->counts().held_count, 1u);
    const auto later = hold(*db, sample());
    EXPECT_TRUE(later.ok) << later.message;
    EXPECT_EQ(db->list(f).size(), 2u);
}

// A real write failure, not an injected one: a child process caps its file size
// (RLIMIT_FSIZE, so SQLite's writes fail with EFBIG), holds until the store refuses, then
// lifts the cap and holds again. Run in a child so the cap cannot touch this process.
TEST_F(store_db, a_real_write_failure_answers_store_unavailable_and_recovers) {
    const auto o = options();
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        std::signal(SIGXFSZ, SIG_IGN);
        bb::manual_clock c;
        std::string err;
        auto db = database::open(o, c, &err);
        if (!db) {
            ::_exit(10);
        }
        auto sync_hold = [&](std::string body) {
            auto p = std::make_shared<std::promise<result>>();
            auto f = p->get_future();
            db->hold(sample("b/k", std::move(body)), [p](const result& r) { p->set_value(r); });
            return f.wait_for(20s) == std::future_status::ready ? f.get() : result::failure("timeout", "");
        };
        const auto first = sync_hold("small");
        if (!first.ok) {
            ::_exit(11);
        }
        rlimit lim{};
        ::getrlimit(RLIMIT_FSIZE, &lim);
        rlimit capped = lim;
        capped.rlim_cur = 4 << 20;  // the WAL cannot grow past 4 MiB
        ::setrlimit(RLIMIT_FSIZE, &capped);
        const auto big = sync_hold(std::string(8 << 20, 'z'));
        if (big.code != "store_unavailable") {
            ::_exit(12);
        }
        if (!db->get(first.ticket)) {
            ::_exit(13);
        }
        ::setrlimit(RLIMIT_FSIZE, &lim);
        const auto again = sync_hold(std::string(1 << 20, 'y'));
        if (!again.ok || !db->get(again.ticket) || db->counts().held_count != 2) {
            ::_exit(14);
        }
        ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0) << "child failed at step " << WEXITSTATUS(status);
}

// A VFS over the default one whose WAL fsync can be made to fail: the data was written
// (to the page cache, which is what a copy of the files reads), its durability was not
// confirmed. Every other call goes straight through.
namespace failsync {

std::atomic<int> wal_syncs_to_fail{0};
sqlite3_vfs* real = nullptr;

struct file {
    sqlite3_file base;
    sqlite3_file* inner;  // the real file, allocated right after this struct
    bool wal;
};

sqlite3_file* in(sqlite3_file* f) { return reinterpret_cast<file*>(f)->inner; }

int x_close(sqlite3_file* f) {
    const int rc = in(f)->pMethods ? in(f)->pMethods->xClose(in(f)) : SQLITE_OK;
    return rc;
}
int x_read(sqlite3_file* f, void* b, int n, sqlite3_int64 o) { return in(f)->pMethods->xRead(in(f), b, n, o); }
int x_write(sqlite3_file* f, const void* b, int n, sqlite3_int64 o) { return in(f)->pMethods->xWrite(in(f), b, n, o); }
int x_truncate(sqlite3_file* f, sqlite3_int64 n) { return in(f)->pMethods->xTruncate(in(f), n); }
int x_sync(sqlite3_file* f, int flags) {
    if (reinterpret_cast<file*>(f)->wal) {
        int left = wal_syncs_to_fail.load();
        while (left > 0 && !wal_syncs_to_fail.compare_exchange_weak(left, left - 1)) {
        }
        if (left > 0) {
            return SQLITE_IOERR_FSYNC;
        }
    }
    return in(f)->pMethods->xSync(in(f), flags);
}
int x_size(sqlite3_file* f, sqlite3_int64* n) { return in(f)->pMethods->xFileSize(in(f), n); }
int x_lock(sqlite3_file* f, int l) { return in(f)->pMethods->xLock(in(f), l); }
int x_unlock(sqlite3_file* f, int l) { return in(f)->pMethods->xUnlock(in(f), l); }
int x_reserved(sqlite3_file* f, int* r) { return in(f)->pMethods->xCheckReservedLock(in(f), r); }
int x_control(sqlite3_file* f, int op, void* a) { return in(f)->pMethods->xFileControl(in(f), op, a); }
int x_sector(sqlite3_file* f) { return in(f)->pMethods->xSectorSize(in(f)); }
int x_device(sqlite3_file* f) { return in(f)->pMethods->xDeviceCharacteristics(in(f)); }
int x_shm_map(sqlite3_file* f, int i, int sz, int ext, void volatile** p) {
    return in(f)->pMethods->xShmMap(in(f), i, sz, ext, p);
}
int x_shm_lock(sqlite3_file* f, int o, int n, int fl) { return in(f)->pMethods->xShmLock(in(f), o, n, fl); }
void x_shm_barrier(sqlite3_file* f) { in(f)->pMethods->xShmBarrier(in(f)); }
int x_shm_unmap(sqlite3_file* f, int del) { return in(f)->pMethods->xShmUnmap(in(f), del); }
int x_fetch(sqlite3_file* f, sqlite3_int64 o, int n, void** p) { return in(f)->pMethods->xFetch(in(f), o, n, p); }
int x_unfetch(sqlite3_file* f, sqlite3_int64 o, void* p) { return in(f)->pMethods->xUnfetch(in(f), o, p); }

const sqlite3_io_methods methods = {3,          x_close,   x_read,     x_write,      x_truncate,    x_sync,
                                    x_size,     x_lock,    x_unlock,   x_reserved,   x_control,     x_sector,
                                    x_device,   x_shm_map, x_shm_lock, x_shm_barrier, x_shm_unmap, x_fetch,
                                    x_unfetch};

int x_open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* f, int flags, int* out) {
    auto* me = reinterpret_cast<file*>(f);
    me->inner = reinterpret_cast<sqlite3_file*>(me + 1);
    me->wal = (flags & SQLITE_OPEN_WAL) != 0;
    const int rc = real->xOpen(real, name, me->inner, flags, out);
    // SQLite calls xClose only when pMethods is set: set it only for a file that opened.
    me->base.pMethods = rc == SQLITE_OK && me->inner->pMethods ? &methods : nullptr;
    return rc;
}

const char* install() {
    static sqlite3_vfs vfs = [] {
        real = sqlite3_vfs_find(nullptr);
        sqlite3_vfs v = *real;
        v.zName = "bb_failsync";
        v.szOsFile = static_cast<int>(sizeof(file)) + real->szOsFile;
        v.xOpen = x_open;
        v.pNext = nullptr;
        v.pAppData = nullptr;
        return v;
    }();
    static const int registered = sqlite3_vfs_register(&vfs, 0);
    EXPECT_EQ(registered, SQLITE_OK);
    return vfs.zName;
}

}  // namespace failsync

// A commit whose fsync fails has its frames in the WAL file already; a crash then (the
// copy of the files below) must not bring back the hold that was answered "not saved".
TEST_F(store_db, a_hold_whose_commit_fsync_failed_does_not_come_back_after_a_crash) {
    auto o = options();
    o.vfs = failsync::install();
    auto db = open(o);
    ASSERT_TRUE(db);
    const auto first = hold(*db, sample("b/k", "first"));
    ASSERT_TRUE(first.ok) << first.message;

    failsync::wal_syncs_to_fail = 1;
    const auto lost = hold(*db, sample("b/k", "the one answered not saved"));
    EXPECT_EQ(lost.code, "store_unavailable");
    EXPECT_NE(lost.message.find("nothing of this operation was saved"), std::string::npos) << lost.message;
    EXPECT_EQ(failsync::wal_syncs_to_fail.load(), 0);

    // The crash: the files as they are now (the page cache, which has the failed frames),
    // without the shared-memory index, opened by a new process's recovery.
    const fs::path crashed = dir_ / "crashed";
    fs::create_directories(crashed);
    const fs::path db_file = o.path;
    fs::copy_file(db_file, crashed / "breakerbox.db");
    ASSERT_TRUE(fs::exists(db_file.string() + "-wal"));
    fs::copy_file(db_file.string() + "-wal", crashed / "breakerbox.db-wal");
    auto after = options();
    after.path = (crashed / "breakerbox.db").string();
    auto again = open(after);
    ASSERT_TRUE(again);
    EXPECT_EQ(again->counts().held_count, 1u);
    EXPECT_TRUE(again->get(first.ticket));
    for (const auto& r : again->list({})) {
        EXPECT_NE(r.body, "the one answered not saved");
    }
    again.reset();

    // The seal itself fails too: then the answer does not claim nothing was saved.
    failsync::wal_syncs_to_fail = 2;
    const auto unknown = hold(*db, sample("b/k", "unconfirmed"));
    EXPECT_EQ(unknown.code, "store_unavailable");
    EXPECT_NE(unknown.message.find("could bring it back"), std::string::npos) << unknown.message;
    failsync::wal_syncs_to_fail = 0;
    const auto next = hold(*db, sample("b/k", "after"));
    EXPECT_TRUE(next.ok) << next.message;
    EXPECT_EQ(db->counts().held_count, 2u);
}

TEST_F(store_db, a_full_queue_fails_fast_with_store_busy) {
    auto o = options();
    o.queue_max_ops = 4;
    auto db = open(o);
    db->pause_writer(true);
    std::vector<std::future<result>> futures;
    bool inline_call = false;
    for (int i = 0; i < 5; ++i) {
        auto p = std::make_shared<std::promise<result>>();
        futures.push_back(p->get_future());
        const auto caller = std::this_thread::get_id();
        db->hold(sample(), [p, caller, &inline_call, i](const result& r) {
            if (i == 4) {
                inline_call = std::this_thread::get_id() == caller;
            }
            p->set_value(r);
        });
    }
    ASSERT_EQ(futures[4].wait_for(0s), std::future_status::ready);
    EXPECT_TRUE(inline_call);
    EXPECT_EQ(futures[4].get().code, "store_busy");
    // Breaker state is saved whatever the queue holds: a flood of holds must not leave the
    // trip that caused them unsaved.
    bb::breakers::instance_snapshot open;
    open.instance = open.breaker = "campaign-volume";
    open.st = bb::breakers::state::open;
    open.opened_at = clock_.now();
    auto saved = std::make_shared<std::promise<result>>();
    auto saved_f = saved->get_future();
    db->save_breaker_state({open}, [saved](const result& r) { saved->set_value(r); });
    EXPECT_EQ(saved_f.wait_for(0s), std::future_status::timeout) << "queued, not refused";
    // So is an operator's audit entry: every admin action writes one before it acts, and the
    // kill switch must work during the flood it is meant to stop.
    bb::store::audit_entry e;
    e.actor = "oncall";
    e.method = "POST";
    e.path = "/v1/breakers/campaign-volume/trip";
    e.target = "campaign-volume";
    auto audited = std::make_shared<std::promise<result>>();
    auto audited_f = audited->get_future();
    db->append_audit(std::move(e), [audited](const result& r) { audited->set_value(r); });
    EXPECT_EQ(audited_f.wait_for(0s), std::future_status::timeout) << "queued, not refused";
    db->pause_writer(false);
    for (int i = 0; i < 4; ++i) {
        ASSERT_EQ(futures[i].wait_for(20s), std::future_status::ready);
        EXPECT_TRUE(futures[i].get().ok);
    }
    ASSERT_EQ(saved_f.wait_for(20s), std::future_status::ready);
    EXPECT_TRUE(saved_f.get().ok);
    ASSERT_EQ(audited_f.wait_for(20s), std::future_status::ready);
    EXPECT_TRUE(audited_f.get().ok);
}

// A body over the largest value SQLite keeps (1e9 bytes by default; lowered here) is refused
// as quarantine_full before anything is written, with the figures: it used to fail its body
// insert after the record's, and roll back every other hold of its batch with it.
TEST_F(store_db, a_body_over_the_largest_value_the_store_keeps_is_refused_alone) {
    auto db = open();
    db->limit_value_bytes(4096);
    db->pause_writer(true);  // both holds in one batch
    auto big = std::async(std::launch::async, [&] { return hold(*db, sample("a/1", std::string(5000, 'x'))); });
    auto small = std::async(std::launch::async, [&] { return hold(*db, sample("a/2")); });
    while (db->stats().queued < 2) {
        pollfd none{};
        ::poll(&none, 0, 1);
    }
    db->pause_writer(false);
    const auto refused = big.get();
    EXPECT_EQ(refused.code, "quarantine_full");
    EXPECT_NE(refused.message.find("its body of 5000 bytes and headers of"), std::string::npos) << refused.message;
    EXPECT_NE(refused.message.find("are over the largest row the store keeps (4096 bytes)"), std::string::npos)
        << refused.message;
    const auto kept = small.get();
    EXPECT_TRUE(kept.ok) << kept.message;
    EXPECT_EQ(db->counts().held_count, 1u);
    EXPECT_EQ(db->stats().batches_rerun, 0u) << "the batch was rolled back and run again";
}

TEST_F(store_db, count_limits_are_exact_per_breaker_and_global) {
    auto o = options();
    o.limits = {5, 0, 2, 0};
    auto db = open(o);
    EXPECT_TRUE(hold(*db, sample("a/1")).ok);
    const auto a2 = hold(*db, sample("a/2"));
    EXPECT_TRUE(a2.ok);
    auto r = hold(*db, sample("a/3"));
    EXPECT_EQ(r.code, "quarantine_full");
    EXPECT_NE(r.message.find("breaker a holds 2"), std::string::npos) << r.message;
    EXPECT_TRUE(hold(*db, sample("b/1")).ok);
    EXPECT_TRUE(hold(*db, sample("b/2")).ok);
    EXPECT_TRUE(hold(*db, sample("c/1")).ok);
    r = hold(*db, sample("d/1"));
    EXPECT_EQ(r.code, "quarantine_full");
    EXPECT_NE(r.message.find("holds 5 requests (limit 5)"), std::string::npos) << r.message;
    // Releasing is still held; a released or discarded record frees its place.
    EXPECT_TRUE(begin(*db, a2.ticket).ok);
    EXPECT_EQ(hold(*db, sample("a/4")).code, "quarantine_full");
    EXPECT_TRUE(finish(*db, a2.ticket, bb::store::release_outcome::released).ok);
    EXPECT_TRUE(hold(*db, sample("a/4")).ok);
    const auto c = db->counts();
    EXPECT_EQ(c.held_count, 5u);
    EXPECT_EQ(c.per_breaker.at("a").held, 2u);
    EXPECT_EQ(c.per_breaker.at("b").held, 2u);
    // Counters come back from disk at open.
    db.reset();
    db = open(o);
    EXPECT_EQ(db->counts().held_count, 5u);
    EXPECT_EQ(hold(*db, sample("e/1")).code, "quarantine_full");
}

TEST_F(store_db, byte_limits_are_exact_per_breaker_and_global) {
    const auto overhead = bb::store::encode_headers(sample().headers).size();
    auto o = options();
    o.limits = {0, 3 * (1000 + overhead), 0, 2 * (1000 + overhead)};
    auto db = open(o);
    EXPECT_TRUE(hold(*db, sample("a/1", std::string(1000, 'x'))).ok);
    EXPECT_TRUE(hold(*db, sample("a/2", std::string(1000, 'x'))).ok);
    EXPECT_EQ(hold(*db, sample("a/3", std::string(1, 'x'))).code, "quarantine_full");
    EXPECT_EQ(hold(*db, sample("b/1", std::string(1001, 'x'))).code, "quarantine_full");  // global
    EXPECT_TRUE(hold(*db, sample("b/1", std::string(1000, 'x'))).ok);
    EXPECT_EQ(db->counts().held_bytes, 3 * (1000 + overhead));
}

TEST_F(store_db, limits_hold_exactly_under_concurrent_holds) {
    auto o = options();
    o.limits = {0, 0, 50, 0};
    auto db = open(o);
    std::atomic<int> ok{0};
    std::atomic<int> full{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < 16; ++t) {
        pool.emplace_back([&] {
            for (int i = 0; i < 10; ++i) {
                const auto r = hold(*db, sample("hot/k"));
                (r.ok ? ok : full)++;
                EXPECT_TRUE(r.ok || r.code == "quarantine_full") << r.code;
            }
        });
    }
    for (auto& th : pool) {
        th.join();
    }
    EXPECT_EQ(ok.load(), 50);
    EXPECT_EQ(full.load(), 110);
    EXPECT_EQ(db->counts().held_count, 50u);
}

TEST_F(store_db, list_filters_pages_and_exports) {
    auto db = open();
    std::vector<std::string> tickets;
    for (int i = 0; i < 30; ++i) {
        auto r = sample(i % 2 == 0 ? "even/k" + std::to_string(i % 4) : "odd/k", "body " + std::to_string(i));
        r.agent = i % 3 == 0 ? "agent-a" : "agent-b";
        r.rule = i < 10 ? "rule-1" : "rule-2";
        r.received_ms = 1000 + i;
        tickets.push_back(hold(*db, std::move(r)).ticket);
    }
    ASSERT_TRUE(discard(*db, tickets[0]).ok);
    ASSERT_TRUE(begin(*db, tickets[1]).ok);
    auto count = [&](bb::store::list_filter f) {
        f.limit = 1000;
        return db->list(f).size();
    };
    bb::store::list_filter f;
    EXPECT_EQ(count(f), 30u);
    f.breaker = "even";
    EXPECT_EQ(count(f), 15u);
    f.breaker = "even/k2";  // one instance
    EXPECT_EQ(count(f), 7u);
    f = {};
    f.agent = "agent-a";
    EXPECT_EQ(count(f), 10u);
    f = {};
    f.rule = "rule-1";
    EXPECT_EQ(count(f), 10u);
    f = {};
    f.state = held_state::discarded;
    ASSERT_EQ(count(f), 1u);
    EXPECT_EQ(db->list(f)[0].ticket, tickets[0]);
    EXPECT_EQ(db->list(f)[0].discard_reason, "wrong segment");
    f.state = held_state::releasing;
    EXPECT_EQ(count(f), 1u);
    f = {};
    f.from_ms = 1005;
    f.to_ms = 1010;
    EXPECT_EQ(count(f), 5u);
    f.rule = "rule-1";
    f.agent = "agent-a";
    EXPECT_EQ(count(f), 2u);  // 1006, 1009

    // Default page, keyset paging and offset paging, oldest first.
    f = {};
    f.limit = 12;
    std::vector<std::string> paged;
    for (;;) {
        auto page = db->list(f);
        for (const auto& r : page) {
            paged.push_back(r.ticket);
            EXPECT_TRUE(r.body.empty());
            EXPECT_TRUE(r.headers.empty());
        }
        if (page.size() < f.limit) {
            break;
        }
        f.after_ticket = page.back().ticket;
    }
    EXPECT_EQ(paged, tickets);
    f = {};
    f.limit = 5;
    f.offset = 25;
    auto tail = db->list(f);
    ASSERT_EQ(tail.size(), 5u);
    EXPECT_EQ(tail[0].ticket, tickets[25]);
    f = {};
    f.after_ticket = "q_unknown";
    result err;
    EXPECT_TRUE(db->list(f, &err).empty());
    EXPECT_EQ(err.code, "not_found");
    // By row id the page goes on after a record that is gone (pruned while a bulk action
    // sent its page): the id after the 10th, whatever became of the 10th.
    f = {};
    f.limit = 1000;
    const auto all = db->list(f);
    ASSERT_EQ(all.size(), tickets.size());
    EXPECT_LT(all[9].id, all[10].id);
    f.after_id = all[9].id;
    err = {};
    auto rest = db->list(f, &err);
    EXPECT_TRUE(err.ok) << err.message;
    ASSERT_EQ(rest.size(), tickets.size() - 10);
    EXPECT_EQ(rest[0].ticket, tickets[10]);
    f.after_id = all.back().id + 100;
    EXPECT_TRUE(db->list(f, &err).empty());
    EXPECT_TRUE(err.ok) << err.message;

    // Export: every matching record, one JSON object per line, body in base64.
    f = {};
    f.breaker = "odd";
    std::ostringstream out;
    EXPECT_EQ(db->export_jsonl(f, out), 15u);
    std::istringstream in{out.str()};
    std::string line;
    int lines = 0;
    simdjson::dom::parser parser;
    while (std::getline(in, line)) {
        simdjson::dom::element e;
        ASSERT_EQ(parser.parse(line).get(e), simdjson::SUCCESS) << line;
        std::string_view ticket;
        std::string_view body;
        ASSERT_EQ(e["ticket"].get(ticket), simdjson::SUCCESS);
        ASSERT_EQ(e["body_base64"].get(body), simdjson::SUCCESS);
        const auto full = db->get(ticket);
        ASSERT_TRUE(full);
        EXPECT_EQ(body, bb::store::base64_encode(full->body));
        simdjson::dom::array headers;
        ASSERT_EQ(e["headers"].get(headers), simdjson::SUCCESS);
        EXPECT_EQ(headers.size(), 2u);
        std::string_view breaker;
        ASSERT_EQ(e["breaker"].get(breaker), simdjson::SUCCESS);
        EXPECT_EQ(breaker, "odd");
        ++lines;
    }
    EXPECT_EQ(lines, 15);
}

TEST_F(store_db, list_limit_defaults_to_100_and_is_capped_at_1000) {
    auto db = open();
    db->pause_writer(true);
    std::vector<std::future<result>> futures;
    for (int i = 0; i < 1001; ++i) {
        auto p = std::make_shared<std::promise<result>>();
        futures.push_back(p->get_future());
        db->hold(sample("b/k", ""), [p](const result& r) { p->set_value(r); });
    }
    db->pause_writer(false);
    db->flush();
    bb::store::list_filter f;
    EXPECT_EQ(db->list(f).size(), 100u);
    f.limit = 5000;
    EXPECT_EQ(db->list(f).size(), 1000u);
}

TEST_F(store_db, prune_deletes_only_old_resolved_records_and_their_history) {
    auto db = open();
    const auto released = hold(*db, sample()).ticket;
    const auto discarded = hold(*db, sample()).ticket;
    const auto failed = hold(*db, sample()).ticket;
    const auto held = hold(*db, sample()).ticket;
    ASSERT_TRUE(begin(*db, released).ok);
    ASSERT_TRUE(finish(*db, released, bb::store::release_outcome::released).ok);
    ASSERT_TRUE(discard(*db, discarded).ok);
    ASSERT_TRUE(begin(*db, failed).ok);
    ASSERT_TRUE(finish(*db, failed, bb::store::release_outcome::failed, 500).ok);
    clock_.advance(std::chrono::hours{24 * 8});
    const auto recent = hold(*db, sample()).ticket;
    ASSERT_TRUE(discard(*db, recent).ok);
    const auto cutoff =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock_.wall_now().time_since_epoch()).count() -
        7 * 24 * 3600 * 1000LL;
    auto r = wait_done([&](bb::store::done_fn d) { db->prune(cutoff, d); });
    ASSERT_TRUE(r.ok) << r.message;
    EXPECT_EQ(r.count, 2);
    EXPECT_FALSE(db->get(released));
    EXPECT_FALSE(db->get(discarded));
    EXPECT_TRUE(db->history(released).empty());
    EXPECT_TRUE(db->get(failed));
    EXPECT_TRUE(db->get(held));
    EXPECT_TRUE(db->get(recent));
    EXPECT_EQ(db->history(recent).size(), 2u);
    r = wait_done([&](bb::store::done_fn d) { db->prune(cutoff, d); });
    EXPECT_EQ(r.count, 0);
    // Bounded per call.
    for (int i = 0; i < 5; ++i) {
        ASSERT_TRUE(discard(*db, hold(*db, sample()).ticket).ok);
    }
    clock_.advance(std::chrono::hours{24 * 8});
    const auto later =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock_.wall_now().time_since_epoch()).count();
    r = wait_done([&](bb::store::done_fn d) { db->prune(later, d, 4); });
    EXPECT_EQ(r.count, 4);
    r = wait_done([&](bb::store::done_fn d) { db->prune(later, d, 4); });
    EXPECT_EQ(r.count, 2);
}

TEST_F(store_db, breaker_state_round_trips_and_is_replaced_whole) {
    namespace br = bb::breakers;
    br::instance_snapshot open_inst;
    open_inst.instance = "campaign-volume/spring \"sale\"";
    open_inst.breaker = "campaign-volume";
    open_inst.key = "spring \"sale\"";
    open_inst.st = br::state::open;
    open_inst.opened_at = clock_.now() - 5s;
    open_inst.cooldown = 30s;
    open_inst.trips = 3;
    auto t = std::make_shared<br::transition>();
    t->cause.kind = "rule";
    t->cause.actor = "rule:recipients";
    t->cause.reason = "1010 > 1000";
    t->cause.rule = "recipients";
    t->cause.key = open_inst.key;
    t->cause.value = 1010.5;
    t->cause.limit = 1000;
    t->cause.window = 1h;
    t->cause.request_id = "abc";
    t->at = open_inst.opened_at;
    open_inst.last_trip = t;
    open_inst.reset = br::reset_policy::automatic;
    open_inst.throttle_admissions = {clock_.now() - 3s, clock_.now() - 1s};
    br::instance_snapshot closed;
    closed.instance = closed.breaker = "idle";
    br::instance_snapshot forced;
    forced.instance = forced.breaker = "manual";
    forced.md = br::mode::forced_open;
    forced.mode_expires = clock_.now() + 10min;
    forced.opened_at = clock_.now();
    forced.reset = br::reset_policy::manual;

    auto db = open();
    auto r = wait_done([&](bb::store::done_fn d) { db->save_breaker_state({open_inst, closed, forced}, d); });
    ASSERT_TRUE(r.ok) << r.message;
    db.reset();
    // A later process: its steady clock is elsewhere, the wall clock moved on by 2s.
    bb::manual_clock later;
    later.set(clock_.now() + 2s);
    std::string err;
    auto db2 = database::open(options(), later, &err);
    ASSERT_TRUE(db2) << err;
    auto back = db2->load_breaker_state(later, &err);
    ASSERT_TRUE(back) << err;
    ASSERT_EQ(back->size(), 2u);
    const auto& a = (*back)[0];
    EXPECT_EQ(a.instance, open_inst.instance);
    EXPECT_EQ(a.key, open_inst.key);
    EXPECT_EQ(a.st, br::state::open);
    EXPECT_EQ(a.md, br::mode::automatic);
    EXPECT_EQ(a.opened_at, open_inst.opened_at);
    EXPECT_EQ(a.cooldown, 30s);
    EXPECT_EQ(a.trips, 3u);
    ASSERT_TRUE(a.last_trip);
    EXPECT_EQ(a.last_trip->cause.reason, "1010 > 1000");
    EXPECT_EQ(a.last_trip->cause.value, 1010.5);
    EXPECT_EQ(a.last_trip->cause.window, 1h);
    EXPECT_EQ(a.last_trip->at, open_inst.opened_at);
    EXPECT_EQ(a.reset, br::reset_policy::automatic);
    EXPECT_EQ(a.throttle_admissions, open_inst.throttle_admissions);
    const auto& m = (*back)[1];
    EXPECT_EQ(m.instance, "manual");
    EXPECT_EQ(m.md, br::mode::forced_open);
    ASSERT_TRUE(m.mode_expires);
    EXPECT_EQ(*m.mode_expires, *forced.mode_expires);
    EXPECT_FALSE(m.last_trip);
    EXPECT_EQ(m.reset, br::reset_policy::manual);
    EXPECT_TRUE(m.throttle_admissions.empty());

    r = wait_done([&](bb::store::done_fn d) { db2->save_breaker_state({forced}, d); });
    ASSERT_TRUE(r.ok);
    back = db2->load_breaker_state(later, &err);
    ASSERT_TRUE(back);
    ASSERT_EQ(back->size(), 1u);
    EXPECT_EQ((*back)[0].instance, "manual");
}

// A wall-clock step while breakerbox is down (NTP after a long drift, `date -s`) must not
// move a saved cooldown or an operator's mode expiry: within the boot that saved them they
// come back as the exact steady-clock times they were. After a reboot (another boot id) the
// wall clock is all that links them to now; a store written before the clocks were saved
// (no breaker_state_clock row) is read that way too.
TEST_F(store_db, a_wall_clock_step_between_runs_moves_no_saved_breaker_time) {
    namespace br = bb::breakers;
    br::instance_snapshot tripped;
    tripped.instance = tripped.breaker = "campaign-volume";
    tripped.st = br::state::open;
    tripped.opened_at = clock_.now() - 5s;
    tripped.cooldown = 30min;
    tripped.md = br::mode::forced_open;
    tripped.mode_expires = clock_.now() + 10min;
    auto db = open();
    const auto path = db->path();
    ASSERT_TRUE(wait_done([&](bb::store::done_fn d) { db->save_breaker_state({tripped}, d); }).ok);
    db.reset();

    // Same boot, 1 minute later, the wall clock stepped 2 hours forward: nothing moves.
    bb::manual_clock later;
    later.set(clock_.now() + 1min);
    later.step_wall(2h);
    std::string err;
    auto db2 = database::open(options(), later, &err);
    ASSERT_TRUE(db2) << err;
    auto back = db2->load_breaker_state(later, &err);
    ASSERT_TRUE(back && back->size() == 1u) << err;
    EXPECT_EQ((*back)[0].opened_at, tripped.opened_at) << "the cooldown would end 2 hours early";
    EXPECT_EQ(*(*back)[0].mode_expires, *tripped.mode_expires) << "the operator's mode would have expired";
    // Backwards too (the cooldown would otherwise last 2 hours longer).
    bb::manual_clock earlier;
    earlier.set(clock_.now() + 1min);
    earlier.step_wall(-2h);
    back = db2->load_breaker_state(earlier, &err);
    ASSERT_TRUE(back && back->size() == 1u) << err;
    EXPECT_EQ((*back)[0].opened_at, tripped.opened_at);

    // Another boot: its steady clock means nothing here; the wall clock is the link.
    bb::manual_clock rebooted;
    rebooted.set_boot_id("another-boot");
    rebooted.set(clock_.now() + 1min);
    rebooted.step_wall(2h);
    back = db2->load_breaker_state(rebooted, &err);
    ASSERT_TRUE(back && back->size() == 1u) << err;
    EXPECT_EQ((*back)[0].opened_at, tripped.opened_at - 2h);
    // A forced_open never ends before what it had left at the save (10 minutes from the
    // start, not from 2 hours ago: it would have ended).
    EXPECT_EQ(*(*back)[0].mode_expires, rebooted.now() + 10min);
    db2.reset();

    // A store from before the clocks were saved: read by the wall clock, as it was written.
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(raw, "DELETE FROM breaker_state_clock", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(raw);
    auto db3 = database::open(options(), later, &err);
    ASSERT_TRUE(db3) << err;
    back = db3->load_breaker_state(later, &err);
    ASSERT_TRUE(back && back->size() == 1u) << err;
    EXPECT_EQ((*back)[0].opened_at, tripped.opened_at - 2h);
}

// An operator's bypass (forced_closed, metrics_only) with an expiry, read after a reboot
// whose wall clock is behind (an unset RTC, fake-hwclock): it never lasts longer than what
// was left of it at the save. A wall clock ahead shortens it, as before; a forced_open then
// lasts what it had left at the save.
TEST_F(store_db, after_a_reboot_a_bypass_never_outlasts_and_a_forced_open_never_ends_before_what_was_left) {
    namespace br = bb::breakers;
    br::instance_snapshot bypass;
    bypass.instance = bypass.breaker = "campaign-volume";
    bypass.st = br::state::open;
    bypass.opened_at = clock_.now() - 5s;
    bypass.cooldown = 30min;
    bypass.md = br::mode::forced_closed;
    bypass.mode_expires = clock_.now() + 15min;
    auto forced = bypass;
    forced.instance = forced.breaker = "crm-deletes";
    forced.md = br::mode::forced_open;
    auto db = open();
    ASSERT_TRUE(wait_done([&](bb::store::done_fn d) { db->save_breaker_state({bypass, forced}, d); }).ok);
    std::string err;
    bb::manual_clock behind;
    behind.set_boot_id("another-boot");
    behind.set(clock_.now() + 1min);
    behind.step_wall(-3h);
    auto back = db->load_breaker_state(behind, &err);
    ASSERT_TRUE(back && back->size() == 2u) << err;
    for (const auto& b : *back) {
        if (b.md == br::mode::forced_closed) {
            EXPECT_EQ(*b.mode_expires, behind.now() + 15min) << "the bypass would last 3 hours longer";
        } else {
            EXPECT_EQ(*b.mode_expires, *forced.mode_expires + 3h) << "a forced_open is read by the wall clock";
        }
    }
    // A wall clock ahead: the bypass is shorter, a forced_open lasts what it had left.
    bb::manual_clock far_ahead;
    far_ahead.set_boot_id("another-boot");
    far_ahead.set(clock_.now() + 1min);
    far_ahead.step_wall(1h);
    back = db->load_breaker_state(far_ahead, &err);
    ASSERT_TRUE(back && back->size() == 2u) << err;
    for (const auto& b : *back) {
        if (b.md == br::mode::forced_open) {
            EXPECT_EQ(*b.mode_expires, far_ahead.now() + 15min) << "the forced_open would have ended at the start";
        } else {
            EXPECT_EQ(*b.mode_expires, *bypass.mode_expires - 1h);
        }
    }
    bb::manual_clock ahead;
    ahead.set_boot_id("another-boot");
    ahead.set(clock_.now() + 1min);
    ahead.step_wall(5min);
    back = db->load_breaker_state(ahead, &err);
    ASSERT_TRUE(back && back->size() == 2u) << err;
    for (const auto& b : *back) {
        if (b.md == br::mode::forced_closed) {
            EXPECT_EQ(*b.mode_expires, *bypass.mode_expires - 5min);
        }
    }
}

// The config file as last read (its digest and version) goes with the version it became, in
// one transaction; a version from the API leaves it; it can be read before the store is
// opened (a start choosing what to run), also while another process holds the store.
TEST_F(store_db, the_config_file_mark_follows_the_versions_read_from_the_file) {
    std::string err;
    EXPECT_FALSE(database::peek_config(options().path, &err)) << "no store yet";
    EXPECT_EQ(err, "");
    auto db = open();
    EXPECT_FALSE(db->config_file());
    auto save = [&](const std::string& json, const std::string& sha) {
        return wait_done([&](bb::store::done_fn d) { db->save_config_version(json, "t", "r", d, sha); });
    };
    auto v1 = save(R"({"a":1})", "aaaa");
    ASSERT_TRUE(v1.ok) << v1.message;
    auto mark = db->config_file();
    ASSERT_TRUE(mark);
    EXPECT_EQ(mark->sha256, "aaaa");
    EXPECT_EQ(mark->version, v1.count);
    auto v2 = save(R"({"a":2})", "");  // applied through the API
    ASSERT_TRUE(v2.ok) << v2.message;
    EXPECT_EQ(db->config_file()->version, v1.count) << "a version not from the file leaves the mark";
    auto peek = database::peek_config(options().path, &err);
    ASSERT_TRUE(peek) << err;
    EXPECT_EQ(peek->file.sha256, "aaaa");
    EXPECT_EQ(peek->file.version, v1.count);
    EXPECT_EQ(peek->latest, v2.count);
    EXPECT_EQ(peek->latest_json, R"({"a":2})");
    ASSERT_TRUE(wait_done([&](bb::store::done_fn d) { db->mark_config_file("bbbb", v2.count, d); }).ok);
    mark = db->config_file();
    EXPECT_EQ(mark->sha256, "bbbb");
    EXPECT_EQ(mark->version, v2.count);
    // A save whose commit fails (the version and the mark written, then rolled back) leaves
    // the old mark.
    db->inject_write_fault(SQLITE_IOERR, 1);
    EXPECT_FALSE(save(R"({"a":3})", "cccc").ok);
    EXPECT_EQ(db->config_file()->sha256, "bbbb");
}

// Keys of requests sent live: each save writes or deletes the rows it names and deletes the
// rows sent before its cutoff; a load reads the most recent ones since a time, newest first.
TEST_F(store_db, forwarded_keys_round_trip_and_age_out) {
    auto db = open();
    std::string err;
    auto none = db->load_forwarded_keys(0, 100, &err);
    ASSERT_TRUE(none) << err;
    EXPECT_TRUE(none->empty());
    const std::uint64_t high = 0xfedc'ba98'7654'3210ull;  // beyond int64: stored as its bits
    ASSERT_TRUE(wait_done([&](bb::store::done_fn d) {
        db->save_forwarded_keys({{1, 1000}, {2, 2000}, {high, 3000}, {4, 4000}}, 0, d);
    }).ok);
    auto back = db->load_forwarded_keys(1500, 100, &err);
    ASSERT_TRUE(back) << err;
    ASSERT_EQ(back->size(), 3u);
    EXPECT_EQ((*back)[0].digest, 4u);
    EXPECT_EQ((*back)[0].sent_wall_ms, 4000);
    EXPECT_EQ((*back)[1].digest, high);
    EXPECT_EQ((*back)[1].sent_wall_ms, 3000);
    EXPECT_EQ((*back)[2].digest, 2u);
    back = db->load_forwarded_keys(0, 2, &err);
    ASSERT_TRUE(back) << err;
    ASSERT_EQ(back->size(), 2u) << "the most recent `max`";
    EXPECT_EQ((*back)[1].digest, high);
    // Key 4 remembered no more, key 2 sent again, everything before 2500 aged out.
    ASSERT_TRUE(wait_done([&](bb::store::done_fn d) {
        db->save_forwarded_keys({{4, std::nullopt}, {2, 5000}}, 2500, d);
    }).ok);
    back = db->load_forwarded_keys(0, 100, &err);
    ASSERT_TRUE(back) << err;
    ASSERT_EQ(back->size(), 2u);
    EXPECT_EQ((*back)[0].digest, 2u);
    EXPECT_EQ((*back)[0].sent_wall_ms, 5000);
    EXPECT_EQ((*back)[1].digest, high);
}

// Rule meters: each save writes the rules that changed and deletes the rows of rules not
// kept; each row is read back with the offset that maps its saving process's steady clock
// onto the reader's.
TEST_F(store_db, rule_meters_round_trip_with_the_offset_of_their_clocks) {
    auto db = open();
    std::string err;
    auto none = db->load_meters(clock_, &err);
    ASSERT_TRUE(none) << err;
    EXPECT_TRUE(none->empty());
    const std::string binary{"\x01\x00\xff state", 9};
    ASSERT_TRUE(wait_done([&](bb::store::done_fn d) {
        db->save_meters({{"cap", 0xfedc'ba98'7654'3210ull, binary}, {"other", 7, "x"}, {"third", 8, "y"}},
                        {"cap", "other", "third"}, d);
    }).ok);
    // Later (and the wall clock stepped 30 minutes meanwhile): "other" changed, "cap" did
    // not (not written, kept), "third" holds nothing now.
    clock_.advance(1h);
    clock_.step_wall(30min);
    ASSERT_TRUE(wait_done([&](bb::store::done_fn d) { db->save_meters({{"other", 7, "x2"}}, {"cap", "other"}, d); }).ok);
    // Same boot, a wall-clock step since: the steady clock is the link (offset 0).
    bb::manual_clock later;
    later.set(clock_.now() + 1min);
    later.step_wall(2h);
    auto back = db->load_meters(later, &err);
    ASSERT_TRUE(back) << err;
    ASSERT_EQ(back->size(), 2u);
    EXPECT_EQ((*back)[0].rule_id, "cap");
    EXPECT_EQ((*back)[0].fingerprint, 0xfedc'ba98'7654'3210ull);
    EXPECT_EQ((*back)[0].state, binary);
    EXPECT_EQ((*back)[0].offset, 0ms);
    EXPECT_EQ((*back)[1].rule_id, "other");
    EXPECT_EQ((*back)[1].state, "x2");
    // Another boot: through the wall clocks of each row's save. 1 minute of steady time and
    // 2 hours of wall time after the second save.
    bb::manual_clock rebooted;
    rebooted.set_boot_id("another-boot");
    rebooted.set(clock_.now() + 1min);
    rebooted.step_wall(2h);
    back = db->load_meters(rebooted, &err);
    ASSERT_TRUE(back) << err;
    ASSERT_EQ(back->size(), 2u);
    // The wall clock's step between the two saves moves one row's mapping and not the other's.
    EXPECT_EQ((*back)[0].offset, -2h);
    EXPECT_EQ((*back)[1].offset, -90min) << "saved after the wall clock's step: its own clocks map it";
    // Clocks that are no readings: an error, not a guess.
    db.reset();
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(options().path.c_str(), &raw), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(raw, "UPDATE rule_meters SET wall_ms = 'soon' WHERE rule_id = 'other'", nullptr, nullptr,
                           nullptr),
              SQLITE_OK);
    sqlite3_close(raw);
    db = open();
    EXPECT_FALSE(db->load_meters(clock_, &err));
    EXPECT_NE(err.find("cannot read rule meters: rule other"), std::string::npos) << err;
}

// A tripped breaker's row with a time that is not an integer would read as 0 (its cooldown
// long over): the state is refused, not read as a breaker to reopen.
TEST_F(store_db, a_breaker_row_with_an_implausible_time_is_refused) {
    namespace br = bb::breakers;
    br::instance_snapshot tripped;
    tripped.instance = tripped.breaker = "campaign-volume";
    tripped.st = br::state::open;
    tripped.opened_at = clock_.now();
    tripped.cooldown = 30s;
    auto db = open();
    const auto path = db->path();
    ASSERT_TRUE(wait_done([&](bb::store::done_fn d) { db->save_breaker_state({tripped}, d); }).ok);
    for (const char* edit : {"UPDATE breaker_state SET opened_at_ms = 'soon'",
                             "UPDATE breaker_state SET cooldown_ms = 1e300",
                             "UPDATE breaker_state SET mode_expires_ms = 99999999999999999"}) {
        db.reset();
        sqlite3* raw = nullptr;
        ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
        ASSERT_EQ(sqlite3_exec(raw, "DELETE FROM breaker_state", nullptr, nullptr, nullptr), SQLITE_OK);
        sqlite3_close(raw);
        db = open();
        ASSERT_TRUE(wait_done([&](bb::store::done_fn d) { db->save_breaker_state({tripped}, d); }).ok);
        db.reset();
        ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
        ASSERT_EQ(sqlite3_exec(raw, edit, nullptr, nullptr, nullptr), SQLITE_OK) << edit;
        sqlite3_close(raw);
        db = open();
        std::string err;
        EXPECT_FALSE(db->load_breaker_state(clock_, &err)) << edit;
        EXPECT_NE(err.find("not a plausible integer"), std::string::npos) << edit << ": " << err;
    }
}

TEST_F(store_db, a_newer_schema_is_refused) {
    auto db = open();
    const auto path = db->path();
    db.reset();
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(raw, "INSERT INTO schema_version VALUES(99, 0)", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(raw);
    std::string err;
    EXPECT_FALSE(database::open(options(), clock_, &err));
    EXPECT_NE(err.find("schema version 99 is newer"), std::string::npos) << err;
}

// A store written by the previous version (schema 2) is upgraded in place: its held
// records stay, without a key, and keyed holds work from then on.
TEST_F(store_db, a_version_2_store_is_upgraded_with_its_holds) {
    auto db = open();
    const auto old = hold(*db, sample());
    ASSERT_TRUE(old.ok);
    const auto path = db->path();
    db.reset();
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(raw,
                           "DROP INDEX held_requests_idem_agent; ALTER TABLE held_requests DROP COLUMN idem_key; "
                           "ALTER TABLE held_requests DROP COLUMN idem_fingerprint; DROP TABLE breaker_state_clock; "
                           "DROP TABLE idem_tombstones; DROP TABLE rule_meters; ALTER TABLE breaker_state DROP COLUMN reset; "
                           "ALTER TABLE breaker_state DROP COLUMN throttle_ms; DROP TABLE forwarded_keys; DROP TABLE config_file; "
                           "ALTER TABLE held_requests DROP COLUMN sandboxed_by; DROP TABLE held_id_floor; "
                           "DELETE FROM schema_version WHERE version >= 3",
                           nullptr, nullptr, nullptr),
              SQLITE_OK)
        << sqlite3_errmsg(raw);
    sqlite3_close(raw);
    db = open();
    ASSERT_TRUE(db);
    EXPECT_EQ(db->schema_version(), 13);
    EXPECT_EQ(state_of(*db, old.ticket), held_state::held);
    EXPECT_EQ(db->get(old.ticket)->sandboxed_by, "") << "a record from before was held for a real send";
    auto keyed = sample();
    keyed.idempotency_key = "k";
    const auto a = hold(*db, keyed);
    const auto b = hold(*db, keyed);
    ASSERT_TRUE(a.ok && b.ok);
    EXPECT_EQ(b.ticket, a.ticket);
    EXPECT_EQ(db->counts().held_count, 2u);
}

TEST_F(store_db, a_file_that_is_not_a_database_is_refused) {
    fs::create_directories(dir_ / "sub");
    {
        std::ofstream f{dir_ / "sub" / "breakerbox.db"};
        f << "this is not sqlite, just some text that is long enough to fill a header page............";
    }
    std::string err;
    EXPECT_FALSE(database::open(options(), clock_, &err));
    EXPECT_NE(err.find("breakerbox.db"), std::string::npos) << err;
}

namespace {

// One audit entry as the admin API writes them (the writer chains it; nothing waits).
void append_entry(database& db, const std::string& reason, const std::string& actor = "ada") {
    bb::store::audit_entry e;
    e.actor = actor;
    e.role = "admin";
    e.method = "POST";
    e.path = "/v1/breakers/x/trip";
    e.target = "x";
    e.reason = reason;
    e.result = "ok";
    db.append_audit(std::move(e), [](const result&) {});
}

}  // namespace

// Someone with write access to the file can cut the chain back and move the head to match,
// wipe it, or rewrite an entry and re-chain everything after it (the hash is no secret): the
// file alone then verifies. The process remembers the last entry it wrote (or found at
// start), so verification still finds each while it runs.
TEST_F(store_db, audit_verification_finds_a_chain_cut_wiped_or_rechained_with_its_head) {
    auto db = open();
    for (int i = 0; i < 5; ++i) {
        append_entry(*db, "entry " + std::to_string(i));
    }
    db->flush();
    const auto [id, hash] = db->audit_anchor();
    EXPECT_EQ(id, 5);
    EXPECT_EQ(hash, db->list_audit(4, 1).at(0).hash);
    ASSERT_TRUE(db->verify_audit().ok);
    auto sql = [&](const std::string& text) {
        sqlite3* raw = nullptr;
        ASSERT_EQ(sqlite3_open(options().path.c_str(), &raw), SQLITE_OK);
        ASSERT_EQ(sqlite3_exec(raw, text.c_str(), nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(raw);
        sqlite3_close(raw);
    };
    const auto all = db->list_audit(0, 10);
    // Cut back to entry 3, the head moved to match.
    sql("DELETE FROM audit WHERE id > 3; UPDATE audit_head SET last_id = 3, last_hash = '" + all[2].hash + "'");
    auto v = db->verify_audit();
    EXPECT_FALSE(v.ok);
    EXPECT_EQ(v.problem, "the log ends at entry 3 but this process wrote or found entry 5 (entries deleted)");
    // Wiped.
    sql("DELETE FROM audit; DELETE FROM audit_head");
    v = db->verify_audit();
    EXPECT_FALSE(v.ok);
    EXPECT_EQ(v.first_bad, 1);
    // Rewritten and re-chained: entries 4 and 5 again, 5 with another reason, every hash
    // computed as the store does (length-prefixed fields, SHA-256).
    sql("DELETE FROM audit");
    std::string prev(64, '0');
    for (auto e : all) {
        if (e.id == 5) {
            e.reason = "nothing happened";
        }
        e.prev_hash = prev;
        std::string m;
        for (const std::string& f : {e.prev_hash, std::to_string(e.id), std::to_string(e.at_ms), e.actor, e.role,
                                     e.method, e.path, e.target, e.params, e.reason, e.result, e.diff}) {
            m += std::to_string(f.size()) + ":" + f + ";";
        }
        e.hash = bb::sha256_hex(m);
        prev = e.hash;
        sql("INSERT INTO audit(id, at_ms, actor, role, method, path, target, params, reason, result, diff, prev_hash, "
            "hash) VALUES(" + std::to_string(e.id) + ", " + std::to_string(e.at_ms) + ", 'ada', 'admin', 'POST', "
            "'/v1/breakers/x/trip', 'x', '', '" + e.reason + "', 'ok', '', '" + e.prev_hash + "', '" + e.hash + "')");
    }
    sql("INSERT INTO audit_head(one, last_id, last_hash) VALUES(1, 5, '" + prev + "')");
    EXPECT_EQ(db->list_audit(4, 1).at(0).reason, "nothing happened");
    v = db->verify_audit();
    EXPECT_FALSE(v.ok);
    EXPECT_EQ(v.first_bad, 5);
    EXPECT_EQ(v.problem, "entry 5 is not the one this process wrote or found at start (the log was rewritten from there on)");
    EXPECT_EQ(db->audit_tampering(), "");
    // An append onto the rewritten chain does not launder it: the anchor would move past the
    // damage, so the damage is remembered.
    append_entry(*db, "after the rewrite", "mallory");
    db->flush();
    EXPECT_EQ(db->audit_anchor().first, 6);
    v = db->verify_audit();
    EXPECT_FALSE(v.ok);
    EXPECT_EQ(v.first_bad, 5);
    EXPECT_EQ(v.problem, "entry 5 is not the one this process wrote or found at start (the log was rewritten from "
                         "there on), found when entry 6 was appended");
    prev = db->audit_anchor().second;
    // A restart takes the file as it finds it (the process log has the earlier head).
    db.reset();
    db = open();
    EXPECT_EQ(db->audit_anchor().second, prev);
    EXPECT_TRUE(db->verify_audit().ok);
    // The head ahead of the log (entries deleted from the end while the head was left).
    sql("UPDATE audit_head SET last_id = 99");
    v = db->verify_audit();
    EXPECT_FALSE(v.ok);
    EXPECT_NE(v.problem.find("(entries deleted from the end)"), std::string::npos) << v.problem;
}

// The head moved back behind the log (audit_head edited, or restored from an older copy):
// the next id would collide with an entry, and every append (so every operator act, which
// writes its entry first) would fail. The append goes after the log's last entry, chained to
// it, and the damage is remembered.
TEST_F(store_db, an_audit_head_moved_back_blocks_no_append_and_is_remembered) {
    auto db = open();
    for (int i = 0; i < 5; ++i) {
        append_entry(*db, "entry " + std::to_string(i));
    }
    db->flush();
    const auto all = db->list_audit(0, 10);
    ASSERT_EQ(all.size(), 5u);
    db.reset();
    {
        sqlite3* raw = nullptr;
        ASSERT_EQ(sqlite3_open(options().path.c_str(), &raw), SQLITE_OK);
        const std::string text = "UPDATE audit_head SET last_id = 3, last_hash = '" + all[2].hash + "'";
        ASSERT_EQ(sqlite3_exec(raw, text.c_str(), nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(raw);
        sqlite3_close(raw);
    }
    db = open();
    auto r = wait_done([&](bb::store::done_fn d) {
        bb::store::audit_entry e;
        e.actor = "oncall";
        e.method = "POST";
        e.path = "/v1/breakers/x/trip";
        e.target = "x";
        db->append_audit(std::move(e), d);
    });
    ASSERT_TRUE(r.ok) << r.code << ": " << r.message;
    EXPECT_EQ(r.count, 6);
    const auto after = db->list_audit(5, 10);
    ASSERT_EQ(after.size(), 1u);
    EXPECT_EQ(after[0].prev_hash, all[4].hash);
    std::int64_t first_bad = 0;
    EXPECT_EQ(db->audit_tampering(&first_bad),
              "the audit head says entry 3 is the last, but the log holds entries up to 5 (the head was moved back), "
              "found when entry 6 was appended");
    EXPECT_EQ(first_bad, 4);
    const auto v = db->verify_audit();
    EXPECT_FALSE(v.ok);
    EXPECT_NE(v.problem.find("the head was moved back"), std::string::npos) << v.problem;
}

// The audit chain verified a page per step (the admin API yields between pages): the same
// answer as one call, entries appended between steps are verified too, and a changed entry
// past the first page is still found.
TEST_F(store_db, audit_verification_goes_a_page_at_a_time_and_covers_entries_written_meanwhile) {
    auto db = open();
    auto append = [&](int i) { append_entry(*db, "entry " + std::to_string(i)); };
    for (int i = 0; i < 2500; ++i) {
        append(i);
    }
    db->flush();
    database::audit_verifier v{*db};
    int steps = 0;
    while (!v.step()) {
        if (++steps == 1) {
            for (int i = 0; i < 10; ++i) {  // written while the check is under way
                append(2500 + i);
            }
            db->flush();
        }
        ASSERT_LT(steps, 100);
    }
    EXPECT_GE(steps, 3) << "2,510 entries are three pages";
    EXPECT_TRUE(v.result().ok) << v.result().problem;
    EXPECT_EQ(v.result().entries, 2510u);
    EXPECT_EQ(db->verify_audit().entries, 2510u);
    {
        sqlite3* raw = nullptr;
        ASSERT_EQ(sqlite3_open(options().path.c_str(), &raw), SQLITE_OK);
        ASSERT_EQ(sqlite3_exec(raw, "UPDATE audit SET reason = 'edited' WHERE id = 2222", nullptr, nullptr, nullptr),
                  SQLITE_OK);
        sqlite3_close(raw);
    }
    const auto bad = db->verify_audit();
    EXPECT_FALSE(bad.ok);
    EXPECT_EQ(bad.first_bad, 2222);
    {  // the edit undone, the last two entries deleted: found, and the check ends
        sqlite3* raw = nullptr;
        ASSERT_EQ(sqlite3_open(options().path.c_str(), &raw), SQLITE_OK);
        ASSERT_EQ(sqlite3_exec(raw, "UPDATE audit SET reason = 'entry 2221' WHERE id = 2222; DELETE FROM audit WHERE id > 2508",
                               nullptr, nullptr, nullptr),
                  SQLITE_OK);
        sqlite3_close(raw);
    }
    const auto cut = db->verify_audit();
    EXPECT_FALSE(cut.ok);
    EXPECT_NE(cut.problem.find("entries deleted"), std::string::npos) << cut.problem;
}
