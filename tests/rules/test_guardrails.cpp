// Content and audience guardrails (issue 7): PII, recipients, content, duplicates, over
// realistic SendGrid / Mailgun / SES / HubSpot bodies. Time comes from a manual clock.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "helpers.hpp"
#include "rules/guardrails.hpp"

namespace bb::rules::test {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::Not;

std::string guard_config(std::string_view rules_json) {
    std::string out = R"j({"failure_modes": [
        {"id": "pii-risk", "title": "PII in a send", "severity": "sev1", "owner": "security"},
        {"id": "wrong-audience", "title": "Wrong audience", "severity": "sev2", "owner": "marketing-ops"},
        {"id": "off-brand", "title": "Off-brand content", "severity": "sev3", "owner": "brand"},
        {"id": "loop", "title": "Send loop", "severity": "sev2", "owner": "marketing-ops"}],
        "rules": [)j";
    out += rules_json;
    out += "]}";
    return out;
}

std::string pii_rule(std::string_view guard) {
    return R"j({"id": "no-pii", "route": "mail-send", "guard": )j" + std::string{guard} +
           R"j(, "failure_mode": "pii-risk", "trips": "pii-deny"})j";
}

// A SendGrid v3 mail/send body whose HTML content is `html` (a JSON string body, escaped).
std::string sendgrid(std::string_view html, std::string_view extra = "") {
    std::string b = R"j({"personalizations": [{"to": [{"email": "jane.doe@example.com", "name": "Jane Doe"}],
        "subject": "Your order"}],
      "from": {"email": "orders@example.com", "name": "Example Orders"},
      "subject": "Your Example Order Confirmation",
      "content": [{"type": "text/plain", "value": "Thanks for your order."},
                  {"type": "text/html", "value": ")j";
    b += html;
    b += R"j("}])j";
    b += extra;
    b += "}";
    return b;
}

struct fixture {
    explicit fixture(std::string_view rules_json) : eng{load_ok(guard_config(rules_json))} {}
    decision check(request& req) { return eng.evaluate(req.view(), clock.now()); }
    decision check_body(std::string body, std::string content_type = "application/json") {
        request req;
        req.body = std::move(body);
        req.content_type = std::move(content_type);
        return check(req);
    }
    engine eng;
    manual_clock clock;
};

std::string temp_file(const std::string& name, std::string_view text) {
    const auto path = std::filesystem::path{::testing::TempDir()} / name;
    std::ofstream out{path, std::ios::binary | std::ios::trunc};
    out << text;
    return path.string();
}

// ---------------------------------------------------------------------------------------
// Building blocks.

TEST(GuardrailBlocks, Luhn) {
    EXPECT_TRUE(luhn_valid("4111111111111111"));
    EXPECT_FALSE(luhn_valid("4111111111111112"));
    EXPECT_TRUE(luhn_valid("378282246310005"));
    EXPECT_TRUE(luhn_valid("5555555555554444"));
    EXPECT_FALSE(luhn_valid("41111111111x1111"));
    EXPECT_FALSE(luhn_valid(""));
}

TEST(GuardrailBlocks, IbanChecksumAndLength) {
    EXPECT_TRUE(iban_valid("GB82WEST12345698765432"));
    EXPECT_FALSE(iban_valid("GB82WEST12345698765433"));  // one digit changed
    EXPECT_FALSE(iban_valid("GB82WEST1234569876543"));   // GB is 22 long
    EXPECT_TRUE(iban_valid("DE89370400440532013000"));
    EXPECT_TRUE(iban_valid("FR1420041010050500013M02606"));
    EXPECT_FALSE(iban_valid("gb82west12345698765432"));
}

TEST(GuardrailBlocks, SsnRanges) {
    EXPECT_TRUE(ssn_valid("078", "05", "1120"));  // syntactically valid (the Woolworth wallet number)
    EXPECT_TRUE(ssn_valid("123", "45", "6789"));
    EXPECT_FALSE(ssn_valid("000", "12", "3456"));
    EXPECT_FALSE(ssn_valid("666", "12", "3456"));
    EXPECT_FALSE(ssn_valid("912", "12", "3456"));
    EXPECT_FALSE(ssn_valid("123", "00", "4567"));
    EXPECT_FALSE(ssn_valid("123", "45", "0000"));
}

TEST(GuardrailBlocks, DomainsCoverSubdomainsCaseInsensitively) {
    domain_set d;
    d.add("Example.com");
    d.add("*.partner.io");
    EXPECT_TRUE(d.contains("example.com"));
    EXPECT_TRUE(d.contains("MAIL.example.COM"));
    EXPECT_TRUE(d.contains("a.b.partner.io"));
    EXPECT_TRUE(d.contains("partner.io"));
    EXPECT_FALSE(d.contains("notexample.com"));
    EXPECT_FALSE(d.contains("example.com.evil.io"));
    EXPECT_FALSE(d.contains(""));
}

