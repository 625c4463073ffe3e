#include "core/file.hpp"
#include "core/sha256.hpp"

#include <cerrno>
#include <cstdint>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace bb {

namespace {

// Opens without blocking (a FIFO without a writer) and checks the kind before any read.
struct regular_fd {
    int fd = -1;
    std::uint64_t size = 0;
    file_error error = file_error::none;

    explicit regular_fd(const std::string& path, bool any_kind = false) {
        fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (any_kind ? 0 : O_NONBLOCK));
        if (fd < 0) {
            error = file_error::unreadable;
            return;
        }
        struct stat st{};
        if (::fstat(fd, &st) != 0) {
            error = file_error::unreadable;
        } else if (S_ISREG(st.st_mode)) {
            size = static_cast<std::uint64_t>(st.st_size);
        } else if (!any_kind || S_ISDIR(st.st_mode)) {
            error = file_error::not_regular;
        }
    }
    ~regular_fd() {
        if (fd >= 0) {
            ::close(fd);
        }
    }
    regular_fd(const regular_fd&) = delete;
    regular_fd& operator=(const regular_fd&) = delete;
};

}  // namespace

std::string describe(file_error e, std::size_t max_bytes) {
    switch (e) {
        case file_error::none: return "is readable";
        case file_error::unreadable: return "cannot be read";
        case file_error::not_regular: return "is not a regular file";
        case file_error::too_large: return "is larger than " + std::to_string(max_bytes) + " bytes";
    }
    return "cannot be read";
}

file_error check_regular_file(const std::string& path) {
    return regular_fd{path}.error;
}

std::optional<std::string> read_regular_file(const std::string& path, std::size_t max_bytes, file_error* error,
                                             bool any_kind) {
    auto fail = [&](file_error e) -> std::optional<std::string> {
        if (error) {
            *error = e;
        }
        return std::nullopt;
    };
    const regular_fd f{path, any_kind};
    if (f.error != file_error::none) {
        return fail(f.error);
    }
    if (f.size > max_bytes) {
        return fail(file_error::too_large);
    }
    std::string text;
    text.reserve(static_cast<std::size_t>(f.size));
    char chunk[64 * 1024];
    for (;;) {
        const auto n = ::read(f.fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return fail(file_error::unreadable);
        }
        if (n == 0) {
            break;
        }
        text.append(chunk, static_cast<std::size_t>(n));
        if (text.size() > max_bytes) {  // it grew while read
            return fail(file_error::too_large);
        }
    }
    if (error) {
        *error = file_error::none;
    }
    return text;
}

std::optional<std::string> file_sha256(const std::string& path) {
    file_error err{};
    const auto text = read_regular_file(path, std::size_t{16} << 20, &err);
    return text ? std::optional{sha256_hex(*text)} : std::nullopt;
}

}  // namespace bb
