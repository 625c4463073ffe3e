// Content and audience guardrails (issue 7): PII, recipients, content, duplicates, over
// realistic SendGrid / Mailgun / SES / HubSpot bodies. Time comes from a manual clock.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/json_key.hpp"
#include "core/utf8.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <list>
#include <map>
#include <limits>
#include <optional>
#include <random>
#include <set>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.hpp"
#include "rules/guardrails.hpp"
#include "rules/guardrails_scan.hpp"
#include "rules/mime.hpp"
#include "tests/support/base64.hpp"

namespace bb::rules::test {
namespace {

using namespace std::chrono_literals;
using ::testing::AnyOf;
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

// Each test runs as its own process under ctest, in parallel and perhaps beside another
// checkout's run: the name carries the process id, so no two runs share (and truncate) a file.
// They are removed when the process ends.
std::string temp_file(const std::string& name, std::string_view text) {
    struct remover {
        std::vector<std::filesystem::path> paths;
        ~remover() {
            for (const auto& p : paths) {
                std::error_code ec;
                std::filesystem::remove(p, ec);
            }
        }
    };
    static remover made;
    const auto path = std::filesystem::path{::testing::TempDir()} / ("bb-" + std::to_string(::getpid()) + "-" + name);
    made.paths.push_back(path);
    std::ofstream out{path, std::ios::binary | std::ios::trunc};
    out << text;
    return path.string();
}

// ---------------------------------------------------------------------------------------
// Building blocks.

using bb::test::b64;

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
    // Groups joined by blanks: a double space, a tab, a line wrapped inside the number (a
    // plain-text mail wrapped at 72 columns, HTML source) that text leads up to on its line,
    // and at most one line break in a card. A line of only numbers is a list's entry (two
    // codes on two lines, 4-digit codes one per line). (JSON escapes: `\\n` is a newline.)
    const std::string wrap = "Thanks for your order! We will charge the card ";
    for (const std::string& text : std::vector<std::string>{
             "4111  1111  1111  1111", "4111\\t1111\\t1111\\t1111", wrap + "4111 1111\\n1111 1111",
             wrap + "4111 1111 \\r\\n1111 1111", wrap + "4111\\n        1111 1111 1111", "Amex 3782\\n822463 10005",
             "4111 1111  1111\\t1111", wrap + "4111 1111 1111\\n  1111", "card 4111 1111\\n1111 1111",
             "<b>Card:</b> 4111 1111\\n1111 1111"}) {
        const auto d = f.check_body(sendgrid(text));
        EXPECT_EQ(d.outcome, verdict::violated) << text;
        EXPECT_THAT(d.reason, HasSubstr("card number (Luhn-valid, ****")) << text;
    }
    EXPECT_FALSE(f.check_body("Card: 4111 1111\r\n1111 1111\r\n", "text/plain").allowed());
    for (const std::string& text : std::vector<std::string>{
             "4111\\n1111\\n1111\\n1111", wrap + "4111 1111\\n\\n1111 1111", wrap + "4111\\r\\r1111 1111 1111",
             "4111 1111                 1111 1111", wrap + "4111-1111-1111-\\n1111", "4111 1111 1111-1111",
             "4111 .1111 1111 1111", wrap + "4111 1111\\n1111\\n1111", "Codes:\\n4111 1111\\n1111 1111",
             "4111 1111\\n1111 1111", "Codes:\\n 4111 1111\\n1111 1111"}) {
        EXPECT_TRUE(f.check_body(sendgrid(text)).allowed()) << text;
    }
    EXPECT_TRUE(f.check_body("Codes:\r\n4111 1111\r\n1111 1111\r\n", "text/plain").allowed());
    // A tracking number's run of 4-digit groups reaches across a wrapped line, not across a
    // gap wider than its own: the card after that is found.
    for (const char* text : {"9123\\n4111 1111 1111 1111", "9123   4111 1111 1111 1111", "Ref 1234\\n9400 4111 1111 1111 1111"}) {
        EXPECT_FALSE(f.check_body(sendgrid(text)).allowed()) << text;
    }
    for (const char* text : {"9400  1111  5112  7527  8510  09", "Your package 9400 1111\\n5112 0000 0000 04",
                             "Your package 9400\\n1111 5112 0000 0000 04", "Your package 9400 1111 \\r\\n5112 0000 0000 04"}) {
        EXPECT_TRUE(f.check_body(sendgrid(text)).allowed()) << text;
    }
    // Numbers as JSON numbers are scanned too, also with an exponent (a template engine
    // prints 4111111111111111e0 as 4111111111111111); not a number that is not whole.
    EXPECT_FALSE(f.check_body(R"j({"custom_args": {"card": 4111111111111111}})j").allowed());
    const std::string padded = "4111111.111111111" + std::string(2000, '0') + "e9";  // zeros as far as JSON allows
    for (const std::string& n : {std::string{"4111111111111111e0"}, std::string{"4.111111111111111E15"},
                                std::string{"41111111111111110e-1"}, std::string{"411111111111111.1e+1"},
                                std::string{"4.111111111111111e0015"}, padded,
                                std::string{"0.0000000004111111111111111e25"},
                                "0." + std::string(1000, '0') + "4111111111111111e1016",
                                "4111111111111111" + std::string(1000, '0') + "e-1000"}) {
        const auto d = f.check_body(std::string{R"j({"dynamic_template_data": {"card": )j"} + n + "}}");
        EXPECT_EQ(d.outcome, verdict::violated) << n;
        EXPECT_THAT(d.reason, HasSubstr("****1111")) << n;
        EXPECT_THAT(d.reason, HasSubstr("with an exponent")) << n;
    }
    // In a key (a SendGrid header name is a header of the mail; templates print keys), of a
    // value or of a container, and in a form field's name.
    for (const char* body : {R"j({"headers": {"X-Ref-4111111111111111": "1"}})j",
                             R"j({"dynamic_template_data": {"4111 1111 1111 1111": {"a": 1}}})j"}) {
        const auto d = f.check_body(body);
        EXPECT_EQ(d.outcome, verdict::violated) << body;
        EXPECT_THAT(d.reason, HasSubstr("in the key of the value at body offset")) << body;
        EXPECT_THAT(d.reason, Not(HasSubstr("4111111111111111"))) << d.reason;
    }
    const auto named = f.check_body("v%3A4111111111111111=1&to=a%40example.com", "application/x-www-form-urlencoded");
    EXPECT_EQ(named.outcome, verdict::violated);
    EXPECT_THAT(named.reason, HasSubstr("in the name of form field 0"));
    EXPECT_TRUE(f.check_body(R"j({"headers": {"X-Campaign-2026-03-14": "1", "order_123456789": 2}})j").allowed());
    // In JSON carried in a string (SES TemplateData, v2 and v1): the API parses it and its
    // template prints the number whole. A first number that is no card hides no later one.
    for (const char* body : {
             R"j({"Content": {"Template": {"TemplateName": "t", "TemplateData": "{\"n\": 1e3, \"card\": 4.111111111111111e15}"}}})j",
             R"j({"BulkEmailEntries": [{"ReplacementEmailContent": {"ReplacementTemplate": {"ReplacementTemplateData": "[4111111111111111E0]"}}}]})j",
         }) {
        const auto d = f.check_body(body);
        EXPECT_EQ(d.outcome, verdict::violated) << body;
        EXPECT_THAT(d.reason, HasSubstr("in JSON inside a string")) << body;
    }
    const auto v1 = f.check_body("Action=SendTemplatedEmail&TemplateData=%7B%22card%22%3A4.111111111111111e15%7D",
                                 "application/x-www-form-urlencoded");
    EXPECT_EQ(v1.outcome, verdict::violated);
    EXPECT_THAT(v1.reason, HasSubstr("in form field"));
    EXPECT_TRUE(f.check_body(R"j({"Content": {"Template": {"TemplateData": "{\"price\": 1.5e2, \"id\": 4.1e15}"}}})j")
                    .allowed())
        << "whole numbers that are no card";
    // Text in the embedded document's strings, and digits inside a word, are no numbers: an
    // id or a colour that holds 42e14 (4200000000000000, Luhn-valid) is printed as written.
    for (const char* data : {R"j({\"order\": \"c0ffee42e14fab\"})j", R"j({\"color\": \"#42e14c\"})j",
                             R"j([\"42e14\"])j", R"j({\"x\": 1, \"y\": \"a 42e14 b\"})j"}) {
        const std::string body = std::string{R"j({"Content": {"Template": {"TemplateData": ")j"} + data + "\"}}}";
        EXPECT_TRUE(f.check_body(body).allowed()) << body;
    }
    const std::string hex_form = "recipient-variables=%7B%22a%40x.io%22%3A%7B%22id%22%3A%22c0ffee42e14fab%22%7D%7D";
    EXPECT_TRUE(f.check_body(hex_form, "application/x-www-form-urlencoded").allowed());
    for (const char* n : {"4.1111111111111115e15", "4111111111111111e-3", "1e400", "0e15"}) {
        EXPECT_TRUE(f.check_body(std::string{R"j({"dynamic_template_data": {"card": )j"} + n + "}}").allowed()) << n;
    }
    // Dots as separators, as some receipts and exports write them.
    for (const char* text : {"4111.1111.1111.1111", "card 5555.5555.5555.4444.", "3782.822463.10005"}) {
        const auto d = f.check_body(sendgrid(std::string{"<p>"} + text + "</p>"));
        EXPECT_EQ(d.outcome, verdict::violated) << text;
        EXPECT_THAT(d.reason, HasSubstr("card number (Luhn-valid, ****")) << text;
    }
    EXPECT_TRUE(f.check_body(sendgrid("<p>4111.1111 1111.1111 and v4111.1111.1111.1111</p>")).allowed());
    // Separators must be consistent and single; a run of 20+ digits is not a card.
    EXPECT_TRUE(f.check_body(sendgrid("<p>4111 1111-1111 1111</p>")).allowed());
    EXPECT_TRUE(f.check_body(sendgrid("<p>41111111111111110000</p>")).allowed());
    // Not cards: a 22-digit USPS tracking number as USPS shows it (its last 14 digits are
    // Luhn-valid), four years (2017 is no issued 2-series prefix). A 2-series Mastercard is.
    EXPECT_TRUE(f.check_body(sendgrid("<p>Tracking 9400 1111 5112 0000 0000 04</p>")).allowed());
    EXPECT_TRUE(f.check_body(sendgrid("<p>Vintages 2017 2018 2019 2020</p>")).allowed());
    EXPECT_FALSE(f.check_body(sendgrid("<p>2221 0000 0000 0009</p>")).allowed());
    EXPECT_FALSE(f.check_body(sendgrid("<p>Tracking 9400 1111, card 4111 1111 1111 1111</p>")).allowed());
    EXPECT_FALSE(f.check_body(sendgrid("<p>PIN 1234 4111 1111 1111 1111</p>")).allowed());
    EXPECT_FALSE(f.check_body(sendgrid("<p>9400 3782 822463 10005</p>")).allowed()) << "Amex groups are no run of fours";
}

TEST(GuardPii, OffsetAccountsForJsonEscapes) {
    fixture f{pii_rule(R"j({"pii": ["card"]})j")};
    const std::string body = sendgrid(R"j(<a href=\"https://example.com\">x</a>\u00e9\n 4111111111111111)j");
    const auto d = f.check_body(body);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("at body offset " + std::to_string(body.find("4111111111111111"))));
}

TEST(GuardPii, ABodyLabelledJsonThatCannotBeReadIsAnInvalidBody) {
    // Jackson and Python read past a byte order mark: the value after it is scanned.
    fixture f{pii_rule(R"j({"pii": ["card"]})j")};
    const std::string escaped = sendgrid(R"j(Card \u0034111 1111 1111 1111)j");
    EXPECT_EQ(f.check_body(escaped).outcome, verdict::violated);
    EXPECT_EQ(f.check_body("\xEF\xBB\xBF" + escaped).outcome, verdict::violated);
    // UTF-16, nesting past ours: the raw bytes hide what such an upstream reads, so the guard
    // says it cannot read the body (rejected by default) rather than that it is clean.
    std::string utf16;
    for (const char c : escaped) {
        utf16 += c;
        utf16 += '\0';
    }
    const auto wide = f.check_body(utf16);
    EXPECT_EQ(wide.outcome, verdict::rejected) << wide.reason;
    EXPECT_THAT(wide.reason, HasSubstr("labelled JSON but cannot be read as JSON"));
    const std::string deep = std::string(600, '[') + R"j("Card \u0034111 1111 1111 1111")j" + std::string(600, ']');
    EXPECT_EQ(f.check_body(deep).outcome, verdict::rejected);
    // What the raw bytes do show is still reported; an unlabelled body is read as text.
    EXPECT_EQ(f.check_body(std::string(600, '[') + "\"4111 1111 1111 1111\"").outcome, verdict::violated);
    EXPECT_TRUE(f.check_body("{not json", "text/plain").allowed());
    // No body, or only blanks, with the JSON header (a DELETE from a client that always sends
    // it): nothing to read, nothing hidden.
    EXPECT_TRUE(f.check_body("").allowed());
    EXPECT_TRUE(f.check_body(" \r\n").allowed());
    EXPECT_TRUE(f.check_body("\xEF\xBB\xBF").allowed());
    fixture c{R"j({"id": "brand", "route": "mail-send", "guard": {"content": {"blocked_terms": ["free money"]}},
                   "failure_mode": "pii-risk", "trips": "pii-deny"})j"};
    EXPECT_EQ(c.check_body(std::string(600, '[') + R"j("fr\u0065e money")j" + std::string(600, ']')).outcome,
              verdict::rejected);
}

TEST(GuardPii, KeysAndFieldNamesThatHoldSecretsAreNotShown) {
    // Findings reach the logs and the client: a key or field name is named only when the pii
    // guard would find nothing in it.
    fixture f{pii_rule(R"j({"pii": ["card"]})j")};
    const auto d = f.check_body(R"j({"custom_args": {"AKIAIOSFODNN7EXAMPLE": "4111 1111 1111 1111"}})j");
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("($.custom_args['...'])"));
    EXPECT_THAT(d.reason, Not(HasSubstr("AKIA")));
    EXPECT_THAT(f.check_body(R"j({"custom_args": {"note": "4111 1111 1111 1111"}})j").reason,
                HasSubstr("($.custom_args.note)"));
    const auto form = f.check_body("AKIAIOSFODNN7EXAMPLE=4111111111111111&v%3Anote=4111111111111111",
                                   "application/x-www-form-urlencoded");
    ASSERT_EQ(form.outcome, verdict::violated);
    EXPECT_THAT(form.reason, HasSubstr("in form field (a name not shown)"));
    EXPECT_THAT(form.reason, Not(HasSubstr("AKIA")));
    EXPECT_THAT(f.check_body("v%3Anote=4111111111111111", "application/x-www-form-urlencoded").reason,
                HasSubstr("in form field \"v:note\""));
}

TEST(GuardPii, DigitsOfOtherScriptsAndStyledDigitsAreRead) {
    fixture f{pii_rule(R"j({"pii": ["card"]})j")};
    auto card_in = [](const std::string& zero, std::string_view mark = "") {
        // 4111 1111 1111 1111 written with the digits that start at `zero`.
        std::string out;
        for (const char c : std::string_view{"4111 1111 1111 1111"}) {
            if (c == ' ') {
                out += ' ';
                continue;
            }
            std::string d = zero;
            d.back() = static_cast<char>(d.back() + (c - '0'));
            out += d;
            out += mark;
        }
        return out;
    };
    for (const auto& [name, text] : std::vector<std::pair<std::string, std::string>>{
             {"Arabic-Indic", card_in("\xD9\xA0")},                      // U+0660
             {"Devanagari", card_in("\xE0\xA5\xA6")},                    // U+0966
             {"mathematical bold", card_in("\xF0\x9D\x9F\x8E")},         // U+1D7CE
             {"strikethrough", card_in("0", "\xCC\xB6")},                // U+0336 after each digit
             {"keycaps", card_in("0", "\xEF\xB8\x8F\xE2\x83\xA3")}}) {  // U+FE0F U+20E3
        const auto d = f.check_body(sendgrid("<p>Card " + text + "</p>"));
        EXPECT_EQ(d.outcome, verdict::violated) << name;
        EXPECT_THAT(d.reason, HasSubstr("****1111")) << name;
    }
    EXPECT_TRUE(f.check_body(sendgrid("<p>\xD9\xA1\xD9\xA2\xD9\xA3 caf\x65\xCC\x81</p>")).allowed());
}

// CJK text puts no space around numbers: a card or an SSN glued to non-ASCII text on either
// side is still one (`カード番号：4111...です`); glued to ASCII letters it is part of a word.
TEST(GuardPii, NumbersGluedToNonAsciiTextAreRead) {
    fixture f{pii_rule(R"j({"pii": ["card", "ssn"]})j")};
    for (const std::string text : {"\xE7\x95\xAA\xE5\x8F\xB7" "4111111111111111",            // 番号4111...
                                   "\xEF\xBC\x9A" "4111 1111 1111 1111\xE3\x81\xA7\xE3\x81\x99",  // ：4111 ...です
                                   "4111-1111-1111-1111\xE5\x86\x86",                           // ...円
                                   "\xE7\x95\xAA\xE5\x8F\xB7" "078-05-1120\xE3\x81\xA7\xE3\x81\x99"}) {
        const auto d = f.check_body(sendgrid("<p>" + text + "</p>"));
        EXPECT_EQ(d.outcome, verdict::violated) << text;
    }
    for (const std::string text : {"card4111111111111111", "4111111111111111x", "id_4111111111111111",
                                   "\xE7\x95\xAA" "4111111111111111" "0000", "\xE7\x95\xAA" "41111111\xE7\x95\xAA" "11111111"}) {
        EXPECT_TRUE(f.check_body(sendgrid("<p>" + text + "</p>")).allowed()) << text;
    }
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

TEST(GuardPii, NumbersHiddenByHtmlReferencesOrInvisibleCharactersAreFound) {
    // HTML editors write no-break spaces into numbers so they do not wrap; a scan of the
    // bytes as written would see `&nbsp;` as a word, not a separator.
    fixture f{pii_rule(R"j({"pii": ["card", "ssn"]})j")};
    const std::string body = sendgrid("<p>Card on file: 4111&nbsp;1111&nbsp;1111&nbsp;1111</p>");
    const auto d = f.check_body(body);
    ASSERT_EQ(d.outcome, verdict::violated) << d.reason;
    EXPECT_EQ(d.reason, "rule no-pii (pii-risk, sev1): card number (Luhn-valid, ****1111) (written with HTML "
                        "character references or invisible or look-alike characters) at body offset " +
                            std::to_string(body.find("4111&nbsp;")) + " ($.content[1].value)");
    for (const char* html : {"4111&#160;1111&#160;1111&#160;1111", "4111&#xa0;1111&#XA0;1111&#xA0;1111",
                             R"(4111\u00a01111\u00a01111\u00a01111)", "4111\xc2\xa0" "1111\xc2\xa0" "1111\xc2\xa0" "1111",
                             "4111\xe2\x80\xaf" "1111\xe2\x80\xaf" "1111\xe2\x80\xaf" "1111",
                             "&#52;&#49;&#49;&#49; 1111 1111 1111", "&#x34&#x31&#x31&#x31 1111 1111 1111",
                             "41\xe2\x80\x8b" "11 1111 1111 1111", "4111 11&shy;11 1111 1111", "4111 11\xc2\xad" "11 1111 1111",
                             "\xef\xbc\x94\xef\xbc\x91\xef\xbc\x91\xef\xbc\x91 1111 1111 1111",
                             "4111&#8209;1111&#8209;1111&#8209;1111", "4111&ndash;1111&ndash;1111&ndash;1111",
                             "4111\xe2\x80\x91" "1111\xe2\x80\x91" "1111\xe2\x80\x91" "1111", "4111&nbsp1111&nbsp1111&nbsp1111",
                             "4111&#150;1111&#150;1111&#150;1111", "41&lrm;11 1111 1111 1111", "4111&mdash;1111&mdash;1111&mdash;1111"}) {
        const auto hidden = f.check_body(sendgrid(std::string{"<p>Card: "} + html + "</p>"));
        EXPECT_EQ(hidden.outcome, verdict::violated) << html;
        EXPECT_THAT(hidden.reason, HasSubstr("card number (Luhn-valid, ****1111) (written with HTML")) << html;
    }
    const std::string ssn = sendgrid("<p>SSN: 078&#8209;05&#8209;1120</p>");
    EXPECT_THAT(f.check_body(ssn).reason, HasSubstr("US SSN (written with HTML character references or invisible or "
                                                    "look-alike characters) at body offset " +
                                                    std::to_string(ssn.find("078&"))));
    // Form fields and raw messages are read the same way.
    EXPECT_FALSE(f.check_body("html=4111%26nbsp%3B1111%26nbsp%3B1111%26nbsp%3B1111", "application/x-www-form-urlencoded")
                     .allowed());
    // Digit groups styled one by one: an inline element or a comment between them shows as
    // nothing, so the number shows whole.
    const std::string styled = sendgrid("<p>Card: 4111 <b>1111</b> 1111 1111</p>");
    EXPECT_EQ(f.check_body(styled).reason, "rule no-pii (pii-risk, sev1): card number (Luhn-valid, ****1111) (as shown, "
                                           "without its HTML tags) at body offset " +
                                               std::to_string(styled.find("4111 <b>")) + " ($.content[1].value)");
    for (const char* html : {"<span>4111</span> <span>1111</span> <span>1111</span> <span>1111</span>",
                             "41<i>11</i>-1111-1111-1111", "4111111<!-- x -->111111111", "078-<b>05</b>-1120",
                             "4111 1111<font color=\\\"red\\\"> 1111</font> 1111", "4111 1111 1111&nbsp;<b>1111</b>",
                             "<!--1<b \\\"-->4111 <b>1111</b> 1111 1111"}) {
        const auto d2 = f.check_body(sendgrid(std::string{"<p>"} + html + "</p>"));
        EXPECT_FALSE(d2.allowed()) << html;
        EXPECT_THAT(d2.reason, HasSubstr("without its HTML tags")) << html;
    }
    // Blanks doubled, by references or around a tag, still join (a browser shows one space).
    for (const char* html : {"4111&nbsp;&nbsp;1111&nbsp;1111&nbsp;1111", "4111 <b> 1111</b> 1111 1111",
                             "4111<i></i> <i></i> <i></i> <i></i> <i></i> <i></i> <i></i> <i></i> <i></i> 1111 1111 1111",
                             "Card: 4111\\n  <b>1111</b> 1111 1111", "Card: <span>4111</span>\\n<span>1111</span> 1111 1111"}) {
        EXPECT_FALSE(f.check_body(sendgrid(std::string{"<p>"} + html + "</p>")).allowed()) << html;
    }
    // What shows as no card is no card: references of punctuation, other spaces, a bad Luhn,
    // a break between the groups (a cell, a line), a separator doubled by a tag.
    for (const char* html : {"4111&amp;1111&amp;1111&amp;1111", "4111&nbsp;1111&nbsp;1111&nbsp;1112",
                             "4111&nbsp;1111-1111&nbsp;1111", "4111 1111 <br>1111 1111", "4111-<b>-1111</b>-1111-1111",
                             "4111&#8203 1111 &zwnj 1111 1111", "4111</td><td>1111</td><td>1111</td><td>1111",
                             "4111<br>1111<br>1111<br>1111", "4111 <b>1111</b> 1111 1112",
                             "4111<br>1111<br>1111<br>1111 ref 12<b>34</b>", "4111</p><p>1111</p><p>1111</p><p>1111 5<i>6</i>"}) {
        const auto d2 = f.check_body(sendgrid(std::string{"<p>"} + html + "</p>"));
        EXPECT_TRUE(d2.allowed()) << html << ": " << d2.reason;
    }
}

TEST(GuardPii, AttachmentsAreReadDecoded) {
    // An agent attaching a customer export: the file is base64 in the JSON, so a scan of the
    // string as written sees nothing.
    fixture f{pii_rule(R"j({"pii": ["card", "ssn"]})j")};
    const std::string csv = b64("name,card\nJane,4111 1111 1111 1111\n");
    const std::string body = sendgrid("<p>Your export</p>", R"j(, "attachments": [{"content": ")j" + b64("logo") +
                                                                R"j(", "type": "image/png", "filename": "logo.png"},
                                        {"content": ")j" + csv + R"j(", "type": "text/csv", "filename": "customers.csv"}])j");
    auto d = f.check_body(body);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_EQ(d.reason, "rule no-pii (pii-risk, sev1): card number (Luhn-valid, ****1111) at offset 15 of the attachment at "
                        "$.attachments[1].content (decoded from base64)");
    // Whatever type it claims; line-wrapped base64 too.
    std::string wrapped = b64("SSN: 078-05-1120");
    wrapped.insert(8, "\\r\\n");
    d = f.check_body(sendgrid("<p>x</p>", R"j(, "attachments": [{"content": ")j" + wrapped + R"j(", "type": "application/octet-stream"}])j"));
    EXPECT_THAT(d.reason, HasSubstr("US SSN at offset 5 of the attachment at $.attachments[0].content"));
    // SES v2 SendEmail's Simple content.
    d = f.check_body(R"j({"Content": {"Simple": {"Subject": {"Data": "Export"}, "Body": {"Text": {"Data": "Attached."}},
        "Attachments": [{"FileName": "x.txt", "RawContent": ")j" + b64("card 4111111111111111") + R"j("}]}}})j");
    EXPECT_THAT(d.reason, HasSubstr("of the attachment at $.Content.Simple.Attachments[0].RawContent"));
    d = f.check_body(R"j({"DefaultContent": {"Template": {"TemplateName": "t", "Attachments": [{"FileName": "x.csv",
        "RawContent": ")j" + b64("card 4111111111111111") + R"j("}]}}, "BulkEmailEntries": []})j");
    EXPECT_THAT(d.reason, HasSubstr("of the attachment at $.DefaultContent.Template.Attachments[0].RawContent"));
    // Clean files pass; a string that is not base64 is read as written like any other.
    EXPECT_TRUE(f.check_body(sendgrid("<p>x</p>", R"j(, "attachments": [{"content": ")j" + b64("name,total\nJane,19.99\n") + R"j("}])j"))
                    .allowed());
    d = f.check_body(sendgrid("<p>x</p>", R"j(, "attachments": [{"content": "card 4111 1111 1111 1111!"}])j"));
    EXPECT_THAT(d.reason, HasSubstr("at body offset"));
    // A file in UTF-16 (Excel's "Unicode Text" export): with a byte order mark either way, or
    // without one; the offset is the file's (an emoji before the card is four bytes).
    std::string text;
    const auto utf16 = [](std::string_view ascii, bool le, std::string_view mark) {
        std::string out{mark};
        for (const char c : ascii) {
            out += le ? std::string{c, '\0'} : std::string{'\0', c};
        }
        return out;
    };
    const std::string excel = utf16("name\tcard\r\nJane\t4111 1111 1111 1111\r\n", true, "\xFF\xFE");
    d = f.check_body(sendgrid("<p>x</p>", R"j(, "attachments": [{"content": ")j" + b64(excel) + R"j(", "type": "text/plain"}])j"));
    EXPECT_EQ(d.reason, "rule no-pii (pii-risk, sev1): card number (Luhn-valid, ****1111) (in UTF-16 text) at offset " +
                            std::to_string(excel.find('4')) + " of the attachment at $.attachments[0].content (decoded from base64)");
    const std::pair<std::string, std::size_t> files[] = {
        {utf16("SSN 078-05-1120", false, "\xFE\xFF"), 10},
        {utf16("SSN 078-05-1120", true, ""), 8},
        {utf16("SSN 078-05-1120", false, ""), 8},
        {std::string{"\xFF\xFE\x3D\xD8\x00\xDE", 6} + utf16(" 078-05-1120", true, ""), 8},  // mark, an emoji, a space
    };
    for (const auto& [file, offset] : files) {
        d = f.check_body(sendgrid("<p>x</p>", R"j(, "attachments": [{"content": ")j" + b64(file) + R"j("}])j"));
        EXPECT_THAT(d.reason, HasSubstr("US SSN (in UTF-16 text) at offset " + std::to_string(offset) + " of the attachment"))
            << d.reason;
    }
    // The bytes are read first: a mark or NULs in front hide nothing written in ASCII after
    // them (a reader that skips them shows it). UTF-32's mark is no UTF-16 mark.
    for (const std::string& file : {std::string{"\xFF\xFE" "Card 4111 1111 1111 1111"},
                                    utf16(std::string(64, 'a'), true, "") + "Card 4111 1111 1111 1111"}) {
        d = f.check_body(sendgrid("<p>x</p>", R"j(, "attachments": [{"content": ")j" + b64(file) + R"j("}])j"));
        EXPECT_THAT(d.reason, HasSubstr("card number (Luhn-valid, ****1111) at offset")) << d.reason;
        EXPECT_THAT(d.reason, Not(HasSubstr("UTF-16"))) << d.reason;
    }
    EXPECT_FALSE(detail::utf16_text(std::string{"\xFF\xFE\0\0" "4\0\0\0", 8}, text));
    // A multipart form's file (Mailgun), a raw message's attachment.
    request upload;
    upload.content_type = "multipart/form-data; boundary=XyZ";
    upload.body = "--XyZ\r\nContent-Disposition: form-data; name=\"attachment\"; filename=\"c.txt\"\r\n\r\n" +
                  utf16("card 4111111111111111", true, "\xFF\xFE") + "\r\n--XyZ--\r\n";
    EXPECT_THAT(f.check(upload).reason, HasSubstr("(in UTF-16 text) in form field \"attachment\" at offset 12"));
    EXPECT_THAT(f.check_body("text=%FF%FE4111111111111111", "application/x-www-form-urlencoded").reason,
                HasSubstr("card number (Luhn-valid, ****1111) in form field \"text\" at offset 2"));
    // Binary files with NULs are no UTF-16 text; nor is UTF-16 that is not mostly ASCII
    // without a mark (read as its bytes, as before).
    EXPECT_FALSE(detail::utf16_text(std::string{"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\x01\0", 20}, text));
    EXPECT_FALSE(detail::utf16_text(std::string{"a\0b\0c\0\0\0d\0", 10}, text));
    EXPECT_FALSE(detail::utf16_text(std::string{"\xFF\xFE", 2}, text));
    ASSERT_TRUE(detail::utf16_text(std::string{"\xFE\xFF\xD8\x3D\xDE\x00\x00\x41\xD8\x00", 10}, text));
    EXPECT_EQ(text, "\xF0\x9F\x98\x80" "A\xEF\xBF\xBD") << "a pair, a letter, an unpaired surrogate";
    // With `in`, only what it names.
    fixture narrow{pii_rule(R"j({"pii": ["card"], "in": ["$.content"]})j")};
    EXPECT_TRUE(narrow.check_body(body).allowed());
    fixture named{pii_rule(R"j({"pii": ["card"], "in": ["attachment:$.files[*].data"]})j")};
    EXPECT_FALSE(named.check_body(R"j({"files": [{"data": ")j" + csv + R"j("}]})j").allowed());
    EXPECT_TRUE(named.check_body(body).allowed());
}

TEST(GuardPii, Ssn) {
    fixture f{pii_rule(R"j({"pii": ["ssn"]})j")};
    const std::string body = sendgrid("<p>SSN on file: 078-05-1120.</p>");
    const auto d = f.check_body(body);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("US SSN at body offset " + std::to_string(body.find("078-05"))));
    EXPECT_THAT(d.reason, Not(HasSubstr("1120")));
    for (const char* text : {"000-12-3456", "666-12-3456", "912-12-3456", "123-00-4567", "123-45-0000",
                             "123-45-6789-0", "12-345-6789", "123 45 6789 0", "1 123 45 6789", "123 45-6789",
                             "123-45 6789", "123.45.6789", "000 12 3456", "12-34 078 05 1120", "1-078-05-1120"}) {
        EXPECT_TRUE(f.check_body(sendgrid(std::string{"<p>"} + text + "</p>")).allowed()) << text;
    }
    // Only single spaces join an SSN's groups (`078  05  1120` is a column of numbers).
    for (const char* text : {"078  05  1120", "078 05\\n1120", "078\\t05\\t1120", "078 05  1120"}) {
        EXPECT_TRUE(f.check_body(sendgrid(text)).allowed()) << text;
    }
    // Written with spaces, as forms and scanned letters do; after a dashed number too, and
    // after a number on the line before or a double space away.
    for (const char* text : {"SSN 078 05 1120.", "ssn: 123 45 6789", "ref 12-34, 078 05 1120", "1 078-05-1120",
                             "Order 1234\\n078 05 1120", "Order 1234  078 05 1120"}) {
        const auto spaced = f.check_body(sendgrid(std::string{"<p>"} + text + "</p>"));
        EXPECT_EQ(spaced.outcome, verdict::violated) << text;
        EXPECT_THAT(spaced.reason, HasSubstr("US SSN")) << text;
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
    // Followed by a capitalised word (German nouns): the IBAN ends before it.
    EXPECT_FALSE(f.check_body(sendgrid("<p>DE89 3704 0044 0532 0130 00 Deutsche Bank</p>")).allowed());
    EXPECT_FALSE(f.check_body(sendgrid("<p>DE89370400440532013000 Thanks</p>")).allowed());
    EXPECT_FALSE(f.check_body(sendgrid("<p>GB82 WEST 1234 5698 7654 32 Bitte</p>")).allowed());
    EXPECT_TRUE(f.check_body(sendgrid("<p>DE89370400440532013000abc</p>")).allowed()) << "one word, not an IBAN";
    // With lower case, as typed into a form (a phone capitalises the field's first letter);
    // only for the countries whose length is known.
    for (const char* text : {"iban: de89 3704 0044 0532 0130 00", "gb82west12345698765432", "gb82 west 1234 5698 7654 32 thanks",
                             "<b>fr14 2004 1010 0505 0001 3m02 606</b>", "De89 3704 0044 0532 0130 00", "gb82WEST12345698765432",
                             "Gb82 West 1234 5698 7654 32", "GB82 west 1234 5698 7654 32", "dE89370400440532013000 Danke",
                             "FR14 2004 1010 0505 0001 3m02 606"}) {
        const auto lower = f.check_body(sendgrid(std::string{"<p>"} + text + "</p>"));
        EXPECT_EQ(lower.outcome, verdict::violated) << text;
        EXPECT_THAT(lower.reason, HasSubstr("mod-97 valid")) << text;
    }
    // Not laid out as an IBAN: CSS and prose after a colour (`#de8500` reads DE85, and
    // `00NONEREPEATSCROLL` passes mod-97 at Germany's 22 characters), a hex id in one piece.
    for (const char* text : {"gb82 west 1234 5698 7654 33", "Gb82 West 1234 5698 7654 33", "De89370400440532013000abc",
                             "de89370400440532013000abc", "de89 3704 0044 0532 0130", "De89 370 4004 4053 2013 000",
                             "<td style=\\\"background: #De8500 none repeat scroll 0 0;\\\">",
                             "<td style=\\\"background: #de8500 none repeat scroll 0 0;\\\">",
                             "de89 370 4004 4053 2013 000", "fr1420041010050500013m02606",
                             // Masked for its owner (these pass mod-97): a group of one letter repeated.
                             "DE89 xxxx xxxx xxxx xxxx 53", "DE89 XXXX XXXX XXXX XXXX 53", "DE89 3704 0044 0532 53xx xx"}) {
        EXPECT_TRUE(f.check_body(sendgrid(std::string{"<p>"} + text + "</p>")).allowed()) << text;
    }
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

    // Fields in the query string are checked like the body's (a form API may read them).
    req.query = "html=SSN+078-05-1120";
    EXPECT_THAT(only_subject.check(req).reason, Not(HasSubstr("SSN")));
    EXPECT_THAT(f.check(req).reason, HasSubstr("form field \"text\"")) << "the body's first";
    req.body = "from=orders%40example.com&to=jane%40example.com&subject=Order";
    EXPECT_THAT(f.check(req).reason, HasSubstr("US SSN in form field \"html\""));
    request no_body;
    no_body.content_type = "";
    no_body.body = "";
    no_body.query = "to=jane%40example.com&text=card+4111+1111+1111+1111";
    EXPECT_THAT(f.check(no_body).reason, HasSubstr("in form field \"text\""));
    // A JSON label on an empty body hides nothing: the query's fields are what it says.
    no_body.content_type = "application/json";
    EXPECT_THAT(f.check(no_body).reason, HasSubstr("in form field \"text\""));
    no_body.content_type = "";
    // A raw ';' in a query read as form fields: servers that split there read other fields.
    req.query = "o:tag=x;text=4111+1111+1111+1111";
    const auto semicolon = f.check(req);
    EXPECT_EQ(semicolon.outcome, verdict::rejected);
    EXPECT_THAT(semicolon.reason, HasSubstr("query string with a raw ';'"));
    // Beside a JSON body the query's fields are read too (an upstream that merges query and
    // form fields reads them); a raw ';' there reads two ways, as beside a form.
    request json_req;
    json_req.route = "mail-send";
    json_req.content_type = "application/json";
    json_req.body = R"({"subject":"hello"})";
    json_req.query = "a=1;b=2";
    EXPECT_EQ(f.check(json_req).outcome, verdict::rejected);
    json_req.query = "a=1&b=2";
    EXPECT_TRUE(f.check(json_req).allowed());
    json_req.query = "to=jane%40example.com&text=card+4111+1111+1111+1111";
    const auto beside = f.check(json_req);
    ASSERT_EQ(beside.outcome, verdict::violated);
    EXPECT_THAT(beside.reason, HasSubstr("in form field \"text\" at offset 5 (in the query string)"));

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
    // Which address a parser takes from these is its own guess: refused, not read as example.com.
    for (const char* odd : {"a@evil.io>x@example.com", "a@evil.io@example.com"}) {
        const auto m = f.check_body(sendgrid_to({odd}));
        ASSERT_EQ(m.outcome, verdict::violated) << odd;
        EXPECT_THAT(m.reason, HasSubstr("recipient address malformed #0")) << odd;
    }
    EXPECT_FALSE(f.check_body(sendgrid_to({"x@example.com<a@evil.io"})).allowed()) << "the bracketed address counts";
    EXPECT_TRUE(f.check_body(sendgrid_to({"Jane Doe <jane@example.com>"})).allowed());
    // Angle brackets inside a quoted local part enclose no address: the mailbox is at evil.net.
    EXPECT_FALSE(f.check_body(sendgrid_to({R"(\"<ceo@example.com>\"@evil.net)"})).allowed());
    EXPECT_TRUE(f.check_body(sendgrid_to({R"(\"Jane <x>\" <jane@example.com>)"})).allowed());
    // A string an upstream may read as an address list: every address in it is checked.
    const auto listed = f.check_body(sendgrid_to({"ceo@competitor.com, Jane <jane@example.com>"}));
    ASSERT_EQ(listed.outcome, verdict::violated) << listed.reason;
    EXPECT_THAT(listed.reason, HasSubstr("c***@competitor.com"));
    EXPECT_FALSE(f.check_body(sendgrid_to({"jane@example.com; x@evil.io"})).allowed());
    EXPECT_TRUE(f.check_body(sendgrid_to({R"(\"Doe, Jane\" <jane@example.com>)"})).allowed());
    EXPECT_FALSE(f.check_body(sendgrid_to({R"(\"Doe, Jane <jane@example.com>, x@evil.io)"})).allowed())
        << "a list that splits more than one way";
    // One that cannot be split is still read as one address: a blocked domain is a violation
    // whatever on_invalid_body lets through.
    const auto unsplit = f.check_body(sendgrid_to({"x@evil.io (a,b)"}));
    EXPECT_EQ(unsplit.outcome, verdict::violated) << unsplit.reason;
}

