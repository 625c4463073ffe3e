#include "proxy/redact.hpp"

#include <gtest/gtest.h>

using bb::proxy::credential_name;
using bb::proxy::redact_query;

TEST(redact, credential_names_in_headers_and_query_parameters) {
    for (const char* n : {"Authorization", "proxy-authorization", "Cookie", "X-Api-Key", "hapikey", "api_key",
                          "access_token", "X-Amz-Signature", "X-Amz-Credential", "client_secret", "password", "key",
                          "sig", "code", "auth", "AWSAccessKeyId"}) {
        EXPECT_TRUE(credential_name(n)) << n;
    }
    for (const char* n : {"content-type", "limit", "author", "keyword", "email", "x-campaign-id", "after"}) {
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
