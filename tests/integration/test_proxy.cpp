// The data plane through real sockets: breakerbox in-process on 127.0.0.1:0 in front of
// fake upstreams on port 0. No sleeps: every wait is a read with a deadline or a
// condition with a deadline.
#include "proxy/upstream.hpp"
#include "tests/support/fake_upstream.hpp"
#include "tests/support/proxy_fixture.hpp"

#include <gtest/gtest.h>

#include <future>

#include <filesystem>
#include <fstream>

#include <boost/beast/http/write.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <sstream>

using namespace bb::test;
using namespace std::chrono_literals;
namespace http = boost::beast::http;

namespace {

std::string decision(const response& r) {
    return std::string{r["x-breakerbox-decision"]};
}

std::string body_code(const response& r) {
    const auto& b = r.body();
    const auto k = b.find("\"code\":\"");
    if (k == std::string::npos) {
        return {};
    }
    const auto start = k + 8;
    return b.substr(start, b.find('"', start) - start);
}

std::string post_mail(std::string_view body = "{\"personalizations\":[{\"to\":[{\"email\":\"a@example.com\"}]}]}") {
    std::ostringstream ss;
    ss << "POST /v3/mail/send HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\nContent-Length: "
       << body.size() << "\r\n\r\n"
       << body;
    return ss.str();
}

}  // namespace

// ---- framing and limits: a table of raw request bytes -> expected answer ----------------

struct framing_case {
    const char* name;
    std::string raw;
    unsigned status;
    const char* code;  // "" when any code will do
};

void PrintTo(const framing_case& c, std::ostream* os) {
    *os << c.name;
}

class framing : public ::testing::TestWithParam<framing_case> {};

TEST_P(framing, rejects_ambiguous_or_oversized_requests_and_closes) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()), "\"body_bytes\": 1024, \"header_bytes\": 4096, \"header_count\": 20")};
    const auto& c = GetParam();
    raw_client client{bb.port()};
    client.send(c.raw);
    auto res = client.read_response();
    EXPECT_EQ(res.result_int(), c.status) << c.name << "\n" << res;
    if (c.status >= 400) {
        EXPECT_FALSE(res["x-request-id"].empty()) << c.name;
        EXPECT_EQ(res[http::field::content_type], "application/json") << c.name;
        if (*c.code) {
            EXPECT_EQ(body_code(res), c.code) << c.name << ": " << res.body();
        }
        EXPECT_TRUE(client.closed_by_server()) << c.name << ": connection must be closed after a framing error";
        EXPECT_EQ(up.request_count(), 0u) << c.name << ": nothing may reach the upstream";
    }
}

static std::string many_headers(int n) {
    std::string s = "GET / HTTP/1.1\r\nHost: a\r\n";
    for (int i = 0; i < n; ++i) {
        s += "X-H" + std::to_string(i) + ": v\r\n";
    }
    return s + "\r\n";
}

INSTANTIATE_TEST_SUITE_P(
    table, framing,
    ::testing::Values(
        framing_case{"good_get", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 200, ""},
        framing_case{"te_chunked_gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400, "bad_framing"},
        framing_case{"te_xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400, "bad_framing"},
        framing_case{"trace_empty", "TRACE / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 200, ""},
        // Beast would throw while forwarding it: refused before anything meters or holds it.
        framing_case{"trace_with_body", "TRACE / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nA", 400, "bad_framing"},
        framing_case{"trace_chunked", "TRACE / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
                     "bad_framing"},
        // An upstream that reads no body in a GET would take its bytes for a second request.
        framing_case{"get_with_body", "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 38\r\n\r\nDELETE /v3/templates/1 HTTP/1.1\r\nHost: x\r\n\r\n",
                     400, "bad_framing"},
        framing_case{"get_chunked", "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
                     "bad_framing"},
        framing_case{"get_empty_length", "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 200, ""},
        framing_case{"connect_with_body", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 5\r\n\r\nhello", 400,
                     "bad_framing"},
        framing_case{"connect_chunked", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                     400, "bad_framing"},
        framing_case{"te_gzip_chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400, "bad_framing"},
        framing_case{"te_twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_framing"},
        framing_case{"http10_with_te", "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_framing"},
        framing_case{"obs_fold", "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n", 400, "bad_framing"},
        framing_case{"obs_fold_tab", "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n\ttwo\r\n\r\n", 400, "bad_framing"},
        framing_case{"no_host_11", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400, "bad_framing"},
        framing_case{"two_hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad_framing"},
        framing_case{"cl_list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\nhi", 400, "bad_framing"},
        framing_case{"cl_twice", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi", 400, "bad_framing"},
        framing_case{"cl_plus", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nhi", 400, "bad_framing"},
        framing_case{"cl_and_te", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_framing"},
        framing_case{"space_before_colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "bad_framing"},
        framing_case{"bare_lf", "GET / HTTP/1.1\nHost: a\n\n", 400, ""},
        framing_case{"bare_cr", "GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400, "bad_framing"},
        // (A head ended by bare CRs, never by CRLF CRLF: answered now, not at the header timeout.)
        framing_case{"bare_cr_only", "GET / HTTP/1.1\rHost: a\r\r", 400, "bad_framing"},
        framing_case{"bad_request_line", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_request_line"},
        framing_case{"http2_version", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "http_version_not_supported"},
        framing_case{"garbage_version", "GET / FOO\r\nHost: a\r\n\r\n", 400, "bad_request_line"},
        framing_case{"relative_target", "GET foo HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target"},
        framing_case{"dot_dot_segment", "GET /v3/mail/send/../../admin HTTP/1.1\r\nHost: a\r\n\r\n", 400, "ambiguous_path"},
        framing_case{"encoded_dot_dot", "GET /v3/%2e%2E/admin HTTP/1.1\r\nHost: a\r\n\r\n", 400, "ambiguous_path"},
        framing_case{"encoded_slash", "GET /v3/mail%2Fsend HTTP/1.1\r\nHost: a\r\n\r\n", 400, "ambiguous_path"},
        framing_case{"fragment", "POST /v3/mail/send#x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 400, "ambiguous_path"},
        framing_case{"empty_segment", "POST /v3//mail/send HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 400, "ambiguous_path"},
        framing_case{"bad_chunk_size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n", 400, "bad_body"},
        framing_case{"too_many_headers", many_headers(21), 431, "too_many_headers"},
        framing_case{"header_too_large", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(5000, 'x') + "\r\n\r\n", 431, "headers_too_large"},
        framing_case{"head_never_ends_over_limit", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(5000, 'x'), 431, "headers_too_large"},
        framing_case{"body_cl_too_large", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n" + std::string(2000, 'x'), 413, "body_too_large"},
        framing_case{"body_chunked_too_large", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" + std::string(2048, 'x') + "\r\n0\r\n\r\n", 413, "body_too_large"},
        framing_case{"bad_expect", "POST / HTTP/1.1\r\nHost: a\r\nExpect: something\r\nContent-Length: 1\r\n\r\nx", 417, "bad_expect"},
        // (A second Expect line is read too: the first alone met, the second not.)
        framing_case{"second_expect",
                     "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nExpect: x-custom\r\nContent-Length: 1\r\n\r\nx",
                     417, "bad_expect"}),
    [](const auto& info) { return std::string{info.param.name}; });

TEST(limits, header_timeout_answers_408_and_closes) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()), "\"header_timeout\": \"200ms\"")};
    // Timed from before the connection: the server's timer cannot start earlier.
    const auto t0 = std::chrono::steady_clock::now();
    raw_client client{bb.port()};
    client.send("GET / HTTP/1.1\r\nHost: a\r\n");  // never finishes the head
    auto res = client.read_response();
    const auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(res.result_int(), 408u);
    EXPECT_EQ(body_code(res), "header_timeout");
    EXPECT_GE(waited, 200ms);
    EXPECT_TRUE(client.closed_by_server());
}

TEST(limits, body_timeout_answers_408) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()), "\"body_timeout\": \"200ms\"")};
    raw_client client{bb.port()};
    client.send("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc");
    auto res = client.read_response();
    EXPECT_EQ(res.result_int(), 408u);
    EXPECT_EQ(body_code(res), "body_timeout");
    EXPECT_EQ(up.request_count(), 0u);
}

TEST(limits, idle_keepalive_connection_is_closed_silently) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()), "\"idle_timeout\": \"200ms\"")};
    raw_client client{bb.port()};
    client.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    EXPECT_EQ(client.read_response().result_int(), 200u);
    EXPECT_TRUE(client.closed_by_server());  // no 408 on an idle keep-alive connection
    EXPECT_TRUE(client.buffer().empty());
}

TEST(limits, connections_over_the_limit_are_refused_fast) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()), "\"max_connections\": 3")};
    std::vector<std::unique_ptr<raw_client>> held;
    for (int i = 0; i < 3; ++i) {
        held.push_back(std::make_unique<raw_client>(bb.port()));
        held.back()->send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        ASSERT_EQ(held.back()->read_response().result_int(), 200u);
    }
    raw_client extra{bb.port()};
    auto res = extra.read_response();
    EXPECT_EQ(res.result_int(), 503u);
    EXPECT_EQ(body_code(res), "too_many_connections");
    EXPECT_EQ(decision(res), "unavailable");
    // A client that sends its request at once (before the refusal is accepted): closing a
    // socket with that input unread would reset the connection, and the reset can destroy
    // the 503 on its way. The request is read and dropped, and the 503 arrives.
    for (int i = 0; i < 20; ++i) {
        raw_client eager{bb.port()};
        eager.send("POST /v3/mail/send HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + std::string(5000, 'x'));
        auto refused = eager.read_response();
        ASSERT_EQ(refused.result_int(), 503u) << "attempt " << i;
        EXPECT_EQ(body_code(refused), "too_many_connections");
    }
    // Freeing a slot admits the next connection.
    held.pop_back();
    bool admitted = false;
    for (const auto until = std::chrono::steady_clock::now() + std::chrono::seconds{5};
         !admitted && std::chrono::steady_clock::now() < until;) {
        raw_client again{bb.port()};
        again.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        admitted = again.read_response().result_int() == 200;
    }
    EXPECT_TRUE(admitted);
}

