#include "store/database.hpp"

#include "core/byte_codec.hpp"

#include "core/sha256.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <filesystem>
#include <limits>
#include <mutex>
#include <optional>
#include <ostream>
#include <set>
#include <sys/file.h>
#include <sys/stat.h>
#include <thread>
#include <tuple>
#include <unistd.h>
#include <unordered_map>
#include <unordered_set>
#include <utility>

namespace bb::store {

// ---------------------------------------------------------------------------------------
// States

std::string_view to_string(held_state s) {
    switch (s) {
        case held_state::held: return "held";
        case held_state::releasing: return "releasing";
        case held_state::released: return "released";
        case held_state::release_failed: return "release_failed";
        case held_state::discarded: return "discarded";
        case held_state::outcome_unknown: return "outcome_unknown";
    }
    return "held";
}

held_state state_after(release_outcome o) {
    switch (o) {
        case release_outcome::released: return held_state::released;
        case release_outcome::failed: return held_state::release_failed;
        case release_outcome::unknown: break;
    }
    return held_state::outcome_unknown;
}

std::optional<held_state> parse_held_state(std::string_view s) {
    for (auto st : {held_state::held, held_state::releasing, held_state::released, held_state::release_failed,
                    held_state::discarded, held_state::outcome_unknown}) {
        if (to_string(st) == s) {
            return st;
        }
    }
    return std::nullopt;
}

bool transition_allowed(held_state from, held_state to, bool force) {
    using enum held_state;
    switch (from) {
        case held: return to == releasing || to == discarded;
        case releasing: return to == released || to == release_failed || to == outcome_unknown;
        case release_failed: return to == releasing || to == discarded;
        case outcome_unknown: return to == discarded || (to == releasing && force);
        case released:
        case discarded: return false;
    }
    return false;
}

namespace {

bool resolved(held_state s) { return s == held_state::released || s == held_state::discarded; }

// ---------------------------------------------------------------------------------------
// Schema. Migrations are append-only: a released binary never edits one, it adds the next.
// Incidents and audit get their tables in later migrations by their owners (the version
// table and the runner below are all they need).

struct migration {
    int version;
    const char* sql;
};

constexpr migration migrations[] = {
    {1, R"sql(
CREATE TABLE held_requests (
  id               INTEGER PRIMARY KEY,      -- hold order, for keyset paging
  ticket           TEXT NOT NULL UNIQUE,
  method           TEXT NOT NULL,
  target           TEXT NOT NULL,
  route            TEXT NOT NULL,
  upstream         TEXT NOT NULL,
  agent            TEXT NOT NULL,
  rule             TEXT NOT NULL,
  breaker          TEXT NOT NULL,
  breaker_instance TEXT NOT NULL,
  failure_mode     TEXT NOT NULL,
  request_id       TEXT NOT NULL,
  received_ms      INTEGER NOT NULL,
  state            TEXT NOT NULL CHECK (state IN
                     ('held','releasing','released','release_failed','discarded','outcome_unknown')),
  state_ms         INTEGER NOT NULL,
  body_bytes       INTEGER NOT NULL,
  held_bytes       INTEGER NOT NULL,
  release_status   INTEGER,
  released_ms      INTEGER,
  release_attempts INTEGER NOT NULL DEFAULT 0,
  discard_reason   TEXT NOT NULL DEFAULT '',
  actor            TEXT NOT NULL DEFAULT '',
  detail           TEXT NOT NULL DEFAULT ''
);
-- Bodies live apart so listing, counting and pruning never page through megabytes.
CREATE TABLE held_bodies (
  id      INTEGER PRIMARY KEY,               -- = held_requests.id
  headers BLOB NOT NULL,
  body    BLOB NOT NULL
);
CREATE INDEX held_requests_state    ON held_requests(state, state_ms);   -- prune, state filter
CREATE INDEX held_requests_breaker  ON held_requests(breaker, id);
CREATE INDEX held_requests_instance ON held_requests(breaker_instance, id);
CREATE INDEX held_requests_agent    ON held_requests(agent, id);
CREATE INDEX held_requests_rule     ON held_requests(rule, id);
CREATE INDEX held_requests_received ON held_requests(received_ms);
-- Keyed by held_requests.id rather than the ticket: ids grow, so each commit appends to
-- the index instead of touching a random page per hold (tickets are random by design).
CREATE TABLE quarantine_history (
  id         INTEGER PRIMARY KEY,
  held_id    INTEGER NOT NULL,
  ticket     TEXT NOT NULL,
  from_state TEXT,
  to_state   TEXT NOT NULL,
  at_ms      INTEGER NOT NULL,
  actor      TEXT NOT NULL,
  detail     TEXT NOT NULL
);
CREATE INDEX quarantine_history_held ON quarantine_history(held_id, id);
-- The database itself refuses a transition the state machine does not allow, so no code
-- path (or a hand-written UPDATE) can release a released request again.
CREATE TRIGGER held_requests_transition BEFORE UPDATE OF state ON held_requests
WHEN NOT (
     (OLD.state = 'held'            AND NEW.state IN ('releasing', 'discarded'))
  OR (OLD.state = 'releasing'       AND NEW.state IN ('released', 'release_failed', 'outcome_unknown'))
  OR (OLD.state = 'release_failed'  AND NEW.state IN ('releasing', 'discarded'))
  OR (OLD.state = 'outcome_unknown' AND NEW.state IN ('releasing', 'discarded')))
BEGIN
  SELECT RAISE(ABORT, 'invalid quarantine state transition');
END;
-- Breaker instances that are not closed+automatic (tripped, forced, shadow), with their
-- operator mode and last trip; times are wall-clock milliseconds.
CREATE TABLE breaker_state (
  instance        TEXT PRIMARY KEY,
  breaker         TEXT NOT NULL,
  key             TEXT NOT NULL,
  state           TEXT NOT NULL,
  mode            TEXT NOT NULL,
  mode_expires_ms INTEGER,
  opened_at_ms    INTEGER NOT NULL,
  cooldown_ms     INTEGER NOT NULL,
  trips           INTEGER NOT NULL,
  trip_kind       TEXT,                       -- NULL: no last trip
  trip_actor      TEXT,
  trip_reason     TEXT,
  trip_rule       TEXT,
  trip_key        TEXT,
  trip_value      REAL,
  trip_limit      REAL,
  trip_window_ms  INTEGER,
  trip_request_id TEXT,
  trip_at_ms      INTEGER
);
)sql"},
    // Control plane: the hash-chained audit log and the last config versions.
    {2, R"sql(
CREATE TABLE audit (
  id        INTEGER PRIMARY KEY,
  at_ms     INTEGER NOT NULL,
  actor     TEXT NOT NULL,
  role      TEXT NOT NULL,
  method    TEXT NOT NULL,
  path      TEXT NOT NULL,
  target    TEXT NOT NULL,
  params    TEXT NOT NULL,
  reason    TEXT NOT NULL,
  result    TEXT NOT NULL,
  diff      TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  hash      TEXT NOT NULL
);
CREATE TABLE audit_head (
  one       INTEGER PRIMARY KEY CHECK (one = 1),
  last_id   INTEGER NOT NULL,
  last_hash TEXT NOT NULL
);
CREATE TABLE config_versions (
  version   INTEGER PRIMARY KEY AUTOINCREMENT,
  at_ms     INTEGER NOT NULL,
  actor     TEXT NOT NULL,
  reason    TEXT NOT NULL,
  json      TEXT NOT NULL
);
)sql"},
    // A client that retries a hold it never got the 202 for (a timeout while the hold was
    // committed) sends its Idempotency-Key again: the retry gets the first hold's ticket, so
    // one request is one record and is released once. The fingerprint (SHA-256 of method,
    // target and the body's SHA-256) tells a retry from another request reusing the key.
    {3, R"sql(
ALTER TABLE held_requests ADD COLUMN idem_key TEXT NOT NULL DEFAULT '';
ALTER TABLE held_requests ADD COLUMN idem_fingerprint TEXT NOT NULL DEFAULT '';
CREATE INDEX held_requests_idem ON held_requests(idem_key, route, agent) WHERE idem_key != '';
)sql"},
    // The clocks when breaker_state was last written: the boot (kernel boot id) and a
    // steady-clock reading beside the wall-clock one. A restart within the same boot turns
    // the saved wall-clock times back into the exact steady-clock times they were, so a
    // wall-clock step while breakerbox was down (NTP, `date -s`) neither shortens a cooldown
    // or an operator's mode (a breaker reopening early) nor lengthens it.
    {4, R"sql(
CREATE TABLE breaker_state_clock (
  one       INTEGER PRIMARY KEY CHECK (one = 1),
  boot_id   TEXT NOT NULL,
  steady_ms INTEGER NOT NULL,
  wall_ms   INTEGER NOT NULL
);
)sql"},
    // What a pruned record leaves of its Idempotency-Key: a client retrying a hold after its
    // record was released and pruned (automation platforms back off for hours; retention may
    // be a minute) still gets the first ticket, not a second hold and a second send. Kept
    // for idempotency_memory after the prune.
    {5, R"sql(
CREATE TABLE idem_tombstones (
  idem_key    TEXT NOT NULL,
  route       TEXT NOT NULL,
  agent       TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  ticket      TEXT NOT NULL,
  state       TEXT NOT NULL,
  pruned_ms   INTEGER NOT NULL,
  PRIMARY KEY (idem_key, route, agent)
) WITHOUT ROWID;
CREATE INDEX idem_tombstones_pruned ON idem_tombstones(pruned_ms);
)sql"},
    // The counts of caps and baselines (rules::rule_meter::encode) and the sends duplicates
    // guards remember, saved every second (the rules whose counts changed) and at shutdown,
    // so a restart does not hand every cap a fresh window (PRODUCT.md principle 4). Each
    // row's clocks map its times onto the next process's clock, as breaker_state_clock does
    // for breakers.
    {6, R"sql(
CREATE TABLE rule_meters (
  rule_id     TEXT PRIMARY KEY,
  fingerprint INTEGER NOT NULL,
  state       BLOB NOT NULL,
  boot_id     TEXT NOT NULL,
  steady_ms   INTEGER NOT NULL,
  wall_ms     INTEGER NOT NULL
) WITHOUT ROWID;
)sql"},
    // The breaker's reset policy when its state was saved ('automatic' or 'manual'; NULL
    // in rows saved before): tells an operator's trip that a self-resetting breaker was set
    // back to auto on apart from one saved under a manual reset (breakers::instance_snapshot).
    {7, R"sql(
ALTER TABLE breaker_state ADD COLUMN reset TEXT;
)sql"},
    // A throttling instance's recent admissions (wall-clock ms, int64 each, oldest first;
    // NULL: none), so a restart does not grant a fresh budget of R on top of the last R.
    {8, R"sql(
ALTER TABLE breaker_state ADD COLUMN throttle_ms BLOB;
)sql"},
    // The Idempotency-Keys of requests sent live (proxy/forwarded_keys.hpp), as 64-bit
    // digests of (key, route, agent) (of (key, agent) from migration 13 on) with the
    // wall-clock time of their last send: a retry
    // after a restart, while a breaker quarantines, is refused rather than held and released
    // into a second send. Written every second (what changed) and at shutdown.
    {9, R"sql(
CREATE TABLE forwarded_keys (
  digest  INTEGER PRIMARY KEY,
  sent_ms INTEGER NOT NULL
);
CREATE INDEX forwarded_keys_sent ON forwarded_keys(sent_ms);
)sql"},
    // The config file as breakerbox last read it (at a start, a SIGHUP, POST
    // /v1/config/reload): its SHA-256 and the config version it became. A start or SIGHUP
    // that finds the file unchanged since keeps a config applied through the admin API after
    // it, so a restart or a certificate-renewal SIGHUP does not undo an emergency tightening;
    // an edited file applies.
    {10, R"sql(
CREATE TABLE config_file (
  one     INTEGER PRIMARY KEY CHECK (one = 1),
  sha256  TEXT NOT NULL,
  version INTEGER NOT NULL
);
)sql"},
    // The sandbox that applied to a request when it was held (a sandbox breaker's instance,
    // or agent/<id> for an agent in sandbox mode): the record holds the request as sent, for
    // a real send, and is not released while that sandbox still applies.
    {11, R"sql(
ALTER TABLE held_requests ADD COLUMN sandboxed_by TEXT NOT NULL DEFAULT '';
)sql"},
    // The highest record id ever given: SQLite gives a new row max(id) + 1, so a prune of the
    // newest record handed its id to the next hold, and a bulk release bounded by the id it
    // saw at its start (upto_id) could take in a request held after it (with the wall clock
    // stepped back, its time bound too). Ids are given above this floor, never again.
    {12, R"sql(
CREATE TABLE held_id_floor (
  one     INTEGER PRIMARY KEY CHECK (one = 1),
  last_id INTEGER NOT NULL
);
INSERT INTO held_id_floor(one, last_id) SELECT 1, coalesce(max(id), 0) FROM held_requests;
)sql"},
    // A client's Idempotency-Key is its agent's, whichever route carries it (a renamed
    // route made a retry a second request: a second hold, or a hold of what was sent live,
    // and a second send). Records are looked up by key and agent. The version also keeps an
    // older breakerbox, which scoped keys by route, from opening the store (a rollback would
    // miss the keys sent live since, whose digests it cannot read); the digests by route it
    // wrote are looked up until they age out (keys_by_agent_since_ms). A GET, HEAD or
    // OPTIONS held before keeps no key: reads do not use theirs (proxy/session.cpp), and one
    // would refuse a write under its key on any route.
    {13, R"sql(
DROP INDEX held_requests_idem;
UPDATE held_requests SET idem_key = '', idem_fingerprint = '' WHERE method IN ('GET', 'HEAD', 'OPTIONS');
CREATE INDEX held_requests_idem_agent ON held_requests(idem_key, agent) WHERE idem_key != '';
)sql"},
};

constexpr int latest_version = 13;

// How long a pruned record's Idempotency-Key is remembered after the prune (so at least
// retention + this after the record was resolved).
constexpr std::int64_t idempotency_memory_ms = 7LL * 24 * 3600 * 1000;

// The states of a record that was sent, or may have been, as an SQL list. (A tombstone keeps
// its record's last state: released or discarded.)
constexpr const char* sent_states = "('releasing', 'released', 'outcome_unknown')";

// ---------------------------------------------------------------------------------------
// Thin SQLite wrappers (no exceptions: every call returns the SQLite code).

bool is_io_fault(int rc) {
    switch (rc & 0xff) {
        case SQLITE_FULL:
        case SQLITE_IOERR:
        case SQLITE_CORRUPT:
        case SQLITE_NOTADB:
        case SQLITE_CANTOPEN:
        case SQLITE_NOMEM:
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
        case SQLITE_READONLY:
        case SQLITE_PROTOCOL:
            return true;
        default:
            return false;
    }
}

class statement {
public:
    explicit statement(sqlite3_stmt* s, bool owned = false) : s_(s), owned_(owned) {}
    ~statement() {
        if (s_ == nullptr) {
            return;
        }
        if (owned_) {
            sqlite3_finalize(s_);
        } else {
            sqlite3_reset(s_);
            sqlite3_clear_bindings(s_);
        }
    }
    statement(const statement&) = delete;
    statement& operator=(const statement&) = delete;

    bool valid() const { return s_ != nullptr; }
    // Bound values must outlive the statement object (SQLITE_STATIC: no copy of big bodies).
    void text(int i, std::string_view v) { sqlite3_bind_text(s_, i, v.empty() ? "" : v.data(), static_cast<int>(v.size()), SQLITE_STATIC); }
    void blob(int i, std::string_view v) {
        sqlite3_bind_blob64(s_, i, v.empty() ? "" : v.data(), v.size(), SQLITE_STATIC);
    }
    void i64(int i, std::int64_t v) { sqlite3_bind_int64(s_, i, v); }
    void f64(int i, double v) { sqlite3_bind_double(s_, i, v); }
    void null(int i) { sqlite3_bind_null(s_, i); }
    int step() { return sqlite3_step(s_); }

    bool is_null(int i) const { return sqlite3_column_type(s_, i) == SQLITE_NULL; }
    bool is_integer(int i) const { return sqlite3_column_type(s_, i) == SQLITE_INTEGER; }
    std::int64_t col_i64(int i) const { return sqlite3_column_int64(s_, i); }
    double col_f64(int i) const { return sqlite3_column_double(s_, i); }
    std::string col_str(int i) const {
        const void* p = sqlite3_column_blob(s_, i);
        const int n = sqlite3_column_bytes(s_, i);
        return p == nullptr ? std::string{} : std::string{static_cast<const char*>(p), static_cast<std::size_t>(n)};
    }
    int changes() const { return sqlite3_changes(sqlite3_db_handle(s_)); }

private:
    sqlite3_stmt* s_;
    bool owned_;
};

// One SQLite connection and its prepared statements. Used by one thread at a time.
class connection {
public:
    connection() = default;
    ~connection() { close(); }
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;

    void close() {
        for (auto& [sql, s] : cache_) {
            sqlite3_finalize(s);
        }
        cache_.clear();
        if (db_ != nullptr) {
            sqlite3_close_v2(db_);
            db_ = nullptr;
        }
    }