// Keys are read as Go's encoding/json reads them (SendGrid): "To"/"EMAIL" are `to`/`email`.
TEST(GuardRecipients, OddlyCasedKeysAreReadAsAnUpstreamReadsThem) {
    fixture f{recipients_rule(R"j({"allow_domains": ["example.com"]})j")};
    for (const char* body : {
             R"j({"personalizations": [{"To": [{"EMAIL": "x@gmail.com"}]}], "subject": "Hi"})j",
             R"j({"PERSONALIZATIONS": [{"to": [{"Email": "x@gmail.com"}]}], "subject": "Hi"})j",
             "{\"personalizations\": [{\"to\": [{\"email\": \"a@example.com\"}], \"b\\u0063c\": [{\"email\": "
             "\"x@gmail.com\"}]}]}",
             "{\"per\xC5\xBFonalizations\": [{\"to\": [{\"email\": \"x@gmail.com\"}]}]}",
         }) {
        const auto d = f.check_body(body);
        EXPECT_EQ(d.outcome, verdict::violated) << body;
        EXPECT_THAT(d.reason, HasSubstr("x***@gmail.com")) << body;
    }
    EXPECT_TRUE(f.check_body(R"j({"personalizations": [{"TO": [{"EMAIL": "jane@example.com"}]}]})j").allowed());
}

// An SES raw message with no Destination goes to its own To/Cc/Bcc headers: they are checked.
TEST(GuardRecipients, SesRawMessagesAreCheckedByTheirHeaders) {
    fixture f{recipients_rule(R"j({"allow_domains": ["example.com"]})j")};
    EXPECT_TRUE(f.check_body(R"j({"Content": {"Raw": {"Data": "RnJvbTogbmV3c0BleGFtcGxlLmNvbQ0KVG86IGphbmVAZXhhbXBsZS5jb20NClN1YmplY3Q6IEhpDQoNCkhlbGxvDQo="}}})j").allowed());
    for (const char* body : {R"j({"Content": {"Raw": {"Data": "RnJvbTogbmV3c0BleGFtcGxlLmNvbQ0KVG86IGphbmVAZXhhbXBsZS5jb20NCkJjYzogU29tZW9uZSA8c3B5QGdtYWlsLmNvbT4NClN1YmplY3Q6IEhpDQoNCkhlbGxvDQo="}}})j", R"j({"Content": {"Raw": {"Data": "RnJvbTogbmV3c0BleGFtcGxlLmNvbQpUbzogamFuZUBleGFtcGxlLmNvbQpCY2M6IFNvbWVvbmUgPHNweUBnbWFpbC5jb20+CgpIZWxsbwo="}}, "Subject": "lf only"})j"}) {
        const auto d = f.check_body(body);
        ASSERT_EQ(d.outcome, verdict::violated) << body;
        EXPECT_THAT(d.reason, HasSubstr("recipient domain not in allowlist #1 s***@gmail.com")) << d.reason;
        EXPECT_THAT(d.reason, HasSubstr("Data (MIME header)")) << d.reason;
    }
    const auto not_base64 = f.check_body(R"j({"Content": {"Raw": {"Data": "%%"}}})j");
    EXPECT_EQ(not_base64.outcome, verdict::rejected) << "not base64: the guard cannot see the recipients";
    EXPECT_THAT(not_base64.reason, HasSubstr("the raw message at $.Content.Raw.Data cannot be read: it is not base64"));
    // A comment can hide the address a MIME parser sends to; a bare CR splits a line for some.
    for (const std::string& raw : {std::string{"To: bob@evil.example (<jane@example.com>)\r\n\r\nx"},
                                  std::string{"To: jane@example.com\rBcc: spy@gmail.com\r\n\r\nx"}}) {
        EXPECT_EQ(f.check_body(R"j({"Content": {"Raw": {"Data": ")j" + b64(raw) + R"j("}}})j").outcome,
                  verdict::rejected)
            << raw;
    }
}

// Every default field is read: SES v2, HubSpot (a list of fields where one missing comma
// once joined two of them), SES v1 and Mailgun.
TEST(GuardRecipients, EveryDefaultFieldIsRead) {
    fixture f{recipients_rule(R"j({"block_domains": ["blocked.io"]})j")};
    for (const char* body : {
             R"j({"Destination": {"BccAddresses": ["x@blocked.io"]}})j",
             R"j({"BulkEmailEntries": [{"Destination": {"ToAddresses": ["x@blocked.io"]}}]})j",
             R"j({"emailId": 1, "message": {"to": "x@blocked.io"}})j",
             R"j({"emailId": 1, "message": {"to": "a@example.com", "bcc": ["x@blocked.io"]}})j",
         }) {
        EXPECT_FALSE(f.check_body(body).allowed()) << body;
    }
    for (const char* form : {"Destinations.member.1=x%40blocked.io", "Destination.CcAddresses.member.3=x%40blocked.io",
                             "Destinations.member.1.Destination.ToAddresses.member.2=x%40blocked.io",
                             "to=x%40blocked.io", "cc=x%40blocked.io", "bcc=x%40blocked.io"}) {
        EXPECT_FALSE(f.check_body(form, "application/x-www-form-urlencoded").allowed()) << form;
    }
}

// A JSON body after a byte order mark, not labelled JSON, is read as JSON (as one starting
// with `{`): an upstream that parses JSON whatever the label reads past the mark.
TEST(GuardRecipients, AnUnlabelledJsonBodyAfterAByteOrderMarkIsRead) {
    fixture f{recipients_rule(R"j({"block_domains": ["blocked.io"]})j")};
    const std::string body = R"j({"emailId": 1, "message": {"to": "x@blocked.io"}})j";
    for (const char* type : {"text/plain", ""}) {
        EXPECT_FALSE(f.check_body(body, type).allowed()) << type;
        EXPECT_FALSE(f.check_body("\xEF\xBB\xBF" + body, type).allowed()) << type;
    }
}

TEST(GuardRecipients, Blocklist) {
    fixture f{recipients_rule(R"j({"block_domains": ["competitor.com"]})j")};
    EXPECT_TRUE(f.check_body(sendgrid_to({"jane@example.com"})).allowed());
    const auto d = f.check_body(sendgrid_to({"jane@example.com"}, "spy@Sales.Competitor.com"));
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("recipient domain blocked #1 s***@sales.competitor.com ($.personalizations[0].bcc[0].email)"));
    // Blanks around the '@' or inside the domain: an MTA reading the obsolete syntax
    // delivers to competitor.com.
    for (const std::string spelling : {"spy@competitor .com", "spy@ competitor.com", "spy @competitor.com",
                                       "spy@competitor.\tcom", "Spy <spy @ Competitor . com>"}) {
        EXPECT_EQ(f.check_body(sendgrid_to({spelling})).outcome, verdict::violated) << spelling;
    }
}

// gmail.com and googlemail.com deliver to the same mailboxes: a list naming either domain
// names both, whichever of the two it was written as. Other Google domains are their own.
TEST(GuardRecipients, GmailsTwoDomainsAreOneInTheDomainLists) {
    for (const char* listed : {"gmail.com", "GoogleMail.com"}) {
        fixture block{recipients_rule(std::string{R"j({"block_domains": [")j"} + listed + R"j("]})j")};
        fixture allow{recipients_rule(std::string{R"j({"allow_domains": [")j"} + listed + R"j("]})j")};
        for (const char* to : {"jane@gmail.com", "jane@googlemail.com", "Jane@GOOGLEMAIL.COM"}) {
            EXPECT_EQ(block.check_body(sendgrid_to({to})).outcome, verdict::violated) << listed << " " << to;
            EXPECT_TRUE(allow.check_body(sendgrid_to({to})).allowed()) << listed << " " << to;
        }
        for (const char* to : {"jane@google.com", "jane@mail.com", "jane@hotmail.com"}) {
            EXPECT_TRUE(block.check_body(sendgrid_to({to})).allowed()) << listed << " " << to;
            EXPECT_EQ(allow.check_body(sendgrid_to({to})).outcome, verdict::violated) << listed << " " << to;
        }
    }
}

// Beside a JSON body, recipients in the query string (an upstream that merges query and
// form fields sends to them too).
TEST(GuardRecipients, RecipientsInTheQueryBesideAJsonBodyAreChecked) {
    fixture f{recipients_rule(R"j({"block_domains": ["competitor.com"]})j")};
    request req;
    req.route = "mail-send";
    req.content_type = "application/json";
    req.body = sendgrid_to({"jane@example.com"});
    EXPECT_TRUE(f.check(req).allowed());
    req.query = "bcc=spy%40competitor.com";
    const auto d = f.check(req);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("recipient domain blocked #0 s***@competitor.com (form field bcc) (in the query string)"));
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
    // Other spellings of the same mailbox (an MTA delivers them to the same person).
    for (const std::string spelling : {R"(\"jane.doe\"@example.com)", "jane.doe@example.com.", R"(\"jane\\.doe\"@Example.COM.)",
                                       "jane.doe @example.com", "jane.doe@ example .com"}) {
        EXPECT_EQ(f.check_body(sendgrid_to({spelling})).outcome, verdict::violated) << spelling;
    }
    // A `+tag` sub-address reaches the suppressed person's mailbox, by address or by digest;
    // a listed sub-address does not suppress its base, nor another person's.
    for (const std::string tagged : {"jane.doe+spring-sale@example.com", "Jane.Doe+@EXAMPLE.com", "bob+a+b@example.com",
                                     R"(\"bob+x\"@example.com)"}) {
        const auto d = f.check_body(sendgrid_to({"ann@example.com", tagged}));
        EXPECT_EQ(d.outcome, verdict::violated) << tagged;
        EXPECT_THAT(d.reason, HasSubstr("suppressed recipient #1")) << tagged;
    }
    const std::string tags = temp_file("suppressed-tag.txt", "ann+news@example.com\n");
    fixture by_tag{recipients_rule(R"j({"suppression_file": ")j" + tags + R"j("})j")};
    EXPECT_EQ(by_tag.check_body(sendgrid_to({"ANN+news@example.com"})).outcome, verdict::violated);
    EXPECT_TRUE(by_tag.check_body(sendgrid_to({"ann@example.com", "ann+other@example.com", "+news@example.com"})).allowed());
    EXPECT_TRUE(f.check_body(sendgrid_to({"jane@example.com", "doe+jane.doe@example.com", "+jane.doe@example.com"})).allowed());
    // Dots are another spelling only at Gmail: example.com keeps them (and hotmail.com, below).
    EXPECT_TRUE(f.check_body(sendgrid_to({"janedoe@example.com"})).allowed());

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

// Gmail ignores dots in the local part and reads googlemail.com as gmail.com: a suppressed
// Gmail user is every such spelling of their address, whichever one the list holds.
TEST(GuardRecipients, EveryGmailSpellingOfASuppressedMailboxIsSuppressed) {
    const std::string path = temp_file("suppressed-gmail.txt",
                                       "Jane.Doe@gmail.com\n"
                                       "bob@googlemail.com\n"
                                       "c.arl+news@gmail.com\n" +
                                           sha256_hex("deeann@gmail.com") + "  # dee.ann@\n" +
                                           sha256_hex("e.ve@gmail.com") + "  # a digest with dots\n"
                                           "f.red@example.com\n"
                                           "f.red@hotmail.com\n");
    fixture f{recipients_rule(R"j({"suppression_file": ")j" + path + R"j("})j")};
    for (const std::string spelling : {"janedoe@gmail.com", "j.a.n.e.d.o.e@googlemail.com", "JaneDoe+Spring@GMAIL.com",
                                       "jane.doe.@gmail.com", "bob@gmail.com", "b.o.b+x@gmail.com",
                                       "carl+news@googlemail.com", "dee.ann@gmail.com", "Dee.Ann+x@googlemail.com",
                                       "e.ve@gmail.com", "e.ve+x@gmail.com"}) {
        const auto d = f.check_body(sendgrid_to({"ann@example.com", spelling}));
        EXPECT_EQ(d.outcome, verdict::violated) << spelling;
        EXPECT_THAT(d.reason, HasSubstr("suppressed recipient #1")) << spelling;
    }
    // Not the same mailbox: a listed tag suppresses that tag only (its dots are its own);
    // other domains keep their dots (a Workspace domain too); a digest is of one spelling,
    // which is looked up as written and without dots (eve@ is another spelling of e.ve@, but
    // the digest is of e.ve@).
    for (const std::string other : {"carl@gmail.com", "carl+other@gmail.com", "carl+n.ews@gmail.com", "janedoe@gmail.co",
                                    "jane.doe@mail.gmail.com", "fred@example.com", "f.red@googlemail.com", "fred@hotmail.com",
                                    "eve@gmail.com", "jane_doe@gmail.com"}) {
        EXPECT_TRUE(f.check_body(sendgrid_to({other})).allowed()) << other;
    }
    // Looked up directly too, in any case (the guard lower-cases first).
    std::string err;
    const auto list = suppression_list::parse("Jane.Doe@gmail.com\n", 100, &err);
    ASSERT_TRUE(list.has_value()) << err;
    EXPECT_TRUE(list->contains("JANEDOE@GOOGLEMAIL.COM"));
    EXPECT_EQ(list->size(), 1u);  // the derived spelling is no entry of its own

    // A reload that stops suppressing a spelling takes an entry off; one that suppresses
    // every spelling it did does not, however the lines spell them.
    const auto missing = [&err](std::string_view before, std::string_view after) {
        const auto a = suppression_list::parse(before, 100, &err);
        const auto b = suppression_list::parse(after, 100, &err);
        EXPECT_TRUE(a && b) << err;
        return a && b ? a->missing_from(*b) : 0;
    };
    EXPECT_EQ(missing("jane.doe@gmail.com\n", "Jane.Doe@GMail.com\n"), 0u);
    EXPECT_EQ(missing("janedoe@gmail.com\n", "ja.ne.doe@googlemail.com\n"), 0u);
    // The same line as a digest: the digest matches jane.doe@ but no longer janedoe@.
    EXPECT_EQ(missing("jane.doe@gmail.com\n", sha256_hex("jane.doe@gmail.com") + "\n"), 1u);
    EXPECT_EQ(missing("jane.doe@gmail.com\n", "janedoe@gmail.com\n"), 0u);
    EXPECT_EQ(missing("jane.doe@gmail.com\n", sha256_hex("janedoe@gmail.com") + "\n"), 0u);
    EXPECT_EQ(missing(sha256_hex("janedoe@gmail.com") + "\n", "jane.doe@gmail.com\n"), 0u);
    // A digest of a spelling with dots covers that spelling only, as far as a reload can tell.
    EXPECT_EQ(missing(sha256_hex("jane.doe@gmail.com") + "\n", "janedoe@gmail.com\n"), 1u);
    EXPECT_EQ(missing("jane.doe@gmail.com\nbob@example.com\n", "bob@example.com\n"), 1u);
}

// SendGrid's bypass_*_management settings send past SendGrid's own unsubscribe, bounce and
// spam-report lists: suppression_bypass: refuse refuses them.
TEST(GuardRecipients, ASendThatSkipsTheApisSuppressionListsIsRefused) {
    const std::string path = temp_file("bypass.txt", "jane.doe@example.com\n");
    const std::string file = R"j("suppression_file": ")j" + path + "\"";
    const auto with = [](std::string_view settings) {
        std::string b = sendgrid_to({"ann@example.com"});
        b.insert(b.rfind('}'), std::string{R"j(, "mail_settings": )j"} + std::string{settings});
        return b;
    };
    fixture f{recipients_rule("{" + file + R"j(, "suppression_bypass": "refuse"})j")};
    for (const std::string_view name : {"bypass_list_management", "bypass_unsubscribe_management",
                                        "bypass_spam_management", "bypass_bounce_management"}) {
        const auto d = f.check_body(with(R"j({")j" + std::string{name} + R"j(": {"enable": true}})j"));
        ASSERT_EQ(d.outcome, verdict::violated) << name;
        EXPECT_THAT(d.reason, HasSubstr("skip its suppression lists ($.mail_settings." + std::string{name} + ".enable)"));
    }
    // As Go reads the keys: any case, escapes, every copy of a repeated key.
    for (const std::string_view settings : {R"j({"Bypass_List_Management": {"ENABLE": true}})j",
                                            R"j({"\u0062ypass_list_management": {"enable": true}})j",
                                            R"j({"bypass_list_management": {"enable": true, "enable": false}})j",
                                            R"j({"sandbox_mode": {"enable": false}, "bypass_list_management": {"enable": true}})j"}) {
        EXPECT_EQ(f.check_body(with(settings)).outcome, verdict::violated) << settings;
    }
    for (const std::string_view settings : {R"j({"bypass_list_management": {"enable": false}})j",
                                            R"j({"footer": {"enable": true, "text": "bypass_list_management"}})j",
                                            R"j({"sandbox_mode": {"enable": true}})j"}) {
        EXPECT_TRUE(f.check_body(with(settings)).allowed()) << settings;
    }
    EXPECT_TRUE(f.check_body(R"j({"bypass_list_management": {"enable": true}, "personalizations": []})j").allowed())
        << "not SendGrid's mail_settings";
    const std::string bypass = with(R"j({"bypass_list_management": {"enable": true}})j");
    // Allowed by default (as before the setting existed: a password reset past the lists),
    // and explicitly; refused with or without a suppression file.
    EXPECT_TRUE(fixture{recipients_rule("{" + file + "}")}.check_body(bypass).allowed());
    EXPECT_TRUE(fixture{recipients_rule("{" + file + R"j(, "suppression_bypass": "allow"})j")}.check_body(bypass).allowed());
    EXPECT_TRUE(fixture{recipients_rule(R"j({"block_domains": ["evil.example"]})j")}.check_body(bypass).allowed());
    EXPECT_EQ(fixture{recipients_rule(R"j({"block_domains": ["evil.example"], "suppression_bypass": "refuse"})j")}
                  .check_body(bypass)
                  .outcome,
              verdict::violated);
}

// A send to a list or a segment names no recipient the guard can judge: with
// require_recipients it is refused rather than passed.
TEST(GuardRecipients, RequireRecipientsRefusesASendToAListOrSegment) {
    fixture f{recipients_rule(R"j({"allow_domains": ["example.com"], "require_recipients": true})j")};
    // SendGrid single send to lists and segments; HubSpot's marketing email publish.
    for (const std::string body :
         {R"j({"name": "Spring", "send_to": {"list_ids": ["a1"], "segment_ids": ["s1"]}, "email_config": {"subject": "Hi"}})j",
          R"j({"send_to": {"all": true}})j", "{}"}) {
        const auto d = f.check_body(body);
        ASSERT_EQ(d.outcome, verdict::violated) << body;
        EXPECT_THAT(d.reason, HasSubstr("no recipient in the fields this guard reads"));
    }
    EXPECT_TRUE(f.check_body(sendgrid_to({"ann@example.com"})).allowed());
    request mg;
    mg.path = "/v3/mg.example.com/messages";
    mg.content_type = "application/x-www-form-urlencoded";
    mg.body = "from=news%40example.com&subject=Hi&text=Hello";
    EXPECT_EQ(f.check(mg).outcome, verdict::violated) << "a Mailgun form without to";
    mg.body += "&to=ann%40example.com";
    EXPECT_TRUE(f.check(mg).allowed());
    request get;
    get.method = "GET";
    get.path = "/v3/marketing/singlesends";
    get.body = "";
    const auto g = f.check(get);
    EXPECT_TRUE(g.allowed()) << "no body: not a send: " << g.reason;
    const auto g2 = fixture{recipients_rule(R"j({"allow_domains": ["example.com"]})j")}.check(get);
    EXPECT_TRUE(g2.allowed()) << "no body: " << g2.reason;
    get.query = "page_size=10";
    EXPECT_TRUE(f.check(get).allowed()) << "a query string and no body";
    get.method = "DELETE";
    get.query.clear();
    EXPECT_TRUE(f.check(get).allowed()) << "a DELETE without a body";
    // A write that takes no body sends to an audience set elsewhere: HubSpot's marketing
    // email publish (POST, no body), a blank one, with a query string naming nobody.
    request publish;
    publish.method = "POST";
    publish.path = "/marketing/v3/emails/12345/publish";
    publish.content_type = "";
    publish.body = "";
    for (const std::string_view method : {"POST", "PUT", "PATCH"}) {
        publish.method = method;
        const auto p = f.check(publish);
        ASSERT_EQ(p.outcome, verdict::violated) << method;
        EXPECT_THAT(p.reason, HasSubstr("no recipient in the fields this guard reads"));
    }
    publish.method = "POST";
    publish.body = " \r\n";
    EXPECT_EQ(f.check(publish).outcome, verdict::violated) << "a blank body";
    publish.body = "";
    publish.query = "archived=false";
    EXPECT_EQ(f.check(publish).outcome, verdict::violated) << "a query naming nobody";
    // Recipients in the query string of a write without a body (SES v1's query API) count.
    publish.path = "/";
    publish.query = "Action=SendEmail&Destination.ToAddresses.member.1=ann%40example.com";
    const auto ses = f.check(publish);
    EXPECT_TRUE(ses.allowed()) << ses.reason;
    EXPECT_TRUE(fixture{recipients_rule(R"j({"allow_domains": ["example.com"]})j")}.check(publish).allowed())
        << "without the setting";
    // Without the setting, a body naming nobody passes (the audience is not this guard's to see).
    EXPECT_TRUE(fixture{recipients_rule(R"j({"allow_domains": ["example.com"]})j")}.check_body("{}").allowed());
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

// Salesforce's Send Email action: each input's address list and address array.
TEST(GuardRecipients, SalesforceEmailSimpleAddressesAreRecipients) {
    fixture f{recipients_rule(R"j({"allow_domains": ["example.com"]})j")};
    request sf;
    sf.route = "mail-send";
    sf.path = "/services/data/v59.0/actions/standard/emailSimple";
    sf.content_type = "application/json";
    sf.body = R"j({"inputs": [{"emailAddresses": "ok@example.com, leak@evil.com", "emailSubject": "s", "emailBody": "b"}]})j";
    auto d = f.check(sf);
    ASSERT_EQ(d.outcome, verdict::violated) << d.reason;
    EXPECT_THAT(d.reason, HasSubstr("l***@evil.com ($.inputs[0].emailAddresses)"));
    sf.body = R"j({"inputs": [{"emailAddressesArray": ["ok@example.com", "x@evil.com"], "emailSubject": "s"}]})j";
    d = f.check(sf);
    ASSERT_EQ(d.outcome, verdict::violated) << d.reason;
    sf.body = R"j({"inputs": [{"emailAddresses": "ok@example.com", "bccRecipientAddressList": "y@evil.com"}]})j";
    d = f.check(sf);
    ASSERT_EQ(d.outcome, verdict::violated) << d.reason;
    EXPECT_THAT(d.reason, HasSubstr("bccRecipientAddressList"));
}

// emailSimple called inside a Salesforce composite request sends as a direct call does.
TEST(GuardRecipients, EmailSimpleInsideCompositeRequestsIsRead) {
    fixture f{recipients_rule(R"j({"allow_domains": ["example.com"]})j")};
    fixture content{R"j({"id": "brand", "guard": {"content": {"blocked_terms": ["free money"]}},
        "failure_mode": "off-brand", "trips": "x"})j"};
    const std::string inputs = R"j({"inputs": [{"emailAddresses": "ok@example.com, leak@evil.com", "emailSubject": "s",
        "emailBody": "free money"}]})j";
    for (const std::string& body :
         {R"j({"compositeRequest": [{"method": "POST", "url": "/services/data/v59.0/actions/standard/emailSimple",
               "referenceId": "m", "body": )j" + inputs + "}]}",
          R"j({"batchRequests": [{"method": "POST", "url": "v59.0/actions/standard/emailSimple", "richInput": )j" + inputs + "}]}",
          R"j({"graphs": [{"graphId": "g", "compositeRequest": [{"method": "POST", "referenceId": "m",
               "url": "/services/data/v59.0/actions/standard/emailSimple", "body": )j" + inputs + "}]}]}"}) {
        const auto d = f.check_body(body);
        ASSERT_EQ(d.outcome, verdict::violated) << body;
        EXPECT_THAT(d.reason, HasSubstr("recipient domain not in allowlist #1 l***@evil.com"));
        EXPECT_EQ(content.check_body(body).outcome, verdict::violated) << body;
    }
}


// What a block or suppression list alone cannot judge is refused, not passed: a composite
// request's reference to another subrequest's result (the address it becomes is unknown
// here), a comment left inside angle brackets (a parser that drops it delivers elsewhere),
// an address literal. A blank value names nobody.
TEST(GuardRecipients, WhatTheListsCannotJudgeIsRefused) {
    const std::string list = temp_file("suppressed-refs.txt", "gone@example.com\n");
    fixture f{recipients_rule(R"j({"block_domains": ["competitor.com"], "suppression_file": ")j" + list + R"j("})j")};
    const std::string reference = R"j({"compositeRequest": [
        {"method": "GET", "url": "/services/data/v59.0/query?q=SELECT+Email+FROM+Contact", "referenceId": "q"},
        {"method": "POST", "url": "/services/data/v59.0/actions/standard/emailSimple", "referenceId": "m",
         "body": {"inputs": [{"emailAddresses": "@{q.records[0].Email}", "emailSubject": "s", "emailBody": "b"}]}}]})j";
    auto d = f.check_body(reference);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("recipient is a composite request's reference (@{...}) to another subrequest's result"));
    d = f.check_body(sendgrid_to({"Jane <ceo@competitor.com (x)>"}));
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("recipient address malformed #0"));
    EXPECT_EQ(f.check_body(sendgrid_to({"Jane <gone(x)@example.com>"})).outcome, verdict::violated);
    EXPECT_TRUE(f.check_body(sendgrid_to({"Jane (sales) <jane@example.com>"})).allowed()) << "a comment outside is dropped";
    d = f.check_body(sendgrid_to({"ceo@[203.0.113.5]"}));
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("recipient domain is an address literal, which block_domains cannot judge"));
    // Blank values: nobody (a Salesforce input's optional cc list left "").
    EXPECT_TRUE(f.check_body(R"j({"inputs": [{"emailAddresses": "jane@example.com", "ccRecipientAddressList": "",
        "bccRecipientAddressList": " ", "emailSubject": "s", "emailBody": "b"}]})j").allowed());
    // ... and is not counted where a finding is reported.
    EXPECT_THAT(f.check_body(R"j({"inputs": [{"emailAddresses": "jane@example.com", "ccRecipientAddressList": "",
        "bccRecipientAddressList": "gone@example.com", "emailSubject": "s", "emailBody": "b"}]})j").reason,
                HasSubstr("suppressed recipient #1 g***@example.com ($.inputs[0].bccRecipientAddressList)"));
    // The duplicates guard books no blank recipient either: two sends to different people,
    // each with its cc list left "", are not one pair.
    fixture dups{R"j({"id": "loops", "guard": {"duplicates": {"max": 1, "window": "1h", "of": ["recipient", "subject"]}},
        "failure_mode": "loop", "trips": "x"})j"};
    for (const char* to : {"ann@example.com", "bob@example.com"}) {
        EXPECT_TRUE(dups.check_body(std::string{R"j({"inputs": [{"emailAddresses": ")j"} + to +
                                    R"j(", "ccRecipientAddressList": "", "emailSubject": "Welcome", "emailBody": "b"}]})j")
                        .allowed())
            << to;
    }
    fixture only_suppression{recipients_rule(R"j({"suppression_file": ")j" + list + R"j("})j")};
    EXPECT_TRUE(only_suppression.check_body(sendgrid_to({"ceo@[203.0.113.5]"})).allowed()) << "no block list to judge it";
    EXPECT_EQ(only_suppression.check_body(reference).outcome, verdict::violated);
}

// SendGrid's v2 mail.send.json posts its recipients as array form fields (to[], cc[], bcc[]).
TEST(GuardRecipients, SendGridV2ArrayFormFieldsAreRecipients) {
    fixture f{recipients_rule(R"j({"allow_domains": ["example.com"]})j")};
    request v2;
    v2.route = "mail-send";
    v2.path = "/api/mail.send.json";
    v2.content_type = "application/x-www-form-urlencoded";
    v2.body = "to%5B%5D=ok%40example.com&bcc%5B%5D=leak%40evil.com&from=news%40example.com&subject=Hi&text=Hello";
    const auto d = f.check(v2);
    ASSERT_EQ(d.outcome, verdict::violated) << d.reason;
    EXPECT_THAT(d.reason, HasSubstr("recipient domain not in allowlist"));
    EXPECT_THAT(d.reason, HasSubstr("(form field bcc[])"));
}


// Mailgun lists are split as RFC 5322 reads them: an escaped quote or a comment cannot
// fold several addresses into one that passes.
TEST(GuardRecipients, FormAddressListsCannotHideAnAddress) {
    fixture f{recipients_rule(R"j({"allow_domains": ["example.com"]})j")};
    auto mailgun = [](std::string to_encoded) {
        request mg;
        mg.route = "mail-send";
        mg.path = "/v3/mg.example.com/messages";
        mg.content_type = "application/x-www-form-urlencoded";
        mg.body = "from=news%40example.com&to=" + to_encoded + "&subject=Hi&text=Hello";
        return mg;
    };
    // "\"" <ok@example.com>, v1@evil.com
    auto r1 = mailgun("%22%5C%22%22+%3Cok%40example.com%3E%2C+v1%40evil.com");
    const auto escaped = f.check(r1);
    ASSERT_EQ(escaped.outcome, verdict::violated) << escaped.reason;
    EXPECT_THAT(escaped.reason, HasSubstr("recipient domain not in allowlist #1 v***@evil.com (form field to)"));
    // v@evil.com ("), x (") <ok@example.com>
    auto r2 = mailgun("v%40evil.com+%28%22%29%2C+x+%28%22%29+%3Cok%40example.com%3E");
    const auto comment = f.check(r2);
    EXPECT_EQ(comment.outcome, verdict::rejected) << comment.reason;
    EXPECT_THAT(comment.reason, HasSubstr("form field \"to\" is not an address list that reads one way only"));
    auto r3 = mailgun("a%40example.com+b%40evil.com");
    EXPECT_EQ(f.check(r3).outcome, verdict::rejected);
    auto r4 = mailgun("a%40example.com%3B+b%40evil.com");
    EXPECT_EQ(f.check(r4).outcome, verdict::violated);
    auto r5 = mailgun("%22Doe%2C+%5C%22Ann%5C%22%22+%3Cann%40example.com%3E%2C+bob%40example.com");
    EXPECT_TRUE(f.check(r5).allowed());
    // A group's name and a comment do not hide the address from the checks.
    auto r9 = mailgun("team%3A+ann%40example.com%2C+v%40evil.com%3B");
    EXPECT_EQ(f.check(r9).outcome, verdict::violated);
    auto r10 = mailgun("v%40evil.com+%28work%29");
    const auto commented = f.check(r10);
    EXPECT_EQ(commented.outcome, verdict::violated);
    EXPECT_THAT(commented.reason, HasSubstr("v***@evil.com"));
    // A field named in another case may be the same field to the API: it is checked.
    auto r6 = mailgun("ann%40example.com");
    r6.body += "&To=v%40evil.com&BCC=w%40evil.com";
    const auto cased = f.check(r6);
    ASSERT_EQ(cased.outcome, verdict::violated);
    EXPECT_THAT(cased.reason, HasSubstr("v***@evil.com (form field To)"));
    // Bodies a server may read as a form that we would not, or as JSON that we would read
    // as a form: refused, not passed unread.
    auto r7 = mailgun("v%40evil.com");
    r7.content_type = "application/x-url-encoded";
    const auto other_type = f.check(r7);
    EXPECT_EQ(other_type.outcome, verdict::rejected);
    EXPECT_THAT(other_type.reason, HasSubstr("is read as a form by some servers but not here"));
    r7.content_type = "Multipart/Mixed; boundary=x";
    EXPECT_EQ(f.check(r7).outcome, verdict::rejected);
    auto r8 = mailgun("x");
    r8.body = R"j( {"personalizations": [{"to": [{"email": "v@evil.com"}]}]})j";
    const auto json_form = f.check(r8);
    EXPECT_EQ(json_form.outcome, verdict::rejected);
    EXPECT_THAT(json_form.reason, HasSubstr("a form body that starts like JSON reads two ways"));
}

TEST(GuardRecipients, InvalidJsonIsRejectedUnlessTheRuleSaysZero) {
    fixture f{recipients_rule(R"j({"allow_domains": ["example.com"]})j")};
    // Recipients it cannot read could be anyone: a truncated body is rejected...
    const auto d = f.check_body(R"j({"personalizations": [{"to": [{"email": "x@example.com"}, {"email": )j");
    EXPECT_EQ(d.outcome, verdict::rejected);
    EXPECT_EQ(d.reason, "rule audience (wrong-audience, sev2): cannot check guard(recipients): body is not valid JSON");
    // ...unless a recipient read before the break is already refused.
    EXPECT_EQ(f.check_body(R"j({"personalizations": [{"to": [{"email": "x@evil.com"})j").outcome, verdict::violated);
    // A value that starts with a byte no JSON value starts with (here NUL) is no scalar.
    std::string nul = R"j({"personalizations": [{"to": [{"email": "x@example.com"}]}], "send_at": ?1})j";
    nul[nul.find('?')] = '\0';
    EXPECT_EQ(f.check_body(nul).outcome, verdict::rejected);
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
    // So is the sender's name, which the inbox shows before the subject.
    req.body = sendgrid_to({"jane@example.com"});
    req.body.replace(req.body.find(R"j({"email": "news@example.com"})j"), 28,
                     R"j({"email": "news@example.com", "name": "Free Money Team"})j");
    EXPECT_THAT(f.check(req).reason, HasSubstr("blocked term #0 (free money)"));
}

