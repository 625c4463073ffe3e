#pragma once
// The store: one SQLite file (WAL, synchronous=FULL) holding quarantined requests, their
// state history and the durable breaker state (issue 5).
//
// Thread-safety: every public member of `database` is safe to call from any thread.
// - Writes (hold, begin_release, finish_release, discard, prune, save_breaker_state) never
//   touch the disk on the caller's thread: they are queued for ONE writer thread, which
//   runs everything queued in one transaction and one fsync (group commit), then calls
//   each operation's `done` on the writer thread. `done` must be quick and must not call
//   back into the store synchronously (post it to your own executor). `done` is called
//   exactly once; when the write is refused up front (queue full -> store_busy, store
//   closing -> store_unavailable) it is called inline, on the caller's thread, before the
//   call returns.
// - Reads (get, list, history, export_jsonl, load_breaker_state) are synchronous and run on
//   a small pool of read connections (WAL readers never wait for the writer). They block
//   the caller on disk: call them from the admin/control plane, never a data-plane worker.
//   counts() and stats() read in-memory counters and are cheap.
//
// One process owns the file: open() takes an exclusive flock(2) on "<path>.lock" and fails
// at once, with a clear message, if anyone else (another process, or another `database` in
// this process) holds it.

#include "breakers/breaker.hpp"
#include "core/clock.hpp"
#include "store/codec.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bb::store {

// What a store operation came to. `code` is "" when ok, else one of:
//   store_unavailable  the disk or the database failed (I/O error, disk full); nothing of
//                      the operation was written. Answer 503; the store keeps trying.
//   store_busy         the write queue is full; answer 503 with retry-after.
//   quarantine_full    a held-count or held-bytes limit would be exceeded.
//   not_found          no such ticket.
//   invalid_state      the transition is not allowed from the record's current state.
struct result {
    bool ok = true;
    std::string code;
    std::string message;
    std::string ticket;       // hold: the new ticket; transitions: the ticket acted on
    std::int64_t count = 0;   // prune: records deleted; transitions: the record's attempts; audit: the id
    std::string hash;         // append_audit: the entry's hash
    bool duplicate = false;   // hold: `ticket` is an earlier hold of the same request (its key)
    std::string breaker;      // earlier_hold, a duplicate hold: the record's breaker instance ("" once pruned)
    bool unrecorded = false;  // a release (proxy/remediation): sent, its result not recorded yet

    static result success() { return {}; }
    static result failure(std::string code, std::string message) {
        return {false, std::move(code), std::move(message), {}, 0, {}, false, {}, false};
    }
};

using done_fn = std::function<void(const result&)>;

// held -> releasing -> released | release_failed; release_failed -> releasing (retry);
// held | release_failed | outcome_unknown -> discarded; releasing -> outcome_unknown (found
// at start after a crash, or the proxy cannot tell whether the upstream got it);
// outcome_unknown -> releasing only with force (an operator's explicit choice).
// released and discarded are final ("resolved").
enum class held_state : std::uint8_t { held, releasing, released, release_failed, discarded, outcome_unknown };

std::string_view to_string(held_state s);
std::optional<held_state> parse_held_state(std::string_view s);
// Whether `from -> to` is allowed; `force` permits outcome_unknown -> releasing.
bool transition_allowed(held_state from, held_state to, bool force);

