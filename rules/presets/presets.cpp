#include "rules/presets/presets.hpp"

#include <array>

namespace bb::rules {

namespace {

// Shapes follow each API's public reference; the tests in tests/rules/test_presets.cpp
// feed a documented-shape body through every preset.
constexpr std::array<preset, 28> table{{
    {"sendgrid.recipients", "POST", "/v3/mail/send",
     // Each recipient object counts 1: SendGrid validates its `email` as one address and refuses
     // the send otherwise, so reading it as a list would cost every request and find nothing.
     "count($.personalizations[*]['to','cc','bcc'][*])",
     "SendGrid v3 mail send: to + cc + bcc across all personalizations"},
    {"ses.send_email.destinations", "POST", "/v2/email/outbound-emails",
     "count(addresses:$.Destination['ToAddresses','CcAddresses','BccAddresses'][*]) + count(mime:$.Content.Raw.Data)",
     "SES v2 SendEmail: ToAddresses + CcAddresses + BccAddresses, and a raw message's To, Cc and Bcc headers "
     "(what SES sends a raw message to when no Destination is given; both are counted when both are there); a "
     "string holding a list counts each address"},
    {"ses.send_bulk_email.destinations", "POST", "/v2/email/outbound-bulk-emails",
     "count(addresses:$.BulkEmailEntries[*].Destination['ToAddresses','CcAddresses','BccAddresses'][*])",
     "SES v2 SendBulkEmail: destinations across all BulkEmailEntries (a string holding a list counts each address)"},
    // The SES v1 Query API (what boto3's `ses` client and the v1 SDKs call): form fields in a
    // POST body, or the same in a GET's query string. SendEmail and SendTemplatedEmail name
    // Destination.*Addresses.member.N; SendRawEmail Destinations.member.N and, for a message
    // that names none, its own headers; SendBulkTemplatedEmail
    // Destinations.member.N.Destination.*Addresses.member.M. Other actions have none of these.
    {"ses.v1.destinations", "POST,GET", "/",
     "count(form:Destination.ToAddresses.member.*) + count(form:Destination.CcAddresses.member.*) + "
     "count(form:Destination.BccAddresses.member.*) + count(form:Destinations.member.*) + "
     "count(form:Destinations.member.*.Destination.ToAddresses.member.*) + "
     "count(form:Destinations.member.*.Destination.CcAddresses.member.*) + "
     "count(form:Destinations.member.*.Destination.BccAddresses.member.*) + "
     "count(mime:base64:form:RawMessage.Data)",
     "SES v1 (Query API) SendEmail, SendTemplatedEmail, SendRawEmail and SendBulkTemplatedEmail: every "
     "Destination address, and a raw message's To, Cc and Bcc headers (both counted when both are there)"},
    // messages.mime sends a MIME message the client built to the `to` field's addresses.
    {"mailgun.recipients", "POST", "/v3/{domain}/{endpoint:messages|messages.mime}",
     "count(form:to) + count(form:cc) + count(form:bcc)",
     "Mailgun messages and messages.mime: repeated and comma-separated to/cc/bcc form fields (urlencoded or "
     "multipart)"},
    {"hubspot.single_send.recipients", "POST", "/marketing/v3/transactional/single-email/send",
     "count(addresses:$.message.to) + count(addresses:$.message['cc','bcc'][*])",
     "HubSpot transactional single send: message.to, cc and bcc (a string holding a list counts each address)"},
    // Salesforce's Send Email action: each input's addresses (a comma-separated string and
    // the lists and collections of API v64.0) and its recipientId (a Contact or Lead).
    {"salesforce.email_simple.recipients", "POST", "/services/data/{version}/actions/standard/emailSimple",
     "count(addresses:$.inputs[*]['emailAddresses','ccRecipientAddressList','bccRecipientAddressList']) + "
     "count(addresses:$.inputs[*]['emailAddressesArray','ccRecipientAddressCollection','bccRecipientAddressCollection'][*]) + "
     "count(addresses:$.inputs[*].recipientId)",
     "Salesforce Send Email action (emailSimple): every input's addresses, its cc and bcc lists and collections, "
     "and its recipientId"},
    {"hubspot.batch.records", "POST", "/crm/v3/objects/{object}/batch/{op:create|update|upsert|archive}",
     "count($.inputs[*])",
     "HubSpot CRM batch create/update/upsert/archive: records in inputs[]"},
    {"hubspot.batch.archive", "POST", "/crm/v3/objects/{object}/batch/archive",
     "count($.inputs[*])",
     "HubSpot CRM batch archive (delete): records in inputs[]"},
    {"hubspot.deletes", "DELETE", "/crm/v3/objects/{object}/{id}",
     "requests",
     "HubSpot CRM single-record archive (DELETE)"},
    // GDPR delete removes the contact and everything about it for good (not to the recycle
    // bin, as an archive goes); a merge deletes the record merged away.
    {"hubspot.gdpr_deletes", "POST", "/crm/v3/objects/{object}/gdpr-delete",
     "requests",
     "HubSpot CRM GDPR delete (permanent, one record a request)"},
    {"hubspot.merges", "POST", "/crm/v3/objects/{object}/merge",
     "requests",
     "HubSpot CRM merge: the record merged into the primary one is deleted"},
    {"salesforce.collections.records", "POST,PATCH", "/services/data/{version}/composite/sobjects",
     "count($.records[*])",
     "Salesforce sObject Collections create (POST) / update (PATCH): records[]"},
    {"salesforce.collections.deletes", "DELETE", "/services/data/{version}/composite/sobjects",
     "count(query:ids)",
     "Salesforce sObject Collections delete: comma-separated ids in the query"},
    {"salesforce.sobject.deletes", "DELETE", "/services/data/{version}/sobjects/{sobject}/{id}",
     "requests",
     "Salesforce single sObject delete"},
    {"salesforce.collections.upserts", "PATCH", "/services/data/{version}/composite/sobjects/{sobject}/{field}",
     "count($.records[*])",
     "Salesforce sObject Collections upsert by external ID: records[]"},
    {"salesforce.sobject_external_id.deletes", "DELETE",
     "/services/data/{version}/sobjects/{sobject}/{field}/{value}",
     "requests",
     "Salesforce single sObject delete by external ID"},
    {"salesforce.ui_api.deletes", "DELETE", "/services/data/{version}/ui-api/records/{id}",
     "requests",
     "Salesforce User Interface API record delete"},
    // Bulk API 2.0: the job's data goes up as CSV (one upload per job); the operation, a
    // hardDelete perhaps, was named when the job was created.
    {"salesforce.bulk.records", "PUT", "/services/data/{version}/jobs/ingest/{jobId}/batches",
     "csv_rows",
     "Salesforce Bulk API 2.0 ingest: the rows of a job's CSV upload, whatever its operation"},
    // A job can be created with its data in the same request (multipart/form-data: a `job`
    // part with the JSON definition, a `content` part with up to 100,000 characters of CSV).
    // A job created with JSON alone uploads nothing: 0.
    {"salesforce.bulk.multipart_records", "POST", "/services/data/{version}/jobs/ingest",
     "csv_rows(form:content)",
     "Salesforce Bulk API 2.0 job created with its data: the rows of its CSV part, whatever its operation"},
    // Bulk API 1.0 (Data Loader's Bulk mode, many ETL tools): each batch of a job carries its
    // records as CSV, XML or JSON, by its Content-Type; the operation was named when the job
    // was created. A query job's batch is its SOQL: 0.
    {"salesforce.bulk_v1.records", "POST", "/services/async/{version}/job/{jobId}/batch",
     "bulk_batch_records",
     "Salesforce Bulk API 1.0 batch: its records (CSV rows, XML sObject elements or JSON array items, by "
     "Content-Type), whatever the job's operation"},
    // An sObject Tree nests child records under a relationship name, up to five levels.
    {"salesforce.tree.records", "POST", "/services/data/{version}/composite/tree/{sobject}",
     "count($.records[*]) + count($.records[*].*.records[*]) + count($.records[*].*.records[*].*.records[*]) + "
     "count($.records[*].*.records[*].*.records[*].*.records[*]) + "
     "count($.records[*].*.records[*].*.records[*].*.records[*].*.records[*])",
     "Salesforce sObject Tree: the records created, children (up to five levels) included"},
    // Deletes inside one composite call (up to 25 subrequests, each a single delete or a
    // Collections delete of up to 200 ids): an agent deleting through composite would
    // otherwise meet no delete cap.
    {"salesforce.composite.deletes", "POST", "/services/data/{version}/composite",
     "count(url_ids:$.compositeRequest[?(@.method=='DELETE')].url)",
     "Salesforce Composite: records deleted by its DELETE subrequests (the ids of a Collections delete, "
     "else one each)"},
    {"salesforce.composite_batch.deletes", "POST", "/services/data/{version}/composite/batch",
     "count(url_ids:$.batchRequests[?(@.method=='DELETE')].url)",
     "Salesforce Composite Batch: records deleted by its DELETE subrequests"},
    {"salesforce.composite_graph.deletes", "POST", "/services/data/{version}/composite/graph",
     "count(url_ids:$.graphs[*].compositeRequest[?(@.method=='DELETE')].url)",
     "Salesforce Composite Graph: records deleted by the DELETE subrequests of every graph"},
    // Creates, updates and upserts inside one composite call (a subrequest may itself be a
    // Collections write of up to 200 records): an agent rewriting CRM records through
    // composite would otherwise meet no records cap.
    {"salesforce.composite.records", "POST", "/services/data/{version}/composite",
     "count(sub_records:$.compositeRequest[?(@.method=='POST')]) + count(sub_records:$.compositeRequest[?(@.method=='PATCH')]) + count(sub_records:$.compositeRequest[?(@.method=='PUT')])",
     "Salesforce Composite: records written by its POST, PATCH and PUT subrequests (the records[] of a "
     "Collections write, else one each)"},
    {"salesforce.composite_batch.records", "POST", "/services/data/{version}/composite/batch",
     "count(sub_records:$.batchRequests[?(@.method=='POST')]) + count(sub_records:$.batchRequests[?(@.method=='PATCH')]) + count(sub_records:$.batchRequests[?(@.method=='PUT')])",
     "Salesforce Composite Batch: records written by its POST, PATCH and PUT subrequests"},
    {"salesforce.composite_graph.records", "POST", "/services/data/{version}/composite/graph",
     "count(sub_records:$.graphs[*].compositeRequest[?(@.method=='POST')]) + count(sub_records:$.graphs[*].compositeRequest[?(@.method=='PATCH')]) + count(sub_records:$.graphs[*].compositeRequest[?(@.method=='PUT')])",
     "Salesforce Composite Graph: records written by the POST, PATCH and PUT subrequests of every graph"},
}};

}  // namespace

std::span<const preset> presets() { return table; }

const preset* find_preset(std::string_view name) {
    for (const auto& p : table) {
        if (p.name == name) {
            return &p;
        }
    }
    return nullptr;
}

}  // namespace bb::rules