    int open(const std::string& path, std::chrono::milliseconds busy_timeout, const std::string& vfs) {
        const int rc = sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                       vfs.empty() ? nullptr : vfs.c_str());
        if (db_ != nullptr) {
            sqlite3_extended_result_codes(db_, 1);
            sqlite3_busy_timeout(db_, static_cast<int>(busy_timeout.count()));
        }
        return rc;
    }

    sqlite3* db() const { return db_; }
    std::string error() const { return db_ == nullptr ? "out of memory" : sqlite3_errmsg(db_); }
    sqlite3* handle() const { return db_; }

    int exec(const char* sql) { return sqlite3_exec(db_, sql, nullptr, nullptr, nullptr); }

    // A fixed, row-less statement through the cache: the writer runs BEGIN, SAVEPOINT,
    // RELEASE and COMMIT for every batch and operation, so it should not parse them each time.
    int run(const char* sql) {
        auto s = prepared(sql);
        if (!s.valid()) {
            return sqlite3_errcode(db_) == SQLITE_OK ? SQLITE_ERROR : sqlite3_errcode(db_);
        }
        const int rc = s.step();
        return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
    }

    // Cached statement for a fixed SQL text (keyed by the literal's address).
    statement prepared(const char* sql) {
        auto it = cache_.find(sql);
        if (it == cache_.end()) {
            sqlite3_stmt* s = nullptr;
            if (sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr) != SQLITE_OK) {
                return statement{nullptr};
            }
            it = cache_.emplace(sql, s).first;
        }
        return statement{it->second};
    }

    // One-off statement (dynamic SQL); finalized when the object goes.
    statement once(const std::string& sql) {
        sqlite3_stmt* s = nullptr;
        if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &s, nullptr) != SQLITE_OK) {
            return statement{nullptr, true};
        }
        return statement{s, true};
    }

    // A pragma's single text answer ("" on failure).
    std::string pragma(const std::string& sql) {
        auto s = once(sql);
        if (!s.valid() || s.step() != SQLITE_ROW) {
            return {};
        }
        return s.col_str(0);
    }

private:
    sqlite3* db_ = nullptr;
    std::unordered_map<const char*, sqlite3_stmt*> cache_;
};

// ---------------------------------------------------------------------------------------
// Wall clock <-> steady clock (breaker state: read_clocks below).

std::int64_t wall_ms(const clock& c) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(c.wall_now().time_since_epoch()).count();
}

std::optional<breakers::state> parse_breaker_state(std::string_view s) {
    for (auto st : {breakers::state::closed, breakers::state::open, breakers::state::half_open}) {
        if (breakers::to_string(st) == s) {
            return st;
        }
    }
    return std::nullopt;
}

// The clocks at the moment a breaker snapshot was converted (breaker_state_clock).
struct clock_reading {
    std::string boot_id;
    std::int64_t steady_ms = 0;
    std::int64_t wall_ms = 0;
};

clock_reading read_clocks(const clock& c) {
    clock_reading r;
    r.boot_id = c.boot_id();
    r.steady_ms = std::chrono::duration_cast<std::chrono::milliseconds>(c.now().time_since_epoch()).count();
    r.wall_ms = wall_ms(c);
    return r;
}

// The latest wall-clock time a stored breaker time may plausibly hold (the year 2286).
constexpr std::int64_t max_wall_ms = 10'000'000'000'000;

// A breaker snapshot already converted to wall-clock form (on the caller's thread, so the
// conversion uses the clock reading closest to the snapshot).
struct breaker_row {
    std::string instance, breaker, key, state, mode;
    std::optional<std::string> reset;
    std::string throttle_ms;  // int64 wall-clock ms each, oldest first
    std::optional<std::int64_t> mode_expires_ms;
    std::int64_t opened_at_ms = 0;
    std::int64_t cooldown_ms = 0;
    std::int64_t trips = 0;
    bool has_trip = false;
    std::string kind, actor, reason, rule, trip_key, request_id;
    double value = 0, limit = 0;
    std::int64_t window_ms = 0, at_ms = 0;
};

// ---------------------------------------------------------------------------------------
// Held counters (what the limits are checked against).

struct counters {
    std::int64_t count = 0;
    std::int64_t bytes = 0;
    std::unordered_map<std::string, std::pair<std::int64_t, std::int64_t>> per_breaker;

    void add(const std::string& breaker, std::int64_t dc, std::int64_t db) {
        count += dc;
        bytes += db;
        auto& p = per_breaker[breaker];
        p.first += dc;
        p.second += db;
        if (p.first == 0 && p.second == 0) {
            per_breaker.erase(breaker);
        }
    }
    void merge(const counters& d) {
        for (const auto& [b, p] : d.per_breaker) {
            add(b, p.first, p.second);
        }
    }
    std::pair<std::int64_t, std::int64_t> of(const std::string& breaker) const {
        auto it = per_breaker.find(breaker);
        return it == per_breaker.end() ? std::pair<std::int64_t, std::int64_t>{0, 0} : it->second;
    }
    void clear() {
        count = bytes = 0;
        per_breaker.clear();
    }
};

std::string breaker_of(const held_request& r) {
    if (!r.breaker.empty()) {
        return r.breaker;
    }
    return r.breaker_instance.substr(0, r.breaker_instance.find('/'));
}

constexpr const char* summary_columns =
    "h.ticket, h.method, h.target, h.route, h.upstream, h.agent, h.rule, h.breaker, h.breaker_instance, "
    "h.failure_mode, h.request_id, h.received_ms, h.state, h.state_ms, h.body_bytes, h.held_bytes, "
    "h.release_status, h.released_ms, h.release_attempts, h.discard_reason, h.actor, h.detail, h.sandboxed_by, h.id";
constexpr int summary_column_count = 24;

void read_summary(const statement& s, held_request& r) {
    r.ticket = s.col_str(0);
    r.method = s.col_str(1);
    r.target = s.col_str(2);
    r.route = s.col_str(3);
    r.upstream = s.col_str(4);
    r.agent = s.col_str(5);
    r.rule = s.col_str(6);
    r.breaker = s.col_str(7);
    r.breaker_instance = s.col_str(8);
    r.failure_mode = s.col_str(9);
    r.request_id = s.col_str(10);
    r.received_ms = s.col_i64(11);
    r.state = parse_held_state(s.col_str(12)).value_or(held_state::held);
    r.state_ms = s.col_i64(13);
    r.body_bytes = s.col_i64(14);
    r.held_bytes = s.col_i64(15);
    if (!s.is_null(16)) {
        r.release_status = static_cast<int>(s.col_i64(16));
    }
    if (!s.is_null(17)) {
        r.released_ms = s.col_i64(17);
    }
    r.release_attempts = static_cast<std::uint32_t>(s.col_i64(18));
    r.discard_reason = s.col_str(19);
    r.actor = s.col_str(20);
    r.detail = s.col_str(21);
    r.sandboxed_by = s.col_str(22);
    r.id = s.col_i64(23);
}

// What tells a retry from another request under the same Idempotency-Key: SHA-256 of the
// method, the target and the body's SHA-256 (stored with each keyed hold).
std::string request_fingerprint(std::string_view method, std::string_view target, std::string_view body) {
    return sha256_hex(std::string{method} + "\n" + std::string{target} + "\n" + sha256_hex(body));
}

result unavailable(std::string message) { return result::failure("store_unavailable", std::move(message)); }

}  // namespace

// ---------------------------------------------------------------------------------------
// The implementation.

class database::impl {
public:
    impl(store_options o, const clock& c) : opt_(std::move(o)), clock_(c) {}
    ~impl() { shutdown(); }

    bool open(std::string* error);
    void shutdown();

    // What an operation did inside the batch. fatal_rc != 0 aborts the whole transaction.
    struct outcome {
        outcome(result res) : r(std::move(res)) {}  // NOLINT: implicit on purpose
        outcome(result res, int rc, std::string message)
            : r(std::move(res)), fatal_rc(rc), fatal_message(std::move(message)) {}
        result r;
        int fatal_rc = 0;
        std::string fatal_message;
    };
    struct batch_ctx {
        connection& c;
        const counters& committed;   // as of the last commit
        const counters& batch;       // earlier successful ops of this transaction
        counters op;                 // this op's change, merged into batch if it succeeds
    };
    struct op {
        std::function<outcome(batch_ctx&)> apply;
        done_fn done;
        std::size_t bytes = 0;
        std::uint64_t seq = 0;
        bool essential = false;
    };

    // `essential`: past the queue's bounds too (breaker state: the state writer keeps at most
    // one save in flight, so it adds one op; refusing it under a flood of holds would leave
    // the trip that caused them undurable while its holds are answered 202).
    void enqueue(std::function<outcome(batch_ctx&)> apply, done_fn done, std::size_t bytes, bool essential = false);

    // Operations (run on the writer thread, inside the batch transaction; see run_batch).
    outcome do_hold(batch_ctx& ctx, held_request& r, const std::string& headers_blob, const std::string& fingerprint);
    outcome do_earlier_hold(batch_ctx& ctx, const std::string& key, const std::string& agent,
                            const std::string& fingerprint);
    outcome do_transition(batch_ctx& ctx, const std::string& ticket, held_state to, bool force,
                          const std::string& actor, const std::string& detail, int status, const std::string& reason,
                          std::optional<held_state> expected = std::nullopt,
                          std::optional<std::uint32_t> expected_attempts = std::nullopt);
    outcome do_prune(batch_ctx& ctx, std::int64_t cutoff, std::size_t max_records);
    outcome do_save_breakers(batch_ctx& ctx, const std::vector<breaker_row>& rows, const clock_reading& clocks);
    outcome do_save_meters(batch_ctx& ctx, const std::vector<saved_meter>& changed, const std::vector<std::string>& keep,
                           const clock_reading& clocks);
    outcome do_save_forwarded_keys(batch_ctx& ctx, const std::vector<forwarded_key>& changed, std::int64_t older_than_ms);

    // Reads.
    class reader_lease;
    reader_lease lease() const;

    store_options opt_;
    // opt_.limits as a reload may change them (set_limits); read by the writer per hold.
    mutable std::mutex limits_mu_;
    store_limits limits() const {
        std::lock_guard lock{limits_mu_};
        return opt_.limits;
    }
    const clock& clock_;
    // Hashes of (Idempotency-Key, agent) of every record and tombstone: most live
    // requests with a key are told apart from held ones without a read (earlier_hold). Only
    // grows (a pruned tombstone's hash stays until restart: it costs one read, never a miss).
    mutable std::mutex idem_mu_;
    std::unordered_set<std::uint64_t> idem_hashes_;
    void note_idempotency_key(std::string_view key, std::string_view agent) {
        const std::uint64_t h = idem_hash(key, agent);
        std::lock_guard lock{idem_mu_};
        idem_hashes_.insert(h);
    }
    bool may_hold_key(std::string_view key, std::string_view agent) const {
        const std::uint64_t h = idem_hash(key, agent);
        std::lock_guard lock{idem_mu_};
        return idem_hashes_.contains(h);
    }
    static std::uint64_t idem_hash(std::string_view key, std::string_view agent) {
        std::string joined;
        joined.reserve(key.size() + agent.size() + 1);
        joined.append(key).append(1, '\0').append(agent);
        return std::hash<std::string>{}(joined);
    }
    bool load_idempotency_keys(std::string* error);
    int lock_fd_ = -1;
    int db_fd_ = -1;  // the database file itself, flocked beside the lock file (open())
    // The database files this process has open, by (device, inode): a second open of one is
    // refused before it opens a descriptor of the file.
    struct file_id_set {
        using id = std::pair<dev_t, ino_t>;
        bool contains(const id& f) {
            std::lock_guard lock{mu};
            return ids.contains(f);
        }
        void insert(const id& f) {
            std::lock_guard lock{mu};
            ids.insert(f);
        }
        void erase(const id& f) {
            std::lock_guard lock{mu};
            ids.erase(f);
        }
        std::mutex mu;
        std::set<id> ids;
    };
    static file_id_set& open_files() {
        static file_id_set files;
        return files;
    }
    std::optional<std::pair<dev_t, ino_t>> db_file_;  // this store's, while in open_files()
    int schema_version_ = 0;
    std::int64_t keys_by_agent_since_ms_ = 0;  // migration 13's applied_ms
    std::uint64_t recovered_ = 0;
    // The audit anchor (database::audit_anchor): the head read at open, then each append
    // once committed.
    mutable std::mutex anchor_mu_;
    std::int64_t anchor_id_ = 0;
    std::string anchor_hash_;
    // Set (once) when an append found the chain no longer holding the anchor: a later
    // append must not launder it (the anchor would move past the damage).
    std::int64_t tampered_at_ = 0;
    std::string tampered_;

    connection writer_;  // the writer thread's after open()

    mutable std::mutex read_mu_;
    mutable std::condition_variable read_cv_;
    mutable std::vector<std::unique_ptr<connection>> readers_;

    // Queue, stats and the fault seam.
    mutable std::mutex mu_;
    std::condition_variable wake_;
    mutable std::condition_variable done_cv_;
    std::deque<op> queue_;
    std::size_t queue_bytes_ = 0;
    std::uint64_t enqueued_ = 0;
    std::uint64_t completed_ = 0;
    bool stop_ = false;
    bool paused_ = false;
    int fault_code_ = 0;
    int value_limit_ = 0;  // limit_value_bytes(): applied to the writer's connection by the writer
    int fault_left_ = 0;
    int fault_after_ = 0;
    fault_point fault_where_ = fault_point::commit;
    writer_stats stats_;

    // Committed held counters: written by the writer after each commit, read by counts().
    mutable std::mutex counters_mu_;
    counters committed_;

    std::thread thread_;
    bool started_ = false;

    // Checkpoints run on their own thread and connection, so copying the WAL into the main
    // file (and its fsync) overlaps with commits instead of stalling the writer after one.
    static constexpr int checkpoint_pages = 1000;  // SQLite's default autocheckpoint
    connection checkpointer_;
    std::thread checkpoint_thread_;
    std::mutex checkpoint_mu_;
    std::condition_variable checkpoint_cv_;
    bool checkpoint_wanted_ = false;
    bool checkpoint_stop_ = false;
    void run_checkpoints();
    static int on_wal_commit(void* self, sqlite3* db, const char* name, int pages);

private:
    bool migrate(std::string* error);
    bool recover_after_crash(std::string* error);
    bool read_audit_anchor(std::string* error);
    bool load_counters(std::string* error);
    void run();
    void run_batch(std::vector<op>& batch);
    bool seal_failed_commit();
    bool file_moved();
    outcome fatal(int rc) { return {unavailable(writer_.error()), rc, writer_.error()}; }
    outcome fatal_stmt(int rc, const char* what) {
        return {unavailable(std::string{what} + ": " + writer_.error()), rc, writer_.error()};
    }
};

class database::impl::reader_lease {
public:
    reader_lease(const impl& owner, std::unique_ptr<connection> c) : owner_(owner), c_(std::move(c)) {}
    ~reader_lease() {
        if (c_) {
            std::lock_guard lock{owner_.read_mu_};
            owner_.readers_.push_back(std::move(c_));
            owner_.read_cv_.notify_one();
        }
    }
    reader_lease(reader_lease&&) = default;
    connection& operator*() const { return *c_; }
    connection* operator->() const { return c_.get(); }

private:
    const impl& owner_;
    std::unique_ptr<connection> c_;
};

database::impl::reader_lease database::impl::lease() const {
    std::unique_lock lock{read_mu_};
    read_cv_.wait(lock, [&] { return !readers_.empty(); });
    auto c = std::move(readers_.back());
    readers_.pop_back();
    return reader_lease{*this, std::move(c)};
}

