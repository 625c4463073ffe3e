#include "store/key_journal.hpp"

#include "core/mix.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace bb::store {

namespace {

constexpr std::size_t entry_bytes = 40;

std::uint64_t check_of(std::uint64_t seq, std::uint64_t digest, std::int64_t wall_ms, std::int64_t undoes_ms) {
    return fmix64(seq ^ fmix64(digest ^ fmix64(static_cast<std::uint64_t>(wall_ms) ^
                                               fmix64(static_cast<std::uint64_t>(undoes_ms) ^
                                                      0x6b62622d6b657973ULL))));  // "bbb-keys"
}

std::string errno_text(int e) { return std::strerror(e); }

}  // namespace

std::unique_ptr<key_journal> key_journal::open(const std::string& base, std::vector<entry>* replay,
                                               std::string* error) {
    std::unique_ptr<key_journal> j{new key_journal};
    std::uint64_t max_seq[2] = {0, 0};
    for (int i = 0; i < 2; ++i) {
        j->paths_[i] = base + ".sent-keys." + std::to_string(i);
        const auto& path = j->paths_[i];
        j->fd_[i] = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (j->fd_[i] < 0) {
            *error = "cannot open " + path + ": " + errno_text(errno);
            return nullptr;
        }
        struct stat st {};
        if (::fstat(j->fd_[i], &st) != 0) {
            *error = "cannot read " + path + ": " + errno_text(errno);
            return nullptr;
        }
        if (!S_ISREG(st.st_mode)) {
            *error = path + " is not a regular file";
            return nullptr;
        }
        if (static_cast<std::uint64_t>(st.st_size) > max_file_bytes + entry_bytes) {
            *error = path + " holds " + std::to_string(st.st_size) + " bytes, more than a journal of sent keys can (" +
                     std::to_string(max_file_bytes) + "): not a journal; move it aside";
            return nullptr;
        }
        std::string bytes(static_cast<std::size_t>(st.st_size), '\0');
        std::size_t got = 0;
        while (got < bytes.size()) {
            const auto n = ::pread(j->fd_[i], bytes.data() + got, bytes.size() - got, static_cast<off_t>(got));
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n < 0) {
                *error = "cannot read " + path + ": " + errno_text(errno);
                return nullptr;
            }
            if (n == 0) {
                break;  // shorter than fstat said: read what is there
            }
            got += static_cast<std::size_t>(n);
        }
        std::uint64_t end = 0;  // just past the last whole, checked entry
        for (std::size_t at = 0; at + entry_bytes <= got; at += entry_bytes) {
            entry e;
            std::uint64_t check = 0;
            std::memcpy(&e.seq, bytes.data() + at, 8);
            std::memcpy(&e.digest, bytes.data() + at + 8, 8);
            std::memcpy(&e.wall_ms, bytes.data() + at + 16, 8);
            std::memcpy(&e.undoes_ms, bytes.data() + at + 24, 8);
            std::memcpy(&check, bytes.data() + at + 32, 8);
            if (e.seq == 0 || check != check_of(e.seq, e.digest, e.wall_ms, e.undoes_ms)) {
                ++j->skipped_;
                continue;
            }
            replay->push_back(e);
            max_seq[i] = std::max(max_seq[i], e.seq);
            end = at + entry_bytes;
        }
        if (end < static_cast<std::uint64_t>(st.st_size) && ::ftruncate(j->fd_[i], static_cast<off_t>(end)) != 0) {
            *error = "cannot cut the torn end off " + path + ": " + errno_text(errno);
            return nullptr;
        }
        j->size_[i] = end;
    }
    std::stable_sort(replay->begin(), replay->end(), [](const entry& a, const entry& b) { return a.seq < b.seq; });
    j->active_ = max_seq[1] > max_seq[0] ? 1 : 0;
    j->pending_ = j->size_[1 - j->active_] > 0;
    j->next_seq_ = std::max(max_seq[0], max_seq[1]) + 1;
    return j;
}

key_journal::~key_journal() {
    for (const int fd : fd_) {
        if (fd >= 0) {
            ::close(fd);
        }
    }
}

bool key_journal::append(std::uint64_t digest, std::int64_t wall_ms, std::int64_t undoes_ms, int* err) {
    if (size_[active_] + entry_bytes > max_file_bytes) {
        if (err != nullptr) {
            *err = EFBIG;
        }
        return false;
    }
    const std::uint64_t seq = next_seq_;
    const std::uint64_t check = check_of(seq, digest, wall_ms, undoes_ms);
    unsigned char buf[entry_bytes];
    std::memcpy(buf, &seq, 8);
    std::memcpy(buf + 8, &digest, 8);
    std::memcpy(buf + 16, &wall_ms, 8);
    std::memcpy(buf + 24, &undoes_ms, 8);
    std::memcpy(buf + 32, &check, 8);
    std::size_t put = 0;
    while (put < entry_bytes) {
        const auto n = ::pwrite(fd_[active_], buf + put, entry_bytes - put, static_cast<off_t>(size_[active_] + put));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            if (err != nullptr) {
                *err = n < 0 ? errno : ENOSPC;
            }
            return false;  // size_ unchanged: the next entry goes over what was written of this one
        }
        put += static_cast<std::size_t>(n);
    }
    size_[active_] += entry_bytes;
    ++next_seq_;
    return true;
}

int key_journal::retire() {
    if (!pending_) {
        active_ = 1 - active_;
        pending_ = true;
    }
    return 1 - active_;
}

bool key_journal::saved(int file) {
    if (!may_empty(file)) {
        return true;  // emptied already (a save of an older snapshot finishing late)
    }
    if (::ftruncate(fd_[file], 0) != 0) {
        return false;
    }
    emptied(file);
    return true;
}

void key_journal::emptied(int file) {
    if (may_empty(file)) {
        size_[file] = 0;
        pending_ = false;
    }
}

}  // namespace bb::store
