#include <gtest/gtest.h>

#include <functional>

#include "helpers.hpp"

namespace bb::rules::test {
namespace {

using namespace std::chrono_literals;

const char* recipients_rule = R"j({"id": "recipients-per-campaign", "route": "mail-send",
    "key": ["header:x-campaign-id"], "measure": {"sum": "count($.personalizations[*].to[*])"},
    "window": "1h", "limit": 100, "failure_mode": "volume-spike", "trips": "campaign-volume"})j";

// A keyed rule never names the breaker-wide or the overflow instance, which contain every
// key: a request without the key's header is metered and tripped as "(none)", and a client's
// `_overflow` is written `(_overflow)`.
TEST(Engine, AKeyNeverNamesTheWideOrTheOverflowInstance) {
    engine eng{load_ok(config(recipients_rule))};
    manual_clock clock;
    request req;
    req.body = sendgrid_body(101);
    auto d = eng.evaluate(req.view(), clock.now());
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_EQ(d.key, "(none)");
    EXPECT_EQ(d.breaker_instance, "campaign-volume/(none)");
    req.header("X-Campaign-Id", "_overflow");
    d = eng.evaluate(req.view(), clock.now());
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_EQ(d.key, "(_overflow)");
    EXPECT_EQ(d.breaker_instance, "campaign-volume/(_overflow)");
}

TEST(Engine, CapIsExactAndTheCrossingRequestIsRefusedAndNotBooked) {
    engine eng{load_ok(config(recipients_rule))};
    manual_clock clock;
    request req;
    req.header("X-Campaign-Id", "spring-sale");
    req.body = sendgrid_body(30);
    for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(eng.evaluate(req.view(), clock.now()).allowed()) << i;
    }
    // 90 booked; 30 more would be 120 > 100.
    const auto d = eng.evaluate(req.view(), clock.now());
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_EQ(d.rule, "recipients-per-campaign");
    EXPECT_EQ(d.failure_mode, "volume-spike");
    EXPECT_EQ(d.failure_mode_title, "Send volume spike");
    EXPECT_EQ(d.sev, severity::sev2);
    EXPECT_EQ(d.condition, condition_kind::limit);
    EXPECT_EQ(d.key, "spring-sale");
    EXPECT_EQ(d.measured, 120);
    EXPECT_EQ(d.limit, 100);
    EXPECT_EQ(d.window, 1h);
    EXPECT_EQ(d.trips, "campaign-volume");
    EXPECT_EQ(d.breaker_instance, "campaign-volume/spring-sale");
    EXPECT_EQ(d.measure, "count($.personalizations[*].to[*])");
    EXPECT_EQ(d.reason,
              "rule recipients-per-campaign (volume-spike, sev2): count($.personalizations[*].to[*]) would be 120 in "
              "1h for key \"spring-sale\", limit 100");
    EXPECT_EQ(eng.read("recipients-per-campaign", "spring-sale", clock.now())->value, 90);
    // Exactly filling the cap is allowed.
    req.body = sendgrid_body(10);
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    req.body = sendgrid_body(1);
    EXPECT_FALSE(eng.evaluate(req.view(), clock.now()).allowed());
    // Other campaigns have their own meter.
    req.headers.clear();
    req.header("x-campaign-id", "other");
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
}

