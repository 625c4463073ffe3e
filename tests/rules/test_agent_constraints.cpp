// Per-agent body constraints: max recipients, allowed from domains, allowed templates, over
// realistic SendGrid, SES v2, HubSpot and Mailgun (form and multipart) bodies.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <string_view>
#include <thread>

#include "rules/agent_constraints.hpp"
#include "rules/form.hpp"
#include "tests/support/base64.hpp"

namespace bb::rules {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr std::string_view json = "application/json";
constexpr std::string_view urlencoded = "application/x-www-form-urlencoded";

body_constraints max(std::uint64_t n) {
    body_constraints c;
    c.max_recipients = n;
    return c;
}

body_constraints domains(std::vector<std::string> d) {
    body_constraints c;
    c.from_domains = std::move(d);
    return c;
}

body_constraints templates(std::vector<std::string> t) {
    body_constraints c;
    c.template_ids = std::move(t);
    return c;
}

// SendGrid v3 /v3/mail/send: 2 personalizations, 2 to + 1 cc + 1 bcc, then 1 to.
const std::string sendgrid = R"j({
  "personalizations": [
    {"to": [{"email": "john.doe@example.com", "name": "John Doe"}, {"email": "julia.doe@example.com"}],
     "cc": [{"email": "jane.doe@example.com"}],
     "bcc": [{"email": "james.doe@example.com"}],
     "subject": "Hello, World!"},
    {"to": [{"email": "alex@example.com"}], "dynamic_template_data": {"first_name": "Alex"}}
  ],
  "from": {"email": "orders@Mail.Example.com", "name": "Example Order Confirmation"},
  "reply_to": {"email": "customer_service@other.example"},
  "template_id": "d-a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
  "content": [{"type": "text/plain", "value": "Heya!"}]
})j";

// SES v2 SendEmail (POST /v2/email/outbound-emails): 2 to + 1 cc + 2 bcc.
const std::string ses_send = R"j({
  "FromEmailAddress": "\"Example Sender\" <sender@example.com>",
  "Destination": {"ToAddresses": ["a@example.com", "b@example.com"], "CcAddresses": ["c@example.com"],
                  "BccAddresses": ["d@example.com", "e@example.com"]},
  "Content": {"Template": {"TemplateName": "welcome-v2", "TemplateData": "{\"name\":\"Ann\"}"}},
  "ConfigurationSetName": "default"
})j";

// SES v2 SendBulkEmail (POST /v2/email/outbound-bulk-emails): 1 + 3 + 1 destinations.
const std::string ses_bulk = R"j({
  "FromEmailAddress": "sender@example.com",
  "DefaultContent": {"Template": {"TemplateName": "MyTemplate", "TemplateData": "{\"name\":\"friend\"}"}},
  "BulkEmailEntries": [
    {"Destination": {"ToAddresses": ["a@example.com"]},
     "ReplacementEmailContent": {"ReplacementTemplate": {"ReplacementTemplateData": "{\"name\":\"Ann\"}"}}},
    {"Destination": {"ToAddresses": ["b@example.com", "c@example.com"], "CcAddresses": ["d@example.com"]}},
    {"Destination": {"BccAddresses": ["e@example.com"]}}
  ]
})j";

// Mailgun POST /v3/<domain>/messages, urlencoded: to holds a list of 2 (one with a quoted
// comma in its name), a second to, cc and bcc: 5 recipients.
const std::string mailgun_form =
    "from=Excited%20User%20%3Cmailgun%40mg.example.com%3E"
    "&to=bar%40example.com%2C%20%22Doe%2C%20Jane%22%20%3Cjane%40example.com%3E"
    "&to=baz%40example.com&cc=carol%40example.com&bcc=dave%40example.com"
    "&subject=Hello&template=order-shipped&t%3Aversion=v2&text=Testing%20some%20Mailgun%20awesomeness%21";

const std::string boundary = "------------------------d74496d66958873e";

std::string multipart_field(std::string_view name, std::string_view value) {
    return "--" + boundary + "\r\nContent-Disposition: form-data; name=\"" + std::string{name} + "\"\r\n\r\n" +
           std::string{value} + "\r\n";
}

// Mailgun multipart: 1 + 2 to, 1 cc; an attachment whose content looks like fields.
std::string mailgun_multipart() {
    return multipart_field("from", "Excited User <mailgun@mg.example.com>") + multipart_field("to", "bar@example.com") +
           multipart_field("to", "YOU@mg.example.com, other@example.com") + multipart_field("cc", "carol@example.com") +
           multipart_field("subject", "Hello") + multipart_field("template", "order-shipped") + "--" + boundary +
           "\r\nContent-Disposition: form-data; name=\"attachment\"; filename=\"a.txt\"\r\n"
           "Content-Type: text/plain\r\n\r\nto=x@evil.example&from=y@evil.example\r\n" +
           "--" + boundary + "--\r\n";
}
const std::string multipart_type = "multipart/form-data; boundary=" + boundary;

// HubSpot single send: to + 1 cc + 2 bcc = 4; emailId is the template.
const std::string hubspot_single = R"j({
  "emailId": 4126643121,
  "message": {"to": "jdoe@example.com", "from": "Marketing <marketing@example.com>",
              "cc": ["boss@example.com"], "bcc": ["audit@example.com", "crm@example.com"], "sendId": "s-1"},
  "contactProperties": {"first_name": "John"},
  "customProperties": {"item_1": "something they bought"}
})j";

// ---------------------------------------------------------------------------------------

TEST(AgentConstraints, EmptyConstraintsPassEverything) {
    const body_constraints none;
    EXPECT_TRUE(none.empty());
    for (const auto& body : {sendgrid, ses_send, ses_bulk, hubspot_single, std::string{"{not json"}}) {
        EXPECT_EQ(check_body_constraints(none, json, body), "");
    }
    EXPECT_EQ(check_body_constraints(none, urlencoded, mailgun_form), "");
    EXPECT_EQ(check_body_constraints(none, "multipart/form-data", "garbage"), "");
}

TEST(AgentConstraints, SendGridRecipientsCountToCcBccAcrossPersonalizations) {
    EXPECT_EQ(check_body_constraints(max(5), json, sendgrid), "");
    const auto why = check_body_constraints(max(4), json, sendgrid);
    EXPECT_EQ(why, "5 recipients in one request; this agent may address at most 4");
    EXPECT_THAT(why, Not(HasSubstr("@")));
}

// A byte order mark before the JSON (Jackson reads past it) hides nothing: with no
// content type, or a text one, the body is still read as the JSON it is.
TEST(AgentConstraints, AByteOrderMarkHidesNothing) {
    const std::string bom = "\xEF\xBB\xBF" + hubspot_single;
    for (const char* type : {"", "text/plain", "application/json"}) {
        EXPECT_EQ(check_body_constraints(max(3), type, bom), "4 recipients in one request; this agent may address at most 3")
            << type;
    }
    // A body that is a BOM alone is no body: the query's fields are read, as for an empty one.
    EXPECT_EQ(check_body_constraints(max(3), "", "\xEF\xBB\xBF", "to=a%40x.io%2Cb%40x.io%2Cc%40x.io%2Cd%40x.io"),
              "4 recipients in one request; this agent may address at most 3");
}

TEST(AgentConstraints, SendGridFromDomainIsExactAndCaseInsensitive) {
    // from is orders@Mail.Example.com; reply_to (other.example) is not the sender.
    EXPECT_EQ(check_body_constraints(domains({"mail.example.com"}), json, sendgrid), "");
    EXPECT_EQ(check_body_constraints(domains({"MAIL.example.com"}), json, sendgrid), "");
    // A parent domain does not cover a sub-domain: exact match only.
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json, sendgrid),
              "from domain \"mail.example.com\" is not allowed for this agent");
}

TEST(AgentConstraints, SendGridPersonalizationFromIsCheckedToo) {
    const std::string body = R"j({"personalizations": [{"to": [{"email": "a@example.com"}]},
        {"to": [{"email": "b@example.com"}], "from": {"email": "ceo@spoofed.example"}}],
        "from": {"email": "news@example.com"}, "subject": "s", "content": [{"type": "text/plain", "value": "x"}]})j";
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json, body),
              "from domain \"spoofed.example\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(domains({"example.com", "spoofed.example"}), json, body), "");
}

TEST(AgentConstraints, SendGridTemplateIds) {
    EXPECT_EQ(check_body_constraints(templates({"d-a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"}), json, sendgrid), "");
    EXPECT_EQ(check_body_constraints(templates({"d-123", "welcome-v2"}), json, sendgrid),
              "template \"d-a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6\" is not allowed for this agent");
    // Template ids are exact (case-sensitive).
    EXPECT_NE(check_body_constraints(templates({"D-A1B2C3D4E5F6A7B8C9D0E1F2A3B4C5D6"}), json, sendgrid), "");
}

TEST(AgentConstraints, AllConstraintsTogether) {
    body_constraints c;
    c.max_recipients = 50;
    c.from_domains = {"example.com", "mail.example.com"};
    c.template_ids = {"d-a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6", "welcome-v2"};
    EXPECT_EQ(check_body_constraints(c, "application/json; charset=utf-8", sendgrid), "");
    EXPECT_EQ(check_body_constraints(c, json, ses_send), "");
    c.max_recipients = 1;
    EXPECT_THAT(check_body_constraints(c, json, ses_send), HasSubstr("5 recipients"));
}

TEST(AgentConstraints, SesSendEmail) {
    EXPECT_EQ(check_body_constraints(max(5), json, ses_send), "");
    EXPECT_THAT(check_body_constraints(max(4), json, ses_send), HasSubstr("5 recipients"));
    // FromEmailAddress with a quoted display name.
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json, ses_send), "");
    EXPECT_EQ(check_body_constraints(domains({"example.org"}), json, ses_send),
              "from domain \"example.com\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(templates({"welcome-v2"}), json, ses_send), "");
    EXPECT_EQ(check_body_constraints(templates({"d-123"}), json, ses_send),
              "template \"welcome-v2\" is not allowed for this agent");
}

// A long from address is judged by its real domain, not by where a length cut would end it.
TEST(AgentConstraints, ALongFromIsJudgedByItsRealDomain) {
    const std::string body = R"({"personalizations":[{"to":[{"email":"a@example.com"}]}],"from":{"email":")" +
                             std::string(303, 'a') + R"(@example.com.evil.tld"},"subject":"x"})";
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json, body),
              "from domain \"example.com.evil.tld\" is not allowed for this agent");
}

// A raw message with a second From, or a Sender: each is a sender some client or relay
// uses, so each is checked (only the first From was).
TEST(AgentConstraints, EveryFromAndSenderOfARawMessageIsChecked) {
    auto raw = [](const char* b64) { return std::string{R"({"Content": {"Raw": {"Data": ")"} + b64 + "\"}}}"; };
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json,
                                     raw("RnJvbTogb2tAZXhhbXBsZS5jb20NCkZyb206IGNlb0BldmlsLmV4YW1wbGUNClRvOiBhQGV4YW1w"
                                         "bGUuY29tDQpTdWJqZWN0OiBIaQ0KDQpCb2R5DQo=")),
              "from domain \"evil.example\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json,
                                     raw("RnJvbTogb2tAZXhhbXBsZS5jb20NClNlbmRlcjogY2VvQGV2aWwuZXhhbXBsZQ0KVG86IGFAZXhh"
                                         "bXBsZS5jb20NClN1YmplY3Q6IEhpDQoNCkJvZHkNCg==")),
              "from domain \"evil.example\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json,
                                     raw("RnJvbTogb2tAZXhhbXBsZS5jb20NClNlbmRlcjogbmV3c0BleGFtcGxlLmNvbQ0KVG86IGFAZXhh"
                                         "bXBsZS5jb20NCg0KQm9keQ0K")),
              "");
}

