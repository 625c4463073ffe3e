// Cost per KiB of request body of the content and audience guardrails (issue 7), with every
// guardrail on, over realistic SendGrid v3 mail/send bodies of 2 KiB, 16 KiB and 256 KiB
// (marketing newsletters: personalizations with dynamic template data, an HTML body with
// prices, dates, CSS and links, an unsubscribe link). Nothing in them trips, so every byte is
// scanned by every guard. Also each guard alone on the 16 KiB body.
//
//   taskset -c 1 ./bench_guardrails --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// `per_KiB` is the time per KiB of body (target: <= 1 us/KiB with all guardrails on).
// BM_RunShGuardrails_200B is loadtest/run.sh's guardrails row: its rules on its 200-byte body.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <boost/unordered/unordered_flat_set.hpp>
#include <simdjson.h>

#include "core/clock.hpp"
#include "core/sha256.hpp"
#include "rules/engine.hpp"

namespace {

using namespace bb;
using namespace bb::rules;

const char* paragraphs[] = {
    "<p style=\"font-family:Helvetica,Arial,sans-serif;font-size:16px;line-height:24px;color:#333333\">Spring is "
    "here, and so are our best prices of the season. Save up to 40% on outdoor furniture, grills and garden tools "
    "until 30 April 2026. Prices from $19.99; free shipping on orders over $75.</p>",
    "<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\"><tr><td align=\"center\" "
    "style=\"padding:12px 24px\"><a href=\"https://www.example.com/spring-sale?utm_source=newsletter&amp;utm_medium="
    "email&amp;utm_campaign=spring-2026\" style=\"background:#0a7cff;color:#ffffff;padding:12px 24px\">Shop the "
    "sale</a></td></tr></table>",
    "<p>Order #A-100234 shipped on 2026-03-14 via UPS, tracking 1Z 999 AA1 01 2345 6784. Questions? Call us on "
    "+1 (555) 010-0199 or reply to this email; our team answers within 24 hours, Monday to Friday 9-17 CET.</p>",
    "<p>Members earn 2x points this week: 1,250 points are waiting in your account. See "
    "<a href=\"https://rewards.example.com/points\">your rewards</a> or read the "
    "<a href=\"https://help.example.com/faq#points\">FAQ</a>.</p>",
};

std::string html_of(std::size_t bytes) {
    std::string h = "<html><head><style>body{margin:0;padding:0} .btn{border-radius:4px}</style></head><body>";
    for (std::size_t i = 0; h.size() < bytes; ++i) {
        h += paragraphs[i % 4];
    }
    h += "<p style=\"font-size:12px\">You receive this because you subscribed. "
         "<a href=\"https://www.example.com/unsubscribe?u=abc123\">Unsubscribe</a></p></body></html>";
    return h;
}

std::string json_escape(const std::string& s) {
    std::string out;
    for (const char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
        }
        out += c;
    }
    return out;
}

// A SendGrid body of about `size` bytes: `recipients` personalizations, the rest HTML.
std::string sendgrid_body(std::size_t size, int recipients) {
    std::string b = R"({"personalizations":[)";
    for (int i = 0; i < recipients; ++i) {
        b += i ? "," : "";
        b += R"({"to":[{"email":"customer)" + std::to_string(i) + R"(@example.com","name":"Customer )" +
             std::to_string(i) + R"("}],"dynamic_template_data":{"first_name":"Ann","points":)" +
             std::to_string(1000 + i) + R"(,"tier":"gold"}})";
    }
    b += R"(],"from":{"email":"news@example.com","name":"Example Store"},"reply_to":{"email":"support@example.com"},)"
         R"("subject":"Spring sale: up to 40% off","categories":["marketing","spring-2026"],)"
         R"("asm":{"group_id":42},"tracking_settings":{"click_tracking":{"enable":true}},)"
         R"("content":[{"type":"text/plain","value":"Spring sale: up to 40% off. Unsubscribe: https://www.example.com/unsubscribe"},)"
         R"({"type":"text/html","value":")";
    const std::size_t used = b.size() + 8;
    b += json_escape(html_of(size > used ? size - used : 256));
    b += R"("}]})";
    return b;
}

