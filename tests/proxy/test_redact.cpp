#include "proxy/redact.hpp"

#include <gtest/gtest.h>

#include <initializer_list>
#include <utility>

using bb::proxy::credential_name;
using bb::proxy::redact_query;

TEST(redact, credential_names_in_headers_and_query_parameters) {
    for (const char* n : {"Authorization", "proxy-authorization", "Cookie", "X-Api-Key", "hapikey", "api_key",
                          "access_token", "X-Amz-Signature", "X-Amz-Credential", "client_secret", "password", "key",
                          "sig", "code", "auth", "AWSAccessKeyId",
                          // vendors' own names, word by word
                          "X-Auth-Key", "X-Authorization", "X-Access-Key", "Ocp-Apim-Subscription-Key",
                          "X-Functions-Key", "x-auth", "jwt", "sessionid", "X-Session-Id", "routing_key",
                          "X-Hub-Signature-256", "X-Private-Token", "authentication"}) {
        EXPECT_TRUE(credential_name(n)) << n;
    }
    for (const char* n : {"content-type", "limit", "author", "keyword", "email", "x-campaign-id", "after",
                          "Idempotency-Key", "x-idempotency-key", "authority", "monkey", "keys", "x-request-id",
                          "x-breakerbox-decision", "x-tenant"}) {
        EXPECT_FALSE(credential_name(n)) << n;
    }
}

TEST(redact, only_credential_values_are_replaced) {
    bool changed = true;
    EXPECT_EQ(redact_query("/v3/mail/send", &changed), "/v3/mail/send");
    EXPECT_FALSE(changed);
    EXPECT_EQ(redact_query("/contacts/v1/lists?hapikey=abc123&count=5", &changed),
              "/contacts/v1/lists?hapikey=[redacted]&count=5");
    EXPECT_TRUE(changed);
    EXPECT_EQ(redact_query("/x?a=1&access_token=t&b=&token=&c#frag", &changed),
              "/x?a=1&access_token=[redacted]&b=&token=&c#frag");
    EXPECT_TRUE(changed);
    EXPECT_EQ(redact_query("/s3/o?X-Amz-Credential=AK%2F1&X-Amz-Signature=ff&x=1"),
              "/s3/o?X-Amz-Credential=[redacted]&X-Amz-Signature=[redacted]&x=1");
    EXPECT_EQ(redact_query("/x?", &changed), "/x?");
    EXPECT_FALSE(changed);
    EXPECT_EQ(redact_query("/x?&&key=v&&"), "/x?&&key=[redacted]&&");
}

// Names as the upstream reads them: escapes decoded, `;` and `#` as separators too.
TEST(redact, disguised_parameter_names_and_separators_are_redacted) {
    bool changed = false;
    EXPECT_EQ(redact_query("/x?hap%69key=SECRET&a=1", &changed), "/x?hap%69key=[redacted]&a=1");
    EXPECT_TRUE(changed);
    EXPECT_EQ(redact_query("/x?access%5Ftoken=SECRET"), "/x?access%5Ftoken=[redacted]");
    EXPECT_EQ(redact_query("/x?ACCESS%5ftoken=SECRET"), "/x?ACCESS%5ftoken=[redacted]");
    EXPECT_EQ(redact_query("/x?a=1;hapikey=SECRET;b=2"), "/x?a=1;hapikey=[redacted];b=2");
    EXPECT_EQ(redact_query("/x?a=1#&hapikey=SECRET"), "/x?a=1#&hapikey=[redacted]");
    EXPECT_EQ(redact_query("/x?a=1#hapikey=SECRET"), "/x?a=1#hapikey=[redacted]");
    // A broken escape is kept and does not hide anything.
    EXPECT_EQ(redact_query("/x?a%zz=1&key%=v&%"), "/x?a%zz=1&key%=v&%");
    EXPECT_EQ(redact_query("/x?key%2=v"), "/x?key%2=v");
}