struct held_request {
    std::string ticket;               // set by the store at hold()
    std::string method;
    std::string target;
    header_list headers;              // as forwarded (hop-by-hop and x-breakerbox-key removed by the caller)
    std::string body;                 // any bytes
    std::string route;
    std::string upstream;
    std::string agent;
    std::string rule;
    std::string breaker;              // breaker id; "" -> taken from breaker_instance (text before '/')
    std::string breaker_instance;     // "campaign-volume/spring-sale"
    std::string failure_mode;
    std::string request_id;
    std::int64_t received_ms = 0;     // wall clock; 0 -> the store's clock at hold()
    // The client's own Idempotency-Key (store.idempotency_header), "" when it sent none. A
    // hold with the key and agent of an earlier one is a retry, whichever route carried
    // either (a renamed route must not make a retry a second request): the result carries
    // the earlier ticket with `duplicate`, nothing is stored; one whose method, target or
    // body differ fails with idempotency_key_reused.
    std::string idempotency_key;
    // The sandbox that applied when it was held (a sandbox breaker's instance, or agent/<id>),
    // "" for none: the record is the request as sent, released for real only once that
    // sandbox no longer applies.
    std::string sandboxed_by;

    // Filled by the store when read back.
    held_state state = held_state::held;
    std::int64_t state_ms = 0;        // wall clock of the last state change
    std::int64_t body_bytes = 0;
    std::int64_t held_bytes = 0;      // what the record counts against the byte limits
    std::optional<int> release_status;        // upstream status of the last release attempt
    std::optional<std::int64_t> released_ms;  // when the last release attempt finished
    std::uint32_t release_attempts = 0;
    std::string discard_reason;
    std::int64_t id = 0;              // the store's row id (listings): keyset paging by id
    std::string actor;                // who made the last change
    std::string detail;               // last release detail (error text, upstream reason)
};

struct history_entry {
    std::string ticket;
    std::string from;                 // "" for the hold itself
    std::string to;
    std::int64_t at_ms = 0;
    std::string actor;
    std::string detail;
};

struct list_filter {
    std::string breaker;              // a breaker id (all its instances) or one instance name
    std::string agent;
    std::string rule;
    std::optional<held_state> state;
    std::optional<std::int64_t> from_ms;  // received_ms >= from_ms
    std::optional<std::int64_t> to_ms;    // received_ms < to_ms
    std::size_t limit = 0;            // list: 0 -> 100, at most 1000; export: 0 -> everything
    std::string after_ticket;         // keyset paging: records held after this one
    // Or after this row id (held_request::id), which needs no record to exist any more: a
    // bulk action's page ends on a record that may be discarded and pruned meanwhile.
    std::int64_t after_id = 0;
    // A snapshot bound (0: none): only records held no later than the one with this internal
    // id (latest_hold_id()), so a bulk action covers what was held when it began and never
    // requests held while it runs.
    std::int64_t upto_id = 0;
    std::size_t offset = 0;           // or plain offset paging (slower on deep pages)
};

// 0 means "no limit" for any field. Held = not yet resolved (held, releasing,
// release_failed, outcome_unknown): those records still need an operator or a replay.
struct store_limits {
    std::uint64_t max_held = 100'000;
    std::uint64_t max_held_bytes = 2ull << 30;          // 2 GiB
    std::uint64_t per_breaker_max_held = 10'000;
    std::uint64_t per_breaker_max_held_bytes = 512ull << 20;  // 512 MiB
};

struct store_options {
    std::string path = "var/breakerbox.db";
    store_limits limits;
    // false: one transaction (one fsync) per operation; only for the benchmark comparison.
    bool group_commit = true;
    // The write queue is bounded (STYLE: bound everything); beyond it writes fail fast.
    std::size_t queue_max_ops = 8192;
    std::size_t queue_max_bytes = 256ull << 20;
    // One transaction takes at most this much, so a commit never grows without bound.
    std::size_t batch_max_ops = 2048;
    std::size_t batch_max_bytes = 64ull << 20;
    std::chrono::milliseconds busy_timeout{100};
    std::size_t read_connections = 2;
    // The SQLite VFS the files are opened through; empty: the default. Tests wrap the
    // default one to make an fsync fail.
    std::string vfs;
};

struct breaker_counts {
    std::uint64_t held = 0;
    std::uint64_t bytes = 0;
};

struct quarantine_counts {
    std::uint64_t held_count = 0;     // not yet resolved
    std::uint64_t held_bytes = 0;
    std::map<std::string, breaker_counts> per_breaker;  // breaker id -> counts (non-zero only)
};

