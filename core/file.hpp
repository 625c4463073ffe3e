#pragma once
// Files named in config (certificates, keys, CA bundles, suppression lists) are read on the
// control thread: a path that names a FIFO would block it (open waits for a writer), and
// /dev/zero or /dev/urandom would grow memory until the process dies. Only regular files
// are read, and only up to a bound.

#include <cstddef>
#include <optional>
#include <string>

namespace bb {

enum class file_error { none, unreadable, not_regular, too_large };

// A phrase for an error that follows the quoted path: `"x.pem" is not a regular file`.
// too_large names `max_bytes`.
std::string describe(file_error e, std::size_t max_bytes);

// Whether `path` opens for reading and is a regular file (nothing is read).
file_error check_regular_file(const std::string& path);

// The contents of `path` when it is a regular file of at most `max_bytes`, checked before
// reading and again while reading (a file that grows is refused, not truncated).
// `any_kind`: a FIFO or device too (still bounded), for a file read once at the start, where
// `--config <(render ...)` or /dev/stdin is the operator's intent, not a mistake.
std::optional<std::string> read_regular_file(const std::string& path, std::size_t max_bytes, file_error* error,
                                             bool any_kind = false);

// The SHA-256 (hex) of a certificate, key or CA file (at most 16 MiB) as it is now, to tell
// whether a reload must read it again; nullopt when it cannot be read (it is then read, and
// refused with the reason, where it is used).
std::optional<std::string> file_sha256(const std::string& path);

}  // namespace bb
