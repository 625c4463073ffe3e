#include "proxy/mint.hpp"
#include "proxy/tls.hpp"

#include "core/clock.hpp"

#include <gtest/gtest.h>

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>

#include <array>
#include <ctime>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace bb::proxy;
using namespace std::chrono_literals;

namespace {

std::string cert(const std::string& name) {
    return std::string{BB_TEST_CERTS_DIR} + "/" + name;
}

std::shared_ptr<X509> load_pem(const std::string& file) {
    std::unique_ptr<BIO, decltype(&BIO_free)> in{BIO_new_file(file.c_str(), "r"), BIO_free};
    if (!in) {
        throw std::runtime_error("cannot open " + file);
    }
    return {PEM_read_bio_X509(in.get(), nullptr, nullptr, nullptr), X509_free};
}

enum class name_kind { dns, ip };

// X509_verify_cert() of `leaf` against ca.pem alone, for a TLS server called `name`.
int verify(X509* leaf, const std::string& name, name_kind kind = name_kind::dns) {
    std::unique_ptr<X509_STORE, decltype(&X509_STORE_free)> store{X509_STORE_new(), X509_STORE_free};
    std::unique_ptr<X509_STORE_CTX, decltype(&X509_STORE_CTX_free)> ctx{X509_STORE_CTX_new(), X509_STORE_CTX_free};
    const auto ca = load_pem(cert("ca.pem"));
    if (X509_STORE_add_cert(store.get(), ca.get()) != 1 || X509_STORE_CTX_init(ctx.get(), store.get(), leaf, nullptr) != 1 ||
        X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_SERVER) != 1) {
        return -1;
    }
    X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
    const int set = kind == name_kind::dns ? X509_VERIFY_PARAM_set1_host(param, name.c_str(), 0)
                                           : X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str());
    if (set != 1) {
        return -1;
    }
    X509_verify_cert(ctx.get());
    return X509_STORE_CTX_get_error(ctx.get());
}

// "DNS:name" / "IP:address" for each subjectAltName entry.
std::vector<std::string> sans(X509* x) {
    std::vector<std::string> out;
    auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(x, NID_subject_alt_name, nullptr, nullptr));
    for (int i = 0; names != nullptr && i < sk_GENERAL_NAME_num(names); ++i) {
        const GENERAL_NAME* n = sk_GENERAL_NAME_value(names, i);
        if (n->type == GEN_DNS) {
            const auto* s = n->d.dNSName;
            out.push_back("DNS:" + std::string{reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                                               static_cast<std::size_t>(ASN1_STRING_length(s))});
        } else if (n->type == GEN_IPADD) {
            const int len = ASN1_STRING_length(n->d.iPAddress);
            char text[INET6_ADDRSTRLEN] = {};
            inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(n->d.iPAddress), text, sizeof text);
            out.push_back(std::string{"IP:"} + text);
        } else {
            out.push_back("other");
        }
    }
    GENERAL_NAMES_free(names);
    return out;
}

std::string common_name(X509* x) {
    char cn[256] = {};
    const int n = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn);
    return n < 0 ? std::string{} : std::string{cn, static_cast<std::size_t>(n)};
}

std::time_t seconds_since_epoch(std::chrono::system_clock::time_point t) {
    return static_cast<std::time_t>(std::chrono::floor<std::chrono::seconds>(t).time_since_epoch().count());
}

std::string construction_error(const std::string& ca_file, const std::string& key_file) {
    try {
        cert_minter m{ca_file, key_file};
    } catch (const std::runtime_error& e) {
        return e.what();
    }
    return "(no error)";
}

// ---- an in-memory TLS handshake: two SSL objects joined by a BIO pair, no sockets ----

using ctx_ptr = std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)>;
using ssl_ptr = std::unique_ptr<SSL, decltype(&SSL_free)>;