bool database::impl::open(std::string* error) {
    const std::string& path = opt_.path;
    auto fail = [&](std::string why) {
        *error = "store " + path + ": " + why;
        return false;
    };
    std::error_code ec;
    const auto parent = std::filesystem::path{path}.parent_path();
    if (!parent.empty()) {
        std::filesystem::create_directories(parent, ec);
        if (ec) {
            return fail("cannot create directory " + parent.string() + ": " + ec.message());
        }
    }

    // The lock. SQLite's own locks cannot say "this file is ours alone" while we keep
    // several connections: locking_mode=EXCLUSIVE in WAL mode shuts out our own read
    // connections too, and SQLite's POSIX fcntl locks are per process, so they do not
    // see a second open in the same process. flock(2) on a lock file next to the database
    // is per open file description (so a second `database` in this process is refused as
    // well as another process), is dropped by the kernel when the process dies (no stale
    // lock after a crash), and never interferes with SQLite's own fcntl locks.
    const std::string lock_path = path + ".lock";
    lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd_ < 0) {
        return fail("cannot open lock file " + lock_path + ": " + std::strerror(errno));
    }
    if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
        const int err = errno;
        char buf[32] = {};
        const auto n = ::pread(lock_fd_, buf, sizeof buf - 1, 0);
        std::string holder = n > 0 ? std::string{buf, static_cast<std::size_t>(n)} : std::string{};
        while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) {
            holder.pop_back();
        }
        ::close(lock_fd_);
        lock_fd_ = -1;
        if (err == EWOULDBLOCK) {
            return fail("already in use by another breakerbox (" +
                        (holder.empty() ? std::string{"lock held"} : "pid " + holder) + ", lock file " + lock_path +
                        "); only one process may open a store");
        }
        return fail("cannot lock " + lock_path + ": " + std::strerror(err));
    }
    const std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(lock_fd_, 0) != 0 || ::pwrite(lock_fd_, pid.data(), pid.size(), 0) < 0) {
        // Only the message for the next process suffers; the lock itself is held.
    }
    // The database file is flocked too: a lock file holds a pid like a pidfile, and one
    // deleted by hand (or by a cleanup job) would let a second breakerbox open the store,
    // each overwriting the other's breaker state. flock(2) and SQLite's fcntl locks do not
    // see each other on a local filesystem. This descriptor is closed only after SQLite's
    // connections (shutdown): closing any descriptor of a file drops the process's fcntl
    // locks on it. A new file is created owner-only: it holds request bodies.
    // A store this process has open already (its lock file deleted) is refused before a
    // descriptor of the file is opened here: closing that one would drop the open store's
    // SQLite locks with it.
    if (struct stat st{}; ::stat(path.c_str(), &st) == 0 && open_files().contains({st.st_dev, st.st_ino})) {
        return fail("already in use by this breakerbox (its lock file " + lock_path +
                    " was deleted or replaced); only one process may open a store, once");
    }
    db_fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (db_fd_ < 0) {
        return fail("cannot open: " + std::string{std::strerror(errno)});
    }
    if (::flock(db_fd_, LOCK_EX | LOCK_NB) != 0) {
        const int err = errno;
        ::close(db_fd_);
        db_fd_ = -1;
        if (err == EWOULDBLOCK) {
            return fail("already in use by another breakerbox (the database file is locked, although its lock file " +
                        lock_path + " was not: it was deleted or replaced while that process ran); only one "
                        "process may open a store");
        }
        return fail("cannot lock the database file: " + std::string{std::strerror(err)});
    }
    if (struct stat st{}; ::fstat(db_fd_, &st) == 0) {
        db_file_ = {st.st_dev, st.st_ino};
        open_files().insert(*db_file_);
    }

    if (writer_.open(path, opt_.busy_timeout, opt_.vfs) != SQLITE_OK) {
        return fail("cannot open: " + writer_.error());
    }
    // journal_mode answers the mode in force: anything but "wal" (a filesystem without
    // shared memory, a read-only file) means we cannot give the guarantees we promise.
    const std::string mode = writer_.pragma("PRAGMA journal_mode=WAL");
    if (mode != "wal") {
        return fail(mode.empty() ? "not a usable SQLite database: " + writer_.error()
                                 : "cannot switch to WAL mode (journal_mode is " + mode + ")");
    }
    // FULL: in WAL mode, NORMAL does not fsync at commit, and a 202 promises the request is
    // on disk. journal_size_limit keeps the WAL from staying huge after big bodies.
    if (writer_.exec("PRAGMA synchronous=FULL") != SQLITE_OK ||
        writer_.exec("PRAGMA journal_size_limit=67108864") != SQLITE_OK ||
        writer_.exec("PRAGMA temp_store=MEMORY") != SQLITE_OK) {
        return fail("cannot configure: " + writer_.error());
    }
    if (!migrate(error) || !recover_after_crash(error) || !load_counters(error) || !load_idempotency_keys(error) ||
        !read_audit_anchor(error)) {
        return false;
    }
    for (std::size_t i = 0; i < std::max<std::size_t>(1, opt_.read_connections); ++i) {
        auto c = std::make_unique<connection>();
        if (c->open(path, opt_.busy_timeout, opt_.vfs) != SQLITE_OK || c->exec("PRAGMA query_only=1") != SQLITE_OK) {
            return fail("cannot open a read connection: " + c->error());
        }
        readers_.push_back(std::move(c));
    }
    if (checkpointer_.open(path, opt_.busy_timeout, opt_.vfs) != SQLITE_OK ||
        checkpointer_.exec("PRAGMA synchronous=FULL") != SQLITE_OK ||
        writer_.exec("PRAGMA wal_autocheckpoint=0") != SQLITE_OK) {
        return fail("cannot set up checkpoints: " + checkpointer_.error());
    }
    sqlite3_wal_hook(writer_.db(), &impl::on_wal_commit, this);
    checkpoint_thread_ = std::thread{[this] { run_checkpoints(); }};
    thread_ = std::thread{[this] { run(); }};
    started_ = true;
    return true;
}

int database::impl::on_wal_commit(void* self, sqlite3* db, const char* name, int pages) {
    auto* me = static_cast<impl*>(self);
    if (pages >= 16 * checkpoint_pages) {
        // The background checkpoint cannot keep up (or a long reader holds it back): let
        // the writer do one itself rather than let the WAL grow without bound.
        sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
    } else if (pages >= checkpoint_pages) {
        {
            std::lock_guard lock{me->checkpoint_mu_};
            me->checkpoint_wanted_ = true;
        }
        me->checkpoint_cv_.notify_one();
    }
    return SQLITE_OK;
}