// A raw message goes to its own headers' recipients, from its own From header.
TEST(AgentConstraints, SesRawMessagesAreReadFromTheirHeaders) {
    for (const std::string body : {
             R"j({"FromEmailAddress": "x@evil.example", "Content": {"Raw": {"Data": "RnJvbTogRXZpbCA8eEBldmlsLmV4YW1wbGU+DQpUbzogYUBleGFtcGxlLmNvbSwgYkBleGFtcGxlLmNvbQ0KQmNjOiBjQGV4YW1wbGUuY29tDQpTdWJqZWN0OiBIaQ0KDQpCb2R5DQo="}}})j",
             R"j({"Content": {"Raw": {"Data": "RnJvbTogeEBldmlsLmV4YW1wbGUNClRvOiBhQGV4YW1wbGUuY29tLCBiQGV4YW1wbGUuY29tDQpCY2M6IGNAZXhhbXBsZS5jb20NCg0KQm9keQ0K"}}})j",
         }) {
        EXPECT_EQ(check_body_constraints(max(2), json, body), "3 recipients in one request; this agent may address at most 2")
            << body;
        EXPECT_EQ(check_body_constraints(domains({"evil.example"}), json, body).find("not allowed"), std::string::npos)
            << body;
        EXPECT_EQ(check_body_constraints(domains({"example.com"}), json, body),
                  "from domain \"evil.example\" is not allowed for this agent")
            << body;
    }
    EXPECT_EQ(check_body_constraints(max(2), json, R"j({"Content": {"Raw": {"Data": "***"}}})j"),
              "a raw MIME message is not base64 or not a message");
    // With a Destination, SES sends to it only: the larger of the two counts, not their sum.
    const std::string raw3 = "RnJvbTogeEBldmlsLmV4YW1wbGUNClRvOiBhQGV4YW1wbGUuY29tLCBiQGV4YW1wbGUuY29tDQpCY2M6IGNAZXhhbXBsZS5jb20NCg0KQm9keQ0K";
    EXPECT_EQ(check_body_constraints(max(3), json, R"j({"Destination": {"ToAddresses": ["a@example.com", "b@example.com"]},
                                                       "Content": {"Raw": {"Data": ")j" + raw3 + "\"}}}"),
              "");
    EXPECT_EQ(check_body_constraints(max(3), json, R"j({"Destination": {"ToAddresses": ["a@x.com", "b@x.com", "c@x.com", "d@x.com"]},
                                                       "Content": {"Raw": {"Data": ")j" + raw3 + "\"}}}"),
              "4 recipients in one request; this agent may address at most 3");
    // Every mailbox of From is checked; a comment makes the recipients unreadable (parsers
    // disagree on what it hides).
    EXPECT_EQ(check_body_constraints(domains({"evil.example"}), json, R"j({"Content": {"Raw": {"Data": "RnJvbTogb2tAZXZpbC5leGFtcGxlLCBvdGhlckBlbHNld2hlcmUuZXhhbXBsZQ0KVG86IGFAZXhhbXBsZS5jb20NCg0KeA0K"}}})j"),
              "from domain \"elsewhere.example\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(max(5), json, R"j({"Content": {"Raw": {"Data": "RnJvbTogeEBldmlsLmV4YW1wbGUNClRvOiBib2JAYS5leGFtcGxlICg8amFuZUBiLmV4YW1wbGU+KQ0KDQp4DQo="}}})j"),
              "a raw MIME message is not base64 or not a message");
}

TEST(AgentConstraints, SesTemplateArnMatchesByArnOrName) {
    const std::string body = R"j({"FromEmailAddress": "sender@example.com",
        "Destination": {"ToAddresses": ["a@example.com"]},
        "Content": {"Template": {"TemplateArn": "arn:aws:ses:us-east-1:123456789012:template/welcome-v2",
                                 "TemplateData": "{}"}}})j";
    EXPECT_EQ(check_body_constraints(templates({"welcome-v2"}), json, body), "");
    EXPECT_EQ(check_body_constraints(templates({"arn:aws:ses:us-east-1:123456789012:template/welcome-v2"}), json, body),
              "");
    EXPECT_EQ(check_body_constraints(templates({"welcome"}), json, body),
              "template \"arn:aws:ses:us-east-1:123456789012:template/welcome-v2\" is not allowed for this agent");
}

TEST(AgentConstraints, SesSendBulkEmail) {
    EXPECT_EQ(check_body_constraints(max(5), json, ses_bulk), "");
    EXPECT_EQ(check_body_constraints(max(3), json, ses_bulk),
              "5 recipients in one request; this agent may address at most 3");
    EXPECT_EQ(check_body_constraints(templates({"MyTemplate"}), json, ses_bulk), "");
    EXPECT_EQ(check_body_constraints(templates({"mytemplate"}), json, ses_bulk),
              "template \"MyTemplate\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json, ses_bulk), "");
}

// An agent held to templates sends only templates: SES Simple content, or a template given
// inline (TemplateContent), is content of its own that no allow list reviewed.
TEST(AgentConstraints, ASendWithoutATemplateIsRefusedToAnAgentHeldToTemplates) {
    const std::string body = R"j({"FromEmailAddress": "sender@example.com",
        "Destination": {"ToAddresses": ["a@example.com"]},
        "Content": {"Simple": {"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "Hello"}}}}})j";
    EXPECT_EQ(check_body_constraints(templates({"welcome-v2"}), json, body),
              "this send carries content of its own (Content.Simple); this agent may send only its templates");
    const std::string in_line = R"j({"Destination": {"ToAddresses": ["a@example.com"]},
        "Content": {"Template": {"TemplateContent": {"Subject": "Hi", "Text": "Hello"}}}})j";
    EXPECT_EQ(check_body_constraints(templates({"welcome-v2"}), json, in_line),
              "this send carries content of its own (Content.Template.TemplateContent); this agent may send only its "
              "templates");
    // A template key SES never reads (SendGrid's template_id) does not excuse SES's own
    // content, nor does an allowed TemplateName beside an inline TemplateContent.
    const std::string foreign = R"j({"Destination": {"ToAddresses": ["a@example.com"]}, "template_id": "welcome-v2",
        "Content": {"Simple": {"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "own text"}}}}})j";
    EXPECT_EQ(check_body_constraints(templates({"welcome-v2"}), json, foreign),
              "this send carries content of its own (Content.Simple); this agent may send only its templates");
    const std::string both = R"j({"Destination": {"ToAddresses": ["a@example.com"]},
        "Content": {"Template": {"TemplateName": "welcome-v2", "TemplateContent": {"Subject": "x", "Html": "own"}}}})j";
    EXPECT_EQ(check_body_constraints(templates({"welcome-v2"}), json, both),
              "this send carries content of its own (Content.Template.TemplateContent); this agent may send only its "
              "templates");
    // SES v1: SendEmail's Message.* is sent as written, whatever Template the form also names;
    // SendTemplatedEmail's TemplateArn is checked as the JSON one is.
    EXPECT_EQ(check_body_constraints(templates({"welcome-v2"}), urlencoded,
                                     "Action=SendEmail&Source=a%40example.com&Destination.ToAddresses.member.1=b%40x.com"
                                     "&Template=welcome-v2&Message.Subject.Data=Hi&Message.Body.Text.Data=own"),
              "this send carries content of its own (Message.Subject.Data); this agent may send only its templates");
    EXPECT_EQ(check_body_constraints(templates({"welcome-v2"}), urlencoded,
                                     "Action=SendTemplatedEmail&Source=a%40example.com&Template=welcome-v2"
                                     "&TemplateArn=arn%3Aaws%3Ases%3Aus-east-1%3A1%3Atemplate%2Fother"
                                     "&Destination.ToAddresses.member.1=b%40x.com"),
              "template \"arn:aws:ses:us-east-1:1:template/other\" is not allowed for this agent");
    // Without the constraint, or without recipients (not a send), nothing is asked of it.
    EXPECT_EQ(check_body_constraints(max(5), json, body), "");
    EXPECT_EQ(check_body_constraints(templates({"welcome-v2"}), json, R"j({"properties": {"email": "x"}})j"), "");
    EXPECT_EQ(check_body_constraints(templates({"welcome-v2"}), json,
                                     R"j({"Content": {"Simple": {"Subject": {"Data": "draft"}}}})j"),
              "") << "content without a recipient is no send";
}

// A sender set through an API's header fields goes out as the mail's From or Sender: checked
// as the from field is (Mailgun h:From / h:Sender, SendGrid headers, SES v2 Headers).
TEST(AgentConstraints, SenderHeadersAreCheckedAsFromIs) {
    const auto allowed = domains({"news.example.com"});
    EXPECT_EQ(check_body_constraints(allowed, urlencoded,
                                     "from=a%40news.example.com&h%3ASender=ceo%40other.example&to=x%40y.com"),
              "from domain \"other.example\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(allowed, urlencoded, "from=a%40news.example.com&H%3AFrom=x%40other.example&to=x%40y.com"),
              "from domain \"other.example\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(allowed, urlencoded, "from=a%40news.example.com&h%3AReply-To=x%40other.example&to=x%40y.com"),
              "") << "a reply-to sends nothing as anyone";
    EXPECT_EQ(check_body_constraints(allowed, json, R"j({"personalizations": [{"to": [{"email": "x@y.com"}],
        "headers": {"sender": "ceo@other.example"}}], "from": {"email": "a@news.example.com"}})j"),
              "from domain \"other.example\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(allowed, json, R"j({"personalizations": [{"to": [{"email": "x@y.com"}]}],
        "headers": {"X-Campaign": "c", "Sender": "ceo@other.example"}, "from": {"email": "a@news.example.com"}})j"),
              "from domain \"other.example\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(allowed, json, R"j({"FromEmailAddress": "a@news.example.com",
        "Destination": {"ToAddresses": ["x@y.com"]},
        "Content": {"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "t"}},
                               "Headers": [{"Name": "X-Tag", "Value": "v"}, {"Name": "Sender", "Value": "ceo@other.example"}]}}})j"),
              "from domain \"other.example\" is not allowed for this agent");
    // SES v2 SendBulkEmail: an entry's ReplacementHeaders.
    EXPECT_EQ(check_body_constraints(allowed, json, R"j({"FromEmailAddress": "a@news.example.com",
        "DefaultContent": {"Template": {"TemplateName": "t"}},
        "BulkEmailEntries": [{"Destination": {"ToAddresses": ["x@y.com"]},
                              "ReplacementHeaders": [{"Name": "From", "Value": "ceo@other.example"}]}]})j"),
              "from domain \"other.example\" is not allowed for this agent");
}

// SendGrid's v2 mail.send.json is a form post with array fields and an X-SMTPAPI JSON header
// that carries recipients and template filters of its own.
TEST(AgentConstraints, SendGridV2FormFields) {
    EXPECT_EQ(check_body_constraints(max(1), urlencoded, "to%5B%5D=a%40x.com&to%5B%5D=b%40x.com&from=n%40x.com"),
              "2 recipients in one request; this agent may address at most 1");
    EXPECT_EQ(check_body_constraints(max(1), urlencoded, "bcc%5B%5D=a%40x.com&cc%5B%5D=b%40x.com&from=n%40x.com"),
              "2 recipients in one request; this agent may address at most 1");
    EXPECT_EQ(check_body_constraints(max(1000), urlencoded,
                                     "to%5B%5D=a%40x.com&x-smtpapi=%7B%22to%22%3A%5B%22b%40x.com%22%5D%7D&from=n%40x.com"),
              "the x-smtpapi field (SendGrid v2) is not read by this agent's constraints; send through /v3/mail/send");
}

// Salesforce's Send Email action (POST /services/data/v59.0/actions/standard/emailSimple):
// each input is a mail to its addresses (string list and array) and its recipientId.
TEST(AgentConstraints, SalesforceEmailSimpleInputs) {
    const std::string body = R"j({"inputs": [
        {"emailAddresses": "a@example.com, b@example.com", "emailAddressesArray": ["c@example.com"],
         "recipientId": "003xx000004TmiQAAS", "senderType": "OrgWideEmailAddress",
         "senderAddress": "ceo@other.example", "emailSubject": "Hi", "emailBody": "own text"},
        {"emailAddresses": "d@example.com", "emailTemplateId": "00Xxx0000001", "senderType": "CurrentUser",
         "ccRecipientAddressList": "e@example.com,f@example.com", "bccRecipientAddressCollection": ["g@example.com"]}]})j";
    EXPECT_EQ(check_body_constraints(max(8), json, body), "");
    EXPECT_EQ(check_body_constraints(max(7), json, body), "8 recipients in one request; this agent may address at most 7");
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json, body),
              "from domain \"other.example\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(templates({"00Xxx0000001"}), json, body),
              "this send carries content of its own (inputs[].emailBody); this agent may send only its templates");
    EXPECT_EQ(check_body_constraints(templates({"welcome"}), json, body),
              "template \"00Xxx0000001\" is not allowed for this agent");
    // HubSpot's batch inputs are no mail.
    EXPECT_EQ(check_body_constraints(max(0), json, R"j({"inputs": [{"properties": {"email": "a@example.com"}}]})j"), "");
}

TEST(AgentConstraints, HubSpotSingleSend) {
    EXPECT_EQ(check_body_constraints(max(4), json, hubspot_single), "");
    EXPECT_THAT(check_body_constraints(max(3), json, hubspot_single), HasSubstr("4 recipients"));
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json, hubspot_single), "");
    EXPECT_EQ(check_body_constraints(templates({"4126643121"}), json, hubspot_single), "");
    EXPECT_EQ(check_body_constraints(templates({"1"}), json, hubspot_single),
              "template \"4126643121\" is not allowed for this agent");
}

TEST(AgentConstraints, CrmBodiesWithoutEmailFieldsPass) {
    body_constraints c;
    c.max_recipients = 1;
    c.from_domains = {"example.com"};
    c.template_ids = {"welcome-v2"};
    const std::string batch = R"j({"inputs": [
        {"properties": {"email": "bcooper@biglytics.net", "firstname": "Bryan"},
         "associations": [{"to": {"id": "123"}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 279}]}]},
        {"properties": {"email": "sfrank@biglytics.net", "firstname": "Sarah"}}]})j";
    EXPECT_EQ(check_body_constraints(c, json, batch), "");
    // No body (GET, DELETE) and non-email content types.
    EXPECT_EQ(check_body_constraints(c, json, ""), "");
    EXPECT_EQ(check_body_constraints(c, "", " \r\n"), "");
    EXPECT_EQ(check_body_constraints(c, "text/plain", "to=a@b.com,c@d.com&from=x@evil.example"), "");
}