TEST(Engine, WindowSlides) {
    engine eng{load_ok(config(R"j({"id": "rpm", "route": "mail-send", "window": "1m", "limit": 2,
        "failure_mode": "volume-spike", "trips": "b"})j"))};
    manual_clock clock;
    clock.set(time_point{std::chrono::minutes{10'000}});
    request req;
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    clock.advance(30s);
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    EXPECT_FALSE(eng.evaluate(req.view(), clock.now()).allowed());
    clock.advance(30s);  // first request leaves the window
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    EXPECT_FALSE(eng.evaluate(req.view(), clock.now()).allowed());
}

TEST(Engine, ALaterRefusalUndoesEarlierReservations) {
    engine eng{load_ok(config(R"j(
        {"id": "all", "route": "mail-send", "measure": "count($.personalizations[*].to[*])", "window": "1h",
         "limit": 1000, "failure_mode": "volume-spike", "trips": "a"},
        {"id": "per-agent", "route": "mail-send", "key": "agent", "measure": "count($.personalizations[*].to[*])",
         "window": "1h", "limit": 10, "failure_mode": "volume-spike", "trips": "b"})j"))};
    manual_clock clock;
    request req;
    req.body = sendgrid_body(8);
    ASSERT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    const auto d = eng.evaluate(req.view(), clock.now());
    ASSERT_EQ(d.rule, "per-agent");
    EXPECT_EQ(eng.read("all", "", clock.now())->value, 8) << "the refused request's 8 were given back";
}

TEST(Engine, ASuspendedRuleIsShadowedAndTheOtherRulesStillBookTheRequest) {
    engine eng{load_ok(config(R"j(
        {"id": "small", "route": "mail-send", "measure": "count($.personalizations[*].to[*])", "window": "1h",
         "limit": 5, "failure_mode": "volume-spike", "trips": "a"},
        {"id": "all", "route": "mail-send", "measure": "count($.personalizations[*].to[*])", "window": "1h",
         "limit": 20, "failure_mode": "volume-spike", "trips": "b"})j"))};
    manual_clock clock;
    request req;
    req.body = sendgrid_body(8);
    std::vector<std::string> asked;
    const std::function<bool(const decision&)> suspended = [&](const decision& d) {
        asked.push_back(d.rule);
        return d.trips == "a";
    };
    decision shadowed;
    auto d = eng.evaluate(req.view(), clock.now(), &suspended, &shadowed);
    EXPECT_TRUE(d.allowed());
    EXPECT_EQ(shadowed.rule, "small");
    EXPECT_EQ(shadowed.outcome, verdict::violated);
    EXPECT_EQ(eng.read("all", "", clock.now())->value, 8) << "booked on the rule after the suspended one";
    // What is let through over a suspended rule still counts there: once the rule is enforced
    // again, its cap is judged against what was sent meanwhile.
    EXPECT_EQ(eng.read("small", "", clock.now())->value, 8) << "sent, and missing from the suspended rule's window";
    decision second;
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now(), &suspended, &second).allowed());
    EXPECT_EQ(eng.read("all", "", clock.now())->value, 16);
    EXPECT_EQ(eng.read("small", "", clock.now())->value, 16);
    // The third crosses the enforced rule: refused, and nothing of it stays booked.
    decision third_shadow;
    d = eng.evaluate(req.view(), clock.now(), &suspended, &third_shadow);
    EXPECT_EQ(d.rule, "all");
    EXPECT_EQ(d.outcome, verdict::violated);
    EXPECT_EQ(eng.read("all", "", clock.now())->value, 16);
    EXPECT_EQ(eng.read("small", "", clock.now())->value, 16) << "the refused request is off the suspended rule too";
    EXPECT_EQ(asked, (std::vector<std::string>{"small", "small", "small", "all"}));
    // Without a suspension the first violation decides, as before.
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).rule, "small");
}

// At most 3 Mailgun `to` recipients an hour, and a Mailgun send to count against it.
constexpr const char* mailgun_to_cap = R"j(
        {"id": "mg", "route": "mailgun", "measure": "count(form:to)", "window": "1h", "limit": 3,
         "failure_mode": "volume-spike", "trips": "a"})j";

request mailgun_send() {
    request req;
    req.route = "mailgun";
    req.path = "/v3/mg.example.com/messages";
    return req;
}

// A multipart body the engine cannot read for certain is an invalid body (refused), not
// one with zero recipients: an upstream's parser may well find them.
TEST(Engine, AMalformedMultipartBodyIsRejectedNotCountedAsEmpty) {
    engine eng{load_ok(config(mailgun_to_cap))};
    manual_clock clock;
    request req = mailgun_send();
    req.content_type = "multipart/form-data; boundary=A; boundary=B";
    req.body = "--B\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\na@x.com,b@x.com,c@x.com,d@x.com\r\n--B--\r\n";
    auto d = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(d.outcome, verdict::rejected);
    EXPECT_NE(d.reason.find("multipart/form-data body is malformed"), std::string::npos) << d.reason;
    req.content_type = "multipart/form-data; boundary=B";
    d = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(d.outcome, verdict::violated) << "4 recipients > 3, read";
    // A field in a charset that does not leave ASCII as it is: decoded by readers that honour
    // it into addresses never seen here (utf-7 `+AGU-` is `e`). A file keeps its own.
    req.body = "--B\r\nContent-Disposition: form-data; name=\"to\"\r\nContent-Type: text/plain; charset=utf-7\r\n\r\n"
               "a@+AGU-vil.com\r\n--B--\r\n";
    d = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(d.outcome, verdict::rejected);
    // Hidden from a check that looks for a filename anywhere in the line: still a field.
    req.body = "--B\r\nContent-Disposition: form-data; name=\"to\"; x=\"filename*=\"\r\n"
               "Content-Type: text/plain; charset=utf-7\r\n\r\na@+AGU-vil.com\r\n--B--\r\n";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).outcome, verdict::rejected);
    // Charsets that leave ASCII as it is (Apache HttpClient labels text fields ISO-8859-1).
    for (const char* charset : {"utf-8", "UTF-8", "\"us-ascii\"", "ISO-8859-1", "windows-1252"}) {
        req.body = "--B\r\nContent-Disposition: form-data; name=\"to\"\r\nContent-Type: text/plain; charset=" +
                   std::string{charset} + "\r\n\r\na@x.com\r\n--B--\r\n";
        EXPECT_NE(eng.evaluate(req.view(), clock.now()).outcome, verdict::rejected) << charset;
    }
    req.body = "--B\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\na@x.com\r\n"
               "--B\r\nContent-Disposition: form-data; name=\"attachment\"; filename=\"a.txt\"\r\n"
               "Content-Type: text/plain; charset=iso-8859-1\r\n\r\nsch\xF6n\r\n--B--\r\n";
    EXPECT_NE(eng.evaluate(req.view(), clock.now()).outcome, verdict::rejected) << "an attachment in its own charset";
}

// A byte order mark before a JSON body: the meter reads past it as the guards and Jackson
// do, rather than refusing a body they read (or counting it 0 under on_invalid_body zero).
TEST(Engine, AByteOrderMarkBeforeTheJsonIsReadPast) {
    engine eng{load_ok(config(R"j(
        {"id": "r", "route": "mail-send", "measure": {"per_request": "count($.personalizations[*].to[*])"}, "limit": 2,
         "on_invalid_body": "zero", "failure_mode": "volume-spike", "trips": "a"})j"))};
    manual_clock clock;
    request req;
    req.body = "\xEF\xBB\xBF" + sendgrid_body(3);
    const auto d = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(d.outcome, verdict::violated) << d.reason;
    EXPECT_EQ(d.measured, 3);
}

// A form amount reads as the servers behind it read a number: `+5`, blanks around it, an
// exponent past a double's range (the bound, never 0).
TEST(Engine, FormSumsReadNumbersAsServersDo) {
    engine eng{load_ok(config(R"j(
        {"id": "qty", "route": "mailgun", "measure": {"per_request": "sum(form:qty)"}, "limit": 100,
         "failure_mode": "volume-spike", "trips": "a"})j"))};
    manual_clock clock;
    request req = mailgun_send();
    req.content_type = "application/x-www-form-urlencoded";
    for (const char* body : {"qty=%2B1000", "qty=+1000", "qty=%20%201000", "qty=1e400", "qty=60&qty=%2B60",
                             "qty=1_000"}) {
        req.body = body;
        const auto d = eng.evaluate(req.view(), clock.now());
        EXPECT_EQ(d.outcome, verdict::violated) << body << ": " << d.measured;
    }
    for (const char* body : {"qty=99", "qty=1e-400", "qty=-1000000", "qty=", "qty=%20"}) {
        req.body = body;
        EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed()) << body;
    }
    // Not a number here, perhaps one to the server (Python reads full-width digits): refused.
    for (const char* body : {"qty=%EF%BC%91%EF%BC%90%EF%BC%90%EF%BC%90", "qty=many", "qty=100abc", "qty=1__0"}) {
        req.body = body;
        const auto d = eng.evaluate(req.view(), clock.now());
        EXPECT_EQ(d.outcome, verdict::rejected) << body;
        EXPECT_NE(d.reason.find("not a number as read here"), std::string::npos) << d.reason;
    }
}

// An address list counts as RFC 5322 splits it; one that splits more than one way is an
// invalid body (counted as fewer recipients, it could pass a cap).
TEST(Engine, FormAddressListsCountAsTheyReadOrAreRejected) {
    engine eng{load_ok(config(mailgun_to_cap))};
    manual_clock clock;
    request req = mailgun_send();
    req.content_type = "application/x-www-form-urlencoded";
    // "\"" <a@x.com>, b@x.com, c@x.com, d@x.com
    req.body = "to=%22%5C%22%22+%3Ca%40x.com%3E%2C+b%40x.com%2C+c%40x.com%2C+d%40x.com";
    auto d = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(d.outcome, verdict::violated) << d.reason;
    EXPECT_EQ(d.measured, 4);
    // a@x.com ("), b@x.com, c@x.com, d (") <e@x.com>
    req.body = "to=a%40x.com+%28%22%29%2C+b%40x.com%2C+c%40x.com%2C+d+%28%22%29+%3Ce%40x.com%3E";
    d = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(d.outcome, verdict::rejected) << d.reason;
    EXPECT_NE(d.reason.find("form field to is not an address list that reads one way only"), std::string::npos) << d.reason;
    // `To` and `TO` count with `to`: the API may read them as one field.
    req.body = "to=a%40x.com&To=b%40x.com&TO=c%40x.com%2C+d%40x.com";
    d = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(d.outcome, verdict::violated) << d.reason;
    EXPECT_EQ(d.measured, 4);
}

// Fields that read two ways are an invalid body, not zero recipients: a raw ';' in a form
// body or the query (servers that split there see `to`), a form type on a JSON-looking
// body, a multipart that is not form-data.
TEST(Engine, FormFieldsThatReadTwoWaysAreRejectedNotCountedAsNone) {
    engine eng{load_ok(config(mailgun_to_cap))};
    manual_clock clock;
    request req = mailgun_send();
    req.content_type = "application/x-www-form-urlencoded";
    req.body = "o:tag=x;to=a%40x.com%2Cb%40x.com%2Cc%40x.com%2Cd%40x.com";
    auto d = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(d.outcome, verdict::rejected) << d.reason;
    EXPECT_NE(d.reason.find("raw ';'"), std::string::npos) << d.reason;
    req.body = "subject=hi";
    req.query = "o:tag=x;to=a%40x.com%2Cb%40x.com%2Cc%40x.com%2Cd%40x.com";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).outcome, verdict::rejected);
    req.query.clear();
    req.content_type = "multipart/mixed; boundary=B";
    req.body = "--B\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\na@x.com,b@x.com,c@x.com,d@x.com\r\n--B--\r\n";
    d = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(d.outcome, verdict::rejected) << d.reason;
    EXPECT_NE(d.reason.find("multipart/mixed"), std::string::npos) << d.reason;
    // A query: term reads the query alone.
    engine q{load_ok(config(R"j({"id": "ids", "route": "mailgun", "measure": "count(query:ids)", "window": "1h",
        "limit": 2, "failure_mode": "volume-spike", "trips": "a"})j"))};
    req = mailgun_send();
    req.query = "x=1;ids=a,b,c";
    EXPECT_EQ(q.evaluate(req.view(), clock.now()).outcome, verdict::rejected);
}

// A form-based API may read its parameters from the query string too: they count.
TEST(Engine, QueryStringFieldsCountWithTheFormsOwn) {
    engine eng{load_ok(config(mailgun_to_cap))};
    manual_clock clock;
    request req = mailgun_send();
    req.content_type = "application/x-www-form-urlencoded";
    req.body = "from=a%40mg.example.com&to=a%40x.com&subject=Hi";
    req.query = "to=b%40x.com&to=c%40x.com&to=d%40x.com";
    auto d = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(d.outcome, verdict::violated);
    EXPECT_EQ(d.measured, 4);
    req.body.clear();  // no body at all: the query string is the form
    req.content_type.clear();
    req.query = "to=a%40x.com&to=b%40x.com&to=c%40x.com&to=d%40x.com";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).outcome, verdict::violated);
}

// Two equal keys: parsers disagree on which counts (first or last), so a cap counts both.
TEST(Engine, DuplicateJsonKeysAreAllCountedByCaps) {
    engine eng{load_ok(config(R"j(
        {"id": "r", "route": "mail-send", "measure": "count($.personalizations[*].to[*])", "window": "1h",
         "limit": 3, "failure_mode": "volume-spike", "trips": "a"})j"))};
    manual_clock clock;
    request req;
    req.body = R"({"personalizations":[{"to":[{"email":"a@x.com"}]}],)"
               R"("personalizations":[{"to":[{"email":"b@x.com"},{"email":"c@x.com"},{"email":"d@x.com"},{"email":"e@x.com"}]}]})";
    const auto d = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(d.outcome, verdict::violated) << "1 + 4 recipients > 3 whichever key an upstream keeps";
    EXPECT_EQ(d.measured, 5);
}

// Go's encoding/json (SendGrid) reads "TO" as `to`, and folds U+017F to s: a cap that compared
// key bytes would count none of these recipients.
TEST(Engine, KeysMatchAsACaseInsensitiveUpstreamReadsThem) {
    engine eng{load_ok(config(R"j(
        {"id": "r", "route": "mail-send", "measure": "count($.personalizations[*].to[*])", "window": "1h",
         "limit": 3, "failure_mode": "volume-spike", "trips": "a"},
        {"id": "per-campaign", "route": "mail-send", "key": ["json:$.campaign"], "measure": "requests", "window": "1h",
         "limit": 100, "failure_mode": "volume-spike", "trips": "camp"})j"))};
    manual_clock clock;
    request req;
    const std::string four = R"([{"email":"a@x.com"},{"email":"b@x.com"},{"email":"c@x.com"},{"email":"d@x.com"}])";
    for (const std::string& body : {
             R"({"personalizations":[{"TO":)" + four + "}]}",
             R"({"Personalizations":[{"To":)" + four + "}]}",
             "{\"per\\u017fonalizations\":[{\"to\":" + four + "}]}",  // a JSON-escaped long s
             "{\"PER\xC5\xBFONALIZATIONS\":[{\"to\":" + four + "}]}",  // the same, as UTF-8
         }) {
        req.body = body;
        const auto d = eng.evaluate(req.view(), clock.now());
        EXPECT_EQ(d.outcome, verdict::violated) << body;
        EXPECT_EQ(d.measured, 4) << body;
    }
    req.body = R"({"personalizations":[{"to":[{"email":"a@x.com"}],"toto":)" + four + "}]}";
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed()) << "only keys that fold to the name";
    req.body = R"({"campaign":"a","Campaign":"b"})";
    auto d = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(d.outcome, verdict::rejected) << "a key read two ways through case is ambiguous";
    EXPECT_NE(d.reason.find("two different values for the key $.campaign"), std::string::npos) << d.reason;
}

// What reaches the same upstream endpoint meets the same rule: a trailing slash or another
// case in a literal or an allowed value does not step around a path template.
TEST(Engine, PathTemplatesIgnoreATrailingSlashAndCase) {
    engine eng{load_ok(config(R"j(
        {"id": "archive", "route": "crm", "match": {"path": "/crm/v3/objects/{object}/batch/{op:archive}"},
         "measure": {"per_request": "count($.inputs[*])"}, "limit": 2, "failure_mode": "volume-spike", "trips": "a"})j"))};
    manual_clock clock;
    request req;
    req.route = "crm";
    req.body = R"({"inputs":[{"id":"1"},{"id":"2"},{"id":"3"}]})";
    for (const char* path : {"/crm/v3/objects/contacts/batch/archive", "/crm/v3/objects/contacts/batch/archive/",
                             "/crm/v3/objects/contacts/batch/Archive", "/CRM/v3/Objects/contacts/BATCH/ARCHIVE/"}) {
        req.path = path;
        EXPECT_EQ(eng.evaluate(req.view(), clock.now()).outcome, verdict::violated) << path;
    }
    req.path = "/crm/v3/objects/contacts/batch/create";
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
}

// A key read through duplicate JSON keys could be the one an upstream ignores: refused.
TEST(Engine, AKeyWithTwoValuesThroughDuplicateJsonKeysIsRejected) {
    engine eng{load_ok(config(R"j(
        {"id": "per-campaign", "route": "mail-send", "key": ["json:$.campaign"], "measure": "requests", "window": "1h",
         "limit": 100, "failure_mode": "volume-spike", "trips": "camp"})j"))};
    manual_clock clock;
    request req;
    req.body = R"({"campaign":"b","campaign":"a"})";
    auto d = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(d.outcome, verdict::rejected);
    EXPECT_NE(d.reason.find("two different values for the key $.campaign"), std::string::npos) << d.reason;
    req.body = R"({"campaign":"a","campaign":"a"})";
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed()) << "the same value twice is not ambiguous";
    req.body = R"({"campaign":"a"})";
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
}

TEST(Engine, RulesOnOtherRoutesAndNonMatchingRulesCostNothing) {
    engine eng{load_ok(config(R"j(
        {"id": "crm-only", "route": "crm", "window": "1m", "limit": 0, "failure_mode": "volume-spike", "trips": "a"},
        {"id": "deletes", "match": {"methods": ["DELETE"]}, "window": "1m", "limit": 0, "failure_mode": "volume-spike", "trips": "a"},
        {"id": "host", "match": {"host": "API.HUBAPI.COM"}, "window": "1m", "limit": 0, "failure_mode": "volume-spike", "trips": "a"},
        {"id": "hdr", "match": {"headers": {"X-Dry-Run": "*"}}, "window": "1m", "limit": 0, "failure_mode": "volume-spike", "trips": "a"},
        {"id": "prefix", "match": {"path_prefix": "/v3/marketing"}, "window": "1m", "limit": 0, "failure_mode": "volume-spike", "trips": "a"})j"))};
    manual_clock clock;
    request req;
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    req.method = "DELETE";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).rule, "deletes");
    req.method = "POST";
    req.host = "api.hubapi.com";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).rule, "host");
    req.host = "api.sendgrid.com";
    req.header("x-dry-run", "1");
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).rule, "hdr");
    req.headers.clear();
    req.path = "/v3/marketing/singlesends";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).rule, "prefix");
    req.route = "crm";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).rule, "crm-only");
}

