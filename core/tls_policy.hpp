#pragma once
// What breakerbox accepts when it is the TLS client (upstreams, alert sinks): TLS 1.2 with
// forward secrecy and AEAD only (Mozilla intermediate, with DHE: a client needs no
// parameters of its own), or TLS 1.3 (whose suites all are). OpenSSL's default list would
// still take RSA key exchange and CBC suites when a server, or a man in the middle,
// prefers them. One list, so the two clients cannot drift apart.

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <string>

namespace bb {

inline constexpr const char* client_tls12_ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:"
    "DHE-RSA-CHACHA20-POLY1305";

// The name the server's certificate must carry, checked by OpenSSL during the handshake
// (a mismatch fails it with X509_V_ERR_HOSTNAME_MISMATCH or _IP_ADDRESS_MISMATCH), as
// RFC 6125 and the CA/Browser Forum have it: a DNS name in a subjectAltName, never the
// subject's CN (asio's host_name_verification falls back to it when a certificate has no
// DNS name), and a wildcard only as a whole left-most label (`*.example.com`, not
// `api*.example.com`); an address literal against the iPAddress names. False when OpenSSL
// cannot take the name (then nothing may be sent).
inline bool expect_peer_name(SSL* ssl, const std::string& host) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    const std::string address = host.substr(0, host.find('%'));  // an IPv6 zone (fe80::1%eth0) is local
    if (X509_VERIFY_PARAM_set1_ip_asc(param, address.c_str()) == 1) {
        return true;
    }
    if (address.size() != host.size() || host.find(':') != std::string::npos) {
        return false;  // an address OpenSSL cannot take: never matched as a DNS name
    }
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS | X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
    return X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size()) == 1;
}

}  // namespace bb