// A Mailgun mailing list is one address at the sending domain for all its members: an agent
// held to max_recipients may not send to it (its size cannot be counted).
TEST(AgentConstraints, MailgunListAddressesAreRefusedToAnAgentWithMaxRecipients) {
    const std::string path = "/v3/mg.example.com/messages";
    const std::string refused =
        "a recipient at the sending domain \"mg.example.com\" (a Mailgun mailing list's address: one address for all its "
        "members), whose size this agent's max_recipients cannot count";
    for (const std::string to : {"to=newsletter%40mg.example.com", "to=a%40example.com&cc=News%20%3CNewsletter%40MG.Example.COM%3E",
                                 "to=a%40example.com%2C%20all%40mg.example.com", "bcc=%22all%22%40mg.example.com."}) {
        EXPECT_EQ(check_body_constraints(max(1000), urlencoded, "from=news%40mg.example.com&subject=Hi&" + to, {}, path),
                  refused)
            << to;
    }
    EXPECT_EQ(check_body_constraints(max(1000), urlencoded, "to=a%40example.com", "to=all%40mg.example.com", path), refused)
        << "in the query string too";
    EXPECT_EQ(check_body_constraints(max(1000), urlencoded, "to=n%40mg.xn--bcher-kva.de", {}, "/v3/mg.b%C3%BCcher.de/messages"),
              "a recipient at the sending domain \"mg.b??cher.de\" (a Mailgun mailing list's address: one address for all "
              "its members), whose size this agent's max_recipients cannot count");
    // Other domains, a subdomain of the sending domain, or no limit on recipients: as before.
    for (const std::string to : {"to=jane%40example.com", "to=jane%40eu.mg.example.com", "to=jane%40mg.example.co"}) {
        EXPECT_EQ(check_body_constraints(max(1000), urlencoded, to, {}, path), "") << to;
    }
    EXPECT_EQ(check_body_constraints(domains({"mg.example.com"}), urlencoded, "from=a%40mg.example.com&to=all%40mg.example.com",
                                     {}, path),
              "");
    EXPECT_EQ(check_body_constraints(max(1000), urlencoded, "to=all%40mg.example.com"), "") << "not a Mailgun send";

    // list_domains names them instead, for every API (a Google Group at the company's domain,
    // lists on another Mailgun domain); [] names none (a Mailgun account on its root domain).
    body_constraints lists = max(1000);
    lists.list_domains = std::vector<std::string>{"lists.example.com", "groups.example.org"};
    EXPECT_EQ(check_body_constraints(lists, urlencoded, "to=news%40lists.example.com", {}, path),
              "a recipient at \"lists.example.com\", a mailing list's domain (list_domains), whose size this agent's "
              "max_recipients cannot count");
    EXPECT_EQ(check_body_constraints(lists, urlencoded, "to=all%40mg.example.com", {}, path), "") << "not listed";
    // A listed domain's subdomains hold lists too; a domain that only ends in its name does not.
    EXPECT_EQ(check_body_constraints(lists, urlencoded, "to=news%40EU.lists.example.com", {}, path),
              "a recipient at \"eu.lists.example.com\", a mailing list's domain (list_domains), whose size this agent's "
              "max_recipients cannot count");
    EXPECT_EQ(check_body_constraints(lists, urlencoded, "to=jane%40mylists.example.com", {}, path), "");
    EXPECT_EQ(check_body_constraints(lists, urlencoded, "to=jane%40example.com", {}, path), "");
    EXPECT_EQ(check_body_constraints(lists, "application/json",
                                     R"j({"personalizations": [{"to": [{"email": "a@example.com"}, {"email": "All-Staff@Groups.Example.org"}]}],
                                         "from": {"email": "n@example.com"}, "subject": "s"})j"),
              "a recipient at \"groups.example.org\", a mailing list's domain (list_domains), whose size this agent's "
              "max_recipients cannot count");
    EXPECT_EQ(check_body_constraints(lists, "application/json",
                                     R"j({"Destination": {"ToAddresses": ["x@lists.example.com"]}, "FromEmailAddress": "n@example.com"})j"),
              "a recipient at \"lists.example.com\", a mailing list's domain (list_domains), whose size this agent's "
              "max_recipients cannot count");
    // Raw messages' own To/Cc/Bcc (SES v2 and v1), and SES v1's Destinations.
    const std::string listed_raw = "RnJvbTogYUBleGFtcGxlLmNvbQ0KVG86IGFsbEBsaXN0cy5leGFtcGxlLmNvbQ0KU3ViamVjdDogcw0KDQpoaQ0K";
    EXPECT_EQ(check_body_constraints(lists, "application/json", R"j({"Content": {"Raw": {"Data": ")j" + listed_raw + R"j("}}})j"),
              "a recipient at \"lists.example.com\", a mailing list's domain (list_domains), whose size this agent's "
              "max_recipients cannot count");
    EXPECT_EQ(check_body_constraints(lists, urlencoded, "Action=SendRawEmail&RawMessage.Data=" + listed_raw),
              "a recipient at \"lists.example.com\", a mailing list's domain (list_domains), whose size this agent's "
              "max_recipients cannot count");
    EXPECT_EQ(check_body_constraints(lists, urlencoded,
                                     "Action=SendRawEmail&Destinations.member.1=all%40lists.example.com&RawMessage.Data=RnJvbTogYUBleGFtcGxlLmNvbQ0KVG86IGpAZXhhbXBsZS5jb20NClN1YmplY3Q6IHMNCg0KaGkNCg=="),
              "a recipient at \"lists.example.com\", a mailing list's domain (list_domains), whose size this agent's "
              "max_recipients cannot count");
    EXPECT_EQ(check_body_constraints(lists, urlencoded, "Action=SendRawEmail&RawMessage.Data=RnJvbTogYUBleGFtcGxlLmNvbQ0KVG86IGpAZXhhbXBsZS5jb20NClN1YmplY3Q6IHMNCg0KaGkNCg=="), "");
    body_constraints none_listed = max(1000);
    none_listed.list_domains = std::vector<std::string>{};
    EXPECT_EQ(check_body_constraints(none_listed, urlencoded, "to=colleague%40mg.example.com", {}, path), "");
}

TEST(AgentConstraints, MailgunUrlencoded) {
    EXPECT_EQ(check_body_constraints(max(5), urlencoded, mailgun_form), "");
    EXPECT_EQ(check_body_constraints(max(4), urlencoded, mailgun_form),
              "5 recipients in one request; this agent may address at most 4");
    // from is `Excited User <mailgun@mg.example.com>`, percent-encoded.
    EXPECT_EQ(check_body_constraints(domains({"mg.example.com"}), urlencoded, mailgun_form), "");
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), urlencoded, mailgun_form),
              "from domain \"mg.example.com\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(templates({"order-shipped"}), urlencoded, mailgun_form), "");
    EXPECT_EQ(check_body_constraints(templates({"welcome-v2"}), urlencoded, mailgun_form),
              "template \"order-shipped\" is not allowed for this agent");
    // A form API may read the query string's fields too.
    EXPECT_EQ(check_body_constraints(max(5), urlencoded, mailgun_form, "to=six%40example.com"),
              "6 recipients in one request; this agent may address at most 5");
    EXPECT_EQ(check_body_constraints(max(1), "", "", "to=a%40x.com&cc=b%40x.com"),
              "2 recipients in one request; this agent may address at most 1")
        << "no body: the query string is the form";
    EXPECT_EQ(check_body_constraints(max(1), "application/json", "", "to=a%40x.com"), "") << "one recipient, allowed";
    // Beside a body that is no form, the query's fields still count (an API may merge them).
    EXPECT_EQ(check_body_constraints(max(1), "text/plain", "x", "to=a%40x.com&cc=b%40x.com"),
              "2 recipients in one request; this agent may address at most 1");
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), "application/json", "{}", "from=x%40evil.example"),
              "from domain \"evil.example\" is not allowed for this agent");
    // Content type parameters and case do not matter.
    EXPECT_EQ(check_body_constraints(max(4), "Application/X-WWW-Form-Urlencoded; charset=utf-8", mailgun_form),
              "5 recipients in one request; this agent may address at most 4");
}

body_constraints reply_to(std::vector<std::string> d) {
    body_constraints c;
    c.from_domains = {"example.com", "mail.example.com", "news.example.com"};
    c.reply_to_domains = std::move(d);
    return c;
}

// With reply_to_domains, where replies go is held to them (or to a from domain), in every
// API's spelling of a Reply-To. Without it a Reply-To is not judged (a help desk elsewhere).
TEST(AgentConstraints, ReplyToIsHeldToReplyToDomainsWhenGiven) {
    // The SendGrid fixture replies to customer_service@other.example.
    EXPECT_EQ(check_body_constraints(domains({"mail.example.com"}), json, sendgrid), "");
    EXPECT_EQ(check_body_constraints(reply_to({"other.example"}), json, sendgrid), "");
    EXPECT_EQ(check_body_constraints(reply_to({"help.example.net"}), json, sendgrid),
              "reply-to domain \"other.example\" is not allowed for this agent");
    const auto c = reply_to({"help.example.net"});
    const auto refused = [&](std::string_view type, std::string_view body) {
        return check_body_constraints(c, type, body) == "reply-to domain \"evil.example\" is not allowed for this agent";
    };
    // SendGrid: reply_to_list, a Reply-To header (also per personalization).
    EXPECT_TRUE(refused(json, R"j({"personalizations": [{"to": [{"email": "x@y.com"}]}], "from": {"email": "a@example.com"},
        "reply_to_list": [{"email": "ok@help.example.net"}, {"email": "x@evil.example"}]})j"));
    EXPECT_TRUE(refused(json, R"j({"personalizations": [{"to": [{"email": "x@y.com"}], "headers": {"reply-to": "x@evil.example"}}],
        "from": {"email": "a@example.com"}})j"));
    // SES v2: ReplyToAddresses, a Reply-To in Headers or in a bulk entry's ReplacementHeaders.
    EXPECT_TRUE(refused(json, R"j({"FromEmailAddress": "a@example.com", "Destination": {"ToAddresses": ["x@y.com"]},
        "ReplyToAddresses": ["ok@news.example.com", "x@evil.example"], "Content": {"Template": {"TemplateName": "t"}}})j"));
    EXPECT_TRUE(refused(json, R"j({"FromEmailAddress": "a@example.com", "Destination": {"ToAddresses": ["x@y.com"]},
        "Content": {"Template": {"TemplateName": "t", "Headers": [{"Name": "Reply-To", "Value": "x@evil.example"}]}}})j"));
    EXPECT_TRUE(refused(json, R"j({"FromEmailAddress": "a@example.com", "DefaultContent": {"Template": {"TemplateName": "t"}},
        "BulkEmailEntries": [{"Destination": {"ToAddresses": ["x@y.com"]},
                              "ReplacementHeaders": [{"Name": "Reply-To", "Value": "x@evil.example"}]}]})j"));
    // HubSpot single send.
    EXPECT_TRUE(refused(json, R"j({"emailId": 1, "message": {"to": "x@y.com", "replyTo": ["x@evil.example"]}})j"));
    // Mailgun, SendGrid v2, SES v1 forms.
    EXPECT_TRUE(refused(urlencoded, "from=a%40example.com&to=x%40y.com&h%3AReply-To=Desk%20%3Cx%40evil.example%3E"));
    EXPECT_TRUE(refused(urlencoded, "from=a%40example.com&to%5B%5D=x%40y.com&replyto=x%40evil.example"));
    EXPECT_TRUE(refused(urlencoded, "from=a%40example.com&to%5B%5D=x%40y.com&headers=%7B%22Reply-To%22%3A%22x%40evil.example%22%7D"));
    EXPECT_EQ(check_body_constraints(c, urlencoded, "from=a%40example.com&to%5B%5D=x%40y.com&headers=oops"),
              "the headers field (SendGrid v2) is not a JSON object");
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), urlencoded,
                                     "from=a%40example.com&to%5B%5D=x%40y.com&headers=%7B%22Sender%22%3A%22x%40evil.example%22%7D"),
              "from domain \"evil.example\" is not allowed for this agent");
    EXPECT_TRUE(refused(urlencoded, "Action=SendEmail&Source=a%40example.com&Destination.ToAddresses.member.1=x%40y.com"
                                    "&ReplyToAddresses.member.1=x%40evil.example"));
    // A raw message's own Reply-To (SES v2 Content.Raw.Data: base64 of the message).
    const auto raw = [](std::string_view reply) {
        std::string message = "From: a@example.com\r\nTo: x@y.com\r\n" + std::string{reply} + "Subject: s\r\n\r\nbody\r\n";
        return R"j({"Content": {"Raw": {"Data": ")j" + bb::test::b64(message) + R"j("}}})j";
    };
    EXPECT_TRUE(refused(json, raw("Reply-To: x@evil.example\r\n")));
    EXPECT_EQ(check_body_constraints(c, json, raw("Reply-To: desk@help.example.net\r\n")), "");
    EXPECT_EQ(check_body_constraints(c, json, raw("")), "") << "no Reply-To";
    EXPECT_EQ(check_body_constraints(c, json, raw("Reply-To: desk@help.example.net (x@evil.example)\r\n")),
              "a raw MIME message's Reply-To cannot be read for certain");
    // Allowed: a reply-to domain, a from domain; exact, in any case.
    EXPECT_EQ(check_body_constraints(c, urlencoded, "from=a%40example.com&to=x%40y.com&h%3AReply-To=d%40Help.Example.NET"), "");
    EXPECT_EQ(check_body_constraints(c, urlencoded, "from=a%40example.com&to=x%40y.com&h%3AReply-To=d%40example.com"), "");
    EXPECT_EQ(check_body_constraints(c, urlencoded, "from=a%40example.com&to=x%40y.com&h%3AReply-To=d%40sub.help.example.net"),
              "reply-to domain \"sub.help.example.net\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(c, json, R"j({"message": {"to": "x@y.com", "replyTo": [7]}})j"),
              "the reply-to address is not a string");
}

