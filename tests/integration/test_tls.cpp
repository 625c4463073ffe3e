// Inbound TLS and the forward proxy (issue 7), with real clients: curl, openssl s_client,
// sslscan and a Node.js client, all on 127.0.0.1. The certificates are the build's
// development test material (certs/make-dev-certs.sh): nothing here is production.
#include "core/sha256.hpp"
#include "proxy/admin.hpp"
#include "proxy/mint.hpp"
#include "proxy/tls.hpp"
#include "tests/support/fake_upstream.hpp"
#include "tests/support/keep_alive_tls.hpp"
#include "tests/support/proxy_fixture.hpp"

#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <tuple>

#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

using namespace bb::test;
namespace http = boost::beast::http;

namespace {

std::string run(const std::string& cmd, int* rc = nullptr) {
    FILE* pipe = ::popen((cmd + " 2>&1").c_str(), "r");
    std::string out;
    char buf[512];
    while (pipe && std::fgets(buf, sizeof buf, pipe)) {
        out += buf;
    }
    const int status = pipe ? ::pclose(pipe) : -1;
    if (rc != nullptr) {
        *rc = status;
    }
    return out;
}

std::string cert(const std::string& name) {
    return std::string{BB_TEST_CERTS_DIR} + "/" + name;
}

std::string q(const std::string& s) {
    return "\"" + s + "\"";
}

// One TLS listener in front of `upstream_port`; `tls_extra` is spliced into its tls object.
std::string tls_config(std::uint16_t upstream_port, const std::string& cert_file, const std::string& key_file,
                       const std::string& tls_extra = "", const std::string& listener_extra = "",
                       const std::string& top_extra = "") {
    return "{\"workers\": 1, \"listeners\": [{\"name\": \"tls\", \"address\": \"127.0.0.1:0\"" + listener_extra +
           ", \"tls\": {\"cert_file\": " + q(cert_file) + ", \"key_file\": " + q(key_file) + tls_extra + "}}],"
           "\"upstreams\": [{\"name\": \"up\", \"url\": \"http://127.0.0.1:" + std::to_string(upstream_port) + "\"}],"
           "\"routes\": [{\"name\": \"all\", \"match\": {\"path_prefix\": \"/\"}, \"upstream\": \"up\"}]," + top_extra +
           "\"store\": {\"path\": " + q(temp_dir() + "/bb.db") + "},"
           "\"log\": {\"level\": \"warn\", \"access_log\": \"off\"}}";
}

std::string curl_https(std::uint16_t port, const std::string& path, const std::string& extra = "") {
    return "curl -sS --max-time 10 --cacert " + cert("ca.pem") + " " + extra + " -o - -w ' status=%{http_code}' https://localhost:" +
           std::to_string(port) + path;
}

// A CRL from the development CA revoking nothing, valid from now + last_days to now +
// next_days (what `openssl ca -gencrl` cannot write: a list already stale, or not yet valid).
void write_crl(const std::string& path, int last_days, int next_days) {
    FILE* f = std::fopen(cert("ca.pem").c_str(), "r");
    X509* ca = PEM_read_X509(f, nullptr, nullptr, nullptr);
    std::fclose(f);
    f = std::fopen(cert("ca.key").c_str(), "r");
    EVP_PKEY* key = PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
    std::fclose(f);
    X509_CRL* crl = X509_CRL_new();
    X509_CRL_set_version(crl, 1);
    X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca));
    ASN1_TIME* last = X509_time_adj_ex(nullptr, last_days, 0, nullptr);
    ASN1_TIME* next = X509_time_adj_ex(nullptr, next_days, 0, nullptr);
    X509_CRL_set1_lastUpdate(crl, last);
    X509_CRL_set1_nextUpdate(crl, next);
    X509_CRL_sign(crl, key, EVP_sha256());
    f = std::fopen(path.c_str(), "w");
    PEM_write_X509_CRL(f, crl);
    std::fclose(f);
    ASN1_TIME_free(last);
    ASN1_TIME_free(next);
    X509_CRL_free(crl);
    EVP_PKEY_free(key);
    X509_free(ca);
}

}  // namespace

TEST(tls_listener, serves_https_and_tells_the_upstream) {
    fake_upstream up{[](const request&) { return respond(200, "hello over tls"); }};
    proxy_instance bb{tls_config(up.port(), cert("server.pem"), cert("server.key"))};
    const auto out = run(curl_https(bb.port(), "/v3/mail/send"));
    EXPECT_NE(out.find("hello over tls status=200"), std::string::npos) << out;
    ASSERT_EQ(up.request_count(), 1u);
    EXPECT_EQ(up.requests()[0].req["x-forwarded-proto"], "https");
    // Keep-alive over TLS: two requests on one connection.
    const auto two = run("curl -sS --max-time 10 --cacert " + cert("ca.pem") + " https://localhost:" +
                         std::to_string(bb.port()) + "/a https://localhost:" + std::to_string(bb.port()) + "/b");
    EXPECT_EQ(two, "hello over tlshello over tls");
    // Plain HTTP to a TLS listener is not served: it is told to use https.
    const auto plain = run("curl -sS --max-time 5 -w ' status=%{http_code}' http://127.0.0.1:" + std::to_string(bb.port()) + "/x");
    EXPECT_NE(plain.find("status=400"), std::string::npos) << plain;
    EXPECT_NE(plain.find("plain_http_on_tls_listener"), std::string::npos) << plain;
    EXPECT_EQ(up.request_count(), 3u);
    // A head and body far larger than what an idle TLS connection waits with (its first read
    // takes 1 KiB; the rest of the record is read on), the second on a kept-alive connection.
    const std::string body_file = temp_dir() + "/body.json";
    std::ofstream{body_file} << "{\"v\":\"" << std::string(40000, 'b') << "\"}";
    const std::string big(6000, 'h');
    const auto large = run("curl -sS --max-time 10 --cacert " + cert("ca.pem") + " -H 'X-Big: " + big +
                           "' -H 'Content-Type: application/json' --data-binary @" + body_file + " https://localhost:" +
                           std::to_string(bb.port()) + "/a https://localhost:" + std::to_string(bb.port()) + "/b");
    EXPECT_EQ(large, "hello over tlshello over tls");
    ASSERT_EQ(up.request_count(), 5u);
    for (std::size_t i : {3u, 4u}) {
        EXPECT_EQ(up.requests()[i].req["x-big"], big);
        EXPECT_EQ(up.requests()[i].req.body().size(), 40008u);
    }
}

// A TLS client that gives up while the upstream works: its watch (a peek at the socket
// after the grace period) sees the close and the upstream request is cancelled.
TEST(tls_listener, a_tls_client_that_leaves_closes_the_upstream_side) {
    fake_upstream up{[](const request&) {
        behaviour b;
        b.what = behaviour::kind::hang;
        return b;
    }};
    proxy_instance bb{tls_config(up.port(), cert("server.pem"), cert("server.key"))};
    int rc = 0;
    run(curl_https(bb.port(), "/slow", "--max-time 3"), &rc);
    EXPECT_NE(rc, 0) << "curl gave up";
    EXPECT_TRUE(up.wait_for([&] { return up.request_count() == 1; }, std::chrono::seconds{3}));
    EXPECT_TRUE(up.wait_for([&] { return up.connections_closed_by_peer() == 1; }, std::chrono::seconds{3}))
        << "breakerbox must close the upstream connection when its TLS client leaves";
}

TEST(tls_listener, old_protocols_and_weak_suites_are_refused) {
    fake_upstream up;
    proxy_instance bb{tls_config(up.port(), cert("server.pem"), cert("server.key"))};
    const std::string target = "127.0.0.1:" + std::to_string(bb.port());
    int rc = 0;
    const auto v11 = run("echo | openssl s_client -connect " + target + " -tls1_1", &rc);
    EXPECT_NE(rc, 0) << "TLS 1.1 must fail:\n" << v11;
    const auto v12 = run("echo | openssl s_client -connect " + target + " -tls1_2 -CAfile " + cert("ca.pem"), &rc);
    EXPECT_EQ(rc, 0) << v12;
    EXPECT_NE(v12.find("TLSv1.2"), std::string::npos) << v12;
    // A CBC-only client finds nothing in common.
    run("echo | openssl s_client -connect " + target + " -tls1_2 -cipher ECDHE-RSA-AES128-SHA:AES128-SHA256", &rc);
    EXPECT_NE(rc, 0);

    const auto scan = run("sslscan --no-colour --no-heartbleed --no-fallback " + target, &rc);
    ASSERT_EQ(rc, 0) << "sslscan is needed (scripts/setup.sh installs it):\n" << scan;
    for (const char* off : {"SSLv2     disabled", "SSLv3     disabled", "TLSv1.0   disabled", "TLSv1.1   disabled"}) {
        EXPECT_NE(scan.find(off), std::string::npos) << off << "\n" << scan;
    }
    EXPECT_NE(scan.find("TLSv1.2   enabled"), std::string::npos) << scan;
    EXPECT_NE(scan.find("TLSv1.3   enabled"), std::string::npos) << scan;
    // Every accepted suite: AEAD with forward secrecy (ECDHE for 1.2; every 1.3 suite).
    std::istringstream lines{scan};
    std::string line;
    int accepted = 0;
    while (std::getline(lines, line)) {
        if (line.find("Accepted") == std::string::npos && line.find("Preferred") == std::string::npos) {
            continue;
        }
        ++accepted;
        for (const char* weak : {"CBC", "-SHA ", "RC4", "DES", "NULL", "EXP", "MD5", "anon", "PSK"}) {
            EXPECT_EQ(line.find(weak), std::string::npos) << line;
        }
        if (line.find("TLSv1.2") != std::string::npos) {
            EXPECT_NE(line.find("ECDHE"), std::string::npos) << "no forward secrecy: " << line;
            EXPECT_TRUE(line.find("GCM") != std::string::npos || line.find("CHACHA20") != std::string::npos) << line;
        }
    }
    EXPECT_GE(accepted, 3) << scan;
}

