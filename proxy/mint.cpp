#include "proxy/mint.hpp"

#include "core/clock.hpp"
#include "core/host_name.hpp"
#include "proxy/openssl_error.hpp"
#include "proxy/tls.hpp"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <ctime>
#include <stdexcept>

namespace bb::proxy {

namespace {

// A validated host: the name put in the certificate and used as the cache key.
struct target {
    std::string name;  // lowercase DNS name, or the canonical text of an IP address
    bool ip = false;
};

template <auto Free>
struct openssl_free {
    template <class T>
    void operator()(T* p) const {
        Free(p);
    }
};
using bio_ptr = std::unique_ptr<BIO, openssl_free<BIO_free>>;
using bignum_ptr = std::unique_ptr<BIGNUM, openssl_free<BN_free>>;
using octets_ptr = std::unique_ptr<ASN1_OCTET_STRING, openssl_free<ASN1_OCTET_STRING_free>>;
using akid_ptr = std::unique_ptr<AUTHORITY_KEYID, openssl_free<AUTHORITY_KEYID_free>>;
using names_ptr = std::unique_ptr<GENERAL_NAMES, openssl_free<GENERAL_NAMES_free>>;
using pubkey_ptr = std::unique_ptr<X509_PUBKEY, openssl_free<X509_PUBKEY_free>>;

std::shared_ptr<X509> own(X509* p) {
    return {p, X509_free};
}
std::shared_ptr<EVP_PKEY> own(EVP_PKEY* p) {
    return {p, EVP_PKEY_free};
}
std::shared_ptr<X509_EXTENSION> own(X509_EXTENSION* p) {
    return {p, X509_EXTENSION_free};
}

std::shared_ptr<X509> load_cert(const std::string& file) {
    bio_ptr in{BIO_new_file(file.c_str(), "r")};
    X509* cert = in ? PEM_read_bio_X509(in.get(), nullptr, no_password_prompt, nullptr) : nullptr;
    if (cert == nullptr) {
        throw std::runtime_error("CA certificate " + file + ": " + openssl_reason());
    }
    return own(cert);
}

std::shared_ptr<EVP_PKEY> load_key(const std::string& file) {
    bio_ptr in{BIO_new_file(file.c_str(), "r")};
    EVP_PKEY* key = in ? PEM_read_bio_PrivateKey(in.get(), nullptr, no_password_prompt, nullptr) : nullptr;
    if (key == nullptr) {
        throw std::runtime_error("CA key " + file + ": " + openssl_reason());
    }
    return own(key);
}

// X509_check_ca() also accepts v1 self-signed certificates; clients reject a chain whose
// issuer lacks basicConstraints CA:TRUE, so that is what we require.
void require_ca(X509* ca, const std::string& file) {
    const std::uint32_t flags = X509_get_extension_flags(ca);
    if ((flags & EXFLAG_INVALID) != 0) {
        throw std::runtime_error("CA certificate " + file + " has malformed extensions");
    }
    if ((flags & EXFLAG_CA) == 0) {
        throw std::runtime_error("CA certificate " + file + " is not a CA (basicConstraints CA:TRUE required)");
    }
    // X509_get_key_usage() is all ones when the extension is absent (no restriction).
    if ((X509_get_key_usage(ca) & KU_KEY_CERT_SIGN) == 0) {
        throw std::runtime_error("CA certificate " + file + " is not a CA for certificates (keyUsage lacks keyCertSign)");
    }
}

// Seconds, like the certificate: a CA valid "until 9999" overflows nanoseconds.
std::chrono::sys_seconds to_time_point(const ASN1_TIME* t) {
    const auto s = asn1_seconds(t);
    if (!s) {
        throw std::runtime_error("unreadable time in the CA certificate");
    }
    return *s;
}

bool set_time(ASN1_TIME* field, std::chrono::sys_seconds t) {
    return ASN1_TIME_set(field, static_cast<std::time_t>(t.time_since_epoch().count())) != nullptr;
}

// RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits.
octets_ptr key_id(const X509_PUBKEY* pub) {
    const unsigned char* bits = nullptr;
    int len = 0;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    octets_ptr id{ASN1_OCTET_STRING_new()};
    if (!id || X509_PUBKEY_get0_param(nullptr, &bits, &len, nullptr, pub) != 1 ||
        EVP_Digest(bits, static_cast<std::size_t>(len), md, &md_len, EVP_sha1(), nullptr) != 1 ||
        ASN1_OCTET_STRING_set(id.get(), md, static_cast<int>(md_len)) != 1) {
        throw std::runtime_error("key identifier: " + openssl_reason());
    }
    return id;
}

std::shared_ptr<X509_EXTENSION> subject_key_id(EVP_PKEY* key) {
    X509_PUBKEY* raw = nullptr;
    if (X509_PUBKEY_set(&raw, key) != 1) {
        throw std::runtime_error("leaf public key: " + openssl_reason());
    }
    pubkey_ptr pub{raw};
    const auto id = key_id(pub.get());
    return own(X509V3_EXT_i2d(NID_subject_key_identifier, 0, id.get()));
}

// The CA's own subjectKeyIdentifier when it has one (clients match on it), else computed.
std::shared_ptr<X509_EXTENSION> authority_key_id(X509* ca) {
    akid_ptr akid{AUTHORITY_KEYID_new()};
    if (!akid) {
        throw std::runtime_error("authority key identifier: " + openssl_reason());
    }
    if (const ASN1_OCTET_STRING* ski = X509_get0_subject_key_id(ca)) {
        akid->keyid = ASN1_OCTET_STRING_dup(ski);
    } else {
        akid->keyid = key_id(X509_get_X509_PUBKEY(ca)).release();
    }
    return own(X509V3_EXT_i2d(NID_authority_key_identifier, 0, akid.get()));
}

std::vector<std::shared_ptr<X509_EXTENSION>> fixed_extensions(X509* ca, EVP_PKEY* leaf_key) {
    std::vector<std::shared_ptr<X509_EXTENSION>> exts;
    exts.push_back(own(X509V3_EXT_conf_nid(nullptr, nullptr, NID_basic_constraints, "critical,CA:FALSE")));
    exts.push_back(own(X509V3_EXT_conf_nid(nullptr, nullptr, NID_key_usage, "critical,digitalSignature")));
    exts.push_back(own(X509V3_EXT_conf_nid(nullptr, nullptr, NID_ext_key_usage, "serverAuth")));
    exts.push_back(subject_key_id(leaf_key));
    exts.push_back(authority_key_id(ca));
    if (std::any_of(exts.begin(), exts.end(), [](const auto& e) { return e == nullptr; })) {
        throw std::runtime_error("certificate extensions: " + openssl_reason());
    }
    return exts;
}

// IP literals are stored in canonical form so "::1" and "0::1" share one certificate.
target parse_host(std::string_view host) {
    if (host.find('\0') != std::string_view::npos) {  // inet_pton would stop at it
        throw std::invalid_argument("not a valid host name or IP address");
    }
    std::string s{host};
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    unsigned char addr[16];
    char text[INET6_ADDRSTRLEN];
    for (const int family : {AF_INET, AF_INET6}) {
        if (inet_pton(family, s.c_str(), addr) == 1 && inet_ntop(family, addr, text, sizeof text) != nullptr) {
            return {text, true};
        }
    }
    if (!valid_dns_name(s)) {
        throw std::invalid_argument("not a valid host name or IP address");
    }
    return {std::move(s), false};
}

// Ed25519/Ed448 CA keys sign without a separate digest; every other key type uses SHA-256.
const EVP_MD* signing_digest(EVP_PKEY* key) {
    int nid = NID_undef;
    return EVP_PKEY_get_default_digest_nid(key, &nid) == 2 && nid == NID_undef ? nullptr : EVP_sha256();
}

}  // namespace

cert_minter::cert_minter(const std::string& ca_cert_file, const std::string& ca_key_file, std::size_t cache_max,
                         std::chrono::milliseconds lifetime, const bb::clock* clock)
    : ca_(load_cert(ca_cert_file)),
      ca_key_(load_key(ca_key_file)),
      lifetime_(lifetime),
      // Renew a day before expiry; short test lifetimes renew at half-life instead.
      renew_margin_(std::min<std::chrono::milliseconds>(std::chrono::hours{24}, lifetime / 2)),
      clock_(clock),
      cache_max_(cache_max) {
    if (lifetime.count() <= 0) {
        throw std::invalid_argument("leaf certificate lifetime must be positive");
    }
    require_ca(ca_.get(), ca_cert_file);
    if (X509_check_private_key(ca_.get(), ca_key_.get()) != 1) {
        ERR_clear_error();
        throw std::runtime_error("CA key " + ca_key_file + " does not match the CA certificate " + ca_cert_file);
    }
    ca_not_after_ = to_time_point(X509_get0_notAfter(ca_.get()));
    if (ca_not_after_ <= wall_now()) {
        throw std::runtime_error("CA certificate " + ca_cert_file + " has expired");
    }
    // One key for every leaf: minting is then a single signature. It never leaves memory.
    leaf_key_ = own(EVP_EC_gen("P-256"));
    if (!leaf_key_) {
        throw std::runtime_error("leaf key: " + openssl_reason());
    }
    fixed_extensions_ = fixed_extensions(ca_.get(), leaf_key_.get());
}

cert_minter::~cert_minter() = default;

bool cert_minter::same_as(const cert_minter& other) const {
    return X509_cmp(ca_.get(), other.ca_.get()) == 0 && EVP_PKEY_eq(ca_key_.get(), other.ca_key_.get()) == 1 &&
           lifetime_ == other.lifetime_ && cache_max_ == other.cache_max_ && clock_ == other.clock_;
}

cert_minter::time_point cert_minter::wall_now() const {
    return std::chrono::floor<std::chrono::seconds>(clock_ != nullptr ? clock_->wall_now()
                                                                       : std::chrono::system_clock::now());
}

cert_minter::leaf cert_minter::get(std::string_view host) {
    const target t = parse_host(host);
    const auto now = wall_now();
    {
        std::lock_guard lock{mutex_};
        if (const leaf* hit = find_fresh(t.name, now)) {
            return *hit;
        }
    }
    // Signing happens outside the lock so workers minting for different hosts do not queue
    // behind each other. Two racing for one host both sign; the first stored wins, so every
    // caller still sees one certificate per host.
    entry minted = mint(t.name, t.ip, now);
    std::lock_guard lock{mutex_};
    if (const leaf* hit = find_fresh(t.name, now)) {
        return *hit;
    }
    leaf out = minted.l;
    store(std::move(minted));
    return out;
}

bool cert_minter::fresh(const entry& e, time_point now) const {
    // Not yet valid: the wall clock was set back (an NTP step) since it was minted, and a
    // client with the right time would refuse it until then.
    if (now >= e.not_after || now < e.not_before) {
        return false;
    }
    // A leaf cut off at the CA's notAfter cannot be renewed into a longer one: keep it to the end.
    return e.not_after - now > renew_margin_ || e.not_after >= ca_not_after_;
}

const cert_minter::leaf* cert_minter::find_fresh(const std::string& host, time_point now) {
    const auto it = index_.find(host);
    if (it == index_.end() || !fresh(*it->second, now)) {
        return nullptr;
    }
    lru_.splice(lru_.begin(), lru_, it->second);
    return &it->second->l;
}

void cert_minter::store(entry e) {
    if (const auto it = index_.find(e.host); it != index_.end()) {
        lru_.erase(it->second);
        index_.erase(it);
    }
    if (cache_max_ == 0) {
        return;
    }
    while (lru_.size() >= cache_max_) {
        index_.erase(lru_.back().host);
        lru_.pop_back();
    }
    lru_.push_front(std::move(e));
    index_.emplace(lru_.front().host, lru_.begin());
}

cert_minter::entry cert_minter::mint(const std::string& host, bool ip, time_point now) const {
    const auto fail = [&](std::string_view step) {
        return std::runtime_error("minting a certificate for " + host + ": " + std::string{step} + ": " +
                                  openssl_reason());
    };
    if (now >= ca_not_after_) {
        throw std::runtime_error("minting a certificate for " + host + ": the CA certificate has expired");
    }
    // Backdated an hour for clients whose clocks run a little behind ours.
    const time_point not_before = now - std::chrono::hours{1};
    // Compared as durations so a lifetime of centuries cannot overflow a time point.
    time_point not_after = lifetime_ >= std::chrono::duration_cast<std::chrono::milliseconds>(ca_not_after_ - now)
                               ? ca_not_after_
                               : std::chrono::floor<std::chrono::seconds>(now + lifetime_);
    // Apple's clients refuse a server certificate whose notBefore and notAfter are more than
    // 825 days apart (the config's leaf_lifetime is at most that): the hour of backdating is
    // kept and the end drawn in. (Longer lifetimes, which only a caller outside the config can
    // ask for, are left as asked.)
    if (const auto apple_longest = std::chrono::days{825};
        lifetime_ <= apple_longest && not_after - not_before > apple_longest) {
        not_after = not_before + apple_longest;
    }
    auto cert = own(X509_new());
    X509* x = cert.get();
    if (!x || X509_set_version(x, X509_VERSION_3) != 1) {
        throw fail("new certificate");
    }

    bignum_ptr serial{BN_new()};
    if (!serial || BN_rand(serial.get(), 128, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
        BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(x)) == nullptr) {
        throw fail("serial");
    }

    if (X509_set_issuer_name(x, X509_get_subject_name(ca_.get())) != 1 ||
        !set_time(X509_getm_notBefore(x), not_before) || !set_time(X509_getm_notAfter(x), not_after) ||
        X509_set_pubkey(x, leaf_key_.get()) != 1) {
        throw fail("fields");
    }

    // commonName is limited to 64 characters (RFC 5280 ub-common-name); longer names go in the
    // SAN only, with an empty subject, which makes the SAN critical (RFC 5280 4.2.1.6).
    const bool has_cn = host.size() <= 64;
    if (has_cn && X509_NAME_add_entry_by_NID(X509_get_subject_name(x), NID_commonName, MBSTRING_ASC,
                                             reinterpret_cast<const unsigned char*>(host.c_str()), -1, -1, 0) != 1) {
        throw fail("subject");
    }
    names_ptr san{GENERAL_NAMES_new()};
    GENERAL_NAME* name = a2i_GENERAL_NAME(nullptr, nullptr, nullptr, ip ? GEN_IPADD : GEN_DNS, host.c_str(), 0);
    if (!san || name == nullptr || sk_GENERAL_NAME_push(san.get(), name) <= 0) {
        GENERAL_NAME_free(name);
        throw fail("subjectAltName");
    }
    if (X509_add1_ext_i2d(x, NID_subject_alt_name, san.get(), has_cn ? 0 : 1, X509V3_ADD_DEFAULT) != 1) {
        throw fail("subjectAltName");
    }
    for (const auto& ext : fixed_extensions_) {
        if (X509_add_ext(x, ext.get(), -1) != 1) {
            throw fail("extensions");
        }
    }

    if (X509_sign(x, ca_key_.get(), signing_digest(ca_key_.get())) <= 0) {
        throw fail("signature");
    }
    return entry{host, leaf{std::move(cert), leaf_key_, ca_}, not_before, not_after};
}

bool cert_minter::apply(SSL* ssl, const leaf& l, std::string* error) {
    const auto failed = [&](std::string_view what) {
        if (error != nullptr) {
            *error = std::string{what} + ": " + openssl_reason();
        }
        return false;
    };
    if (ssl == nullptr || !l.cert || !l.key) {
        if (error != nullptr) {
            *error = "no connection or no certificate to apply";
        }
        return false;
    }
    // These set the SSL*'s own copy of the certificate state; the shared SSL_CTX is untouched.
    if (SSL_use_certificate(ssl, l.cert.get()) != 1) {
        return failed("certificate");
    }
    if (SSL_use_PrivateKey(ssl, l.key.get()) != 1) {
        return failed("private key");
    }
    // Cleared first so applying twice (a retried handshake) does not send the CA twice.
    if (SSL_clear_chain_certs(ssl) != 1 || (l.ca && SSL_add1_chain_cert(ssl, l.ca.get()) != 1)) {
        return failed("chain");
    }
    return true;
}

std::size_t cert_minter::cached() const {
    std::lock_guard lock{mutex_};
    return lru_.size();
}

}  // namespace bb::proxy
