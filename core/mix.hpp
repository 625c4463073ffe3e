#pragma once
// A 64-bit mixing function (MurmurHash3's finaliser, public domain): every input bit
// reaches every output bit. For hash combining and checks, never for security.

#include <cstdint>

namespace bb {

inline std::uint64_t fmix64(std::uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

}  // namespace bb