std::string suppression_file() {
    const auto path = std::filesystem::temp_directory_path() / "bench_guardrails_suppressed.txt";
    std::ofstream out{path, std::ios::trunc};
    out << "# 10,000 addresses and 10,000 SHA-256 digests\n";
    for (int i = 0; i < 10'000; ++i) {
        out << "former" << i << "@example.org\n";
    }
    for (int i = 0; i < 10'000; ++i) {
        char buf[65];
        std::snprintf(buf, sizeof buf, "%064x", i * 2654435761u);
        out << buf << "\n";
    }
    return path.string();
}

std::string blocked_terms() {
    std::string t = R"("free money","act now","risk free","winner","viagra","crypto giveaway","wire transfer",)"
                    R"("100% guaranteed","no credit check","click here to claim")";
    for (int i = 0; i < 90; ++i) {
        t += ",\"spam phrase " + std::to_string(i) + "\"";
    }
    return t;
}

std::string guard_rule(const std::string& id, const std::string& guard) {
    return R"({"id":")" + id + R"(","route":"mail-send","guard":)" + guard +
           R"(,"failure_mode":"guard","trips":"b-)" + id + R"("})";
}

std::vector<std::string> all_guards() {
    return {
        guard_rule("pii", R"({"pii":["card","ssn","iban","secrets"]})"),
        guard_rule("audience", R"({"recipients":{"allow_domains":["example.com","example.org"],)"
                               R"("block_domains":["competitor.com"],"suppression_file":")" +
                                   suppression_file() + R"("}})"),
        guard_rule("brand", R"({"content":{"blocked_terms":[)" + blocked_terms() +
                                R"(],"link_domains":["example.com","sendgrid.net"],"require_unsubscribe":true}})"),
        guard_rule("loops", R"({"duplicates":{"max":100,"window":"1m","of":["recipient","subject"]}})"),
    };
}

std::shared_ptr<const rule_set> load(const std::vector<std::string>& rules) {
    std::string text = R"({"failure_modes":[{"id":"guard","title":"Guardrail","severity":"sev2","owner":"ops"}],"rules":[)";
    for (std::size_t i = 0; i < rules.size(); ++i) {
        text += i ? "," : "";
        text += rules[i];
    }
    text += "]}";
    simdjson::dom::parser parser;
    simdjson::dom::element doc = parser.parse(simdjson::padded_string{text}).value();
    simdjson::dom::element fm = doc["failure_modes"].value();
    simdjson::dom::element rl = doc["rules"].value();
    cfg::errors errs;
    auto set = parse_rules(&fm, &rl, {"mail-send"}, errs);
    if (!errs.empty()) {
        std::fprintf(stderr, "%s\n", errs.to_string().c_str());
        std::abort();
    }
    return set;
}

// A SendGrid mail send of `body` on route mail-send.
request_view mail_send(std::string_view body) {
    request_view v;
    v.method = "POST";
    v.path = v.target = "/v3/mail/send";
    v.host = "api.sendgrid.com";
    v.route = "mail-send";
    v.content_type = "application/json";
    v.body = body;
    return v;
}

void run(benchmark::State& state, const std::vector<std::string>& rules, std::size_t size, int recipients) {
    engine eng{load(rules)};
    const std::string body = sendgrid_body(size, recipients);
    request_view v = mail_send(body);
    v.agent = "agent-1";
    manual_clock clock;
    for (auto _ : state) {
        // 1 s per send: the duplicates window (1 min, max 100) never fills.
        clock.advance(std::chrono::seconds{1});
        const auto d = eng.evaluate(v, clock.now());
        if (!d.allowed()) {
            state.SkipWithError(d.reason.c_str());
            break;
        }
        benchmark::DoNotOptimize(d);
    }
    const double kib = static_cast<double>(body.size()) / 1024.0;
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * body.size()));
    state.counters["per_KiB"] = benchmark::Counter(kib * static_cast<double>(state.iterations()),
                                                   benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
    state.counters["body_KiB"] = kib;
}