void database::impl::run_checkpoints() {
    std::unique_lock lock{checkpoint_mu_};
    for (;;) {
        checkpoint_cv_.wait(lock, [&] { return checkpoint_stop_ || checkpoint_wanted_; });
        if (checkpoint_stop_) {
            return;
        }
        checkpoint_wanted_ = false;
        lock.unlock();
        // PASSIVE never blocks the writer or readers. A failure (disk full) leaves the WAL
        // as it is: every commit in it is still durable, and the next attempt retries.
        sqlite3_wal_checkpoint_v2(checkpointer_.db(), "main", SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
        lock.lock();
    }
}

bool database::impl::migrate(std::string* error) {
    auto fail = [&](std::string why) {
        *error = "store " + opt_.path + ": " + why + ": " + writer_.error();
        return false;
    };
    if (writer_.exec("CREATE TABLE IF NOT EXISTS schema_version ("
                     "version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)") != SQLITE_OK) {
        return fail("cannot create schema_version");
    }
    {
        // (Finished before the migrations: a statement still open would keep a DROP from running.)
        auto v = writer_.once("SELECT coalesce(max(version), 0) FROM schema_version");
        if (!v.valid() || v.step() != SQLITE_ROW) {
            return fail("cannot read schema_version");
        }
        schema_version_ = static_cast<int>(v.col_i64(0));
    }
    if (schema_version_ > latest_version) {
        *error = "store " + opt_.path + ": schema version " + std::to_string(schema_version_) +
                 " is newer than this breakerbox understands (" + std::to_string(latest_version) +
                 "); refusing to open it";
        return false;
    }
    for (const auto& m : migrations) {
        if (m.version <= schema_version_) {
            continue;
        }
        // Each migration and its version row commit together, so a crash mid-way leaves
        // the previous version intact.
        if (writer_.exec("BEGIN IMMEDIATE") != SQLITE_OK) {
            return fail("cannot begin migration " + std::to_string(m.version));
        }
        auto ins = writer_.once("INSERT INTO schema_version(version, applied_ms) VALUES(?, ?)");
        bool ok = writer_.exec(m.sql) == SQLITE_OK && ins.valid();
        if (ok) {
            ins.i64(1, m.version);
            ins.i64(2, wall_ms(clock_));
            ok = ins.step() == SQLITE_DONE;
        }
        if (!ok || writer_.exec("COMMIT") != SQLITE_OK) {
            std::string why = "migration " + std::to_string(m.version) + " failed";
            *error = "store " + opt_.path + ": " + why + ": " + writer_.error();
            writer_.exec("ROLLBACK");
            return false;
        }
        schema_version_ = m.version;
    }
    // (A store at 13 without its row, edited by hand: no keys by route are looked for.)
    auto since = writer_.once("SELECT applied_ms FROM schema_version WHERE version = 13");
    const int since_rc = since.valid() ? since.step() : SQLITE_ERROR;
    if (since_rc != SQLITE_ROW && since_rc != SQLITE_DONE) {
        return fail("cannot read schema_version");
    }
    keys_by_agent_since_ms_ = since_rc == SQLITE_ROW ? since.col_i64(0) : 0;
    return true;
}

bool database::impl::read_audit_anchor(std::string* error) {
    auto head = writer_.once("SELECT last_id, last_hash FROM audit_head WHERE one = 1");
    if (!head.valid()) {
        *error = "store " + opt_.path + ": cannot read the audit head: " + writer_.error();
        return false;
    }
    if (head.step() == SQLITE_ROW) {
        std::lock_guard lock{anchor_mu_};
        anchor_id_ = head.col_i64(0);
        anchor_hash_ = head.col_str(1);
    }
    return true;
}

bool database::impl::recover_after_crash(std::string* error) {
    // A record in `releasing` was committed just before its replay was sent; the process
    // died before the result was recorded, so the upstream may or may not have it. Never
    // re-send on our own (PRODUCT.md principle 1): an operator decides.
    const auto now = wall_ms(clock_);
    bool ok = writer_.exec("BEGIN IMMEDIATE") == SQLITE_OK;
    if (ok) {
        auto h = writer_.once(
            "INSERT INTO quarantine_history(held_id, ticket, from_state, to_state, at_ms, actor, detail) "
            "SELECT id, ticket, 'releasing', 'outcome_unknown', ?, 'breakerbox', "
            "'found releasing at start: the replay may or may not have reached the upstream' "
            "FROM held_requests WHERE state = 'releasing'");
        auto u = writer_.once(
            "UPDATE held_requests SET state = 'outcome_unknown', state_ms = ?, actor = 'breakerbox' "
            "WHERE state = 'releasing'");
        ok = h.valid() && u.valid();
        if (ok) {
            h.i64(1, now);
            u.i64(1, now);
            ok = h.step() == SQLITE_DONE && u.step() == SQLITE_DONE;
            recovered_ = ok ? static_cast<std::uint64_t>(u.changes()) : 0;
        }
    }
    if (!ok || writer_.exec("COMMIT") != SQLITE_OK) {
        *error = "store " + opt_.path + ": cannot recover records left releasing: " + writer_.error();
        writer_.exec("ROLLBACK");
        return false;
    }
    return true;
}

bool database::impl::load_counters(std::string* error) {
    auto s = writer_.once(
        "SELECT breaker, count(*), coalesce(sum(held_bytes), 0) FROM held_requests "
        "WHERE state NOT IN ('released', 'discarded') GROUP BY breaker");
    if (!s.valid()) {
        *error = "store " + opt_.path + ": cannot count held requests: " + writer_.error();
        return false;
    }
    int rc = 0;
    while ((rc = s.step()) == SQLITE_ROW) {
        committed_.add(s.col_str(0), s.col_i64(1), s.col_i64(2));
    }
    if (rc != SQLITE_DONE) {
        *error = "store " + opt_.path + ": cannot count held requests: " + writer_.error();
        return false;
    }
    return true;
}

bool database::impl::load_idempotency_keys(std::string* error) {
    auto s = writer_.once(
        "SELECT idem_key, agent FROM held_requests WHERE idem_key != '' "
        "UNION ALL SELECT idem_key, agent FROM idem_tombstones");
    if (!s.valid()) {
        *error = "store " + opt_.path + ": cannot read idempotency keys: " + writer_.error();
        return false;
    }
    int rc = 0;
    while ((rc = s.step()) == SQLITE_ROW) {
        note_idempotency_key(s.col_str(0), s.col_str(1));
    }
    if (rc != SQLITE_DONE) {
        *error = "store " + opt_.path + ": cannot read idempotency keys: " + writer_.error();
        return false;
    }
    return true;
}

void database::impl::shutdown() {
    if (started_) {
        {
            std::lock_guard lock{mu_};
            stop_ = true;
        }
        wake_.notify_all();
        thread_.join();
        {
            std::lock_guard lock{checkpoint_mu_};
            checkpoint_stop_ = true;
        }
        checkpoint_cv_.notify_all();
        checkpoint_thread_.join();
        started_ = false;
    }
    checkpointer_.close();
    readers_.clear();
    // SQLite lets go of the file before the lock does, so the next owner never overlaps us.
    writer_.close();
    if (db_fd_ >= 0) {
        ::close(db_fd_);  // drops its flock
        db_fd_ = -1;
    }
    if (db_file_) {
        open_files().erase(*db_file_);
        db_file_.reset();
    }
    if (lock_fd_ >= 0) {
        ::close(lock_fd_);  // drops the flock
        lock_fd_ = -1;
    }
}

void database::impl::enqueue(std::function<outcome(batch_ctx&)> apply, done_fn done, std::size_t bytes,
                             bool essential) {
    result refused;
    {
        std::lock_guard lock{mu_};
        if (stop_) {
            refused = unavailable("the store is closing");
        } else if (!essential && (queue_.size() >= opt_.queue_max_ops ||
                                  (!queue_.empty() && queue_bytes_ + bytes > opt_.queue_max_bytes))) {
            refused = result::failure("store_busy", "the store's write queue is full (" +
                                                        std::to_string(queue_.size()) + " operations waiting)");
            ++stats_.ops_failed;
        } else {
            queue_.push_back(op{std::move(apply), std::move(done), bytes, ++enqueued_, essential});
            queue_bytes_ += bytes;
        }
    }
    if (refused.ok) {
        wake_.notify_one();
        return;
    }
    if (done) {
        done(refused);
    }
}

void database::impl::run() {
    std::unique_lock lock{mu_};
    for (;;) {
        wake_.wait(lock, [&] { return stop_ || (!paused_ && !queue_.empty()); });
        if (queue_.empty()) {
            if (stop_) {
                return;
            }
            continue;
        }
        // Group commit: take everything that queued up while the last fsync ran (bounded),
        // without waiting for more, so a lone hold pays no extra latency.
        std::vector<op> batch;
        std::size_t bytes = 0;
        const std::size_t max_ops = opt_.group_commit ? std::max<std::size_t>(1, opt_.batch_max_ops) : 1;
        while (!queue_.empty() && batch.size() < max_ops &&
               (batch.empty() || bytes + queue_.front().bytes <= opt_.batch_max_bytes)) {
            bytes += queue_.front().bytes;
            batch.push_back(std::move(queue_.front()));
            queue_.pop_front();
        }
        queue_bytes_ -= bytes;
        lock.unlock();
        run_batch(batch);
        lock.lock();
        completed_ = batch.back().seq;
        done_cv_.notify_all();
    }
}

// A COMMIT that fails in its fsync has already written the transaction's frames, commit
// marker included, to the WAL file; SQLite only leaves them out of the WAL index. Frames in
// the file with a valid checksum chain are replayed by the recovery after a crash: a hold
// answered "not saved" (which the client then sent again) would come back. The next commit
// writes its frames at the same place, and since each frame's checksum chains from the one
// before, the failed transaction's remaining frames no longer verify and recovery stops
// before them. So one small transaction, committed at once, makes "not saved" true. It
// rewrites user_version (nothing reads it) with a new value, so it is never a no-op.
bool database::impl::seal_failed_commit() {
    if (writer_.run("BEGIN IMMEDIATE") != SQLITE_OK) {
        return false;
    }
    const std::string v = writer_.pragma("PRAGMA user_version");
    const long long next = (v.empty() ? 0 : std::atoll(v.c_str()) + 1) & 0x7fffffff;
    if (writer_.exec(("PRAGMA user_version=" + std::to_string(next)).c_str()) != SQLITE_OK ||
        writer_.run("COMMIT") != SQLITE_OK) {
        if (sqlite3_get_autocommit(writer_.db()) == 0) {
            writer_.exec("ROLLBACK");
        }
        return false;
    }
    return true;
}

// Whether the database file is no longer at its path (deleted, renamed, replaced by a
// restored backup). SQLite in WAL mode goes on writing to the open file without a name:
// every commit succeeds, holds are answered 202, and a restart opens whatever is at the path
// now (nothing: a new, empty store), every hold and trip since gone. Asked before each
// commit (one stat(2) of the path per batch, by SQLite's unix VFS). A VFS that cannot tell
// (SQLITE_NOTFOUND) is taken at its word.
bool database::impl::file_moved() {
    int moved = 0;
    return sqlite3_file_control(writer_.db(), "main", SQLITE_FCNTL_HAS_MOVED, &moved) == SQLITE_OK && moved != 0;
}

void database::impl::run_batch(std::vector<op>& batch) {
    int fault = 0;
    fault_point where = fault_point::commit;
    {
        std::lock_guard lock{mu_};
        if (value_limit_ > 0) {
            sqlite3_limit(writer_.db(), SQLITE_LIMIT_LENGTH, std::exchange(value_limit_, 0));
        }
        if (fault_after_ > 0) {
            --fault_after_;
        } else if (fault_left_ > 0) {
            --fault_left_;
            fault = fault_code_;
            where = fault_where_;
        }
    }
    std::vector<result> results(batch.size());
    std::size_t retried = 0;  // essential ops run again on their own after a failed batch
    counters delta;
    int fatal_rc = 0;
    std::string fatal_message;
    auto set_fatal = [&](int rc, std::string message) {
        if (fatal_rc == 0) {
            fatal_rc = rc;
            fatal_message = std::move(message);
        }
    };
    std::size_t ok_ops = 0;
    // One transaction for the batch. Ops run without a savepoint each: a savepoint copies
    // every page an op touches into the statement journal (about a dozen B-tree pages per
    // hold), which cost more than the rest of the hold. An op that fails without having
    // changed a row (a full quarantine, an unknown ticket, a refused transition; SQLite
    // undoes a failed statement by itself) needs no undo. If an op fails after changing
    // rows, the whole transaction is rolled back and the batch runs again with a savepoint
    // per op, so that op is undone alone and the rest still commit. Ops only read and write
    // the database and their own captures, so running one again gives the same outcome.
    enum class attempt_result { done, needs_savepoints };
    auto attempt = [&](bool savepoints) {
        delta = counters{};
        ok_ops = 0;
        if (int rc = writer_.run("BEGIN IMMEDIATE"); rc != SQLITE_OK) {
            set_fatal(rc, writer_.error());
            return attempt_result::done;
        }
        if (fault != 0 && where == fault_point::first_write) {
            set_fatal(fault, std::string{"injected fault: "} + sqlite3_errstr(fault));
            return attempt_result::done;
        }
        for (std::size_t i = 0; i < batch.size(); ++i) {
            if (savepoints) {
                if (int rc = writer_.run("SAVEPOINT op"); rc != SQLITE_OK) {
                    set_fatal(rc, writer_.error());
                    return attempt_result::done;
                }
            }
            const auto changes_before = sqlite3_total_changes64(writer_.db());
            batch_ctx ctx{writer_, committed_, delta, {}};
            outcome out = batch[i].apply(ctx);
            if (out.fatal_rc != 0) {
                set_fatal(out.fatal_rc, out.fatal_message);
                return attempt_result::done;
            }
            if (fault != 0 && where == fault_point::silent_rollback) {
                writer_.run("ROLLBACK");
                fault = 0;  // nobody reports it: only the check below can notice
            }
            // SQLite rolls a whole transaction back by itself on some errors (SQLITE_FULL,
            // IOERR, NOMEM, ...). An op that swallowed such an error would leave the rest of
            // the batch running in autocommit, each statement committed on its own: the batch
            // is then lost as a whole, never written in part.
            if (sqlite3_get_autocommit(writer_.db()) != 0) {
                set_fatal(SQLITE_ABORT, "the transaction was rolled back by SQLite during an operation");
                return attempt_result::done;
            }
            int rc = SQLITE_OK;
            if (out.r.ok) {
                if (savepoints) {
                    rc = writer_.run("RELEASE op");
                }
                delta.merge(ctx.op);
                ++ok_ops;
            } else if (savepoints) {
                rc = writer_.run("ROLLBACK TO op");
                if (rc == SQLITE_OK) {
                    rc = writer_.run("RELEASE op");
                }
            } else if (sqlite3_total_changes64(writer_.db()) != changes_before) {
                return attempt_result::needs_savepoints;
            }
            if (rc != SQLITE_OK) {
                set_fatal(rc, writer_.error());
                return attempt_result::done;
            }
            results[i] = std::move(out.r);
        }
        return attempt_result::done;
    };
    const bool rerun = attempt(false) == attempt_result::needs_savepoints;
    if (rerun) {
        if (int rc = writer_.run("ROLLBACK"); rc != SQLITE_OK) {
            set_fatal(rc, writer_.error());
        } else {
            attempt(true);
        }
    }
    bool commit_failed = false;
    if (fatal_rc == 0) {
        if (fault != 0) {
            set_fatal(fault, std::string{"injected fault: "} + sqlite3_errstr(fault));
        } else if (file_moved()) {
            set_fatal(SQLITE_IOERR, "its file " + opt_.path +
                                        " was deleted, moved or replaced while breakerbox ran: what is written now "
                                        "would be lost at the next start; restart breakerbox");
        } else if (int rc = writer_.run("COMMIT"); rc != SQLITE_OK) {
            set_fatal(rc, writer_.error());
            commit_failed = true;
        }
    }
    if (fatal_rc != 0) {
        // SQLite may already have rolled back on its own (it does for some I/O errors).
        if (sqlite3_get_autocommit(writer_.db()) == 0) {
            writer_.exec("ROLLBACK");
        }
        const bool may_come_back = commit_failed && !seal_failed_commit();
        const std::string saved =
            may_come_back ? "it was not saved, but a crash before the store's next successful write could bring it back"
                          : "nothing of this operation was saved";
        for (auto& r : results) {
            r = unavailable("the store cannot write (" + fatal_message + "); " + saved);
        }
        // The essential ops (breaker state, meters, sent keys, audit entries) fail with the
        // rest of a batch: a flood of large holds on a nearly full disk, or a corrupt page of
        // the holds' index, would leave the trip that caused the flood unsaved (a restart
        // brings the breaker back closed) and every operator act refused for want of its
        // audit record. Once nothing of the batch can come back (no commit, or a sealed
        // one), they run again on their own; the holds stay failed (503, fail closed).
        const bool mixed = std::any_of(batch.begin(), batch.end(), [](const op& o) { return o.essential; }) &&
                           std::any_of(batch.begin(), batch.end(), [](const op& o) { return !o.essential; });
        if (mixed && !may_come_back) {
            std::vector<op> again;
            for (auto& o : batch) {
                if (o.essential) {
                    again.push_back(std::move(o));
                    o.done = nullptr;  // answered by the run below
                }
            }
            retried = again.size();
            run_batch(again);
        }
    } else {
        std::lock_guard lock{counters_mu_};
        committed_.merge(delta);
    }
    {
        std::lock_guard lock{mu_};
        if (fatal_rc == 0) {
            ++stats_.transactions;
            stats_.ops_committed += ok_ops;
            stats_.ops_failed += batch.size() - ok_ops;
        } else {
            ++stats_.batches_failed;
            stats_.ops_failed += batch.size() - retried;
        }
        stats_.largest_batch = std::max<std::uint64_t>(stats_.largest_batch, batch.size());
        stats_.batches_rerun += rerun ? 1 : 0;
    }
    for (std::size_t i = 0; i < batch.size(); ++i) {
        if (!batch[i].done) {
            continue;
        }
        try {
            batch[i].done(results[i]);
        } catch (...) {
            // A completion must not throw; one that does must not take the writer down.
        }
    }
}

// On the writer, in queue order: a hold queued before this lookup is seen by it.
database::impl::outcome database::impl::do_earlier_hold(batch_ctx& ctx, const std::string& key, const std::string& agent,
                                                        const std::string& fingerprint) {
    // The live records, then what pruned ones left (migration 5). `idem_key != ''` repeats
    // the partial index's condition, so SQLite may use it (without it, the plan scans every
    // record of the agent). The route is not asked: a key is the agent's whichever route
    // carried it (migration 13). Versions before scoped keys by route too, so one key may
    // have records and tombstones on several routes, of one request even (a retry held
    // again on a renamed route): the one of this very request is preferred, wherever it is;
    // among those, one that was (or may have been) sent, then one still held, then a
    // discarded one (a retry must not be told "discarded, not sent" of a request its twin
    // delivered); then a live record, then the oldest.
    static const std::string rank =
        std::string{"CASE WHEN state IN "} + sent_states + " THEN 0 WHEN state = 'discarded' THEN 2 ELSE 1 END";
    static const std::string sql =
        "SELECT ticket, idem_fingerprint = ?3 AS same, state, breaker_instance, 0 AS pruned, id AS seq, " + rank +
        " AS rank FROM held_requests WHERE idem_key = ?1 AND idem_key != '' AND agent = ?2 "
        "UNION ALL SELECT ticket, fingerprint = ?3, state, '', 1, pruned_ms, " + rank +
        " FROM idem_tombstones WHERE idem_key = ?1 AND agent = ?2 ORDER BY same DESC, rank, pruned, seq LIMIT 1";
    auto s = ctx.c.prepared(sql.c_str());
    if (!s.valid()) {
        return fatal_stmt(SQLITE_ERROR, "prepare key lookup");
    }
    s.text(1, key);
    s.text(2, agent);
    s.text(3, fingerprint);
    const int rc = s.step();
    if (rc == SQLITE_ROW) {
        result r;
        r.ticket = s.col_str(0);
        r.duplicate = s.col_i64(1) != 0;
        r.breaker = s.col_str(3);
        r.message = s.col_str(2) + (s.col_i64(4) != 0 ? ", its record since pruned" : "");
        if (!r.duplicate) {
            r.code = "idempotency_key_reused";
        }
        return {r};
    }
    if (rc != SQLITE_DONE) {
        return is_io_fault(rc) ? fatal(rc) : outcome{unavailable("cannot look up the key: " + ctx.c.error())};
    }
    return {result::success()};
}

database::impl::outcome database::impl::do_hold(batch_ctx& ctx, held_request& r, const std::string& headers_blob,
                                                const std::string& fingerprint) {
    const std::string breaker = breaker_of(r);
    // A retry of a request held before (same key and agent): its ticket, nothing new
    // (before the limits: a retry of what is held already must not be refused as full).
    if (!r.idempotency_key.empty()) {
        outcome earlier = do_earlier_hold(ctx, r.idempotency_key, r.agent, fingerprint);
        if (earlier.fatal_rc != 0 || !earlier.r.ok) {
            return earlier;
        }
        if (!earlier.r.ticket.empty()) {
            if (!earlier.r.duplicate) {
                return outcome{result::failure(
                    "idempotency_key_reused",
                    "another request (method, target or body differ) was quarantined with this key as ticket " +
                        earlier.r.ticket + "; a retry must repeat the request exactly, a new request needs a new key")};
            }
            if (earlier.r.message.rfind("discarded", 0) == 0) {
                // Not a 202 as if it waited again: an operator decided it is not to be sent.
                auto gone = result::failure("discarded", "the request held as " + earlier.r.ticket +
                                                             " under this key was discarded (" +
                                                             earlier.r.message + "); it is not held again or sent");
                gone.ticket = earlier.r.ticket;
                return {gone};
            }
            result again;
            again.ticket = earlier.r.ticket;
            again.breaker = earlier.r.breaker;  // its own (a key is the agent's on every route)
            again.duplicate = true;
            again.message = "a retry of the request held as " + earlier.r.ticket + " (" + earlier.r.message +
                            "): not held again";
            return {again};
        }
    }
    const auto bytes = static_cast<std::int64_t>(r.body.size() + headers_blob.size());
    // Exact limits: the writer is the only place counts change, and it checks committed +
    // this batch's earlier holds, so N concurrent holds can never overshoot a limit.
    const auto lim = limits();
    const auto [bc, bb] = ctx.committed.of(breaker);
    const auto [dc, db] = ctx.batch.of(breaker);
    const auto total_count = ctx.committed.count + ctx.batch.count;
    const auto total_bytes = ctx.committed.bytes + ctx.batch.bytes;
    auto full = [&](std::string what) {
        return outcome{result::failure("quarantine_full", "quarantine full: " + what)};
    };
    if (lim.max_held != 0 && static_cast<std::uint64_t>(total_count + 1) > lim.max_held) {
        return full("the store holds " + std::to_string(total_count) + " requests (limit " +
                    std::to_string(lim.max_held) + ")");
    }
    if (lim.max_held_bytes != 0 && static_cast<std::uint64_t>(total_bytes + bytes) > lim.max_held_bytes) {
        return full("the store holds " + std::to_string(total_bytes) + " bytes; " + std::to_string(bytes) +
                    " more would exceed the limit of " + std::to_string(lim.max_held_bytes));
    }
    if (lim.per_breaker_max_held != 0 && static_cast<std::uint64_t>(bc + dc + 1) > lim.per_breaker_max_held) {
        return full("breaker " + breaker + " holds " + std::to_string(bc + dc) + " requests (limit " +
                    std::to_string(lim.per_breaker_max_held) + ")");
    }
    if (lim.per_breaker_max_held_bytes != 0 &&
        static_cast<std::uint64_t>(bb + db + bytes) > lim.per_breaker_max_held_bytes) {
        return full("breaker " + breaker + " holds " + std::to_string(bb + db) + " bytes; " +
                    std::to_string(bytes) + " more would exceed its limit of " +
                    std::to_string(lim.per_breaker_max_held_bytes));
    }
    // SQLite keeps no value or row over SQLITE_LIMIT_LENGTH (1e9 bytes unless compiled
    // otherwise): a body whose row (its headers, body and id; 64 bytes of headroom for the id
    // and the record's header) is larger would fail its insert after the record's, and roll
    // back its whole batch. (Reached only with limits.body_bytes and the held-bytes limits
    // raised past it.)
    if (const auto most = static_cast<std::size_t>(sqlite3_limit(ctx.c.db(), SQLITE_LIMIT_LENGTH, -1));
        r.body.size() + headers_blob.size() + 64 > most) {
        return full("its body of " + std::to_string(r.body.size()) + " bytes and headers of " +
                    std::to_string(headers_blob.size()) + " bytes are over the largest row the store keeps (" +
                    std::to_string(most) + " bytes)");
    }

    const auto now = wall_ms(clock_);
    if (r.received_ms == 0) {
        r.received_ms = now;
    }
    // A ticket collision (100 random bits) is all but impossible; draw again if it happens.
    for (int attempt = 0;; ++attempt) {
        auto s = ctx.c.prepared(
            "INSERT INTO held_requests(id, ticket, method, target, route, upstream, agent, rule, breaker, "
            "breaker_instance, failure_mode, request_id, received_ms, state, state_ms, body_bytes, held_bytes, "
            "actor, idem_key, idem_fingerprint, sandboxed_by) VALUES("
            "max(coalesce((SELECT max(id) FROM held_requests), 0), "
            "coalesce((SELECT last_id FROM held_id_floor WHERE one = 1), 0)) + 1, "
            "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'held', ?13, ?14, ?15, ?16, ?17, ?18, ?19)");
        if (!s.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare hold");
        }
        s.text(1, r.ticket);
        s.text(2, r.method);
        s.text(3, r.target);
        s.text(4, r.route);
        s.text(5, r.upstream);
        s.text(6, r.agent);
        s.text(7, r.rule);
        s.text(8, breaker);
        s.text(9, r.breaker_instance);
        s.text(10, r.failure_mode);
        s.text(11, r.request_id);
        s.i64(12, r.received_ms);
        s.i64(13, now);
        s.i64(14, static_cast<std::int64_t>(r.body.size()));
        s.i64(15, bytes);
        const std::string actor = r.rule.empty() ? "breaker:" + r.breaker_instance : "rule:" + r.rule;
        s.text(16, actor);
        s.text(17, r.idempotency_key);
        s.text(18, fingerprint);
        s.text(19, r.sandboxed_by);
        const int rc = s.step();
        if (rc == SQLITE_DONE) {
            break;
        }
        if (rc == SQLITE_CONSTRAINT_UNIQUE && attempt < 3) {
            r.ticket = make_ticket(now);
            continue;
        }
        if (is_io_fault(rc)) {
            return fatal(rc);
        }
        return {unavailable("cannot hold: " + ctx.c.error())};
    }
    const auto id = sqlite3_last_insert_rowid(ctx.c.db());
    {
        auto s = ctx.c.prepared("INSERT INTO held_bodies(id, headers, body) VALUES(?, ?, ?)");
        if (!s.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare body");
        }
        s.i64(1, id);
        s.blob(2, headers_blob);
        s.blob(3, r.body);
        if (const int rc = s.step(); rc != SQLITE_DONE) {
            return is_io_fault(rc) ? fatal(rc) : outcome{unavailable("cannot store the body: " + ctx.c.error())};
        }
    }
    {
        auto s = ctx.c.prepared(
            "INSERT INTO quarantine_history(held_id, ticket, from_state, to_state, at_ms, actor, detail) "
            "VALUES(?5, ?1, NULL, 'held', ?2, ?3, ?4)");
        if (!s.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare history");
        }
        const std::string actor = r.rule.empty() ? "breaker:" + r.breaker_instance : "rule:" + r.rule;
        const std::string detail = "held by " + r.breaker_instance;
        s.text(1, r.ticket);
        s.i64(2, now);
        s.text(3, actor);
        s.text(4, detail);
        s.i64(5, id);
        if (const int rc = s.step(); rc != SQLITE_DONE) {
            return is_io_fault(rc) ? fatal(rc) : outcome{unavailable("cannot write history: " + ctx.c.error())};
        }
    }
    ctx.op.add(breaker, 1, bytes);
    result ok;
    ok.ticket = r.ticket;
    return {ok};
}

database::impl::outcome database::impl::do_transition(batch_ctx& ctx, const std::string& ticket, held_state to,
                                                      bool force, const std::string& actor_in,
                                                      const std::string& detail_in, int status,
                                                      const std::string& reason, std::optional<held_state> expected,
                                                      std::optional<std::uint32_t> expected_attempts) {
    std::string detail = detail_in;
    held_state from = held_state::held;
    std::string breaker;
    std::int64_t bytes = 0;
    std::int64_t attempts = 0;
    std::int64_t id = 0;
    std::string actor = actor_in;
    std::string idem_key;
    std::string agent;
    std::string fingerprint;
    {
        auto s = ctx.c.prepared(
            "SELECT state, breaker, held_bytes, release_attempts, actor, id, idem_key, agent, idem_fingerprint "
            "FROM held_requests WHERE ticket = ?");
        if (!s.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare lookup");
        }
        s.text(1, ticket);
        const int rc = s.step();
        if (rc == SQLITE_DONE) {
            return {result::failure("not_found", "no held request with ticket " + ticket)};
        }
        if (rc != SQLITE_ROW) {
            return is_io_fault(rc) ? fatal(rc) : outcome{unavailable("cannot read " + ticket + ": " + ctx.c.error())};
        }
        from = parse_held_state(s.col_str(0)).value_or(held_state::held);
        breaker = s.col_str(1);
        bytes = s.col_i64(2);
        attempts = s.col_i64(3);
        if (actor.empty()) {
            actor = s.col_str(4);  // finish_release: whoever began the release
        }
        id = s.col_i64(5);
        idem_key = s.col_str(6);
        agent = s.col_str(7);
        fingerprint = s.col_str(8);
    }
    if (expected && from != *expected) {
        // A bulk operation chose the record in the state it was listed in: one that changed
        // since (released by someone else and failed, or of unknown outcome) is for an
        // operator to look at again, not to be sent or dropped by a filter that no longer
        // describes it.
        return {result::failure("invalid_state", "ticket " + ticket + " is " + std::string{to_string(from)} +
                                                     ", no longer " + std::string{to_string(*expected)} +
                                                     " as when it was selected; left as it is")};
    }
    if (expected_attempts && attempts != static_cast<std::int64_t>(*expected_attempts)) {
        // Two operators forcing one record of unknown outcome: the second decided on what it
        // saw before the first's replay (which may have reached the upstream again).
        return {result::failure("invalid_state",
                                "ticket " + ticket + " has had " + std::to_string(attempts) + " release attempt" +
                                    (attempts == 1 ? "" : "s") + ", not " + std::to_string(*expected_attempts) +
                                    " as given: another release ran meanwhile; look at it again")};
    }
    if (!transition_allowed(from, to, force)) {
        std::string why = "ticket " + ticket + " is " + std::string{to_string(from)} + "; it cannot become " +
                          std::string{to_string(to)};
        if (from == held_state::released && to == held_state::releasing) {
            why = "ticket " + ticket + " was already released; a released request is never released again";
        } else if (from == held_state::outcome_unknown && to == held_state::releasing) {
            why = "ticket " + ticket +
                  " has an unknown outcome (its replay may have reached the upstream); releasing it again "
                  "needs force, with the release attempts seen (" + std::to_string(attempts) + ")";
        }
        return {result::failure("invalid_state", why)};
    }
    if (to == held_state::releasing && !idem_key.empty()) {
        // Versions before migration 13 held a retry on a renamed route as a second record of
        // one request (same key, agent, method, target and body): once one of them is sent,
        // or may have been, the other is that send's second. (None is held so since.)
        static const std::string sql =
            std::string{"SELECT ticket, state FROM held_requests WHERE idem_key = ?1 AND idem_key != '' AND "
                        "agent = ?2 AND idem_fingerprint = ?3 AND id != ?4 AND state IN "} +
            sent_states +
            " UNION ALL SELECT ticket, state FROM idem_tombstones WHERE idem_key = ?1 AND agent = ?2 AND "
            "fingerprint = ?3 AND state IN " + sent_states + " LIMIT 1";
        auto twin = ctx.c.prepared(sql.c_str());
        if (!twin.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare twin lookup");
        }
        twin.text(1, idem_key);
        twin.text(2, agent);
        twin.text(3, fingerprint);
        twin.i64(4, id);
        const int trc = twin.step();
        if (trc == SQLITE_ROW) {
            return {result::failure("invalid_state", "ticket " + ticket + " is the same request (Idempotency-Key, "
                                                     "agent, method, target and body) as ticket " +
                                                         twin.col_str(0) + ", which is " + twin.col_str(1) +
                                                         ": it is not sent a second time; discard it")};
        }
        if (trc != SQLITE_DONE) {
            return is_io_fault(trc) ? fatal(trc) : outcome{unavailable("cannot read " + ticket + ": " + ctx.c.error())};
        }
    }
    if (to == held_state::release_failed) {
        // Once of unknown outcome, always: an earlier attempt may have been delivered, so a
        // later one failing does not make the record safe to send without force (a bulk
        // release of release_failed records would). Decided here, on the record's own
        // history, whatever its caller saw before the attempt.
        auto h = ctx.c.prepared(
            "SELECT 1 FROM quarantine_history WHERE held_id = ?1 AND to_state = 'outcome_unknown' LIMIT 1");
        if (!h.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare history lookup");
        }
        h.i64(1, id);
        const int hrc = h.step();
        if (hrc == SQLITE_ROW) {
            to = held_state::outcome_unknown;
            detail += (detail.empty() ? "" : "; ") + std::string{"an earlier release attempt's outcome is unknown (it may "
                                                                 "have been delivered): releasing again needs force"};
        } else if (hrc != SQLITE_DONE) {
            return is_io_fault(hrc) ? fatal(hrc) : outcome{unavailable("cannot read history: " + ctx.c.error())};
        }
    }
    const auto now = wall_ms(clock_);
    // The UPDATE repeats the expected state, and the trigger checks the transition again,
    // so what the SELECT saw is what is changed.
    int rc = SQLITE_OK;
    int changed = 0;
    if (to == held_state::releasing) {
        auto s = ctx.c.prepared(
            "UPDATE held_requests SET state = 'releasing', state_ms = ?1, actor = ?2, "
            "release_attempts = release_attempts + 1 WHERE ticket = ?3 AND state = ?4");
        if (!s.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare begin_release");
        }
        s.i64(1, now);
        s.text(2, actor);
        s.text(3, ticket);
        s.text(4, to_string(from));
        rc = s.step();
        changed = s.changes();
        ++attempts;
    } else if (to == held_state::discarded) {
        auto s = ctx.c.prepared(
            "UPDATE held_requests SET state = 'discarded', state_ms = ?1, actor = ?2, discard_reason = ?3 "
            "WHERE ticket = ?4 AND state = ?5");
        if (!s.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare discard");
        }
        s.i64(1, now);
        s.text(2, actor);
        s.text(3, reason);
        s.text(4, ticket);
        s.text(5, to_string(from));
        rc = s.step();
        changed = s.changes();
    } else {
        auto s = ctx.c.prepared(
            "UPDATE held_requests SET state = ?1, state_ms = ?2, release_status = ?3, released_ms = ?2, "
            "detail = ?4 WHERE ticket = ?5 AND state = 'releasing'");
        if (!s.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare finish_release");
        }
        s.text(1, to_string(to));
        s.i64(2, now);
        if (status > 0) {
            s.i64(3, status);
        } else {
            s.null(3);
        }
        s.text(4, detail);
        s.text(5, ticket);
        rc = s.step();
        changed = s.changes();
    }
    if (rc != SQLITE_DONE) {
        if (is_io_fault(rc)) {
            return fatal(rc);
        }
        if ((rc & 0xff) == SQLITE_CONSTRAINT) {
            return {result::failure("invalid_state", "ticket " + ticket + ": " + ctx.c.error())};
        }
        return {unavailable("cannot update " + ticket + ": " + ctx.c.error())};
    }
    if (changed != 1) {
        return {result::failure("invalid_state", "ticket " + ticket + " changed state concurrently")};
    }
    {
        auto s = ctx.c.prepared(
            "INSERT INTO quarantine_history(held_id, ticket, from_state, to_state, at_ms, actor, detail) "
            "VALUES(?7, ?1, ?2, ?3, ?4, ?5, ?6)");
        if (!s.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare history");
        }
        std::string hdetail = detail;
        if (to == held_state::discarded) {
            hdetail = reason;
        } else if (to == held_state::releasing && force) {
            hdetail = "forced by operator" + (detail.empty() ? std::string{} : ": " + detail);
        } else if (status > 0) {
            hdetail = "status " + std::to_string(status) + (detail.empty() ? std::string{} : ": " + detail);
        }
        s.text(1, ticket);
        s.text(2, to_string(from));
        s.text(3, to_string(to));
        s.i64(4, now);
        s.text(5, actor);
        s.text(6, hdetail);
        s.i64(7, id);
        if (const int hrc = s.step(); hrc != SQLITE_DONE) {
            return is_io_fault(hrc) ? fatal(hrc) : outcome{unavailable("cannot write history: " + ctx.c.error())};
        }
    }
    if (resolved(to) && !resolved(from)) {
        ctx.op.add(breaker, -1, -bytes);
    }
    result ok;
    ok.ticket = ticket;
    ok.count = attempts;
    if (from == held_state::releasing) {
        ok.code = to_string(to);  // finish_release: the state the record is in now
        ok.message = detail;
    }
    return {ok};
}

database::impl::outcome database::impl::do_prune(batch_ctx& ctx, std::int64_t cutoff, std::size_t max_records) {
    std::vector<std::pair<std::int64_t, std::string>> victims;
    const std::int64_t now = wall_ms(clock_);
    {
        // Tombstones past their memory (idem_tombstones_pruned: a range).
        // One kept while a record of the same request is (held twice by a version before
        // keys were the agent's, do_transition): its release would be the second send.
        auto s = ctx.c.prepared(
            "DELETE FROM idem_tombstones WHERE pruned_ms < ?1 AND NOT EXISTS (SELECT 1 FROM held_requests h "
            "WHERE h.idem_key = idem_tombstones.idem_key AND h.idem_key != '' AND h.agent = idem_tombstones.agent "
            "AND h.idem_fingerprint = idem_tombstones.fingerprint)");
        if (!s.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare tombstone prune");
        }
        s.i64(1, now - idempotency_memory_ms);
        if (const int rc = s.step(); rc != SQLITE_DONE) {
            return is_io_fault(rc) ? fatal(rc) : outcome{unavailable("cannot prune: " + ctx.c.error())};
        }
    }
    {
        // Uses held_requests_state (state, state_ms): two short range scans.
        auto s = ctx.c.prepared(
            "SELECT id, ticket FROM held_requests WHERE state IN ('released', 'discarded') AND state_ms < ? "
            "LIMIT ?");
        if (!s.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare prune");
        }
        s.i64(1, cutoff);
        s.i64(2, static_cast<std::int64_t>(max_records));
        int rc = 0;
        while ((rc = s.step()) == SQLITE_ROW) {
            victims.emplace_back(s.col_i64(0), s.col_str(1));
        }
        if (rc != SQLITE_DONE) {
            return is_io_fault(rc) ? fatal(rc) : outcome{unavailable("cannot prune: " + ctx.c.error())};
        }
    }
    if (!victims.empty()) {
        // The newest record may go: its id is never given again (migration 12).
        auto floor = ctx.c.prepared(
            "UPDATE held_id_floor SET last_id = max(last_id, coalesce((SELECT max(id) FROM held_requests), 0)) "
            "WHERE one = 1");
        if (!floor.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare id floor");
        }
        if (const int rc = floor.step(); rc != SQLITE_DONE) {
            return is_io_fault(rc) ? fatal(rc) : outcome{unavailable("cannot prune: " + ctx.c.error())};
        }
    }
    for (const auto& [id, ticket] : victims) {
        // A record with an Idempotency-Key leaves a tombstone (see migration 5).
        auto tomb = ctx.c.prepared(
            "INSERT OR REPLACE INTO idem_tombstones(idem_key, route, agent, fingerprint, ticket, state, pruned_ms) "
            "SELECT idem_key, route, agent, idem_fingerprint, ticket, state, ?2 FROM held_requests "
            "WHERE id = ?1 AND idem_key != ''");
        if (!tomb.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare tombstone");
        }
        tomb.i64(1, id);
        tomb.i64(2, now);
        if (const int rc = tomb.step(); rc != SQLITE_DONE) {
            return is_io_fault(rc) ? fatal(rc) : outcome{unavailable("cannot prune: " + ctx.c.error())};
        }
        const char* sqls[] = {"DELETE FROM quarantine_history WHERE held_id = ?1",
                              "DELETE FROM held_bodies WHERE id = ?1", "DELETE FROM held_requests WHERE id = ?1"};
        for (const char* sql : sqls) {
            auto s = ctx.c.prepared(sql);
            if (!s.valid()) {
                return fatal_stmt(SQLITE_ERROR, "prepare prune delete");
            }
            s.i64(1, id);
            s.text(2, ticket);
            if (const int rc = s.step(); rc != SQLITE_DONE) {
                return is_io_fault(rc) ? fatal(rc) : outcome{unavailable("cannot prune: " + ctx.c.error())};
            }
        }
    }
    result ok;
    ok.count = static_cast<std::int64_t>(victims.size());
    return {ok};
}

database::impl::outcome database::impl::do_save_breakers(batch_ctx& ctx, const std::vector<breaker_row>& rows,
                                                         const clock_reading& clocks) {
    if (const int rc = ctx.c.exec("DELETE FROM breaker_state"); rc != SQLITE_OK) {
        return is_io_fault(rc) ? fatal(rc) : outcome{unavailable("cannot save breaker state: " + ctx.c.error())};
    }
    {
        auto s = ctx.c.prepared(
            "INSERT OR REPLACE INTO breaker_state_clock(one, boot_id, steady_ms, wall_ms) VALUES(1, ?1, ?2, ?3)");
        if (!s.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare breaker state clock");
        }
        s.text(1, clocks.boot_id);
        s.i64(2, clocks.steady_ms);
        s.i64(3, clocks.wall_ms);
        if (const int rc = s.step(); rc != SQLITE_DONE) {
            return is_io_fault(rc) ? fatal(rc) : outcome{unavailable("cannot save breaker state: " + ctx.c.error())};
        }
    }
    for (const auto& r : rows) {
        auto s = ctx.c.prepared(
            "INSERT INTO breaker_state(instance, breaker, key, state, mode, mode_expires_ms, opened_at_ms, "
            "cooldown_ms, trips, trip_kind, trip_actor, trip_reason, trip_rule, trip_key, trip_value, trip_limit, "
            "trip_window_ms, trip_request_id, trip_at_ms, reset, throttle_ms) "
            "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)");
        if (!s.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare breaker state");
        }
        s.text(1, r.instance);
        s.text(2, r.breaker);
        s.text(3, r.key);
        s.text(4, r.state);
        s.text(5, r.mode);
        if (r.mode_expires_ms) {
            s.i64(6, *r.mode_expires_ms);
        } else {
            s.null(6);
        }
        s.i64(7, r.opened_at_ms);
        s.i64(8, r.cooldown_ms);
        s.i64(9, r.trips);
        if (r.has_trip) {
            s.text(10, r.kind);
            s.text(11, r.actor);
            s.text(12, r.reason);
            s.text(13, r.rule);
            s.text(14, r.trip_key);
            s.f64(15, r.value);
            s.f64(16, r.limit);
            s.i64(17, r.window_ms);
            s.text(18, r.request_id);
            s.i64(19, r.at_ms);
        } else {
            for (int i = 10; i <= 19; ++i) {
                s.null(i);
            }
        }
        if (r.reset) {
            s.text(20, *r.reset);
        } else {
            s.null(20);
        }
        if (r.throttle_ms.empty()) {
            s.null(21);
        } else {
            s.blob(21, r.throttle_ms);
        }
        if (const int rc = s.step(); rc != SQLITE_DONE) {
            return is_io_fault(rc) ? fatal(rc) : outcome{unavailable("cannot save breaker state: " + ctx.c.error())};
        }
    }
    result ok;
    ok.count = static_cast<std::int64_t>(rows.size());
    return {ok};
}

// ---------------------------------------------------------------------------------------
// database

database::database(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
database::~database() = default;

std::unique_ptr<database> database::open(store_options options, const clock& c, std::string* error) {
    auto p = std::make_unique<impl>(std::move(options), c);
    std::string why;
    if (!p->open(&why)) {
        if (error != nullptr) {
            *error = why;
        }
        return nullptr;
    }
    return std::unique_ptr<database>{new database{std::move(p)}};
}

database::prepared_hold database::prepare_hold(held_request request) {
    prepared_hold h;
    request.ticket = make_ticket(wall_ms(impl_->clock_));
    if (request.ticket.empty()) {
        h.error = unavailable("no randomness for a ticket");
        return h;
    }
    h.headers = std::make_shared<std::string>(encode_headers(request.headers));
    // What tells a retry from another request under the same key (do_hold): hashed here, on
    // the caller's thread, not on the one writer every hold waits for; the body is hashed in
    // place rather than copied into one string with the method and target.
    h.fingerprint = std::make_shared<std::string>(
        request.idempotency_key.empty()
            ? std::string{}
            : request_fingerprint(request.method, request.target, request.body));
    h.request = std::make_shared<held_request>(std::move(request));
    return h;
}

void database::queue_hold(prepared_hold h, done_fn done) {
    if (h.error) {
        if (done) {
            done(*h.error);
        }
        return;
    }
    const held_request& request = *h.request;
    if (!request.idempotency_key.empty()) {
        // Before the hold is queued: a live retry that comes while it waits in the queue
        // finds the key here and queues its lookup behind it (earlier_hold: the writer runs
        // both in order). A hold that fails leaves a hash with no record: one lookup more.
        impl_->note_idempotency_key(request.idempotency_key, request.agent);
    }
    const std::size_t bytes = request.body.size() + h.headers->size() + request.target.size() + 512;
    impl_->enqueue(
        [p = impl_.get(), req = h.request, headers = h.headers, fingerprint = h.fingerprint](impl::batch_ctx& ctx) {
            return p->do_hold(ctx, *req, *headers, *fingerprint);
        },
        std::move(done), bytes);
}

void database::hold(held_request request, done_fn done) {
    queue_hold(prepare_hold(std::move(request)), std::move(done));
}

bool database::may_hold_key(std::string_view key, std::string_view agent) const {
    return !key.empty() && impl_->may_hold_key(key, agent);
}

void database::expect_hold(std::string_view key, std::string_view agent) {
    if (!key.empty()) {
        impl_->note_idempotency_key(key, agent);
    }
}

void database::earlier_hold(std::string key, std::string agent, std::string_view method,
                            std::string_view target, std::string_view body, done_fn done) {
    auto fingerprint = std::make_shared<std::string>(
        request_fingerprint(method, target, body));
    impl_->enqueue(
        [p = impl_.get(), key = std::move(key), agent = std::move(agent),
         fingerprint](impl::batch_ctx& ctx) { return p->do_earlier_hold(ctx, key, agent, *fingerprint); },
        std::move(done), 256);
}

void database::set_limits(const store_limits& limits) {
    std::lock_guard lock{impl_->limits_mu_};
    impl_->opt_.limits = limits;
}

void database::begin_release(std::string ticket, std::string actor, bool force, done_fn done,
                             std::optional<held_state> expected, std::optional<std::uint32_t> expected_attempts) {
    impl_->enqueue(
        [p = impl_.get(), ticket = std::move(ticket), actor = std::move(actor), force, expected,
         expected_attempts](impl::batch_ctx& ctx) {
            return p->do_transition(ctx, ticket, held_state::releasing, force, actor.empty() ? "operator" : actor,
                                    {}, 0, {}, expected, expected_attempts);
        },
        std::move(done), 256);
}

void database::finish_release(std::string ticket, release_outcome outcome, int status_code, std::string detail,
                              done_fn done, std::optional<std::uint32_t> attempts) {
    const std::size_t bytes = 256 + detail.size();
    const held_state to = state_after(outcome);
    impl_->enqueue(
        [p = impl_.get(), ticket = std::move(ticket), detail = std::move(detail), to, status_code,
         attempts](impl::batch_ctx& ctx) {
            return p->do_transition(ctx, ticket, to, false, {}, detail, status_code, {},
                                    attempts ? std::optional{held_state::releasing} : std::nullopt, attempts);
        },
        std::move(done), bytes);
}

void database::finish_release(std::string ticket, int status_code, bool ok, std::string detail, done_fn done) {
    finish_release(std::move(ticket), ok ? release_outcome::released : release_outcome::failed, status_code,
                   std::move(detail), std::move(done));
}

void database::discard(std::string ticket, std::string actor, std::string reason, done_fn done,
                       std::optional<held_state> expected) {
    impl_->enqueue(
        [p = impl_.get(), ticket = std::move(ticket), actor = std::move(actor), reason = std::move(reason),
         expected](impl::batch_ctx& ctx) {
            return p->do_transition(ctx, ticket, held_state::discarded, false, actor.empty() ? "operator" : actor,
                                    {}, 0, reason, expected);
        },
        std::move(done), 256);
}

void database::prune(std::int64_t older_than_ms, done_fn done, std::size_t max_records) {
    impl_->enqueue([p = impl_.get(), older_than_ms,
                    max_records](impl::batch_ctx& ctx) { return p->do_prune(ctx, older_than_ms, max_records); },
                   std::move(done), 256);
}

void database::save_breaker_state(std::vector<breakers::instance_snapshot> instances, done_fn done) {
    std::vector<breaker_row> rows;
    const clock& c = impl_->clock_;
    const clock_reading clocks = read_clocks(c);
    // Every time of the snapshot through the one reading above: load_breaker_state inverts it
    // exactly within the same boot.
    auto to_wall = [&](time_point tp) {
        return std::chrono::duration_cast<std::chrono::milliseconds>(tp.time_since_epoch()).count() - clocks.steady_ms +
               clocks.wall_ms;
    };
    for (const auto& i : instances) {
        if (i.at_rest()) {
            continue;  // the default needs no record
        }
        breaker_row r;
        r.instance = i.instance;
        r.breaker = i.breaker;
        r.key = i.key;
        r.state = breakers::to_string(i.st);
        r.mode = breakers::to_string(i.md);
        if (i.reset) {
            r.reset = *i.reset == breakers::reset_policy::automatic ? "automatic" : "manual";
        }
        for (const auto t : i.throttle_admissions) {
            put_bytes(r.throttle_ms, to_wall(t));
        }
        if (i.mode_expires) {
            r.mode_expires_ms = to_wall(*i.mode_expires);
        }
        r.opened_at_ms = to_wall(i.opened_at);
        r.cooldown_ms = i.cooldown.count();
        r.trips = static_cast<std::int64_t>(i.trips);
        if (i.last_trip) {
            const auto& t = *i.last_trip;
            r.has_trip = true;
            r.kind = t.cause.kind;
            r.actor = t.cause.actor;
            r.reason = t.cause.reason;
            r.rule = t.cause.rule;
            r.trip_key = t.cause.key;
            r.value = t.cause.value;
            r.limit = t.cause.limit;
            r.window_ms = t.cause.window.count();
            r.request_id = t.cause.request_id;
            r.at_ms = to_wall(t.at);
        }
        rows.push_back(std::move(r));
    }
    std::size_t bytes = 256 + rows.size() * 256;
    for (const auto& r : rows) {
        bytes += r.throttle_ms.size();
    }
    impl_->enqueue([p = impl_.get(), rows = std::move(rows), clocks](impl::batch_ctx& ctx) {
        return p->do_save_breakers(ctx, rows, clocks);
    }, std::move(done), bytes, /*essential=*/true);
}

database::impl::outcome database::impl::do_save_meters(batch_ctx& ctx, const std::vector<saved_meter>& changed,
                                                      const std::vector<std::string>& keep, const clock_reading& clocks) {
    auto failed = [&](int rc) {
        return is_io_fault(rc) ? fatal(rc) : outcome{unavailable("cannot save rule meters: " + ctx.c.error())};
    };
    // Rows of rules that hold nothing any more (idle, removed, changed) go.
    std::vector<std::string> gone;
    {
        auto q = ctx.c.prepared("SELECT rule_id FROM rule_meters");
        if (!q.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare rule meters");
        }
        int rc = 0;
        while ((rc = q.step()) == SQLITE_ROW) {
            std::string id = q.col_str(0);
            if (std::find(keep.begin(), keep.end(), id) == keep.end()) {
                gone.push_back(std::move(id));
            }
        }
        if (rc != SQLITE_DONE) {
            return failed(rc);
        }
    }
    for (const auto& id : gone) {
        auto d = ctx.c.prepared("DELETE FROM rule_meters WHERE rule_id = ?1");
        if (!d.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare rule meters");
        }
        d.text(1, id);
        if (const int rc = d.step(); rc != SQLITE_DONE) {
            return failed(rc);
        }
    }
    for (const auto& m : changed) {
        auto s = ctx.c.prepared(
            "INSERT OR REPLACE INTO rule_meters(rule_id, fingerprint, state, boot_id, steady_ms, wall_ms) "
            "VALUES(?1, ?2, ?3, ?4, ?5, ?6)");
        if (!s.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare rule meters");
        }
        s.text(1, m.rule_id);
        s.i64(2, static_cast<std::int64_t>(m.fingerprint));
        s.blob(3, m.state);
        s.text(4, clocks.boot_id);
        s.i64(5, clocks.steady_ms);
        s.i64(6, clocks.wall_ms);
        if (const int rc = s.step(); rc != SQLITE_DONE) {
            return failed(rc);
        }
    }
    result ok;
    ok.count = static_cast<std::int64_t>(changed.size());
    return {ok};
}

void database::save_meters(std::vector<saved_meter> changed, std::vector<std::string> keep, done_fn done) {
    // The clocks of this moment: the caller took the snapshot just before.
    const clock_reading clocks = read_clocks(impl_->clock_);
    std::size_t bytes = 256;
    for (const auto& m : changed) {
        bytes += m.rule_id.size() + m.state.size() + 64;
    }
    impl_->enqueue([p = impl_.get(), changed = std::move(changed), keep = std::move(keep), clocks](impl::batch_ctx& ctx) {
        return p->do_save_meters(ctx, changed, keep, clocks);
    }, std::move(done), bytes, /*essential=*/true);
}

std::optional<std::vector<database::saved_meter>> database::load_meters(const clock& c, std::string* error) const {
    auto conn = impl_->lease();
    auto fail = [&](std::string why) {
        if (error != nullptr) {
            *error = "store " + impl_->opt_.path + ": cannot read rule meters: " + why;
        }
        return std::nullopt;
    };
    const auto current = read_clocks(c);
    auto s = conn->prepared("SELECT rule_id, fingerprint, state, boot_id, steady_ms, wall_ms FROM rule_meters "
                            "ORDER BY rule_id");
    if (!s.valid()) {
        return fail(conn->error());
    }
    std::vector<saved_meter> out;
    int rc = 0;
    while ((rc = s.step()) == SQLITE_ROW) {
        constexpr std::int64_t max_steady_ms = 1'000'000'000'000;
        if (!s.is_integer(1) || !s.is_integer(4) || !s.is_integer(5) || s.col_i64(4) < 0 ||
            s.col_i64(4) > max_steady_ms || s.col_i64(5) < 0 || s.col_i64(5) > max_wall_ms) {
            return fail("rule " + s.col_str(0) + " has a fingerprint or clocks that are not plausible readings");
        }
        saved_meter m{s.col_str(0), static_cast<std::uint64_t>(s.col_i64(1)), s.col_str(2)};
        // The same boot: the steady clock went on counting while we were down, so the saved
        // times are ours as they are. Another boot: only the wall clock links the two.
        if (current.boot_id.empty() || s.col_str(3) != current.boot_id) {
            m.offset = std::chrono::milliseconds{(current.steady_ms - current.wall_ms) - (s.col_i64(4) - s.col_i64(5))};
        }
        out.push_back(std::move(m));
    }
    if (rc != SQLITE_DONE) {
        return fail(conn->error());
    }
    return out;
}

database::impl::outcome database::impl::do_save_forwarded_keys(batch_ctx& ctx,
                                                              const std::vector<forwarded_key>& changed,
                                                              std::int64_t older_than_ms) {
    auto failed = [&](int rc) {
        return is_io_fault(rc) ? fatal(rc) : outcome{unavailable("cannot save forwarded keys: " + ctx.c.error())};
    };
    auto aged = ctx.c.prepared("DELETE FROM forwarded_keys WHERE sent_ms < ?1");
    if (!aged.valid()) {
        return fatal_stmt(SQLITE_ERROR, "prepare forwarded keys");
    }
    aged.i64(1, older_than_ms);
    if (const int rc = aged.step(); rc != SQLITE_DONE) {
        return failed(rc);
    }
    for (const auto& k : changed) {
        auto s = ctx.c.prepared(k.sent_wall_ms ? "INSERT OR REPLACE INTO forwarded_keys(digest, sent_ms) VALUES(?1, ?2)"
                                               : "DELETE FROM forwarded_keys WHERE digest = ?1");
        if (!s.valid()) {
            return fatal_stmt(SQLITE_ERROR, "prepare forwarded keys");
        }
        s.i64(1, static_cast<std::int64_t>(k.digest));
        if (k.sent_wall_ms) {
            s.i64(2, *k.sent_wall_ms);
        }
        if (const int rc = s.step(); rc != SQLITE_DONE) {
            return failed(rc);
        }
    }
    result ok;
    ok.count = static_cast<std::int64_t>(changed.size());
    return {ok};
}

void database::save_forwarded_keys(std::vector<forwarded_key> changed, std::int64_t older_than_ms, done_fn done) {
    const std::size_t bytes = 128 + 32 * changed.size();
    impl_->enqueue([p = impl_.get(), changed = std::move(changed), older_than_ms](impl::batch_ctx& ctx) {
        return p->do_save_forwarded_keys(ctx, changed, older_than_ms);
    }, std::move(done), bytes, /*essential=*/true);
}

std::optional<std::vector<database::forwarded_key>> database::load_forwarded_keys(std::int64_t since_ms,
                                                                                  std::size_t max,
                                                                                  std::string* error) const {
    auto conn = impl_->lease();
    auto s = conn->prepared("SELECT digest, sent_ms FROM forwarded_keys WHERE sent_ms >= ?1 "
                            "ORDER BY sent_ms DESC LIMIT ?2");
    std::vector<forwarded_key> out;
    int rc = SQLITE_ERROR;
    if (s.valid()) {
        s.i64(1, since_ms);
        s.i64(2, static_cast<std::int64_t>(std::min<std::size_t>(max, std::numeric_limits<std::int64_t>::max())));
        while ((rc = s.step()) == SQLITE_ROW) {
            out.push_back({static_cast<std::uint64_t>(s.col_i64(0)), s.col_i64(1)});
        }
    }
    if (rc != SQLITE_DONE) {
        if (error != nullptr) {
            *error = "store " + impl_->opt_.path + ": cannot read forwarded keys: " + conn->error();
        }
        return std::nullopt;
    }
    return out;
}

std::optional<bool> database::breaker_state_saved(std::string* error) const {
    auto conn = impl_->lease();
    auto k = conn->prepared("SELECT 1 FROM breaker_state_clock WHERE one = 1");
    const int rc = k.valid() ? k.step() : SQLITE_ERROR;
    if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
        return rc == SQLITE_ROW;
    }
    if (error != nullptr) {
        *error = "store " + impl_->opt_.path + ": cannot read breaker state: " + conn->error();
    }
    return std::nullopt;
}

std::optional<std::vector<breakers::instance_snapshot>> database::load_breaker_state(const clock& c,
                                                                                     std::string* error) const {
    auto conn = impl_->lease();
    auto s = conn->prepared(
        "SELECT instance, breaker, key, state, mode, mode_expires_ms, opened_at_ms, cooldown_ms, trips, trip_kind, "
        "trip_actor, trip_reason, trip_rule, trip_key, trip_value, trip_limit, trip_window_ms, trip_request_id, "
        "trip_at_ms, reset, throttle_ms FROM breaker_state ORDER BY instance");
    auto fail = [&](std::string why) {
        if (error != nullptr) {
            *error = "store " + impl_->opt_.path + ": " + why;
        }
        return std::nullopt;
    };
    if (!s.valid()) {
        return fail("cannot read breaker state: " + conn->error());
    }
    // Within the boot that wrote them, the saved times go back to the steady-clock times they
    // were (the wall-clock offset of that moment), so a wall-clock step since changes nothing;
    // after a reboot the wall clock is the only link left.
    const auto current = read_clocks(c);
    std::int64_t steady_minus_wall = current.steady_ms - current.wall_ms;
    // After a reboot: the wall clock when the state was saved (0: not known or same boot).
    std::int64_t saved_wall_ms = 0;
    {
        auto k = conn->prepared("SELECT boot_id, steady_ms, wall_ms FROM breaker_state_clock WHERE one = 1");
        if (!k.valid()) {
            return fail("cannot read breaker state: " + conn->error());
        }
        if (const int krc = k.step(); krc == SQLITE_ROW) {
            // Plausible readings only (a steady clock of under 30 years since boot, a wall
            // clock after 2001 and before 2286); anything else falls back to the wall clock.
            constexpr std::int64_t max_steady_ms = 1'000'000'000'000;
            constexpr std::int64_t min_wall_ms = 1'000'000'000'000;
            if (!current.boot_id.empty() && k.col_str(0) == current.boot_id && k.is_integer(1) && k.is_integer(2) && k.col_i64(1) >= 0 &&
                k.col_i64(1) <= max_steady_ms && k.col_i64(2) >= min_wall_ms && k.col_i64(2) <= max_wall_ms) {
                steady_minus_wall = k.col_i64(1) - k.col_i64(2);
            } else if (k.is_integer(2) && k.col_i64(2) >= min_wall_ms && k.col_i64(2) <= max_wall_ms) {
                saved_wall_ms = k.col_i64(2);
            }
        } else if (krc != SQLITE_DONE) {
            return fail("cannot read breaker state: " + conn->error());
        }
    }
    // In milliseconds, kept within +-100 years of the steady clock's zero so that no stored
    // value, however odd, overflows a time_point (nanoseconds).
    auto to_time = [&](std::int64_t ms) {
        constexpr std::int64_t bound = 3'155'760'000'000;
        return time_point{std::chrono::milliseconds{std::clamp(ms + steady_minus_wall, -bound, bound)}};
    };
    std::vector<breakers::instance_snapshot> out;
    int rc = 0;
    while ((rc = s.step()) == SQLITE_ROW) {
        breakers::instance_snapshot i;
        i.instance = s.col_str(0);
        i.breaker = s.col_str(1);
        i.key = s.col_str(2);
        auto st = parse_breaker_state(s.col_str(3));
        auto md = breakers::parse_mode(s.col_str(4));
        if (!st || !md) {
            // Refuse rather than silently reopen a tripped breaker.
            return fail("breaker " + i.instance + " has an unknown state or mode");
        }
        i.st = *st;
        i.md = *md;
        if (!s.is_null(19)) {
            const std::string reset = s.col_str(19);
            if (reset != "automatic" && reset != "manual") {
                return fail("breaker " + i.instance + " has an unknown reset policy");
            }
            i.reset = reset == "automatic" ? breakers::reset_policy::automatic : breakers::reset_policy::manual;
        }
        if (!s.is_null(20)) {
            const std::string blob = s.col_str(20);
            if (blob.size() % sizeof(std::int64_t) != 0) {
                return fail("breaker " + i.instance + " has throttle admissions that cannot be read");
            }
            byte_reader in{blob};
            while (!in.in.empty()) {
                const auto ms = in.get<std::int64_t>();
                if (ms < -max_wall_ms || ms > max_wall_ms) {
                    return fail("breaker " + i.instance + " has a throttle admission time that is not plausible");
                }
                i.throttle_admissions.push_back(to_time(ms));
            }
        }
        // A time or duration that is not a plausible integer would read as 0 (a cooldown
        // long over) or overflow the clock: refused, never a silently reopened breaker.
        auto plausible = [&](int col, bool optional) {
            return (optional && s.is_null(col)) ||
                   (s.is_integer(col) && s.col_i64(col) >= -max_wall_ms && s.col_i64(col) <= max_wall_ms);
        };
        if (!plausible(5, true) || !plausible(6, false) || !plausible(7, false) || !plausible(8, false) ||
            (!s.is_null(9) && (!plausible(16, false) || !plausible(18, false)))) {
            return fail("breaker " + i.instance + " has a time, duration or count that is not a plausible integer");
        }
        if (!s.is_null(5)) {
            i.mode_expires = to_time(s.col_i64(5));
            if (saved_wall_ms != 0) {
                // What was left of the mode at the save, from now. A bypass never outlasts it:
                // a wall clock behind after a reboot (an unset RTC, fake-hwclock) would stretch
                // it by as much, and a correction later would not shorten it (the steady clock
                // holds it then). A forced_open never ends before it: a wall clock ahead would
                // end it early (the downtime is added to it instead: the containing side).
                const time_point left = to_time(current.wall_ms + std::max<std::int64_t>(s.col_i64(5) - saved_wall_ms, 0));
                if (breakers::is_shadow(i.md)) {
                    i.mode_expires = std::min(*i.mode_expires, left);
                } else if (i.md == breakers::mode::forced_open) {
                    i.mode_expires = std::max(*i.mode_expires, left);
                }
            }
        }
        i.opened_at = to_time(s.col_i64(6));
        i.cooldown = std::chrono::milliseconds{s.col_i64(7)};
        i.trips = static_cast<std::uint64_t>(s.col_i64(8));
        if (!s.is_null(9)) {
            auto t = std::make_shared<breakers::transition>();
            t->instance = i.instance;
            t->breaker = i.breaker;
            t->to = i.st;
            t->mode_to = i.md;
            t->cause.kind = s.col_str(9);
            t->cause.actor = s.col_str(10);
            t->cause.reason = s.col_str(11);
            t->cause.rule = s.col_str(12);
            t->cause.key = s.col_str(13);
            t->cause.value = s.col_f64(14);
            t->cause.limit = s.col_f64(15);
            t->cause.window = std::chrono::milliseconds{s.col_i64(16)};
            t->cause.request_id = s.col_str(17);
            t->at = to_time(s.col_i64(18));
            i.last_trip = std::move(t);
        }
        out.push_back(std::move(i));
    }
    if (rc != SQLITE_DONE) {
        return fail("cannot read breaker state: " + conn->error());
    }
    return out;
}

std::optional<held_request> database::get(std::string_view ticket, result* error) const {
    auto conn = impl_->lease();
    static const std::string sql = std::string{"SELECT "} + summary_columns +
                                   ", b.headers, b.body FROM held_requests h JOIN held_bodies b ON b.id = h.id "
                                   "WHERE h.ticket = ?";
    auto s = conn->prepared(sql.c_str());
    const int rc = s.valid() ? (s.text(1, ticket), s.step()) : SQLITE_ERROR;
    if (rc == SQLITE_ROW) {
        held_request r;
        read_summary(s, r);
        auto headers = decode_headers(s.col_str(summary_column_count));
        if (!headers) {
            if (error != nullptr) {
                *error = unavailable("ticket " + std::string{ticket} + " has corrupt headers");
            }
            return std::nullopt;
        }
        r.headers = std::move(*headers);
        r.body = s.col_str(summary_column_count + 1);
        return r;
    }
    if (error != nullptr) {
        *error = rc == SQLITE_DONE ? result::failure("not_found", "no held request with ticket " + std::string{ticket})
                                   : unavailable("cannot read " + std::string{ticket} + ": " + conn->error());
    }
    return std::nullopt;
}

namespace {

// Builds the WHERE clause for a filter; binds with bind_filter in the same order.
std::string filter_sql(const list_filter& f) {
    std::string w = " WHERE 1";
    if (!f.breaker.empty()) {
        w += " AND (h.breaker = :breaker OR h.breaker_instance = :breaker)";
    }
    if (!f.agent.empty()) {
        w += " AND h.agent = :agent";
    }
    if (!f.rule.empty()) {
        w += " AND h.rule = :rule";
    }
    if (f.state) {
        w += " AND h.state = :state";
    }
    if (f.from_ms) {
        w += " AND h.received_ms >= :from";
    }
    if (f.to_ms) {
        w += " AND h.received_ms < :to";
    }
    if (!f.after_ticket.empty() || f.after_id > 0) {
        w += " AND h.id > :after";
    }
    if (f.upto_id > 0) {
        w += " AND h.id <= :upto";
    }
    return w;
}

void bind_named(sqlite3_stmt* s, const char* name, std::string_view v) {
    if (int i = sqlite3_bind_parameter_index(s, name); i > 0) {
        sqlite3_bind_text(s, i, v.empty() ? "" : v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    }
}

void bind_named(sqlite3_stmt* s, const char* name, std::int64_t v) {
    if (int i = sqlite3_bind_parameter_index(s, name); i > 0) {
        sqlite3_bind_int64(s, i, v);
    }
}

}  // namespace

namespace {

// Runs the filtered query, calling row(stmt) for each record. Returns false with *error set.
template <typename Row>
bool query_filtered(connection& c, const list_filter& f, bool with_bodies, std::int64_t limit, Row&& row,
                    result* error) {
    auto fail = [&](result r) {
        if (error != nullptr) {
            *error = std::move(r);
        }
        return false;
    };
    std::int64_t after = f.after_id;
    if (after == 0 && !f.after_ticket.empty()) {
        auto s = c.prepared("SELECT id FROM held_requests WHERE ticket = ?");
        const int rc = s.valid() ? (s.text(1, f.after_ticket), s.step()) : SQLITE_ERROR;
        if (rc == SQLITE_DONE) {
            return fail(result::failure("not_found", "no held request with ticket " + f.after_ticket));
        }
        if (rc != SQLITE_ROW) {
            return fail(unavailable("cannot page: " + c.error()));
        }
        after = s.col_i64(0);
    }
    std::string sql = std::string{"SELECT "} + summary_columns;
    if (with_bodies) {
        sql += ", b.headers, b.body FROM held_requests h JOIN held_bodies b ON b.id = h.id";
    } else {
        sql += " FROM held_requests h";
    }
    sql += filter_sql(f);
    sql += " ORDER BY h.id LIMIT :limit OFFSET :offset";
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(c.db(), sql.c_str(), -1, &raw, nullptr) != SQLITE_OK) {
        return fail(unavailable("cannot list: " + c.error()));
    }
    statement s{raw, true};
    bind_named(raw, ":breaker", f.breaker);
    bind_named(raw, ":agent", f.agent);
    bind_named(raw, ":rule", f.rule);
    if (f.state) {
        bind_named(raw, ":state", to_string(*f.state));
    }
    if (f.from_ms) {
        bind_named(raw, ":from", *f.from_ms);
    }
    if (f.to_ms) {
        bind_named(raw, ":to", *f.to_ms);
    }
    bind_named(raw, ":after", after);
    bind_named(raw, ":upto", f.upto_id);
    bind_named(raw, ":limit", limit);
    bind_named(raw, ":offset", static_cast<std::int64_t>(f.offset));
    int rc = 0;
    while ((rc = s.step()) == SQLITE_ROW) {
        if (!row(s)) {
            return fail(unavailable("cannot write the export"));
        }
    }
    if (rc != SQLITE_DONE) {
        return fail(unavailable("cannot list: " + c.error()));
    }
    return true;
}

}  // namespace

std::vector<held_request> database::list(const list_filter& filter, result* error) const {
    const std::int64_t limit =
        filter.limit == 0 ? 100 : static_cast<std::int64_t>(std::min<std::size_t>(filter.limit, 1000));
    std::vector<held_request> out;
    auto conn = impl_->lease();
    query_filtered(
        *conn, filter, false, limit,
        [&](const statement& s) {
            held_request r;
            read_summary(s, r);
            out.push_back(std::move(r));
            return true;
        },
        error);
    return out;
}

std::optional<std::int64_t> database::latest_hold_id(result* error) const {
    auto conn = impl_->lease();
    auto s = conn->prepared("SELECT COALESCE(MAX(id), 0) FROM held_requests");
    if (s.valid() && s.step() == SQLITE_ROW) {
        return s.col_i64(0);
    }
    if (error != nullptr) {
        *error = unavailable("cannot read the latest hold: " + conn->error());
    }
    return std::nullopt;
}

std::vector<history_entry> database::history(std::string_view ticket, result* error) const {
    std::vector<history_entry> out;
    auto conn = impl_->lease();
    auto s = conn->prepared(
        "SELECT ticket, coalesce(from_state, ''), to_state, at_ms, actor, detail FROM quarantine_history "
        "WHERE held_id = (SELECT id FROM held_requests WHERE ticket = ?) ORDER BY id");
    int rc = SQLITE_ERROR;
    if (s.valid()) {
        s.text(1, ticket);
        while ((rc = s.step()) == SQLITE_ROW) {
            out.push_back({s.col_str(0), s.col_str(1), s.col_str(2), s.col_i64(3), s.col_str(4), s.col_str(5)});
        }
    }
    if (rc != SQLITE_DONE && error != nullptr) {
        *error = unavailable("cannot read history of " + std::string{ticket} + ": " + conn->error());
    } else if (out.empty() && error != nullptr) {
        *error = result::failure("not_found", "no history for ticket " + std::string{ticket});
    }
    return out;
}

std::size_t database::export_jsonl(const list_filter& filter, std::ostream& out, result* error) const {
    const std::int64_t limit = filter.limit == 0 ? -1 : static_cast<std::int64_t>(filter.limit);
    std::size_t n = 0;
    auto conn = impl_->lease();
    std::string line;
    query_filtered(
        *conn, filter, true, limit,
        [&](const statement& s) {
            held_request r;
            read_summary(s, r);
            line.clear();
            auto str = [&](const char* k, std::string_view v) {
                line += '"';
                line += k;
                line += "\":";
                line += json_string(v);
                line += ',';
            };
            auto num = [&](const char* k, std::int64_t v) {
                line += '"';
                line += k;
                line += "\":";
                line += std::to_string(v);
                line += ',';
            };
            line += '{';
            str("ticket", r.ticket);
            str("state", to_string(r.state));
            num("received_ms", r.received_ms);
            num("state_ms", r.state_ms);
            str("method", r.method);
            str("target", r.target);
            str("route", r.route);
            str("upstream", r.upstream);
            str("agent", r.agent);
            str("rule", r.rule);
            str("breaker", r.breaker);
            str("breaker_instance", r.breaker_instance);
            str("failure_mode", r.failure_mode);
            str("sandboxed_by", r.sandboxed_by);
            str("request_id", r.request_id);
            num("release_attempts", r.release_attempts);
            if (r.release_status) {
                num("release_status", *r.release_status);
            }
            if (r.released_ms) {
                num("released_ms", *r.released_ms);
            }
            str("discard_reason", r.discard_reason);
            str("actor", r.actor);
            str("detail", r.detail);
            line += "\"headers\":[";
            if (auto h = decode_headers(s.col_str(summary_column_count))) {
                bool first = true;
                for (const auto& [name, value] : *h) {
                    if (!first) {
                        line += ',';
                    }
                    first = false;
                    line += '[' + json_string(name) + ',' + json_string(value) + ']';
                }
            }
            line += "],";
            num("body_bytes", r.body_bytes);
            line += "\"body_base64\":\"";
            line += base64_encode(s.col_str(summary_column_count + 1));
            line += "\"}\n";
            out.write(line.data(), static_cast<std::streamsize>(line.size()));
            ++n;
            return static_cast<bool>(out);
        },
        error);
    return n;
}

quarantine_counts database::counts() const {
    quarantine_counts out;
    std::lock_guard lock{impl_->counters_mu_};
    out.held_count = static_cast<std::uint64_t>(impl_->committed_.count);
    out.held_bytes = static_cast<std::uint64_t>(impl_->committed_.bytes);
    for (const auto& [b, p] : impl_->committed_.per_breaker) {
        out.per_breaker[b] = {static_cast<std::uint64_t>(p.first), static_cast<std::uint64_t>(p.second)};
    }
    return out;
}

void database::flush() {
    std::unique_lock lock{impl_->mu_};
    const auto target = impl_->enqueued_;
    impl_->done_cv_.wait(lock, [&] { return impl_->completed_ >= target; });
}

writer_stats database::stats() const {
    std::lock_guard lock{impl_->mu_};
    auto s = impl_->stats_;
    s.queued = impl_->queue_.size();
    return s;
}

std::uint64_t database::recovered_at_open() const { return impl_->recovered_; }
int database::schema_version() const { return impl_->schema_version_; }
std::int64_t database::keys_by_agent_since_ms() const { return impl_->keys_by_agent_since_ms_; }
const std::string& database::path() const { return impl_->opt_.path; }

void database::inject_write_fault(int sqlite_code, int count, fault_point where, int after) {
    std::lock_guard lock{impl_->mu_};
    impl_->fault_code_ = sqlite_code;
    impl_->fault_left_ = count;
    impl_->fault_after_ = after;
    impl_->fault_where_ = where;
}

void database::limit_value_bytes(int bytes) {
    std::lock_guard lock{impl_->mu_};
    impl_->value_limit_ = bytes;
}

void database::pause_writer(bool paused) {
    {
        std::lock_guard lock{impl_->mu_};
        impl_->paused_ = paused;
    }
    impl_->wake_.notify_all();
}

// ---------------------------------------------------------------------------------------
// Audit log and config versions (the control plane's records).

namespace {

constexpr const char* genesis_hash = "0000000000000000000000000000000000000000000000000000000000000000";

// What verification says when the chain no longer holds the anchor (database::audit_anchor).
std::string anchor_missing(std::int64_t last_id, std::int64_t anchor_id) {
    return "the log ends at entry " + std::to_string(last_id) + " but this process wrote or found entry " +
           std::to_string(anchor_id) + " (entries deleted)";
}
std::string anchor_rewritten(std::int64_t anchor_id) {
    return "entry " + std::to_string(anchor_id) +
           " is not the one this process wrote or found at start (the log was rewritten from there on)";
}

// SHA-256 over every field, each length-prefixed so no two different entries can be
// written as the same byte string.
std::string audit_hash(const audit_entry& e) {
    std::string m;
    auto add = [&](std::string_view v) {
        m += std::to_string(v.size());
        m += ':';
        m += v;
        m += ';';
    };
    add(e.prev_hash);
    add(std::to_string(e.id));
    add(std::to_string(e.at_ms));
    add(e.actor);
    add(e.role);
    add(e.method);
    add(e.path);
    add(e.target);
    add(e.params);
    add(e.reason);
    add(e.result);
    add(e.diff);
    return sha256_hex(m);
}

}  // namespace

void database::append_audit(audit_entry entry, done_fn done) {
    const auto bytes = entry.params.size() + entry.diff.size() + 512;
    // The anchor moves once the entry is committed (done runs after the commit).
    done = [p = impl_.get(), done = std::move(done)](const result& r) {
        if (r.ok) {
            std::lock_guard lock{p->anchor_mu_};
            if (r.count > p->anchor_id_) {
                p->anchor_id_ = r.count;
                p->anchor_hash_ = r.hash;
            }
        }
        if (done) {
            done(r);
        }
    };
    impl_->enqueue(
        [this, entry = std::move(entry)](impl::batch_ctx& ctx) mutable -> impl::outcome {
            // The writer is the only one appending, so reading the head and writing the next
            // link inside its transaction keeps the chain linear.
            auto head = ctx.c.once("SELECT last_id, last_hash FROM audit_head WHERE one = 1");
            if (!head.valid()) {
                return impl::outcome{unavailable("cannot read the audit head: " + ctx.c.error())};
            }
            std::int64_t last_id = 0;
            std::string last_hash = genesis_hash;
            // A read that fails is no empty log: taken for one, the append would flag the
            // chain as cut for the rest of the process's life.
            if (const int rc = head.step(); rc == SQLITE_ROW) {
                last_id = head.col_i64(0);
                last_hash = head.col_str(1);
            } else if (rc != SQLITE_DONE) {
                return is_io_fault(rc) ? impl::outcome{unavailable(ctx.c.error()), rc, ctx.c.error()}
                                       : impl::outcome{unavailable("cannot read the audit head: " + ctx.c.error())};
            }
            // Damage found while appending is remembered for every later verification (the
            // first found), with the entry it was found at.
            auto remember_damage = [&](std::string problem, std::int64_t first_bad) {
                std::lock_guard lock{impl_->anchor_mu_};
                if (impl_->tampered_.empty()) {
                    impl_->tampered_at_ = first_bad;
                    impl_->tampered_ = std::move(problem) + ", found when entry " + std::to_string(last_id + 1) +
                                       " was appended";
                }
            };
            // A head behind the log itself (audit_head edited, or restored from an older
            // copy): the next id would collide with an entry there, and every append, so
            // every operator act, would fail. The entry goes after the log's last one, and
            // the damage is remembered, as below.
            std::string head_problem;
            const std::int64_t head_id = last_id;
            {
                auto tail = ctx.c.once("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1");
                if (!tail.valid()) {
                    return impl::outcome{unavailable("cannot read the audit log: " + ctx.c.error())};
                }
                const int rc = tail.step();
                if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
                    return is_io_fault(rc) ? impl::outcome{unavailable(ctx.c.error()), rc, ctx.c.error()}
                                           : impl::outcome{unavailable("cannot read the audit log: " + ctx.c.error())};
                }
                if (rc == SQLITE_ROW && tail.col_i64(0) > last_id) {
                    head_problem = "the audit head says entry " + std::to_string(last_id) +
                                   " is the last, but the log holds entries up to " + std::to_string(tail.col_i64(0)) +
                                   " (the head was moved back)";
                    last_id = tail.col_i64(0);
                    last_hash = tail.col_str(1);
                }
            }
            if (!head_problem.empty()) {
                remember_damage(std::move(head_problem), head_id + 1);  // the first entry the head disowned
            }
            // The chain must still hold the anchor as written; an append onto a chain cut
            // back, wiped or re-chained is made (operators are never blocked by it), and the
            // damage is remembered for every later verification.
            const auto [anchor_id, anchor_hash] = audit_anchor();
            if (anchor_id > 0) {
                std::string problem;
                if (last_id < anchor_id) {
                    problem = anchor_missing(last_id, anchor_id);
                } else {
                    auto at = ctx.c.once("SELECT hash FROM audit WHERE id = ?1");
                    if (!at.valid()) {
                        return impl::outcome{unavailable("cannot read the audit log: " + ctx.c.error())};
                    }
                    at.i64(1, anchor_id);
                    const int rc = at.step();
                    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
                        return is_io_fault(rc) ? impl::outcome{unavailable(ctx.c.error()), rc, ctx.c.error()}
                                               : impl::outcome{unavailable("cannot read the audit log: " + ctx.c.error())};
                    }
                    if (rc != SQLITE_ROW || at.col_str(0) != anchor_hash) {
                        problem = anchor_rewritten(anchor_id);
                    }
                }
                if (!problem.empty()) {
                    remember_damage(std::move(problem), std::min(last_id + 1, anchor_id));
                }
            }
            entry.id = last_id + 1;
            if (entry.at_ms == 0) {
                entry.at_ms = wall_ms(impl_->clock_);
            }
            entry.prev_hash = last_hash;
            entry.hash = audit_hash(entry);
            auto ins = ctx.c.once(
                "INSERT INTO audit(id, at_ms, actor, role, method, path, target, params, reason, result, diff, "
                "prev_hash, hash) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)");
            if (!ins.valid()) {
                return impl::outcome{unavailable("cannot prepare the audit insert: " + ctx.c.error())};
            }
            ins.i64(1, entry.id);
            ins.i64(2, entry.at_ms);
            ins.text(3, entry.actor);
            ins.text(4, entry.role);
            ins.text(5, entry.method);
            ins.text(6, entry.path);
            ins.text(7, entry.target);
            ins.text(8, entry.params);
            ins.text(9, entry.reason);
            ins.text(10, entry.result);
            ins.text(11, entry.diff);
            ins.text(12, entry.prev_hash);
            ins.text(13, entry.hash);
            if (const int rc = ins.step(); rc != SQLITE_DONE) {
                return is_io_fault(rc) ? impl::outcome{unavailable(ctx.c.error()), rc, ctx.c.error()}
                                       : impl::outcome{unavailable("cannot append to the audit log: " + ctx.c.error())};
            }
            auto up = ctx.c.once("INSERT INTO audit_head(one, last_id, last_hash) VALUES(1, ?1, ?2) "
                                 "ON CONFLICT(one) DO UPDATE SET last_id = excluded.last_id, last_hash = excluded.last_hash");
            if (!up.valid()) {
                return impl::outcome{unavailable("cannot prepare the audit head: " + ctx.c.error())};
            }
            up.i64(1, entry.id);
            up.text(2, entry.hash);
            if (const int rc = up.step(); rc != SQLITE_DONE) {
                return is_io_fault(rc) ? impl::outcome{unavailable(ctx.c.error()), rc, ctx.c.error()}
                                       : impl::outcome{unavailable("cannot move the audit head: " + ctx.c.error())};
            }
            result r;
            r.count = entry.id;
            r.hash = entry.hash;
            return impl::outcome{r};
        },
        // Past the queue's bounds: every admin action writes its audit entry first, and an
        // operator's trip or pause must not be refused by the flood of holds it is meant to
        // stop (admin calls are few and their bodies bounded).
        std::move(done), bytes, /*essential=*/true);
}

