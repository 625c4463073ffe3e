#pragma once
// What breakerbox accepts when it is the TLS client (upstreams, alert sinks): TLS 1.2 with
// forward secrecy and AEAD only (Mozilla intermediate, with DHE: a client needs no
// parameters of its own), or TLS 1.3 (whose suites all are). OpenSSL's default list would
// still take RSA key exchange and CBC suites when a server, or a man in the middle,
// prefers them. One list, so the two clients cannot drift apart.

namespace bb {

inline constexpr const char* client_tls12_ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:"
    "DHE-RSA-CHACHA20-POLY1305";

}  // namespace bb
