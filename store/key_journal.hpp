#pragma once
// The journal of the keys of requests sent live (proxy/forwarded_keys.hpp) between two saves
// of them to the store. The store gets what changed every 50 ms; a process that dies in
// between (a crash, SIGKILL, the OOM killer) used to forget the keys of its last 50 ms, and
// those are the requests the crash cut off before their answer: the ones their clients
// retry. Each change is written here, with one pwrite(2), before its request goes out; the
// kernel keeps it when the process dies (an OS crash or power cut can still lose the last
// few seconds, as it can the store's own last commits).
//
// Two files, `<store path>.sent-keys.0` and `.1`. Writes go to one; before a save, writes
// switch to the other (when it is empty), and once the save is in the store the first is
// emptied. So what is left in the files is always the latest part of the history, which is
// replayed over the store's rows at start. A file left non-empty by a failed save is not
// switched back to until a later save empties it.
//
// Each entry is 40 bytes in host byte order (the files never leave this host): a sequence
// number, the key's digest, when it was sent (wall-clock ms), the send it undoes (0 for a
// send; for a send that went nowhere, that send's time, with the time before it or
// `forgotten` as the first), and a check over the four, so a torn last entry is told from a
// whole one.
// Not thread-safe: the caller serialises every call (forwarded_keys does, under its lock).

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace bb::store {

class key_journal {
public:
    struct entry {
        std::uint64_t seq = 0;
        std::uint64_t digest = 0;
        std::int64_t wall_ms = 0;  // forgotten: remembered no more
        std::int64_t undoes_ms = 0;  // not 0: this entry takes back the send made at this time
    };
    static constexpr std::int64_t forgotten = std::numeric_limits<std::int64_t>::min();
    // A file holds at most this many bytes (about 2 million entries: ~40 minutes of 1,000
    // keyed sends a second while every save fails); past it, appends fail.
    static constexpr std::size_t max_file_bytes = std::size_t{64} << 20;

    // Opens (or creates, mode 0600) `base`.0 and `base`.1 and reads what they hold into
    // `replay`, oldest first (a torn last entry is dropped and cut off the file). Null with
    // `error` set when a file cannot be opened, read or is not a journal.
    static std::unique_ptr<key_journal> open(const std::string& base, std::vector<entry>* replay,
                                             std::string* error);
    ~key_journal();
    key_journal(const key_journal&) = delete;
    key_journal& operator=(const key_journal&) = delete;

    // Writes one change. False when it was not written whole (errno in `*err`); a partial
    // entry is overwritten by the next.
    bool append(std::uint64_t digest, std::int64_t wall_ms, std::int64_t undoes_ms = 0, int* err = nullptr);
    // Before a save whose snapshot covers every entry appended so far: the file to empty
    // once that save is in the store (saved()). Writes move to the other file when it is empty.
    int retire();
    // The save of the snapshot taken at retire() is in the store: that file is emptied.
    // False when it could not be (it stays pending, and is emptied after a later save).
    bool saved(int file);
    // saved() in two steps, so that the caller can empty the file outside its lock: whether
    // `file` is the retired one still holding entries (nothing writes to it until emptied()),
    // its descriptor, and the bookkeeping once it was truncated.
    bool may_empty(int file) const { return file == 1 - active_ && pending_; }
    int fd(int file) const { return fd_[file]; }
    void emptied(int file);

    // Whole entries that failed their check at open (a crash of the OS, not of breakerbox,
    // can leave zeros or old bytes inside a file): skipped, not replayed.
    std::size_t skipped_at_open() const { return skipped_; }
    std::uint64_t size_bytes(int file) const { return size_[file]; }
    const std::string& path(int file) const { return paths_[file]; }

private:
    key_journal() = default;

    std::string paths_[2];
    int fd_[2] = {-1, -1};
    std::uint64_t size_[2] = {0, 0};
    int active_ = 0;
    bool pending_ = false;  // the other file holds entries no save has covered yet
    std::uint64_t next_seq_ = 1;
    std::size_t skipped_ = 0;
};

}  // namespace bb::store
