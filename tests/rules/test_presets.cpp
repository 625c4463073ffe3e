// Every preset against a body shaped like the API's public documentation.
#include <gtest/gtest.h>

#include "helpers.hpp"
#include "rules/presets/presets.hpp"

namespace bb::rules::test {
namespace {

// What the preset measures for this request (0 if the preset does not match it).
double measure(std::string_view preset_name, request& req) {
    engine eng{load_ok(config(R"j({"id": "p", "preset": ")j" + std::string{preset_name} +
                              R"j(", "measure": {"per_request": "preset"}, "limit": 0,
        "failure_mode": "volume-spike", "trips": "x"})j"))};
    manual_clock clock;
    const auto d = eng.evaluate(req.view(), clock.now());
    EXPECT_NE(d.outcome, verdict::rejected) << d.reason;
    return d.allowed() ? 0 : d.measured;
}

// False when the engine refuses the body as invalid (the preset cannot read it).
bool measure_or_invalid(std::string_view preset_name, request& req) {
    engine eng{load_ok(config(R"j({"id": "p", "preset": ")j" + std::string{preset_name} +
                              R"j(", "measure": {"per_request": "preset"}, "limit": 0,
        "failure_mode": "volume-spike", "trips": "x"})j"))};
    manual_clock clock;
    return eng.evaluate(req.view(), clock.now()).outcome != verdict::rejected;
}

TEST(Presets, SendGridRecipientsAcrossPersonalizations) {
    // Shape of the v3 Mail Send reference example.
    request req;
    req.body = R"j({
      "personalizations": [
        {"to": [{"email": "john_doe@example.com", "name": "John Doe"},
                {"email": "julia_doe@example.com", "name": "Julia Doe"}],
         "cc": [{"email": "jane_doe@example.com", "name": "Jane Doe"}],
         "bcc": [{"email": "james_doe@example.com", "name": "Jim Doe"}]},
        {"from": {"email": "sales@example.com", "name": "Example Sales Team"},
         "to": [{"email": "janice_doe@example.com", "name": "Janice Doe"}],
         "bcc": [{"email": "jordan_doe@example.com", "name": "Jordan Doe"}]}
      ],
      "from": {"email": "orders@example.com", "name": "Example Order Confirmation"},
      "reply_to": {"email": "customer_service@example.com", "name": "Example Customer Service Team"},
      "subject": "Your Example Order Confirmation",
      "content": [{"type": "text/html", "value": "<p>Hello from Twilio SendGrid!</p>"}],
      "categories": ["cake", "pie", "baking"],
      "send_at": 1617260400,
      "tracking_settings": {"click_tracking": {"enable": true, "enable_text": false}}
    })j";
    EXPECT_EQ(measure("sendgrid.recipients", req), 6);
    req.path = "/v3/mail/batch";
    EXPECT_EQ(measure("sendgrid.recipients", req), 0) << "other paths are not mail sends";
}

TEST(Presets, SesSendEmailDestinations) {
    request req;
    req.route = "ses";
    req.host = "email.us-east-1.amazonaws.com";
    req.path = "/v2/email/outbound-emails";
    req.body = R"j({
      "FromEmailAddress": "sender@example.com",
      "Destination": {"ToAddresses": ["recipient1@example.com", "recipient2@example.com"],
                      "CcAddresses": ["cc@example.com"], "BccAddresses": []},
      "ReplyToAddresses": ["reply@example.com"],
      "Content": {"Simple": {"Subject": {"Data": "Test email", "Charset": "UTF-8"},
                             "Body": {"Text": {"Data": "Hello", "Charset": "UTF-8"}}}},
      "ConfigurationSetName": "my-config-set"
    })j";
    EXPECT_EQ(measure("ses.send_email.destinations", req), 3);
    req.body = R"j({"FromEmailAddress": "sender@example.com",
      "Destination": {"ToAddresses": ["recipient1@example.com, recipient2@example.com", "Ann <ann@example.com>"],
                      "BccAddresses": ["\"Doe, Jane\" <jane@example.com>"]},
      "Content": {"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}}}})j";
    EXPECT_EQ(measure("ses.send_email.destinations", req), 4) << "a string holding a list counts each address";
    req.body = R"j({"Destination": {"ToAddresses": ["a@example.com, \"b\" <b@example.com"]}})j";
    EXPECT_FALSE(measure_or_invalid("ses.send_email.destinations", req)) << "a list that reads two ways";
}

// A raw message that names no Destination goes to its own To, Cc and Bcc headers (here a
// quoted comma, a folded group and a BCC in capitals: 5 addresses; the body's To is no
// header).
TEST(Presets, SesRawMessagesAreCountedFromTheirHeaders) {
    request req;
    req.route = "ses";
    req.path = "/v2/email/outbound-emails";
    req.body = R"j({"FromEmailAddress": "sender@example.com",
      "Content": {"Raw": {"Data": "RnJvbTogU2VuZGVyIDxzZW5kZXJAZXhhbXBsZS5jb20+DQpUbzogYUBleGFtcGxlLmNvbSwgIkRvZSwgSmFuZSIgPGphbmVAZXhhbXBsZS5jb20+DQpDYzogdGVhbTogYkBleGFtcGxlLmNvbSwNCiBjQGV4YW1wbGUuY29tOw0KQkNDOiBkQGV4YW1wbGUuY29tDQpTdWJqZWN0OiBIaQ0KDQpUbzogbm90QGhlYWRlci5leGFtcGxlDQo="}}})j";
    EXPECT_EQ(measure("ses.send_email.destinations", req), 5);
    req.body = R"j({"Content": {"Raw": {"Data": "not base64!"}}})j";
    EXPECT_FALSE(measure_or_invalid("ses.send_email.destinations", req)) << "not base64: an invalid body";
    req.body = R"j({"Content": {"Raw": {"Data": "anVzdCBzb21lIHRleHQgd2l0aG91dCBoZWFkZXJz"}}})j";
    EXPECT_FALSE(measure_or_invalid("ses.send_email.destinations", req)) << "not a message";
}