TEST(GuardrailBlocks, MaskAndHash) {
    EXPECT_EQ(mask_address("jane.doe@example.com"), "j***@example.com");
    EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(GuardrailBlocks, TermMatcherIsAhoCorasickOverWords) {
    term_matcher m;
    std::string err;
    ASSERT_TRUE(m.add("free money", &err));
    ASSERT_TRUE(m.add("money back guarantee", &err));
    ASSERT_TRUE(m.add("back", &err));
    EXPECT_FALSE(m.add("!!!", &err));
    EXPECT_THAT(err, HasSubstr("at least one word"));
    m.build();
    auto run = [&](std::initializer_list<std::string_view> words) {
        std::uint32_t st = 0;
        for (auto w : words) {
            st = m.step(st, m.word_id(w));
            if (m.output(st) >= 0) {
                return m.term(static_cast<std::size_t>(m.output(st)));
            }
        }
        return std::string{};
    };
    EXPECT_EQ(run({"free", "money"}), "free money");
    EXPECT_EQ(run({"free", "free", "money"}), "free money");  // restarts through the failure link
    EXPECT_EQ(run({"money", "back"}), "back");                // a shorter term ending inside a longer one
    EXPECT_EQ(run({"free", "cash", "money"}), "");
}

// ---------------------------------------------------------------------------------------
// PII.

TEST(GuardPii, CardInSendGridContentIsFoundWithItsOffsetAndMasked) {
    fixture f{pii_rule(R"j({"pii": ["card", "ssn", "iban", "secrets"]})j")};
    const std::string body = sendgrid(R"j(<p>Hi Jane,</p>\n<p>Card on file: 4111 1111 1111 1111</p>)j");
    const auto d = f.check_body(body);
    ASSERT_EQ(d.outcome, verdict::violated) << d.reason;
    EXPECT_EQ(d.rule, "no-pii");
    EXPECT_EQ(d.failure_mode, "pii-risk");
    EXPECT_EQ(d.trips, "pii-deny");
    EXPECT_EQ(d.breaker_instance, "pii-deny");
    EXPECT_EQ(d.condition, condition_kind::guard);
    const auto at = body.find("4111 1111");
    EXPECT_EQ(d.reason, "rule no-pii (pii-risk, sev1): card number (Luhn-valid, ****1111) at body offset " +
                            std::to_string(at) + " ($.content[1].value)");
    EXPECT_THAT(d.reason, Not(HasSubstr("4111 1111 1111 1111")));
    EXPECT_THAT(d.reason, Not(HasSubstr("4111111111111111")));
}

TEST(GuardPii, LuhnFailureIsNotACard) {
    fixture f{pii_rule(R"j({"pii": ["card"]})j")};
    EXPECT_TRUE(f.check_body(sendgrid("<p>Card: 4111 1111 1111 1112</p>")).allowed());
    EXPECT_TRUE(f.check_body(sendgrid("<p>Order 4111111111111112, tracking 1Z999AA10123456784</p>")).allowed());
    EXPECT_TRUE(f.check_body(sendgrid("<p>Call 555-123-4567 or 1-800-555-0199</p>")).allowed());
}

TEST(GuardPii, CardFormats) {
    fixture f{pii_rule(R"j({"pii": ["card"]})j")};
    for (const char* text : {"4111-1111-1111-1111", "4111111111111111", "Amex 3782 822463 10005",
                             "order 12345 5555 5555 5555 4444 thanks", "card=6011111111111117;"}) {
        const auto d = f.check_body(sendgrid(std::string{"<p>"} + text + "</p>"));
        EXPECT_EQ(d.outcome, verdict::violated) << text;
        EXPECT_THAT(d.reason, HasSubstr("card number (Luhn-valid, ****")) << text;
    }
    // Numbers as JSON numbers are scanned too.
    EXPECT_FALSE(f.check_body(R"j({"custom_args": {"card": 4111111111111111}})j").allowed());
    // Separators must be consistent and single; a run of 20+ digits is not a card.
    EXPECT_TRUE(f.check_body(sendgrid("<p>4111 1111-1111 1111</p>")).allowed());
    EXPECT_TRUE(f.check_body(sendgrid("<p>41111111111111110000</p>")).allowed());
}

TEST(GuardPii, OffsetAccountsForJsonEscapes) {
    fixture f{pii_rule(R"j({"pii": ["card"]})j")};
    const std::string body = sendgrid(R"j(<a href=\"https://example.com\">x</a>\u00e9\n 4111111111111111)j");
    const auto d = f.check_body(body);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("at body offset " + std::to_string(body.find("4111111111111111"))));
}

TEST(GuardPii, InNarrowsTheScanToJsonPaths) {
    const std::string body = sendgrid("<p>Hello</p>", R"j(, "custom_args": {"note": "4111 1111 1111 1111"})j");
    fixture narrow{pii_rule(R"j({"pii": ["card"], "in": ["$.content[*].value", "$.subject"]})j")};
    EXPECT_TRUE(narrow.check_body(body).allowed());
    fixture everything{pii_rule(R"j({"pii": ["card"]})j")};
    const auto d = everything.check_body(body);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("($.custom_args.note)"));
    // A path naming an object scans everything under it.
    fixture under{pii_rule(R"j({"pii": ["card"], "in": ["$.custom_args"]})j")};
    EXPECT_FALSE(under.check_body(body).allowed());
}