ctx_ptr client_ctx(int version) {
    ctx_ptr ctx{SSL_CTX_new(TLS_client_method()), SSL_CTX_free};
    SSL_CTX_set_min_proto_version(ctx.get(), version);
    SSL_CTX_set_max_proto_version(ctx.get(), version);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    EXPECT_EQ(SSL_CTX_load_verify_locations(ctx.get(), cert("ca.pem").c_str(), nullptr), 1);
    return ctx;
}

// Drives both ends in turn until both finish, or one fails, or neither can move.
bool handshake(SSL* client, SSL* server) {
    bool client_done = false;
    bool server_done = false;
    const auto step = [](SSL* ssl, bool& done) {
        if (done) {
            return true;
        }
        const int r = SSL_do_handshake(ssl);
        if (r == 1) {
            done = true;
            return true;
        }
        const int e = SSL_get_error(ssl, r);
        return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE;
    };
    for (int round = 0; round < 20 && !(client_done && server_done); ++round) {
        if (!step(client, client_done) || !step(server, server_done)) {
            return false;
        }
    }
    return client_done && server_done;
}

struct handshake_result {
    bool completed = false;
    long verify_result = -1;
    std::string peer_cn;
    int peer_chain_length = 0;
};

// The client asks for `client_name` (SNI and name check); the server answers with `l`.
handshake_result run_handshake(SSL_CTX* server_ctx, const cert_minter::leaf& l, const std::string& client_name,
                               int version) {
    handshake_result out;
    auto cctx = client_ctx(version);
    ssl_ptr client{SSL_new(cctx.get()), SSL_free};
    ssl_ptr server{SSL_new(server_ctx), SSL_free};
    BIO* client_bio = nullptr;
    BIO* server_bio = nullptr;
    if (!client || !server || BIO_new_bio_pair(&client_bio, 0, &server_bio, 0) != 1) {
        return out;
    }
    SSL_set_bio(client.get(), client_bio, client_bio);
    SSL_set_bio(server.get(), server_bio, server_bio);
    SSL_set_connect_state(client.get());
    SSL_set_accept_state(server.get());
    SSL_set_tlsext_host_name(client.get(), client_name.c_str());
    SSL_set1_host(client.get(), client_name.c_str());
    std::string error;
    EXPECT_TRUE(cert_minter::apply(server.get(), l, &error)) << error;
    out.completed = handshake(client.get(), server.get());
    out.verify_result = SSL_get_verify_result(client.get());
    if (X509* peer = SSL_get0_peer_certificate(client.get())) {
        out.peer_cn = common_name(peer);
    }
    if (STACK_OF(X509)* chain = SSL_get_peer_cert_chain(client.get())) {
        out.peer_chain_length = sk_X509_num(chain);
    }
    return out;
}

}  // namespace

TEST(cert_minter, leaf_verifies_against_the_ca_for_its_name_only) {
    cert_minter m{cert("ca.pem"), cert("ca.key")};
    const auto l = m.get("api.example.com");
    ASSERT_TRUE(l.cert && l.key && l.ca);
    EXPECT_EQ(verify(l.cert.get(), "api.example.com"), X509_V_OK);
    EXPECT_EQ(verify(l.cert.get(), "other.example.com"), X509_V_ERR_HOSTNAME_MISMATCH);
    EXPECT_EQ(verify(l.cert.get(), "example.com"), X509_V_ERR_HOSTNAME_MISMATCH);
    EXPECT_EQ(sans(l.cert.get()), std::vector<std::string>{"DNS:api.example.com"});
    EXPECT_EQ(common_name(l.cert.get()), "api.example.com");
}