TEST(Presets, SesSendBulkEmailDestinations) {
    request req;
    req.route = "ses";
    req.path = "/v2/email/outbound-bulk-emails";
    req.body = R"j({
      "FromEmailAddress": "sender@example.com",
      "DefaultContent": {"Template": {"TemplateName": "MyTemplate", "TemplateData": "{\"name\":\"friend\"}"}},
      "BulkEmailEntries": [
        {"Destination": {"ToAddresses": ["a@example.com"]},
         "ReplacementEmailContent": {"ReplacementTemplate": {"ReplacementTemplateData": "{\"name\":\"Ann\"}"}}},
        {"Destination": {"ToAddresses": ["b@example.com", "c@example.com"], "CcAddresses": ["d@example.com"]}},
        {"Destination": {"BccAddresses": ["e@example.com"]}}
      ]
    })j";
    EXPECT_EQ(measure("ses.send_bulk_email.destinations", req), 5);
    req.body = R"j({"BulkEmailEntries": [{"Destination": {"ToAddresses": ["a@example.com, b@example.com"]}},
      {"Destination": {"CcAddresses": ["c@example.com"]}}]})j";
    EXPECT_EQ(measure("ses.send_bulk_email.destinations", req), 3) << "a string holding a list counts each address";
}

// The SES v1 Query API, as boto3's `ses` client sends it: a form body at `/`.
TEST(Presets, SesV1SendEmailAndTemplatedEmail) {
    request req;
    req.route = "ses";
    req.host = "email.us-east-1.amazonaws.com";
    req.path = "/";
    req.content_type = "application/x-www-form-urlencoded; charset=utf-8";
    req.body =
        "Action=SendEmail&Version=2010-12-01&Source=sender%40example.com"
        "&Destination.ToAddresses.member.1=a%40example.com&Destination.ToAddresses.member.2=b%40example.com"
        "&Destination.CcAddresses.member.1=c%40example.com&Destination.BccAddresses.member.1=d%40example.com"
        "&ReplyToAddresses.member.1=reply%40example.com"
        "&Message.Subject.Data=Hi&Message.Body.Text.Data=Hello";
    EXPECT_EQ(measure("ses.v1.destinations", req), 4) << "To 2, Cc 1, Bcc 1; not Source nor ReplyTo";
    req.body =
        "Action=SendTemplatedEmail&Source=sender%40example.com&Template=welcome&TemplateData=%7B%7D"
        "&destination.toaddresses.member.1=a%40example.com&DESTINATION.CCADDRESSES.MEMBER.7=b%40example.com"
        "&Destination.ToAddresses.member.x=c%40example.com";
    EXPECT_EQ(measure("ses.v1.destinations", req), 2) << "names in any case; a member is numbered";
    // The same call as a GET: its parameters are in the query string.
    req.method = "GET";
    req.content_type.clear();
    req.body.clear();
    req.query = "Action=SendEmail&Source=s%40example.com&Destination.ToAddresses.member.1=a%40example.com"
                "&Destination.ToAddresses.member.2=b%40example.com&Message.Subject.Data=Hi";
    EXPECT_EQ(measure("ses.v1.destinations", req), 2);
    req.query = "Action=GetSendQuota";
    EXPECT_EQ(measure("ses.v1.destinations", req), 0);
}

TEST(Presets, SesV1BulkTemplatedEmail) {
    request req;
    req.route = "ses";
    req.path = "/";
    req.content_type = "application/x-www-form-urlencoded";
    req.body =
        "Action=SendBulkTemplatedEmail&Source=sender%40example.com&Template=news&DefaultTemplateData=%7B%7D"
        "&Destinations.member.1.Destination.ToAddresses.member.1=a%40example.com"
        "&Destinations.member.1.ReplacementTemplateData=%7B%22name%22%3A%22Ann%22%7D"
        "&Destinations.member.2.Destination.ToAddresses.member.1=b%40example.com"
        "&Destinations.member.2.Destination.ToAddresses.member.2=c%40example.com"
        "&Destinations.member.2.Destination.CcAddresses.member.1=d%40example.com"
        "&Destinations.member.3.Destination.BccAddresses.member.1=e%40example.com";
    EXPECT_EQ(measure("ses.v1.destinations", req), 5) << "not the ReplacementTemplateData";
}

// SendRawEmail: Destinations.member.N, and the raw message's own To, Cc and Bcc headers
// (base64 in RawMessage.Data; the same message as SesRawMessagesAreCountedFromTheirHeaders:
// 5 addresses). Both are counted when both are there.
TEST(Presets, SesV1SendRawEmail) {
    const std::string raw =
        "RnJvbTogU2VuZGVyIDxzZW5kZXJAZXhhbXBsZS5jb20%2BDQpUbzogYUBleGFtcGxlLmNvbSwgIkRvZSwgSmFuZSIgPGphbmVAZXhh"
        "bXBsZS5jb20%2BDQpDYzogdGVhbTogYkBleGFtcGxlLmNvbSwNCiBjQGV4YW1wbGUuY29tOw0KQkNDOiBkQGV4YW1wbGUuY29tDQpT"
        "dWJqZWN0OiBIaQ0KDQpUbzogbm90QGhlYWRlci5leGFtcGxlDQo%3D";
    request req;
    req.route = "ses";
    req.path = "/";
    req.content_type = "application/x-www-form-urlencoded";
    req.body = "Action=SendRawEmail&RawMessage.Data=" + raw;
    EXPECT_EQ(measure("ses.v1.destinations", req), 5);
    req.body = "Action=SendRawEmail&Destinations.member.1=x%40example.com&Destinations.member.2=y%40example.com"
               "&RawMessage.Data=" + raw;
    EXPECT_EQ(measure("ses.v1.destinations", req), 7);
    req.body = "Action=SendRawEmail&Destinations.member.1=x%40example.com&RawMessage.Data=not%20base64%21";
    EXPECT_FALSE(measure_or_invalid("ses.v1.destinations", req)) << "not base64: an invalid body";
    req.body = "Action=SendRawEmail&RawMessage.Data=anVzdCBzb21lIHRleHQgd2l0aG91dCBoZWFkZXJz";
    EXPECT_FALSE(measure_or_invalid("ses.v1.destinations", req)) << "not a message";
}