TEST(GuardPii, Ssn) {
    fixture f{pii_rule(R"j({"pii": ["ssn"]})j")};
    const std::string body = sendgrid("<p>SSN on file: 078-05-1120.</p>");
    const auto d = f.check_body(body);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("US SSN at body offset " + std::to_string(body.find("078-05"))));
    EXPECT_THAT(d.reason, Not(HasSubstr("1120")));
    for (const char* text : {"000-12-3456", "666-12-3456", "912-12-3456", "123-00-4567", "123-45-0000",
                             "123-45-6789-0", "12-345-6789", "123 45 6789"}) {
        EXPECT_TRUE(f.check_body(sendgrid(std::string{"<p>"} + text + "</p>")).allowed()) << text;
    }
}

TEST(GuardPii, Iban) {
    fixture f{pii_rule(R"j({"pii": ["iban"]})j")};
    const std::string body = sendgrid("<p>Pay to GB82 WEST 1234 5698 7654 32 by Friday</p>");
    const auto d = f.check_body(body);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("IBAN (GB, mod-97 valid) at body offset " + std::to_string(body.find("GB82"))));
    EXPECT_THAT(d.reason, Not(HasSubstr("WEST")));
    EXPECT_FALSE(f.check_body(sendgrid("<p>IBAN:GB82WEST12345698765432.</p>")).allowed());
    EXPECT_FALSE(f.check_body(sendgrid("<p>DE89 3704 0044 0532 0130 00</p>")).allowed());
    EXPECT_TRUE(f.check_body(sendgrid("<p>Pay to GB82 WEST 1234 5698 7654 33 by Friday</p>")).allowed());
    EXPECT_TRUE(f.check_body(sendgrid("<p>Model GB82 WEST is great</p>")).allowed());
}

TEST(GuardPii, Secrets) {
    fixture f{pii_rule(R"j({"pii": ["secrets"]})j")};
    struct tc {
        const char* text;
        const char* kind;
        const char* secret;
    };
    const tc cases[] = {
        {"aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "AWS access key id (AKIA...)", "AKIAIOSFODNN7EXAMPLE"},
        {"key: ASIAY34FZKBOKMUTVV7A", "AWS access key id (ASIA...)", "ASIAY34FZKBOKMUTVV7A"},
        {R"j(-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq\n-----END RSA PRIVATE KEY-----)j", "private key block",
         "MIIEpAIBAAKCAQEA7bq"},
        {"-----BEGIN OPENSSH PRIVATE KEY-----", "private key block", "OPENSSH"},
        {"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc", "bearer token", "eyJhbGciOiJIUzI1NiJ9"},
        {"stripe sk_live_51H8abcdefghijklmnopqrstuv", "API secret key (sk_live_...)", "51H8abcdefghijklmnopqrstuv"},
        {"slack xoxb-123456789012-abcdefABCDEF", "Slack token (xoxb-...)", "123456789012"},
    };
    for (const auto& c : cases) {
        const std::string body = sendgrid(c.text);
        const auto d = f.check_body(body);
        ASSERT_EQ(d.outcome, verdict::violated) << c.text;
        EXPECT_THAT(d.reason, HasSubstr(c.kind)) << c.text;
        EXPECT_THAT(d.reason, Not(HasSubstr(c.secret))) << c.text;
    }
    for (const char* text : {"AKIA is a prefix", "AKIAIOSFODNN7EXAMPL", "-----BEGIN PUBLIC KEY-----",
                             "-----BEGIN CERTIFICATE-----", "Bearer short", "the bearer of good news",
                             "sk_test_51H8abcdefghijklmnopqrstuv"}) {
        EXPECT_TRUE(f.check_body(sendgrid(text)).allowed()) << text;
    }
}

TEST(GuardPii, MailgunFormFieldsAndRawBodies) {
    fixture f{pii_rule(R"j({"pii": ["card", "ssn"]})j")};
    request req;
    req.route = "mail-send";
    req.content_type = "application/x-www-form-urlencoded";
    req.body = "from=Orders+%3Corders%40example.com%3E&to=jane%40example.com&subject=Order"
               "&text=Your+card+4111+1111+1111+1111+was+charged";
    const auto d = f.check(req);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("card number (Luhn-valid, ****1111) in form field \"text\" at offset 10"));
    // `in` with form:NAME.
    fixture only_subject{pii_rule(R"j({"pii": ["card"], "in": ["form:subject"]})j")};
    EXPECT_TRUE(only_subject.check(req).allowed());

    // multipart/form-data (Mailgun accepts both).
    request mp;
    mp.content_type = "multipart/form-data; boundary=XyZ";
    mp.body = "--XyZ\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\njane@example.com\r\n"
              "--XyZ\r\nContent-Disposition: form-data; name=\"html\"\r\n\r\n<p>SSN 078-05-1120</p>\r\n--XyZ--\r\n";
    EXPECT_THAT(f.check(mp).reason, HasSubstr("US SSN in form field \"html\""));

    // Not JSON, not a form: the raw text is scanned.
    const std::string text = "Dear Jane,\nyour card 5555 5555 5555 4444 expires soon.";
    const auto raw = f.check_body(text, "text/plain");
    ASSERT_EQ(raw.outcome, verdict::violated);
    EXPECT_THAT(raw.reason, HasSubstr("at body offset " + std::to_string(text.find("5555"))));
    // A body that claims JSON but is not: still scanned, as raw bytes.
    EXPECT_FALSE(f.check_body(R"j({"content": "card 4111111111111111", )j").allowed());
}