TEST(cert_minter, leaf_has_the_promised_fields) {
    cert_minter m{cert("ca.pem"), cert("ca.key")};
    const auto before = std::chrono::system_clock::now();
    const auto l = m.get("api.example.com");
    X509* x = l.cert.get();
    EXPECT_EQ(X509_get_version(x), X509_VERSION_3);
    EXPECT_EQ(X509_get_extension_flags(x) & EXFLAG_CA, 0u);
    EXPECT_NE(X509_get_extension_flags(x) & EXFLAG_BCONS, 0u) << "basicConstraints present (CA:FALSE)";
    EXPECT_EQ(X509_get_key_usage(x), static_cast<std::uint32_t>(KU_DIGITAL_SIGNATURE));
    EXPECT_EQ(X509_get_extended_key_usage(x), static_cast<std::uint32_t>(XKU_SSL_SERVER));
    EXPECT_EQ(X509_get_signature_nid(x), NID_ecdsa_with_SHA256);
    EXPECT_EQ(X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(l.ca.get())), 0);
    EXPECT_EQ(EVP_PKEY_get_bits(l.key.get()), 256);
    EXPECT_EQ(X509_check_private_key(x, l.key.get()), 1);

    // Key identifiers: the leaf's own, and the CA's as authority.
    const ASN1_OCTET_STRING* ski = X509_get0_subject_key_id(x);
    const ASN1_OCTET_STRING* akid = X509_get0_authority_key_id(x);
    ASSERT_NE(ski, nullptr);
    ASSERT_NE(akid, nullptr);
    ASSERT_NE(X509_get0_subject_key_id(l.ca.get()), nullptr);
    EXPECT_EQ(ASN1_OCTET_STRING_cmp(akid, X509_get0_subject_key_id(l.ca.get())), 0);

    // Serial: random, so two leaves differ, and 128 bits at most.
    const auto other = m.get("other.example.com");
    EXPECT_NE(ASN1_INTEGER_cmp(X509_get0_serialNumber(x), X509_get0_serialNumber(other.cert.get())), 0);
    std::unique_ptr<BIGNUM, decltype(&BN_free)> serial{ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), nullptr), BN_free};
    EXPECT_LE(BN_num_bits(serial.get()), 128);
    EXPECT_GT(BN_num_bits(serial.get()), 64) << "fails once in 2^64 runs";

    // Valid from an hour ago for 7 days (the bounds allow for the test taking a few seconds).
    const auto after = std::chrono::system_clock::now();
    EXPECT_GE(ASN1_TIME_cmp_time_t(X509_get0_notBefore(x), seconds_since_epoch(before - 1h) - 1), 0);
    EXPECT_LE(ASN1_TIME_cmp_time_t(X509_get0_notBefore(x), seconds_since_epoch(after - 1h)), 0);
    EXPECT_GE(ASN1_TIME_cmp_time_t(X509_get0_notAfter(x), seconds_since_epoch(before + 24h * 7) - 1), 0);
    EXPECT_LE(ASN1_TIME_cmp_time_t(X509_get0_notAfter(x), seconds_since_epoch(after + 24h * 7)), 0);
}

TEST(cert_minter, ip_literals_get_an_ip_san_in_canonical_form) {
    cert_minter m{cert("ca.pem"), cert("ca.key")};
    const auto v4 = m.get("127.0.0.1");
    EXPECT_EQ(sans(v4.cert.get()), std::vector<std::string>{"IP:127.0.0.1"});
    EXPECT_EQ(verify(v4.cert.get(), "127.0.0.1", name_kind::ip), X509_V_OK);
    EXPECT_EQ(verify(v4.cert.get(), "127.0.0.2", name_kind::ip), X509_V_ERR_IP_ADDRESS_MISMATCH);

    const auto v6 = m.get("::1");
    EXPECT_EQ(sans(v6.cert.get()), std::vector<std::string>{"IP:::1"});
    EXPECT_EQ(verify(v6.cert.get(), "::1", name_kind::ip), X509_V_OK);
    EXPECT_EQ(m.get("0:0:0:0:0:0:0:1").cert, v6.cert) << "one address, one certificate";

    const auto mapped = m.get("2001:DB8::A");
    EXPECT_EQ(sans(mapped.cert.get()), std::vector<std::string>{"IP:2001:db8::a"});
    EXPECT_EQ(verify(mapped.cert.get(), "2001:db8::a", name_kind::ip), X509_V_OK);
}