// What a mail client shows of an address header beside its addresses: the names, quoted or
// not, and comments, at their own offsets; never a word of an address.
TEST(GuardrailBlocks, AddressDisplayText) {
    std::string out;
    EXPECT_EQ(address_display_text(R"("Free Money" <news@example.com>)", out), R"("Free Money"                   )");
    EXPECT_EQ(address_display_text("Crypto Giveaway <news@example.com>", out), "Crypto Giveaway                   ");
    EXPECT_EQ(address_display_text("winner@example.com", out), std::string(18, ' '));
    EXPECT_EQ(address_display_text("news@example.com (Free Money)", out), "                 (Free Money)");
    // A '<' or an '@' inside quotes or a comment is a name's; two mailboxes, a group.
    EXPECT_EQ(address_display_text(R"("a <b> c@d" <x@y.z>)", out), R"("a <b> c@d"        )");
    EXPECT_EQ(address_display_text("Ann <a@x.com>, Bob b@y.com", out),
              "Ann" + std::string(10, ' ') + ", Bob" + std::string(8, ' '));
    EXPECT_EQ(address_display_text("Team: a@x.com;", out), "Team:        ;");
    // An unterminated quote quotes nothing; an angle-addr without its '>' runs to the end.
    EXPECT_EQ(address_display_text(R"("Free Money <a@x.com>)", out), "\"Free Money" + std::string(10, ' '));
    EXPECT_EQ(address_display_text("Free <a@x.com", out), "Free         ");
    EXPECT_EQ(address_display_text("", out), "");
    // ... nor an unterminated comment. A quoted local part is the address's; a '>' in quotes
    // does not end an angle-addr.
    EXPECT_EQ(address_display_text("Store (promo <winner@example.com>", out), "Store (promo" + std::string(21, ' '));
    EXPECT_EQ(address_display_text(R"("winner"@example.com)", out), std::string(20, ' '));
    EXPECT_EQ(address_display_text(R"(Ann <"a>b"@x.com> Bob)", out), "Ann" + std::string(15, ' ') + "Bob");
    // The sender's name: encoded words decoded after the addresses are found, so what they
    // decode to is the name's, `<` and `@` included.
    EXPECT_EQ(sender_name_text("Free Money <a@x.com>", out), sender_text::as_written);
    EXPECT_EQ(out, "Free Money" + std::string(10, ' '));
    EXPECT_EQ(sender_name_text("=?utf-8?Q?=3CFree_Money=3E?= <a@x.com>", out), sender_text::decoded);
    EXPECT_EQ(out, "<Free Money>" + std::string(10, ' '));
    EXPECT_EQ(sender_name_text("=?utf-8?Q?Free_Money=40Acme?= <a@x.com>", out), sender_text::decoded);
    EXPECT_THAT(out, ::testing::StartsWith("Free Money@Acme"));
    EXPECT_EQ(sender_name_text("Who =? me <a@x.com>", out), sender_text::as_written) << "no encoded word";
    // A word that cannot be decoded: what a client shows is unknown.
    EXPECT_EQ(sender_name_text("=?x-unknown?Q?Free?= <a@x.com>", out), sender_text::unreadable);
    EXPECT_EQ(sender_name_text("=?utf-8?B?RnJlZSBNb25leQ==?= =?utf-7?Q?x?= <a@x.com>", out), sender_text::unreadable);
    // An unterminated quote inside an angle-addr quotes nothing either.
    EXPECT_EQ(address_display_text(R"(Store <"x@y.com> FREE MONEY)", out), "Store" + std::string(11, ' ') + " FREE MONEY");
}

// Terms in other scripts match in any case too: a noun capitalised at the start of a
// sentence, a subject in capitals. Letters whose cases start or end with other bytes (`р`
// D1 80, `Р` D0 A0; `ü` C3 BC, `Ü` C3 9C) and with more than two spellings (σ ς Σ).
TEST(GuardContent, BlockedTermsInOtherScriptsMatchInAnyCase) {
    fixture f{content_rule(R"j({"blocked_terms": ["бесплатно", "Überweisung sofort", "δωρεάν προσφορά", "ΣΑΣ",
                                                  "ǆungla", "рр", "xü", "ПЕРЕВОД"]})j")};
    for (const std::string text : {"БЕСПЛАТНО!", "Бесплатно для вас", "<b>überweisung</b> SOFORT", "ÜBERWEISUNG sofort",
                                   "ΔΩΡΕΆΝ ΠΡΟΣΦΟΡΆ", "Δωρεάν προσφορά", "ΔΩΡΕΑΝ ΠΡΟΣΦΟΡΑ", "δωρεαν προσφορα", "για σας", "ΓΙΑ ΣΑΣ", "ΣΑς", "Ǆungla", "ǅUNGLA",
                                   "РР", "Рр", "XÜ", "xÜ", "перевод", "Перевод денег"}) {
        const auto d = f.check_body(sendgrid("<p>" + text + "</p>"));
        EXPECT_EQ(d.outcome, verdict::violated) << text;
        EXPECT_THAT(d.reason, HasSubstr("blocked term #")) << text;
    }
    for (const std::string text : {"бесплатное", "Überweisungen sofort", "Uberweisung sofort", "σα", "рра", "xu", "переводы"}) {
        EXPECT_TRUE(f.check_body(sendgrid("<p>" + text + "</p>")).allowed()) << text;
    }
}

void put_utf8_string(std::string& out, std::uint32_t cp) {
    char buf[4];
    char* e = buf;
    bb::put_utf8(cp, e);
    out.append(buf, static_cast<std::size_t>(e - buf));
}

// Chinese, Japanese and Thai put no spaces between words: a term written wholly in such a
// script is found inside a longer run of it, as the unsubscribe words are.
TEST(GuardContent, TermsOfUnspacedScriptsAreFoundInsideRuns) {
    fixture f{content_rule(R"j({"blocked_terms": ["free money", "無料", "今すぐ登録", "ฟรี", "立即领取", "続々登場",
                                                  "限定!", "すぐ登"]})j")};
    for (const std::string text : {"今すぐ無料でお試し", "無料", "【無料】", "今すぐ登録してください", "รับฟรีวันนี้",
                                   "点击立即领取优惠", "新商品続々登場", "期間限定セール",  // the term 限定! is the word 限定
                                   "今すぐ無\u200B料でお試し", "รับฟ\u00ADรีวันนี้",               // invisible characters
                                   "今すぐ無<b>料</b>でお試し", "今すぐ&#28961;料",                 // a tag, a reference
                                   "&#28961;<b>&#26009;</b>"}) {                                 // both, all ASCII
        const std::string body = sendgrid("<p>" + text + "</p>");
        const auto d = f.check_body(body);
        EXPECT_EQ(d.outcome, verdict::violated) << text;
        EXPECT_THAT(d.reason, HasSubstr("blocked term #")) << text;
    }
    const std::string body = sendgrid("<p>今すぐ無料でお試し</p>");
    EXPECT_THAT(f.check_body(body).reason,
                HasSubstr("blocked term #1 (無料) at body offset " + std::to_string(body.find("無料"))));
    // Overlapping terms (the automaton's failure links): `すぐ登` inside `今すぐ登`, a prefix of
    // `今すぐ登録`, is found when the longer term is not there.
    EXPECT_THAT(f.check_body(sendgrid("<p>今すぐ登れ</p>")).reason, HasSubstr("blocked term #7"));
    // Many terms with one first character: each is found, and only where it is.
    content_guard many;
    std::string err;
    for (int i = 0; i < 2000; ++i) {
        std::string t = "無";
        put_utf8_string(t, 0x4E00 + static_cast<std::uint32_t>(i));
        ASSERT_TRUE(many.terms.add(t, &err)) << err;
    }
    many.terms.build();
    std::string run;
    for (int i = 0; i < 10'000; ++i) {
        run += "無";
    }
    detail::text_hit hit;
    bool unsubscribe = false;
    EXPECT_FALSE(detail::find_content(many, run, unsubscribe, &hit));
    std::string last = run;
    put_utf8_string(last, 0x4E00 + 1999);
    ASSERT_TRUE(detail::find_content(many, last, unsubscribe, &hit));
    EXPECT_EQ(hit.offset, run.size() - 3);
    for (const std::string text : {"有料プラン", "今す", "ฟร", "Free of charge"}) {
        EXPECT_TRUE(f.check_body(sendgrid("<p>" + text + "</p>")).allowed()) << text;
    }
}

// ß is ss, as capitals and Swiss German write it, whichever way the term or the text has it:
// first, second, inner and last letters, and a word that is only ß.
TEST(GuardContent, SharpSIsSs) {
    fixture f{content_rule(R"j({"blocked_terms": ["Spaß garantiert", "heiss", "ssangyong", "Grosshandel", "ß",
                                                  "Esszimmer", "er isst", "Fuß", "ssst"]})j")};
    for (const std::string text : {"SPASS GARANTIERT", "Spass garantiert", "heiß", "Heiß!", "ßangyong", "Großhandel",
                                   "SS", "Maß ß", "Eßzimmer", "EßZIMMER", "Er ißt", "FUSS", "fuss", "Sßt", "ßst"}) {
        const auto d = f.check_body(sendgrid("<p>" + text + "</p>"));
        EXPECT_EQ(d.outcome, verdict::violated) << text;
        EXPECT_THAT(d.reason, HasSubstr("blocked term #")) << text;
    }
    // Other words (a word is matched whole).
    for (const std::string text : {"heißer", "Maß", "Fußball", "Eßzimmers"}) {
        EXPECT_TRUE(f.check_body(sendgrid("<p>" + text + "</p>")).allowed()) << text;
    }
    // And in unsubscribe_words (`ssabmelden` is made up, to start with one).
    fixture u{content_rule(R"j({"require_unsubscribe": true, "unsubscribe_words": ["Newsletter abschließen", "ssabmelden"]})j")};
    for (const std::string footer : {"<p>NEWSLETTER ABSCHLIESSEN</p>", "<p>Newsletter abschliessen</p>", "<p>Newsletter abschließen</p>",
                                     "<p>ßabmelden</p>"}) {
        EXPECT_TRUE(u.check_body(sendgrid(footer)).allowed()) << footer;
    }
    EXPECT_FALSE(u.check_body(sendgrid("<p>Newsletter abschlieen</p>")).allowed());
    EXPECT_EQ(detail::fold_case("STRAẞE Straße"), "straẞe strasse");  // (ẞ is three bytes: not folded)
}

// Every default field whose text ends up in the mail is read: a footer, sections, SES v2 bulk
// defaults and replacements, HubSpot contact properties, Mailgun and SES v1 template data.
TEST(GuardContent, EveryDefaultFieldIsRead) {
    fixture f{content_rule(R"j({"blocked_terms": ["free money"], "link_domains": ["example.com"]})j")};
    for (const char* body : {
             R"j({"subject": "Hi", "mail_settings": {"footer": {"enable": true, "html": "<p>free money</p>"}}})j",
             R"j({"subject": "Hi", "sections": {":promo": "Free money inside"}})j",
             R"j({"DefaultContent": {"Template": {"TemplateName": "t", "TemplateData": "{\"x\":\"free money\"}"}}})j",
             R"j({"BulkEmailEntries": [{"ReplacementEmailContent": {"ReplacementTemplate": {"ReplacementTemplateData": "free money"}}}]})j",
             R"j({"emailId": 1, "message": {"to": "a@example.com"}, "contactProperties": {"offer": "free money"}})j",
             R"j({"subject": "Hi", "mail_settings": {"footer": {"html": "<a href=\"https://evil.example\">x</a>"}}})j",
             R"j({"BulkEmailEntries": [{"ReplacementHeaders": [{"Name": "X-Offer", "Value": "free money"}]}]})j",
             R"j({"inputs": [{"emailAddresses": "a@example.com", "emailSubject": "Free money", "emailBody": "b"}]})j",
             R"j({"inputs": [{"emailAddresses": "a@example.com", "emailSubject": "s", "emailBody": "free money"}]})j",
             R"j({"inputs": [{"emailAddresses": "a@example.com", "emailBody": "see https://evil.example/x"}]})j",
         }) {
        EXPECT_FALSE(f.check_body(body).allowed()) << body;
    }
    for (const char* form : {"recipient-variables=%7B%22a%40example.com%22%3A%7B%22o%22%3A%22free+money%22%7D%7D",
                             "t%3Avariables=%7B%22o%22%3A%22free+money%22%7D",
                             "h%3AX-Mailgun-Variables=%7B%22u%22%3A%22https%3A%2F%2Fevil.example%2Fx%22%7D",
                             "v%3Aoffer=free+money", "V%3Apromo-link=https%3A%2F%2Fevil.example%2Fx",
                             "TemplateData=free+money", "DefaultTemplateData=free+money",
                             "Destinations.member.2.ReplacementTemplateData=free+money"}) {
        EXPECT_FALSE(f.check_body(form, "application/x-www-form-urlencoded").allowed()) << form;
    }
    EXPECT_TRUE(f.check_body(R"j({"subject": "Hi", "mail_settings": {"footer": {"html": "<p>Thanks</p>"}}})j").allowed());
    // `v:` alone names no variable; another prefix is another field.
    EXPECT_TRUE(f.check_body("v%3A=free+money&vv%3Aoffer=free+money", "application/x-www-form-urlencoded").allowed());
}

// An XHTML template's document type and namespaces name W3C URLs that no client shows as
// links; anywhere else, or with another host, they are links.
TEST(GuardContent, W3cDeclarationsAreNotLinks) {
    fixture f{content_rule(R"j({"link_domains": ["example.com"]})j")};
    const std::string xhtml =
        R"j(<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\" \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">)j"
        R"j(<html xmlns=\"http://www.w3.org/1999/xhtml\" xmlns:v = 'urn:schemas-microsoft-com:vml' XMLNS:o=\"HTTP://WWW.W3.ORG/x\">)j"
        R"j(<body><svg xmlns:xlink=\"https://www.w3.org/1999/xlink\"></svg><a href=\"https://www.example.com\">Shop</a></body></html>)j";
    const auto fine = f.check_body(sendgrid(xhtml));
    EXPECT_TRUE(fine.allowed()) << fine.reason;
    for (const std::string link : {
             R"j(<html xmlns=\"http://evil.io/1999/xhtml\"><p>Hi</p></html>)j",
             R"j(<!DOCTYPE html SYSTEM \"http://evil.io/x.dtd\"><p>Hi</p>)j",
             R"j(<!DOCTYPE html><p>See http://www.w3.org/TR/ for more</p>)j",
             R"j(<a title=\"http://www.w3.org/1999/xhtml\" href=\"#\">x</a>)j",
             R"j(<a href=\"http://www.w3.org/1999/xhtml\">x</a>)j",
             R"j(<p xmlnsx=\"http://www.w3.org/1999/xhtml\">x</p>)j",
         }) {
        EXPECT_FALSE(f.check_body(sendgrid(link)).allowed()) << link;
    }
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
    // Scheme-relative URLs in the other attributes a mail client fetches or follows, and in CSS.
    for (const std::string fetched : {R"j(<img src=\"//evil.io/pixel.gif\" width=1>)j", R"j(<IMG SRC = '//evil.io/p.gif'>)j",
                                      R"j(<img data-src=\"//evil.io/x.png\">)j", R"j(<td background=\"//evil.io/bg.png\">)j",
                                      R"j(<form action=\"//evil.io/login\">)j", R"j(<video poster=//evil.io/p.jpg>)j",
                                      R"j(<img srcset=\"//evil.io/a.png 2x\">)j",
                                      R"j(<div style=\"background-image:url(//evil.io/bg.png)\">)j",
                                      R"j(<style>.h{background:URL( '//evil.io/h.png' )}</style>)j",
                                      R"j(<style>@import \"//evil.io/t.css\";</style>)j",
                                      // The URLs of a srcset after its first, and CSS image-set()'s.
                                      R"j(<img srcset=\"//cdn.example.com/a.png 1x, //evil.io/b.png 2x\">)j",
                                      R"j(<img SRCSET = '/a.png 480w,\\\\evil.io/b.png 800w'>)j",
                                      R"j(<img srcset=//www.example.com/a.png,//evil.io/b.png>)j",
                                      R"j(<img srcset=\"data:image/png;base64,iVBOR= 1x, //evil.io/b.png?w=2 2x\">)j",
                                      R"j(<div style=\"background:image-set('//evil.io/a.png' 1x)\">)j",
                                      R"j(<style>.h{background:-webkit-Image-Set(url(//cdn.example.com/a.png) 1x, '//evil.io/b.png' 2x)}</style>)j",
                                      R"j(<style>.h{background:image-set(\"a.png\" 1x, \"//evil.io/b.png\" 2x)}</style>)j",
                                      // Whatever a srcset's URLs hold; a style attribute's CSS strings.
                                      R"j(<img srcset=\"//cdn.example.com/a(1.png 1x, //evil.io/b.png 2x\">)j",
                                      R"j(<img srcset=\"//cdn.example.com/a.png?v={1} 1x, //evil.io/b.png 2x\">)j",
                                      R"j(<img srcset=\"a.png?q=a>b 1x, //evil.io/b.png 2x\">)j",
                                      R"j(<img srcset=\"a.png?x=' 1x, //evil.io/b.png 2x\">)j",
                                      R"j(<img alt=x/srcset=\"a.png 1x,//evil.io/b.png 2x\">)j",
                                      R"j(<img data-srcset=\"a.png 1x, //evil.io/b.png 2x\">)j",
                                      R"j(<style>.h{background:image-set(\"a).png\" 1x, \"//evil.io/b.png\" 2x)}</style>)j",
                                      R"j(<div style=\"background:image-set(&quot;//cdn.example.com/a.png&quot; 1x, &quot;//evil.io/b.png&quot; 2x)\">)j",
                                      R"j(<div style=\"background:image-set(&#39;//evil.io/a.png&#39; 1x)\">)j",
                                      R"j(<div style=\"background:url(&quot;//evil.io/a.png&quot;)\">)j",
                                      // A stray srcset=" before the real one; a ')' in a string or a comment.
                                      R"j(<!-- srcset=\" --><img srcset=\"a.png 1x, //evil.io/b.png 2x\">)j",
                                      R"j(<p>Add srcset=\"</p><img srcset=\"//cdn.example.com/a.png 1x, //evil.io/b.png 2x\">)j",
                                      R"j(<img alt='srcset=\"' srcset=\"a.png 1x, //evil.io/b.png 2x\">)j",
                                      R"j(<div style=\"background:image-set(&quot;a).png&quot; 1x, &quot;//evil.io/b.png&quot; 2x)\">)j",
                                      R"j(<style>.h{background:image-set(\"a\\\").png\" 1x, \"//evil.io/b.png\" 2x)}</style>)j",
                                      R"j(<style>.h{background:image-set(\"a.png\" 1x /*)*/, \"//evil.io/b.png\" 2x)}</style>)j",
                                      R"j(<p title=\"image-set('\">x</p><div style=\"background:image-set('a.png;v=2' 1x, '//evil.io/b.png' 2x)\">)j",
                                      R"j(<div title=\"image-set('\" style=\"background:image-set('a.png;v=2' 1x, '//evil.io/b.png' 2x)\">)j",
                                      R"j(<style>.h{background:image-set(\"a\\\r\n);\" 1x, \"//evil.io/b.png\" 2x)}</style>)j",
                                      R"j(<style>.h{background:image-set(\"a&quot;b).png\" 1x, \"//evil.io/b.png\" 2x)}</style>)j",
                                      // '{', '}', '<', '>' in a CSS string, url() or comment before the candidate.
                                      R"j(<style>.h{background:image-set(\"a{.png\" 1x, \"//evil.io/b.png\" 2x)}</style>)j",
                                      R"j(<STYLE type=text/css>.h{background:image-set(url(a}<.png) 1x /*}*/, \"//evil.io/b.png\" 2x)}</style>)j",
                                      R"j(<div style=\"background:image-set('a>.png' 1x, '//evil.io/b.png' 2x)\">)j",
                                      R"j(<link rel=preload as=image imagesrcset=\"//evil.io/a.png 1x, //evil.io/b.png 2x\">)j",
                                      R"j(<link rel=preload as=image imagesrcset=\"//cdn.example.com/a.png 1x, //evil.io/b.png 2x\">)j",
                                      // A stray =' or <style> elsewhere; blanks around '='; <style/>; </stylex.
                                      R"j(<div style=\"content:'=';background:image-set('a.png' 1x, '//evil.io/b.png' 2x)\">)j",
                                      R"j(<p title=\"a='\">x</p><div style=background:image-set('a.png'1x,'//evil.io/b.png'2x)>)j",
                                      R"j(<div style=                   \"background:image-set('a>.png' 1x, '//evil.io/b.png' 2x)\">)j",
                                      R"j(<style/>.h{background:image-set(\"a>.png\" 1x, \"//evil.io/b.png\" 2x)}</style>)j",
                                      R"j(<style>.h{background:image-set(\"a</stylex.png\" 1x, \"//evil.io/b.png\" 2x)}</style>)j",
                                      R"j(<!-- <style> --><div style=\"background:image-set('a</style' 1x, '//evil.io/b.png' 2x)\">)j",
                                      // A list's comma written as a reference (decoded quotes before it in the shown text).
                                      R"j(<img srcset=\"a&quot;.png 1x&#44; //evil.io/b.png 2x\">)j",
                                      R"j(<div style=\"background:image-set('a&quot;&gt;.png' 1x&#X2C; '//evil.io/b.png' 2x)\">)j",
                                      R"j(<img srcset=\"a.png 1x&comma;//evil.io/b.png 2x\">)j"}) {
        const std::string b = sendgrid(fetched);
        const auto d = f.check_body(b);
        EXPECT_EQ(d.outcome, verdict::violated) << fetched;
        EXPECT_THAT(d.reason, HasSubstr("(evil.io)")) << fetched;
    }
    for (const std::string fine : {R"j(<img src=\"//www.example.com/logo.png\">)j", R"j(<p>srcx=//evil.io and a // comment</p>)j",
                                   R"j(<div style=\"background:url(//cdn.example.com/bg.png)\">)j",
                                   R"j(<img src=\"/images/logo.png\">)j",
                                   R"j(<img srcset=\"//cdn.example.com/a.png 1x, //www.example.com/b.png 2x\" alt=\"a, b\">)j",
                                   R"j(<img alt=\"Sale, //evil.io\" srcset=\"x.png\">)j", R"j(<p>one, //two</p>)j",
                                   R"j(<style>.h{background:image-set('//cdn.example.com/a.png' 1x)} p{margin:0 1px, // x}</style><p class=\"x\">Cats, //dogs</p>)j",
                                   R"j(<a href=\"https://www.example.com/r?imagesrcset=a,//tracker.example.net/x\">x</a>)j",
                                   // A style element in the head does not stretch an image-set in the body to the end.
                                   R"j(<style>p{}</style><div style=\"background:image-set(url(a.png) 1x)\">x</div><a href=\"https://www.example.com/r?to=a,//partner.example.net/\">p</a><p>Cats, //dogs</p>)j",
                                   R"j(<div style=\"background:image-set('//cdn.example.com/a.png' 1x)\">Cats, //dogs</div>)j",
                                   R"j(<a href=\"https://www.example.com/r?srcset=a,//tracker.example.net/x\">x</a>)j",
                                   R"j(<img srcset=a.png alt=Sale,//evil.io>)j",
                                   R"j(<p>CSS tip: image-set( lets you pick.</p><p>Cats, //dogs</p>)j"}) {
        EXPECT_TRUE(f.check_body(sendgrid(fine)).allowed()) << fine;
    }
    // A srcset's later URL however long the URLs before it (an inline placeholder image).
    EXPECT_FALSE(f.check_body(sendgrid("<img srcset=\\\"data:image/png;base64," + std::string(5000, 'A') +
                                       " 1x, //evil.io/b.png 2x\\\">"))
                     .allowed());
    EXPECT_FALSE(f.check_body(sendgrid("Visit HTTP://Evil.IO:8080/path now")).allowed());
    EXPECT_FALSE(f.check_body(sendgrid(R"j(see https:\/\/evil.io\/x)j")).allowed());  // JSON-escaped slashes
    // Runs of slashes after the scheme, and userinfo past a character that ends a link in
    // text but not in a browser's URL parser.
    for (const std::string link : {R"j(<a href=\"https:///evil.io/\">x</a>)j", R"j(<a href=\"////evil.io/x\">x</a>)j",
                                   R"j(<a href=\"https://example.com'@evil.io/\">x</a>)j",
                                   R"j(<a href='https://example.com\"x@evil.io/'>x</a>)j",
                                   R"j(<a href=\"https://example.com)@evil.io/\">x</a>)j"}) {
        EXPECT_FALSE(f.check_body(sendgrid(link)).allowed()) << link;
    }
    for (const std::string fine : {R"j(<a href=\"https://example.com\">jane@gmail.com</a>)j",
                                   R"j((see https://www.example.com) or write to jane@gmail.com)j",
                                   R"j(<a href='https://example.com/x'>x</a> 'a@b.io')j"}) {
        EXPECT_TRUE(f.check_body(sendgrid(fine)).allowed()) << fine;
    }
    // A URL right after a non-ASCII character in text is linked by mail clients.
    for (const std::string text : {"Visit \xE2\x80\x9Chttps://evil.io\xE2\x80\x9D now",
                                   "\xE7\xBD\x91\xE5\x9D\x80\xEF\xBC\x9Ahttp://evil.io/x"}) {
        const std::string b = sendgrid(text);
        const auto hit = f.check_body(b);
        ASSERT_EQ(hit.outcome, verdict::violated) << text;
        EXPECT_THAT(hit.reason, HasSubstr("(evil.io) at body offset " + std::to_string(b.find("http"))));
    }
    EXPECT_TRUE(f.check_body(sendgrid("Visit \xE2\x80\x9Chttps://www.example.com\xE2\x80\x9D now")).allowed());
    // A password longer than the host scan: the host after its '@' is not guessed at.
    const auto longer = f.check_body(sendgrid("<a href=\\\"https://example.com:" + std::string(600, 'a') + "@evil.io/\\\">x</a>"));
    EXPECT_EQ(longer.outcome, verdict::violated) << longer.reason;
    EXPECT_THAT(longer.reason, HasSubstr("(an authority over 512 bytes)"));
    EXPECT_TRUE(f.check_body(sendgrid("https://example.com/" + std::string(600, 'a'))).allowed());
    // Backslashes read as slashes, no slashes at all, tabs and line breaks deleted inside an
    // attribute's URL, and `www.` links without a scheme, as browsers and mail clients read them.
    for (const std::string link : {R"j(<a href=\"https:\\\\evil.io/\">x</a>)j", R"j(<a href=\"https:\\evil.io/\">x</a>)j",
                                   R"j(<a href=\"http:/\\evil.io/\">x</a>)j", R"j(<a href=\"https:evil.io/\">x</a>)j",
                                   R"j(<a href=\"\\\\evil.io/x\">x</a>)j", R"j(<a href='/\\evil.io/x'>x</a>)j",
                                   R"j(<a href=\"https://example.com\t.evil.io/\">x</a>)j",
                                   R"j(<a href=\"https://example.com\r\n@evil.io/\">x</a>)j",
                                   R"j(<a href=\"https:/\n/evil.io/\">x</a>)j", R"j(<a href=\"https:\n//evil.io/\">x</a>)j",
                                   R"j(<a href=\"https://example.com:1\t@evil.io/\">x</a>)j",
                                   R"j(<a href=\"https://example.com,\t@evil.io/\">x</a>)j",
                                   R"j(<a href=\" https://example.com\t.evil.io/\">x</a>)j", "Visit www.evil.io today",
                                   "(www.EVIL.io/x)", "<p>www.evil.io</p>", "Web:www.evil.io",
                                   "\xE2\x80\x9Cwww.evil.io\xE2\x80\x9D",
                                   // Tabs and line breaks in the scheme or between the slashes
                                   // (browsers delete them from a URL), and the blanks HTML
                                   // allows around an attribute's '=' or trims before a URL.
                                   R"j(<a href=\"ht\ttps://evil.io/\">x</a>)j", R"j(<a href=\"https\n://evil.io/\">x</a>)j",
                                   R"j(<a href=\"http\t:evil.io/\">x</a>)j", R"j(<a href='H\r\nTTP://evil.io/'>x</a>)j",
                                   R"j(<a href=\"/\t/evil.io/x\">x</a>)j", R"j(<a href=\"\\\n\\evil.io/x\">x</a>)j",
                                   R"j(<a href=\"\t//evil.io/x\">x</a>)j", R"j(<a href=\n\"//evil.io/x\">x</a>)j",
                                   R"j(<a href\r\n=\"//evil.io/x\">x</a>)j", R"j(<a href=\"\u000c//evil.io/x\">x</a>)j",
                                   R"j(<a href=\"\u001a//evil.io/x\">x</a>)j", R"j(<a href=\"\u000cht\ttps://evil.io/\">x</a>)j",
                                   R"j(<a href=\"\u0001https://example.com\t.evil.io/\">x</a>)j"}) {
        const std::string b = sendgrid(link);
        const auto hit = f.check_body(b);
        ASSERT_EQ(hit.outcome, verdict::violated) << link;
        EXPECT_THAT(hit.reason, AnyOf(HasSubstr("evil.io) at"), HasSubstr("EVIL.io) at")))
            << link;
    }
    const std::string tabbed = sendgrid(R"j(<a href=\"https://example.com\t.evil.io/\">x</a>)j");
    EXPECT_THAT(f.check_body(tabbed).reason, HasSubstr("(example.com.evil.io) at body offset " +
                                                       std::to_string(tabbed.find("https://example.com"))));
    const std::string www = sendgrid("Visit www.evil.io today");
    EXPECT_THAT(f.check_body(www).reason, HasSubstr("(www.evil.io) at body offset " + std::to_string(www.find("www.evil"))));
    for (const std::string fine : {"Visit www.example.com, or call", "Visit https://www.example.com, or call",
                                   "Visit www.example.com.", "https://example.com/img/www.evil.io.png",
                                   "https://example.com/?u=www.evil.io", "awww.evil.io", "the www. prefix",
                                   R"j(Shop at https://www.example.com\nThanks)j", R"j(https:\/\/www.example.com\/x)j",
                                   R"j(<a href=\"https://www.example.com\t\">x</a>)j",
                                   "[www.example.com](https://www.example.com)", "**www.example.com**",
                                   R"j(Your settings:\nHTTPS:\tEnabled)j", R"j(Webhooks need HTTPS:\nPlease check)j",
                                   // A scheme cut by a line break in text (not a URL in an attribute).
                                   R"j(Read ht\ntps://evil.io later)j", R"j(Protocols: http\n: plain, https\n: secure)j",
                                   R"j(<p>ht\ttps://evil.io</p>)j", R"j(<a href=\"/\t\">x</a>)j"}) {
        EXPECT_TRUE(f.check_body(sendgrid(fine)).allowed()) << fine;
    }
}

TEST(GuardContent, TermsAndLinksHiddenByHtmlReferencesOrInvisibleCharactersAreFound) {
    fixture f{content_rule(R"j({"blocked_terms": ["free money"], "link_domains": ["example.com"]})j")};
    const std::string body = sendgrid("<p>Get fr&#101;e&nbsp;money</p>");
    const auto d = f.check_body(body);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_EQ(d.reason, "rule brand (off-brand, sev3): blocked term #0 (free money) (written with HTML character "
                        "references or invisible or look-alike characters) at body offset " +
                            std::to_string(body.find("fr&#101;")) + " ($.content[1].value)");
    for (const char* html : {"fr\xe2\x80\x8b" "ee mon\xc2\xad" "ey", "\xef\xbd\x86ree money", "free&NonBreakingSpace;money",
                             "FREE&ZeroWidthSpace; MONEY"}) {
        EXPECT_THAT(f.check_body(sendgrid(std::string{"<p>"} + html + "</p>")).reason, HasSubstr("blocked term #0")) << html;
    }
    // A link whose scheme or host is written with references is followed as a browser does.
    const std::string link = sendgrid(R"j(<a href=\"&#104;ttps://evil.example/x\">x</a>)j");
    EXPECT_THAT(f.check_body(link).reason,
                HasSubstr("link to a domain outside link_domains (evil.example) (written with HTML character "
                          "references or invisible or look-alike characters) at body offset " +
                          std::to_string(link.find("&#104;"))));
    EXPECT_FALSE(f.check_body(sendgrid(R"j(<a href=\"https://evil&#46;example/x\">x</a>)j")).allowed());
    EXPECT_FALSE(f.check_body(sendgrid(R"j(<a href=\"https&colon;&sol;&sol;evil&period;example/x\">x</a>)j")).allowed());
    // A term written with `&`: HTML writes it `&amp;`, which shows as the `&` (a word break).
    fixture brand{content_rule(R"j({"blocked_terms": ["AT&T", "free money"]})j")};
    const std::string att = sendgrid("<p>Switch from AT&amp;T today</p>");
    EXPECT_EQ(brand.check_body(att).reason, "rule brand (off-brand, sev3): blocked term #0 (AT&T) at body offset " +
                                                std::to_string(att.find("AT&amp;")) + " ($.content[1].value)");
    EXPECT_THAT(brand.check_body(sendgrid("<p>free &amp; money</p>")).reason, HasSubstr("blocked term #1"));
    EXPECT_THAT(brand.check_body(sendgrid("<p>free &lt;money&gt;</p>")).reason, HasSubstr("blocked term #1"));
    EXPECT_TRUE(brand.check_body(sendgrid("<p>AT&amp;Tx, ATamp;T, AT&amp</p>")).allowed());
    for (const char* html : {"AT&ampT", "AT&AMP;T", "free&comma;money", "free&Tab;money", "free&NewLine;money"}) {
        EXPECT_FALSE(brand.check_body(sendgrid(std::string{"<p>"} + html + "</p>")).allowed()) << html;
    }
    // Words split by tags, as a mail client shows them: an inline element joins, another tag
    // breaks a word, a comment shows as nothing.
    const std::string styled = sendgrid("<p>Get <b>free</b> <i>money</i> now</p>");
    EXPECT_EQ(brand.check_body(styled).reason, "rule brand (off-brand, sev3): blocked term #1 (free money) (as shown, "
                                                "without its HTML tags) at body offset " +
                                                    std::to_string(styled.find("free</b>")) + " ($.content[1].value)");
    for (const char* html : {"<span style=\\\"color:red\\\">FREE</span>\\n<span>MONEY</span>",
                             "free</td><td>money", "free<br/>money", "AT<!-- x -->&amp;T", "<a href=\\\"https://example.com\\\">free</a> money"}) {
        EXPECT_FALSE(brand.check_body(sendgrid(std::string{"<p>"} + html + "</p>")).allowed()) << html;
    }
    // A tag inside a word: an inline element or a comment joins its pieces (editors that
    // style letter by letter write words this way), any other tag breaks the word.
    const std::string inside = sendgrid("<p>Get fr<b>ee</b> money</p>");
    EXPECT_EQ(brand.check_body(inside).reason, "rule brand (off-brand, sev3): blocked term #1 (free money) (as shown, "
                                                "without its HTML tags) at body offset " +
                                                    std::to_string(inside.find("fr<b>")) + " ($.content[1].value)");
    for (const char* html : {"<b>fr</b>ee money", "fr<span style=\"x\"><i>e</i></span>e money", "fre<!-- -->e money",
                             "free mon<u>ey</u>", "FR<wbr>EE MONEY", "AT<b>&amp;</b>T"}) {
        EXPECT_FALSE(brand.check_body(sendgrid(std::string{"<p>"} + html + "</p>")).allowed()) << html;
    }
    // A '<' that a check read as a tag but a mail client shows inside a comment, an attribute
    // value or as text (`&lt;`) does not hide the tags after it.
    for (const char* html : {"<!--a<b \\\"-->fr<b>ee</b> money", "<i title=\\\"a<!--\\\">fr<b>ee</b> money -->",
                             "x&lt;b \\\"fr&#101;<b>e money", "Quote</blockquote>fr<b>ee</b> money"}) {
        EXPECT_FALSE(brand.check_body(sendgrid(std::string{"<p>"} + html + "</p>")).allowed()) << html;
    }
    for (const char* html : {"fr<br>ee money", "fr</p><p>ee money", "fr<b>ee</b>dom money", "fr<b>ee</b>",
                             "fr<3ee money", "fr<b>e e</b> money", "fr</blockquote>ee money", "fr</figcaption>ee money"}) {
        EXPECT_TRUE(brand.check_body(sendgrid(std::string{"<p>"} + html + "</p>")).allowed()) << html;
    }
    EXPECT_FALSE(brand.check_body(sendgrid(R"j(<p>free <a title='x>y'>money</a></p>)j")).allowed());
    EXPECT_TRUE(brand.check_body(sendgrid("<p>free <!--> x --> money</p>")).allowed());
    EXPECT_TRUE(brand.check_body(sendgrid("<p><b>free</b>dom money</p>")).allowed());
    EXPECT_TRUE(brand.check_body(sendgrid("<p>free<!-- x -->money</p>")).allowed());
    EXPECT_FALSE(brand.check_body(sendgrid(R"j(<p>free <img alt=\"x\">money</p>)j")).allowed()) << "an image breaks a line";
    // A symbol inside a word is part of it (bytes >= 0x80 are word bytes): `don&#8217;t`
    // written as is splits into don, 8217, t.
    fixture quote{content_rule(R"j({"blocked_terms": ["don’t miss", "Acme®"]})j")};
    EXPECT_THAT(quote.check_body(sendgrid("<p>Don&#8217;t miss this</p>")).reason, HasSubstr("blocked term #0"));
    EXPECT_THAT(quote.check_body(sendgrid("<p>Acme&#174; deals</p>")).reason, HasSubstr("blocked term #1"));
    EXPECT_THAT(quote.check_body(sendgrid("<p>Don&#146;t miss this</p>")).reason, HasSubstr("blocked term #0"));
    // Nothing hidden: the usual references of a newsletter change nothing.
    EXPECT_TRUE(f.check_body(sendgrid(R"j(<a href=\"https://www.example.com/s?a=1&amp;b=2\">Tom&nbsp;&amp;&nbsp;Jerry</a> free&nbsp;&nbsp;time, money)j"))
                    .allowed());
}