// A legacy SendGrid template (no `d-`) takes the body's `content` into its <%body%>; a
// dynamic template's own content overrides it.
TEST(AgentConstraints, SendGridContentInALegacyTemplateIsContentOfItsOwn) {
    const auto c = templates({"legacy-1", "d-a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"});
    const std::string legacy = R"j({"personalizations": [{"to": [{"email": "x@y.com"}]}], "from": {"email": "a@example.com"},
        "template_id": "legacy-1", "content": [{"type": "text/html", "value": "<p>whatever the agent wrote</p>"}]})j";
    EXPECT_EQ(check_body_constraints(c, json, legacy),
              "this send carries content of its own (content); this agent may send only its templates");
    EXPECT_EQ(check_body_constraints(c, json, sendgrid), "") << "a dynamic template beside content";
    EXPECT_EQ(check_body_constraints(c, json, R"j({"personalizations": [{"to": [{"email": "x@y.com"}]}],
        "template_id": "legacy-1", "content": []})j"), "");
    EXPECT_EQ(check_body_constraints(max(5), json, legacy), "") << "no template constraint";
    // A blank placeholder (SendGrid once required content beside a legacy template) is none.
    const std::string placeholder = R"j({"personalizations": [{"to": [{"email": "x@y.com"}]}],
        "template_id": "legacy-1", "content": [{"type": "text/html", "value": " "}]})j";
    EXPECT_EQ(check_body_constraints(c, json, placeholder), "");
    EXPECT_EQ(check_body_constraints(c, json, R"j({"personalizations": [{"to": [{"email": "x@y.com"}]}],
        "template_id": "legacy-1", "content": [{"type": "text/html", "value": " "}, {"type": "text/plain", "value": "mine"}]})j"),
              "this send carries content of its own (content); this agent may send only its templates");
}

// emailSimple inside a Salesforce composite request is not read by the constraints: a
// constrained agent sends it directly or not at all.
TEST(AgentConstraints, EmailSimpleInsideACompositeRequestIsRefused) {
    const std::string composite = R"j({"compositeRequest": [
        {"method": "POST", "url": "/services/data/v59.0/sobjects/Account", "referenceId": "a", "body": {"Name": "x"}},
        {"method": "POST", "url": "/services/data/v59.0/actions/standard/EmailSimple/", "referenceId": "m",
         "body": {"inputs": [{"emailAddresses": "a@x.com, b@x.com, c@x.com", "emailSubject": "s", "emailBody": "b"}]}}]})j";
    EXPECT_EQ(constrained_subrequests("/services/data/v59.0/composite", composite),
              "subrequest #1 of this composite request calls emailSimple, whose inputs this agent's constraints read "
              "only in a direct call (POST it to .../actions/standard/emailSimple)");
    const std::string batch = R"j({"batchRequests": [{"method": "POST", "url": "v59.0/actions/standard/emailSimple",
        "richInput": {"inputs": [{"emailAddresses": "a@x.com"}]}}]})j";
    EXPECT_THAT(constrained_subrequests("/services/data/v59.0/composite/batch", batch), HasSubstr("subrequest #0"));
    // With a format suffix (REST API up to 57.0), on the composite or on the action.
    EXPECT_THAT(constrained_subrequests("/services/data/v57.0/composite.json", composite), HasSubstr("subrequest #1"));
    EXPECT_THAT(constrained_subrequests("/services/data/v57.0/composite.json/", composite), HasSubstr("subrequest #1"));
    EXPECT_THAT(constrained_subrequests("/services/data/v57.0/composite", R"j({"compositeRequest": [{"method": "POST",
        "url": "/services/data/v57.0/actions/standard/emailSimple.json", "referenceId": "m", "body": {"inputs": []}}]})j"),
                HasSubstr("subrequest #0"));
    // A Flow, which may take the same inputs and send them, and an email alert, likewise.
    for (const char* url : {"/services/data/v59.0/actions/custom/flow/Send_Welcome",
                            "/services/data/v59.0/actions/custom/emailAlert/Contact/Welcome_Alert",
                            "/services/data/v59.0/Actions/Custom/Flow/x/"}) {
        EXPECT_THAT(constrained_subrequests("/services/data/v59.0/composite",
                                            R"j({"compositeRequest": [{"method": "POST", "referenceId": "f", "url": ")j" +
                                                std::string{url} + R"j(", "body": {"inputs": [{"emailAddresses": "a@x.com"}]}}]})j"),
                    HasSubstr("subrequest #0 of this composite request calls a custom action")) << url;
    }
    const std::string records = R"j({"compositeRequest": [
        {"method": "POST", "url": "/services/data/v59.0/sobjects/Account", "referenceId": "a", "body": {"Name": "x"}}]})j";
    EXPECT_EQ(constrained_subrequests("/services/data/v59.0/composite", records), "");
    EXPECT_EQ(constrained_subrequests("/services/data/v59.0/actions/standard/emailSimple", composite), "")
        << "not a composite path";
    // The action's description sends nothing.
    EXPECT_EQ(constrained_subrequests("/services/data/v59.0/composite", R"j({"compositeRequest": [
        {"method": "GET", "url": "/services/data/v59.0/actions/standard/emailSimple", "referenceId": "d"}]})j"), "");
    // A URL another reader resolves otherwise, as the proxy's own test finds it.
    const std::string escaped = R"j({"compositeRequest": [{"method": "POST", "referenceId": "m",
        "url": "/services/data/v59.0/actions/standard/email%53imple", "body": {"inputs": []}}]})j";
    EXPECT_EQ(constrained_subrequests("/services/data/v59.0/composite", escaped), "") << "without the test";
    const auto percent = [](std::string_view p) {
        return p.find('%') != std::string_view::npos ? std::string_view{"a percent escape"} : std::string_view{};
    };
    EXPECT_EQ(constrained_subrequests("/services/data/v59.0/composite", escaped, +percent),
              "subrequest #0 of this composite request: its URL contains a percent escape");
    // A composite body that cannot be read as subrequests (an XML batch) is refused.
    EXPECT_THAT(constrained_subrequests("/services/data/v59.0/composite/batch", "<batchRequests/>"),
                HasSubstr("this composite request: "));
}

// `@{ref}` in a subrequest URL is filled in by Salesforce after breakerbox judged it: only a
// record id's place may be a reference (the usual use), never what kind of resource it is.
TEST(AgentConstraints, ACompositeReferenceMayStandOnlyForARecord) {
    const std::string hidden = R"j({"compositeRequest": [
        {"method": "GET", "url": "/services/data/v59.0/actions/standard", "referenceId": "a"},
        {"method": "POST", "url": "/services/data/v59.0/actions/standard/@{a.actions[3].name}", "referenceId": "m",
         "body": {"inputs": [{"emailAddresses": "a@x.com, b@x.com", "emailSubject": "s", "emailBody": "b"}]}}]})j";
    EXPECT_THAT(constrained_subrequests("/services/data/v59.0/composite", hidden),
                HasSubstr("a subrequest URL with a reference"));
    // Only a record's id may be pasted in: a field's value could carry a path or a query.
    for (const char* url : {"/services/data/v59.0/sobjects/Case/@{a.id}?x=@{b.Subject}",
                            "/services/data/v59.0/sobjects/Case/@{b.Subject}",
                            "/services/data/v59.0/sobjects/Account/Ext__c/@{a.Ext__c}"}) {
        const std::string body = R"j({"compositeRequest": [{"method": "GET", "url": ")j" + std::string{url} +
                                 R"j(", "referenceId": "r"}]})j";
        EXPECT_THAT(constrained_subrequests("/services/data/v59.0/composite", body),
                    HasSubstr("a reference to something other than a record id")) << url;
    }
    const auto refused = salesforce_subrequest_refusal("/services/data/v59.0/composite", hidden);
    EXPECT_EQ(refused.code, "bad_body");
    EXPECT_THAT(refused.message, HasSubstr("@{a.actions[3].name}"));
    for (const char* url : {"/services/data/v59.0/sobjects/@{a.type}/x", "/services/data/v59.0/@{a.path}",
                            "/services/data/v59.0/sobjects/@{a.type}"}) {
        const std::string body = R"j({"compositeRequest": [{"method": "PATCH", "url": ")j" + std::string{url} +
                                 R"j(", "referenceId": "r", "body": {}}]})j";
        EXPECT_THAT(constrained_subrequests("/services/data/v59.0/composite", body), HasSubstr("with a reference")) << url;
    }
    for (const char* url : {"/services/data/v59.0/sobjects/Case/quickActions/@{a.records[0].Name}",
                            "/services/data/v59.0/sobjects/Account/@{a.id}/@{b.rel}",
                            "/services/data/v59.0/sobjects/Account/x@{a.id}"}) {
        const std::string body = R"j({"compositeRequest": [{"method": "POST", "url": ")j" + std::string{url} +
                                 R"j(", "referenceId": "r", "body": {}}]})j";
        EXPECT_THAT(constrained_subrequests("/services/data/v59.0/composite", body), HasSubstr("with a reference")) << url;
    }
    // A query field named by a reference may become _HttpMethod: refused as asking for a method.
    const std::string named = R"j({"compositeRequest": [
        {"method": "POST", "url": "/services/data/v59.0/sobjects/Account/@{a.id}?@{b.Name}=DELETE", "referenceId": "x"}]})j";
    EXPECT_EQ(salesforce_subrequest_refusal("/services/data/v59.0/composite", named).code, "method_override");
    const std::string record = R"j({"compositeRequest": [
        {"method": "POST", "url": "/services/data/v59.0/sobjects/Account", "referenceId": "a", "body": {"Name": "x"}},
        {"method": "PATCH", "url": "/services/data/v59.0/sobjects/Account/@{a.id}", "referenceId": "b", "body": {}},
        {"method": "GET", "url": "/services/data/v59.0/sobjects/Account/@{a.id}/Contacts?x=@{a.id}", "referenceId": "c"},
        {"method": "PATCH", "url": "/services/data/v59.0/sobjects/Account/Ext__c/@{a.id}", "referenceId": "d"},
        {"method": "GET", "url": "/services/data/v59.0/query?q=SELECT+Id+FROM+Contact+WHERE+AccountId='@{q.records[0].Id}'",
         "referenceId": "e"}]})j";
    EXPECT_EQ(constrained_subrequests("/services/data/v59.0/composite", record), "");
    EXPECT_EQ(salesforce_subrequest_refusal("/services/data/v59.0/composite", record).code, "");
}

// A composite request under an upstream's base path (an Experience Cloud site) is one too:
// its subrequests are read.
TEST(AgentConstraints, ACompositeRequestUnderABasePathIsRead) {
    const std::string composite = R"j({"compositeRequest": [{"method": "POST",
        "url": "/partners/services/data/v59.0/actions/standard/emailSimple", "referenceId": "m", "body": {"inputs": []}}]})j";
    EXPECT_THAT(constrained_subrequests("/partners/services/data/v59.0/composite", composite), HasSubstr("subrequest #0"));
    const std::string deleting = R"j({"compositeRequest": [{"method": "DELETE",
        "url": "/partners/services/data/v59.0/sobjects/Account/001", "referenceId": "d"}]})j";
    std::vector<subrequest> subs;
    EXPECT_EQ(salesforce_subrequests("/partners/services/data/v59.0/composite", deleting, subs), "");
    ASSERT_EQ(subs.size(), 1u);
    EXPECT_EQ(subs[0].method, "DELETE");
    EXPECT_TRUE(salesforce_subrequests("/partners/services/data/v59.0/sobjects/Account", deleting, subs).empty());
    EXPECT_TRUE(subs.empty()) << "not a composite resource";
}