TEST(limits, large_body_within_limit_is_forwarded_intact) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()))};
    std::string body(3 * 1024 * 1024, '\0');
    for (std::size_t i = 0; i < body.size(); ++i) {
        body[i] = static_cast<char>((i * 131) & 0xff);
    }
    auto res = http_request(bb.port(), http::verb::post, "/upload", body, {{"content-type", "application/octet-stream"}});
    EXPECT_EQ(res.result_int(), 200u);
    ASSERT_EQ(up.request_count(), 1u);
    EXPECT_EQ(up.requests()[0].req.body(), body);
}

// The access log shows the target without the credentials a query string may carry.
TEST(access_log, query_credentials_are_redacted) {
    fake_upstream up;
    const auto dir = temp_dir();
    const std::string cfg =
        "{\"listeners\": [{\"name\": \"t\", \"address\": \"127.0.0.1:0\"}], \"workers\": 1,"
        "\"upstreams\": [{\"name\": \"up\", \"url\": \"" + local_url(up.port()) + "\"}],"
        "\"routes\": [{\"name\": \"crm\", \"match\": {\"path_prefix\": \"/contacts/\"}, \"upstream\": \"up\"}],"
        "\"log\": {\"access_log\": \"" + dir + "/access.log\", \"level\": \"warn\"}}";
    proxy_instance bb{cfg};
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/contacts/v1/lists?hapikey=hub-secret-2&count=5").result_int(),
              200u);
    ASSERT_EQ(up.requests()[0].req.target(), "/contacts/v1/lists?hapikey=hub-secret-2&count=5") << "forwarded as sent";
    // User information longer than the logged part of the target, and in a CONNECT target.
    const std::string token = "tok" + std::string(2100, 'Z');
    {
        raw_client c{bb.port()};
        c.send("GET http://user:" + token + "@crm.test/contacts/v1/x HTTP/1.1\r\nHost: crm.test\r\n\r\n");
        c.read_response();
    }
    {
        raw_client c{bb.port()};
        c.send("CONNECT alice:s3cret-pw@api.hubspot.com:443 HTTP/1.1\r\nHost: api.hubspot.com:443\r\n\r\n");
        c.read_response();
    }
    bb.stop();  // flushes the log
    std::ifstream in{dir + "/access.log"};
    const std::string log{std::istreambuf_iterator<char>{in}, {}};
    EXPECT_EQ(log.find("hub-secret-2"), std::string::npos) << log;
    EXPECT_EQ(log.find("ZZZZZZZZ"), std::string::npos) << "the user information cut at 2 KiB was not redacted";
    EXPECT_EQ(log.find("s3cret-pw"), std::string::npos) << log;
    EXPECT_NE(log.find("\"target\":\"/contacts/v1/lists?hapikey=[redacted]&count=5\""), std::string::npos) << log;
}

// ---- routing ---------------------------------------------------------------------------

TEST(routing, no_route_is_404_json_and_keeps_the_connection) {
    fake_upstream up;
    const std::string cfg =
        "{\"listeners\": [{\"name\": \"t\", \"address\": \"127.0.0.1:0\"}], \"workers\": 1,"
        "\"upstreams\": [{\"name\": \"up\", \"url\": \"" + local_url(up.port()) + "\"}],"
        "\"routes\": ["
        " {\"name\": \"exact\", \"match\": {\"path\": \"/v3/mail/send\", \"methods\": [\"POST\"]}, \"upstream\": \"up\"},"
        " {\"name\": \"crm\", \"match\": {\"host\": \"crm.test\", \"path_prefix\": \"/crm/\"}, \"upstream\": \"up\"}],"
        "\"log\": {\"access_log\": \"off\", \"level\": \"warn\"}}";
    proxy_instance bb{cfg};
    raw_client client{bb.port()};
    auto expect = [&](std::string raw, unsigned status) {
        client.send(raw);
        auto res = client.read_response();
        EXPECT_EQ(res.result_int(), status) << raw;
        return res;
    };
    auto nf = expect("GET /v3/mail/send HTTP/1.1\r\nHost: a\r\n\r\n", 404);  // wrong method
    EXPECT_EQ(decision(nf), "rejected");
    EXPECT_EQ(body_code(nf), "no_route");
    EXPECT_NE(nf.body().find("\"request_id\":\"" + std::string{nf["x-request-id"]} + "\""), std::string::npos);
    expect("POST /v3/mail/send/extra HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 404);  // exact path only
    expect(post_mail(), 200);
    expect("GET /crm/x HTTP/1.1\r\nHost: other.test\r\n\r\n", 404);  // wrong host
    expect("GET /crm/x HTTP/1.1\r\nHost: CRM.test:8080\r\n\r\n", 200);  // host is case-insensitive, port ignored
    expect("GET http://crm.test/crm/abs HTTP/1.1\r\nHost: ignored\r\n\r\n", 200);  // absolute-form routes on its authority
    // The fully qualified form is the same host: it must not miss the route naming it.
    expect("GET /crm/fqdn HTTP/1.1\r\nHost: crm.test.:8080\r\n\r\n", 200);
    expect("GET /crm/x HTTP/1.1\r\nHost: crm.test..\r\n\r\n", 404);
    ASSERT_EQ(up.request_count(), 4u);
    EXPECT_EQ(up.requests()[2].req.target(), "/crm/abs");
    EXPECT_EQ(up.connections_accepted(), 1u);  // one client connection, one pooled upstream connection
    // User information in an absolute-form authority (by RFC 3986 the host is after the @,
    // a parser reading the text before the last colon sees crm.test), or no host: 400.
    for (const std::string target : {"http://crm.test:80@evil.example/crm/x", "http://user@crm.test/crm/x",
                                     "http:///crm/x", "http://crm.test?x=1"}) {
        raw_client other{bb.port()};
        other.send("GET " + target + " HTTP/1.1\r\nHost: crm.test\r\n\r\n");
        auto res = other.read_response();
        EXPECT_EQ(res.result_int(), 400u) << target;
        EXPECT_EQ(body_code(res), "bad_target") << target;
    }
    EXPECT_EQ(up.request_count(), 4u);
}

// Rails, Laravel and Symfony act on `_method` in a form body (a POST that deletes): refused
// like the query parameter and the headers, with the connection kept.
TEST(routing, method_override_in_a_form_body_is_refused) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()))};
    raw_client client{bb.port()};
    auto post = [&](std::string_view type, std::string_view body) {
        client.send("POST /v3/contacts HTTP/1.1\r\nHost: a\r\nContent-Type: " + std::string{type} +
                    "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + std::string{body});
        return client.read_response();
    };
    const std::string urlencoded = "application/x-www-form-urlencoded";
    for (const std::string body : {"id=7&_method=DELETE", "id=7&%5Fmethod=delete", "_HttpMethod=PATCH", "a=1;_METHOD=PUT"}) {
        const auto res = post(urlencoded, body);
        EXPECT_EQ(res.result_int(), 400) << body;
        EXPECT_EQ(body_code(res), "method_override") << body << ": " << res.body();
    }
    const std::string mp = "multipart/form-data; boundary=XyZ";
    const auto res = post(mp, "--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n");
    EXPECT_EQ(res.result_int(), 400);
    EXPECT_EQ(body_code(res), "method_override") << res.body();
    // Rack reads a POST body without a Content-Type as a form, and multipart/mixed too; a
    // Content-Type named in Connection is gone before anything reads the body.
    for (const auto& raw : {std::string{"POST /v3/contacts HTTP/1.1\r\nHost: a\r\nContent-Length: 19\r\n\r\nid=7&_method=DELETE"},
                            std::string{"POST /v3/contacts HTTP/1.1\r\nHost: a\r\nConnection: content-type\r\nContent-Type: "
                                        "application/json\r\nContent-Length: 19\r\n\r\nid=7&_method=DELETE"}}) {
        client.send(raw);
        const auto untyped = client.read_response();
        EXPECT_EQ(untyped.result_int(), 400) << raw;
        EXPECT_EQ(body_code(untyped), "method_override") << untyped.body();
    }
    const auto mixed = post("multipart/mixed; boundary=XyZ",
                            "--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n");
    EXPECT_EQ(mixed.result_int(), 400);
    EXPECT_EQ(body_code(mixed), "method_override") << mixed.body();
    EXPECT_EQ(up.request_count(), 0u) << "nothing may reach the upstream";
    // Names that only look like it, and the same text in a value or a JSON body, pass.
    EXPECT_EQ(post(urlencoded, "x_method=DELETE&note=_method%3DDELETE").result_int(), 200);
    EXPECT_EQ(post(mp, "--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n_method=DELETE\r\n--XyZ--\r\n").result_int(), 200);
    EXPECT_EQ(post("application/json", R"({"_method":"DELETE"})").result_int(), 200);
    EXPECT_EQ(up.request_count(), 3u);
    // Compressed, a form's fields cannot be read (an upstream that inflates request bodies
    // would find `_method` there): refused on every route, rules or not.
    client.send("POST /v3/contacts HTTP/1.1\r\nHost: a\r\nContent-Type: " + urlencoded +
                "\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd");
    const auto gz = client.read_response();
    EXPECT_EQ(gz.result_int(), 415);
    EXPECT_EQ(body_code(gz), "unsupported_content_encoding") << gz.body();
    EXPECT_EQ(post(urlencoded, "id=7").result_int(), 200) << "the connection stays";
    // So is any multipart type (Rack reads multipart/mixed as a form). (An untyped compressed
    // body is forwarded on a route without rules: caps.a_compressed_body_on_a_route_with_rules_is_415.)
    client.send("POST /v3/contacts HTTP/1.1\r\nHost: a\r\nContent-Type: multipart/mixed; boundary=b\r\n"
                "Content-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd");
    const auto hidden = client.read_response();
    EXPECT_EQ(hidden.result_int(), 415);
    EXPECT_EQ(body_code(hidden), "unsupported_content_encoding") << hidden.body();
    // An untyped JSON body is not read as a form: the same text inside passes.
    client.send("POST /v3/contacts HTTP/1.1\r\nHost: a\r\nContent-Length: 28\r\n\r\n{\"html\":\"a&amp;_method=put\"}");
    EXPECT_EQ(client.read_response().result_int(), 200);
    EXPECT_EQ(up.request_count(), 5u);
}