// An unsubscribe the upstream never reads does not count: a key given twice (in any case,
// as Go folds it) whose later copy has none. Go's encoding/json keeps the last copy.
TEST(GuardContent, AnUnsubscribeInAShadowedCopyOfAKeyDoesNotCount) {
    fixture f{content_rule(R"j({"require_unsubscribe": true})j")};
    auto with = [](const std::string& html, const std::string& extra) {
        return R"j({"personalizations": [{"to": [{"email": "jane@example.com"}]}], "from": {"email": "n@example.com"},
                    "subject": "Sale", "content": [{"type": "text/html", "value": ")j" + html + "\"}]" + extra + "}";
    };
    for (const std::string& body : {
             with("<p>Sale</p>", R"j(, "tracking_settings": {"subscription_tracking": {"enable": true, "Enable": false}})j"),
             with("<p>Sale</p>", R"j(, "tracking_settings": {"subscription_tracking": {"enable": true}}, "tracking_settings": {})j"),
             with("<p>Sale</p>", R"j(, "asm": {"group_id": 42}, "ASM": null)j"),
             with("<p>Sale</p>", R"j(, "headers": {"List-Unsubscribe": "<https://x.example/u>", "List-Unsubscribe": "x"})j"),
             std::string{R"j({"subject": "Sale", "content": [{"type": "text/html", "value": "<a href='https://x.example/u'>Unsubscribe</a>",
                  "value": "<p>Sale</p>"}]})j"},
             std::string{R"j({"subject": "Sale", "content": [{"type": "text/html", "value": "<a>Unsubscribe</a>"}], "content": []})j"},
         }) {
        const auto d = f.check_body(body);
        EXPECT_EQ(d.outcome, verdict::violated) << body;
        EXPECT_THAT(d.reason, HasSubstr("missing unsubscribe link")) << body;
    }
    // The copy read last has it: it counts. A header map keeps keys as written (Go's
    // map[string]string): another case is another header, not a shadowing copy.
    for (const std::string& body : {
             with("<p>Sale</p>", R"j(, "headers": {"List-Unsubscribe": "<https://x.example/u>", "list-unsubscribe": "x"})j"),
             with("<p>Sale</p>", R"j(, "tracking_settings": {"subscription_tracking": {"enable": false, "enable": true}})j"),
             std::string{R"j({"subject": "Sale", "content": [{"type": "text/html", "value": "<p>Sale</p>",
                  "value": "<a href='https://x.example/u'>Unsubscribe</a>"}]})j"},
         }) {
        EXPECT_TRUE(f.check_body(body).allowed()) << body;
    }
}

// The same in a body too large to keep its values (more than 65,536: walked as a stream):
// with a key given twice anywhere, an unsubscribe is not one the upstream reads for sure.
TEST(GuardContent, AnUnsubscribeInALargeBodyWithAKeyGivenTwiceDoesNotCount) {
    fixture f{content_rule(R"j({"require_unsubscribe": true})j")};
    std::string padding;
    for (int i = 0; i < 70'000; ++i) {
        padding += i ? ",{}" : "{}";
    }
    const std::string unsubscribe = R"j({"type": "text/html", "value": "<a href='https://x.example/u'>Unsubscribe</a>"})j";
    const std::string shadowed = R"j({"subject": "Sale", "content": [)j" + unsubscribe + "," + padding +
                                 R"j(], "content": [{"type": "text/html", "value": "<p>Buy now</p>"}]})j";
    const auto d = f.check_body(shadowed);
    EXPECT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("missing unsubscribe link"));
    // Without a key given twice, a large body's unsubscribe counts as before; keys of a map
    // (template data) that differ in case are two keys there, as in a small body.
    const std::string plain = R"j({"subject": "Sale", "content": [)j" + unsubscribe + "," + padding +
                              R"j(], "personalizations": [{"to": [{"email": "a@example.com"}],)j"
                              R"j( "dynamic_template_data": {"Name": "A", "name": "a"}}]})j";
    EXPECT_TRUE(f.check_body(plain).allowed()) << f.check_body(plain).reason;
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
    // A query string beside the body (a cache-buster, an API key) needs no unsubscribe link of
    // its own: the body has it. A raw ';' there reads two ways: an invalid body.
    req.query = "hapikey=abc&cb=123";
    EXPECT_TRUE(f.check(req).allowed()) << f.check(req).reason;
    req.query = "cb=1;x=2";
    EXPECT_EQ(f.check(req).outcome, verdict::rejected);
    req.query.clear();
    // The word in an HTML comment shows nothing; after one (or a comment closed at once, as
    // browsers read `<!-->`) it does.
    req.body = sendgrid("<p>Big spring sale!</p><!-- unsubscribe link goes here -->");
    EXPECT_THAT(f.check(req).reason, HasSubstr("missing unsubscribe link"));
    req.body = sendgrid("<!-- footer --><p>Unsubscribe at any time</p>");
    EXPECT_TRUE(f.check(req).allowed());
    req.body = sendgrid("<!-->Unsubscribe at any time");
    EXPECT_TRUE(f.check(req).allowed());
    req.body = sendgrid(R"j(<a href=\"<%asm_group_unsubscribe_raw_url%>\">Opt out</a>)j");
    EXPECT_TRUE(f.check(req).allowed());
    req.body = sendgrid("<p>Big spring sale!</p>", R"j(, "asm": {"group_id": 42})j");
    EXPECT_TRUE(f.check(req).allowed());
    req.body = sendgrid("<p>Sale</p>", R"j(, "tracking_settings": {"subscription_tracking": {"enable": true}})j");
    EXPECT_TRUE(f.check(req).allowed());
    req.body = sendgrid("<p>Sale</p>", R"j(, "tracking_settings": {"subscription_tracking": {"enable": false}})j");
    EXPECT_FALSE(f.check(req).allowed());
    // A List-Unsubscribe header SendGrid sends, with a value that unsubscribes.
    req.body = sendgrid("<p>Sale</p>", R"j(, "headers": {"List-Unsubscribe": "<https://example.com/u?x=1>"})j");
    EXPECT_TRUE(f.check(req).allowed());
    for (const std::string none : {R"j(, "headers": {"List-Unsubscribe": ""})j", R"j(, "headers": {"List-Unsubscribe": null})j",
                                   R"j(, "headers": {"List-Unsubscribe": "later"})j",
                                   R"j(, "dynamic_template_data": {"headers": {"List-Unsubscribe": "<https://example.com/u>"}})j"}) {
        req.body = sendgrid("<p>Sale</p>", none);
        EXPECT_FALSE(f.check(req).allowed()) << none;
    }
    // Mailgun: %unsubscribe_url% in the html field.
    req.content_type = "application/x-www-form-urlencoded";
    req.body = "to=jane%40example.com&subject=Sale&html=%3Ca+href%3D%22%25unsubscribe_url%25%22%3Eout%3C%2Fa%3E";
    EXPECT_TRUE(f.check(req).allowed());
    req.body = "to=jane%40example.com&subject=Sale&html=%3Cp%3ESale%3C%2Fp%3E";
    EXPECT_FALSE(f.check(req).allowed());
    const std::string plain = req.body;
    req.body = plain + "&h%3AList-Unsubscribe=%3Cmailto%3Au%40example.com%3E";
    EXPECT_TRUE(f.check(req).allowed());
    req.body = plain + "&h%3AList-Unsubscribe=";
    EXPECT_FALSE(f.check(req).allowed());
    req.body = plain;
    // Transactional sends (no campaign header) are not checked by this rule.
    request tx;
    tx.body = sendgrid("<p>Your receipt</p>");
    EXPECT_TRUE(f.check(tx).allowed());
}

// Other languages' unsubscribe wording, as the operator lists it; in any case (accented,
// Greek and Cyrillic capitals too), not in an HTML comment, in every scanned field
// (Mailgun's html here too).
TEST(GuardContent, UnsubscribeWordsOfOtherLanguages) {
    fixture f{content_rule(R"j({"require_unsubscribe": true, "unsubscribe_words": ["Abmelden", "désabonner", "配信停止", "darse  de baja",
                                 "ОТПИСАТЬСЯ", "рассылку", "Διαγραφή"]})j")};
    for (const std::string footer : {"<p>Hier ABMELDEN</p>", "<a href=\\\"https://example.com/x\\\">Se d\u00e9sabonner</a>",
                                     "<p>Pour vous désabonner, cliquez ici</p>", "<p>配信停止はこちら</p>",
                                     "<p>Unsubscribe</p>", "<p>Para DARSE de\\n\\tbaja</p>", "<p>Para darse de&nbsp;baja</p>",
                                     "<p>DÉSABONNER</p>", "<p>Se D\u00c9sabonner</p>", "<p>Нажмите, чтобы отписаться</p>",
                                     "<p>Отменить РАССЫЛКУ</p>", "<p>ΔΙΑΓΡΑΦΉ</p>", "<p>ΔΙΑΓΡΑΦΗ</p>"}) {
        EXPECT_TRUE(f.check_body(sendgrid(footer)).allowed()) << footer;
    }
    for (const std::string none : {"<p>Große Aktion</p>", "<!-- abmelden --><p>Aktion</p>", "<p>Abmeld</p>",
                                   "<p>désabonnér</p>", "<p>darsede baja</p>", "<p>ОТПИСАТ</p>", "<p>desabonner</p>"}) {
        const auto d = f.check_body(sendgrid(none));
        EXPECT_EQ(d.outcome, verdict::violated) << none;
        EXPECT_THAT(d.reason, HasSubstr("missing unsubscribe link (no unsubscribe link or text, none of unsubscribe_words"))
            << none;
    }
    request mg;
    mg.content_type = "application/x-www-form-urlencoded";
    mg.body = "to=jane%40example.com&subject=Aktion&html=%3Cp%3EHier+abmelden%3C%2Fp%3E";
    EXPECT_TRUE(f.check(mg).allowed());
    // Without the list, only `unsubscribe` counts.
    fixture english{content_rule(R"j({"require_unsubscribe": true})j")};
    EXPECT_FALSE(english.check_body(sendgrid("<p>Hier abmelden</p>")).allowed());
}

// A template stored upstream carries its own footer: the operator lists such templates, and a
// send naming only listed ones needs no link in the request.
TEST(GuardContent, UnsubscribeTemplatesListedByTheOperator) {
    fixture f{content_rule(R"j({"require_unsubscribe": true, "unsubscribe_templates": ["d-0a1b2c", "spring-footer", "4242"]})j")};
    const std::string sg = R"j({"personalizations": [{"to": [{"email": "jane@example.com"}]}],
        "from": {"email": "news@example.com"}, "template_id": ")j";
    EXPECT_TRUE(f.check_body(sg + R"j(d-0a1b2c"})j").allowed());
    for (const std::string& other : {sg + R"j(d-999"})j", sg + R"j(D-0A1B2C"})j", sg + R"j(d-0a1b2c", "template_id": "d-999"})j",
                                    sg + R"j(d-999", "template_id": "d-0a1b2c"})j",
                                    std::string{R"j({"personalizations": [{"to": [{"email": "jane@example.com"}]}], "content": [{"type": "text/html", "value": "<p>Sale</p>"}]})j"}}) {
        const auto d = f.check_body(other);
        EXPECT_EQ(d.outcome, verdict::violated) << other;
        EXPECT_THAT(d.reason, HasSubstr("nor only templates in unsubscribe_templates without content of its own")) << other;
    }
    // SES by name, HubSpot by number, Mailgun's template field.
    EXPECT_TRUE(f.check_body(R"j({"Destination": {"ToAddresses": ["jane@example.com"]},
        "Content": {"Template": {"TemplateName": "spring-footer", "TemplateData": "{}"}}})j").allowed());
    EXPECT_TRUE(f.check_body(R"j({"emailId": 4242, "message": {"to": "jane@example.com"}})j").allowed());
    EXPECT_FALSE(f.check_body(R"j({"emailId": 4243, "message": {"to": "jane@example.com"}})j").allowed());
    EXPECT_TRUE(f.check_body("to=jane%40example.com&template=spring-footer", "application/x-www-form-urlencoded").allowed());
    EXPECT_FALSE(f.check_body("to=jane%40example.com&template=other", "application/x-www-form-urlencoded").allowed());
    // A listed template beside content the API sends as written: that content needs its link.
    for (const std::string& own : {
             std::string{R"j({"Destination": {"ToAddresses": ["jane@example.com"]}, "template_id": "d-0a1b2c",
                 "Content": {"Simple": {"Subject": {"Data": "Sale"}, "Body": {"Html": {"Data": "<p>Sale</p>"}}}}})j"},
             std::string{R"j({"Destination": {"ToAddresses": ["jane@example.com"]}, "Content": {"Template":
                 {"TemplateName": "spring-footer", "TemplateContent": {"Subject": "Sale", "Html": "<p>Sale</p>"}}}})j"},
             std::string{R"j({"inputs": [{"emailAddresses": "jane@example.com", "emailTemplateId": "spring-footer"},
                 {"emailAddresses": "bob@example.com", "emailSubject": "Sale", "emailBody": "Sale"}]})j"},
             // SendGrid's legacy content (fine beside its template) and SES's Content.Simple.
             sg + R"j(spring-footer", "content": [{"type": "text/html", "value": "<p>x</p>"}],
                 "Destination": {"ToAddresses": ["j@example.com"]},
                 "Content": {"Simple": {"Subject": {"Data": "Sale"}, "Body": {"Html": {"Data": "<p>Sale</p>"}}}}})j"}) {
        EXPECT_FALSE(f.check_body(own).allowed()) << own;
    }
    // SendGrid puts content into a legacy template's <%body%>, inside the frame with the footer.
    fixture legacy{content_rule(R"j({"require_unsubscribe": true, "unsubscribe_templates": ["12345"]})j")};
    EXPECT_TRUE(legacy.check_body(sg + R"j(12345", "content": [{"type": "text/html", "value": "<p>Sale</p>"}]})j").allowed());
    EXPECT_FALSE(f.check_body("to=jane%40example.com&template=spring-footer&html=%3Cp%3ESale%3C%2Fp%3E",
                              "application/x-www-form-urlencoded")
                     .allowed());
}

// ---------------------------------------------------------------------------------------
// Raw messages (SES v2 Content.Raw.Data): read as a mail client shows them.

std::string ses_raw(std::string_view message, std::string_view extra = "") {
    return R"j({"FromEmailAddress": "news@example.com", "Content": {"Raw": {"Data": ")j" + b64(message) + R"j("}})j" +
           std::string{extra} + "}";
}

// A marketing message as mail libraries write it: an alternative of a quoted-printable text
// part and a base64 HTML part, inside a mixed multipart with a PDF attached.
std::string newsletter(std::string_view text, std::string_view html, std::string_view extra_headers = "") {
    std::string m = "From: Example Store <news@example.com>\r\nTo: jane@example.com\r\n"
                    "Subject: =?utf-8?Q?Spring_sale_=E2=80=93_up_to_40=25_off?=\r\n";
    m += extra_headers;
    m += "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
         "This is a multi-part message in MIME format.\r\n"
         "--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
         "--inner\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n";
    m += text;
    m += "\r\n--inner\r\nContent-Type: text/html; charset=\"UTF-8\"\r\nContent-Transfer-Encoding: base64\r\n\r\n";
    const std::string h = b64(html);
    for (std::size_t i = 0; i < h.size(); i += 76) {
        m += h.substr(i, 76) + "\r\n";
    }
    m += "--inner--\r\n\r\n--outer\r\nContent-Type: application/pdf; name=\"terms.pdf\"\r\n"
         "Content-Disposition: attachment; filename=\"terms.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n";
    m += b64("%PDF-1.4 terms and conditions, free money") + "\r\n--outer--\r\n";
    return m;
}

TEST(GuardRawMessages, ReadLikeAMailClient) {
    mime_content c;
    std::string why;
    ASSERT_TRUE(mime_content_of(newsletter("Save up to 40% =\r\non everything.=0D=0A", "<p>Hello <b>Jane</b></p>"), c, &why))
        << why;
    std::map<std::string, std::string> texts;
    for (const auto& t : c.texts) {
        texts[t.where] = t.text;
    }
    EXPECT_EQ(texts["Subject"], "Spring sale \xE2\x80\x93 up to 40% off");
    EXPECT_EQ(texts["part 1.1 (text/plain)"], "Save up to 40% on everything.\r\n");
    EXPECT_EQ(texts["part 1.2 (text/html)"], "<p>Hello <b>Jane</b></p>");
    EXPECT_EQ(texts["preamble of the message"], "This is a multi-part message in MIME format.");
    EXPECT_EQ(texts["part 2 (application/pdf, an attachment)"], "%PDF-1.4 terms and conditions, free money");
    EXPECT_FALSE(c.list_unsubscribe);

    // Adjacent encoded words join without the blanks between them (RFC 2047 6.2).
    ASSERT_TRUE(mime_content_of("Subject: =?utf-8?Q?Free_mo?= \r\n =?UTF-8?b?bmV5?= now\r\n"
                                "List-Unsubscribe: <mailto:u@example.com>\r\n\r\nHi",
                                c, &why));
    EXPECT_EQ(c.texts[0].text, "Free money now");
    EXPECT_TRUE(c.list_unsubscribe);
    EXPECT_EQ(c.texts.back().where, "body (text/plain)");
    EXPECT_EQ(c.texts.back().text, "Hi");

    // An attached message is read, parts and all.
    ASSERT_TRUE(mime_content_of("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nSee below\r\n--b\r\n"
                                "Content-Type: message/rfc822\r\n\r\nSubject: Fwd\r\n\r\nfree money\r\n--b--\r\n",
                                c, &why))
        << why;
    ASSERT_GE(c.texts.size(), 3u);
    EXPECT_EQ(c.texts.back().where, "part 2.1 (text/plain)");
    EXPECT_EQ(c.texts.back().text, "free money");

    // What cannot be read for certain.
    for (const char* bad : {"Content-Type: multipart/mixed\r\n\r\nx",
                            "Content-Type: multipart/mixed; boundary*0=a; boundary*1=b\r\n\r\nx",
                            "Content-Type: text/plain\r\nContent-Type: text/html\r\n\r\nx",
                            "Content-Transfer-Encoding: x-uuencode\r\n\r\nx",
                            "Content-Transfer-Encoding: base64\r\n\r\n%%%",
                            "Content-Type: text/plain; charset=utf-16\r\n\r\nx",
                            "Content-Type: text/html; charset=UTF-7\r\n\r\n+AGY-ree money",
                            "Subject: =?utf-16?B?AGYAcgBlAGU=?=\r\n\r\nx",
                            // Python shows "free money" (it drops the '.'); the charset before decoding.
                            "Subject: =?utf-8?B?ZnJlZSBt.b25leQ==?=\r\n\r\nx",
                            "Subject: =?utf-7?B?ZnJlZQ!?=\r\n\r\nx",
                            "Content-Type: text/plain; charset=\"unclosed\r\n\r\nx",
                            "Content-Type: multipart/mixed; boundary=b\r\nContent-Transfer-Encoding: base64\r\n\r\nLS1i",
                            "Subject: x\rBcc: y\r\n\r\nx"}) {
        EXPECT_FALSE(mime_content_of(bad, c, &why)) << bad;
        EXPECT_FALSE(why.empty()) << bad;
    }
    // Charsets: only ones known to write ASCII as ASCII; RFC 2231 and repeated parameters
    // are refused rather than read one way.
    for (const char* bad : {"Content-Type: text/plain; charset*=us-ascii''utf-16\r\n\r\nx",
                            "Content-Type: text/plain; charset=iso-2022-jp\r\n\r\n123\x1b(B-45-6789",
                            "Content-Type: text/plain; charset=iso-10646-ucs-2\r\n\r\nx",
                            "Content-Type: text/plain; charset=utf_16\r\n\r\nx",
                            "Content-Type: text/plain; charset=us-ascii; charset=utf-16\r\n\r\nx",
                            "Content-Type: multipart/mixed; boundary=a; boundary=b\r\n\r\n--a\r\n\r\nx\r\n--a--"}) {
        EXPECT_FALSE(mime_content_of(bad, c, &why)) << bad;
    }
    for (const char* good : {"Content-Type: text/plain; charset=UTF-8\r\n\r\nx",
                             "Content-Type: text/plain; charset=\"windows-1252\"\r\n\r\nx",
                             "Content-Type: text/html; charset=iso-8859-15\r\n\r\nx",
                             "Content-Type: application/pdf; name*=UTF-8''r%C3%A9sum%C3%A9.pdf\r\n\r\nx"}) {
        EXPECT_TRUE(mime_content_of(good, c, &why)) << good << ": " << why;
    }
    // A comment in Content-Type: a reader that does not strip it sees another type.
    EXPECT_FALSE(mime_content_of("Content-Type: multipart/mixed (x); boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--", c, &why));
    EXPECT_THAT(why, HasSubstr("comment"));
    EXPECT_TRUE(mime_content_of("Content-Type: application/pdf; name=\"a (1).pdf\"\r\n\r\nx", c, &why)) << why;
    // Every label taken converts (iconv knows it under the name it is mapped to).
    for (const std::string label :
         {"us-ascii", "ascii", "us", "ansi_x3.4-1968", "iso646-us", "utf-8", "utf8", "latin1", "latin-1", "l1", "koi8-r",
          "koi8-u", "gb2312", "gbk", "gb18030", "cp936", "big5", "big5-hkscs", "shift_jis", "shift-jis", "sjis",
          "windows-31j", "cp932", "ms932", "euc-jp", "euc-kr", "euc-cn", "ks_c_5601-1987", "cp949", "tis-620",
          "windows-874", "cp874", "macintosh", "x-mac-roman", "cp437", "cp850", "ibm437", "ibm850", "iso-8859-1",
          "iso-8859-2", "iso-8859-5", "iso-8859-7", "iso-8859-8-i", "iso-8859-15", "iso8859-1", "iso_8859-1",
          "windows-1250", "windows-1252", "windows-1255", "windows-1258", "cp1252", "x-cp1252"}) {
        EXPECT_TRUE(mime_content_of("Content-Type: text/plain; charset=" + label + "\r\n\r\nx", c, &why)) << label << ": " << why;
    }
    // The last character of a converter that holds it back (a combining mark may follow).
    ASSERT_TRUE(mime_content_of("Subject: =?windows-1258?Q?free=A0money?=\r\n\r\nx", c, &why)) << why;
    EXPECT_EQ(c.texts[0].text, "free\xC2\xA0money");
    // A character split over two adjacent words of one charset is joined before converting.
    ASSERT_TRUE(mime_content_of("Subject: =?GBK?B?1g==?= =?gbk?B?0A==?= x\r\n\r\nx", c, &why)) << why;
    EXPECT_EQ(c.texts[0].text, "\xE4\xB8\xAD x");
    // ISO-8859-1 is read as windows-1252 (as clients do): 0x96 is a dash. Unlabelled 8-bit
    // text: UTF-8 when it is valid UTF-8, else windows-1252.
    ASSERT_TRUE(mime_content_of("Content-Type: text/plain; charset=iso-8859-1\r\n\r\n1\x96" "2", c, &why)) << why;
    EXPECT_EQ(c.texts.back().text, "1\xE2\x80\x93" "2");
    ASSERT_TRUE(mime_content_of("Subject: x\r\n\r\nfree\xA0money", c, &why)) << why;
    EXPECT_EQ(c.texts.back().text, "free\xC2\xA0money");
    ASSERT_TRUE(mime_content_of("Subject: x\r\n\r\nM\xC3\xBCnchen", c, &why)) << why;
    EXPECT_EQ(c.texts.back().text, "M\xC3\xBCnchen");
    // MIME parameters as mailers write them: blanks around '=', unquoted encoded words.
    EXPECT_TRUE(mime_content_of("Content-Type: text/plain; charset = \"utf-8\"\r\n\r\nx", c, &why)) << why;
    EXPECT_TRUE(mime_content_of("Content-Type: application/pdf; name==?UTF-8?B?0KTQsNC50Lsu?=\r\n\r\nx", c, &why)) << why;
    // Text is converted from its charset to UTF-8; text that is not valid in it is refused.
    ASSERT_TRUE(mime_content_of("Content-Type: text/plain; charset=iso-8859-1\r\n\r\nM\xFCnchen", c, &why)) << why;
    EXPECT_EQ(c.texts.back().text, "M\xC3\xBCnchen");
    EXPECT_FALSE(mime_content_of("Content-Type: text/plain; charset=shift_jis\r\n\r\n\x81", c, &why));
    // In a digest only a missing Content-Type means message/rfc822; an invalid one is text.
    ASSERT_TRUE(mime_content_of("Content-Type: multipart/digest; boundary=b\r\n\r\n--b\r\nContent-Type: text\r\n\r\n"
                                "Note: buy viagra now\r\n--b--\r\n",
                                c, &why))
        << why;
    EXPECT_EQ(c.texts.back().text, "Note: buy viagra now");
    EXPECT_EQ(c.texts.back().k, mime_text::kind::body);
    // A Content-Type that is not type/subtype is the default, text/plain (RFC 2045 5.2).
    ASSERT_TRUE(mime_content_of("Content-Type: plain\r\n\r\nSSN 078-05-1120", c, &why));
    EXPECT_EQ(c.texts.back().text, "SSN 078-05-1120");
    // A digest's untyped parts are messages (RFC 2046 5.1.5): their own headers say base64.
    ASSERT_TRUE(mime_content_of("Content-Type: multipart/digest; boundary=b\r\n\r\n--b\r\n\r\n"
                                "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
                                    b64("SSN 078-05-1120") + "\r\n--b--\r\n",
                                c, &why))
        << why;
    EXPECT_EQ(c.texts.back().text, "SSN 078-05-1120");
    // Parsers that end lines at a bare CR find parts we would not.
    EXPECT_FALSE(mime_content_of("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\rContent-Type: text/plain\r\r"
                                 "x\r--b--\r",
                                 c, &why));
    EXPECT_THAT(why, HasSubstr("bare CR"));
    // An empty part is nothing to read, not a reason to refuse the message.
    EXPECT_TRUE(mime_content_of("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n--b\r\n\r\nx\r\n--b--\r\n",
                                c, &why))
        << why;
    // Bounded: header fields, and encoded words without a close read in linear time (this
    // one took minutes when each "=?" searched the rest of the value for "?=").
    std::string many;
    for (int i = 0; i < 10'001; ++i) {
        many += "X-A: 1\r\n";
    }
    EXPECT_FALSE(mime_content_of(many + "\r\nx", c, &why));
    EXPECT_THAT(why, HasSubstr("10000 header fields"));
    std::string openings = "Subject: ";
    for (int i = 0; i < 150'000; ++i) {
        openings += "=?c?b?x";
    }
    EXPECT_TRUE(mime_content_of(openings + "\r\n\r\nx", c, &why)) << why;
    std::string deep = "x";
    for (int i = 0; i < 20; ++i) {
        deep = "Content-Type: message/rfc822\r\n\r\n" + deep;
    }
    EXPECT_FALSE(mime_content_of(deep, c, &why));
    EXPECT_THAT(why, HasSubstr("levels"));
}

TEST(GuardRawMessages, PiiGuardReadsTheMessage) {
    fixture f{pii_rule(R"j({"pii": ["card", "ssn"]})j")};
    EXPECT_TRUE(f.check_body(ses_raw(newsletter("Thanks for your order.", "<p>Thanks</p>"))).allowed());
    // An attachment of any type is read (decoded) by the pii guard, as JSON attachments are:
    // a customer export an agent attached; the content guard leaves attachments alone.
    const std::string csv = "From: a@example.com\r\nTo: b@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
                            "--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--b\r\n"
                            "Content-Type: application/octet-stream; name=\"customers.csv\"\r\n"
                            "Content-Transfer-Encoding: base64\r\n\r\n" +
                            b64("name,card\nJane,4111111111111111\nfree money\n") + "\r\n--b--\r\n";
    const auto attached = f.check_body(ses_raw(csv));
    ASSERT_EQ(attached.outcome, verdict::violated);
    EXPECT_THAT(attached.reason, HasSubstr("part 2 (application/octet-stream, an attachment) of the raw message"));
    fixture terms{content_rule(R"j({"blocked_terms": ["free money"]})j")};
    EXPECT_TRUE(terms.check_body(ses_raw(csv)).allowed()) << "the content guard does not read attachments";
    // In UTF-16 (Excel's "Unicode Text"): a text part in that charset is converted as any
    // other (the content guard reads it too), an attachment of another type read as UTF-16.
    std::string wide = "\xFF\xFE";
    for (const char c : std::string_view{"name\tcard\r\nJane\t4111111111111111\r\nfree money\r\n"}) {
        wide += c;
        wide += '\0';
    }
    const auto message = [&](std::string_view type) {
        return ses_raw("From: a@example.com\r\nTo: b@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
                       "--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--b\r\nContent-Type: " +
                       std::string{type} + "; name=\"c.txt\"\r\nContent-Disposition: attachment\r\n"
                       "Content-Transfer-Encoding: base64\r\n\r\n" + b64(wide) + "\r\n--b--\r\n");
    };
    for (const char* type : {"text/plain; charset=utf-16", "text/csv; charset=\"UTF-16LE\""}) {
        EXPECT_THAT(f.check_body(message(type)).reason, HasSubstr("card number (Luhn-valid, ****1111) at offset"))
            << type;
        EXPECT_THAT(terms.check_body(message(type)).reason, HasSubstr("free money")) << type;
    }
    EXPECT_THAT(f.check_body(message("application/octet-stream")).reason,
                HasSubstr("(in UTF-16 text) at offset 34 of part 2 (application/octet-stream, an attachment)"));
    // The byte order: the mark's, else the label's, else little endian; a mark that
    // contradicts the label is refused (readers would differ on what it says).
    std::string big = "\xFE\xFF";
    for (const char c : std::string_view{"card 4111111111111111"}) {
        big += '\0';
        big += c;
    }
    const auto part = [&](std::string_view charset, const std::string& bytes) {
        return ses_raw("Content-Type: text/plain; charset=" + std::string{charset} +
                       "\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(bytes));
    };
    for (const char* charset : {"utf-16", "UTF-16BE"}) {
        EXPECT_THAT(f.check_body(part(charset, big)).reason, HasSubstr("card number")) << charset;
    }
    EXPECT_THAT(f.check_body(part("utf-16be", big.substr(2))).reason, HasSubstr("card number"));
    EXPECT_THAT(f.check_body(part("utf-16", wide.substr(2))).reason, HasSubstr("card number")) << "no mark: little endian";
    const auto contradicted = f.check_body(part("utf-16le", big));
    EXPECT_EQ(contradicted.outcome, verdict::rejected);
    EXPECT_THAT(contradicted.reason, HasSubstr("not valid text in its charset utf-16le"));
    // Text labelled UTF-8 that starts like UTF-16 is read as UTF-8.
    EXPECT_THAT(f.check_body(part("utf-8", "\xFF\xFE" "Card 4111 1111 1111 1111")).reason, HasSubstr("card number"));
    // A card number split by a quoted-printable soft line break.
    auto d = f.check_body(ses_raw(newsletter("Card on file: 4111 1111 =\r\n1111 1111.", "<p>Thanks</p>")));
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_EQ(d.reason, "rule no-pii (pii-risk, sev1): card number (Luhn-valid, ****1111) at offset 14 of part 1.1 "
                        "(text/plain) of the raw message at $.Content.Raw.Data");
    // As a mail client shows it: a quoted-printable no-break space, an HTML reference.
    d = f.check_body(ses_raw(newsletter("Card on file: 4111=C2=A01111=C2=A01111=C2=A01111.", "<p>Thanks</p>")));
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("****1111) (written with HTML character references or invisible or look-alike "
                                    "characters) at offset 14 of part 1.1 (text/plain)"));
    EXPECT_FALSE(f.check_body(ses_raw(newsletter("Thanks.", "<p>4111&nbsp;1111&nbsp;1111&nbsp;1111</p>"))).allowed());
    // In Latin-1 and Windows-1252 0xA0 is a no-break space, 0x96 a dash: converted to UTF-8
    // as a client shows them, in a part and in an encoded word.
    auto latin1 = [](std::string_view charset, std::string_view qp) {
        return "From: news@example.com\r\nContent-Type: text/plain; charset=" + std::string{charset} +
               "\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + std::string{qp};
    };
    d = f.check_body(ses_raw(latin1("iso-8859-1", "Karte 4111=A01111=A01111=A01111 gespeichert")));
    EXPECT_EQ(d.outcome, verdict::violated) << d.reason;
    d = f.check_body(ses_raw(latin1("windows-1252", "SSN 078=9605=961120 on file")));
    EXPECT_EQ(d.outcome, verdict::violated) << d.reason;
    d = f.check_body(ses_raw("Subject: =?iso-8859-1?Q?4111=A01111=A01111=A01111?=\r\n\r\nHi"));
    EXPECT_EQ(d.outcome, verdict::violated) << d.reason;
    EXPECT_TRUE(f.check_body(ses_raw(latin1("iso-8859-1", "Gr=FC=DFe aus M=FCnchen"))).allowed());
    d = f.check_body(ses_raw(newsletter("Thanks.", "<p>Your SSN 078-05-1120 is on file</p>")));
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("SSN"));
    EXPECT_THAT(d.reason, HasSubstr("part 1.2 (text/html) of the raw message"));
    // Headers too: an encoded Subject, or any other field.
    d = f.check_body(ses_raw("Subject: =?utf-8?B?" + b64("Card 4111111111111111") + "?=\r\n\r\nHi"));
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("of Subject of the raw message"));
    EXPECT_FALSE(f.check_body(ses_raw("X-Note: 078-05-1120\r\n\r\nHi")).allowed());
    // What cannot be read is an invalid body (the rule rejects it by default).
    d = f.check_body(ses_raw("Content-Type: text/plain; charset=utf-7\r\n\r\nx"));
    EXPECT_EQ(d.outcome, verdict::rejected);
    EXPECT_THAT(d.reason, HasSubstr("the raw message at $.Content.Raw.Data cannot be read: the message is in the "
                                    "charset utf-7"));
    d = f.check_body(ses_raw("Content-Type: text/plain; charset=utf-16\r\n\r\nx"));  // half a code unit
    EXPECT_EQ(d.outcome, verdict::rejected);
    EXPECT_THAT(d.reason, HasSubstr("the message is not valid text in its charset utf-16"));
    EXPECT_EQ(f.check_body(R"j({"Content": {"Raw": {"Data": "not base64!"}}})j").outcome, verdict::rejected);
    // With `in`, only what it names: a mime: field reads the message, a plain path the string.
    fixture plain{pii_rule(R"j({"pii": ["card"], "in": ["$.Content"]})j")};
    EXPECT_TRUE(plain.check_body(ses_raw("Subject: 4111 1111 1111 1111\r\n\r\nx")).allowed());
    fixture named{pii_rule(R"j({"pii": ["card"], "in": ["mime:$.Content.Raw.Data"]})j")};
    EXPECT_FALSE(named.check_body(ses_raw("Subject: 4111 1111 1111 1111\r\n\r\nx")).allowed());
    EXPECT_TRUE(named.check_body(ses_raw("Subject: hi\r\n\r\nx", R"j(, "Note": "4111 1111 1111 1111")j")).allowed());
}