// A SendGrid single send reaches lists and segments: an agent held to max_recipients cannot
// have it counted as no recipient.
TEST(AgentConstraints, ASendToListsOrSegmentsIsRefusedToAnAgentWithARecipientCap) {
    const std::string why =
        "this send goes to lists or segments (send_to), whose size this agent's max_recipients cannot count";
    for (const std::string body : {R"j({"name": "Spring", "send_to": {"list_ids": ["a1"]}, "email_config": {"subject": "Hi"}})j",
                                   R"j({"name": "Spring", "send_to": {"segment_ids": ["s1"], "list_ids": []}})j",
                                   R"j({"send_to": {"all": true}})j", R"j({"SEND_TO": {"List_Ids": ["a1"]}})j",
                                   R"j({"send_to": {"list_ids": "a1"}})j"}) {
        EXPECT_EQ(check_body_constraints(max(500), json, body), why) << body;
    }
    for (const std::string body : {R"j({"name": "Draft", "send_to": {"list_ids": [], "segment_ids": [], "all": false}})j",
                                   R"j({"name": "Draft", "send_to": {"list_ids": null}})j", R"j({"name": "Draft"})j"}) {
        EXPECT_EQ(check_body_constraints(max(500), json, body), "") << body;
    }
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json, R"j({"send_to": {"all": true}})j"), "")
        << "no recipient cap";
}

// Scheduling a Single Send or a legacy campaign sends what is stored at SendGrid (its lists,
// sender and content), as publishing a HubSpot marketing email does: no body shows it, so an
// agent with any constraint may not.
TEST(AgentConstraints, SendingStoredSendGridMailIsRefusedToAConstrainedAgent) {
    for (const auto& c : {max(500), domains({"example.com"}), templates({"d-1"})}) {
        for (const auto& [method, path] : std::initializer_list<std::pair<std::string_view, std::string_view>>{
                 {"PUT", "/v3/marketing/singlesends/3f1c2d/schedule"},
                 {"PUT", "/v3/Marketing/SingleSends/3f1c2d/schedule/"},
                 {"PUT", "/sendgrid/v3/marketing/singlesends/3f1c2d/schedule"},  // under a base path
                 {"POST", "/v3/campaigns/986724/schedules/now"},
                 {"POST", "/v3/campaigns/986724/schedules"},
                 {"PATCH", "/v3/campaigns/986724/schedules"},
                 {"POST", "/v3/campaigns/986724/schedules/test"},
                 {"POST", "/marketing/v3/emails/51234/publish"},
                 {"POST", "/services/data/v59.0/actions/custom/emailAlert/Contact/Welcome_Alert"},
                 {"POST", "/services/data/v57.0/actions/custom/emailAlert/Contact/Welcome_Alert.json"},
                 {"", "/v3/marketing/singlesends/3f1c2d/schedule"},
             }) {
            const auto why = check_body_constraints(c, json, R"j({"send_at": "now"})j", "", path, method);
            EXPECT_THAT(why, HasSubstr("whose recipients, sender and content this agent's constraints cannot read"))
                << method << " " << path;
            EXPECT_FALSE(body_unreadable(why));
            EXPECT_NE(check_body_constraints(c, json, "", "", path, method), "") << "no body: " << path;
        }
        for (const auto& [method, path] : std::initializer_list<std::pair<std::string_view, std::string_view>>{
                 {"GET", "/v3/marketing/singlesends/3f1c2d/schedule"},
                 {"DELETE", "/v3/marketing/singlesends/3f1c2d/schedule"},
                 {"DELETE", "/v3/campaigns/986724/schedules"},
                 {"POST", "/v3/marketing/singlesends/3f1c2d"},  // a duplicate: a draft, nothing sent
                 {"PUT", "/v3/marketing/singlesends/schedule"},
                 {"GET", "/services/data/v59.0/actions/custom/emailAlert/Contact/Welcome_Alert"},  // its description
             }) {
            EXPECT_EQ(check_body_constraints(c, json, "{}", "", path, method), "") << method << " " << path;
        }
    }
    EXPECT_EQ(check_body_constraints({}, json, "{}", "", "/v3/marketing/singlesends/1/schedule", "PUT"), "")
        << "no constraints";
}

// SendGrid's Marketing test send names its recipients in `emails` and its sender in
// `from_address`, or by a stored sender's id, which no from domain can be checked against.
TEST(AgentConstraints, SendGridMarketingTestSend) {
    const std::string_view path = "/v3/marketing/test/send_email";
    const std::string ten = R"j({"template_id": "d-1", "from_address": "news@example.com", "emails": )j"
                            R"j(["a@x.io", "b@x.io", "c@x.io", "d@x.io", "e@x.io", "f@x.io", "g@x.io", "h@x.io", "i@x.io", "j@x.io"]})j";
    EXPECT_EQ(check_body_constraints(max(3), json, ten, "", path, "POST"),
              "10 recipients in one request; this agent may address at most 3");
    EXPECT_EQ(check_body_constraints(max(10), json, ten, "", path, "POST"), "");
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json, ten, "", path, "POST"), "");
    EXPECT_EQ(check_body_constraints(domains({"other.com"}), json, ten, "", path, "POST"),
              "from domain \"example.com\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(templates({"d-2"}), json, ten, "", path, "POST"),
              "template \"d-1\" is not allowed for this agent");
    const std::string stored = R"j({"template_id": "d-1", "sender_id": 1234, "emails": ["a@x.io"]})j";
    EXPECT_THAT(check_body_constraints(domains({"example.com"}), json, stored, "", path, "POST"),
                HasSubstr("names a stored sender (sender_id)"));
    EXPECT_EQ(check_body_constraints(max(1), json, stored, "", path, "POST"), "") << "no domain constraint";
    // Elsewhere `emails` is no recipient list (a contacts search by email).
    EXPECT_EQ(check_body_constraints(max(1), json, ten, "", "/v3/marketing/contacts/search/emails", "POST"), "");
}

TEST(AgentConstraints, MailgunSendingDomainInThePathIsAFromDomainOrASubdomainOfOne) {
    const std::string body = "from=news%40example.com&to=x%40example.com&text=hi";
    const auto c = domains({"example.com"});
    EXPECT_EQ(check_body_constraints(c, urlencoded, body, "", "/v3/example.com/messages"), "");
    EXPECT_EQ(check_body_constraints(c, urlencoded, body, "", "/v3/MG.Example.com/messages"), "");
    EXPECT_EQ(check_body_constraints(c, urlencoded, body, "", "/v3/mg.example.com/messages.mime/"), "");
    for (const std::string_view path :
         {"/v3/other.com/messages", "/v3/notexample.com/messages", "/V3/other.com/MESSAGES", "/v3/other.com/messages.mime",
          "/v3/other.com/%6dessages", "/v3/other%2Ecom/messages", "/v3/example.com.other.com/messages"}) {
        EXPECT_THAT(check_body_constraints(c, urlencoded, body, "", path),
                    HasSubstr("(the Mailgun path) is not allowed for this agent"))
            << path;
    }
    EXPECT_EQ(check_body_constraints(c, urlencoded, body, "", "/v3//messages"),
              "sending domain \"\" (the Mailgun path) is not allowed for this agent");
    // Other paths name no sending domain; an agent without from_domains is not asked.
    for (const std::string_view path : {"/v3/mail/send", "/v3/other.com/events", "/v3/other.com/templates",
                                        "/v3/other.com", "/crm/v3/other.com/messages"}) {
        EXPECT_EQ(check_body_constraints(c, urlencoded, body, "", path), "") << path;
    }
    EXPECT_EQ(check_body_constraints(max(5), urlencoded, body, "", "/v3/other.com/messages"), "");
}

// An internationalized from domain is one domain however it is written (rules/idna.hpp): the
// config keeps from_domains in Unicode form, and addresses and the Mailgun path are read so.
TEST(AgentConstraints, InternationalizedFromDomainsMatchInEitherSpelling) {
    const std::string ace = R"({"personalizations":[{"to":[{"email":"a@example.com"}]}],)"
                            R"("from":{"email":"news@XN--BCHER-KVA.de"},"subject":"x"})";
    const std::string unicode = R"({"personalizations":[{"to":[{"email":"a@example.com"}]}],)"
                                R"("from":{"email":"news@bücher.de"},"subject":"x"})";
    EXPECT_EQ(check_body_constraints(domains({"bücher.de"}), json, ace), "");
    EXPECT_EQ(check_body_constraints(domains({"bücher.de"}), json, unicode), "");
    EXPECT_THAT(check_body_constraints(domains({"münchen.de"}), json, ace), HasSubstr("is not allowed for this agent"));
    const std::string form = "from=news%40b%C3%BCcher.de&to=x%40example.com&text=hi";
    EXPECT_EQ(check_body_constraints(domains({"bücher.de"}), urlencoded, form, "", "/v3/mg.xn--bcher-kva.de/messages"), "");
    EXPECT_THAT(check_body_constraints(domains({"bücher.de"}), urlencoded, form, "", "/v3/xn--mnchen-3ya.de/messages"),
                HasSubstr("(the Mailgun path) is not allowed for this agent"));
}

TEST(AgentConstraints, MailgunFromListIsCheckedAddressByAddress) {
    const std::string body = "from=a%40mg.example.com%2C%20b%40evil.example&to=x%40example.com&text=hi";
    EXPECT_EQ(check_body_constraints(domains({"mg.example.com"}), urlencoded, body),
              "from domain \"evil.example\" is not allowed for this agent");
    // A display name that looks like an address does not count: the address in <> does.
    const std::string named = "from=%22boss%40mg.example.com%22%20%3Cx%40evil.example%3E&to=x%40example.com";
    EXPECT_EQ(check_body_constraints(domains({"mg.example.com"}), urlencoded, named),
              "from domain \"evil.example\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(domains({"mg.example.com"}), urlencoded, "from=postmaster&to=x%40example.com"),
              "the from address has no domain");
    EXPECT_EQ(check_body_constraints(domains({"mg.example.com"}), urlencoded, "from=&to=x%40example.com"),
              "the from address has no domain");
}

TEST(AgentConstraints, MailgunMultipart) {
    const std::string body = mailgun_multipart();
    // 1 + 2 to, 1 cc; the attachment's text is not a field.
    EXPECT_EQ(check_body_constraints(max(4), multipart_type, body), "");
    EXPECT_EQ(check_body_constraints(max(3), multipart_type, body),
              "4 recipients in one request; this agent may address at most 3");
    EXPECT_EQ(check_body_constraints(domains({"mg.example.com"}), multipart_type, body), "");
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), multipart_type, body),
              "from domain \"mg.example.com\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(templates({"order-shipped"}), multipart_type, body), "");
    EXPECT_EQ(check_body_constraints(templates({"x"}), multipart_type, body),
              "template \"order-shipped\" is not allowed for this agent");
    // Quoted boundary parameter.
    EXPECT_EQ(check_body_constraints(max(3), "multipart/form-data; boundary=\"" + boundary + "\"", body),
              "4 recipients in one request; this agent may address at most 3");
}