TEST(tls_listener, client_certificates_identify_agents) {
    fake_upstream up{[](const request&) { return respond(200, "ok"); }};
    // by-cn names the certificate's CN ("agent-one") and comes first: a certificate with
    // SANs is identified by them only, so it is agent-one whatever the order.
    const std::string agents =
        "\"agents\": [{\"id\": \"by-cn\", \"cert_names\": [\"agent-one\"], \"allow\": {\"paths\": [\"/crm/*\"]}},"
        "{\"id\": \"agent-one\", \"cert_names\": [\"agent-one.agents.local\"],"
        " \"allow\": {\"paths\": [\"/v3/*\"]}},"
        "{\"id\": \"keyed\", \"key_sha256\": [\"" + run("printf keyed-key | sha256sum | cut -c1-64 | tr -d '\\n'") + "\"]}],";
    proxy_instance bb{tls_config(up.port(), cert("server.pem"), cert("server.key"),
                                 ", \"client_ca_file\": " + q(cert("ca.pem")) + ", \"require_client_cert\": true",
                                 ", \"require_agent\": true", agents)};
    const std::string with_cert = "--cert " + cert("agent-agent-one.pem") + " --key " + cert("agent-agent-one.key");
    auto out = run(curl_https(bb.port(), "/v3/mail/send", with_cert));
    EXPECT_NE(out.find("status=200"), std::string::npos) << out;
    // The certificate's agent is held to its scope.
    out = run(curl_https(bb.port(), "/crm/v3/objects", with_cert));
    EXPECT_NE(out.find("status=403"), std::string::npos) << out;
    EXPECT_NE(out.find("out_of_scope"), std::string::npos) << out;
    EXPECT_NE(out.find("agent-one"), std::string::npos) << out;
    // A key naming another agent than the certificate: neither identity wins (a leaked key
    // would lift the certificate's holder to the key's unrestricted scope).
    out = run(curl_https(bb.port(), "/crm/v3/objects", with_cert + " -H 'x-breakerbox-key: keyed-key'"));
    EXPECT_NE(out.find("status=401"), std::string::npos) << out;
    EXPECT_NE(out.find("the agent key names agent keyed but the client certificate names agent agent-one"),
              std::string::npos) << out;
    // No certificate: the handshake itself fails.
    int rc = 0;
    out = run(curl_https(bb.port(), "/v3/mail/send"), &rc);
    EXPECT_NE(rc, 0) << out;
    EXPECT_EQ(out.find("status=200"), std::string::npos) << out;
    // A certificate from another CA is refused too.
    out = run(curl_https(bb.port(), "/v3/mail/send",
                         "--cert " + cert("self-signed.pem") + " --key " + cert("self-signed.key")),
              &rc);
    EXPECT_EQ(out.find("status=200"), std::string::npos) << out;
    EXPECT_EQ(up.request_count(), 1u);

    // An agent named only by the CN of a certificate with SANs is not silently nobody (on a
    // listener where identity is optional that would be unscoped): 401, saying why.
    proxy_instance by_cn{tls_config(up.port(), cert("server.pem"), cert("server.key"),
                                    ", \"client_ca_file\": " + q(cert("ca.pem")), "",
                                    "\"agents\": [{\"id\": \"by-cn\", \"cert_names\": [\"agent-one\"],"
                                    " \"allow\": {\"paths\": [\"/crm/*\"]}}],")};
    out = run(curl_https(by_cn.port(), "/v3/mail/send", with_cert));
    EXPECT_NE(out.find("status=401"), std::string::npos) << out;
    EXPECT_NE(out.find("CN names agent by-cn"), std::string::npos) << out;
    EXPECT_EQ(up.request_count(), 1u);
    // A SAN of another kind (a URI: a workload identity) names the holder too: the CN of
    // such a certificate does not make it an agent either.
    proxy_instance uri{tls_config(up.port(), cert("server.pem"), cert("server.key"),
                                  ", \"client_ca_file\": " + q(cert("ca.pem")), "",
                                  "\"agents\": [{\"id\": \"uri-agent\", \"cert_names\": [\"uri-agent\"]}],")};
    out = run(curl_https(uri.port(), "/v3/mail/send", "--cert " + cert("uri-only.pem") + " --key " + cert("uri-only.key")));
    EXPECT_NE(out.find("status=401"), std::string::npos) << out;
    EXPECT_EQ(up.request_count(), 1u);
    // Where identity is optional, a verified certificate that names no agent (its agent
    // removed from the config) is refused as an unknown key is, not let through as nobody.
    proxy_instance optional{tls_config(up.port(), cert("server.pem"), cert("server.key"),
                                       ", \"client_ca_file\": " + q(cert("ca.pem")), "",
                                       "\"agents\": [{\"id\": \"agent-one\", \"cert_names\": [\"agent-one.agents.local\"],"
                                       " \"allow\": {\"paths\": [\"/v3/*\"]}}],")};
    out = run(curl_https(optional.port(), "/crm/x", "--cert " + cert("agent-agent-two.pem") + " --key " +
                                                        cert("agent-agent-two.key")));
    EXPECT_NE(out.find("status=401"), std::string::npos) << out;
    EXPECT_NE(out.find("the client certificate (agent-two.agents.local) names no agent"), std::string::npos) << out;
    // So is one with no name an agent can have (only a URI SAN: a workload identity).
    out = run(curl_https(optional.port(), "/crm/x", "--cert " + cert("uri-only.pem") + " --key " + cert("uri-only.key")));
    EXPECT_NE(out.find("status=401"), std::string::npos) << out;
    EXPECT_NE(out.find("the client certificate has no DNS name"), std::string::npos) << out;
    EXPECT_NE(run(curl_https(optional.port(), "/crm/x")).find("status=200"), std::string::npos)
        << "no certificate, no key: anonymous, as the listener allows";
    EXPECT_EQ(up.request_count(), 2u);
}

