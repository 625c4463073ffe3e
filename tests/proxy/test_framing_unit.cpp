#include "proxy/framing.hpp"

#include <gtest/gtest.h>

using namespace bb::proxy;

TEST(framing_unit, head_end_is_found_across_reads) {
    const std::string data = "GET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
    EXPECT_EQ(find_head_end(data), data.size() - 4);
    EXPECT_EQ(find_head_end(data, 25), data.size() - 4);  // resumes 3 bytes back
    EXPECT_EQ(find_head_end("GET / HTTP/1.1\r\n"), std::string_view::npos);
}

TEST(framing_unit, accepts_ordinary_requests) {
    EXPECT_TRUE(check_request_head("GET / HTTP/1.1\r\nHost: a\r\n\r\n", 100).ok());
    EXPECT_TRUE(check_request_head("GET / HTTP/1.0\r\n\r\n", 100).ok());
    EXPECT_TRUE(check_request_head("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n", 100).ok());
    EXPECT_TRUE(check_request_head("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 100).ok());
}

TEST(framing_unit, header_count_limit_is_431) {
    std::string h = "GET / HTTP/1.1\r\nHost: a\r\n";
    for (int i = 0; i < 5; ++i) {
        h += "X-" + std::to_string(i) + ": v\r\n";
    }
    h += "\r\n";
    EXPECT_TRUE(check_request_head(h, 6).ok());
    const auto v = check_request_head(h, 5);
    EXPECT_EQ(v.status, 431);
    EXPECT_EQ(v.code, "too_many_headers");
}

TEST(framing_unit, control_characters_in_values_are_rejected) {
    EXPECT_EQ(check_request_head(std::string{"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01z\r\n\r\n"}, 100).status, 400);
    EXPECT_EQ(check_request_head("GET / HTTP/1.1\r\nHost: a\r\nX: tab\tok\r\n\r\n", 100).status, 0);
}

TEST(framing_unit, ambiguous_paths) {
    for (const char* ok : {"/", "/v3/mail/send", "/a/.hidden", "/a/...", "/a..b/c", "/x%20y", "/a%2", "/%2", "*",
                           "/crm/v3/objects/contacts/batch/create"}) {
        EXPECT_EQ(ambiguous_path(ok), "") << ok;
    }
    for (const char* bad : {"/a/../b", "/..", "/a/.", "/./a", "/a/%2e%2e/b", "/a/%2E./b", "/a/.%2e", "/a%2fb", "/a%2Fb",
                            "/a%5cb", "/a\\b", "/a%00b", "//", "/v3//mail/send", "/a//"}) {
        EXPECT_NE(ambiguous_path(bad), "") << bad;
    }
    // An encoded unreserved character is the same path as the character itself to an
    // upstream (RFC 3986 6.2.2.2), but not to our route matching.
    for (const char* bad : {"/v3/mail/%73end", "/v3/mail/sen%64", "/v3/%4Dail/send", "/a%7Eb", "/a%2Db", "/a%5Fb", "/%30",
                            // A dot inside a segment: Mailgun's domain in the path, an endpoint's name.
                            "/v3/mg%2Eexample.com/messages", "/v3/example.com/messages%2emime"}) {
        EXPECT_EQ(ambiguous_path(bad), "a percent-encoded unreserved character (use the character itself)") << bad;
    }
    EXPECT_EQ(ambiguous_path("/crm/v3/objects/contacts/batch/archive;x"), "a path parameter (;)");
    // A server ends the path at a fragment: this one is archive to it, not to the routes.
    EXPECT_EQ(ambiguous_path("/crm/v3/objects/contacts/batch/archive#x"), "a fragment (#)");
    EXPECT_EQ(ambiguous_path("/crm/v3/objects/contacts/batch/archive%3Bx"), "an encoded path parameter separator (%3B)");
    for (const char* ok : {"/a%20b", "/a%40b", "/a%3Fb", "/a%25b", "/q%C3%A9"}) {  // reserved or non-ASCII: as sent
        EXPECT_EQ(ambiguous_path(ok), "") << ok;
    }
}

TEST(framing_unit, a_path_under_an_upstreams_base_path) {
    EXPECT_EQ(path_under_base("/services/data/v59.0/x", "/services/data"), "/v59.0/x");
    EXPECT_EQ(path_under_base("/services/data", "/services/data"), "/");
    EXPECT_EQ(path_under_base("/services/database/x", "/services/data"), std::nullopt) << "not a segment boundary";
    EXPECT_EQ(path_under_base("/other", "/services/data"), std::nullopt);
    EXPECT_EQ(path_under_base("/any/path", ""), "/any/path");
}

TEST(framing_unit, a_repeated_content_type_or_encoding_is_400) {
    // The guards would read the body as one type, an upstream perhaps as the other.
    const auto two_types = check_request_head(
        "POST /x HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: 0\r\n\r\n",
        100);
    EXPECT_EQ(two_types.status, 400);
    EXPECT_NE(two_types.message.find("Content-Type appears more than once"), std::string::npos) << two_types.message;
    EXPECT_EQ(check_request_head("POST /x HTTP/1.1\r\nHost: a\r\ncontent-encoding: gzip\r\nContent-Encoding: br\r\n\r\n", 100)
                  .status,
              400);
    EXPECT_TRUE(check_request_head("POST /x HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\r\n", 100).ok());
}

// A POST that asks the upstream to act as a DELETE (Salesforce's _HttpMethod, the override
// headers) would be routed, scoped and metered as a POST: refused, by name.
// Some frameworks read `delete` as DELETE; routes and rules match methods upper case.
TEST(framing_unit, a_method_with_lower_case_letters_is_400) {
    for (const char* method : {"post", "Delete", "pATCH"}) {
        const auto v = check_request_head(std::string{method} + " /x HTTP/1.1\r\nHost: a\r\n\r\n", 100);
        EXPECT_EQ(v.status, 400) << method;
        EXPECT_EQ(v.code, "bad_request_line") << method;
        EXPECT_NE(v.message.find("lower-case"), std::string::npos) << v.message;
    }
    for (const char* method : {"POST", "M-SEARCH", "PROPFIND"}) {
        EXPECT_TRUE(check_request_head(std::string{method} + " /x HTTP/1.1\r\nHost: a\r\n\r\n", 100).ok()) << method;
    }
}

TEST(framing_unit, method_overrides_are_refused) {
    for (const char* target : {"/services/data/v59.0/sobjects/Account/001?_HttpMethod=DELETE",
                               "/services/data/v59.0/sobjects/Account/001?a=1&_httpmethod=PATCH",
                               "/x?%5FHttpMethod=DELETE", "/x?_method=delete", "/x?_Method",
                               "/x?a=1;_HttpMethod=DELETE", "/x?a=1#_method=DELETE"}) {
        const auto v = check_request_head("POST " + std::string{target} + " HTTP/1.1\r\nHost: a\r\n\r\n", 100);
        EXPECT_EQ(v.status, 400) << target;
        EXPECT_EQ(v.code, "method_override") << target;
    }
    for (const char* target : {"/x?_HttpMethodology=1", "/x?method=DELETE", "/x?q=_HttpMethod", "/x_HttpMethod=1"}) {
        EXPECT_TRUE(check_request_head("POST " + std::string{target} + " HTTP/1.1\r\nHost: a\r\n\r\n", 100).ok())
            << target;
    }
    // With '_' for '-' too: CGI and PHP stacks read X_HTTP_Method_Override as the same variable.
    for (const char* header : {"X-HTTP-Method-Override", "x-http-method", "X-Method-Override", "X_HTTP_Method_Override",
                               "x-http_method"}) {
        const auto v = check_request_head("POST /x HTTP/1.1\r\nHost: a\r\n" + std::string{header} + ": DELETE\r\n\r\n", 100);
        EXPECT_EQ(v.status, 400) << header;
        EXPECT_EQ(v.code, "method_override") << header;
        EXPECT_NE(v.message.find(header), std::string::npos) << v.message;
    }
}