// A header a condition names, given twice with other values: the rule applies when any of
// its lines matches (an upstream that reads the last line acts for the one named), never
// only when the first does.
TEST(Engine, AHeaderConditionMatchesAnyLineOfARepeatedHeader) {
    engine eng{load_ok(config(R"j(
        {"id": "acme", "match": {"headers": {"On-Behalf-Of": "acme"}}, "window": "1m", "limit": 0,
         "failure_mode": "volume-spike", "trips": "a"})j"))};
    manual_clock clock;
    request req;
    req.header("on-behalf-of", "nobody");
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    req.header("On-Behalf-Of", "acme");
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).rule, "acme") << "the second line names acme";
    req.headers.clear();
    req.header("on-behalf-of", "ACME");
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed()) << "values compare exactly";
}

TEST(Engine, InvalidJsonIsRejectedOrCountsAsZero) {
    engine eng{load_ok(config(R"j(
        {"id": "strict", "route": "mail-send", "measure": "count($.personalizations[*].to[*])", "window": "1h",
         "limit": 5, "failure_mode": "volume-spike", "trips": "a"},
        {"id": "lenient", "route": "crm", "measure": "count($.inputs[*])", "window": "1h", "limit": 5,
         "on_invalid_body": "zero", "failure_mode": "volume-spike", "trips": "b"})j"))};
    manual_clock clock;
    request req;
    for (const char* bad : {"{\"personalizations\": [", "", "to=a@b.com&to=c@d.com", "\xff\xfe"}) {
        req.body = bad;
        const auto d = eng.evaluate(req.view(), clock.now());
        ASSERT_EQ(d.outcome, verdict::rejected) << bad;
        EXPECT_EQ(d.rule, "strict");
        EXPECT_NE(d.reason.find(bad[0] ? "body is not valid JSON" : "body is empty"), std::string::npos) << d.reason;
    }
    EXPECT_EQ(eng.read("strict", "", clock.now())->value, 0);
    req.route = "crm";
    req.body = "not json";
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    EXPECT_EQ(eng.read("lenient", "", clock.now())->value, 0);
}

TEST(Engine, PerRequestLimit) {
    engine eng{load_ok(config(R"j({"id": "batch-size", "route": "crm", "preset": "hubspot.batch.records",
        "measure": {"per_request": "preset"}, "limit": 100, "failure_mode": "volume-spike", "trips": "crm"})j"))};
    manual_clock clock;
    request req;
    req.route = "crm";
    req.path = "/crm/v3/objects/contacts/batch/update";
    std::string body = R"j({"inputs":[)j";
    for (int i = 0; i < 101; ++i) {
        body += (i ? "," : "");
        body += R"j({"id":")j" + std::to_string(i) + R"j(","properties":{"lifecyclestage":"customer"}})j";
    }
    req.body = body + "]}";
    const auto d = eng.evaluate(req.view(), clock.now());
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_EQ(d.measured, 101);
    EXPECT_EQ(d.reason, "rule batch-size (volume-spike, sev2): count($.inputs[*]) is 101 in one request, limit 100");
    req.path = "/crm/v3/objects/contacts/batch/read";  // not a mutation
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
}

TEST(Engine, KeysFromEverySource) {
    engine eng{load_ok(config(R"j({"id": "k", "route": "crm",
        "match": {"path": "/crm/v3/objects/{object}/batch/{op}"},
        "key": ["agent", "header:x-tenant", "json:$.inputs[0].properties.owner", "path:{object}"],
        "window": "1m", "limit": 1, "failure_mode": "volume-spike", "trips": "crm"},
        {"id": "q", "route": "other", "key": ["query:campaign", "method", "route"], "window": "1m", "limit": 0,
         "failure_mode": "volume-spike", "trips": "q"})j"))};
    manual_clock clock;
    request req;
    req.route = "crm";
    req.agent = "bot-7";
    req.path = "/crm/v3/objects/deals/batch/update";
    req.header("X-Tenant", "acme");
    req.body = R"j({"inputs":[{"id":"1","properties":{"owner":"u-42"}}]})j";
    ASSERT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    const auto d = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(d.key, "bot-7/acme/u-42/deals");
    EXPECT_EQ(d.breaker_instance, "crm/bot-7/acme/u-42/deals");
    req.header("x-tenant", "other");
    const auto twice = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(twice.outcome, verdict::rejected);
    EXPECT_NE(twice.reason.find("the header x-tenant of the key is given twice with different values"), std::string::npos)
        << twice.reason;
    req.headers.pop_back();
    req.route = "other";
    req.query = "a=1&campaign=spring%20sale";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).key, "spring sale/POST/other");
    // A key field given twice with different values reads two ways: refused (a fresh first
    // value each time would step around a tripped key). The same value twice is one.
    req.query = "campaign=r1&campaign=spring";
    auto two = eng.evaluate(req.view(), clock.now());
    EXPECT_EQ(two.outcome, verdict::rejected);
    EXPECT_NE(two.reason.find("the query field campaign of the key is given twice with different values"), std::string::npos)
        << two.reason;
    req.query = "campaign=spring&campaign=spring";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).key, "spring/POST/other");
    // A key names a breaker instance in logs: no line breaks or escape sequences in it.
    req.query = "campaign=c1%0A2026-01-01%20warning%20forged%1B%5B2J";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).key, "c1%0A2026-01-01 warning forged%1B[2J/POST/other");
    // Nor a byte an operator could not type back to reset it (Latin-1, shown as U+FFFD), a
    // C1 control (U+009B is a terminal's CSI) or a bidi override; other UTF-8 stays.
    req.query = "campaign=caf%E9-%C2%9B2J-%E2%80%AEevil-%C3%A9t%C3%A9";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).key, "caf%E9-%C2%9B2J-%E2%80%AEevil-\xC3\xA9t\xC3\xA9/POST/other");
    // Cut to the bound in whole units: never half a %XX.
    req.query = "campaign=" + std::string(252, 'a') + "%E9%E9";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).key, std::string(252, 'a') + "%E9");
    req.route = "crm";
    req.body = R"j({"inputs":[{"id":"1","properties":{"owner":"u\n\u007f"}}]})j";
    ASSERT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());  // the key's first request (limit 1)
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).key, "bot-7/acme/u%0A%7F/deals");
}