// ---- what the upstream sees and what the client gets back ------------------------------

TEST(proxying, hop_by_hop_headers_are_removed_and_forwarding_headers_added) {
    fake_upstream up{[](const request&) {
        auto b = respond(201, "{\"id\":1}");
        b.res.set("Connection", "x-secret-hop");
        b.res.set("X-Secret-Hop", "no");
        b.res.set("Keep-Alive", "timeout=5");
        b.res.set("Proxy-Authenticate", "Basic");
        b.res.set("X-End-To-End", "yes");
        b.res.insert("Via", "1.1 cdn");  // two hops on two lines: both kept, ours after them
        b.res.insert("Via", "1.1 lb");
        return b;
    }};
    proxy_instance bb{make_config(local_url(up.port()))};
    raw_client client{bb.port()};
    client.send(
        "POST /v3/mail/send HTTP/1.1\r\nHost: agents.local\r\nConnection: keep-alive, X-Drop-Me\r\nX-Drop-Me: 1\r\n"
        "Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\nProxy-Authorization: Bearer s3cret\r\n"
        "Proxy-Connection: keep-alive\r\nX-Forwarded-For: 10.1.1.1\r\nVia: 1.1 edge\r\nX-Keep: kept\r\n"
        "X_Forwarded_For: 6.6.6.6\r\nX_Forwarded_Proto: https\r\nForwarded: for=6.6.6.6;proto=https\r\n"
        "X-Real-IP: 6.6.6.6\r\nX-Forwarded-Port: 443\r\nX-Forwarded-Ssl: on\r\nX_Custom_Field: kept\r\n"
        "Expect: \r\n"
        "X-Breakerbox-Key: agent-secret\r\nContent-Length: 2\r\n\r\n{}");
    auto res = client.read_response();
    ASSERT_EQ(res.result_int(), 201u);
    EXPECT_EQ(res["X-End-To-End"], "yes");
    EXPECT_EQ(res.count("X-Secret-Hop"), 0u);
    EXPECT_EQ(res.count(http::field::keep_alive), 0u);
    EXPECT_EQ(res.count(http::field::proxy_authenticate), 0u);
    EXPECT_EQ(res[http::field::via], "1.1 cdn, 1.1 lb, 1.1 breakerbox");
    EXPECT_EQ(res.count(http::field::via), 1u);
    EXPECT_EQ(decision(res), "allowed");
    EXPECT_EQ(res.body(), "{\"id\":1}");

    const auto reqs = up.requests();
    ASSERT_EQ(reqs.size(), 1u);
    EXPECT_EQ(reqs[0].req.count("x-breakerbox-key"), 0u) << "breakerbox's key header, even with no agents configured";
    const auto& seen = reqs[0].req;
    for (auto name : {"X-Drop-Me", "Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Authorization", "Proxy-Connection"}) {
        EXPECT_EQ(seen.count(name), 0u) << name << " must not be forwarded";
    }
    // What an upstream would take as breakerbox's word about the client, the client's own:
    // (And an empty Expect asks nothing: served, not 417.)
    for (auto name : {"X_Forwarded_For", "X_Forwarded_Proto", "Forwarded", "X-Real-IP", "X-Forwarded-Port",
                      "X-Forwarded-Ssl"}) {
        EXPECT_EQ(seen.count(name), 0u) << name << " from the client must not pass as breakerbox's";
    }
    EXPECT_EQ(seen["X_Custom_Field"], "kept");
    EXPECT_EQ(seen["X-Keep"], "kept");
    EXPECT_EQ(seen["X-Forwarded-For"], "10.1.1.1, 127.0.0.1");
    EXPECT_EQ(seen["X-Forwarded-Proto"], "http");
    EXPECT_EQ(seen["X-Forwarded-Host"], "agents.local");
    EXPECT_EQ(seen[http::field::via], "1.1 edge, 1.1 breakerbox");
    EXPECT_EQ(seen[http::field::host], "127.0.0.1:" + std::to_string(up.port()));
    EXPECT_EQ(seen["x-request-id"].size(), 32u);
    EXPECT_EQ(seen["x-request-id"], res["x-request-id"]);
    EXPECT_EQ(seen.body(), "{}");
}

TEST(proxying, request_id_from_the_client_is_kept) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()))};
    auto res = http_request(bb.port(), http::verb::get, "/x", "", {{"x-request-id", "agent-run-42"}});
    EXPECT_EQ(res.result_int(), 200u);
    ASSERT_EQ(up.request_count(), 1u);
    EXPECT_EQ(up.requests()[0].req["x-request-id"], "agent-run-42");
    EXPECT_EQ(res["x-request-id"], "agent-run-42");
}

TEST(proxying, chunked_request_and_chunked_response_are_reframed) {
    fake_upstream up{[](const request&) {
        return respond_raw(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            false);
    }};
    proxy_instance bb{make_config(local_url(up.port()))};
    raw_client client{bb.port()};
    client.send("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
    auto res = client.read_response();
    ASSERT_EQ(res.result_int(), 200u);
    EXPECT_EQ(res.body(), "hello world");
    EXPECT_EQ(res[http::field::content_length], "11");
    ASSERT_EQ(up.request_count(), 1u);
    EXPECT_EQ(up.requests()[0].req.body(), "abcde");
    EXPECT_EQ(up.requests()[0].req[http::field::content_length], "5");
    EXPECT_EQ(up.requests()[0].req.count(http::field::transfer_encoding), 0u);
}

// Trailer fields of an upstream's chunked response are not headers (RFC 9110 6.5.2): a
// Set-Cookie trailer must not become a cookie at the client.
TEST(proxying, upstream_trailers_do_not_become_response_headers) {
    fake_upstream up{[](const request&) {
        return respond_raw(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nX-Head: 1\r\n\r\n"
            "2\r\nok\r\n0\r\nX-Trail: 1\r\nSet-Cookie: evil=1\r\n\r\n",
            false);
    }};
    proxy_instance bb{make_config(local_url(up.port()))};
    auto res = http_request(bb.port(), http::verb::get, "/x");
    ASSERT_EQ(res.result_int(), 200u);
    EXPECT_EQ(res.body(), "ok");
    EXPECT_EQ(res["x-head"], "1");
    EXPECT_EQ(res.count(http::field::set_cookie), 0u);
    EXPECT_EQ(res.count("x-trail"), 0u);
}

// Chunk extensions and trailers sit in the input buffer until their line ends; they are
// held to the header limits (431) rather than buffered for as long as the client sends.
TEST(limits, chunk_extensions_and_trailers_are_held_to_the_header_limits) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()), "\"header_bytes\": 4096, \"header_count\": 20")};
    {
        raw_client client{bb.port()};
        client.send("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;x=");
        const std::string flood(64 * 1024, 'a');
        for (int i = 0; i < 4; ++i) {
            client.send(flood);  // 256 KiB of one chunk extension, no CRLF
        }
        auto res = client.read_response();
        EXPECT_EQ(res.result_int(), 431u);
        EXPECT_NE(res.body().find("chunk_metadata_too_large"), std::string::npos) << res.body();
    }
    {
        raw_client client{bb.port()};
        std::string trailers;
        for (int i = 0; i < 30; ++i) {
            trailers += "X-T" + std::to_string(i) + ": " + std::string(100, 'v') + "\r\n";  // 30 > 20 fields
        }
        client.send("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n" + trailers + "\r\n");
        EXPECT_EQ(client.read_response().result_int(), 431u);
    }
    {
        raw_client client{bb.port()};
        client.send("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;name=value\r\nab\r\n0\r\nX-Ok: 1\r\n\r\n");
        EXPECT_EQ(client.read_response().result_int(), 200u) << "ordinary extensions and trailers still pass";
    }
    // One trailer field longer than Beast can store (its field sizes are 16-bit: it throws,
    // and the throw used to end the process), yet within the old buffer cap: 431.
    {
        raw_client client{bb.port()};
        client.send("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nX-Big: " +
                    std::string(66000, 'v') + "\r\n\r\n");
        EXPECT_EQ(client.read_response().result_int(), 431u);
    }
    {
        raw_client client{bb.port()};
        client.send("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok");
        EXPECT_EQ(client.read_response().result_int(), 200u) << "still serving";
    }
    EXPECT_EQ(up.request_count(), 2u);
}

