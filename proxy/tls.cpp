#include "proxy/tls.hpp"

#include "proxy/openssl_error.hpp"

#include <cstring>
#include <ctime>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <stdexcept>

namespace bb::proxy {

namespace {

// "Dec  1 17:09:49 2026 GMT", as openssl prints a certificate's or a CRL's times.
std::string asn1_time_text(const ASN1_TIME* t) {
    BIO* b = BIO_new(BIO_s_mem());
    if (b == nullptr) {
        return "?";
    }
    ASN1_TIME_print(b, t);
    char* data = nullptr;
    const long n = BIO_get_mem_data(b, &data);
    std::string out{data, static_cast<std::size_t>(n > 0 ? n : 0)};
    BIO_free(b);
    return out;
}

}  // namespace

void check_client_crl_times(boost::asio::ssl::context& ctx, const tls_files& files) {
    if (files.client_crl_file.empty()) {
        return;
    }
    // Under the store's lock: no object is added after the context was built, but handshakes
    // running on the workers meanwhile look issuers and CRLs up in this stack, and OpenSSL
    // sorts it in place on such a lookup (sk_X509_OBJECT_find), under this lock.
    X509_STORE* store = SSL_CTX_get_cert_store(ctx.native_handle());
    if (X509_STORE_lock(store) != 1) {
        throw std::runtime_error("TLS client CRL " + files.client_crl_file + ": cannot lock the certificate store");
    }
    struct unlock {
        X509_STORE* s;
        ~unlock() { X509_STORE_unlock(s); }
    } unlocked_at_exit{store};
    STACK_OF(X509_OBJECT)* objects = X509_STORE_get0_objects(store);
    for (int i = 0; i < sk_X509_OBJECT_num(objects); ++i) {
        const X509_CRL* crl = X509_OBJECT_get0_X509_CRL(sk_X509_OBJECT_value(objects, i));
        if (crl == nullptr) {
            continue;
        }
        const ASN1_TIME* next = X509_CRL_get0_nextUpdate(crl);
        const ASN1_TIME* last = X509_CRL_get0_lastUpdate(crl);
        const bool expired = next != nullptr && X509_cmp_current_time(next) < 0;
        const bool early = last != nullptr && X509_cmp_current_time(last) > 0;
        if (expired || early) {
            char issuer[256];
            X509_NAME_oneline(X509_CRL_get_issuer(crl), issuer, sizeof issuer);
            throw std::runtime_error("TLS client CRL " + files.client_crl_file + ": the CRL of " + issuer +
                                     (expired ? " is past its next update (" + asn1_time_text(next) + "): renew it"
                                              : " is not valid until " + asn1_time_text(last)));
        }
    }
}

std::shared_ptr<boost::asio::ssl::context> make_server_tls(const tls_files* files) {
    namespace ssl = boost::asio::ssl;
    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
    SSL_CTX* c = ctx->native_handle();
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION);
    SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    // Mozilla intermediate (v5.7) for TLS 1.2, minus the DHE suites (no DH parameters to
    // manage; every client from the last decade speaks ECDHE).
    if (SSL_CTX_set_cipher_list(c,
                                "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305") != 1 ||
        SSL_CTX_set1_groups_list(c, "X25519:P-256:P-384") != 1) {
        throw std::runtime_error("TLS setup: " + openssl_reason());
    }
    if (files == nullptr) {
        return ctx;  // the caller sets the certificate per connection (forward-proxy interception)
    }
    if (SSL_CTX_use_certificate_chain_file(c, files->cert_file.c_str()) != 1) {
        throw std::runtime_error("TLS certificate " + files->cert_file + ": " + openssl_reason());
    }
    // Without a callback OpenSSL prompts on the terminal for an encrypted key: a SIGHUP
    // would hang the control thread (the admin API, expiries, the drain) on a read of stdin.
    // Refused, it is a load error naming the file.
    SSL_CTX_set_default_passwd_cb(c, no_password_prompt);
    if (SSL_CTX_use_PrivateKey_file(c, files->key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
        throw std::runtime_error("TLS key " + files->key_file + ": " + openssl_reason());
    }
    if (SSL_CTX_check_private_key(c) != 1) {
        throw std::runtime_error("TLS key " + files->key_file + " does not match the certificate " + files->cert_file);
    }
    if (!files->client_ca_file.empty()) {
        if (SSL_CTX_load_verify_locations(c, files->client_ca_file.c_str(), nullptr) != 1) {
            throw std::runtime_error("TLS client CA " + files->client_ca_file + ": " + openssl_reason());
        }
        // Tell clients which CA we accept (curl and browsers pick their certificate by it).
        if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(files->client_ca_file.c_str())) {
            SSL_CTX_set_client_CA_list(c, names);
        }
        if (!files->client_crl_file.empty()) {
            // Revoked client certificates. A certificate whose issuer has no CRL in the file is
            // refused too (OpenSSL's "unable to get certificate CRL"), and so is every
            // certificate once a CRL is past its next update: a list that is not renewed
            // fails closed, as a pinned revocation list should.
            X509_STORE* store = SSL_CTX_get_cert_store(c);
            X509_LOOKUP* lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
            if (lookup == nullptr || X509_load_crl_file(lookup, files->client_crl_file.c_str(), X509_FILETYPE_PEM) <= 0) {
                throw std::runtime_error("TLS client CRL " + files->client_crl_file +
                                         " holds no PEM certificate revocation list: " + openssl_reason());
            }
            // A list already past its next update (or not valid yet) would refuse every client
            // at once: refused here, so a reload keeps the running list and says why.
            check_client_crl_times(*ctx, *files);
            X509_STORE_set_flags(store, files->client_crl_leaf_only ? X509_V_FLAG_CRL_CHECK
                                                                     : X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
        }
        SSL_CTX_set_verify(c, files->require_client_cert ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER,
                           nullptr);
        static const unsigned char sid[] = "breakerbox";
        SSL_CTX_set_session_id_context(c, sid, sizeof sid - 1);
        // No session resumption where clients are verified: a resumed session brings its
        // certificate without the chain it was verified with (a TLS 1.3 ticket holds the leaf
        // alone), so reverify_peer could not judge it after a reload, and a resumption skips
        // the CRL the files hold now. Every connection verifies its chain in full.
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(c, 0);
    }
    return ctx;
}

std::vector<std::string> verified_peer_names(SSL* ssl, std::string* ignored_cn) {
    std::vector<std::string> names;
    if (ssl == nullptr || SSL_get_verify_result(ssl) != X509_V_OK) {
        return names;
    }
    X509* peer = SSL_get0_peer_certificate(ssl);
    if (peer == nullptr) {
        return names;
    }
    // A name with a NUL in it (`bot.agents.local\0.evil`) is no name: never compared.
    auto add = [&](const char* p, int len) {
        if (len > 0 && std::memchr(p, '\0', static_cast<std::size_t>(len)) == nullptr) {
            names.emplace_back(p, static_cast<std::size_t>(len));
        }
    };
    // The DNS SANs when there are any (RFC 6125: a CN is only a fallback); a CA that lets a
    // requester pick the CN of a certificate with SANs cannot make it name an agent.
    auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(peer, NID_subject_alt_name, nullptr, nullptr));
    if (sans != nullptr) {
        for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
            const GENERAL_NAME* g = sk_GENERAL_NAME_value(sans, i);
            if (g->type == GEN_DNS) {
                const auto* s = g->d.dNSName;
                add(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), ASN1_STRING_length(s));
            }
        }
        GENERAL_NAMES_free(sans);
    }
    // The CN, only when the subject has exactly one and the certificate no SANs at all (a
    // URI or IP SAN names the holder too: RFC 6125 6.4.4; a CA issuing `spiffe://...`
    // certificates with any CN must not make them agents); with SANs it is only reported, so
    // a config that names an agent by it can be told why it no longer matches.
    const bool any_san = X509_get_ext_by_NID(peer, NID_subject_alt_name, -1) >= 0;
    if (const auto cn = single_common_name(peer)) {
        if (names.empty() && !any_san) {
            add(cn->data(), static_cast<int>(cn->size()));
        } else if (ignored_cn != nullptr && !cn->empty()) {
            ignored_cn->assign(*cn);
        }
    }
    return names;
}

