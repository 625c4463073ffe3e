#pragma once
// Server-side TLS shared by the data-plane listeners, the forward proxy's interception and
// the admin API: one place that decides protocol versions, suites and client verification.

#include "config/config.hpp"

#include <boost/asio/ssl/context.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

using SSL = struct ssl_st;

namespace bb::proxy {

// A server context: TLS 1.2 and 1.3 only, Mozilla "intermediate" suites for 1.2 (ECDHE with
// AES-GCM or ChaCha20-Poly1305: forward secrecy and AEAD only; OpenSSL's 1.3 defaults are
// all AEAD), no renegotiation, no compression. With `files`: its certificate chain and key,
// and when client_ca_file is set, client certificates verified against it (required when
// require_client_cert). Throws std::runtime_error naming the file and OpenSSL's reason.
std::shared_ptr<boost::asio::ssl::context> make_server_tls(const tls_files* files);
// Throws, naming the CRL, when a client CRL the context holds is past its next update or not
// valid yet (make_server_tls checks it when it reads the file; a reload that keeps a context
// whose files are unchanged checks it again, since time has passed).
void check_client_crl_times(boost::asio::ssl::context& ctx, const tls_files& files);

// The names a verified peer certificate carries: its DNS SANs, or when it has none its
// subject CN (only when there is one CN). Names with a NUL are left out. Empty when there
// is no certificate or it did not verify.
// `ignored_cn`, when given, receives the CN of a certificate that has DNS SANs (not used).
std::vector<std::string> verified_peer_names(SSL* ssl, std::string* ignored_cn = nullptr);
// A connection's client certificate, verified at its handshake, judged again against a
// context the TLS files were reloaded into (a CRL that revokes it now, a CA no longer
// trusted): a keep-alive connection must not outlive its certificate's trust. `still_ok`
// when it verifies as a new handshake would verify it (with its chain, CRLs and purpose);
// `not_verified` when the context verifies no client certificate any more (it identifies
// nobody now); `refused` with OpenSSL's reason in *why.
enum class peer_verdict { still_ok, not_verified, refused };
// `expires`, when given and still_ok: the new chain's earliest notAfter (see below).
peer_verdict reverify_peer(SSL* ssl, boost::asio::ssl::context* now, std::string* why,
                           std::optional<std::chrono::sys_seconds>* expires = nullptr);

// When a verified client certificate stops being valid: the earliest notAfter of its
// verified chain (the leaf, its intermediates and the trust anchor). A keep-alive connection
// outlives it otherwise: the handshake's verification is not repeated per request. In
// seconds: a certificate valid "until 9999" (RFC 5280's "no expiry") overflows nanoseconds.
// nullopt without a certificate.
std::optional<std::chrono::sys_seconds> verified_chain_expiry(SSL* ssl);
// An ASN1_TIME in seconds since the epoch; nullopt when it cannot be read.
std::optional<std::chrono::sys_seconds> asn1_seconds(const ASN1_TIME* t);

// The subject's common name when it has exactly one (with two, which one "is" the subject
// depends on who reads it); a view into `cert`.
std::optional<std::string_view> single_common_name(const X509* cert);

}  // namespace bb::proxy