TEST(GuardPii, HubSpotBody) {
    fixture f{pii_rule(R"j({"pii": ["card", "ssn", "iban", "secrets"]})j")};
    request req;
    req.path = "/crm/v3/objects/contacts/batch/update";
    req.body = R"j({"inputs": [{"id": "101", "properties": {"firstname": "Jane", "notes": "prefers email"}},
        {"id": "102", "properties": {"firstname": "Bob", "notes": "IBAN DE89 3704 0044 0532 0130 00"}}]})j";
    const auto d = f.check(req);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("IBAN (DE, mod-97 valid) at body offset " +
                                        std::to_string(req.body.find("DE89")) + " ($.inputs[1].properties.notes)"));
    req.body = R"j({"inputs": [{"id": "101", "properties": {"phone": "+1 555 0100", "zip": "94105"}}]})j";
    EXPECT_TRUE(f.check(req).allowed());
}

TEST(GuardPii, ScanIsLinearOnPathologicalInput) {
    // Long runs of digit groups, IBAN-like starts and key headers: every one is looked at
    // a bounded number of times, so this stays fast (the test has the ctest timeout).
    fixture f{pii_rule(R"j({"pii": ["card", "ssn", "iban", "secrets"]})j")};
    std::string text;
    while (text.size() < 512 * 1024) {
        text += "1234 5678 9012 3456 7890 1234-56-78 GB00 AAAA 1111 2222 -----BEGIN Bearer ";
    }
    EXPECT_TRUE(f.check_body(text, "text/plain").allowed());
}

// ---------------------------------------------------------------------------------------
// Recipients.

std::string recipients_rule(std::string_view inner) {
    return R"j({"id": "audience", "guard": {"recipients": )j" + std::string{inner} +
           R"j(}, "failure_mode": "wrong-audience", "trips": "audience-hold"})j";
}

std::string sendgrid_to(std::initializer_list<std::string_view> to, std::string_view bcc = "") {
    std::string b = R"j({"personalizations": [{"to": [)j";
    bool first = true;
    for (auto a : to) {
        b += first ? "" : ", ";
        first = false;
        b += R"j({"email": ")j" + std::string{a} + R"j(", "name": "Someone"})j";
    }
    b += "]";
    if (!bcc.empty()) {
        b += R"j(, "bcc": [{"email": ")j" + std::string{bcc} + R"j("}])j";
    }
    b += R"j(}], "from": {"email": "news@example.com"}, "subject": "Spring sale",
        "content": [{"type": "text/plain", "value": "Hello"}]})j";
    return b;
}

TEST(GuardRecipients, AllowlistCoversSubdomains) {
    fixture f{recipients_rule(R"j({"allow_domains": ["example.com", "partner.io"]})j")};
    EXPECT_TRUE(f.check_body(sendgrid_to({"jane@example.com", "bob@mail.EXAMPLE.com", "ann@eu.partner.io"})).allowed());
    const auto d = f.check_body(sendgrid_to({"jane@example.com", "john.smith@gmail.com"}));
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_EQ(d.reason, "rule audience (wrong-audience, sev2): recipient domain not in allowlist #1 j***@gmail.com "
                        "($.personalizations[0].to[1].email)");
    EXPECT_THAT(d.reason, Not(HasSubstr("john.smith")));
    EXPECT_FALSE(f.check_body(sendgrid_to({"x@example.com.evil.io"})).allowed());
}

TEST(GuardRecipients, Blocklist) {
    fixture f{recipients_rule(R"j({"block_domains": ["competitor.com"]})j")};
    EXPECT_TRUE(f.check_body(sendgrid_to({"jane@example.com"})).allowed());
    const auto d = f.check_body(sendgrid_to({"jane@example.com"}, "spy@Sales.Competitor.com"));
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("recipient domain blocked #1 s***@sales.competitor.com ($.personalizations[0].bcc[0].email)"));
}