// With header_bytes above 64 KiB a head may be that large, but no one field can be (Beast
// stores its size in 16 bits and throws): 431, not a dropped connection.
TEST(proxying, a_head_field_longer_than_beast_stores_is_refused_with_an_answer) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()), "\"header_bytes\": 262144")};
    {
        raw_client client{bb.port()};
        client.send("GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(66000, 'v') + "\r\n\r\n");
        const auto res = client.read_response();
        EXPECT_EQ(res.result_int(), 431u);
        EXPECT_NE(res.body().find("header_too_large"), std::string::npos) << res.body();
    }
    {
        // A large head of ordinary fields still passes.
        raw_client client{bb.port()};
        std::string fields;
        for (int i = 0; i < 3; ++i) {
            fields += "X-F" + std::to_string(i) + ": " + std::string(30000, 'v') + "\r\n";
        }
        client.send("GET /x HTTP/1.1\r\nHost: a\r\n" + fields + "\r\n");
        EXPECT_EQ(client.read_response().result_int(), 200u);
    }
    EXPECT_EQ(up.request_count(), 1u);
}

TEST(proxying, head_response_keeps_content_length_without_a_body) {
    fake_upstream up{[](const request&) {
        return respond_raw("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n", false);
    }};
    proxy_instance bb{make_config(local_url(up.port()))};
    raw_client client{bb.port()};
    client.send("HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n");
    auto res = client.read_response(true);
    ASSERT_EQ(res.result_int(), 200u);
    EXPECT_EQ(res[http::field::content_length], "1234");
    // And the connection is still in sync: a second request works.
    client.send("HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n");
    EXPECT_EQ(client.read_response(true).result_int(), 200u);
}

TEST(proxying, expect_100_continue_is_answered_then_body_forwarded) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()))};
    raw_client client{bb.port()};
    client.send("POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    auto interim = client.read_response();
    EXPECT_EQ(interim.result_int(), 100u);
    client.send("data");
    auto res = client.read_response();
    EXPECT_EQ(res.result_int(), 200u);
    ASSERT_EQ(up.request_count(), 1u);
    EXPECT_EQ(up.requests()[0].req.body(), "data");
    EXPECT_EQ(up.requests()[0].req.count(http::field::expect), 0u);
}

// RFC 9110 10.1.1: an HTTP/1.0 client cannot read an interim response; the expectation is
// ignored and the one response is the final one.
TEST(proxying, expect_100_continue_from_an_http_1_0_client_is_ignored) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()))};
    raw_client client{bb.port()};
    client.send("POST /x HTTP/1.0\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\ndata");
    auto res = client.read_response();
    EXPECT_EQ(res.result_int(), 200u) << "no 100 first";
    ASSERT_EQ(up.request_count(), 1u);
    EXPECT_EQ(up.requests()[0].req.body(), "data");
}

TEST(proxying, pipelined_requests_are_answered_in_order) {
    fake_upstream up{[](const request& r) { return respond(200, std::string{r.target()}); }};
    proxy_instance bb{make_config(local_url(up.port()))};
    raw_client client{bb.port()};
    client.send("GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\nGET /three HTTP/1.1\r\nHost: a\r\n\r\n");
    EXPECT_EQ(client.read_response().body(), "/one");
    EXPECT_EQ(client.read_response().body(), "/two");
    EXPECT_EQ(client.read_response().body(), "/three");
}

// Requests pipelined while a slow exchange runs: the client watch reads them into the
// session's buffer (it must, to notice a close behind them) and they are served in order.
TEST(proxying, requests_pipelined_during_a_slow_exchange_are_answered_in_order) {
    fake_upstream up{[](const request& r) {
        auto b = respond(200, std::string{r.target()});
        if (r.target() == "/one") {
            b.delay = std::chrono::milliseconds{300};  // past the watch's 50 ms grace
        }
        return b;
    }};
    proxy_instance bb{make_config(local_url(up.port()))};
    raw_client client{bb.port()};
    client.send("GET /one HTTP/1.1\r\nHost: a\r\n\r\n");
    ASSERT_TRUE(up.wait_for([&] { return up.request_count() == 1; }));
    client.send("GET /two HTTP/1.1\r\nHost: a\r\n\r\nGET /three HTTP/1.1\r\nHost: a\r\n\r\n");
    EXPECT_EQ(client.read_response().body(), "/one");
    EXPECT_EQ(client.read_response().body(), "/two");
    EXPECT_EQ(client.read_response().body(), "/three");
    EXPECT_EQ(up.connections_closed_by_peer(), 0u);
}

// A close the client did not ask for (max_requests_per_connection here), with a request
// pipelined behind the last answered one: the answer arrives whole, then the close. Closing
// over the unread request would send RST, which throws away what of the answer is still in
// the kernel's buffers.
TEST(proxying, a_connection_limit_with_requests_pipelined_behind_it_delivers_the_last_answer) {
    const std::string big(4 * 1024 * 1024, 'x');
    fake_upstream up{[&](const request&) { return respond(200, big); }};
    proxy_instance bb{make_config(local_url(up.port()), "\"max_requests_per_connection\": 1")};
    raw_client client{bb.port()};
    client.send("GET /one HTTP/1.1\r\nHost: a\r\n\r\n");
    // The next request once the answer is being written: it waits unread in the kernel.
    char chunk[16384];
    while (client.buffer().size() < 64 * 1024) {
        const auto n = ::recv(client.fd(), chunk, sizeof chunk, 0);
        ASSERT_GT(n, 0);
        client.buffer().append(chunk, static_cast<std::size_t>(n));
    }
    client.send("GET /two HTTP/1.1\r\nHost: a\r\n\r\n");
    const auto res = client.read_response();
    EXPECT_EQ(res.result_int(), 200u);
    EXPECT_EQ(res.body().size(), big.size());
    EXPECT_EQ(res[http::field::connection], "close");
    EXPECT_TRUE(client.closed_by_server());
    EXPECT_EQ(up.request_count(), 1u);
}

TEST(proxying, http10_client_without_keepalive_gets_a_closed_connection) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()))};
    raw_client client{bb.port()};
    client.send("GET /x HTTP/1.0\r\n\r\n");
    auto res = client.read_response();
    EXPECT_EQ(res.result_int(), 200u);
    EXPECT_TRUE(client.closed_by_server());
}

TEST(proxying, upstream_base_path_is_prefixed) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()) + "/base/")};
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/v1/x?q=1").result_int(), 200u);
    ASSERT_EQ(up.request_count(), 1u);
    EXPECT_EQ(up.requests()[0].req.target(), "/base/v1/x?q=1");
}

// ---- keep-alive pools ------------------------------------------------------------------

TEST(pool, upstream_connections_are_reused) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()), "", "", "", 1)};
    raw_client client{bb.port()};
    for (int i = 0; i < 20; ++i) {
        client.send(i % 2 ? post_mail() : std::string{"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"});
        ASSERT_EQ(client.read_response().result_int(), i % 2 ? 200u : 200u);
    }
    EXPECT_EQ(up.request_count(), 20u);
    EXPECT_EQ(up.connections_accepted(), 1u);
}

// A request that is never retried goes out on a pooled connection only if that connection
// was used within upstreams[].write_reuse_within (default 2s, which the test above stays
// within): an upstream closing an idle connection just as a POST is written to it would make
// the POST's outcome unknown. With 0s every POST takes a new connection, while GETs (retried
// on a new one if the pooled one is dead) still reuse theirs.
TEST(pool, a_post_reuses_only_a_connection_used_within_write_reuse_within) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()), "", "\"write_reuse_within\": \"0s\"", "", 1)};
    raw_client client{bb.port()};
    for (int i = 0; i < 3; ++i) {
        client.send(post_mail());
        ASSERT_EQ(client.read_response().result_int(), 200u);
    }
    EXPECT_EQ(up.connections_accepted(), 3u);
    for (int i = 0; i < 3; ++i) {
        client.send("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        ASSERT_EQ(client.read_response().result_int(), 200u);
    }
    EXPECT_EQ(up.connections_accepted(), 3u) << "the GETs reuse the last POST's connection";
    EXPECT_EQ(up.request_count(), 6u);
}

TEST(pool, a_connection_the_upstream_closed_while_idle_is_not_used) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()), "", "", "", 1)};
    raw_client client{bb.port()};
    client.send(post_mail());
    ASSERT_EQ(client.read_response().result_int(), 200u);
    up.close_idle_connections();
    // A POST must not be sent down the dead pooled connection (it could not be retried).
    client.send(post_mail());
    auto res = client.read_response();
    EXPECT_EQ(res.result_int(), 200u) << res;
    EXPECT_EQ(up.request_count(), 2u);
    EXPECT_EQ(up.connections_accepted(), 2u);
}