TEST(Presets, MailgunRecipientsUrlencoded) {
    request req;
    req.route = "mailgun";
    req.host = "api.mailgun.net";
    req.path = "/v3/mg.example.com/messages";
    req.content_type = "application/x-www-form-urlencoded";
    req.body =
        "from=Excited%20User%20%3Cmailgun%40mg.example.com%3E"
        "&to=bar%40example.com%2C%20%22Doe%2C%20Jane%22%20%3Cjane%40example.com%3E"
        "&to=baz%40example.com&cc=carol%40example.com&bcc=dave%40example.com"
        "&subject=Hello&text=Testing%20some%20Mailgun%20awesomeness%21";
    // to: bar, "Doe, Jane" <jane>, baz; cc: carol; bcc: dave.
    EXPECT_EQ(measure("mailgun.recipients", req), 5);
}

TEST(Presets, HubSpotSingleSendRecipients) {
    request req;
    req.route = "hubspot";
    req.path = "/marketing/v3/transactional/single-email/send";
    req.body = R"j({"emailId": 4126643121,
      "message": {"to": "jdoe@example.com", "from": "Marketing <marketing@example.com>",
                  "cc": ["boss@example.com"], "bcc": ["audit@example.com", "crm@example.com, ops@example.com"]},
      "contactProperties": {"first_name": "John"}})j";
    EXPECT_EQ(measure("hubspot.single_send.recipients", req), 5) << "a string holding a list counts each address";
    req.body = R"j({"emailId": 1, "message": {"to": "a@example.com, \"b\" <b@example.com"}})j";
    EXPECT_FALSE(measure_or_invalid("hubspot.single_send.recipients", req)) << "a list that reads two ways";
}

TEST(Presets, SalesforceEmailSimpleRecipients) {
    request req;
    req.route = "salesforce";
    req.path = "/services/data/v64.0/actions/standard/emailSimple";
    req.body = R"j({"inputs": [
      {"emailAddresses": "ann@example.com, Bob <bob@example.com>", "emailSubject": "s", "emailBody": "b",
       "ccRecipientAddressList": "carl@example.com", "bccRecipientAddressCollection": ["d@example.com", "e@example.com"]},
      {"emailAddressesArray": ["f@example.com"], "recipientId": "003xx000004TmiQAAS", "emailTemplateId": "00Xxx"}]})j";
    EXPECT_EQ(measure("salesforce.email_simple.recipients", req), 7);
    req.path = "/services/data/v57.0/actions/standard/emailSimple.json";
    EXPECT_EQ(measure("salesforce.email_simple.recipients", req), 7);
    req.path = "/services/data/v64.0/actions/standard/emailSimple";
    // Unset fields written as null (clients that serialise every field) count nothing.
    req.body = R"j({"inputs": [{"emailAddresses": "ann@example.com", "ccRecipientAddressList": null,
      "bccRecipientAddressCollection": null, "recipientId": null, "emailSubject": "s", "emailBody": "b"}]})j";
    EXPECT_EQ(measure("salesforce.email_simple.recipients", req), 1);
}

TEST(Presets, MailgunRecipientsMultipart) {
    request req;
    req.route = "mailgun";
    req.path = "/v3/mg.example.com/messages";
    req.content_type = "multipart/form-data; boundary=------------------------d74496d66958873e";
    const std::string b = "--------------------------d74496d66958873e";
    auto field = [&](std::string_view name, std::string_view value) {
        return b + "\r\nContent-Disposition: form-data; name=\"" + std::string{name} + "\"\r\n\r\n" +
               std::string{value} + "\r\n";
    };
    req.body = field("from", "Excited User <mailgun@mg.example.com>") + field("to", "bar@example.com") +
               field("to", "YOU@mg.example.com, other@example.com") + field("subject", "Hello") +
               field("text", "Testing, some, commas") + b +
               "\r\nContent-Disposition: form-data; name=\"attachment\"; filename=\"a.txt\"\r\n"
               "Content-Type: text/plain\r\n\r\nto=x\r\n" +
               b + "--\r\n";
    EXPECT_EQ(measure("mailgun.recipients", req), 3);
    // messages.mime: the client's MIME message goes to the `to` field's addresses.
    req.path = "/v3/mg.example.com/messages.mime";
    req.body = field("to", "bar@example.com, other@example.com") + field("to", "third@example.com") + b +
               "\r\nContent-Disposition: form-data; name=\"message\"; filename=\"message.mime\"\r\n"
               "Content-Type: message/rfc822\r\n\r\nTo: bar@example.com\r\nSubject: hi\r\n\r\nbody\r\n" +
               b + "--\r\n";
    EXPECT_EQ(measure("mailgun.recipients", req), 3);
}