// SES v1 (Query API form posts) and Mailgun messages.mime: the recipients and sender they
// really use are counted and checked.
TEST(AgentConstraints, SesV1AndMailgunMimeFormPosts) {
    // SendEmail: Destination.*.member.N, one address each; Source is the sender.
    const std::string send = "Action=SendEmail&Source=ops%40evil.example&Destination.ToAddresses.member.1=a%40example.com"
                             "&Destination.ToAddresses.member.2=b%40example.com&Destination.BccAddresses.member.1=c%40example.com"
                             "&Message.Subject.Data=Hi&Message.Body.Text.Data=Hi";
    EXPECT_EQ(check_body_constraints(max(2), urlencoded, send), "3 recipients in one request; this agent may address at most 2");
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), urlencoded, send),
              "from domain \"evil.example\" is not allowed for this agent");
    // SendRawEmail: Destinations.member.N when given, else the message's own To/Cc/Bcc; its From.
    const std::string raw = "RnJvbTogeEBldmlsLmV4YW1wbGUNClRvOiBhQGV4YW1wbGUuY29tLCBiQGV4YW1wbGUuY29tDQpCY2M6IGNAZXhhbXBsZS5jb20NCg0KQm9keQ0K";
    const std::string raw_send = "Action=SendRawEmail&RawMessage.Data=" + raw;
    EXPECT_EQ(check_body_constraints(max(2), urlencoded, raw_send), "3 recipients in one request; this agent may address at most 2");
    // With Destinations, SES sends to them; the larger count is taken (never an undercount).
    EXPECT_EQ(check_body_constraints(max(3), urlencoded, raw_send + "&Destinations.member.1=a%40example.com"), "");
    EXPECT_EQ(check_body_constraints(max(2), urlencoded,
                                     raw_send + "&Destinations.member.1=a%40example.com&destinations.member.2=b%40x.io"),
              "3 recipients in one request; this agent may address at most 2");
    // Names in any case and lists in a value, as the meter and the guards read them (a server
    // that folds case or splits lists must not find recipients the limit never counted).
    EXPECT_EQ(check_body_constraints(max(3), urlencoded,
                                     raw_send + "&destinations.member.1=a%40x.io&DESTINATIONS.MEMBER.2=b%40x.io"
                                                "&Destinations.member.3=c%40x.io&destinations.member.4=d%40x.io"),
              "4 recipients in one request; this agent may address at most 3");
    EXPECT_EQ(check_body_constraints(max(3), urlencoded,
                                     raw_send + "&Destinations.member.1=a%40x.io%2Cb%40x.io%2Cc%40x.io%2Cd%40x.io"),
              "4 recipients in one request; this agent may address at most 3");
    EXPECT_EQ(check_body_constraints(max(1), urlencoded,
                                     "Action=SendEmail&Source=a%40example.com&destination.toAddresses.member.1=a%40x.io"
                                     "&Destination.ToAddresses.member.2=b%40x.io"),
              "2 recipients in one request; this agent may address at most 1");
    EXPECT_EQ(check_body_constraints(max(4), urlencoded,
                                     "Action=SendRawEmail&RawMessage.Data=" + raw + "&Destinations.member.1=a%40x.io"
                                     "&Destinations.member.2=b%40x.io&Destinations.member.3=c%40x.io"
                                     "&Destinations.member.4=d%40x.io&Destinations.member.5=e%40x.io"),
              "5 recipients in one request; this agent may address at most 4");
    // SendBulkTemplatedEmail: every destination's addresses.
    EXPECT_EQ(check_body_constraints(max(2), urlencoded,
                                     "Action=SendBulkTemplatedEmail&Source=a%40example.com&Template=t"
                                     "&Destinations.member.1.Destination.ToAddresses.member.1=a%40x.io"
                                     "&Destinations.member.1.ReplacementTemplateData=%7B%7D"
                                     "&Destinations.member.2.Destination.ToAddresses.member.1=b%40x.io"
                                     "&Destinations.member.2.Destination.CcAddresses.member.1=c%40x.io"),
              "3 recipients in one request; this agent may address at most 2");
    // RawMessage.Data is base64, as SES reads it: a value that is not is refused, not read as text.
    EXPECT_EQ(check_body_constraints(max(5), urlencoded, "Action=SendRawEmail&RawMessage.Data=To%3A+a%40x.io%0D%0A%0D%0Ax"),
              "a raw MIME message is not base64");
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), urlencoded, raw_send),
              "from domain \"evil.example\" is not allowed for this agent");
    // Mailgun messages.mime: recipients are its `to` field; the sender is the message's From.
    const std::string mime = multipart_field("to", "a@example.com") + "--" + boundary +
                             "\r\nContent-Disposition: form-data; name=\"message\"; filename=\"m.mime\"\r\n\r\n"
                             "From: Ops <ops@evil.example>\r\nTo: a@example.com\r\nSubject: Hi\r\n\r\nHi\r\n--" +
                             boundary + "--\r\n";
    EXPECT_EQ(check_body_constraints(max(1), multipart_type, mime), "");
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), multipart_type, mime),
              "from domain \"evil.example\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(domains({"evil.example"}), multipart_type, mime), "");
}

TEST(AgentConstraints, MalformedMultipartIsRefused) {
    const std::string body = mailgun_multipart();
    const std::string malformed = "the multipart/form-data body is malformed";
    EXPECT_EQ(check_body_constraints(max(10), "multipart/form-data", body), malformed);           // no boundary
    EXPECT_EQ(check_body_constraints(max(10), "multipart/form-data; boundary=other", body), malformed);
    EXPECT_EQ(check_body_constraints(max(10), multipart_type, body.substr(0, body.size() / 2)), malformed);  // cut
    // Bare LF line endings: an upstream might read fields we cannot.
    std::string lf = body;
    for (std::size_t p = 0; (p = lf.find("\r\n", p)) != std::string::npos;) {
        lf.erase(p, 1);
    }
    EXPECT_EQ(check_body_constraints(max(10), multipart_type, lf), malformed);
}

TEST(AgentConstraints, InvalidJsonIsRefusedWhenConstraintsExist) {
    const std::string why = "the body is not valid JSON";
    EXPECT_EQ(check_body_constraints(max(10), json, R"j({"personalizations": [{"to": [)j"), why);
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json, "from=a@example.com"), why);
    EXPECT_EQ(check_body_constraints(templates({"t"}), "application/vnd.api+json", "{'a': 1}"), why);
    // No content type, but the body looks like JSON: read as JSON.
    EXPECT_EQ(check_body_constraints(max(10), "", "{\"personalizations\": "), why);
    EXPECT_EQ(check_body_constraints(max(4), "", sendgrid), "5 recipients in one request; this agent may address at most 4");
    // Deep nesting beyond the parser's limit is an error, not a crash.
    const std::string deep = std::string(5000, '[') + std::string(5000, ']');
    EXPECT_EQ(check_body_constraints(max(10), json, deep), why);
}

TEST(AgentConstraints, FromAbsentDoesNotApply) {
    body_constraints c;
    c.from_domains = {"example.com"};
    const std::string body = R"j({"personalizations": [{"to": [{"email": "a@elsewhere.example"}]}],
        "subject": "s", "content": [{"type": "text/plain", "value": "x"}]})j";
    EXPECT_EQ(check_body_constraints(c, json, body), "");
    EXPECT_EQ(check_body_constraints(c, urlencoded, "to=a%40elsewhere.example&text=hi"), "");
    // A template is another matter: a send without one is refused to an agent held to them.
    c.template_ids = {"welcome-v2"};
    EXPECT_EQ(check_body_constraints(c, json, body), "this send names no template; this agent may send only its templates");
    EXPECT_EQ(check_body_constraints(c, urlencoded, "to=a%40elsewhere.example&text=hi"),
              "this send names no template; this agent may send only its templates");
    // null is absent too.
    EXPECT_EQ(check_body_constraints(c, json, R"j({"from": null, "template_id": null})j"), "");
}

// A HubSpot single send without message.from (or replyTo) goes out with the stored marketing
// email's, which no body shows: refused to an agent held to those domains, like SendGrid's
// stored sender_id, not taken as no sender.
TEST(AgentConstraints, AHubSpotSingleSendWithoutItsFromTakesTheStoredSender) {
    body_constraints c;
    c.from_domains = {"example.com"};
    const std::string stored = R"j({"emailId": 4242, "message": {"to": "a@example.com"}})j";
    EXPECT_EQ(check_body_constraints(c, json, stored),
              "this single send takes its from address from the stored marketing email (emailId), which this agent's "
              "from_domains cannot read; give message.from");
    EXPECT_EQ(check_body_constraints(c, json, R"j({"emailId": 4242, "message": {"to": "a@example.com", "from": null}})j"),
              check_body_constraints(c, json, stored));
    // Every copy of message needs its own, spelled as HubSpot reads it (a reader that keeps
    // the last duplicate, or matches keys with case, would see none).
    for (const char* body : {R"j({"emailId": 1, "message": {"to": "a@example.com", "from": "n@example.com"},
                                 "message": {"to": "a@example.com"}})j",
                             R"j({"emailId": 1, "message": {"to": "a@example.com", "From": "n@example.com"}})j"}) {
        EXPECT_THAT(check_body_constraints(c, json, body), HasSubstr("takes its from address from the stored")) << body;
    }
    EXPECT_EQ(check_body_constraints(c, json, R"j({"emailId": 4242, "message": {"to": "a@example.com",
        "from": "News <news@example.com>"}})j"), "");
    EXPECT_EQ(check_body_constraints(c, json, R"j({"emailId": 4242, "message": {"to": "a@example.com",
        "from": "news@other.example"}})j"), "from domain \"other.example\" is not allowed for this agent");
    body_constraints r;
    r.reply_to_domains = {"example.com"};
    EXPECT_EQ(check_body_constraints(r, json, stored),
              "this single send takes its reply-to from the stored marketing email (emailId), which this agent's "
              "reply_to_domains cannot read; give message.replyTo");
    EXPECT_EQ(check_body_constraints(r, json, R"j({"emailId": 4242, "message": {"to": "a@example.com",
        "replyTo": ["help@example.com"]}})j"), "");
    for (const char* none : {"[]", "[\"\"]", "[null]", "{}", "\" \""}) {
        EXPECT_THAT(check_body_constraints(r, json, std::string{R"j({"emailId": 4242, "message": {"to": "a@example.com", "replyTo": )j"} +
                                                        none + "}}"),
                    HasSubstr("takes its reply-to from the stored")) << none << " names nobody";
    }
    EXPECT_THAT(check_body_constraints(c, json, R"j({"emailId": 1, "message": {"to": "a@example.com", "from": {}}})j"),
                HasSubstr("takes its from address from the stored")) << "an object is not HubSpot's from";
    // An agent held to no domain is not asked for them.
    body_constraints n;
    n.max_recipients = 5;
    EXPECT_EQ(check_body_constraints(n, json, stored), "");
}

TEST(AgentConstraints, WrongTypesFailClosed) {
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json, R"j({"from": ["a@example.com"]})j"),
              "the from address is not a string");
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json, R"j({"from": {"email": 7}})j"),
              "the from address is not a string");
    EXPECT_EQ(check_body_constraints(templates({"t"}), json, R"j({"template_id": {"id": "t"}})j"),
              "the template id is not a string");
    EXPECT_EQ(check_body_constraints(templates({"t"}), json, R"j({"template_id": ""})j"),
              "template \"\" is not allowed for this agent");
    // Odd recipient shapes still count: a string list, objects, numbers.
    EXPECT_THAT(check_body_constraints(max(3), json, R"j({"personalizations": [{"to": "a@x.com, b@x.com",
        "cc": [{"email": "c@x.com"}, 5], "bcc": {"email": "d@x.com"}}]})j"),
                HasSubstr("5 recipients"));
}

TEST(AgentConstraints, DuplicateAndOddlyCasedKeysCannotHideAValue) {
    // Parsers disagree on which duplicate wins and whether keys are case-sensitive.
    EXPECT_EQ(check_body_constraints(templates({"d-ok"}), json, R"j({"template_id": "d-ok", "template_id": "d-evil"})j"),
              "template \"d-evil\" is not allowed for this agent");
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json,
                                     R"j({"from": {"email": "a@example.com"}, "From": {"email": "b@evil.example"}})j"),
              "from domain \"evil.example\" is not allowed for this agent");
    EXPECT_THAT(check_body_constraints(max(1), json, R"j({"personalizations": [{"to": [{"email": "a@x.com"}],
        "TO": [{"email": "b@x.com"}]}]})j"),
                HasSubstr("2 recipients"));
    EXPECT_THAT(check_body_constraints(max(1), urlencoded, "to=a%40x.com&To=b%40x.com"), HasSubstr("2 recipients"));
    // Go also folds U+017F to s: "per\u017fonalizations" is `personalizations` to it.
    EXPECT_THAT(check_body_constraints(max(1), json, "{\"per\xC5\xBFonalizations\": [{\"to\": [{\"email\": \"a@x.com\"}, "
                                                     "{\"email\": \"b@x.com\"}]}]}"),
                HasSubstr("2 recipients"));
}

TEST(AgentConstraints, ReasonsShowNoRecipientAndStayPrintable) {
    // A long from domain is cut; non-ASCII bytes are masked; recipients never appear.
    const std::string long_from = "{\"from\": {\"email\": \"a@" + std::string(100, 'x') +
                                  ".com\"}, \"personalizations\": [{\"to\": [{\"email\": \"secret@x.com\"}]}]}";
    const auto why = check_body_constraints(domains({"example.com"}), json, long_from);
    EXPECT_EQ(why, "from domain \"" + std::string(64, 'x') + "\"... is not allowed for this agent");
    EXPECT_THAT(why, Not(HasSubstr("secret")));
    const std::string accented = "{\"from\": {\"email\": \"a@\xc3\xa9xample.com\"}}";
    EXPECT_EQ(check_body_constraints(domains({"example.com"}), json, accented),
              "from domain \"??xample.com\" is not allowed for this agent");
}

TEST(AgentConstraints, ArbitraryBytesNeverCrash) {
    body_constraints c;
    c.max_recipients = 1;
    c.from_domains = {"example.com"};
    c.template_ids = {"t"};
    static constexpr char alphabet[] = "{}[]\",:<>@%=&\r\n-tofrom \x00\xff";
    std::uint32_t x = 12345;
    std::string body;
    for (int round = 0; round < 2000; ++round) {
        body.clear();
        const std::size_t n = round % 97;
        for (std::size_t i = 0; i < n; ++i) {
            x = x * 1103515245u + 12345u;
            body += alphabet[(x >> 16) % (sizeof alphabet - 1)];
        }
        (void)check_body_constraints(c, json, body);
        (void)check_body_constraints(c, urlencoded, body);
        (void)check_body_constraints(c, multipart_type, "--" + boundary + body);
        (void)check_body_constraints(c, "", body);
    }
    SUCCEED();
}

