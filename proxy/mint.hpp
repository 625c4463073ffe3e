#pragma once
// Leaf certificates for forward-proxy TLS interception. A local CA (files named by the config)
// signs one certificate per destination host on first use; leaves are cached (LRU, bounded)
// and renewed before they expire. OpenSSL only, no Asio: the session applies a leaf to its
// SSL* once it knows the host (CONNECT target), so one SSL_CTX serves every host.

#include <openssl/types.h>

#include <chrono>
#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

using X509_EXTENSION = struct X509_extension_st;  // <openssl/x509.h>, kept out of the header

namespace bb {
class clock;
}

namespace bb::proxy {

// Thread-safe: one minter is shared by every worker thread (get() and cached() lock a mutex;
// the signature itself is made outside it).
class cert_minter {
public:
    // Everything a server SSL* needs for one host. Copies share the OpenSSL objects, which
    // stay alive as long as any copy does (also after the minter is gone).
    struct leaf {
        std::shared_ptr<X509> cert;
        std::shared_ptr<EVP_PKEY> key;  // the same P-256 key for every leaf of one minter
        std::shared_ptr<X509> ca;       // sent as the chain
    };

    static constexpr std::chrono::milliseconds default_lifetime = std::chrono::hours{24 * 7};

    // Loads the CA certificate and key (PEM; encrypted keys are refused, never prompted for).
    // Throws std::runtime_error naming the file and OpenSSL's reason when a file is unreadable,
    // the certificate is not a CA (basicConstraints CA:TRUE, keyCertSign when keyUsage is
    // present), it has expired, or the key does not match it; std::invalid_argument for a
    // lifetime that is not positive. `clock`: wall time for validity (null: the system clock).
    cert_minter(const std::string& ca_cert_file, const std::string& ca_key_file, std::size_t cache_max = 1024,
                std::chrono::milliseconds lifetime = default_lifetime, const bb::clock* clock = nullptr);
    ~cert_minter();
    cert_minter(const cert_minter&) = delete;
    cert_minter& operator=(const cert_minter&) = delete;

    // The leaf for `host`: a DNS name (letters, digits, '-', '.'; at most 253 characters,
    // labels of 1..63) or an IPv4/IPv6 literal (without brackets). Case does not matter.
    // Subject CN=host (when it fits in 64 characters), one SAN (DNS or IP), CA:FALSE,
    // keyUsage digitalSignature, extendedKeyUsage serverAuth, key identifiers, a random
    // 128-bit serial, valid from now-1h for `lifetime` but never past the CA's notAfter,
    // signed with SHA-256 (an Ed25519/Ed448 CA key: its own scheme). The same host gets the
    // same certificate until less than a day (or half the lifetime, if shorter) is left.
    // Throws std::invalid_argument for a bad host, std::runtime_error when OpenSSL fails or
    // the CA has expired since it was loaded.
    leaf get(std::string_view host);

    // Sets the leaf's certificate, key and chain on one server connection (before its
    // handshake); the SSL_CTX it came from is left alone. False with `error` set on failure.
    static bool apply(SSL* ssl, const leaf& l, std::string* error);

    // Certificates held in the cache (at most cache_max).
    std::size_t cached() const;

    // The same CA certificate and key, cache bound and lifetime: a reload that changed none
    // of them keeps the running minter, its leaves and their key (a new one would sign every
    // host again, on the worker that meets it first).
    bool same_as(const cert_minter& other) const;

private:
    using time_point = std::chrono::sys_seconds;  // certificates count whole seconds
    struct entry {
        std::string host;
        leaf l;
        time_point not_before;  // as written in the certificate (backdated)
        time_point not_after;
    };

    time_point wall_now() const;
    entry mint(const std::string& host, bool ip, time_point now) const;
    bool fresh(const entry& e, time_point now) const;
    const leaf* find_fresh(const std::string& host, time_point now);  // needs mutex_
    void store(entry e);                                              // needs mutex_

    std::shared_ptr<X509> ca_;
    std::shared_ptr<EVP_PKEY> ca_key_;
    std::shared_ptr<EVP_PKEY> leaf_key_;
    // basicConstraints, keyUsage, extendedKeyUsage and the key identifiers: the same in
    // every leaf, so encoded once.
    std::vector<std::shared_ptr<X509_EXTENSION>> fixed_extensions_;
    time_point ca_not_after_;
    std::chrono::milliseconds lifetime_;
    std::chrono::milliseconds renew_margin_;
    const bb::clock* clock_;
    std::size_t cache_max_;

    mutable std::mutex mutex_;
    std::list<entry> lru_;  // most recently used first
    std::unordered_map<std::string, std::list<entry>::iterator> index_;
};

}  // namespace bb::proxy