TEST(Presets, HubSpotBatchCreateUpdateArchive) {
    request req;
    req.route = "crm";
    req.host = "api.hubapi.com";
    req.path = "/crm/v3/objects/contacts/batch/create";
    req.body = R"j({"inputs": [
        {"properties": {"email": "bcooper@biglytics.net", "firstname": "Bryan", "lastname": "Cooper"},
         "associations": [{"to": {"id": "123"}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 279}]}]},
        {"properties": {"email": "sfrank@biglytics.net", "firstname": "Sarah", "lastname": "Frank"}}]})j";
    EXPECT_EQ(measure("hubspot.batch.records", req), 2);
    req.path = "/crm/v3/objects/deals/batch/update";
    req.body = R"j({"inputs": [{"id": "1", "properties": {"dealstage": "closedwon"}},
        {"id": "2", "properties": {"dealstage": "closedwon"}}, {"id": "3", "properties": {"hubspot_owner_id": "77"}}]})j";
    EXPECT_EQ(measure("hubspot.batch.records", req), 3);
    EXPECT_EQ(measure("hubspot.batch.archive", req), 0);
    req.path = "/crm/v3/objects/contacts/batch/archive";
    req.body = R"j({"inputs": [{"id": "501"}, {"id": "502"}, {"id": "503"}, {"id": "504"}]})j";
    EXPECT_EQ(measure("hubspot.batch.archive", req), 4);
    EXPECT_EQ(measure("hubspot.batch.records", req), 4);
    req.path = "/crm/v3/objects/contacts/batch/read";
    EXPECT_EQ(measure("hubspot.batch.records", req), 0);
}

TEST(Presets, HubSpotSingleDelete) {
    request req;
    req.route = "crm";
    req.method = "DELETE";
    req.path = "/crm/v3/objects/contacts/12345";
    req.body = "";
    EXPECT_EQ(measure("hubspot.deletes", req), 1);
    req.method = "GET";
    EXPECT_EQ(measure("hubspot.deletes", req), 0);
}

// GDPR delete and merge (HubSpot CRM API reference): one record gone each.
TEST(Presets, HubSpotGdprDeleteAndMerge) {
    request req;
    req.route = "crm";
    req.path = "/crm/v3/objects/contacts/gdpr-delete";
    req.body = R"j({"objectId": "alice@example.com", "idProperty": "email"})j";
    EXPECT_EQ(measure("hubspot.gdpr_deletes", req), 1);
    EXPECT_EQ(measure("hubspot.merges", req), 0);
    req.path = "/crm/v3/objects/companies/merge";
    req.body = R"j({"primaryObjectId": "5123", "objectIdToMerge": "5456"})j";
    EXPECT_EQ(measure("hubspot.merges", req), 1);
    EXPECT_EQ(measure("hubspot.gdpr_deletes", req), 0);
    req.method = "GET";
    EXPECT_EQ(measure("hubspot.merges", req), 0);
}

// Upsert by external ID, delete by external ID, the UI API's delete, and an sObject Tree with
// nested children (Salesforce REST API Developer Guide examples).
TEST(Presets, SalesforceUpsertsExternalIdAndUiApiDeletesAndTrees) {
    request req;
    req.route = "salesforce";
    req.method = "PATCH";
    req.path = "/services/data/v59.0/composite/sobjects/Account/ExternalId__c";
    req.body = R"j({"allOrNone": false, "records": [
        {"attributes": {"type": "Account"}, "ExternalId__c": "AAA", "Name": "Company One"},
        {"attributes": {"type": "Account"}, "ExternalId__c": "BBB", "Name": "Company Two"},
        {"attributes": {"type": "Account"}, "ExternalId__c": "CCC", "Name": "Company Three"}]})j";
    EXPECT_EQ(measure("salesforce.collections.upserts", req), 3);
    EXPECT_EQ(measure("salesforce.collections.records", req), 0) << "another path";

    req.method = "DELETE";
    req.body = "";
    req.path = "/services/data/v59.0/sobjects/Account/ExternalId__c/AAA";
    EXPECT_EQ(measure("salesforce.sobject_external_id.deletes", req), 1);
    EXPECT_EQ(measure("salesforce.sobject.deletes", req), 0);
    req.path = "/services/data/v59.0/ui-api/records/001R0000003GeJ1IAK";
    EXPECT_EQ(measure("salesforce.ui_api.deletes", req), 1);
    req.method = "GET";
    EXPECT_EQ(measure("salesforce.ui_api.deletes", req), 0);

    req.method = "POST";
    req.path = "/services/data/v59.0/composite/tree/Account";
    req.body = R"j({"records": [
        {"attributes": {"type": "Account", "referenceId": "ref1"}, "name": "SampleAccount1", "industry": "Banking",
         "Contacts": {"records": [
            {"attributes": {"type": "Contact", "referenceId": "ref2"}, "lastname": "Smith", "email": "sample@example.com"},
            {"attributes": {"type": "Contact", "referenceId": "ref3"}, "lastname": "Evans",
             "Cases": {"records": [{"attributes": {"type": "Case", "referenceId": "ref5"}, "Subject": "Hello"}]}}]}},
        {"attributes": {"type": "Account", "referenceId": "ref4"}, "name": "SampleAccount2", "industry": "Banking"}]})j";
    EXPECT_EQ(measure("salesforce.tree.records", req), 5) << "two accounts, two contacts, one case";
    std::string deep = R"j({"attributes": {"type": "Account", "referenceId": "r"}, "name": "leaf"})j";
    for (int level = 0; level < 5; ++level) {
        deep = R"j({"attributes": {"type": "Account", "referenceId": "r"}, "Children": {"records": [)j" + deep + "]}}";
    }
    req.body = R"j({"records": [)j" + deep + "]}";
    EXPECT_EQ(measure("salesforce.tree.records", req), 5) << "five levels counted (Salesforce allows five)";
}