TEST(AgentConstraints, SafeFromManyThreads) {
    body_constraints c;
    c.max_recipients = 4;
    c.from_domains = {"mail.example.com", "example.com", "mg.example.com"};
    std::vector<std::thread> threads;
    std::atomic<int> wrong{0};
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < 200; ++i) {
                wrong += check_body_constraints(c, json, sendgrid) != "5 recipients in one request; this agent may address at most 4";
                wrong += check_body_constraints(c, urlencoded, mailgun_form).find("5 recipients") == std::string::npos;
                wrong += check_body_constraints(c, json, ses_bulk).find("5 recipients") == std::string::npos;
            }
        });
    }
    for (auto& th : threads) {
        th.join();
    }
    EXPECT_EQ(wrong.load(), 0);
}

TEST(FormHelpers, SplitAddressesAndParseForm) {
    std::vector<std::string_view> items;
    split_addresses(R"( "Doe, Jane" <jane@x.com>, bob@y.com ,, <c@z.com>)", items);
    ASSERT_EQ(items.size(), 3u);
    EXPECT_EQ(items[0], R"("Doe, Jane" <jane@x.com>)");
    EXPECT_EQ(items[1], "bob@y.com");
    EXPECT_EQ(items[2], "<c@z.com>");
    std::vector<std::pair<std::string, std::string>> fields;
    EXPECT_TRUE(parse_form(urlencoded, "a=1&b=%3C2%3E&a=3", fields));
    ASSERT_EQ(fields.size(), 3u);
    EXPECT_EQ(fields[1].second, "<2>");
    EXPECT_TRUE(parse_form(multipart_type, mailgun_multipart(), fields));
    EXPECT_EQ(fields.size(), 7u);
    EXPECT_FALSE(parse_form("multipart/form-data", mailgun_multipart(), fields));
}

TEST(forms, method_override_fields) {
    EXPECT_EQ(method_override_field("POST", urlencoded, "to=a%40x.com&_method=DELETE"), "_method");
    EXPECT_EQ(method_override_field("POST", urlencoded, "%5F%48ttpMethod=PATCH"), "%5F%48ttpMethod");
    EXPECT_EQ(method_override_field("POST", urlencoded, "a=1;_Method"), "_Method");  // no value: still a field
    EXPECT_EQ(method_override_field("POST", urlencoded, "to=_method&method=DELETE&__method=x"), "");
    EXPECT_EQ(method_override_field("POST", "application/json", "_method=DELETE"), "");
    EXPECT_EQ(method_override_field("POST", multipart_type, mailgun_multipart()), "");
    const std::string mp = "multipart/form-data; boundary=b1";
    EXPECT_EQ(method_override_field("POST", mp, "--b1\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\nx@y.com\r\n--b1\r\n"
                                        "Content-Disposition: form-data; name=\"_HTTPMETHOD\"\r\n\r\nDELETE\r\n--b1--\r\n"),
              "_HTTPMETHOD");
    // A malformed multipart body: the fields before the fault are still looked at.
    EXPECT_EQ(method_override_field("POST", mp, "--b1\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b1\r\nbroken"),
              "_method");
    // And a field past the fault, where a lenient reader (Rack) may still find it: a body that
    // cannot be read to its end and has the word anywhere is refused.
    // (A part whose headers never end: the reading stops there.)
    const std::string cut = "--b1\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\nx@y.com\r\n--b1\r\n"
                            "Content-Disposition: form-data; name=\"";
    EXPECT_EQ(method_override_field("POST", mp, cut + "_method\"\r\nDELETE\r\n--b1--\r\n"),
              "_method (in a multipart body that cannot be read to its end)");
    EXPECT_EQ(method_override_field("POST", mp, cut + "payment method\"\r\nx\r\n--b1--\r\n"),
              "_method (in a multipart body that cannot be read to its end)")
        << "the word alone is enough in a body that cannot be read";
    EXPECT_EQ(method_override_field("POST", mp, cut + "c\"\r\nx\r\n--b1--\r\n"), "")
        << "malformed, but nothing about a method";
    // Read as Rack reads a body: one without a Content-Type as urlencoded, any multipart
    // type as a form.
    EXPECT_EQ(method_override_field("POST", "", "to=a%40x.com&_method=DELETE"), "_method");
    EXPECT_EQ(method_override_field("POST", "", R"({"to":"a@x.com"})"), "");
    // Only a POST's untyped body is read so (Rack), and not one that starts like JSON: an
    // HTML part in it (`&amp;_method=put`) is no form field.
    EXPECT_EQ(method_override_field("PUT", "", "id=7&_method=DELETE"), "");
    EXPECT_EQ(method_override_field("POST", "", "\xEF\xBB\xBF [{\"html\":\"a&amp;_method=put\"}]"), "");
    EXPECT_TRUE(read_as_form_somewhere("POST", "", "a=1"));
    EXPECT_FALSE(read_as_form_somewhere("POST", "", " {\"a\":1}"));
    EXPECT_TRUE(read_as_form_somewhere("PATCH", "multipart/mixed; boundary=b", "x"));
    EXPECT_FALSE(read_as_form_somewhere("POST", "application/json", "a=1"));
    EXPECT_TRUE(form_type_somewhere("multipart/related; boundary=b"));
    EXPECT_FALSE(form_type_somewhere(""));
    EXPECT_EQ(method_override_field("POST", "", ""), "");
    for (const char* type : {"multipart/mixed; boundary=b1", "Multipart/Related; boundary=b1"}) {
        EXPECT_EQ(method_override_field("POST", type, "--b1\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b1--\r\n"),
                  "_method")
            << type;
    }
    EXPECT_EQ(method_override_field("POST", "text/plain", "_method=DELETE"), "");
}