TEST(cert_minter, the_same_host_is_cached_and_different_hosts_differ) {
    cert_minter m{cert("ca.pem"), cert("ca.key")};
    const auto a = m.get("a.example.com");
    const auto b = m.get("b.example.com");
    EXPECT_EQ(m.get("a.example.com").cert, a.cert);
    EXPECT_EQ(m.get("A.Example.COM").cert, a.cert) << "host names are case-insensitive";
    EXPECT_NE(a.cert, b.cert);
    EXPECT_EQ(a.key, b.key) << "one key for every leaf";
    EXPECT_EQ(a.ca, b.ca);
    EXPECT_EQ(m.cached(), 2u);
}

TEST(cert_minter, the_cache_is_bounded_and_evicts_the_least_recently_used) {
    constexpr std::size_t cache_max = 4;
    cert_minter m{cert("ca.pem"), cert("ca.key"), cache_max};
    const auto first = m.get("h0.example.com");
    for (std::size_t i = 1; i < cache_max + 5; ++i) {
        m.get("h" + std::to_string(i) + ".example.com");
        EXPECT_LE(m.cached(), cache_max);
    }
    EXPECT_EQ(m.cached(), cache_max);
    EXPECT_NE(m.get("h0.example.com").cert, first.cert) << "evicted, so minted again";

    // Using an entry makes it the most recent: "a" outlives "b" when "e" arrives.
    cert_minter lru{cert("ca.pem"), cert("ca.key"), cache_max};
    const auto a = lru.get("a.test");
    const auto b = lru.get("b.test");
    lru.get("c.test");
    lru.get("d.test");
    EXPECT_EQ(lru.get("a.test").cert, a.cert);
    lru.get("e.test");
    EXPECT_EQ(lru.get("a.test").cert, a.cert);
    EXPECT_NE(lru.get("b.test").cert, b.cert);

    cert_minter none{cert("ca.pem"), cert("ca.key"), 0};
    EXPECT_EQ(verify(none.get("x.test").cert.get(), "x.test"), X509_V_OK);
    EXPECT_EQ(none.cached(), 0u);
}

TEST(cert_minter, invalid_hosts_are_refused) {
    cert_minter m{cert("ca.pem"), cert("ca.key")};
    const std::string long_label(64, 'a');
    const std::string too_long = std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." +
                                 std::string(63, 'd');  // 255 characters
    for (const std::string& host : {std::string{}, std::string{"."}, std::string{"a..b"}, std::string{".a"},
                                   std::string{"a."}, std::string{"a b"}, std::string{"a_b.example"},
                                   std::string{"*.example.com"}, std::string{"[::1]"}, std::string{"host:443"},
                                   std::string{"exa\0mple.com", 12}, std::string{"127.0.0.1\0.evil", 15},
                                   std::string{"1.2.3"}, std::string{"1.2.3.4.5"}, std::string{"::1::2"},
                                   std::string{"fe80::1%eth0"}, std::string{"caf\xc3\xa9.example"},
                                   long_label + ".example", too_long}) {
        EXPECT_THROW(m.get(host), std::invalid_argument) << "host '" << host << "'";
    }
    EXPECT_EQ(m.cached(), 0u);
}

TEST(cert_minter, names_at_the_limits_are_minted) {
    cert_minter m{cert("ca.pem"), cert("ca.key")};
    const std::string longest = std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." +
                                std::string(61, 'd');  // 253 characters
    ASSERT_EQ(longest.size(), 253u);
    const auto l = m.get(longest);
    EXPECT_EQ(verify(l.cert.get(), longest), X509_V_OK);
    EXPECT_EQ(sans(l.cert.get()), std::vector<std::string>{"DNS:" + longest});
    EXPECT_EQ(common_name(l.cert.get()), "") << "commonName holds 64 characters at most";
    const int san_at = X509_get_ext_by_NID(l.cert.get(), NID_subject_alt_name, -1);
    ASSERT_GE(san_at, 0);
    EXPECT_EQ(X509_EXTENSION_get_critical(X509_get_ext(l.cert.get(), san_at)), 1) << "critical with an empty subject";

    for (const std::string host : {"localhost", "x", "xn--caf-dma.example", "3com.example", "a-b.c-d.example"}) {
        EXPECT_EQ(verify(m.get(host).cert.get(), host), X509_V_OK) << host;
    }
}