// A Bulk API 2.0 upload (PUT .../jobs/ingest/{jobId}/batches, text/csv): its rows after the
// header, a quoted field with a line break or a doubled quote in it being one field.
TEST(Presets, SalesforceBulkIngestCountsTheCsvRows) {
    request req;
    req.route = "salesforce";
    req.method = "PUT";
    req.path = "/services/data/v59.0/jobs/ingest/7505fEXAMPLE4C2AAM/batches";
    req.content_type = "text/csv";
    req.body = "Id\n001xx000003DGb2AAG\n001xx000003DGb3AAG\n001xx000003DGb4AAG\n";
    EXPECT_EQ(measure("salesforce.bulk.records", req), 3) << "a hardDelete job's ids";
    req.body = "Name,Description,NumberOfEmployees\r\n"
               "TestAccount1,\"Line one\r\nline two, with a comma\",30\r\n"
               "TestAccount2,\"He said \"\"hi\"\"\",40\r\n"
               "\r\n"
               "TestAccount3,Description3,50";
    EXPECT_EQ(measure("salesforce.bulk.records", req), 3) << "CRLF, a quoted line break, a blank line, no last break";
    req.body = "Name|Phone\nAcme|555-0100\n";
    EXPECT_EQ(measure("salesforce.bulk.records", req), 1) << "any column delimiter";
    // A stray quote inside an unquoted field is text (RFC 4180): it hides no row after it.
    req.body = "Name,Desc\nA,12\" pipe\nB,x\nC,y\nD,z\n";
    EXPECT_EQ(measure("salesforce.bulk.records", req), 4);
    // Nor does a quote that never closes, in either reading.
    req.body = "Name,Desc\nA,\"open\nB,x\nC,y\n";
    EXPECT_EQ(measure("salesforce.bulk.records", req), 3);
    req.body = "Id\n";
    EXPECT_EQ(measure("salesforce.bulk.records", req), 0) << "the header alone";
    req.method = "GET";
    EXPECT_EQ(measure("salesforce.bulk.records", req), 0);
}

// A Bulk API 2.0 job created with its data in one request (POST .../jobs/ingest/,
// multipart/form-data: a `job` part, a `content` part of CSV), shaped like Salesforce's
// "Bulk Insert with a Multipart Request" example.
TEST(Presets, SalesforceBulkJobCreatedWithItsDataCountsTheCsvPart) {
    request req;
    req.route = "salesforce";
    req.method = "POST";
    req.path = "/services/data/v61.0/jobs/ingest/";
    req.content_type = "multipart/form-data; boundary=\"BOUNDARY\"";
    const std::string job = "Content-Type: application/json\r\nContent-Disposition: form-data; name=\"job\"\r\n\r\n"
                            "{\n  \"object\":\"Contact\",\n  \"contentType\":\"CSV\",\n  \"operation\": \"hardDelete\",\n"
                            "  \"lineEnding\" : \"LF\"\n}\n";
    const std::string csv = "Content-Type: text/csv\r\nContent-Disposition: form-data; name=\"content\"; "
                            "filename=\"content\"\r\n\r\nId\n003xx01\n003xx02\n003xx03\n003xx04\n";
    req.body = "--BOUNDARY\r\n" + job + "\r\n--BOUNDARY\r\n" + csv + "\r\n--BOUNDARY--\r\n";
    EXPECT_EQ(measure("salesforce.bulk.multipart_records", req), 4) << "the rows of the content part alone";

    // The same body with LF line ends (Salesforce's example file sent with curl
    // --data-binary): not a multipart body we read for certain, so every line of the body
    // a reading could take for a row counts; more than the data, never fewer.
    std::string lf = req.body;
    for (std::size_t at = lf.find("\r\n"); at != std::string::npos; at = lf.find("\r\n", at)) {
        lf.erase(at, 1);
    }
    req.body = lf;
    const double lf_rows = measure("salesforce.bulk.multipart_records", req);
    EXPECT_GE(lf_rows, 4);
    EXPECT_LE(lf_rows, 20);

    // A job created with its JSON alone uploads nothing (the rows come later, counted by
    // salesforce.bulk.records).
    req.content_type = "application/json";
    req.body = R"j({"object": "Contact", "contentType": "CSV", "operation": "delete", "lineEnding": "LF"})j";
    EXPECT_EQ(measure("salesforce.bulk.multipart_records", req), 0);
    req.path = "/services/data/v61.0/jobs/query";
    EXPECT_EQ(measure("salesforce.bulk.multipart_records", req), 0) << "a query job is no write";
}

