#include "proxy/sandbox.hpp"

#include <gtest/gtest.h>

#include <simdjson.h>

using namespace bb::proxy;

TEST(sandbox_rewrite, sendgrid_adds_sandbox_mode_and_keeps_everything_else) {
    const std::string body = R"({"personalizations":[{"to":[{"email":"a@example.com","name":"A \"Q\""}]}],
        "from":{"email":"b@example.com"},"subject":"Hi \u00e9","content":[{"type":"text/plain","value":"x\ny"}]})";
    std::string err;
    auto out = sendgrid_sandbox(body, &err);
    ASSERT_TRUE(out) << err;
    simdjson::dom::parser p;
    auto doc = p.parse(*out);
    ASSERT_FALSE(doc.error()) << *out;
    bool enabled = false;
    ASSERT_EQ(doc["mail_settings"]["sandbox_mode"]["enable"].get(enabled), simdjson::SUCCESS);
    EXPECT_TRUE(enabled);
    std::string_view name;
    ASSERT_EQ(doc["personalizations"].at(0)["to"].at(0)["name"].get(name), simdjson::SUCCESS);
    EXPECT_EQ(name, "A \"Q\"");
    std::string_view value;
    ASSERT_EQ(doc["content"].at(0)["value"].get(value), simdjson::SUCCESS);
    EXPECT_EQ(value, "x\ny");
}

TEST(sandbox_rewrite, sendgrid_merges_existing_mail_settings_and_overrides_a_disabled_sandbox) {
    std::string err;
    auto out = sendgrid_sandbox(R"({"mail_settings":{"sandbox_mode":{"enable":false},"footer":{"enable":true}}})", &err);
    ASSERT_TRUE(out) << err;
    EXPECT_EQ(*out, R"({"mail_settings":{"footer":{"enable":true},"sandbox_mode":{"enable":true}}})");
}

// Go's encoding/json (SendGrid) reads "Mail_Settings" as mail_settings, and of two such keys
// the later wins: none of them may carry "enable": false past the rewrite.
TEST(sandbox_rewrite, sendgrid_oddly_cased_keys_cannot_turn_the_sandbox_off) {
    std::string err;
    auto out = sendgrid_sandbox(R"({"mail_settings":{"footer":{"enable":true}},"Mail_Settings":{"Sandbox_Mode":{"enable":false}}})", &err);
    ASSERT_TRUE(out) << err;
    EXPECT_EQ(*out, R"({"mail_settings":{"footer":{"enable":true},"sandbox_mode":{"enable":true}},)"
                    R"("Mail_Settings":{"sandbox_mode":{"enable":true}}})");
    out = sendgrid_sandbox("{\"MAIL_\\u0053ETTINGS\":{\"\xC5\xBF" "andbox_mode\":{\"enable\":false}}}", &err);
    ASSERT_TRUE(out) << err;
    EXPECT_EQ(*out, R"({"MAIL_SETTINGS":{"sandbox_mode":{"enable":true}},"mail_settings":{"sandbox_mode":{"enable":true}}})")
        << "rewritten, and an exact mail_settings for an upstream that compares bytes";
}

TEST(sandbox_rewrite, sendgrid_refuses_what_it_cannot_rewrite) {
    std::string err;
    EXPECT_FALSE(sendgrid_sandbox("not json", &err));
    EXPECT_FALSE(sendgrid_sandbox("[1,2]", &err));
    EXPECT_FALSE(sendgrid_sandbox(R"({"mail_settings": 3})", &err));
}

TEST(sandbox_rewrite, mailgun_urlencoded_replaces_testmode) {
    std::string err;
    auto out = mailgun_testmode("from=a%40b.c&to=x%40y.z&o%3Atestmode=no&to=q%40r.s&subject=hi",
                                "application/x-www-form-urlencoded", &err);
    ASSERT_TRUE(out) << err;
    EXPECT_EQ(*out, "from=a%40b.c&to=x%40y.z&to=q%40r.s&subject=hi&o%3Atestmode=yes");
}

// `a=b;o%3Atestmode=no` is one field here and two where ';' splits fields: refused.
TEST(sandbox_rewrite, mailgun_raw_semicolons_fail_closed) {
    std::string err;
    EXPECT_FALSE(mailgun_testmode("to=x%40y.z&text=hi;o%3Atestmode=no", "application/x-www-form-urlencoded", &err));
    EXPECT_NE(err.find("raw ';'"), std::string::npos) << err;
    err.clear();
    EXPECT_FALSE(mailgun_testmode("to=x%40y.z", "application/x-www-form-urlencoded", &err, "a=1;o%3Atestmode=no"));
    EXPECT_NE(err.find("raw ';' in the query"), std::string::npos) << err;
}

