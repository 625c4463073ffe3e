// See sha256.hpp for why the low-level interface.
#define OPENSSL_SUPPRESS_DEPRECATED
#include "core/sha256.hpp"

#include <openssl/sha.h>

namespace bb {

sha256_digest sha256(std::string_view data) {
    sha256_digest out;
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, data.data(), data.size());
    SHA256_Final(out.data(), &ctx);
    return out;
}

std::string sha256_hex(std::string_view data) {
    static constexpr char hexd[] = "0123456789abcdef";
    const sha256_digest digest = sha256(data);
    std::string out;
    out.reserve(digest.size() * 2);
    for (const std::uint8_t b : digest) {
        out += hexd[b >> 4];
        out += hexd[b & 15];
    }
    return out;
}

}  // namespace bb