// A Bulk API 1.0 batch (POST /services/async/{version}/job/{jobId}/batch), in each of the
// job's content types, shaped like the Bulk API guide's sample files.
TEST(Presets, SalesforceBulkV1BatchCountsItsRecordsByContentType) {
    request req;
    req.route = "salesforce";
    req.method = "POST";
    req.path = "/services/async/59.0/job/750x0000000005LAAQ/batch";
    req.content_type = "text/csv; charset=UTF-8";
    req.body = "Id\n001xx000003DGb2AAG\n001xx000003DGb3AAG\n001xx000003DGb4AAG\n";
    EXPECT_EQ(measure("salesforce.bulk_v1.records", req), 3) << "a hardDelete job's ids";

    req.content_type = "application/xml; charset=UTF-8";
    req.body = R"x(<?xml version="1.0" encoding="UTF-8"?>
<sObjects xmlns="http://www.force.com/2009/06/asyncapi/dataload">
  <sObject>
    <description>Created from Bulk API</description>
    <name>[Bulk API] Account 0 (batch 0)</name>
  </sObject>
  <sObject>
    <description>Created from Bulk API</description>
    <name>[Bulk API] Account 1 (batch 0)</name>
  </sObject>
  <ns1:sObject xmlns:ns1="http://www.force.com/2009/06/asyncapi/dataload"><Id>001x</Id></ns1:sObject>
  <sObject/>
</sObjects>)x";
    EXPECT_EQ(measure("salesforce.bulk_v1.records", req), 4) << "sObject elements, any prefix, not sObjects";
    req.content_type = "text/xml";
    EXPECT_EQ(measure("salesforce.bulk_v1.records", req), 4);

    req.content_type = "application/json";
    req.body = R"j([{"Name": "Account 0", "Description": "Created from Bulk API"},
                    {"Name": "Account 1", "Parent": {"External_Id__c": "A-1"}},
                    {"Id": "001xx000003DGb4AAG"}])j";
    EXPECT_EQ(measure("salesforce.bulk_v1.records", req), 3) << "the top-level items, not nested objects";
    req.body = "\xEF\xBB\xBF" R"j({"Id": "001xx000003DGb4AAG"})j";
    EXPECT_EQ(measure("salesforce.bulk_v1.records", req), 1) << "an object alone, past a BOM";
    req.body = R"j([{"Id": "001x"}, )j";
    EXPECT_FALSE(measure_or_invalid("salesforce.bulk_v1.records", req)) << "JSON that is not JSON";

    // A query job's batch is its SOQL, whatever the job's content type.
    for (const char* type : {"text/csv", "application/xml", "application/json"}) {
        req.content_type = type;
        req.body = "SELECT Id, Name\r\nFROM Account\r\nWHERE CreatedDate = TODAY\r\n";
        EXPECT_EQ(measure("salesforce.bulk_v1.records", req), 0) << type;
    }

    // A zipped batch cannot be read: refused unless the rule counts it 0.
    req.content_type = "zip/csv";
    req.body = std::string{"PK\x03\x04\x14\x00", 6} + "request.txt";
    EXPECT_FALSE(measure_or_invalid("salesforce.bulk_v1.records", req));
    req.content_type = "ZIP/JSON";
    EXPECT_FALSE(measure_or_invalid("salesforce.bulk_v1.records", req));

    // Another or no Content-Type: the largest reading.
    req.content_type = "";
    req.body = R"x(<sObjects><sObject><Id>1</Id></sObject><sObject><Id>2</Id></sObject><sObject><Id>3</Id></sObject></sObjects>)x";
    EXPECT_EQ(measure("salesforce.bulk_v1.records", req), 3) << "the XML reading, the CSV one is 0";
    req.content_type = "application/octet-stream";
    req.body = "Id\n001a\n001b\n";
    EXPECT_EQ(measure("salesforce.bulk_v1.records", req), 2) << "the CSV reading";
    req.body = R"j([{"Id": "001a"}, {"Id": "001b"}, {"Id": "001c"}])j";
    EXPECT_EQ(measure("salesforce.bulk_v1.records", req), 3) << "the JSON reading";

    req.path = "/services/async/59.0/job";  // creating the job uploads nothing
    EXPECT_EQ(measure("salesforce.bulk_v1.records", req), 0);
}

TEST(Presets, SalesforceCollections) {
    request req;
    req.route = "salesforce";
    req.host = "example.my.salesforce.com";
    req.path = "/services/data/v59.0/composite/sobjects";
    req.body = R"j({"allOrNone": false, "records": [
        {"attributes": {"type": "Account"}, "Name": "example.com", "BillingCity": "San Francisco"},
        {"attributes": {"type": "Contact"}, "LastName": "Johnson", "FirstName": "Erica"}]})j";
    EXPECT_EQ(measure("salesforce.collections.records", req), 2);
    req.method = "PATCH";
    req.body = R"j({"allOrNone": false, "records": [
        {"attributes": {"type": "Account"}, "id": "001xx000003DGb2AAG", "NumberOfEmployees": 27000},
        {"attributes": {"type": "Contact"}, "id": "003xx000004TmiQAAS", "Title": "Lead Engineer"},
        {"attributes": {"type": "Contact"}, "id": "003xx000004TmiRAAS", "OwnerId": "005xx0000001Sv6AAE"}]})j";
    EXPECT_EQ(measure("salesforce.collections.records", req), 3);
    req.method = "DELETE";
    req.body = "";
    req.query = "ids=001xx000003DGb2AAG,003xx000004TmiQAAS,003xx000004TmiRAAS&allOrNone=false";
    EXPECT_EQ(measure("salesforce.collections.deletes", req), 3);
    req.path = "/services/data/v59.0/sobjects/Account/001xx000003DGb2AAG";
    req.query = "";
    EXPECT_EQ(measure("salesforce.sobject.deletes", req), 1);
}