// In UTF-16 `%00o%00%3A%00t...=no` is o:testmode to a server that honours the charset, and
// not the field the rewrite replaces here: refused, as the agents' constraints refuse it.
TEST(sandbox_rewrite, mailgun_form_in_a_charset_that_does_not_keep_ascii_fails_closed) {
    std::string err;
    EXPECT_FALSE(mailgun_testmode("%00t%00o=%00x%00%40%00y&%00o%00%3A%00t%00e%00s%00t%00m%00o%00d%00e=%00n%00o",
                                  "application/x-www-form-urlencoded; charset=utf-16be", &err));
    EXPECT_NE(err.find("does not keep ASCII"), std::string::npos) << err;
    err.clear();
    EXPECT_TRUE(mailgun_testmode("to=x%40y.z", "application/x-www-form-urlencoded; charset=utf-8", &err)) << err;
}

TEST(sandbox_rewrite, mailgun_multipart_gets_a_testmode_part) {
    const std::string body =
        "--XyZ\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\nx@y.z\r\n"
        "--XyZ\r\nContent-Disposition: form-data; name=\"o:testmode\"\r\n\r\nno\r\n"
        "--XyZ\r\nContent-Disposition: form-data; name=\"subject\"\r\n\r\nhi\r\n"
        "--XyZ--\r\n";
    std::string err;
    auto out = mailgun_testmode(body, "multipart/form-data; boundary=XyZ", &err);
    ASSERT_TRUE(out) << err;
    EXPECT_EQ(*out,
              "--XyZ\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\nx@y.z\r\n"
              "--XyZ\r\nContent-Disposition: form-data; name=\"subject\"\r\n\r\nhi\r\n"
              "--XyZ\r\nContent-Disposition: form-data; name=\"o:testmode\"\r\n\r\nyes\r\n"
              "--XyZ--\r\n");
    EXPECT_FALSE(mailgun_testmode("--XyZ\r\nbroken", "multipart/form-data; boundary=XyZ", &err));
    EXPECT_FALSE(mailgun_testmode("x", "text/plain", &err));
}

// A client's own o:testmode written another way (`Name=`, whitespace) would survive the
// rewrite next to ours, and parsers that take the first value would read its "no": the
// rewrite must fail closed rather than forward two.
TEST(sandbox_rewrite, mailgun_multipart_with_an_oddly_written_testmode_is_refused) {
    std::string err;
    for (const std::string disposition : {"form-data; Name=\"o:testmode\"", "form-data; name = \"o:testmode\"",
                                          "form-data;\tname=o:testmode"}) {
        const std::string body = "--XyZ\r\nContent-Disposition: " + disposition +
                                 "\r\n\r\nno\r\n--XyZ\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\na@b.c\r\n--XyZ--\r\n";
        EXPECT_FALSE(mailgun_testmode(body, "multipart/form-data; boundary=XyZ", &err)) << disposition;
        // Refused for the switch, or (blanks around '=', ':' unquoted) as a malformed body.
        EXPECT_TRUE(err.find("o:testmode") != std::string::npos || err.find("malformed") != std::string::npos) << err;
    }
}

// Only a mail send has a dry-run switch: anything else a sandboxed agent sends (a CRM
// write, a JSON body to another endpoint) has none.
// A switch the rewrite cannot be sure to override is refused: one in the query string, or one
// in another case (an API that folds names would read two).
TEST(sandbox_rewrite, mailgun_testmode_in_the_query_or_in_another_case_is_refused) {
    const std::string form = "application/x-www-form-urlencoded";
    std::string err;
    EXPECT_TRUE(mailgun_testmode("to=a%40x.com", form, &err, "tag=x")) << err;
    EXPECT_FALSE(mailgun_testmode("to=a%40x.com", form, &err, "o%3Atestmode=no"));
    EXPECT_NE(err.find("query string"), std::string::npos) << err;
    EXPECT_FALSE(mailgun_testmode("to=a%40x.com", form, &err, "O:TestMode=no"));
    auto out = mailgun_testmode("to=a%40x.com&O%3ATestMode=no", form, &err);
    ASSERT_TRUE(out) << err;
    EXPECT_EQ(*out, "to=a%40x.com&o%3Atestmode=yes") << "dropped in any case";
    EXPECT_FALSE(mailgun_testmode("--B\r\nContent-Disposition: form-data; name=\"O:TestMode\"\r\n\r\nno\r\n--B--\r\n",
                                  "multipart/form-data; boundary=B", &err));
}