TEST(GuardRecipients, SuppressionListByAddressAndBySha256) {
    const std::string path = temp_file("suppressed.txt",
                                       "# unsubscribed 2026-03-01\n"
                                       "Jane.Doe@Example.com\n"
                                       "\n"
                                       "5ff860bf1190596c7188ab851db691f0f3169c453936e9e1eba2f9a47f7a0018  # bob@example.com\n");
    fixture f{recipients_rule(R"j({"suppression_file": ")j" + path + R"j("})j")};
    const auto by_address = f.check_body(sendgrid_to({"ann@example.com", "jane.doe@example.com"}));
    ASSERT_EQ(by_address.outcome, verdict::violated);
    EXPECT_THAT(by_address.reason, HasSubstr("suppressed recipient #1 j***@example.com"));
    EXPECT_THAT(by_address.reason, Not(HasSubstr("jane.doe")));
    const auto by_hash = f.check_body(sendgrid_to({"ann@example.com"}, "BOB@example.com"));
    ASSERT_EQ(by_hash.outcome, verdict::violated);
    EXPECT_THAT(by_hash.reason, HasSubstr("suppressed recipient #1 b***@example.com ($.personalizations[0].bcc[0].email)"));
    EXPECT_TRUE(f.check_body(sendgrid_to({"ann@example.com", "carl@example.com"})).allowed());

    // Mailgun: "Name <address>" forms and comma lists in form fields.
    request mg;
    mg.path = "/v3/mg.example.com/messages";
    mg.content_type = "application/x-www-form-urlencoded";
    mg.body = "from=news%40example.com&to=%22Doe%2C+Ann%22+%3Cann%40example.com%3E%2C+Bob+%3Cbob%40example.com%3E"
              "&subject=Hi&text=Hello";
    const auto d = f.check(mg);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("suppressed recipient #1 b***@example.com (form field to)"));

    // SES v2 SendEmail.
    request ses;
    ses.path = "/v2/email/outbound-emails";
    ses.body = R"j({"FromEmailAddress": "news@example.com",
        "Destination": {"ToAddresses": ["ann@example.com"], "BccAddresses": ["jane.doe@example.com"]},
        "Content": {"Simple": {"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "Hello"}}}}})j";
    EXPECT_THAT(f.check(ses).reason, HasSubstr("suppressed recipient #1 j***@example.com ($.Destination.BccAddresses[0])"));
}

TEST(GuardRecipients, SuppressionListReloadsWhenTheConfigIsParsedAgain) {
    const std::string path = temp_file("reload.txt", "ann@example.com\n");
    const std::string cfg = guard_config(recipients_rule(R"j({"suppression_file": ")j" + path + R"j("})j"));
    engine first{load_ok(cfg)};
    manual_clock clock;
    request req;
    req.body = sendgrid_to({"carl@example.com"});
    EXPECT_TRUE(first.evaluate(req.view(), clock.now()).allowed());
    temp_file("reload.txt", "ann@example.com\ncarl@example.com\n");
    engine second{load_ok(cfg), &first};  // what SIGHUP / POST /v1/config/reload do
    EXPECT_FALSE(second.evaluate(req.view(), clock.now()).allowed());
    EXPECT_TRUE(first.evaluate(req.view(), clock.now()).allowed()) << "a parsed config never changes under a request";
}

TEST(GuardRecipients, InvalidJsonIsRejectedUnlessTheRuleSaysZero) {
    fixture f{recipients_rule(R"j({"allow_domains": ["example.com"]})j")};
    // Recipients it cannot read could be anyone: a truncated body is rejected...
    const auto d = f.check_body(R"j({"personalizations": [{"to": [{"email": "x@example.com"}, {"email": )j");
    EXPECT_EQ(d.outcome, verdict::rejected);
    EXPECT_EQ(d.reason, "rule audience (wrong-audience, sev2): cannot check guard(recipients): body is not valid JSON");
    // ...unless a recipient read before the break is already refused.
    EXPECT_EQ(f.check_body(R"j({"personalizations": [{"to": [{"email": "x@evil.com"})j").outcome, verdict::violated);
    fixture zero{R"j({"id": "audience", "guard": {"recipients": {"allow_domains": ["example.com"]}},
        "on_invalid_body": "zero", "failure_mode": "wrong-audience", "trips": "audience-hold"})j"};
    EXPECT_TRUE(zero.check_body(R"j({"personalizations": [{"to": [{"email": "x@example.com"}, )j").allowed());
}

// ---------------------------------------------------------------------------------------
// Content.

std::string content_rule(std::string_view inner, std::string_view extra = "") {
    return R"j({"id": "brand", "route": "mail-send", "guard": {"content": )j" + std::string{inner} + "}" +
           std::string{extra} + R"j(, "failure_mode": "off-brand", "trips": "brand-deny"})j";
}

TEST(GuardContent, BlockedTermsOnWordBoundaries) {
    fixture f{content_rule(R"j({"blocked_terms": ["free money", "act now", "viagra"]})j")};
    EXPECT_TRUE(f.check_body(sendgrid("<p>Win freemoney today</p>")).allowed());
    EXPECT_TRUE(f.check_body(sendgrid("<p>free_money</p>")).allowed());
    EXPECT_TRUE(f.check_body(sendgrid("<p>money for free</p>")).allowed());
    const std::string body = sendgrid("<p>Get <b>Free Money!</b></p>");
    const auto d = f.check_body(body);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_EQ(d.reason, "rule brand (off-brand, sev3): blocked term #0 (free money) at body offset " +
                            std::to_string(body.find("Free Money")) + " ($.content[1].value)");
    EXPECT_FALSE(f.check_body(sendgrid("<p>FREE-money</p>")).allowed());
    EXPECT_FALSE(f.check_body(sendgrid("<p>free\\n  money</p>")).allowed());
    // Subjects are content too.
    request req;
    req.body = sendgrid_to({"jane@example.com"});
    req.body.replace(req.body.find("Spring sale"), 11, "ACT NOW: sale");
    EXPECT_THAT(f.check(req).reason, HasSubstr("blocked term #1 (act now)"));
}

