// breakerctl's command line: usage errors, the reason rule, and the exact request each
// subcommand makes. No network: parse_args is pure and run() takes a fake transport.
#include "ctl/commands.hpp"
#include "ctl/render.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>

namespace bb::ctl {
namespace {

parse_result parse(std::vector<std::string> args, environment env = {}) { return parse_args(args, env); }

http_request only_request(std::vector<std::string> args) {
    auto r = parse(std::move(args));
    EXPECT_TRUE(r.p.has_value()) << r.error;
    if (!r.p) {
        return {};
    }
    EXPECT_EQ(r.p->requests.size(), 1u);
    return r.p->requests.at(0);
}

void expect_usage_error(std::vector<std::string> args, std::string_view fragment) {
    std::string line;
    for (const auto& a : args) {
        line += a + " ";
    }
    auto r = parse(args);
    EXPECT_FALSE(r.p.has_value()) << line;
    EXPECT_FALSE(r.help) << line;
    EXPECT_NE(r.error.find(fragment), std::string::npos) << line << "-> " << r.error;
}

struct run_result {
    int code = -1;
    std::string out;
    std::string err;
    std::vector<http_request> sent;
};

// run() with a transport that records requests and answers from a script.
run_result run_fake(std::vector<std::string> args, std::function<http_result(const http_request&)> answer = nullptr,
                    environment env = {}) {
    run_result res;
    std::ostringstream out;
    std::ostringstream err;
    res.code = run(args, env, out, err, [&](const client_options&) -> transport {
        return [&](const http_request& req) {
            res.sent.push_back(req);
            if (answer) {
                return answer(req);
            }
            return http_result{http_response{200, "application/json", "{}"}, {}};
        };
    });
    res.out = out.str();
    res.err = err.str();
    return res;
}

TEST(CtlArgs, GlobalsDefaultsAndEnvironment) {
    auto r = parse({"breakers"});
    ASSERT_TRUE(r.p);
    EXPECT_EQ(r.p->client.url.to_string(), "http://127.0.0.1:9901");
    EXPECT_EQ(r.p->client.token, "");
    EXPECT_EQ(r.p->client.timeout, std::chrono::seconds{10});
    EXPECT_FALSE(r.p->json);

    r = parse({"breakers"}, environment{"https://admin.example:8443/bb/", "tok-env"});
    ASSERT_TRUE(r.p);
    EXPECT_EQ(r.p->client.url.scheme, "https");
    EXPECT_EQ(r.p->client.url.host, "admin.example");
    EXPECT_EQ(r.p->client.url.port, 8443);
    EXPECT_EQ(r.p->client.url.base_path, "/bb");
    EXPECT_EQ(r.p->client.token, "tok-env");

    // Flags beat the environment, and globals go anywhere on the line.
    r = parse({"breakers", "--json", "--admin=https://10.0.0.1:1234", "--token", "tok-flag", "--timeout", "250ms",
               "--cacert", "/ca.pem"},
              environment{"http://ignored:1", "tok-env"});
    ASSERT_TRUE(r.p) << r.error;
    EXPECT_EQ(r.p->client.url.to_string(), "https://10.0.0.1:1234");
    EXPECT_EQ(r.p->client.token, "tok-flag");
    EXPECT_EQ(r.p->client.timeout, std::chrono::milliseconds{250});
    EXPECT_EQ(r.p->client.cacert, "/ca.pem");
    EXPECT_TRUE(r.p->json);
}

TEST(CtlArgs, AdminUrlParsing) {
    auto u = parse_admin_url("127.0.0.1:9901");
    ASSERT_TRUE(u);
    EXPECT_EQ(u->scheme, "http");
    EXPECT_EQ(u->port, 9901);
    u = parse_admin_url("https://[::1]/");
    ASSERT_TRUE(u);
    EXPECT_EQ(u->host, "::1");
    EXPECT_EQ(u->port, 443);
    EXPECT_EQ(u->to_string(), "https://[::1]");
    u = parse_admin_url("http://localhost");
    ASSERT_TRUE(u);
    EXPECT_EQ(u->port, 80);
    for (auto bad : {"ftp://x", "http://", "http://h:0", "http://h:70000", "http://h:", "http://u@h", "http://h/?q"}) {
        std::string why;
        EXPECT_FALSE(parse_admin_url(bad, &why)) << bad;
        EXPECT_FALSE(why.empty());
    }
}

TEST(CtlArgs, UsageErrors) {
    expect_usage_error({}, "missing command");
    expect_usage_error({"frobnicate"}, "unknown command");
    expect_usage_error({"breakers", "--frob"}, "unknown flag --frob");
    expect_usage_error({"breakers", "extra"}, "unexpected argument");
    expect_usage_error({"breakers", "--state", "tripped"}, "\"tripped\" is not a breaker state");
    expect_usage_error({"breakers", "--limit", "0"}, "--limit wants a positive whole number");
    expect_usage_error({"breakers", "--mode", "open"}, "\"open\" is not a mode");
    EXPECT_EQ(only_request({"breakers", "--mode", "forced_open", "--state", "open"}),
              (http_request{"GET", "/v1/breakers?state=open&mode=forced_open", ""}));
    // TLS flags on a plain URL would be silently unused (and the token blamed).
    expect_usage_error({"breakers", "--admin", "127.0.0.1:9901", "--cert", "op.pem"},
                       "--cert applies to an https:// admin URL");
    expect_usage_error({"breakers", "--admin", "https://a:1", "--key", "op.key"}, "--key needs --cert");
    // An empty selector (AGENT unset in `--agent "$AGENT"`) would match any: refused.
    expect_usage_error({"quarantine", "release", "--breaker", "b", "--agent", "", "--reason", "r"},
                       "--agent is empty: give a value, or leave it out to match any");
    expect_usage_error({"quarantine", "discard", "--breaker", " ", "--to", "1767225600000", "--reason", "r"},
                       "--breaker is empty");
    expect_usage_error({"quarantine", "list", "--rule", ""}, "--rule is empty");
    expect_usage_error({"breaker"}, "needs a breaker instance ID");
    expect_usage_error({"breakers", "--reason", "x"}, "--reason does not apply to breakers");
    expect_usage_error({"trip", "b", "--reason"}, "--reason needs a value");
    expect_usage_error({"config", "apply", "f.json", "--base-version", "v3", "--reason", "r"},
                       "--base-version is a version number");
    expect_usage_error({"config", "apply", "f.json", "--base-version", "-1", "--reason", "r"},
                       "--base-version is a version number");
    expect_usage_error({"config", "reload", "--base-version", "1", "--reason", "r"},
                       "--base-version does not apply to config reload");
    expect_usage_error({"breakers", "--json=yes"}, "--json takes no value");
    expect_usage_error({"mode", "b", "--reason", "r"}, "needs a breaker instance ID and a mode");
    expect_usage_error({"mode", "b", "open", "--reason", "r"}, "is not a mode");
    expect_usage_error({"mode", "b", "auto", "--expires-in", "10x", "--reason", "r"}, "--expires-in");
    // What the server refuses is a usage error here: an expiry on auto, a limit past 1000.
    expect_usage_error({"mode", "b", "auto", "--expires-in", "10m", "--reason", "r"}, "not auto");
    expect_usage_error({"breakers", "--limit", "5000"}, "1 to 1000");
    expect_usage_error({"quarantine", "list", "--limit", "1001"}, "1 to 1000");
    expect_usage_error({"quarantine"}, "quarantine needs");
    expect_usage_error({"quarantine", "purge"}, "unknown subcommand");
    expect_usage_error({"quarantine", "list", "--state", "lost"}, "is not a state");
    expect_usage_error({"quarantine", "list", "--from", "yesterday"}, "--from wants");
    expect_usage_error({"quarantine", "list", "--limit", "0"}, "--limit wants a positive");
    expect_usage_error({"quarantine", "release", "--reason", "r"}, "needs a TICKET, or a filter");
    expect_usage_error({"quarantine", "release", "--state", "held", "--reason", "r"}, "needs a TICKET, or a filter");
    expect_usage_error({"quarantine", "release", "q_1", "--rate", "5", "--reason", "r"}, "--rate does not apply");
    expect_usage_error({"quarantine", "release", "--breaker", "b", "--force", "--reason", "r"}, "--force does not apply");
    expect_usage_error({"quarantine", "release", "--breaker", "b", "--rate", "fast", "--reason", "r"}, "--rate wants");
    expect_usage_error({"quarantine", "discard", "q_1", "--force", "--reason", "r"}, "--force does not apply");
    expect_usage_error({"config"}, "config needs");
    expect_usage_error({"config", "apply", "--reason", "r"}, "needs a FILE");
    expect_usage_error({"config", "rollback", "v3", "--reason", "r"}, "VERSION is a positive whole number");
    expect_usage_error({"audit", "--limit", "-1"}, "--limit wants a positive");
    expect_usage_error({"breakers", "--admin", "gopher://x"}, "is not an admin URL");
    expect_usage_error({"breakers", "--timeout", "soon"}, "--timeout wants");
    // A flag given twice has no one meaning (the server refuses a field given twice too).
    expect_usage_error({"quarantine", "release", "--breaker", "a", "--breaker", "b", "--reason", "r"},
                       "--breaker is given twice");
    expect_usage_error({"breakers", "--json", "--json"}, "--json is given twice");
    // `--reason "$R" --json` with R unset: the flag after is not the reason.
    expect_usage_error({"trip", "b", "--reason", "--json"}, "--reason needs a value, not the flag --json");
    EXPECT_TRUE(parse({"trip", "b", "--reason=--json"}).p.has_value());
    expect_usage_error({"metrics", "--json"}, "metrics are Prometheus text");
}

TEST(CtlArgs, MutationsNeedAReason) {
    const std::vector<std::vector<std::string>> mutations = {
        {"trip", "b"},
        {"reset", "b"},
        {"mode", "b", "forced_open"},
        {"quarantine", "release", "q_1"},
        {"quarantine", "release", "--breaker", "b", "--rate", "5"},
        {"quarantine", "discard", "q_1"},
        {"quarantine", "discard", "--agent", "a"},
        {"config", "apply", "cfg.json"},
        {"config", "reload"},
        {"config", "rollback", "3"},
    };
    for (const auto& m : mutations) {
        expect_usage_error(m, "needs --reason");
        auto blank = m;
        blank.insert(blank.end(), {"--reason", "  "});
        expect_usage_error(blank, "needs --reason");
        // And through run(): exit 2, the message and the usage on stderr, nothing sent.
        auto r = run_fake(m);
        EXPECT_EQ(r.code, exit_usage);
        EXPECT_TRUE(r.sent.empty());
        EXPECT_NE(r.err.find("needs --reason"), std::string::npos);
        EXPECT_NE(r.err.find("usage: breakerctl"), std::string::npos);
        EXPECT_TRUE(r.out.empty());
    }
}

TEST(CtlArgs, HelpGoesToStdoutAndExitsZero) {
    for (auto args : std::vector<std::vector<std::string>>{{"-h"}, {"--help"}, {"help"}, {"trip", "-h"}}) {
        auto r = run_fake(args);
        EXPECT_EQ(r.code, exit_ok);
        EXPECT_NE(r.out.find("usage: breakerctl"), std::string::npos);
        EXPECT_TRUE(r.err.empty());
        EXPECT_TRUE(r.sent.empty());
    }
    auto r = run_fake({});
    EXPECT_EQ(r.code, exit_usage);
    EXPECT_NE(r.err.find("usage: breakerctl"), std::string::npos);
}

TEST(CtlRequests, ReadOnlyCommands) {
    EXPECT_EQ(only_request({"metrics"}), (http_request{"GET", "/metrics", ""}));
    EXPECT_EQ(only_request({"breakers"}), (http_request{"GET", "/v1/breakers", ""}));
    // An instance with a key stays one path segment.
    EXPECT_EQ(only_request({"breaker", "campaign-volume/spring sale"}),
              (http_request{"GET", "/v1/breakers/campaign-volume%2Fspring%20sale", ""}));
    EXPECT_EQ(only_request({"quarantine", "show", "q_01"}), (http_request{"GET", "/v1/quarantine/q_01", ""}));
    EXPECT_EQ(only_request({"quarantine", "list"}), (http_request{"GET", "/v1/quarantine", ""}));
    EXPECT_EQ(only_request({"quarantine", "list", "--after", "q_9", "--limit", "50", "--breaker", "cv/a&b", "--agent",
                            "bot", "--rule", "r1", "--state", "outcome_unknown", "--from", "1000", "--to", "2000"}),
              (http_request{"GET",
                            "/v1/quarantine?breaker=cv%2Fa%26b&agent=bot&rule=r1&state=outcome_unknown&from=1000&to=2000"
                            "&limit=50&after=q_9",
                            ""}));
    EXPECT_EQ(only_request({"config", "show"}), (http_request{"GET", "/v1/config", ""}));
    EXPECT_EQ(only_request({"audit"}), (http_request{"GET", "/v1/audit", ""}));
    EXPECT_EQ(only_request({"audit", "--limit", "20", "--after", "7"}),
              (http_request{"GET", "/v1/audit?limit=20&after=7", ""}));
    EXPECT_EQ(only_request({"audit", "verify"}), (http_request{"GET", "/v1/audit/verify", ""}));

    auto h = parse({"health"});
    ASSERT_TRUE(h.p);
    ASSERT_EQ(h.p->requests.size(), 2u);
    EXPECT_EQ(h.p->requests[0], (http_request{"GET", "/healthz", ""}));
    auto open = parse({"breakers", "--state", "open", "--breaker", "campaign-volume", "--limit", "50", "--after",
                       "campaign-volume/m"});
    ASSERT_TRUE(open.p) << open.error;
    EXPECT_EQ(open.p->requests[0],
              (http_request{"GET", "/v1/breakers?breaker=campaign-volume&state=open&limit=50&after=campaign-volume%2Fm", ""}));
    EXPECT_EQ(h.p->requests[1], (http_request{"GET", "/readyz", ""}));
}

TEST(CtlRequests, BreakerMutations) {
    EXPECT_EQ(only_request({"trip", "campaign-volume/spring", "--reason", "spike \"now\""}),
              (http_request{"POST", "/v1/breakers/campaign-volume%2Fspring/trip", R"({"reason":"spike \"now\""})"}));
    EXPECT_EQ(only_request({"reset", "b1", "--reason=fixed"}),
              (http_request{"POST", "/v1/breakers/b1/reset", R"({"reason":"fixed"})"}));
    EXPECT_EQ(only_request({"mode", "b1", "forced_open", "--expires-in", "10m", "--reason", "maintenance"}),
              (http_request{"POST", "/v1/breakers/b1/mode",
                            R"({"mode":"forced_open","expires_in":"10m","reason":"maintenance"})"}));
    EXPECT_EQ(only_request({"mode", "b1", "auto", "--reason", "back"}),
              (http_request{"POST", "/v1/breakers/b1/mode", R"({"mode":"auto","reason":"back"})"}));
    for (auto m : {"forced_closed", "metrics_only"}) {
        EXPECT_EQ(only_request({"mode", "b1", m, "--reason", "r"}).body,
                  std::string{"{\"mode\":\""} + m + "\",\"reason\":\"r\"}");
    }
}

TEST(CtlRequests, QuarantineMutations) {
    EXPECT_EQ(only_request({"quarantine", "release", "q_1", "--reason", "checked"}),
              (http_request{"POST", "/v1/quarantine/q_1/release", R"({"reason":"checked","force":false})"}));
    EXPECT_EQ(only_request({"quarantine", "release", "q_1", "--force", "--attempts", "1", "--reason", "checked"}),
              (http_request{"POST", "/v1/quarantine/q_1/release", R"({"reason":"checked","force":true,"attempts":1})"}));
    // Numbers go out as JSON writes them: `010` is no JSON number.
    EXPECT_EQ(only_request({"quarantine", "release", "q_1", "--force", "--attempts", "01", "--reason", "checked"}),
              (http_request{"POST", "/v1/quarantine/q_1/release", R"({"reason":"checked","force":true,"attempts":1})"}));
    EXPECT_EQ(only_request({"quarantine", "discard", "--breaker", "b", "--to", "0020", "--limit", "010", "--reason", "r"}),
              (http_request{"POST", "/v1/quarantine/discard", R"({"reason":"r","filter":{"breaker":"b","to":20,"limit":10}})"}));
    // A force names the attempts the operator saw (the server refuses a stale one).
    expect_usage_error({"quarantine", "release", "q_1", "--force", "--reason", "r"}, "--force needs --attempts");
    expect_usage_error({"quarantine", "release", "q_1", "--attempts", "1", "--reason", "r"}, "--force needs --attempts");
    expect_usage_error({"quarantine", "release", "q_1", "--force", "--attempts", "x", "--reason", "r"},
                       "--attempts wants a whole number");
    EXPECT_EQ(only_request({"quarantine", "discard", "q_1", "--reason", "spam"}),
              (http_request{"POST", "/v1/quarantine/q_1/discard", R"({"reason":"spam"})"}));
    EXPECT_EQ(only_request({"quarantine", "release", "--breaker", "cv/spring", "--agent", "bot", "--rate", "5",
                            "--reason", "ok"}),
              (http_request{"POST", "/v1/quarantine/release",
                            R"({"reason":"ok","rate_per_s":5,"filter":{"breaker":"cv/spring","agent":"bot"}})"}));
    EXPECT_EQ(only_request({"quarantine", "release", "--rule", "r1", "--state", "held", "--from", "10", "--to", "20",
                            "--rate", "0.5", "--reason", "ok"}),
              (http_request{"POST", "/v1/quarantine/release",
                            R"({"reason":"ok","rate_per_s":0.5,"filter":{"rule":"r1","state":"held","from":10,"to":20}})"}));
    EXPECT_EQ(only_request({"quarantine", "discard", "--breaker", "b", "--reason", "junk"}),
              (http_request{"POST", "/v1/quarantine/discard", R"({"reason":"junk","filter":{"breaker":"b"}})"}));
    // A canary: at most one released.
    EXPECT_EQ(only_request({"quarantine", "release", "--breaker", "b", "--limit", "1", "--reason", "canary"}),
              (http_request{"POST", "/v1/quarantine/release", R"({"reason":"canary","filter":{"breaker":"b","limit":1}})"}));
    expect_usage_error({"quarantine", "release", "--breaker", "b", "--limit", "0", "--reason", "r"},
                       "--limit wants a positive");
}

TEST(CtlRequests, ConfigMutations) {
    EXPECT_EQ(only_request({"config", "reload", "--reason", "edited"}),
              (http_request{"POST", "/v1/config/reload", R"({"reason":"edited"})"}));
    EXPECT_EQ(only_request({"config", "rollback", "3", "--reason", "bad change"}),
              (http_request{"POST", "/v1/config/rollback", R"({"version":3,"reason":"bad change"})"}));
    EXPECT_EQ(only_request({"config", "apply", "f.json", "--reason", "r"}).target, "/v1/config");
    EXPECT_EQ(only_request({"config", "apply", "f.json", "--dry-run", "--reason", "r"}).target, "/v1/config?dry_run=1");

    std::string why;
    EXPECT_EQ(config_apply_body("{ \"rules\": [ ] }\n", "tighten", true, &why),
              R"({"config":{"rules":[]},"reason":"tighten","metrics_only":true})");
    EXPECT_EQ(config_apply_body("{}", "r", false, &why), R"({"config":{},"reason":"r","metrics_only":false})");
    EXPECT_EQ(config_apply_body("{}", "r", false, &why, 0), R"({"config":{},"reason":"r","metrics_only":false,"base_version":0})");
    EXPECT_EQ(config_apply_body("{}", "r", true, &why, 12),
              R"({"config":{},"reason":"r","metrics_only":true,"base_version":12})");
    EXPECT_FALSE(config_apply_body("{\"rules\": [", "r", false, &why));
    EXPECT_NE(why.find("not valid JSON"), std::string::npos);
    EXPECT_FALSE(config_apply_body("[1]", "r", false, &why));
    EXPECT_NE(why.find("JSON object"), std::string::npos);
}

TEST(CtlRequests, ConfigApplyReadsTheFileAtExecution) {
    const std::string path = ::testing::TempDir() + "breakerctl-apply-" + std::to_string(::getpid()) + ".json";
    {
        std::ofstream f{path};
        f << "{\"breakers\": [{\"id\": \"b1\"}]}\n";
    }
    auto r = run_fake({"config", "apply", path, "--metrics-only", "--reason", "new breaker"}, [](const http_request&) {
        return http_result{http_response{200, "application/json",
                                         R"({"version":4,"applied":true,"loosening":[],"diff":["breakers: + b1"]})"},
                           {}};
    });
    EXPECT_EQ(r.code, exit_ok) << r.err;
    ASSERT_EQ(r.sent.size(), 1u);
    EXPECT_EQ(r.sent[0], (http_request{"POST", "/v1/config",
                                       R"({"config":{"breakers":[{"id":"b1"}]},"reason":"new breaker","metrics_only":true})"}));
    EXPECT_NE(r.out.find("applied as version 4"), std::string::npos);
    EXPECT_NE(r.out.find("breakers: + b1"), std::string::npos);
    std::remove(path.c_str());

    // --base-version: the server refuses a change made from an older version (409).
    {
        std::ofstream f{path};
        f << "{\"breakers\": [{\"id\": \"b1\"}]}\n";
    }
    auto stale = run_fake({"config", "apply", path, "--base-version", "3", "--reason", "new breaker"},
                          [](const http_request&) {
                              return http_result{
                                  http_response{409, "application/json",
                                                R"({"error":{"code":"version_conflict","message":"the change was made from version 3, but version 4 is current; read it again and redo the change","field":"base_version"}})"},
                                  {}};
                          });
    EXPECT_EQ(stale.code, exit_failed);
    ASSERT_EQ(stale.sent.size(), 1u);
    EXPECT_EQ(stale.sent[0].body,
              R"({"config":{"breakers":[{"id":"b1"}]},"reason":"new breaker","metrics_only":false,"base_version":3})");
    EXPECT_NE(stale.err.find("version 4 is current"), std::string::npos) << stale.err;
    std::remove(path.c_str());

    auto missing = run_fake({"config", "apply", path + ".absent", "--reason", "r"});
    EXPECT_EQ(missing.code, exit_failed);
    EXPECT_TRUE(missing.sent.empty());
    EXPECT_NE(missing.err.find("cannot read"), std::string::npos);
}

TEST(CtlExecute, JsonPrintsTheServersDocumentVerbatim) {
    const std::string body = R"({"breakers":[],"total":0})" "\n";
    auto r = run_fake({"breakers", "--json"}, [&](const http_request&) {
        return http_result{http_response{200, "application/json", body}, {}};
    });
    EXPECT_EQ(r.code, exit_ok);
    EXPECT_EQ(r.out, body);
    EXPECT_TRUE(r.err.empty());
}

TEST(CtlExecute, ErrorsMapToMessagesAndExitOne) {
    auto answer = [](unsigned status, std::string body) {
        return [status, body](const http_request&) {
            return http_result{http_response{status, "application/json", body}, {}};
        };
    };
    auto r = run_fake({"breakers"}, answer(401, R"({"error":{"code":"unauthorized","message":"the token is not valid"}})"));
    EXPECT_EQ(r.code, exit_failed);
    EXPECT_TRUE(r.out.empty());
    EXPECT_NE(r.err.find("breakerctl: unauthorized: set --token or BREAKERBOX_TOKEN"), std::string::npos);

    r = run_fake({"trip", "b1", "--reason", "r"},
                 answer(403, R"j({"error":{"code":"forbidden","message":"role viewer cannot trip a breaker (needs operator)"}})j"));
    EXPECT_EQ(r.code, exit_failed);
    EXPECT_NE(r.err.find("breakerctl: forbidden: your token's role cannot trip a breaker: role viewer cannot trip"),
              std::string::npos)
        << r.err;

    r = run_fake({"quarantine", "release", "q_1", "--reason", "r"},
                 answer(409, R"({"error":{"code":"invalid_state","message":"q_1 is released"}})"));
    EXPECT_EQ(r.code, exit_failed);
    EXPECT_NE(r.err.find("breakerctl: invalid_state: q_1 is released"), std::string::npos) << r.err;

    // --json still prints the server's error document (for scripts), and exits 1.
    r = run_fake({"breaker", "nope", "--json"}, answer(404, R"({"error":{"code":"not_found","message":"no breaker nope"}})"));
    EXPECT_EQ(r.code, exit_failed);
    EXPECT_EQ(r.out, R"({"error":{"code":"not_found","message":"no breaker nope"}})" "\n");
    EXPECT_NE(r.err.find("not_found"), std::string::npos);

    r = run_fake({"breakers"}, [](const http_request&) { return http_result{std::nullopt, "Connection refused"}; });
    EXPECT_EQ(r.code, exit_failed);
    EXPECT_EQ(r.err, "breakerctl: cannot reach the admin API at http://127.0.0.1:9901: Connection refused\n");

    // A release that timed out may have been acted on: the operator is told to look first.
    r = run_fake({"quarantine", "release", "q_1", "--reason", "r"},
                 [](const http_request&) { return http_result{std::nullopt, "timed out after 1h"}; });
    EXPECT_EQ(r.code, exit_failed);
    EXPECT_NE(r.err.find("may still be acting on it"), std::string::npos) << r.err;
}

// A release answers once the upstream has, a paced bulk release once every record went:
// their default deadline is an hour, not the 10 s of a read.
TEST(CtlArgs, QuarantineActionsWaitLonger) {
    auto r = parse({"quarantine", "release", "q_1", "--reason", "r"});
    ASSERT_TRUE(r.p) << r.error;
    EXPECT_EQ(r.p->client.timeout, std::chrono::hours{1});
    r = parse({"quarantine", "discard", "--breaker", "cv", "--reason", "r"});
    ASSERT_TRUE(r.p) << r.error;
    EXPECT_EQ(r.p->client.timeout, std::chrono::hours{1});
    r = parse({"quarantine", "release", "q_1", "--reason", "r", "--timeout", "30s"});
    ASSERT_TRUE(r.p) << r.error;
    EXPECT_EQ(r.p->client.timeout, std::chrono::seconds{30});
    r = parse({"quarantine", "list"});
    ASSERT_TRUE(r.p) << r.error;
    EXPECT_EQ(r.p->client.timeout, std::chrono::seconds{10});
}

TEST(CtlExecute, ResultsThatFailExitOne) {
    auto r = run_fake({"audit", "verify"}, [](const http_request&) {
        return http_result{
            http_response{200, "application/json", R"({"ok":false,"entries":12,"first_bad":7,"problem":"hash mismatch"})"},
            {}};
    });
    EXPECT_EQ(r.code, exit_failed);
    EXPECT_NE(r.out.find("first bad entry 7: hash mismatch"), std::string::npos) << r.out;

    // Even with --json (the document is printed as is).
    r = run_fake({"audit", "verify", "--json"}, [](const http_request&) {
        return http_result{http_response{200, "application/json", R"({"ok":false,"entries":1,"first_bad":1,"problem":"x"})"},
                           {}};
    });
    EXPECT_EQ(r.code, exit_failed);
    EXPECT_EQ(r.out, R"({"ok":false,"entries":1,"first_bad":1,"problem":"x"})" "\n");

    r = run_fake({"quarantine", "release", "q_1", "--reason", "r"}, [](const http_request&) {
        return http_result{http_response{200, "application/json",
                                         R"({"result":{"ticket":"q_1","ok":false,"code":"outcome_unknown","message":"upstream reset","status":0}})"},
                           {}};
    });
    EXPECT_EQ(r.code, exit_failed);
    EXPECT_NE(r.out.find("q_1: outcome unknown: it may have been delivered"), std::string::npos) << r.out;

    r = run_fake({"health"}, [](const http_request& req) {
        return req.target == "/healthz" ? http_result{http_response{200, "application/json", "{\"status\":\"ok\"}\n"}, {}}
                                        : http_result{http_response{503, "application/json", "{\"status\":\"draining\"}\n"}, {}};
    });
    EXPECT_EQ(r.code, exit_failed);
    EXPECT_EQ(r.out, "healthz: ok\nreadyz:  draining (HTTP 503)\n");

    // A config applied in part (a setting fixed until restart) is not a success.
    const std::string path = ::testing::TempDir() + "breakerctl-part-" + std::to_string(::getpid()) + ".json";
    {
        std::ofstream f{path};
        f << "{}\n";
    }
    r = run_fake({"config", "apply", path, "--reason", "r"}, [](const http_request&) {
        return http_result{http_response{200, "application/json",
                                         R"({"applied":true,"version":4,"diff":[],"warnings":["limits.workers: needs a restart"]})"},
                           {}};
    });
    EXPECT_EQ(r.code, exit_failed);
    EXPECT_NE(r.out.find("not applied:\n  limits.workers: needs a restart"), std::string::npos) << r.out;
    EXPECT_NE(r.err.find("applied in part: 1 setting(s) did not take effect"), std::string::npos) << r.err;
    std::remove(path.c_str());
}

// A 2xx that is not the admin API's JSON (an SSO proxy's login page in front of it) did not
// do what was asked: exit 1, nothing printed as if it had, with or without --json.
TEST(CtlExecute, ANonJsonSuccessIsAFailure) {
    auto login = [](const http_request&) {
        return http_result{http_response{200, "text/html", "<html><body>Sign in</body></html>\n"}, {}};
    };
    for (auto args : {std::vector<std::string>{"trip", "b", "--reason", "r"},
                      std::vector<std::string>{"trip", "b", "--reason", "r", "--json"},
                      std::vector<std::string>{"breakers"}}) {
        auto r = run_fake(args, login);
        EXPECT_EQ(r.code, exit_failed) << args.size();
        EXPECT_TRUE(r.out.empty()) << r.out;
        EXPECT_NE(r.err.find("answered HTTP 200 with a body that is not JSON"), std::string::npos) << r.err;
        EXPECT_NE(r.err.find("<html><body>Sign in"), std::string::npos) << r.err;
    }
}

// JSON without the result an act expects (`200 {}` from a gateway in front, another
// version's server) does not say it was done: an act exits 1, a read shows it and exits 0.
TEST(CtlExecute, AnActWithoutItsResultIsAFailure) {
    auto empty = [](const http_request&) { return http_result{http_response{200, "application/json", "{}\n"}, {}}; };
    for (auto args : {std::vector<std::string>{"trip", "b", "--reason", "r"},
                      std::vector<std::string>{"trip", "b", "--reason", "r", "--json"},
                      std::vector<std::string>{"quarantine", "release", "q_1", "--reason", "r"}}) {
        auto r = run_fake(args, empty);
        EXPECT_EQ(r.code, exit_failed) << args[0] << " " << args[1];
        EXPECT_NE(r.err.find("without the result"), std::string::npos) << r.err;
    }
    EXPECT_EQ(run_fake({"breakers"}, empty).code, exit_ok);
    // A reset of an instance that is not in memory (closed, after a restart) is answered
    // {"breaker":null}: done, nothing to change.
    auto none = run_fake({"reset", "b/k", "--reason", "r"}, [](const http_request&) {
        return http_result{http_response{200, "application/json", "{\"breaker\":null}\n"}, {}};
    });
    EXPECT_EQ(none.code, exit_ok) << none.err;
    EXPECT_NE(none.out.find("closed"), std::string::npos) << none.out;
}

// Strings from the server cannot drive the operator's terminal: C1 controls (U+009B is CSI)
// and bidi overrides are replaced in tables, in a body of an unknown shape and in errors.
TEST(CtlExecute, ServerStringsCannotDriveTheTerminal) {
    const std::string csi = "\xC2\x9B" "2J";
    const std::string rlo = "\xE2\x80\xAE";
    auto r = run_fake({"breakers"}, [&](const http_request&) {
        return http_result{http_response{200, "application/json",
                                         R"({"breakers":[{"instance":"cv/)" + csi + R"(","breaker":"cv","key":")" + csi +
                                             R"(","state":"open","mode":"auto"}],"total":1})"},
                           {}};
    });
    EXPECT_EQ(r.code, exit_ok);
    EXPECT_EQ(r.out.find("\xC2\x9B"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("cv/?2J"), std::string::npos) << r.out;
    r = run_fake({"audit", "verify"}, [&](const http_request&) {
        return http_result{http_response{200, "application/json", R"({"unknown":")" + rlo + csi + R"("})"}, {}};
    });
    EXPECT_EQ(r.out.find(rlo), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("\xC2\x9B"), std::string::npos) << r.out;
    r = run_fake({"breaker", "x"}, [&](const http_request&) {
        return http_result{http_response{404, "application/json",
                                         R"({"error":{"code":"not_found","message":"no breaker )" + rlo + R"(x"}})"},
                           {}};
    });
    EXPECT_EQ(r.code, exit_failed);
    EXPECT_EQ(r.err.find(rlo), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("no breaker ?x"), std::string::npos) << r.err;
    EXPECT_EQ(printable("caf\xC3\xA9 \x1B[2J"), "caf\xC3\xA9  [2J");
    EXPECT_EQ(printable_text("a\nb\x7F\xE2\x81\xA6"), "a\nb ?");
}

}  // namespace
}  // namespace bb::ctl