// Counts saved under a key as it was written before keys were escaped (a raw Latin-1 byte)
// come back under the key the same requests map to now: the cap goes on from them.
TEST(Engine, CountsSavedUnderARawKeyComeBackUnderItsEscapedName) {
    const auto cfg = config(R"j({"id": "q", "route": "other", "key": ["query:campaign"], "window": "1h", "limit": 2,
         "failure_mode": "volume-spike", "trips": "q"})j");
    engine first{load_ok(cfg)};
    manual_clock clock;
    request req;
    req.route = "other";
    req.query = "campaign=caf%E9";
    ASSERT_TRUE(first.evaluate(req.view(), clock.now()).allowed());
    ASSERT_TRUE(first.evaluate(req.view(), clock.now()).allowed());
    auto saved = first.save_meters(clock.now());
    ASSERT_EQ(saved.size(), 1u);
    // As an older version saved it: length 4, "caf\xE9".
    const std::string now_key = std::string{"\x06\0\0\0", 4} + "caf%E9";
    const std::string raw_key = std::string{"\x04\0\0\0", 4} + "caf\xE9";
    const auto at = saved[0].state.find(now_key);
    ASSERT_NE(at, std::string::npos);
    saved[0].state.replace(at, now_key.size(), raw_key);
    engine after{load_ok(cfg)};
    std::string error;
    ASSERT_TRUE(after.restore_meters(saved, clock.now(), &error)) << error;
    const auto third = after.evaluate(req.view(), clock.now());
    EXPECT_FALSE(third.allowed()) << "the cap started again from zero under the escaped key";
    EXPECT_EQ(third.key, "caf%E9");
}