TEST(GuardRawMessages, ContentGuardReadsTheMessage) {
    fixture f{content_rule(R"j({"blocked_terms": ["free money"], "link_domains": ["example.com"]})j")};
    EXPECT_TRUE(f.check_body(ses_raw(newsletter("Hello", R"(<a href="https://www.example.com/x">Shop</a>)"))).allowed())
        << "the PDF's words are not read";
    auto d = f.check_body(ses_raw("Subject: =?utf-8?Q?Free_mo?= =?utf-8?Q?ney?=\r\n\r\nHi"));
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_EQ(d.reason, "rule brand (off-brand, sev3): blocked term #0 (free money) at offset 0 of Subject of the raw "
                        "message at $.Content.Raw.Data");
    d = f.check_body(ses_raw(newsletter("Shop: https://evil.example/x", "<p>Hi</p>")));
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("part 1.1 (text/plain) of the raw message"));
    d = f.check_body(ses_raw(newsletter("Hi", R"(<a href=3D"https://evil.example/x">x</a>)")));
    ASSERT_EQ(d.outcome, verdict::violated) << "=3D is written as such in base64: no decoding of it";
    d = f.check_body(ses_raw(newsletter(R"(<a href=3D"https://evil.example/x">x</a>)", "Hi")));
    ASSERT_EQ(d.outcome, verdict::violated) << "quoted-printable =3D decoded";
    // Other headers are not content.
    EXPECT_TRUE(f.check_body(ses_raw("X-Campaign: free money\r\n\r\nHi")).allowed());
    EXPECT_EQ(f.check_body(ses_raw("Content-Type: multipart/mixed\r\n\r\nfree money")).outcome, verdict::rejected);

    // Unsubscribe: a List-Unsubscribe header field or the word in a part.
    fixture u{content_rule(R"j({"require_unsubscribe": true})j")};
    EXPECT_FALSE(u.check_body(ses_raw(newsletter("Sale", "<p>Sale</p>"))).allowed());
    EXPECT_TRUE(u.check_body(ses_raw(newsletter("Sale", "<p>Sale</p>", "List-Unsubscribe: <https://example.com/u>\r\n")))
                    .allowed());
    EXPECT_FALSE(u.check_body(ses_raw(newsletter("Sale", "<p>Sale</p>", "List-Unsubscribe: \r\n"))).allowed());
    EXPECT_TRUE(u.check_body(ses_raw(newsletter("Sale", "<a href='https://example.com/u'>Unsubscribe</a>"))).allowed());
}

std::string form_escape(std::string_view v) {
    static constexpr char hexd[] = "0123456789ABCDEF";
    std::string out;
    for (const char c : v) {
        const auto u = static_cast<unsigned char>(c);
        if (std::isalnum(u) || c == '-' || c == '_' || c == '.') {
            out += c;
        } else {
            out += '%';
            out += hexd[u >> 4];
            out += hexd[u & 15];
        }
    }
    return out;
}

// Mailgun's messages.mime (the message as a multipart file) and SES v1 SendRawEmail (its
// base64 in a form field) are read like SES v2's raw messages.
TEST(GuardRawMessages, FormPostedMessagesAreReadToo) {
    request mg;
    mg.path = "/v3/mg.example.com/messages.mime";
    mg.content_type = "multipart/form-data; boundary=XyZ";
    auto mailgun = [&](std::string_view message) {
        mg.body = "--XyZ\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\njane@example.com\r\n"
                  "--XyZ\r\nContent-Disposition: form-data; name=\"message\"; filename=\"message.mime\"\r\n"
                  "Content-Type: message/rfc822\r\n\r\n" +
                  std::string{message} + "\r\n--XyZ--\r\n";
        return std::ref(mg);
    };
    fixture content{content_rule(R"j({"blocked_terms": ["free money"]})j")};
    EXPECT_TRUE(content.check(mailgun(newsletter("Hello", "<p>Hi</p>"))).allowed());
    auto d = content.check(mailgun(newsletter("Get free =\r\nmoney", "<p>Hi</p>")));
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("blocked term #0 (free money) at offset 4 of part 1.1 (text/plain) of the raw "
                                    "message at form field message"));
    fixture pii{pii_rule(R"j({"pii": ["card"]})j")};
    EXPECT_TRUE(pii.check(mailgun(newsletter("Hello", "<p>Hi</p>"))).allowed());
    d = pii.check(mailgun(newsletter("Hello", "<p>Card 4111 1111 1111 1111</p>")));
    ASSERT_EQ(d.outcome, verdict::violated) << "the base64 HTML part, decoded";
    EXPECT_THAT(d.reason, HasSubstr("part 1.2 (text/html) of the raw message at form field message"));

    request ses;
    ses.path = "/";
    ses.content_type = "application/x-www-form-urlencoded";
    auto v1 = [&](std::string_view message) {
        ses.body = "Action=SendRawEmail&Source=news%40example.com&RawMessage.Data=" + form_escape(b64(message));
        return std::ref(ses);
    };
    fixture audience{recipients_rule(R"j({"allow_domains": ["example.com"]})j")};
    EXPECT_TRUE(audience.check(v1("To: jane@example.com\r\nSubject: Hi\r\n\r\nHello")).allowed());
    d = audience.check(v1("To: jane@example.com\r\nBcc: spy@gmail.com\r\nSubject: Hi\r\n\r\nHello"));
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("recipient domain not in allowlist #1 s***@gmail.com (form field RawMessage.Data "
                                    "(MIME header))"));
    // SES v1 sends to Destinations.member.N when given, and SendEmail to Destination.*.member.N.
    ses.body = "Action=SendRawEmail&Destinations.member.1=jane%40example.com&Destinations.member.2=x%40blocked.io"
               "&RawMessage.Data=" + form_escape(b64("To: jane@example.com\r\n\r\nHi"));
    d = audience.check(ses);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("x***@blocked.io (form field Destinations.member.2)"));
    ses.body = "Action=SendEmail&Destination.ToAddresses.member.1=jane%40example.com"
               "&Destination.BccAddresses.member.1=x%40blocked.io&Message.Subject.Data=Hi&Message.Body.Text.Data=Hi";
    EXPECT_THAT(audience.check(ses).reason, HasSubstr("x***@blocked.io (form field Destination.BccAddresses.member.1)"));
    ses.body = "Action=SendEmail&Destination.ToAddresses.member.1=jane%40example.com"
               "&Message.Subject.Data=Free+money&Message.Body.Text.Data=Hi";
    EXPECT_THAT(content.check(ses).reason, HasSubstr("form field \"Message.Subject.Data\""));
    d = audience.check(v1("To: bob@evil.example (<jane@example.com>)\r\n\r\nx"));
    EXPECT_EQ(d.outcome, verdict::rejected);
    EXPECT_THAT(d.reason, HasSubstr("the raw message in form field \"RawMessage.Data\" cannot be read"));
    EXPECT_FALSE(pii.check(v1("Subject: Card 4111-1111-1111-1111\r\n\r\nx")).allowed());
    EXPECT_FALSE(content.check(v1("Subject: FREE MONEY\r\n\r\nx")).allowed());
    // Each field is read as its API reads it: Mailgun's `message` as written (a message without
    // header fields can be all base64 characters), SES v1's RawMessage.Data as base64 (a line
    // break before it does not make it a header-less message of base64 noise).
    EXPECT_FALSE(pii.check(mailgun("\r\nWDoKCmFi 4111 1111 1111 1111\r\n")).allowed());
    ses.body = "Action=SendRawEmail&RawMessage.Data=%0D%0A" +
               form_escape(b64("To: x@blocked.io (c), jane@example.com\r\n\r\nHi"));
    EXPECT_EQ(audience.check(ses).outcome, verdict::rejected);
    ses.body = "Action=SendRawEmail&RawMessage.Data=%0D%0A" +
               form_escape(b64("Content-Type: text/plain; charset=utf-7\r\n\r\n4111 1111 1111 1111"));
    EXPECT_EQ(pii.check(ses).outcome, verdict::rejected);
    // SendBulkTemplatedEmail: each destination's addresses; its template data is no address.
    ses.body = "Action=SendBulkTemplatedEmail&Destinations.member.1.ReplacementTemplateData=%7B%7D"
               "&Destinations.member.1.Destination.ToAddresses.member.1=jane%40example.com";
    EXPECT_TRUE(audience.check(ses).allowed()) << audience.check(ses).reason;
    ses.body += "&Destinations.member.2.Destination.BccAddresses.member.1=x%40blocked.io";
    EXPECT_THAT(audience.check(ses).reason,
                HasSubstr("x***@blocked.io (form field Destinations.member.2.Destination.BccAddresses.member.1)"));
    // An unreadable message does not stop the guard reading the next one.
    mg.body = "--XyZ\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\nContent-Type: text/plain; "
              "charset=utf-7\r\n\r\nx\r\n--XyZ\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\n"
              "Subject: free money\r\n\r\nx\r\n--XyZ--\r\n";
    d = content.check(mg);
    ASSERT_EQ(d.outcome, verdict::violated) << d.reason;
    EXPECT_THAT(d.reason, HasSubstr("blocked term"));
}

// With "on_invalid_body": "zero", an unreadable raw message does not stop the guard reading
// the rest of the body.
TEST(GuardRawMessages, AnUnreadableMessageDoesNotHideTheRest) {
    fixture f{pii_rule(R"j({"pii": ["card"]})j")};
    fixture zero{R"j({"id": "no-pii", "route": "mail-send", "guard": {"pii": ["card"]}, "on_invalid_body": "zero",
                     "failure_mode": "pii-risk", "trips": "pii-deny"})j"};
    const std::string body = ses_raw("Content-Type: text/plain; charset=utf-16\r\n\r\nx",
                                     R"j(, "Note": "4111 1111 1111 1111")j");
    for (fixture* x : {&f, &zero}) {
        const auto d = x->check_body(body);
        ASSERT_EQ(d.outcome, verdict::violated) << d.reason;
        EXPECT_THAT(d.reason, HasSubstr("$.Note")) << "a finding wins over the unreadable message";
    }
    const std::string unreadable_only = ses_raw("Content-Type: text/plain; charset=utf-16\r\n\r\nx");
    EXPECT_EQ(f.check_body(unreadable_only).outcome, verdict::rejected);
    EXPECT_TRUE(zero.check_body(unreadable_only).allowed());
}

// ---------------------------------------------------------------------------------------
// Duplicates.

// A SendGrid mail to `n` recipients r0@example.com... in one personalization.
std::string mail_to_many(int n) {
    std::string b = R"j({"personalizations": [{"to": [)j";
    for (int i = 0; i < n; ++i) {
        b += (i ? ", " : "") + std::string{R"j({"email": "r)j"} + std::to_string(i) + R"j(@example.com"})j";
    }
    return b + R"j(]}], "from": {"email": "news@example.com"}, "subject": "Spring sale", "content": [{"type": "text/plain", "value": "Hi"}]})j";
}

std::string dup_rule(std::string_view inner, std::string_view extra = "") {
    return R"j({"id": "no-loops", "route": "mail-send", "guard": {"duplicates": )j" + std::string{inner} + "}" +
           std::string{extra} + R"j(, "failure_mode": "loop", "trips": "loop-pause"})j";
}

// A loop of raw sends is a loop: the duplicates guard counts a raw message's own recipients
// and Subject (SES v2 and v1).
// The duplicates guard pairs each emailSimple input's addresses with its own subject: two
// different mails to one contact are no loop; the same one twice is.
TEST(GuardDuplicates, SalesforceEmailSimpleSubjectsTellMailsApart) {
    fixture f{dup_rule(R"j({"max": 1, "window": "1h"})j")};
    auto mail = [](const std::string& subject) {
        request sf;
        sf.route = "mail-send";
        sf.path = "/services/data/v59.0/actions/standard/emailSimple";
        sf.content_type = "application/json";
        sf.body = R"j({"inputs": [{"emailAddresses": "ann@example.com", "emailSubject": ")j" + subject +
                  R"j(", "emailBody": "b"}]})j";
        return sf;
    };
    auto first = mail("Your order shipped");
    EXPECT_TRUE(f.check(first).allowed());
    auto second = mail("Your invoice");
    EXPECT_TRUE(f.check(second).allowed()) << "another mail to the same contact";
    auto again = mail("Your invoice");
    EXPECT_EQ(f.check(again).outcome, verdict::violated) << "the same mail twice";
}

// A domain written with ACE labels (`xn--bcher-kva.de`, what SMTP libraries send) and in
// Unicode (`bücher.de`, what a CRM or an operator writes) is one domain: the domain lists,
// the suppression list, the duplicate counts and the link domains match either spelling.
TEST(GuardRecipients, InternationalizedDomainsMatchInEitherSpelling) {
    fixture block{recipients_rule(R"j({"block_domains": ["bücher.de"]})j")};
    EXPECT_EQ(block.check_body(sendgrid_to({"jane@xn--bcher-kva.de"})).outcome, verdict::violated);
    EXPECT_EQ(block.check_body(sendgrid_to({"Jane <jane@mail.XN--BCHER-KVA.DE>"})).outcome, verdict::violated);
    EXPECT_EQ(block.check_body(sendgrid_to({"jane@MAIL.BÜCHER.DE"})).outcome, verdict::violated);
    EXPECT_EQ(block.check_body(sendgrid_to({"jane@mail\xE3\x80\x82" "bücher.de"})).outcome, verdict::violated)
        << "U+3002 is a full stop to IDNA";
    EXPECT_TRUE(block.check_body(sendgrid_to({"jane@xn--mnchen-3ya.de", "jane@xn--evil-.de"})).allowed());
    // A valid domain whose Unicode form is longer than any ACE name (458 bytes here) is still
    // judged by its parents; and a label that decodes once is not decoded again.
    const std::string emoji = "xn--e28h" + std::string(55, 'a');
    fixture evil{recipients_rule(R"j({"block_domains": ["evil.com", "xn--xn---kva-95a.com"]})j")};
    EXPECT_EQ(evil.check_body(sendgrid_to({"jane@" + emoji + "." + emoji + ".evil.com"})).outcome, verdict::violated);
    EXPECT_EQ(evil.check_body(sendgrid_to({"jane@xn--xn---kva-95a.com"})).outcome, verdict::violated);
    // The suppression file measures such an address by its ACE form (at most 320 bytes).
    const std::string long_idn = "jane@" + emoji + "." + emoji + ".de";
    fixture listed{recipients_rule(R"j({"suppression_file": ")j" +
                                   temp_file("idn-long.txt", long_idn + "\n") + "\"}")};
    EXPECT_EQ(listed.check_body(sendgrid_to({long_idn})).outcome, verdict::violated);
    fixture allow{recipients_rule(R"j({"allow_domains": ["xn--bcher-kva.de"]})j")};
    EXPECT_TRUE(allow.check_body(sendgrid_to({"jane@bücher.de", "ann@mail.bücher.de"})).allowed());
    EXPECT_EQ(allow.check_body(sendgrid_to({"jane@münchen.de"})).outcome, verdict::violated);
    // A line in one spelling, a digest of the other.
    const std::string path =
        temp_file("idn-suppressed.txt", "jane@bücher.de\n" + sha256_hex("ann@xn--mnchen-3ya.de") + "\n");
    fixture suppressed{recipients_rule(R"j({"suppression_file": ")j" + path + "\"}")};
    EXPECT_EQ(suppressed.check_body(sendgrid_to({"jane@xn--bcher-kva.de"})).outcome, verdict::violated);
    EXPECT_EQ(suppressed.check_body(sendgrid_to({"Jane@BÜCHER.DE"})).outcome, verdict::violated) << "upper case";
    EXPECT_EQ(suppressed.check_body(sendgrid_to({"jane@b\xC3\xBC" "cher.de\xE3\x80\x82"})).outcome, verdict::violated)
        << "the root's dot as U+3002";
    EXPECT_EQ(suppressed.check_body(sendgrid_to({"jane@xn--bcher-kva\xEF\xBC\x8E" "de"})).outcome, verdict::violated)
        << "an ACE label before U+FF0E";
    EXPECT_EQ(suppressed.check_body(sendgrid_to({"Ann@München.de"})).outcome, verdict::violated);
    EXPECT_TRUE(suppressed.check_body(sendgrid_to({"bob@bücher.de", "jane@xn--evil-.de"})).allowed());
    fixture dup{dup_rule(R"j({"max": 1, "window": "1h"})j")};
    EXPECT_TRUE(dup.check_body(sendgrid_to({"jane@bücher.de"})).allowed());
    EXPECT_EQ(dup.check_body(sendgrid_to({"jane@xn--bcher-kva.de"})).outcome, verdict::violated) << "the same mailbox";
    fixture links{content_rule(R"j({"link_domains": ["bücher.de"]})j")};
    EXPECT_TRUE(links.check_body(sendgrid(R"j(<a href=\"https://www.xn--bcher-kva.de/x\">x</a>)j")).allowed());
    EXPECT_FALSE(links.check_body(sendgrid(R"j(<a href=\"https://xn--mnchen-3ya.de/x\">x</a>)j")).allowed());
}

// SendGrid v2's X-SMTPAPI field sends to its own `to` list (and adds through its filters):
// the recipients and duplicates guards do not read it, so they refuse it as unreadable; the
// content guard reads it as text.
TEST(GuardRecipients, SendGridV2SmtpApiHeaderIsAnInvalidBodyToTheAudienceGuards) {
    request v2;
    v2.route = "mail-send";
    v2.path = "/api/mail.send.json";
    v2.content_type = "application/x-www-form-urlencoded";
    v2.body = "to%5B%5D=ok%40example.com&from=news%40example.com&subject=Hi&text=Hello"
              "&X-SMTPAPI=%7B%22to%22%3A%5B%22leak%40evil.com%22%5D%2C%22sub%22%3A%7B%22-x-%22%3A%5B%22free+money%22%5D%7D%7D";
    for (const std::string& rule : {recipients_rule(R"j({"allow_domains": ["example.com"]})j"),
                                    dup_rule(R"j({"max": 5, "window": "1h"})j")}) {
        fixture f{rule};
        const auto d = f.check(v2);
        EXPECT_EQ(d.outcome, verdict::rejected) << rule << ": " << d.reason;
        EXPECT_THAT(d.reason, HasSubstr("form field x-smtpapi (SendGrid v2) names recipients of its own")) << rule;
    }
    fixture content{content_rule(R"j({"blocked_terms": ["free money"]})j")};
    EXPECT_THAT(content.check(v2).reason, HasSubstr("blocked term #0 (free money) in form field \"X-SMTPAPI\""));
}

// emailSimple inside a Salesforce composite request is counted as a direct call is, each
// input's addresses with its own input's subject (not another input's or subrequest's): a
// loop cannot leave the guard by going through /composite.
TEST(GuardDuplicates, EmailSimpleInsideCompositeRequestsIsCountedWithItsOwnSubject) {
    const auto input = [](std::string_view to, std::string_view subject) {
        return R"j({"emailAddresses": ")j" + std::string{to} + R"j(", "emailSubject": ")j" + std::string{subject} +
               R"j(", "emailBody": "b"})j";
    };
    const auto composite = [](const std::string& inputs) {
        return R"j({"compositeRequest": [{"method": "POST", "referenceId": "m",
            "url": "/services/data/v59.0/actions/standard/emailSimple", "body": {"inputs": [)j" + inputs + "]}}]}";
    };
    const auto batch = [](const std::string& inputs) {
        return R"j({"batchRequests": [{"method": "POST", "url": "v59.0/actions/standard/emailSimple",
            "richInput": {"inputs": [)j" + inputs + "]}}]}";
    };
    const auto graph = [](const std::string& inputs) {
        return R"j({"graphs": [{"graphId": "g", "compositeRequest": [{"method": "POST", "referenceId": "m",
            "url": "/services/data/v59.0/actions/standard/emailSimple", "body": {"inputs": [)j" + inputs + "]}}]}]}";
    };
    for (const auto& wrap : {std::function<std::string(const std::string&)>{composite},
                             std::function<std::string(const std::string&)>{batch},
                             std::function<std::string(const std::string&)>{graph}}) {
        fixture f{dup_rule(R"j({"max": 1, "window": "1h"})j")};
        SCOPED_TRACE(wrap("..."));
        // Two inputs in one subrequest: ann's mail is "Your order", not bob's "Your invoice".
        EXPECT_TRUE(f.check_body(wrap(input("ann@example.com", "Your order") + "," +
                                      input("bob@example.com", "Your invoice")))
                        .allowed());
        EXPECT_TRUE(f.check_body(wrap(input("ann@example.com", "Your invoice"))).allowed())
            << "another mail to ann, not a loop";
        const auto again = f.check_body(wrap(input("ann@example.com", "Your order")));
        EXPECT_EQ(again.outcome, verdict::violated) << "the same mail to ann again: " << again.reason;
        // The same mail sent directly is the same loop.
        request direct;
        direct.route = "mail-send";
        direct.path = "/services/data/v59.0/actions/standard/emailSimple";
        direct.body = R"j({"inputs": [)j" + input("bob@example.com", "Your invoice") + "]}";
        EXPECT_EQ(f.check(direct).outcome, verdict::violated) << "bob's invoice, sent again directly";
    }
}

// A composite subrequest may take its recipient or subject from an earlier subrequest's result
// (`@{contact.Email}`): that text is the same in every request whoever it sends to, so such a
// mail is not booked (it would make different mails look alike). Outside a composite request
// the same text is literal and counts.
TEST(GuardDuplicates, CompositeReferencesAreNotBookedAsOneMail) {
    fixture f{dup_rule(R"j({"max": 1, "window": "1h"})j")};
    const auto composite = [](std::string_view to, std::string_view subject) {
        return R"j({"compositeRequest": [
            {"method": "GET", "url": "/services/data/v59.0/sobjects/Case/500x", "referenceId": "case"},
            {"method": "POST", "referenceId": "m", "url": "/services/data/v59.0/actions/standard/emailSimple",
             "body": {"inputs": [{"emailAddresses": ")j" + std::string{to} + R"j(", "emailSubject": ")j" +
               std::string{subject} + R"j(", "emailBody": "b"}]}}]})j";
    };
    for (int i = 0; i < 3; ++i) {
        EXPECT_TRUE(f.check_body(composite("@{case.ContactEmail}", "Your case")).allowed()) << i;
        EXPECT_TRUE(f.check_body(composite("ann@example.com", "Re: case @{case.CaseNumber}")).allowed()) << i;
    }
    EXPECT_TRUE(f.check_body(composite("ann@example.com", "Your case")).allowed());
    EXPECT_EQ(f.check_body(composite("ann@example.com", "Your case")).outcome, verdict::violated)
        << "known recipient and subject: counted";
    request direct;
    direct.route = "mail-send";
    direct.path = "/services/data/v59.0/actions/standard/emailSimple";
    direct.body = R"j({"inputs": [{"emailAddresses": "bob@example.com", "emailSubject": "@{literal}"}]})j";
    EXPECT_TRUE(f.check(direct).allowed());
    EXPECT_EQ(f.check(direct).outcome, verdict::violated) << "no reference outside a composite request";
}

// Without `recipient` in `of`, each mail the request sends counts: a SendGrid
// personalization's own subject, an emailSimple input's template; not only the message's.
TEST(GuardDuplicates, WithoutRecipientsEachPersonalizationsSubjectCounts) {
    fixture by_subject{dup_rule(R"j({"max": 1, "window": "1h", "of": ["subject"]})j")};
    const auto sendgrid = [](std::string_view subject) {
        return R"j({"personalizations": [{"to": [{"email": "ann@example.com"}], "subject": ")j" + std::string{subject} +
               R"j("}], "from": {"email": "news@example.com"}, "content": [{"type": "text/plain", "value": "x"}]})j";
    };
    EXPECT_TRUE(by_subject.check_body(sendgrid("Your order shipped")).allowed());
    EXPECT_TRUE(by_subject.check_body(sendgrid("Your invoice")).allowed()) << "another subject";
    EXPECT_EQ(by_subject.check_body(sendgrid("Your invoice")).outcome, verdict::violated) << "the same subject again";
    // The top-level subject is sent to no one when every personalization has its own.
    fixture shadowed{dup_rule(R"j({"max": 1, "window": "1h", "of": ["subject"]})j")};
    for (const char* own : {"Your order #1", "Your order #2", "Your order #3"}) {
        EXPECT_TRUE(shadowed.check_body(R"j({"subject": "Newsletter", "personalizations": [{"to": [{"email": "ann@example.com"}],
            "subject": ")j" + std::string{own} + R"j("}], "from": {"email": "news@example.com"}})j")
                        .allowed())
            << own;
    }

    fixture by_template{dup_rule(R"j({"max": 1, "window": "1h", "of": ["template"]})j")};
    const auto email_simple = [](std::string_view a, std::string_view b) {
        request sf;
        sf.route = "mail-send";
        sf.path = "/services/data/v59.0/actions/standard/emailSimple";
        sf.body = R"j({"inputs": [{"emailAddresses": "ann@example.com", "emailTemplateId": ")j" + std::string{a} +
                  R"j("}, {"emailAddresses": "bob@example.com", "emailTemplateId": ")j" + std::string{b} + R"j("}]})j";
        return sf;
    };
    auto first = email_simple("00X1", "00X2");
    EXPECT_TRUE(by_template.check(first).allowed());
    auto other = email_simple("00X3", "00X4");
    EXPECT_TRUE(by_template.check(other).allowed()) << "other templates";
    auto again = email_simple("00X5", "00X2");
    EXPECT_EQ(by_template.check(again).outcome, verdict::violated) << "template 00X2 again, in the second input";
}

// SES v1 SendTemplatedEmail requires Template and may add a TemplateArn beside it: the pair
// is one template, not two different ones for one mail (an invalid body).
TEST(GuardDuplicates, SesV1TemplateAndTemplateArnAreOneTemplate) {
    fixture f{dup_rule(R"j({"max": 1, "window": "1h", "of": ["recipient", "template"]})j")};
    const auto send = [&](std::string_view name) {
        return f.check_body("Action=SendTemplatedEmail&Source=a%40example.com&Destination.ToAddresses.member.1=ann%40x.com"
                            "&Template=" + std::string{name} + "&TemplateArn=arn%3Aaws%3Ases%3Aus-east-1%3A1%3Atemplate%2F" +
                                std::string{name} + "&TemplateData=%7B%7D",
                            "application/x-www-form-urlencoded");
    };
    const auto first = send("order-shipped");
    EXPECT_TRUE(first.allowed()) << first.reason;
    EXPECT_TRUE(send("invoice").allowed()) << "another template to the same recipient";
    EXPECT_EQ(send("invoice").outcome, verdict::violated) << "the same template twice";
}

TEST(GuardRawMessages, DuplicatesCountRawMessages) {
    fixture f{dup_rule(R"j({"max": 2, "window": "1h"})j")};
    const std::string body = ses_raw("To: Jane <jane@example.com>\r\nSubject: =?utf-8?Q?Your_order?=\r\n\r\nHi");
    EXPECT_TRUE(f.check_body(body).allowed());
    EXPECT_TRUE(f.check_body(body).allowed());
    const auto d = f.check_body(body);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("recipient #0 j***@example.com with the same subject already sent 2 times"));
    EXPECT_TRUE(f.check_body(ses_raw("To: jane@example.com\r\nSubject: Another\r\n\r\nHi")).allowed())
        << "another subject is another send";
    request ses;
    ses.content_type = "application/x-www-form-urlencoded";
    ses.body = "Action=SendRawEmail&RawMessage.Data=" +
               form_escape(b64("To: bob@example.com\r\nSubject: Your order\r\n\r\nHi"));
    EXPECT_TRUE(f.check(ses).allowed());
    EXPECT_TRUE(f.check(ses).allowed());
    EXPECT_FALSE(f.check(ses).allowed());
    EXPECT_EQ(f.check_body(ses_raw("To: a@example.com (x)\r\n\r\nHi")).outcome, verdict::rejected)
        << "recipients that cannot be read for certain";
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

// A recipient string that is an address list counts each address, as the recipients guard
// reads it: a nonce address beside the real one makes no new pair for the real one.
TEST(GuardDuplicates, EachAddressOfARecipientListIsARecipient) {
    fixture f{dup_rule(R"j({"max": 1, "window": "10m"})j")};
    EXPECT_TRUE(f.check_body(sendgrid_to({"jane@example.com, r-1@example.com"})).allowed());
    const auto again = f.check_body(sendgrid_to({"jane@example.com; r-2@example.com"}));
    EXPECT_EQ(again.outcome, verdict::violated) << again.reason;
    EXPECT_THAT(again.reason, HasSubstr("j***@example.com"));
}

// A loop that goes on across a restart (a deploy while an agent resends one mail) is still
// a loop: the sends in the window are saved with the rule meters and restored.
TEST(GuardDuplicates, TheSendsInTheWindowSurviveARestart) {
    const auto rules = dup_rule(R"j({"max": 3, "window": "10m", "of": ["recipient", "subject"]})j");
    fixture f{rules};
    f.clock.set(time_point{std::chrono::hours{1000}});
    request req;
    req.body = sendgrid_to({"jane@example.com"});
    for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(f.check(req).allowed()) << i;
        f.clock.advance(1min);
    }
    request bob;
    bob.body = sendgrid_to({"bob@example.com"});
    ASSERT_TRUE(f.check(bob).allowed());
    const auto saved = f.eng.save_meters(f.clock.now());
    ASSERT_EQ(saved.size(), 1u);

    // Another process of the same boot, a minute later.
    fixture again{rules};
    again.clock.set(f.clock.now() + 1min);
    std::string error;
    ASSERT_TRUE(again.eng.restore_meters(saved, again.clock.now(), &error)) << error;
    EXPECT_FALSE(again.check(req).allowed()) << "the fourth send to jane in 10 minutes";
    EXPECT_TRUE(again.check(bob).allowed());
    EXPECT_TRUE(again.check(bob).allowed());
    EXPECT_FALSE(again.check(bob).allowed()) << "bob's first send came from before the restart";
    // The first send leaves the window when it would have (t0 + 10m).
    again.clock.set(f.clock.now() - 3min + 10min + 1ms);
    EXPECT_TRUE(again.check(req).allowed());
    EXPECT_FALSE(again.check(req).allowed());

    // A new max or window keeps the sends (as at a reload); another `of` starts from zero.
    fixture tighter{dup_rule(R"j({"max": 2, "window": "10m", "of": ["recipient", "subject"]})j")};
    tighter.clock.set(f.clock.now());
    auto restored = tighter.eng.restore_meters(saved, tighter.clock.now(), &error);
    ASSERT_TRUE(restored) << error;
    EXPECT_EQ(restored->size(), 1u);
    EXPECT_FALSE(tighter.check(req).allowed());
    fixture other{dup_rule(R"j({"max": 3, "window": "10m", "of": ["recipient"]})j")};
    other.clock.set(f.clock.now());
    restored = other.eng.restore_meters(saved, other.clock.now(), &error);
    ASSERT_TRUE(restored) << error;
    EXPECT_TRUE(restored->empty());
    // A damaged table is refused, nothing restored.
    auto damaged = saved;
    damaged[0].state.resize(damaged[0].state.size() - 3);
    fixture fresh{rules};
    EXPECT_FALSE(fresh.eng.restore_meters(damaged, f.clock.now(), &error));
    EXPECT_NE(error.find("rule no-loops: "), std::string::npos) << error;
}

// A reload that changes only a duplicates guard's max or window shares the running rule's
// table: a send booked after the swap by a request still on the old config counts under the
// new one (a copy lost it: the loop's pair sent once more).
TEST(GuardDuplicates, AReloadOfMaxOrWindowSharesTheSends) {
    engine first{load_ok(guard_config(dup_rule(R"j({"max": 1, "window": "10m", "of": ["recipient"]})j")))};
    engine second{load_ok(guard_config(dup_rule(R"j({"max": 1, "window": "1h", "of": ["recipient"]})j"))), &first};
    manual_clock clock;
    request req;
    req.body = sendgrid_to({"ann@example.com"});
    EXPECT_TRUE(first.evaluate(req.view(), clock.now()).allowed()) << "judged on the old config after the swap";
    EXPECT_FALSE(second.evaluate(req.view(), clock.now()).allowed()) << "the old config's send is not in the new table";
}

// Counters sharing a table each count their own window, and the shorter one does not drop
// the times the longer one still counts.
TEST(GuardDuplicates, ASharedTableKeepsTheLongestWindow) {
    duplicate_counter old_rule{5, std::chrono::minutes{10}, 1000};
    const auto new_rule = old_rule.with_limits(3, std::chrono::hours{1});
    const std::int64_t t0 = 1'000'000;
    EXPECT_EQ(old_rule.check_and_book(7, t0), 0u);
    EXPECT_EQ(new_rule->check_and_book(7, t0 + 1), 0u);
    const std::int64_t t20 = t0 + 20 * 60'000;
    EXPECT_EQ(old_rule.check_and_book(7, t20), 0u) << "its own window holds nothing of t0";
    EXPECT_EQ(new_rule->check_and_book(7, t20 + 1), 3u) << "t0, t0 + 1 and t20 are in the hour";
}