TEST(sandbox_rewrite, only_a_mail_send_or_a_mailgun_message_can_be_sandboxed) {
    EXPECT_EQ(sandbox_api_for("POST", "/v3/mail/send", "application/json"), sandbox_api::sendgrid);
    EXPECT_EQ(sandbox_api_for("POST", "/v3/mg.example.com/messages", "multipart/form-data; boundary=x"), sandbox_api::mailgun);
    EXPECT_FALSE(sandbox_api_for("POST", "/crm/v3/objects/contacts/batch/archive", "application/json"));
    EXPECT_FALSE(sandbox_api_for("PATCH", "/crm/v3/objects/contacts/1", "application/x-www-form-urlencoded"));
    EXPECT_FALSE(sandbox_api_for("POST", "/v3/mail/send", "application/x-www-form-urlencoded"));
    EXPECT_FALSE(sandbox_api_for("GET", "/v3/mail/send", "application/json"));
}

TEST(sandbox_rewrite, the_upstream_decides_which_switch_it_takes) {
    // A Mailgun-looking form post to Salesforce has no dry-run switch: o:testmode would be
    // ignored there and the message sent for real.
    const auto salesforce = upstream_sandbox_of("", "acme.my.salesforce.com");
    EXPECT_EQ(salesforce, upstream_sandbox::none);
    EXPECT_FALSE(sandbox_api_for("POST", "/services/data/v59.0/chatter/users/me/messages",
                                 "application/x-www-form-urlencoded", salesforce));
    EXPECT_FALSE(sandbox_api_for("POST", "/v3/mail/send", "application/json", upstream_sandbox_of("", "api.hubapi.com")));
    EXPECT_EQ(upstream_sandbox_of("", "api.sendgrid.com"), upstream_sandbox::sendgrid);
    EXPECT_EQ(upstream_sandbox_of("", "API.SendGrid.com."), upstream_sandbox::sendgrid);
    EXPECT_EQ(upstream_sandbox_of("", "api.eu.mailgun.net"), upstream_sandbox::mailgun);
    EXPECT_EQ(upstream_sandbox_of("", "notsendgrid.com"), upstream_sandbox::none);
    EXPECT_FALSE(sandbox_api_for("POST", "/v3/x/messages", "multipart/form-data; boundary=x",
                                 upstream_sandbox_of("", "api.sendgrid.com")));
    EXPECT_FALSE(sandbox_api_for("POST", "/v3/mail/send", "application/json", upstream_sandbox_of("", "api.mailgun.net")));
    EXPECT_EQ(sandbox_api_for("POST", "/v3/mail/send", "application/json", upstream_sandbox_of("", "api.sendgrid.com")),
              sandbox_api::sendgrid);
    // A relay on loopback (a sidecar's egress) may front any API, Mailgun's testmode switch on
    // another API's `.../messages` form would send for real: it says what it is, like any
    // relay or test fake.
    EXPECT_EQ(upstream_sandbox_of("", "127.0.0.1"), upstream_sandbox::none);
    EXPECT_EQ(upstream_sandbox_of("", "::1"), upstream_sandbox::none);
    EXPECT_EQ(upstream_sandbox_of("", "localhost"), upstream_sandbox::none);
    EXPECT_FALSE(sandbox_api_for("POST", "/v1/Conversations/CH1/Messages", "application/x-www-form-urlencoded",
                                 upstream_sandbox_of("", "127.0.0.1")));
    EXPECT_EQ(upstream_sandbox_of("any", "127.0.0.9"), upstream_sandbox::any);
    EXPECT_EQ(upstream_sandbox_of("", "10.0.0.5"), upstream_sandbox::none) << "an internal relay says what it is";
    EXPECT_EQ(upstream_sandbox_of("", "2001:db8::1"), upstream_sandbox::none);
    EXPECT_EQ(upstream_sandbox_of("sendgrid", "relay.internal"), upstream_sandbox::sendgrid);
    EXPECT_EQ(upstream_sandbox_of("none", "127.0.0.1"), upstream_sandbox::none);
    EXPECT_EQ(upstream_sandbox_of("mailgun", "api.sendgrid.com"), upstream_sandbox::mailgun);
}