// The guardrails row of loadtest/run.sh (the proxy throughput with guardrails on vs off):
// its three rules (no duplicates: wrk repeats one body) on its 200-byte body (post.lua), so
// the guards' CPU per request in that row can be read here.
std::vector<std::string> run_sh_guards() {
    const auto path = std::filesystem::temp_directory_path() / "bench_guardrails_run_sh_suppressed.txt";
    {
        std::ofstream out{path, std::ios::trunc};
        for (int i = 1; i <= 10'000; ++i) {
            out << "someone" << i << "@elsewhere.example\n";
        }
    }
    return {
        guard_rule("pii", R"({"pii":["card","ssn","iban","secrets"]})"),
        guard_rule("audience", R"({"recipients":{"allow_domains":["example.com"],"block_domains":["competitor.example"],)"
                               R"("suppression_file":")" + path.string() + R"("}})"),
        guard_rule("content", R"({"content":{"blocked_terms":["free money","act now","wire transfer"],)"
                              R"("link_domains":["example.com"]}})"),
    };
}

void BM_RunShGuardrails_200B(benchmark::State& state) {
    engine eng{load(run_sh_guards())};
    const std::string body = R"({"personalizations":[{"to":[{"email":"ada@example.com"}]}],)"
                             R"("from":{"email":"ops@example.com"},"subject":"Spring sale",)"
                             R"("content":[{"type":"text/plain","value":"Hello Ada, the big sale starts today."}]})";
    const request_view v = mail_send(body);
    manual_clock clock;
    for (auto _ : state) {
        const auto d = eng.evaluate(v, clock.now());
        if (!d.allowed()) {
            state.SkipWithError(d.reason.c_str());
            break;
        }
        benchmark::DoNotOptimize(d);
    }
    state.counters["body_bytes"] = static_cast<double>(body.size());
}

// A floor under any implementation of these guards, not a guard: what the issue's own
// requirements cost before a single byte is checked for PII, terms, links or loops. The body
// parsed by simdjson (DOM, strings unescaped: the guards read decoded text) and, for each
// recipient address, its lower case, its SHA-256 (the suppression list holds digests; the
// same bb::sha256 on OpenSSL's SHA-NI code) and one probe of a set of 20,000 digests as the
// suppression list keeps them. Compared with the all-guards row of the same body in the same
// run, it says how much of the 1 us/KiB target is left for the guards themselves.
void floor_run(benchmark::State& state, std::size_t size, int recipients, bool digest = true) {
    const std::string body = sendgrid_body(size, recipients);
    const simdjson::padded_string padded{body};
    struct digest_hash {
        std::size_t operator()(const std::array<std::uint8_t, 16>& d) const {
            std::size_t h;
            std::memcpy(&h, d.data(), sizeof h);
            return h;
        }
    };
    boost::unordered_flat_set<std::array<std::uint8_t, 16>, digest_hash> suppressed;
    for (int i = 0; i < 20'000; ++i) {
        const sha256_digest d = sha256("former" + std::to_string(i) + "@example.org");
        std::array<std::uint8_t, 16> k;
        std::copy_n(d.begin(), k.size(), k.begin());
        suppressed.insert(k);
    }
    simdjson::dom::parser parser;
    std::string lower;
    std::size_t hits = 0;
    std::size_t addresses = 0;
    for (auto _ : state) {
        simdjson::dom::element doc;
        simdjson::dom::array personalizations;
        if (parser.parse(padded).get(doc) != simdjson::SUCCESS ||
            doc["personalizations"].get(personalizations) != simdjson::SUCCESS) {
            state.SkipWithError("the floor could not parse the body");
            break;
        }
        addresses = 0;
        for (const simdjson::dom::element p : personalizations) {
            simdjson::dom::array to;
            if (p["to"].get(to) != simdjson::SUCCESS) {
                continue;
            }
            for (const simdjson::dom::element r : to) {
                std::string_view email;
                if (r["email"].get(email) != simdjson::SUCCESS) {
                    continue;
                }
                lower.assign(email);
                for (char& c : lower) {
                    c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
                }
                if (digest) {
                    const sha256_digest d = sha256(lower);
                    std::array<std::uint8_t, 16> k;
                    std::copy_n(d.begin(), k.size(), k.begin());
                    hits += suppressed.contains(k) ? 1 : 0;
                } else {
                    hits += lower.size();
                }
                ++addresses;
            }
        }
        benchmark::DoNotOptimize(hits);
    }
    if (addresses != static_cast<std::size_t>(recipients)) {
        state.SkipWithError("the floor did not read every recipient");
    }
    const double kib = static_cast<double>(body.size()) / 1024.0;
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * body.size()));
    state.counters["per_KiB"] = benchmark::Counter(kib * static_cast<double>(state.iterations()),
                                                   benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
    state.counters["body_KiB"] = kib;
}