// Deletes inside composite calls (Salesforce REST API Developer Guide, Composite, Composite
// Batch and Composite Graph): each DELETE subrequest counts the records its URL names.
TEST(Presets, SalesforceCompositeDeletes) {
    request req;
    req.route = "salesforce";
    req.host = "example.my.salesforce.com";
    req.method = "POST";
    req.path = "/services/data/v59.0/composite";
    req.body = R"j({"allOrNone": true, "compositeRequest": [
        {"method": "GET", "url": "/services/data/v59.0/query?q=SELECT+Id+FROM+Account+LIMIT+200",
         "referenceId": "refAccounts"},
        {"method": "DELETE", "url": "/services/data/v59.0/sobjects/Account/001xx000003DGb2AAG",
         "referenceId": "refDeleteOne"},
        {"method": "delete", "url": "/services/data/v59.0/composite/sobjects?ids=001xx000003DGb3AAG,001xx000003DGb4AAG,001xx000003DGb5AAG&allOrNone=false",
         "referenceId": "refDeleteMany"},
        {"method": "PATCH", "url": "/services/data/v59.0/sobjects/Account/001xx000003DGb6AAG",
         "referenceId": "refUpdate", "body": {"Name": "Renamed"}},
        {"Method": "DELETE", "url": "/services/data/v59.0/composite/sobjects?IDS=001xx000003DGb7AAG%2C001xx000003DGb8AAG",
         "referenceId": "refDeleteEncoded"}]})j";
    // 1 + 3 + 2: the lower-case method and key, and the encoded comma, count as an upstream
    // reading them so would delete; the GET and the PATCH do not.
    EXPECT_EQ(measure("salesforce.composite.deletes", req), 6);
    // With the response format appended (REST API up to 57.0): the same resource.
    for (const char* path : {"/services/data/v57.0/composite.json", "/services/data/v57.0/Composite.XML"}) {
        req.path = path;
        EXPECT_EQ(measure("salesforce.composite.deletes", req), 6) << path;
    }
    req.path = "/services/data/v57.0/composite.jsonx";
    EXPECT_EQ(measure("salesforce.composite.deletes", req), 0) << "another resource: the preset does not match";

    req.path = "/services/data/v59.0/composite/batch";
    req.body = R"j({"haltOnError": false, "batchRequests": [
        {"method": "DELETE", "url": "v59.0/sobjects/Contact/003xx000004TmiQAAS"},
        {"method": "GET", "url": "v59.0/sobjects/Account/001xx000003DGb2AAG"},
        {"method": "DELETE", "url": "v59.0/composite/sobjects?ids=003xx000004TmiRAAS,003xx000004TmiSAAS"}]})j";
    EXPECT_EQ(measure("salesforce.composite_batch.deletes", req), 3);

    req.path = "/services/data/v59.0/composite/graph";
    req.body = R"j({"graphs": [
        {"graphId": "g1", "compositeRequest": [
            {"method": "DELETE", "url": "/services/data/v59.0/sobjects/Lead/00Qxx0000001", "referenceId": "a"}]},
        {"graphId": "g2", "compositeRequest": [
            {"method": "POST", "url": "/services/data/v59.0/sobjects/Lead", "referenceId": "b", "body": {"LastName": "X"}},
            {"method": "DELETE", "url": "/services/data/v59.0/sobjects/Lead/00Qxx0000002", "referenceId": "c"}]}]})j";
    EXPECT_EQ(measure("salesforce.composite_graph.deletes", req), 2);

    req.path = "/services/data/v59.0/composite";
    req.body = R"j({"compositeRequest": [{"method": "GET", "url": "/services/data/v59.0/limits", "referenceId": "l"}]})j";
    EXPECT_EQ(measure("salesforce.composite.deletes", req), 0);

    // The ways a URL can name more records than a reader splitting it one way sees: `;` and
    // `#` as separators, an encoded `?`, quotes and brackets that are no grouping to
    // Salesforce, empty items, and a reference filled in by Salesforce (up to 200 ids).
    auto deletes_of = [&](const std::string& url) {
        req.body = R"j({"compositeRequest": [{"method": "DELETE", "url": ")j" + url + R"j(", "referenceId": "d"}]})j";
        return measure("salesforce.composite.deletes", req);
    };
    EXPECT_EQ(deletes_of("/services/data/v59.0/composite/sobjects?x=1;ids=a,b,c"), 3);
    EXPECT_EQ(deletes_of("/services/data/v59.0/composite/sobjects?x=#&ids=a,b"), 2);
    EXPECT_EQ(deletes_of("/services/data/v59.0/composite/sobjects%3Fids=a,b"), 2);
    EXPECT_EQ(deletes_of("/services/data/v59.0/composite/sobjects?ids=(,a,b"), 3);
    EXPECT_EQ(deletes_of("/services/data/v59.0/composite/sobjects?ids=\\\"x,a,b,z\\\""), 4);
    EXPECT_EQ(deletes_of("/services/data/v59.0/composite/sobjects?ids=a,,b,&ids=c"), 3);
    EXPECT_EQ(deletes_of("/services/data/v59.0/composite/sobjects?ids=@{r.Description}"), 200);
    EXPECT_EQ(deletes_of("/services/data/v59.0/composite/sobjects?ids="), 1);
    // An encoded separator inside the list: split first, it is part of the list (x&, a, b).
    EXPECT_EQ(deletes_of("/services/data/v59.0/composite/sobjects?ids=x%26,a,b"), 3);
    EXPECT_EQ(deletes_of("/services/data/v59.0/composite/sobjects?ids=x%23,a,b"), 3);
    EXPECT_EQ(deletes_of("/services/data/v59.0/composite/sobjects?ids=x%3B,a,b,c"), 4);
}

