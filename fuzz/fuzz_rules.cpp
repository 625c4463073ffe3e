// libFuzzer target: everything in rules/ that reads a request body a client sent. The four
// guardrails (each in an engine of its own, so that one's denial does not hide the next; and
// three of them together, which must decide as they do alone),
// a metering rule per preset plus rules with every term kind, the agent body constraints and
// the Salesforce composite readers. Built and run by scripts/fuzz.sh under AddressSanitizer
// and UndefinedBehaviorSanitizer; a crash, a sanitizer report, an uncaught exception or a
// leak is a finding.
//
// Input: byte 0 picks the content type, byte 1 the method and path (one per API the
// guards and presets read), byte 2 the query string's length (taken from the front of the
// rest); the rest is the body.

#include <simdjson.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

#include "core/clock.hpp"
#include "core/json_reader.hpp"
#include "core/sha256.hpp"
#include "rules/agent_constraints.hpp"
#include "rules/engine.hpp"
#include "rules/idna.hpp"
#include "rules/presets/presets.hpp"
#include "rules/rule_set.hpp"

namespace {

using namespace bb;
using namespace bb::rules;

std::shared_ptr<const rule_set> load(const std::string& rules, const std::vector<std::string>& routes) {
    const std::string text =
        R"({"failure_modes":[{"id":"f","title":"Fuzz","severity":"sev2","owner":"ops"}],"rules":[)" + rules + "]}";
    simdjson::dom::parser parser;
    simdjson::dom::element doc = parser.parse(simdjson::padded_string{text}).value();
    simdjson::dom::element fm = doc["failure_modes"].value();
    simdjson::dom::element rl = doc["rules"].value();
    cfg::errors errs;
    auto set = parse_rules(&fm, &rl, routes, errs);
    if (!errs.empty()) {
        std::fprintf(stderr, "fuzz_rules: bad built-in config:\n%s\n", errs.to_string().c_str());
        std::abort();
    }
    return set;
}

// One file per process: fuzzing jobs and test runs side by side must not rewrite each other's.
std::string suppression_file() {
    const auto path = std::filesystem::temp_directory_path() /
                      ("bb_fuzz_rules_suppressed." + std::to_string(::getpid()) + ".txt");
    std::ofstream out{path, std::ios::trunc};
    out << "# addresses and digests\nformer@example.org\nmailto:Gone@Example.COM\njane@b\xC3\xBC" "cher.de\n"
        << sha256_hex("digest@example.org") << "\n" << sha256_hex("ann@xn--mnchen-3ya.de") << "\n";
    return path.string();
}

std::string guard(const std::string& id, const std::string& spec) {
    return R"({"id":")" + id + R"(","route":"api","guard":)" + spec + R"(,"failure_mode":"f","trips":"b-)" + id +
           R"("})";
}