TEST(GuardContent, LinkDomainsInHtmlAndText) {
    fixture f{content_rule(R"j({"link_domains": ["example.com", "sendgrid.net"]})j")};
    EXPECT_TRUE(f.check_body(sendgrid(R"j(<a href=\"https://www.example.com/sale?utm=1\">Sale</a> https://u123.ct.sendgrid.net/ls/click)j")).allowed());
    const std::string body = sendgrid(R"j(<p>Hi</p><a href=\"https://evil.example.net/login\">Log in</a>)j");
    const auto d = f.check_body(body);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("link to a domain outside link_domains (evil.example.net) at body offset " +
                                        std::to_string(body.find("https://evil"))));
    // Userinfo does not fool the host check; scheme-relative and plain-text links count.
    EXPECT_FALSE(f.check_body(sendgrid(R"j(<a href=\"https://example.com@evil.io/\">x</a>)j")).allowed());
    EXPECT_FALSE(f.check_body(sendgrid(R"j(<a href='//evil.io/x'>x</a>)j")).allowed());
    EXPECT_FALSE(f.check_body(sendgrid("Visit HTTP://Evil.IO:8080/path now")).allowed());
    EXPECT_FALSE(f.check_body(sendgrid(R"j(see https:\/\/evil.io\/x)j")).allowed());  // JSON-escaped slashes
}

TEST(GuardContent, MissingUnsubscribeInMarketingSends) {
    // Marketing sends: here, the ones with a campaign header (the rule's match decides).
    fixture f{content_rule(R"j({"require_unsubscribe": true})j", R"j(, "match": {"headers": {"x-campaign-id": "*"}})j")};
    request req;
    req.header("x-campaign-id", "spring-sale");
    req.body = sendgrid("<p>Big spring sale!</p>");
    const auto d = f.check(req);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("missing unsubscribe link"));
    req.body = sendgrid(R"j(<p>Big spring sale!</p><a href=\"https://example.com/prefs\">Unsubscribe</a>)j");
    EXPECT_TRUE(f.check(req).allowed());
    req.body = sendgrid(R"j(<a href=\"<%asm_group_unsubscribe_raw_url%>\">Opt out</a>)j");
    EXPECT_TRUE(f.check(req).allowed());
    req.body = sendgrid("<p>Big spring sale!</p>", R"j(, "asm": {"group_id": 42})j");
    EXPECT_TRUE(f.check(req).allowed());
    req.body = sendgrid("<p>Sale</p>", R"j(, "tracking_settings": {"subscription_tracking": {"enable": true}})j");
    EXPECT_TRUE(f.check(req).allowed());
    req.body = sendgrid("<p>Sale</p>", R"j(, "tracking_settings": {"subscription_tracking": {"enable": false}})j");
    EXPECT_FALSE(f.check(req).allowed());
    // Mailgun: %unsubscribe_url% in the html field.
    req.content_type = "application/x-www-form-urlencoded";
    req.body = "to=jane%40example.com&subject=Sale&html=%3Ca+href%3D%22%25unsubscribe_url%25%22%3Eout%3C%2Fa%3E";
    EXPECT_TRUE(f.check(req).allowed());
    req.body = "to=jane%40example.com&subject=Sale&html=%3Cp%3ESale%3C%2Fp%3E";
    EXPECT_FALSE(f.check(req).allowed());
    // Transactional sends (no campaign header) are not checked by this rule.
    request tx;
    tx.body = sendgrid("<p>Your receipt</p>");
    EXPECT_TRUE(f.check(tx).allowed());
}

// ---------------------------------------------------------------------------------------
// Duplicates.

std::string dup_rule(std::string_view inner, std::string_view extra = "") {
    return R"j({"id": "no-loops", "route": "mail-send", "guard": {"duplicates": )j" + std::string{inner} + "}" +
           std::string{extra} + R"j(, "failure_mode": "loop", "trips": "loop-pause"})j";
}

TEST(GuardDuplicates, SameRecipientAndSubjectMoreThanMaxInTheWindow) {
    fixture f{dup_rule(R"j({"max": 3, "window": "10m", "of": ["recipient", "subject"]})j")};
    request req;
    req.body = sendgrid_to({"jane@example.com"});
    for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(f.check(req).allowed()) << i;
        f.clock.advance(1min);
    }
    const auto d = f.check(req);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_EQ(d.reason, "rule no-loops (loop, sev2): duplicate send: recipient #0 j***@example.com with the same "
                        "subject already sent 3 times in 10m (max 3)");
    EXPECT_EQ(d.measured, 4);
    EXPECT_EQ(d.limit, 3);
    // Another subject, or another recipient, is another pair.
    request other = req;
    other.body = sendgrid_to({"jane@example.com"});
    other.body.replace(other.body.find("Spring sale"), 11, "Summer sale");
    EXPECT_TRUE(f.check(other).allowed());
    other.body = sendgrid_to({"JANE@example.com", "bob@example.com"});
    EXPECT_FALSE(f.check(other).allowed()) << "addresses compare case-insensitively";
    other.body = sendgrid_to({"bob@example.com"});
    EXPECT_TRUE(f.check(other).allowed()) << "the refused request booked nothing for bob";
    // The refused sends were not booked: once the first send leaves the window, one more fits.
    f.clock.advance(7min + 1ms);  // first send was at t0; now t0 + 10m + 1ms
    EXPECT_TRUE(f.check(req).allowed());
    EXPECT_FALSE(f.check(req).allowed());
}

