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

}  // namespace bb