TEST(sandbox_rewrite, api_is_detected_from_the_content_type) {
    EXPECT_EQ(detect_sandbox_api("application/json; charset=utf-8"), sandbox_api::sendgrid);
    EXPECT_EQ(detect_sandbox_api("multipart/form-data; boundary=x"), sandbox_api::mailgun);
    EXPECT_EQ(detect_sandbox_api("application/x-www-form-urlencoded"), sandbox_api::mailgun);
    EXPECT_FALSE(detect_sandbox_api("text/plain"));
}

// What a sandbox breaker's alternate upstream (a test fake, a capture server) is not sent: a
// body with a field named like a credential (a token endpoint's form, a JSON login), or a
// form or JSON body that cannot be read to tell. The mail's own content goes.
TEST(sandbox_credentials, a_body_with_a_credential_field_is_kept_back) {
    const std::string form = "application/x-www-form-urlencoded";
    EXPECT_NE(credential_in_body("grant_type=refresh_token&client_secret=s3&refresh_token=r", form).find("client_secret"),
              std::string::npos);
    EXPECT_NE(credential_in_body("api_user=u&API_KEY=SG.x&to=a@example.com", form).find("API_KEY"), std::string::npos);
    EXPECT_NE(credential_in_body(R"({"username":"u","password":"p"})", "application/json").find("password"),
              std::string::npos);
    EXPECT_NE(credential_in_body(R"({"to":"a@example.com","Api_Key":"k"})", "application/vnd.api+json").find("Api_Key"),
              std::string::npos);
    // Unreadable: nothing can be told of it.
    EXPECT_NE(credential_in_body("{\"to\":", "application/json").find("cannot be read"), std::string::npos);
    EXPECT_NE(credential_in_body("--b\r\nno blank line", "multipart/form-data; boundary=b").find("cannot be read"),
              std::string::npos);
    const std::string multipart = "--b\r\nContent-Disposition: form-data; name=\"secret\"\r\n\r\nx\r\n--b--\r\n";
    EXPECT_NE(credential_in_body(multipart, "multipart/form-data; boundary=b").find("secret"), std::string::npos);
}

TEST(sandbox_credentials, the_mails_own_content_goes) {
    const std::string form = "application/x-www-form-urlencoded";
    EXPECT_EQ(credential_in_body("from=a@example.com&to=b@example.com&subject=Reset&text=hi", form), "");
    // Mailgun's variables, headers and options of the mail, whatever they are called.
    EXPECT_EQ(credential_in_body("to=b@example.com&v:reset_token=abc&h:X-Api-Key=k&o:testmode=yes&t:text=yes", form), "");
    // Keys inside a JSON body are the mail's (a template's variables).
    EXPECT_EQ(credential_in_body(R"({"personalizations":[{"dynamic_template_data":{"reset_token":"t","password":"p"}}],)"
                                 R"("from":{"email":"a@example.com"},"subject":"Reset"})",
                                 "application/json"),
              "");
    EXPECT_EQ(credential_in_body(R"([{"password":"p"}])", "application/json"), "") << "not an object: no field names";
    // Another type, or none: read as what it looks like.
    EXPECT_NE(credential_in_body("grant_type=jwt-bearer&assertion=eyJ", "text/plain").find("assertion"),
              std::string::npos);
    EXPECT_NE(credential_in_body(R"({"password":"p"})", "").find("password"), std::string::npos);
    EXPECT_EQ(credential_in_body("hello, world", "text/plain"), "");
    // Prose, a log line or a CSV header that mention a credential's name are no form.
    EXPECT_EQ(credential_in_body("Your session expired, reset your password here", "text/plain"), "");
    EXPECT_EQ(credential_in_body("[warn] token refreshed", "text/plain"), "");
    EXPECT_EQ(credential_in_body("email,session_id\na@x.com,1\n", "text/csv"), "");
    EXPECT_EQ(credential_in_body(R"({"password":"p"})", "text/plain"), "") << "JSON only without a type or a JSON one";
    EXPECT_NE(credential_in_body(R"({"password":"p"})", "text/json").find("password"), std::string::npos);
    EXPECT_EQ(credential_in_body("", form), "");
}