// A certificate revocation list (client_crl_file): a revoked agent certificate is refused at
// the handshake, a renewed list is taken by a reload, a broken one leaves the running list,
// and a list without a CRL from the client's CA refuses everyone (fail closed).
TEST(tls_listener, revoked_client_certificates_are_refused) {
    fake_upstream up{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    std::filesystem::copy_file(cert("crl-empty.pem"), dir + "/crl.pem");
    const std::string agents =
        "\"agents\": [{\"id\": \"one\", \"cert_names\": [\"agent-one.agents.local\"]},"
        "{\"id\": \"lost-laptop\", \"cert_names\": [\"revoked.agents.local\"]}],";
    proxy_instance bb{tls_config(up.port(), cert("server.pem"), cert("server.key"),
                                 ", \"client_ca_file\": " + q(cert("ca.pem")) + ", \"require_client_cert\": true," +
                                     " \"client_crl_file\": " + q(dir + "/crl.pem"),
                                 ", \"require_agent\": true", agents)};
    const std::string one = "--cert " + cert("agent-agent-one.pem") + " --key " + cert("agent-agent-one.key");
    const std::string revoked = "--cert " + cert("agent-revoked.pem") + " --key " + cert("agent-revoked.key");
    auto out = run(curl_https(bb.port(), "/x", revoked));
    EXPECT_NE(out.find("status=200"), std::string::npos) << "not revoked yet: " << out;
    // Two keep-alive connections opened before the revocation, one with each certificate.
    keep_alive_tls kept_revoked{bb.port(), cert("ca.pem"), cert("agent-revoked.pem"), cert("agent-revoked.key")};
    keep_alive_tls kept_one{bb.port(), cert("ca.pem"), cert("agent-agent-one.pem"), cert("agent-agent-one.key")};
    EXPECT_EQ(kept_revoked.get("/x").rfind("HTTP/1.1 200", 0), 0u);
    EXPECT_EQ(kept_one.get("/x").rfind("HTTP/1.1 200", 0), 0u);

    // The CA revokes it; the new list is installed and reloaded (what SIGHUP does).
    std::filesystem::copy_file(cert("crl.pem"), dir + "/crl.pem", std::filesystem::copy_options::overwrite_existing);
    EXPECT_TRUE(bb.server().reload_security().empty());
    // The open connection of the revoked certificate is judged again: 401, and closed.
    const auto after = kept_revoked.get("/x");
    EXPECT_EQ(after.rfind("HTTP/1.1 401", 0), 0u) << after;
    EXPECT_NE(after.find("the client certificate is no longer accepted since the TLS files were reloaded "
                         "(certificate revoked)"),
              std::string::npos) << after;
    EXPECT_TRUE(kept_revoked.closed());
    EXPECT_EQ(kept_one.get("/x").rfind("HTTP/1.1 200", 0), 0u) << "still trusted: its connection goes on";
    int rc = 0;
    out = run(curl_https(bb.port(), "/x", revoked), &rc);
    EXPECT_NE(rc, 0) << out;
    EXPECT_EQ(out.find("status=200"), std::string::npos) << "revoked: " << out;
    out = run(curl_https(bb.port(), "/x", one));
    EXPECT_NE(out.find("status=200"), std::string::npos) << out;
    // openssl s_client sees the handshake refused for the revoked certificate (TLS 1.2: the
    // alert comes within the handshake; with 1.3 after the client has finished its part).
    out = run("echo | openssl s_client -connect 127.0.0.1:" + std::to_string(bb.port()) + " -CAfile " + cert("ca.pem") +
              " -cert " + cert("agent-revoked.pem") + " -key " + cert("agent-revoked.key") + " -tls1_2");
    EXPECT_NE(out.find("alert certificate revoked"), std::string::npos) << out;

    // A broken list is refused: the running one stays (the revoked certificate stays out).
    { std::ofstream{dir + "/crl.pem", std::ios::trunc} << "not a CRL"; }
    const auto errors = bb.server().reload_security();
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_NE(errors[0].find("TLS client CRL " + dir + "/crl.pem holds no PEM certificate revocation list"),
              std::string::npos) << errors[0];
    out = run(curl_https(bb.port(), "/x", revoked));
    EXPECT_EQ(out.find("status=200"), std::string::npos) << out;
    out = run(curl_https(bb.port(), "/x", one));
    EXPECT_NE(out.find("status=200"), std::string::npos) << out;

    // A list already past its next update (or not valid yet) is refused at the reload: the
    // running one stays, and says why.
    for (const auto& [last_days, next_days, says] :
         {std::tuple{-2, -1, "is past its next update"}, std::tuple{1, 2, "is not valid until"}}) {
        write_crl(dir + "/crl.pem", last_days, next_days);
        const auto stale = bb.server().reload_security();
        ASSERT_EQ(stale.size(), 1u);
        EXPECT_NE(stale[0].find("the CRL of /CN=breakerbox development CA (TEST ONLY) " + std::string{says}),
                  std::string::npos) << stale[0];
        EXPECT_EQ(kept_one.get("/x").rfind("HTTP/1.1 200", 0), 0u) << "the running list stays";
    }

    // A list from another CA holds no CRL for ours: every client certificate is refused.
    const auto other_ca = temp_dir() + "/other";
    run("bash " + std::string{BB_SOURCE_DIR} + "/certs/make-dev-certs.sh " + other_ca, &rc);
    ASSERT_EQ(rc, 0);
    std::filesystem::copy_file(other_ca + "/crl-empty.pem", dir + "/crl.pem", std::filesystem::copy_options::overwrite_existing);
    EXPECT_TRUE(bb.server().reload_security().empty());
    out = run(curl_https(bb.port(), "/x", one));
    EXPECT_EQ(out.find("status=200"), std::string::npos) << "no CRL of its issuer: " << out;
    EXPECT_EQ(up.request_count(), 8u);
}

// A client certificate that expires while its keep-alive connection stays open stops naming
// its agent there: the handshake verified it once, and requests after its notAfter are
// refused as a new handshake would be (the wall clock here is a manual one, stepped to the
// last second of the certificate's validity, then past it).
TEST(tls_listener, a_client_certificate_that_expires_on_an_open_connection_names_nobody) {
    fake_upstream up{[](const request&) { return respond(200, "ok"); }};
    bb::manual_clock clock;
    const std::string agents = "\"agents\": [{\"id\": \"one\", \"cert_names\": [\"agent-one.agents.local\"]}],";
    proxy_instance bb{tls_config(up.port(), cert("server.pem"), cert("server.key"),
                                 ", \"client_ca_file\": " + q(cert("ca.pem")) + ", \"require_client_cert\": true",
                                 ", \"require_agent\": true", agents),
                      &clock};
    keep_alive_tls kept{bb.port(), cert("ca.pem"), cert("agent-agent-one.pem"), cert("agent-agent-one.key")};
    ASSERT_EQ(kept.get("/x").rfind("HTTP/1.1 200", 0), 0u);
    step_wall_past(clock, {cert("agent-agent-one.pem"), cert("ca.pem")}, std::chrono::seconds{-1});
    ASSERT_EQ(kept.get("/x").rfind("HTTP/1.1 200", 0), 0u) << "valid through its last second";
    step_wall_past(clock, {cert("agent-agent-one.pem"), cert("ca.pem")});
    const auto after = kept.get("/x");
    EXPECT_EQ(after.rfind("HTTP/1.1 401", 0), 0u) << after;
    EXPECT_NE(after.find("expired during this connection"), std::string::npos) << after;
    EXPECT_TRUE(kept.closed());
    EXPECT_EQ(up.request_count(), 2u) << "the two requests before its notAfter";
}

// Plain HTTP sent to a TLS listener (http:// for https://) is told so in plain HTTP, as
// nginx does, rather than met with a bare close.
TEST(tls_listener, plain_http_to_a_tls_listener_gets_a_plain_400) {
    fake_upstream up{[](const request&) { return respond(200, "ok"); }};
    proxy_instance bb{tls_config(up.port(), cert("server.pem"), cert("server.key"))};
    raw_client c{bb.port()};
    c.send("POST /v3/mail/send HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}");
    const auto res = c.read_response();
    EXPECT_EQ(res.result_int(), 400u) << res.body();
    EXPECT_EQ(res["x-breakerbox-decision"], "rejected");
    EXPECT_FALSE(res["x-request-id"].empty());
    EXPECT_NE(res.body().find("\"code\":\"plain_http_on_tls_listener\""), std::string::npos) << res.body();
    EXPECT_TRUE(c.closed_by_server());
    EXPECT_EQ(up.request_count(), 0u);
    // TLS still works on it.
    EXPECT_NE(run(curl_https(bb.port(), "/x", "")).find("status=200"), std::string::npos);
}

// A change to a listener's TLS settings that cannot be built is refused whole, before
// anything of it runs: an operator adding a CRL to revoke a leaked certificate must hear
// that it did not take, not see the change applied while the old context, without the CRL,
// keeps serving. Settings left as they were are not judged (a stale list there is the
// reload's warning, and must not block an unrelated change).
TEST(tls_listener, a_tls_change_that_cannot_be_built_is_refused) {
    fake_upstream up{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    const std::string mtls = ", \"client_ca_file\": " + q(cert("ca.pem")) + ", \"require_client_cert\": true";
    proxy_instance bb{tls_config(up.port(), cert("server.pem"), cert("server.key"), mtls)};
    write_crl(dir + "/crl.pem", 1, 2);  // not valid until tomorrow: cannot be loaded
    auto with_crl = bb::parse_config(tls_config(up.port(), cert("server.pem"), cert("server.key"),
                                                mtls + ", \"client_crl_file\": " + q(dir + "/crl.pem")));
    ASSERT_TRUE(with_crl.errors.empty()) << with_crl.errors.to_string();
    bb::cfg::errors errs;
    bb.server().check_tls_change(*bb.server().current_config(), *with_crl.cfg, errs);
    ASSERT_EQ(errs.size(), 1u);
    EXPECT_NE(errs.to_string().find("listeners[0].tls: "), std::string::npos) << errs.to_string();
    EXPECT_NE(errs.to_string().find("is not valid until"), std::string::npos) << errs.to_string();
    // A key that is not the certificate's: refused too.
    auto wrong_key = bb::parse_config(tls_config(up.port(), cert("server.pem"), cert("wrong-name.key"), mtls));
    ASSERT_TRUE(wrong_key.errors.empty()) << wrong_key.errors.to_string();
    bb::cfg::errors key_errs;
    bb.server().check_tls_change(*bb.server().current_config(), *wrong_key.cfg, key_errs);
    EXPECT_NE(key_errs.to_string().find("key values mismatch"), std::string::npos) << key_errs.to_string();
    // Unchanged settings are not judged, though their files went bad since (a CRL past its
    // next update is the reload's warning; it must not block an unrelated change).
    const std::string crl_cfg = tls_config(up.port(), cert("server.pem"), cert("server.key"),
                                           mtls + ", \"client_crl_file\": " + q(dir + "/ok.pem"));
    write_crl(dir + "/ok.pem", -1, 1);
    proxy_instance with_list{crl_cfg};
    write_crl(dir + "/ok.pem", -2, -1);
    EXPECT_FALSE(with_list.server().reload_security().empty()) << "the list on disk is stale now";
    auto same = bb::parse_config(crl_cfg);
    ASSERT_TRUE(same.errors.empty()) << same.errors.to_string();
    bb::cfg::errors none;
    with_list.server().check_tls_change(*with_list.server().current_config(), *same.cfg, none);
    EXPECT_TRUE(none.empty()) << none.to_string();
}

// The admin API's TLS is judged the same way, and it is the one applied with the change (a
// listener's is built at the next restart): a CRL added to revoke a leaked operator
// certificate that cannot be loaded refuses the change, naming admin.tls, instead of leaving
// the API running without it.
TEST(tls_listener, an_admin_tls_change_that_cannot_be_built_is_refused) {
    fake_upstream up{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    auto with_admin = [&](const std::string& admin_tls_extra) {
        return tls_config(up.port(), cert("server.pem"), cert("server.key"), "", "",
                          "\"admin\": {\"address\": \"127.0.0.1:0\", \"tls\": {\"cert_file\": " + q(cert("server.pem")) +
                              ", \"key_file\": " + q(cert("server.key")) + ", \"client_ca_file\": " + q(cert("ca.pem")) +
                              admin_tls_extra + "}, \"client_certs\": [{\"name\": \"ops\", \"subject_cn\": "
                              "\"agent-one\", \"role\": \"admin\"}]},");
    };
    proxy_instance bb{with_admin("")};
    write_crl(dir + "/crl.pem", 1, 2);  // not valid until tomorrow: cannot be loaded
    auto with_crl = bb::parse_config(with_admin(", \"client_crl_file\": " + q(dir + "/crl.pem")));
    ASSERT_TRUE(with_crl.errors.empty()) << with_crl.errors.to_string();
    bb::cfg::errors errs;
    bb.server().check_tls_change(*bb.server().current_config(), *with_crl.cfg, errs);
    ASSERT_EQ(errs.size(), 1u) << errs.to_string();
    EXPECT_NE(errs.to_string().find("admin.tls: "), std::string::npos) << errs.to_string();
    EXPECT_NE(errs.to_string().find("is not valid until"), std::string::npos) << errs.to_string();
    // Valid from yesterday: the same change is accepted.
    write_crl(dir + "/crl.pem", -1, 1);
    bb::cfg::errors none;
    bb.server().check_tls_change(*bb.server().current_config(), *with_crl.cfg, none);
    EXPECT_TRUE(none.empty()) << none.to_string();
    // TLS added to an admin API running without it (it takes effect at the restart) is built
    // now too: the restart must not be the first to find it cannot be.
    write_crl(dir + "/crl.pem", 1, 2);
    auto plain = bb::parse_config(tls_config(up.port(), cert("server.pem"), cert("server.key"), "", "",
                                             "\"admin\": {\"address\": \"127.0.0.1:0\", \"tokens\": [{\"name\": "
                                             "\"ops\", \"sha256\": \"" + bb::sha256_hex("t") + "\", \"role\": "
                                             "\"admin\"}]},"));
    ASSERT_TRUE(plain.errors.empty()) << plain.errors.to_string();
    bb::cfg::errors added;
    bb.server().check_tls_change(*plain.cfg, *with_crl.cfg, added);
    EXPECT_NE(added.to_string().find("admin.tls: "), std::string::npos) << added.to_string();
}

// Over the connection limit a TLS listener closes the connection: the plain listener's
// canned 503 would reach a TLS client as a broken record ("wrong version number").
TEST(tls_listener, over_the_connection_limit_a_tls_client_is_closed_not_sent_plaintext) {
    fake_upstream up{[](const request&) { return respond(200, "ok"); }};
    proxy_instance bb{tls_config(up.port(), cert("server.pem"), cert("server.key"),
                                 ", \"client_ca_file\": " + q(cert("ca.pem")), "",
                                 "\"limits\": {\"max_connections\": 1},")};
    keep_alive_tls held{bb.port(), cert("ca.pem"), cert("agent-agent-one.pem"), cert("agent-agent-one.key")};
    ASSERT_EQ(held.get("/x").rfind("HTTP/1.1 200", 0), 0u);
    int rc = 0;
    const auto out = run(curl_https(bb.port(), "/x"), &rc);
    EXPECT_NE(rc, 0) << out;
    EXPECT_EQ(out.find("wrong version number"), std::string::npos) << out;
    EXPECT_EQ(out.find("status=200"), std::string::npos) << out;
}

// Where client certificates are verified, no session is resumed: a resumed session brings its
// certificate without the chain it was verified with, and would skip the CRL in force now.
// A listener that verifies no client resumes as usual.
TEST(tls_listener, client_verifying_listeners_resume_no_session) {
    fake_upstream up{[](const request&) { return respond(200, "ok"); }};
    proxy_instance mtls{tls_config(up.port(), cert("server.pem"), cert("server.key"),
                                   ", \"client_ca_file\": " + q(cert("ca.pem")))};
    proxy_instance plain{tls_config(up.port(), cert("server.pem"), cert("server.key"))};
    const auto dir = temp_dir();
    // Two connections, each one HTTP/1.0 request (answered, then closed: s_client reads a
    // TLS 1.3 ticket sent after the handshake before it goes); the second offers the first's
    // session. Returns the second's output.
    auto twice = [&](std::uint16_t port, const std::string& version, const std::string& extra,
                     proxy_instance* reload_between = nullptr) {
        const std::string base = "printf 'GET /x HTTP/1.0\\r\\n\\r\\n' | openssl s_client -ign_eof -connect 127.0.0.1:" +
                                 std::to_string(port) + " -CAfile " + cert("ca.pem") + " " + version + " " + extra;
        std::filesystem::remove(dir + "/s");
        const auto first = run(base + " -sess_out " + dir + "/s");
        EXPECT_NE(first.find("Verify return code: 0 (ok)"), std::string::npos) << first;
        EXPECT_NE(first.find(" 200 OK"), std::string::npos) << "the first connection is served: " << first;
        if (reload_between != nullptr) {
            EXPECT_TRUE(reload_between->server().reload_security().empty());
        }
        return run(base + (std::filesystem::exists(dir + "/s") ? " -sess_in " + dir + "/s" : std::string{}));
    };
    const std::string agent = "-cert " + cert("agent-agent-one.pem") + " -key " + cert("agent-agent-one.key");
    for (const char* version : {"-tls1_2", "-tls1_3"}) {
        const auto again = twice(mtls.port(), version, agent);
        EXPECT_EQ(again.find("Reused,"), std::string::npos) << version << ": " << again;
        EXPECT_NE(again.find(" 200 OK"), std::string::npos) << again;
        const auto resumed = twice(plain.port(), version, "");
        EXPECT_NE(resumed.find("Reused,"), std::string::npos) << version << ": " << resumed;
    }
    // A reload whose files are unchanged (any config apply, a SIGHUP for another listener)
    // keeps the running context, and with it the sessions it can resume.
    const auto across_reload = twice(plain.port(), "-tls1_2", "", &plain);
    EXPECT_NE(across_reload.find("Reused,"), std::string::npos) << across_reload;
}

// A reload that keeps a context whose files are unchanged checks its CRLs' times again: the
// list that was valid when read may be past its next update now (renewal job failed).
TEST(tls_listener, a_kept_context_has_its_crl_times_checked_again) {
    const auto dir = temp_dir();
    bb::tls_files files;
    files.cert_file = cert("server.pem");
    files.key_file = cert("server.key");
    files.client_ca_file = cert("ca.pem");
    files.client_crl_file = cert("crl.pem");
    const auto ctx = bb::proxy::make_server_tls(&files);
    EXPECT_NO_THROW(bb::proxy::check_client_crl_times(*ctx, files));
    // The same context once a CRL in it has lapsed (one added here, as time would make it).
    write_crl(dir + "/stale.pem", -2, -1);
    FILE* f = std::fopen((dir + "/stale.pem").c_str(), "r");
    X509_CRL* stale = PEM_read_X509_CRL(f, nullptr, nullptr, nullptr);
    std::fclose(f);
    ASSERT_NE(stale, nullptr);
    X509_STORE_add_crl(SSL_CTX_get_cert_store(ctx->native_handle()), stale);
    X509_CRL_free(stale);
    try {
        bb::proxy::check_client_crl_times(*ctx, files);
        ADD_FAILURE() << "a lapsed CRL was not reported";
    } catch (const std::exception& e) {
        EXPECT_NE(std::string{e.what()}.find("is past its next update"), std::string::npos) << e.what();
    }
}

TEST(tls_listener, certificates_are_reloaded_without_a_restart) {
    fake_upstream up{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    std::filesystem::copy_file(cert("server.pem"), dir + "/tls.pem");
    std::filesystem::copy_file(cert("server.key"), dir + "/tls.key");
    proxy_instance bb{tls_config(up.port(), dir + "/tls.pem", dir + "/tls.key")};
    EXPECT_NE(run(curl_https(bb.port(), "/x")).find("status=200"), std::string::npos);
    // Renewed files (here: a certificate for another name), then a reload (what SIGHUP does).
    std::filesystem::copy_file(cert("wrong-name.pem"), dir + "/tls.pem", std::filesystem::copy_options::overwrite_existing);
    std::filesystem::copy_file(cert("wrong-name.key"), dir + "/tls.key", std::filesystem::copy_options::overwrite_existing);
    EXPECT_TRUE(bb.server().reload_security().empty());
    auto out = run(curl_https(bb.port(), "/x"));
    EXPECT_EQ(out.find("status=200"), std::string::npos) << "the new certificate (wrong.example) is served: " << out;
    // A broken file is refused and the running certificate stays.
    { std::ofstream{dir + "/tls.key", std::ios::trunc} << "not a key"; }
    EXPECT_FALSE(bb.server().reload_security().empty());
    out = run("curl -sS --max-time 10 --cacert " + cert("ca.pem") + " --resolve wrong.example:" +
              std::to_string(bb.port()) + ":127.0.0.1 -w ' status=%{http_code}' https://wrong.example:" +
              std::to_string(bb.port()) + "/x");
    EXPECT_NE(out.find("status=200"), std::string::npos) << out;
}

// Each listener's files are reloaded on their own: a forward proxy whose CA key broke keeps
// its previous CA, and does not keep the renewed certificate of another listener from
// being served.
TEST(tls_listener, one_listener_with_broken_files_does_not_hold_back_the_others) {
    fake_upstream up{[](const request&) { return respond(200, "ok"); }};
    const auto dir = temp_dir();
    for (const char* f : {"server.pem", "server.key", "ca.pem", "ca.key"}) {
        std::filesystem::copy_file(cert(f), dir + "/" + f);
    }
    std::string cfg = tls_config(up.port(), dir + "/server.pem", dir + "/server.key");
    const std::string end_of_first = "}}],\"upstreams\"";
    ASSERT_NE(cfg.find(end_of_first), std::string::npos);
    cfg.replace(cfg.find(end_of_first), end_of_first.size(),
                "}}, {\"name\": \"fwd\", \"address\": \"127.0.0.1:0\", \"forward_proxy\": {\"ca_cert_file\": " +
                    q(dir + "/ca.pem") + ", \"ca_key_file\": " + q(dir + "/ca.key") + "}}],\"upstreams\"");
    proxy_instance bb{cfg};
    EXPECT_NE(run(curl_https(bb.port(), "/x")).find("status=200"), std::string::npos);
    { std::ofstream{dir + "/ca.key", std::ios::trunc} << "not a key"; }
    std::filesystem::copy_file(cert("wrong-name.pem"), dir + "/server.pem", std::filesystem::copy_options::overwrite_existing);
    std::filesystem::copy_file(cert("wrong-name.key"), dir + "/server.key", std::filesystem::copy_options::overwrite_existing);
    const auto errors = bb.server().reload_security();
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].rfind("listener fwd: ", 0), 0u) << errors[0];
    const auto out = run("curl -sS --max-time 10 --cacert " + cert("ca.pem") + " --resolve wrong.example:" +
                         std::to_string(bb.port()) + ":127.0.0.1 -w ' status=%{http_code}' https://wrong.example:" +
                         std::to_string(bb.port()) + "/x");
    EXPECT_NE(out.find("status=200"), std::string::npos) << "the renewed certificate is served: " << out;
    EXPECT_NE(bb.server().security(1), nullptr);
    EXPECT_NE(bb.server().security(1)->minter, nullptr) << "the forward proxy keeps its previous CA";
}

// ---- forward proxy ----------------------------------------------------------------------

namespace {

// A request whose timeout runs out while its connection is made (a TLS handshake slower than
// the route's timeout) is not written: it could get no answer in time. It used to go out and
// be answered 504 "outcome unknown" at once, while the upstream might act on it.
TEST(upstream_tls, a_request_whose_timeout_ran_out_while_connecting_is_not_sent) {
    fake_upstream api{[](const request&) { return respond(202, "{}"); }, cert("server.pem"), cert("server.key")};
    // A relay that starts passing the handshake on only 300 ms after breakerbox connects.
    const loopback_socket listener{true};
    std::thread relay{[&] {
        const int in = listener.accept();
        if (in < 0) {
            return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds{300});  // the slow handshake
        raw_client out{api.port()};
        pollfd fds[2] = {{in, POLLIN, 0}, {out.fd(), POLLIN, 0}};
        char buf[16384];
        while (::poll(fds, 2, 5000) > 0) {
            const int from = (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0 ? 0 : 1;
            const auto n = ::recv(fds[from].fd, buf, sizeof buf, 0);
            if (n <= 0 || ::send(fds[1 - from].fd, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) {
                break;
            }
        }
        ::close(in);
    }};
    {  // (gone before the join: its idle connection to the relay closes with it)
        proxy_instance bb{"{\"workers\": 1, \"listeners\": [{\"name\": \"t\", \"address\": \"127.0.0.1:0\"}],"
                          "\"upstreams\": [{\"name\": \"api\", \"url\": \"https://localhost:" + std::to_string(listener.port()) +
                          "\", \"ca_file\": " + q(cert("ca.pem")) + ", \"timeout\": \"100ms\", \"connect_timeout\": \"10s\"}],"
                          "\"routes\": [{\"name\": \"send\", \"match\": {\"path_prefix\": \"/\"}, \"upstream\": \"api\"}],"
                          "\"log\": {\"level\": \"warn\", \"access_log\": \"off\"}}"};
        const auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", R"({"to":[1]})",
                                      {{"content-type", "application/json"}});
        EXPECT_EQ(res.result_int(), 503u) << res.body();
        EXPECT_NE(res.body().find("upstream_connect_timeout"), std::string::npos) << res.body();
        EXPECT_NE(res.body().find("nothing was sent"), std::string::npos) << res.body();
    }
    relay.join();
    EXPECT_EQ(api.request_count(), 0u) << "written although no answer could come in time";
}

std::string forward_config(std::uint16_t https_port, const std::string& passthrough = "",
                           const std::string& limits = "", const std::string& routes_before = "",
                           const std::string& upstreams_before = "") {
    return "{\"workers\": 1, " + (limits.empty() ? std::string{} : "\"limits\": " + limits + ", ") +
           "\"listeners\": [{\"name\": \"fwd\", \"address\": \"127.0.0.1:0\","
           " \"forward_proxy\": {\"ca_cert_file\": " + q(cert("ca.pem")) + ", \"ca_key_file\": " + q(cert("ca.key")) +
           ", \"passthrough\": [" + passthrough + "]}}],"
           "\"upstreams\": [" + upstreams_before + "{\"name\": \"api\", \"url\": \"https://localhost:" + std::to_string(https_port) +
           "\", \"ca_file\": " + q(cert("ca.pem")) + "}],"
           "\"routes\": [" + routes_before + "{\"name\": \"api\", \"match\": {\"host\": \"localhost\", \"path_prefix\": \"/\"}, \"upstream\": \"api\"}],"
           "\"agents\": [{\"id\": \"writer\", \"key_sha256\": [\"" + run("printf writer-key | sha256sum | cut -c1-64 | tr -d '\\n'") +
           "\"], \"allow\": {\"methods\": [\"POST\"]}},"
           "{\"id\": \"tunneler\", \"key_sha256\": [\"" + run("printf tunneler-key | sha256sum | cut -c1-64 | tr -d '\\n'") +
           "\"]}],"
           "\"store\": {\"path\": " + q(temp_dir() + "/bb.db") + "},"
           "\"log\": {\"level\": \"warn\", \"access_log\": \"off\"}}";
}

}  // namespace

TEST(forward_proxy, connect_is_intercepted_metered_and_forwarded_over_verified_tls) {
    fake_upstream api{[](const request&) { return respond(202, "{\"sent\":true}"); }, cert("server.pem"), cert("server.key")};
    proxy_instance bb{forward_config(api.port())};
    const std::string proxy = "http://127.0.0.1:" + std::to_string(bb.port());
    // curl trusts only the development CA: the minted certificate for localhost verifies.
    const auto out = run("curl -sS --max-time 10 --proxy " + proxy + " --cacert " + cert("ca.pem") +
                         " -D - -X POST -d '{}' https://localhost:" + std::to_string(api.port()) + "/v3/mail/send");
    EXPECT_NE(out.find("{\"sent\":true}"), std::string::npos) << out;
    EXPECT_NE(out.find("x-breakerbox-decision: allowed"), std::string::npos) << out;
    ASSERT_EQ(api.request_count(), 1u);
    const auto reqs = api.requests();
    const auto& seen = reqs[0].req;
    EXPECT_EQ(seen["x-forwarded-proto"], "https") << "inspected: breakerbox added its forwarding headers";
    EXPECT_FALSE(seen["x-request-id"].empty());
    // The certificate the client saw was minted for the host and signed by the local CA.
    const auto shown = run("curl -sS -v --max-time 10 --proxy " + proxy + " --cacert " + cert("ca.pem") +
                           " https://localhost:" + std::to_string(api.port()) + "/x -o /dev/null");
    EXPECT_NE(shown.find("subject: CN=localhost"), std::string::npos) << shown;
    EXPECT_NE(shown.find("issuer: CN=breakerbox development CA"), std::string::npos) << shown;
    // Credentials on the CONNECT name the agent for every request in the tunnel.
    const auto scoped = run("curl -sS --max-time 10 --proxy " + proxy + " --proxy-header 'Proxy-Authorization: Bearer writer-key'"
                            " --cacert " + cert("ca.pem") + " -w ' status=%{http_code}' https://localhost:" +
                            std::to_string(api.port()) + "/v3/mail/send");
    EXPECT_NE(scoped.find("status=403"), std::string::npos) << scoped;
    EXPECT_NE(scoped.find("agent writer may not use method GET"), std::string::npos) << scoped;
    // The same agent from credentials in the proxy URL, as HTTP_PROXY=http://agent:KEY@host
    // gives them to every client: curl sends them as Proxy-Authorization: Basic.
    const auto in_url = run("curl -sS --max-time 10 --proxy http://writer:writer-key@127.0.0.1:" +
                            std::to_string(bb.port()) + " --cacert " + cert("ca.pem") + " -w ' status=%{http_code}' https://localhost:" +
                            std::to_string(api.port()) + "/v3/mail/send");
    EXPECT_NE(in_url.find("status=403"), std::string::npos) << in_url;
    EXPECT_NE(in_url.find("agent writer may not use method GET"), std::string::npos) << in_url;
    // An unknown key on the CONNECT: the proxy asks for proxy credentials (407).
    const auto bad_key = run("curl -sS --max-time 10 --proxy " + proxy + " --proxy-header 'Proxy-Authorization: Bearer nope'"
                             " --cacert " + cert("ca.pem") + " https://localhost:" + std::to_string(api.port()) + "/x");
    EXPECT_NE(bad_key.find("407"), std::string::npos) << bad_key;
    // Plain HTTP through the proxy (absolute-form) is routed by host too.
    const auto plain = run("curl -sS --max-time 10 --proxy " + proxy + " -w ' status=%{http_code}' http://localhost:" +
                           std::to_string(api.port()) + "/v3/mail/send -X POST -d '{}'");
    EXPECT_NE(plain.find("status=202"), std::string::npos) << plain;
}

// A forward proxy's request is addressed to its host: a route for any host (listed first)
// would forward it to that route's upstream, another API than the one the agent addressed,
// with the credentials it meant for this one. Only routes naming the host take it; a
// request the listener gets directly (origin-form) still takes the route for any host.
// A reload (every admin apply, every SIGHUP) that leaves the CA as it was keeps the minter:
// its leaves are not signed again, one by one, on the workers that meet them first.
TEST(forward_proxy, a_reload_with_the_same_ca_keeps_the_minted_leaves) {
    proxy_instance bb{forward_config(1)};
    const auto before = bb.server().security(0)->minter;
    ASSERT_NE(before, nullptr);
    const auto leaf = before->get("localhost");
    EXPECT_TRUE(bb.server().reload_security().empty());
    const auto after = bb.server().security(0)->minter;
    EXPECT_EQ(after, before);
    EXPECT_EQ(after->get("localhost").cert, leaf.cert);
    EXPECT_EQ(after->cached(), 1u);
}

TEST(forward_proxy, a_request_goes_only_to_a_route_naming_its_destination) {
    fake_upstream api{[](const request&) { return respond(200, "api"); }, cert("server.pem"), cert("server.key")};
    fake_upstream crm{[](const request&) { return respond(200, "crm"); }};
    proxy_instance bb{forward_config(
        api.port(), "", "", R"({"name": "crm", "match": {"path_prefix": "/crm/"}, "upstream": "crm"},)",
        R"({"name": "crm", "url": "http://127.0.0.1:)" + std::to_string(crm.port()) + R"("},)")};
    const std::string proxy = "http://127.0.0.1:" + std::to_string(bb.port());
    auto out = run("curl -sS --max-time 10 --proxy " + proxy + " --cacert " + cert("ca.pem") +
                   " -H 'Authorization: Bearer SG.secret' https://localhost:" + std::to_string(api.port()) +
                   "/crm/v3/objects/contacts");
    EXPECT_EQ(out, "api") << "inside the tunnel to localhost";
    out = run("curl -sS --max-time 10 --proxy " + proxy + " http://localhost:" + std::to_string(api.port()) +
              "/crm/v3/objects/contacts");
    EXPECT_EQ(out, "api") << "absolute-form to localhost";
    EXPECT_EQ(crm.request_count(), 0u);
    ASSERT_EQ(api.request_count(), 2u);
    out = run("curl -sS --max-time 10 http://127.0.0.1:" + std::to_string(bb.port()) + "/crm/v3/objects/contacts");
    EXPECT_EQ(out, "crm") << "not a forward proxy's request";
}

// A passthrough destination that cannot be reached is answered like any failure of ours:
// 502 with a JSON error naming it, a decision and a request id.
TEST(forward_proxy, an_unreachable_passthrough_destination_is_a_502_that_explains_itself) {
    std::uint16_t closed_port = 0;
    {
        fake_upstream gone;  // its port, then nothing listens there
        closed_port = gone.port();
    }
    proxy_instance bb{forward_config(closed_port, q("127.0.0.1:" + std::to_string(closed_port)))};
    raw_client c{bb.port()};
    const std::string dest = "127.0.0.1:" + std::to_string(closed_port);
    c.send("CONNECT " + dest + " HTTP/1.1\r\nHost: " + dest + "\r\n\r\n");
    const auto res = c.read_response();
    EXPECT_EQ(res.result_int(), 502u);
    EXPECT_EQ(res["x-breakerbox-decision"], "unavailable");
    EXPECT_FALSE(res["x-request-id"].empty());
    EXPECT_NE(res.body().find("\"code\":\"connect_failed\""), std::string::npos) << res.body();
    EXPECT_NE(res.body().find(dest), std::string::npos) << res.body();
}

TEST(forward_proxy, unknown_destinations_are_refused_and_passthrough_is_a_blind_tunnel) {
    fake_upstream api{[](const request&) { return respond(200, "direct"); }, cert("server.pem"), cert("server.key")};
    proxy_instance bb{forward_config(api.port(), q("127.0.0.1:" + std::to_string(api.port())))};
    const std::string proxy = "http://127.0.0.1:" + std::to_string(bb.port());
    int rc = 0;
    auto out = run("curl -sS --max-time 10 --proxy " + proxy + " --cacert " + cert("ca.pem") +
                       " https://wrong.example:" + std::to_string(api.port()) + "/x",
                   &rc);
    EXPECT_NE(rc, 0);
    EXPECT_NE(out.find("403"), std::string::npos) << out;
    out = run("curl -sS --max-time 10 --proxy " + proxy + " -w ' status=%{http_code}' http://wrong.example/x");
    EXPECT_NE(out.find("unknown_destination"), std::string::npos) << out;
    EXPECT_NE(out.find("status=403"), std::string::npos) << out;
    EXPECT_EQ(api.request_count(), 0u);
    // 127.0.0.1:port is on the passthrough list: the upstream's own certificate, untouched bytes.
    out = run("curl -sS --max-time 10 --proxy " + proxy + " --cacert " + cert("ca.pem") + " https://127.0.0.1:" +
              std::to_string(api.port()) + "/x");
    EXPECT_EQ(out, "direct");
    ASSERT_EQ(api.request_count(), 1u);
    EXPECT_TRUE(api.requests()[0].req["x-forwarded-for"].empty()) << "a blind tunnel is not inspected";
    // A host without a port on the list means its port 443, not every port of it.
    proxy_instance host_only{forward_config(api.port(), q("127.0.0.1"))};
    out = run("curl -sS --max-time 10 --proxy http://127.0.0.1:" + std::to_string(host_only.port()) + " --cacert " +
                  cert("ca.pem") + " https://127.0.0.1:" + std::to_string(api.port()) + "/x",
              &rc);
    EXPECT_NE(rc, 0) << out;
    EXPECT_NE(out.find("403"), std::string::npos) << out;
    EXPECT_EQ(api.request_count(), 1u);
}

namespace {

// A CONNECT to `target` with these header lines: the client and the answer's head (the
// tunnel's bytes follow on the client).
std::pair<std::unique_ptr<raw_client>, std::string> connect_to(std::uint16_t port, const std::string& target,
                                                               const std::string& credentials) {
    auto c = std::make_unique<raw_client>(port);
    c->send("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n" + credentials + "\r\n");
    std::string head;
    char chunk[512];
    while (head.find("\r\n\r\n") == std::string::npos) {
        const auto n = ::recv(c->fd(), chunk, sizeof chunk, 0);
        if (n <= 0) {
            break;
        }
        head.append(chunk, static_cast<std::size_t>(n));
    }
    return {std::move(c), head};
}

}  // namespace

// A tunnel that carries plain HTTP (curl -p with an http:// URL) is served as plain HTTP,
// inspected and metered like any request, not failed as a bad TLS handshake; a CONNECT
// inside it is refused.
TEST(forward_proxy, a_tunnel_carrying_plain_http_is_served) {
    fake_upstream api{[](const request&) { return respond(200, "api"); }, cert("server.pem"), cert("server.key")};
    fake_upstream crm{[](const request& r) { return respond(200, "crm " + std::string{r.target()}); }};
    const std::string crm_port = std::to_string(crm.port());
    proxy_instance bb{forward_config(
        api.port(), "", "", R"({"name": "crm", "match": {"host": "127.0.0.1", "path_prefix": "/crm/"}, "upstream": "crm"},)",
        R"({"name": "crm", "url": "http://127.0.0.1:)" + crm_port + R"("},)")};
    const std::string proxy = "http://127.0.0.1:" + std::to_string(bb.port());
    const auto out = run("curl -sS --max-time 10 -p --proxy " + proxy + " http://127.0.0.1:" + crm_port + "/crm/v3/x");
    EXPECT_EQ(out, "crm /crm/v3/x") << out;
    EXPECT_EQ(crm.request_count(), 1u);
    // Inside the tunnel, the route's rules apply: a path no route of the host serves is 404.
    const std::string dest = "127.0.0.1:" + crm_port;
    auto [tunnel, head] = connect_to(bb.port(), dest, "");
    ASSERT_EQ(head.rfind("HTTP/1.1 200", 0), 0u) << head;
    raw_client& c = *tunnel;
    c.send("GET /nope HTTP/1.1\r\nHost: " + dest + "\r\n\r\n");
    EXPECT_EQ(c.read_response().result_int(), 404u);
    c.send("CONNECT " + dest + " HTTP/1.1\r\nHost: " + dest + "\r\n\r\n");
    const auto nested = c.read_response();
    EXPECT_EQ(nested.result_int(), 405u);
    EXPECT_NE(nested.body().find("CONNECT inside a tunnel"), std::string::npos) << nested.body();
    EXPECT_EQ(crm.request_count(), 1u);
}

// A route's host at another port is another service (a staging API on 8443): a CONNECT or an
// absolute-form URL to it is not intercepted and sent to the route's upstream, with the
// credentials meant for that service; it is unknown (403), or a passthrough entry's.
TEST(forward_proxy, another_port_of_a_routes_host_is_another_destination) {
    fake_upstream api{[](const request&) { return respond(200, "api"); }, cert("server.pem"), cert("server.key")};
    fake_upstream other{[](const request&) { return respond(200, "other"); }};
    const std::string other_port = std::to_string(other.port());
    proxy_instance bb{forward_config(api.port())};
    const std::string proxy = "http://127.0.0.1:" + std::to_string(bb.port());
    auto [refused_client, refused] = connect_to(bb.port(), "localhost:" + other_port, "");
    EXPECT_EQ(refused.rfind("HTTP/1.1 403", 0), 0u) << refused;
    EXPECT_NE(refused.find("unknown_destination"), std::string::npos) << refused;
    const auto plain = run("curl -sS --max-time 10 --proxy " + proxy + " -w ' status=%{http_code}' http://localhost:" +
                           other_port + "/x");
    EXPECT_NE(plain.find("status=403"), std::string::npos) << plain;
    EXPECT_NE(plain.find("unknown_destination"), std::string::npos) << plain;
    EXPECT_EQ(api.request_count(), 0u);
    EXPECT_EQ(other.request_count(), 0u);
    // The route's own ports still are the route's: the upstream's (here) and 443.
    auto [api_client, intercepted] = connect_to(bb.port(), "localhost:" + std::to_string(api.port()), "");
    EXPECT_EQ(intercepted.rfind("HTTP/1.1 200", 0), 0u) << intercepted;
    // Listed in passthrough, that port is a blind tunnel to the service addressed.
    proxy_instance listed{forward_config(api.port(), q("localhost:" + other_port))};
    auto [tunnel, opened] = connect_to(listed.port(), "localhost:" + other_port, "");
    ASSERT_EQ(opened.rfind("HTTP/1.1 200", 0), 0u) << opened;
    tunnel->send("GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    std::string answer;
    char chunk[512];
    for (ssize_t n; (n = ::recv(tunnel->fd(), chunk, sizeof chunk, 0)) > 0;) {
        answer.append(chunk, static_cast<std::size_t>(n));
    }
    EXPECT_NE(answer.find("other"), std::string::npos) << answer;
    EXPECT_EQ(other.request_count(), 1u);
    EXPECT_EQ(api.request_count(), 0u);
}

// A route's host spelled with the root's trailing dot is the same host to DNS and to the API:
// a passthrough entry spelled so does not make it a blind tunnel around the route's rules.
// (An entry naming the upstream's own host and port, `localhost.:<its port>`, is a config
// error now, config.a_passthrough_entry_may_not_be_an_upstreams_address; a config stored
// before that check still runs with it, applied here as a stored version is read.)
TEST(forward_proxy, a_routes_host_with_a_trailing_dot_is_never_a_blind_tunnel) {
    fake_upstream api{[](const request&) { return respond(200, "api"); }, cert("server.pem"), cert("server.key")};
    const std::string port = std::to_string(api.port());
    const std::string text = forward_config(api.port(), q("localhost.:" + port) + "," + q("LocalHost.:443"));
    auto stored = bb::parse_config(text, true);
    ASSERT_TRUE(stored.errors.empty()) << stored.errors.to_string();
    std::string started = text;  // the same, but for the entry the check refuses now
    started.replace(started.find(q("localhost.:" + port) + ","), q("localhost.:" + port).size() + 1, "");
    proxy_instance bb{started};
    const auto warnings = bb.server().apply_config(stored.cfg);
    EXPECT_TRUE(warnings.empty()) << ::testing::PrintToString(warnings);
    ASSERT_EQ(bb.server().current_config()->listeners[0].forward_proxy->passthrough.size(), 2u) << "the stored entry applies";
    for (const std::string& target : {"localhost.:" + port, std::string{"localhost.:443"}}) {
        auto [client, head] = connect_to(bb.port(), target, "");
        EXPECT_EQ(head.rfind("HTTP/1.1 403", 0), 0u) << target << "\n" << head;
        EXPECT_NE(head.find("unknown_destination"), std::string::npos) << head;
        EXPECT_NE(head.find("trailing dot"), std::string::npos) << head;
    }
    EXPECT_EQ(api.request_count(), 0u);
    // Spelled plainly it is the route's: intercepted.
    auto [client, head] = connect_to(bb.port(), "localhost:" + port, "");
    EXPECT_EQ(head.rfind("HTTP/1.1 200", 0), 0u) << head;
}

// The per-agent kill switch reaches blind tunnels too: a switched-off agent opens none, and
// the ones it has open close (checked every second), while other agents' tunnels stay.
// Two routes on one host, each with its upstream's port (production at one, a beta API at
// another): a request addressed to the beta port that only the production route's path
// matches is no route's, not production's (with the credentials meant for beta).
TEST(forward_proxy, a_request_to_one_port_of_a_host_never_takes_the_route_of_another) {
    fake_upstream api{[](const request&) { return respond(200, "api"); }, cert("server.pem"), cert("server.key")};
    fake_upstream beta{[](const request&) { return respond(200, "beta"); }};
    const std::string beta_port = std::to_string(beta.port());
    proxy_instance bb{forward_config(
        api.port(), "", "",
        R"({"name": "beta", "match": {"host": "localhost", "path_prefix": "/beta"}, "upstream": "beta"},)",
        R"({"name": "beta", "url": "http://localhost:)" + beta_port + R"("},)")};
    const std::string curl = "curl -sS --max-time 10 --proxy http://127.0.0.1:" + std::to_string(bb.port()) +
                             " --proxy-header 'Proxy-Authorization: Bearer tunneler-key' -w ' status=%{http_code}' ";
    const auto to_beta = run(curl + "http://localhost:" + beta_port + "/beta/x");
    EXPECT_NE(to_beta.find("status=200"), std::string::npos) << to_beta;
    const auto not_beta = run(curl + "http://localhost:" + beta_port + "/v1/users");
    EXPECT_EQ(not_beta.find("status=200"), std::string::npos) << not_beta;
    EXPECT_EQ(api.request_count(), 0u) << "a request for the beta port went to production";
    EXPECT_EQ(beta.request_count(), 1u);
    // Tunnelled to 443 (TLS end to end, as the agent asked), a request never goes on in clear
    // text to the beta route's plain-HTTP upstream on another port, whatever its path.
    run(curl + "--cacert " + cert("ca.pem") + " https://localhost/beta/x");
    EXPECT_EQ(beta.request_count(), 1u) << "an https request went on in clear text to the beta port";

    // And the other way: with a route whose upstream is the host at the port addressed (80,
    // the default here), the beta route, bound to its own port, does not take the request
    // although its path matches.
    proxy_instance with_80{forward_config(
        api.port(), "", "",
        R"({"name": "beta", "match": {"host": "localhost", "path_prefix": "/beta"}, "upstream": "beta"},)"
        R"({"name": "web", "match": {"host": "localhost", "path_prefix": "/"}, "upstream": "web"},)",
        R"({"name": "beta", "url": "http://localhost:)" + beta_port + R"("}, {"name": "web", "url": "http://localhost:80"},)")};
    run("curl -sS --max-time 10 --proxy http://127.0.0.1:" + std::to_string(with_80.port()) +
        " --proxy-header 'Proxy-Authorization: Bearer tunneler-key' http://localhost/beta/x");
    EXPECT_EQ(beta.request_count(), 1u) << "a request for port 80 went to the beta port";
}

TEST(forward_proxy, a_switched_off_agent_opens_no_blind_tunnel_and_loses_its_open_ones) {
    fake_upstream api{[](const request&) { return respond(200, "direct"); }, cert("server.pem"), cert("server.key")};
    proxy_instance bb{forward_config(api.port(), q("127.0.0.1:" + std::to_string(api.port())))};
    const std::string target = "127.0.0.1:" + std::to_string(api.port());
    auto open_tunnel = [&](const std::string& credentials) { return connect_to(bb.port(), target, credentials); };
    auto [agent_tunnel, opened] = open_tunnel("Proxy-Authorization: Bearer tunneler-key\r\n");
    ASSERT_EQ(opened.rfind("HTTP/1.1 200", 0), 0u) << opened;
    auto [anonymous_tunnel, opened_too] = open_tunnel("");
    ASSERT_EQ(opened_too.rfind("HTTP/1.1 200", 0), 0u) << opened_too;

    ASSERT_TRUE(bb.server().breakers()->manual_trip("agent/tunneler", "ops", "runaway loop", bb.server().now()));
    // Its open tunnel is closed by the proxy (within the 1 s check; the client waits up to 5 s).
    EXPECT_TRUE(agent_tunnel->closed_by_server());
    // A new one is refused with the kill switch's answer.
    auto [refused_client, refused] = open_tunnel("Proxy-Authorization: Bearer tunneler-key\r\n");
    EXPECT_EQ(refused.rfind("HTTP/1.1 503", 0), 0u) << refused;
    EXPECT_NE(refused.find("agent_disabled"), std::string::npos) << refused;
    EXPECT_NE(refused.find("agent/tunneler"), std::string::npos) << refused;
    // A tunnel nobody identified is not the agent's: it still carries bytes both ways.
    const auto out = run("curl -sS --max-time 10 --proxy http://127.0.0.1:" + std::to_string(bb.port()) + " --cacert " +
                         cert("ca.pem") + " https://" + target + "/x");
    EXPECT_EQ(out, "direct");
    // Reset: the agent tunnels again.
    ASSERT_TRUE(bb.server().breakers()->reset("agent/tunneler", "ops", "fixed", bb.server().now()));
    auto [again, reopened] = open_tunnel("Proxy-Authorization: Bearer tunneler-key\r\n");
    EXPECT_EQ(reopened.rfind("HTTP/1.1 200", 0), 0u) << reopened;
    // An agent held to an allow list (writer: POST only) opens no blind tunnel: nothing in it
    // could be held to that list.
    auto [scoped, scoped_answer] = open_tunnel("Proxy-Authorization: Bearer writer-key\r\n");
    EXPECT_EQ(scoped_answer.rfind("HTTP/1.1 403", 0), 0u) << scoped_answer;
    EXPECT_NE(scoped_answer.find("out_of_scope"), std::string::npos) << scoped_answer;
    EXPECT_NE(scoped_answer.find("may not open a blind tunnel"), std::string::npos) << scoped_answer;
}

// The kill switch's 503 to a CONNECT reports a breaker's containment: it goes out only once
// the saved state holds the switch-off, as on the request path (a crash right after it finds
// the agent switched off).
TEST(forward_proxy, a_switched_off_agents_connect_is_refused_only_once_the_switch_off_is_saved) {
    fake_upstream api{[](const request&) { return respond(200, "direct"); }, cert("server.pem"), cert("server.key")};
    const std::string target = "127.0.0.1:" + std::to_string(api.port());
    proxy_instance bb{forward_config(api.port(), q(target))};
    std::thread client;
    std::shared_ptr<void> resume{nullptr, [&](void*) {
                                     bb.server().pause_breaker_state_writes(false);
                                     if (client.joinable()) {
                                         client.join();
                                     }
                                 }};
    bb.server().pause_breaker_state_writes(true);
    ASSERT_TRUE(bb.server().breakers()->manual_trip("agent/tunneler", "ops", "runaway loop", bb.server().now()));
    std::promise<std::string> answer;
    auto answered = answer.get_future();
    client = std::thread{[&] { answer.set_value(connect_to(bb.port(), target, "Proxy-Authorization: Bearer tunneler-key\r\n").second); }};
    EXPECT_EQ(answered.wait_for(std::chrono::milliseconds{300}), std::future_status::timeout)
        << "refused while the switch-off it reports is not saved";
    resume.reset();
    const auto head = answered.get();
    EXPECT_EQ(head.rfind("HTTP/1.1 503", 0), 0u) << head;
}

// An open blind tunnel is judged again (every second) against the config now running: a
// reload that revokes the key that opened it closes it, while a tunnel nobody identified
// stays; a reload that requires an agent on the listener closes that one too.
TEST(forward_proxy, a_reload_closes_the_blind_tunnels_it_would_refuse_now) {
    fake_upstream api{[](const request&) { return respond(200, "direct"); }, cert("server.pem"), cert("server.key")};
    const std::string target = "127.0.0.1:" + std::to_string(api.port());
    const std::string cfg = forward_config(api.port(), q(target));
    proxy_instance bb{cfg};
    auto open_tunnel = [&](const std::string& credentials) {
        auto [c, head] = connect_to(bb.port(), target, credentials);
        EXPECT_EQ(head.rfind("HTTP/1.1 200", 0), 0u) << head;
        return std::move(c);
    };
    auto reload = [&](const std::string& text) {
        auto next = bb::parse_config(text);
        ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
        bb.server().apply_config(next.cfg);
    };
    auto agent_tunnel = open_tunnel("Proxy-Authorization: Bearer tunneler-key\r\n");
    auto anonymous_tunnel = open_tunnel("");
    // tunneler's key replaced by another digest.
    std::string revoked = cfg;
    const std::string needle = "{\"id\": \"tunneler\", \"key_sha256\": [\"";
    revoked.replace(revoked.find(needle) + needle.size(), 64, std::string(64, 'a'));
    reload(revoked);
    EXPECT_TRUE(agent_tunnel->closed_by_server()) << "the tunnel of a revoked key went on";
    const auto out = run("curl -sS --max-time 10 --proxy http://127.0.0.1:" + std::to_string(bb.port()) + " --cacert " +
                         cert("ca.pem") + " https://" + target + "/x");
    EXPECT_EQ(out, "direct") << "a new anonymous tunnel still opens";
    // An agent required on the listener: the anonymous tunnel closes too.
    std::string required = revoked;
    required.replace(required.find("\"address\": \"127.0.0.1:0\","), 26, "\"address\": \"127.0.0.1:0\", \"require_agent\": true,");
    reload(required);
    EXPECT_TRUE(anonymous_tunnel->closed_by_server()) << "a tunnel nobody identified went on under require_agent";
}

// A blind tunnel is not inspected, but what went through it is logged when it ends: the
// bytes each way, how long it lasted and why it ended, beside the line its opening wrote.
TEST(forward_proxy, a_blind_tunnel_logs_what_went_through_when_it_closes) {
    auto ring = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(64);
    const auto before = spdlog::default_logger();
    auto logger = std::make_shared<spdlog::logger>("test", ring);
    logger->set_level(spdlog::level::info);
    spdlog::set_default_logger(logger);  // before the proxy's threads start, restored after they end
    auto logged = [&] {
        std::string all;
        for (const auto& line : ring->last_formatted()) {
            all += line;
        }
        return all;
    };
    {
        fake_upstream api{[](const request&) { return respond(200, "direct"); }, cert("server.pem"), cert("server.key")};
        const std::string target = "127.0.0.1:" + std::to_string(api.port());
        proxy_instance bb{forward_config(api.port(), q(target))};
        const auto out = run("curl -sS --max-time 10 --proxy http://127.0.0.1:" + std::to_string(bb.port()) + " --cacert " +
                             cert("ca.pem") + " https://" + target + "/x");
        EXPECT_EQ(out, "direct");
        EXPECT_TRUE(bb::test::wait_until([&] { return logged().find(" closed after ") != std::string::npos; }, 5000))
            << logged();
    }
    spdlog::set_default_logger(before);
    const std::string text = logged();
    const auto at = text.find(" closed after ");
    ASSERT_NE(at, std::string::npos) << text;
    const std::string line = text.substr(text.rfind("tunnel ", at), text.find('\n', at) - text.rfind("tunnel ", at));
    EXPECT_NE(line.find("(agent -) -> 127.0.0.1:"), std::string::npos) << line;
    EXPECT_EQ(line.find(": 0 bytes from the client"), std::string::npos) << "the TLS handshake went through it: " << line;
    EXPECT_EQ(line.find(", 0 to it"), std::string::npos) << line;
    EXPECT_NE(line.find("its ends closed it (request "), std::string::npos) << line;
}

// A client that does not trust the forward proxy's CA fails its handshake after its CONNECT
// was answered 200: counted, by kind, and logged as a warning, not lost in the debug log.
TEST(forward_proxy, a_failed_interception_handshake_is_counted) {
    fake_upstream api{[](const request&) { return respond(202, "{}"); }, cert("server.pem"), cert("server.key")};
    proxy_instance bb{forward_config(api.port())};
    int rc = 0;
    const auto out = run("curl -sS --max-time 10 --proxy http://127.0.0.1:" + std::to_string(bb.port()) +
                             " https://localhost:" + std::to_string(api.port()) + "/v3/mail/send 2>&1",
                         &rc);
    EXPECT_NE(rc, 0) << "curl trusted a certificate of the development CA without --cacert: " << out;
    const std::string failed = "breakerbox_tls_handshake_failures_total{kind=\"interception\"} 1\n";
    EXPECT_TRUE(bb::test::wait_until([&] { return bb::proxy::render_metrics(bb.server()).find(failed) != std::string::npos; },
                                     5000))
        << bb::proxy::render_metrics(bb.server());
    EXPECT_NE(bb::proxy::render_metrics(bb.server()).find("breakerbox_tls_handshake_failures_total{kind=\"listener\"} 0\n"),
              std::string::npos);
    EXPECT_EQ(api.request_count(), 0u);
}

// A reload that takes a destination out of passthrough applies at once, though the listener's
// other settings wait for a restart: its open blind tunnels close, and a new CONNECT is
// refused (during an incident, the way to cut an unmetered path without a restart).
TEST(forward_proxy, a_reload_that_removes_a_passthrough_entry_closes_its_tunnels) {
    fake_upstream api{[](const request&) { return respond(200, "direct"); }, cert("server.pem"), cert("server.key")};
    const std::string target = "127.0.0.1:" + std::to_string(api.port());
    const std::string cfg = forward_config(api.port(), q(target));
    proxy_instance bb{cfg};
    auto [tunnel, head] = connect_to(bb.port(), target, "");
    ASSERT_EQ(head.rfind("HTTP/1.1 200", 0), 0u) << head;
    std::string removed = cfg;
    const std::string entry = "\"passthrough\": [" + q(target) + "]";
    removed.replace(removed.find(entry), entry.size(), "\"passthrough\": []");
    auto next = bb::parse_config(removed);
    ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
    const auto warnings = bb.server().apply_config(next.cfg);
    EXPECT_TRUE(warnings.empty()) << ::testing::PrintToString(warnings);
    EXPECT_TRUE(tunnel->closed_by_server()) << "the blind tunnel went on after its entry was removed";
    auto [again, refused] = connect_to(bb.port(), target, "");
    EXPECT_EQ(refused.rfind("HTTP/1.1 403", 0), 0u) << refused;
    // Put back: blind tunnels open again.
    bb.server().apply_config(bb::parse_config(cfg).cfg);
    auto [reopened, ok] = connect_to(bb.port(), target, "");
    EXPECT_EQ(ok.rfind("HTTP/1.1 200", 0), 0u) << ok;
}

// Under require_agent a client that talks to breakerbox as its proxy (a CONNECT, or an
// absolute-form request) and presents no known key gets 407 with Proxy-Authenticate, the
// answer HTTP_PROXY clients know to send proxy credentials for; a request addressed to
// breakerbox itself (origin-form) gets 401 with WWW-Authenticate.
TEST(forward_proxy, missing_credentials_are_asked_for_as_a_proxy_asks) {
    fake_upstream api{[](const request&) { return respond(202, "{}"); }, cert("server.pem"), cert("server.key")};
    std::string cfg = forward_config(api.port());
    cfg.replace(cfg.find("\"address\": \"127.0.0.1:0\","), 26, "\"address\": \"127.0.0.1:0\", \"require_agent\": true,");
    const auto dir = temp_dir();
    const std::string off = "\"access_log\": \"off\"";
    cfg.replace(cfg.find(off), off.size(), "\"access_log\": " + q(dir + "/access.log"));
    proxy_instance bb{cfg};
    const std::string proxy = "http://127.0.0.1:" + std::to_string(bb.port());
    const std::string dest = "localhost:" + std::to_string(api.port());
    auto [tunnel, head] = connect_to(bb.port(), dest, "");
    EXPECT_EQ(head.rfind("HTTP/1.1 407", 0), 0u) << head;
    EXPECT_NE(head.find("Proxy-Authenticate: Bearer realm=\"breakerbox\""), std::string::npos) << head;
    EXPECT_EQ(head.find("WWW-Authenticate"), std::string::npos) << head;
    EXPECT_EQ(api.request_count(), 0u);
    // Absolute-form: 407 too; the same request with the key goes through.
    const auto plain = run("curl -sS -i --max-time 10 --proxy " + proxy + " http://" + dest + "/v3/mail/send -X POST -d '{}'");
    EXPECT_EQ(plain.rfind("HTTP/1.1 407", 0), 0u) << plain;
    EXPECT_NE(plain.find("Proxy-Authenticate: Bearer realm=\"breakerbox\""), std::string::npos) << plain;
    EXPECT_NE(plain.find("\"unauthenticated\""), std::string::npos) << plain;
    const auto keyed = run("curl -sS --max-time 10 --proxy " + proxy + " --proxy-header 'Proxy-Authorization: Bearer writer-key'"
                           " --cacert " + cert("ca.pem") + " -w ' status=%{http_code}' https://" + dest +
                           "/v3/mail/send -X POST -d '{}'");
    EXPECT_NE(keyed.find("status=202"), std::string::npos) << keyed;
    // Origin-form, to breakerbox itself: 401.
    const auto direct = run("curl -sS -i --max-time 10 " + proxy + "/v3/mail/send -H 'Host: localhost' -X POST -d '{}'");
    EXPECT_EQ(direct.rfind("HTTP/1.1 401", 0), 0u) << direct;
    EXPECT_NE(direct.find("WWW-Authenticate: Bearer realm=\"breakerbox\""), std::string::npos) << direct;
    // `OPTIONS *` is asked of breakerbox itself too.
    raw_client star{bb.port()};
    star.send("OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n");
    EXPECT_EQ(star.read_response().result_int(), 401u);
    EXPECT_EQ(api.request_count(), 1u);

    // Each refusal's line says what was asked for: the CONNECT's authority, the absolute
    // URL, the origin-form path.
    bb.stop();  // flushes the log
    std::ifstream in{dir + "/access.log"};
    std::string asked;
    for (std::string line; std::getline(in, line);) {
        if (line.find("\"status\":407") != std::string::npos || line.find("\"status\":401") != std::string::npos) {
            const auto m = line.find("\"method\":");
            asked += line.substr(m, line.find(",\"route\"") - m) + "\n";
        }
    }
    EXPECT_EQ(asked, "\"method\":\"CONNECT\",\"target\":\"" + dest + "\"\n"
                     "\"method\":\"POST\",\"target\":\"http://" + dest + "/v3/mail/send\"\n"
                     "\"method\":\"POST\",\"target\":\"/v3/mail/send\"\n"
                     "\"method\":\"OPTIONS\",\"target\":\"*\"\n");
}

// An intercepted tunnel's identity comes from its CONNECT's key, judged again on every
// request: once a reload revokes the key, or removes every agent, the open tunnel is no
// longer that agent (nor nobody: unscoped, past a kill switch): 401, and nothing more
// reaches the upstream through it.
namespace {

// A tunnel through breakerbox's forward proxy, opened with `credentials`, and TLS inside it
// trusting the development CA that signs the minted certificate.
struct intercepted_tunnel {
    raw_client c;
    std::string opened;  // the head of the CONNECT's answer
    SSL_CTX* ctx = nullptr;
    SSL* ssl = nullptr;

    intercepted_tunnel(std::uint16_t port, const std::string& target, const std::string& credentials) : c{port} {
        c.send("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\nProxy-Authorization: " + credentials +
               "\r\n\r\n");
        opened = read_head([&](char* b, int n) { return static_cast<int>(::recv(c.fd(), b, n, 0)); });
        if (opened.rfind("HTTP/1.1 200", 0) != 0) {
            return;
        }
        ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_load_verify_locations(ctx, cert("ca.pem").c_str(), nullptr);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
        ssl = SSL_new(ctx);
        SSL_set_tlsext_host_name(ssl, "localhost");
        SSL_set_fd(ssl, c.fd());
        if (SSL_connect(ssl) != 1) {
            SSL_free(ssl);
            ssl = nullptr;
        }
    }
    ~intercepted_tunnel() {
        SSL_free(ssl);
        SSL_CTX_free(ctx);
    }
    intercepted_tunnel(const intercepted_tunnel&) = delete;
    intercepted_tunnel& operator=(const intercepted_tunnel&) = delete;

    template <class Recv>
    static std::string read_head(Recv&& recv_some) {
        std::string head;
        char chunk[512];
        while (head.find("\r\n\r\n") == std::string::npos) {
            const int n = recv_some(chunk, static_cast<int>(sizeof chunk));
            if (n <= 0) {
                break;
            }
            head.append(chunk, static_cast<std::size_t>(n));
        }
        return head;
    }
    // POST /v3/mail/send with `headers` (each line ending CRLF); the head of the answer and
    // whatever came with it.
    std::string post(const std::string& target, const std::string& headers = "") {
        const std::string req =
            "POST /v3/mail/send HTTP/1.1\r\nHost: " + target + "\r\n" + headers + "Content-Length: 2\r\n\r\n{}";
        EXPECT_EQ(SSL_write(ssl, req.data(), static_cast<int>(req.size())), static_cast<int>(req.size()));
        return read_head([&](char* b, int n) { return SSL_read(ssl, b, n); });
    }
    // More of the answer, until `text` is in `so_far` or the connection ends.
    std::string read_until(std::string so_far, std::string_view text) {
        char chunk[512];
        for (int n; so_far.find(text) == std::string::npos && (n = SSL_read(ssl, chunk, static_cast<int>(sizeof chunk))) > 0;) {
            so_far.append(chunk, static_cast<std::size_t>(n));
        }
        return so_far;
    }
};

}  // namespace

TEST(forward_proxy, a_revoked_key_ends_the_identity_of_its_open_tunnel) {
    fake_upstream api{[](const request&) { return respond(202, "{}"); }, cert("server.pem"), cert("server.key")};
    const std::string cfg = forward_config(api.port());
    // The reload takes writer's key away (another digest in its place), or every agent.
    std::string revoked = cfg;
    const std::string needle = "\"key_sha256\": [\"";
    revoked.replace(revoked.find(needle) + needle.size(), 64, std::string(64, 'a'));
    std::string no_agents = cfg;
    const auto agents_at = no_agents.find("\"agents\": [");
    no_agents.erase(agents_at, no_agents.find("\"store\"") - agents_at);
    std::size_t sent = 0;
    for (int i = 0; i < 2; ++i) {
        const std::string& reloaded = i == 0 ? revoked : no_agents;
        SCOPED_TRACE(i == 0 ? "key revoked" : "agents removed");
        proxy_instance bb{cfg};
        const std::string target = "localhost:" + std::to_string(api.port());
        intercepted_tunnel t{bb.port(), target, "Bearer writer-key"};
        ASSERT_EQ(t.opened.rfind("HTTP/1.1 200", 0), 0u) << t.opened;
        ASSERT_NE(t.ssl, nullptr);
        auto post = [&] { return t.post(target); };
        const auto first = post();
        EXPECT_EQ(first.rfind("HTTP/1.1 202", 0), 0u) << first;
        ++sent;
        auto next = bb::parse_config(reloaded);
        ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
        bb.server().apply_config(next.cfg);
        const auto second = post();
        EXPECT_EQ(second.rfind("HTTP/1.1 401", 0), 0u) << second;
        EXPECT_NE(second.find("no longer name agent writer"), std::string::npos) << second;
        EXPECT_EQ(api.request_count(), sent);
    }
}

// The CONNECT's credentials name the agent of the whole tunnel: a request in it with another
// agent's key presents two identities, and neither wins (401); the tunnel's own key is fine.
TEST(forward_proxy, a_request_in_a_tunnel_with_another_agents_key_is_refused) {
    fake_upstream api{[](const request&) { return respond(202, "{}"); }, cert("server.pem"), cert("server.key")};
    proxy_instance bb{forward_config(api.port())};
    const std::string target = "localhost:" + std::to_string(api.port());
    {
        intercepted_tunnel t{bb.port(), target, "Bearer writer-key"};
        ASSERT_NE(t.ssl, nullptr) << t.opened;
        const auto answer = t.read_until(t.post(target, "x-breakerbox-key: tunneler-key\r\n"), "present one identity");
        EXPECT_EQ(answer.rfind("HTTP/1.1 401", 0), 0u) << answer;
        EXPECT_NE(answer.find("the agent key names agent tunneler but this tunnel was opened by agent writer: "
                              "present one identity"),
                  std::string::npos)
            << answer;
    }
    intercepted_tunnel t{bb.port(), target, "Bearer writer-key"};
    ASSERT_NE(t.ssl, nullptr) << t.opened;
    const auto same = t.post(target, "x-breakerbox-key: writer-key\r\n");
    EXPECT_EQ(same.rfind("HTTP/1.1 202", 0), 0u) << same;
    EXPECT_EQ(api.request_count(), 1u);
}

// A CONNECT whose head was still coming in when the drain began gets no tunnel: one opened
// then would be cut at the end of the drain, its first request unanswered.
TEST(forward_proxy, a_connect_finished_during_a_drain_is_refused) {
    auto drained = std::make_shared<std::promise<void>>();
    std::shared_future<void> drain_seen = drained->get_future().share();
    fake_upstream api{[drain_seen](const request&) {
                          drain_seen.wait_for(std::chrono::seconds{10});
                          return respond(200, "done");
                      },
                      cert("server.pem"), cert("server.key")};
    proxy_instance bb{forward_config(api.port())};
    const std::string target = "localhost:" + std::to_string(api.port());
    // One request in flight holds the drain open.
    raw_client busy{bb.port()};
    busy.send("GET http://" + target + "/x HTTP/1.1\r\nHost: " + target + "\r\n\r\n");
    ASSERT_TRUE(api.wait_for([&] { return api.request_count() == 1; }));
    // Part of a CONNECT's head; then another connection's request, which the one worker
    // answers itself only after reading those bytes (they were in before it connected).
    raw_client tunnel{bb.port()};
    tunnel.send("CONNECT " + target + " HTTP/1.1\r\n");
    raw_client second{bb.port()};
    second.send("GET http://wrong.example/y HTTP/1.1\r\nHost: wrong.example\r\n\r\n");
    ASSERT_EQ(second.read_response().result_int(), 403u);
    raw_client idle{bb.port()};
    std::thread stopper{[&] { bb.stop(); }};
    const bool idle_closed = idle.closed_by_server();  // the drain has begun
    tunnel.send("Host: " + target + "\r\n\r\n");
    auto res = tunnel.read_response();
    tunnel.close();  // (breakerbox reads a closing connection to its end before it lets go)
    drained->set_value();
    EXPECT_EQ(busy.read_response().body(), "done");
    stopper.join();
    EXPECT_TRUE(idle_closed);
    EXPECT_EQ(res.result_int(), 503u) << res.body();
    EXPECT_NE(res.body().find("\"draining\""), std::string::npos) << res.body();
}

// The 200 that opens a tunnel is breakerbox's own answer: it carries the decision and the
// CONNECT's request id (the client's own when it sent one), intercepted or blind.
TEST(forward_proxy, a_tunnel_opens_with_a_decision_and_the_request_id) {
    fake_upstream api{[](const request&) { return respond(200, "direct"); }, cert("server.pem"), cert("server.key")};
    proxy_instance bb{forward_config(api.port(), q("127.0.0.1:" + std::to_string(api.port())))};
    for (const std::string& target : {"localhost:" + std::to_string(api.port()), "127.0.0.1:" + std::to_string(api.port())}) {
        auto [c, head] = connect_to(bb.port(), target, "X-Request-Id: conn-7\r\n");
        ASSERT_EQ(head.rfind("HTTP/1.1 200", 0), 0u) << head;
        EXPECT_NE(head.find("\r\nx-breakerbox-decision: allowed\r\n"), std::string::npos) << head;
        EXPECT_NE(head.find("\r\nx-request-id: conn-7\r\n"), std::string::npos) << head;
    }
}

// A blind tunnel is bounded like any connection: quiet for limits.idle_timeout, it is closed.
TEST(forward_proxy, an_idle_blind_tunnel_is_closed) {
    fake_upstream api{[](const request&) { return respond(200, "direct"); }, cert("server.pem"), cert("server.key")};
    proxy_instance bb{forward_config(api.port(), q("127.0.0.1:" + std::to_string(api.port())), R"({"idle_timeout": "300ms"})")};
    const std::string target = "127.0.0.1:" + std::to_string(api.port());
    // Timed from before the CONNECT: the tunnel's idle clock cannot start earlier.
    const auto opened = std::chrono::steady_clock::now();
    auto [c, head] = connect_to(bb.port(), target, "");
    ASSERT_EQ(head.rfind("HTTP/1.1 200", 0), 0u) << head;
    EXPECT_TRUE(c->closed_by_server());
    const auto after = std::chrono::steady_clock::now() - opened;
    EXPECT_GE(after, std::chrono::milliseconds{300}) << "not before the idle timeout";
}

TEST(forward_proxy, a_nodejs_client_using_https_proxy) {
    fake_upstream api{[](const request& r) { return respond(202, "node:" + std::string{r["x-forwarded-proto"]}); },
                      cert("server.pem"), cert("server.key")};
    proxy_instance bb{forward_config(api.port())};
    const auto dir = temp_dir();
    // What an HTTPS_PROXY-aware Node agent library does: CONNECT, then TLS over the tunnel,
    // trusting the CA in NODE_EXTRA_CA_CERTS. Only Node's standard library.
    std::ofstream{dir + "/client.js"} << R"JS(
const http = require('http'), tls = require('tls');
const proxy = new URL(process.env.HTTPS_PROXY), target = new URL(process.argv[2]);
const req = http.request({host: proxy.hostname, port: proxy.port, method: 'CONNECT',
                          path: `${target.hostname}:${target.port}`});
req.on('connect', (res, socket) => {
  if (res.statusCode !== 200) { console.log('CONNECT ' + res.statusCode); process.exit(2); }
  const s = tls.connect({socket, servername: target.hostname}, () => {
    s.write(`POST ${target.pathname} HTTP/1.1\r\nHost: ${target.host}\r\nContent-Type: application/json\r\n` +
            `Content-Length: 2\r\nConnection: close\r\n\r\n{}`);
  });
  let data = '';
  s.on('data', d => data += d);
  s.on('end', () => { console.log(data.split('\r\n')[0] + ' ' + data.split('\r\n\r\n')[1]); process.exit(0); });
  s.on('error', e => { console.log('tls error ' + e.message); process.exit(3); });
});
req.on('error', e => { console.log('proxy error ' + e.message); process.exit(4); });
req.end();
setTimeout(() => { console.log('timeout'); process.exit(5); }, 10000);
)JS";
    int rc = 0;
    const auto out = run("HTTPS_PROXY=http://127.0.0.1:" + std::to_string(bb.port()) + " NODE_EXTRA_CA_CERTS=" +
                             cert("ca.pem") + " node " + dir + "/client.js https://localhost:" +
                             std::to_string(api.port()) + "/v3/mail/send",
                         &rc);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("HTTP/1.1 202"), std::string::npos) << out;
    EXPECT_NE(out.find("node:https"), std::string::npos) << out;
}