// Requests read their time before they parse their bodies, so two booking one pair a
// millisecond apart can reach the counter in the other order: the times are kept in order
// (the window counts on it), and a table saved with two swapped (by the release before)
// is put in order when read back, never refused (a start refused for it would stay down).
TEST(GuardDuplicates, SendsBookedOutOfOrderAreKeptInOrder) {
    duplicate_counter c{3, 60s, 1000};
    EXPECT_EQ(c.check_and_book(7, 10'000), 0u);
    EXPECT_EQ(c.check_and_book(7, 9'999), 0u);  // read its time first, booked second
    EXPECT_EQ(c.check_and_book(7, 10'001), 0u);
    EXPECT_EQ(c.check_and_book(7, 10'002), 3u);
    const std::string saved = c.encode(10'002);
    duplicate_counter d{3, 60s, 1000};
    std::string err;
    ASSERT_TRUE(d.restore(saved, 0, 10'002, &err)) << err;
    EXPECT_EQ(d.check_and_book(7, 10'003), 3u);
    EXPECT_EQ(d.check_and_book(7, 69'999), 0u) << "the send at 9,999 has left the window (69,999 - 60,000]";
    EXPECT_EQ(d.check_and_book(7, 69'999), 3u) << "10,000, 10,001 and 69,999 are in it";
    // A table saved with its two times swapped, as the release before could write it.
    duplicate_counter two{3, 60s, 1000};
    ASSERT_EQ(two.check_and_book(9, 10'000), 0u);
    ASSERT_EQ(two.check_and_book(9, 10'001), 0u);
    std::string swapped = two.encode(10'001);
    ASSERT_EQ(swapped.size(), 42u);  // format, count, key, probation, refusal, sends, two times
    std::swap_ranges(swapped.begin() + 26, swapped.begin() + 34, swapped.begin() + 34);
    duplicate_counter back{3, 60s, 1000};
    ASSERT_TRUE(back.restore(swapped, 0, 10'001, &err)) << err;
    EXPECT_EQ(back.check_and_book(9, 10'002), 0u);
    EXPECT_EQ(back.check_and_book(9, 10'003), 3u);
}

// A reload that changes the table's size (max_keys, or a max above 200 whose default
// max_keys follows it) keeps the sends in the window: a loop under way is not given a fresh
// `max` sends per recipient. A restart after it reads the table saved under either
// fingerprint (with max_keys, as before this version, or without).
TEST(GuardDuplicates, ANewTableSizeKeepsTheSends) {
    manual_clock clock;
    clock.set(time_point{std::chrono::hours{1000}});
    const std::string before = dup_rule(R"j({"max": 3, "window": "10m"})j", R"j(, "max_keys": 1000)j");
    engine first{load_ok(guard_config(before))};
    request req;
    req.body = sendgrid_to({"jane@example.com"});
    for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(first.evaluate(req.view(), clock.now()).allowed()) << i;
    }
    engine resized{load_ok(guard_config(dup_rule(R"j({"max": 3, "window": "10m"})j", R"j(, "max_keys": 5000)j"))),
                   &first};
    EXPECT_FALSE(resized.evaluate(req.view(), clock.now()).allowed()) << "the fourth send, after a new max_keys";

    // max 300 -> 200: the default max_keys (20,000,000 / max) changes with it.
    engine big{load_ok(guard_config(dup_rule(R"j({"max": 300, "window": "10m"})j")))};
    for (int i = 0; i < 300; ++i) {
        ASSERT_TRUE(big.evaluate(req.view(), clock.now()).allowed()) << i;
    }
    engine bigger{load_ok(guard_config(dup_rule(R"j({"max": 200, "window": "10m"})j"))), &big};
    EXPECT_FALSE(bigger.evaluate(req.view(), clock.now()).allowed()) << "300 sends are over a max of 200";

    // A smaller table keeps the pairs seen last: a loop under way, not the campaign before it.
    engine wide{load_ok(guard_config(dup_rule(R"j({"max": 2, "window": "10m"})j", R"j(, "max_keys": 1600)j")))};
    request campaign;
    campaign.body = mail_to_many(1000);
    ASSERT_TRUE(wide.evaluate(campaign.view(), clock.now()).allowed());
    clock.advance(1s);
    ASSERT_TRUE(wide.evaluate(req.view(), clock.now()).allowed());
    ASSERT_TRUE(wide.evaluate(req.view(), clock.now()).allowed());
    engine narrow{load_ok(guard_config(dup_rule(R"j({"max": 2, "window": "10m"})j", R"j(, "max_keys": 160)j"))),
                  &wide};
    EXPECT_FALSE(narrow.evaluate(req.view(), clock.now()).allowed()) << "jane's third send, after the table shrank";

    // Across a restart: a row saved under today's fingerprint, and one under the older one.
    auto saved = first.save_meters(clock.now());
    ASSERT_EQ(saved.size(), 1u);
    engine after{load_ok(guard_config(dup_rule(R"j({"max": 3, "window": "10m"})j", R"j(, "max_keys": 5000)j")))};
    std::string error;
    auto restored = after.restore_meters(saved, clock.now(), &error);
    ASSERT_TRUE(restored) << error;
    EXPECT_EQ(restored->size(), 1u);
    EXPECT_FALSE(after.evaluate(req.view(), clock.now()).allowed());
    saved[0].fingerprint = first.rules().rules[0].counter_fingerprint_with_keys;
    engine legacy{load_ok(guard_config(before))};
    restored = legacy.restore_meters(saved, clock.now(), &error);
    ASSERT_TRUE(restored) << error;
    EXPECT_EQ(restored->size(), 1u) << "a row saved by the version before";
    EXPECT_FALSE(legacy.evaluate(req.view(), clock.now()).allowed());
}

// A table saved by the release before default field lists were named in the canonical form
// (their fields spelled out) is read back: a rule on the default lists accepts the
// fingerprint that release gave it, which is that of the same rule with those lists written
// out. A rule with other lists does not.
TEST(GuardDuplicates, ATableSavedBeforeDefaultListsWereNamedIsReadBack) {
    const std::string old_lists = R"j(,
        "recipient_fields": ["$.personalizations[*]['to','cc','bcc'][*].email",
            "$.Destination['ToAddresses','CcAddresses','BccAddresses'][*]",
            "$.BulkEmailEntries[*].Destination['ToAddresses','CcAddresses','BccAddresses'][*]", "mime:$.Content.Raw.Data",
            "mime:base64:form:RawMessage.Data", "form:Destinations.member.*", "form:Destination.ToAddresses.member.*",
            "form:Destination.CcAddresses.member.*", "form:Destination.BccAddresses.member.*",
            "form:Destinations.member.*.Destination.ToAddresses.member.*",
            "form:Destinations.member.*.Destination.CcAddresses.member.*",
            "form:Destinations.member.*.Destination.BccAddresses.member.*", "$.message.to", "$.message['cc','bcc'][*]",
            "form:to", "form:cc", "form:bcc"],
        "subject_fields": ["$.subject", "$.personalizations[*].subject", "$.Content.Simple.Subject.Data",
            "$.message.subject", "form:subject", "form:Message.Subject.Data", "mime:$.Content.Raw.Data",
            "mime:base64:form:RawMessage.Data", "mime:form:message"],
        "template_fields": ["$.template_id", "$.Content.Template.TemplateName", "$.Content.Template.TemplateArn",
            "$.DefaultContent.Template.TemplateName", "$.DefaultContent.Template.TemplateArn", "$.emailId",
            "form:template"]})j";
    const auto defaults = load_ok(guard_config(dup_rule(R"j({"max": 2, "window": "10m"})j")));
    const auto spelled = load_ok(guard_config(dup_rule(R"j({"max": 2, "window": "10m")j" + old_lists)));
    const auto& d = defaults->rules[0];
    const auto& s = spelled->rules[0];
    EXPECT_NE(d.counter_fingerprint, s.counter_fingerprint) << "the default lists are named, not spelled out";
    ASSERT_NE(d.counter_fingerprint_legacy, 0u);
    EXPECT_EQ(d.counter_fingerprint_legacy, s.counter_fingerprint) << "the fingerprint the release before gave it";
    EXPECT_EQ(s.counter_fingerprint_legacy, 0u) << "explicit lists have no older form";
    // And a row saved under it is restored.
    engine first{spelled};
    manual_clock clock;
    request req;
    req.body = sendgrid_to({"jane@example.com"});
    ASSERT_TRUE(first.evaluate(req.view(), clock.now()).allowed());
    ASSERT_TRUE(first.evaluate(req.view(), clock.now()).allowed());
    const auto saved = first.save_meters(clock.now());
    ASSERT_EQ(saved.size(), 1u);
    engine after{defaults};
    std::string error;
    const auto restored = after.restore_meters(saved, clock.now(), &error);
    ASSERT_TRUE(restored) << error;
    EXPECT_EQ(restored->size(), 1u);
    EXPECT_FALSE(after.evaluate(req.view(), clock.now()).allowed()) << "jane's third send, across the upgrade";
}

// A table larger than the slices it is copied in (256 pairs of a shard at a time): every
// pair comes back once.
TEST(GuardDuplicates, ALargeTableSurvivesARestartWhole) {
    const auto rules = dup_rule(R"j({"max": 1, "window": "1h", "of": ["recipient", "subject"]})j");
    fixture f{rules};
    request req;
    req.body = mail_to_many(6000);
    ASSERT_TRUE(f.check(req).allowed());
    const auto saved = f.eng.save_meters(f.clock.now());
    ASSERT_EQ(saved.size(), 1u);
    EXPECT_EQ(saved[0].state.size(), 5u + 6000u * (8 + 1 + 8 + 4 + 8)) << "each pair once";
    fixture again{rules};
    again.clock.set(f.clock.now());
    std::string error;
    ASSERT_TRUE(again.eng.restore_meters(saved, again.clock.now(), &error)) << error;
    for (const int i : {0, 255, 256, 2999, 5999}) {
        request one;
        one.body = sendgrid_to({"r" + std::to_string(i) + "@example.com"});
        EXPECT_FALSE(again.check(one).allowed()) << i;
    }
    request fresh;
    fresh.body = sendgrid_to({"r6000@example.com"});
    EXPECT_TRUE(again.check(fresh).allowed());
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

// A loop inside one request: the same person in five personalizations gets five mails, so
// five sends are counted (SendGrid delivers each personalization as a mail of its own);
// the same person twice in one personalization (to and bcc) is one mail.
TEST(GuardDuplicates, TheSamePersonInSeveralMailsOfOneRequestIsSeveralSends) {
    fixture f{dup_rule(R"j({"max": 2, "window": "1h"})j")};
    std::string loop = R"j({"personalizations": [)j";
    for (int i = 0; i < 5; ++i) {
        loop += i ? "," : "";
        loop += R"j({"to": [{"email": "loop@example.com"}]})j";
    }
    loop += R"j(], "from": {"email": "news@example.com"}, "subject": "Same"})j";
    const auto d = f.check_body(loop);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("recipient #2 l***@example.com with the same subject already sent 2 times"));
    EXPECT_TRUE(f.check_body(sendgrid_to({"loop@example.com"}, "loop@example.com")).allowed()) << "to and bcc of one mail";
    EXPECT_TRUE(f.check_body(sendgrid_to({"loop@example.com"})).allowed()) << "the refused request booked nothing: a second send";
    EXPECT_FALSE(f.check_body(sendgrid_to({"loop@example.com"})).allowed());
    // SES v2 bulk entries are mails of their own too.
    fixture b{dup_rule(R"j({"max": 1, "window": "1h"})j")};
    const auto bulk = b.check_body(R"j({"FromEmailAddress": "news@example.com", "DefaultContent": {"Template":
        {"TemplateName": "weekly"}}, "BulkEmailEntries": [
        {"Destination": {"ToAddresses": ["ann@example.com"]}}, {"Destination": {"ToAddresses": ["ann@example.com"]}}]})j");
    EXPECT_EQ(bulk.outcome, verdict::violated) << bulk.reason;
    // Without recipients in `of`, a bulk send of one template is one send of it, however many
    // personalizations carry it.
    fixture t{dup_rule(R"j({"max": 1, "window": "1h", "of": ["template"]})j")};
    std::string weekly = R"j({"personalizations": [)j";
    for (int i = 0; i < 4; ++i) {
        weekly += i ? "," : "";
        weekly += R"j({"to": [{"email": "p)j" + std::to_string(i) + R"j(@example.com"}]})j";
    }
    weekly += R"j(], "from": {"email": "news@example.com"}, "template_id": "d-weekly"})j";
    EXPECT_TRUE(t.check_body(weekly).allowed());
    EXPECT_FALSE(t.check_body(weekly).allowed());
    // One SES v2 Destination is one mail, To and Cc together.
    EXPECT_TRUE(b.check_body(R"j({"FromEmailAddress": "news@example.com", "Destination": {"ToAddresses":
        ["bob@example.com"], "CcAddresses": ["bob@example.com"]}, "Content": {"Simple": {"Subject": {"Data": "Hi"},
        "Body": {"Text": {"Data": "Hello"}}}}})j").allowed());
}

// `of: ["recipient", "template"]`: a mail without a template is told apart by its subject;
// an invoice and a meeting note to one person are not "the same template".
TEST(GuardDuplicates, AMailWithoutATemplateIsToldApartByItsSubject) {
    fixture f{dup_rule(R"j({"max": 1, "window": "1h", "of": ["recipient", "template"]})j")};
    request req;
    req.body = sendgrid_to({"amy@example.com"});
    ASSERT_TRUE(f.check(req).allowed());
    request other = req;
    other.body.replace(other.body.find("Spring sale"), 11, "Meeting tomorrow");
    EXPECT_TRUE(f.check(other).allowed());
    EXPECT_FALSE(f.check(other).allowed()) << "the same plain mail again";
    fixture t{dup_rule(R"j({"max": 1, "window": "1h", "of": ["template"]})j")};
    EXPECT_TRUE(t.check(req).allowed());
    EXPECT_TRUE(t.check(other).allowed()) << "untemplated traffic is not one template";
}

// A raw message sent with its own recipient list (SES's Destination): the mails go to the
// list; the message's To header is only a header then, and makes no loop.
TEST(GuardDuplicates, ARawMessagesHeadersAreNotItsRecipientsWhenTheRequestNamesThem) {
    fixture f{dup_rule(R"j({"max": 2, "window": "1h"})j")};
    const std::string digest = "From: news@example.com\r\nTo: digest@company.com\r\nSubject: Daily digest\r\n\r\nHi\r\n";
    for (const char* to : {"u1@company.com", "u2@company.com", "u3@company.com"}) {
        const auto d = f.check_body(ses_raw(digest, R"j(, "Destination": {"ToAddresses": [")j" + std::string{to} + "\"]}"));
        EXPECT_TRUE(d.allowed()) << to << ": " << d.reason;
    }
    // Without a list, the header's recipients are the mail's.
    for (int i = 0; i < 2; ++i) {
        EXPECT_TRUE(f.check_body(ses_raw(digest)).allowed()) << i;
    }
    EXPECT_FALSE(f.check_body(ses_raw(digest)).allowed());
}

TEST(GuardDuplicates, TemplatedSendsWithoutASubjectAreToldApartByTheirTemplate) {
    // Default `of` (recipient + subject): welcome, verify and receipt mails to one person are
    // not one mail; the same template four times is.
    fixture f{dup_rule(R"j({"max": 3, "window": "10m"})j")};
    auto templated = [](std::string_view id) {
        return R"j({"personalizations": [{"to": [{"email": "jane@example.com"}]}], "from": {"email": "news@example.com"},
                    "template_id": ")j" + std::string{id} + R"j("})j";
    };
    for (const char* id : {"d-welcome", "d-verify", "d-receipt", "d-shipped"}) {
        EXPECT_TRUE(f.check_body(templated(id)).allowed()) << id;
    }
    EXPECT_TRUE(f.check_body(templated("d-welcome")).allowed());
    EXPECT_TRUE(f.check_body(templated("d-welcome")).allowed());
    EXPECT_THAT(f.check_body(templated("d-welcome")).reason, HasSubstr("already sent 3 times"));
    // SES v2 bulk and HubSpot single sends (a numeric email id) likewise.
    fixture h{dup_rule(R"j({"max": 1, "window": "10m", "of": ["recipient", "template"]})j")};
    auto hubspot = [](std::string_view id) {
        return R"j({"emailId": )j" + std::string{id} + R"j(, "message": {"to": "jane@example.com"}})j";
    };
    EXPECT_TRUE(h.check_body(hubspot("4126643121")).allowed());
    EXPECT_TRUE(h.check_body(hubspot("4126643122")).allowed());
    EXPECT_FALSE(h.check_body(hubspot("4126643121")).allowed());
    auto bulk = [](std::string_view name) {
        return R"j({"FromEmailAddress": "news@example.com", "DefaultContent": {"Template": {"TemplateName": ")j" +
               std::string{name} + R"j("}}, "BulkEmailEntries": [{"Destination": {"ToAddresses": ["jane@example.com"]}}]})j";
    };
    EXPECT_TRUE(h.check_body(bulk("Welcome")).allowed());
    EXPECT_TRUE(h.check_body(bulk("Receipt")).allowed());
    EXPECT_FALSE(h.check_body(bulk("Welcome")).allowed());
}

// A recipient's subject is the one its mail gets: of a key given twice the last (as SendGrid
// reads it), and never another personalization's; without its own or the message's, the
// template's. A loop cannot make each send new by rotating a subject its mail does not have.
TEST(GuardDuplicates, ASubjectTheRecipientsMailDoesNotHaveMakesNoNewPair) {
    fixture f{dup_rule(R"j({"max": 1, "window": "1h"})j")};
    auto twice = [](int nonce) {
        return R"j({"personalizations": [{"to": [{"email": "jane@example.com"}]}], "from": {"email": "n@example.com"},
                    "subject": "nonce-)j" + std::to_string(nonce) + R"j(", "subject": "Your invoice"})j";
    };
    EXPECT_TRUE(f.check_body(twice(1)).allowed());
    EXPECT_FALSE(f.check_body(twice(2)).allowed()) << "both are the subject Your invoice";
    auto other = [](int nonce) {
        return R"j({"personalizations": [{"to": [{"email": "me@example.com"}], "subject": "nonce-)j" +
               std::to_string(nonce) + R"j("}, {"to": [{"email": "victim@example.org"}]}],
                    "from": {"email": "n@example.com"}, "template_id": "d-invoice"})j";
    };
    fixture g{dup_rule(R"j({"max": 1, "window": "1h"})j")};
    EXPECT_TRUE(g.check_body(other(1)).allowed());
    const auto d = g.check_body(other(2));
    EXPECT_FALSE(d.allowed()) << "victim's mail is the template's both times";
    EXPECT_THAT(d.reason, HasSubstr("v***@example.org"));
}

TEST(GuardDuplicates, SubjectsDifferingOnlyInCaseOrBlanksAreOneSubject) {
    // An agent that regenerates its subject in a loop changes case and spacing, not the mail.
    fixture f{dup_rule(R"j({"max": 2, "window": "10m"})j")};
    auto with_subject = [](std::string_view subject) {
        std::string b = sendgrid_to({"jane@example.com"});
        b.replace(b.find("Spring sale"), 11, subject);
        return b;
    };
    EXPECT_TRUE(f.check_body(with_subject("Your invoice is ready")).allowed());
    EXPECT_TRUE(f.check_body(with_subject("Your Invoice Is  Ready ")).allowed());
    EXPECT_FALSE(f.check_body(with_subject("\tyour invoice\u00a0is ready")).allowed());
    EXPECT_TRUE(f.check_body(with_subject("Your invoice is ready!")).allowed()) << "another text is another subject";
}

// A form with two different subjects reads two ways (Go's FormValue takes the first,
// others the last): a loop varying the one not sent would never be counted. Refused.
TEST(GuardDuplicates, TwoDifferentSubjectsInAFormAreRefused) {
    fixture f{dup_rule(R"j({"max": 1, "window": "10m"})j")};
    const auto form = "application/x-www-form-urlencoded";
    const auto two = f.check_body("to=jane%40example.com&subject=Your+invoice&subject=r-1", form);
    EXPECT_EQ(two.outcome, verdict::rejected) << two.reason;
    EXPECT_THAT(two.reason, HasSubstr("two different subjects"));
    EXPECT_TRUE(f.check_body("to=jane%40example.com&subject=Your+invoice&subject=Your+invoice", form).allowed())
        << "the same subject twice is one subject";
    EXPECT_FALSE(f.check_body("to=jane%40example.com&subject=Your+invoice", form).allowed()) << "and it was counted";
}

TEST(GuardDuplicates, ASuspendedViolationStillCountsTheSend) {
    // metrics_only / forced_closed: the request goes out, to every recipient, so every pair
    // of it counts; when enforcement is back, the loop is where it was.
    fixture f{dup_rule(R"j({"max": 1, "window": "1h", "of": ["recipient"]})j")};
    const std::function<bool(const decision&)> suspended = [](const decision&) { return true; };
    request jane;
    jane.body = sendgrid_to({"jane@example.com"});
    EXPECT_TRUE(f.check(jane).allowed());
    request both;
    both.body = sendgrid_to({"jane@example.com", "bob@example.com"});
    decision shadowed;
    EXPECT_TRUE(f.eng.evaluate(both.view(), f.clock.now(), &suspended, &shadowed).allowed());
    EXPECT_EQ(shadowed.outcome, verdict::violated) << "jane's second send, shadowed";
    request bob;
    bob.body = sendgrid_to({"bob@example.com"});
    EXPECT_FALSE(f.check(bob).allowed()) << "bob's send went out while shadowed and counts";
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

// A request allowed, then never sent (its upstream connection refused): release() takes its
// sends off the duplicates counter and its amounts off the caps, so the client's retry is
// judged like its first try (it used to be refused as a duplicate of a send that never was).
TEST(GuardDuplicates, AReleasedRequestIsNoDuplicateAndCountsAgainstNoCap) {
    fixture f{dup_rule(R"j({"max": 1, "window": "1h"})j") + R"j(,
        {"id": "cap", "route": "mail-send", "measure": "count($.personalizations[*].to[*])", "window": "1h",
         "limit": 2, "failure_mode": "loop", "trips": "loop-pause"})j"};
    request req;
    req.body = sendgrid_to({"jane@example.com"});
    evaluation_receipt booked;
    ASSERT_TRUE(f.eng.evaluate(req.view(), f.clock.now(), nullptr, nullptr, &booked).allowed());
    EXPECT_FALSE(booked.empty());
    EXPECT_EQ(f.eng.read("cap", "", f.clock.now())->value, 1);
    f.eng.release(booked);
    EXPECT_TRUE(booked.empty());
    EXPECT_EQ(f.eng.read("cap", "", f.clock.now())->value, 0);
    // The retry: allowed, and now it is booked for real.
    ASSERT_TRUE(f.eng.evaluate(req.view(), f.clock.now(), nullptr, nullptr, &booked).allowed());
    EXPECT_FALSE(f.check(req).allowed()) << "the sent retry counts";
    // A refused request leaves the receipt empty (nothing to release).
    EXPECT_FALSE(f.eng.evaluate(req.view(), f.clock.now(), nullptr, nullptr, &booked).allowed());
    EXPECT_TRUE(booked.empty());
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

TEST(GuardDuplicates, CounterIsBoundedAndNeverForgetsARepeatedPairWithinItsWindow) {
    auto key = [](std::uint64_t k) { return k * 0x9E3779B97F4A7C15ull; };
    // A loop over a list far longer than the table, once a minute: the pairs the main part
    // holds are never pushed out within their window, so they are caught on their fourth send.
    duplicate_counter c{3, std::chrono::minutes{10}, 16 * 8};  // 7 main + 1 probation slots a shard
    std::uint64_t caught = 0;
    for (std::int64_t round = 0; round < 4; ++round) {
        for (std::uint64_t k = 0; k < 1000; ++k) {
            caught += c.check_and_book(key(k), 1000 + round * 60'000) != 0;
        }
    }
    EXPECT_EQ(c.keys(), 128u);
    EXPECT_GE(caught, 16u * 7u);
    // A table full of a campaign's pairs (each sent once) still gives a new looping pair a
    // slot (probation), and it is caught.
    duplicate_counter d{2, std::chrono::minutes{10}, 16 * 8};
    for (std::uint64_t k = 0; k < 1000; ++k) {
        EXPECT_EQ(d.check_and_book(key(k), 1000), 0u);
    }
    const std::uint64_t hot = key(5000);
    EXPECT_EQ(d.check_and_book(hot, 2000), 0u);
    EXPECT_EQ(d.check_and_book(hot, 2001), 0u);
    EXPECT_EQ(d.check_and_book(hot, 2002), 2u) << "the loop is caught while the table is full";
    d.unbook(hot, 2001);
    EXPECT_EQ(d.check_and_book(hot, 2003), 0u);
    // Sent twice, it stays in probation however many new pairs come; once the window has
    // passed, the main part's pairs make way.
    for (std::uint64_t k = 2000; k < 3000; ++k) {
        d.check_and_book(key(k), 2004);
    }
    EXPECT_EQ(d.check_and_book(hot, 2005), 2u);
    const std::int64_t later = 2005 + 10 * 60'000;
    EXPECT_EQ(d.check_and_book(key(9000), later), 0u);
    EXPECT_EQ(d.keys(), 128u);
    // max 1: a pair refused in its window stays caught however many new pairs come.
    duplicate_counter one{1, std::chrono::minutes{10}, 16 * 8};
    for (std::uint64_t k = 0; k < 1000; ++k) {
        one.check_and_book(key(k), 1000);
    }
    const std::uint64_t retry = key(7000);
    EXPECT_EQ(one.check_and_book(retry, 2000), 0u);
    EXPECT_EQ(one.check_and_book(retry, 2001), 1u);
    for (std::uint64_t k = 8000; k < 9000; ++k) {
        one.check_and_book(key(k), 2002);
    }
    EXPECT_EQ(one.check_and_book(retry, 2003), 1u) << "the refused pair was not forgotten";
}

// The flat counter against a plain model (a recency list and a map of send times) over a
// random stream: repeats, fresh keys, evictions, window expiry and unbooking, all in one
// shard. Small: evictions are frequent. Large: few keys, many send times each (what left
// the window is dropped in batches).
TEST(GuardDuplicates, CounterMatchesAPlainModel) {
    struct setup {
        std::uint32_t max;
        std::int64_t window;
        std::uint64_t keys;
        std::uint64_t min_evicted;
    };
    for (const setup su : {setup{3, 100, 24, 1000}, setup{40, 1000, 6, 0}, setup{200, 20000, 4, 0}}) {
        SCOPED_TRACE(su.window);
        constexpr std::size_t per_shard = 8;
        constexpr std::size_t probation = 1;  // per_shard / 8
        constexpr std::size_t main_cap = per_shard - probation;
        duplicate_counter c{su.max, std::chrono::milliseconds{su.window}, per_shard * 16};
        std::list<std::uint64_t> recency[2];  // most recent first; [0] main, [1] probation
        struct pair_state {
            std::vector<std::int64_t> times;
            int part = 0;
            std::int64_t refused = std::numeric_limits<std::int64_t>::min();
        };
        std::map<std::uint64_t, pair_state> pairs;
        std::uint64_t evicted = 0;
        std::uint64_t untracked = 0;
        std::uint64_t refused = 0;
        std::uint64_t promoted = 0;
        std::mt19937_64 rng{7};
        std::int64_t now = 0;
        auto in_window = [&](std::uint64_t k) {
            const auto& t = pairs[k].times;
            return std::count_if(t.begin(), t.end(), [&](std::int64_t x) { return x > now - su.window; });
        };
        auto forget = [&](std::uint64_t k) {
            recency[pairs[k].part].remove(k);
            pairs.erase(k);
            ++evicted;
        };
        for (int step = 0; step < 20'000; ++step) {
            now += static_cast<std::int64_t>(rng() % 7);
            const std::uint64_t key = (rng() % su.keys) + 1;  // top bits 0: shard 0
            if (rng() % 5 == 0) {
                c.unbook(key, now);
                if (auto it = pairs.find(key); it != pairs.end()) {
                    auto& t = it->second.times;
                    if (auto r = std::find(t.rbegin(), t.rend(), now); r != t.rend()) {
                        t.erase(std::next(r).base());
                    }
                }
                continue;
            }
            if (auto it = pairs.find(key); it != pairs.end()) {
                recency[it->second.part].remove(key);
                recency[it->second.part].push_front(key);
            } else {
                int part = 0;
                if (recency[0].size() < main_cap) {
                } else if (in_window(recency[0].back()) == 0) {
                    forget(recency[0].back());
                } else if (recency[1].size() < probation) {
                    part = 1;
                } else {
                    std::optional<std::uint64_t> victim;
                    int looked = 0;
                    for (auto r = recency[1].rbegin(); r != recency[1].rend() && looked < 16; ++r, ++looked) {
                        if (in_window(*r) <= 1 && pairs[*r].refused <= now - su.window) {
                            victim = *r;
                            break;
                        }
                    }
                    if (!victim) {
                        ++untracked;
                        ASSERT_EQ(c.check_and_book(key, now), 0u) << "step " << step << " key " << key;
                        continue;
                    }
                    forget(*victim);
                    part = 1;
                }
                pairs[key].part = part;
                recency[part].push_front(key);
            }
            auto& ps = pairs[key];
            std::erase_if(ps.times, [&](std::int64_t x) { return x <= now - su.window; });
            std::uint32_t want = 0;
            if (ps.times.size() >= su.max) {
                want = static_cast<std::uint32_t>(ps.times.size());
                ps.refused = now;
                ++refused;
            } else {
                ps.times.push_back(now);
                if (ps.part == 1 && ps.times.size() >= 2 &&
                    (recency[0].size() < main_cap || in_window(recency[0].back()) == 0)) {
                    if (recency[0].size() >= main_cap) {
                        forget(recency[0].back());
                    }
                    recency[1].remove(key);
                    pairs[key].part = 0;
                    recency[0].push_front(key);
                    ++promoted;
                }
            }
            ASSERT_EQ(c.check_and_book(key, now), want) << "step " << step << " key " << key;
        }
        EXPECT_EQ(c.keys(), pairs.size());
        EXPECT_EQ(c.evictions(), evicted);
        EXPECT_EQ(c.untracked(), untracked);
        EXPECT_GE(evicted, su.min_evicted);
        EXPECT_GT(refused, 100u);
        if (su.min_evicted > 0) {
            EXPECT_GT(promoted, 10u) << "pairs sent twice in probation move to the main part";
        }
    }
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

TEST(GuardDuplicates, TighteningMaxOrWindowKeepsTheCounts) {
    // Mid-incident, an operator lowers max from 3 to 2: the loop does not get a fresh budget.
    manual_clock clock;
    request req;
    req.body = sendgrid_to({"jane@example.com"});
    engine first{load_ok(guard_config(dup_rule(R"j({"max": 3, "window": "1h"})j")))};
    EXPECT_TRUE(first.evaluate(req.view(), clock.now()).allowed());
    EXPECT_TRUE(first.evaluate(req.view(), clock.now()).allowed());
    engine tighter{load_ok(guard_config(dup_rule(R"j({"max": 2, "window": "2h"})j"))), &first};
    const auto d = tighter.evaluate(req.view(), clock.now());
    EXPECT_FALSE(d.allowed());
    EXPECT_THAT(d.reason, HasSubstr("already sent 2 times in 2h (max 2)"));
    // Another `of` is another table.
    engine other{load_ok(guard_config(dup_rule(R"j({"max": 2, "window": "2h", "of": ["recipient"]})j"))), &tighter};
    EXPECT_TRUE(other.evaluate(req.view(), clock.now()).allowed());
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

TEST(GuardConfig, UnsubscribeWordsAndTemplatesErrorsNameTheirPath) {
    const auto errs = guard_errors(content_rule(
        R"j({"blocked_terms": ["x"], "unsubscribe_words": ["ab", "ok\tword", "bell\u0007word", " ://  ", "\u00a0\u00a0", "»»»", "über", "配信停止"], "unsubscribe_templates": [""]})j"));
    std::string all;
    for (const auto& e : errs) {
        all += e + "\n";
    }
    EXPECT_THAT(all, HasSubstr("guard.content.unsubscribe_words[0]: \"ab\" must be 3 to 64 bytes with a letter and no control characters"));
    EXPECT_THAT(all, Not(HasSubstr("unsubscribe_words[1]")));
    EXPECT_THAT(all, HasSubstr("guard.content.unsubscribe_words[2]"));
    EXPECT_THAT(all, HasSubstr("guard.content.unsubscribe_words[3]"));
    EXPECT_THAT(all, HasSubstr("guard.content.unsubscribe_words[4]"));
    EXPECT_THAT(all, HasSubstr("guard.content.unsubscribe_words[5]"));
    EXPECT_THAT(all, Not(HasSubstr("unsubscribe_words[6]")));
    EXPECT_THAT(all, Not(HasSubstr("unsubscribe_words[7]")));
    EXPECT_THAT(all, HasSubstr("guard.content.unsubscribe_words: needs require_unsubscribe: true"));
    EXPECT_THAT(all, HasSubstr("guard.content.unsubscribe_templates[0]: a template id has 1 to 256 bytes"));
    EXPECT_THAT(all, HasSubstr("guard.content.unsubscribe_templates: needs require_unsubscribe: true"));
}

TEST(GuardConfig, SuppressionBypassIsRefuseOrAllow) {
    const auto errs = guard_errors(recipients_rule(R"j({"block_domains": ["x.com"], "suppression_bypass": "yes"})j"));
    ASSERT_EQ(errs.size(), 1u);
    EXPECT_THAT(errs[0], HasSubstr("guard.recipients.suppression_bypass: \"yes\" is not refuse or allow"));
}

TEST(GuardConfig, EveryErrorHasItsPath) {
    const auto lines = guard_errors(R"j(
        {"id": "a", "guard": {"pii": ["card", "passport"], "in": ["$.content[", "form:", "attachment:form:file", "$.r[?(@.method=='DELETE')].url"]}, "failure_mode": "pii-risk", "trips": "x"},
        {"id": "b", "guard": {"recipients": {"suppression_file": "/nonexistent/list.txt", "allow_domains": ["a@b.com"]}},
         "failure_mode": "wrong-audience", "trips": "x"},
        {"id": "c", "guard": {"recipients": {}}, "failure_mode": "wrong-audience", "trips": "x"},
        {"id": "d", "guard": {"content": {"blocked_terms": ["ok term", "!!!"], "require_unsubscribe": "yes", "fields": ["attachment:$.attachments[*].content"]}},
         "failure_mode": "off-brand", "trips": "x"},
        {"id": "e", "guard": {"duplicates": {"window": "1x", "of": ["recipient", "body"], "template_fields": ["mime:$.Content.Raw.Data"]}}, "failure_mode": "loop", "trips": "x"},
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
        R"j(rules[0].guard.in[2]: "attachment:form:file" is not a JSON path or form:NAME: an attachment: field is a JSON path (a form's files are read as they are sent))j",
        R"j(rules[0].guard.in[3]: "$.r[?(@.method=='DELETE')].url" is not a JSON path or form:NAME: a filter ([?(...)]) is not supported in guardrail fields)j",
        R"j(rules[1].guard.recipients.allow_domains[0]: "a@b.com" is not a domain)j",
        R"j(rules[1].guard.recipients.suppression_file: "/nonexistent/list.txt" cannot be read)j",
        R"j(rules[2].guard.recipients: needs allow_domains, block_domains or suppression_file)j",
        R"j(rules[3].guard.content.blocked_terms[1]: "!!!": a term needs at least one word (letters or digits))j",
        R"j(rules[3].guard.content.require_unsubscribe: must be true or false, not a string)j",
        R"j(rules[3].guard.content.fields[0]: "attachment:$.attachments[*].content": an attachment: field is read by the pii guard only)j",
        R"j(rules[4].guard.duplicates.max: is required)j",
        R"j(rules[4].guard.duplicates.window: "1x" is not a duration (use a whole number with ms, s, m, h or d))j",
        R"j(rules[4].guard.duplicates.of[1]: "body" is not recipient, subject or template)j",
        R"j(rules[4].guard.duplicates.template_fields[0]: "mime:$.Content.Raw.Data": a mime: field is not read here (only as recipients or subjects, or by the recipients, content and pii guards))j",
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

// The sender's name shows in the inbox before the subject. SendGrid gives it a key of its own
// (above); SES, Mailgun and HubSpot write it beside the address in one value, a raw message in
// its From header, Salesforce and SendGrid v2 in a field of its own. The words of the address
// are no content: a blocked `winner` does not stop a send from winner@example.com.
TEST(GuardContent, SendersNamesBesideTheAddressAreContent) {
    fixture f{content_rule(R"j({"blocked_terms": ["free money", "winner"]})j")};
    const std::string ses = R"j({"FromEmailAddress": "\"Free Money\" <news@example.com>", "Destination": {"ToAddresses": ["a@example.com"]},
        "Content": {"Simple": {"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "Hello"}}}}})j";
    auto d = f.check_body(ses);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_EQ(d.reason, "rule brand (off-brand, sev3): blocked term #0 (free money) at body offset " +
                            std::to_string(ses.find("Free Money")) + " ($.FromEmailAddress, the sender's name)");
    EXPECT_TRUE(f.check_body(R"j({"FromEmailAddress": "winner@example.com", "Content": {"Simple": {"Subject": {"Data": "Hi"}}}})j").allowed());
    EXPECT_TRUE(f.check_body(R"j({"FromEmailAddress": "Store <winner@example.com>", "Content": {"Simple": {"Subject": {"Data": "Hi"}}}})j").allowed());
    // HubSpot single send; Salesforce emailSimple, direct and in a composite request.
    const std::string hubspot = R"j({"emailId": 1, "message": {"to": "a@example.com", "from": "Winner Team <x@example.com>"}})j";
    EXPECT_THAT(f.check_body(hubspot).reason, HasSubstr("blocked term #1 (winner) at body offset " +
                                                        std::to_string(hubspot.find("Winner")) +
                                                        " ($.message.from, the sender's name)"));
    EXPECT_TRUE(f.check_body(R"j({"emailId": 1, "message": {"to": "a@example.com", "from": "winner@example.com"}})j").allowed());
    EXPECT_FALSE(f.check_body(R"j({"inputs": [{"emailAddresses": "a@example.com", "emailSubject": "s", "emailBody": "b",
        "senderDisplayName": "Free Money Desk"}]})j").allowed());
    EXPECT_FALSE(f.check_body(R"j({"compositeRequest": [{"method": "POST", "url": "/services/data/v59.0/actions/standard/emailSimple",
        "referenceId": "r", "body": {"inputs": [{"emailAddresses": "a@example.com", "emailSubject": "s", "emailBody": "b",
        "senderDisplayName": "Free Money Desk"}]}}]})j").allowed());
    // Mailgun's from, SES v1's Source (any case of the name), SendGrid v2's fromname.
    const std::string form = "to=a%40example.com&subject=Hi&text=Hello&from=Free+Money+%3Cnews%40example.com%3E";
    d = f.check_body(form, "application/x-www-form-urlencoded");
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("blocked term #0 (free money) in form field \"from\" (the sender's name) at offset 0"));
    EXPECT_TRUE(f.check_body("to=a%40example.com&subject=Hi&from=winner%40example.com", "application/x-www-form-urlencoded").allowed());
    EXPECT_FALSE(f.check_body("Action=SendEmail&SOURCE=%22Winner%22+%3Cnews%40example.com%3E&Message.Subject.Data=Hi",
                              "application/x-www-form-urlencoded").allowed());
    EXPECT_FALSE(f.check_body("to%5B%5D=a%40example.com&subject=Hi&from=news%40example.com&fromname=Free+Money",
                              "application/x-www-form-urlencoded").allowed());
    // A raw message's From, its encoded words decoded (not an attached message's From).
    const std::string raw = "From: =?utf-8?B?" + b64("Free Money") + "?= <news@example.com>\r\nTo: a@example.com\r\n"
                            "Subject: Hi\r\n\r\nHello\r\n";
    EXPECT_THAT(f.check_body(ses_raw(raw)).reason,
                HasSubstr("blocked term #0 (free money) at offset 0 of the sender's name in the From header of the raw message"));
    EXPECT_TRUE(f.check_body(ses_raw("From: winner@example.com\r\nTo: a@example.com\r\nSubject: Hi\r\n\r\nHello\r\n")).allowed());
    // Encoded words (SES asks for them in a non-ASCII name) are decoded; the finding is then
    // at the value.
    const std::string encoded = R"j({"FromEmailAddress": "=?utf-8?B?)j" + b64("Free Money") +
                                R"j(?= <news@example.com>", "Content": {"Simple": {"Subject": {"Data": "Hi"}}}})j";
    EXPECT_THAT(f.check_body(encoded).reason,
                HasSubstr("blocked term #0 (free money) at body offset " +
                          std::to_string(encoded.find("=?utf-8")) + " ($.FromEmailAddress, the sender's name, in its encoded words)"));
    EXPECT_THAT(f.check_body("to=a%40example.com&subject=Hi&from=%3D%3Fus-ascii%3FQ%3FFree_Money%3F%3D+%3Cnews%40example.com%3E",
                             "application/x-www-form-urlencoded").reason,
                HasSubstr("in form field \"from\" (the sender's name, in its encoded words)"));
    // A word that cannot be decoded hides what the client shows: an invalid body, as a raw
    // message's header with one is (a finding elsewhere still wins).
    const auto undecodable = f.check_body(R"j({"FromEmailAddress": "=?utf-8?B?RnJlZSBNb25leQ==?= =?utf-7?Q?x?= <news@example.com>",
        "Content": {"Simple": {"Subject": {"Data": "Hi"}}}})j");
    EXPECT_EQ(undecodable.outcome, verdict::rejected) << undecodable.reason;
    EXPECT_THAT(undecodable.reason, HasSubstr("the sender's name at $.FromEmailAddress cannot be read: an encoded word"));
    EXPECT_EQ(f.check_body(R"j({"FromEmailAddress": "=?x-unknown?Q?a?= <news@example.com>",
        "Content": {"Simple": {"Subject": {"Data": "Winner"}}}})j").outcome, verdict::violated);
    EXPECT_THAT(f.check_body("to=a%40example.com&subject=Hi&from=%3D%3Fx-unknown%3FQ%3Fa%3F%3D+%3Cn%40example.com%3E",
                             "application/x-www-form-urlencoded").reason,
                HasSubstr("the sender's name in form field \"from\" cannot be read"));
    // In a raw message too, where what a word decodes to is the name's, `<` and `@` included.
    EXPECT_FALSE(f.check_body(ses_raw("From: =?utf-8?Q?=3CFree_Money=3E?= <news@example.com>\r\nTo: a@example.com\r\n"
                                      "Subject: Hi\r\n\r\nHello\r\n")).allowed());
    EXPECT_FALSE(f.check_body(ses_raw("From: =?utf-8?Q?Winner=40Acme?= <news@example.com>\r\nTo: a@example.com\r\n"
                                      "Subject: Hi\r\n\r\nHello\r\n")).allowed());
    // A name is no unsubscribe link, in any API's sender name.
    fixture u{content_rule(R"j({"require_unsubscribe": true})j")};
    EXPECT_THAT(u.check_body("to=a%40example.com&subject=Hi&text=Hello&from=Unsubscribe+%3Cnews%40example.com%3E",
                             "application/x-www-form-urlencoded").reason,
                HasSubstr("missing unsubscribe link"));
    EXPECT_THAT(u.check_body("to%5B%5D=a%40example.com&subject=Hi&text=Hello&from=news%40example.com&fromname=Unsubscribe",
                             "application/x-www-form-urlencoded").reason,
                HasSubstr("missing unsubscribe link"));
    EXPECT_THAT(u.check_body(R"j({"inputs": [{"emailAddresses": "a@example.com", "emailSubject": "s", "emailBody": "b",
        "senderDisplayName": "Unsubscribe Desk"}]})j").reason, HasSubstr("missing unsubscribe link"));
    EXPECT_THAT(u.check_body(R"j({"personalizations": [{"to": [{"email": "a@example.com"}]}], "subject": "s",
        "from": {"email": "news@example.com", "name": "Unsubscribe Team"}, "content": [{"type": "text/plain", "value": "b"}]})j").reason,
                HasSubstr("missing unsubscribe link"));
    // With another guard beside it, the guards share one classification of the values; the
    // names are read from it as well.
    fixture two{content_rule(R"j({"blocked_terms": ["free money"]})j") + "," +
                R"j({"id": "aud", "route": "mail-send", "guard": {"recipients": {"allow_domains": ["example.com"]}},
                     "failure_mode": "wrong-audience", "trips": "aud-deny"})j"};
    EXPECT_THAT(two.check_body(ses).reason, HasSubstr("($.FromEmailAddress, the sender's name)"));
    EXPECT_TRUE(two.check_body(R"j({"FromEmailAddress": "Store <news@example.com>", "Destination": {"ToAddresses": ["a@example.com"]},
        "Content": {"Simple": {"Subject": {"Data": "Hi"}}}})j").allowed());
}

TEST(GuardConfig, NameFieldsAreTheContentGuards) {
    fixture f{content_rule(R"j({"blocked_terms": ["free money"], "fields": ["$.subject", "name:$.sender", "name:form:sender"]})j")};
    EXPECT_FALSE(f.check_body(R"j({"subject": "Hi", "sender": "Free Money <a@example.com>"})j").allowed());
    EXPECT_TRUE(f.check_body(R"j({"subject": "Hi", "sender": "a@example.com", "FromEmailAddress": "Free Money <a@example.com>"})j").allowed());
    EXPECT_FALSE(f.check_body("sender=Free+Money+%3Ca%40example.com%3E", "application/x-www-form-urlencoded").allowed());
    const auto lines = guard_errors(R"j(
        {"id": "a", "guard": {"pii": ["card"], "in": ["name:$.from"]}, "failure_mode": "pii-risk", "trips": "x"},
        {"id": "b", "guard": {"content": {"blocked_terms": ["x y"], "fields": ["name:mime:$.Raw", "name:attachment:$.a", "name:"]}},
         "failure_mode": "off-brand", "trips": "x"})j");
    const std::vector<std::string> expected = {
        R"j(rules[0].guard.in[0]: "name:$.from": a name: field is read by the content guard only)j",
        R"j(rules[1].guard.content.fields[0]: "name:mime:$.Raw" is not a JSON path or form:NAME: a name: field is a JSON path or form:NAME (a raw message's From is read as such))j",
        R"j(rules[1].guard.content.fields[1]: "name:attachment:$.a" is not a JSON path or form:NAME: a name: field is a JSON path or form:NAME (a raw message's From is read as such))j",
    };
    for (const auto& e : expected) {
        EXPECT_THAT(lines, ::testing::Contains(e));
    }
    EXPECT_EQ(lines.size(), expected.size() + 1) << ::testing::PrintToString(lines);  // and "name:": not a path
}

TEST(GuardConfig, BadSuppressionLineIsReportedWithItsLine) {
    const std::string path = temp_file("bad-list.txt", "ann@example.com\nnot an address\n");
    const auto lines = guard_errors(recipients_rule(R"j({"suppression_file": ")j" + path + R"j("})j"));
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0], "rules[0].guard.recipients.suppression_file: " + cfg::quote(path) +
                            " line 2: not an email address or a SHA-256 hex digest");
}

TEST(GuardConfig, AnEmptySuppressionFileIsRefused) {
    const std::string path = temp_file("empty-list.txt", "# nobody yet\n\n");
    const auto lines = guard_errors(recipients_rule(R"j({"suppression_file": ")j" + path + R"j("})j"));
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0].rfind("rules[0].guard.recipients.suppression_file: " + cfg::quote(path) +
                                 " holds no address or digest: an empty list suppresses nobody",
                             0),
              0u)
        << lines[0];
}

// Only a regular file is read, and only up to the size a list can have: /dev/zero would
// grow memory until the process dies, a named pipe block the thread that loads the config.
TEST(GuardConfig, ASuppressionFileThatIsNoRegularFileIsRefusedUnread) {
    auto lines = guard_errors(recipients_rule(R"j({"suppression_file": "/dev/zero"})j"));
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0], R"j(rules[0].guard.recipients.suppression_file: "/dev/zero" is not a regular file)j");
    const auto fifo = std::filesystem::path{::testing::TempDir()} / ("bb-" + std::to_string(::getpid()) + "-fifo");
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    lines = guard_errors(recipients_rule(R"j({"suppression_file": ")j" + fifo.string() + R"j("})j"));
    std::filesystem::remove(fifo);
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_THAT(lines[0], HasSubstr("is not a regular file"));
    const std::string big = temp_file("big-list.txt", std::string(1000 * 400 + 4097, '#'));
    lines = guard_errors(recipients_rule(R"j({"suppression_file": ")j" + big + R"j(", "max_suppressed": 1000})j"));
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_THAT(lines[0], HasSubstr("is too large for max_entries 1000"));
}