TEST(pool, connection_close_from_upstream_is_not_reused) {
    fake_upstream up{[](const request&) {
        auto b = respond(200, "{}");
        b.close_after = true;
        return b;
    }};
    proxy_instance bb{make_config(local_url(up.port()), "", "", "", 1)};
    raw_client client{bb.port()};
    for (int i = 0; i < 3; ++i) {
        client.send("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        ASSERT_EQ(client.read_response().result_int(), 200u);
    }
    EXPECT_EQ(up.connections_accepted(), 3u);
}

// A process out of file descriptors cannot connect to its upstream: that is our limit, not
// the upstream's fault. 503 as for a full pool, and no failure on the upstream's health
// record (counted as one, it tripped upstream/<name> and paused every agent).
TEST(pool, out_of_file_descriptors_is_our_overload_not_an_upstream_failure) {
    fake_upstream up;
    auto cfg = make_config(local_url(up.port()), "", R"("health": {"consecutive_failures": 1, "cooldown": "10s"})", "", 1);
    const std::string catch_all = "\"path_prefix\": \"/\"}";
    cfg.replace(cfg.find(catch_all), catch_all.size(), "\"path_prefix\": \"/ok\"}");
    // A store of its own: a run that tripped upstream/up must not leave it open for the next.
    cfg.insert(1, "\"store\": {\"path\": \"" + temp_dir() + "/bb.db\"}, ");
    proxy_instance bb{cfg};
    raw_client client{bb.port()};
    client.send("GET /nope HTTP/1.1\r\nHost: a\r\n\r\n");
    ASSERT_EQ(client.read_response().result_int(), 404u);  // accepted, kept alive, no upstream yet
    // Every descriptor the soft limit allows is taken (bounded: the limit is lowered first).
    rlimit was{};
    ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &was), 0);
    rlimit low = was;
    low.rlim_cur = std::min<rlim_t>(was.rlim_cur, 4096);
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
    std::vector<int> taken;
    for (int fd; taken.size() < 4096 && (fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) {
        taken.push_back(fd);
    }
    const int open_errno = errno;
    client.send("POST /v3/mail/send HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    auto res = client.read_response();
    for (const int fd : taken) {
        ::close(fd);
    }
    ::setrlimit(RLIMIT_NOFILE, &was);
    ASSERT_EQ(open_errno, EMFILE);
    EXPECT_EQ(res.result_int(), 503u) << res.body();
    EXPECT_EQ(body_code(res), "upstream_overloaded");
    EXPECT_FALSE(res["retry-after"].empty());
    const auto health = bb.server().breakers()->get("upstream/up", bb.server().now());
    EXPECT_TRUE(!health || health->st == bb::breakers::state::closed) << "our descriptors tripped the upstream";
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/ok").result_int(), 200u);
    EXPECT_EQ(up.request_count(), 1u);
}

TEST(pool, max_connections_per_worker_gives_503_when_exhausted) {
    fake_upstream up{[](const request& r) {
        auto b = respond(200, "{}");
        if (r.target() == "/slow") {
            b.delay = 1500ms;
        }
        return b;
    }};
    proxy_instance bb{make_config(local_url(up.port()), "", "\"max_connections\": 1", "", 1)};
    raw_client slow{bb.port()};
    slow.send("GET /slow HTTP/1.1\r\nHost: a\r\n\r\n");
    ASSERT_TRUE(up.wait_for([&] { return up.request_count() == 1; }));
    auto res = http_request(bb.port(), http::verb::get, "/fast");
    EXPECT_EQ(res.result_int(), 503u);
    EXPECT_EQ(body_code(res), "upstream_overloaded");
    EXPECT_EQ(slow.read_response().result_int(), 200u);
}

// ---- upstream failures -----------------------------------------------------------------

TEST(upstream_failure, refused_connection_is_502) {
    std::uint16_t dead_port;
    {
        fake_upstream gone;
        dead_port = gone.port();
    }
    proxy_instance bb{make_config(local_url(dead_port))};
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", "{}");
    EXPECT_EQ(res.result_int(), 502u);
    EXPECT_EQ(body_code(res), "upstream_connect_failed");
    EXPECT_EQ(decision(res), "unavailable");
}

// A listening socket on 127.0.0.1, port 0, with this accept backlog: its fd (-1 when it
// could not be made) and its port.
static std::pair<int, std::uint16_t> listen_on_loopback(int backlog) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, backlog) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        return {-1, 0};
    }
    return {fd, ntohs(addr.sin_port)};
}