struct writer_stats {
    std::uint64_t transactions = 0;   // committed write transactions
    std::uint64_t ops_committed = 0;  // operations that succeeded
    std::uint64_t ops_failed = 0;     // operations answered with an error (any code)
    std::uint64_t batches_failed = 0; // transactions rolled back for an I/O error
    std::uint64_t largest_batch = 0;
    std::uint64_t batches_rerun = 0;  // run again with a savepoint per op (an op failed after writing)
    std::uint64_t queued = 0;         // operations waiting for the writer now
};

enum class release_outcome : std::uint8_t {
    released,        // the upstream answered and the release counts as done
    failed,          // the upstream refused or was not reached; retry is allowed
    unknown,         // it may have reached the upstream (sent, no answer): an operator decides
};
// The state a release's outcome leaves its record in (released, release_failed,
// outcome_unknown).
held_state state_after(release_outcome o);

// Where an injected fault strikes, for tests.
enum class fault_point : std::uint8_t {
    first_write,     // the first statement of the transaction fails
    commit,          // every operation ran, then COMMIT fails (so the rollback is exercised)
    silent_rollback, // SQLite rolls the transaction back during the first operation, which
                     // does not notice (as with an error an op ignores)
};

struct audit_entry {
    std::int64_t id = 0;
    std::int64_t at_ms = 0;     // wall clock; 0 -> the store's clock when written
    std::string actor;          // token name or client certificate
    std::string role;
    std::string method;
    std::string path;
    std::string target;         // what was acted on (breaker instance, ticket, "config")
    std::string params;         // the request body (bounded)
    std::string reason;
    std::string result;
    std::string diff;           // config changes: a readable diff
    std::string prev_hash;      // SHA-256 hex of the previous entry (64 zeros for the first)
    std::string hash;           // SHA-256 hex of this entry, prev_hash included
};

struct audit_verification {
    bool ok = true;
    std::uint64_t entries = 0;  // entries that verified
    std::int64_t first_bad = 0;
    std::string problem;
};

// The config file as breakerbox last read it: its SHA-256 and the config version it became.
struct config_file_mark {
    std::string sha256;
    std::int64_t version = 0;
};

struct startup_config_view {
    config_file_mark file;
    std::int64_t latest = 0;  // the latest config version and its JSON
    std::string latest_json;
};

class database {
public:
    // Opens (creating the file and its parent directories), locks, migrates, recovers
    // records left in `releasing` by a crash, loads the limit counters and starts the
    // writer. On failure returns null and says why in *error (the caller prints it and
    // exits 1). `c` must outlive the database.
    static std::unique_ptr<database> open(store_options options, const clock& c, std::string* error);

    // Completes every queued write, stops the writer, closes the file and the lock.
    ~database();
    database(const database&) = delete;
    database& operator=(const database&) = delete;

    // New hold limits (a config reload): holds checked from now on use them; what is held
    // already stays (a lower limit only refuses new holds). Thread-safe.
    void set_limits(const store_limits& limits);