std::pair<std::int64_t, std::string> database::audit_anchor() const {
    std::lock_guard lock{impl_->anchor_mu_};
    return {impl_->anchor_id_, impl_->anchor_hash_};
}

std::string database::audit_tampering(std::int64_t* first_bad) const {
    std::lock_guard lock{impl_->anchor_mu_};
    if (first_bad != nullptr) {
        *first_bad = impl_->tampered_at_;
    }
    return impl_->tampered_;
}

std::vector<audit_entry> database::list_audit(std::int64_t after_id, std::size_t limit, std::string* error) const {
    std::vector<audit_entry> out;
    auto c = impl_->lease();
    auto s = c->once("SELECT id, at_ms, actor, role, method, path, target, params, reason, result, diff, prev_hash, hash "
                     "FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2");
    if (!s.valid()) {
        if (error != nullptr) {
            *error = "cannot read the audit log: " + c->error();
        }
        return out;
    }
    s.i64(1, after_id);
    s.i64(2, static_cast<std::int64_t>(limit == 0 ? 100 : std::min<std::size_t>(limit, 1000)));
    for (;;) {
        const int rc = s.step();
        if (rc != SQLITE_ROW) {
            if (rc != SQLITE_DONE && error != nullptr) {
                *error = "cannot read the audit log: " + c->error();
            }
            break;
        }
        audit_entry e;
        e.id = s.col_i64(0);
        e.at_ms = s.col_i64(1);
        e.actor = s.col_str(2);
        e.role = s.col_str(3);
        e.method = s.col_str(4);
        e.path = s.col_str(5);
        e.target = s.col_str(6);
        e.params = s.col_str(7);
        e.reason = s.col_str(8);
        e.result = s.col_str(9);
        e.diff = s.col_str(10);
        e.prev_hash = s.col_str(11);
        e.hash = s.col_str(12);
        out.push_back(std::move(e));
    }
    return out;
}