TEST(GuardConfig, KeysForMapsAGuardRuleToItsBreaker) {
    fixture f{pii_rule(R"j({"pii": ["card"]})j")};
    request req;
    std::vector<engine::rule_key> keys;
    f.eng.keys_for(req.view(), keys);
    ASSERT_EQ(keys.size(), 1u);
    EXPECT_EQ(f.eng.rules().rules[keys[0].rule].trips, "pii-deny");
}

// ---------------------------------------------------------------------------------------
// The fast scanners against their word-by-word references, over random texts made of the
// pieces they look for (valid and nearly valid cards, SSNs, IBANs and secrets, terms in any
// case, links of every shape), near misses and filler, joined by separators that matter.

struct text_gen {
    explicit text_gen(std::uint64_t seed) : rng{seed} {}
    std::mt19937_64 rng;

    std::size_t pick(std::size_t n) { return std::uniform_int_distribution<std::size_t>{0, n - 1}(rng); }
    bool chance(int percent) { return static_cast<int>(pick(100)) < percent; }
    template <class T, std::size_t N>
    const T& one(const T (&a)[N]) {
        return a[pick(N)];
    }
    std::string digits(std::size_t n) {
        std::string out;
        for (std::size_t i = 0; i < n; ++i) {
            out += static_cast<char>('0' + pick(10));
        }
        return out;
    }
    std::string chars(std::string_view alphabet, std::size_t n) {
        std::string out;
        for (std::size_t i = 0; i < n; ++i) {
            out += alphabet[pick(alphabet.size())];
        }
        return out;
    }
    // A Luhn-valid (or, sometimes, off by one digit) number of n digits.
    std::string card_number(std::size_t n) {
        std::string d = std::string{static_cast<char>('2' + pick(6))} + digits(n - 2);
        for (char c = '0'; c <= '9'; ++c) {
            if (luhn_valid(d + c)) {
                d += c;
                break;
            }
        }
        if (chance(20)) {
            d[pick(d.size())] = static_cast<char>('0' + pick(10));
        }
        return d;
    }
    // Some of the spaces of s as other blanks: doubled, a tab, a wrapped line.
    std::string widened(const std::string& s) {
        if (!chance(40)) {
            return s;
        }
        std::string out;
        for (const char c : s) {
            out += c == ' ' && chance(30) ? one({"  ", "\n", "\t", "\r\n", " \n ", "\r", "\n\n", "\f"}) : std::string(1, c);
        }
        return out;
    }
    std::string grouped(const std::string& d, std::initializer_list<std::size_t> sizes, char sep) {
        std::string out;
        std::size_t at = 0;
        for (const auto n : sizes) {
            if (at >= d.size()) {
                break;
            }
            out += at ? std::string(1, sep) : "";
            out += d.substr(at, n);
            at += n;
        }
        return out + d.substr(std::min(at, d.size()));
    }
    std::string case_mix(std::string w) {
        const auto mode = pick(4);
        for (std::size_t i = 0; i + 1 < w.size(); ++i) {
            // A two-byte letter in any of its spellings (É é, Σ σ ς).
            const auto lead = static_cast<unsigned char>(w[i]);
            const auto next = static_cast<unsigned char>(w[i + 1]);
            if (mode != 0 && lead >= 0xC2 && lead <= 0xDF && (next & 0xC0) == 0x80) {
                const auto spellings = detail::case_variants(detail::fold_two_byte(((lead & 0x1Fu) << 6) | (next & 0x3Fu)));
                const char16_t v = spellings[pick(spellings.size())];
                w[i] = static_cast<char>(0xC0 | (v >> 6));
                w[++i] = static_cast<char>(0x80 | (v & 0x3F));
            }
        }
        for (auto& c : w) {
            const auto u = static_cast<unsigned char>(c);
            if (mode == 1 || (mode == 3 && chance(50))) {
                c = static_cast<char>(std::toupper(u));
            } else if (mode == 2) {
                c = static_cast<char>(std::tolower(u));
            }
        }
        return w;
    }