struct engines {
    // pii, recipients and content alone (their first three), then the three together, whose
    // decision must be the first of theirs that is not an allow: one rule alone reads the
    // body on its own path, several share one parse and one classification of its paths.
    std::vector<std::unique_ptr<engine>> stateless;
    std::vector<std::unique_ptr<engine>> all;
    engines() {
        const std::vector<std::string> routes{"api"};
        const std::string guards[] = {
            guard("pii", R"({"pii":["card","ssn","iban","secrets"]})"),
            guard("rcpt", R"({"recipients":{"allow_domains":["example.com","example.org"],)"
                          R"("block_domains":["competitor.com","xn--bcher-kva.de"],"suppression_file":)" +
                              cfg::quote(suppression_file()) +
                              R"(,"suppression_bypass":"refuse","require_recipients":true}})"),
            guard("content", R"({"content":{"blocked_terms":["free money","act now","wire transfer","winner"],)"
                             R"("link_domains":["example.com"],"require_unsubscribe":true}})"),
            guard("dup", R"({"duplicates":{"max":2,"window":"1m","of":["recipient","subject"]}})"),
            guard("dup-t", R"({"duplicates":{"max":2,"window":"1m","of":["recipient","template"]}})"),
        };
        for (int i = 0; i < 3; ++i) {
            stateless.push_back(std::make_unique<engine>(load(guards[i], routes)));
        }
        stateless.push_back(std::make_unique<engine>(load(guards[0] + "," + guards[1] + "," + guards[2], routes)));
        for (int i = 3; i < 5; ++i) {
            all.push_back(std::make_unique<engine>(load(guards[i], routes)));
        }
        // Every guard at once: the shared parse and path classification across rules.
        all.push_back(std::make_unique<engine>(
            load(guards[0] + "," + guards[1] + "," + guards[2] + "," + guards[3], routes)));
        // A metering rule per preset, and every kind of term.
        std::string meters;
        int n = 0;
        for (const auto& p : presets()) {
            meters += meters.empty() ? "" : ",";
            meters += R"({"id":"p)" + std::to_string(n++) + R"(","route":"api","preset":")" + std::string{p.name} +
                      R"(","measure":{"per_request":"preset"},"limit":1000000,"failure_mode":"f","trips":"m"})";
        }
        const char* exprs[] = {
            "count($.personalizations[*].to[*])",
            "distinct($.personalizations[*].to[*].email)",
            "sum($.items[*].qty) + count(form:to)",
            "count(addresses:$.to) + count(addresses:$.personalizations[*].to[*].email)",
            "count($.ops[?(@.method=='DELETE')]) + count(url_ids:$.ops[?(@.method=='DELETE')].url)",
            "count(query:ids) + body_bytes",
            "count($.personalizations[*].to[?(@.name=='A')])",
        };
        for (const char* e : exprs) {
            meters += R"(,{"id":"e)" + std::to_string(n++) + R"(","route":"api","measure":{"per_request":")" + e +
                      R"("},"limit":1000000,"failure_mode":"f","trips":"m"})";
        }
        all.push_back(std::make_unique<engine>(load(meters, routes)));
    }
};

constexpr std::array<std::string_view, 8> content_types{
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=XyZ",
    "text/plain",
    "application/json; charset=utf-8",
    "multipart/form-data; boundary=\"a b\"",
    "application/x-www-form-urlencoded; charset=utf-8",
    "",
};