// Address lists split as RFC 5322 reads them (quoted strings with escapes); a list another
// reader could split otherwise is refused, never counted as fewer recipients.
TEST(FormHelpers, AddressListsReadOneWayOrNotAtAll) {
    std::vector<std::string_view> items;
    auto split = [&](std::string_view list) {
        items.clear();
        return split_addresses(list, items);
    };
    ASSERT_TRUE(split(R"("\"" <ok@x.com>, v1@evil.com, v2@evil.com)"));
    ASSERT_EQ(items.size(), 3u) << "the escaped quote does not hide the rest";
    EXPECT_EQ(items[0], R"("\"" <ok@x.com>)");
    EXPECT_EQ(items[2], "v2@evil.com");
    ASSERT_TRUE(split(R"("Doe, \"Jr\"" <j@x.com>; b@y.com ; team: c@z.com, d@z.com;)"));
    ASSERT_EQ(items.size(), 4u) << "';' separates too";
    EXPECT_EQ(items[0], R"("Doe, \"Jr\"" <j@x.com>)");
    EXPECT_EQ(items[2], "c@z.com") << "a group's name is left out";
    ASSERT_TRUE(split(R"("a@b.com" <a@b.com>, "x\\" <y@z.com>)"));
    EXPECT_EQ(items.size(), 2u) << "an '@' in quotes is a name; an escaped backslash ends nothing";
    for (const char* odd : {R"(v@evil.com ("), x (") <ok@x.com>)", "a@x.com b@evil.com", "Bob <b@x.com> c@evil.com",
                            "<a@x.com><b@evil.com>", "<a@x.com, b@evil.com>", "\"open, a@x.com", "<a@x.com",
                            "a@x.com>", "<b@x.com> \"tail\"", "jane@x.com <other@x.com>", "(a@b.com) c@d.com",
                            "Bob (w,k) <b@x.com>", "Bob (open <b@x.com>", "<b(x)@x.com>"}) {
        EXPECT_FALSE(split(odd)) << odd;
    }
    // What CRMs and files write: a display name that is the address, a comment, line ends.
    ASSERT_TRUE(split("jane@x.com <JANE@x.com>, Acme Support (EU) <s@acme.com>, a@x.com (work)"));
    ASSERT_EQ(items.size(), 3u);
    ASSERT_TRUE(split("Jane <a@x.com>\n"));
    EXPECT_EQ(items.size(), 1u);
    ASSERT_TRUE(split("a@x.com,\r\nb@y.com"));
    ASSERT_EQ(items.size(), 2u);
    EXPECT_EQ(items[1], "b@y.com");
    EXPECT_EQ(check_body_constraints(max(2), urlencoded, "to=%22%5C%22%22+%3Cok%40x.com%3E%2C+v1%40evil.com%2C+v2%40evil.com"),
              "3 recipients in one request; this agent may address at most 2");
    EXPECT_THAT(check_body_constraints(max(5), urlencoded, "to=v%40evil.com+%28%22%29%2C+x+%28%22%29+%3Cok%40x.com%3E"),
                testing::HasSubstr("not an address list that reads one way only"));
}

// What Go's mime/multipart reads that we would not: parts behind bare-LF delimiters, names
// joined from RFC 2231 pieces, header lines split at a bare LF, quoted-printable values.
TEST(FormHelpers, MultipartThatGoReadsOtherwiseIsMalformed) {
    std::vector<std::pair<std::string, std::string>> fields;
    const std::string b = boundary;
    const std::string ok_part = "\r\n--" + b + "\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\nok@x.com\r\n--" + b +
                                "--\r\n";
    EXPECT_TRUE(parse_form(multipart_type, "--" + b + "\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\nok@x.com\r\n--" +
                                               b + "--\r\n", fields));
    // LF delimiters first (Go reads these parts), then a CRLF part (all we would read).
    EXPECT_FALSE(parse_form(multipart_type,
                            "--" + b + "\nContent-Disposition: form-data; name=\"to\"\n\nv1@evil.com,v2@evil.com\n--" + b +
                                "--\n" + ok_part, fields));
    // An epilogue with an LF delimiter line.
    EXPECT_FALSE(parse_form(multipart_type, ok_part.substr(2) + "\n--" + b + "\nContent-Disposition: form-data; name=\"to\"\n\nv@evil.com\n", fields));
    auto one_part = [&](const std::string& headers) {
        return "--" + b + "\r\n" + headers + "\r\n\r\nv1=40evil.com=2C ok@x.com\r\n--" + b + "--\r\n";
    };
    EXPECT_FALSE(parse_form(multipart_type, one_part(R"(Content-Disposition: form-data; name*0="t"; name*1="o")"), fields));
    // An RFC 5987 file name (.NET sends one with every file) is no field name: fine.
    EXPECT_TRUE(parse_form(multipart_type,
                           one_part(R"(Content-Disposition: form-data; name="attachment"; filename*=utf-8''r%C3%A9sum%C3%A9.pdf)"),
                           fields));
    EXPECT_FALSE(parse_form(multipart_type, one_part("X-A: b\nContent-Disposition: form-data; name=\"to\""), fields));
    EXPECT_FALSE(parse_form(multipart_type, one_part("Content-Disposition: form-data"), fields)) << "no name";
    EXPECT_FALSE(parse_form(multipart_type,
                            one_part("Content-Disposition: form-data; name=\"to\"\r\nContent-Transfer-Encoding: quoted-printable"),
                            fields));
    EXPECT_TRUE(parse_form(multipart_type,
                           one_part("Content-Disposition: form-data; name=\"to\"\r\nContent-Transfer-Encoding: 8bit"), fields));
}

// Multipart read as the RFCs (and the parsers an upstream runs: Werkzeug, Python's email,
// Go's mime/multipart) read it; where those could disagree, the body is malformed.
TEST(FormHelpers, MultipartIsReadAsUpstreamParsersReadIt) {
    std::vector<std::pair<std::string, std::string>> fields;
    auto names = [&] {
        std::string out;
        for (const auto& [n, v] : fields) {
            out += n + "=" + v + ";";
        }
        return out;
    };
    const std::string to = multipart_field("to", "a@evil.example, b@evil.example");
    const std::string close = "--" + boundary + "--\r\n";
    // The boundary anywhere but in a delimiter is refused (RFC 2046 says it cannot be
    // there; readers disagree on what else is one): mid-line in the preamble (Werkzeug needs
    // no line break before the first), mid-line in a value, `--Bx`, and after a bare LF or
    // CR in a value (Werkzeug ends a value at any line break).
    EXPECT_FALSE(parse_form(multipart_type, "x--" + boundary + "--\r\n" + to + close, fields));
    EXPECT_FALSE(parse_form(multipart_type, "x--" + boundary + "\r\n" + to + close, fields));
    EXPECT_FALSE(parse_form(multipart_type, multipart_field("text", "hello x--" + boundary + "-- there") + to + close, fields));
    EXPECT_FALSE(parse_form(multipart_type, multipart_field("text", "a\r\n--" + boundary + "x b") + to + close, fields));
    EXPECT_FALSE(parse_form(multipart_type,
                            multipart_field("text", "hi\n--" + boundary + "\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\nv@evil.com") +
                                close,
                            fields));
    EXPECT_FALSE(parse_form(multipart_type, multipart_field("text", "hi\r\n--" + boundary + "\nX") + close, fields));
    // Other text in a value is data.
    EXPECT_TRUE(parse_form(multipart_type, multipart_field("text", "a\r\n-- b --\r\n") + to + close, fields));
    EXPECT_EQ(fields.size(), 2u);
    EXPECT_EQ(fields[0].second, "a\r\n-- b --\r\n");
    // A tab after ';', any case and a quoted-pair are still the name "to".
    for (const std::string disposition : {"form-data;\tname=\"to\"", "form-data; NAME=to", "form-data ; name=\"t\\o\""}) {
        const std::string body = "--" + boundary + "\r\nContent-Disposition: " + disposition + "\r\n\r\nx@evil.example\r\n" + close;
        ASSERT_TRUE(parse_form(multipart_type, body, fields)) << disposition;
        EXPECT_EQ(names(), "to=x@evil.example;") << disposition;
    }
    // What parsers read differently is refused: an encoded name*, a repeated name or
    // boundary, two dispositions, an unterminated quote, no close delimiter.
    // Parameters that pattern-matching readers (Werkzeug) pick out otherwise: blanks around
    // '=', a non-token name or unquoted value.
    for (const std::string disposition : {"form-data; name*=UTF-8''to", "form-data; name=\"a\"; name=\"to\"",
                                          "form-data; name=\"to", "form-data; name = \"to\"", "form-data; name=to\"x",
                                          "form-data; name=subject; filename =\"; name=to\"", "form-data; name="}) {
        const std::string body = "--" + boundary + "\r\nContent-Disposition: " + disposition + "\r\n\r\nx@evil.example\r\n" + close;
        EXPECT_FALSE(parse_form(multipart_type, body, fields)) << disposition;
    }
    EXPECT_FALSE(parse_form(multipart_type + "; boundary=other", to + close, fields));
    EXPECT_FALSE(parse_form("multipart/form-data; boundary=" + boundary + "\"x", to + close, fields));
    // A part header name with blanks before the colon is that header to readers that trim
    // it (Werkzeug, older Go): refused.
    EXPECT_FALSE(parse_form(multipart_type,
                            "--" + boundary + "\r\nContent-Disposition : form-data; name=\"to\"\r\nContent-Disposition: "
                            "form-data; name=\"subject\"\r\n\r\nx\r\n" + close,
                            fields));
    EXPECT_FALSE(parse_form(multipart_type,
                            "--" + boundary + "\r\nContent-Disposition: form-data; name=\"to\"\r\nContent-Transfer-Encoding "
                            ": quoted-printable\r\n\r\nv=40evil.com\r\n" + close,
                            fields));
    EXPECT_FALSE(parse_form(multipart_type,
                            "--" + boundary + "\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Disposition: form-data; "
                            "name=\"to\"\r\n\r\nx\r\n" + close,
                            fields));
    EXPECT_FALSE(parse_form(multipart_type, to, fields));
    // A folded header line (Python's email and Go's textproto unfold it into name="to").
    EXPECT_FALSE(parse_form(multipart_type,
                            "--" + boundary + "\r\nContent-Disposition: form-data;\r\n name=\"to\"\r\n\r\nx@evil.example\r\n" + close,
                            fields));
    // Quoted boundaries, transport padding and a part without a body still read.
    EXPECT_TRUE(parse_form("multipart/form-data; boundary=\"" + boundary + "\"",
                           "--" + boundary + "  \r\nContent-Disposition: form-data; name=\"empty\"\r\n\r\n" + to + close, fields));
    EXPECT_EQ(names(), "empty=;to=a@evil.example, b@evil.example;");
}

// The media type decides how a body is read, never a parameter: a form whose content type
// mentions "json" in a parameter is still a form.
TEST(AgentConstraints, AJsonParameterDoesNotMakeAFormJson) {
    const std::string body = R"({"a":"","b":"&to=a@evil.example,b@evil.example,c@evil.example&from=x@evil.example&c="})";
    EXPECT_NE(check_body_constraints(max(2), "application/x-www-form-urlencoded; x=json", body), "");
}

// A body read two ways (JSON under a form type) or one we cannot read as the form a server
// may see (another form-like type) is refused, whatever it holds.
TEST(AgentConstraints, BodiesThatReadAsAnotherFormAreRefused) {
    const std::string sendgrid = R"({"personalizations":[{"to":[{"email":"a@x.com"},{"email":"b@x.com"},{"email":"c@x.com"}]}]})";
    EXPECT_THAT(check_body_constraints(max(5), urlencoded, sendgrid), HasSubstr("starts like JSON"));
    EXPECT_THAT(check_body_constraints(max(5), urlencoded, "\xEF\xBB\xBF" + sendgrid), HasSubstr("starts like JSON"))
        << "past a byte order mark too";
    // `;` separates fields too for some servers: one recipient here, two there.
    const auto semicolon = check_body_constraints(max(1), urlencoded, "to=a%40x.com;to=b%40y.com");
    EXPECT_THAT(semicolon, HasSubstr("with a raw ';' reads two ways"));
    EXPECT_TRUE(body_unreadable(semicolon));
    EXPECT_EQ(check_body_constraints(max(1), urlencoded, "to=a%40x.com&text=a%3Bb"), "") << "an encoded ';' is data";
    // The query's fields count too, so its raw ';' is refused the same way, beside any body.
    EXPECT_THAT(check_body_constraints(max(1), urlencoded, "text=hi", "o:tag=x;to=a%40evil.com;to=b%40evil.com"),
                HasSubstr("query string with a raw ';'"));
    EXPECT_TRUE(body_unreadable(check_body_constraints(max(1), "application/json", "{}", "to=a%40x.com;to=b%40y.com")));
    EXPECT_EQ(check_body_constraints(max(1), urlencoded, "text=hi", "o:tag=a%3Bb"), "");
    EXPECT_THAT(check_body_constraints(max(5), "application/x-url-encoded", "to=a%40x.com"),
                HasSubstr("is read as a form by some servers but not here"));
    EXPECT_THAT(check_body_constraints(max(5), "multipart/related; boundary=b", "--b\r\n\r\nx\r\n--b--\r\n"),
                HasSubstr("is read as a form by some servers"));
    // A form in a charset that does not keep ASCII is other text to a server that honours it
    // (`%00t%00o` is `to` in UTF-16): refused, top-level as in a part.
    const auto utf16 = check_body_constraints(max(1), "application/x-www-form-urlencoded; charset=UTF-16BE",
                                              "%00t%00o=%00a%00%40%00x%00.%00c%00o%00m%00%2C%00b%00%40%00y%00.%00c%00o%00m");
    EXPECT_THAT(utf16, HasSubstr("a form body in charset \"UTF-16BE\" is in a charset that does not keep ASCII"));
    EXPECT_TRUE(body_unreadable(utf16));
    EXPECT_THAT(check_body_constraints(max(5), "multipart/form-data; boundary=b; charset=utf-7", "--b--\r\n"),
                HasSubstr("does not keep ASCII"));
    // Nor one whose second bytes include ASCII: in Shift_JIS `\x81\` is one character, so
    // the quote after it closes, and `ceo@evil.com` is a recipient there.
    for (const char* multi : {"Shift_JIS", "Big5", "GBK", "EUC-KR"}) {
        EXPECT_THAT(check_body_constraints(max(5), std::string{"application/x-www-form-urlencoded; charset="} + multi,
                                           "to=a%40x.com"),
                    HasSubstr("is not read here")) << multi;
    }
    EXPECT_THAT(check_body_constraints(max(5), "application/x-www-form-urlencoded; charset=utf-8; charset=utf-16", "to=a%40x.com"),
                HasSubstr("a form body in charset"));
    for (const char* kept : {"ISO-8859-1", "latin-1", "KOI8-R", "windows-1252", "\"utf-8\"", "\"\""}) {
        EXPECT_EQ(check_body_constraints(max(5), std::string{"application/x-www-form-urlencoded; charset="} + kept,
                                         "to=a%40x.com"),
                  "")
            << kept << " keeps ASCII as it is";
    }
    EXPECT_EQ(check_body_constraints(max(5), "application/x-www-form-urlencoded;charset=UTF-8", "to=a%40x.com"), "");
    EXPECT_EQ(check_body_constraints(max(5), "application/json", sendgrid), "");
    EXPECT_EQ(check_body_constraints(max(5), "text/plain", "hello"), "");
    // Those answers are a bad request (400 bad_body), not a broken constraint (403).
    EXPECT_TRUE(body_unreadable(check_body_constraints(max(5), urlencoded, sendgrid)));
    EXPECT_TRUE(body_unreadable(check_body_constraints(max(5), urlencoded, "to=%22open%2C+a%40x.com")));
    EXPECT_FALSE(body_unreadable(check_body_constraints(max(2), "application/json", sendgrid)));
}


// A Bulk API job's creation stands for the request its operation makes on its object.
TEST(AgentConstraints, ABulkJobStandsForItsOperationOnItsObject) {
    std::vector<subrequest> out;
    EXPECT_EQ(salesforce_bulk_job("/services/data/v59.0/jobs/ingest", "application/json",
                                  R"({"object":"Account","operation":"hardDelete","contentType":"CSV"})", out),
              "");
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].method, "DELETE");
    EXPECT_EQ(out[0].path, "/services/data/v59.0/sobjects/Account");
    EXPECT_EQ(out[0].what, "the Bulk API job's operation hardDelete");
    out.clear();
    EXPECT_EQ(salesforce_bulk_job("/partners/services/async/58.0/job", "application/xml; charset=UTF-8",
                                  "<jobInfo>\n <operation>upsert</operation>\n <object>Lead</object>\n</jobInfo>", out),
              "");
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].method, "PATCH");
    EXPECT_EQ(out[0].path, "/partners/services/data/v58.0/sobjects/Lead") << "under the base path, as sent";
    out.clear();
    EXPECT_EQ(salesforce_bulk_job("/services/data/v59.0/jobs/ingest", "application/json",
                                  R"({"object":"Account","operation":"insert"})", out),
              "");
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].method, "POST");
    // Not a job's creation: nothing read, nothing added.
    out.clear();
    for (const char* path : {"/services/data/v59.0/jobs/ingest/750xx/batches", "/services/data/v59.0/jobs/query",
                             "/services/data/v59.0/sobjects/Account"}) {
        EXPECT_EQ(salesforce_bulk_job(path, "application/json", R"({"operation":"delete","object":"Account"})", out), "")
            << path;
    }
    EXPECT_TRUE(out.empty());
    // Unreadable, or not a job an allow list can judge: refused.
    for (const char* body : {R"({"object":"Account"})", R"({"object":"Account","operation":"delete","Operation":"insert"})",
                             R"({"object":"../../limits","operation":"insert"})", R"({"object":"Account","operation":"query"})",
                             "not json", R"({"object":"Account","operation":7})"}) {
        EXPECT_NE(salesforce_bulk_job("/services/data/v59.0/jobs/ingest", "application/json", body, out), "") << body;
    }
    EXPECT_NE(salesforce_bulk_job("/services/async/59.0/job", "application/xml",
                                  "<jobInfo><operation>insert</operation><operation>delete</operation><object>A</object></jobInfo>",
                                  out),
              "");
    // XML that an XML parser reads otherwise than a text search: refused.
    for (const char* xml : {"<jobInfo><!--<operation>insert</operation>--><operation >hardDelete</operation>"
                            "<object>Account</object></jobInfo>",
                            "<jobInfo><a:operation xmlns:a=\"x\">delete</a:operation><operation>insert</operation>"
                            "<object>Account</object></jobInfo>",
                            "<jobInfo><operation><![CDATA[delete]]></operation><object>Account</object></jobInfo>",
                            "<jobInfo><Operation>delete</Operation><operation>insert</operation><object>A</object></jobInfo>",
                            "<jobInfo><?pi x?><operation>insert</operation><object>A</object></jobInfo>"}) {
        EXPECT_NE(salesforce_bulk_job("/services/async/59.0/job", "application/xml", xml, out), "") << xml;
    }
    EXPECT_TRUE(out.empty());
    // The declaration is fine; a query job is a read.
    EXPECT_EQ(salesforce_bulk_job("/services/async/59.0/job", "application/xml",
                                  "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<jobInfo xmlns=\"http://www.force.com/2009/06/"
                                  "asyncapi/dataload\"><operation>queryAll</operation><object>Lead</object></jobInfo>",
                                  out),
              "");
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].method, "GET");
    EXPECT_EQ(out[0].path, "/services/data/v59.0/queryAll") << "deleted and archived rows: its own resource";
}

// A body without a type that is not JSON: Rack reads it as a form, so it is not read as nothing.
TEST(AgentConstraints, AnUntypedBodyThatIsNoJsonIsRefused) {
    body_constraints c;
    c.max_recipients = 1;
    const auto why = check_body_constraints(c, "", "from=ceo%40evil.com&to=a%40x.com,b%40x.com");
    EXPECT_THAT(why, HasSubstr("without a Content-Type"));
    EXPECT_TRUE(body_unreadable(why)) << "a bad request (400), not a broken constraint";
    EXPECT_EQ(check_body_constraints(c, "", R"({"personalizations":[{"to":[{"email":"a@x.com"}]}]})"), "")
        << "untyped JSON is read as JSON";
    EXPECT_EQ(check_body_constraints(c, "", "  \r\n"), "") << "no body";
    EXPECT_THAT(check_body_constraints(c, "", "from=ceo%40evil.com&to=a%40x.com,b%40x.com", "x=1"),
                HasSubstr("without a Content-Type"))
        << "a query string beside it changes nothing";
}

}  // namespace
}  // namespace bb::rules