TEST(Engine, ErrorRatioFromResponses) {
    engine eng{load_ok(config(R"j({"id": "err-ratio", "route": "mail-send", "measure": "status:5xx", "window": "5m",
        "ratio": {"max": 0.2, "min_volume": 10}, "failure_mode": "upstream-trouble", "trips": "sendgrid-health"})j"))};
    manual_clock clock;
    request req;
    response_view ok{202, 40ms, "", ""};
    response_view bad{503, 40ms, "", ""};
    // 5 errors out of 5: above max but under min_volume.
    for (int i = 0; i < 5; ++i) {
        EXPECT_TRUE(eng.record_response(req.view(), bad, clock.now()).allowed());
    }
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    clock.advance(6min);  // those leave the window
    for (int i = 0; i < 20; ++i) {
        EXPECT_TRUE(eng.record_response(req.view(), ok, clock.now()).allowed());
    }
    for (int i = 0; i < 5; ++i) {
        EXPECT_TRUE(eng.record_response(req.view(), bad, clock.now()).allowed());
    }
    // 5/25 = 0.2: not above. One more error -> 6/26 > 0.2.
    const auto d = eng.record_response(req.view(), bad, clock.now());
    ASSERT_EQ(d.outcome, verdict::violated);
    EXPECT_NEAR(d.measured, 6.0 / 26, 1e-9);
    EXPECT_EQ(d.volume, 26);
    EXPECT_EQ(d.trips, "sendgrid-health");
    EXPECT_EQ(d.sev, severity::sev3);
    // evaluate() sees it too (read-only), until the window moves on.
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).rule, "err-ratio");
    clock.advance(6min);
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
}