TEST(upstream_failure, connect_timeout_is_503) {
    // A listener whose accept queue is full drops further SYNs, so connect() hangs: the
    // loopback stand-in for an unreachable host.
    const auto [lfd, port] = listen_on_loopback(0);
    ASSERT_GE(lfd, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    std::vector<int> fillers;
    for (int i = 0; i < 4; ++i) {
        int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
        fillers.push_back(fd);
    }
    proxy_instance bb{make_config(local_url(port), "", "\"connect_timeout\": \"300ms\"")};
    const auto t0 = std::chrono::steady_clock::now();
    auto res = http_request(bb.port(), http::verb::get, "/x");
    const auto took = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(res.result_int(), 503u) << res;
    EXPECT_EQ(body_code(res), "upstream_connect_timeout");
    EXPECT_FALSE(res[http::field::retry_after].empty());
    EXPECT_GE(took, 250ms);
    for (int fd : fillers) {
        ::close(fd);
    }
    ::close(lfd);
}

TEST(upstream_failure, reset_before_headers_on_post_is_outcome_unknown_and_not_retried) {
    fake_upstream up{[](const request&) {
        behaviour b;
        b.what = behaviour::kind::reset_before_headers;
        return b;
    }};
    proxy_instance bb{make_config(local_url(up.port()))};
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", "{}");
    EXPECT_EQ(res.result_int(), 502u);
    EXPECT_EQ(body_code(res), "upstream_outcome_unknown");
    EXPECT_EQ(up.request_count(), 1u) << "a POST that may have reached the upstream is never retried";
}

// An upstream that answers a large upload before reading it (a 413, a 401 for a revoked key)
// and closes with the body unread: the proxy's write fails on the reset, but the answer came
// first. The client gets that answer, not 502 upstream_outcome_unknown, and the upstream's
// health is not charged a failure for it.
TEST(upstream_failure, an_answer_before_the_body_was_read_is_delivered) {
    const auto [lfd, port] = listen_on_loopback(4);
    ASSERT_GE(lfd, 0);
    std::thread upstream{[lfd] {
        const int fd = ::accept(lfd, nullptr, nullptr);
        if (fd < 0) {
            return;
        }
        std::string head;
        char buf[4096];
        while (head.find("\r\n\r\n") == std::string::npos) {
            const auto n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0) {
                break;
            }
            head.append(buf, static_cast<std::size_t>(n));
        }
        const std::string answer = "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                                   "Content-Length: 19\r\nConnection: close\r\n\r\n{\"error\":\"too big\"}";
        (void)!::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
        ::close(fd);  // with most of the body unread: the kernel answers the rest with a reset
    }};
    proxy_instance bb{make_config("http://127.0.0.1:" + std::to_string(port), "\"body_bytes\": 16777216")};
    const std::string body = "{\"v\":\"" + std::string(12 * 1024 * 1024, 'x') + "\"}";
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", body, {{"content-type", "application/json"}});
    upstream.join();
    ::close(lfd);
    EXPECT_EQ(res.result_int(), 413u) << res.body();
    EXPECT_EQ(res.body(), "{\"error\":\"too big\"}");
    EXPECT_EQ(res["x-breakerbox-decision"], "allowed");
}

TEST(upstream_failure, reset_before_headers_on_get_is_502) {
    fake_upstream up{[](const request&) {
        behaviour b;
        b.what = behaviour::kind::reset_before_headers;
        return b;
    }};
    proxy_instance bb{make_config(local_url(up.port()))};
    auto res = http_request(bb.port(), http::verb::get, "/x");
    EXPECT_EQ(res.result_int(), 502u);
    EXPECT_EQ(body_code(res), "upstream_reset");
}

TEST(upstream_failure, reset_mid_body_never_becomes_a_fake_complete_response) {
    fake_upstream up{[](const request&) {
        behaviour b;
        b.what = behaviour::kind::reset_mid_body;
        b.raw = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\":";
        return b;
    }};
    proxy_instance bb{make_config(local_url(up.port()))};
    raw_client client{bb.port()};
    client.send(post_mail());
    auto res = client.read_response();
    EXPECT_NE(res.result_int(), 200u) << "a truncated upstream body must not be passed off as complete";
    EXPECT_EQ(res.result_int(), 502u);
    EXPECT_EQ(body_code(res), "upstream_outcome_unknown");
}

TEST(upstream_failure, slow_upstream_is_504_within_ten_percent_of_the_timeout) {
    fake_upstream up{[](const request&) {
        auto b = respond(200, "{}");
        b.delay = 3s;
        return b;
    }};
    proxy_instance bb{make_config(local_url(up.port()), "", "", "\"timeout\": \"500ms\"")};
    // Timed from the client, so a stall of the test's own threads on a loaded machine adds
    // to one round: every round ends by the timeout (not the upstream's 3 s), and the best
    // of three is within 10% of it.
    auto best = std::chrono::milliseconds::max();
    for (int round = 0; round < 3; ++round) {
        const auto t0 = std::chrono::steady_clock::now();
        auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", "{}");
        const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
        EXPECT_EQ(res.result_int(), 504u);
        // A POST: it may have been carried out, and the code says so (not a plain timeout to retry).
        EXPECT_EQ(body_code(res), "upstream_outcome_unknown");
        EXPECT_GE(took.count(), 500);
        EXPECT_LT(took.count(), 2500) << "the timeout, not the upstream's answer, must end it";
        best = std::min(best, took);
    }
    EXPECT_LE(best.count(), 550) << "504 must come within 10% of the configured timeout";
    auto get = http_request(bb.port(), http::verb::get, "/x");
    EXPECT_EQ(get.result_int(), 504u);
    EXPECT_EQ(body_code(get), "upstream_timeout");
}

TEST(upstream_failure, badly_framed_response_is_502_and_the_connection_is_not_reused) {
    int n = 0;
    fake_upstream up{[&n](const request&) {
        if (n++ == 0) {
            return respond_raw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", false);
        }
        return respond(200, "{}");
    }};
    proxy_instance bb{make_config(local_url(up.port()), "", "", "", 1)};
    raw_client client{bb.port()};
    client.send("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    auto res = client.read_response();
    EXPECT_EQ(res.result_int(), 502u);
    EXPECT_EQ(body_code(res), "upstream_bad_response");
    client.send("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    EXPECT_EQ(client.read_response().result_int(), 200u);
    EXPECT_EQ(up.connections_accepted(), 2u);
}

// The same answer to a POST: the upstream answered after reading the whole request, so the
// mail may be out. The client is told the outcome is unknown, not a plain 502 to retry.
TEST(upstream_failure, a_bad_answer_to_a_post_is_an_unknown_outcome) {
    fake_upstream up{[](const request&) {
        return respond_raw("HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", false);
    }};
    proxy_instance bb{make_config(local_url(up.port()), "", "", "", 1)};
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", "{}");
    EXPECT_EQ(res.result_int(), 502u);
    EXPECT_EQ(body_code(res), "upstream_outcome_unknown") << res.body();
    EXPECT_NE(res.body().find("may have been carried out"), std::string::npos) << res.body();
    EXPECT_EQ(up.request_count(), 1u);
}

// Answers the upstream gave after acting on the request reach the client (a 502 would
// invite a second send), but their connection carries no other request: a 204 announcing a
// body (read bodiless, the body would answer the next request), a 304 announcing chunks, and
// chunking in HTTP/1.0.
TEST(upstream_failure, a_response_whose_framing_forbids_reuse_is_delivered_and_its_connection_closed) {
    for (const char* raw : {"HTTP/1.1 204 No Content\r\nContent-Length: 40\r\n\r\n",
                            "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
                            "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"}) {
        int n = 0;
        fake_upstream up{[&n, raw](const request&) {
            return n++ == 0 ? respond_raw(raw, false) : respond(200, "{}");  // the upstream keeps it open
        }};
        proxy_instance bb{make_config(local_url(up.port()), "", "", "", 1)};
        raw_client client{bb.port()};
        client.send("POST /v3/mail/send HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}");
        auto first = client.read_response();
        EXPECT_TRUE(first.result_int() < 300u || first.result_int() == 304u) << raw << first;
        client.send("POST /v3/mail/send HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}");
        auto second = client.read_response();
        EXPECT_EQ(second.result_int(), 200u) << raw << second;
        EXPECT_EQ(second.body(), "{}") << raw;
        EXPECT_EQ(up.connections_accepted(), 2u) << raw;
    }
}

struct bad_response_case {
    const char* name;
    const char* raw;
};

void PrintTo(const bad_response_case& c, std::ostream* os) {
    *os << c.name;
}

class bad_upstream_framing : public ::testing::TestWithParam<bad_response_case> {};

TEST_P(bad_upstream_framing, is_502) {
    const std::string raw = GetParam().raw;
    fake_upstream up{[raw](const request&) { return respond_raw(raw, true); }};
    proxy_instance bb{make_config(local_url(up.port()))};
    auto res = http_request(bb.port(), http::verb::get, "/x");
    EXPECT_EQ(res.result_int(), 502u) << GetParam().name;
}

INSTANTIATE_TEST_SUITE_P(
    table, bad_upstream_framing,
    ::testing::Values(bad_response_case{"cl_list", "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nab"},
                      bad_response_case{"cl_and_te", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
                      bad_response_case{"te_gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nab"},
                      bad_response_case{"garbage", "NOT HTTP AT ALL\r\n\r\n"},
                      bad_response_case{"bad_chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"},
                      bad_response_case{"status_099", "HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n"},
                      bad_response_case{"status_600", "HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n"}),
    [](const auto& info) { return std::string{info.param.name}; });

TEST(upstream_failure, client_disconnect_closes_the_upstream_side) {
    fake_upstream up{[](const request&) {
        behaviour b;
        b.what = behaviour::kind::hang;
        return b;
    }};
    proxy_instance bb{make_config(local_url(up.port()))};
    {
        raw_client client{bb.port()};
        client.send("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        ASSERT_TRUE(up.wait_for([&] { return up.request_count() == 1; }));
    }  // the client hangs up while the upstream is still working
    EXPECT_TRUE(up.wait_for([&] { return up.connections_closed_by_peer() == 1; }, 3s))
        << "breakerbox must close the upstream connection when its client leaves";
}

// A client that half-closes after sending a POST still waits for the answer; the POST is
// already at the upstream, so cancelling it would only lose that answer and invite a retry
// (a second send). It runs to its end and the answer is delivered.
TEST(upstream_failure, a_half_closed_client_still_gets_the_answer_to_a_post_already_sent) {
    fake_upstream up{[](const request&) {
        auto b = respond(200, "done");
        b.delay = std::chrono::milliseconds{300};  // past the watch's grace
        return b;
    }};
    proxy_instance bb{make_config(local_url(up.port()))};
    raw_client client{bb.port()};
    client.send("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab");
    ASSERT_TRUE(up.wait_for([&] { return up.request_count() == 1; }));
    client.shutdown_write();
    auto res = client.read_response();
    EXPECT_EQ(res.result_int(), 200u);
    EXPECT_EQ(res.body(), "done");
    EXPECT_EQ(up.request_count(), 1u);
}

// ---- TLS to the upstream ---------------------------------------------------------------

#ifndef BB_TEST_CERTS_DIR
#error "BB_TEST_CERTS_DIR must point at the certificates made by certs/make-dev-certs.sh"
#endif

static std::string cert(const char* name) {
    return std::string{BB_TEST_CERTS_DIR} + "/" + name;
}

TEST(upstream_tls, verified_tls_with_sni_works) {
    fake_upstream up{nullptr, cert("server.pem"), cert("server.key")};
    proxy_instance bb{make_config("https://localhost:" + std::to_string(up.port()), "",
                                  "\"ca_file\": \"" + cert("ca.pem") + "\"")};
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", "{}");
    EXPECT_EQ(res.result_int(), 200u) << res;
    ASSERT_EQ(up.request_count(), 1u);
    EXPECT_EQ(up.requests()[0].req[http::field::host], "localhost:" + std::to_string(up.port()));
}

// A lowered limits.upstream_body_bytes holds from the next request: the kept pool's limit
// is the new one.
TEST(limits, a_reload_lowers_the_upstream_response_limit) {
    fake_upstream up{[](const request&) { return respond(200, std::string(4000, 'x')); }};
    proxy_instance bb{make_config(local_url(up.port()))};
    EXPECT_EQ(http_request(bb.port(), http::verb::get, "/big").result_int(), 200u);
    auto next = bb::parse_config(make_config(local_url(up.port()), "\"upstream_body_bytes\": 2048"));
    ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
    bb.server().apply_config(next.cfg);
    const auto res = http_request(bb.port(), http::verb::get, "/big");
    EXPECT_EQ(res.result_int(), 502u) << res;
    EXPECT_EQ(body_code(res), "upstream_response_too_large");
}

// A POST whose upstream answered 2xx with a body over the limit was carried out: the client
// is told so, not "unknown" (which invites a retry, a second send); a 5xx's stays unknown.
TEST(limits, a_post_answered_2xx_over_the_response_limit_is_told_it_was_carried_out) {
    unsigned status = 202;
    fake_upstream up{[&status](const request&) { return respond(status, std::string(4000, 'x')); }};
    proxy_instance bb{make_config(local_url(up.port()), "\"upstream_body_bytes\": 2048")};
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", "{}");
    EXPECT_EQ(res.result_int(), 502u) << res;
    EXPECT_EQ(body_code(res), "upstream_succeeded_response_too_large") << res.body();
    EXPECT_NE(res.body().find("the upstream answered 202, so the request was carried out: do not send it again"),
              std::string::npos)
        << res.body();
    status = 500;
    res = http_request(bb.port(), http::verb::post, "/v3/mail/send", "{}");
    EXPECT_EQ(body_code(res), "upstream_outcome_unknown") << res.body();
    EXPECT_NE(res.body().find("the upstream answered 500, so the request may have been carried out"), std::string::npos)
        << res.body();
    EXPECT_EQ(body_code(http_request(bb.port(), http::verb::get, "/big")), "upstream_response_too_large");
}

// Upstream response bodies in memory are bounded for the whole process: while one 600 KiB
// response is being read (its upstream stalls halfway), a second GET whose 600 KiB would pass
// the 1 MiB bound is dropped unread (503 response_buffers_full, no verdict on the upstream),
// while a POST's response is still relayed (its request has acted). Once the first
// exchange ends, the room is back.
TEST(limits, response_bodies_in_memory_are_bounded_across_connections) {
    const std::string big(600 * 1024, 'x');
    fake_upstream up{[&](const request& r) {
        if (r.target() == "/stalled") {
            return respond_raw("HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(big.size()) + "\r\n\r\n" +
                                   big.substr(0, 1000),
                               false);  // the rest never comes
        }
        return respond(200, big);
    }};
    std::string cfg = make_config(local_url(up.port()),
                                  "\"upstream_body_bytes\": 1048576, \"upstream_buffered_bytes\": 1048576",
                                  "\"timeout\": \"30s\"");
    // An error-ratio rule on the GETs' route: a response dropped for our memory bound is no
    // upstream error, and must not trip it.
    cfg.insert(cfg.rfind('}'),
               ", \"failure_modes\": [{\"id\": \"outage\", \"title\": \"Outage\", \"severity\": \"sev2\"}],"
               "\"breakers\": [{\"id\": \"errors\", \"action\": \"pause\", \"reset\": \"manual\"}],"
               "\"rules\": [{\"id\": \"error-ratio\", \"route\": \"all\", \"measure\": \"status:5xx\", \"window\": \"5m\","
               "\"ratio\": {\"max\": 0.5, \"min_volume\": 1}, \"failure_mode\": \"outage\", \"trips\": \"errors\"}],"
               "\"store\": {\"path\": \"" + temp_dir() + "/bb.db\"}");
    proxy_instance bb{cfg};
    const auto& memory = *bb.server().response_memory();
    raw_client stalled{bb.port()};
    stalled.send("GET /stalled HTTP/1.1\r\nHost: x\r\n\r\n");
    for (int i = 0; i < 2000 && memory.used() == 0; ++i) {  // bounded: until its length is held
        ::poll(nullptr, 0, 5);
    }
    ASSERT_EQ(memory.used(), big.size()) << "the stalled response's declared length is held";

    auto res = http_request(bb.port(), http::verb::get, "/list");
    EXPECT_EQ(res.result_int(), 503u) << res;
    EXPECT_EQ(body_code(res), "response_buffers_full");
    EXPECT_FALSE(res[http::field::retry_after].empty());
    EXPECT_EQ(memory.refused(), 1u);
    const auto errors = bb.server().breakers()->get("errors", bb.server().now());
    EXPECT_TRUE(!errors || errors->st == bb::breakers::state::closed) << "our own 503 tripped an error-ratio rule";
    res = http_request(bb.port(), http::verb::post, "/v3/mail/send", "{}");
    EXPECT_EQ(res.result_int(), 200u) << "a write's response is relayed all the same";
    EXPECT_EQ(res.body().size(), big.size());

    stalled.close();  // the client leaves: the stalled exchange is cancelled, its room given back
    for (int i = 0; i < 2000 && memory.used() != 0; ++i) {
        ::poll(nullptr, 0, 5);
    }
    EXPECT_EQ(memory.used(), 0u);
    res = http_request(bb.port(), http::verb::get, "/list");
    EXPECT_EQ(res.result_int(), 200u) << res;
    EXPECT_EQ(res.body().size(), big.size());
    for (int i = 0; i < 2000 && memory.used() != 0; ++i) {  // the session lets go just after the write
        ::poll(nullptr, 0, 5);
    }
    EXPECT_EQ(memory.used(), 0u) << "given back once relayed";
}

TEST(limits, the_response_memory_bound_is_at_least_one_response) {
    const auto parsed = bb::parse_config(make_config("http://127.0.0.1:1", "\"upstream_buffered_bytes\": 4096"));
    EXPECT_NE(parsed.errors.to_string().find("limits.upstream_buffered_bytes: must be at least limits.upstream_body_bytes"),
              std::string::npos)
        << parsed.errors.to_string();
    // Unset, it follows a larger upstream_body_bytes (a config from before it existed starts).
    const auto large = bb::parse_config(make_config("http://127.0.0.1:1", "\"upstream_body_bytes\": 1073741824"));
    ASSERT_TRUE(large.errors.empty()) << large.errors.to_string();
    EXPECT_EQ(large.cfg->limits.upstream_buffered_bytes, 1073741824u);
}

// A CA taken out of the file stops being trusted at the next reload, same file name or not.
TEST(upstream_tls, a_reload_reads_a_changed_ca_file_again) {
    fake_upstream up{nullptr, cert("server.pem"), cert("server.key")};
    const std::string ca = temp_dir() + "/ca.pem";
    std::filesystem::copy_file(cert("ca.pem"), ca);
    const std::string cfg = make_config("https://localhost:" + std::to_string(up.port()), "", "\"ca_file\": \"" + ca + "\"");
    proxy_instance bb{cfg};
    EXPECT_EQ(http_request(bb.port(), http::verb::post, "/v3/mail/send", "{}").result_int(), 200u);
    std::filesystem::copy_file(cert("self-signed.pem"), ca, std::filesystem::copy_options::overwrite_existing);
    auto next = bb::parse_config(cfg);
    ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
    bb.server().apply_config(next.cfg);
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", "{}");
    EXPECT_EQ(res.result_int(), 502u) << res;
    EXPECT_EQ(body_code(res), "upstream_tls_error");
    EXPECT_EQ(up.request_count(), 1u);
    // A file without a certificate is a config error, not a silent empty trust store.
    { std::ofstream{ca, std::ios::trunc} << "not a certificate\n"; }
    const auto bad = bb::parse_config(cfg);
    EXPECT_NE(bad.errors.to_string().find("holds no PEM certificate"), std::string::npos) << bad.errors.to_string();
    // Nor is a bundle cut off mid-certificate (a renewal caught half-written): the pool would
    // trust none of it. A good block before the cut does not make it readable.
    std::string whole;
    {
        std::ifstream in{cert("ca.pem")};
        whole = std::string{std::istreambuf_iterator<char>{in}, {}};
    }
    { std::ofstream{ca, std::ios::trunc} << whole << whole.substr(0, whole.size() / 2); }
    const auto cut = bb::parse_config(cfg);
    EXPECT_NE(cut.errors.to_string().find("upstreams[0].ca_file: \"" + ca + "\" cannot be read as PEM"),
              std::string::npos)
        << cut.errors.to_string();
}

// A bundle in OpenSSL's trusted form (`BEGIN TRUSTED CERTIFICATE`, as p11-kit's
// ca-bundle.trust.crt writes its roots) is trusted as the file loader trusted it: the CA
// there verifies the upstream, beside an ordinary block.
TEST(upstream_tls, a_trusted_certificate_block_in_the_ca_file_is_trusted) {
    fake_upstream up{nullptr, cert("server.pem"), cert("server.key")};
    const std::string dir = temp_dir();
    const std::string trusted = dir + "/trusted.pem";
    const std::string cmd = "openssl x509 -in " + cert("ca.pem") + " -trustout -addtrust serverAuth -out " + trusted;
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    std::string bundle;
    for (const auto& f : {cert("self-signed.pem"), trusted}) {
        std::ifstream in{f};
        bundle += std::string{std::istreambuf_iterator<char>{in}, {}};
    }
    ASSERT_NE(bundle.find("BEGIN TRUSTED CERTIFICATE"), std::string::npos);
    { std::ofstream{dir + "/bundle.pem"} << bundle; }
    proxy_instance bb{make_config("https://localhost:" + std::to_string(up.port()), "",
                                  "\"ca_file\": \"" + dir + "/bundle.pem\"")};
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", "{}");
    EXPECT_EQ(res.result_int(), 200u) << res.body();
    EXPECT_EQ(up.request_count(), 1u);
}

TEST(upstream_tls, wrong_name_is_502_and_never_forwarded) {
    fake_upstream up{nullptr, cert("wrong-name.pem"), cert("wrong-name.key")};
    proxy_instance bb{make_config("https://localhost:" + std::to_string(up.port()), "",
                                  "\"ca_file\": \"" + cert("ca.pem") + "\"")};
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", "{}");
    EXPECT_EQ(res.result_int(), 502u);
    EXPECT_EQ(body_code(res), "upstream_tls_error");
    EXPECT_EQ(up.request_count(), 0u);
}

// The host's name only in the certificate's CN (no DNS name among its subjectAltNames) is no
// name at all (RFC 6125; asio's host_name_verification fell back to the CN): refused.
TEST(upstream_tls, a_name_only_in_the_cn_is_502_and_never_forwarded) {
    fake_upstream up{nullptr, cert("cn-only.pem"), cert("cn-only.key")};
    proxy_instance bb{make_config("https://localhost:" + std::to_string(up.port()), "",
                                  "\"ca_file\": \"" + cert("ca.pem") + "\"")};
    auto res = http_request(bb.port(), http::verb::post, "/v3/mail/send", "{}");
    EXPECT_EQ(res.result_int(), 502u) << res;
    EXPECT_EQ(body_code(res), "upstream_tls_error");
    EXPECT_EQ(up.request_count(), 0u);
}

// breakerbox's TLS to upstreams takes forward secrecy and AEAD only, as its listeners do:
// an upstream (or a man in the middle) offering only CBC suites (OpenSSL's default list
// takes them) gets no request; the same upstream with an ECDHE-GCM suite does. (The test
// certificate is ECDSA, whose suites all have forward secrecy; RSA key exchange is outside
// the list as well.)
TEST(upstream_tls, an_upstream_offering_only_cbc_suites_is_502_and_never_forwarded) {
    for (const auto& [suite, status] : std::vector<std::pair<std::string, unsigned>>{
             {"ECDHE-ECDSA-AES128-SHA256", 502u},
             {"ECDHE-ECDSA-AES256-SHA", 502u},
             {"ECDHE-ECDSA-AES128-GCM-SHA256", 200u}}) {
        fake_upstream up{nullptr, cert("server.pem"), cert("server.key")};
        up.tls12_ciphers(suite);
        proxy_instance bb{make_config("https://localhost:" + std::to_string(up.port()), "",
                                      "\"ca_file\": \"" + cert("ca.pem") + "\"")};
        auto res = http_request(bb.port(), http::verb::get, "/x");
        EXPECT_EQ(res.result_int(), status) << suite << ": " << res;
        EXPECT_EQ(up.request_count(), status == 200u ? 1u : 0u) << suite;
    }
}

TEST(upstream_tls, untrusted_certificate_is_502_and_never_forwarded) {
    fake_upstream up{nullptr, cert("self-signed.pem"), cert("self-signed.key")};
    // No ca_file: the system trust store, which does not know this certificate.
    proxy_instance bb{make_config("https://localhost:" + std::to_string(up.port()))};
    auto res = http_request(bb.port(), http::verb::get, "/x");
    EXPECT_EQ(res.result_int(), 502u);
    EXPECT_EQ(body_code(res), "upstream_tls_error");
    EXPECT_EQ(up.request_count(), 0u);
}

// An upstream that sends more than its response (here after a HEAD answer, in a second
// TLS record of the same write): those bytes sit in the TLS layer, not in our buffer or the
// socket, and must keep the connection out of the pool, or the next request would get them
// as its response.
TEST(upstream_tls, bytes_left_in_the_tls_layer_keep_the_connection_out_of_the_pool) {
    std::string first = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Pad: ";
    first += std::string(512 - first.size() - 4, 'p') + "\r\n\r\n";  // exactly one 512-byte record
    const std::string stale = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Stale: yes\r\n\r\nSTALE!";
    fake_upstream up{[&](const request& r) {
                         if (r.method() == http::verb::head) {
                             return respond_raw(first + stale, false);
                         }
                         return respond(200, "fresh!");
                     },
                     cert("server.pem"), cert("server.key")};
    up.max_tls_record(512);
    proxy_instance bb{make_config("https://localhost:" + std::to_string(up.port()), "",
                                  "\"ca_file\": \"" + cert("ca.pem") + "\"", "", 1)};
    raw_client c{bb.port()};
    c.send("HEAD /a HTTP/1.1\r\nHost: a\r\n\r\n");
    EXPECT_EQ(c.read_response(true).result_int(), 200u);
    c.send("GET /b HTTP/1.1\r\nHost: a\r\n\r\n");
    auto res = c.read_response();
    EXPECT_EQ(res.result_int(), 200u);
    EXPECT_EQ(res.body(), "fresh!");
    EXPECT_EQ(res.count("x-stale"), 0u);
    ASSERT_EQ(up.request_count(), 2u);
    EXPECT_NE(up.requests()[0].connection, up.requests()[1].connection) << "not reused";
}

// ---- reload and drain (in-process; the signal paths are tested on the binary) ------------

// A generated answer to HEAD has the head only; the next response on the connection must
// not be taken for the body of the previous one.
TEST(proxying, generated_answers_to_head_have_no_body) {
    fake_upstream up;
    auto cfg = make_config(local_url(up.port()));
    const std::string catch_all = "\"path_prefix\": \"/\"}";
    cfg.replace(cfg.find(catch_all), catch_all.size(), "\"path_prefix\": \"/ok\"}");
    proxy_instance bb{cfg};
    raw_client client{bb.port()};
    client.send("HEAD /nope HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\n");
    auto head = client.read_response(true);
    EXPECT_EQ(head.result_int(), 404u);
    EXPECT_NE(head[http::field::content_length], "0");
    EXPECT_TRUE(head.body().empty());
    auto get = client.read_response();
    EXPECT_EQ(get.result_int(), 404u) << "the HEAD answer carried a body";
    EXPECT_FALSE(get.body().empty());
}

// So do the refusals that come before the head is parsed: a HEAD whose declared body is too
// large, or whose head breaks the framing rules.
TEST(proxying, early_refusals_of_a_head_request_have_no_body) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()))};
    for (const char* head : {"HEAD /x HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n",
                                   "HEAD /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                                   "HEAD /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"}) {
        raw_client client{bb.port()};
        client.send(head);
        auto res = client.read_response(true);
        EXPECT_GE(res.result_int(), 400u) << head;
        EXPECT_TRUE(client.closed_by_server()) << head;
        EXPECT_TRUE(client.buffer().empty()) << "a body after the HEAD answer: " << client.buffer();
    }
    EXPECT_EQ(up.request_count(), 0u);
}

TEST(proxying, chunked_trailers_are_not_forwarded_as_headers) {
    fake_upstream up;
    proxy_instance bb{make_config(local_url(up.port()))};
    raw_client client{bb.port()};
    client.send("POST /v3/mail/send HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-Head: h\r\n\r\n"
                "2\r\n{}\r\n0\r\nX-Sneaky: trailer\r\nAuthorization: Bearer late\r\nX-Head: from-trailer\r\n\r\n");
    auto res = client.read_response();
    ASSERT_EQ(res.result_int(), 200u) << res;
    const auto reqs = up.requests();
    ASSERT_EQ(reqs.size(), 1u);
    EXPECT_EQ(reqs[0].req.body(), "{}");
    EXPECT_EQ(reqs[0].req["x-head"], "h");
    EXPECT_EQ(reqs[0].req.count("x-head"), 1u) << "a trailer repeating a head field is dropped too";
    EXPECT_EQ(reqs[0].req.count("x-sneaky"), 0u);
    EXPECT_EQ(reqs[0].req.count(http::field::authorization), 0u);
}

TEST(lifecycle, config_swap_changes_routes_without_dropping_connections) {
    fake_upstream a{[](const request&) { return respond(200, "a"); }};
    fake_upstream b{[](const request&) { return respond(200, "b"); }};
    proxy_instance bb{make_config(local_url(a.port()))};
    raw_client client{bb.port()};
    client.send("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    EXPECT_EQ(client.read_response().body(), "a");
    auto next = bb::parse_config(make_config(local_url(b.port())));
    ASSERT_TRUE(next.errors.empty());
    bb.server().apply_config(next.cfg);
    client.send("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");  // same client connection
    EXPECT_EQ(client.read_response().body(), "b");
}

// A request that arrived before a reload finishes on the config it arrived under, with
// that config's upstream (a reload that renumbers upstreams must not send it elsewhere).
TEST(lifecycle, request_in_flight_across_a_renumbering_reload_keeps_its_upstream) {
    fake_upstream a{[](const request&) { return respond(200, "a"); }};
    fake_upstream b{[](const request&) { return respond(200, "b"); }};
    auto two = [&](const std::string& first, const std::string& second, const std::string& target) {
        return "{\"workers\": 1, \"listeners\": [{\"name\": \"t\", \"address\": \"127.0.0.1:0\"}],"
               "\"upstreams\": [{\"name\": \"" + first + "\", \"url\": \"" +
               local_url(first == "a" ? a.port() : b.port()) + "\"}" +
               (second.empty() ? std::string{} : ", {\"name\": \"" + second + "\", \"url\": \"" +
                                                     local_url(second == "a" ? a.port() : b.port()) + "\"}") +
               "], \"routes\": [{\"name\": \"r\", \"match\": {\"path_prefix\": \"/\"}, \"upstream\": \"" +
               target + "\"}], \"log\": {\"level\": \"warn\", \"access_log\": \"off\"}}";
    };
    // Before: [a, b], the route goes to b (index 1). After: [b] only, the route goes to b
    // (index 0), and index 1 no longer exists.
    proxy_instance bb{two("a", "b", "b")};
    raw_client client{bb.port()};
    client.send("POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab");
    // The head is in; wait until the session holds it (it is reading the body).
    auto heads_read = [&] {
        std::uint64_t n = 0;
        bb.server().for_each_worker([&](bb::proxy::worker& w) { n += w.stats().requests; });
        return n;
    };
    const auto until = std::chrono::steady_clock::now() + 5s;
    while (heads_read() == 0 && std::chrono::steady_clock::now() < until) {
        std::this_thread::yield();
    }
    ASSERT_EQ(heads_read(), 1u);
    auto next = bb::parse_config(two("b", "", "b"));
    ASSERT_TRUE(next.errors.empty()) << next.errors.to_string();
    bb.server().apply_config(next.cfg);
    client.send("cd");
    auto res = client.read_response();
    EXPECT_EQ(res.result_int(), 200u) << res;
    EXPECT_EQ(res.body(), "b");
    EXPECT_EQ(a.request_count(), 0u);
    // And the next request on the same connection uses the new config.
    client.send("GET /y HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT_EQ(client.read_response().body(), "b");
    EXPECT_EQ(a.request_count(), 0u);
}

TEST(lifecycle, drain_finishes_in_flight_requests) {
    // The upstream answers once the drain has begun (the idle connection closed), however
    // slow the machine: the busy request is in flight across it. One worker: each worker
    // begins its drain in turn, so an idle connection closed by another says nothing of the
    // busy one's.
    auto drained = std::make_shared<std::promise<void>>();
    std::shared_future<void> drain_seen = drained->get_future().share();
    fake_upstream up{[drain_seen](const request&) {
        drain_seen.wait_for(10s);
        return respond(200, "done");
    }};
    proxy_instance bb{make_config(local_url(up.port()), "", "", "", 1)};
    raw_client busy{bb.port()};
    busy.send("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    ASSERT_TRUE(up.wait_for([&] { return up.request_count() == 1; }));
    raw_client idle{bb.port()};
    std::thread stopper{[&] { bb.stop(); }};
    const bool idle_closed = idle.closed_by_server();
    drained->set_value();
    EXPECT_TRUE(idle_closed);
    auto res = busy.read_response();
    EXPECT_EQ(res.result_int(), 200u);
    EXPECT_EQ(res.body(), "done");
    EXPECT_EQ(res[http::field::connection], "close");
    stopper.join();
}