struct target {
    std::string_view method;
    std::string_view path;
};
constexpr std::array<target, 20> targets{{
    {"POST", "/v3/mail/send"},
    {"POST", "/v3/mg.example.com/messages"},
    {"POST", "/v3/mg.example.com/messages.mime"},
    {"POST", "/v2/email/outbound-emails"},
    {"POST", "/v2/email/outbound-bulk-emails"},
    {"POST", "/"},
    {"POST", "/marketing/v3/transactional/single-email/send"},
    {"POST", "/crm/v3/objects/contacts/batch/archive"},
    {"POST", "/crm/v3/objects/contacts/batch/upsert"},
    {"POST", "/crm/v3/objects/contacts/gdpr-delete"},
    {"DELETE", "/crm/v3/objects/contacts/123"},
    {"POST", "/services/data/v59.0/actions/standard/emailSimple"},
    {"POST", "/services/data/v59.0/composite"},
    {"POST", "/services/data/v59.0/composite/batch"},
    {"POST", "/services/data/v59.0/composite/graph"},
    {"DELETE", "/services/data/v59.0/composite/sobjects"},
    {"POST", "/services/data/v59.0/composite/tree/Account"},
    {"POST", "/services/async/59.0/job/750x/batch"},
    {"PATCH", "/services/data/v59.0/sobjects/Contact/003x"},
    {"GET", "/v3/mail/send"},
}};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static engines e;
    static manual_clock clock;
    if (size < 3) {
        return 0;
    }
    const std::string_view ct = content_types[data[0] % content_types.size()];
    const target t = targets[data[1] % targets.size()];
    std::string_view rest{reinterpret_cast<const char*>(data + 3), size - 3};
    const std::size_t qlen = std::min<std::size_t>(data[2] & 0x3f, rest.size());
    const std::string_view query = rest.substr(0, qlen);
    const std::string_view body = rest.substr(qlen);

    clock.advance(std::chrono::seconds{1});
    const header_field headers[] = {{"content-type", ct}, {"x-smtpapi", "{}"}};
    request_view v;
    v.method = t.method;
    v.path = v.target = t.path;
    v.query = query;
    v.host = "api.example.com";
    v.route = "api";
    v.agent = "agent-1";
    v.content_type = ct;
    v.body = body;
    v.headers = headers;
    decision d[4];
    for (int i = 0; i < 4; ++i) {
        d[i] = e.stateless[i]->evaluate(v, clock.now());
    }
    const decision* expected = nullptr;
    for (int i = 0; i < 3 && !expected; ++i) {
        expected = d[i].allowed() ? nullptr : &d[i];
    }
    if (expected ? d[3].outcome != expected->outcome || d[3].rule != expected->rule ||
                       d[3].reason != expected->reason
                 : !d[3].allowed()) {
        std::fprintf(stderr, "fuzz_rules: the guards together decided \"%s\" (%s), alone \"%s\" (%s)\n",
                     d[3].rule.c_str(), d[3].reason.c_str(), expected ? expected->rule.c_str() : "allow",
                     expected ? expected->reason.c_str() : "");
        std::abort();
    }
    for (auto& eng : e.all) {
        (void)eng->evaluate(v, clock.now());
    }
    // Nothing a request leaves behind in the per-thread parse changes the next decision.
    const decision again = e.stateless[0]->evaluate(v, clock.now());
    if (again.outcome != d[0].outcome || again.reason != d[0].reason) {
        std::fprintf(stderr, "fuzz_rules: the pii guard decided \"%s\", then \"%s\"\n", d[0].reason.c_str(),
                     again.reason.c_str());
        std::abort();
    }

    body_constraints c;
    c.max_recipients = 3;
    c.from_domains = {"example.com"};
    c.reply_to_domains = {"help.example.com"};
    c.template_ids = {"d-123", "welcome"};
    const std::string why = check_body_constraints(c, ct, body, query, t.path);
    (void)body_unreadable(why);

    std::vector<subrequest> subs;
    const std::string read = salesforce_subrequests(t.path, body, subs);
    (void)salesforce_subrequest_refusal(t.path, body);
    (void)constrained_subrequests(t.path, body, nullptr, read.empty() ? &subs : nullptr);

    // Internationalized domains: a domain and its ACE spelling name one domain, so both read
    // back to the same Unicode form (the bytes after the query, as a domain of DNS's length).
    const std::string_view domain = body.substr(0, 253);
    auto unicode_form = [](std::string_view d) {
        std::string u;
        if (!idna::to_unicode(d, u)) {
            u.assign(d);
            for (auto& ch : u) {
                ch = ch >= 'A' && ch <= 'Z' ? static_cast<char>(ch + 32) : ch;
            }
        }
        return u;
    };
    // (An ACE spelling may be plain ASCII: full-width letters are their ASCII selves.) And the
    // Unicode form is its own (recipients are read into it, then looked up through it again).
    if (const std::string u = unicode_form(domain); unicode_form(u) != u) {
        std::fprintf(stderr, "fuzz_rules: the Unicode form %s reads as another domain\n", u.c_str());
        std::abort();
    }
    if (std::string ace; idna::to_ascii(domain, ace)) {
        if (unicode_form(ace) != unicode_form(domain)) {
            std::fprintf(stderr, "fuzz_rules: the ACE spelling %s reads as another domain\n", ace.c_str());
            std::abort();
        }
    }
    return 0;
}