    // --- quarantine writes (queued, group-committed; see the header comment) ---
    // done(r): r.ticket is the new ticket once the record is durable (fsync'd).
    void hold(held_request request, done_fn done);
    // hold() in two steps, for a caller that must queue the hold in one step with a check of
    // its own (proxy/forwarded_keys.hpp sent_at_then): prepare_hold does the costly part
    // (ticket, headers, the body's fingerprint) anywhere; queue_hold only announces the key
    // (may_hold_key) and queues the write.
    struct prepared_hold {
        std::shared_ptr<held_request> request;
        std::shared_ptr<std::string> headers;
        std::shared_ptr<std::string> fingerprint;
        std::optional<result> error;  // the hold cannot be made (queue_hold answers it)
    };
    prepared_hold prepare_hold(held_request request);
    void queue_hold(prepared_hold hold, done_fn done);
    // Commits `releasing` (before the proxy sends). Allowed from held and release_failed;
    // from outcome_unknown only with force. Never from released. `expected`: the state the
    // caller selected the record in (a bulk operation's listing); another state now is
    // invalid_state and nothing changes. `expected_attempts`: the release_attempts the
    // operator saw when deciding (a force must name it): a record another release sent
    // meanwhile has more, and is invalid_state, not sent again on a decision made before it.
    void begin_release(std::string ticket, std::string actor, bool force, done_fn done,
                       std::optional<held_state> expected = std::nullopt,
                       std::optional<std::uint32_t> expected_attempts = std::nullopt);
    // Records the result of the replay started by begin_release (state must be releasing).
    // `attempts`: the release_attempts that begin_release returned (its result's count), so
    // a result recorded late never lands on a later release of the record (invalid_state).
    // A failure of a record that was ever outcome_unknown is recorded outcome_unknown (an
    // earlier attempt may have been delivered). On success r.code is the state recorded,
    // r.message its detail.
    void finish_release(std::string ticket, release_outcome outcome, int status_code, std::string detail,
                        done_fn done, std::optional<std::uint32_t> attempts = std::nullopt);
    // The brief's form: ok -> released, !ok -> release_failed.
    void finish_release(std::string ticket, int status_code, bool ok, std::string detail, done_fn done);
    void discard(std::string ticket, std::string actor, std::string reason, done_fn done,
                 std::optional<held_state> expected = std::nullopt);
    // Deletes resolved records (released, discarded) whose last change is older than the
    // cutoff, with their history; at most max_records per call (done: r.count). Call again
    // while r.count == max_records. A pruned record's Idempotency-Key (key, agent, route,
    // fingerprint, ticket, state) is kept for 7 more days (longer while a second record of
    // the same request, held by a version before schema 13, is): a retry arriving then still
    // gets the first ticket (hold(): duplicate), not a second hold.
    void prune(std::int64_t older_than_ms, done_fn done, std::size_t max_records = 10'000);

    // --- quarantine reads (synchronous; see the header comment) ---
    // With the headers and the body. nullopt + error->code "not_found" or "store_unavailable".
    // Whether a record may have been held under this Idempotency-Key for this agent (or its
    // tombstone kept): from memory (hashes of every key held since open, and of the records
    // found at open), cheap enough for every request that carries a key.
    // False for certain means none was; true is answered by earlier_hold.
    bool may_hold_key(std::string_view key, std::string_view agent) const;
    // The record held before under this key and agent (its tombstone once pruned),
    // for a request about to be forwarded live: a client that never got the 202 for its
    // hold retries after the breaker closed, and the retry must not go out beside the
    // release of the first (a double send). Queued on the writer like a write, so it runs
    // after any hold queued before it and never blocks the caller. done(result): ok with
    // an empty ticket (none), ok with `ticket`, `breaker` (the instance, "" once pruned),
    // `message` (its state) and `duplicate` (the same method, target and body), or code
    // idempotency_key_reused (another request under the key); not ok on a store failure.
    void earlier_hold(std::string key, std::string agent, std::string_view method,
                      std::string_view target, std::string_view body, done_fn done);
    std::optional<held_request> get(std::string_view ticket, result* error = nullptr) const;
    // Summaries, oldest hold first: no headers and no body (body_bytes says how big).
    std::vector<held_request> list(const list_filter& filter, result* error = nullptr) const;
    std::vector<history_entry> history(std::string_view ticket, result* error = nullptr) const;
    // The internal id of the latest hold (0: none yet); nullopt + *error when unreadable.
    std::optional<std::int64_t> latest_hold_id(result* error = nullptr) const;
    // One JSON object per line, headers as [name, value] pairs, body in base64.
    // Returns the number of records written.
    std::size_t export_jsonl(const list_filter& filter, std::ostream& out, result* error = nullptr) const;
    // Committed counters (exactly what the limits are checked against). Cheap.
    quarantine_counts counts() const;

    // --- breaker state (replaces store/breaker_state.*) ---
    // Replaces the saved state with these instances (closed+automatic ones are skipped, as
    // in the JSON file), in one operation. Times go to disk as wall-clock milliseconds.
    void save_breaker_state(std::vector<breakers::instance_snapshot> instances, done_fn done);
    // Maps saved wall-clock times back onto `c`'s steady clock (same as load_breaker_state
    // in breaker_state.hpp). nullopt + *error on a read failure.
    std::optional<std::vector<breakers::instance_snapshot>> load_breaker_state(const clock& c,
                                                                               std::string* error) const;
    // Whether breaker state was ever saved here (empty or not), so that a state file left by
    // a build before the SQLite store is adopted only into a store that never had one.
    // nullopt + *error on a read failure.
    std::optional<bool> breaker_state_saved(std::string* error) const;

    // --- rule meters: the counts of caps, baselines and duplicates guards across a restart ---
    struct saved_meter {
        std::string rule_id;
        std::uint64_t fingerprint = 0;  // which definition of the rule the state belongs to
        std::string state;              // rules::engine::save_meters()
        // load_meters(): what to add to a steady-clock time of the process that saved the
        // row to get one of `c`'s: zero within the same boot (the steady clock counts from
        // boot), else through the wall clocks of the save and of now.
        std::chrono::milliseconds offset{0};
    };
    // Writes the rows of `changed` with the clocks of this moment (take the snapshot just
    // before) and deletes every row whose rule is not in `keep` (the rules that hold
    // something now, changed or not). Essential (taken past the queue's bounds, as breaker
    // state): a flood of holds fills the queue exactly when the counts matter; the caller
    // keeps at most one save in flight.
    void save_meters(std::vector<saved_meter> changed, std::vector<std::string> keep, done_fn done);
    // Every saved row (none when nothing was ever saved); nullopt + *error on a read failure
    // or a row whose clocks are not plausible readings.
    std::optional<std::vector<saved_meter>> load_meters(const clock& c, std::string* error) const;

    // --- Idempotency-Keys of requests sent live (proxy/forwarded_keys.hpp) ---
    struct forwarded_key {
        std::uint64_t digest = 0;
        std::optional<std::int64_t> sent_wall_ms;  // nullopt (save): remembered no more
    };
    // Writes these rows and deletes every row sent before older_than_ms (wall clock).
    // Essential, as save_meters.
    void save_forwarded_keys(std::vector<forwarded_key> changed, std::int64_t older_than_ms, done_fn done);
    // The `max` most recently sent rows sent at or after since_ms, most recent first;
    // nullopt + *error on a read failure.
    std::optional<std::vector<forwarded_key>> load_forwarded_keys(std::int64_t since_ms, std::size_t max,
                                                                  std::string* error) const;

    // --- audit log (hash-chained) and config versions ---
    // Appends an entry: id, prev_hash and hash are filled in by the writer, which chains each
    // entry to the one before (done: r.count = the new id).
    void append_audit(audit_entry entry, done_fn done);
    // Oldest first, after `after_id`. A read that fails sets *error (when given) and returns
    // what was read before it: never an empty log in disguise.
    std::vector<audit_entry> list_audit(std::int64_t after_id, std::size_t limit, std::string* error = nullptr) const;
    // Walks the chain: an edited, inserted or deleted entry breaks it.
    audit_verification verify_audit() const;
    // The last entry this process knows to be in the log (id, hash): the head read at open,
    // then each append once committed; {0, ""} for none. Kept outside the file, so the chain
    // rewritten or cut back (head included) by someone with write access to it is found by
    // verification while the process runs. Across restarts the anchor is what the process
    // logs and exports (breakerbox_audit_entries): a drop there shows a wipe.
    std::pair<std::int64_t, std::string> audit_anchor() const;
    // Empty, or what an append found wrong with the chain (it no longer held the anchor):
    // appending goes on, but every verification fails with this until a restart.
    std::string audit_tampering(std::int64_t* first_bad = nullptr) const;
    // The same check a page (1,000 entries) per step(), so that a caller on a busy thread (the
    // admin API on the control thread) can let other work run between pages: step() until it
    // returns true, then result(). Entries appended meanwhile are verified too.
    class audit_verifier {
    public:
        explicit audit_verifier(const database& db) : db_{db} {}
        bool step();
        const audit_verification& result() const { return v_; }

    private:
        const database& db_;
        audit_verification v_;
        std::string expected_prev_;
        std::int64_t expected_id_ = 1;
        std::int64_t went_on_at_ = 0;  // the entry a head ahead of the walk last sent us on for
        std::int64_t anchor_id_ = 0;    // audit_anchor() when the check began
        std::string anchor_hash_;
        bool done_ = false;
    };
    // Keeps the last 50 (done: r.count = the new version). `file_sha256`: the config was read
    // from the config file, whose SHA-256 this is; the file's mark (config_file()) becomes
    // this version in the same transaction.
    void save_config_version(std::string json, std::string actor, std::string reason, done_fn done,
                             std::string file_sha256 = {});
    // The config file read again, unchanged from `version` (no new version).
    void mark_config_file(std::string sha256, std::int64_t version, done_fn done);
    // The config file as last read: nullopt before the first mark, or when the store cannot
    // be read (then *error says why).
    std::optional<config_file_mark> config_file(std::string* error = nullptr) const;
    // For a start, before the store is opened (locked, migrated): the file's mark and the
    // latest version, read-only. nullopt when there is no store, no mark or no version yet,
    // or when it cannot be read (then *error says why).
    static std::optional<startup_config_view> peek_config(const std::string& path, std::string* error);
    // version 0: the latest. nullopt when there is none, or when the store cannot be read
    // (then *error says why).
    std::optional<std::pair<std::int64_t, std::string>> config_version(std::int64_t version,
                                                                       std::string* error = nullptr) const;
    // The JSON of every config version kept (the last 50), oldest first. nullopt + *error
    // when unreadable.
    std::optional<std::vector<std::string>> config_version_texts(std::string* error = nullptr) const;

    // --- operations ---
    // Blocks until every write queued before the call has completed. For shutdown and tests.
    void flush();
    writer_stats stats() const;
    // Records found in `releasing` at open and turned into outcome_unknown.
    std::uint64_t recovered_at_open() const;
    int schema_version() const;
    // Wall-clock ms since which Idempotency-Keys are the agent's on every route (migration
    // 13 applied): keys of requests sent live were remembered by route before, and such
    // digests may be in the store (and its journal) until this plus their memory.
    std::int64_t keys_by_agent_since_ms() const;
    const std::string& path() const;

    // --- test seams ---
    // The next `count` write transactions, after `after` more that succeed, fail with
    // `sqlite_code` (e.g. SQLITE_FULL) at `where`, as a full disk would make them.
    void inject_write_fault(int sqlite_code, int count, fault_point where = fault_point::commit, int after = 0);
    // The writer's connection keeps no value over `bytes` from its next batch on (SQLite's
    // SQLITE_LIMIT_LENGTH, 1e9 by default: a test cannot hold a body that large).
    void limit_value_bytes(int bytes);
    // While paused the writer takes nothing from the queue, so a test can line up a batch.
    void pause_writer(bool paused);
    // What a hold under this key that then failed (quarantine_full, say) leaves behind:
    // may_hold_key() says true, and a live send of the key looks it up.
    void expect_hold(std::string_view key, std::string_view agent);

    class impl;

private:
    explicit database(std::unique_ptr<impl> p);
    std::unique_ptr<impl> impl_;
};

}  // namespace bb::store