    std::string pii_piece() {
        static const char* const secrets[] = {"AKIA", "ASIA", "AKIAIOSFODNN7EXAMPLE", "-----BEGIN RSA PRIVATE KEY-----",
                                              "-----BEGIN PUBLIC KEY-----", "BEGIN", "Bearer ", "bearer ", "BEARER ",
                                              "sk_live_", "rk_live_", "sk_test_", "xoxb-", "xoxp-", "xoxz-", "ghp_",
                                              "github_pat_", "gho_", "Be", "sk", "xo", "gh"};
        static const char* const ibans[] = {"GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432",
                                            "DE89 3704 0044 0532 0130 00", "FR1420041010050500013M02606",
                                            "GB82 WEST 1234 5698 7654 33", "NO9386011117947", "XX12",
                                            "gb82 west 1234 5698 7654 32", "de89370400440532013000",
                                            "fr1420041010050500013m02606", "no93 8601 1117 947", "xx12",
                                            "De89 3704 0044 0532 0130 00", "gb82 WEST 1234 5698 7654 32"};
        switch (pick(12)) {
            case 0: {
                const std::size_t n = 12 + pick(9);
                const std::string d = card_number(n);
                const char sep = one({' ', '-', ' ', '.'});
                switch (pick(4)) {
                    case 0: return d;
                    case 1: return widened(grouped(d, {4, 4, 4, 4, 4}, sep));
                    case 2: return widened(grouped(d, {4, 6, 5}, sep));
                    default: return widened(grouped(d, {4, 4, 4}, sep));
                }
            }
            case 1: {
                const std::string sep = one({"-", " ", "."});
                const std::string first = chance(25) ? one({" ", "--", "-"}) : sep;
                return widened(digits(3) + first + digits(2) + sep + digits(4) +
                               (chance(20) ? sep + digits(1) : std::string{}));
            }
            case 2: {
                std::string out;
                for (std::size_t i = 0, n = 1 + pick(8); i < n; ++i) {
                    out += (i ? one({" ", "-", " ", "  ", ", "}) : "") + digits(1 + pick(6));
                }
                return out;
            }
            case 3: return one(ibans);
            case 4:
                if (chance(50)) {
                    return one({"de", "gb", "fr", "no", "ab", "it"}) + digits(2) + chars("abcdefwxyz0123456789 ", pick(30));
                }
                return chars("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 2) + digits(2) + chars("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ", pick(30));
            case 5: {
                std::string t = one(secrets);
                return t + chars("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.~+/", pick(45));
            }
            case 6: return chars("abcdefghijklmnopqrstuvwxyz", 1 + pick(9));
            case 7: return chars("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 1 + pick(5));
            case 8: return one({"\xc3\xa9t\xc3\xa9", "_x", "x4111111111111111", "4111111111111111x", "\xe2\x82\xac" "4111",
                                "\xe7\x95\xaa" "4111111111111111", "4111 1111 1111 1111\xe5\x86\x86", "\xef\xbc\x9a" "078-05-1120",
                                "\xe7\x95\xaa" "41111111\xe7\x95\xaa" "11111111", "\xc3\xa9" "1 " "\xc3\xa9" "4111-1111"});
            case 9: return digits(1 + pick(25));
            case 10: return chars("0123456789 -", 1 + pick(40));
            default: return one({"px", "#", "$", "+1 (", ")", "2026-03-14", "1Z 999 AA1 01 2345 6784"});
        }
    }

    std::string pii_text(std::size_t pieces) {
        std::string out;
        for (std::size_t i = 0; i < pieces; ++i) {
            out += pii_piece();
            out += one({" ", " ", "-", "", "\n", ", ", ".", "=", "_", "/", "  ", ": ", "\t", "\r\n", " \n ", "\r",
                        "\n\n", "\f", "                 ", "- ", "\v"});
        }
        return out;
    }

    std::string link() {
        static const char* const schemes[] = {"http://", "https://", "HTTP://", "Https://", "href=\"//", "href='//",
                                              "src=\"//", "SRC='\\\\", "data-src=//", "url(//", "url( \"//", "xsrc=//",
                                              "formaction=//", "src2=//", "\xc3\xa9src=//", "Background = '//",
                                              "HREF = //", "href//", "hrefs=//", "xhttp://", "http:/", "http//",
                                              "href=\"https://", "//", "://", "https:\\/\\/", "href = \" ' //",
                                              "https:\\\\", "https:\\", "http:/\\", "https:", "href=\"\\\\",
                                              "href='/\\", "www.", " www.", "(www.", "href=\"https://\t",
                                              "\"https://\n", "awww.", "/www.", "srcset=\"a.png 1x, //",
                                              "srcset='//example.com/a 1x,\t\\\\", "srcset=x,//", "alt=\"a, //",
                                              "image-set(\"//", "-webkit-image-set( '//", "image-set(url(//a) 1x, \"//",
                                              "imageset(\"//", ", //", "(//", "srcset=\"a.png?w=1 1x,//",
                                              "url(&quot;//", "image-set(&#39;//", ", &QUOT;//", "src=&apos; //",
                                              "srcset=\"a(1 1x, //", "srcset=\"a?x=' 1x,//", "?srcset=a,//",
                                              "data-srcset='a 1x, &#x22;//", "&amp;quot;//", "&quot//"};
        static const char* const hosts[] = {"example.com", "www.example.com", "evil.io", "EXAMPLE.com", "user@evil.io",
                                            "example.com@evil.io", "[::1]", "example.com:8080", "", " ",
                                            "sub.partner.io", "partner.io.evil.io", "e\xc3\xa9.io", "example.com\t.evil.io",
                                            "example.com,", "evil.io;", "exam\nple.com", "www.example.com"};
        return std::string{one(schemes)} + one(hosts) + one({"/x", "?q=1", "#f", "", "\"", ")", " y"});
    }

    std::string content_piece(const std::vector<std::string>& vocab) {
        switch (pick(8)) {
            case 0:
            case 1:
            case 2: return case_mix(vocab[pick(vocab.size())]);
            case 3: return one({"freedom", "mone", "acts", "aa", "00", "70", "12a", "wins", "\xc3\xbc", "_free", "free_", "SSA", "maß", "ßx"});
            case 4: return link();
            case 5: return case_mix(one({"unsubscribe", "xunsubscribex", "unsub", "unsubscrib", "UNSUBSCRIBE"}));
            case 6: return chars("abcdefghijklmnopqrstuvwxyz0123456789", 1 + pick(8));
            default: return one({"//", ":", "=", "\"", "'", "<a ", ">", "href", "http", "https", "&amp;", "&lt;", "&", ";",
                                "\\", "\t", "www", ".", "www.", "s:", "p:", "<!--", "-->", "<!-->", "ht", "tps",
                                "\r\n", "/\t/", "\f", "href=\"\t", "\x1a", "\x01", "srcset=\"", "srcset", ",",
                                "image-set(", "(", ")", "<", "{", "&quot;", "&#39;", "srcset='", "<style>", "</style>", "style=\"",
                                "imagesrcset=\"", "title='", "&#44;", "&comma; "});
        }
    }

    std::string content_text(const std::vector<std::string>& vocab, std::size_t pieces) {
        std::string out;
        for (std::size_t i = 0; i < pieces; ++i) {
            out += content_piece(vocab);
            out += one({" ", " ", "", "-", "\n", ", ", "!", "\"", "'", "=", "/", "  "});
        }
        return out;
    }
};

::testing::AssertionResult same_hit(bool ref, const detail::text_hit& rh, bool fast, const detail::text_hit& fh) {
    if (ref != fast || (ref && (rh.what != fh.what || rh.offset != fh.offset))) {
        return ::testing::AssertionFailure() << "reference " << ref << " (" << rh.what << " @" << rh.offset << "), fast "
                                             << fast << " (" << fh.what << " @" << fh.offset << ")";
    }
    return ::testing::AssertionSuccess();
}

// Samples of each kind of fold in the two-byte case-folding tables (checked in full against
// Python's str.casefold() when they were written out), and the Greek accents it drops.
TEST(GuardFastPaths, TwoByteCaseFolding) {
    const std::pair<char32_t, char32_t> folds[] = {
        {0xC9, 0xE9}, {0xDE, 0xFE}, {0xD7, 0xD7}, {0xDF, 0xDF}, {0xE9, 0xE9}, {0xB5, 0x3BC},  // É Þ × ß é µ
        {0x100, 0x101}, {0x101, 0x101}, {0x139, 0x13A}, {0x130, 0x130}, {0x178, 0xFF}, {0x17F, 0x17F},  // Ā ā Ĺ İ Ÿ ſ
        {0x1C4, 0x1C6}, {0x1C5, 0x1C6}, {0x218, 0x219}, {0x243, 0x180},  // Ǆ ǅ Ș Ƀ
        {0x391, 0x3B1}, {0x3A2, 0x3A2}, {0x3C2, 0x3C3}, {0x3F4, 0x3B8}, {0x345, 0x345},  // Α (unassigned) ς ϴ ͅ
        {0x389, 0x3B7}, {0x3AE, 0x3B7}, {0x390, 0x3B9}, {0x3AA, 0x3B9}, {0x3CE, 0x3C9},  // Greek accents: Ή ή ΐ Ϊ ώ
        {0x401, 0x451}, {0x410, 0x430}, {0x42F, 0x44F}, {0x490, 0x491}, {0x4C0, 0x4CF}, {0x52E, 0x52F},  // Ё А Я Ґ Ӏ Ԯ
        {0x531, 0x561}, {0x556, 0x586}, {0x557, 0x557}, {0x7FF, 0x7FF}, {0x80, 0x80}};  // Ա Ֆ
    for (const auto& [from, to] : folds) {
        EXPECT_EQ(detail::fold_two_byte(from), to) << std::hex << static_cast<std::uint32_t>(from);
    }
    EXPECT_EQ(detail::fold_case("DÉSABONNER ОТПИСАТЬСЯ Ά"), "désabonner отписаться α");
    EXPECT_EQ(detail::fold_case("\xC3"), "\xC3");  // a lead byte alone is kept
}

TEST(GuardFastPaths, SimdClassesMatchTheByteTables) {
    std::string all;
    for (int c = 0; c < 256; ++c) {
        all += static_cast<char>(c);
    }
    EXPECT_EQ(detail::classification_mismatch(all), "");
    text_gen gen{7};
    for (int i = 0; i < 200; ++i) {
        EXPECT_EQ(detail::classification_mismatch(gen.chars(all, gen.pick(300))), "");
    }
}

TEST(GuardFastPaths, PiiScanAgreesWithTheWordByWordReference) {
    text_gen gen{20261128};
    int hits = 0;
    for (int i = 0; i < 6000; ++i) {
        // Mostly short texts (every block-edge case), some over the 2 KiB classification chunk.
        const std::string text = gen.pii_text(i % 50 == 0 ? 200 + gen.pick(200) : 1 + gen.pick(24));
        const auto kinds = static_cast<std::uint8_t>(i % 3 == 0 ? 15 : 1 + gen.pick(15));
        detail::text_hit rh;
        detail::text_hit fh;
        const bool ref = detail::scan_pii_reference(kinds, text, &rh);
        const bool fast = detail::scan_pii(kinds, text, &fh);
        ASSERT_TRUE(same_hit(ref, rh, fast, fh)) << "kinds " << int{kinds} << " text: " << text;
        hits += ref;
    }
    EXPECT_GT(hits, 600) << "the generator should find something often";
    EXPECT_LT(hits, 5400) << "and miss often";
}

TEST(GuardFastPaths, PiiScanAgreesOnDenseDigitRuns) {
    // Runs of digit groups across block edges: the chain filter must keep every group a card
    // or an SSN could be made of.
    text_gen gen{99};
    for (int i = 0; i < 3000; ++i) {
        std::string text = gen.chars("abc ", gen.pick(70));
        for (std::size_t g = 0, n = 1 + gen.pick(12); g < n; ++g) {
            text += gen.pick(5) == 0 ? gen.card_number(13 + gen.pick(7)) : gen.digits(1 + gen.pick(5));
            text += gen.one({" ", "-", " ", "  ", "x", "- ", "", "\n", "\t", " \r\n", "\n\n"});
        }
        text += gen.chars("0123456789 -", gen.pick(30));
        for (const std::uint8_t kinds : {1, 2, 3}) {
            detail::text_hit rh;
            detail::text_hit fh;
            const bool ref = detail::scan_pii_reference(kinds, text, &rh);
            ASSERT_TRUE(same_hit(ref, rh, detail::scan_pii(kinds, text, &fh), fh)) << int{kinds} << " " << text;
        }
    }
}

content_guard random_content_guard(text_gen& gen, const std::vector<std::string>& vocab) {
    content_guard g;
    std::string err;
    for (std::size_t i = 0, n = gen.pick(7); i < n; ++i) {
        std::string term;
        for (std::size_t w = 0, k = 1 + gen.pick(3); w < k; ++w) {
            term += (w ? gen.one({" ", "-", ", "}) : "") + gen.case_mix(vocab[gen.pick(vocab.size())]);
        }
        EXPECT_TRUE(g.terms.add(term, &err)) << err;
    }
    g.terms.build();
    g.check_links = gen.chance(70);
    if (gen.chance(80)) {
        g.link_domains.add("example.com");
    }
    if (gen.chance(50)) {
        g.link_domains.add("*.partner.io");
    }
    return g;
}

TEST(GuardFastPaths, ContentScanAgreesWithTheWordByWordReference) {
    const std::vector<std::string> vocab{"free", "money", "act", "now", "a", "0", "7", "12", "win", "\xc3\xbc" "ber",
                                         "x_y", "spam", "phrase", "href", "http", "unsubscribe", "amp", "lt",
                                         "бесплатно", "рр", "σας", "θ", "ǆ", "xü", "Überweisung", "δωρεάν", "ΐ",
                                         "ß", "ßa", "mass", "Maß", "ssx", "isst", "ißt", "Eßx", "essx", "ssst", "sßt"};
    text_gen gen{4242};
    int hits = 0;
    for (int i = 0; i < 4000; ++i) {
        const content_guard g = random_content_guard(gen, vocab);
        for (int t = 0; t < 4; ++t) {
            const std::string text = gen.content_text(vocab, i % 40 == 0 ? 300 + gen.pick(300) : 1 + gen.pick(20));
            for (const bool unsub_before : {false, true}) {
                bool ru = unsub_before;
                bool fu = unsub_before;
                detail::text_hit rh;
                detail::text_hit fh;
                const bool ref = detail::scan_content_reference(g, text, ru, &rh);
                const bool fast = detail::scan_content(g, text, fu, &fh);
                ASSERT_TRUE(same_hit(ref, rh, fast, fh)) << "text: " << text;
                if (!ref) {
                    ASSERT_EQ(ru, fu) << "unsubscribe, text: " << text;
                }
                hits += ref && !unsub_before;
            }
        }
    }
    EXPECT_GT(hits, 2000);
    EXPECT_LT(hits, 14000);
}

// What a mail client shows once tags are gone (show with tags) is what the guards must find:
// texts built from pieces of terms and numbers, tags that join or break, references and
// invisible characters. Whenever the terms or the PII scan find something in the text as
// shown, find_content / find_pii must find something in the text as written.
TEST(GuardFastPaths, WhatShowsWithoutTagsIsFound) {
    content_guard g;
    std::string err;
    for (const char* term : {"free money", "act now", "winner"}) {
        ASSERT_TRUE(g.terms.add(term, &err)) << err;
    }
    g.terms.build();
    const std::uint8_t kinds = static_cast<std::uint8_t>(pii_kind::card) | static_cast<std::uint8_t>(pii_kind::ssn);
    const char* pieces[] = {"free", "fr", "ee", "money", "mon", "ey", "act", "a", "ct", "now", "n", "ow", "win", "ner",
                            "4111", "41", "11", "1111", "1", "078", "05", "1120", " ", " ", " ", "-", "x", ".",
                            "<b>", "</b>", "<i>", "</i>", "<span class=\"a>b\">", "</span>", "<a href=\"https://example.com\">",
                            "</a>", "<!-- c -->", "<wbr>", "<br>", "</td><td>", "<p>", "</p>", "&nbsp;", "&shy;",
                            "&#8203;", "&amp;", "&#52;", "\xe2\x80\x8b", "</B >", "<3", "<"};
    const char* targets[] = {"free money", "act now", "winner", "4111 1111 1111 1111", "4111111111111111",
                             "078-05-1120", "4111-1111-1111-1111", "FREE  MONEY", "4111 1111  1111 1111",
                             "card: 4111\n1111 1111\t1111", "card 4111 1111 \r\n  1111 1111", "4111 1111\n1111 1111"};
    const char* noise[] = {"<b>", "</b>", "<i>", "</i>", "<span class=\"a>b\">", "</span>", "<!-- c -->", "<wbr>",
                           "<br>", "</td><td>", "</p>", "&nbsp;", "&shy;", "&#8203;", "&amp;", "\xe2\x80\x8b", "</B >",
                           "<3", " ", "x", "<!--->", "<!--a<b \"-->", "<i title=\"a<!--\">", "-->", "\"", "'",
                           "</blockquote>", "x&lt;b \"", "<b title='1<i>'>", "7<u ", "\n", "  ", "\t", "\r\n",
                           "\n<b>\n"};
    text_gen gen{99};
    int shown_hits = 0;
    for (int i = 0; i < 100000; ++i) {
        std::string text;
        for (std::size_t k = 0, n = gen.pick(4); k < n; ++k) {
            text += gen.one(pieces);
        }
        // A term or a number with noise between some of its bytes.
        for (const char* c = gen.one(targets); *c != '\0'; ++c) {
            text += *c;
            while (gen.chance(20)) {
                text += gen.one(noise);
            }
        }
        for (std::size_t k = 0, n = gen.pick(4); k < n; ++k) {
            text += gen.one(pieces);
        }
        std::string shown;
        detail::show(text, shown, true);
        bool ignored = false;
        detail::text_hit h;
        if (detail::scan_content(g, shown, ignored, &h, true)) {
            ++shown_hits;
            bool u = false;
            ASSERT_TRUE(detail::find_content(g, text, u, &h)) << "text: " << text << "\nshown: " << shown;
        }
        if (detail::scan_pii(kinds, shown, &h)) {
            ++shown_hits;
            ASSERT_TRUE(detail::find_pii(kinds, text, &h)) << "text: " << text << "\nshown: " << shown;
        }
    }
    EXPECT_GT(shown_hits, 8000);
}

// Typographic quotes, apostrophes, full-width punctuation and pictographs end a word as
// their ASCII kin do, though their bytes are not ASCII: a term or a card number in curly
// quotes is found, and a term written with either apostrophe matches text with the other.
TEST(GuardContent, TypographicPunctuationEndsWords) {
    content_guard g;
    std::string err;
    ASSERT_TRUE(g.terms.add("free money", &err)) << err;
    ASSERT_TRUE(g.terms.add("don\xe2\x80\x99t miss", &err)) << err;  // don’t miss
    g.terms.build();
    for (const std::string text : {"Get \xe2\x80\x9c" "free money\xe2\x80\x9d today",  // “free money”
                                   "\xf0\x9f\x94\xa5" "Free money",                      // 🔥Free money
                                   "\xc2\xa1" "Free money!",                               // ¡Free money!
                                   "Free money\xe2\x84\xa2 now",                            // Free money™
                                   "Free money\xc2\xae",                                     // Free money®
                                   "\xc2\xa9" "Free money",                                  // ©Free money
                                   "\xe2\x82\xac" "Free money",                             // €Free money
                                   "Don't miss it", "Don\xe2\x80\x99t miss it"}) {
        detail::text_hit hit;
        bool unsubscribe = false;
        EXPECT_TRUE(detail::find_content(g, text, unsubscribe, &hit)) << text;
    }
    detail::text_hit hit;
    bool unsubscribe = false;
    EXPECT_FALSE(detail::find_content(g, "\xe2\x80\x9c" "freedom money\xe2\x80\x9d", unsubscribe, &hit));
    const auto card = static_cast<std::uint8_t>(pii_kind::card);
    EXPECT_TRUE(detail::find_pii(card, "Card \xe2\x80\x9c" "4111 1111 1111 1111\xe2\x80\x9d", &hit));
    EXPECT_TRUE(detail::find_pii(static_cast<std::uint8_t>(pii_kind::iban), "IBAN\xef\xbc\x9a" "DE89370400440532013000",
                                 &hit));  // IBAN：
    EXPECT_TRUE(detail::find_content(g, "free \xe2\x80\x93 money", unsubscribe, &hit)) << "a spaced en dash";
    EXPECT_TRUE(detail::find_content(g, "free \xe2\x80\x9c money", unsubscribe, &hit)) << "a spaced quote";
    EXPECT_FALSE(detail::hides_characters("5 &#8220; x")) << "a reference touching no word splits none";
}

TEST(GuardFastPaths, TextAsShownDecodesOnlyWhatHides) {
    EXPECT_FALSE(detail::hides_characters("plain text, \xc3\xbc" "ber &amp; &lt;b&gt; &quot;x&quot; &apos; &copy; & #x"));
    EXPECT_FALSE(detail::hides_characters("&#; &#x; &; &nbs; &ZeroWidthSpace &"));
    EXPECT_FALSE(detail::hides_characters("don't &#169; 2026 &#x2122; &#8364; 5 (&#8217;)")) << "plain symbols";
    EXPECT_TRUE(detail::hides_characters("don&#8217;t")) << "inside a word";
    EXPECT_TRUE(detail::hides_characters("AT&ampT")) << "a bare &amp is not read as punctuation by the scanners";
    EXPECT_TRUE(detail::hides_characters("a&nbsp;b"));
    EXPECT_TRUE(detail::hides_characters("a&nbspb")) << "legacy references need no ';'";
    EXPECT_FALSE(detail::hides_characters("a&ndashb")) << "the others do";
    EXPECT_TRUE(detail::hides_characters("&#65"));
    EXPECT_TRUE(detail::hides_characters("&#150;")) << "windows-1252: an en dash";
    EXPECT_TRUE(detail::hides_characters("x\xe2\x80\x8b"));
    EXPECT_TRUE(detail::hides_characters("x\xe2\x80\x8e"));  // left-to-right mark
    EXPECT_FALSE(detail::hides_characters("x\xe2\x80"));      // a cut sequence
    EXPECT_FALSE(detail::hides_characters("\xe2\x82\xac 5"));  // the euro sign apart from words
    EXPECT_FALSE(detail::hides_characters("\xc2\xa9 2026 Example Inc."));
    EXPECT_TRUE(detail::hides_characters("Acme\xc2\xae"));       // Acme®: it ends the word
    EXPECT_TRUE(detail::hides_characters("\xe2\x82\xac" "19"));  // €19

    std::string s;
    const std::string text = "a&amp;b&#52;2\xc2\xa0z\xe2\x80\x8b&shy;y&#x1F600;&#0;&#99999999;\xef\xbc\x91!&#150;&colon;";
    detail::show(text, s);
    EXPECT_EQ(s, "a&b42 zy \xef\xbf\xbd\xef\xbf\xbd" "1!-:") << "a pictograph shows as a space";
    // A byte shown as written maps to itself; one from a replaced character to its start.
    EXPECT_EQ(detail::written_offset(text, 0), 0u);                        // a
    EXPECT_EQ(detail::written_offset(text, 1), text.find("&amp;"));       // &
    EXPECT_EQ(detail::written_offset(text, 2), text.find("b&#52"));       // b
    EXPECT_EQ(detail::written_offset(text, 3), text.find("&#52"));        // 4
    EXPECT_EQ(detail::written_offset(text, 4), text.find("2\xc2"));       // 2
    EXPECT_EQ(detail::written_offset(text, 5), text.find("\xc2\xa0"));    // ' '
    EXPECT_EQ(detail::written_offset(text, 6), text.find("z"));           // z
    EXPECT_EQ(detail::written_offset(text, 7), text.find("y&"));          // y (after two dropped)
    EXPECT_EQ(detail::written_offset(text, 8), text.find("&#x1F600"));    // the emoji, a space
    EXPECT_EQ(detail::written_offset(text, 9), text.find("&#0;"));        // U+FFFD's 3 bytes
    EXPECT_EQ(detail::written_offset(text, 11), text.find("&#0;"));
    EXPECT_EQ(detail::written_offset(text, s.size() - 1), text.find("&colon;"));
    EXPECT_EQ(detail::written_offset(text, s.size()), text.size());
    detail::show("nothing to do", s);
    EXPECT_EQ(s, "nothing to do");
    // Tags: inline elements join, others break, comments vanish; a '<' that starts no tag is
    // text.
    const std::string html = "<p>fr<B>ee</B>&nbsp;mo<!-- - -->ney</p><td>x</td> a < b <3 </ 4 <b";
    detail::show(html, s, true);
    EXPECT_EQ(s, "\ffree money\f\fx\f a < b <3 </ 4 ") << "a tag left open takes the rest";
    EXPECT_EQ(detail::written_offset(html, 0, true), 0u);
    EXPECT_EQ(detail::written_offset(html, 1, true), html.find("fr"));
    EXPECT_EQ(detail::written_offset(html, 3, true), html.find("ee"));
    EXPECT_EQ(detail::written_offset(html, 5, true), html.find("&nbsp;"));
    EXPECT_EQ(detail::written_offset(html, 8, true), html.find("ney"));
    detail::show(html, s, false);
    EXPECT_EQ(s, "<p>fr<B>ee</B> mo<!-- - -->ney</p><td>x</td> a < b <3 </ 4 <b");
    // Empty comments; a '>' in a quoted attribute value; a value left open takes the rest.
    detail::show("a<!-->b-->c<!--->d", s, true);
    EXPECT_EQ(s, "ab-->cd");
    detail::show("free <a title='x>y' href=\"a>b\">money</a>", s, true);
    EXPECT_EQ(s, "free money");
    detail::show("x<img alt=\"y z", s, true);
    EXPECT_EQ(s, "x\f");

    // Random mixes: the shown text is never longer, and every shown byte maps to a written
    // place whose shown prefix is no longer than it (the same byte when shown as written).
    const std::vector<std::string> pieces{"&nbsp;", "&amp;", "&#52;", "\xc2\xa0", "\xe2\x80\x8b", "a", "4", " ", "&",
                                          "&#", "\xc3\xbc", "&#x1F600;", "&lrm;", "\xef\xbc\x91", "&#150", "&nbsp", ";",
                                          "<b>", "</span>", "<p class='x'>", "<!-- c -->", "<", ">", "<!--", "-->", "</"};
    std::mt19937 rng{5};
    for (int i = 0; i < 4000; ++i) {
        const bool tags = i % 2 == 1;
        std::string t;
        for (std::size_t k = 0, n = rng() % 40; k < n; ++k) {
            t += pieces[rng() % pieces.size()];
        }
        detail::show(t, s, tags);
        ASSERT_LE(s.size(), t.size()) << t;
        std::size_t last = 0;
        for (std::size_t k = 0; k < s.size(); ++k) {
            const std::size_t w = detail::written_offset(t, k, tags);
            ASSERT_LT(w, t.size()) << t;
            ASSERT_GE(w, last) << t;
            last = w;
            std::string prefix;
            detail::show(std::string_view{t}.substr(0, w), prefix, tags);
            ASSERT_LE(prefix.size(), k) << t << " at " << k;
            if (prefix.size() == k && t[w] != '&' && t[w] != '<' && static_cast<unsigned char>(t[w]) < 0x80) {
                ASSERT_EQ(s[k], t[w]) << t << " at " << k;
            }
        }
    }
    // Linear, and cheap on what is no reference (the test has the ctest timeout).
    EXPECT_FALSE(detail::hides_characters(std::string(4 << 20, '&')));
    EXPECT_FALSE(detail::hides_characters(std::string(4 << 20, '#').insert(0, "&")));
    std::string many;
    while (many.size() < (4 << 20)) {
        many += "&#000000000000000000000000000000000000;&a&Negative&";
    }
    detail::show(many, s);
    EXPECT_LE(s.size(), many.size());
    detail::show(std::string(4 << 20, '<'), s, true);
    EXPECT_EQ(s.size(), std::size_t{4} << 20);
    std::string tags_only;
    while (tags_only.size() < (4 << 20)) {
        tags_only += "<a <!-- <b ";
    }
    detail::show(tags_only + ">", s, true);
    EXPECT_LE(s.size(), tags_only.size());
    detail::show(std::string(4 << 20, '<').insert(0, "<a x=\"\" "), s, true);
    EXPECT_EQ(s, "") << "a tag left open takes the rest";
    // A partial match followed by many `&amp;`: the tag check between words stays linear.
    content_guard g;
    std::string err;
    ASSERT_TRUE(g.terms.add("free money", &err));
    g.terms.build();
    std::string amps = "free";
    while (amps.size() < (4 << 20)) {
        amps += "&amp;";
    }
    detail::text_hit hit;
    bool unsubscribe = false;
    EXPECT_FALSE(detail::find_content(g, amps + " x", unsubscribe, &hit));
    // Many '<' after a word or a digit inside one quoted attribute value left open: each would
    // read the rest of the text as its tag; the tags a check read are not read again.
    for (const char* unit : {"x<b '", "1<b '", "1 <b '", "x</b '"}) {
        std::string open_values;
        while (open_values.size() < (4 << 20)) {
            open_values += unit;
        }
        EXPECT_FALSE(detail::find_content(g, open_values, unsubscribe, &hit)) << unit;
        EXPECT_FALSE(detail::find_pii(static_cast<std::uint8_t>(pii_kind::card), open_values, &hit)) << unit;
    }
}

TEST(GuardFastPaths, SuppressionDigestsAgreeWithOpenSsl) {
    // Listed by their SHA-256 (via sha256_hex), looked up by address (the list's own digest of
    // the lower-cased address): every length from 1 to 320 (1 to 6 SHA-256 blocks).
    text_gen gen{77};
    std::vector<std::string> listed;
    std::string file;
    for (std::size_t n = 1; n <= 320; ++n) {
        std::string a = gen.chars("abcdefghijklmnopqrstuvwxyz0123456789.+-_", n);
        a[gen.pick(n)] = '@';
        listed.push_back(a);
        file += sha256_hex(a) + "\n";
    }
    std::string err;
    const auto list = suppression_list::parse(file, 1000, &err);
    ASSERT_TRUE(list.has_value()) << err;
    EXPECT_EQ(list->size(), 320u);
    for (const auto& a : listed) {
        EXPECT_TRUE(list->contains(a)) << a.size();
        std::string upper = a;
        for (auto& c : upper) {
            c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        }
        EXPECT_TRUE(list->contains(upper)) << "case-insensitive, " << a.size();
        EXPECT_FALSE(list->contains(a + "x")) << a.size();
    }
    // Two at a time (first_of): every pairing of one- and multi-block addresses, listed or not.
    std::vector<std::string> pool;
    std::vector<bool> in_list;
    for (std::size_t n : {1, 20, 55, 56, 63, 64, 119, 120, 200, 320}) {
        pool.push_back(listed[n - 1]);
        in_list.push_back(true);
        pool.push_back(listed[n - 1] + "z");
        in_list.push_back(false);
    }
    for (int round = 0; round < 2000; ++round) {
        std::vector<std::string_view> batch;
        std::size_t want = std::string::npos;
        for (std::size_t i = 0, n = gen.pick(7); i < n; ++i) {
            const std::size_t k = gen.pick(pool.size());
            if (in_list[k] && want == std::string::npos) {
                want = batch.size();
            }
            batch.push_back(pool[k]);
        }
        EXPECT_EQ(list->first_of(batch), want == std::string::npos ? batch.size() : want);
    }
    // And listed by address: the same digest whichever implementation computes it.
    const auto by_address = suppression_list::parse("Jane.Doe@Example.com\n", 10, &err);
    ASSERT_TRUE(by_address.has_value());
    EXPECT_TRUE(by_address->contains("jane.doe@example.com"));
}

// Every address line of a suppression file is spelled as the guard spells a recipient
// before hashing it, so each can match; what is still no address is refused with its line,
// never loaded as an entry nobody matches.
TEST(GuardRecipients, SuppressionLinesAreSpelledAsRecipientsAreAndBadOnesRefused) {
    std::string err;
    const auto list = suppression_list::parse("\xEF\xBB\xBFjane@example.com\r\n"   // a BOM (Excel's CSV UTF-8)
                                              "\"bob@example.com\"\r\n"              // a quoted CSV cell
                                              "ann@example.com.\n"                   // the root's dot
                                              "\"Carl\"@Example.COM\n"              // a quoted local part
                                              "Dee <dee@example.com>\n"              // a display name
                                              "mailto:eve@example.com\n"             // a link
                                              "fay@example.com\xC2\xA0\n"            // a no-break space
                                              "  gus@example.com (old)  # gone\n",  // a comment
                                              100, &err);
    ASSERT_TRUE(list.has_value()) << err;
    EXPECT_EQ(list->size(), 8u);
    for (const char* a : {"jane@example.com", "bob@example.com", "ann@example.com", "carl@example.com",
                          "dee@example.com", "eve@example.com", "fay@example.com", "gus@example.com"}) {
        EXPECT_TRUE(list->contains(a)) << a;
    }
    const std::pair<std::string, std::string> bad[] = {
        {"ok@example.com\nbob@\n", "line 2: not an email address (nothing before or after the @)"},
        {"@example.com\n", "line 1: not an email address (nothing before or after the @)"},
        {"a@x.com b@y.com\n", "line 1: not an email address (a blank, control character or separator)"},
        {"a@x.com;b@y.com\n", "line 1: not an email address (a blank, control character or separator)"},
        {"a@x.com\rb@y.com\rc@z.com\r", "line 1: not an email address (a blank, control character or separator)"},
        {"a@x..com\n", "line 1: not an email address (an empty label in the domain)"},
        {std::string{"\xFF\xFE" "a\0@\0x\0.\0c\0o\0m\0", 16}, "the file is UTF-16 or holds NUL bytes"},
    };
    for (const auto& [text, says] : bad) {
        EXPECT_FALSE(suppression_list::parse(text, 100, &err)) << text;
        EXPECT_EQ(err.rfind(says, 0), 0u) << err;
    }
}

TEST(GuardFastPaths, NormalizedAddressesAreTrimmedAndLowerCased) {
    std::string out;
    std::string all;
    for (int c = 1; c < 256; ++c) {
        all += static_cast<char>(c);
    }
    detail::normalize_address(all, out);
    std::string want;
    for (const char c : all.substr(all.rfind('<') + 1, all.find('>', all.rfind('<')) - all.rfind('<') - 1)) {
        want += static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    EXPECT_EQ(out, want);
    detail::normalize_address(R"( "Jane Doe" <Jane.Doe@Example.COM> )", out);
    EXPECT_EQ(out, "jane.doe@example.com");
    // The domain's letters beyond ASCII too, as a mail library maps an internationalized
    // domain (rules/idna.hpp); a local part's only in ASCII.
    detail::normalize_address("  \"ABCDEFGHIJKLMNOPQRSTUVWXYZ@ÀBC.com\" ", out);
    EXPECT_EQ(out, "abcdefghijklmnopqrstuvwxyz@àbc.com");
    detail::normalize_address("ÀNN@ÀBC.com", out);
    EXPECT_EQ(out, "Ànn@àbc.com");
    // A quoted local part unquoted, the root's trailing dot dropped.
    detail::normalize_address(R"("Jane"@Example.com.)", out);
    EXPECT_EQ(out, "jane@example.com");
    detail::normalize_address(R"(<"ja\ne doe"@x.com>)", out);
    EXPECT_EQ(out, "jane doe@x.com");
    detail::normalize_address("Jane \t@ Example .\r\ncom", out);
    EXPECT_EQ(out, "jane@example.com");
    detail::normalize_address("no-at-sign.", out);
    EXPECT_EQ(out, "no-at-sign.");
    // Angle brackets inside a quoted local part are the local part's: the mailbox is at
    // evil.net (RFC 5322 quoted-string), not the address they enclose.
    detail::normalize_address(R"("<ceo@example.com>"@Evil.net)", out);
    EXPECT_EQ(out.substr(out.rfind('@')), "@evil.net");
    detail::normalize_address(R"("Jane \"<x>\"" <Jane@Example.com>)", out);
    EXPECT_EQ(out, "jane@example.com");
    // Never cut: a cut could end in an allowed domain the upstream does not see.
    detail::normalize_address(std::string(303, 'A') + "@News.Example.com.evil.tld", out);
    EXPECT_EQ(out, std::string(303, 'a') + "@news.example.com.evil.tld");
}

// normalize_address only lower-cases an address with nothing for its general path to take
// off; on anything else (a display name, comment, quote, blank, control byte, root dot) it
// must give what the general path gives. Random addresses over an alphabet that holds
// every byte the fast path looks for, and lengths across its 16-byte steps.
TEST(GuardFastPaths, PlainAddressPathAgreesWithTheGeneralOne) {
    text_gen gen{11};
    const std::string alphabet = std::string{"aZ09.@-_+\"\\<>() \t\r\n\x01\x7f\xc3\xa9Q"} + '\0';
    std::string fast;
    std::string general;
    int plain = 0;
    for (int round = 0; round < 20000; ++round) {
        std::string a = gen.chars("abcXYZ019.-_+", gen.pick(40)) + "@" + gen.chars("exampleEXAMPLE.com", 1 + gen.pick(30));
        for (std::size_t k = gen.pick(3); k > 0; --k) {
            if (gen.chance(70)) {
                a[gen.pick(a.size())] = alphabet[gen.pick(alphabet.size())];
            }
        }
        detail::normalize_address(a, fast);
        detail::normalize_address_general(a, general);
        ASSERT_EQ(fast, general) << a;
        plain += a.find_first_of(std::string{"\"<>()\\ \t\r\n\x01\x7f"} + '\0') == std::string::npos;
    }
    EXPECT_GT(plain, 5000) << "the fast path is taken";
}

TEST(GuardFastPaths, DomainSetAgreesWithASuffixScan) {
    text_gen gen{5};
    for (int round = 0; round < 200; ++round) {
        domain_set d;
        std::set<std::string> ref;
        auto label = [&] { return gen.chars("abcxyz", 1 + gen.pick(3)); };
        for (std::size_t i = 0, n = gen.pick(40); i < n; ++i) {
            std::string dom = label();
            for (std::size_t k = 0, m = gen.pick(3); k < m; ++k) {
                dom += "." + label();
            }
            d.add(gen.case_mix(dom));
            ref.insert(dom);
        }
        EXPECT_EQ(d.size(), ref.size());
        for (int q = 0; q < 100; ++q) {
            std::string host = label();
            for (std::size_t k = 0, m = gen.pick(4); k < m; ++k) {
                host += "." + label();
            }
            bool want = false;
            for (std::string_view h = host;;) {
                want = want || ref.count(std::string{h}) > 0;
                const auto dot = h.find('.');
                if (dot == std::string_view::npos) {
                    break;
                }
                h.remove_prefix(dot + 1);
            }
            EXPECT_EQ(d.contains(gen.case_mix(host)), want) << host;
        }
    }
}

TEST(GuardFastPaths, TermMatcherPairFiltersKeepEveryTermWord) {
    term_matcher m;
    std::string err;
    ASSERT_TRUE(m.add("Free money", &err));
    ASSERT_TRUE(m.add("7 wonders", &err));
    ASSERT_TRUE(m.add("\xc3\xbc" "ber x", &err));
    m.build();
    auto pair = [](std::string_view w) {
        return static_cast<unsigned char>(w[0]) | (w.size() > 1 ? static_cast<unsigned>(static_cast<unsigned char>(w[1])) << 8 : 0u);
    };
    for (const char* w : {"free", "FREE", "fRee", "7 ", "7", "\xc3\xbc" "ber"}) {
        EXPECT_TRUE(m.maybe_term_start(pair(w))) << w;
    }
    for (const char* w : {"money", "MOney", "wonders", "x", "X!"}) {
        EXPECT_FALSE(m.maybe_term_start(pair(w))) << w << ": not a first word";
        EXPECT_TRUE(m.maybe_word_start(pair(w))) << w;
    }
    for (const char* w : {"fx", "77", "7a", "mi", "y"}) {
        EXPECT_FALSE(m.maybe_word_start(pair(w))) << w;
    }
}

TEST(GuardFastPaths, PathIndexHeadIsTheZeroPaddedPrefix) {
    const std::string text = "abcdefghijk";
    for (std::size_t n = 0; n <= text.size(); ++n) {
        std::uint64_t want = 0;
        std::memcpy(&want, text.data(), std::min<std::size_t>(n, 8));
        EXPECT_EQ(path_index::head_of(std::string_view{text}.substr(0, n)), want) << n;
    }
}

TEST(GuardFastPaths, PathTrackingAgreesWithFullPathMatching) {
    text_gen gen{31};
    // Keys in other cases and with the letters Go folds to ASCII (U+017F, U+212A, U+0130):
    // names match them as json_key::matches does, on the fast path and the reference alike.
    const char* const keys[] = {"a", "b", "to", "cc", "email", "x y", "\u00e9", "personalizations", "A", "To", "EMAIL",
                                "PERSONALIZATIONS", "per\u017fonalizations", "\u212a", "k", "\u0130", "i",
                                "\u00c9"};
    std::function<std::string(int)> value = [&](int depth) -> std::string {
        const auto kind = depth > 5 ? 3 : depth == 0 ? gen.pick(3) : gen.pick(5);
        if (kind == 0 || kind == 1) {
            std::string out = "{";
            for (std::size_t i = 0, n = gen.pick(4); i < n; ++i) {
                out += std::string{i ? "," : ""} + "\"" + gen.one(keys) + "\":" + value(depth + 1);
            }
            return out + "}";
        }
        if (kind == 2) {
            std::string out = "[";
            for (std::size_t i = 0, n = gen.pick(4); i < n; ++i) {
                out += std::string{i ? "," : ""} + value(depth + 1);
            }
            return out + "]";
        }
        return gen.one({"\"s\"", "1", "true", "null", "\"x@y.z\""});
    };
    const char* const paths[] = {"$", "$.a", "$.a[*]", "$.a[0].b", "$['to','cc'][*].email", "$.b[1]", "$[*]", "$[0]",
                                 "$.a.b.a", "$.personalizations[*]['to','cc'][*].email", "$.a[*].b[*]", "$['x y']",
                                 "$.K[*]", "$.I", "$['\u00e9']"};
    std::size_t matched = 0;
    std::size_t shared = 0;
    for (int i = 0; i < 2000; ++i) {
        std::vector<guard_field> fields;
        for (std::size_t k = 0, n = 1 + gen.pick(5); k < n; ++k) {
            std::string err;
            guard_field f;
            f.text = gen.one(paths);
            auto p = parse_json_path(f.text, &err);
            ASSERT_TRUE(p.has_value()) << f.text << ": " << err;
            f.path = std::move(*p);
            fields.push_back(std::move(f));
        }
        if (gen.chance(20)) {
            guard_field form;
            form.form = true;
            form.name = "a";
            fields.insert(fields.begin() + static_cast<std::ptrdiff_t>(gen.pick(fields.size() + 1)), form);
        }
        const std::string doc = value(0);
        ASSERT_EQ(detail::path_tracking_mismatch(doc, fields, &matched), "") << doc;
        // The same paths split between guards whose paths the shared parse classifies at once
        // (and, with more than 64 between them, some that follow their own).
        std::vector<std::vector<guard_field>> guards(1 + gen.pick(4));
        for (auto& f : fields) {
            guards[gen.pick(guards.size())].push_back(f);
        }
        if (gen.chance(10)) {
            for (int k = 0; k < 70; ++k) {
                guards.back().push_back(fields[0]);
            }
        }
        ASSERT_EQ(detail::shared_tracking_mismatch(doc, guards, &shared), "") << doc;
    }
    EXPECT_GT(matched, 2000u) << "values under a path";
    EXPECT_GT(shared, 2000u) << "guards reading the shared classification";
}

// json_key::matches against its definition, fold(key) == name, over keys of every length up
// to 20 (the 9-15 byte ones take the overlapping eight-byte tail compare on the guard path).
TEST(GuardFastPaths, KeyMatchingAgreesWithFolding) {
    text_gen gen{77};
    const char* const pieces[] = {"a", "B", "s", "S", "k", "K", "i", "I", "_", "\xC5\xBF", "\xE2\x84\xAA", "\xC4\xB0",
                                  "\xC4\xB1", "\xC3\xA9", "-", "0"};
    std::size_t matched = 0;
    for (int n = 0; n < 20000; ++n) {
        std::string key;
        for (std::size_t len = gen.pick(16); key.size() < len;) {
            key += gen.one(pieces);
        }
        const std::string name = bb::json_key::fold(gen.chance(50) ? key : std::string{gen.one(pieces)} + key);
        const bool want = bb::json_key::fold(key) == name;
        ASSERT_EQ(bb::json_key::matches(key, name), want) << key << " / " << name;
        ASSERT_EQ(bb::json_key::equal_fold(key, name), want) << key << " / " << name;
        if (bb::json_key::is_ascii(key) && key.size() >= 8 && key.size() == name.size()) {
            ASSERT_EQ(bb::json_key::ascii_matches_long(key, name), want) << key << " / " << name;
        }
        matched += want;
    }
    EXPECT_GT(matched, 5000u);
}

TEST(GuardFastPaths, MoreThan64PathsAreMatchedAsTheyAre) {
    // A duplicates guard may have 3 x 32 fields: over the 64 the path index tracks at once.
    auto list = [](std::string_view real, int dummies) {
        std::string out = "[\"" + std::string{real} + "\"";
        for (int i = 0; i < dummies; ++i) {
            out += ", \"$.x" + std::to_string(i) + ".y\"";
        }
        return out + "]";
    };
    fixture f{dup_rule(R"j({"max": 1, "window": "1h", "of": ["recipient", "subject", "template"],
                            "recipient_fields": )j" + list("$.to[*]", 31) + R"j(, "subject_fields": )j" +
                       list("$.subject", 31) + R"j(, "template_fields": )j" + list("$.t", 31) + "}")};
    const std::string body = R"j({"to": ["a@example.com"], "subject": "S", "t": "T", "x3": {"y": "z"}})j";
    EXPECT_TRUE(f.check_body(body).allowed());
    EXPECT_THAT(f.check_body(body).reason, HasSubstr("recipient #0 a***@example.com with the same subject and template"));
    std::vector<guard_field> many;
    for (int i = 0; i < 70; ++i) {
        std::string err;
        guard_field g;
        g.text = "$.a[" + std::to_string(i % 3) + "].b";
        g.path = *parse_json_path(g.text, &err);
        many.push_back(std::move(g));
    }
    std::size_t under = 0;
    EXPECT_EQ(detail::path_tracking_mismatch(R"j({"a": [{"b": 1}, {"b": [2]}, {"c": 3}]})j", many, &under), "");
    EXPECT_EQ(under, 3u);
}

TEST(GuardRecipients, TheFirstRefusedRecipientIsReportedWhateverTheReason) {
    const std::string path = temp_file("first.txt", "ann@example.com\n");
    fixture f{recipients_rule(R"j({"block_domains": ["competitor.com"], "suppression_file": ")j" + path + R"j("})j")};
    EXPECT_THAT(f.check_body(sendgrid_to({"bob@example.com", "ann@example.com", "x@competitor.com"})).reason,
                HasSubstr("suppressed recipient #1 a***@example.com"));
    EXPECT_THAT(f.check_body(sendgrid_to({"x@competitor.com", "ann@example.com"})).reason,
                HasSubstr("recipient domain blocked #0 x***@competitor.com"));
    // The same domain again and again (the per-request memo) and another one after it.
    EXPECT_THAT(f.check_body(sendgrid_to({"a@example.com", "b@example.com", "c@example.com", "d@COMPETITOR.com"})).reason,
                HasSubstr("recipient domain blocked #3 d***@competitor.com"));
}

// The body parsed once per request and shared by the guard rules.

TEST(GuardSharedBody, OffsetsThroughRandomEscapesMatchTheRawBody) {
    fixture f{pii_rule(R"j({"pii": ["card"]})j") + "," + content_rule(R"j({"blocked_terms": ["zz top"]})j")};
    text_gen gen{11};
    const char* const escapes[] = {R"(\")", R"(\\)", R"(\/)", R"(\n)", R"(\t)", R"(\u00e9)", R"(\ud83d\ude00)",
                                   R"(\u0041)", "\xc3\xa9", "abc ", "<p>", R"(\uD800)", " "};
    for (int i = 0; i < 300; ++i) {
        std::string before;
        std::string after;
        for (std::size_t k = 0, n = gen.pick(60); k < n; ++k) {
            before += gen.one(escapes);
        }
        for (std::size_t k = 0, n = gen.pick(60); k < n; ++k) {
            after += gen.one(escapes);
        }
        const bool card = gen.chance(50);
        const std::string needle = card ? "4111 1111 1111 1111" : "ZZ\\n top";
        const std::string body = sendgrid(before + " " + needle + " " + after);
        const auto d = f.check_body(body);
        ASSERT_EQ(d.outcome, verdict::violated) << body;
        const auto at = body.find(needle);
        EXPECT_THAT(d.reason, HasSubstr("at body offset " + std::to_string(at) + " ($.content[1].value)")) << body;
    }
}

// JSON string decoding as RFC 8259 says, written the plain way (a lone surrogate becomes
// U+FFFD, as the walker does): the reference the walker's decoder must agree with.
std::string reference_decode(std::string_view raw) {
    auto utf8 = [](unsigned cp, std::string& out) {
        if (cp < 0x80) {
            out += static_cast<char>(cp);
        } else if (cp < 0x800) {
            out += static_cast<char>(0xC0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (cp >> 18));
            out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        }
    };
    auto hex = [&](std::size_t at) { return static_cast<unsigned>(std::stoul(std::string{raw.substr(at, 4)}, nullptr, 16)); };
    std::string out;
    for (std::size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] != '\\') {
            out += raw[i];
            continue;
        }
        const char e = raw[++i];
        switch (e) {
            case 'b': out += '\b'; break;
            case 'f': out += '\f'; break;
            case 'n': out += '\n'; break;
            case 'r': out += '\r'; break;
            case 't': out += '\t'; break;
            case 'u': {
                unsigned cp = hex(i + 1);
                i += 4;
                if (cp >= 0xD800 && cp < 0xDC00 && raw.substr(i + 1, 2) == "\\u" && hex(i + 3) >= 0xDC00 && hex(i + 3) < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (hex(i + 3) - 0xDC00);
                    i += 6;
                } else if (cp >= 0xD800 && cp < 0xE000) {
                    cp = 0xFFFD;
                }
                utf8(cp, out);
                break;
            }
            default: out += e;  // \" \\ \/
        }
    }
    return out;
}

TEST(GuardSharedBody, LongEscapedStringsDecodeAsTheReferenceDoes) {
    // Short and long strings (past the 16-byte SIMD steps), escapes dense and sparse, at the
    // very start and end of a string, and strings right at the body's end.
    text_gen gen{23};
    const char* const pieces[] = {R"(\")", R"(\\)", R"(\/)", R"(\n)", R"(\t)", R"(\b)", R"(\f)", R"(\r)",
                                  R"(\u00e9)", R"(\ud83d\ude00)", R"(\u0041)", R"(\uD800)", R"(\uDC00x)",
                                  "\xc3\xa9", "abc ", "<p style=", "0123456789abcdef0123456789abcdef", "x", " "};
    for (int round = 0; round < 2000; ++round) {
        std::vector<std::string> raws;
        std::string body = "[";
        for (std::size_t s = 0, strings = 1 + gen.pick(4); s < strings; ++s) {
            std::string raw;
            const std::size_t target = gen.chance(20) ? gen.pick(8) : gen.pick(gen.chance(50) ? 200 : 3000);
            const bool dense = gen.chance(50);
            while (raw.size() < target) {
                raw += dense || gen.chance(10) ? gen.one(pieces) : gen.chars("abcdefghij <>=:;", 1 + gen.pick(90));
            }
            body += (s ? ", \"" : "\"") + raw + "\"";
            raws.push_back(std::move(raw));
        }
        body += gen.chance(50) ? "]" : std::string{", "} + gen.chars("0123456789", 1 + gen.pick(200)) + "]";
        std::vector<std::string> got;
        ASSERT_TRUE(detail::decoded_strings(body, got)) << body;
        ASSERT_EQ(got.size(), raws.size()) << body;
        for (std::size_t s = 0; s < raws.size(); ++s) {
            ASSERT_EQ(got[s], reference_decode(raws[s])) << "string " << s << " of " << body;
        }
    }
    std::vector<std::string> got;
    // An unterminated string and an invalid escape are invalid JSON wherever they are.
    const std::string filler(300, 'a');
    EXPECT_FALSE(detail::decoded_strings("[\"" + filler + "\\\"" + filler, got));
    EXPECT_FALSE(detail::decoded_strings("[\"" + filler + "\\q" + filler + "\"]", got));
    EXPECT_FALSE(detail::decoded_strings("[\"" + filler + "\\u12" + "\"]", got));
    EXPECT_TRUE(detail::decoded_strings("[\"" + filler + "\\\\\"]", got));
    EXPECT_EQ(got.at(0), filler + "\\");
}

TEST(GuardSharedBody, EveryGuardOfARequestSeesItsOwnBody) {
    // Two requests in the same buffer, same size: the engine resets the shared parse per request.
    fixture f{pii_rule(R"j({"pii": ["card"]})j") + "," + content_rule(R"j({"blocked_terms": ["act now"]})j") + "," +
              recipients_rule(R"j({"allow_domains": ["example.com"]})j")};
    request req;
    req.body = sendgrid_to({"jane@example.com"});
    req.body.replace(req.body.find("Hello"), 5, "4111111111111111");
    EXPECT_THAT(f.check(req).reason, HasSubstr("card number"));
    const auto size = req.body.size();
    req.body.replace(req.body.find("4111111111111111"), 16, "act now, really!");
    EXPECT_THAT(f.check(req).reason, HasSubstr("blocked term #0 (act now)"));
    req.body.replace(req.body.find("act now, really!"), 16, "Nothing to see!!");
    EXPECT_TRUE(f.check(req).allowed()) << f.check(req).reason;
    EXPECT_EQ(req.body.size(), size);
    req.body.replace(req.body.find("jane@example.com"), 16, "jane@example.org");
    EXPECT_THAT(f.check(req).reason, HasSubstr("recipient domain not in allowlist"));
}

TEST(GuardSharedBody, AHugeBodyIsWalkedByEachGuardAndGivesTheSameFindings) {
    // More JSON values than the shared parse records (2^16): each guard walks the body itself.
    fixture f{pii_rule(R"j({"pii": ["card"]})j") + "," + recipients_rule(R"j({"allow_domains": ["example.com"]})j") +
              "," + dup_rule(R"j({"max": 1, "window": "1h"})j")};
    std::string zeros;
    zeros.reserve(160'000);
    for (int i = 0; i < 70'000; ++i) {
        zeros += i ? ",0" : "0";
    }
    const std::string tail = R"j(], "personalizations": [{"to": [{"email": "jane@example.com"}]}], "subject": "Hi",
        "note": "card 4111111111111111"})j";
    const std::string body = R"j({"filler": [)j" + zeros + tail;
    const auto d = f.check_body(body);
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_EQ(d.reason, "rule no-pii (pii-risk, sev1): card number (Luhn-valid, ****1111) at body offset " +
                            std::to_string(body.find("4111")) + " ($.note)");
    std::string clean = body;
    clean.replace(clean.find("4111111111111111"), 16, "nothing at all..");
    EXPECT_TRUE(f.check_body(clean).allowed());
    EXPECT_THAT(f.check_body(clean).reason, HasSubstr("duplicate send")) << "booked once by the first";
    std::string other = clean;
    other.replace(other.find("jane@example.com"), 16, "jane@example.org");
    EXPECT_THAT(f.check_body(other).reason, HasSubstr("recipient domain not in allowlist #0 j***@example.org"));
}

// The four guards with their default fields share one classification of every value (64
// bits, one a path): a guard that does not fit follows its own paths along the body again,
// several percent of the whole cost. A default field added without grouping it with the
// members of its object would push the last guard out.
TEST(GuardFastPaths, TheDefaultGuardsShareOneClassification) {
    simdjson::dom::parser p;
    cfg::errors errs;
    std::vector<std::shared_ptr<guardrail>> owned;
    std::vector<const guardrail*> guards;
    for (const char* g : {R"j({"pii": ["card", "ssn", "iban", "secrets"]})j",
                          R"j({"recipients": {"allow_domains": ["example.com"]}})j",
                          R"j({"content": {"blocked_terms": ["free money"], "require_unsubscribe": true}})j",
                          R"j({"duplicates": {"max": 3, "window": "10m", "of": ["recipient", "subject", "template"]}})j"}) {
        owned.push_back(parse_guard(p.parse(simdjson::padded_string{std::string{g}}).value(), "guard", errs));
        ASSERT_TRUE(errs.empty()) << errs.to_string();
        guards.push_back(owned.back().get());
    }
    const auto shared = guard_paths::of(guards);
    ASSERT_NE(shared, nullptr);
    EXPECT_GE(shared->offsets.size(), 3u) << "recipients, content and duplicates (pii reads every value)";
    EXPECT_GE(shared->offset_of(&owned[3]->duplicates.index), 0) << shared->all.paths.size() << " paths in all";
}

TEST(GuardDuplicates, ManyRecipientsAndPerPersonalizationSubjects) {
    fixture f{dup_rule(R"j({"max": 1, "window": "1h"})j")};
    // 300 personalizations, each with its own subject; r7 in one more with subject 7 (a
    // second mail to r7 with S7: a second send), or with subject 8 (another pair).
    auto body_of = [](int n, int repeat_subject) {
        std::string b = R"j({"personalizations": [)j";
        for (int i = 0; i < n; ++i) {
            b += i ? "," : "";
            b += R"j({"to": [{"email": "r)j" + std::to_string(i) + R"j(@example.com"}], "subject": "S)j" +
                 std::to_string(i) + R"j("})j";
        }
        b += R"j(,{"to": [{"email": "r7@example.com"}], "subject": "S)j" + std::to_string(repeat_subject) + R"j("}],
            "from": {"email": "news@example.com"}, "subject": "fallback"})j";
        return b;
    };
    const auto twice = f.check_body(body_of(300, 7));
    ASSERT_EQ(twice.outcome, verdict::violated) << "two personalizations are two mails to r7 with S7";
    EXPECT_THAT(twice.reason, HasSubstr("recipient #300 r***@example.com with the same subject already sent 1 times"));
    EXPECT_TRUE(f.check_body(body_of(300, 8)).allowed()) << "the refused request booked nothing";
    const auto d = f.check_body(body_of(300, 8));
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_THAT(d.reason, HasSubstr("recipient #0 r***@example.com with the same subject already sent 1 times"));
    // r7 with S8 was booked by the request that went through; r7 with S9 is a new pair.
    EXPECT_FALSE(f.check_body(R"j({"personalizations": [{"to": [{"email": "r7@example.com"}], "subject": "S8"}]})j").allowed());
    EXPECT_TRUE(f.check_body(R"j({"personalizations": [{"to": [{"email": "r7@example.com"}], "subject": "S9"}]})j").allowed());
}

}  // namespace
}  // namespace bb::rules::test