TEST(GuardDuplicates, ByTemplateAndPerPersonalizationSubjects) {
    fixture f{dup_rule(R"j({"max": 1, "window": "1h", "of": ["recipient", "template"]})j")};
    request req;
    req.body = R"j({"personalizations": [{"to": [{"email": "jane@example.com"}], "dynamic_template_data": {"n": 1}}],
        "from": {"email": "news@example.com"}, "template_id": "d-0123456789abcdef"})j";
    EXPECT_TRUE(f.check(req).allowed());
    EXPECT_FALSE(f.check(req).allowed());
    req.body.replace(req.body.find("d-0123"), 6, "d-9999");
    EXPECT_TRUE(f.check(req).allowed());

    fixture s{dup_rule(R"j({"max": 1, "window": "1h"})j")};  // default: recipient + subject
    request p;
    p.body = R"j({"personalizations": [{"to": [{"email": "jane@example.com"}], "subject": "A"},
                                       {"to": [{"email": "jane@example.com"}], "subject": "B"}],
                 "from": {"email": "news@example.com"}, "subject": "fallback"})j";
    EXPECT_TRUE(s.check(p).allowed()) << "jane gets subject A and subject B: two pairs";
    EXPECT_FALSE(s.check(p).allowed());
}

TEST(GuardDuplicates, ALaterRefusalUndoesTheBooking) {
    fixture f{dup_rule(R"j({"max": 1, "window": "1h"})j") + "," + pii_rule(R"j({"pii": ["card"]})j")};
    request bad;
    bad.body = sendgrid_to({"jane@example.com"});
    bad.body.replace(bad.body.find("Hello"), 5, "card 4111111111111111");
    const auto d = f.check(bad);
    ASSERT_EQ(d.rule, "no-pii");
    request good;
    good.body = sendgrid_to({"jane@example.com"});
    EXPECT_TRUE(f.check(good).allowed()) << "the refused request left nothing booked";
    EXPECT_FALSE(f.check(good).allowed());
}

TEST(GuardDuplicates, CountedPerRuleKey) {
    fixture f{dup_rule(R"j({"max": 1, "window": "1h", "of": ["recipient"]})j", R"j(, "key": "agent")j")};
    request a;
    a.body = sendgrid_to({"jane@example.com"});
    EXPECT_TRUE(f.check(a).allowed());
    const auto d = f.check(a);
    ASSERT_FALSE(d.allowed());
    EXPECT_EQ(d.breaker_instance, "loop-pause/agent-1");
    EXPECT_THAT(d.reason, HasSubstr("for key \"agent-1\""));
    request b = a;
    b.agent = "agent-2";
    EXPECT_TRUE(f.check(b).allowed());
}

TEST(GuardDuplicates, CounterIsBoundedAndEvictsTheLeastRecentlySeen) {
    duplicate_counter c{2, std::chrono::minutes{10}, 32};
    for (std::uint64_t k = 0; k < 1000; ++k) {
        EXPECT_EQ(c.check_and_book(k * 0x9E3779B97F4A7C15ull, 1000), 0u);
    }
    EXPECT_LE(c.keys(), 32u);
    EXPECT_GE(c.evictions(), 1000u - 32u);
    // A hot key survives a stream of cold ones as long as it keeps being seen.
    const std::uint64_t hot = 42;
    EXPECT_EQ(c.check_and_book(hot, 2000), 0u);
    for (std::uint64_t k = 0; k < 10; ++k) {
        c.check_and_book((k + 5000) * 0x9E3779B97F4A7C15ull, 2000);
    }
    EXPECT_EQ(c.check_and_book(hot, 2001), 0u);
    EXPECT_EQ(c.check_and_book(hot, 2002), 2u);
    c.unbook(hot, 2001);
    EXPECT_EQ(c.check_and_book(hot, 2003), 0u);
}

TEST(GuardDuplicates, StateSurvivesAReloadThatKeepsTheRule) {
    const std::string cfg = guard_config(dup_rule(R"j({"max": 1, "window": "1h"})j"));
    engine first{load_ok(cfg)};
    manual_clock clock;
    request req;
    req.body = sendgrid_to({"jane@example.com"});
    EXPECT_TRUE(first.evaluate(req.view(), clock.now()).allowed());
    engine second{load_ok(cfg), &first};
    EXPECT_FALSE(second.evaluate(req.view(), clock.now()).allowed());
}

// ---------------------------------------------------------------------------------------
// Config errors, each at its JSON path.