TEST(Engine, AverageLatencyAndResponseJson) {
    engine eng{load_ok(config(R"j(
        {"id": "latency", "route": "mail-send", "measure": {"avg": "latency_ms"}, "window": "1m", "limit": 800,
         "min_volume": 3, "failure_mode": "upstream-trouble", "trips": "slow"},
        {"id": "crm-errors", "route": "crm", "measure": "count(response:$.errors[*])", "window": "1m", "limit": 3,
         "failure_mode": "upstream-trouble", "trips": "crm-errors"})j"))};
    manual_clock clock;
    request req;
    EXPECT_TRUE(eng.record_response(req.view(), {200, 2000ms, "", ""}, clock.now()).allowed());
    EXPECT_TRUE(eng.record_response(req.view(), {200, 100ms, "", ""}, clock.now()).allowed());
    const auto d = eng.record_response(req.view(), {200, 400ms, "", ""}, clock.now());
    ASSERT_EQ(d.rule, "latency");
    EXPECT_NEAR(d.measured, 2500.0 / 3, 1e-9);
    req.route = "crm";
    const std::string body = R"j({"status":"COMPLETE","results":[],"errors":[{"status":"error"},{"status":"error"}]})j";
    EXPECT_TRUE(eng.record_response(req.view(), {207, 10ms, "application/json", body}, clock.now()).allowed());
    const auto e = eng.record_response(req.view(), {207, 10ms, "application/json", body}, clock.now());
    ASSERT_EQ(e.rule, "crm-errors");
    EXPECT_EQ(e.measured, 4);
    const auto r = eng.record_response(req.view(), {502, 10ms, "text/html", "<html>"}, clock.now());
    EXPECT_EQ(r.outcome, verdict::rejected);
}

TEST(Engine, ReloadKeepsMeterStateOfUnchangedRules) {
    const std::string keep = R"j({"id": "keep", "route": "mail-send", "window": "1h", "limit": 3,
        "failure_mode": "volume-spike", "trips": "a"})j";
    engine old_eng{load_ok(config(keep + R"j(, {"id": "change", "route": "mail-send", "window": "1h", "limit": 100,
        "failure_mode": "volume-spike", "trips": "b"})j"))};
    manual_clock clock;
    request req;
    for (int i = 0; i < 2; ++i) {
        ASSERT_TRUE(old_eng.evaluate(req.view(), clock.now()).allowed());
    }
    // Same "keep" (only its limit differs), "change" gets a new window, "added" is new.
    const std::string keep_higher = R"j({"id": "keep", "route": "mail-send", "window": "1h", "limit": 4,
        "failure_mode": "volume-spike", "trips": "a"})j";
    engine new_eng{load_ok(config(keep_higher + R"j(, {"id": "change", "route": "mail-send", "window": "2h", "limit": 100,
        "failure_mode": "volume-spike", "trips": "b"}, {"id": "added", "window": "1m", "limit": 9,
        "failure_mode": "volume-spike", "trips": "c"})j")),
                   &old_eng};
    EXPECT_TRUE(new_eng.shares_meter_with(old_eng, "keep"));
    EXPECT_FALSE(new_eng.shares_meter_with(old_eng, "change"));
    EXPECT_EQ(new_eng.read("keep", "", clock.now())->value, 2);
    EXPECT_EQ(new_eng.read("change", "", clock.now())->value, 0);
    // Both engines book into the same meter while the old one drains: still exact.
    EXPECT_TRUE(old_eng.evaluate(req.view(), clock.now()).allowed());
    EXPECT_TRUE(new_eng.evaluate(req.view(), clock.now()).allowed());  // 4 of 4
    EXPECT_FALSE(new_eng.evaluate(req.view(), clock.now()).allowed());
}