std::optional<std::chrono::sys_seconds> asn1_seconds(const ASN1_TIME* t) {
    std::tm tm{};
    if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) {
        ERR_clear_error();
        return std::nullopt;
    }
    return std::chrono::sys_seconds{std::chrono::seconds{::timegm(&tm)}};
}

namespace {

// The earliest notAfter of `chain`; `leaf`'s alone when the chain is empty or a time in it
// cannot be read (verification read them all, so that does not happen in practice).
std::optional<std::chrono::sys_seconds> earliest_expiry(STACK_OF(X509)* chain, const X509* leaf) {
    std::optional<std::chrono::sys_seconds> earliest;
    for (int i = 0; chain != nullptr && i < sk_X509_num(chain); ++i) {
        const auto t = asn1_seconds(X509_get0_notAfter(sk_X509_value(chain, i)));
        if (!t) {
            earliest.reset();
            break;
        }
        if (!earliest || *t < *earliest) {
            earliest = t;
        }
    }
    if (!earliest && leaf != nullptr) {
        earliest = asn1_seconds(X509_get0_notAfter(leaf));
    }
    return earliest;
}

}  // namespace

peer_verdict reverify_peer(SSL* ssl, boost::asio::ssl::context* now, std::string* why,
                           std::optional<std::chrono::sys_seconds>* expires) {
    SSL_CTX* c = now != nullptr ? now->native_handle() : nullptr;
    if (c == nullptr || (SSL_CTX_get_verify_mode(c) & SSL_VERIFY_PEER) == 0) {
        return peer_verdict::not_verified;
    }
    X509* leaf = SSL_get0_peer_certificate(ssl);
    if (leaf == nullptr) {
        return peer_verdict::not_verified;
    }
    X509_STORE_CTX* v = X509_STORE_CTX_new();
    if (v == nullptr || X509_STORE_CTX_init(v, SSL_CTX_get_cert_store(c), leaf, SSL_get_peer_cert_chain(ssl)) != 1) {
        X509_STORE_CTX_free(v);
        ERR_clear_error();
        *why = "cannot set up the verification";
        return peer_verdict::refused;
    }
    // As the handshake verifies a client: its purpose, then the context's own parameters.
    X509_STORE_CTX_set_default(v, "ssl_client");
    X509_VERIFY_PARAM_set1(X509_STORE_CTX_get0_param(v), SSL_CTX_get0_param(c));
    const bool ok = X509_verify_cert(v) == 1;
    if (!ok) {
        *why = X509_verify_cert_error_string(X509_STORE_CTX_get_error(v));
    } else if (expires != nullptr) {
        *expires = earliest_expiry(X509_STORE_CTX_get0_chain(v), leaf);  // the chain as it verifies now
    }
    X509_STORE_CTX_free(v);
    ERR_clear_error();
    return ok ? peer_verdict::still_ok : peer_verdict::refused;
}

std::optional<std::chrono::sys_seconds> verified_chain_expiry(SSL* ssl) {
    return earliest_expiry(SSL_get0_verified_chain(ssl), SSL_get0_peer_certificate(ssl));
}

std::optional<std::string_view> single_common_name(const X509* cert) {
    const X509_NAME* subject = X509_get_subject_name(cert);
    const int first = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    if (first < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, first) >= 0) {
        return std::nullopt;
    }
    const ASN1_STRING* cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, first));
    return std::string_view{reinterpret_cast<const char*>(ASN1_STRING_get0_data(cn)),
                            static_cast<std::size_t>(ASN1_STRING_length(cn))};
}

}  // namespace bb::proxy