void BM_AllGuardrails_2KiB(benchmark::State& s) { run(s, all_guards(), 2 * 1024, 3); }
void BM_AllGuardrails_16KiB(benchmark::State& s) { run(s, all_guards(), 16 * 1024, 20); }
void BM_AllGuardrails_256KiB(benchmark::State& s) { run(s, all_guards(), 256 * 1024, 1000); }
// The cost model behind the rows above: a newsletter of 256 KiB to 20 recipients (the
// per-KiB cost of reading text), and the same small body to 1 and to 201 recipients (the
// cost of one more recipient: its 130 bytes of JSON, its suppression digest, its duplicate
// pair, its domain).
void BM_AllGuardrails_256KiB_20recipients(benchmark::State& s) { run(s, all_guards(), 256 * 1024, 20); }
void BM_AllGuardrails_1recipient(benchmark::State& s) { run(s, all_guards(), 0, 1); }
void BM_AllGuardrails_201recipients(benchmark::State& s) { run(s, all_guards(), 0, 201); }
// The parse part of the floor again with simdjson's On Demand front end, which builds no
// tape: every value visited and every string read unescaped (the guards read them all),
// nothing digested. The floor is the cheaper of the two parses plus the digests.
std::size_t visit_all(simdjson::ondemand::value v) {
    std::size_t n = 0;
    simdjson::ondemand::json_type t;
    if (v.type().get(t) != simdjson::SUCCESS) {
        return 0;
    }
    switch (t) {
        case simdjson::ondemand::json_type::object: {
            simdjson::ondemand::object o;
            if (v.get_object().get(o) != simdjson::SUCCESS) {
                return 0;
            }
            for (auto field : o) {
                std::string_view key;
                simdjson::ondemand::value child;
                if (field.unescaped_key().get(key) != simdjson::SUCCESS || field.value().get(child) != simdjson::SUCCESS) {
                    return 0;
                }
                n += key.size() + visit_all(child);
            }
            return n;
        }
        case simdjson::ondemand::json_type::array: {
            simdjson::ondemand::array a;
            if (v.get_array().get(a) != simdjson::SUCCESS) {
                return 0;
            }
            for (auto item : a) {
                simdjson::ondemand::value child;
                if (item.get(child) != simdjson::SUCCESS) {
                    return 0;
                }
                n += visit_all(child);
            }
            return n;
        }
        case simdjson::ondemand::json_type::string: {
            std::string_view text;
            return v.get_string().get(text) == simdjson::SUCCESS ? text.size() : 0;
        }
        default: return v.raw_json_token().size();
    }
}