TEST(Engine, SumDistinctAndBodyBytes) {
    engine eng{load_ok(config(R"j(
        {"id": "distinct", "route": "mail-send", "measure": {"per_request": "distinct($.personalizations[*].to[*].email)"},
         "limit": 2, "failure_mode": "volume-spike", "trips": "a"},
        {"id": "amount", "route": "mail-send", "measure": {"per_request": "sum($.items[*].qty) + 1"}, "limit": 11,
         "failure_mode": "volume-spike", "trips": "a"},
        {"id": "bytes", "route": "mail-send", "measure": "body_bytes", "window": "1m", "limit": 1000,
         "failure_mode": "volume-spike", "trips": "a"})j"))};
    manual_clock clock;
    request req;
    req.body = R"j({"personalizations":[{"to":[{"email":"a@x"},{"email":"a@x"}]},{"to":[{"email":"b@x"}]}],
        "items":[{"qty":4},{"qty":5.5},{"qty":"x"}]})j";
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    req.body = R"j({"personalizations":[{"to":[{"email":"a@x"},{"email":"c@x"}]},{"to":[{"email":"b@x"}]}]})j";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).rule, "distinct");
    req.body = R"j({"items":[{"qty":4},{"qty":7}]})j";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).measured, 12);
    req.body = R"j({"pad":")j" + std::string(900, 'x') + "\"}";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).rule, "bytes");
}