audit_verification database::verify_audit() const {
    audit_verifier v{*this};
    while (!v.step()) {
    }
    return v.result();
}

bool database::audit_verifier::step() {
    if (done_) {
        return true;
    }
    if (expected_id_ == 1) {
        expected_prev_ = genesis_hash;
        // Every entry up to the anchor was committed before this check began: the chain
        // must still hold it as it was written.
        std::tie(anchor_id_, anchor_hash_) = db_.audit_anchor();
        std::int64_t at = 0;
        if (auto problem = db_.audit_tampering(&at); !problem.empty()) {
            v_.ok = false;
            v_.first_bad = at;
            v_.problem = std::move(problem);
            done_ = true;
            return true;
        }
    }
    std::string read_error;
    const auto page = db_.list_audit(expected_id_ - 1, 1000, &read_error);
    if (!read_error.empty()) {
        // Not a verified log: what could not be read was not checked.
        v_.ok = false;
        v_.first_bad = expected_id_;
        v_.problem = std::move(read_error);
        done_ = true;
        return true;
    }
    for (const auto& e : page) {
        auto bad = [&](std::string problem) {
            v_.ok = false;
            v_.first_bad = e.id;
            v_.problem = std::move(problem);
        };
        if (e.id != expected_id_) {
            bad("entry " + std::to_string(expected_id_) + " is missing (next is " + std::to_string(e.id) + ")");
        } else if (e.prev_hash != expected_prev_) {
            bad("entry " + std::to_string(e.id) + " does not link to the previous entry");
        } else if (audit_hash(e) != e.hash) {
            bad("entry " + std::to_string(e.id) + " was changed after it was written (hash mismatch)");
        } else if (e.id == anchor_id_ && e.hash != anchor_hash_) {
            bad(anchor_rewritten(e.id));
        }
        if (!v_.ok) {
            done_ = true;
            return true;
        }
        ++v_.entries;
        expected_prev_ = e.hash;
        ++expected_id_;
    }
    if (!page.empty()) {
        return false;
    }
    if (anchor_id_ > expected_id_ - 1) {
        // Deleted with the head moved back to match (or the whole log wiped): the process
        // remembers what it wrote.
        v_.ok = false;
        v_.first_bad = expected_id_;
        v_.problem = anchor_missing(expected_id_ - 1, anchor_id_);
        done_ = true;
        return true;
    }
    // The head records the last entry written: a head ahead of the log (entries deleted from
    // the end, the head left as it was) shows here; the anchor above covers a head moved back.
    auto c = db_.impl_->lease();
    auto head = c->once("SELECT last_id, last_hash FROM audit_head WHERE one = 1");
    if (head.valid() && head.step() == SQLITE_ROW) {
        // Ahead of the walk: written since the last page was read (go on, once per entry),
        // or deleted from the end (the next page is empty again at the same entry).
        if (head.col_i64(0) >= expected_id_ && went_on_at_ != expected_id_) {
            went_on_at_ = expected_id_;
            return false;
        }
        if (head.col_i64(0) != expected_id_ - 1 || head.col_str(1) != expected_prev_) {
            v_.ok = false;
            v_.first_bad = expected_id_;
            v_.problem = "the log ends at entry " + std::to_string(expected_id_ - 1) + " but entry " +
                         std::to_string(head.col_i64(0)) + " was written (entries deleted from the end)";
        }
    } else if (v_.entries > 0) {
        v_.ok = false;
        v_.first_bad = 1;
        v_.problem = "the audit head is missing";
    }
    done_ = true;
    return true;
}

