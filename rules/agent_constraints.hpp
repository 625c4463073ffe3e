#pragma once
// Per-agent body constraints: how many recipients one request may address, which domains it
// may send from, which templates it may use. Checked against the request body of the email
// APIs breakerbox fronts (SendGrid v3 mail/send, SES v2 SendEmail and SendBulkEmail, HubSpot
// single send, Mailgun form and multipart sends).
//
// Pure like the rest of rules/: no sockets, no logging, no clock. Thread-safe: the checker
// keeps its parse buffers thread-local.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bb::rules {

// An empty field is no constraint. Parsed from an agent's `"constraints"` (config/).
struct body_constraints {
    std::optional<std::uint64_t> max_recipients;  // to + cc + bcc over the whole request, >= 1
    std::vector<std::string> from_domains;        // lower case; the from domain must equal one exactly
    // lower case; when given, a Reply-To domain must equal one of these or of from_domains
    // (where the replies to the agent's mail go: a help desk's domain, say)
    std::vector<std::string> reply_to_domains;
    std::vector<std::string> template_ids;  // exact; an SES TemplateArn also matches by its name
    // With max_recipients: domains whose addresses (and their subdomains' addresses) are
    // mailing lists (lower case, Unicode form), refused; unset: a Mailgun send's sending domain
    // itself; empty: none.
    std::optional<std::vector<std::string>> list_domains;

    bool empty() const {
        return !max_recipients && from_domains.empty() && reply_to_domains.empty() && template_ids.empty();
    }
    bool operator==(const body_constraints&) const = default;
};

// Empty string: the body satisfies the constraints. Otherwise a short, specific reason
// ("from domain \"other.com\" is not allowed for this agent"); it never carries a recipient
// address, only counts, the from domain or the template id.
//
// A constraint on a field the body does not have does not apply: a body without a from
// address passes that check, and max_recipients counts the recipients found. Except
// templates: to an agent held to template_ids, a send (a body with recipients) that names
// no template is refused (its content is its own, not a reviewed template's).
// Fail closed otherwise: a JSON body that does not parse, a malformed multipart body, or a
// from/template field of the wrong type is refused with its reason. Keys are matched
// case-insensitively and every duplicate is checked, so a body an upstream might read
// differently cannot slip past. Empty constraints pass every body without reading it.
// `query`: the request's query string (no '?'); a form-based API may read its fields too.
// `path`: the request's path (no query); a Mailgun send's sending domain in it
// (/v3/{domain}/messages) is held to from_domains, as a from domain or a subdomain of one,
// and a recipient at that domain itself (a Mailgun mailing list) is refused to max_recipients
// unless list_domains says which domains are lists;
// a call that sends mail stored upstream, which no body shows (scheduling a SendGrid Single
// Send or campaign, publishing a HubSpot marketing email), is refused to an agent with any
// constraint; SendGrid's Marketing test
// send (/v3/marketing/test/send_email) is read by its own fields.
// `method`: the request's method (empty: one that may send).
std::string check_body_constraints(const body_constraints& c, std::string_view content_type, std::string_view body,
                                   std::string_view query = {}, std::string_view path = {},
                                   std::string_view method = {});

// Where a send carries content of its own, which the API sends as written beside or instead
// of a template, as template_ids judges it (SES Content.Simple, Raw or an inline
// TemplateContent, SendGrid content beside a legacy template, a Salesforce emailBody without
// a template, SES v1 Message.*, a raw message): its first such field, but SendGrid's `content`
// only when there is no other (a caller may accept that one), "" for none, and a reason in
// parentheses for a body that cannot be read (fail closed: content of its own).
std::string own_content_field(std::string_view content_type, std::string_view body, std::string_view query = {},
                              std::string_view path = {});

// Salesforce reads a resource with `.json` or `.xml` appended (the response's format, in
// REST API versions up to 57.0) as the resource itself: `/composite.json` is /composite.
// The path without that suffix (any case), or as it is.
std::string_view without_format_suffix(std::string_view path);