TEST(cert_minter, bad_ca_files_are_refused_with_a_clear_reason) {
    const auto missing = construction_error(cert("no-such-ca.pem"), cert("ca.key"));
    EXPECT_NE(missing.find("no-such-ca.pem"), std::string::npos) << missing;
    EXPECT_NE(missing.find("CA certificate"), std::string::npos) << missing;

    const auto missing_key = construction_error(cert("ca.pem"), cert("no-such-ca.key"));
    EXPECT_NE(missing_key.find("CA key"), std::string::npos) << missing_key;
    EXPECT_NE(missing_key.find("no-such-ca.key"), std::string::npos) << missing_key;

    const auto not_a_key = construction_error(cert("ca.pem"), cert("ca.pem"));
    EXPECT_NE(not_a_key.find("CA key"), std::string::npos) << not_a_key;

    const auto not_a_ca = construction_error(cert("server.pem"), cert("server.key"));
    EXPECT_NE(not_a_ca.find("not a CA"), std::string::npos) << not_a_ca;
    EXPECT_NE(not_a_ca.find("server.pem"), std::string::npos) << not_a_ca;

    const auto mismatch = construction_error(cert("ca.pem"), cert("server.key"));
    EXPECT_NE(mismatch.find("does not match"), std::string::npos) << mismatch;

    EXPECT_THROW((cert_minter{cert("ca.pem"), cert("ca.key"), 16, std::chrono::milliseconds{0}}), std::invalid_argument);
}

TEST(cert_minter, leaves_are_renewed_a_day_before_they_expire) {
    bb::manual_clock clock;
    cert_minter m{cert("ca.pem"), cert("ca.key"), 16, cert_minter::default_lifetime, &clock};
    const auto first = m.get("renew.example");
    EXPECT_EQ(ASN1_TIME_cmp_time_t(X509_get0_notBefore(first.cert.get()), seconds_since_epoch(clock.wall_now() - 1h)), 0);
    EXPECT_EQ(ASN1_TIME_cmp_time_t(X509_get0_notAfter(first.cert.get()), seconds_since_epoch(clock.wall_now() + 24h * 7)), 0);
    clock.advance(24h * 6 - 1s);
    EXPECT_EQ(m.get("renew.example").cert, first.cert) << "more than a day left";
    clock.advance(2s);
    const auto renewed = m.get("renew.example");
    EXPECT_NE(renewed.cert, first.cert);
    EXPECT_EQ(ASN1_TIME_cmp_time_t(X509_get0_notBefore(renewed.cert.get()), seconds_since_epoch(clock.wall_now() - 1h)), 0);
    EXPECT_EQ(m.get("renew.example").cert, renewed.cert);
    EXPECT_EQ(m.cached(), 1u);

    // A lifetime shorter than two days renews at half-life.
    cert_minter brief{cert("ca.pem"), cert("ca.key"), 16, std::chrono::hours{2}, &clock};
    const auto short_lived = brief.get("brief.example");
    clock.advance(59min);
    EXPECT_EQ(brief.get("brief.example").cert, short_lived.cert);
    clock.advance(2min);
    EXPECT_NE(brief.get("brief.example").cert, short_lived.cert);
}

// A wall clock set back (an NTP step) by more than the hour a leaf is backdated makes the
// cached leaf not yet valid: a new one is minted rather than handed out for days.
TEST(cert_minter, a_leaf_not_yet_valid_after_the_clock_was_set_back_is_minted_again) {
    bb::manual_clock clock;
    clock.step_wall(24h * 30);  // the clock ran a month fast
    cert_minter m{cert("ca.pem"), cert("ca.key"), 16, cert_minter::default_lifetime, &clock};
    const auto fast = m.get("clock.example");
    clock.step_wall(-59min);
    EXPECT_EQ(m.get("clock.example").cert, fast.cert) << "still valid: backdated an hour";
    clock.step_wall(-(24h * 30 - 59min));
    const auto again = m.get("clock.example");
    EXPECT_NE(again.cert, fast.cert);
    EXPECT_EQ(ASN1_TIME_cmp_time_t(X509_get0_notBefore(again.cert.get()), seconds_since_epoch(clock.wall_now() - 1h)), 0);
    EXPECT_EQ(m.cached(), 1u);
}