TEST(Presets, SalesforceCompositeRecords) {
    request req;
    req.route = "salesforce";
    req.host = "example.my.salesforce.com";
    req.method = "POST";
    req.path = "/services/data/v59.0/composite";
    req.body = R"j({"allOrNone": true, "compositeRequest": [
        {"method": "POST", "url": "/services/data/v59.0/sobjects/Account", "referenceId": "refAccount",
         "body": {"Name": "Sample Account"}},
        {"method": "PATCH", "url": "/services/data/v59.0/sobjects/Account/@{refAccount.id}", "referenceId": "refUpdate",
         "body": {"Phone": "555-0100"}},
        {"method": "GET", "url": "/services/data/v59.0/sobjects/Account/@{refAccount.id}", "referenceId": "refGet"},
        {"method": "patch", "url": "/services/data/v59.0/composite/sobjects", "referenceId": "refContacts",
         "body": {"allOrNone": false, "records": [
            {"attributes": {"type": "Contact"}, "id": "003xx000004TmiQAAS", "Email": "a@example.com"},
            {"attributes": {"type": "Contact"}, "id": "003xx000004TmiRAAS", "Email": "b@example.com"},
            {"attributes": {"type": "Contact"}, "id": "003xx000004TmiSAAS", "Email": "c@example.com"}]}},
        {"method": "DELETE", "url": "/services/data/v59.0/sobjects/Account/001xx000003DGb2AAG", "referenceId": "refDelete"}]})j";
    // 1 + 1 + 3: the lower-case PATCH writes its three records; the GET and the DELETE write none.
    EXPECT_EQ(measure("salesforce.composite.records", req), 5);
    // A body spelled the other ways a reader folds, with both spellings of records (both
    // count: the widest reading), and a PUT with no body (one).
    req.body = R"j({"compositeRequest": [{"method": "POST", "url": "/services/data/v59.0/composite/sobjects",
        "Body": {"Records": [{}, {}], "records": [{}, {}, {}, {}]}}, {"method": "PUT", "url": "/services/apexrest/x"}]})j";
    EXPECT_EQ(measure("salesforce.composite.records", req), 7);
    // An sObject Tree: each record's children are records written too (2 accounts, 3 contacts).
    req.body = R"j({"compositeRequest": [{"method": "POST", "url": "/services/data/v59.0/composite/tree/Account",
        "referenceId": "tree", "body": {"records": [
            {"attributes": {"type": "Account", "referenceId": "a1"}, "Name": "A",
             "Contacts": {"records": [{"attributes": {"type": "Contact", "referenceId": "c1"}, "LastName": "X"},
                                      {"attributes": {"type": "Contact", "referenceId": "c2"}, "LastName": "Y"}]}},
            {"attributes": {"type": "Account", "referenceId": "a2"}, "Name": "B",
             "Contacts": {"records": [{"attributes": {"type": "Contact", "referenceId": "c3"}, "LastName": "Z"}]}}]}}]})j";
    EXPECT_EQ(measure("salesforce.composite.records", req), 5);
    // Records filled in from an earlier subrequest (a reference) may be a whole Collections
    // write: 200, as a referenced ids list counts for deletes.
    req.body = R"j({"compositeRequest": [{"method": "PATCH", "url": "/services/data/v59.0/composite/sobjects",
        "referenceId": "r", "body": {"allOrNone": false, "records": "@{refQuery.records}"}},
        {"method": "POST", "url": "/services/data/v59.0/composite/sobjects", "body": "@{refBody}"}]})j";
    EXPECT_EQ(measure("salesforce.composite.records", req), 400);

    req.path = "/services/data/v59.0/composite/batch";
    req.body = R"j({"batchRequests": [
        {"method": "PATCH", "url": "v59.0/sobjects/account/001D000000K0fXOIAZ", "richInput": {"Name": "NewName"}},
        {"method": "GET", "url": "v59.0/sobjects/account/001D000000K0fXOIAZ?fields=Name"},
        {"method": "POST", "url": "v59.0/composite/sobjects", "richInput": {"records": [
            {"attributes": {"type": "Account"}, "Name": "A"}, {"attributes": {"type": "Account"}, "Name": "B"}]}},
        {"method": "POST", "url": "v59.0/composite/sobjects", "RichInput": {"records": [{}, {}, {}]}}]})j";
    EXPECT_EQ(measure("salesforce.composite_batch.records", req), 6);

    req.path = "/services/data/v59.0/composite/graph";
    req.body = R"j({"graphs": [
        {"graphId": "g1", "compositeRequest": [
            {"method": "POST", "url": "/services/data/v59.0/sobjects/Account", "referenceId": "a", "body": {"Name": "A"}},
            {"method": "POST", "url": "/services/data/v59.0/sobjects/Contact", "referenceId": "c",
             "body": {"LastName": "X", "AccountId": "@{a.id}"}}]},
        {"graphId": "g2", "compositeRequest": [
            {"method": "PATCH", "url": "/services/data/v59.0/sobjects/Lead/00Qxx0000001", "referenceId": "l",
             "body": {"Status": "Closed"}},
            {"method": "DELETE", "url": "/services/data/v59.0/sobjects/Lead/00Qxx0000002", "referenceId": "d"}]}]})j";
    EXPECT_EQ(measure("salesforce.composite_graph.records", req), 3);
}

// An upstream whose URL carries Salesforce's base path (`https://x.my.salesforce.com/services/data`)
// is sent /services/data/v59.0/composite for the client's /v59.0/composite: the preset,
// which names the API's own path, meets the request by that path. A path the rule writes
// itself is matched against the client's path only.
TEST(Presets, APresetPathAlsoMatchesThePathTheUpstreamIsSent) {
    request req;
    req.route = "salesforce";
    req.host = "breakerbox.internal";
    req.path = "/v59.0/composite";
    req.body = R"j({"compositeRequest": [
        {"method": "DELETE", "url": "/services/data/v59.0/sobjects/Account/001xx000003DGb2AAG", "referenceId": "a"}]})j";
    EXPECT_EQ(measure("salesforce.composite.deletes", req), 0);
    req.upstream_path = "/services/data/v59.0/composite";
    EXPECT_EQ(measure("salesforce.composite.deletes", req), 1);

    engine own{load_ok(config(R"j({"id": "own", "route": "salesforce", "match": {"path": "/services/data/{v}/composite"},
        "measure": {"per_request": "requests"}, "limit": 0, "failure_mode": "volume-spike", "trips": "x"})j"))};
    manual_clock clock;
    EXPECT_TRUE(own.evaluate(req.view(), clock.now()).allowed());
}

TEST(Presets, ReadmeListsEveryPreset) {
    // rules/presets/README.md is the user's reference; keep it in step with the table.
    const std::string path = std::string{BB_SOURCE_DIR} + "/rules/presets/README.md";
    std::FILE* f = std::fopen(path.c_str(), "rb");
    ASSERT_NE(f, nullptr) << path;
    std::string text;
    char buf[4096];
    std::size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
        text.append(buf, n);
    }
    std::fclose(f);
    for (const auto& p : presets()) {
        std::string quoted{"`"};
        quoted += p.name;
        quoted += '`';
        EXPECT_NE(text.find(quoted), std::string::npos) << p.name;
        EXPECT_NE(text.find(std::string{p.measure}), std::string::npos) << p.name;
    }
}

}  // namespace
}  // namespace bb::rules::test
