// Per-request cost of the rules engine over a realistic 2 KiB SendGrid body (issue 3):
// 1, 10 and 100 rules (the extra 90 on other routes, which the route index skips), plus the
// JSON parse alone for reference and the memory one active key costs.
//
//   taskset -c 1 ./bench_rules --benchmark_repetitions=10 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>
#include <malloc.h>

#include <string>
#include <vector>

#include "core/clock.hpp"
#include "rules/engine.hpp"

namespace {

using namespace bb;
using namespace bb::rules;

std::string sendgrid_body_2k() {
    std::string b = R"({"personalizations":[)";
    for (int p = 0; p < 3; ++p) {
        b += p ? "," : "";
        b += R"({"to":[)";
        for (int i = 0; i < 6; ++i) {
            b += i ? "," : "";
            b += R"({"email":"customer)" + std::to_string(p * 10 + i) + R"(@example.com","name":"Customer )" +
                 std::to_string(p * 10 + i) + R"("})";
        }
        b += R"(],"cc":[{"email":"account-manager@example.com"}],"dynamic_template_data":{"first_name":"Ann","order":"A-1001"}})";
    }
    b += R"(],"from":{"email":"orders@example.com","name":"Example Orders"},)"
         R"("reply_to":{"email":"support@example.com"},"subject":"Your order has shipped",)"
         R"("categories":["transactional","shipping"],"tracking_settings":{"click_tracking":{"enable":true}},)"
         R"("content":[{"type":"text/html","value":")";
    while (b.size() < 2048 - 4) {
        b += "<p>Thanks for your order.</p>";
    }
    b.resize(2048 - 4);
    b += R"("}]})";
    return b;
}

std::string mode() {
    return R"("failure_modes":[{"id":"volume-spike","title":"Send volume spike","severity":"sev2","owner":"ops"}])";
}

std::string rule(const std::string& id, const std::string& route, const std::string& body) {
    return R"({"id":")" + id + R"(","route":")" + route + R"(",)" + body +
           R"(,"failure_mode":"volume-spike","trips":"b-)" + id + R"("})";
}

// The mail-send rules a real deployment might have, with limits that never trip.
std::vector<std::string> mail_rules() {
    return {
        rule("recipients-per-campaign", "mail-send",
             R"j("key":["header:x-campaign-id"],"measure":{"sum":"count($.personalizations[*].to[*])"},"window":"1h","limit":1e15)j"),
        rule("recipients-per-agent", "mail-send", R"("key":"agent","preset":"sendgrid.recipients","window":"15m","limit":1e15)"),
        rule("requests-per-agent", "mail-send", R"("key":"agent","window":"1m","limit":1e15)"),
        rule("bytes-per-agent", "mail-send", R"("key":"agent","measure":"body_bytes","window":"1m","limit":1e15)"),
        rule("batch-size", "mail-send", R"("preset":"sendgrid.recipients","measure":{"per_request":"preset"},"limit":1000)"),
        rule("distinct-to", "mail-send",
             R"j("measure":{"per_request":"distinct($.personalizations[*].to[*].email)"},"limit":1000)j"),
        rule("campaign-baseline", "mail-send",
             R"("key":"header:x-campaign-id","preset":"sendgrid.recipients","window":"1m","baseline":{"factor":1e9,"min_samples":5})"),
        rule("cc-per-campaign", "mail-send",
             R"j("key":"header:x-campaign-id","measure":"count($.personalizations[*].cc[*])","window":"1h","limit":1e15)j"),
        rule("per-tenant-agent", "mail-send", R"("key":["header:x-tenant","agent"],"window":"1h","limit":1e15)"),
        rule("all-recipients", "mail-send", R"("preset":"sendgrid.recipients","window":"1d","resolution":"1h","limit":1e15)"),
    };
}

std::shared_ptr<const rule_set> build(std::size_t mail, std::size_t others) {
    std::string cfg = "{" + mode() + R"(,"rules":[)";
    auto m = mail_rules();
    bool first = true;
    for (std::size_t i = 0; i < mail; ++i) {
        cfg += first ? "" : ",";
        first = false;
        cfg += m[i];
    }
    for (std::size_t i = 0; i < others; ++i) {
        cfg += ",";
        cfg += rule("crm-" + std::to_string(i), i % 2 ? "crm" : "other",
                    R"("key":"agent","preset":"hubspot.batch.records","window":"1h","limit":1e15)");
    }
    cfg += "]}";
    simdjson::dom::parser p;
    simdjson::dom::element doc = p.parse(cfg).value();
    simdjson::dom::element fm = doc["failure_modes"].value();
    simdjson::dom::element rules = doc["rules"].value();
    cfg::errors errs;
    auto set = parse_rules(&fm, &rules, {"mail-send", "crm", "other"}, errs);
    if (!errs.empty()) {
        std::fprintf(stderr, "%s", errs.to_string().c_str());
        std::abort();
    }
    return set;
}

struct fixture {
    std::string body = sendgrid_body_2k();
    std::vector<header_field> headers{{"content-type", "application/json"},
                                      {"authorization", "Bearer SG.xxxxx"},
                                      {"x-campaign-id", "spring-sale"},
                                      {"x-tenant", "acme"}};
    request_view view() const {
        request_view v;
        v.method = "POST";
        v.path = "/v3/mail/send";
        v.target = "/v3/mail/send";
        v.host = "api.sendgrid.com";
        v.route = "mail-send";
        v.agent = "agent-7";
        v.content_type = "application/json";
        v.body = body;
        v.headers = headers;
        return v;
    }
};