TEST(cert_minter, the_same_ca_and_settings_are_the_same_minter) {
    bb::manual_clock clock;
    const cert_minter a{cert("ca.pem"), cert("ca.key"), 16, cert_minter::default_lifetime, &clock};
    EXPECT_TRUE(a.same_as(cert_minter{cert("ca.pem"), cert("ca.key"), 16, cert_minter::default_lifetime, &clock}));
    EXPECT_FALSE(a.same_as(cert_minter{cert("ca.pem"), cert("ca.key"), 32, cert_minter::default_lifetime, &clock}));
    EXPECT_FALSE(a.same_as(cert_minter{cert("ca.pem"), cert("ca.key"), 16, std::chrono::hours{48}, &clock}));
}

// Apple's clients refuse a leaf valid for more than 825 days, notBefore to notAfter: at the
// longest lifetime the config allows, the leaf keeps its hour of backdating and ends an hour
// earlier.
TEST(cert_minter, a_leaf_of_825_days_is_not_valid_for_longer) {
    bb::manual_clock clock;
    cert_minter m{cert("ca.pem"), cert("ca.key"), 16, std::chrono::days{825}, &clock};
    const auto l = m.get("apple.example");
    int days = 0;
    int secs = 0;
    ASSERT_EQ(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(l.cert.get()), X509_get0_notAfter(l.cert.get())), 1);
    EXPECT_LE(days * 86400LL + secs, 825LL * 86400) << days << " days " << secs << " s";
    EXPECT_GE(days * 86400LL + secs, 825LL * 86400 - 1);
    const std::time_t now = std::chrono::system_clock::to_time_t(clock.wall_now());
    EXPECT_EQ(ASN1_TIME_cmp_time_t(X509_get0_notBefore(l.cert.get()), now - 3600), 0) << "backdated an hour";
    // A week's leaf keeps its hour of backdating.
    cert_minter week{cert("ca.pem"), cert("ca.key"), 16, std::chrono::days{7}, &clock};
    const auto w = week.get("week.example");
    ASSERT_EQ(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(w.cert.get()), X509_get0_notAfter(w.cert.get())), 1);
    EXPECT_EQ(days * 86400LL + secs, 7LL * 86400 + 3600);
}

TEST(cert_minter, leaves_never_outlive_the_ca) {
    bb::manual_clock clock;
    cert_minter m{cert("ca.pem"), cert("ca.key"), 16, std::chrono::hours{24 * 365 * 100}, &clock};
    const auto l = m.get("long.example");
    EXPECT_EQ(ASN1_TIME_compare(X509_get0_notAfter(l.cert.get()), X509_get0_notAfter(l.ca.get())), 0);

    // Half a day before the CA expires: a leaf cut off at the CA's notAfter is kept, not
    // minted again on every request; after it, minting fails.
    std::tm tm{};
    ASSERT_EQ(ASN1_TIME_to_tm(X509_get0_notAfter(l.ca.get()), &tm), 1);
    const auto ca_end = std::chrono::system_clock::from_time_t(timegm(&tm));
    clock.advance(std::chrono::duration_cast<bb::duration>(ca_end - clock.wall_now() - 12h));
    const auto late = m.get("late.example");
    EXPECT_EQ(ASN1_TIME_compare(X509_get0_notAfter(late.cert.get()), X509_get0_notAfter(l.ca.get())), 0);
    EXPECT_EQ(m.get("late.example").cert, late.cert);
    clock.advance(13h);
    EXPECT_THROW(m.get("later.example"), std::runtime_error);
    EXPECT_THROW(m.get("late.example"), std::runtime_error);
}

