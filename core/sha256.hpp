#pragma once
// SHA-256 of a short input (an address, an API key) on the request path.

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace bb {

using sha256_digest = std::array<std::uint8_t, 32>;

// OpenSSL's SHA-256 (its SHA-NI / AVX2 code where the CPU has them) through the low-level
// SHA256_Init/Update/Final rather than EVP: OpenSSL 3's EVP provider dispatch costs ~70 ns a
// call, more than hashing a 25-byte address (~60 ns; measured on the project's 2-vCPU EPYC
// with the same binary: EVP with a reused context 134 ns, low-level 62 ns, EVP_Digest 500 ns).
// The low-level calls are deprecated in OpenSSL 3.0 but present in every 3.x release; they
// are used here and nowhere else, so moving back to EVP is one function.
sha256_digest sha256(std::string_view data);

// The same digest as 64 lower-case hex digits (config key digests, the audit chain).
std::string sha256_hex(std::string_view data);

}  // namespace bb