void run(benchmark::State& state, std::size_t mail, std::size_t others) {
    fixture f;
    engine eng{build(mail, others)};
    const auto req = f.view();
    time_point now{std::chrono::hours{1000}};
    for (auto _ : state) {
        now += std::chrono::microseconds{10};
        auto d = eng.evaluate(req, now);
        if (!d.allowed()) {
            state.SkipWithError(d.reason.c_str());
            break;
        }
        benchmark::DoNotOptimize(d);
    }
    state.counters["body_bytes"] = static_cast<double>(f.body.size());
}

void BM_evaluate_1_rule(benchmark::State& s) { run(s, 1, 0); }
void BM_evaluate_10_rules(benchmark::State& s) { run(s, 10, 0); }
void BM_evaluate_10_rules_plus_90_other_routes(benchmark::State& s) { run(s, 10, 90); }

void BM_simdjson_parse_only(benchmark::State& state) {
    fixture f;
    simdjson::dom::parser parser;
    for (auto _ : state) {
        simdjson::dom::element e;
        auto err = parser.parse(f.body.data(), f.body.size()).get(e);
        benchmark::DoNotOptimize(err);
        benchmark::DoNotOptimize(e);
    }
}

// Memory per active key: 10,000 new agents, each creating a key in the two agent-keyed rules
// (60 buckets each), measured with mallinfo2.
void BM_memory_per_active_key(benchmark::State& state) {
    const auto set = build(3, 0);  // recipients-per-campaign (one key), recipients-per-agent, requests-per-agent
    for (auto _ : state) {
        state.PauseTiming();
        auto eng = std::make_unique<engine>(set);
        fixture f;
        auto req = f.view();
        std::vector<std::string> agents;
        for (int i = 0; i < 10'000; ++i) {
            agents.push_back("agent-" + std::to_string(100000 + i));  // 12 bytes: fits SSO
        }
        // Warm the engine's per-thread scratch so only key state is counted.
        req.agent = "warm";
        (void)eng->evaluate(req, time_point{std::chrono::hours{1000}});
        const auto before = mallinfo2().uordblks;
        state.ResumeTiming();
        for (const auto& a : agents) {
            req.agent = a;
            (void)eng->evaluate(req, time_point{std::chrono::hours{1000}});
        }
        state.PauseTiming();
        const auto after = mallinfo2().uordblks;
        // Two of the rules are keyed by agent; report per key per rule.
        state.counters["bytes_per_key_measured"] =
            static_cast<double>(after - before) / (10'000.0 * 2);
        state.counters["bytes_per_key_estimate"] =
            static_cast<double>(*eng->bytes_per_key("requests-per-agent", 12));
        state.counters["buckets"] = static_cast<double>(eng->rules().find_rule("requests-per-agent")->buckets);
        eng.reset();
        state.ResumeTiming();
    }
}

// What the once-a-second save of the rule meters (for a restart) costs the control thread:
// 10,000 agents active in the two agent-keyed rules, a send each in the last minute; the
// snapshot and its encoding, and (BM_restore_meters) reading it back at a start.
engine& loaded_engine(std::shared_ptr<const rule_set>& set, std::unique_ptr<engine>& eng) {
    set = build(3, 0);
    eng = std::make_unique<engine>(set);
    fixture f;
    auto req = f.view();
    for (int i = 0; i < 10'000; ++i) {
        const std::string agent = "agent-" + std::to_string(100000 + i);
        req.agent = agent;
        (void)eng->evaluate(req, time_point{std::chrono::hours{1000}} + std::chrono::milliseconds{i * 6});
    }
    return *eng;
}

void BM_save_meters_10k_keys(benchmark::State& state) {
    std::shared_ptr<const rule_set> set;
    std::unique_ptr<engine> holder;
    engine& eng = loaded_engine(set, holder);
    std::size_t bytes = 0;
    for (auto _ : state) {
        auto saved = eng.save_meters(time_point{std::chrono::hours{1000}} + std::chrono::minutes{1});
        bytes = 0;
        for (const auto& m : saved) {
            bytes += m.state.size();
        }
        benchmark::DoNotOptimize(saved);
    }
    state.counters["bytes"] = static_cast<double>(bytes);
}

void BM_restore_meters_10k_keys(benchmark::State& state) {
    std::shared_ptr<const rule_set> set;
    std::unique_ptr<engine> holder;
    engine& eng = loaded_engine(set, holder);
    const auto now = time_point{std::chrono::hours{1000}} + std::chrono::minutes{1};
    const auto saved = eng.save_meters(now);
    for (auto _ : state) {
        state.PauseTiming();
        auto fresh = std::make_unique<engine>(set);
        state.ResumeTiming();
        std::string error;
        if (!fresh->restore_meters(saved, now, &error)) {
            state.SkipWithError(error.c_str());
            break;
        }
        state.PauseTiming();
        fresh.reset();
        state.ResumeTiming();
    }
}

BENCHMARK(BM_simdjson_parse_only);
BENCHMARK(BM_evaluate_1_rule);
BENCHMARK(BM_evaluate_10_rules);
BENCHMARK(BM_evaluate_10_rules_plus_90_other_routes);
BENCHMARK(BM_memory_per_active_key)->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_save_meters_10k_keys)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_restore_meters_10k_keys)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
