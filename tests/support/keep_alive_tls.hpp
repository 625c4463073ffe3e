#pragma once
// One TLS connection to 127.0.0.1:port with a client certificate, kept open across requests:
// what a test needs around a reload in the middle of a connection (curl cannot pause).
#include "tests/support/fake_upstream.hpp"

#include <gtest/gtest.h>

#include <openssl/pem.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <initializer_list>
#include <string>

#include "core/clock.hpp"
#include "proxy/tls.hpp"

namespace bb::test {

// The notAfter of the first certificate in a PEM file.
inline std::chrono::sys_seconds not_after_of(const std::string& pem) {
    FILE* f = std::fopen(pem.c_str(), "r");
    X509* c = f != nullptr ? PEM_read_X509(f, nullptr, nullptr, nullptr) : nullptr;
    if (f != nullptr) {
        std::fclose(f);
    }
    const auto t = c != nullptr ? bb::proxy::asn1_seconds(X509_get0_notAfter(c)) : std::nullopt;
    X509_free(c);
    EXPECT_TRUE(t) << "no certificate time in " << pem;
    return t.value_or(std::chrono::sys_seconds{});
}

// Steps a manual clock's wall time to `seconds_after` past the earliest notAfter of a chain
// (the leaf and its CA: the CA made first may end a second before the leaf).
inline void step_wall_past(bb::manual_clock& clock, std::initializer_list<std::string> chain,
                           std::chrono::seconds seconds_after = std::chrono::seconds{1}) {
    auto earliest = std::chrono::sys_seconds::max();
    for (const auto& pem : chain) {
        earliest = std::min(earliest, not_after_of(pem));
    }
    const auto now = std::chrono::floor<std::chrono::seconds>(clock.wall_now());
    clock.step_wall(earliest + seconds_after - now);
}

class keep_alive_tls {
public:
    keep_alive_tls(std::uint16_t port, const std::string& ca_file, const std::string& cert_file,
                   const std::string& key_file)
        : tcp_{port} {
        ctx_ = SSL_CTX_new(TLS_client_method());
        SSL_CTX_load_verify_locations(ctx_, ca_file.c_str(), nullptr);
        SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
        SSL_CTX_use_certificate_chain_file(ctx_, cert_file.c_str());
        SSL_CTX_use_PrivateKey_file(ctx_, key_file.c_str(), SSL_FILETYPE_PEM);
        ssl_ = SSL_new(ctx_);
        SSL_set_tlsext_host_name(ssl_, "localhost");
        SSL_set_fd(ssl_, tcp_.fd());
        EXPECT_EQ(SSL_connect(ssl_), 1);
    }
    ~keep_alive_tls() {
        SSL_free(ssl_);
        SSL_CTX_free(ctx_);
    }
    keep_alive_tls(const keep_alive_tls&) = delete;
    keep_alive_tls& operator=(const keep_alive_tls&) = delete;

    // One GET; the whole response (head and Content-Length body), "" when the connection ended.
    std::string get(const std::string& path) {
        const std::string req = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n";
        if (SSL_write(ssl_, req.data(), static_cast<int>(req.size())) != static_cast<int>(req.size())) {
            return "";
        }
        std::string got;
        char chunk[4096];
        for (;;) {
            if (const auto end = got.find("\r\n\r\n"); end != std::string::npos) {
                std::size_t length = 0;
                for (const char* name : {"content-length: ", "Content-Length: "}) {
                    const auto cl = got.find(name);
                    if (cl != std::string::npos && cl < end) {
                        length = std::stoul(got.substr(cl + 16));
                    }
                }
                if (got.size() >= end + 4 + length) {
                    return got;
                }
            }
            const int n = SSL_read(ssl_, chunk, static_cast<int>(sizeof chunk));
            if (n <= 0) {
                return got;
            }
            got.append(chunk, static_cast<std::size_t>(n));
        }
    }
    // True when the server ended the connection (a read finds its end, not data).
    bool closed() {
        char c;
        return SSL_read(ssl_, &c, 1) <= 0;
    }

private:
    raw_client tcp_;
    SSL_CTX* ctx_ = nullptr;
    SSL* ssl_ = nullptr;
};

}  // namespace bb::test