TEST(redact, user_information_of_an_absolute_form_target_is_redacted) {
    bool changed = false;
    EXPECT_EQ(redact_query("http://user:pass@api.example.com/v1/x?a=1", &changed),
              "http://[redacted]@api.example.com/v1/x?a=1");
    EXPECT_TRUE(changed);
    EXPECT_EQ(redact_query("https://tok@api.example.com"), "https://[redacted]@api.example.com");
    EXPECT_EQ(redact_query("http://api.example.com/a@b?hapikey=k", &changed), "http://api.example.com/a@b?hapikey=[redacted]");
    EXPECT_EQ(redact_query("http://api.example.com/p", &changed), "http://api.example.com/p");
    EXPECT_FALSE(changed);
    // Authority-form (CONNECT): user information there is hidden too.
    EXPECT_EQ(redact_query("alice:s3cret@api.hubspot.com:443", &changed), "[redacted]@api.hubspot.com:443");
    EXPECT_TRUE(changed);
    EXPECT_EQ(redact_query("api.hubspot.com:443", &changed), "api.hubspot.com:443");
    EXPECT_FALSE(changed);
    EXPECT_EQ(redact_query("*"), "*");
    // A password holding '/', '?' or '#' unencoded: hidden up to its '@' all the same.
    EXPECT_EQ(redact_query("alice:s3/cr+et@localhost:443", &changed), "[redacted]@localhost:443");
    EXPECT_TRUE(changed);
    EXPECT_EQ(redact_query("alice:pw#x@localhost:443"), "[redacted]@localhost:443");
    EXPECT_EQ(redact_query("alice:p?w@localhost:443"), "[redacted]@localhost:443");
    EXPECT_EQ(redact_query("http://alice:s3/cr@api.example.com/v1?a=1", &changed),
              "http://[redacted]@api.example.com/v1?a=1");
    EXPECT_TRUE(changed);
    EXPECT_EQ(redact_query("http://alice:p#w@api.example.com/"), "http://[redacted]@api.example.com/");
    // A port, or an '@' in the path or query of a target without user information, is not.
    EXPECT_EQ(redact_query("http://api.example.com:8080/c?email=a@b.com", &changed),
              "http://api.example.com:8080/c?email=a@b.com");
    EXPECT_FALSE(changed);
    EXPECT_EQ(redact_query("http://[::1]:80/c?email=a@b.com"), "http://[::1]:80/c?email=a@b.com");
    // A target of neither form keeps its parameters hidden, '@' or not.
    EXPECT_EQ(redact_query("api.hubspot.com/v1/c?hapikey=SECRET"), "api.hubspot.com/v1/c?hapikey=[redacted]");
    // With an '@' that may be a query's or user information's, all of it.
    for (const auto& [in, out] : std::initializer_list<std::pair<const char*, const char*>>{
             {"api.hubspot.com/v1/c?email=a@b.com&api_key=S", "[redacted]"},
             {"host/p?email=a@b.com/x&api_key=S", "[redacted]"},
             {"host/p?email=a@b.com#hapikey=S", "[redacted]"},
             {"u:s3cret@api.example.com/v1?email=a@b.com&k=v", "[redacted]"},
             {"u:p@/?token=T", "[redacted]"},
             {"http://h:x/p?e=a@b#&api_key=S", "http://[redacted]"},
             {"http://", "http://"}}) {
        EXPECT_EQ(redact_query(in), out) << in;
    }
    EXPECT_EQ(redact_query("http://host:/p?email=a@b.com&api_key=S"), "http://host:/p?email=a@b.com&api_key=[redacted]");
    // User information with a path, query or fragment after the host: hidden all the same.
    EXPECT_EQ(redact_query("u:s3cret@api.example.com/v1/x"), "[redacted]@api.example.com/v1/x");
    EXPECT_EQ(redact_query("u:s3cret@api.example.com?k=v&hapikey=S"), "[redacted]@api.example.com?k=v&hapikey=[redacted]");
    EXPECT_EQ(redact_query("http://u:s3/cr@api.example.com?k=v"), "http://[redacted]@api.example.com?k=v");
    EXPECT_EQ(redact_query("http://u:s3/cr@api.example.com#f"), "http://[redacted]@api.example.com#f");
    // Origin-form: a "://" later in the target is not a scheme.
    EXPECT_EQ(redact_query("/go?to=http://u:p@h/", &changed), "/go?to=http://u:p@h/");
    EXPECT_FALSE(changed);
}

TEST(without_credential_params, drops_credential_parameters_and_keeps_the_rest) {
    using bb::proxy::without_credential_params;
    EXPECT_EQ(without_credential_params("/v3/mail/send"), "/v3/mail/send");
    EXPECT_EQ(without_credential_params("/contacts/v1/lists?hapikey=abc&count=5"), "/contacts/v1/lists?count=5");
    EXPECT_EQ(without_credential_params("/a?count=5&hap%69key=abc"), "/a?count=5");
    EXPECT_EQ(without_credential_params("/a?access_token=t;page=2&flag"), "/a?page=2&flag");
    EXPECT_EQ(without_credential_params("/a?properties=email;firstname&x=1"), "/a?properties=email;firstname&x=1");
    EXPECT_EQ(without_credential_params("/a?p=email;api_key=k;q=2"), "/a?p=email;q=2");
    EXPECT_EQ(without_credential_params("/a?x=1#api_key=REAL"), "/a?x=1");
    EXPECT_EQ(without_credential_params("/a?api_key=k"), "/a");
    EXPECT_EQ(without_credential_params("/a?"), "/a?");  // nothing dropped: as sent
    EXPECT_EQ(without_credential_params("/a?&x=1"), "/a?&x=1");
}
