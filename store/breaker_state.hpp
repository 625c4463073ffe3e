#pragma once
// Durable breaker state: instances that are not closed+automatic (tripped, forced, shadow)
// with their last trip, written so that a breaker tripped before a crash is still tripped
// after the restart, before the first request is served (PRODUCT.md principle 2).
//
// Until the SQLite store lands this is one JSON file, replaced atomically: write a temp
// file, fsync it, rename it over the old one, fsync the directory.

#include "breakers/breaker.hpp"
#include "core/clock.hpp"

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace bb::store {

// Times are written as wall-clock milliseconds and mapped back onto the steady clock at load.
std::string breaker_state_to_json(const std::vector<breakers::instance_snapshot>& instances, const clock& c);
std::optional<std::vector<breakers::instance_snapshot>> breaker_state_from_json(std::string_view json, const clock& c,
                                                                                std::string* error);

// Returns "" on success, else what failed (with errno text).
std::string write_file_durably(const std::string& path, std::string_view data);

// Loads the state file; a missing file is an empty state. A corrupt file is an error: the
// caller must refuse to start rather than silently reopen tripped breakers.
std::optional<std::vector<breakers::instance_snapshot>> load_breaker_state(const std::string& path, const clock& c,
                                                                           std::string* error);

// One background thread writes the latest snapshot whenever asked; concurrent requests are
// coalesced into one write. Thread-safe. The data plane never waits on it synchronously:
// it passes a completion that runs on the writer thread after the fsync.
class breaker_state_writer {
public:
    using snapshot_fn = std::function<std::vector<breakers::instance_snapshot>()>;
    // Writes one snapshot durably; returns "" or what failed.
    using sink_fn = std::function<std::string(std::vector<breakers::instance_snapshot>)>;
    // Writes to the JSON file at `path`.
    breaker_state_writer(std::string path, snapshot_fn snapshot, const clock& c);
    // Writes through `sink` (the SQLite store); `path` only names it in messages.
    breaker_state_writer(std::string path, snapshot_fn snapshot, sink_fn sink, const clock& c);
    ~breaker_state_writer();
    breaker_state_writer(const breaker_state_writer&) = delete;
    breaker_state_writer& operator=(const breaker_state_writer&) = delete;

    // Asks for a write that includes every transition made before this call. `done(ok)`
    // runs on the writer thread once that write is durable (or has failed).
    void request(std::function<void(bool ok)> done = nullptr);
    // Blocks until everything requested so far is written. For shutdown and tests.
    bool flush();
    // Tests: while paused no write starts (one under way finishes); requests wait. flush()
    // ends the pause.
    void pause(bool on);

    std::uint64_t writes() const;
    std::string last_error() const;
    // Whether the last write failed (the state on disk is behind the state in memory).
    bool failing() const;
    // Called on the writer thread after each failed write, with what failed (set it before
    // the first request: a failed save must not go unseen).
    void on_failure(std::function<void(const std::string&)> f);
    // Called on the writer thread after a write that succeeded where the one before failed.
    void on_recovery(std::function<void()> f);
    const std::string& path() const { return path_; }

private:
    void run();

    std::string path_;
    snapshot_fn snapshot_;
    sink_fn sink_;
    std::function<void(const std::string&)> on_failure_;  // under mu_
    std::function<void()> on_recovery_;                    // under mu_
    const clock& clock_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<std::function<void(bool)>> waiting_;
    std::uint64_t requested_ = 0;
    std::uint64_t completed_ = 0;
    std::uint64_t writes_ = 0;
    bool last_ok_ = true;
    std::string last_error_;
    bool paused_ = false;
    bool stop_ = false;
    std::thread thread_;
};

}  // namespace bb::store