namespace {

// Upserts the config file's mark (inside the caller's transaction); an empty outcome is success.
std::optional<int> write_config_file_mark(connection& c, const std::string& sha256, std::int64_t version) {
    auto s = c.once("INSERT INTO config_file(one, sha256, version) VALUES(1, ?1, ?2) "
                    "ON CONFLICT(one) DO UPDATE SET sha256 = excluded.sha256, version = excluded.version");
    if (!s.valid()) {
        return SQLITE_ERROR;
    }
    s.text(1, sha256);
    s.i64(2, version);
    if (const int rc = s.step(); rc != SQLITE_DONE) {
        return rc;
    }
    return std::nullopt;
}

}  // namespace

void database::save_config_version(std::string json, std::string actor, std::string reason, done_fn done,
                                   std::string file_sha256) {
    const auto bytes = json.size() + 256;
    impl_->enqueue(
        [this, json = std::move(json), actor = std::move(actor), reason = std::move(reason),
         file_sha256 = std::move(file_sha256)](impl::batch_ctx& ctx) -> impl::outcome {
            auto ins = ctx.c.once("INSERT INTO config_versions(at_ms, actor, reason, json) VALUES(?1, ?2, ?3, ?4)");
            if (!ins.valid()) {
                return impl::outcome{unavailable("cannot prepare the config version insert: " + ctx.c.error())};
            }
            ins.i64(1, wall_ms(impl_->clock_));
            ins.text(2, actor);
            ins.text(3, reason);
            ins.text(4, json);
            if (const int rc = ins.step(); rc != SQLITE_DONE) {
                return is_io_fault(rc) ? impl::outcome{unavailable(ctx.c.error()), rc, ctx.c.error()}
                                       : impl::outcome{unavailable("cannot save the config version: " + ctx.c.error())};
            }
            const auto version = sqlite3_last_insert_rowid(ctx.c.handle());
            if (!file_sha256.empty()) {
                if (const auto rc = write_config_file_mark(ctx.c, file_sha256, version)) {
                    return is_io_fault(*rc) ? impl::outcome{unavailable(ctx.c.error()), *rc, ctx.c.error()}
                                            : impl::outcome{unavailable("cannot mark the config file: " + ctx.c.error())};
                }
            }
            // Keep the last 50.
            auto del = ctx.c.once("DELETE FROM config_versions WHERE version <= ?1");
            if (del.valid()) {
                del.i64(1, version - 50);
                if (const int rc = del.step(); rc != SQLITE_DONE && is_io_fault(rc)) {
                    return impl::outcome{unavailable(ctx.c.error()), rc, ctx.c.error()};
                }
            }
            result r;
            r.count = version;
            return impl::outcome{r};
        },
        std::move(done), bytes);
}