TEST(cert_minter, concurrent_gets_agree_on_one_certificate_per_host) {
    constexpr int threads = 8;
    constexpr int hosts = 50;
    cert_minter m{cert("ca.pem"), cert("ca.key"), 64};
    const auto host = [](int i) { return "h" + std::to_string(i) + ".example.com"; };
    std::vector<std::array<std::shared_ptr<X509>, hosts>> seen(threads);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
            // Each thread starts somewhere else and goes round twice, so threads race both on
            // first use of a host and on cache hits.
            for (int k = 0; k < 2 * hosts; ++k) {
                const int i = (k + t * 7) % hosts;
                auto l = m.get(host(i));
                if (seen[t][i] && seen[t][i] != l.cert) {
                    seen[t][i] = nullptr;  // marks an inconsistency, caught below
                    return;
                }
                seen[t][i] = std::move(l.cert);
            }
        });
    }
    for (auto& w : workers) {
        w.join();
    }
    for (int i = 0; i < hosts; ++i) {
        ASSERT_TRUE(seen[0][i]) << host(i);
        for (int t = 1; t < threads; ++t) {
            EXPECT_EQ(seen[t][i], seen[0][i]) << host(i) << " thread " << t;
        }
        EXPECT_EQ(sans(seen[0][i].get()), std::vector<std::string>{"DNS:" + host(i)});
        EXPECT_EQ(m.get(host(i)).cert, seen[0][i]);
    }
    EXPECT_EQ(m.cached(), static_cast<std::size_t>(hosts));
}

TEST(cert_minter, one_server_ctx_serves_every_host_in_a_tls_handshake) {
    cert_minter m{cert("ca.pem"), cert("ca.key")};
    ctx_ptr server_ctx{SSL_CTX_new(TLS_server_method()), SSL_CTX_free};
    ASSERT_TRUE(server_ctx);
    for (const int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
        for (const std::string host : {"api.example.com", "other.example.org"}) {
            const auto r = run_handshake(server_ctx.get(), m.get(host), host, version);
            EXPECT_TRUE(r.completed) << host << " version " << version;
            EXPECT_EQ(r.verify_result, X509_V_OK) << X509_verify_cert_error_string(r.verify_result);
            EXPECT_EQ(r.peer_cn, host);
            EXPECT_EQ(r.peer_chain_length, 2) << "leaf and CA";
        }
    }
    EXPECT_EQ(SSL_CTX_get0_certificate(server_ctx.get()), nullptr) << "the leaves went on the connections";

    // The client refuses a leaf minted for another host.
    const auto wrong = run_handshake(server_ctx.get(), m.get("api.example.com"), "evil.example.com", TLS1_3_VERSION);
    EXPECT_FALSE(wrong.completed);
    EXPECT_EQ(wrong.verify_result, X509_V_ERR_HOSTNAME_MISMATCH);
}

TEST(cert_minter, apply_refuses_an_empty_leaf) {
    ctx_ptr server_ctx{SSL_CTX_new(TLS_server_method()), SSL_CTX_free};
    ssl_ptr server{SSL_new(server_ctx.get()), SSL_free};
    std::string error;
    EXPECT_FALSE(cert_minter::apply(server.get(), cert_minter::leaf{}, &error));
    EXPECT_FALSE(error.empty());
}

// Certificate times are read in seconds: RFC 5280's "no well-defined expiration" is
// 99991231235959Z, which overflows a nanosecond clock (a client certificate or CA dated so
// would read as expired in the 1800s and be refused on its first request).
TEST(certificate_times, a_notafter_in_9999_is_read_as_9999) {
    ASN1_TIME* t = ASN1_TIME_new();
    ASSERT_EQ(ASN1_TIME_set_string(t, "99991231235959Z"), 1);
    const auto s = asn1_seconds(t);
    ASN1_TIME_free(t);
    ASSERT_TRUE(s);
    EXPECT_EQ(s->time_since_epoch().count(), 253402300799);
    EXPECT_GT(*s, std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now()));
    EXPECT_FALSE(asn1_seconds(nullptr));
}