void BM_FloorOnDemandParseOnly_201recipients(benchmark::State& state) {
    const std::string body = sendgrid_body(0, 201);
    const simdjson::padded_string padded{body};
    simdjson::ondemand::parser parser;
    std::size_t bytes = 0;
    for (auto _ : state) {
        simdjson::ondemand::document doc;
        simdjson::ondemand::value root;
        if (parser.iterate(padded).get(doc) != simdjson::SUCCESS || doc.get_value().get(root) != simdjson::SUCCESS) {
            state.SkipWithError("the floor could not parse the body");
            break;
        }
        bytes = visit_all(root);
        benchmark::DoNotOptimize(bytes);
    }
    if (bytes < body.size() / 2) {
        state.SkipWithError("the floor did not read the body");
    }
    const double kib = static_cast<double>(body.size()) / 1024.0;
    state.counters["per_KiB"] = benchmark::Counter(kib * static_cast<double>(state.iterations()),
                                                   benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
    state.counters["body_KiB"] = kib;
}

void BM_Floor_2KiB(benchmark::State& s) { floor_run(s, 2 * 1024, 3); }
void BM_Floor_16KiB(benchmark::State& s) { floor_run(s, 16 * 1024, 20); }
void BM_Floor_256KiB(benchmark::State& s) { floor_run(s, 256 * 1024, 1000); }
void BM_Floor_1recipient(benchmark::State& s) { floor_run(s, 0, 1); }
void BM_Floor_201recipients(benchmark::State& s) { floor_run(s, 0, 201); }
// The same without the digests: the parse's part of the floor.
void BM_FloorParseOnly_201recipients(benchmark::State& s) { floor_run(s, 0, 201, false); }
void BM_Pii_16KiB(benchmark::State& s) { run(s, {all_guards()[0]}, 16 * 1024, 20); }
void BM_Recipients_16KiB(benchmark::State& s) { run(s, {all_guards()[1]}, 16 * 1024, 20); }
void BM_Content_16KiB(benchmark::State& s) { run(s, {all_guards()[2]}, 16 * 1024, 20); }
void BM_Duplicates_16KiB(benchmark::State& s) { run(s, {all_guards()[3]}, 16 * 1024, 20); }
// Each guard alone on the 1,000-recipient body: where its per-KiB cost goes.
void BM_Pii_256KiB(benchmark::State& s) { run(s, {all_guards()[0]}, 256 * 1024, 1000); }
void BM_Recipients_256KiB(benchmark::State& s) { run(s, {all_guards()[1]}, 256 * 1024, 1000); }
void BM_Content_256KiB(benchmark::State& s) { run(s, {all_guards()[2]}, 256 * 1024, 1000); }
void BM_Duplicates_256KiB(benchmark::State& s) { run(s, {all_guards()[3]}, 256 * 1024, 1000); }

BENCHMARK(BM_AllGuardrails_2KiB);
BENCHMARK(BM_AllGuardrails_16KiB);
BENCHMARK(BM_AllGuardrails_256KiB);
BENCHMARK(BM_AllGuardrails_256KiB_20recipients);
BENCHMARK(BM_AllGuardrails_1recipient);
BENCHMARK(BM_AllGuardrails_201recipients);
BENCHMARK(BM_Floor_2KiB);
BENCHMARK(BM_Floor_16KiB);
BENCHMARK(BM_Floor_256KiB);
BENCHMARK(BM_Floor_1recipient);
BENCHMARK(BM_Floor_201recipients);
BENCHMARK(BM_FloorParseOnly_201recipients);
BENCHMARK(BM_FloorOnDemandParseOnly_201recipients);
BENCHMARK(BM_Pii_16KiB);
BENCHMARK(BM_Recipients_16KiB);
BENCHMARK(BM_Content_16KiB);
BENCHMARK(BM_Duplicates_16KiB);
BENCHMARK(BM_Pii_256KiB);
BENCHMARK(BM_Recipients_256KiB);
BENCHMARK(BM_Content_256KiB);
BENCHMARK(BM_Duplicates_256KiB);
BENCHMARK(BM_RunShGuardrails_200B);

}  // namespace

BENCHMARK_MAIN();