// A request carried inside another: its method (upper case) and path (absolute, no query).
struct subrequest {
    std::string method;
    std::string path;
    std::string refused;  // what in it asks for another method (a query field, a header), if anything
    std::string what;     // what it is, when not a composite's subrequest ("the Bulk API job's operation delete")
    bool references_ok = true;  // every `@{...}` in its URL names a record's id
};

// Salesforce's composite resources carry requests of their own in one POST body:
// /services/data/vNN.N/composite (compositeRequest[]), .../composite/batch (batchRequests[],
// URLs relative to /services/data/), .../composite/graph (graphs[].compositeRequest[]),
// the Tooling API's composite and batch, and Connect's batch. Call it for a POST only (a
// GET of /composite lists the resources). A subrequest asking for another method in its
// query (`_HttpMethod`) or its httpHeaders is refused.
// An agent allowed POST on /services/data/* would otherwise DELETE through them. For such a
// path, fills `out` with every subrequest and returns "" or why the body cannot be read
// (the caller refuses it: fail closed); for any other path returns "" with `out` empty.
// Keys are matched without case and every duplicate is read.
std::string salesforce_subrequests(std::string_view path, std::string_view body, std::vector<subrequest>& out);
// A Salesforce Bulk API job's creation (POST .../services/data/vNN.N/jobs/ingest, JSON or a
// multipart body with a `job` part; Bulk API 1.0's .../services/async/NN.N/job, XML or JSON)
// names in its body what the job will do to which object. For such a path, appends to `out`
// the request it is equivalent to: an insert is POST .../services/data/vNN.N/sobjects/{object},
// update and upsert PATCH, delete and hardDelete DELETE (an agent allowed POST on
// /services/data/* must not delete records through a job), and returns "" or why the body
// cannot be read (the caller refuses it); for any other path returns "" and adds nothing.
std::string salesforce_bulk_job(std::string_view path, std::string_view content_type, std::string_view body,
                                std::vector<subrequest>& out);
// What an agent's scope judges a POST to `path` as besides itself, as the live path and a
// release's re-check both read it: a composite request's subrequests (salesforce_subrequests)
// and the request a Bulk API job stands for (salesforce_bulk_job), into `out` (cleared).
// "" or why the body cannot be read, as an out_of_scope message says it ("this composite
// request: ...", "this request: ...").
std::string scoped_subrequests(std::string_view path, std::string_view content_type, std::string_view body,
                               std::vector<subrequest>& out);
// For every POST to a Salesforce composite path, agent or not: why one of its subrequests
// must not be sent ("" when none): it asks for another method (`_HttpMethod`, a method
// override header), which the rules that count DELETE subrequests would not see, or it is a
// composite request itself; or the body is JSON that does not read as subrequests
// throughout. A body that is not JSON (an XML batch) is the rules' to judge.
struct subrequest_refusal {
    std::string code;     // "" (none), method_override, or bad_body
    std::string message;  // the whole answer's message
};
subrequest_refusal salesforce_subrequest_refusal(std::string_view path, std::string_view body);

// For an agent with body constraints: why this POST must not be sent ("" when it may): a
// composite request (salesforce_subrequests) that cannot be read, or with a subrequest that
// calls the Send Email action (.../actions/standard/emailSimple, any case, any method but
// GET and HEAD), whose inputs check_body_constraints reads only in a direct call, or whose
// URL `ambiguous` finds a spelling in that an upstream may resolve otherwise (%-escapes, dot
// segments: the proxy's own test). Without this an agent allowed emailSimple under a
// recipient cap could send to any number through /composite.
// `read`: the request's subrequests if the caller has read them already (salesforce_subrequests
// for its allow-list check, with no error): the body is not parsed again.
std::string constrained_subrequests(std::string_view path, std::string_view body,
                                    std::string_view (*ambiguous)(std::string_view) = nullptr,
                                    const std::vector<subrequest>* read = nullptr);

// Whether a check_body_constraints answer says the body cannot be read one way (a bad
// request) rather than that it reads and breaks a constraint (refused).
bool body_unreadable(std::string_view why);

}  // namespace bb::rules