void database::mark_config_file(std::string sha256, std::int64_t version, done_fn done) {
    impl_->enqueue(
        [sha256 = std::move(sha256), version](impl::batch_ctx& ctx) -> impl::outcome {
            if (const auto rc = write_config_file_mark(ctx.c, sha256, version)) {
                return is_io_fault(*rc) ? impl::outcome{unavailable(ctx.c.error()), *rc, ctx.c.error()}
                                        : impl::outcome{unavailable("cannot mark the config file: " + ctx.c.error())};
            }
            return impl::outcome{result{}};
        },
        std::move(done), 128);
}

namespace {

std::optional<config_file_mark> read_config_file_mark(connection& c, std::string* error = nullptr) {
    auto s = c.once("SELECT sha256, version FROM config_file WHERE one = 1");
    const int rc = s.valid() ? s.step() : SQLITE_ERROR;
    if (rc != SQLITE_ROW) {
        if (rc != SQLITE_DONE && error != nullptr) {
            *error = "cannot read the config file's mark: " + c.error();
        }
        return std::nullopt;
    }
    return config_file_mark{s.col_str(0), s.col_i64(1)};
}

}  // namespace

std::optional<config_file_mark> database::config_file(std::string* error) const {
    auto c = impl_->lease();
    return read_config_file_mark(*c, error);
}

std::optional<startup_config_view> database::peek_config(const std::string& path, std::string* error) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
        return std::nullopt;  // a first start: nothing was applied before
    }
    sqlite3* db = nullptr;
    const int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
    std::unique_ptr<sqlite3, int (*)(sqlite3*)> owned{db, sqlite3_close_v2};
    if (rc != SQLITE_OK) {
        *error = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
        return std::nullopt;
    }
    sqlite3_busy_timeout(db, 2000);
    auto read = [&](const char* sql, auto&& row) {
        sqlite3_stmt* s = nullptr;
        if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK) {
            // No such table: a store from before schema 10, or a new one. Anything else (a
            // busy, unreadable or foreign file) is said: the caller does not guess.
            const std::string why = sqlite3_errmsg(db);
            if (why.rfind("no such table", 0) != 0) {
                *error = why;
            }
            return false;
        }
        std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> st{s, sqlite3_finalize};
        const int step = sqlite3_step(s);
        if (step == SQLITE_ROW) {
            row(s);
            return true;
        }
        if (step != SQLITE_DONE) {
            *error = sqlite3_errmsg(db);
        }
        return false;
    };
    auto text = [](sqlite3_stmt* s, int col) {
        const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s, col));
        return p == nullptr ? std::string{} : std::string{p, static_cast<std::size_t>(sqlite3_column_bytes(s, col))};
    };
    startup_config_view v;
    if (!read("SELECT sha256, version FROM config_file WHERE one = 1", [&](sqlite3_stmt* s) {
            v.file.sha256 = text(s, 0);
            v.file.version = sqlite3_column_int64(s, 1);
        })) {
        return std::nullopt;
    }
    if (!read("SELECT version, json FROM config_versions ORDER BY version DESC LIMIT 1", [&](sqlite3_stmt* s) {
            v.latest = sqlite3_column_int64(s, 0);
            v.latest_json = text(s, 1);
        })) {
        return std::nullopt;
    }
    return v;
}

std::optional<std::pair<std::int64_t, std::string>> database::config_version(std::int64_t version,
                                                                             std::string* error) const {
    auto c = impl_->lease();
    auto s = version == 0 ? c->once("SELECT version, json FROM config_versions ORDER BY version DESC LIMIT 1")
                          : c->once("SELECT version, json FROM config_versions WHERE version = ?1");
    auto failed = [&] {
        if (error != nullptr) {
            *error = "cannot read the config versions: " + c->error();
        }
        return std::nullopt;
    };
    if (!s.valid()) {
        return failed();
    }
    if (version != 0) {
        s.i64(1, version);
    }
    if (const int rc = s.step(); rc != SQLITE_ROW) {
        return rc == SQLITE_DONE ? std::nullopt : failed();
    }
    return std::pair{s.col_i64(0), s.col_str(1)};
}

std::optional<std::vector<std::string>> database::config_version_texts(std::string* error) const {
    auto c = impl_->lease();
    auto s = c->once("SELECT json FROM config_versions ORDER BY version");
    std::vector<std::string> out;
    int rc = SQLITE_ERROR;
    if (s.valid()) {
        while ((rc = s.step()) == SQLITE_ROW) {
            out.push_back(s.col_str(0));
        }
    }
    if (rc != SQLITE_DONE) {
        if (error != nullptr) {
            *error = "cannot read the config versions: " + c->error();
        }
        return std::nullopt;
    }
    return out;
}

}  // namespace bb::store