std::vector<std::string> guard_errors(std::string_view rules_json) {
    cfg::errors errs;
    load(guard_config(rules_json), errs);
    std::vector<std::string> out;
    for (const auto& e : errs.list()) {
        out.push_back(e.to_string());
    }
    return out;
}

TEST(GuardConfig, EveryErrorHasItsPath) {
    const auto lines = guard_errors(R"j(
        {"id": "a", "guard": {"pii": ["card", "passport"], "in": ["$.content[", "form:"]}, "failure_mode": "pii-risk", "trips": "x"},
        {"id": "b", "guard": {"recipients": {"suppression_file": "/nonexistent/list.txt", "allow_domains": ["a@b.com"]}},
         "failure_mode": "wrong-audience", "trips": "x"},
        {"id": "c", "guard": {"recipients": {}}, "failure_mode": "wrong-audience", "trips": "x"},
        {"id": "d", "guard": {"content": {"blocked_terms": ["ok term", "!!!"], "require_unsubscribe": "yes"}},
         "failure_mode": "off-brand", "trips": "x"},
        {"id": "e", "guard": {"duplicates": {"window": "1x", "of": ["recipient", "body"]}}, "failure_mode": "loop", "trips": "x"},
        {"id": "f", "guard": {"pii": ["card"], "content": {"require_unsubscribe": true}}, "failure_mode": "pii-risk", "trips": "x"},
        {"id": "g", "guard": {"content": {"require_unsubscribe": true}, "in": ["$.a"]}, "failure_mode": "off-brand", "trips": "x"},
        {"id": "h", "guard": {"pii": ["card"]}, "window": "1m", "measure": "requests", "failure_mode": "pii-risk", "trips": "x"},
        {"id": "i", "guard": {"pii": ["card"]}, "limit": 3, "failure_mode": "pii-risk", "trips": "x"},
        {"id": "j", "guard": {"duplicates": {"max": 1000, "window": "1m"}}, "max_keys": 100000, "failure_mode": "loop", "trips": "x"},
        {"id": "k", "guard": {"nope": 1}, "failure_mode": "pii-risk", "trips": "x"})j");
    const std::vector<std::string> expected = {
        R"j(rules[0].guard.pii[1]: "passport" is not a PII kind (card, ssn, iban, secrets))j",
        R"j(rules[0].guard.in[0]: "$.content[" is not a JSON path or form:NAME: expected *, an index or a quoted name inside [] at offset 10)j",
        R"j(rules[0].guard.in[1]: "form:" is not a JSON path or form:NAME: missing form field name)j",
        R"j(rules[1].guard.recipients.allow_domains[0]: "a@b.com" is not a domain)j",
        R"j(rules[1].guard.recipients.suppression_file: "/nonexistent/list.txt" cannot be read)j",
        R"j(rules[2].guard.recipients: needs allow_domains, block_domains or suppression_file)j",
        R"j(rules[3].guard.content.blocked_terms[1]: "!!!": a term needs at least one word (letters or digits))j",
        R"j(rules[3].guard.content.require_unsubscribe: must be true or false, not a string)j",
        R"j(rules[4].guard.duplicates.max: is required)j",
        R"j(rules[4].guard.duplicates.window: "1x" is not a duration (use a whole number with ms, s, m, h or d))j",
        R"j(rules[4].guard.duplicates.of[1]: "body" is not recipient, subject or template)j",
        R"j(rules[5].guard: give only one of pii, recipients, content or duplicates (use one rule each))j",
        R"j(rules[6].guard.in: only applies to a pii guard)j",
        R"j(rules[7].measure: a guard rule has no measure)j",
        R"j(rules[7].window: a guard rule has no window (duplicates take theirs inside the guard))j",
        R"j(rules[8]: give only one of limit, baseline or ratio)j",
        R"j(rules[9].max_keys: max_keys * guard.duplicates.max must stay within 20000000 (memory bound))j",
        R"j(rules[10].guard: needs one of pii, recipients, content or duplicates)j",
        R"j(rules[10].guard.nope: is not a known setting)j",
    };
    for (const auto& e : expected) {
        EXPECT_THAT(lines, ::testing::Contains(e));
    }
    EXPECT_EQ(lines.size(), expected.size()) << ::testing::PrintToString(lines);
}

TEST(GuardConfig, BadSuppressionLineIsReportedWithItsLine) {
    const std::string path = temp_file("bad-list.txt", "ann@example.com\nnot an address\n");
    const auto lines = guard_errors(recipients_rule(R"j({"suppression_file": ")j" + path + R"j("})j"));
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0], "rules[0].guard.recipients.suppression_file: " + cfg::quote(path) +
                            " line 2: not an email address or a SHA-256 hex digest");
}

TEST(GuardConfig, KeysForMapsAGuardRuleToItsBreaker) {
    fixture f{pii_rule(R"j({"pii": ["card"]})j")};
    request req;
    std::vector<engine::rule_key> keys;
    f.eng.keys_for(req.view(), keys);
    ASSERT_EQ(keys.size(), 1u);
    EXPECT_EQ(f.eng.rules().rules[keys[0].rule].trips, "pii-deny");
}

}  // namespace
}  // namespace bb::rules::test