// A sum is of amounts, which are never negative: a negative value must not take room from
// the window (one request with -1e6 would let a million more through), a huge one must not
// make the total infinite (its rollback would leave NaN, which is never above a limit).
TEST(Engine, ASumCannotBeLoweredOrMadeInfinite) {
    engine eng{load_ok(config(R"j(
        {"id": "per-request", "route": "mail-send", "measure": {"per_request": "sum($.items[*].qty)"}, "limit": 5000,
         "failure_mode": "volume-spike", "trips": "a"},
        {"id": "qty", "route": "mail-send", "key": "header:x-k", "measure": "sum($.items[*].qty)", "window": "1h",
         "limit": 1000, "failure_mode": "volume-spike", "trips": "a"})j"))};
    manual_clock clock;
    request req;
    req.header("x-k", "k");
    req.body = R"j({"items":[{"qty":-1000000},{"qty":-1.7e308},{"qty":-1.7e308}]})j";
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    EXPECT_EQ(eng.read("qty", "k", clock.now())->value, 0);
    req.body = R"j({"items":[{"qty":600}]})j";
    EXPECT_TRUE(eng.evaluate(req.view(), clock.now()).allowed());
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).rule, "qty") << "the negative amount made room in the window";
    // A per-request cap cannot be hidden by a negative item either.
    req = request{};
    req.header("x-k", "other");
    req.body = R"j({"items":[{"qty":5001},{"qty":-4990}]})j";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).rule, "per-request");
    // Huge values: the request is refused by the window cap, and the window stays finite (the
    // refused booking is rolled back exactly): a later small request still counts.
    req = request{};
    req.header("x-k", "huge");
    req.body = R"j({"items":[{"qty":1.7e308},{"qty":1.7e308}]})j";
    EXPECT_FALSE(eng.evaluate(req.view(), clock.now()).allowed());
    req.body = R"j({"items":[{"qty":999}]})j";
    const auto d = eng.evaluate(req.view(), clock.now());
    EXPECT_TRUE(d.allowed()) << d.rule << ": " << d.reason;
    EXPECT_EQ(eng.read("qty", "huge", clock.now())->value, 999);
    req.body = R"j({"items":[{"qty":2}]})j";
    EXPECT_EQ(eng.evaluate(req.view(), clock.now()).rule, "qty");
}

}  // namespace
}  // namespace bb::rules::test
